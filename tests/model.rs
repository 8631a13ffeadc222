//! fsx-like model tests: the same random operations on a decofs mount and on a plain
//! directory of the disk the tests run on (ext4); every result must agree.
//!
//! Reproduce a failure with the printed seed: `DECOFS_SEED=<seed> cargo test --release
//! --test model <name>`. `DECOFS_MODEL_OPS=<n>` changes the number of operations.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::Mount;

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 4 * MIB;
/// Files stay below this (plus one write), so they span 4-5 chunks.
const MAX_SIZE: u64 = 3 * CHUNK + 2 * MIB;
const MAX_WRITE: usize = 300 * 1024;

fn seed_from_env(default: u64) -> u64 {
    match std::env::var("DECOFS_SEED") {
        Ok(s) => {
            let s = s.trim();
            if let Some(h) = s.strip_prefix("0x") {
                u64::from_str_radix(h, 16).expect("DECOFS_SEED")
            } else {
                s.parse().expect("DECOFS_SEED")
            }
        }
        Err(_) => default,
    }
}

fn ops_from_env(default: usize) -> usize {
    std::env::var("DECOFS_MODEL_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The recent operations, printed with a divergence.
struct History {
    seed: u64,
    test: &'static str,
    lines: Vec<String>,
}

impl History {
    fn push(&mut self, i: usize, s: String) {
        if self.lines.len() == 40 {
            self.lines.remove(0);
        }
        self.lines.push(format!("#{i}: {s}"));
    }
    fn fail(&self, i: usize, what: String) -> ! {
        panic!(
            "{}: divergence at op #{i} (seed {:#x}; rerun with DECOFS_SEED={:#x}): {what}\nlast operations:\n{}",
            self.test,
            self.seed,
            self.seed,
            self.lines.join("\n")
        );
    }
}

fn read_range(f: &File, off: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = f.read_at(&mut buf[done..], off + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(buf)
}

fn first_diff(a: &[u8], b: &[u8]) -> String {
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        let end = (i + 16).min(a.len()).min(b.len());
        format!(
            "first difference at +{i}: decofs {:02x?} vs ext4 {:02x?}",
            &a[i..end],
            &b[i..end]
        )
    } else {
        format!("lengths differ: decofs {} vs ext4 {}", a.len(), b.len())
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

// ---------------------------------------------------------------------------------------
// single file

struct Side {
    dir: PathBuf,
    file: Option<File>,
}

impl Side {
    fn open(&mut self, name: &str, trunc: bool) -> io::Result<()> {
        self.file = None;
        self.file = Some(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(trunc)
                .open(self.dir.join(name))?,
        );
        Ok(())
    }
    fn f(&self) -> &File {
        self.file.as_ref().unwrap()
    }
}

fn pick_offset(rng: &mut fastrand::Rng, size: u64) -> u64 {
    let off = match rng.u8(0..10) {
        0..=3 => rng.u64(0..=size),
        4..=6 => {
            // Near a chunk boundary: reads and writes that straddle it.
            let k = rng.u64(1..=3);
            let d = rng.i64(-(MAX_WRITE as i64)..=(MAX_WRITE as i64));
            (k * CHUNK).saturating_add_signed(d)
        }
        7..=8 => size + rng.u64(1..=2 * MIB), // beyond EOF: leaves a hole
        _ => rng.u64(0..MAX_SIZE),
    };
    off.min(MAX_SIZE)
}

fn pick_len(rng: &mut fastrand::Rng) -> usize {
    match rng.u8(0..10) {
        0..=2 => rng.usize(1..=4096),
        3..=5 => rng.usize(1..=64 * 1024),
        _ => rng.usize(1..=MAX_WRITE),
    }
}

fn run_single_file_model(test: &'static str, seed: u64, nops: usize) {
    let m = Mount::new();
    let refdir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut h = History {
        seed,
        test,
        lines: Vec::new(),
    };
    eprintln!("{test}: seed {seed:#x}, {nops} operations (DECOFS_SEED to override)");

    let mut dec = Side {
        dir: m.mnt.clone(),
        file: None,
    };
    let mut ext = Side {
        dir: refdir.path().to_path_buf(),
        file: None,
    };
    let names = ["model-a", "model-b"];
    let mut cur = 0usize; // which name the file has now
    dec.open(names[cur], true).unwrap();
    ext.open(names[cur], true).unwrap();
    let mut size: u64 = 0; // the size according to ext4
    let remount_at = nops / 2;

    macro_rules! both {
        ($i:expr, $what:expr, $d:expr, $e:expr) => {{
            let (rd, re) = ($d, $e);
            match (&rd, &re) {
                (Ok(_), Ok(_)) => {}
                (Err(a), Err(b)) if errno(a) == errno(b) => {}
                _ => h.fail(
                    $i,
                    format!(
                        "{}: decofs {:?} vs ext4 {:?}",
                        $what,
                        rd.as_ref().err(),
                        re.as_ref().err()
                    ),
                ),
            }
            (rd.ok(), re.ok())
        }};
    }

    let full_compare = |h: &History, i: usize, dec: &Side, ext: &Side, size: u64| {
        let a = read_range(dec.f(), 0, (size + 10) as usize)
            .unwrap_or_else(|e| h.fail(i, format!("full read on decofs: {e}")));
        let b = read_range(ext.f(), 0, (size + 10) as usize).unwrap();
        if a != b {
            h.fail(
                i,
                format!("full compare ({} bytes): {}", b.len(), first_diff(&a, &b)),
            );
        }
        let (ma, mb) = (dec.f().metadata().unwrap(), ext.f().metadata().unwrap());
        if ma.len() != mb.len() {
            h.fail(
                i,
                format!("fstat size: decofs {} vs ext4 {}", ma.len(), mb.len()),
            );
        }
    };

    for i in 0..nops {
        if i == remount_at {
            h.push(i, "close both, remount decofs, reopen".into());
            dec.file = None;
            ext.file = None;
            m.remount();
            dec.open(names[cur], false)
                .unwrap_or_else(|e| h.fail(i, format!("reopen after remount: {e}")));
            ext.open(names[cur], false).unwrap();
            full_compare(&h, i, &dec, &ext, size);
        }
        let op = rng.u8(0..100);
        match op {
            0..=29 => {
                let off = pick_offset(&mut rng, size);
                let len = pick_len(&mut rng);
                let mut buf = vec![0u8; len];
                rng.fill(&mut buf);
                h.push(i, format!("write off={off} len={len} (size {size})"));
                both!(
                    i,
                    "write",
                    dec.f().write_all_at(&buf, off),
                    ext.f().write_all_at(&buf, off)
                );
                size = size.max(off + len as u64);
            }
            30..=54 => {
                let off = pick_offset(&mut rng, size);
                let len = pick_len(&mut rng);
                h.push(i, format!("read off={off} len={len} (size {size})"));
                let (a, b) = both!(
                    i,
                    "read",
                    read_range(dec.f(), off, len),
                    read_range(ext.f(), off, len)
                );
                let (a, b) = (a.unwrap(), b.unwrap());
                if a != b {
                    h.fail(
                        i,
                        format!("read off={off} len={len}: {}", first_diff(&a, &b)),
                    );
                }
            }
            55..=62 => {
                let new = if rng.bool() {
                    rng.u64(0..=size)
                } else {
                    rng.u64(0..=MAX_SIZE)
                };
                let new = if rng.u8(0..4) == 0 {
                    (new / CHUNK) * CHUNK
                } else {
                    new
                };
                h.push(i, format!("truncate {size} -> {new}"));
                both!(i, "ftruncate", dec.f().set_len(new), ext.f().set_len(new));
                size = new;
            }
            63..=65 => {
                let len = pick_len(&mut rng);
                let mut buf = vec![0u8; len];
                rng.fill(&mut buf);
                h.push(
                    i,
                    format!("append len={len} through a new O_APPEND handle (size {size})"),
                );
                let app = |dir: &Path| -> io::Result<()> {
                    let mut f = OpenOptions::new().append(true).open(dir.join(names[cur]))?;
                    f.write_all(&buf)
                };
                both!(i, "append", app(&dec.dir), app(&ext.dir));
                size += len as u64;
            }
            66..=68 => {
                // Write through a second handle, closed at once (its release happens while
                // the main handle is still open).
                let off = pick_offset(&mut rng, size);
                let len = pick_len(&mut rng);
                let mut buf = vec![0u8; len];
                rng.fill(&mut buf);
                h.push(
                    i,
                    format!("write off={off} len={len} through a second handle"),
                );
                let w = |dir: &Path| -> io::Result<()> {
                    let f = OpenOptions::new().write(true).open(dir.join(names[cur]))?;
                    f.write_all_at(&buf, off)
                };
                both!(i, "write via second handle", w(&dec.dir), w(&ext.dir));
                size = size.max(off + len as u64);
            }
            69..=73 => {
                let off = pick_offset(&mut rng, size);
                let len = pick_len(&mut rng);
                h.push(
                    i,
                    format!("read off={off} len={len} through a fresh read-only handle"),
                );
                let r = |dir: &Path| -> io::Result<Vec<u8>> {
                    read_range(&File::open(dir.join(names[cur]))?, off, len)
                };
                let (a, b) = both!(i, "read via fresh handle", r(&dec.dir), r(&ext.dir));
                let (a, b) = (a.unwrap(), b.unwrap());
                if a != b {
                    h.fail(
                        i,
                        format!(
                            "fresh-handle read off={off} len={len}: {}",
                            first_diff(&a, &b)
                        ),
                    );
                }
            }
            74..=78 => {
                let trunc = rng.u8(0..8) == 0;
                h.push(
                    i,
                    format!(
                        "close and reopen{}",
                        if trunc { " with O_TRUNC" } else { "" }
                    ),
                );
                both!(
                    i,
                    "reopen",
                    dec.open(names[cur], trunc),
                    ext.open(names[cur], trunc)
                );
                if trunc {
                    size = 0;
                }
            }
            79..=82 => {
                let data_only = rng.bool();
                h.push(
                    i,
                    (if data_only { "fdatasync" } else { "fsync" }).to_string(),
                );
                if data_only {
                    both!(i, "fdatasync", dec.f().sync_data(), ext.f().sync_data());
                } else {
                    both!(i, "fsync", dec.f().sync_all(), ext.f().sync_all());
                }
            }
            83..=86 => {
                let next = 1 - cur;
                h.push(
                    i,
                    format!(
                        "rename {} -> {} (handle stays open)",
                        names[cur], names[next]
                    ),
                );
                both!(
                    i,
                    "rename",
                    fs::rename(dec.dir.join(names[cur]), dec.dir.join(names[next])),
                    fs::rename(ext.dir.join(names[cur]), ext.dir.join(names[next]))
                );
                cur = next;
            }
            87..=93 => {
                h.push(i, "stat by path and fstat".into());
                let (a, b) = both!(
                    i,
                    "stat",
                    fs::metadata(dec.dir.join(names[cur])),
                    fs::metadata(ext.dir.join(names[cur]))
                );
                let (a, b) = (a.unwrap(), b.unwrap());
                if a.len() != b.len() {
                    h.fail(
                        i,
                        format!("stat size: decofs {} vs ext4 {}", a.len(), b.len()),
                    );
                }
                let (fa, fb) = (dec.f().metadata().unwrap(), ext.f().metadata().unwrap());
                if fa.len() != fb.len() {
                    h.fail(
                        i,
                        format!("fstat size: decofs {} vs ext4 {}", fa.len(), fb.len()),
                    );
                }
                if a.ino() != fa.ino() {
                    h.fail(i, format!("stat ino {} != fstat ino {}", a.ino(), fa.ino()));
                }
                // The other name must not exist.
                let other = names[1 - cur];
                let (x, y) = (dec.dir.join(other).exists(), ext.dir.join(other).exists());
                if x != y {
                    h.fail(i, format!("existence of {other}: decofs {x} vs ext4 {y}"));
                }
            }
            _ => {
                h.push(i, format!("full compare (size {size})"));
                full_compare(&h, i, &dec, &ext, size);
            }
        }
        if i % 500 == 499 {
            h.push(i, format!("periodic full compare (size {size})"));
            full_compare(&h, i, &dec, &ext, size);
        }
    }
    full_compare(&h, nops, &dec, &ext, size);
    dec.file = None;
    ext.file = None;
    m.remount();
    let a = fs::read(m.mnt.join(names[cur])).unwrap();
    let b = fs::read(refdir.path().join(names[cur])).unwrap();
    if a != b {
        h.fail(nops, format!("after final remount: {}", first_diff(&a, &b)));
    }
    let listing: Vec<_> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        listing,
        vec![std::ffi::OsString::from(names[cur])],
        "only the model file exists at the end"
    );
    m.unmount();
    common::assert_counts_exact(&m.store, test);
}

#[test]
fn single_file_model_seed_1() {
    run_single_file_model(
        "single_file_model_seed_1",
        seed_from_env(0xdec0_f5a1),
        ops_from_env(10_000),
    );
}

#[test]
fn single_file_model_seed_2() {
    run_single_file_model(
        "single_file_model_seed_2",
        seed_from_env(0x5eed_0002),
        ops_from_env(10_000),
    );
}

// ---------------------------------------------------------------------------------------
// multi-file tree

const DIRS: [&str; 3] = ["d0", "d1", "d2"];
const FILES: [&str; 5] = ["f0", "f1", "f2", "f3", "f4"];

fn random_path(rng: &mut fastrand::Rng, leaf_dir: bool) -> String {
    let depth = match rng.u8(0..10) {
        0..=3 => 0,
        4..=7 => 1,
        _ => 2,
    };
    let mut parts: Vec<&str> = (0..depth).map(|_| DIRS[rng.usize(0..DIRS.len())]).collect();
    let leaf = if leaf_dir || rng.u8(0..8) == 0 {
        DIRS[rng.usize(0..DIRS.len())]
    } else {
        FILES[rng.usize(0..FILES.len())]
    };
    parts.push(leaf);
    parts.join("/")
}

/// What a tree looks like: per path its type, permission bits, size and content (or
/// symlink target), file nlink; plus the hard-link groups.
fn snapshot(root: &Path) -> (BTreeMap<String, String>, Vec<Vec<String>>) {
    fn walk(
        root: &Path,
        rel: &str,
        out: &mut BTreeMap<String, String>,
        inos: &mut HashMap<u64, Vec<String>>,
    ) {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        entries.sort();
        for name in entries {
            let name = name.to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let p = root.join(&r);
            let md = fs::symlink_metadata(&p).unwrap();
            let perm = md.mode() & 0o7777;
            let ft = md.file_type();
            if ft.is_dir() {
                out.insert(r.clone(), format!("dir mode={perm:o}"));
                walk(root, &r, out, inos);
            } else if ft.is_symlink() {
                out.insert(
                    r.clone(),
                    format!("symlink -> {}", fs::read_link(&p).unwrap().display()),
                );
            } else if ft.is_file() {
                let data = fs::read(&p).unwrap();
                let hash = blake_ish(&data);
                out.insert(
                    r.clone(),
                    format!(
                        "file mode={perm:o} size={} nlink={} content={hash:016x}",
                        md.len(),
                        md.nlink()
                    ),
                );
                inos.entry(md.ino()).or_default().push(r.clone());
            } else {
                out.insert(r.clone(), format!("other {:o}", md.mode()));
            }
        }
    }
    let mut out = BTreeMap::new();
    let mut inos = HashMap::new();
    walk(root, "", &mut out, &mut inos);
    let mut groups: Vec<Vec<String>> = inos
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    groups.sort();
    (out, groups)
}

/// A 64-bit FNV-1a of the content: enough to tell contents apart in a listing.
fn blake_ish(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ data.len() as u64
}

fn compare_trees(h: &History, i: usize, dec: &Path, ext: &Path, when: &str) {
    let (a, ga) = snapshot(dec);
    let (b, gb) = snapshot(ext);
    if a != b {
        let mut diff = String::new();
        for (k, v) in &b {
            match a.get(k) {
                None => writeln!(diff, "  missing on decofs: {k}: {v}").unwrap(),
                Some(x) if x != v => writeln!(diff, "  {k}: decofs {x} vs ext4 {v}").unwrap(),
                _ => {}
            }
        }
        for (k, v) in &a {
            if !b.contains_key(k) {
                writeln!(diff, "  extra on decofs: {k}: {v}").unwrap();
            }
        }
        h.fail(i, format!("tree differs {when}:\n{diff}"));
    }
    if ga != gb {
        h.fail(
            i,
            format!("hard-link groups differ {when}: decofs {ga:?} vs ext4 {gb:?}"),
        );
    }
}

fn run_tree_model(test: &'static str, seed: u64, nops: usize) {
    let m = Mount::new();
    let refdir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let ext_root = refdir.path().to_path_buf();
    let dec_root = m.mnt.clone();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut h = History {
        seed,
        test,
        lines: Vec::new(),
    };
    let mut succeeded = 0usize;
    let mut failed_alike: std::collections::BTreeMap<i32, usize> = Default::default();
    eprintln!("{test}: seed {seed:#x}, {nops} operations (DECOFS_SEED to override)");

    for i in 0..nops {
        let op = rng.u8(0..100);
        let a = random_path(&mut rng, false);
        let b = random_path(&mut rng, false);
        let big = rng.u8(0..10) == 0;
        let dlen = rng.usize(0..=if big { 5 * MIB as usize } else { 64 * 1024 });
        let mut data = vec![0u8; dlen];
        rng.fill(&mut data);
        let off = rng.u64(0..=256 * 1024);
        let size = rng.u64(0..=300 * 1024);
        let mode = [0o600, 0o644, 0o755, 0o700][rng.usize(0..4)];
        let desc;
        #[allow(clippy::type_complexity)]
        let run: Box<dyn Fn(&Path) -> io::Result<()>> = match op {
            0..=19 => {
                desc = format!("create/overwrite {a} ({} bytes)", data.len());
                let (a, data) = (a.clone(), data.clone());
                Box::new(move |r: &Path| fs::write(r.join(&a), &data))
            }
            20..=29 => {
                desc = format!("write {a} at {off} ({} bytes, no create)", data.len());
                let (a, data) = (a.clone(), data.clone());
                Box::new(move |r: &Path| {
                    OpenOptions::new()
                        .write(true)
                        .open(r.join(&a))?
                        .write_all_at(&data, off)
                })
            }
            30..=33 => {
                desc = format!("append to {a} ({} bytes)", data.len());
                let (a, data) = (a.clone(), data.clone());
                Box::new(move |r: &Path| {
                    OpenOptions::new()
                        .append(true)
                        .open(r.join(&a))?
                        .write_all(&data)
                })
            }
            34..=37 => {
                desc = format!("truncate {a} to {size}");
                let a = a.clone();
                Box::new(move |r: &Path| {
                    OpenOptions::new()
                        .write(true)
                        .open(r.join(&a))?
                        .set_len(size)
                })
            }
            38..=51 => {
                desc = format!("rename {a} -> {b}");
                let (a, b) = (a.clone(), b.clone());
                Box::new(move |r: &Path| fs::rename(r.join(&a), r.join(&b)))
            }
            52..=59 => {
                desc = format!("unlink {a}");
                let a = a.clone();
                Box::new(move |r: &Path| fs::remove_file(r.join(&a)))
            }
            60..=66 => {
                desc = format!("link {a} -> {b}");
                let (a, b) = (a.clone(), b.clone());
                Box::new(move |r: &Path| fs::hard_link(r.join(&a), r.join(&b)))
            }
            67..=78 => {
                let d = random_path(&mut rng, true);
                desc = format!("mkdir {d}");
                Box::new(move |r: &Path| fs::create_dir(r.join(&d)))
            }
            79..=86 => {
                let d = random_path(&mut rng, true);
                desc = format!("rmdir {d}");
                Box::new(move |r: &Path| fs::remove_dir(r.join(&d)))
            }
            87..=90 => {
                desc = format!("symlink {a} -> target {b}");
                let (a, b) = (a.clone(), b.clone());
                Box::new(move |r: &Path| std::os::unix::fs::symlink(&b, r.join(&a)))
            }
            91..=94 => {
                desc = format!("chmod {a} {mode:o}");
                let a = a.clone();
                Box::new(move |r: &Path| {
                    fs::set_permissions(r.join(&a), fs::Permissions::from_mode(mode))
                })
            }
            95..=97 => {
                desc = format!("create exclusive {a} mode {mode:o}");
                let a = a.clone();
                Box::new(move |r: &Path| {
                    OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(mode)
                        .open(r.join(&a))
                        .map(|_| ())
                })
            }
            _ => {
                desc = format!("read and compare {a}");
                let a = a.clone();
                Box::new(move |r: &Path| fs::read(r.join(&a)).map(|_| ()))
            }
        };
        h.push(i, desc.clone());
        let rd = run(&dec_root);
        let re = run(&ext_root);
        match (&rd, &re) {
            (Ok(()), Ok(())) => succeeded += 1,
            (Err(x), Err(y)) if errno(x) == errno(y) => {
                *failed_alike.entry(errno(x)).or_insert(0usize) += 1
            }
            _ => h.fail(i, format!("{desc}: decofs {rd:?} vs ext4 {re:?}")),
        }
        if op >= 98 && rd.is_ok() {
            let (x, y) = (
                fs::read(dec_root.join(&a)).unwrap(),
                fs::read(ext_root.join(&a)).unwrap(),
            );
            if x != y {
                h.fail(i, format!("content of {a}: {}", first_diff(&x, &y)));
            }
        }
        if i % 250 == 249 {
            compare_trees(&h, i, &dec_root, &ext_root, "during the run");
        }
    }
    eprintln!("{test}: {succeeded} operations succeeded on both, failed alike (errno: count): {failed_alike:?}");
    compare_trees(&h, nops, &dec_root, &ext_root, "at the end");
    m.remount();
    compare_trees(&h, nops, &dec_root, &ext_root, "after remount");
    m.unmount();
    common::assert_counts_exact(&m.store, test);
}

#[test]
fn tree_model_seed_1() {
    run_tree_model(
        "tree_model_seed_1",
        seed_from_env(0x7ee0_0001),
        ops_from_env(5_000),
    );
}

#[test]
fn tree_model_seed_2() {
    run_tree_model(
        "tree_model_seed_2",
        seed_from_env(0x7ee0_0002),
        ops_from_env(5_000),
    );
}
