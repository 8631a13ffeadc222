//! The `decofs` command line: the clap definitions, the dispatch to one module per
//! command family, and the one place a command's outcome becomes the exit code.
//!
//! - [`store_cmds`]: init, mount, umount, status. [`trash`], [`versions`], [`lock`].
//! - [`check`]: fsck, scrub, gc. [`index`]: find, du, changes, index verify/rebuild.
//! - [`output`]: stdout that survives a closed pipe, the error report, exit codes.
//!
//! Commands return an [`output::Outcome`]: `Ok(exit code)` or a `Failure` (a
//! `decofs::control::Report` and an exit code), printed by [`output::finish`].

mod check;
mod index;
mod lock;
pub(crate) mod output;
mod progress;
mod remote;
mod snapshot;
mod stats;
mod store_cmds;
mod stream;
mod trash;
mod versions;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use decofs::store::layout::DEFAULT_CHUNK_SIZE;

use output::Outcome;

const EXIT_HELP: &str = "EXIT CODES:
  0    success
  1    the operation failed (the message names a code, e.g. store_not_found,
       not_a_store, format_unsupported, store_locked, mountpoint_not_found,
       mountpoint_busy, mountpoint_not_empty, invalid_option,
       confirmation_required, resource_not_consistent; see README)
  2    the command line was invalid
  141  the reader of the output went away (`decofs trash ls | head`)
  fsck, scrub and gc: 0 clean (gc: done), 1 errors were repaired (fsck),
       4 problems are left, 8 the check could not run (e.g. store_not_found,
       store_locked)";

