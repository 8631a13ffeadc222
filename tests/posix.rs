//! POSIX behaviour of a decofs mount, checked with real syscalls (std::fs and libc).
//!
//! Every test mounts a fresh store (`common::Mount`), so tests are independent and may run
//! in parallel. Where a result could differ between local filesystems, the expectation is
//! what ext4 gives on the same machine. Runs as root (chown, mknod of devices, setuid in a
//! forked child for permission checks).
// Tests call libc directly on descriptors and buffers they own; the SAFETY comments
// the lint asks for are kept for the daemon's code.
#![allow(clippy::undocumented_unsafe_blocks)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{assert_bytes_eq, pattern, Mount};

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 4 * MIB;

// ---------------------------------------------------------------------------------------
// helpers

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// 0 on success, errno otherwise, for a libc call returning -1 on failure.
fn rc(ret: libc::c_int) -> i32 {
    if ret == -1 {
        last_errno()
    } else {
        0
    }
}

/// The errno of a result that must be an error.
#[track_caller]
fn errno_of<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("error without errno: {e}")),
    }
}

fn ename(e: i32) -> String {
    format!("{} ({e})", io::Error::from_raw_os_error(e))
}

#[track_caller]
fn assert_errno<T: std::fmt::Debug>(r: io::Result<T>, want: i32, what: &str) {
    let got = errno_of(r);
    assert_eq!(
        got,
        want,
        "{what}: expected {}, got {}",
        ename(want),
        ename(got)
    );
}

fn pread_exact(f: &File, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = f.read_at(&mut buf[done..], off + done as u64).unwrap();
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    buf
}

fn names_in(dir: &Path) -> BTreeSet<OsString> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect()
}

fn getxattr(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let c = cpath(p);
    let n = CString::new(name).unwrap();
    let size = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    if size < 0 {
        return Err(last_errno());
    }
    let mut buf = vec![0u8; size as usize + 1];
    let got = unsafe {
        libc::getxattr(
            c.as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr() as *mut _,
            buf.len(),
        )
    };
    if got < 0 {
        return Err(last_errno());
    }
    buf.truncate(got as usize);
    Ok(buf)
}

fn setxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), i32> {
    let c = cpath(p);
    let n = CString::new(name).unwrap();
    let r = unsafe {
        libc::setxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr() as *const _,
            value.len(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(last_errno())
    }
}

fn removexattr(p: &Path, name: &str) -> Result<(), i32> {
    let c = cpath(p);
    let n = CString::new(name).unwrap();
    let r = unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(last_errno())
    }
}

fn listxattr(p: &Path) -> Vec<String> {
    let c = cpath(p);
    let size = unsafe { libc::listxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    assert!(size >= 0, "listxattr size: {}", ename(last_errno()));
    let mut buf = vec![0u8; size as usize + 1];
    let got = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr() as *mut _, buf.len()) };
    assert!(got >= 0, "listxattr: {}", ename(last_errno()));
    buf.truncate(got as usize);
    buf.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> i32 {
    let (a, b) = (cpath(from), cpath(to));
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == -1 {
        last_errno()
    } else {
        0
    }
}

fn mknod(p: &Path, mode: libc::mode_t, dev: libc::dev_t) -> i32 {
    let c = cpath(p);
    rc(unsafe { libc::mknod(c.as_ptr(), mode, dev) })
}

fn trash_count(store: &Path) -> usize {
    fs::read_dir(store.join("trash"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Bytes allocated on disk under `root` (st_blocks), skipping the top-level names given.
fn disk_usage(root: &Path, skip_top: &[&str]) -> u64 {
    fn walk(p: &Path, total: &mut u64) {
        let md = match fs::symlink_metadata(p) {
            Ok(m) => m,
            Err(_) => return,
        };
        *total += md.blocks() * 512;
        if md.is_dir() {
            if let Ok(rd) = fs::read_dir(p) {
                for e in rd.flatten() {
                    walk(&e.path(), total);
                }
            }
        }
    }
    let mut total = fs::symlink_metadata(root)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0);
    for e in fs::read_dir(root).unwrap().flatten() {
        if skip_top.iter().any(|s| OsStr::new(s) == e.file_name()) {
            continue;
        }
        walk(&e.path(), &mut total);
    }
    total
}

/// Poll the status xattr until it has the wanted value. The kernel sends RELEASE
/// asynchronously after close(2), so a just-closed file may report `pending` briefly.
fn wait_status(p: &Path, want: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = getxattr(p, "user.decofs.status");
        if let Ok(v) = &got {
            if v == want.as_bytes() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "user.decofs.status of {} is {:?}, expected {want:?}",
                p.display(),
                got.map(|v| String::from_utf8_lossy(&v).into_owned())
                    .map_err(ename)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Run `access(2)` as another user in a forked child; returns 0 or the errno.
fn access_as(uid: u32, gid: u32, p: &Path, mode: i32) -> i32 {
    let c = cpath(p);
    as_user(uid, gid, || unsafe {
        if libc::access(c.as_ptr(), mode) == 0 {
            0
        } else {
            (*libc::__errno_location()).min(249)
        }
    })
}

// ---------------------------------------------------------------------------------------
// files: create / read / write / append / unlink

#[test]
fn create_read_write_append_unlink() {
    let m = Mount::new();
    let p = m.path("a.txt");

    fs::write(&p, b"hello world").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"hello world");
    let md = fs::metadata(&p).unwrap();
    assert!(md.is_file());
    assert_eq!(md.len(), 11);

    // Overwrite in the middle through a second open.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"WORLD", 6).unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"hello WORLD");

    // O_APPEND appends at the end, whatever the file position.
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"!!").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(b"?").unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"hello WORLD!!?");

    // Read and write through one O_RDWR handle, with seeks.
    let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let mut buf = [0u8; 5];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    f.write_all(b"_").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut all = Vec::new();
    f.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"hello_WORLD!!?");
    // Reads at and past EOF return 0 bytes.
    let mut b2 = [0u8; 4];
    assert_eq!(f.read_at(&mut b2, 14).unwrap(), 0);
    assert_eq!(f.read_at(&mut b2, 1000).unwrap(), 0);
    // Writing past EOF leaves a zero-filled gap.
    f.write_all_at(b"Z", 20).unwrap();
    drop(f);
    let mut want = b"hello_WORLD!!?".to_vec();
    want.resize(20, 0);
    want.push(b'Z');
    assert_eq!(fs::read(&p).unwrap(), want);

    // O_TRUNC replaces the content.
    fs::write(&p, b"x").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"x");

    // O_EXCL on an existing name.
    assert_errno(
        OpenOptions::new().write(true).create_new(true).open(&p),
        libc::EEXIST,
        "O_CREAT|O_EXCL on existing file",
    );
    // Opening a missing file without O_CREAT.
    assert_errno(File::open(m.path("missing")), libc::ENOENT, "open missing");

    // Mode given at create time (unaffected by a 022 umask).
    let q = m.path("mode640");
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(&q)
        .unwrap();
    assert_eq!(fs::metadata(&q).unwrap().mode() & 0o7777, 0o640);
    assert_eq!(fs::metadata(&q).unwrap().len(), 0);
    assert_eq!(fs::read(&q).unwrap(), b"");

    // Empty file content is empty; unlink removes the name.
    fs::remove_file(&p).unwrap();
    assert_errno(fs::metadata(&p), libc::ENOENT, "stat after unlink");
    assert_errno(fs::remove_file(&p), libc::ENOENT, "unlink twice");
    assert!(!names_in(&m.mnt).contains(OsStr::new("a.txt")));
    assert!(names_in(&m.mnt).contains(OsStr::new("mode640")));

    // Content survives a remount.
    fs::write(m.path("keep"), b"persistent bytes").unwrap();
    m.remount();
    assert_eq!(fs::read(m.path("keep")).unwrap(), b"persistent bytes");
    assert_eq!(fs::metadata(&q).unwrap().mode() & 0o7777, 0o640);
}

#[test]
fn unlinked_file_goes_to_trash() {
    let m = Mount::new();
    let before = trash_count(&m.store);
    fs::write(m.path("victim"), b"data").unwrap();
    fs::remove_file(m.path("victim")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while trash_count(&m.store) == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        trash_count(&m.store),
        before + 1,
        "unlink must move the node to STORE/trash"
    );
}

// ---------------------------------------------------------------------------------------
// truncate

#[test]
fn truncate_shrink_then_grow_reads_zeros() {
    let m = Mount::new();
    let p = m.path("t");
    let data = pattern(1, 0, 100_000);
    fs::write(&p, &data).unwrap();

    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.set_len(50_000).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 50_000);
    assert_bytes_eq(&fs::read(&p).unwrap(), &data[..50_000], "after shrink");
    f.set_len(120_000).unwrap();
    let mut want = data[..50_000].to_vec();
    want.resize(120_000, 0);
    assert_bytes_eq(
        &fs::read(&p).unwrap(),
        &want,
        "shrink then grow must read zeros",
    );
    assert_bytes_eq(
        &pread_exact(&f, 0, 200_000),
        &want,
        "same through the open handle",
    );
    drop(f);

    // truncate(2) by path, to zero and back.
    let c = cpath(&p);
    assert_eq!(rc(unsafe { libc::truncate(c.as_ptr(), 0) }), 0);
    assert_eq!(fs::metadata(&p).unwrap().len(), 0);
    assert_eq!(rc(unsafe { libc::truncate(c.as_ptr(), 10) }), 0);
    assert_eq!(fs::read(&p).unwrap(), vec![0u8; 10]);

    // Across chunk boundaries: 5 MiB of data, cut inside chunk 1, grow to 9 MiB.
    let big = pattern(2, 0, (5 * MIB) as usize);
    fs::write(&p, &big).unwrap();
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(CHUNK + 10).unwrap();
    f.set_len(9 * MIB).unwrap();
    drop(f);
    let mut want = big[..(CHUNK + 10) as usize].to_vec();
    want.resize((9 * MIB) as usize, 0);
    assert_bytes_eq(
        &fs::read(&p).unwrap(),
        &want,
        "shrink into chunk 1 then grow",
    );

    // Cut exactly on a chunk boundary, then write beyond.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(CHUNK).unwrap();
    f.write_all_at(b"tail", CHUNK + 100).unwrap();
    drop(f);
    want.truncate(CHUNK as usize);
    want.resize((CHUNK + 100) as usize, 0);
    want.extend_from_slice(b"tail");
    assert_bytes_eq(
        &fs::read(&p).unwrap(),
        &want,
        "cut on boundary then write beyond",
    );

    m.remount();
    assert_bytes_eq(&fs::read(&p).unwrap(), &want, "after remount");
}

// ---------------------------------------------------------------------------------------
// attributes

/// In a forked child as `uid`/`gid` (no supplementary groups), run `op` (raw syscalls
/// only) and return its result.
fn as_user(uid: u32, gid: u32, op: impl FnOnce() -> i32) -> i32 {
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                libc::_exit(250);
            }
            libc::_exit(op().clamp(0, 249));
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        assert!(libc::WIFEXITED(status), "child did not exit normally");
        let code = libc::WEXITSTATUS(status);
        assert_ne!(code, 250, "child could not switch to uid {uid}");
        code
    }
}

