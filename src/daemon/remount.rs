//! `mount -o remount,ro MNT` and back to `rw`, as other filesystems do.
//!
//! mount(8) hands a remount to the type's helper (`mount.decofs`, or for the
//! `fuse.decofs` type of a live mount `mount.fuse.decofs`, else fuse3's `mount.fuse`,
//! which runs `decofs STORE MNT -o OPTIONS`): the CLI asks the mount's daemon
//! (`control::protocol::Remount`), and the daemon switches both the kernel and the store:
//!
//! - to read-only: first the kernel (`MS_REMOUNT|MS_RDONLY`: it refuses with EBUSY while
//!   a file is open for writing, as for ext4, and writes back dirty pages), then every
//!   open write session is committed, deferred directory times written, the store's
//!   disk synced, and the store's `Fence` paused: every change is refused with EROFS.
//!   The writer lock is kept, so no other writer can take the store meanwhile.
//! - to read-write: the fence first, then the kernel.
//!
//! A mount of `-o ro` holds no writer lock and opened the store without what a writer
//! sets up at open (fsync log replay, record cache, index): it stays read-only, and
//! `remount,rw` of it is refused (`read_only`); unmount it and mount it read-write.
//!
//! The kernel replaces a mount's per-mount flags at a remount with the ones given, so
//! the current ones (nosuid, nodev, noexec, atime) are read from mountinfo and given
//! again, changed only as the request says.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::control::protocol::Remount;
use crate::store::{Error, Result, Store};

/// One remount at a time.
static REMOUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Switch the mount at `mnt` served by this process, and its store.
pub fn remount(store: &Store, mnt: &Path, req: &Remount) -> Result<()> {
    let _one = REMOUNTING.lock().unwrap_or_else(|e| e.into_inner());
    let flags = kernel_flags(mnt, &req.flags)?;
    if req.read_only {
        kernel_remount(mnt, flags | libc::MS_RDONLY)?;
        if store.read_only() {
            return Ok(());
        }
        let settled = store
            .data()
            .commit_all()
            .and_then(|()| store.records.flush_deferred())
            .and_then(|()| sync_store(store));
        if let Err(e) = settled {
            log::error!("remount read-only: {e}; staying read-write");
            let _ = kernel_remount(mnt, flags);
            return Err(e);
        }
        store.fence().set_paused(true)?;
        log::info!("remounted {} read-only", mnt.display());
    } else {
        // A read-only open holds no lock: it stays read-only.
        store.fence().set_paused(false)?;
        if let Err(e) = kernel_remount(mnt, flags) {
            let _ = store.fence().set_paused(true);
            return Err(e);
        }
        log::info!("remounted {} read-write", mnt.display());
    }
    Ok(())
}

/// syncfs of the store's filesystem, as a remount to read-only syncs the filesystem.
fn sync_store(store: &Store) -> Result<()> {
    let dir = std::fs::File::open(&store.layout.root)
        .map_err(|e| Error::io(format!("open {}", store.layout.root.display()), e))?;
    // SAFETY: syncfs on a descriptor we own.
    if unsafe { libc::syncfs(std::os::unix::io::AsRawFd::as_raw_fd(&dir)) } != 0 {
        return Err(Error::io("syncfs", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn kernel_remount(mnt: &Path, flags: libc::c_ulong) -> Result<()> {
    let c = CString::new(mnt.as_os_str().as_bytes()).map_err(|_| Error::Invalid("path"))?;
    // SAFETY: a remount of a valid NUL-terminated path; no source, type or data.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    Err(match e.raw_os_error() {
        Some(libc::EBUSY) => Error::MountInUse(mnt.to_path_buf()),
        _ => Error::io(format!("remount {}", mnt.display()), e),
    })
}

/// The flags (without MS_RDONLY) the mount at `mnt` has now, changed by `changes`.
fn kernel_flags(mnt: &Path, changes: &[String]) -> Result<libc::c_ulong> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read /proc/self/mountinfo", e))?;
    let line = info
        .lines()
        .rev()
        .find(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|p| crate::host::unescape(p).as_bytes() == mnt.as_os_str().as_bytes())
        })
        .ok_or_else(|| Error::NotMounted(mnt.to_path_buf()))?;
    let (left, right) = line.split_once(" - ").unwrap_or((line, ""));
    let per_mount = left.split(' ').nth(5).unwrap_or("");
    let per_sb = right.split(' ').nth(2).unwrap_or("");
    let mut flags: libc::c_ulong = 0;
    for o in per_mount.split(',').chain(per_sb.split(',')) {
        flags |= match o {
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "noatime" => libc::MS_NOATIME,
            "nodiratime" => libc::MS_NODIRATIME,
            "relatime" => libc::MS_RELATIME,
            "strictatime" => libc::MS_STRICTATIME,
            "sync" => libc::MS_SYNCHRONOUS,
            "dirsync" => libc::MS_DIRSYNC,
            "mand" => libc::MS_MANDLOCK,
            "nosymfollow" => libc::MS_NOSYMFOLLOW,
            _ => 0,
        };
    }
    const ATIME: libc::c_ulong = libc::MS_NOATIME | libc::MS_RELATIME | libc::MS_STRICTATIME;
    for c in changes {
        match c.as_str() {
            "nosuid" => flags |= libc::MS_NOSUID,
            "suid" => flags &= !libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "dev" => flags &= !libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "exec" => flags &= !libc::MS_NOEXEC,
            "noatime" => flags = (flags & !ATIME) | libc::MS_NOATIME,
            "atime" => flags &= !libc::MS_NOATIME,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "async" => flags &= !libc::MS_SYNCHRONOUS,
            "dirsync" => flags |= libc::MS_DIRSYNC,
            "nosymfollow" => flags |= libc::MS_NOSYMFOLLOW,
            "symfollow" => flags &= !libc::MS_NOSYMFOLLOW,
            other => return Err(Error::BadOption(other.to_string())),
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use crate::host::unescape;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape("/a\\040b\\134c"), "/a b\\c");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
