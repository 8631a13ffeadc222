//! A new read-write mount of a store whose writer lock is still held by a daemon whose
//! mount is already gone.
//!
//! `umount MNT` (umount(8), or anything calling umount2) returns as soon as the kernel
//! has detached the mount; the daemon then commits what is open, closes its fsync log
//! and its index, and exits, and only its exit frees the lock. A `mount` right after
//! would be refused with `store_locked`. So a new writer waits, bounded, for a lock
//! holder that is a daemon of this store whose mount is no longer there (its pid file,
//! `control::registry`, names its mountpoint and device and is marked once the session
//! ended). A holder whose mount is live, a holder that is not a mount (an offline
//! command), or one on another host is left to `StoreLock::acquire`, which refuses it at
//! once, naming it.
//!
//! The wait belongs here, not in the lock: only this layer knows which holders are
//! mounts and whether their mounts are gone.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::control::registry;
use crate::store::layout::Layout;
use crate::store::lock::{self, process_gone};
use crate::store::{Error, Result};

/// How long a new writer waits for a departing one. Its exit after the unmount takes
/// a commit of what is still open, the fsync log's close and the index draining its
/// queue (at most 65,536 events); a daemon told to stop by a signal while files were
/// still open in a lazily detached mount waits 10 s before it exits. 30 s covers both
/// with room to spare on a loaded 2-core machine and stays well inside systemd's
/// default start timeout (90 s) for a mount unit, so a daemon that is stuck gives a
/// clear `store_locked` before systemd gives up on the unit.
pub const HANDOVER_WAIT: Duration = Duration::from_secs(30);

/// Wait until the store's lock is free or held by someone this does not wait for (the
/// caller's `Store::open` then refuses it at once). `say` is called once, when the wait
/// begins, with a line for the user. Err(`store_locked`) when the departing holder still
/// holds the store after [`HANDOVER_WAIT`].
pub fn wait_for_departing_writer(store: &Path, say: &mut dyn FnMut(&str)) -> Result<()> {
    let layout = Layout::new(store);
    let start = Instant::now();
    let mut told = false;
    loop {
        if !lock::is_locked(&layout) {
            return Ok(());
        }
        let holder = lock::holder(&layout);
        let Some(pid) = lock::local_holder_pid(&holder) else {
            return Ok(());
        };
        // Every thread gone already: the kernel is releasing its files.
        let departing =
            process_gone(pid) || registry::daemon_of(store, pid).is_some_and(|d| !d.mount_live());
        if !departing {
            return Ok(());
        }
        if start.elapsed() >= HANDOVER_WAIT {
            return Err(Error::StoreLocked {
                path: layout.root.clone(),
                holder: format!(
                    "{holder} (its mount is gone, but it has not let go of the store after \
                     {} s)",
                    HANDOVER_WAIT.as_secs()
                ),
            });
        }
        if !told {
            say(&format!(
                "waiting for pid {pid}, whose mount is gone, to release the store {} (at most \
                 {} s)",
                store.display(),
                HANDOVER_WAIT.as_secs()
            ));
            told = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