/// Writing, truncating, fallocating (or punching a hole) or chowning a file drops its set-user-ID bit, its set-group-ID
/// bit (when group-executable, or when the writer is not in the file's group) and its
/// file capabilities, exactly as on ext4. decofs does this itself (the kernel leaves it
/// to the filesystem with FUSE_HANDLE_KILLPRIV_V2); the same steps run on the backing
/// ext4 for comparison.
#[test]
fn set_id_bits_are_dropped_as_on_ext4() {
    let m = Mount::new();
    let ext4 = tempfile::tempdir_in(common::test_root()).unwrap();
    fs::set_permissions(ext4.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let nobody = 65534;
    let mut checked = 0;
    for mode in [0o6777u32, 0o2777, 0o2767, 0o4777, 0o6767] {
        for group in [0, nobody] {
            for op in ["write", "truncate", "fallocate", "punch", "chown"] {
                let mut got = Vec::new();
                for dir in [m.path(""), ext4.path().to_path_buf()] {
                    let p = dir.join(format!("f-{mode:o}-{group}-{op}"));
                    fs::write(&p, b"content").unwrap();
                    std::os::unix::fs::chown(&p, Some(0), Some(group)).unwrap();
                    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
                    let c = cpath(&p);
                    let rc = match op {
                        "write" => as_user(nobody, nobody, || unsafe {
                            let fd = libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_APPEND);
                            if fd < 0 || libc::write(fd, b"more".as_ptr().cast(), 4) != 4 {
                                return 1;
                            }
                            libc::close(fd)
                        }),
                        "truncate" => {
                            as_user(nobody, nobody, || unsafe { libc::truncate(c.as_ptr(), 3) })
                        }
                        "fallocate" | "punch" => as_user(nobody, nobody, || unsafe {
                            let (mode, len) = match op {
                                "punch" => {
                                    (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 4)
                                }
                                _ => (0, 8192),
                            };
                            let fd = libc::open(c.as_ptr(), libc::O_WRONLY);
                            if fd < 0 || libc::fallocate(fd, mode, 0, len) != 0 {
                                return 1;
                            }
                            libc::close(fd)
                        }),
                        _ => unsafe { libc::chown(c.as_ptr(), nobody, u32::MAX) },
                    };
                    assert_eq!(rc, 0, "{op} of {} failed", p.display());
                    got.push(fs::metadata(&p).unwrap().mode() & 0o7777);
                }
                assert_eq!(
                    got[0], got[1],
                    "mode {mode:o}, group {group}, {op}: decofs {:o}, ext4 {:o}",
                    got[0], got[1]
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 50);
    // File capabilities go on a write too.
    let p = m.path("capped");
    fs::write(&p, b"x").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o777)).unwrap();
    // A v2 capability value (cap_net_raw, effective).
    let cap: [u8; 20] = [
        0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    xattr::set(&p, "security.capability", &cap).unwrap();
    let c = cpath(&p);
    let rc = as_user(nobody, nobody, || unsafe {
        let fd = libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_APPEND);
        if fd < 0 || libc::write(fd, b"y".as_ptr().cast(), 1) != 1 {
            return 1;
        }
        libc::close(fd)
    });
    assert_eq!(rc, 0);
    assert!(
        xattr::get(&p, "security.capability").unwrap().is_none(),
        "a write by an unprivileged user drops file capabilities"
    );
}

#[test]
fn chmod_chown() {
    let m = Mount::new();
    let p = m.path("f");
    fs::write(&p, b"x").unwrap();
    let d = m.path("d");
    fs::create_dir(&d).unwrap();

    for mode in [0o741, 0o000, 0o4755, 0o2711, 0o1777, 0o644] {
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().mode() & 0o7777,
            mode,
            "chmod {mode:o}"
        );
        assert!(
            fs::metadata(&p).unwrap().is_file(),
            "chmod must keep the file type"
        );
    }
    fs::set_permissions(&d, fs::Permissions::from_mode(0o1750)).unwrap();
    assert_eq!(fs::metadata(&d).unwrap().mode() & 0o7777, 0o1750);
    assert!(fs::metadata(&d).unwrap().is_dir());

    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    // Only the gid.
    std::os::unix::fs::chown(&p, None, Some(42)).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 42));
    std::os::unix::fs::chown(&d, Some(7), Some(8)).unwrap();
    let md = fs::metadata(&d).unwrap();
    assert_eq!((md.uid(), md.gid()), (7, 8));

    // lchown changes the link itself, not the target.
    std::os::unix::fs::symlink("f", m.path("l")).unwrap();
    std::os::unix::fs::lchown(m.path("l"), Some(99), Some(98)).unwrap();
    let lmd = fs::symlink_metadata(m.path("l")).unwrap();
    assert_eq!((lmd.uid(), lmd.gid()), (99, 98));
    assert_eq!(fs::metadata(&p).unwrap().uid(), 1234);

    // fchmod through a handle.
    let f = File::open(&p).unwrap();
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    drop(f);
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);

    m.remount();
    let md = fs::metadata(&p).unwrap();
    assert_eq!(
        (md.mode() & 0o7777, md.uid(), md.gid()),
        (0o600, 1234, 42),
        "after remount"
    );
    let md = fs::metadata(&d).unwrap();
    assert_eq!(
        (md.mode() & 0o7777, md.uid(), md.gid()),
        (0o1750, 7, 8),
        "dir after remount"
    );
    let lmd = fs::symlink_metadata(m.path("l")).unwrap();
    assert_eq!(
        (lmd.uid(), lmd.gid()),
        (99, 98),
        "symlink owner after remount"
    );
}

fn times(p: &Path) -> ((i64, i64), (i64, i64)) {
    let md = fs::symlink_metadata(p).unwrap();
    ((md.atime(), md.atime_nsec()), (md.mtime(), md.mtime_nsec()))
}

fn utimensat(p: &Path, a: (i64, i64), mt: (i64, i64), flags: i32) -> i32 {
    let c = cpath(p);
    let ts = [
        libc::timespec {
            tv_sec: a.0 as _,
            tv_nsec: a.1 as _,
        },
        libc::timespec {
            tv_sec: mt.0 as _,
            tv_nsec: mt.1 as _,
        },
    ];
    rc(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), flags) })
}

#[test]
fn utimensat_now_and_omit() {
    let m = Mount::new();
    let p = m.path("f");
    fs::write(&p, b"x").unwrap();
    let omit = (0, libc::UTIME_OMIT);
    let now = (0, libc::UTIME_NOW);

    // Explicit values with nanoseconds.
    assert_eq!(
        utimensat(
            &p,
            (1_000_000_000, 123_456_789),
            (1_100_000_000, 987_654_321),
            0
        ),
        0
    );
    assert_eq!(
        times(&p),
        ((1_000_000_000, 123_456_789), (1_100_000_000, 987_654_321))
    );

    // atime only; mtime omitted stays exactly.
    assert_eq!(utimensat(&p, (1_200_000_000, 5), omit, 0), 0);
    assert_eq!(
        times(&p),
        ((1_200_000_000, 5), (1_100_000_000, 987_654_321)),
        "UTIME_OMIT on mtime"
    );

    // mtime only.
    assert_eq!(utimensat(&p, omit, (1_300_000_000, 7), 0), 0);
    assert_eq!(
        times(&p),
        ((1_200_000_000, 5), (1_300_000_000, 7)),
        "UTIME_OMIT on atime"
    );

    // UTIME_NOW for atime, mtime omitted.
    let t0 = now_secs();
    assert_eq!(utimensat(&p, now, omit, 0), 0);
    let (a, mt) = times(&p);
    assert!(
        a.0 >= t0 - 5 && a.0 <= now_secs() + 5,
        "UTIME_NOW atime {a:?} not near now {t0}"
    );
    assert_eq!(
        mt,
        (1_300_000_000, 7),
        "mtime must be untouched by UTIME_NOW on atime"
    );

    // UTIME_NOW for mtime, atime omitted.
    let a_before = a;
    assert_eq!(utimensat(&p, omit, now, 0), 0);
    let (a, mt) = times(&p);
    assert!(
        mt.0 >= t0 - 5 && mt.0 <= now_secs() + 5,
        "UTIME_NOW mtime {mt:?} not near now {t0}"
    );
    assert_eq!(a, a_before, "atime must be untouched by UTIME_NOW on mtime");

    // Both omitted: nothing changes.
    let before = times(&p);
    assert_eq!(utimensat(&p, omit, omit, 0), 0);
    assert_eq!(times(&p), before);

    // NULL times = now for both (touch).
    assert_eq!(utimensat(&p, (5, 0), (6, 0), 0), 0);
    let c = cpath(&p);
    assert_eq!(
        rc(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0) }),
        0
    );
    let (a, mt) = times(&p);
    assert!(
        a.0 >= t0 - 5 && mt.0 >= t0 - 5,
        "utimensat(NULL) must set both to now: {a:?} {mt:?}"
    );

    // On a directory and on a symlink itself (AT_SYMLINK_NOFOLLOW).
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    assert_eq!(utimensat(&d, (1_000, 1), (2_000, 2), 0), 0);
    assert_eq!(times(&d), ((1_000, 1), (2_000, 2)));
    std::os::unix::fs::symlink("f", m.path("l")).unwrap();
    let pf = times(&p);
    assert_eq!(
        utimensat(
            &m.path("l"),
            (3_000, 3),
            (4_000, 4),
            libc::AT_SYMLINK_NOFOLLOW
        ),
        0
    );
    assert_eq!(times(&m.path("l")), ((3_000, 3), (4_000, 4)));
    assert_eq!(
        times(&p),
        pf,
        "AT_SYMLINK_NOFOLLOW must not touch the target"
    );

    // Persisted with nanoseconds.
    assert_eq!(
        utimensat(&p, (1_000_000_000, 111), (1_000_000_001, 222), 0),
        0
    );
    m.remount();
    assert_eq!(
        times(&p),
        ((1_000_000_000, 111), (1_000_000_001, 222)),
        "file times after remount"
    );
    assert_eq!(
        times(&d),
        ((1_000, 1), (2_000, 2)),
        "dir times after remount"
    );
}

#[test]
fn mtime_and_ctime_follow_changes() {
    let m = Mount::new();
    let p = m.path("f");
    fs::write(&p, b"x").unwrap();
    assert_eq!(utimensat(&p, (1_000, 0), (1_000, 0), 0), 0);
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"y", 1).unwrap();
    drop(f);
    let md = fs::metadata(&p).unwrap();
    assert!(
        md.mtime() > 1_000_000,
        "write must update mtime, got {}",
        md.mtime()
    );
    assert!(
        md.ctime() > 1_000_000,
        "write must update ctime, got {}",
        md.ctime()
    );

    assert_eq!(utimensat(&p, (1_000, 0), (1_000, 0), 0), 0);
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(0)
        .unwrap();
    assert!(
        fs::metadata(&p).unwrap().mtime() > 1_000_000,
        "truncate must update mtime"
    );

    // A directory's mtime changes when an entry is added or removed.
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    assert_eq!(utimensat(&d, (1_000, 0), (1_000, 0), 0), 0);
    fs::write(d.join("child"), b"").unwrap();
    assert!(
        fs::metadata(&d).unwrap().mtime() > 1_000_000,
        "create in dir must update dir mtime"
    );
    assert_eq!(utimensat(&d, (1_000, 0), (1_000, 0), 0), 0);
    fs::remove_file(d.join("child")).unwrap();
    assert!(
        fs::metadata(&d).unwrap().mtime() > 1_000_000,
        "unlink in dir must update dir mtime"
    );

    // chmod changes ctime, not mtime.
    assert_eq!(utimensat(&p, (1_000, 0), (1_000, 0), 0), 0);
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert_eq!(md.mtime(), 1_000, "chmod must not change mtime");
    assert!(md.ctime() > 1_000_000, "chmod must update ctime");
}

// ---------------------------------------------------------------------------------------
// special files

