//! The single-writer lock (invariant 7, first part): a read-write open of a store takes
//! an exclusive `flock` on `STORE/lock` and writes who holds it. A second writer fails
//! at once with `store_locked`, naming the holder. The kernel drops the lock when the
//! holder dies, so a crashed daemon never blocks the next mount.
//! Fencing epochs (for a lock broken under a live holder) are not implemented yet.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;

use super::error::{Error, IoContext, Result};
use super::layout::Layout;

pub struct StoreLock {
    _file: File,
}

impl StoreLock {
    pub fn acquire(layout: &Layout) -> Result<StoreLock> {
        let path = layout.lock_file();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .ctx(|| format!("open {}", path.display()))?;
        // SAFETY: flock on a valid, owned descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim().to_string();
                return Err(Error::StoreLocked {
                    path: layout.root.clone(),
                    holder: if holder.is_empty() {
                        "another process".into()
                    } else {
                        holder
                    },
                });
            }
            return Err(Error::io(format!("lock {}", path.display()), err));
        }
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let info = format!(
            "pid {} on host {} since {} (unix time)\n",
            std::process::id(),
            hostname(),
            since
        );
        file.set_len(0).ctx(|| "truncate lock".into())?;
        file.seek(SeekFrom::Start(0)).ctx(|| "seek lock".into())?;
        file.write_all(info.as_bytes())
            .ctx(|| "write lock".into())?;
        Ok(StoreLock { _file: file })
    }
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
