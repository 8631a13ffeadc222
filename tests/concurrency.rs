//! Concurrent use of one mount: writers sharing a file (invariant 4), racing creates
//! (invariant 3, no orphan nodes), readers and writers side by side.
//!
//! Seeds are fixed and printed; `DECOFS_SEED` overrides them.
// Tests call libc directly on descriptors and buffers they own; the SAFETY comments
// the lint asks for are kept for the daemon's code.
#![allow(clippy::undocumented_unsafe_blocks)]

mod common;

use std::collections::{BTreeSet, HashSet};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use common::{assert_bytes_eq, pattern, Mount};

const MIB: u64 = 1 << 20;

fn seed(default: u64) -> u64 {
    let s = std::env::var("DECOFS_SEED").ok().and_then(|s| {
        let s = s.trim().to_string();
        match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => s.parse().ok(),
        }
    });
    let s = s.unwrap_or(default);
    eprintln!("seed {s:#x} (DECOFS_SEED to override)");
    s
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

// ---------------------------------------------------------------------------------------
// (a) many handles writing one file

/// Each thread opens its own handle and writes the ranges `ranges(t)` in small pwrites.
fn shared_file_writers(stripe: u64, what: &str, seed: u64) {
    const THREADS: u64 = 8;
    const TOTAL: u64 = THREADS * MIB;
    let m = Mount::new();
    let p = m.path("shared");
    File::create(&p).unwrap();
    let barrier = Arc::new(Barrier::new(THREADS as usize));
    let mut hs = Vec::new();
    for t in 0..THREADS {
        let (p, barrier) = (p.clone(), barrier.clone());
        hs.push(thread::spawn(move || {
            let mut rng = fastrand::Rng::with_seed(seed ^ t);
            let f = OpenOptions::new().write(true).open(&p).unwrap();
            // The stripes this thread owns, written in random order.
            let mut stripes: Vec<u64> = (0..TOTAL / stripe).filter(|s| s % THREADS == t).collect();
            rng.shuffle(&mut stripes);
            barrier.wait();
            for s in stripes {
                let (start, end) = (s * stripe, (s + 1) * stripe);
                let mut off = start;
                while off < end {
                    let n = rng.u64(512..=16 * 1024).min(end - off);
                    f.write_all_at(&pattern(seed, off, n as usize), off)
                        .unwrap();
                    off += n;
                }
            }
            if t % 2 == 0 {
                f.sync_all().unwrap();
            }
        }));
    }
    for h in hs {
        h.join().unwrap();
    }
    let want = pattern(seed, 0, TOTAL as usize);
    assert_eq!(fs::metadata(&p).unwrap().len(), TOTAL, "{what}: size");
    assert_bytes_eq(
        &fs::read(&p).unwrap(),
        &want,
        &format!("{what}: content after all handles closed"),
    );
    m.remount();
    assert_bytes_eq(
        &fs::read(&p).unwrap(),
        &want,
        &format!("{what}: content after remount"),
    );
}

#[test]
fn writers_disjoint_megabytes() {
    // Thread t owns [t MiB, (t+1) MiB).
    shared_file_writers(MIB, "disjoint 1 MiB ranges", seed(0xc0c0_0001));
}

#[test]
fn writers_interleaved_stripes() {
    // 64 KiB stripes round-robin between threads: every chunk is written by all threads.
    shared_file_writers(64 * 1024, "interleaved 64 KiB stripes", seed(0xc0c0_0002));
}