#[test]
fn mknod_fifo_socket_devices() {
    let m = Mount::new();
    let fifo = m.path("fifo");
    let sock = m.path("sock");
    let chr = m.path("null");
    let blk = m.path("loop");
    assert_eq!(mknod(&fifo, libc::S_IFIFO | 0o640, 0), 0, "mknod fifo");
    assert_eq!(mknod(&sock, libc::S_IFSOCK | 0o755, 0), 0, "mknod socket");
    let cdev = libc::makedev(1, 3);
    let bdev = libc::makedev(7, 200);
    assert_eq!(
        mknod(&chr, libc::S_IFCHR | 0o600, cdev),
        0,
        "mknod char device"
    );
    assert_eq!(
        mknod(&blk, libc::S_IFBLK | 0o660, bdev),
        0,
        "mknod block device"
    );
    assert_eq!(
        mknod(&fifo, libc::S_IFIFO | 0o640, 0),
        libc::EEXIST,
        "mknod on existing name"
    );

    let c = cpath(&m.path("fifo2"));
    assert_eq!(rc(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }), 0, "mkfifo");

    // A socket bound by a real listener.
    let lpath = m.path("listener.sock");
    let listener = std::os::unix::net::UnixListener::bind(&lpath).unwrap();

    let check = |m: &Mount| {
        let md = fs::symlink_metadata(m.path("fifo")).unwrap();
        assert!(md.file_type().is_fifo(), "fifo type");
        assert_eq!(md.mode() & 0o7777, 0o640);
        assert!(fs::symlink_metadata(m.path("fifo2"))
            .unwrap()
            .file_type()
            .is_fifo());
        let md = fs::symlink_metadata(m.path("sock")).unwrap();
        assert!(md.file_type().is_socket(), "socket type");
        assert_eq!(md.mode() & 0o7777, 0o755);
        let md = fs::symlink_metadata(m.path("null")).unwrap();
        assert!(md.file_type().is_char_device(), "char device type");
        assert_eq!(md.rdev(), cdev, "char device rdev");
        let md = fs::symlink_metadata(m.path("loop")).unwrap();
        assert!(md.file_type().is_block_device(), "block device type");
        assert_eq!(md.rdev(), bdev, "block device rdev");
        assert!(fs::symlink_metadata(m.path("listener.sock"))
            .unwrap()
            .file_type()
            .is_socket());
        // readdir's d_type agrees.
        let types: HashMap<OsString, fs::FileType> = fs::read_dir(&m.mnt)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.file_name(), e.file_type().unwrap()))
            .collect();
        assert!(types[OsStr::new("fifo")].is_fifo(), "readdir type of fifo");
        assert!(
            types[OsStr::new("sock")].is_socket(),
            "readdir type of socket"
        );
        assert!(
            types[OsStr::new("null")].is_char_device(),
            "readdir type of char dev"
        );
        assert!(
            types[OsStr::new("loop")].is_block_device(),
            "readdir type of block dev"
        );
    };
    check(&m);

    // A FIFO on the mount carries data between a writer and a reader.
    let fifo_path = fifo.clone();
    let writer = std::thread::spawn(move || {
        let mut w = OpenOptions::new().write(true).open(&fifo_path).unwrap();
        w.write_all(b"through the pipe").unwrap();
    });
    let mut got = String::new();
    File::open(&fifo).unwrap().read_to_string(&mut got).unwrap();
    writer.join().unwrap();
    assert_eq!(got, "through the pipe");

    drop(listener);
    m.remount();
    check(&m);
    for n in ["fifo", "fifo2", "sock", "null", "loop", "listener.sock"] {
        fs::remove_file(m.path(n)).unwrap();
    }
    assert!(
        names_in(&m.mnt).is_empty(),
        "all special files removed: {:?}",
        names_in(&m.mnt)
    );
}

// ---------------------------------------------------------------------------------------
// directories

#[test]
fn mkdir_rmdir_errors() {
    let m = Mount::new();
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    assert!(fs::metadata(&d).unwrap().is_dir());
    assert_errno(fs::create_dir(&d), libc::EEXIST, "mkdir existing");
    fs::write(m.path("file"), b"").unwrap();
    assert_errno(
        fs::create_dir(m.path("file")),
        libc::EEXIST,
        "mkdir over file",
    );
    assert_errno(
        fs::create_dir(m.path("file/sub")),
        libc::ENOTDIR,
        "mkdir under a file",
    );
    assert_errno(
        fs::create_dir(m.path("nope/sub")),
        libc::ENOENT,
        "mkdir under missing dir",
    );

    fs::create_dir(d.join("e")).unwrap();
    assert_errno(
        fs::remove_dir(&d),
        libc::ENOTEMPTY,
        "rmdir non-empty (subdir)",
    );
    fs::write(d.join("e/f"), b"data").unwrap();
    assert_errno(
        fs::remove_dir(d.join("e")),
        libc::ENOTEMPTY,
        "rmdir non-empty (file)",
    );
    assert_errno(
        fs::remove_dir(d.join("e/f")),
        libc::ENOTDIR,
        "rmdir on a file",
    );
    assert_errno(
        fs::remove_file(d.join("e")),
        libc::EISDIR,
        "unlink on a dir",
    );
    assert_errno(
        fs::remove_dir(m.path("missing")),
        libc::ENOENT,
        "rmdir missing",
    );
    assert_errno(
        OpenOptions::new().write(true).open(&d),
        libc::EISDIR,
        "open dir for writing",
    );

    // mkdir mode.
    let c = cpath(&m.path("m750"));
    assert_eq!(rc(unsafe { libc::mkdir(c.as_ptr(), 0o750) }), 0);
    assert_eq!(fs::metadata(m.path("m750")).unwrap().mode() & 0o7777, 0o750);

    fs::remove_file(d.join("e/f")).unwrap();
    fs::remove_dir(d.join("e")).unwrap();
    fs::remove_dir(&d).unwrap();
    assert_errno(fs::metadata(&d), libc::ENOENT, "stat after rmdir");

    // Deep nesting.
    let deep: PathBuf = (0..30).map(|i| format!("n{i}")).collect();
    fs::create_dir_all(m.mnt.join(&deep)).unwrap();
    fs::write(m.mnt.join(&deep).join("leaf"), b"leaf").unwrap();
    m.remount();
    assert_eq!(fs::read(m.mnt.join(&deep).join("leaf")).unwrap(), b"leaf");
    fs::remove_dir_all(m.path("n0")).unwrap();
    assert_eq!(
        names_in(&m.mnt),
        ["file", "m750"].iter().map(OsString::from).collect()
    );
}

#[test]
fn dir_nlink_counts_subdirs() {
    // ext4 and POSIX tradition: a directory has 2 + (number of subdirectories) links.
    let m = Mount::new();
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 2, "empty dir");
    fs::create_dir(d.join("a")).unwrap();
    fs::create_dir(d.join("b")).unwrap();
    fs::write(d.join("f"), b"").unwrap();
    assert_eq!(
        fs::metadata(&d).unwrap().nlink(),
        4,
        "dir with 2 subdirs and a file"
    );
    fs::rename(d.join("b"), m.path("b")).unwrap();
    assert_eq!(
        fs::metadata(&d).unwrap().nlink(),
        3,
        "after moving a subdir out"
    );
    fs::remove_dir(d.join("a")).unwrap();
    assert_eq!(
        fs::metadata(&d).unwrap().nlink(),
        2,
        "after rmdir of a subdir"
    );
}

#[test]
fn readdir_lists_everything_once() {
    let m = Mount::new();
    let mut want = BTreeSet::new();
    for i in 0..500 {
        let n = format!("entry-{i:04}");
        if i % 3 == 0 {
            fs::create_dir(m.path(&n)).unwrap();
        } else {
            fs::write(m.path(&n), b"").unwrap();
        }
        want.insert(OsString::from(n));
    }
    // Through raw readdir: "." and ".." present, no duplicates.
    let c = cpath(&m.mnt);
    let mut seen = Vec::new();
    unsafe {
        let dir = libc::opendir(c.as_ptr());
        assert!(!dir.is_null());
        loop {
            let e = libc::readdir(dir);
            if e.is_null() {
                break;
            }
            let name = std::ffi::CStr::from_ptr((*e).d_name.as_ptr())
                .to_bytes()
                .to_vec();
            seen.push(OsString::from_vec(name));
        }
        libc::closedir(dir);
    }
    let uniq: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(uniq.len(), seen.len(), "readdir returned duplicates");
    assert!(
        uniq.contains(OsStr::new(".")) && uniq.contains(OsStr::new("..")),
        "readdir must list . and .."
    );
    let mut without_dots = uniq.clone();
    without_dots.remove(OsStr::new("."));
    without_dots.remove(OsStr::new(".."));
    assert_eq!(without_dots, want);
}

/// A cold listing names every entry with its type and inode number, as stat reports
/// them, whether or not it reads the entries' records: decofs lists files, symlinks and
/// special files name-only (their type is in their node id) and directories with
/// attributes. A damaged record does not hide its name (as on ext4, the listing shows
/// it and stat fails with EIO).
#[test]
fn cold_listing_types_and_inode_numbers() {
    let m = Mount::new();
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("file"), b"x").unwrap();
    fs::create_dir(d.join("dir")).unwrap();
    std::os::unix::fs::symlink("file", d.join("link")).unwrap();
    fs::hard_link(d.join("file"), d.join("hard")).unwrap();
    assert_eq!(mknod(&d.join("fifo"), libc::S_IFIFO | 0o644, 0), 0);
    assert_eq!(mknod(&d.join("sock"), libc::S_IFSOCK | 0o644, 0), 0);
    assert_eq!(
        mknod(&d.join("chr"), libc::S_IFCHR | 0o644, libc::makedev(1, 3)),
        0
    );
    assert_eq!(
        mknod(&d.join("blk"), libc::S_IFBLK | 0o644, libc::makedev(7, 0)),
        0
    );
    fs::write(d.join("damaged"), b"y").unwrap();
    let want: HashMap<OsString, (u64, u32)> = fs::read_dir(&d)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let md = fs::symlink_metadata(e.path()).unwrap();
            (e.file_name(), (md.ino(), md.mode() & libc::S_IFMT))
        })
        .collect();
    assert_eq!(want.len(), 9);
    m.unmount();
    let damaged = common::node_of(&m.store, "d/damaged");
    xattr::set(&damaged, "user.decofs.node", b"garbage").unwrap();
    m.mount();

    let ifmt = |t: fs::FileType| {
        if t.is_dir() {
            libc::S_IFDIR
        } else if t.is_symlink() {
            libc::S_IFLNK
        } else if t.is_fifo() {
            libc::S_IFIFO
        } else if t.is_socket() {
            libc::S_IFSOCK
        } else if t.is_char_device() {
            libc::S_IFCHR
        } else if t.is_block_device() {
            libc::S_IFBLK
        } else {
            assert!(t.is_file(), "unknown type {t:?}");
            libc::S_IFREG
        }
    };
    // Twice: cold (nothing read yet), then after stat has read every record.
    for round in ["cold", "after stat"] {
        // DirEntry's type and ino come from the dirent (d_type, d_ino), not from stat.
        let got: HashMap<OsString, (u64, u32)> = fs::read_dir(&d)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let t = e.file_type().unwrap();
                (
                    e.file_name(),
                    (std::os::unix::fs::DirEntryExt::ino(&e), ifmt(t)),
                )
            })
            .collect();
        assert_eq!(got, want, "{round} listing");
        for (name, (ino, fmt)) in &want {
            let r = fs::symlink_metadata(d.join(name));
            if name == "damaged" {
                assert_errno(r, libc::EIO, "stat of a file whose record is damaged");
                continue;
            }
            let md = r.unwrap();
            assert_eq!(
                (md.ino(), md.mode() & libc::S_IFMT),
                (*ino, *fmt),
                "{name:?}"
            );
        }
    }
    // The hard link and its twin share one inode number in every listing.
    assert_eq!(want[OsStr::new("file")], want[OsStr::new("hard")]);
    assert_eq!(fs::read(d.join("link")).unwrap(), b"x");
}

// ---------------------------------------------------------------------------------------
// symlinks and hard links