#[derive(Parser)]
#[command(name = "decofs", version, about = "A FUSE filesystem on a decomposed store", after_help = EXIT_HELP)]
pub struct Cli {
    /// Machine-readable output: results as JSON on stdout (times as unix seconds,
    /// listings and changes one object per line) and errors as one JSON object on
    /// stderr, {"error", "code", "reason", "suggestion"}, instead of text for people
    /// (local times, aligned columns).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
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
        /// A file deleted younger than this (since it was made) skips the trash: a
        /// program's scratch file. 0 keeps every deleted file.
        #[arg(long, default_value = "5s")]
        trash_min_age: String,
        /// Names of files that skip the trash whatever their age: ':'-separated globs
        /// (* and ?), empty for none.
        #[arg(long, default_value = decofs::store::layout::SCRATCH_DEFAULT)]
        trash_skip: String,
        /// Bind the new store to an object store, s3://BUCKET/PREFIX (see `decofs
        /// remote add --help`).
        #[arg(long, value_name = "URL")]
        remote: Option<String>,
        #[command(flatten)]
        conn: remote::Conn,
    },
    /// Mount STORE on MOUNTPOINT. Returns once the mount is live.
    Mount {
        store: PathBuf,
        mountpoint: PathBuf,
        /// Comma-separated options (ro, allow_other, nonempty, log=LEVEL, ...; --help
        /// lists them all).
        #[arg(short = 'o', default_value = "", long_help = decofs::daemon::opts::HELP)]
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
        cmd: trash::TrashCmd,
    },
    /// Earlier versions of a file: list and restore. FILE is a path inside a mount, or
    /// STORE/path/in/the/filesystem for an unmounted store.
    Versions {
        #[command(subcommand)]
        cmd: versions::VersionsCmd,
    },
    /// Snapshots of the whole tree: create, ls, rm, diff. TARGET is a mountpoint or a
    /// store. Mount one read-only with `decofs mount STORE MNT -o snapshot=NAME`.
    Snapshot {
        #[command(subcommand)]
        cmd: snapshot::SnapshotCmd,
    },
    /// Write snapshot NAME as a stream (stdout unless -o): every record, entry and blob
    /// it needs, or with --from BASE only what differs from snapshot BASE. STORE is a
    /// store or its mountpoint (a mount may keep running).
    Send {
        store: PathBuf,
        name: String,
        /// Send only what differs from this older snapshot (the receiver has it).
        #[arg(long, value_name = "BASE")]
        from: Option<String>,
        /// Write the stream to this file.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Read a stream (stdin unless -i) into STORE or its mount: the whole stream checked
    /// first (refused with nothing changed if damaged, or if its base is missing), then
    /// its snapshot made to exist here, the live tree equal to it.
    Receive {
        store: PathBuf,
        /// Read the stream from this file.
        #[arg(short = 'i', long = "input", value_name = "FILE")]
        input: Option<PathBuf>,
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
        fresh: index::FreshArgs,
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
        fresh: index::FreshArgs,
    },
    /// The numbered change log of a store (for backup and sync tools). Prints
    /// "SEQ TIME OP PATH [-> PATH]" per change (TIME local); --json prints one JSON
    /// object per line (unix times). A consumer remembers the last SEQ and asks again with --since SEQ.
    Changes {
        path: PathBuf,
        /// Only changes after sequence number SEQ (default: every change kept).
        #[arg(long)]
        since: Option<u64>,
        /// Keep printing new changes as they happen (until interrupted).
        #[arg(long)]
        follow: bool,
        /// At most this many changes per request. When more are left, a line on stderr
        /// says so (with --json, a last object {"limit_reached": true, "next_since":
        /// SEQ, "limit", "last_seq"}).
        #[arg(long, default_value_t = 10_000)]
        limit: u64,
        /// First wait (up to 60 s) until the index has applied every change made so far.
        #[arg(long)]
        wait: bool,
    },
    /// The metadata index of a store: verify it against the tree, rebuild it.
    Index {
        #[command(subcommand)]
        cmd: index::IndexCmd,
    },
    /// Publish the store's state to its object store now: a snapshot shipped as a
    /// stream (without blob bytes, whose blobs are confirmed in the bucket first), named
    /// by the bucket's head. Returns once the head names it. TARGET is a mountpoint or a
    /// store.
    Publish {
        target: PathBuf,
        /// Wait until the state is published (what publish always does; for scripts).
        #[arg(long)]
        wait: bool,
    },
    /// Make a new store STORE from the state published at s3://BUCKET/PREFIX: the same
    /// store (id, root, inode numbers), bound to the same prefix; blobs are fetched when
    /// first read.
    Clone {
        url: String,
        store: PathBuf,
        #[command(flatten)]
        conn: remote::Conn,
    },
    /// What changed since a store's last publish to its object store.
    Unpublished {
        #[command(subcommand)]
        cmd: remote::UnpublishedCmd,
    },
    /// Long-term storage on an S3-compatible object store: bind a store to one.
    Remote {
        #[command(subcommand)]
        cmd: remote::RemoteCmd,
    },
    /// The single-writer lock of a store.
    Lock {
        #[command(subcommand)]
        cmd: lock::LockCmd,
    },
    /// Check a store that is not mounted read-write: records, entries, link counts,
    /// hints, needed blobs, orphans, stray files. STORE is a store or its mountpoint.
    /// Exit codes (as e2fsck): 0 clean, 1 errors were repaired, 4 problems are left,
    /// 8 the check could not run (e.g. store_locked: --repair needs the store
    /// unmounted).
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
    /// read-write). STORE is a store or its mountpoint. Exit codes: 0 clean, 4 damage
    /// found, 8 could not run.
    Scrub {
        store: PathBuf,
        /// Verify the object store's copy instead (a bound store): download every blob
        /// under the prefix and check its hash, and check that every blob the store
        /// names is in the bucket or waiting for its upload here. Reads only. Damaged
        /// or missing blobs: exit 4 (code integrity_error); the object store failing:
        /// exit 8 (remote_unavailable).
        #[arg(long)]
        remote: bool,
    },
    /// Delete blobs no record names (live, trash, revisions) that are older than the
    /// grace period. STORE may be a mountpoint or a store; when it is mounted
    /// read-write, the daemon collects while the filesystem keeps running. Exit codes:
    /// 0 done, 8 could not run (as fsck and scrub).
    Gc {
        store: PathBuf,
        /// Only report what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Keep unreferenced blobs younger than this many seconds (a write in progress).
        #[arg(long, default_value_t = 3600)]
        grace: u64,
        /// A store on an object store: the bucket's blobs and streams nothing names are
        /// marked by one gc and deleted by a later one at least this long after (and
        /// only if they are at least this old and still unnamed): 30s, 10m, 1h, 2d.
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_grace)]
        remote_grace: u64,
    },
    /// Live counters of a running mount (like `juicefs stats`): one line per interval
    /// with operations per second (lookup+getattr, read, write, create+unlink+rename,
    /// fsync), mean latency, MiB/s read and written, verified-cache hit ratio and index
    /// lag. PATH is a mountpoint, or a store that is mounted (else `not_mounted`).
    /// --json prints one object per interval, with the cumulative counters as "totals".
    Stats {
        path: std::path::PathBuf,
        /// Seconds between lines.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many lines (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Print a shell completion script for decofs to stdout, e.g.
    /// `decofs completions bash > /etc/bash_completion.d/decofs`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the decofs(1) man page (roff) to stdout, e.g.
    /// `decofs manpage > /usr/local/share/man/man1/decofs.1`.
    Manpage,
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

/// Run one command.
fn run(cli: Cli) -> Outcome {
    let json = cli.json;
    match cli.cmd {
        Cmd::Init {
            store,
            chunk_size,
            trash_retention,
            revisions_keep,
            revisions_max_age,
            trash_min_age,
            trash_skip,
            remote: url,
            conn,
        } => {
            if let Some(url) = &url {
                remote::check(&store, url, &conn)?;
            }
            store_cmds::init(
                &store,
                chunk_size,
                &trash_retention,
                revisions_keep,
                &revisions_max_age,
                (&trash_min_age, &trash_skip),
            )?;
            match &url {
                // `--json` keeps init's one object; the binding's line is for people.
                Some(url) => remote::add(&store, url, &conn, json, !json),
                None => Ok(ExitCode::SUCCESS),
            }
        }
        Cmd::Mount {
            store,
            mountpoint,
            options,
            foreground,
            threads,
        } => store_cmds::mount(&store, &mountpoint, options, foreground, threads),
        Cmd::Umount { mountpoint, lazy } => store_cmds::umount(&mountpoint, lazy),
        Cmd::Status { path } => store_cmds::status(&path, json),
        Cmd::Lock { cmd } => lock::run(cmd, json),
        Cmd::Remote { cmd } => remote::run(cmd, json),
        Cmd::Unpublished { cmd } => remote::unpublished(cmd, json),
        Cmd::Publish { target, wait: _ } => remote::publish(&target, json),
        Cmd::Clone { url, store, conn } => remote::clone(&url, &store, &conn, json),
        Cmd::Find {
            path,
            name,
            kind,
            size,
            newer,
            print0,
            fresh,
        } => index::find(
            &path,
            index::FindArgs {
                name,
                kind,
                size,
                newer,
                print0,
            },
            fresh,
            json,
        ),
        Cmd::Du { path, depth, fresh } => index::du(&path, depth, fresh, json),
        Cmd::Changes {
            path,
            since,
            follow,
            limit,
            wait,
        } => index::changes(&path, since, follow, limit, wait, json),
        Cmd::Index { cmd } => index::index(cmd, json),
        Cmd::Trash { cmd } => trash::run(cmd, json),
        Cmd::Versions { cmd } => versions::run(cmd, json),
        Cmd::Snapshot { cmd } => snapshot::run(cmd, json),
        Cmd::Send {
            store,
            name,
            from,
            output,
        } => stream::send(store, name, from, output, json),
        Cmd::Receive { store, input } => stream::receive(store, input, json),
        Cmd::Fsck {
            store,
            repair,
            grace,
        } => check::fsck(&store, repair, grace, json),
        Cmd::Scrub { store, remote } => match remote {
            true => check::scrub_remote(&store, json),
            false => check::scrub(&store, json),
        },
        Cmd::Gc {
            store,
            dry_run,
            grace,
            remote_grace,
        } => check::gc(&store, dry_run, grace, remote_grace, json),
        Cmd::Stats {
            path,
            interval,
            count,
        } => stats::stats(&path, interval, count, json),
        Cmd::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "decofs", &mut buf);
            output::Out::new().bytes(&buf);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Manpage => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut buf)
                .map_err(|e| {
                    output::Failure::new(decofs::control::Report::of(
                        "cannot render the man page",
                        &decofs::store::Error::io("render", e),
                    ))
                })?;
            output::Out::new().bytes(&buf);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Is this the command line fuse3's `mount.fuse` gives for a `fuse.decofs` mount (also a
/// remount of a live decofs mount, whose type is `fuse.decofs`): `decofs STORE DIR -o
/// opts`, a directory where a command would be?
fn fuse_helper_call(args: &[OsString]) -> bool {
    let Some(first) = args.get(1) else {
        return false;
    };
    let known = Cli::command()
        .get_subcommands()
        .any(|c| std::ffi::OsStr::new(c.get_name()) == first.as_os_str());
    !known
        && args.len() >= 3
        && !first.to_string_lossy().starts_with('-')
        && std::path::Path::new(first).is_dir()
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

/// The binary's entry: parse the command line (also as `mount.decofs`), start logging,
/// run the command, turn its outcome into the exit code.
pub fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let invoked_as = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned());
    let cli = if invoked_as
        .as_deref()
        .is_some_and(|n| n.starts_with("mount."))
        || fuse_helper_call(&argv)
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
            .filter(|l| decofs::daemon::opts::valid_log_filter(l))
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
    output::finish(run(cli), json)
}

/// A duration option (`30`, `30s`, `10m`, `1h`, `2d`) in seconds.
fn parse_grace(s: &str) -> Result<u64, String> {
    decofs::store::layout::parse_duration(s)
        .ok_or_else(|| format!("'{s}' is not a duration (e.g. 0, 30s, 10m, 1h, 2d)"))
}
