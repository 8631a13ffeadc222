//! `decofs snapshot`: take, list, remove and compare snapshots of the whole tree,
//! through the daemon or on the unmounted store.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use decofs::control::{self, protocol};

use super::output::{self, outln, Context, Outcome};
use super::trash::human_bytes;

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Take a snapshot of the whole tree now (O(1): nothing is copied until it
    /// changes). NAME defaults to the UTC time, e.g. 2026-12-07T02:30:11Z.
    Create {
        target: PathBuf,
        name: Option<String>,
    },
    /// List the snapshots, oldest first: name, time, copies kept, and the space only
    /// it holds (what removing it frees).
    Ls { target: PathBuf },
    /// Remove a snapshot; what only it held is freed.
    Rm { target: PathBuf, name: String },
    /// Make the live tree equal to snapshot NAME, whole or not at all (on a mount, the
    /// daemon does it; no file may be open for writing). The state before is kept as a
    /// new snapshot before-restore-<UTC time>: restore that one to undo.
    Restore { target: PathBuf, name: String },
    /// What changed from snapshot OLD to snapshot NEW (default: the live tree): one
    /// line per path, `+` created, `-` deleted, `M` modified, `R` renamed (old -> new).
    Diff {
        target: PathBuf,
        old: String,
        new: Option<String>,
    },
}

pub fn run(cmd: SnapshotCmd, json: bool) -> Outcome {
    let target = match &cmd {
        SnapshotCmd::Create { target, .. }
        | SnapshotCmd::Ls { target }
        | SnapshotCmd::Rm { target, .. }
        | SnapshotCmd::Restore { target, .. }
        | SnapshotCmd::Diff { target, .. } => target.clone(),
    };
    match cmd {
        SnapshotCmd::Create { name, .. } => {
            let what = format!("cannot take a snapshot of {}", target.display());
            let (store, _, _) = control::locate(&target).or_fail(&what)?;
            let v = control::run(&store, protocol::SnapshotCreate { name }, true).or_fail(&what)?;
            if json {
                output::json(&v);
            } else {
                outln!("snapshot {} taken", v.name);
            }
        }
        SnapshotCmd::Ls { .. } => {
            let what = format!("cannot list the snapshots of {}", target.display());
            let (store, _, _) = control::locate(&target).or_fail(&what)?;
            let v = control::run(&store, protocol::SnapshotLs {}, false).or_fail(&what)?;
            if json {
                output::json(&v);
                return Ok(ExitCode::SUCCESS);
            }
            let mut o = output::Out::new();
            o.str(&format!(
                "{:<32}  {:<25}  {:>8}  HELD\n",
                "NAME", "CREATED", "COPIES"
            ));
            for s in &v.snapshots {
                o.str(&format!(
                    "{:<32}  {:<25}  {:>8}  {}\n",
                    s.name,
                    output::local_time(s.created),
                    s.copies,
                    human_bytes(s.held_bytes)
                ));
            }
        }
        SnapshotCmd::Rm { name, .. } => {
            let what = format!("cannot remove snapshot {name}");
            let (store, _, _) = control::locate(&target).or_fail(&what)?;
            let v = control::run(&store, protocol::SnapshotRm { name }, true).or_fail(&what)?;
            if json {
                output::json(&v);
            } else {
                outln!(
                    "snapshot {} removed, {} freed",
                    v.name,
                    human_bytes(v.bytes_freed)
                );
            }
        }
        SnapshotCmd::Restore { name, .. } => {
            let what = format!("cannot restore snapshot {name}");
            let (store, _, _) = control::locate(&target).or_fail(&what)?;
            let r = control::run(
                &store,
                protocol::SnapshotRestore { name: name.clone() },
                true,
            )
            .or_fail(&what)?;
            if json {
                output::json(&r);
            } else {
                outln!(
                    "restored {name} ({} records, {} entries, {} removed); the state before is snapshot {}",
                    r.records,
                    r.entries,
                    r.removed,
                    r.before
                );
            }
        }
        SnapshotCmd::Diff { old, new, .. } => {
            let what = format!("cannot compare snapshot {old}");
            let (store, _, _) = control::locate(&target).or_fail(&what)?;
            let v =
                control::run(&store, protocol::SnapshotDiff { old, new }, false).or_fail(&what)?;
            if json {
                output::json(&v);
                return Ok(ExitCode::SUCCESS);
            }
            let mut o = output::Out::new();
            for c in &v.changes {
                let p = c.path.0.display();
                let line = match (c.change.as_str(), &c.from) {
                    ("created", _) => format!("+ {p}\n"),
                    ("deleted", _) => format!("- {p}\n"),
                    ("renamed", Some(f)) => format!("R {} -> {p}\n", f.0.display()),
                    _ => format!("M {p}\n"),
                };
                o.str(&line);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