#[test]
fn symlink_readlink() {
    let m = Mount::new();
    fs::write(m.path("target"), b"pointed at").unwrap();
    std::os::unix::fs::symlink("target", m.path("rel")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", m.path("dangling")).unwrap();
    let abs = m.path("target");
    std::os::unix::fs::symlink(&abs, m.path("abs")).unwrap();
    // Near the 4095-byte limit of a target: must not fit in a small record.
    let long: String = "abcdefgh/".repeat(450); // 4050 bytes
    std::os::unix::fs::symlink(&long, m.path("long")).unwrap();
    let nonutf8 = OsStr::from_bytes(b"caf\xe9/\xff");
    std::os::unix::fs::symlink(nonutf8, m.path("bytes")).unwrap();

    let check = |m: &Mount| {
        assert_eq!(fs::read_link(m.path("rel")).unwrap(), Path::new("target"));
        assert_eq!(
            fs::read(m.path("rel")).unwrap(),
            b"pointed at",
            "follow relative link"
        );
        assert_eq!(
            fs::read(m.path("abs")).unwrap(),
            b"pointed at",
            "follow absolute link"
        );
        assert_eq!(
            fs::read_link(m.path("dangling")).unwrap(),
            Path::new("does/not/exist")
        );
        assert_errno(
            fs::metadata(m.path("dangling")),
            libc::ENOENT,
            "stat through dangling link",
        );
        let lmd = fs::symlink_metadata(m.path("dangling")).unwrap();
        assert!(lmd.file_type().is_symlink());
        assert_eq!(
            lmd.len(),
            "does/not/exist".len() as u64,
            "lstat size of a symlink is its target length"
        );
        assert_eq!(
            fs::read_link(m.path("long")).unwrap(),
            Path::new(&long),
            "4050-byte target"
        );
        assert_eq!(
            fs::symlink_metadata(m.path("long")).unwrap().len(),
            long.len() as u64
        );
        assert_eq!(fs::read_link(m.path("bytes")).unwrap().as_os_str(), nonutf8);
    };
    check(&m);
    assert_errno(
        std::os::unix::fs::symlink("x", m.path("rel")),
        libc::EEXIST,
        "symlink over existing name",
    );
    // Removing a link leaves the target.
    std::os::unix::fs::symlink(&abs, m.path("abs2")).unwrap();
    fs::remove_file(m.path("abs2")).unwrap();
    assert!(fs::metadata(m.path("target")).is_ok());
    m.remount();
    check(&m);
}

#[test]
fn hard_links() {
    let m = Mount::new();
    let a = m.path("a");
    fs::write(&a, b"shared content").unwrap();
    fs::create_dir(m.path("sub")).unwrap();
    let b = m.path("b");
    let c = m.path("sub/c");
    fs::hard_link(&a, &b).unwrap();
    let (ma, mb) = (fs::metadata(&a).unwrap(), fs::metadata(&b).unwrap());
    assert_eq!(ma.ino(), mb.ino(), "hard links share st_ino");
    assert_eq!((ma.nlink(), mb.nlink()), (2, 2));
    fs::hard_link(&a, &c).unwrap();
    assert_eq!(fs::metadata(&a).unwrap().nlink(), 3);
    assert_eq!(fs::metadata(&c).unwrap().ino(), ma.ino());

    // Write through one name, read through another.
    let f = OpenOptions::new().write(true).open(&b).unwrap();
    f.write_all_at(b"SHARED", 0).unwrap();
    drop(f);
    assert_eq!(fs::read(&a).unwrap(), b"SHARED content");
    assert_eq!(fs::read(&c).unwrap(), b"SHARED content");
    // Attributes are shared too.
    fs::set_permissions(&c, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(&a).unwrap().mode() & 0o7777, 0o600);

    assert_errno(fs::hard_link(&a, &b), libc::EEXIST, "link to existing name");
    assert_errno(
        fs::hard_link(m.path("sub"), m.path("dirlink")),
        libc::EPERM,
        "link to a directory",
    );
    assert_errno(
        fs::hard_link(m.path("missing"), m.path("x")),
        libc::ENOENT,
        "link of missing",
    );

    fs::remove_file(&a).unwrap();
    assert_eq!(
        fs::metadata(&b).unwrap().nlink(),
        2,
        "after unlinking one name"
    );
    assert_eq!(fs::read(&b).unwrap(), b"SHARED content");

    m.remount();
    let (mb, mc) = (fs::metadata(&b).unwrap(), fs::metadata(&c).unwrap());
    assert_eq!(mb.ino(), mc.ino(), "same st_ino after remount");
    assert_eq!((mb.nlink(), mc.nlink()), (2, 2), "nlink after remount");
    assert_eq!(fs::read(&c).unwrap(), b"SHARED content");
    fs::remove_file(&b).unwrap();
    assert_eq!(fs::metadata(&c).unwrap().nlink(), 1);
    assert_eq!(fs::read(&c).unwrap(), b"SHARED content");
}

// ---------------------------------------------------------------------------------------
// rename

#[test]
fn rename_cases() {
    let m = Mount::new();
    let p = |s: &str| m.path(s);

    // Plain rename.
    fs::write(p("a"), b"A").unwrap();
    let ino_a = fs::metadata(p("a")).unwrap().ino();
    fs::rename(p("a"), p("b")).unwrap();
    assert_errno(fs::metadata(p("a")), libc::ENOENT, "old name after rename");
    assert_eq!(fs::read(p("b")).unwrap(), b"A");
    assert_eq!(
        fs::metadata(p("b")).unwrap().ino(),
        ino_a,
        "rename keeps st_ino"
    );

    // Over an existing file: target replaced, displaced node goes to trash.
    fs::write(p("c"), b"C").unwrap();
    let trash_before = trash_count(&m.store);
    fs::rename(p("b"), p("c")).unwrap();
    assert_eq!(fs::read(p("c")).unwrap(), b"A");
    assert_eq!(fs::metadata(p("c")).unwrap().ino(), ino_a);
    assert_errno(
        fs::metadata(p("b")),
        libc::ENOENT,
        "source after rename over file",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while trash_count(&m.store) == trash_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        trash_count(&m.store),
        trash_before + 1,
        "rename over a file must trash the displaced node"
    );

    // Into a subdirectory and back.
    fs::create_dir(p("dir")).unwrap();
    fs::rename(p("c"), p("dir/c")).unwrap();
    assert_eq!(fs::read(p("dir/c")).unwrap(), b"A");
    fs::rename(p("dir/c"), p("c")).unwrap();
    assert!(names_in(&p("dir")).is_empty());

    // Directory over an empty directory.
    fs::create_dir(p("src")).unwrap();
    fs::write(p("src/inner"), b"inner").unwrap();
    fs::create_dir(p("empty")).unwrap();
    fs::rename(p("src"), p("empty")).unwrap();
    assert_eq!(fs::read(p("empty/inner")).unwrap(), b"inner");
    assert_errno(
        fs::metadata(p("src")),
        libc::ENOENT,
        "dir source after rename",
    );

    // Directory over a non-empty directory.
    fs::create_dir(p("full")).unwrap();
    fs::write(p("full/x"), b"x").unwrap();
    assert_errno(
        fs::rename(p("empty"), p("full")),
        libc::ENOTEMPTY,
        "dir over non-empty dir",
    );
    assert_eq!(fs::read(p("full/x")).unwrap(), b"x");
    assert_eq!(fs::read(p("empty/inner")).unwrap(), b"inner");

    // Type mismatches.
    assert_errno(fs::rename(p("c"), p("full")), libc::EISDIR, "file over dir");
    assert_errno(
        fs::rename(p("full"), p("c")),
        libc::ENOTDIR,
        "dir over file",
    );
    // Directory into its own subtree.
    fs::create_dir(p("full/sub")).unwrap();
    assert_errno(
        fs::rename(p("full"), p("full/sub/x")),
        libc::EINVAL,
        "dir into its own subdir",
    );
    // Missing source; missing target dir.
    assert_errno(
        fs::rename(p("missing"), p("zz")),
        libc::ENOENT,
        "rename missing",
    );
    assert_errno(
        fs::rename(p("c"), p("nodir/c")),
        libc::ENOENT,
        "rename into missing dir",
    );

    // Rename onto itself, and onto another hard link of the same inode: no-ops.
    fs::rename(p("c"), p("c")).unwrap();
    assert_eq!(fs::read(p("c")).unwrap(), b"A");
    fs::hard_link(p("c"), p("c2")).unwrap();
    fs::rename(p("c"), p("c2")).unwrap();
    assert_eq!(
        fs::read(p("c")).unwrap(),
        b"A",
        "rename between links of one inode leaves both names"
    );
    assert_eq!(fs::read(p("c2")).unwrap(), b"A");
    assert_eq!(fs::metadata(p("c")).unwrap().nlink(), 2);

    // Rename of an open file: the handle keeps working.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(p("c2"))
        .unwrap();
    fs::rename(p("c2"), p("dir/moved")).unwrap();
    f.write_all_at(b"Z", 1).unwrap();
    drop(f);
    assert_eq!(fs::read(p("dir/moved")).unwrap(), b"AZ");

    m.remount();
    assert_eq!(fs::read(p("dir/moved")).unwrap(), b"AZ");
    assert_eq!(fs::read(p("c")).unwrap(), b"AZ");
    assert_eq!(fs::read(p("empty/inner")).unwrap(), b"inner");
    assert_eq!(
        names_in(&m.mnt),
        ["c", "dir", "empty", "full"]
            .iter()
            .map(OsString::from)
            .collect()
    );
}

#[test]
fn rename_noreplace_and_exchange() {
    let m = Mount::new();
    let p = |s: &str| m.path(s);
    fs::write(p("x"), b"X").unwrap();
    fs::write(p("y"), b"Y").unwrap();

    assert_eq!(
        renameat2(&p("x"), &p("y"), libc::RENAME_NOREPLACE),
        libc::EEXIST,
        "RENAME_NOREPLACE onto existing"
    );
    assert_eq!(fs::read(p("x")).unwrap(), b"X");
    assert_eq!(fs::read(p("y")).unwrap(), b"Y");
    assert_eq!(
        renameat2(&p("x"), &p("z"), libc::RENAME_NOREPLACE),
        0,
        "RENAME_NOREPLACE to a free name"
    );
    assert_eq!(fs::read(p("z")).unwrap(), b"X");
    assert_errno(fs::metadata(p("x")), libc::ENOENT, "source after NOREPLACE");

    // Exchange two files.
    let (iz, iy) = (
        fs::metadata(p("z")).unwrap().ino(),
        fs::metadata(p("y")).unwrap().ino(),
    );
    assert_eq!(
        renameat2(&p("z"), &p("y"), libc::RENAME_EXCHANGE),
        0,
        "RENAME_EXCHANGE files"
    );
    assert_eq!(fs::read(p("z")).unwrap(), b"Y");
    assert_eq!(fs::read(p("y")).unwrap(), b"X");
    assert_eq!(fs::metadata(p("z")).unwrap().ino(), iy);
    assert_eq!(fs::metadata(p("y")).unwrap().ino(), iz);

    // Exchange a file and a directory in different parents.
    fs::create_dir(p("d")).unwrap();
    fs::write(p("d/inside"), b"in d").unwrap();
    fs::create_dir(p("other")).unwrap();
    fs::write(p("other/f"), b"file f").unwrap();
    assert_eq!(
        renameat2(&p("d"), &p("other/f"), libc::RENAME_EXCHANGE),
        0,
        "RENAME_EXCHANGE dir <-> file"
    );
    assert!(fs::metadata(p("d")).unwrap().is_file());
    assert_eq!(fs::read(p("d")).unwrap(), b"file f");
    assert!(fs::metadata(p("other/f")).unwrap().is_dir());
    assert_eq!(fs::read(p("other/f/inside")).unwrap(), b"in d");

    assert_eq!(
        renameat2(&p("z"), &p("nothing"), libc::RENAME_EXCHANGE),
        libc::ENOENT,
        "EXCHANGE with missing target"
    );
    assert_eq!(
        renameat2(
            &p("z"),
            &p("y"),
            libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE
        ),
        libc::EINVAL,
        "EXCHANGE|NOREPLACE is invalid"
    );

    m.remount();
    assert_eq!(fs::read(p("z")).unwrap(), b"Y");
    assert_eq!(fs::read(p("y")).unwrap(), b"X");
    assert_eq!(fs::read(p("d")).unwrap(), b"file f");
    assert_eq!(fs::read(p("other/f/inside")).unwrap(), b"in d");
}

// ---------------------------------------------------------------------------------------
// names

#[test]
fn name_length_limits() {
    let m = Mount::new();
    let n255 = "a".repeat(255);
    let n256 = "b".repeat(256);
    fs::write(m.path(&n255), b"long name").unwrap();
    assert_eq!(fs::read(m.path(&n255)).unwrap(), b"long name");
    assert!(names_in(&m.mnt).contains(OsStr::new(&n255)));
    let d255 = "d".repeat(255);
    fs::create_dir(m.path(&d255)).unwrap();
    let r255 = "r".repeat(255);
    fs::rename(m.path(&n255), m.mnt.join(&d255).join(&r255)).unwrap();
    assert_eq!(
        fs::read(m.mnt.join(&d255).join(&r255)).unwrap(),
        b"long name"
    );
    std::os::unix::fs::symlink("target", m.path(&"s".repeat(255))).unwrap();

    // Multibyte: the limit is 255 bytes, not characters.
    let e254 = "é".repeat(127); // 254 bytes
    fs::write(m.path(&e254), b"").unwrap();
    let e256 = "é".repeat(128); // 256 bytes

    for bad in [&n256, &e256] {
        assert_errno(
            File::create(m.path(bad)),
            libc::ENAMETOOLONG,
            "create 256-byte name",
        );
        assert_errno(
            fs::create_dir(m.path(bad)),
            libc::ENAMETOOLONG,
            "mkdir 256-byte name",
        );
        assert_errno(
            fs::metadata(m.path(bad)),
            libc::ENAMETOOLONG,
            "stat 256-byte name",
        );
        assert_errno(
            fs::rename(m.path(&e254), m.path(bad)),
            libc::ENAMETOOLONG,
            "rename to 256-byte name",
        );
        assert_errno(
            std::os::unix::fs::symlink("t", m.path(bad)),
            libc::ENAMETOOLONG,
            "symlink 256-byte name",
        );
        assert_errno(
            fs::hard_link(m.path(&e254), m.path(bad)),
            libc::ENAMETOOLONG,
            "link 256-byte name",
        );
    }
    // Unusual but valid names; none is reserved.
    let odd = [
        " lead space",
        "trail space ",
        "new\nline",
        "tab\there",
        "back\\slash",
        "*?[]",
        "...",
        ".hidden",
        "-dash",
        "nodes",
        "blobs",
        "trash",
        "decofs.format",
        "lock",
        "user.decofs.node",
        "%00",
        "\u{1F600}",
    ];
    for n in odd {
        fs::write(m.path(n), n.as_bytes()).unwrap();
    }
    m.remount();
    let names = names_in(&m.mnt);
    for n in odd {
        assert!(
            names.contains(OsStr::new(n)),
            "name {n:?} missing from readdir"
        );
        assert_eq!(
            fs::read(m.path(n)).unwrap(),
            n.as_bytes(),
            "content of {n:?}"
        );
    }
    assert!(names.contains(OsStr::new(&d255)));
    assert!(names.contains(OsStr::new(&e254)));
    assert!(names.contains(OsStr::new(&"s".repeat(255))));
    assert!(!names.iter().any(|n| n.len() > 255));
}

#[test]
fn non_utf8_names_round_trip() {
    let m = Mount::new();
    let raw: Vec<&[u8]> = vec![
        b"caf\xe9",
        b"\xff\xfe\xfd",
        b"a\x01b",
        b"\x80",
        b"\xc3\x28",
        b"ok-\xe2\x82",
    ];
    let mut want = BTreeSet::new();
    for r in &raw {
        let name = OsStr::from_bytes(r);
        fs::write(m.mnt.join(name), r).unwrap();
        want.insert(name.to_os_string());
    }
    let dname = OsStr::from_bytes(b"dir\xfe");
    fs::create_dir(m.mnt.join(dname)).unwrap();
    fs::write(
        m.mnt.join(dname).join(OsStr::from_bytes(b"child\xff")),
        b"child",
    )
    .unwrap();
    want.insert(dname.to_os_string());
    // Rename to another non-UTF-8 name.
    fs::rename(
        m.mnt.join(OsStr::from_bytes(b"\x80")),
        m.mnt.join(OsStr::from_bytes(b"\x81\x82")),
    )
    .unwrap();
    want.remove(OsStr::from_bytes(b"\x80"));
    want.insert(OsStr::from_bytes(b"\x81\x82").to_os_string());

    let check = |m: &Mount| {
        assert_eq!(
            names_in(&m.mnt),
            want,
            "readdir must return the exact bytes"
        );
        for r in &raw {
            let r: &[u8] = if *r == b"\x80" { b"\x81\x82" } else { r };
            let content = fs::read(m.mnt.join(OsStr::from_bytes(r))).unwrap();
            let expect: &[u8] = if r == b"\x81\x82" { b"\x80" } else { r };
            assert_eq!(content, expect);
        }
        let children = names_in(&m.mnt.join(dname));
        assert_eq!(
            children.into_iter().collect::<Vec<_>>(),
            vec![OsStr::from_bytes(b"child\xff").to_os_string()]
        );
    };
    check(&m);
    m.remount();
    check(&m);
}

// ---------------------------------------------------------------------------------------
// xattrs

#[test]
fn xattrs_set_get_list_remove() {
    let m = Mount::new();
    let p = m.path("f");
    fs::write(&p, b"content").unwrap();

    assert_eq!(setxattr(&p, "user.a", b"1", 0), Ok(()));
    assert_eq!(getxattr(&p, "user.a"), Ok(b"1".to_vec()));
    assert_eq!(setxattr(&p, "user.empty", b"", 0), Ok(()));
    assert_eq!(getxattr(&p, "user.empty"), Ok(vec![]), "empty value");
    let names = listxattr(&p);
    assert!(
        names.contains(&"user.a".to_string()) && names.contains(&"user.empty".to_string()),
        "list: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n == "user.decofs.node"),
        "the internal record must not show as a client xattr: {names:?}"
    );

    assert_eq!(
        setxattr(&p, "user.a", b"2", libc::XATTR_CREATE),
        Err(libc::EEXIST),
        "XATTR_CREATE on existing"
    );
    assert_eq!(getxattr(&p, "user.a"), Ok(b"1".to_vec()));
    assert_eq!(
        setxattr(&p, "user.nope", b"2", libc::XATTR_REPLACE),
        Err(libc::ENODATA),
        "XATTR_REPLACE on missing"
    );
    assert_eq!(getxattr(&p, "user.nope"), Err(libc::ENODATA));
    assert_eq!(setxattr(&p, "user.a", b"22", libc::XATTR_REPLACE), Ok(()));
    assert_eq!(getxattr(&p, "user.a"), Ok(b"22".to_vec()));
    assert_eq!(setxattr(&p, "user.new", b"n", libc::XATTR_CREATE), Ok(()));

    // Size query and a too-small buffer.
    let c = cpath(&p);
    let n = CString::new("user.a").unwrap();
    assert_eq!(
        unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) },
        2
    );
    let mut one = [0u8; 1];
    let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), one.as_mut_ptr() as *mut _, 1) };
    assert_eq!(
        (r, if r < 0 { last_errno() } else { 0 }),
        (-1, libc::ERANGE),
        "getxattr into a 1-byte buffer"
    );

    assert_eq!(removexattr(&p, "user.a"), Ok(()));
    assert_eq!(getxattr(&p, "user.a"), Err(libc::ENODATA));
    assert_eq!(
        removexattr(&p, "user.a"),
        Err(libc::ENODATA),
        "remove twice"
    );
    assert!(!listxattr(&p).contains(&"user.a".to_string()));

    // A 60 KiB value, binary.
    let big = pattern(60, 0, 60 * 1024);
    assert_eq!(setxattr(&p, "user.big", &big, 0), Ok(()));
    assert_eq!(
        getxattr(&p, "user.big").as_deref(),
        Ok(&big[..]),
        "60 KiB value"
    );
    // Many medium values: together far beyond one ext4 xattr block.
    for i in 0..40 {
        assert_eq!(
            setxattr(&p, &format!("user.many{i:02}"), &pattern(i, 0, 1000), 0),
            Ok(()),
            "user.many{i:02}"
        );
    }
    // On a directory.
    fs::create_dir(m.path("d")).unwrap();
    assert_eq!(setxattr(&m.path("d"), "user.dir", b"dv", 0), Ok(()));
    // Content and client xattrs don't disturb each other.
    assert_eq!(fs::read(&p).unwrap(), b"content");

    let check = |m: &Mount| {
        assert_eq!(
            getxattr(&p, "user.big").as_deref(),
            Ok(&big[..]),
            "60 KiB value after remount"
        );
        assert_eq!(getxattr(&p, "user.a"), Err(libc::ENODATA));
        assert_eq!(getxattr(&p, "user.empty"), Ok(vec![]));
        assert_eq!(getxattr(&p, "user.new"), Ok(b"n".to_vec()));
        let names = listxattr(&p);
        for i in 0..40 {
            assert_eq!(
                getxattr(&p, &format!("user.many{i:02}")),
                Ok(pattern(i, 0, 1000))
            );
            assert!(names.contains(&format!("user.many{i:02}")));
        }
        assert_eq!(getxattr(&m.path("d"), "user.dir"), Ok(b"dv".to_vec()));
        assert_eq!(fs::read(&p).unwrap(), b"content");
    };
    check(&m);
    m.remount();
    check(&m);
}

