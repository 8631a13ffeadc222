//! Which daemons serve a store: each writes `STORE/sessions/mount.<pid>` (mountpoint,
//! `rw`/`ro`, process start time, the mount's device, and `unmounted` once its mount is
//! gone) and listens on `STORE/sessions/control.<pid>.sock`.
//!
//! A writer's pid file outlives its mount: it is marked `unmounted` when the kernel ends
//! the session and stays until the process is gone (the next `register` or `decofs
//! umount` removes it), so a new mount that finds the lock still held can tell a writer
//! on its way out (wait) from one whose mount is live (refuse).

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::host::{mount_at, mounts, proc_starttime};

/// The control socket of the daemon `pid` of a store.
pub fn socket_path(store: &Path, pid: u32) -> PathBuf {
    store.join("sessions").join(format!("control.{pid}.sock"))
}

/// The longest path a unix socket address holds (`sun_path`, with its NUL).
const SUN_PATH_MAX: usize = 107;

/// Run `f` (a bind or a connect) on a socket path: as it is when it fits a unix socket
/// address, else through `/proc/self/fd/<its directory>/<name>`, which does, so a store
/// deep in the tree still has its control socket.
pub fn on_socket_path<T>(
    path: &Path,
    f: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    if path.as_os_str().len() <= SUN_PATH_MAX {
        return f(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return f(path);
    };
    let d = fs::File::open(dir)?;
    let short = Path::new(&format!(
        "/proc/self/fd/{}",
        std::os::unix::io::AsRawFd::as_raw_fd(&d)
    ))
    .join(name);
    let res = f(&short);
    drop(d);
    res
}

/// The pid file of the daemon `pid` of a store.
pub fn pid_file(store: &Path, pid: u32) -> PathBuf {
    store.join("sessions").join(format!("mount.{pid}"))
}

/// Announce this process as a daemon of `store` serving `mountpoint`; returns the pid
/// file (removed by the daemon when it exits). Stale entries of dead daemons go first.
pub fn register(store: &Path, mountpoint: &Path, read_only: bool) -> PathBuf {
    let me = std::process::id();
    let pidf = pid_file(store, me);
    let mut text = mountpoint.as_os_str().as_bytes().to_vec();
    text.extend_from_slice(if read_only { b"\nro\n" } else { b"\nrw\n" });
    // Pids are reused: the start time names this process.
    text.extend_from_slice(format!("{}\n", proc_starttime(me as i32).unwrap_or(0)).as_bytes());
    // The mount's device tells this mount from a later one on the same mountpoint.
    let dev = mount_at(mountpoint).map(|m| m.dev).unwrap_or_default();
    text.extend_from_slice(format!("{dev}\n").as_bytes());
    clean_stale(store);
    let _ = fs::write(&pidf, text);
    pidf
}

/// The daemon's mount is gone (its session ended): mark its pid file so, leaving it in
/// place until the process exits. `daemons` no longer lists it.
pub fn mark_unmounted(pidf: &Path) {
    let Ok(mut text) = fs::read(pidf) else {
        return;
    };
    text.extend_from_slice(b"unmounted\n");
    let mut tmp = pidf.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    if fs::write(&tmp, text).is_err() || fs::rename(&tmp, pidf).is_err() {
        let _ = fs::remove_file(&tmp);
    }
}

/// A running daemon of a store: (pid, mountpoint, writer, control socket).
#[derive(Debug, Clone)]
pub struct Daemon {
    pub pid: i32,
    pub mountpoint: PathBuf,
    pub writer: bool,
    pub socket: PathBuf,
    /// "major:minor" of its mount (empty in pid files of earlier builds).
    pub dev: String,
    /// Its mount is gone; the process is finishing (committing, closing the index).
    pub unmounted: bool,
}

impl Daemon {
    /// Is this daemon's mount still in this process's view of the mounts? (A lazily
    /// detached mount that still serves open files is not.)
    pub fn mount_live(&self) -> bool {
        if self.unmounted {
            return false;
        }
        mounts()
            .iter()
            .any(|m| m.mountpoint == self.mountpoint && (self.dev.is_empty() || m.dev == self.dev))
    }
}

/// The live daemons serving a store, from their pid files.
pub fn daemons(store: &Path) -> Vec<Daemon> {
    registered(store)
        .into_iter()
        .filter(|d| !d.unmounted)
        .collect()
}

/// The live process `pid`, if it is a daemon of `store`, serving or on its way out.
pub fn daemon_of(store: &Path, pid: i32) -> Option<Daemon> {
    registered(store).into_iter().find(|d| d.pid == pid)
}

/// Every live process with a pid file in the store, serving or not.
fn registered(store: &Path) -> Vec<Daemon> {
    let mut out = Vec::new();
    let Ok(it) = fs::read_dir(store.join("sessions")) else {
        return out;
    };
    for e in it.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("mount."))
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let text = fs::read(e.path()).unwrap_or_default();
        let mut lines = text.split(|b| *b == b'\n');
        let mp = PathBuf::from(std::ffi::OsStr::from_bytes(lines.next().unwrap_or(b"")));
        let writer = lines.next() == Some(b"rw");
        // Pids are reused: the pid file also names the process's start time.
        let started = lines
            .next()
            .and_then(|l| std::str::from_utf8(l).ok())
            .and_then(|l| l.parse::<u64>().ok());
        if started.is_none() || started != proc_starttime(pid) {
            continue;
        }
        let dev = lines
            .next()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .unwrap_or_default();
        let unmounted = lines.next() == Some(b"unmounted");
        out.push(Daemon {
            pid,
            mountpoint: mp,
            writer,
            socket: socket_path(store, pid as u32),
            dev,
            unmounted,
        });
    }
    out
}

/// Remove pid files and sockets of daemons that are gone.
pub fn clean_stale(store: &Path) {
    let live: Vec<i32> = registered(store).iter().map(|d| d.pid).collect();
    let Ok(it) = fs::read_dir(store.join("sessions")) else {
        return;
    };
    for e in it.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("mount.")
            .or_else(|| {
                name.strip_prefix("control.")
                    .and_then(|n| n.strip_suffix(".sock"))
            })
            .and_then(|n| n.parse::<i32>().ok());
        if let Some(pid) = pid {
            if !live.contains(&pid) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn a_socket_deeper_than_a_socket_address_holds_is_bound_and_reached() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("a-directory-name-of-some-length".repeat(4));
        fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("control.1.sock");
        assert!(sock.as_os_str().len() > SUN_PATH_MAX, "{}", sock.display());
        assert!(UnixListener::bind(&sock).is_err(), "too long as it is");
        let l = on_socket_path(&sock, |p| UnixListener::bind(p)).unwrap();
        assert!(sock.exists(), "the socket is where its path says");
        let mut c = on_socket_path(&sock, |p| UnixStream::connect(p)).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
    }
}
