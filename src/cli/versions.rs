//! `decofs versions`: list and restore earlier versions of a file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use decofs::control::{self, protocol};
use decofs::jsonpath::WirePath;

use super::output::{self, outln, Context, Outcome};

#[derive(Subcommand)]
pub enum VersionsCmd {
    /// List the revisions of a file, oldest first.
    Ls { file: PathBuf },
    /// Make revision REV the current content (the current content becomes a revision).
    Restore { file: PathBuf, rev: String },
}

pub fn run(cmd: VersionsCmd, json: bool) -> Outcome {
    let file = match &cmd {
        VersionsCmd::Ls { file } | VersionsCmd::Restore { file, .. } => file.clone(),
    };
    let what = format!("cannot read the versions of {}", file.display());
    let (store, _, rel) = control::locate(&file).or_fail(&what)?;
    let path = WirePath(rel);
    match cmd {
        VersionsCmd::Ls { .. } => {
            let v = control::run(&store, protocol::VersionsLs { path }, false).or_fail(&what)?;
            if json {
                output::json(&v);
                return Ok(ExitCode::SUCCESS);
            }
            let mut o = output::Out::new();
            o.str(&format!("{:<20}  {:>12}  MTIME\n", "REV", "SIZE"));
            for r in &v.versions {
                // Times are local for people; `--json` keeps unix seconds.
                o.str(&format!(
                    "{:<20}  {:>12}  {}\n",
                    r.rev,
                    r.size,
                    output::local_time(r.mtime)
                ));
            }
        }
        VersionsCmd::Restore { rev, .. } => {
            let req = protocol::VersionsRestore { path, rev };
            let v = control::run(&store, req, true).or_fail(&what)?;
            if json {
                output::json(&v);
            } else {
                outln!("restored revision {}", v.restored);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