/// xattrs decofs does not keep (POSIX ACLs, SELinux labels) say "not supported" to every
/// call, never "no such attribute": ls and cp learn from EOPNOTSUPP that the whole mount
/// lacks them and stop asking per file, and a getfacl that saw ENODATA would report an
/// ACL-capable filesystem with no ACL set. (ext4 keeps both, so this is decofs's own
/// contract, not a comparison.)
#[test]
fn unsupported_xattrs_say_so_for_every_call() {
    let m = Mount::new();
    let f = m.path("f");
    fs::write(&f, b"x").unwrap();
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    for (p, name) in [
        (&f, "system.posix_acl_access"),
        (&d, "system.posix_acl_access"),
        (&d, "system.posix_acl_default"),
        (&f, "security.selinux"),
        (&d, "security.selinux"),
    ] {
        let what = format!("{name} on {}", p.display());
        assert_eq!(getxattr(p, name), Err(libc::EOPNOTSUPP), "get {what}");
        assert_eq!(
            setxattr(p, name, b"system_u:object_r:fusefs_t:s0", 0),
            Err(libc::EOPNOTSUPP),
            "set {what}"
        );
        assert_eq!(removexattr(p, name), Err(libc::EOPNOTSUPP), "remove {what}");
        assert!(!listxattr(p).iter().any(|n| n == name), "list {what}");
    }
    // The rest of the security namespace is kept (file capabilities: tests above; IMA, EVM).
    assert_eq!(setxattr(&f, "security.decofs-test", b"v", 0), Ok(()));
    assert_eq!(getxattr(&f, "security.decofs-test"), Ok(b"v".to_vec()));
    assert_eq!(getxattr(&f, "security.other"), Err(libc::ENODATA));
    // ls -l shows no ACL marker ('+') and no label, and does not fail.
    let out = std::process::Command::new("ls")
        .arg("-l")
        .arg(m.path(""))
        .output()
        .unwrap();
    assert!(out.status.success(), "ls -l: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .skip(1)
            .all(|l| l.as_bytes().get(10) == Some(&b' ')),
        "ls -l marks no file with an ACL or label: {text}"
    );
}

// ---------------------------------------------------------------------------------------
// statfs, access

#[test]
fn statfs_is_sane() {
    let m = Mount::new();
    fs::write(m.path("f"), b"x").unwrap();
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let c = cpath(&m.mnt);
    assert_eq!(rc(unsafe { libc::statfs(c.as_ptr(), &mut st) }), 0);
    assert!(st.f_bsize > 0, "f_bsize {}", st.f_bsize);
    assert!(st.f_blocks > 0, "f_blocks {}", st.f_blocks);
    assert!(
        st.f_bfree <= st.f_blocks && st.f_bavail <= st.f_bfree,
        "free {} avail {} blocks {}",
        st.f_bfree,
        st.f_bavail,
        st.f_blocks
    );
    assert!(st.f_namelen >= 255, "f_namelen {}", st.f_namelen);

    // Free space roughly matches the disk holding the store.
    let mut back: libc::statfs = unsafe { std::mem::zeroed() };
    let cs = cpath(&m.store);
    assert_eq!(rc(unsafe { libc::statfs(cs.as_ptr(), &mut back) }), 0);
    let ours = st.f_bavail as f64 * st.f_bsize as f64;
    let theirs = back.f_bavail as f64 * back.f_bsize as f64;
    assert!(
        (ours - theirs).abs() <= theirs * 0.05 + 64.0 * MIB as f64,
        "available bytes {ours} vs backing {theirs}"
    );
    let total_ours = st.f_blocks as f64 * st.f_bsize as f64;
    let total_theirs = back.f_blocks as f64 * back.f_bsize as f64;
    assert!(
        (total_ours - total_theirs).abs() <= total_theirs * 0.05,
        "total bytes {total_ours} vs backing {total_theirs}"
    );

    // statvfs agrees.
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(rc(unsafe { libc::statvfs(c.as_ptr(), &mut sv) }), 0);
    assert!(sv.f_namemax >= 255);
}

