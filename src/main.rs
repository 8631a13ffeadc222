//! The `decofs` command line. Each subcommand is a small function calling the library.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use decofs::mount;
use decofs::store::{layout::DEFAULT_CHUNK_SIZE, Error, Store};

const EXIT_HELP: &str = "EXIT CODES:
  0  success
  1  the operation failed (the message names a code, e.g. store_not_found,
     not_a_store, format_unsupported, store_locked, mountpoint_not_found,
     mountpoint_busy; see README)
  2  the command line was invalid";

#[derive(Parser)]
#[command(name = "decofs", version, about = "A FUSE filesystem on a decomposed store", after_help = EXIT_HELP)]
struct Cli {
    /// Print errors as one JSON object: {"error", "code", "reason", "suggestion"}.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new, empty store at STORE (a new or empty directory on ext4/xfs/btrfs).
    Init {
        store: PathBuf,
        /// Content chunk size in bytes (power of two, 4 KiB..64 MiB).
        #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
        chunk_size: u32,
        /// How long deleted files stay restorable (e.g. 1d, 12h, 0 = no trash).
        #[arg(long, default_value = "1d")]
        trash_retention: String,
        /// How many earlier versions of each file to keep.
        #[arg(long, default_value_t = 10)]
        revisions_keep: u32,
        /// How long earlier versions are kept (e.g. 30d).
        #[arg(long, default_value = "30d")]
        revisions_max_age: String,
    },
    /// Mount STORE on MOUNTPOINT. Returns once the mount is live.
    Mount {
        store: PathBuf,
        mountpoint: PathBuf,
        /// Comma-separated options: ro, rw, allow_other, allow_root, nosuid, nodev,
        /// noexec, noatime, sync, dirsync (fstab's defaults, auto, noauto, _netdev,
        /// nofail are accepted and ignored).
        #[arg(short = 'o', default_value = "")]
        options: String,
        /// Stay in the foreground (for systemd); otherwise run as a background daemon
        /// logging to STORE/decofs.log.
        #[arg(long)]
        foreground: bool,
        /// Request-handling threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
    },
    /// Unmount a decofs mount and wait until its daemon has committed and exited.
    Umount {
        mountpoint: PathBuf,
        /// Detach now even if files are open (lazy unmount).
        #[arg(long)]
        lazy: bool,
    },
    /// Show a store's state: mounted or not, lock holder and epoch, uptime, open write
    /// sessions, space held by trash and revisions. PATH is a mountpoint or a store.
    Status { path: PathBuf },
    /// Deleted files and directories: list, restore, purge. TARGET is a mountpoint or a
    /// store; works mounted (through the daemon) and unmounted.
    Trash {
        #[command(subcommand)]
        cmd: TrashCmd,
    },
    /// Earlier versions of a file: list and restore. FILE is a path inside a mount, or
    /// STORE/path/in/the/filesystem for an unmounted store.
    Versions {
        #[command(subcommand)]
        cmd: VersionsCmd,
    },
    /// The single-writer lock of a store.
    Lock {
        #[command(subcommand)]
        cmd: LockCmd,
    },
    /// Check a store that is not mounted read-write: records, entries, link counts,
    /// hints, needed blobs, orphans, stray files. Exit codes (as e2fsck): 0 clean,
    /// 1 errors were repaired, 4 problems are left, 8 the check could not run (e.g.
    /// store_locked: --repair needs the store unmounted).
    Fsck {
        store: PathBuf,
        /// Repair what can be repaired (takes the store's writer lock).
        #[arg(long)]
        repair: bool,
        /// Orphans younger than this many seconds are left alone.
        #[arg(long, default_value_t = 3600)]
        grace: u64,
    },
    /// Read every blob any record names and verify its hash; name the files that use a
    /// damaged one (and mark them integrity_error unless the store is mounted
    /// read-write). Exit codes: 0 clean, 4 damage found, 8 could not run.
    Scrub { store: PathBuf },
    /// Delete blobs no record names (live, trash, revisions) that are older than the
    /// grace period. Needs the store unmounted unless --dry-run.
    Gc {
        store: PathBuf,
        /// Only report what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Keep unreferenced blobs younger than this many seconds (a write in progress).
        #[arg(long, default_value_t = 3600)]
        grace: u64,
    },
}

