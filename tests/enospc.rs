//! A store on a small, size-limited filesystem: what a full disk does to decofs.
//!
//! Each test makes an ext4 image (4 KiB blocks, no root reserve), mounts it with
//! `mount -o loop`, puts a store on it and mounts decofs on top. If loop devices are
//! unavailable, a size-limited tmpfs (which has user xattrs since Linux 6.6) is used
//! instead and the test says so. Every error a full disk causes must reach the caller
//! as ENOSPC (from write(2), fsync(2) or close(2)) — never EIO, a hang or a dead daemon;
//! every file completed before the failure must stay intact; deleting and purging must
//! give the space back; and the store must pass fsck afterwards.
//!
//! Both mounts are undone by a guard in every outcome (decofs first, then the image).
//! A watchdog aborts the FUSE connection if a call hangs, so a hang fails the test with
//! ENOTCONN instead of blocking it forever.
// Tests call libc directly on descriptors and buffers they own; the SAFETY comments
// the lint asks for are kept for the daemon's code.
#![allow(clippy::undocumented_unsafe_blocks)]

mod common;

use common::{dj, problems, wait_for_no_sessions};

use std::collections::BTreeSet;
use std::ffi::{CString, OsString};
use std::fs;
use std::io;
use std::os::fd::IntoRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const KIB: usize = 1024;
const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------
// helpers

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn ename(e: i32) -> String {
    format!("{} ({e})", io::Error::from_raw_os_error(e))
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// Deterministic, unique content (blobs are content addressed: equal files would share).
fn content(tag: u64, len: usize) -> Vec<u8> {
    let mut r = fastrand::Rng::with_seed(0xe0_5bc0_0000 ^ tag.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut d = vec![0u8; len];
    r.fill(&mut d);
    d
}

/// Every error one file write met, in order: (stage, errno).
type Errors = Vec<(&'static str, i32)>;

/// create + write + fsync + close with raw syscalls, so the errno of each step (close
/// included, which std ignores) is seen. Stops writing at the first error but still
/// closes, recording close's errno too.
fn write_file(p: &Path, data: &[u8]) -> Errors {
    write_with(p, data, libc::O_CREAT | libc::O_EXCL, true)
}

/// open(`flags`) + write (+ fsync) + close, each step's errno recorded as `write_file`.
fn write_with(p: &Path, data: &[u8], flags: i32, fsync: bool) -> Errors {
    let c = cpath(p);
    let mut errs = Errors::new();
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC | flags, 0o644) };
    if fd < 0 {
        errs.push(("open", last_errno()));
        return errs;
    }
    let mut done = 0;
    while done < data.len() {
        let n = (data.len() - done).min(128 * KIB);
        let r = unsafe { libc::write(fd, data[done..].as_ptr() as *const _, n) };
        if r < 0 {
            errs.push(("write", last_errno()));
            break;
        }
        if r == 0 {
            errs.push(("write returned 0", 0));
            break;
        }
        done += r as usize;
    }
    if fsync && errs.is_empty() && unsafe { libc::fsync(fd) } != 0 {
        errs.push(("fsync", last_errno()));
    }
    if unsafe { libc::close(fd) } != 0 {
        errs.push(("close", last_errno()));
    }
    errs
}

/// Bytes and inodes available on the filesystem holding `p`.
fn free_space(p: &Path) -> (u64, u64) {
    let c = cpath(p);
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "statvfs");
    (st.f_bavail as u64 * st.f_frsize as u64, st.f_favail as u64)
}

fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / MIB as f64)
}

/// fsck of the unmounted store: clean (exit 0), or its only problems are orphaned nodes
/// (a create that lost its race against ENOSPC), which `--repair` collects (exit 1), after
/// which it is clean. Returns the number of orphans repaired.
fn fsck_clean_or_orphans(store: &Path) -> usize {
    let s = store.to_str().unwrap();
    let (c, v, e) = dj(&["fsck", s, "--grace", "0"]);
    assert!(v.is_object(), "fsck printed no report (exit {c}): {e}");
    if c == 0 {
        return 0;
    }
    let ps = problems(&v);
    let allowed = ["orphan", "unbound_node"];
    assert!(
        c == 4 && ps.iter().all(|p| allowed.contains(&p.0.as_str())),
        "fsck after ENOSPC found more than orphans (exit {c}): {v:#}"
    );
    let (c, v, e) = dj(&["fsck", s, "--repair", "--grace", "0"]);
    assert_eq!(c, 1, "fsck --repair of orphans: {v:#} {e}");
    let (c, v, e) = dj(&["fsck", s, "--grace", "0"]);
    assert_eq!(c, 0, "clean after repair: {v:#} {e}");
    ps.len()
}