#[test]
fn access_checks() {
    let m = Mount::new();
    let f = m.path("f");
    fs::write(&f, b"x").unwrap();
    let acc = |p: &Path, mode: i32| {
        let c = cpath(p);
        rc(unsafe { libc::access(c.as_ptr(), mode) })
    };
    assert_eq!(acc(&f, libc::F_OK), 0);
    assert_eq!(acc(&m.path("missing"), libc::F_OK), libc::ENOENT);
    // Root: read/write always, execute only if some x bit is set.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o444)).unwrap();
    assert_eq!(
        acc(&f, libc::R_OK | libc::W_OK),
        0,
        "root may write a 0444 file"
    );
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(
        acc(&f, libc::X_OK),
        libc::EACCES,
        "root X_OK on a 0644 file"
    );
    fs::set_permissions(&f, fs::Permissions::from_mode(0o744)).unwrap();
    assert_eq!(acc(&f, libc::X_OK), 0, "root X_OK on a 0744 file");

    // Another user (65534).
    let (u, g) = (65534, 65534);
    fs::set_permissions(&m.mnt, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        access_as(u, g, &f, libc::R_OK),
        libc::EACCES,
        "other user R_OK on 0640 root file"
    );
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(
        access_as(u, g, &f, libc::R_OK),
        0,
        "other user R_OK on 0644"
    );
    assert_eq!(
        access_as(u, g, &f, libc::W_OK),
        libc::EACCES,
        "other user W_OK on 0644 root file"
    );
    std::os::unix::fs::chown(&f, Some(u), Some(g)).unwrap();
    assert_eq!(access_as(u, g, &f, libc::W_OK), 0, "owner W_OK");
    // Group bits.
    std::os::unix::fs::chown(&f, Some(0), Some(g)).unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o460)).unwrap();
    assert_eq!(
        access_as(u, g, &f, libc::W_OK),
        0,
        "group W_OK via group bits"
    );
    // A directory without search permission hides its children.
    let d = m.path("private");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("inner"), b"").unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(
        access_as(u, g, &d.join("inner"), libc::F_OK),
        libc::EACCES,
        "search permission on parent"
    );
    fs::set_permissions(&d, fs::Permissions::from_mode(0o711)).unwrap();
    assert_eq!(access_as(u, g, &d.join("inner"), libc::F_OK), 0);
}

// ---------------------------------------------------------------------------------------
// fallocate, lseek, copy_file_range

/// Blocks reserved by fallocate count in st_blocks (as on ext4), and writing into the
/// reserved range, then closing, does not grow it; a truncate gives them back.
#[test]
fn writing_into_a_reserved_range_does_not_grow_st_blocks() {
    let m = Mount::new();
    let p = m.path("reserved");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    assert_eq!(
        rc(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, MIB as i64) }),
        0
    );
    let reserved = fs::metadata(&p).unwrap().blocks();
    assert!(
        reserved >= MIB / 512,
        "st_blocks {reserved} after reserving 1 MiB"
    );
    f.write_all_at(&[7u8; 65536], 4096).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let after = fs::metadata(&p).unwrap().blocks();
    assert_eq!(
        after, reserved,
        "writing into the reserved range grew st_blocks"
    );
    assert_eq!(fs::metadata(&p).unwrap().len(), MIB);
    // Truncated down: the reservation beyond the new end is gone.
    let g = OpenOptions::new().write(true).open(&p).unwrap();
    g.set_len(8192).unwrap();
    g.sync_all().unwrap(); // commits now, not at the release after the close
    drop(g);
    // The kernel may show the blocks it was told while the file was open for up to
    // its attribute timeout (1 s for a file being written): ask until it asks us.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut cut = fs::metadata(&p).unwrap().blocks();
    while cut >= reserved / 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        cut = fs::metadata(&p).unwrap().blocks();
    }
    assert!(
        cut < reserved / 4,
        "st_blocks {cut} after truncating to 8 KiB"
    );
}

#[test]
fn fallocate_extends() {
    let m = Mount::new();
    let p = m.path("f");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    let fd = f.as_raw_fd();
    assert_eq!(
        rc(unsafe { libc::fallocate(fd, 0, 0, MIB as i64) }),
        0,
        "fallocate mode 0"
    );
    assert_eq!(f.metadata().unwrap().len(), MIB);
    assert_eq!(fs::metadata(&p).unwrap().len(), MIB);
    assert_eq!(
        pread_exact(&f, 0, MIB as usize + 10),
        vec![0u8; MIB as usize]
    );
    f.write_all_at(b"abc", 100).unwrap();
    // A range inside the file never shrinks it or changes data.
    assert_eq!(rc(unsafe { libc::fallocate(fd, 0, 0, 10) }), 0);
    assert_eq!(f.metadata().unwrap().len(), MIB);
    // Beyond EOF, across a chunk boundary.
    assert_eq!(
        rc(unsafe { libc::fallocate(fd, 0, (5 * MIB) as i64, MIB as i64) }),
        0
    );
    assert_eq!(f.metadata().unwrap().len(), 6 * MIB);
    // KEEP_SIZE: either supported (size unchanged) or refused with EOPNOTSUPP.
    let r =
        rc(unsafe { libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, (6 * MIB) as i64, MIB as i64) });
    assert!(r == 0 || r == libc::EOPNOTSUPP, "KEEP_SIZE: {}", ename(r));
    assert_eq!(
        f.metadata().unwrap().len(),
        6 * MIB,
        "KEEP_SIZE must not change the size"
    );
    // PUNCH_HOLE: if supported it must zero the range.
    f.write_all_at(&[0xAB; 4096], 2 * MIB).unwrap();
    let r = rc(unsafe {
        libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            (2 * MIB + 1024) as i64,
            1024,
        )
    });
    assert!(r == 0 || r == libc::EOPNOTSUPP, "PUNCH_HOLE: {}", ename(r));
    drop(f);
    let mut want = vec![0u8; (6 * MIB) as usize];
    want[100..103].copy_from_slice(b"abc");
    want[(2 * MIB) as usize..(2 * MIB + 4096) as usize].fill(0xAB);
    if r == 0 {
        want[(2 * MIB + 1024) as usize..(2 * MIB + 2048) as usize].fill(0);
    }
    assert_bytes_eq(
        &fs::read(&p).unwrap(),
        &want,
        "content after fallocate calls",
    );
    m.remount();
    assert_bytes_eq(&fs::read(&p).unwrap(), &want, "after remount");
}

fn lseek(f: &File, off: u64, whence: i32) -> Result<u64, i32> {
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as i64, whence) };
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(r as u64)
    }
}

#[test]
fn lseek_data_and_hole() {
    let m = Mount::new();
    let p = m.path("sparse");
    // Data only in chunk 2 (8 MiB .. 8 MiB + 64 KiB); chunks 0 and 1 are holes.
    let data_off = 2 * CHUNK;
    let data = pattern(3, data_off, 64 * 1024);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all_at(&data, data_off).unwrap();
    let size = data_off + data.len() as u64;
    assert_eq!(f.metadata().unwrap().len(), size);

    for f in [f, {
        // and again on a fresh handle after the content is committed
        File::open(&p).unwrap()
    }] {
        let d0 = lseek(&f, 0, libc::SEEK_DATA).expect("SEEK_DATA from 0");
        assert!(
            d0 <= data_off,
            "SEEK_DATA from 0 returned {d0}, beyond the data at {data_off}"
        );
        assert_eq!(
            lseek(&f, data_off, libc::SEEK_DATA),
            Ok(data_off),
            "SEEK_DATA at the data"
        );
        assert_eq!(
            lseek(&f, data_off + 100, libc::SEEK_DATA),
            Ok(data_off + 100),
            "SEEK_DATA inside the data"
        );
        let h = lseek(&f, data_off, libc::SEEK_HOLE).expect("SEEK_HOLE from the data");
        assert_eq!(h, size, "the only hole after the data is at EOF");
        let h0 = lseek(&f, 0, libc::SEEK_HOLE).expect("SEEK_HOLE from 0");
        assert!(
            h0 <= size,
            "SEEK_HOLE from 0 returned {h0}, past EOF {size}"
        );
        assert_eq!(
            lseek(&f, size, libc::SEEK_DATA),
            Err(libc::ENXIO),
            "SEEK_DATA at EOF"
        );
        assert_eq!(
            lseek(&f, size + 5, libc::SEEK_HOLE),
            Err(libc::ENXIO),
            "SEEK_HOLE past EOF"
        );
        // The data read back where SEEK_DATA says.
        assert_eq!(pread_exact(&f, data_off, data.len()), data);
        assert_eq!(pread_exact(&f, 0, 4096), vec![0u8; 4096]);
    }
}

/// Inside a chunk that holds some data, SEEK_DATA and SEEK_HOLE answer at 4 KiB block
/// granularity, as ext4 does: from a hole, SEEK_DATA finds the data's own block, not
/// the start of its chunk; from the data, SEEK_HOLE finds the block after it.
#[test]
fn lseek_answers_at_block_granularity_inside_a_chunk() {
    let m = Mount::new();
    let p = m.path("sparse-in-chunk");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    // Data at 1 MiB + 4 KiB .. + 8 KiB, and at 2 MiB .. + 100 bytes; size 3 MiB.
    let (a, b) = (1024 * 1024 + 4096, 2 * 1024 * 1024);
    f.write_all_at(&pattern(5, a, 8192), a).unwrap();
    f.write_all_at(&pattern(6, b, 100), b).unwrap();
    f.set_len(3 * 1024 * 1024).unwrap();
    let size = 3 * 1024 * 1024;
    for f in [f, File::open(&p).unwrap()] {
        assert_eq!(lseek(&f, 0, libc::SEEK_DATA), Ok(a), "SEEK_DATA from 0");
        assert_eq!(lseek(&f, 0, libc::SEEK_HOLE), Ok(0), "SEEK_HOLE from 0");
        assert_eq!(lseek(&f, a + 10, libc::SEEK_DATA), Ok(a + 10));
        assert_eq!(
            lseek(&f, a, libc::SEEK_HOLE),
            Ok(a + 8192),
            "the hole after the data"
        );
        assert_eq!(lseek(&f, a + 8192, libc::SEEK_DATA), Ok(b), "the next data");
        assert_eq!(
            lseek(&f, b + 50, libc::SEEK_HOLE),
            Ok(b + 4096),
            "the rest of b's block is data"
        );
        assert_eq!(
            lseek(&f, b + 4096, libc::SEEK_DATA),
            Err(libc::ENXIO),
            "no data after b"
        );
        assert_eq!(lseek(&f, b + 4096, libc::SEEK_HOLE), Ok(b + 4096));
        assert_eq!(f.metadata().unwrap().len(), size);
    }
}

