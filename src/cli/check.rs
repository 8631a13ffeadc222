//! `fsck`, `scrub`, `gc`: open the store (or ask its writer daemon, for gc), run the
//! check, print its report. STORE may be a store or a mountpoint (`control::resolve`).
//! They exit with e2fsck-like codes: 0 clean (gc: done), 1 repaired, 4 problems left,
//! 8 the check could not run (all three alike).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use decofs::control::{self, protocol};
use decofs::store::check::{self, Checker, EXIT_NOT_RUN};

use decofs::store::Error;

use super::output::{self, outln, Context, Failure, Outcome};
use super::progress::{Counter, Spinner};

/// A check that could not run exits 8.
fn not_run(f: Failure) -> Failure {
    f.exit(EXIT_NOT_RUN)
}

pub fn fsck(store: &Path, repair: bool, grace: u64, json: bool) -> Outcome {
    let what = format!("cannot check {}", store.display());
    let (store_path, _) = control::resolve(store).or_fail(&what).map_err(not_run)?;
    let s = check::open(&store_path, !repair)
        .or_fail(&what)
        .map_err(not_run)?;
    // Progress on a terminal only (not with --json, not into a pipe or a log).
    let counter = Counter::new("fsck", json);
    let rep = Checker::new(&s)
        .fsck(repair, Duration::from_secs(grace), |p| counter.update(p))
        .or_fail(&what)
        .map_err(not_run)?;
    drop(counter);
    let exit = ExitCode::from(rep.exit_code);
    if json {
        output::json_pretty(&rep);
        return Ok(exit);
    }
    outln!(
        "{}: {} nodes ({} directories, {} files, {} other), {} entries, {} in trash, {} revisions, {} blobs",
        store.display(), rep.nodes, rep.dirs, rep.files, rep.other, rep.entries, rep.trash,
        rep.revisions, rep.blobs
    );
    for p in &rep.problems {
        let state = if p.repaired { "repaired" } else { "found" };
        outln!("  {state:8} {} {}: {}", p.code, p.path, p.detail);
    }
    if rep.young_orphans > 0 {
        outln!(
            "  {} unnamed nodes younger than {grace}s left alone (a create may be in progress)",
            rep.young_orphans
        );
    }
    if rep.stale_staging > 0 {
        outln!(
            "  {} stale staging files in sessions/ ({} removed)",
            rep.stale_staging,
            rep.stale_staging_removed
        );
    }
    let left = rep.problems.iter().filter(|p| !p.repaired).count();
    match rep.exit_code {
        check::EXIT_CLEAN => outln!("clean"),
        check::EXIT_REPAIRED => outln!("{} errors repaired", rep.problems.len()),
        _ if repair => outln!("{left} problems left that fsck cannot repair"),
        _ => outln!("{left} problems found; `decofs fsck --repair` repairs what it can"),
    }
    Ok(exit)
}

pub fn scrub(store: &Path, json: bool) -> Outcome {
    let what = format!("cannot scrub {}", store.display());
    let (store_path, _) = control::resolve(store).or_fail(&what).map_err(not_run)?;
    // Mark damaged files only when no read-write mount is running.
    let s = match check::open(&store_path, false) {
        Err(Error::StoreLocked { .. }) => check::open(&store_path, true),
        other => other,
    }
    .or_fail(&what)
    .map_err(not_run)?;
    let counter = Counter::new("scrub", json);
    let rep = Checker::new(&s)
        .scrub(|p| counter.update(p))
        .or_fail(&what)
        .map_err(not_run)?;
    drop(counter);
    let exit = ExitCode::from(rep.exit_code);
    if json {
        output::json_pretty(&rep);
        return Ok(exit);
    }
    outln!(
        "{}: {} blobs checked ({} bytes)",
        store.display(),
        rep.blobs_checked,
        rep.bytes_checked
    );
    for d in &rep.damaged {
        outln!("  damaged blob {} ({}), used by:", d.hash, d.detail);
        for u in &d.used_by {
            outln!("    {u}");
        }
    }
    for r in &rep.unreadable_records {
        outln!("  unreadable record: {r} (run `decofs fsck`)");
    }
    if rep.marked > 0 {
        outln!("  {} files marked integrity_error", rep.marked);
    }
    if rep.exit_code == check::EXIT_CLEAN {
        outln!("clean");
    } else {
        outln!("{} files have damaged content", rep.damaged_paths.len());
    }
    Ok(exit)
}

