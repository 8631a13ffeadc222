//! `decofs mount` without `--foreground`: start the daemon in the background and wait
//! on a pipe until it reports that the mount is live, or the [`Report`] of why not.
//!
//! The daemon is this binary re-executed with `--foreground` in a new session, its
//! output going to `STORE/decofs.log`; it writes `ok` or one JSON report line to the
//! descriptor named by `DECOFS_READY_FD`.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::io::FromRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::control::Report;

const READY_ENV: &str = "DECOFS_READY_FD";

/// Tell the parent `decofs mount` how it went (if there is one waiting).
pub(super) fn report_ready(res: std::result::Result<(), Report>) {
    let Some(fd) = std::env::var(READY_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    std::env::remove_var(READY_ENV);
    // SAFETY: the parent passed this descriptor to us for exactly this purpose.
    let mut f = unsafe { fs::File::from_raw_fd(fd) };
    let line = match res {
        Ok(()) => "ok\n".to_string(),
        Err(rep) => format!(
            "{}\n",
            serde_json::to_string(&rep).expect("reports serialize")
        ),
    };
    let _ = f.write_all(line.as_bytes());
}

/// Start the daemon in the background and wait until it reports.
pub fn spawn_background(store_path: &Path, args: &[OsString]) -> Result<(), Report> {
    let daemon_err = |reason: String| Report {
        what: reason.clone(),
        code: "daemon_failed".into(),
        reason,
        suggestion: format!("see {}", store_path.join("decofs.log").display()),
    };
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(daemon_err(format!(
            "pipe: {}",
            std::io::Error::last_os_error()
        )));
    }
    let (rfd, wfd) = (fds[0], fds[1]);
    // Log next to the store if it is a store; otherwise nowhere (the error comes back
    // through the pipe and nothing is written into a directory that is not a store).
    let log = if store_path.join(crate::store::layout::FORMAT_FILE).exists() {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(store_path.join("decofs.log"))
            .ok()
    } else {
        None
    };
    let exe = std::env::current_exe().map_err(|e| daemon_err(e.to_string()))?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .arg("--foreground")
        .env(READY_ENV, "3")
        .stdin(Stdio::null());
    match log {
        Some(f) => {
            let f2 = f.try_clone().map_err(|e| daemon_err(e.to_string()))?;
            cmd.stdout(f).stderr(f2);
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            if libc::dup2(wfd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| daemon_err(format!("start daemon: {e}")))?;
    // SAFETY: closing our copy of the write end, which nothing else uses.
    unsafe { libc::close(wfd) };
    // SAFETY: the read end is ours alone; the File now owns it.
    let mut r = unsafe { fs::File::from_raw_fd(rfd) };
    let mut line = String::new();
    let _ = r.read_to_string(&mut line);
    let line = line.trim();
    if line == "ok" {
        return Ok(());
    }
    let _ = child.wait();
    if let Ok(rep) = serde_json::from_str::<Report>(line) {
        return Err(rep);
    }
    Err(daemon_err(
        "the daemon exited before the mount was live".into(),
    ))
}