#[test]
fn copy_file_range_copies_exactly() {
    let m = Mount::new();
    let src = m.path("src");
    let dst = m.path("dst");
    let sdata = pattern(4, 0, (5 * MIB + 123) as usize);
    fs::write(&src, &sdata).unwrap();
    fs::write(&dst, vec![0xAAu8; MIB as usize]).unwrap();

    let copy = |from: &Path, to: &Path, mut off_in: i64, mut off_out: i64, mut len: usize| {
        let fi = File::open(from).unwrap();
        let fo = OpenOptions::new().write(true).open(to).unwrap();
        while len > 0 {
            let n = unsafe {
                libc::copy_file_range(
                    fi.as_raw_fd(),
                    &mut off_in,
                    fo.as_raw_fd(),
                    &mut off_out,
                    len,
                    0,
                )
            };
            assert!(n >= 0, "copy_file_range: {}", ename(last_errno()));
            if n == 0 {
                break;
            }
            len -= n as usize;
        }
        assert_eq!(len, 0, "copy_file_range stopped early");
    };
    let (off_in, off_out, len) = (1234usize, 777usize, (3 * MIB + 7) as usize);
    copy(&src, &dst, off_in as i64, off_out as i64, len);
    let mut want = vec![0xAAu8; MIB as usize];
    want.truncate(off_out);
    want.extend_from_slice(&sdata[off_in..off_in + len]);
    assert_bytes_eq(
        &fs::read(&dst).unwrap(),
        &want,
        "copy_file_range into existing file",
    );

    // Whole-file copy to a new file (what `cp --reflink=auto` style tools do).
    let whole = m.path("whole");
    File::create(&whole).unwrap();
    copy(&src, &whole, 0, 0, sdata.len());
    assert_bytes_eq(&fs::read(&whole).unwrap(), &sdata, "whole-file copy");
    // The source is unchanged.
    assert_bytes_eq(&fs::read(&src).unwrap(), &sdata, "source after copies");
    m.remount();
    assert_bytes_eq(&fs::read(&dst).unwrap(), &want, "dst after remount");
    assert_bytes_eq(&fs::read(&whole).unwrap(), &sdata, "whole after remount");
}

// ---------------------------------------------------------------------------------------
// large and sparse content

#[test]
fn sparse_one_tib_file() {
    let m = Mount::new();
    let p = m.path("huge");
    fs::write(&p, b"head").unwrap();
    m.remount();
    let skip = ["index", "decofs.log"];
    let before = disk_usage(&m.store, &skip);
    let full_before = disk_usage(&m.store, &[]);

    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.set_len(1 << 40).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 1 << 40);
    f.sync_all().unwrap();
    drop(f);
    m.remount();

    let after = disk_usage(&m.store, &skip);
    let full_after = disk_usage(&m.store, &[]);
    eprintln!(
        "store usage without index/log: {before} -> {after} bytes; with index/log: {full_before} -> {full_after}"
    );
    assert!(
        after < before + MIB,
        "store grew by {} bytes for a sparse 1 TiB truncate",
        after.saturating_sub(before)
    );

    let md = fs::metadata(&p).unwrap();
    assert_eq!(md.len(), 1 << 40);
    assert!(
        md.blocks() * 512 < MIB,
        "st_blocks of a sparse file should be tiny, is {} bytes",
        md.blocks() * 512
    );
    let f = File::open(&p).unwrap();
    assert_eq!(pread_exact(&f, 0, 8), b"head\0\0\0\0");
    for off in [4096u64, CHUNK - 2, 1 << 39, (1 << 40) - 4096, (1 << 40) - 1] {
        let got = pread_exact(&f, off, 4096);
        let want_len = (4096).min((1u64 << 40) - off) as usize;
        assert_eq!(got.len(), want_len, "read length at {off}");
        assert!(
            got.iter().all(|b| *b == 0),
            "non-zero bytes in the hole at {off}"
        );
    }
    assert_eq!(pread_exact(&f, 1 << 40, 10).len(), 0, "read at EOF");
    drop(f);

    // A write at the very end keeps the size and reads back.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"end", (1 << 40) - 3).unwrap();
    drop(f);
    assert_eq!(fs::metadata(&p).unwrap().len(), 1 << 40);
    let f = File::open(&p).unwrap();
    assert_eq!(pread_exact(&f, (1 << 40) - 5, 10), b"\0\0end");
}

#[test]
fn large_file_across_chunks() {
    let m = Mount::new();
    let p = m.path("big");
    let size = 20 * MIB as usize + 12345;
    let data = pattern(5, 0, size);
    {
        let mut f = File::create(&p).unwrap();
        // Odd write sizes so writes straddle chunk boundaries.
        let mut off = 0;
        let sizes = [MIB as usize, 777_777, 4096, 3 * MIB as usize + 1, 65_536];
        let mut k = 0;
        while off < size {
            let n = sizes[k % sizes.len()].min(size - off);
            f.write_all(&data[off..off + n]).unwrap();
            off += n;
            k += 1;
        }
        f.sync_all().unwrap();
    }
    assert_eq!(fs::metadata(&p).unwrap().len(), size as u64);
    let check = |what: &str| {
        let got = fs::read(&p).unwrap();
        assert_bytes_eq(&got, &data, what);
        let f = File::open(&p).unwrap();
        for b in 1..=5u64 {
            let edge = b * CHUNK;
            for (start, len) in [
                (edge - 1, 2usize),
                (edge - 4096, 8192),
                (edge, 1),
                (edge - 1, 1),
                (edge - 3, 7),
            ] {
                let want = &data[start as usize..(start as usize + len).min(size)];
                assert_eq!(
                    pread_exact(&f, start, len),
                    want,
                    "{what}: pread at {start}+{len}"
                );
            }
        }
    };
    check("first read");

    // Overwrite a range straddling the 8 MiB boundary.
    let mut data = data;
    let over = pattern(6, 0, 2000);
    let at = (2 * CHUNK - 1000) as usize;
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .write_all_at(&over, at as u64)
        .unwrap();
    data[at..at + 2000].copy_from_slice(&over);
    let check2 = |what: &str| assert_bytes_eq(&fs::read(&p).unwrap(), &data, what);
    check2("after straddling overwrite");
    m.remount();
    check2("after remount");
}

#[test]
fn holes_spanning_chunks() {
    let m = Mount::new();
    let p = m.path("holey");
    let size = 18 * MIB as usize;
    let mut want = vec![0u8; size];
    let pieces: [(usize, usize); 4] = [
        (MIB as usize, 100),          // inside chunk 0
        (CHUNK as usize - 10, 20),    // straddles chunk 0/1
        (13 * MIB as usize + 5, 100), // inside chunk 3, after a 2-chunk hole
        (size - 1, 1),                // last byte
    ];
    {
        let f = File::create(&p).unwrap();
        for (i, (off, len)) in pieces.iter().enumerate() {
            let d = pattern(10 + i as u64, *off as u64, *len);
            f.write_all_at(&d, *off as u64).unwrap();
            want[*off..off + len].copy_from_slice(&d);
        }
    }
    assert_eq!(fs::metadata(&p).unwrap().len(), size as u64);
    assert_bytes_eq(&fs::read(&p).unwrap(), &want, "holes spanning chunks");
    // A hole left by truncation in the middle of existing data, then re-extended.
    {
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(13 * MIB + 50).unwrap();
        f.set_len(size as u64).unwrap();
    }
    want[(13 * MIB + 50) as usize..].fill(0);
    assert_bytes_eq(
        &fs::read(&p).unwrap(),
        &want,
        "after truncate inside chunk 3 and re-extend",
    );
    m.remount();
    assert_bytes_eq(&fs::read(&p).unwrap(), &want, "after remount");
    let f = File::open(&p).unwrap();
    assert_eq!(
        pread_exact(&f, 6 * MIB, 4096),
        vec![0u8; 4096],
        "middle of the 2-chunk hole"
    );
}

#[test]
fn directory_with_100k_entries() {
    let m = Mount::new();
    let d = m.path("big");
    fs::create_dir(&d).unwrap();
    const N: usize = 100_000;
    for i in 0..N {
        let p = d.join(format!("f{i:06}"));
        if let Err(e) = OpenOptions::new().write(true).create_new(true).open(&p) {
            panic!("create {} failed: {e}", p.display());
        }
    }
    let count = |what: &str| {
        let names = names_in(&d);
        assert_eq!(names.len(), N, "{what}: readdir count");
        for (i, n) in names.iter().enumerate() {
            assert_eq!(n, OsStr::new(&format!("f{i:06}")), "{what}: entry {i}");
        }
    };
    count("before remount");
    m.remount();
    count("after remount");
    for i in [0usize, 1, 50_000, 99_999] {
        assert!(fs::metadata(d.join(format!("f{i:06}"))).unwrap().is_file());
    }
    fs::remove_file(d.join("f050000")).unwrap();
    assert_eq!(fs::read_dir(&d).unwrap().count(), N - 1);
}

// ---------------------------------------------------------------------------------------
// identity and lifetime

#[test]
fn inode_numbers_stable_across_remount() {
    let m = Mount::new();
    fs::create_dir_all(m.path("a/b/c")).unwrap();
    let paths = ["a", "a/b", "a/b/c", "f1", "a/f2", "a/b/c/f3"];
    for p in &paths[3..] {
        fs::write(m.path(p), p.as_bytes()).unwrap();
    }
    std::os::unix::fs::symlink("f1", m.path("link")).unwrap();
    fs::hard_link(m.path("f1"), m.path("a/b/f1-hard")).unwrap();
    let ino = |p: &str| fs::symlink_metadata(m.path(p)).unwrap().ino();
    let mut all: Vec<&str> = paths.to_vec();
    all.extend(["link", "a/b/f1-hard"]);
    let before: Vec<u64> = all.iter().map(|p| ino(p)).collect();
    let distinct: BTreeSet<u64> = before.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        all.len() - 1,
        "distinct nodes must have distinct st_ino: {before:?}"
    );
    assert_eq!(ino("f1"), ino("a/b/f1-hard"));
    // Renames keep the number too.
    fs::rename(m.path("a/f2"), m.path("f2-moved")).unwrap();
    m.remount();
    let mut after: Vec<u64> = Vec::new();
    for p in &all {
        let p = if *p == "a/f2" { "f2-moved" } else { p };
        after.push(ino(p));
    }
    assert_eq!(before, after, "st_ino changed across remount ({all:?})");
    m.remount();
    assert_eq!(ino("f2-moved"), before[4]);
}

#[test]
fn unlinked_open_file_stays_usable() {
    let m = Mount::new();
    let p = m.path("tmpfile");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all(b"hello").unwrap();
    let ino = f.metadata().unwrap().ino();
    fs::remove_file(&p).unwrap();
    assert_errno(fs::metadata(&p), libc::ENOENT, "name gone after unlink");
    assert!(!names_in(&m.mnt).contains(OsStr::new("tmpfile")));

    assert_eq!(pread_exact(&f, 0, 100), b"hello", "read after unlink");
    f.write_all(b" world").unwrap();
    f.write_all_at(&pattern(7, 0, 5 * MIB as usize), 11)
        .unwrap();
    let md = f.metadata().unwrap();
    assert_eq!(md.nlink(), 0, "fstat nlink of an unlinked file");
    assert_eq!(md.ino(), ino);
    assert_eq!(md.len(), 11 + 5 * MIB);
    assert_eq!(pread_exact(&f, 0, 11), b"hello world");
    assert_bytes_eq(
        &pread_exact(&f, 11, 5 * MIB as usize),
        &pattern(7, 0, 5 * MIB as usize),
        "big write after unlink",
    );
    f.set_len(3).unwrap();
    assert_eq!(pread_exact(&f, 0, 100), b"hel");
    f.sync_all().unwrap();
    // A second handle via /proc/self/fd still reaches it.
    let again = File::open(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap();
    assert_eq!(pread_exact(&again, 0, 100), b"hel");
    drop(again);
    // A new file with the same name is a different file.
    fs::write(&p, b"new").unwrap();
    assert_ne!(fs::metadata(&p).unwrap().ino(), ino);
    assert_eq!(pread_exact(&f, 0, 100), b"hel");
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"new");
}

#[test]
fn mmap_shared_write_and_read() {
    let m = Mount::new();
    let p = m.path("mapped");
    let len = 3 * 4096 + 100;
    fs::write(&p, vec![b'x'; len]).unwrap();
    let want = pattern(8, 0, len);
    unsafe {
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(
            addr,
            libc::MAP_FAILED,
            "mmap MAP_SHARED: {}",
            ename(last_errno())
        );
        let s = std::slice::from_raw_parts_mut(addr as *mut u8, len);
        assert!(
            s.iter().all(|b| *b == b'x'),
            "mapping shows the file content"
        );
        s.copy_from_slice(&want);
        assert_eq!(rc(libc::msync(addr, len, libc::MS_SYNC)), 0, "msync");
        assert_eq!(rc(libc::munmap(addr, len)), 0, "munmap");
        drop(f);
    }
    let mut got = Vec::new();
    File::open(&p).unwrap().read_to_end(&mut got).unwrap();
    assert_bytes_eq(&got, &want, "read(2) after msync/munmap");
    // A private read-only mapping of the committed content.
    unsafe {
        let f = File::open(&p).unwrap();
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(addr, libc::MAP_FAILED);
        assert_bytes_eq(
            std::slice::from_raw_parts(addr as *const u8, len),
            &want,
            "MAP_PRIVATE read",
        );
        libc::munmap(addr, len);
    }
    m.remount();
    assert_bytes_eq(&fs::read(&p).unwrap(), &want, "after remount");
}

