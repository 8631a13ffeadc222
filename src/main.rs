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
}

struct Failure {
    what: String,
    code: String,
    reason: String,
    suggestion: String,
}

impl Failure {
    fn from(what: impl Into<String>, e: &Error) -> Failure {
        Failure {
            what: what.into(),
            code: e.code().into(),
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
        Cmd::Init { store, chunk_size } => {
            let f = Store::init(&store, chunk_size).map_err(|e| {
                Failure::from(format!("cannot create a store at {}", store.display()), &e)
            })?;
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
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Ok(()) => ExitCode::SUCCESS,
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
            ExitCode::from(1)
        }
    }
}
