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
     mountpoint_busy, resource_not_consistent; see README)
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
        /// noexec, noatime, sync, dirsync, log=LEVEL, trash_retention=DURATION,
        /// revisions_keep=N, revisions_max_age=DURATION, index=off, index_queue=N,
        /// index_delay=MS (fstab's defaults, auto, noauto, _netdev, nofail are accepted
        /// and ignored).
        #[arg(short = 'o', default_value = "")]
        options: String,
        /// Stay in the foreground (for systemd); otherwise run as a background daemon
        /// logging to STORE/decofs.log.
        #[arg(long)]
        foreground: bool,
        /// Request-handling threads. Most of them wait on the disk, not the CPU: a cold
        /// `git status` (parallel lstat) keeps one record read in flight per thread
        /// (measured on an 8,556-file checkout: 1.5-2.0 s with 4, 1.2-1.6 s with 16).
        #[arg(long, default_value_t = 16)]
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
    /// Find files by name, type, size and age from the index (no tree walk). PATH is a
    /// directory in a mount, a mountpoint, a store, or STORE/dir. Prints one path per
    /// line, as find(1) would (the start included when it matches).
    Find {
        path: PathBuf,
        /// A shell glob the name must match (as find -name).
        #[arg(long)]
        name: Option<OsString>,
        /// f (file), d (directory), l (symlink), p, s, c, b.
        #[arg(long = "type", value_name = "TYPE")]
        kind: Option<String>,
        /// +N (more than N bytes), -N (less than), N (exactly); k, M, G multiply by
        /// 1024, 1024^2, 1024^3; c or no suffix means bytes. Unlike find(1), sizes
        /// are compared exactly, not rounded up to units.
        #[arg(long, allow_hyphen_values = true)]
        size: Option<String>,
        /// Modified after TIME: a file (its mtime, as find -newer), @UNIXSECS,
        /// YYYY-MM-DD[THH:MM[:SS]] (UTC), or an age such as 10m, 2h, 3d.
        #[arg(long)]
        newer: Option<OsString>,
        /// Separate paths with NUL instead of newline.
        #[arg(short = '0', long)]
        print0: bool,
        #[command(flatten)]
        fresh: FreshArgs,
    },
    /// Recursive totals of a directory from the index, instantly: bytes (apparent sizes,
    /// the directory itself included, hard links counted each time, as du -s -b -l),
    /// files and directories below it. Prints "BYTES FILES DIRS PATH" (tab-separated).
    Du {
        path: PathBuf,
        /// Also print the directories this many levels below PATH.
        #[arg(short = 'd', long, default_value_t = 0)]
        depth: u32,
        #[command(flatten)]
        fresh: FreshArgs,
    },
    /// The numbered change log of a store (for backup and sync tools). Prints
    /// "SEQ UNIXTIME OP PATH [-> PATH]" per change; --json prints one JSON object per
    /// line. A consumer remembers the last SEQ and asks again with --since SEQ.
    Changes {
        path: PathBuf,
        /// Only changes after sequence number SEQ (default: every change kept).
        #[arg(long)]
        since: Option<u64>,
        /// Keep printing new changes as they happen (until interrupted).
        #[arg(long)]
        follow: bool,
        /// At most this many changes per request.
        #[arg(long, default_value_t = 10_000)]
        limit: u64,
        /// First wait (up to 60 s) until the index has applied every change made so far.
        #[arg(long)]
        wait: bool,
    },
    /// The metadata index of a store: verify it against the tree, rebuild it.
    Index {
        #[command(subcommand)]
        cmd: IndexCmd,
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
    /// grace period. STORE may be a mountpoint or a store; when it is mounted
    /// read-write, the daemon collects while the filesystem keeps running.
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

/// How a query treats an index that is behind the filesystem.
#[derive(clap::Args, Clone, Copy)]
struct FreshArgs {
    /// If the index lags, wait (up to --timeout seconds) until it is current.
    #[arg(long)]
    wait: bool,
    /// Answer from the index even if it lags (the answer then says so on stderr).
    #[arg(long, conflicts_with = "wait")]
    stale: bool,
    /// Seconds --wait waits before giving up with resource_not_consistent.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

#[derive(Subcommand)]
enum IndexCmd {
    /// Rebuild an index from the tree beside the live one and compare them. Exit 0
    /// when they are equal, 1 when they differ (the differences are listed). Waits
    /// for the index to be current first (run it when writes are quiet).
    Verify {
        path: PathBuf,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Rebuild the index from the tree now and report what was repaired.
    Rebuild { path: PathBuf },
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
            let staging = decofs::store::layout::Layout::new(&store).sessions();
            if decofs::store::layout::records_fit_in_inode(&staging) == Some(false) {
                println!(
                    "note: this filesystem's inodes are too small to hold a node's record, so each \
                     record takes a block of its own: a cold walk (find, ls -l, git status) \
                     reads one more block per file; ext4 made with `mkfs.ext4 -I 1024` keeps \
                     records inside the inodes"
                );
            }
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
        Cmd::Find {
            path,
            name,
            kind,
            size,
            newer,
            print0,
            fresh,
        } => query_cmd::find(&path, name, kind, size, newer, print0, fresh, cli.json),
        Cmd::Du { path, depth, fresh } => query_cmd::du(&path, depth, fresh, cli.json),
        Cmd::Changes {
            path,
            since,
            follow,
            limit,
            wait,
        } => query_cmd::changes(&path, since, follow, limit, wait, cli.json),
        Cmd::Index { cmd } => query_cmd::index(cmd, cli.json),
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
        // Mounted read-write: the daemon collects, with the filesystem running.
        let (store_path, _) =
            decofs::control::resolve(store).map_err(|e| Failure::from(&what, &e))?;
        let rep: check::GcReport = if decofs::control::daemons(&store_path)
            .iter()
            .any(|d| d.writer)
        {
            let v = decofs::control::run(
                &store_path,
                &serde_json::json!({"cmd": "gc", "dry_run": dry_run, "grace": grace}),
                true,
            )
            .map_err(|e| Failure::from(&what, &e))?;
            let n = |k: &str| v[k].as_u64().unwrap_or(0);
            check::GcReport {
                dry_run,
                blobs: n("blobs"),
                referenced: n("referenced"),
                deleted: n("deleted"),
                bytes_freed: n("bytes_freed"),
                kept_young: n("kept_young"),
                deleted_hashes: v["deleted_hashes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|h| h.as_str().map(str::to_string))
                    .collect(),
            }
        } else {
            let s = Store::open_for_check(&store_path, dry_run)
                .map_err(|e| Failure::from(&what, &e))?;
            s.gc(dry_run, Duration::from_secs(grace))
                .map_err(|e| Failure::from(&what, &e))?
        };
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

/// `find`, `du`, `changes`, `index`: questions for the index, asked of the writer
/// daemon or of the unmounted store.
mod query_cmd {
    use std::ffi::OsString;
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};

    use decofs::control;
    use decofs::store::{layout::parse_duration, Error, Time};
    use serde_json::{json, Value};

    use super::{Failure, FreshArgs, IndexCmd};

    fn bad(what: &str, reason: String, suggestion: &str) -> Failure {
        Failure {
            what: what.into(),
            code: "invalid_argument".into(),
            reason,
            suggestion: suggestion.into(),
        }
    }

    fn fresh_json(req: &mut Value, f: FreshArgs) {
        if f.wait {
            req["wait_ms"] = json!(f.timeout * 1000);
        }
        req["stale"] = json!(f.stale);
    }

    /// Where PATH is: (store, path relative to the filesystem root).
    fn locate(path: &Path, what: &str) -> Result<(PathBuf, PathBuf), Failure> {
        let (store, _, rel) = control::locate(path).map_err(|e| Failure::from(what, &e))?;
        Ok((store, rel))
    }

    fn ask(store: &Path, req: &Value, what: &str) -> Result<Value, Failure> {
        control::run_index(store, req).map_err(|e| Failure::from(what, &e))
    }

    /// Ask a find/du question; warn on a stale answer; print it whole for --json
    /// (then None: nothing left to print).
    fn query(
        store: &Path,
        req: &mut Value,
        fresh: FreshArgs,
        what: &str,
        json_out: bool,
    ) -> Result<Option<Value>, Failure> {
        fresh_json(req, fresh);
        let v = ask(store, req, what)?;
        if v["consistent"].as_bool() == Some(false) {
            eprintln!("decofs: warning: the index lags the filesystem; this answer may be out of date [code: resource_not_consistent]");
        }
        if json_out {
            println!("{v}");
            return Ok(None);
        }
        Ok(Some(v))
    }

    /// Days since 1970-01-01 of a civil date (proleptic Gregorian).
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = if y >= 0 { y } else { y - 399 } / 400;
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// --newer: a file's mtime, @SECS[.FRAC], a UTC date, or an age.
    pub fn parse_time(s: &OsString) -> Option<Time> {
        if let Ok(m) = std::fs::metadata(s) {
            return m.modified().ok().map(Time::from_system);
        }
        let t = s.to_str()?.trim();
        if let Some(rest) = t.strip_prefix('@') {
            let (secs, frac) = rest.split_once('.').unwrap_or((rest, ""));
            let nanos = if frac.is_empty() {
                0
            } else {
                format!("{frac:0<9}")[..9].parse().ok()?
            };
            return Some(Time {
                secs: secs.parse().ok()?,
                nanos,
            });
        }
        if t.len() >= 10 && t.as_bytes()[4] == b'-' && t.as_bytes()[7] == b'-' {
            let (date, time) = match t.find(['T', ' ']) {
                Some(i) => (&t[..i], &t[i + 1..]),
                None => (t, "00:00:00"),
            };
            let mut dp = date.split('-').map(|x| x.parse::<i64>());
            let (y, mo, d) = (dp.next()?.ok()?, dp.next()?.ok()?, dp.next()?.ok()?);
            let mut tp = time
                .trim_end_matches('Z')
                .split(':')
                .map(|x| x.parse::<i64>());
            let h = tp.next().and_then(|x| x.ok()).unwrap_or(0);
            let mi = tp.next().and_then(|x| x.ok()).unwrap_or(0);
            let se = tp.next().and_then(|x| x.ok()).unwrap_or(0);
            if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
                return None;
            }
            return Some(Time {
                secs: days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se,
                nanos: 0,
            });
        }
        let age = parse_duration(t)?;
        let now = Time::now();
        Some(Time {
            secs: now.secs - age as i64,
            nanos: now.nanos,
        })
    }

    /// --size: (op, bytes).
    pub fn parse_size(s: &str) -> Option<(&'static str, u64)> {
        let (op, rest) = match s.as_bytes().first()? {
            b'+' => ("+", &s[1..]),
            b'-' => ("-", &s[1..]),
            _ => ("=", s),
        };
        let (num, mult) = match rest.chars().last()? {
            'c' => (&rest[..rest.len() - 1], 1u64),
            'k' | 'K' => (&rest[..rest.len() - 1], 1 << 10),
            'M' => (&rest[..rest.len() - 1], 1 << 20),
            'G' => (&rest[..rest.len() - 1], 1 << 30),
            _ => (rest, 1),
        };
        Some((op, num.parse::<u64>().ok()?.checked_mul(mult)?))
    }

    /// The user's PATH with a relative path appended (as find prints it).
    fn shown(arg: &Path, rel: &Value) -> Vec<u8> {
        let mut out = arg.as_os_str().as_bytes().to_vec();
        let r = control::json_to_path(rel).unwrap_or_default();
        let r = r.as_os_str().as_bytes();
        if !r.is_empty() {
            if out.last() != Some(&b'/') {
                out.push(b'/');
            }
            out.extend_from_slice(r);
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    pub fn find(
        path: &Path,
        name: Option<OsString>,
        kind: Option<String>,
        size: Option<String>,
        newer: Option<OsString>,
        print0: bool,
        fresh: FreshArgs,
        json_out: bool,
    ) -> Result<(), Failure> {
        let what = format!("cannot search {}", path.display());
        let (store, rel) = locate(path, &what)?;
        let start_name = path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| path.as_os_str().to_os_string());
        let mut req = json!({
            "cmd": "find",
            "path": control::path_to_json(&rel),
            "start_name": control::path_to_json(Path::new(&start_name)),
            "name": name.map(|n| control::path_to_json(Path::new(&n))),
            "type": kind,
        });
        if let Some(sz) = size {
            let (op, n) = parse_size(&sz).ok_or_else(|| {
                bad(
                    &what,
                    format!("'{sz}' is not a size"),
                    "use +N, -N or N with an optional k, M or G suffix, e.g. --size +10M",
                )
            })?;
            req["size_op"] = json!(op);
            req["size"] = json!(n);
        }
        if let Some(t) = newer {
            let t = parse_time(&t).ok_or_else(|| {
                bad(
                    &what,
                    format!("'{}' is not a time", t.to_string_lossy()),
                    "use a file, @UNIXSECS, YYYY-MM-DD[THH:MM[:SS]] (UTC) or an age like 10m",
                )
            })?;
            req["newer_secs"] = json!(t.secs);
            req["newer_nanos"] = json!(t.nanos);
        }
        let Some(v) = query(&store, &mut req, fresh, &what, json_out)? else {
            return Ok(());
        };
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for p in v["paths"].as_array().into_iter().flatten() {
            let _ = out.write_all(&shown(path, p));
            let _ = out.write_all(if print0 { b"\0" } else { b"\n" });
        }
        let _ = out.flush();
        Ok(())
    }

    pub fn du(path: &Path, depth: u32, fresh: FreshArgs, json_out: bool) -> Result<(), Failure> {
        let what = format!("cannot sum up {}", path.display());
        let (store, rel) = locate(path, &what)?;
        let mut req = json!({"cmd": "du", "path": control::path_to_json(&rel), "depth": depth});
        let Some(v) = query(&store, &mut req, fresh, &what, json_out)? else {
            return Ok(());
        };
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for e in v["entries"].as_array().into_iter().flatten() {
            let _ = out
                .write_all(format!("{}\t{}\t{}\t", e["bytes"], e["files"], e["dirs"]).as_bytes());
            let _ = out.write_all(&shown(path, &e["path"]));
            let _ = out.write_all(b"\n");
        }
        let _ = out.flush();
        Ok(())
    }

    pub fn changes(
        path: &Path,
        since: Option<u64>,
        follow: bool,
        limit: u64,
        wait: bool,
        json_out: bool,
    ) -> Result<(), Failure> {
        let what = format!("cannot read the change log of {}", path.display());
        let (store, _) = locate(path, &what)?;
        let mut since = since;
        loop {
            let mut req = json!({"cmd": "changes", "since": since, "limit": limit});
            if wait {
                req["wait_ms"] = json!(60_000);
            }
            let v = ask(&store, &req, &what)?;
            let list = v["changes"].as_array().cloned().unwrap_or_default();
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for c in &list {
                if json_out {
                    let _ = writeln!(out, "{c}");
                } else {
                    let mut line = format!(
                        "{}\t{}\t{}\t",
                        c["seq"],
                        c["at"],
                        c["op"].as_str().unwrap_or("")
                    )
                    .into_bytes();
                    match control::json_to_path(&c["path"]) {
                        Some(p) => line.extend_from_slice(p.as_os_str().as_bytes()),
                        None => line.extend_from_slice(
                            format!("(node {})", c["node"].as_str().unwrap_or("?")).as_bytes(),
                        ),
                    }
                    if let Some(to) = control::json_to_path(&c["to"]) {
                        line.extend_from_slice(b" -> ");
                        line.extend_from_slice(to.as_os_str().as_bytes());
                    }
                    if c["reconciled"].as_bool() == Some(true) {
                        line.extend_from_slice(b"\t(found by reconcile)");
                    }
                    line.push(b'\n');
                    let _ = out.write_all(&line);
                }
            }
            let _ = out.flush();
            drop(out);
            if let Some(last) = list.last().and_then(|c| c["seq"].as_u64()) {
                since = Some(last);
            } else if since.is_none() {
                since = v["last_seq"].as_u64();
            }
            if !follow {
                return Ok(());
            }
            if (list.len() as u64) < limit {
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        }
    }

    pub fn index(cmd: IndexCmd, json_out: bool) -> Result<(), Failure> {
        match cmd {
            IndexCmd::Verify { path, timeout } => {
                let what = format!("cannot verify the index of {}", path.display());
                let (store, _) = locate(&path, &what)?;
                let req = json!({"cmd": "index_verify", "wait_ms": timeout * 1000});
                let v = ask(&store, &req, &what)?;
                let equal = v["equal"].as_bool() == Some(true);
                if json_out {
                    println!("{v}");
                } else if equal {
                    println!("index verified: it equals a rebuild from the tree");
                } else {
                    println!(
                        "index differs from the tree: {} node(s), {} entr(ies), {} total(s)",
                        v["nodes"], v["entries"], v["totals"]
                    );
                    for e in v["examples"].as_array().into_iter().flatten() {
                        println!(
                            "  {} {}",
                            e["what"].as_str().unwrap_or(""),
                            control::show_path(&e["path"]).unwrap_or_default()
                        );
                    }
                }
                if equal {
                    Ok(())
                } else {
                    Err(Failure::from(
                        "index verify found differences",
                        &Error::IndexCorrupt("it differs from a rebuild".into()),
                    ))
                }
            }
            IndexCmd::Rebuild { path } => {
                let what = format!("cannot rebuild the index of {}", path.display());
                let (store, _) = locate(&path, &what)?;
                let v = ask(&store, &json!({"cmd": "index_rebuild"}), &what)?;
                if json_out {
                    println!("{v}");
                } else {
                    println!(
                        "index rebuilt: {} node(s) in {} ms; repaired {} node(s), {} entr(ies), {} total(s)",
                        v["nodes"], v["duration_ms"], v["repaired_nodes"], v["repaired_entries"], v["repaired_totals"]
                    );
                }
                Ok(())
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn sizes_parse_like_find_with_exact_bytes() {
            assert_eq!(parse_size("+10"), Some(("+", 10)));
            assert_eq!(parse_size("-3k"), Some(("-", 3072)));
            assert_eq!(parse_size("2M"), Some(("=", 2 << 20)));
            assert_eq!(parse_size("100c"), Some(("=", 100)));
            assert_eq!(parse_size("x"), None);
            assert_eq!(parse_size("+"), None);
        }

        #[test]
        fn times_parse() {
            let t = parse_time(&OsString::from("@1700000000.5")).unwrap();
            assert_eq!((t.secs, t.nanos), (1_700_000_000, 500_000_000));
            let t = parse_time(&OsString::from("2023-11-14T22:13:20")).unwrap();
            assert_eq!(t.secs, 1_700_000_000);
            let t = parse_time(&OsString::from("1970-01-02")).unwrap();
            assert_eq!(t.secs, 86_400);
            let t = parse_time(&OsString::from("10m")).unwrap();
            assert!((Time::now().secs - t.secs - 600).abs() <= 1);
            assert!(parse_time(&OsString::from("yesterday-ish")).is_none());
        }
    }
}