// ---------------------------------------------------------------------------------------
// the status xattr (invariant 9)

#[test]
fn status_xattr_pending_while_writing() {
    let m = Mount::new();
    let p = m.path("s");
    fs::write(&p, b"committed").unwrap();
    wait_status(&p, "consistent").unwrap();

    let mut w = OpenOptions::new().write(true).open(&p).unwrap();
    w.write_all(b"more").unwrap();
    assert_eq!(
        getxattr(&p, "user.decofs.status").map(|v| String::from_utf8_lossy(&v).into_owned()),
        Ok("pending".to_string()),
        "status while a write handle is open"
    );
    // fsync does not end the session: still pending while the handle stays open.
    w.sync_all().unwrap();
    assert_eq!(
        getxattr(&p, "user.decofs.status"),
        Ok(b"pending".to_vec()),
        "status after fsync, handle open"
    );
    drop(w);
    wait_status(&p, "consistent").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"moreitted");

    // A read-only handle is not a write session.
    let r = File::open(&p).unwrap();
    assert_eq!(
        getxattr(&p, "user.decofs.status"),
        Ok(b"consistent".to_vec()),
        "read-only open"
    );
    drop(r);
    // A directory is consistent.
    fs::create_dir(m.path("d")).unwrap();
    assert_eq!(
        getxattr(&m.path("d"), "user.decofs.status"),
        Ok(b"consistent".to_vec()),
        "directory status"
    );
    m.remount();
    assert_eq!(
        getxattr(&p, "user.decofs.status"),
        Ok(b"consistent".to_vec()),
        "after remount"
    );
}

// ---------------------------------------------------------------------------------------
// verified content (invariant 5), seen through the mount

#[test]
fn corrupted_chunk_reads_eio_never_wrong_bytes() {
    let m = Mount::new();
    let p = m.path("victim");
    let data = pattern(9, 0, 2 * MIB as usize);
    fs::write(&p, &data).unwrap();
    m.unmount();
    // Flip one byte in the middle of every large blob (the file's only chunk).
    let mut flipped = 0;
    for shard in fs::read_dir(m.store.join("blobs")).unwrap() {
        for b in fs::read_dir(shard.unwrap().path()).unwrap() {
            let b = b.unwrap().path();
            let len = fs::metadata(&b).unwrap().len();
            if len >= MIB {
                let f = OpenOptions::new().read(true).write(true).open(&b).unwrap();
                let mut one = [0u8; 1];
                f.read_exact_at(&mut one, len / 2).unwrap();
                f.write_all_at(&[one[0] ^ 0x5a], len / 2).unwrap();
                flipped += 1;
            }
        }
    }
    assert!(
        flipped >= 1,
        "no chunk blob of at least 1 MiB found under STORE/blobs"
    );
    m.mount();
    let f = File::open(&p).unwrap();
    let mut buf = vec![0u8; 4096];
    let r = f.read_at(&mut buf, MIB);
    match r {
        Ok(n) => panic!("read of a corrupted chunk returned {n} bytes instead of EIO (bytes equal to the original: {})", buf[..n] == data[MIB as usize..MIB as usize + n]),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "read of a corrupted chunk: {e}"),
    }
    let r = fs::read(&p);
    assert_errno(r, libc::EIO, "whole-file read of a corrupted file");
    drop(f);
    assert_eq!(
        getxattr(&p, "user.decofs.status").map(|v| String::from_utf8_lossy(&v).into_owned()),
        Ok("integrity_error".to_string()),
        "status after a failed verification"
    );
    // Other files are unaffected.
    fs::write(m.path("fine"), b"fine").unwrap();
    assert_eq!(fs::read(m.path("fine")).unwrap(), b"fine");
}

// ---------------------------------------------------------------------------------------
// what real programs do: rm -rf, databases, editors

#[test]
fn readdir_while_unlinking_skips_nothing() {
    // `rm -rf` reads a batch of entries, unlinks them, reads on. Entries that were never
    // removed must each be returned; a cookie-based readdir that shifts after an unlink
    // skips some, and `rm -rf` then fails with "Directory not empty".
    let m = Mount::new();
    let d = m.path("many");
    fs::create_dir(&d).unwrap();
    const N: usize = 5000;
    for i in 0..N {
        fs::write(d.join(format!("e{i:05}")), b"").unwrap();
    }
    let c = cpath(&d);
    let mut removed = 0;
    unsafe {
        let dir = libc::opendir(c.as_ptr());
        assert!(!dir.is_null());
        loop {
            *libc::__errno_location() = 0;
            let e = libc::readdir(dir);
            if e.is_null() {
                assert_eq!(last_errno(), 0, "readdir error");
                break;
            }
            let name = std::ffi::CStr::from_ptr((*e).d_name.as_ptr())
                .to_bytes()
                .to_vec();
            if name == b"." || name == b".." {
                continue;
            }
            let p = d.join(OsStr::from_bytes(&name));
            fs::remove_file(&p).unwrap_or_else(|e| panic!("unlink {}: {e}", p.display()));
            removed += 1;
        }
        libc::closedir(dir);
    }
    let left = names_in(&d);
    assert!(
        left.is_empty(),
        "{} entries were skipped by readdir while unlinking (removed {removed}): first {:?}",
        left.len(),
        left.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(removed, N);
    fs::remove_dir(&d).unwrap();

    // And the std way.
    fs::create_dir(&d).unwrap();
    for i in 0..2000 {
        fs::write(d.join(format!("x{i:05}")), b"x").unwrap();
    }
    fs::create_dir_all(d.join("sub/deeper")).unwrap();
    fs::remove_dir_all(&d).unwrap();
    assert!(!d.exists());
}

#[test]
fn rename_over_open_file_keeps_the_handle() {
    let m = Mount::new();
    fs::write(m.path("old"), b"old content").unwrap();
    fs::write(m.path("new"), b"new content").unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("old"))
        .unwrap();
    // The editor pattern: write a new file, rename it over the original.
    fs::rename(m.path("new"), m.path("old")).unwrap();
    assert_eq!(fs::read(m.path("old")).unwrap(), b"new content");
    assert_eq!(
        pread_exact(&f, 0, 100),
        b"old content",
        "the displaced file stays readable through its handle"
    );
    f.write_all_at(b"OLD", 0).unwrap();
    assert_eq!(pread_exact(&f, 0, 100), b"OLD content");
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    drop(f);
    assert_eq!(
        fs::read(m.path("old")).unwrap(),
        b"new content",
        "writes to the displaced file don't reach the new one"
    );
    m.remount();
    assert_eq!(fs::read(m.path("old")).unwrap(), b"new content");
}

#[test]
fn o_direct_and_fsync_of_directories() {
    let m = Mount::new();
    let p = m.path("direct");
    // 4 KiB-aligned buffer for O_DIRECT.
    let layout = std::alloc::Layout::from_size_align(64 * 1024, 4096).unwrap();
    let want = pattern(11, 0, 64 * 1024);
    unsafe {
        let buf = std::alloc::alloc(layout);
        std::ptr::copy_nonoverlapping(want.as_ptr(), buf, want.len());
        let c = cpath(&p);
        let fd = libc::open(
            c.as_ptr(),
            libc::O_CREAT | libc::O_RDWR | libc::O_DIRECT,
            0o644,
        );
        assert!(fd >= 0, "open O_DIRECT: {}", ename(last_errno()));
        let n = libc::pwrite(fd, buf as *const _, want.len(), 4096);
        assert_eq!(
            n,
            want.len() as isize,
            "O_DIRECT pwrite: {}",
            ename(last_errno())
        );
        std::ptr::write_bytes(buf, 0, want.len());
        let n = libc::pread(fd, buf as *mut _, want.len(), 4096);
        assert_eq!(
            n,
            want.len() as isize,
            "O_DIRECT pread: {}",
            ename(last_errno())
        );
        assert_bytes_eq(
            std::slice::from_raw_parts(buf, want.len()),
            &want,
            "O_DIRECT read back",
        );
        assert_eq!(libc::fsync(fd), 0);
        libc::close(fd);
        std::alloc::dealloc(buf, layout);
    }
    let mut expect = vec![0u8; 4096];
    expect.extend_from_slice(&want);
    assert_bytes_eq(
        &fs::read(&p).unwrap(),
        &expect,
        "buffered read after O_DIRECT write",
    );

    // fsync of a directory (what sqlite and rename-based savers do).
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/f"), b"x").unwrap();
    File::open(m.path("d"))
        .unwrap()
        .sync_all()
        .expect("fsync of a directory");
    File::open(&m.mnt)
        .unwrap()
        .sync_all()
        .expect("fsync of the root directory");
}

#[test]
fn moved_directory_keeps_children_and_parent_link() {
    let m = Mount::new();
    fs::create_dir_all(m.path("a/d/sub")).unwrap();
    fs::write(m.path("a/d/sub/f"), b"deep").unwrap();
    fs::create_dir(m.path("b")).unwrap();
    let ino_d = fs::metadata(m.path("a/d")).unwrap().ino();
    fs::rename(m.path("a/d"), m.path("b/d")).unwrap();
    assert_eq!(fs::metadata(m.path("b/d")).unwrap().ino(), ino_d);
    assert_eq!(fs::read(m.path("b/d/sub/f")).unwrap(), b"deep");
    assert_eq!(
        fs::metadata(m.path("b/d/..")).unwrap().ino(),
        fs::metadata(m.path("b")).unwrap().ino()
    );
    assert_eq!(
        fs::metadata(m.path("a")).unwrap().nlink(),
        2,
        "old parent nlink after the move"
    );
    assert_eq!(
        fs::metadata(m.path("b")).unwrap().nlink(),
        3,
        "new parent nlink after the move"
    );
    m.remount();
    assert_eq!(fs::read(m.path("b/d/sub/f")).unwrap(), b"deep");
    assert_eq!(
        fs::metadata(m.path("b/d/..")).unwrap().ino(),
        fs::metadata(m.path("b")).unwrap().ino()
    );
    assert!(names_in(&m.path("a")).is_empty());
}

/// pjdfstest cannot run its LINK_MAX test on FUSE (glibc's pathconf does not know the
/// limit of a FUSE filesystem), so it is checked here: 65,000 links like ext4, then EMLINK.
#[test]
fn link_count_max_is_ext4s() {
    let m = Mount::new();
    let f = m.path("f");
    std::fs::write(&f, b"x").unwrap();
    std::fs::create_dir(m.path("links")).unwrap();
    for i in 1..65_000u32 {
        std::fs::hard_link(&f, m.path(&format!("links/{i}"))).unwrap();
    }
    assert_eq!(std::fs::metadata(&f).unwrap().nlink(), 65_000);
    assert_errno(
        std::fs::hard_link(&f, m.path("links/one-too-many")),
        libc::EMLINK,
        "link past LINK_MAX",
    );
}

/// ioctl on a file is refused as on a disk file: isatty() is false with ENOTTY (not
/// ENOSYS), and the daemon does not log it.
#[test]
fn ioctl_is_not_a_tty() {
    let m = Mount::new();
    fs::write(m.path("f"), b"x").unwrap();
    let f = File::open(m.path("f")).unwrap();
    for _ in 0..3 {
        assert_eq!(unsafe { libc::isatty(f.as_raw_fd()) }, 0);
        assert_eq!(last_errno(), libc::ENOTTY, "isatty on a decofs file");
    }
    drop(f);
    let log = fs::read_to_string(m.store.join("decofs.log")).unwrap_or_default();
    assert!(
        !log.contains("Not Implemented"),
        "the daemon logged an unimplemented request:\n{log}"
    );
}