/// `scrub --remote`: through the writer's daemon when mounted read-write (it has the
/// upload ledger), else on the store (read-write when it can be taken, for the
/// ledger; read-only beside another writer).
pub fn scrub_remote(store: &Path, json: bool) -> Outcome {
    let what = format!("cannot scrub the object store of {}", store.display());
    let (store_path, _) = control::resolve(store).or_fail(&what).map_err(not_run)?;
    let spinner = Spinner::new("verifying the object store's blobs", json);
    let rep: check::RemoteScrubReport = if control::daemons(&store_path).iter().any(|d| d.writer) {
        control::run(&store_path, protocol::ScrubRemote {}, false)
            .or_fail(&what)
            .map_err(not_run)?
    } else {
        let s = match check::open(&store_path, false) {
            Err(Error::StoreLocked { .. }) => check::open(&store_path, true),
            other => other,
        }
        .or_fail(&what)
        .map_err(not_run)?;
        Checker::new(&s)
            .scrub_remote(|_| {})
            .or_fail(&what)
            .map_err(not_run)?
    };
    drop(spinner);
    let exit = ExitCode::from(rep.exit_code);
    if json {
        output::json_pretty(&rep);
        return Ok(exit);
    }
    outln!(
        "{}: {} blobs in {} checked ({} bytes), {} damaged, {} missing; the store names {} ({} waiting for upload); {} unreferenced",
        store.display(),
        rep.checked,
        rep.url,
        rep.bytes,
        rep.damaged.len(),
        rep.missing.len(),
        rep.named,
        rep.pending,
        rep.unreferenced
    );
    for (kind, list) in [("damaged", &rep.damaged), ("missing", &rep.missing)] {
        for d in list {
            outln!("  {kind} blob {} ({}), used by:", d.hash, d.detail);
            for u in &d.used_by {
                outln!("    {u}");
            }
        }
    }
    for r in &rep.unreadable_records {
        outln!("  unreadable record: {r} (run `decofs fsck`)");
    }
    if rep.result != "clean" {
        outln!(
            "{} blobs damaged or missing in the object store [code: {}]",
            rep.damaged.len() + rep.missing.len(),
            rep.result
        );
    } else if rep.exit_code == check::EXIT_CLEAN {
        outln!("clean");
    } else {
        outln!("records could not be read; run `decofs fsck`");
    }
    Ok(exit)
}

pub fn gc(store: &Path, dry_run: bool, grace: u64, remote_grace: u64, json: bool) -> Outcome {
    let what = format!("cannot collect garbage in {}", store.display());
    // Mounted read-write: the daemon collects, with the filesystem running.
    let (store_path, _) = control::resolve(store).or_fail(&what).map_err(not_run)?;
    // gc reports no progress of its own: a spinner says it is at work.
    let spinner = Spinner::new("collecting unreferenced blobs", json);
    let rep: check::GcReport = if control::daemons(&store_path).iter().any(|d| d.writer) {
        let req = protocol::Gc {
            dry_run,
            grace,
            remote_grace: Some(remote_grace),
        };
        control::run(&store_path, req, true)
            .or_fail(&what)
            .map_err(not_run)?
    } else {
        let s = check::open(&store_path, dry_run)
            .or_fail(&what)
            .map_err(not_run)?;
        let mut rep = Checker::new(&s)
            .gc(dry_run, Duration::from_secs(grace))
            .or_fail(&what)
            .map_err(not_run)?;
        if s.remote().is_some() {
            // The bucket is changed only by the lease's holder.
            if !dry_run {
                s.take_lease().or_fail(&what).map_err(not_run)?;
            }
            let g = Duration::from_secs(remote_grace);
            rep.remote = Some(
                decofs::store::remote::gc::collect(&s, g, dry_run)
                    .or_fail(&what)
                    .map_err(not_run)?,
            );
        }
        rep
    };
    drop(spinner);
    if json {
        output::json_pretty(&rep);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{}: {} blobs, {} referenced; {} {} unreferenced blobs ({} bytes); {} younger than {grace}s kept",
        store.display(),
        rep.blobs,
        rep.referenced,
        if dry_run { "would delete" } else { "deleted" },
        rep.deleted,
        rep.bytes_freed,
        rep.kept_young
    );
    if let Some(r) = &rep.remote {
        outln!(
            "{}: {} blobs ({} bytes), {} referenced; {} newly marked unreferenced, {} marked and waiting out the grace period ({}s); {} {} blobs ({} bytes) and {} streams{}",
            if dry_run { "object store (dry run)" } else { "object store" },
            r.blobs,
            r.blob_bytes,
            r.referenced,
            r.candidates_marked,
            r.candidates_waiting,
            r.grace_secs,
            if dry_run { "would delete" } else { "deleted" },
            r.blobs_deleted,
            r.bytes_deleted,
            r.streams_deleted,
            if r.kept_named_again > 0 {
                format!("; {} kept, named or written again", r.kept_named_again)
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
