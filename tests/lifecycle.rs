//! The daemon's life: SIGTERM/SIGINT commit open files and unmount; the mount command
//! returns only once the mount is live; logging goes to the store's log.
// Tests call libc directly on descriptors and buffers they own; the SAFETY comments
// the lint asks for are kept for the daemon's code.
#![allow(clippy::undocumented_unsafe_blocks)]

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{daemon_pid, is_mounted, process_gone, Mount};

fn wait_gone(pid: i32, mnt: &Path) {
    // Every thread must be gone, not only the main one: a zombie leader whose other
    // threads still run holds the store's lock for a moment longer.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if process_gone(pid) && !is_mounted(mnt) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("daemon {pid} did not exit / unmount after the signal");
}

fn signal_commits_open_files(sig: i32) {
    let m = Mount::new();
    fs::write(m.path("closed"), b"closed before the signal").unwrap();
    let mut open = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("open"))
        .unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    open.write_all(&data).unwrap();
    let pid = daemon_pid(&m.store, &m.mnt);
    // SAFETY: signalling the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    drop(open); // the handle may now fail (ENOTCONN); what was written must be kept
    wait_gone(pid, &m.mnt);
    m.mount();
    assert_eq!(
        fs::read(m.path("closed")).unwrap(),
        b"closed before the signal"
    );
    assert_eq!(
        fs::read(m.path("open")).unwrap(),
        data,
        "writes acknowledged before the signal were lost"
    );
}

#[test]
fn sigterm_commits_open_files_and_unmounts() {
    signal_commits_open_files(libc::SIGTERM);
}

#[test]
fn sigint_commits_open_files_and_unmounts() {
    signal_commits_open_files(libc::SIGINT);
}

#[test]
fn mount_returns_only_when_live_and_logs_to_the_store() {
    let m = Mount::new();
    // Mount::new already asserted the mount is in mountinfo when `decofs mount` returned;
    // it must also answer at once.
    assert!(is_mounted(&m.mnt));
    fs::write(m.path("x"), b"1").unwrap();
    let log = fs::read_to_string(m.store.join("decofs.log")).unwrap();
    assert!(log.contains("mounted"), "log: {log}");
    m.unmount();
    assert!(!is_mounted(&m.mnt));
}

/// The kernel's readahead window for the mount (its bdi in sysfs).
fn readahead_kib(mnt: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(mnt).unwrap().dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    fs::read_to_string(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn readahead_window_is_widened_and_configurable() {
    let m = Mount::new();
    assert_eq!(readahead_kib(&m.mnt), 4096, "default readahead");
    m.unmount();
    let m = Mount::with_opts("readahead=512");
    assert_eq!(readahead_kib(&m.mnt), 512, "readahead=512");
    // Reads still return exactly what was written, across chunk boundaries.
    let data: Vec<u8> = (0..9_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(m.path("big"), &data).unwrap();
    m.remount();
    assert_eq!(fs::read(m.path("big")).unwrap(), data);
    let bad = common::decofs(&[
        "mount",
        m.store.to_str().unwrap(),
        m.mnt.to_str().unwrap(),
        "-o",
        "readahead=lots",
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("readahead=lots"), "{err}");
}

/// `decofs init` says when the filesystem under the store keeps each record in a block
/// of its own (ext4's default 256-byte inodes), which costs a cold walk one device read
/// per file, and stays silent where records fit inside the inode (`mkfs.ext4 -I 1024`).
/// Both stores work the same.
#[test]
fn init_says_when_records_do_not_fit_in_inodes() {
    struct Loop(std::path::PathBuf);
    impl Drop for Loop {
        fn drop(&mut self) {
            common::umount_fs(&self.0);
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("decofs-inodes")
        .tempdir_in(common::test_root())
        .unwrap();
    for (size, note) in [("256", true), ("1024", false)] {
        let img = dir.path().join(format!("i{size}.img"));
        let root = dir.path().join(format!("i{size}"));
        fs::create_dir(&root).unwrap();
        common::mkfs_ext4(&img, 64 << 20, &["-I", size]);
        common::sh(&format!(
            "mount -o loop '{}' '{}'",
            img.display(),
            root.display()
        ));
        let _guard = Loop(root.clone());
        let store = root.join("store");
        let out = common::decofs(&["init", store.to_str().unwrap()]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.contains("inodes are too small to hold a node's record"),
            note,
            "inode size {size}: {text}"
        );
        let staging = store.join("sessions");
        assert_eq!(
            fs::read_dir(&staging).unwrap().count(),
            0,
            "the probe is removed"
        );
        let mdir = tempfile::Builder::new()
            .prefix("decofs-inodes-mnt")
            .tempdir_in(common::test_root())
            .unwrap();
        let m = Mount {
            store: store.clone(),
            mnt: mdir.path().to_path_buf(),
            dir: mdir,
            opts: "allow_other".into(),
        };
        m.mount();
        fs::write(m.path("f"), b"x").unwrap();
        assert_eq!(fs::read(m.path("f")).unwrap(), b"x");
        m.unmount();
    }
}

/// A panic in a request, injected where it hurts most (a record update, while the
/// request holds the node's stripe lock), is answered EIO and logged, and the mount goes
/// on: after 32 such panics the next 1,000 files each take a create, a write, a chmod (a record update under
/// a stripe lock: 1,000 of them cover all 64 stripes, the panicked one included) and a
/// read, and the panicked node itself still reads and stats.
#[test]
fn a_panicking_request_is_answered_eio_and_the_mount_goes_on() {
    use std::os::unix::fs::PermissionsExt;
    let m = Mount::new();
    m.unmount();
    let out = std::process::Command::new(common::decofs_bin())
        .env("DECOFS_INJECT_PANIC", "boom")
        .args(["mount", m.store.to_str().unwrap(), m.mnt.to_str().unwrap()])
        .args(["-o", &m.opts])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let boom = m.path("boom");
    fs::write(&boom, b"still here").unwrap();
    // Twice as many panics as the mount has request threads: a panic that killed its
    // thread would leave none to serve.
    for _ in 0..32 {
        let err = fs::set_permissions(&boom, fs::Permissions::from_mode(0o600)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    }

    for i in 0..1000u32 {
        let p = m.path(&format!("f{i}"));
        let data = format!("file {i}");
        fs::write(&p, &data).unwrap_or_else(|e| panic!("write f{i}: {e}"));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640))
            .unwrap_or_else(|e| panic!("chmod f{i}: {e}"));
        assert_eq!(fs::read_to_string(&p).unwrap(), data);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }
    assert_eq!(fs::read(&boom).unwrap(), b"still here");
    assert_eq!(
        fs::metadata(&boom).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert_eq!(fs::read_dir(&m.mnt).unwrap().count(), 1001);
    let log = fs::read_to_string(m.store.join("decofs.log")).unwrap();
    assert!(
        log.contains("setattr: the request panicked") && log.contains("answered EIO"),
        "the panic is not in the log:\n{log}"
    );
}
