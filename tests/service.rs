//! Running decofs like a real drive: the single-writer lock and its fencing epoch,
//! `mount -t decofs` and fstab through mount.decofs, sd_notify readiness, the systemd
//! unit, status, and SIGTERM during a write burst.
// Tests call libc directly on descriptors and buffers they own; the SAFETY comments
// the lint asks for are kept for the daemon's code.
#![allow(clippy::undocumented_unsafe_blocks)]

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{daemon_pid, decofs, decofs_bin, is_mounted, unmount_path, Mount};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn epoch(store: &Path) -> u64 {
    fs::read_to_string(store.join("epoch"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

#[test]
fn second_writer_is_refused_with_the_holder_named() {
    let m = Mount::new();
    let pid = daemon_pid(&m.store, &m.mnt);
    let other = m.dir.path().join("other");
    fs::create_dir(&other).unwrap();
    let out = decofs(&["mount", m.store.to_str().unwrap(), other.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("store_locked"), "{err}");
    assert!(
        err.contains(&format!("pid {pid}")),
        "the holder's pid is not named: {err}"
    );
    assert!(
        err.contains("host"),
        "the holder's host is not named: {err}"
    );
    assert!(!is_mounted(&other));
}

/// Invariant 7: break the lock under a live mount; its writes are refused and nothing
/// it tried to write after the break is in the store. A new writer can mount meanwhile.
#[test]
fn broken_lock_fences_the_stale_writer() {
    let m = Mount::new();
    fs::write(m.path("before"), b"written while holding the lock").unwrap();
    let e0 = epoch(&m.store);
    let out = decofs(&["lock", "break", m.store.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(epoch(&m.store), e0 + 1);

    // The stale holder: every kind of write is refused with EROFS.
    assert_eq!(
        errno_of(fs::write(m.path("after"), b"must not land")),
        libc::EROFS
    );
    assert_eq!(
        errno_of(fs::write(m.path("before"), b"must not land")),
        libc::EROFS
    );
    assert_eq!(errno_of(fs::create_dir(m.path("dir"))), libc::EROFS);
    assert_eq!(errno_of(fs::remove_file(m.path("before"))), libc::EROFS);
    // Reads still work.
    assert_eq!(
        fs::read(m.path("before")).unwrap(),
        b"written while holding the lock"
    );

    // A new writer may take the store now.
    let mnt2 = m.dir.path().join("mnt2");
    fs::create_dir(&mnt2).unwrap();
    let out = decofs(&["mount", m.store.to_str().unwrap(), mnt2.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let guard = scopeguard(mnt2.clone());
    assert_eq!(epoch(&m.store), e0 + 2);
    fs::write(mnt2.join("new-writer"), b"ok").unwrap();
    assert_eq!(
        errno_of(fs::write(m.path("after2"), b"x")),
        libc::EROFS,
        "stale holder still fenced"
    );
    drop(guard);

    m.unmount();
    m.mount();
    assert_eq!(
        fs::read(m.path("before")).unwrap(),
        b"written while holding the lock"
    );
    assert!(!m.path("after").exists() && !m.path("after2").exists() && !m.path("dir").exists());
    assert_eq!(fs::read(m.path("new-writer")).unwrap(), b"ok");
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        unmount_path(&self.0);
    }
}
fn scopeguard(p: PathBuf) -> Unmount {
    Unmount(p)
}

/// Point /sbin/mount.decofs at the binary under test (mount(8) looks only in /sbin).
fn install_mount_helper() {
    let helper = Path::new("/sbin/mount.decofs");
    if fs::read_link(helper).ok().as_deref() != Some(decofs_bin().as_path()) {
        let _ = fs::remove_file(helper);
        std::os::unix::fs::symlink(decofs_bin(), helper).unwrap();
    }
}

#[test]
fn mount_t_decofs_and_fstab() {
    install_mount_helper();
    let m = Mount::new();
    m.unmount();
    let (store, mnt) = (m.store.to_str().unwrap(), m.mnt.to_str().unwrap());
    let out = Command::new("mount")
        .args(["-t", "decofs", store, mnt, "-o", "allow_other,noatime"])
        .output()
        .unwrap();
    assert!(out.status.success(), "mount -t decofs: {}", stderr(&out));
    assert!(is_mounted(&m.mnt));
    fs::write(m.path("via-mount-t"), b"1").unwrap();
    m.unmount();

    // An fstab line with the options administrators use.
    let fstab = m.dir.path().join("fstab");
    fs::write(
        &fstab,
        format!("{store} {mnt} decofs allow_other,_netdev,nofail,log=info 0 0\n"),
    )
    .unwrap();
    let out = Command::new("mount")
        .arg("--fstab")
        .arg(&fstab)
        .arg(mnt)
        .output()
        .unwrap();
    assert!(out.status.success(), "mount via fstab: {}", stderr(&out));
    assert!(is_mounted(&m.mnt));
    assert_eq!(fs::read(m.path("via-mount-t")).unwrap(), b"1");
    // `mount -f` (fake) must not mount anything.
    m.unmount();
    let out = Command::new("mount")
        .args(["-f", "-t", "decofs", store, mnt])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!is_mounted(&m.mnt));
}

/// READY=1 arrives only after the mount is in /proc/self/mountinfo; SIGTERM gives
/// STOPPING=1 and a clean unmount.
#[test]
fn notify_socket_gets_ready_only_when_live() {
    let m = Mount::new();
    m.unmount();
    let sock_path = m.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = Command::new(decofs_bin())
        .args([
            "mount",
            m.store.to_str().unwrap(),
            m.mnt.to_str().unwrap(),
            "-o",
            "allow_other",
            "--foreground",
        ])
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = scopeguard(m.mnt.clone());
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("no READY=1 within 30 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    let live = is_mounted(&m.mnt);
    assert_eq!(msg, "READY=1");
    assert!(
        live,
        "READY=1 was sent before the mount appeared in mountinfo"
    );
    fs::write(m.path("f"), b"data").unwrap();
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = sock.recv(&mut buf).expect("no STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = child.wait().unwrap();
    assert!(status.success(), "daemon exit status {status}");
    assert!(!is_mounted(&m.mnt));
    m.mount();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"data");
}

#[test]
fn systemd_unit_verifies() {
    let unit = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/decofs@.service"
    ))
    .unwrap();
    assert!(unit.contains("Type=notify"));
    let dir = tempfile::tempdir_in(common::test_root()).unwrap();
    // verify checks that ExecStart is executable: point it at the binary under test.
    let unit = unit.replace("/usr/local/bin/decofs", decofs_bin().to_str().unwrap());
    fs::write(dir.path().join("decofs@.service"), unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "decofs@mnt-data.service"])
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze is missing (scripts/test installs systemd)");
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).trim().is_empty(),
        "systemd-analyze verify warned: {}",
        stderr(&out)
    );
}

#[test]
fn status_mounted_and_not() {
    let m = Mount::new();
    fs::write(m.path("gone"), vec![1u8; 10_000]).unwrap();
    fs::remove_file(m.path("gone")).unwrap();
    let mut open = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("open"))
        .unwrap();
    open.write_all(b"pending").unwrap();
    for target in [&m.mnt, &m.store] {
        let out = decofs(&["--json", "status", target.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["mounted"], true);
        assert_eq!(
            v["pid"].as_i64().unwrap() as i32,
            daemon_pid(&m.store, &m.mnt)
        );
        assert_eq!(v["open_sessions"], 1);
        assert_eq!(v["trash"]["nodes"], 1);
        assert_eq!(v["trash"]["bytes"], 10_000);
        assert!(v["epoch"].as_u64().unwrap() >= 1);
        assert!(v["holder"].as_str().unwrap().contains("pid"));
        assert!(v.get("uptime_secs").is_some());
    }
    let human = decofs(&["status", m.mnt.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("mounted:    yes") && text.contains("1 open write session"),
        "{text}"
    );
    drop(open);
    m.unmount();
    let out = decofs(&["--json", "status", m.store.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mounted"], false);
    assert_eq!(v["locked"], false);
    assert_eq!(v["trash"]["nodes"], 1);
    let bad = decofs(&["status", m.dir.path().join("nope").to_str().unwrap()]);
    assert!(
        !bad.status.success() && stderr(&bad).contains("store_not_found"),
        "{}",
        stderr(&bad)
    );
}

/// SIGTERM during a burst of writes: every file closed before the signal is intact.
#[test]
fn sigterm_during_write_burst_keeps_closed_files() {
    let m = Mount::new();
    let pid = daemon_pid(&m.store, &m.mnt);
    let closed = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let content = |i: usize| -> Vec<u8> {
        (0..(i * 997 % 200_000 + 1))
            .map(|j| (i * 31 + j) as u8)
            .collect()
    };
    let writer = {
        let (closed, stop, dir) = (closed.clone(), stop.clone(), m.mnt.clone());
        std::thread::spawn(move || {
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let p = dir.join(format!("f{i}"));
                let ok = (|| -> std::io::Result<()> {
                    let mut f = fs::File::create(&p)?;
                    f.write_all(&content(i))?;
                    drop(f); // close(2): flush commits
                    Ok(())
                })();
                if ok.is_err() {
                    break;
                }
                closed.lock().unwrap().push(i);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while closed.lock().unwrap().len() < 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: signalling the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let snapshot: Vec<usize> = closed.lock().unwrap().clone();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while is_mounted(&m.mnt) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!is_mounted(&m.mnt), "SIGTERM did not unmount");
    // Wait for the daemon to release the store before remounting.
    while Path::new(&format!("/proc/{pid}")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
        && Instant::now() < deadline + Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    m.mount();
    assert!(
        snapshot.len() >= 200,
        "the burst was too short: {}",
        snapshot.len()
    );
    for i in snapshot {
        assert_eq!(
            fs::read(m.path(&format!("f{i}"))).unwrap(),
            content(i),
            "file f{i}, closed before SIGTERM, changed"
        );
    }
}