#[test]
fn appenders_do_not_interleave_records() {
    const THREADS: usize = 8;
    const RECORDS: usize = 200;
    const REC: usize = 100;
    let m = Mount::new();
    let p = m.path("log");
    File::create(&p).unwrap();
    let barrier = Arc::new(Barrier::new(THREADS));
    let hs: Vec<_> = (0..THREADS)
        .map(|t| {
            let (p, barrier) = (p.clone(), barrier.clone());
            thread::spawn(move || {
                let mut f = OpenOptions::new().append(true).open(&p).unwrap();
                barrier.wait();
                for r in 0..RECORDS {
                    let mut rec = format!("t{t:02} r{r:05} ").into_bytes();
                    rec.resize(REC - 1, b'a' + t as u8);
                    rec.push(b'\n');
                    f.write_all(&rec).unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let data = fs::read(&p).unwrap();
    assert_eq!(
        data.len(),
        THREADS * RECORDS * REC,
        "total size of appended records"
    );
    let mut seen = HashSet::new();
    for (k, rec) in data.chunks(REC).enumerate() {
        let s = String::from_utf8_lossy(rec);
        let t: usize = s
            .get(1..3)
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("record {k} mangled: {s:?}"));
        let r: usize = s
            .get(5..10)
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("record {k} mangled: {s:?}"));
        let mut want = format!("t{t:02} r{r:05} ").into_bytes();
        want.resize(REC - 1, b'a' + t as u8);
        want.push(b'\n');
        assert_eq!(rec, &want[..], "record {k} torn");
        assert!(seen.insert((t, r)), "record t{t} r{r} twice");
    }
    assert_eq!(seen.len(), THREADS * RECORDS);
}

// ---------------------------------------------------------------------------------------
// (b) racing creates, and the store has no orphan nodes afterwards

/// Everything reachable from the mount root, as distinct inodes (root included).
fn reachable_on_mount(root: &Path) -> (usize, usize, usize) {
    fn walk(p: &Path, inos: &mut HashSet<u64>, files: &mut usize, dirs: &mut usize) {
        for e in fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            let md = fs::symlink_metadata(e.path()).unwrap();
            if inos.insert(md.ino()) {
                if md.is_dir() {
                    *dirs += 1;
                } else {
                    *files += 1;
                }
            }
            if md.is_dir() {
                walk(&e.path(), inos, files, dirs);
            }
        }
    }
    let mut inos = HashSet::new();
    inos.insert(fs::metadata(root).unwrap().ino());
    let (mut files, mut dirs) = (0, 0);
    walk(root, &mut inos, &mut files, &mut dirs);
    (inos.len(), files, dirs)
}

fn uuid_of(p: &Path) -> Option<String> {
    let n = p.file_name()?.to_str()?;
    uuid::Uuid::parse_str(n).ok().map(|u| u.to_string())
}

/// White-box walk of an unmounted store: (all nodes, trashed nodes, reachable nodes, junk).
fn store_nodes(
    store: &Path,
) -> (
    BTreeSet<String>,
    BTreeSet<String>,
    BTreeSet<String>,
    Vec<PathBuf>,
) {
    let mut all = BTreeSet::new();
    let mut junk = Vec::new();
    for a in fs::read_dir(store.join("nodes")).unwrap() {
        let a = a.unwrap().path();
        for b in fs::read_dir(&a).unwrap() {
            let b = b.unwrap().path();
            for n in fs::read_dir(&b).unwrap() {
                let n = n.unwrap().path();
                match uuid_of(&n) {
                    Some(u) => {
                        all.insert(u);
                    }
                    None => junk.push(n),
                }
            }
        }
    }
    let mut trash = BTreeSet::new();
    if let Ok(rd) = fs::read_dir(store.join("trash")) {
        for t in rd {
            let t = t.unwrap().path();
            if let Ok(target) = fs::read_link(&t) {
                if let Some(u) = uuid_of(&target) {
                    trash.insert(u);
                }
            }
        }
    }
    // From the root named in decofs.format, follow entry symlinks.
    let format = fs::read_to_string(store.join("decofs.format")).unwrap();
    let root = format
        .lines()
        .find_map(|l| l.strip_prefix("root "))
        .map(|s| s.trim().to_string())
        .expect("root line in decofs.format");
    let node_path = |u: &str| store.join("nodes").join(&u[0..2]).join(&u[2..4]).join(u);
    let mut reach = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(u) = stack.pop() {
        if !reach.insert(u.clone()) {
            continue;
        }
        let p = node_path(&u);
        if fs::symlink_metadata(&p)
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            for e in fs::read_dir(&p).unwrap() {
                let e = e.unwrap().path();
                match fs::read_link(&e).ok().and_then(|t| uuid_of(&t)) {
                    Some(child) => stack.push(child),
                    None => junk.push(e),
                }
            }
        }
    }
    (all, trash, reach, junk)
}

#[track_caller]
fn assert_no_orphans(m: &Mount, what: &str) {
    let (count, files, dirs) = reachable_on_mount(&m.mnt);
    m.unmount();
    let (all, trash, reach, junk) = store_nodes(&m.store);
    assert!(
        junk.is_empty(),
        "{what}: entries in the store that are not node files or entry symlinks: {junk:?}"
    );
    let live: BTreeSet<_> = all.difference(&trash).cloned().collect();
    let orphans: Vec<_> = live.difference(&reach).collect();
    let dangling: Vec<_> = reach.difference(&all).collect();
    eprintln!(
        "{what}: {} node files, {} in trash, {} reachable in the store; mount shows {count} (files {files}, dirs {dirs}, root 1)",
        all.len(),
        trash.len(),
        reach.len()
    );
    let both: Vec<_> = trash.intersection(&reach).collect();
    assert!(
        both.is_empty(),
        "{what}: nodes in trash that are still reachable by a name: {both:?}"
    );
    assert!(
        dangling.is_empty(),
        "{what}: entries pointing at missing nodes: {dangling:?}"
    );
    assert!(
        orphans.is_empty(),
        "{what}: {} orphan nodes (neither reachable nor in trash): {orphans:?}",
        orphans.len()
    );
    assert_eq!(
        live.len(),
        count,
        "{what}: node files minus trashed ones vs inodes reachable on the mount"
    );
    assert_eq!(
        reach.len(),
        count,
        "{what}: nodes reachable in the store vs on the mount"
    );
    common::assert_counts_exact(&m.store, what);
    m.mount();
}

fn race<F>(threads: usize, f: F) -> Vec<io::Result<()>>
where
    F: Fn(usize) -> io::Result<()> + Send + Sync + 'static,
{
    let barrier = Arc::new(Barrier::new(threads));
    let f = Arc::new(f);
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let (barrier, f) = (barrier.clone(), f.clone());
            thread::spawn(move || {
                barrier.wait();
                f(t)
            })
        })
        .collect();
    hs.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Exactly one Ok, every other result EEXIST; returns the winner.
