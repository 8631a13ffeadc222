//! Shared helpers for integration tests: a real decofs mount that is always unmounted.
//!
//! `Mount::new()` creates a fresh store in a temp dir, mounts it (allow_other, so tests
//! that switch uid work) and returns a guard. Dropping the guard runs `decofs umount`
//! (which waits until the daemon has exited and released the store), falls back to
//! `fusermount3 -u` and, as a last resort, a lazy unmount. Nothing is killed.
//!
//! `seaweed`: a real S3 object store (SeaweedFS) on free ports, stopped by its pid;
//! `proxy`: a TCP proxy in front of it for fault tests; `remote`: helpers of the tests
//! of a store on an object store.
#![allow(dead_code)]

pub mod proxy;
pub mod remote;
pub mod seaweed;

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

    /// A store made with `--trash-min-age 0` (the tests delete files they just made and
    /// look for them in the trash), mounted with `opts`.
    pub fn with_opts(opts: &str) -> Mount {
        Mount::with_init(&["--trash-min-age", "0"], opts)
    }

    /// A store made by `decofs init` with `init_args`, mounted with `opts`.
    pub fn with_init(init_args: &[&str], opts: &str) -> Mount {
        let dir = tempfile::Builder::new()
            .prefix("decofs-test")
            .tempdir_in(test_root())
            .unwrap();
        let store = dir.path().join("store");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mut args = vec!["init", store.to_str().unwrap()];
        args.extend_from_slice(init_args);
        let out = decofs(&args);
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

/// Make an ext4 image of `size` bytes at `img` (`args`: extra mkfs.ext4 options).
pub fn mkfs_ext4(img: &Path, size: u64, args: &[&str]) {
    std::fs::File::create(img).unwrap().set_len(size).unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .args(args)
        .arg(img)
        .output()
        .expect("run mkfs.ext4");
    assert!(
        out.status.success(),
        "mkfs.ext4 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Unmount a kernel filesystem (e.g. a loop-mounted image) under a test's decofs store:
/// retried for up to 20 s while something still holds it, then detached lazily so no
/// mount is left behind (a loop device is freed with its last user).
pub fn umount_fs(root: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while is_mounted(root) && Instant::now() < deadline {
        let _ = Command::new("umount").arg(root).output();
        if is_mounted(root) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if is_mounted(root) {
        let _ = Command::new("umount").arg("-l").arg(root).output();
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
    decofs::daemon::process_gone(pid)
}

/// Deterministic bytes: the byte at absolute offset `i` of a stream named by `seed`.
pub fn pat_byte(seed: u64, i: u64) -> u8 {
    let x = (i ^ seed.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8 ^ (i as u8)
}

pub fn pattern(seed: u64, off: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|k| pat_byte(seed, off + k)).collect()
}

/// Equal buffers, or a failure naming the first differing offset (and its 4 MiB chunk)
/// rather than dumping megabytes.
#[track_caller]
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    const CHUNK: u64 = 4 << 20;
    if got.len() != want.len() {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: length differs: got {} bytes, expected {} (first differing byte within common prefix: {first:?})",
            got.len(),
            want.len()
        );
    }
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        let end = (i + 16).min(got.len());
        panic!(
            "{what}: first difference at offset {i} (chunk {} + {}): got {:02x?}, expected {:02x?}",
            i as u64 / CHUNK,
            i as u64 % CHUNK,
            &got[i..end],
            &want[i..end]
        );
    }
}

/// Run `decofs --json ARGS`: (exit code, stdout as JSON, stderr).
pub fn dj(args: &[&str]) -> (i32, serde_json::Value, String) {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = decofs(&a);
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.code().unwrap_or(-1),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Wait until the daemon serving `mnt` has at least `n` spare node files ready
/// (`store/spare.rs`): its spares thread then made its first `nodes/` shard and batch.
pub fn wait_for_spares(mnt: &Path, n: u64) {
    wait_for_status(mnt, "spares", |v| {
        v["spare_nodes"].as_u64().unwrap_or(0) >= n
    });
}

/// Wait until the daemon serving `mnt` has no write session open: every release the
/// kernel sent (asynchronously, after close returned) has been served.
pub fn wait_for_no_sessions(mnt: &Path) {
    wait_for_status(mnt, "open sessions", |v| {
        v["open_sessions"].as_u64() == Some(0)
    });
}

/// Poll `decofs status` of `mnt` until `done` holds (at most a minute: `what` is missing).
fn wait_for_status(mnt: &Path, what: &str, done: impl Fn(&serde_json::Value) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (c, v, e) = dj(&["status", mnt.to_str().unwrap()]);
        assert_eq!(c, 0, "status: {v} {e}");
        if done(&v) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {v}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The blob reference counts of an unmounted store, kept by the mounts since it was
/// made, equal a scan of every holder: a read-write fsck (the one that compares them)
/// reports no `refcount_mismatch`, and did not have to count them afresh.
#[track_caller]
pub fn assert_counts_exact(store: &Path, what: &str) {
    let (c, v, e) = dj(&["fsck", store.to_str().unwrap(), "--repair", "--grace", "0"]);
    assert!(c == 0 || c == 1, "{what}: fsck: {v} {e}");
    let wrong: Vec<_> = problems(&v)
        .into_iter()
        .filter(|p| p.0 == "refcount_mismatch")
        .collect();
    assert!(wrong.is_empty(), "{what}: counts against a scan: {wrong:?}");
    // Kept all along: not given up and counted afresh (which would compare equal).
    assert_eq!(v["refcounts"], "exact", "{what}: {v}");
}

/// (code, path, repaired) of every problem in an fsck report.
pub fn problems(v: &serde_json::Value) -> Vec<(String, String, bool)> {
    v["problems"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["code"].as_str().unwrap_or("").to_string(),
                        p["path"].as_str().unwrap_or("").to_string(),
                        p["repaired"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The node file a path on the mount is stored in (walking the entries of the store).
pub fn node_of(store: &Path, rel: &str) -> PathBuf {
    let fmt = std::fs::read_to_string(store.join("decofs.format")).unwrap();
    let root = fmt
        .lines()
        .find_map(|l| l.strip_prefix("root "))
        .unwrap()
        .trim()
        .to_string();
    let node = |id: &str| store.join("nodes").join(&id[0..2]).join(&id[2..4]).join(id);
    let mut cur = node(&root);
    for c in rel.split('/').filter(|c| !c.is_empty()) {
        let t = std::fs::read_link(cur.join(c)).unwrap();
        let id = t.file_name().unwrap().to_str().unwrap().to_string();
        cur = node(&id);
    }
    cur
}

/// The last 40 lines of a store's daemon log, for a failure message.
pub fn log_tail(store: &Path) -> String {
    let log = std::fs::read_to_string(store.join("decofs.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