#[derive(Subcommand)]
enum TrashCmd {
    /// List the trash, oldest first.
    Ls { target: PathBuf },
    /// Restore by id (or a unique prefix of it) or by original path (relative to the
    /// filesystem root, or absolute under the mountpoint). Directories restore whole.
    Restore {
        target: PathBuf,
        selector: PathBuf,
        /// Restore to this path instead of the origin.
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Purge (free) trash entries: all, those older than a duration (30s, 10m, 2h, 1d),
    /// or one id.
    Purge {
        target: PathBuf,
        #[arg(long, value_name = "DURATION")]
        older_than: Option<String>,
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Subcommand)]
enum VersionsCmd {
    /// List the revisions of a file, oldest first.
    Ls { file: PathBuf },
    /// Make revision REV the current content (the current content becomes a revision).
    Restore { file: PathBuf, rev: String },
}

#[derive(Subcommand)]
enum LockCmd {
    /// Break the lock of a holder that died where this host cannot see it (another
    /// host). The epoch increases: the old holder's writes are refused from now on.
    Break { store: PathBuf },
    /// Show who holds the lock and the current epoch.
    Show { store: PathBuf },
}

struct Failure {
    what: String,
    code: String,
    reason: String,
    suggestion: String,
}

impl Failure {
    fn from(what: impl Into<String>, e: &Error) -> Failure {
        // An error relayed from a daemon keeps the daemon's code.
        let code = match e {
            Error::Remote { code, .. } => code.clone(),
            _ => e.code().into(),
        };
        Failure {
            what: what.into(),
            code,
            reason: e.to_string(),
            suggestion: e.suggestion(),
        }
    }
}

fn init_logging(foreground_daemon: bool) {
    // fuser warns when it cannot unmount a mount we already unmounted: noise.
    let default = if foreground_daemon {
        "info,fuser::session=error"
    } else {
        "warn"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_millis()
        .init();
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.cmd {
        Cmd::Init {
            store,
            chunk_size,
            trash_retention,
            revisions_keep,
            revisions_max_age,
        } => {
            let what = format!("cannot create a store at {}", store.display());
            let dur = |s: &str| {
                decofs::store::layout::parse_duration(s).ok_or_else(|| Failure {
                    what: what.clone(),
                    code: "invalid_argument".into(),
                    reason: format!("'{s}' is not a duration"),
                    suggestion: "use seconds or a number with s, m, h, d or w, e.g. 1d".into(),
                })
            };
            let policy = decofs::store::layout::Policy {
                trash_retention_secs: dur(&trash_retention)?,
                revisions_keep,
                revisions_max_age_secs: dur(&revisions_max_age)?,
            };
            let f = Store::init_with(&store, chunk_size, policy)
                .map_err(|e| Failure::from(&what, &e))?;
            println!(
                "created store {} (id {}, chunk size {})",
                store.display(),
                f.store_id,
                f.chunk_size
            );
            Ok(())
        }
        Cmd::Mount {
            store,
            mountpoint,
            options,
            foreground,
            threads,
        } => {
            let what = format!(
                "cannot mount {} on {}",
                store.display(),
                mountpoint.display()
            );
            let opts = mount::parse_opts(&options).map_err(|e| Failure::from(&what, &e))?;
            if foreground {
                return mount::run_foreground(&store, &mountpoint, &opts, threads)
                    .map_err(|e| Failure::from(&what, &e));
            }
            // Check what can be checked here, so the common mistakes answer at once and
            // nothing is started.
            mount::check_mountpoint(&mountpoint).map_err(|e| Failure::from(&what, &e))?;
            decofs::store::layout::Layout::new(&store)
                .read_format()
                .map_err(|e| Failure::from(&what, &e))?;
            let store_abs = std::fs::canonicalize(&store).unwrap_or(store.clone());
            let mnt_abs = std::fs::canonicalize(&mountpoint).unwrap_or(mountpoint.clone());
            let args: Vec<OsString> = vec![
                "mount".into(),
                store_abs.clone().into(),
                mnt_abs.into(),
                "-o".into(),
                options.into(),
                "--threads".into(),
                threads.to_string().into(),
            ];
            mount::spawn_background(&store_abs, &args).map_err(|r| Failure {
                what,
                code: r.code,
                reason: r.reason,
                suggestion: r.suggestion,
            })
        }
        Cmd::Umount { mountpoint, lazy } => mount::umount(&mountpoint, lazy)
            .map_err(|e| Failure::from(format!("cannot unmount {}", mountpoint.display()), &e)),
        Cmd::Status { path } => {
            let v = decofs::control::status(&path).map_err(|e| {
                Failure::from(format!("cannot get the status of {}", path.display()), &e)
            })?;
            if cli.json {
                println!("{v}");
            } else {
                print!("{}", decofs::control::render_status(&v));
            }
            Ok(())
        }
        Cmd::Lock { cmd } => lock_cmd(cmd, cli.json),
        Cmd::Trash { cmd } => trash_cmd(cmd, cli.json),
        Cmd::Versions { cmd } => versions_cmd(cmd, cli.json),
        Cmd::Fsck {
            store,
            repair,
            grace,
        } => check_cmd::fsck(&store, repair, grace, cli.json),
        Cmd::Scrub { store } => check_cmd::scrub(&store, cli.json),
        Cmd::Gc {
            store,
            dry_run,
            grace,
        } => check_cmd::gc(&store, dry_run, grace, cli.json),
    }
}

/// A path inside the filesystem as the store's namespace sees it (mount prefix removed).
fn fs_path(p: &std::path::Path, mount: &Option<PathBuf>) -> PathBuf {
    let rel = match mount {
        Some(m) if p.is_absolute() => p.strip_prefix(m).unwrap_or(p),
        _ => p,
    };
    rel.strip_prefix("/").unwrap_or(rel).to_path_buf()
}

fn trash_cmd(cmd: TrashCmd, json: bool) -> Result<(), Failure> {
    use decofs::control;
    use serde_json::json;
    let (target, req, mutating, what) = match cmd {
        TrashCmd::Ls { target } => (
            target,
            json!({"cmd": "trash_ls"}),
            false,
            "cannot list the trash",
        ),
        TrashCmd::Restore {
            target,
            selector,
            to,
        } => {
            let mount = control::locate(&target).ok().and_then(|l| l.1);
            let sel = fs_path(&selector, &mount);
            let to = to.map(|t| control::path_to_json(&fs_path(&t, &mount)));
            (
                target,
                json!({"cmd": "trash_restore", "sel": control::path_to_json(&sel), "to": to}),
                true,
                "cannot restore from the trash",
            )
        }
        TrashCmd::Purge {
            target,
            older_than,
            id,
        } => {
            let secs =
                match older_than {
                    Some(d) => Some(decofs::store::layout::parse_duration(&d).ok_or_else(
                        || Failure {
                            what: "cannot purge the trash".into(),
                            code: "invalid_argument".into(),
                            reason: format!("'{d}' is not a duration"),
                            suggestion:
                                "use seconds or a number with s, m, h, d or w, e.g. 2h".into(),
                        },
                    )?),
                    None => None,
                };
            (
                target,
                json!({"cmd": "trash_purge", "older_than": secs, "id": id}),
                true,
                "cannot purge the trash",
            )
        }
    };
    let (store, _, _) = control::locate(&target).map_err(|e| Failure::from(what, &e))?;
    let v = control::run(&store, &req, mutating).map_err(|e| Failure::from(what, &e))?;
    if json {
        println!("{v}");
    } else if let Some(entries) = v.get("entries").and_then(|e| e.as_array()) {
        println!(
            "{:<36}  {:<14}  {:>12}  {:<9}  ORIGIN",
            "ID", "DELETED (unix)", "SIZE", "KIND"
        );
        for e in entries {
            let origin = control::show_path(&e["origin"]).unwrap_or_else(|| {
                format!(
                    "(gone)/{}",
                    control::show_path(&e["origin_name"]).unwrap_or_default()
                )
            });
            println!(
                "{:<36}  {:<14}  {:>12}  {:<9}  {}",
                e["id"].as_str().unwrap_or(""),
                e["deleted_at"],
                e["size"],
                e["kind"].as_str().unwrap_or(""),
                origin
            );
        }
    } else if let Some(to) = v.get("restored_to") {
        println!("restored to {}", control::show_path(to).unwrap_or_default());
    } else {
        println!(
            "purged {} node(s) and {} revision(s), freed {} bytes ({} still open, kept)",
            v["nodes"], v["revisions"], v["bytes_freed"], v["skipped_open"]
        );
    }
    Ok(())
}

fn versions_cmd(cmd: VersionsCmd, json: bool) -> Result<(), Failure> {
    use decofs::control;
    use serde_json::json;
    let (file, mut req, mutating) = match cmd {
        VersionsCmd::Ls { file } => (file, json!({"cmd": "versions_ls"}), false),
        VersionsCmd::Restore { file, rev } => {
            (file, json!({"cmd": "versions_restore", "rev": rev}), true)
        }
    };
    let what = format!("cannot read the versions of {}", file.display());
    let (store, _, rel) = control::locate(&file).map_err(|e| Failure::from(&what, &e))?;
    req["path"] = control::path_to_json(&rel);
    let v = control::run(&store, &req, mutating).map_err(|e| Failure::from(&what, &e))?;
    if json {
        println!("{v}");
    } else if let Some(list) = v.get("versions").and_then(|e| e.as_array()) {
        println!("{:<20}  {:>12}  MTIME (unix)", "REV", "SIZE");
        for r in list {
            println!(
                "{:<20}  {:>12}  {}",
                r["rev"].as_str().unwrap_or(""),
                r["size"],
                r["mtime"]
            );
        }
    } else {
        println!("restored revision {}", v["restored"].as_str().unwrap_or(""));
    }
    Ok(())
}

fn lock_cmd(cmd: LockCmd, json: bool) -> Result<(), Failure> {
    use decofs::store::{layout::Layout, lock};
    match cmd {
        LockCmd::Break { store } => {
            let what = format!("cannot break the lock of {}", store.display());
            let layout = Layout::new(&store);
            layout.read_format().map_err(|e| Failure::from(&what, &e))?;
            let live = lock::is_locked(&layout);
            let (holder, epoch) = lock::break_lock(&store).map_err(|e| Failure::from(&what, &e))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"broken_holder": holder, "epoch": epoch, "holder_was_alive_here": live})
                );
            } else {
                if live {
                    eprintln!("decofs: warning: the holder is alive on this host; its writes are refused from now on");
                }
                println!(
                    "lock broken (was: {}); new epoch {epoch}",
                    if holder.is_empty() { "free" } else { &holder }
                );
            }
            Ok(())
        }
        LockCmd::Show { store } => {
            let what = format!("cannot read the lock of {}", store.display());
            let layout = Layout::new(&store);
            layout.read_format().map_err(|e| Failure::from(&what, &e))?;
            let epoch = lock::read_epoch(&layout).map_err(|e| Failure::from(&what, &e))?;
            let (locked, holder) = (lock::is_locked(&layout), lock::holder(&layout));
            if json {
                println!(
                    "{}",
                    serde_json::json!({"locked": locked, "holder": holder, "epoch": epoch})
                );
            } else if locked {
                println!("held by {holder}; epoch {epoch}");
            } else {
                println!("free; epoch {epoch}");
            }
            Ok(())
        }
    }
}

