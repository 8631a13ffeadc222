//! Mount cycles as outside tools drive them: `umount MNT` (umount(8)) followed at once by
//! a new mount, `decofs umount` racing a new mount of the same store, and `mount -o
//! remount,ro|rw` through mount(8).
// Tests call libc directly on processes they started; the SAFETY comments the lint asks
// for are kept for the daemon's code.
#![allow(clippy::undocumented_unsafe_blocks)]

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{daemon_pid, decofs, decofs_bin, is_mounted, process_gone, unmount_path, Mount};

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

/// Point `/sbin/mount.<name>` at the binary under test (mount(8) looks only in /sbin).
/// `mount.decofs` serves `-t decofs` and fstab; `mount.fuse.decofs` a live mount, whose
/// type is `fuse.decofs` (without it mount(8) runs fuse3's `mount.fuse`, which runs
/// `decofs` from PATH).
/// Made under a name of its own and renamed over, so two tests installing it at once
/// (the suite runs two threads) never see it missing or collide on EEXIST.
fn install_helper(name: &str) {
    let helper = PathBuf::from(format!("/sbin/{name}"));
    if fs::read_link(&helper).ok().as_deref() != Some(decofs_bin().as_path()) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = PathBuf::from(format!("/sbin/.{name}.{}.{n}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(decofs_bin(), &tmp).unwrap();
        fs::rename(&tmp, &helper).unwrap();
    }
}

/// Wait (bounded) until `cond` holds; panic with `what` if it never does.
fn wait_until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes a test stopped or started: on every way out, stopped ones are continued
/// and started ones killed and reaped, by pid.
#[derive(Default)]
struct Procs {
    stopped: Vec<i32>,
    children: Vec<Child>,
    mounts: Vec<PathBuf>,
}

impl Procs {
    fn stop(&mut self, pid: i32) {
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        self.stopped.push(pid);
    }

    fn cont(&mut self, pid: i32) {
        assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
        self.stopped.retain(|p| *p != pid);
    }

    /// Wait for the child at `i`, at most `limit`; None if it is still running.
    fn wait_child(&mut self, i: usize, limit: Duration) -> Option<Output> {
        let deadline = Instant::now() + limit;
        loop {
            if self.children[i].try_wait().unwrap().is_some() {
                let child = self.children.remove(i);
                return Some(child.wait_with_output().unwrap());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for pid in &self.stopped {
            unsafe { libc::kill(*pid, libc::SIGCONT) };
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for m in &self.mounts {
            unmount_path(m);
        }
    }
}

/// umount(8), the kernel's unmount: it returns once the mount is detached, while the
/// daemon may still be committing and closing its index.
fn umount8(mnt: &Path) {
    let out = Command::new("umount").arg(mnt).output().unwrap();
    assert!(out.status.success(), "umount(8): {}", show(&out));
    assert!(!is_mounted(mnt));
}

/// `umount MNT` then at once a new mount, several times over, by `decofs mount` and by
/// `mount MNT` from an fstab line (mount.decofs): every mount succeeds, nothing is lost.
/// The index is slowed down (index_delay) so the daemon is still on its way out, holding
/// the store, when the next mount starts: that mount waits for it and says so.
#[test]
fn umount8_then_mount_at_once_succeeds_every_time() {
    install_helper("mount.decofs");
    let m = Mount::with_opts("allow_other,index_delay=1500");
    let fstab = m.dir.path().join("fstab");
    fs::write(
        &fstab,
        format!(
            "{} {} decofs allow_other,index_delay=1500,nofail 0 0\n",
            s(&m.store),
            s(&m.mnt)
        ),
    )
    .unwrap();
    let mut waited = 0;
    for round in 0..6 {
        // A change right before the unmount: the index applies it, then pauses.
        fs::write(m.path(&format!("f{round}")), format!("round {round}")).unwrap();
        let old = daemon_pid(&m.store, &m.mnt);
        umount8(&m.mnt);
        let out = if round % 2 == 0 {
            decofs(&["mount", s(&m.store), s(&m.mnt), "-o", &m.opts])
        } else {
            Command::new("mount")
                .arg("--fstab")
                .arg(&fstab)
                .arg(&m.mnt)
                .output()
                .unwrap()
        };
        assert!(out.status.success(), "round {round}: {}", show(&out));
        assert!(is_mounted(&m.mnt), "round {round}: not mounted");
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains(&format!("waiting for pid {old}, whose mount is gone")) {
            waited += 1;
        }
        assert_eq!(
            err.matches("waiting for pid").count(),
            usize::from(err.contains("waiting for pid")),
            "round {round}: the wait is said once: {err}"
        );
        assert_ne!(daemon_pid(&m.store, &m.mnt), old);
        for r in 0..=round {
            assert_eq!(
                fs::read_to_string(m.path(&format!("f{r}"))).unwrap(),
                format!("round {r}")
            );
        }
    }
    assert!(
        waited > 0,
        "no mount had to wait for the daemon before it: the cycle was not exercised"
    );
}

/// A holder whose mount is live is refused at once (no wait), naming it; a holder whose
/// mount is gone but that never lets go (stopped here) is waited for, boundedly, and
/// then named.
#[test]
fn a_live_holder_is_refused_and_a_stuck_one_only_for_a_while() {
    let m = Mount::new();
    let pid = daemon_pid(&m.store, &m.mnt);
    let other = m.dir.path().join("other");
    fs::create_dir(&other).unwrap();
    let out = decofs(&["mount", s(&m.store), s(&other)]);
    assert!(!out.status.success(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("store_locked"), "{err}");
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    assert!(
        !err.contains("waiting"),
        "a live holder is not waited for: {err}"
    );
    assert!(!is_mounted(&other));

    // Stopped, the daemon cannot exit after its mount is gone. The kernel's unmount
    // (umount(8) itself would stat the mount and wait for the stopped daemon).
    let mut procs = Procs::default();
    procs.mounts.push(other.clone());
    procs.stop(pid);
    let c = std::ffi::CString::new(s(&m.mnt)).unwrap();
    assert_eq!(unsafe { libc::umount2(c.as_ptr(), 0) }, 0);
    assert!(!is_mounted(&m.mnt));
    let out = decofs(&["mount", s(&m.store), s(&other)]);
    procs.cont(pid);
    assert!(!out.status.success(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("waiting for pid {pid}, whose mount is gone")),
        "{err}"
    );
    assert!(
        err.contains("store_locked") && err.contains("its mount is gone"),
        "{err}"
    );
    assert!(!is_mounted(&other));
    wait_until(
        "the daemon exits once continued",
        Duration::from_secs(60),
        || process_gone(pid),
    );
    m.mount();
}

/// `decofs umount` racing a new mount of the same store: the old daemon exits, a new
/// mount takes the store at once, and only then does `decofs umount` look again. It
/// returns (it used to wait 15 minutes for the lock and then name the old pid) and names
/// the new holder. The race is made certain by stopping processes, not by timing.
#[test]
fn decofs_umount_racing_a_new_mount_names_the_new_holder() {
    let m = Mount::new();
    fs::write(m.path("kept"), b"before the race").unwrap();
    let old = daemon_pid(&m.store, &m.mnt);
    let mnt2 = m.dir.path().join("mnt2");
    fs::create_dir(&mnt2).unwrap();
    let mut procs = Procs::default();
    procs.mounts.push(mnt2.clone());
    // The old daemon stopped: `decofs umount` detaches the mount and then waits for it.
    procs.stop(old);
    let umount = Command::new(decofs_bin())
        .args(["umount", s(&m.mnt)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let upid = umount.id() as i32;
    procs.children.push(umount);
    wait_until(
        "decofs umount detaches the mount",
        Duration::from_secs(60),
        || !is_mounted(&m.mnt),
    );
    // Hold `decofs umount` still, let the old daemon finish, and mount the store anew.
    procs.stop(upid);
    procs.cont(old);
    wait_until("the old daemon exits", Duration::from_secs(60), || {
        process_gone(old)
    });
    let out = decofs(&["mount", s(&m.store), s(&mnt2)]);
    assert!(out.status.success(), "new mount: {}", show(&out));
    let new = daemon_pid(&m.store, &mnt2);
    procs.cont(upid);
    // Bounded: the bug waited 15 minutes.
    let out = procs
        .wait_child(0, Duration::from_secs(120))
        .expect("decofs umount still waits for a store another mount holds");
    assert!(out.status.success(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("held by pid {new}")),
        "the new holder is not named: {err}"
    );
    assert!(!err.contains(&format!("pid {old}")), "{err}");
    assert_eq!(fs::read(mnt2.join("kept")).unwrap(), b"before the race");
    // The old daemon's pid file is gone with it.
    assert!(!m.store.join(format!("sessions/mount.{old}")).exists());
}

fn mount8(args: &[&str]) -> Output {
    Command::new("mount").args(args).output().unwrap()
}

fn read_only_of(mnt: &Path) -> bool {
    let out = decofs(&["--json", "status", s(mnt)]);
    assert!(out.status.success(), "{}", show(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["read_only"].as_bool().unwrap()
}

/// `mount -o remount,ro MNT` turns the mount read-only: refused while a file is open for
/// writing (as on ext4), then every write fails with EROFS, committed data stays and
/// reads work; `remount,rw` makes writes work again. Through mount(8) with the type of
/// the live mount (mount.fuse.decofs), with `-t decofs` (mount.decofs), and as fuse3's
/// mount.fuse runs it (`decofs STORE MNT -o ...`).
#[test]
fn remount_ro_refuses_writes_and_rw_allows_them_again() {
    install_helper("mount.decofs");
    install_helper("mount.fuse.decofs");
    let m = Mount::new();
    fs::write(m.path("kept"), b"committed before").unwrap();
    fs::create_dir(m.path("dir")).unwrap();
    let mnt = s(&m.mnt);

    // A file open for writing: the kernel refuses, nothing changes.
    let mut open = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("open"))
        .unwrap();
    open.write_all(b"written while open").unwrap();
    let out = mount8(&["-o", "remount,ro", mnt]);
    assert!(
        !out.status.success(),
        "remount ro with a writer: {}",
        show(&out)
    );
    assert!(!read_only_of(&m.mnt));
    drop(open);

    let ways: [(&str, Vec<String>, Vec<String>); 3] = [
        (
            "mount -o remount,ro MNT",
            vec!["-o".into(), "remount,ro".into(), mnt.into()],
            vec!["-o".into(), "remount,rw".into(), mnt.into()],
        ),
        (
            "mount -t decofs -o remount,ro STORE MNT",
            vec![
                "-t".into(),
                "decofs".into(),
                "-o".into(),
                "remount,ro".into(),
                s(&m.store).into(),
                mnt.into(),
            ],
            vec![
                "-t".into(),
                "decofs".into(),
                "-o".into(),
                "remount,rw".into(),
                s(&m.store).into(),
                mnt.into(),
            ],
        ),
        (
            "decofs STORE MNT -o ... (mount.fuse)",
            vec![
                s(&m.store).into(),
                mnt.into(),
                "-o".into(),
                "ro,nosuid,nodev,relatime,remount,user_id=0,group_id=0,default_permissions".into(),
            ],
            vec![
                s(&m.store).into(),
                mnt.into(),
                "-o".into(),
                "rw,nosuid,nodev,relatime,remount,user_id=0,group_id=0,default_permissions".into(),
            ],
        ),
    ];
    for (round, (how, ro, rw)) in ways.iter().enumerate() {
        let run = |args: &Vec<String>| {
            if round == 2 {
                Command::new(decofs_bin()).args(args).output().unwrap()
            } else {
                Command::new("mount").args(args).output().unwrap()
            }
        };
        let out = run(ro);
        assert!(out.status.success(), "{how}: {}", show(&out));
        assert!(read_only_of(&m.mnt), "{how}: status says read-write");
        assert_eq!(
            errno_of(fs::write(m.path("kept"), b"x")),
            libc::EROFS,
            "{how}"
        );
        assert_eq!(
            errno_of(fs::write(m.path("new"), b"x")),
            libc::EROFS,
            "{how}"
        );
        assert_eq!(errno_of(fs::create_dir(m.path("d2"))), libc::EROFS, "{how}");
        assert_eq!(
            errno_of(fs::remove_file(m.path("kept"))),
            libc::EROFS,
            "{how}"
        );
        assert_eq!(
            errno_of(fs::remove_dir(m.path("dir"))),
            libc::EROFS,
            "{how}"
        );
        assert_eq!(fs::read(m.path("kept")).unwrap(), b"committed before");
        assert_eq!(fs::read(m.path("open")).unwrap(), b"written while open");
        // The store itself refuses changes that do not pass through the kernel (the
        // control socket), not only the kernel's read-only mount.
        let out = Command::new(decofs_bin())
            .args(["trash", "purge", mnt, "--all"])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{how}: purge while read-only: {}",
            show(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("read_only"),
            "{how}: {}",
            show(&out)
        );
        // The kernel's flags: read-only, the others kept.
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(mnt))
            .unwrap();
        assert!(
            line.split(' ')
                .nth(5)
                .unwrap()
                .starts_with("ro,nosuid,nodev"),
            "{how}: {line}"
        );

        let out = run(rw);
        assert!(out.status.success(), "{how} (rw): {}", show(&out));
        assert!(!read_only_of(&m.mnt));
        let name = format!("after-rw-{round}");
        fs::write(m.path(&name), b"writable again").unwrap();
        assert_eq!(fs::read(m.path(&name)).unwrap(), b"writable again");
    }
    m.remount();
    assert_eq!(fs::read(m.path("kept")).unwrap(), b"committed before");
    assert_eq!(fs::read(m.path("after-rw-2")).unwrap(), b"writable again");
    assert!(!m.path("new").exists());
}

/// A `-o ro` mount holds no writer lock: `remount,rw` of it is refused (code read_only)
/// and it stays read-only; `remount,ro` of it is accepted.
#[test]
fn remount_rw_of_a_read_only_mount_is_refused() {
    install_helper("mount.fuse.decofs");
    let m = Mount::with_opts("allow_other,ro");
    let out = mount8(&["-o", "remount,ro", s(&m.mnt)]);
    assert!(out.status.success(), "{}", show(&out));
    let out = decofs(&["mount", s(&m.store), s(&m.mnt), "-o", "remount,rw"]);
    assert!(!out.status.success(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[code: read_only]"), "{err}");
    assert_eq!(errno_of(fs::write(m.path("x"), b"x")), libc::EROFS);
    assert!(read_only_of(&m.mnt));
    let out = decofs(&["mount", s(&m.store), s(&m.mnt), "-o", "remount,frobnicate"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid_option"),
        "{}",
        show(&out)
    );
}

/// `decofs umount --lazy` with a file still open detaches at once and returns (saying
/// the daemon goes on serving the open file), instead of waiting for the daemon; the
/// daemon exits once the file is closed.
#[test]
fn lazy_umount_with_a_file_open_returns_and_the_daemon_exits_at_the_close() {
    let m = Mount::new();
    fs::write(m.path("held"), b"open while detached").unwrap();
    let pid = daemon_pid(&m.store, &m.mnt);
    let held = fs::File::open(m.path("held")).unwrap();
    let out = decofs(&["umount", "--lazy", s(&m.mnt)]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(!is_mounted(&m.mnt), "still mounted after a lazy umount");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("detached"),
        "{}",
        show(&out)
    );
    // The open file still reads through the detached mount.
    let mut back = String::new();
    std::io::Read::read_to_string(&mut &held, &mut back).unwrap();
    assert_eq!(back, "open while detached");
    drop(held);
    wait_until(
        "the daemon to exit after the last close",
        Duration::from_secs(60),
        || process_gone(pid),
    );
}
