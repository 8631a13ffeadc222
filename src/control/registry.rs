//! Which daemons serve a store: each writes `STORE/sessions/mount.<pid>` (mountpoint,
//! `rw`/`ro`, process start time) and listens on `STORE/sessions/control.<pid>.sock`.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::host::proc_starttime;

/// The control socket of the daemon `pid` of a store.
pub fn socket_path(store: &Path, pid: u32) -> PathBuf {
    store.join("sessions").join(format!("control.{pid}.sock"))
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
    clean_stale(store);
    let _ = fs::write(&pidf, text);
    pidf
}

/// A running daemon of a store: (pid, mountpoint, writer, control socket).
#[derive(Debug, Clone)]
pub struct Daemon {
    pub pid: i32,
    pub mountpoint: PathBuf,
    pub writer: bool,
    pub socket: PathBuf,
}

/// The live daemons serving a store, from their pid files.
pub fn daemons(store: &Path) -> Vec<Daemon> {
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
        out.push(Daemon {
            pid,
            mountpoint: mp,
            writer,
            socket: socket_path(store, pid as u32),
        });
    }
    out
}

/// Remove pid files and sockets of daemons that are gone.
pub fn clean_stale(store: &Path) {
    let live: Vec<i32> = daemons(store).iter().map(|d| d.pid).collect();
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