fn daemon_alive(store: &Path, mnt: &Path) -> i32 {
    let pid = common::daemon_pid(store, mnt);
    // SAFETY: signal 0 only checks that the process exists.
    assert_eq!(unsafe { libc::kill(pid, 0) }, 0, "daemon {pid} is gone");
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit(')').next().unwrap_or("").trim_start();
    assert!(
        !state.starts_with(['Z', 'X']),
        "daemon {pid} is a zombie: {stat}"
    );
    pid
}

/// The errno a result must have if it failed: ENOSPC. Ok is allowed (returns true).
#[track_caller]
fn ok_or_enospc<T>(r: io::Result<T>, what: &str, faults: &mut Vec<String>) -> bool {
    match r {
        Ok(_) => true,
        Err(e) => {
            let n = errno_of(&e);
            assert_eq!(
                n,
                libc::ENOSPC,
                "{what} on a full store: expected ENOSPC, got {}",
                ename(n)
            );
            faults.push(what.to_string());
            false
        }
    }
}

/// Aborts the FUSE connection of `mnt` if not disarmed within `secs`: a hung call then
/// returns ENOTCONN and the test fails instead of hanging. Kills nothing.
struct Watchdog {
    done: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn new(mnt: &Path, secs: u64, what: &'static str) -> Watchdog {
        let dev = fs::metadata(mnt).unwrap().dev();
        let minor = libc::minor(dev);
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs))
            {
                eprintln!("WATCHDOG: {what} hung for {secs}s; aborting FUSE connection {minor}");
                let _ = fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
            }
        });
        Watchdog {
            done: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// the small filesystem

/// A small filesystem (a loop-mounted ext4 image, or a size-limited tmpfs where loop
/// devices are unavailable) holding a decofs store, and the decofs mountpoint. Dropping
/// it unmounts decofs, then the small filesystem, whatever happened.
struct SmallFs {
    dir: tempfile::TempDir,
    root: PathBuf,
    store: PathBuf,
    mnt: PathBuf,
    kind: String,
}

impl SmallFs {
    /// `size` bytes; `mkfs` extra arguments for mkfs.ext4 (`tmpfs` options for the
    /// fallback: `nr_inodes`).
    fn new(size: u64, mkfs: &[&str], tmpfs_inodes: Option<u64>) -> SmallFs {
        let dir = tempfile::Builder::new()
            .prefix("decofs-enospc")
            .tempdir_in(common::test_root())
            .unwrap();
        let img = dir.path().join("fs.img");
        let root = dir.path().join("fs");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&mnt).unwrap();
        common::mkfs_ext4(&img, size, mkfs);
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&root)
            .output()
            .expect("run mount");
        let kind = if out.status.success() {
            format!(
                "ext4 image {} MiB via mount -o loop ({})",
                size / MIB,
                mkfs.join(" ")
            )
        } else {
            eprintln!(
                "mount -o loop failed ({}); loop devices are unavailable here, using a size-limited tmpfs",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            let mut o = format!("size={}", size);
            if let Some(n) = tmpfs_inodes {
                o.push_str(&format!(",nr_inodes={n}"));
            }
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &o, "decofs-enospc"])
                .arg(&root)
                .output()
                .expect("run mount");
            assert!(
                out.status.success(),
                "neither a loop device nor tmpfs could be mounted: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            format!("tmpfs {o}")
        };
        let s = SmallFs {
            store: root.join("store"),
            dir,
            root,
            mnt,
            kind,
        };
        // From here on the guard undoes the mount if anything panics.
        let r = s.root.display().to_string();
        common::sh(&format!(
            "setfattr -n user.x -v 1 '{r}' && getfattr -n user.x '{r}' >/dev/null && setfattr -x user.x '{r}'"
        ));
        let out = common::decofs(&["init", s.store.to_str().unwrap(), "--trash-min-age", "0"]);
        assert!(
            out.status.success(),
            "init on {}: {}",
            s.kind,
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("small filesystem: {}", s.kind);
        s
    }

    fn mount(&self) {
        let out = common::decofs(&[
            "mount",
            self.store.to_str().unwrap(),
            self.mnt.to_str().unwrap(),
            "-o",
            "allow_other",
        ]);
        assert!(
            out.status.success(),
            "mount: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            common::is_mounted(&self.mnt),
            "mount returned before it was live"
        );
    }

    fn unmount(&self) {
        common::unmount_path(&self.mnt);
        assert!(!common::is_mounted(&self.mnt), "decofs still mounted");
        // `decofs umount` returns once the daemon let go of the store; wait for the lock
        // too, so the next mount or fsck never races the exiting daemon.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let lock = match fs::File::open(self.store.join("lock")) {
                Ok(f) => f,
                Err(_) => return,
            };
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a descriptor we own; released when `lock` closes.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the store lock was not released after umount");
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        common::unmount_path(&self.mnt);
        common::umount_fs(&self.root);
        let _ = &self.dir;
    }
}

