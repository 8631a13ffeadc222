//! Helpers of the tests of a store on an object store (tests/remote.rs,
//! tests/remote_gc.rs): the environment for SeaweedFS, publishing, cloning, status
//! polls, and comparing trees.

use std::path::Path;
use std::sync::Once;
use std::time::{Duration, Instant};

use super::seaweed::Seaweed;
use super::*;

/// Credentials for SeaweedFS (it checks none without an identity file), and short
/// request bounds (15 s: SeaweedFS makes racing conditional puts of one object wait
/// up to seconds for each other) so a hung object store fails requests soon. The daemons
/// `decofs mount` starts inherit them.
pub fn env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", "decofs-test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "decofs-test-secret");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("DECOFS_REMOTE_TIMEOUT_MS", "15000");
    });
}

pub fn status(mnt: &Path) -> serde_json::Value {
    let (c, v, e) = dj(&["status", mnt.to_str().unwrap()]);
    assert_eq!(c, 0, "status: {v} {e}");
    v
}

/// Poll the mount's status until `done` holds (at most `secs`).
#[track_caller]
pub fn wait_status(m: &Mount, secs: u64, what: &str, done: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = status(&m.mnt);
        if done(&v) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {}\n{}",
            v["remote"],
            log_tail(&m.store)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn wait_uploaded(m: &Mount) {
    wait_status(m, 60, "uploads finish", |v| {
        v["remote"]["pending_blobs"].as_u64() == Some(0)
    });
}

pub fn blob_key(prefix: &str, hash: &str) -> String {
    format!("{prefix}/blobs/{}/{hash}", &hash[..2])
}

/// Every path under `a` and `b`: the same kind, mode, size, link count, symlink target
/// and bytes.
#[track_caller]
pub fn assert_same_tree(a: &Path, b: &Path) {
    use std::os::unix::fs::MetadataExt;
    let walk = |root: &Path| {
        let mut out = std::collections::BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let md = std::fs::symlink_metadata(&p).unwrap();
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                let body = if md.file_type().is_symlink() {
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes()
                } else if md.is_file() {
                    std::fs::read(&p).unwrap()
                } else {
                    stack.push(p.clone());
                    Vec::new()
                };
                let nlink = if md.is_dir() { 0 } else { md.nlink() };
                out.insert(rel, (md.mode(), md.len(), nlink, body));
            }
        }
        out
    };
    let (ta, tb) = (walk(a), walk(b));
    assert_eq!(
        ta.keys().collect::<Vec<_>>(),
        tb.keys().collect::<Vec<_>>(),
        "the same names"
    );
    for (k, va) in &ta {
        let vb = &tb[k];
        assert_eq!(
            (va.0, va.1, va.2),
            (vb.0, vb.1, vb.2),
            "{}: mode, size, links",
            k.display()
        );
        assert_bytes_eq(&vb.3, &va.3, &k.display().to_string());
    }
}

pub fn publish(target: &Path) -> serde_json::Value {
    let (c, v, e) = dj(&["publish", target.to_str().unwrap()]);
    assert_eq!(c, 0, "publish: {v} {e}");
    v
}

/// Clone the prefix into a new store beside `dir`, mounted read-only (a follower).
pub fn clone_mounted(sw: &Seaweed, prefix: &str, dir: &Path, name: &str) -> Mount {
    clone_mounted_with(sw, prefix, dir, name, "ro,allow_other")
}

/// Clone the prefix into a new store beside `dir`, mounted with `opts`.
pub fn clone_mounted_with(sw: &Seaweed, prefix: &str, dir: &Path, name: &str, opts: &str) -> Mount {
    let store = dir.join(name);
    let (c, v, e) = dj(&[
        "clone",
        &sw.url(prefix),
        store.to_str().unwrap(),
        "--endpoint",
        &sw.endpoint(),
        "--allow-http",
    ]);
    assert_eq!(c, 0, "clone: {v} {e}");
    let mnt = dir.join(format!("{name}-mnt"));
    std::fs::create_dir(&mnt).unwrap();
    let m = Mount {
        dir: tempfile::tempdir_in(test_root()).unwrap(),
        store,
        mnt,
        opts: opts.into(),
    };
    m.mount();
    m
}

/// Unmount and wait until the daemon (started by this test) has exited: its close
/// publishes and gives the lease back.
pub fn unmount_and_wait(m: &Mount) {
    let pid = daemon_pid(&m.store, &m.mnt);
    m.unmount();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !process_gone(pid) {
        assert!(
            Instant::now() < deadline,
            "the daemon of {} never exited",
            m.store.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Poll until writing `name` on the mount is refused with EROFS (at most `secs`).
#[track_caller]
pub fn wait_erofs(m: &Mount, name: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match std::fs::write(m.path(name), b"x") {
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => return,
            r => assert!(
                Instant::now() < deadline,
                "{} still writable: {r:?}\n{}",
                m.mnt.display(),
                log_tail(&m.store)
            ),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `decofs fsck` and `decofs scrub --remote` of each store (unmounted) find nothing:
/// the store is whole, and every blob it names is in the bucket, whole.
#[track_caller]
pub fn assert_fsck_clean(stores: &[&Path]) {
    for s in stores {
        let (code, v, e) = dj(&["fsck", s.to_str().unwrap()]);
        assert_eq!(code, 0, "fsck of {}: {v} {e}", s.display());
        let (code, v, e) = dj(&["scrub", "--remote", s.to_str().unwrap()]);
        assert_eq!(code, 0, "scrub --remote of {}: {v} {e}", s.display());
        for k in ["damaged", "missing"] {
            assert_eq!(v[k].as_array().map(Vec::len), Some(0), "{k}: {v}");
        }
    }
}

/// Clone what `prefix` holds into a new store (mounted read-only, not following), read
/// it cold, and compare it with the writer `a`'s tree; then, both unmounted, fsck and
/// `scrub --remote` of both are clean.
#[track_caller]
pub fn assert_clone_equal(sw: &Seaweed, prefix: &str, a: &Mount) {
    let work = tempfile::tempdir_in(test_root()).unwrap();
    let c = clone_mounted_with(
        sw,
        prefix,
        work.path(),
        "c",
        "ro,allow_other,follow_interval=0",
    );
    c.unmount();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    c.mount();
    assert_same_tree(&a.mnt, &c.mnt);
    c.unmount();
    a.unmount();
    assert_fsck_clean(&[&a.store, &c.store]);
}