#[track_caller]
fn one_winner(results: &[io::Result<()>], what: &str) -> usize {
    let winners: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "{what}: winners {winners:?}, results {results:?}"
    );
    for (i, r) in results.iter().enumerate() {
        if let Err(e) = r {
            assert_eq!(
                errno(e),
                libc::EEXIST,
                "{what}: thread {i} got {e} instead of EEXIST"
            );
        }
    }
    winners[0]
}

#[test]
fn racing_creates_one_winner_no_orphans() {
    const N: usize = 16;
    let m = Mount::new();
    let root = m.mnt.clone();
    for round in 0..20 {
        let dir = root.clone();
        let results = race(N, move |t| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(dir.join(format!("file{round}")))?;
            f.write_all(format!("winner {t}").as_bytes())
        });
        let w = one_winner(&results, &format!("O_CREAT|O_EXCL round {round}"));
        assert_eq!(
            fs::read_to_string(root.join(format!("file{round}"))).unwrap(),
            format!("winner {w}")
        );

        let dir = root.clone();
        let results = race(N, move |_| fs::create_dir(dir.join(format!("dir{round}"))));
        one_winner(&results, &format!("mkdir round {round}"));
        assert!(fs::metadata(root.join(format!("dir{round}")))
            .unwrap()
            .is_dir());

        let dir = root.clone();
        let results = race(N, move |t| {
            std::os::unix::fs::symlink(format!("target{t}"), dir.join(format!("sym{round}")))
        });
        let w = one_winner(&results, &format!("symlink round {round}"));
        assert_eq!(
            fs::read_link(root.join(format!("sym{round}"))).unwrap(),
            PathBuf::from(format!("target{w}"))
        );

        let dir = root.clone();
        let results = race(N, move |_| {
            fs::hard_link(
                dir.join(format!("file{round}")),
                dir.join(format!("link{round}")),
            )
        });
        one_winner(&results, &format!("link round {round}"));
        assert_eq!(
            fs::metadata(root.join(format!("file{round}")))
                .unwrap()
                .nlink(),
            2
        );

        // rename(RENAME_NOREPLACE) of N different files onto one name.
        for t in 0..N {
            fs::write(root.join(format!("tmp{round}-{t}")), format!("tmp {t}")).unwrap();
        }
        let dir = root.clone();
        let results = race(N, move |t| {
            let a =
                CString::new(dir.join(format!("tmp{round}-{t}")).as_os_str().as_bytes()).unwrap();
            let b =
                CString::new(dir.join(format!("renamed{round}")).as_os_str().as_bytes()).unwrap();
            let r = unsafe {
                libc::syscall(
                    libc::SYS_renameat2,
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    b.as_ptr(),
                    libc::RENAME_NOREPLACE,
                )
            };
            if r == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
        let w = one_winner(&results, &format!("RENAME_NOREPLACE round {round}"));
        assert_eq!(
            fs::read_to_string(root.join(format!("renamed{round}"))).unwrap(),
            format!("tmp {w}")
        );
        for t in 0..N {
            let p = root.join(format!("tmp{round}-{t}"));
            assert_eq!(p.exists(), t != w, "tmp{round}-{t} after the rename race");
            let _ = fs::remove_file(p);
        }
    }
    assert_no_orphans(&m, "after create races");
}

#[test]
fn namespace_churn_leaves_no_orphans() {
    // Threads create, rename over, link, unlink and mkdir/rmdir in one shared directory.
    const N: usize = 8;
    const OPS: usize = 300;
    let s = seed(0xc0c0_0003);
    let m = Mount::new();
    let dir = m.path("churn");
    fs::create_dir(&dir).unwrap();
    let unexpected = Arc::new(AtomicUsize::new(0));
    let hs: Vec<_> = (0..N)
        .map(|t| {
            let (dir, unexpected) = (dir.clone(), unexpected.clone());
            thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(s ^ (t as u64) << 8);
                let name = |rng: &mut fastrand::Rng| format!("n{}", rng.u8(0..12));
                for _ in 0..OPS {
                    let (a, b) = (name(&mut rng), name(&mut rng));
                    let r = match rng.u8(0..7) {
                        0 => fs::write(dir.join(&a), a.as_bytes()),
                        1 => OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(dir.join(&a))
                            .map(|_| ()),
                        2 => fs::rename(dir.join(&a), dir.join(&b)),
                        3 => fs::hard_link(dir.join(&a), dir.join(&b)),
                        4 => fs::remove_file(dir.join(&a)),
                        5 => fs::create_dir(dir.join(&a)),
                        _ => fs::remove_dir(dir.join(&a)),
                    };
                    if let Err(e) = r {
                        // Expected races and type mismatches; anything else is a bug.
                        let ok = [
                            libc::ENOENT,
                            libc::EEXIST,
                            libc::EISDIR,
                            libc::ENOTDIR,
                            libc::ENOTEMPTY,
                            libc::EPERM,
                        ];
                        if !ok.contains(&errno(&e)) {
                            eprintln!("thread {t}: unexpected error {e}");
                            unexpected.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(
        unexpected.load(Ordering::SeqCst),
        0,
        "unexpected errors during churn (see stderr)"
    );
    // Every name left is readable and has a consistent type.
    for e in fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let md = fs::symlink_metadata(e.path()).unwrap();
        assert_eq!(
            md.is_dir(),
            e.file_type().unwrap().is_dir(),
            "readdir type vs stat for {:?}",
            e.file_name()
        );
        if md.is_file() {
            fs::read(e.path()).unwrap();
        }
    }
    assert_no_orphans(&m, "after namespace churn");
}

// ---------------------------------------------------------------------------------------
// (c) readers and writers on distinct files at the same time

#[test]
fn concurrent_readers_and_writers() {
    const FILES: usize = 4;
    const SIZE: usize = 6 * MIB as usize;
    let s = seed(0xc0c0_0004);
    let m = Mount::new();
    let rpath = |i: usize| m.path(&format!("r{i}"));
    let wpath = |i: usize| m.path(&format!("w{i}"));
    for i in 0..FILES {
        fs::write(rpath(i), pattern(s + i as u64, 0, SIZE)).unwrap();
    }
    let writers_done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for i in 0..FILES {
        let (p, done) = (rpath(i), writers_done.clone());
        readers.push(thread::spawn(move || {
            let mut rng = fastrand::Rng::with_seed(s ^ 0x100 ^ i as u64);
            let want = pattern(s + i as u64, 0, SIZE);
            let mut rounds = 0;
            while rounds < 3 || !done.load(Ordering::SeqCst) {
                let mut f = File::open(&p).unwrap();
                let mut got = Vec::with_capacity(SIZE);
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = rng.usize(1..=buf.len());
                    let k = f.read(&mut buf[..n]).unwrap();
                    if k == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..k]);
                }
                assert_bytes_eq(&got, &want, &format!("reader r{i} round {rounds}"));
                // And some random preads.
                for _ in 0..20 {
                    let off = rng.usize(0..SIZE);
                    let len = rng.usize(1..=100_000).min(SIZE - off);
                    let mut b = vec![0u8; len];
                    f.read_exact_at(&mut b, off as u64).unwrap();
                    assert_bytes_eq(
                        &b,
                        &want[off..off + len],
                        &format!("reader r{i} pread at {off}"),
                    );
                }
                rounds += 1;
                if rounds > 200 {
                    break;
                }
            }
        }));
    }
    let lister = {
        let (root, done) = (m.mnt.clone(), writers_done.clone());
        thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                for e in fs::read_dir(&root).unwrap() {
                    let e = e.unwrap();
                    // A file may be seen mid-write; stat must still succeed.
                    fs::symlink_metadata(e.path()).unwrap();
                }
                thread::sleep(std::time::Duration::from_millis(5));
            }
        })
    };
    let writers: Vec<_> = (0..FILES)
        .map(|i| {
            let p = wpath(i);
            thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(s ^ 0x200 ^ i as u64);
                let data = pattern(s + 100 + i as u64, 0, SIZE);
                let mut f = File::create(&p).unwrap();
                let mut off = 0;
                while off < SIZE {
                    let n = rng.usize(1..=300 * 1024).min(SIZE - off);
                    f.write_all(&data[off..off + n]).unwrap();
                    off += n;
                    if rng.u8(0..20) == 0 {
                        f.sync_data().unwrap();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    writers_done.store(true, Ordering::SeqCst);
    for r in readers {
        r.join().unwrap();
    }
    lister.join().unwrap();
    let check = |what: &str| {
        for i in 0..FILES {
            assert_bytes_eq(
                &fs::read(wpath(i)).unwrap(),
                &pattern(s + 100 + i as u64, 0, SIZE),
                &format!("{what}: w{i}"),
            );
            assert_bytes_eq(
                &fs::read(rpath(i)).unwrap(),
                &pattern(s + i as u64, 0, SIZE),
                &format!("{what}: r{i}"),
            );
        }
    };
    check("after the run");
    m.remount();
    check("after remount");
}

#[test]
fn reader_sees_acknowledged_writes_of_another_handle() {
    // One thread appends pattern data through its handle and publishes how far it got;
    // another thread, with its own handle, reads only below that mark and must see
    // exactly those bytes (read-after-write across handles, before any close).
    const SIZE: u64 = 10 * MIB;
    let s = seed(0xc0c0_0005);
    let m = Mount::new();
    let p = m.path("growing");
    File::create(&p).unwrap();
    let mark = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (p, mark) = (p.clone(), mark.clone());
        thread::spawn(move || {
            let mut rng = fastrand::Rng::with_seed(s);
            let f = OpenOptions::new().write(true).open(&p).unwrap();
            let mut off = 0;
            while off < SIZE {
                let n = rng.u64(1..=200 * 1024).min(SIZE - off);
                f.write_all_at(&pattern(s, off, n as usize), off).unwrap();
                off += n;
                mark.store(off, Ordering::SeqCst);
            }
        })
    };
    let reader = {
        let (p, mark) = (p.clone(), mark.clone());
        thread::spawn(move || {
            let mut rng = fastrand::Rng::with_seed(s ^ 1);
            let f = File::open(&p).unwrap();
            let mut checks = 0;
            loop {
                let hi = mark.load(Ordering::SeqCst);
                if hi > 0 {
                    let off = rng.u64(0..hi);
                    let len = rng.u64(1..=128 * 1024).min(hi - off) as usize;
                    let mut b = vec![0u8; len];
                    f.read_exact_at(&mut b, off)
                        .unwrap_or_else(|e| panic!("read {off}+{len} below mark {hi}: {e}"));
                    assert_bytes_eq(
                        &b,
                        &pattern(s, off, len),
                        &format!("read {off}+{len} below mark {hi}"),
                    );
                    checks += 1;
                }
                if hi == SIZE && checks > 50 {
                    break;
                }
            }
        })
    };
    writer.join().unwrap();
    reader.join().unwrap();
    assert_bytes_eq(
        &fs::read(&p).unwrap(),
        &pattern(s, 0, SIZE as usize),
        "final content",
    );
}

// ---------------------------------------------------------------------------------------
// (d) `decofs umount` returns only when the daemon is gone

#[test]
fn umount_returns_after_the_lock_is_released() {
    // The contract: `decofs umount MNT` unmounts and waits for the daemon, so an
    // immediate `decofs mount` of the same store must not find it locked. Checked after
    // a burst of writes from several threads, which gives the daemon work at exit.
    use std::os::fd::AsRawFd;
    let m = Mount::new();
    for round in 0..10 {
        let p = m.path("f");
        let hs: Vec<_> = (0..8u64)
            .map(|t| {
                let p = p.clone();
                thread::spawn(move || {
                    let f = OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&p)
                        .unwrap();
                    for k in 0..64u64 {
                        f.write_all_at(&[t as u8; 16 * 1024], (t * 64 + k) * 16 * 1024)
                            .unwrap();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let out = common::decofs(&["umount", m.mnt.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "round {round}: umount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !common::is_mounted(&m.mnt),
            "round {round}: still mounted after umount"
        );
        let f = File::open(m.store.join("lock")).unwrap();
        let free = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        drop(f);
        assert!(
            free,
            "round {round}: `decofs umount` returned while the daemon still held STORE/lock \
             (an immediate remount would fail with store_locked)"
        );
        m.mount();
    }
}