// ---------------------------------------------------------------------------------------
// data: fill the disk with file content

/// Writes files until the disk is full, in rounds of shrinking sizes so the disk ends up
/// really full (256 KiB chunks, then 16 KiB, then 2 KiB — above the inline limit — then
/// empty files, whose records need metadata blocks). Every failure must be ENOSPC; every
/// file completed before must read back intact, before and after deleting, purging,
/// gc and remount; space must come back; fsck must pass.
#[test]
fn full_disk_gives_enospc_and_loses_nothing() {
    let t0 = Instant::now();
    let s = SmallFs::new(64 * MIB, &["-b", "4096", "-I", "256", "-m", "0"], None);
    s.mount();
    let (free0, _) = free_space(&s.root);
    eprintln!("free on the small fs after init+mount: {}", mib(free0));

    let files = s.p("files");
    fs::create_dir(&files).unwrap();
    // (name, tag, len) of every file that was written, fsynced and closed without error.
    let mut complete: Vec<(String, u64, usize)> = Vec::new();
    // Files whose write failed: their names exist, their content is not promised.
    let mut failed: Vec<String> = Vec::new();
    let mut faults: Vec<String> = Vec::new();
    let mut tag = 0u64;
    let watchdog = Watchdog::new(&s.mnt, 120, "filling the disk");
    for (round, size) in [256 * KIB, 16 * KIB, 2 * KIB].into_iter().enumerate() {
        // The file that met ENOSPC: its create (when the last free block went to a
        // directory, the log or the index) or its content.
        let mut hit: Option<String> = None;
        for _ in 0..4000 {
            tag += 1;
            let name = format!("r{round}-{tag:05}");
            let data = content(tag, size);
            let errs = write_file(&files.join(&name), &data);
            if errs.is_empty() {
                complete.push((name, tag, size));
                continue;
            }
            for (stage, e) in &errs {
                assert_eq!(
                    *e,
                    libc::ENOSPC,
                    "writing {name} ({size} bytes) on a full disk: {stage} gave {}, expected ENOSPC (all errors: {errs:?})",
                    ename(*e)
                );
                faults.push(format!("{name}: {stage}"));
            }
            // A create refused with ENOSPC leaves no name; a file whose content failed
            // keeps its name (its content is not promised).
            let exists = files.join(&name).symlink_metadata().is_ok();
            if errs[0].0.starts_with("open") {
                assert!(
                    !exists,
                    "{name}: create failed with ENOSPC but the name exists"
                );
            } else {
                assert!(
                    exists,
                    "{name}: created, then its write failed, and the name vanished"
                );
                failed.push(name.clone());
            }
            hit = Some(name);
            break;
        }
        let Some(at) = hit else {
            panic!("round {round}: 4000 files of {size} bytes never filled a 64 MiB disk");
        };
        eprintln!(
            "round {round} ({size} B files): ENOSPC after {} complete files so far, at {at}; fs free {}",
            complete.len(),
            mib(free_space(&s.root).0)
        );
    }
    // Empty files: no content, but each record and entry needs metadata.
    let empties = s.p("empties");
    let mut empty_ok = 0usize;
    match fs::create_dir(&empties) {
        Ok(()) => {
            for i in 0..4000 {
                match fs::File::create(empties.join(format!("e{i:05}"))) {
                    Ok(_) => empty_ok += 1,
                    Err(e) => {
                        ok_or_enospc::<()>(Err(e), "create empty file", &mut faults);
                        break;
                    }
                }
            }
        }
        Err(e) => {
            ok_or_enospc::<()>(Err(e), "mkdir empties", &mut faults);
        }
    }
    eprintln!("{empty_ok} empty files created before ENOSPC");

    // More calls on the full store: each works or says ENOSPC.
    ok_or_enospc(fs::create_dir(s.p("more-dir")), "mkdir", &mut faults);
    ok_or_enospc(
        std::os::unix::fs::symlink("target", s.p("more-link")),
        "symlink",
        &mut faults,
    );
    let c = cpath(&files.join(&complete[0].0));
    let n = CString::new("user.full").unwrap();
    let v = content(999_999, 3000);
    let r = unsafe { libc::setxattr(c.as_ptr(), n.as_ptr(), v.as_ptr() as *const _, v.len(), 0) };
    ok_or_enospc(
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        },
        "setxattr 3000 bytes",
        &mut faults,
    );
    tag += 1;
    let errs = write_file(&s.p("one-more"), &content(tag, 1 << 20));
    for (stage, e) in &errs {
        assert_eq!(
            *e,
            libc::ENOSPC,
            "one more 1 MiB file: {stage} gave {}",
            ename(*e)
        );
        faults.push(format!("one-more: {stage}"));
    }
    if errs.is_empty() {
        complete.push(("../one-more".into(), tag, 1 << 20));
    } else if s.p("one-more").symlink_metadata().is_ok() {
        failed.push("../one-more".into());
    }
    drop(watchdog);

    // The daemon lives, the mount answers, every complete file is intact.
    daemon_alive(&s.store, &s.mnt);
    assert!(fs::metadata(&s.mnt).unwrap().is_dir());
    let listed: BTreeSet<OsString> = fs::read_dir(&files)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    for (name, _, _) in complete.iter().filter(|c| !c.0.starts_with("..")) {
        assert!(listed.contains(&OsString::from(name)), "{name} not listed");
    }
    let verify = |what: &str, list: &[(String, u64, usize)]| {
        for (name, tag, len) in list {
            let got =
                fs::read(files.join(name)).unwrap_or_else(|e| panic!("{what}: read {name}: {e}"));
            assert!(
                got.len() == *len && got == content(*tag, *len),
                "{what}: {name} differs (len {} vs {len})",
                got.len()
            );
        }
    };
    verify("on the full disk", &complete);
    let complete_bytes: u64 = complete.iter().map(|c| c.2 as u64).sum();
    let (free_full, _) = free_space(&s.root);
    eprintln!(
        "full: {} complete files ({}), {} failed writes, {} ENOSPC faults, fs free {}",
        complete.len(),
        mib(complete_bytes),
        failed.len(),
        faults.len(),
        mib(free_full)
    );

    for name in &failed {
        let p = files.join(name);
        let c = cpath(&p);
        let n = CString::new("user.decofs.status").unwrap();
        let mut buf = [0u8; 64];
        let r = unsafe {
            libc::getxattr(
                c.as_ptr(),
                n.as_ptr(),
                buf.as_mut_ptr() as *mut _,
                buf.len(),
            )
        };
        eprintln!(
            "failed file {name}: size {:?}, status {}",
            fs::metadata(&p).map(|m| m.len()).ok(),
            if r >= 0 {
                String::from_utf8_lossy(&buf[..r as usize]).into_owned()
            } else {
                ename(last_errno())
            }
        );
    }
    // Delete the failed files and two thirds of the complete ones — on the full disk,
    // where ext4 never refuses an unlink.
    let watchdog = Watchdog::new(&s.mnt, 120, "deleting on the full disk");
    for name in &failed {
        if let Err(e) = fs::remove_file(files.join(name)) {
            panic!(
                "unlink of failed file {name} on the full disk: {}",
                ename(errno_of(&e))
            );
        }
    }
    let (gone, kept): (Vec<_>, Vec<_>) = complete
        .iter()
        .cloned()
        .enumerate()
        .partition(|(i, _)| i % 3 != 0);
    let gone: Vec<_> = gone.into_iter().map(|x| x.1).collect();
    let kept: Vec<_> = kept.into_iter().map(|x| x.1).collect();
    for (k, (name, _, _)) in gone.iter().enumerate() {
        if let Err(e) = fs::remove_file(files.join(name)) {
            // stat may still answer from the kernel's dentry cache; readdir asks decofs.
            let listed = fs::read_dir(&files)
                .map(|d| d.flatten().any(|x| x.file_name() == OsString::from(name)))
                .unwrap_or(false);
            panic!(
                "unlink #{k} ({name}) on the full disk: {}, expected success as on ext4 \
                 (still listed by readdir: {listed}; trash entries: {})",
                ename(errno_of(&e)),
                fs::read_dir(s.store.join("trash"))
                    .map(|d| d.count())
                    .unwrap_or(0)
            );
        }
    }
    if empties.exists() {
        fs::remove_dir_all(&empties).expect("rm -rf of the empty files on the full disk");
    }
    drop(watchdog);
    let gone_bytes: u64 = gone.iter().map(|c| c.2 as u64).sum();

    let (c, v, e) = dj(&["trash", "purge", s.mnt.to_str().unwrap(), "--all"]);
    assert_eq!(c, 0, "trash purge: {v} {e}");
    eprintln!("trash purge: {v}");
    let (free_purged, _) = free_space(&s.root);
    eprintln!(
        "after deleting {} files ({}) and purging: fs free {} (was {} when full)",
        gone.len() + failed.len(),
        mib(gone_bytes),
        mib(free_purged),
        mib(free_full)
    );
    assert!(
        free_purged >= free_full + gone_bytes * 9 / 10,
        "purging the trash freed only {} of the {} deleted",
        mib(free_purged.saturating_sub(free_full)),
        mib(gone_bytes)
    );
    // No process has any file open now: the trash purge must not keep anything as
    // "open" (a file whose last close failed must not stay pinned by its session).
    assert_eq!(
        v["skipped_open"].as_u64(),
        Some(0),
        "trash purge kept {} node(s) as open though no file is open (files whose close(2) failed with ENOSPC: {failed:?})",
        v["skipped_open"]
    );
    verify("after purge", &kept);

    // New writes succeed: half of what was freed, in 1 MiB files.
    let mut fresh: Vec<(String, u64, usize)> = Vec::new();
    let n_new = (gone_bytes / 2 / MIB).max(1);
    for i in 0..n_new {
        tag += 1;
        let name = format!("new-{i:03}");
        let data = content(tag, MIB as usize);
        let errs = write_file(&files.join(&name), &data);
        assert!(
            errs.is_empty(),
            "new write {name} after freeing space: {errs:?}"
        );
        fresh.push((name, tag, MIB as usize));
    }
    verify("new files", &fresh);
    daemon_alive(&s.store, &s.mnt);

    // Unmount; the staging area holds no leftover partial blobs; gc; fsck.
    s.unmount();
    let leftovers: Vec<_> = fs::read_dir(s.store.join("sessions"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "staging files left behind: {leftovers:?}"
    );
    let (c, v, e) = dj(&["gc", s.store.to_str().unwrap(), "--grace", "0"]);
    assert_eq!(c, 0, "gc: {v} {e}");
    eprintln!("gc: {v}");
    let orphans = fsck_clean_or_orphans(&s.store);

    s.mount();
    verify("after remount", &kept);
    verify("new files after remount", &fresh);
    // Whatever the failed writes left is in the trash at most; purge it and write again.
    let (c, v, e) = dj(&["trash", "purge", s.mnt.to_str().unwrap(), "--all"]);
    assert_eq!(c, 0, "second purge: {v} {e}");
    tag += 1;
    let errs = write_file(&files.join("after-remount"), &content(tag, 4 << 20));
    assert!(errs.is_empty(), "write after remount: {errs:?}");
    s.unmount();
    let orphans2 = fsck_clean_or_orphans(&s.store);
    eprintln!(
        "SUMMARY data: {}; {} ENOSPC faults ({:?}...), {} complete files ({}) all intact, 0 bytes lost; \
         freed {} by purge; orphans repaired {orphans}+{orphans2}; {:.1}s",
        s.kind,
        faults.len(),
        &faults[..faults.len().min(4)],
        complete.len(),
        mib(complete_bytes),
        mib(free_purged.saturating_sub(free_full)),
        t0.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// metadata: run out of inodes

/// An ext4 with ~2,000 inodes: creating empty files runs out of inodes long before
/// blocks. create, mkdir, symlink, mknod and link then fail with ENOSPC (never EIO);
/// renames and unlinks keep working as on ext4; deleting and purging lets creates work
/// again; every name created survives remount; fsck passes.
#[test]
fn out_of_inodes_gives_enospc() {
    let t0 = Instant::now();
    let s = SmallFs::new(
        64 * MIB,
        &["-b", "4096", "-I", "256", "-m", "0", "-N", "2000"],
        Some(2000),
    );
    s.mount();
    let (_, inodes0) = free_space(&s.root);
    eprintln!("free inodes after init+mount: {inodes0}");
    let d = s.p("d");
    fs::create_dir(&d).unwrap();
    let mut names: Vec<String> = Vec::new();
    let mut faults: Vec<String> = Vec::new();
    let watchdog = Watchdog::new(&s.mnt, 120, "creating files until out of inodes");
    let mut hit = None;
    for i in 0..(inodes0 as usize + 100) {
        let name = format!("e{i:05}");
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(d.join(&name))
        {
            Ok(_) => names.push(name),
            Err(e) => {
                hit = Some((name, errno_of(&e)));
                break;
            }
        }
    }
    let (name, e) =
        hit.unwrap_or_else(|| panic!("{} creates never ran out of inodes", inodes0 + 100));
    assert_eq!(
        e,
        libc::ENOSPC,
        "create {name} with no inodes left: expected ENOSPC, got {}",
        ename(e)
    );
    faults.push("create".into());
    assert!(
        fs::symlink_metadata(d.join(&name)).is_err(),
        "the create that failed left its name {name} behind"
    );
    let (_, inodes_full) = free_space(&s.root);
    eprintln!(
        "ENOSPC after {} empty files; {inodes_full} inodes free on the backing fs",
        names.len()
    );

    // Everything that needs a new node or a new entry: ENOSPC.
    let e = fs::create_dir(d.join("newdir"))
        .map(|_| 0)
        .unwrap_or_else(|e| errno_of(&e));
    assert_eq!(e, libc::ENOSPC, "mkdir with no inodes: {}", ename(e));
    faults.push("mkdir".into());
    let e = std::os::unix::fs::symlink("t", d.join("newlink"))
        .map(|_| 0)
        .unwrap_or_else(|e| errno_of(&e));
    assert_eq!(e, libc::ENOSPC, "symlink with no inodes: {}", ename(e));
    faults.push("symlink".into());
    let c = cpath(&d.join("newfifo"));
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFIFO | 0o644, 0) };
    let e = if r == 0 { 0 } else { last_errno() };
    assert_eq!(e, libc::ENOSPC, "mknod fifo with no inodes: {}", ename(e));
    faults.push("mknod".into());
    // ext4 needs no inode for a hard link; decofs needs one for the entry.
    match fs::hard_link(d.join(&names[0]), d.join("newhardlink")) {
        Ok(()) => names.push("newhardlink".into()),
        Err(e) => {
            assert_eq!(errno_of(&e), libc::ENOSPC, "link with no inodes: {e}");
            faults.push("link".into());
        }
    }
    // Content beyond the inline limit needs a blob (an inode, taken from the files made
    // ahead while there were inodes); small content does not. Write 10 KB files until a
    // close fails. A second handle keeps the file open: while it does, the session keeps
    // the writes and a reader sees them (the kernel caches that size and those pages).
    // When its close fails too, the writes are dropped: the file reads back as it was,
    // and stat agrees (the kernel was told to forget what it cached of them).
    let mut dropped = None;
    for (k, n) in names[10..210].iter().enumerate() {
        let p = d.join(n);
        let data = content(100 + k as u64, 10_000);
        let other = fs::OpenOptions::new().write(true).open(&p).unwrap();
        let errs = write_with(&p, &data, libc::O_TRUNC, false);
        let held = fs::read(&p).unwrap();
        let held_len = fs::metadata(&p).unwrap().len();
        assert!(
            held == data && held_len == data.len() as u64,
            "{n}: while a handle is open, a reader sees the writes ({errs:?}): read {} \
             bytes, stat {held_len}",
            held.len()
        );
        // SAFETY: closing the descriptor this loop opened, once.
        let last = unsafe { libc::close(other.into_raw_fd()) };
        let last = if last == 0 { 0 } else { last_errno() };
        // close(2) returned at the flush; the release that drops what a failed flush
        // kept comes after it.
        wait_for_no_sessions(&s.mnt);
        let got = fs::read(&p).unwrap();
        let len = fs::metadata(&p).unwrap().len();
        assert_eq!(
            len,
            got.len() as u64,
            "{n}: stat and read disagree ({errs:?}, last close {})",
            ename(last)
        );
        if errs.is_empty() && last == 0 {
            assert!(
                got == data,
                "{n}: a 10 KB write that closed fine reads back wrong"
            );
            continue;
        }
        assert!(
            errs.iter().all(|e| e.1 == libc::ENOSPC) && last == libc::ENOSPC,
            "10 KB write with no inodes: {errs:?}, last close {}",
            ename(last)
        );
        assert!(
            got.is_empty(),
            "{n} after a 10 KB write that failed ({errs:?}): {} bytes, not the empty file",
            got.len()
        );
        dropped = Some(k);
        break;
    }
    let k = dropped.expect("200 10 KB files written with no inodes left");
    faults.push(format!("10 KB write (after {k})"));
    fs::write(d.join(&names[2]), b"small").expect("inline write with no inodes");
    assert_eq!(fs::read(d.join(&names[2])).unwrap(), b"small");
    // Renames need no new inode (a rename over a file trades the displaced entry's inode
    // for its trash link) and work as on ext4.
    fs::rename(d.join(&names[3]), d.join("renamed")).expect("rename with no inodes left");
    names[3] = "renamed".into();
    fs::rename(d.join(&names[4]), d.join(&names[5]))
        .expect("rename over a file with no inodes left");
    let over = names.remove(4);
    let _ = over;
    // Unlink of a few files (each trades its entry's inode for a trash link).
    for n in names.drain(names.len() - 5..) {
        fs::remove_file(d.join(&n))
            .unwrap_or_else(|e| panic!("unlink {n} with no inodes left: {e}"));
    }
    drop(watchdog);
    daemon_alive(&s.store, &s.mnt);
    let listed: BTreeSet<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let want: BTreeSet<String> = names.iter().cloned().collect();
    assert_eq!(listed, want, "directory listing on the inode-full store");

    // Delete half, purge, and creating works again.
    let half = names.len() / 2;
    for n in names.drain(..half) {
        fs::remove_file(d.join(&n)).unwrap();
    }
    let (c, v, e) = dj(&["trash", "purge", s.mnt.to_str().unwrap(), "--all"]);
    assert_eq!(c, 0, "trash purge: {v} {e}");
    let (_, inodes_purged) = free_space(&s.root);
    eprintln!("after deleting {half} and purging: {inodes_purged} inodes free");
    assert!(
        inodes_purged >= inodes_full + half as u64,
        "purging {half} nodes freed only {} inodes",
        inodes_purged.saturating_sub(inodes_full)
    );
    for i in 0..100 {
        let n = format!("again{i:03}");
        fs::write(d.join(&n), format!("again {i}"))
            .unwrap_or_else(|e| panic!("create {n} after purge: {e}"));
        names.push(n);
    }
    fs::create_dir(d.join("newdir")).expect("mkdir after purge");
    names.push("newdir".into());

    s.unmount();
    let orphans = fsck_clean_or_orphans(&s.store);
    s.mount();
    let listed: BTreeSet<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let want: BTreeSet<String> = names.iter().cloned().collect();
    assert_eq!(listed, want, "directory listing after remount");
    for i in 0..100 {
        assert_eq!(
            fs::read(d.join(format!("again{i:03}"))).unwrap(),
            format!("again {i}").as_bytes()
        );
    }
    s.unmount();
    assert_eq!(
        fsck_clean_or_orphans(&s.store),
        0,
        "fsck after the clean remount"
    );
    eprintln!(
        "SUMMARY inodes: {}; {} ENOSPC faults ({faults:?}); {} names intact; orphans repaired {orphans}; {:.1}s",
        s.kind,
        faults.len(),
        names.len(),
        t0.elapsed().as_secs_f64()
    );
}
