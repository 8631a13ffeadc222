//! `decofs lock`: show and break a store's single-writer lock.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use decofs::control;
use decofs::store::{layout::Layout, lock, remote};

use super::output::{self, errln, outln, Context, Outcome};

#[derive(Subcommand)]
pub enum LockCmd {
    /// Break the lock of a holder that died where this host cannot see it (another
    /// host). The epoch increases: the old holder's writes are refused from now on.
    /// For a store on an object store, its lease there is broken too: the next
    /// read-write mount of any clone takes it, and the old writer's publishes are
    /// refused. STORE is a store or its mountpoint.
    Break { store: PathBuf },
    /// Show who holds the lock and the current epoch. STORE is a store or its
    /// mountpoint.
    Show { store: PathBuf },
}

pub fn run(cmd: LockCmd, json: bool) -> Outcome {
    match cmd {
        LockCmd::Break { store } => {
            let what = format!("cannot break the lock of {}", store.display());
            let (store, _) = control::resolve(&store).or_fail(&what)?;
            let layout = Layout::new(&store);
            layout.read_format().or_fail(&what)?;
            let live = lock::is_locked(&layout);
            let (holder, epoch) = lock::break_lock(&store).or_fail(&what)?;
            // A store on an object store: its lease there too.
            let lease = match remote::Binding::read(&layout).or_fail(&what)? {
                Some(b) => {
                    let r = remote::Remote::connect(&b).or_fail(&what)?;
                    Some(remote::lease::break_lease(&r).or_fail(&what)?)
                }
                None => None,
            };
            if json {
                output::json(&json!({
                    "broken_holder": holder,
                    "epoch": epoch,
                    "holder_was_alive_here": live,
                    "remote_lease_holder": lease.as_ref().map(|l| l.as_ref().map(|r| r.holder.clone())),
                }));
            } else {
                match &lease {
                    Some(Some(r)) => outln!(
                        "the object store's lease broken (was: {}, epoch {}): the next read-write mount takes it",
                        r.holder,
                        r.epoch
                    ),
                    Some(None) => outln!("the object store has no lease to break"),
                    None => {}
                }
                if live {
                    errln!("decofs: warning: the holder is alive on this host; its writes are refused from now on");
                }
                outln!(
                    "lock broken (was: {}); new epoch {epoch}",
                    if holder.is_empty() {
                        "free".to_string()
                    } else {
                        output::show_holder(&holder)
                    }
                );
            }
        }
        LockCmd::Show { store } => {
            let what = format!("cannot read the lock of {}", store.display());
            let (store, _) = control::resolve(&store).or_fail(&what)?;
            let layout = Layout::new(&store);
            layout.read_format().or_fail(&what)?;
            let epoch = lock::read_epoch(&layout).or_fail(&what)?;
            let (locked, holder) = (lock::is_locked(&layout), lock::holder(&layout));
            if json {
                output::json(&json!({"locked": locked, "holder": holder, "epoch": epoch}));
            } else if locked {
                outln!("held by {}; epoch {epoch}", output::show_holder(&holder));
            } else {
                outln!("free; epoch {epoch}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