/// `mount -t decofs STORE DIR -o opts` runs `/sbin/mount.decofs STORE DIR [-sfnv] [-o
/// opts] [-t type]`: translate that into `decofs mount` arguments (None: fake mount).
fn mount_helper_args(args: &[OsString]) -> Option<Vec<OsString>> {
    let mut pos = Vec::new();
    let mut opts = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("-o") => opts.extend(it.next().cloned()),
            Some("-t") | Some("-N") => {
                it.next();
            }
            Some(f) if f.starts_with('-') && f.len() > 1 && !f.starts_with("--") => {
                if f.contains('f') {
                    return None; // -f: fake, do everything but mount
                }
            }
            _ => pos.push(a.clone()),
        }
    }
    let mut out: Vec<OsString> = vec!["decofs".into(), "mount".into()];
    out.extend(pos);
    if !opts.is_empty() {
        let joined: Vec<String> = opts
            .iter()
            .map(|o| o.to_string_lossy().into_owned())
            .collect();
        out.push("-o".into());
        out.push(joined.join(",").into());
    }
    Some(out)
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let invoked_as = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned());
    let cli = if invoked_as
        .as_deref()
        .is_some_and(|n| n.starts_with("mount."))
    {
        match mount_helper_args(&argv) {
            Some(args) => Cli::parse_from(args),
            None => return ExitCode::SUCCESS,
        }
    } else {
        Cli::parse()
    };
    // -o log=LEVEL sets the daemon's log filter unless RUST_LOG says otherwise.
    if let Cmd::Mount { options, .. } = &cli.cmd {
        if let Some(level) = options
            .split(',')
            .find_map(|o| o.trim().strip_prefix("log="))
        {
            if std::env::var_os("RUST_LOG").is_none() {
                std::env::set_var("RUST_LOG", level);
            }
        }
    }
    let daemon = matches!(
        cli.cmd,
        Cmd::Mount {
            foreground: true,
            ..
        }
    );
    init_logging(daemon);
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::from(check_cmd::exit_status(0)),
        Err(f) => {
            if json {
                eprintln!(
                    "{}",
                    serde_json::json!({"error": f.what, "code": f.code, "reason": f.reason, "suggestion": f.suggestion})
                );
            } else {
                eprintln!(
                    "decofs: {}: {} [code: {}] {}",
                    f.what, f.reason, f.code, f.suggestion
                );
            }
            ExitCode::from(check_cmd::exit_status(1))
        }
    }
}

