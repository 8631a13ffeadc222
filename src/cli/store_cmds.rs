//! `init`, `mount`, `umount`, `status`: a store's life.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use decofs::control::protocol::StatusReply;
use decofs::daemon;
use decofs::store::layout::{self, Layout, Policy};
use decofs::store::Store;

use super::output::{self, errln, invalid, outln, Context, Outcome};

pub fn init(
    store: &Path,
    chunk_size: u32,
    trash_retention: &str,
    revisions_keep: u32,
    revisions_max_age: &str,
    (trash_min_age, trash_skip): (&str, &str),
) -> Outcome {
    let what = format!("cannot create a store at {}", store.display());
    let dur = |s: &str| {
        layout::parse_duration(s).ok_or_else(|| {
            invalid(
                &what,
                format!("'{s}' is not a duration"),
                "use seconds or a number with s, m, h, d or w, e.g. 1d",
            )
        })
    };
    let policy = Policy {
        trash_retention_secs: dur(trash_retention)?,
        revisions_keep,
        revisions_max_age_secs: dur(revisions_max_age)?,
        trash_min_age_secs: dur(trash_min_age)?,
        trash_skip: layout::ScratchNames::parse(trash_skip).map_err(|e| {
            invalid(
                &what,
                format!("--trash-skip: {e}"),
                "give file name patterns separated by ':', e.g. '*.tmp:*~'",
            )
        })?,
    };
    let f = Store::init_with(store, chunk_size, policy).or_fail(&what)?;
    outln!(
        "created store {} (id {}, chunk size {})",
        store.display(),
        f.store_id,
        f.chunk_size
    );
    let staging = Layout::new(store).sessions();
    if layout::records_fit_in_inode(&staging) == Some(false) {
        outln!(
            "note: this filesystem's inodes are too small to hold a node's record, so each \
             record takes a block of its own: a cold walk (find, ls -l, git status) \
             reads one more block per file; ext4 made with `mkfs.ext4 -I 1024` keeps \
             records inside the inodes"
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn mount(
    store: &Path,
    mountpoint: &Path,
    options: String,
    foreground: bool,
    threads: usize,
) -> Outcome {
    let what = format!(
        "cannot mount {} on {}",
        store.display(),
        mountpoint.display()
    );
    if options.split(',').any(|o| o.trim() == "remount") {
        return remount(mountpoint, &options);
    }
    let opts = daemon::parse_opts(&options).or_fail(&what)?;
    if foreground {
        daemon::run_foreground(store, mountpoint, &opts, threads).or_fail(&what)?;
        return Ok(ExitCode::SUCCESS);
    }
    // Check what can be checked here, so the common mistakes answer at once and
    // nothing is started.
    let mnt = daemon::check_mountpoint(mountpoint).or_fail(&what)?;
    daemon::check_mountpoint_empty(&mnt, &opts).or_fail(&what)?;
    Layout::new(store).read_format().or_fail(&what)?;
    let store_abs = std::fs::canonicalize(store).unwrap_or(store.to_path_buf());
    // A writer whose mount is gone (`umount MNT` returns before its daemon exits) still
    // holds the store for a moment: wait for it here, where the user sees why.
    if !opts.read_only {
        daemon::wait_for_departing_writer(&store_abs, &mut |m| errln!("decofs: {m}"))
            .or_fail(&what)?;
    }
    let mnt_abs = std::fs::canonicalize(mountpoint).unwrap_or(mountpoint.to_path_buf());
    let args: Vec<OsString> = vec![
        "mount".into(),
        store_abs.clone().into(),
        mnt_abs.into(),
        "-o".into(),
        options.into(),
        "--threads".into(),
        threads.to_string().into(),
    ];
    daemon::spawn_background(&store_abs, &args).or_fail(&what)?;
    Ok(ExitCode::SUCCESS)
}

pub fn umount(mountpoint: &Path, lazy: bool) -> Outcome {
    let taken = daemon::umount(mountpoint, lazy)
        .or_fail(&format!("cannot unmount {}", mountpoint.display()))?;
    if let Some(holder) = taken {
        errln!(
            "decofs: unmounted {}; its daemon has exited and the store is now held by {}",
            mountpoint.display(),
            output::show_holder(&holder)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Options the kernel reports for a live FUSE mount, which mount(8) passes back at a
/// remount: they cannot change and are ignored.
const KERNEL_REPORTED: [&str; 12] = [
    "relatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "lazytime",
    "nolazytime",
    "user_id=",
    "group_id=",
    "rootmode=",
    "max_read=",
    "blksize=",
    "fd=",
];

/// Options that change the kernel's per-mount flags at a remount.
const REMOUNT_FLAGS: [&str; 11] = [
    "nosuid", "suid", "nodev", "dev", "noexec", "exec", "noatime", "atime", "sync", "async",
    "dirsync",
];

/// `mount -o remount,ro|rw MNT` (through the helper): ask the daemon serving MNT to
/// switch. Other decofs options are checked as for a mount and left as they are.
fn remount(mountpoint: &Path, options: &str) -> Outcome {
    let what = format!("cannot remount {}", mountpoint.display());
    let mnt = std::fs::canonicalize(mountpoint)
        .map_err(|_| decofs::store::Error::NotMounted(mountpoint.to_path_buf()))
        .or_fail(&what)?;
    let mut read_only = None;
    let mut flags = Vec::new();
    let mut rest = Vec::new();
    for o in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        match o {
            "remount" => {}
            "ro" => read_only = Some(true),
            "rw" => read_only = Some(false),
            f if REMOUNT_FLAGS.contains(&f) => flags.push(f.to_string()),
            k if KERNEL_REPORTED
                .iter()
                .any(|r| k == *r || (r.ends_with('=') && k.starts_with(r))) => {}
            other => rest.push(other),
        }
    }
    // Every other option must be one a mount takes (an unknown one is refused).
    daemon::parse_opts(&rest.join(",")).or_fail(&what)?;
    let entry = decofs::host::mount_at(&mnt)
        .filter(|m| m.fstype == "fuse.decofs" || m.fstype == "fuse")
        .ok_or_else(|| decofs::store::Error::NotMounted(mnt.clone()))
        .or_fail(&what)?;
    let store = std::path::PathBuf::from(&entry.source);
    let d = decofs::control::daemons(&store)
        .into_iter()
        .find(|d| d.mountpoint == mnt)
        .ok_or_else(|| decofs::store::Error::NotMounted(mnt.clone()))
        .or_fail(&what)?;
    // Neither ro nor rw given (`remount,nosuid`): the mount stays as it is now.
    let read_only = read_only.unwrap_or(entry.ro);
    if !read_only && !d.writer {
        return Err(output::Failure::new(decofs::control::Report {
            what: format!("cannot remount {} read-write", mnt.display()),
            code: "read_only".into(),
            reason: "it was mounted with -o ro, which opens the store without the writer lock"
                .into(),
            suggestion: "unmount it and mount it without -o ro".into(),
        }));
    }
    let req = decofs::control::protocol::Remount { read_only, flags };
    decofs::control::call(&d.socket, req, std::time::Duration::from_secs(600)).or_fail(&what)?;
    Ok(ExitCode::SUCCESS)
}

pub fn status(path: &Path, json: bool) -> Outcome {
    let v = decofs::control::status(path)
        .or_fail(&format!("cannot get the status of {}", path.display()))?;
    if json {
        output::json(&v);
    } else {
        let mut o = output::Out::new();
        o.str(&render_status(&v));
    }
    Ok(ExitCode::SUCCESS)
}

/// A path of the reply for people: as it is when UTF-8, else `or`.
fn utf8_or<'a>(p: &'a decofs::jsonpath::WirePath, or: &'a str) -> &'a str {
    p.0.to_str().unwrap_or(or)
}

/// Human-readable status.
pub fn render_status(v: &StatusReply) -> String {
    let mut s = String::new();
    s.push_str(&format!("store:      {}\n", utf8_or(&v.store, "")));
    match &v.daemon {
        Some(d) if v.mounted => {
            s.push_str(&format!(
                "mounted:    yes, on {} by pid {} ({}), up {} s\n",
                utf8_or(&d.mountpoint, "?"),
                d.pid,
                if d.read_only {
                    "read-only"
                } else {
                    "read-write"
                },
                d.uptime_secs
            ));
            s.push_str(&format!(
                "sessions:   {} open write session(s)\n",
                d.open_sessions
            ));
        }
        _ => s.push_str("mounted:    no\n"),
    }
    s.push_str(&format!(
        "lock:       {} (epoch {})\n",
        if v.locked {
            format!("held by {}", output::show_holder(&v.holder))
        } else {
            "free".to_string()
        },
        v.epoch
    ));
    s.push_str(&format!(
        "trash:      {} node(s), {} bytes\n",
        v.trash.nodes, v.trash.bytes
    ));
    s.push_str(&format!(
        "revisions:  {} revision(s), {} bytes\n",
        v.revisions.count, v.revisions.bytes
    ));
    s.push_str(&format!(
        "snapshots:  {} snapshot(s), {} copied record(s) naming {} bytes\n",
        v.snapshots.count, v.snapshots.copies, v.snapshots.bytes
    ));
    if let Some(r) = &v.remote {
        s.push_str(&format!(
            "remote:     {} at {}\n",
            r.state.url, r.state.endpoint
        ));
        if r.live {
            s.push_str(&format!(
                "uploads:    {} blob(s), {} bytes waiting; {} uploaded ({} bytes), {} fetched this run\n",
                r.state.pending_blobs, r.state.pending_bytes, r.state.uploaded, r.state.uploaded_bytes, r.state.fetched
            ));
            s.push_str(&format!(
                "cache:      {} bytes of blobs on disk{}, {} evicted\n",
                r.state.cache_bytes,
                if r.state.cache_limit == 0 {
                    " (no bound)".to_string()
                } else {
                    format!(" (bound {})", r.state.cache_limit)
                },
                r.state.evicted
            ));
            if let Some(l) = &r.lease {
                s.push_str(&format!(
                    "lease:      epoch {}, {}\n",
                    l.epoch,
                    if l.lost {
                        "LOST: another writer took the object store; read-only".to_string()
                    } else {
                        format!(
                            "held until {} (ttl {} s){}",
                            output::local_time(l.expires_unix_ms / 1000),
                            l.ttl_ms / 1000,
                            l.last_error
                                .as_ref()
                                .map(|e| format!("; renewal failing: {e}"))
                                .unwrap_or_default()
                        )
                    }
                ));
            }
            if r.lease.is_none() && r.follow.is_none() {
                s.push_str(
                    "lease:      not taken yet (the object store could not be reached): nothing is published until it is\n",
                );
            }
            if let Some(e) = &r.state.last_error {
                s.push_str(&format!(
                    "last error: {e}{}\n",
                    r.state
                        .last_error_at
                        .map(|t| format!(" at {}", output::local_time(t as i64)))
                        .unwrap_or_default()
                ));
            }
        } else {
            s.push_str("uploads:    known to the read-write mount only (none runs)\n");
        }
        if let Some(p) = &r.published {
            s.push_str(&format!(
                "published:  publish {} at {}; since then {} node(s) and {} entry(ies) changed\n",
                p.seq,
                output::local_time(p.published_unix),
                p.unpublished_nodes,
                p.unpublished_entries
            ));
        }
        if let Some(f) = &r.follow {
            s.push_str(&format!(
                "following:  at publish {} of {}; {} applied by this mount{}{}\n",
                f.seq,
                f.head_seq,
                f.applied,
                f.checked_unix
                    .map(|t| format!(", head read at {}", output::local_time(t)))
                    .unwrap_or_default(),
                f.last_error
                    .as_ref()
                    .map(|e| format!("; FAILING: {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    let ix = &v.index;
    match ix["state"].as_str().unwrap_or("") {
        "off" | "closed" => s.push_str(&format!(
            "index:      {}\n",
            ix["note"].as_str().unwrap_or("")
        )),
        state => {
            s.push_str(&format!(
                "index:      {state}; queue {} event(s), lag {} event(s) / {} ms, {} applied, {} dropped\n",
                ix["queue_depth"], ix["lag_events"], ix["lag_ms"], ix["applied"], ix["dropped"]
            ));
            if let Some(r) = ix["dirty_reason"].as_str() {
                s.push_str(&format!("            catching up: {r}\n"));
            }
            let lr = &ix["last_reconcile"];
            if !lr.is_null() {
                s.push_str(&format!(
                    "reconcile:  {} at {} ({}): repaired {}{}\n",
                    lr["kind"].as_str().unwrap_or("?"),
                    match lr["at"].as_i64() {
                        Some(t) => output::local_time(t),
                        None => lr["at"].to_string(),
                    },
                    lr["reason"].as_str().unwrap_or(""),
                    lr["repaired"],
                    match lr["duration_ms"].as_u64() {
                        Some(ms) => format!(", {} node(s) in {ms} ms", lr["nodes"]),
                        None => String::new(),
                    }
                ));
            }
            s.push_str(&format!(
                "changes:    {} .. {} (log {})\n",
                ix["changes"]["first_seq"],
                ix["changes"]["last_seq"],
                ix["changes"]["log_id"].as_str().unwrap_or("")
            ));
        }
    }
    s
}
