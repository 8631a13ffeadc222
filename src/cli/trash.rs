//! `decofs trash`: list, restore and purge deleted files, through the daemon or on the
//! unmounted store.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use decofs::control::{self, protocol};
use decofs::jsonpath::WirePath;
use decofs::store::layout::parse_duration;

use decofs::control::Report;

use super::output::{self, invalid, outln, Context, Failure, Outcome};

/// `trash purge` without a selector empties the whole trash, for good: ask on a
/// terminal; without one (a script, a pipe), refuse unless --all says so.
fn confirm_purge_all(target: &Path, what: &str) -> Result<(), Failure> {
    let report = |code: &str, reason: &str| {
        Failure::new(Report {
            what: what.into(),
            code: code.into(),
            reason: reason.into(),
            suggestion: "pass --all to purge the whole trash, or select entries with \
                         --older-than DURATION or --id ID"
                .into(),
        })
    };
    if !output::interactive() {
        return Err(report(
            "confirmation_required",
            "no entries selected, and there is no terminal to confirm purging the whole trash",
        ));
    }
    let (store, _, _) = control::locate(target).or_fail(what)?;
    let v = control::run(&store, protocol::TrashLs {}, false).or_fail(what)?;
    let bytes: u64 = v.entries.iter().map(|e| e.size).sum();
    let question = format!(
        "purge everything in the trash of {} ({} entries, {bytes} bytes)? This cannot be undone. [y/N] ",
        target.display(),
        v.entries.len()
    );
    if output::ask(&question) {
        Ok(())
    } else {
        Err(report(
            "not_confirmed",
            "the purge was not confirmed; nothing was purged",
        ))
    }
}

#[derive(Subcommand)]
pub enum TrashCmd {
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
    /// Purge (free for good) trash entries: those older than a duration (30s, 10m, 2h,
    /// 1d), one id, or everything with --all. Without a selector it asks on a terminal
    /// and is refused otherwise (confirmation_required).
    Purge {
        target: PathBuf,
        #[arg(long, value_name = "DURATION")]
        older_than: Option<String>,
        #[arg(long)]
        id: Option<String>,
        /// Purge everything in the trash, without asking.
        #[arg(long, conflicts_with_all = ["older_than", "id"])]
        all: bool,
    },
}

/// A path inside the filesystem as the store's namespace sees it (mount prefix removed).
pub fn fs_path(p: &Path, mount: &Option<PathBuf>) -> PathBuf {
    let rel = match mount {
        Some(m) if p.is_absolute() => p.strip_prefix(m).unwrap_or(p),
        _ => p,
    };
    rel.strip_prefix("/").unwrap_or(rel).to_path_buf()
}

pub fn run(cmd: TrashCmd, json: bool) -> Outcome {
    match cmd {
        TrashCmd::Ls { target } => {
            let what = "cannot list the trash";
            let (store, _, _) = control::locate(&target).or_fail(what)?;
            let v = control::run(&store, protocol::TrashLs {}, false).or_fail(what)?;
            if json {
                output::json(&v);
                return Ok(ExitCode::SUCCESS);
            }
            let mut o = output::Out::new();
            o.str(&format!(
                "{:<36}  {:<25}  {:>12}  {:<9}  ORIGIN\n",
                "ID", "DELETED", "SIZE", "KIND"
            ));
            for e in &v.entries {
                let origin = match &e.origin {
                    Some(p) => p.show(),
                    None => format!("(gone)/{}", e.origin_name.show()),
                };
                // Times are local for people; `--json` keeps unix seconds.
                o.str(&format!(
                    "{:<36}  {:<25}  {:>12}  {:<9}  {}\n",
                    e.id,
                    output::local_time(e.deleted_at),
                    e.size,
                    e.kind,
                    origin
                ));
            }
        }
        TrashCmd::Restore {
            target,
            selector,
            to,
        } => {
            let what = "cannot restore from the trash";
            let mount = control::locate(&target).ok().and_then(|l| l.1);
            let req = protocol::TrashRestore {
                sel: WirePath(fs_path(&selector, &mount)),
                to: to.map(|t| WirePath(fs_path(&t, &mount))),
            };
            let (store, _, _) = control::locate(&target).or_fail(what)?;
            let v = control::run(&store, req, true).or_fail(what)?;
            if json {
                output::json(&v);
            } else {
                outln!("restored to {}", v.restored_to.show());
            }
        }
        TrashCmd::Purge {
            target,
            older_than,
            id,
            all,
        } => {
            let what = "cannot purge the trash";
            if older_than.is_none() && id.is_none() && !all {
                confirm_purge_all(&target, what)?;
            }
            let older_than = match older_than {
                Some(d) => Some(parse_duration(&d).ok_or_else(|| {
                    invalid(
                        what,
                        format!("'{d}' is not a duration"),
                        "use seconds or a number with s, m, h, d or w, e.g. 2h",
                    )
                })?),
                None => None,
            };
            let req = protocol::TrashPurge { older_than, id };
            let (store, _, _) = control::locate(&target).or_fail(what)?;
            let v = control::run(&store, req, true).or_fail(what)?;
            if json {
                output::json(&v);
            } else {
                outln!(
                    "purged {} node(s) and {} revision(s), freed {} bytes ({} still open, kept)",
                    v.nodes,
                    v.revisions,
                    v.bytes_freed,
                    v.skipped_open
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