/// `fsck`, `scrub`, `gc`: open the store, run the check, print its report. fsck and
/// scrub exit with e2fsck-like codes, recorded here for `main`.
mod check_cmd {
    use std::path::Path;
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::time::Duration;

    use decofs::store::check::{self, Progress, EXIT_NOT_RUN};
    use decofs::store::{Error, Store};

    use super::Failure;

    static EXIT_STATUS: AtomicU8 = AtomicU8::new(0);

    /// The exit status a check asked for, or `default`.
    pub fn exit_status(default: u8) -> u8 {
        match EXIT_STATUS.load(Ordering::Relaxed) {
            0 => default,
            c => c,
        }
    }

    fn fail(code: u8, what: &str, e: &Error) -> Failure {
        EXIT_STATUS.store(code, Ordering::Relaxed);
        Failure::from(what, e)
    }

    fn progress(p: &Progress) {
        eprintln!("decofs: {}: {} done", p.phase, p.done);
    }

    fn print_json<T: serde::Serialize>(v: &T) {
        println!(
            "{}",
            serde_json::to_string_pretty(v).expect("reports serialize")
        );
    }

    pub fn fsck(store: &Path, repair: bool, grace: u64, json: bool) -> Result<(), Failure> {
        let what = format!("cannot check {}", store.display());
        let s = Store::open_for_check(store, !repair).map_err(|e| fail(EXIT_NOT_RUN, &what, &e))?;
        let rep = s
            .fsck(repair, Duration::from_secs(grace), progress)
            .map_err(|e| fail(EXIT_NOT_RUN, &what, &e))?;
        EXIT_STATUS.store(rep.exit_code, Ordering::Relaxed);
        if json {
            print_json(&rep);
            return Ok(());
        }
        println!(
            "{}: {} nodes ({} directories, {} files, {} other), {} entries, {} in trash, {} revisions, {} blobs",
            store.display(), rep.nodes, rep.dirs, rep.files, rep.other, rep.entries, rep.trash,
            rep.revisions, rep.blobs
        );
        for p in &rep.problems {
            let state = if p.repaired { "repaired" } else { "found" };
            println!("  {state:8} {} {}: {}", p.code, p.path, p.detail);
        }
        if rep.young_orphans > 0 {
            println!(
                "  {} unnamed nodes younger than {grace}s left alone (a create may be in progress)",
                rep.young_orphans
            );
        }
        if rep.stale_staging > 0 {
            println!(
                "  {} stale staging files in sessions/ ({} removed)",
                rep.stale_staging, rep.stale_staging_removed
            );
        }
        let left = rep.problems.iter().filter(|p| !p.repaired).count();
        match rep.exit_code {
            check::EXIT_CLEAN => println!("clean"),
            check::EXIT_REPAIRED => println!("{} errors repaired", rep.problems.len()),
            _ if repair => println!("{left} problems left that fsck cannot repair"),
            _ => println!("{left} problems found; `decofs fsck --repair` repairs what it can"),
        }
        Ok(())
    }

