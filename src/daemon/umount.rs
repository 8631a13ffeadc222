//! `decofs umount`: unmount, then wait until the daemon has committed and let go of the
//! store.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::control::{clean_stale, daemons};
use crate::host::{mount_at, proc_starttime};
use crate::store::layout::Layout;
use crate::store::lock;
use crate::store::{Error, Result};

/// Unmount a decofs mount and wait for its daemon to exit. Returns the store's new
/// holder when another process took the store's lock once the daemon let go of it.
pub fn umount(mountpoint: &Path, lazy: bool) -> Result<Option<String>> {
    let canon = fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let entry = mount_at(&canon).ok_or_else(|| Error::NotMounted(canon.clone()))?;
    if !(entry.fstype == "fuse.decofs" || entry.fstype == "fuse") {
        return Err(Error::NotMounted(canon));
    }
    // The daemon serving this mountpoint, to wait for after the unmount.
    let store = PathBuf::from(&entry.source);
    let daemon = daemons(&store)
        .into_iter()
        .find(|d| d.mountpoint == canon)
        .map(|d| (d.pid, d.writer));
    // Named before the unmount: once it is done the daemon may exit and its pid be reused.
    let started = daemon.and_then(|(pid, _)| proc_starttime(pid));
    let c =
        std::ffi::CString::new(canon.as_os_str().as_bytes()).map_err(|_| Error::Invalid("path"))?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // A mount is busy while anything holds a file or directory in it. Some holders are
    // gone within milliseconds: a process forked while a file here was open keeps a copy
    // of the descriptor until it execs (close-on-exec then closes it, after a FLUSH to
    // the daemon). Retry for UMOUNT_BUSY_GRACE before calling the mount busy.
    let start = Instant::now();
    // SAFETY: c is a valid NUL-terminated path.
    while unsafe { libc::umount2(c.as_ptr(), flags) } != 0 {
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EBUSY) if start.elapsed() < UMOUNT_BUSY_GRACE => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Some(libc::EBUSY) => return Err(Error::MountInUse(canon)),
            _ => return Err(Error::io(format!("unmount {}", canon.display()), e)),
        }
    }
    // Return only once the daemon has committed and let go of the store, so the next
    // mount of it succeeds: every thread gone (its lock goes with it). That can take a
    // while after a burst of changes (the index applies what it has queued before it
    // closes): say so, and never report success while the store is still held by it.
    // Only the daemon's own exit is waited for: a new mount may take the store the
    // moment it lets go, and is then its holder (named by the caller), not a reason to
    // wait on.
    let Some((pid, writer)) = daemon else {
        return Ok(None);
    };
    // A zombie leader's other threads may still run: `process_gone` looks at them all; a
    // pid reused by another process counts as gone too.
    let gone = || process_gone(pid) || matches!(proc_starttime(pid), Some(t) if Some(t) != started);
    let start = Instant::now();
    let mut told = false;
    while !gone() {
        if lazy && start.elapsed() >= UMOUNT_NOTICE {
            // Files still open in the detached mount keep the daemon serving them.
            eprintln!(
                "decofs: detached; the daemon (pid {pid}) goes on serving the files still \
                 open there and exits when the last one closes"
            );
            return Ok(None);
        }
        if !told && start.elapsed() >= UMOUNT_NOTICE {
            eprintln!(
                "decofs: unmounted; waiting for the daemon (pid {pid}) to finish: it \
                 commits open files and brings the index up to date before it lets go \
                 of the store"
            );
            told = true;
        }
        if start.elapsed() >= UMOUNT_WAIT {
            return Err(Error::Daemon(format!(
                "{} is unmounted, but its daemon (pid {pid}) still holds the store {} \
                 after {} s; the next read-write mount will be refused until it exits",
                canon.display(),
                store.display(),
                UMOUNT_WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its pid file outlives its mount (see `control::registry`): remove it now.
    clean_stale(&store);
    if !writer || lock_free(&store) {
        return Ok(None);
    }
    // Another process took the store once the daemon let go (a new mount): name it. It
    // names itself in the lock file right after it took the lock: until then the file
    // still names the daemon that is gone.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let holder = lock::holder(&Layout::new(&store));
        let names_old = lock::local_holder_pid(&holder) == Some(pid);
        if !names_old && !holder.is_empty() {
            return Ok(Some(holder));
        }
        if Instant::now() >= deadline || lock_free(&store) {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long `umount` waits for the daemon to exit before it says it is waiting, and
/// before it gives up with an error.
const UMOUNT_NOTICE: Duration = Duration::from_secs(5);
const UMOUNT_WAIT: Duration = Duration::from_secs(900);
/// How long a busy mountpoint is retried before `umount` reports it busy.
const UMOUNT_BUSY_GRACE: Duration = Duration::from_secs(1);

use crate::store::lock::process_gone;

/// Could a writer take the store's lock right now?
fn lock_free(store: &Path) -> bool {
    use std::os::unix::io::AsRawFd;
    let Ok(f) = fs::File::open(store.join("lock")) else {
        return true;
    };
    // SAFETY: flock on an owned descriptor; a shared probe lock is dropped with `f`.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) == 0 }
}
