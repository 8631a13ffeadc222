//! Shared helpers for integration tests: a real decofs mount that is always unmounted.
//!
//! `Mount::new()` creates a fresh store in a temp dir, mounts it (allow_other, so tests
//! that switch uid work) and returns a guard. Dropping the guard runs `decofs umount`
//! (which waits until the daemon has exited and released the store), falls back to
//! `fusermount3 -u` and, as a last resort, a lazy unmount. Nothing is killed.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub fn decofs_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_decofs"))
}

pub fn decofs(args: &[&str]) -> Output {
    Command::new(decofs_bin())
        .args(args)
        .output()
        .expect("run decofs")
}

pub fn is_mounted(mnt: &Path) -> bool {
    let mnt = std::fs::canonicalize(mnt).unwrap_or_else(|_| mnt.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .map(|p| Path::new(&unescape(p)) == mnt)
            .unwrap_or(false)
    })
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub struct Mount {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub mnt: PathBuf,
    pub opts: String,
}

impl Mount {
    /// A new store, initialised and mounted with the default test options.
    pub fn new() -> Mount {
        Mount::with_opts("allow_other")
    }

    pub fn with_opts(opts: &str) -> Mount {
        let dir = tempfile::Builder::new()
            .prefix("decofs-test")
            .tempdir_in(test_root())
            .unwrap();
        let store = dir.path().join("store");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let out = decofs(&["init", store.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = Mount {
            dir,
            store,
            mnt,
            opts: opts.to_string(),
        };
        m.mount();
        m
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Mount (again) this store at this mountpoint.
    pub fn mount(&self) {
        let mut args = vec![
            "mount",
            self.store.to_str().unwrap(),
            self.mnt.to_str().unwrap(),
        ];
        if !self.opts.is_empty() {
            args.push("-o");
            args.push(&self.opts);
        }
        let out = decofs(&args);
        assert!(
            out.status.success(),
            "mount failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            is_mounted(&self.mnt),
            "decofs mount returned before the mount was live"
        );
    }

    /// Unmount and wait until the daemon has let go of the mountpoint.
    pub fn unmount(&self) {
        unmount_path(&self.mnt);
    }

    pub fn remount(&self) {
        self.unmount();
        self.mount();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        unmount_path(&self.mnt);
    }
}

/// Where test stores live: on the same disk as the target dir (ext4 with user xattrs).
pub fn test_root() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&p).unwrap();
    p
}

pub fn unmount_path(mnt: &Path) {
    if !is_mounted(mnt) {
        return;
    }
    // `decofs umount` commits open sessions and waits for the daemon to exit.
    let _ = Command::new(decofs_bin())
        .args(["umount", mnt.to_str().unwrap()])
        .output();
    let deadline = Instant::now() + Duration::from_secs(20);
    while is_mounted(mnt) && Instant::now() < deadline {
        let _ = Command::new("fusermount3").arg("-u").arg(mnt).output();
        std::thread::sleep(Duration::from_millis(100));
    }
    if is_mounted(mnt) {
        // Last resort: lazy unmount so no mount is ever left behind.
        let _ = Command::new("fusermount3").arg("-uz").arg(mnt).output();
        let _ = Command::new("umount").arg("-l").arg(mnt).output();
    }
}

/// Run a shell command, panic with its output if it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("bash").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "command failed: {cmd}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pid of the live daemon serving `mnt` (validated by its start time, so a stale pid
/// file whose pid was reused is never mistaken for it).
pub fn daemon_pid(store: &Path, mnt: &Path) -> i32 {
    let mnt = std::fs::canonicalize(mnt).unwrap();
    decofs::control::daemons(store)
        .into_iter()
        .find(|d| d.mountpoint == mnt)
        .map(|d| d.pid)
        .unwrap_or_else(|| panic!("no live daemon serves {}", mnt.display()))
}

/// No thread of `pid` is still running (all gone or zombies), so it holds no files.
pub fn process_gone(pid: i32) -> bool {
    decofs::mount::process_gone(pid)
}