    pub fn scrub(store: &Path, json: bool) -> Result<(), Failure> {
        let what = format!("cannot scrub {}", store.display());
        // Mark damaged files only when no read-write mount is running.
        let s = match Store::open_for_check(store, false) {
            Err(Error::StoreLocked { .. }) => Store::open_for_check(store, true),
            other => other,
        }
        .map_err(|e| fail(EXIT_NOT_RUN, &what, &e))?;
        let rep = s
            .scrub(progress)
            .map_err(|e| fail(EXIT_NOT_RUN, &what, &e))?;
        EXIT_STATUS.store(rep.exit_code, Ordering::Relaxed);
        if json {
            print_json(&rep);
            return Ok(());
        }
        println!(
            "{}: {} blobs checked ({} bytes)",
            store.display(),
            rep.blobs_checked,
            rep.bytes_checked
        );
        for d in &rep.damaged {
            println!("  damaged blob {} ({}), used by:", d.hash, d.detail);
            for u in &d.used_by {
                println!("    {u}");
            }
        }
        for r in &rep.unreadable_records {
            println!("  unreadable record: {r} (run `decofs fsck`)");
        }
        if rep.marked > 0 {
            println!("  {} files marked integrity_error", rep.marked);
        }
        if rep.exit_code == check::EXIT_CLEAN {
            println!("clean");
        } else {
            println!("{} files have damaged content", rep.damaged_paths.len());
        }
        Ok(())
    }

    pub fn gc(store: &Path, dry_run: bool, grace: u64, json: bool) -> Result<(), Failure> {
        let what = format!("cannot collect garbage in {}", store.display());
        let s = Store::open_for_check(store, dry_run).map_err(|e| Failure::from(&what, &e))?;
        let rep = s
            .gc(dry_run, Duration::from_secs(grace))
            .map_err(|e| Failure::from(&what, &e))?;
        if json {
            print_json(&rep);
            return Ok(());
        }
        println!(
            "{}: {} blobs, {} referenced; {} {} unreferenced blobs ({} bytes); {} younger than {grace}s kept",
            store.display(),
            rep.blobs,
            rep.referenced,
            if dry_run { "would delete" } else { "deleted" },
            rep.deleted,
            rep.bytes_freed,
            rep.kept_young
        );
        Ok(())
    }
}
