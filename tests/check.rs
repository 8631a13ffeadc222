//! fsck, scrub and gc on real stores: after a real workload, after injected faults,
//! after a flipped byte in a chunk, with unreferenced blobs, against a locked store, and
//! after the daemon was killed with SIGKILL in the middle of a workload.
// Tests call libc directly on descriptors and buffers they own; the SAFETY comments
// the lint asks for are kept for the daemon's code.
#![allow(clippy::undocumented_unsafe_blocks)]

mod common;

use common::{daemon_pid, decofs, dj, log_tail, node_of, problems, sh, Mount};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

fn fsck(store: &Path, extra: &[&str]) -> (i32, Value) {
    let mut a = vec!["fsck", store.to_str().unwrap()];
    a.extend_from_slice(extra);
    let (c, v, e) = dj(&a);
    assert!(v.is_object(), "fsck printed no report (exit {c}): {e}");
    (c, v)
}

/// A deterministic source tree: `dirs` directories of files of mixed sizes (inline,
/// one chunk, several 4 MiB chunks), a symlink and a hard link.
fn make_tree(root: &Path, seed: u64, dirs: usize, files: usize) {
    let mut rng = fastrand::Rng::with_seed(seed);
    for d in 0..dirs {
        let dir = root.join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..files {
            let size = match rng.u32(0..100) {
                0..=29 => rng.usize(0..1024),
                30..=89 => rng.usize(1024..40_000),
                90..=98 => rng.usize(40_000..400_000),
                _ if d == 0 => rng.usize(4 << 20..9 << 20),
                _ => rng.usize(0..100),
            };
            let mut data = vec![0u8; size];
            rng.fill(&mut data);
            fs::write(dir.join(format!("f{f:03}")), &data).unwrap();
        }
    }
    std::os::unix::fs::symlink("d0/f000", root.join("link")).unwrap();
    fs::hard_link(root.join("d0/f001"), root.join("hard")).unwrap();
}

/// Apply the same renames, unlinks and hard links to two trees (the copy on the mount
/// and the reference on disk), so they must stay equal.
fn churn(trees: &[&Path]) {
    for t in trees {
        sh(&format!(
            "cd {} && mv d1/f000 d1/renamed && mv d2 d2moved && rm d1/f001 d1/f002 && \
             ln d1/f003 d0/f003-link && ln d1/f004 d1/f004-link && rm d1/f004 && \
             mkdir -p n/e/s/t && mv d1/f005 n/e/s/t/deep && printf overwritten > d1/f006",
            q(t)
        ));
    }
}

fn diff_trees(a: &Path, b: &Path, exclude: &[&str]) {
    let ex: String = exclude.iter().map(|e| format!(" -x '{e}'")).collect();
    sh(&format!("diff -r --no-dereference{ex} {} {}", q(a), q(b)));
}

/// Blob files holding the chunks of a file (read from its record).
fn chunk_blobs(store: &Path, rel: &str) -> Vec<PathBuf> {
    let s = decofs::store::Store::open(
        store,
        decofs::store::OpenOptions {
            read_only: true,
            cache_bytes: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let n = node_of(store, rel);
    let id = uuid::Uuid::parse_str(n.file_name().unwrap().to_str().unwrap()).unwrap();
    let rec = s.records.read(decofs::store::NodeId(id)).unwrap();
    decofs::store::content::record_hashes(&rec)
        .iter()
        .map(|h| s.layout.blob_path(&decofs::store::node::hash_hex(h)))
        .collect()
}

fn set_old_mtime(p: &Path, secs_ago: i64) {
    sh(&format!(
        "touch -h -d '@{}' {}",
        now_secs() - secs_ago,
        q(p)
    ));
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Put an unreferenced blob into the store, named by its hash as a real one.
fn plant_blob(store: &Path, data: &[u8]) -> String {
    let h = blake3::hash(data).to_hex().to_string();
    let dir = store.join("blobs").join(&h[0..2]);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(&h), data).unwrap();
    h
}

fn status_of(p: &Path) -> String {
    xattr::get(p, "user.decofs.status")
        .ok()
        .flatten()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default()
}

/// A real workload (cp -a of a few hundred files, renames, unlinks, hard links) leaves a
/// store that fsck finds clean and scrub finds intact.
#[test]
fn workload_leaves_a_clean_store() {
    let m = Mount::new();
    let src = m.dir.path().join("src");
    make_tree(&src, 1, 6, 60);
    sh(&format!("cp -a {}/. {}", q(&src), q(&m.mnt)));
    churn(&[&src, &m.mnt]);
    diff_trees(&src, &m.mnt, &[]);
    m.unmount();
    let store = m.store.to_str().unwrap();
    let (c, v) = fsck(&m.store, &["--grace", "0"]);
    assert_eq!(c, 0, "fsck of a clean store: {v:#}");
    assert!(v["nodes"].as_u64().unwrap() > 360);
    assert!(
        v["trash"].as_u64().unwrap() >= 2,
        "unlinked files are in the trash: {v:#}"
    );
    assert!(
        v["revisions"].as_u64().unwrap() >= 1,
        "the overwrite left a revision"
    );
    let (c, v, e) = dj(&["scrub", store]);
    assert_eq!(c, 0, "scrub: {v:#} {e}");
    assert!(v["blobs_checked"].as_u64().unwrap() > 100);
    // Nothing is unreferenced after a plain workload.
    let (c, v, e) = dj(&["gc", "--dry-run", "--grace", "0", store]);
    assert_eq!(c, 0, "{e}");
    assert_eq!(v["deleted"], 0, "{v:#}");
    // Human output names the result too.
    let out = decofs(&["fsck", store]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("clean"));
    m.mount();
    diff_trees(&src, &m.mnt, &[]);
}

/// One fault at a time: fsck finds it (exit 4), repairs it (exit 1), then finds the
/// store clean (exit 0); the mount works and every other file is intact.
#[test]
fn injected_faults_are_found_and_repaired() {
    let m = Mount::new();
    let src = m.dir.path().join("src");
    make_tree(&src, 2, 5, 30);
    sh(&format!("cp -a {}/. {}", q(&src), q(&m.mnt)));
    churn(&[&src, &m.mnt]);
    m.unmount();
    let store = m.store.clone();
    let (c, v) = fsck(&store, &["--grace", "0"]);
    assert_eq!(c, 0, "{v:#}");

    // (name, inject, expected problem code, expected path fragment, excluded from diff)
    type Inject = Box<dyn Fn(&Path)>;
    let faults: Vec<(&str, Inject, &str, &str, Vec<&str>)> = vec![
        (
            "truncated record",
            Box::new(|s: &Path| {
                let n = node_of(s, "d3/f007");
                let v = xattr::get(&n, "user.decofs.node").unwrap().unwrap();
                xattr::set(&n, "user.decofs.node", &v[..5]).unwrap();
            }),
            "corrupt_record",
            "/d3/f007",
            vec!["f007"],
        ),
        (
            "garbage record of a directory",
            Box::new(|s: &Path| {
                let n = node_of(s, "d4");
                let mut junk = vec![0u8; 300];
                fastrand::Rng::with_seed(9).fill(&mut junk);
                xattr::set(&n, "user.decofs.node", &junk).unwrap();
            }),
            "corrupt_record",
            "/d4",
            vec![],
        ),
        (
            "garbage record with a valid frame",
            Box::new(|s: &Path| {
                let n = node_of(s, "d0/f010");
                let v = xattr::get(&n, "user.decofs.node").unwrap().unwrap();
                let mut bad = v.clone();
                let l = bad.len();
                bad[l - 3] ^= 0x55; // CRC mismatch
                xattr::set(&n, "user.decofs.node", &bad).unwrap();
            }),
            "corrupt_record",
            "/d0/f010",
            vec!["f010"],
        ),
        (
            "dangling entry",
            Box::new(|s: &Path| {
                let id = uuid::Uuid::new_v4().to_string();
                let t = format!("../../../{}/{}/{}", &id[0..2], &id[2..4], id);
                std::os::unix::fs::symlink(t, node_of(s, "d3").join("ghost")).unwrap();
            }),
            "dangling_entry",
            "/d3/ghost",
            vec![],
        ),
        (
            "stray files in nodes/ and blobs/",
            Box::new(|s: &Path| {
                fs::write(s.join("nodes/stray.txt"), b"x").unwrap();
                let shard = fs::read_dir(s.join("nodes"))
                    .unwrap()
                    .flatten()
                    .find(|e| e.file_type().unwrap().is_dir());
                let shard = shard.unwrap().path();
                let sub = fs::read_dir(&shard)
                    .unwrap()
                    .next()
                    .unwrap()
                    .unwrap()
                    .path();
                fs::write(sub.join("not-a-uuid"), b"x").unwrap();
                fs::create_dir_all(s.join("blobs/zz")).unwrap();
                fs::write(s.join("blobs/zz/junk"), b"x").unwrap();
                fs::create_dir_all(s.join("blobs/ab")).unwrap();
                fs::write(s.join("blobs/ab/abcd.tmp"), b"x").unwrap();
                fs::write(node_of(s, "d0").join(".hidden-file"), b"x").unwrap();
            }),
            "stray_file",
            "",
            vec![],
        ),
        (
            "trash link pointing the way an entry does",
            Box::new(|s: &Path| {
                let link = fs::read_dir(s.join("trash"))
                    .unwrap()
                    .flatten()
                    .next()
                    .expect("churn trashed files")
                    .path();
                let target = fs::read_link(&link).unwrap();
                let rest = target.to_str().unwrap().strip_prefix("../nodes/").unwrap();
                let entry_style = format!("../../../{rest}");
                fs::remove_file(&link).unwrap();
                std::os::unix::fs::symlink(entry_style, &link).unwrap();
            }),
            "trash_link_target",
            "trash/",
            vec![],
        ),
        (
            "hard link removed behind the store's back",
            Box::new(|s: &Path| {
                fs::remove_file(node_of(s, "d0").join("f003-link")).unwrap();
            }),
            "nlink_mismatch",
            "/d1/f003",
            vec!["f003-link"],
        ),
    ];
    let mut injected = 0;
    let mut excluded = vec!["f004-link"];
    for (name, inject, code, frag, exclude) in faults {
        inject(&store);
        injected += 1;
        let (c, v) = fsck(&store, &["--grace", "0"]);
        assert_eq!(c, 4, "{name}: fsck without repair must exit 4: {v:#}");
        let ps = problems(&v);
        assert!(
            ps.iter().any(|(pc, pp, _)| pc == code && pp.contains(frag)),
            "{name}: expected {code} at {frag}, got {ps:?}"
        );
        let (c, v) = fsck(&store, &["--repair", "--grace", "0"]);
        assert_eq!(c, 1, "{name}: repair must exit 1: {v:#}");
        assert!(problems(&v).iter().all(|p| p.2), "{name}: {v:#}");
        let (c, v) = fsck(&store, &["--grace", "0"]);
        assert_eq!(c, 0, "{name}: after repair the store is clean: {v:#}");
        m.mount();
        // Damaged files stay excluded in later rounds.
        excluded.extend(exclude);
        diff_trees(&src, &m.mnt, &excluded);
        match name {
            "truncated record" => {
                let md = fs::metadata(m.path("d3/f007")).unwrap();
                assert_eq!(md.len(), 0, "a lost record leaves an empty file");
                fs::write(m.path("d3/f007"), b"usable again").unwrap();
            }
            "dangling entry" => assert!(!m.path("d3/ghost").exists()),
            "trash link pointing the way an entry does" => {
                for e in fs::read_dir(store.join("trash")).unwrap().flatten() {
                    let t = fs::read_link(e.path()).unwrap();
                    assert!(t.starts_with("../nodes/"), "{t:?}");
                }
            }
            "hard link removed behind the store's back" => {
                use std::os::unix::fs::MetadataExt;
                assert_eq!(fs::metadata(m.path("d1/f003")).unwrap().nlink(), 1);
            }
            _ => {}
        }
        m.unmount();
    }

    // An orphan: a node with a valid record and no entry. Young orphans are left alone;
    // with grace 0 it is bound in /lost+found under its uuid, content intact.
    let n = node_of(&store, "d2moved/f011");
    let id = n.file_name().unwrap().to_str().unwrap().to_string();
    fs::remove_file(node_of(&store, "d2moved").join("f011")).unwrap();
    injected += 1;
    let (c, v) = fsck(&store, &[]);
    assert_eq!(
        c, 0,
        "an orphan younger than the grace period is no error: {v:#}"
    );
    assert_eq!(v["young_orphans"], 1);
    let (c, v) = fsck(&store, &["--grace", "0"]);
    assert_eq!(c, 4, "{v:#}");
    assert!(problems(&v).iter().any(|p| p.0 == "orphan"), "{v:#}");
    let (c, v) = fsck(&store, &["--repair", "--grace", "0"]);
    assert_eq!(c, 1, "{v:#}");
    let (c, v) = fsck(&store, &["--grace", "0"]);
    assert_eq!(c, 0, "{v:#}");
    m.mount();
    assert_eq!(
        fs::read(m.mnt.join("lost+found").join(&id)).unwrap(),
        fs::read(src.join("d2moved/f011")).unwrap()
    );
    diff_trees(
        &src,
        &m.mnt,
        &[
            "f003-link",
            "f011",
            "lost+found",
            "f004-link",
            "f007",
            "f010",
        ],
    );
    m.unmount();
    eprintln!("faults injected and repaired: {injected}");
}

/// A flipped byte in a chunk: EIO on read, status integrity_error, scrub and fsck name
/// the file; scrub run while the store is not mounted marks damaged files itself.
#[test]
fn flipped_byte_in_a_chunk_is_named() {
    let m = Mount::new();
    let a: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("dir/victim"), &a).unwrap();
    fs::write(m.path("other"), &a[..200_000]).unwrap();
    fs::write(m.path("quiet"), &a[1..250_000]).unwrap();
    m.unmount();
    let flip = |rel: &str| {
        let b = &chunk_blobs(&m.store, rel)[0];
        let mut d = fs::read(b).unwrap();
        d[1234] ^= 0x01;
        fs::write(b, d).unwrap();
    };
    flip("dir/victim");
    m.mount();
    let err = fs::read(m.path("dir/victim")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert_eq!(status_of(&m.path("dir/victim")), "integrity_error");
    assert_eq!(fs::read(m.path("other")).unwrap(), &a[..200_000]);
    let store = m.store.to_str().unwrap();
    // Scrub while mounted read-write: reads without the lock, names the file.
    let (c, v, e) = dj(&["scrub", store]);
    assert_eq!(c, 4, "scrub must fail on damage: {v:#} {e}");
    assert_eq!(
        v["damaged_paths"],
        serde_json::json!(["/dir/victim"]),
        "{v:#}"
    );
    assert_eq!(v["marked"], 0, "no marking without the lock");
    let out = decofs(&["scrub", store]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("/dir/victim"));
    assert_ne!(out.status.code(), Some(0));
    // fsck (read-only, the store is mounted) names it too.
    let (c, v) = fsck(&m.store, &[]);
    assert_eq!(c, 4, "{v:#}");
    assert!(problems(&v)
        .iter()
        .any(|p| p.0 == "integrity_error" && p.1 == "/dir/victim"));
    m.unmount();
    // Damage nobody has read yet: scrub of the unmounted store marks the file.
    flip("quiet");
    let (c, v, _) = dj(&["scrub", store]);
    assert_eq!(c, 4);
    assert_eq!(v["marked"], 1, "{v:#}");
    let paths: BTreeSet<String> = v["damaged_paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        paths,
        ["/dir/victim", "/quiet"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    m.mount();
    assert_eq!(status_of(&m.path("quiet")), "integrity_error");
    assert_eq!(status_of(&m.path("other")), "consistent");
    assert_eq!(
        fs::read(m.path("quiet")).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
}

/// What a power cut can leave of a file written and closed just before it: its new
/// record on the disk and its new blob renamed into place, but empty (the bytes were
/// still in the page cache). The file reads EIO; fsck names it by the blob's length,
/// and --repair gives it the content it had before that write (its newest revision).
#[test]
fn a_blob_a_power_cut_left_empty_is_found_and_rolled_back() {
    let m = Mount::new();
    let old: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let new: Vec<u8> = (0..300_000u32).map(|i| (i * 11 % 251) as u8).collect();
    fs::write(m.path("f"), &old).unwrap();
    fs::write(m.path("f"), &new).unwrap(); // the old content is kept as a revision
    m.unmount();
    fs::File::create(&chunk_blobs(&m.store, "f")[0]).unwrap(); // emptied
    m.mount();
    assert_eq!(
        fs::read(m.path("f")).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    m.unmount();
    let (c, v) = fsck(&m.store, &[]);
    assert_eq!(c, 4, "{v:#}");
    assert!(
        problems(&v)
            .iter()
            .any(|p| p.0 == "damaged_blob" && p.1 == "/f" && !p.2),
        "{v:#}"
    );
    let (c, v) = fsck(&m.store, &["--repair"]);
    assert_eq!(c, 1, "{v:#}");
    assert!(problems(&v).iter().all(|p| p.2), "all repaired: {v:#}");
    let (c, v) = fsck(&m.store, &[]);
    assert_eq!(c, 0, "clean after the repair: {v:#}");
    m.mount();
    assert!(
        fs::read(m.path("f")).unwrap() == old,
        "the content before the write"
    );
    assert_eq!(status_of(&m.path("f")), "consistent");
}

/// gc deletes exactly the unreferenced blobs older than the grace period; revisions and
/// the trash keep their blobs; every file reads back identical afterwards.
#[test]
fn gc_deletes_exactly_unreferenced_old_blobs() {
    let m = Mount::new();
    let store = m.store.clone();
    let st = store.to_str().unwrap();
    let mut rng = fastrand::Rng::with_seed(5);
    let mut files = BTreeMap::new();
    for i in 0..8 {
        let mut d = vec![0u8; 50_000 + i * 20_000];
        rng.fill(&mut d);
        fs::write(m.path(&format!("f{i}")), &d).unwrap();
        files.insert(format!("f{i}"), d);
    }
    m.unmount();
    let old_chunks: BTreeSet<PathBuf> = chunk_blobs(&store, "f0").into_iter().collect();
    let trashed_chunks = chunk_blobs(&store, "f1");
    m.mount();
    // Overwrite f0 (its old chunks stay referenced by the revision), delete f1 (trash).
    let mut d = vec![0u8; 70_000];
    rng.fill(&mut d);
    fs::write(m.path("f0"), &d).unwrap();
    files.insert("f0".into(), d);
    fs::remove_file(m.path("f1")).unwrap();
    files.remove("f1");
    m.unmount();

    let (c, v, e) = dj(&["gc", "--grace", "0", st]);
    assert_eq!(c, 0, "{e}");
    assert_eq!(
        v["deleted"], 0,
        "revisions and trash keep blobs referenced: {v:#}"
    );
    for p in old_chunks.iter().chain(&trashed_chunks) {
        assert!(p.exists());
    }
    // Drop the revisions (as a future `versions purge` would): f0's old chunks are
    // garbage now, but young.
    fs::remove_dir_all(store.join("revisions")).unwrap();
    fs::create_dir(store.join("revisions")).unwrap();
    let old1 = plant_blob(&store, b"old unreferenced blob one");
    let old2 = plant_blob(&store, &vec![42u8; 100_000]);
    let fresh = plant_blob(&store, b"a blob a session just wrote");
    for h in [&old1, &old2] {
        set_old_mtime(&store.join("blobs").join(&h[0..2]).join(h), 7200);
    }
    let garbage: BTreeSet<String> = old_chunks
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .chain([old1.clone(), old2.clone(), fresh.clone()])
        .collect();
    let count_blobs = || sh(&format!("find {}/blobs -type f | wc -l", q(&store)));
    let before = count_blobs();
    // Dry run: reports, deletes nothing.
    let (c, v, e) = dj(&["gc", "--dry-run", st]);
    assert_eq!(c, 0, "{e}");
    assert_eq!(v["deleted"], 2, "{v:#}");
    assert_eq!(
        v["bytes_freed"].as_u64().unwrap(),
        100_000 + b"old unreferenced blob one".len() as u64
    );
    assert_eq!(count_blobs(), before);
    // Default grace: only the old planted blobs go; the young ones survive (invariant 1).
    let (c, v, _) = dj(&["gc", st]);
    assert_eq!(c, 0);
    let deleted: BTreeSet<String> = v["deleted_hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect();
    assert_eq!(deleted, [old1.clone(), old2.clone()].into_iter().collect());
    assert!(store.join("blobs").join(&fresh[0..2]).join(&fresh).exists());
    // Grace 0: exactly the rest of the garbage.
    let (c, v, _) = dj(&["gc", "--grace", "0", st]);
    assert_eq!(c, 0);
    let deleted: BTreeSet<String> = v["deleted_hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect();
    let expect: BTreeSet<String> = garbage
        .iter()
        .filter(|h| **h != old1 && **h != old2)
        .cloned()
        .collect();
    assert_eq!(deleted, expect);
    for p in &trashed_chunks {
        assert!(p.exists(), "the trash keeps a deleted file's chunks");
    }
    let (c, v) = fsck(&store, &["--grace", "0"]);
    assert_eq!(c, 0, "{v:#}");
    let (c, _, e) = dj(&["scrub", st]);
    assert_eq!(c, 0, "{e}");
    m.mount();
    for (name, data) in &files {
        assert_eq!(&fs::read(m.path(name)).unwrap(), data, "{name}");
    }
}

/// Writing checks refuse a store mounted read-write and change nothing; reading
/// checks run read-only.
#[test]
fn writing_checks_refuse_a_mounted_store() {
    let m = Mount::new();
    fs::write(m.path("a"), b"data").unwrap();
    let st = m.store.to_str().unwrap();
    let snapshot = || {
        sh(&format!(
            "cd {} && find nodes blobs trash revisions -printf '%p %s %T@\\n' | sort",
            q(&m.store)
        ))
    };
    // An unreferenced old blob gc would delete, were it allowed to run.
    let h = plant_blob(&m.store, b"garbage");
    set_old_mtime(&m.store.join("blobs").join(&h[0..2]).join(&h), 7200);
    let before = snapshot();
    let (c, v, e) = dj(&["fsck", "--repair", st]);
    assert_eq!(c, 8, "fsck --repair on a mounted store: {v} {e}");
    let err: Value = serde_json::from_str(e.trim()).unwrap();
    assert_eq!(err["code"], "store_locked");
    assert_eq!(snapshot(), before, "nothing changed");
    // Read-only checks work while mounted.
    let (c, v) = fsck(&m.store, &[]);
    assert_eq!(c, 0, "{v:#}");
    let (c, v, _) = dj(&["gc", "--dry-run", "--grace", "0", st]);
    assert_eq!(c, 0);
    assert_eq!(v["deleted"], 1);
    assert_eq!(snapshot(), before, "nothing changed");
    // gc of a store mounted read-write runs in its daemon, with the filesystem live.
    let (c, v, e) = dj(&["gc", "--grace", "0", m.mnt.to_str().unwrap()]);
    assert_eq!(c, 0, "{e}");
    assert_eq!(v["deleted"], 1, "{v}");
    assert_eq!(v["deleted_hashes"][0], h.as_str());
    assert!(!m.store.join("blobs").join(&h[0..2]).join(&h).exists());
    assert_eq!(fs::read(m.path("a")).unwrap(), b"data");
}

/// Online gc races writers that reuse an old unreferenced blob (dedup touches it):
/// the sweep's protocol keeps every blob a record or an open session needs.
#[test]
fn online_gc_never_frees_a_blob_in_use() {
    // No trash: a delete frees the content at once, so the blob keeps dropping to
    // unreferenced and being reused while gc runs.
    let m = Mount::with_opts("allow_other,trash_retention=0");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let h = plant_blob(&m.store, &data);
    set_old_mtime(&m.store.join("blobs").join(&h[0..2]).join(&h), 7200);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (dir, data, stop) = (m.mnt.clone(), data.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) || i < 50 {
                fs::write(dir.join(format!("f{}", i % 4)), &data).unwrap();
                if i % 4 == 3 {
                    for k in 0..3 {
                        fs::remove_file(dir.join(format!("f{k}"))).unwrap();
                    }
                }
                i += 1;
            }
            i
        })
    };
    let mut runs = 0;
    let mut freed_any = false;
    while runs < 15 {
        // Real garbage too, so every run has something to free.
        let g = plant_blob(&m.store, format!("garbage {runs}").as_bytes());
        set_old_mtime(&m.store.join("blobs").join(&g[0..2]).join(&g), 7200);
        let (c, v, e) = dj(&["gc", "--grace", "0", m.mnt.to_str().unwrap()]);
        assert_eq!(c, 0, "{e}");
        freed_any |= v["deleted"].as_u64().unwrap() > 0;
        runs += 1;
    }
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().unwrap();
    eprintln!("{writes} writes against {runs} gc runs");
    assert!(freed_any, "gc freed the planted garbage");
    for e in fs::read_dir(&m.mnt).unwrap().flatten() {
        assert_eq!(fs::read(e.path()).unwrap(), data, "{:?}", e.path());
    }
    m.unmount();
    let (c, v) = fsck(&m.store, &["--grace", "0"]);
    assert_eq!(c, 0, "no blob a record needs is missing: {v:#}");
}

// ---------------------------------------------------------------------------------------
// Crash tests: kill -9 the daemon in the middle of a workload.

/// Kill the daemon with SIGKILL and wait until it is gone. Returns when the signal was
/// sent.
fn crash(m: &Mount) -> Instant {
    let pid = daemon_pid(&m.store, &m.mnt);
    let killed = Instant::now();
    // SAFETY: a signal to the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    // A dying thread first finishes the disk I/O it is in; on this loaded 2-core machine
    // that was once seen to take over 20 s.
    let deadline = Instant::now() + Duration::from_secs(90);
    // Decide once: pids wrap at 32,768 here, so once the daemon is reaped its pid may
    // already belong to another process.
    let gone = loop {
        if common::process_gone(pid) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(gone, "daemon {pid} survived SIGKILL");
    killed
}

fn detach(m: &Mount) {
    let _ = Command::new("fusermount3").arg("-uz").arg(&m.mnt).output();
    if common::is_mounted(&m.mnt) {
        let _ = Command::new("umount").arg("-l").arg(&m.mnt).output();
    }
    assert!(!common::is_mounted(&m.mnt));
}

/// The end of a crash round: kill -9 the daemon, run `settle` once it is gone (stop and
/// join the workload, which must not touch the next mount; it gets the moment of the
/// kill), detach the dead mount, fsck (counting what it repaired), mount again.
fn crash_and_recover<T>(
    m: &Mount,
    codes: &mut BTreeMap<String, usize>,
    settle: impl FnOnce(Instant) -> T,
) -> T {
    let killed = crash(m);
    let out = settle(killed);
    detach(m);
    for c in fsck_after_crash(&m.store) {
        *codes.entry(c).or_default() += 1;
    }
    m.mount();
    out
}

/// Rounds of a crash test: `base` times `DECOFS_CRASH_ROUNDS` (default 1; more is the
/// long mode).
fn crash_rounds(base: u64) -> u64 {
    let k = std::env::var("DECOFS_CRASH_ROUNDS").map_or(1, |s| {
        s.trim()
            .parse::<u64>()
            .ok()
            .filter(|k| *k > 0)
            .expect("DECOFS_CRASH_ROUNDS must be a positive integer")
    });
    base * k
}

/// After a crash: fsck --repair finds at most collected orphans, then a second fsck
/// finds the store clean. Returns the problem codes it repaired.
fn fsck_after_crash(store: &Path) -> Vec<String> {
    let (c, v) = fsck(store, &["--repair", "--grace", "0"]);
    let ps = problems(&v);
    assert!(c == 0 || c == 1, "fsck after a crash: {v:#}");
    // The blob reference counts came back from their log, exact (not counted afresh).
    assert_eq!(v["refcounts"], "exact", "the counts after a crash: {v:#}");
    // What a crash may leave, all repaired: nodes whose name was not bound yet (or no
    // longer), and the link count of a directory whose entry for a new or removed
    // subdirectory was written but whose own record was not updated yet.
    let allowed = ["orphan", "unbound_node", "nlink_mismatch"];
    assert!(
        ps.iter().all(|p| allowed.contains(&p.0.as_str()) && p.2),
        "a crash left more than orphans and link counts: {ps:?}"
    );
    let (c, v) = fsck(store, &["--grace", "0"]);
    assert_eq!(c, 0, "clean after repair: {v:#}");
    ps.into_iter().map(|p| p.0).collect()
}

/// The spare node files a writer makes ahead (`store/spare.rs`) are staging: a writer
/// killed with spares ready leaves them in `sessions/`, fsck reports them and --repair
/// removes them, and the files made from spares before the crash are intact.
#[test]
fn spares_left_by_a_crash_are_collected() {
    let m = Mount::new();
    let spare_dirs = || -> Vec<PathBuf> {
        fs::read_dir(m.store.join("sessions"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("spare."))
            .map(|e| e.path())
            .collect()
    };
    let body = |i: u64| content(7, i, 0);
    for i in 0..40 {
        fs::write(m.path(&format!("f-{i}")), body(i)).unwrap();
    }
    // The spares thread refills after each create; wait until some are ready.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !spare_dirs().iter().any(|d| {
        fs::read_dir(d)
            .map(|mut r| r.next().is_some())
            .unwrap_or(false)
    }) {
        assert!(Instant::now() < deadline, "no spares were made");
        std::thread::sleep(Duration::from_millis(20));
    }
    crash(&m);
    detach(&m);
    let (_, v) = fsck(&m.store, &["--grace", "0"]);
    assert!(
        v["stale_staging"].as_u64().unwrap_or(0) >= 1,
        "fsck does not see the dead writer's spares: {v:#}"
    );
    let (_, v) = fsck(&m.store, &["--repair", "--grace", "0"]);
    assert!(
        v["stale_staging_removed"].as_u64().unwrap_or(0) >= 1,
        "{v:#}"
    );
    assert_eq!(
        spare_dirs(),
        Vec::<PathBuf>::new(),
        "spares left after repair"
    );
    let (c, v) = fsck(&m.store, &["--grace", "0"]);
    assert_eq!(c, 0, "clean after repair: {v:#}");
    m.mount();
    for i in 0..40 {
        let got = fs::read(m.path(&format!("f-{i}"))).unwrap();
        assert!(got == body(i), "f-{i} changed across the crash");
    }
}

/// Node files of the nodes below `store/nodes/` (not the directories of the shards).
fn node_files(store: &Path) -> usize {
    let mut n = 0;
    for a in fs::read_dir(store.join("nodes")).unwrap().flatten() {
        for b in fs::read_dir(a.path()).unwrap().flatten() {
            n += fs::read_dir(b.path()).unwrap().count();
        }
    }
    n
}

/// A scratch file's unlink (sqlite's `-journal`, every transaction) frees its node at
/// once without writing its record first, and moves the node file into staging for the
/// reaper (`Spares::remove_later`). Every unlink that returned has taken the node out of
/// `nodes/`: a writer killed right after such rounds leaves no orphan and nothing else
/// fsck reports (a node file still waiting in staging is stale staging, removed by
/// `--repair`); a second round, in which the kill lands while rounds are running,
/// leaves at most the one journal whose unlink was in flight, which fsck collects.
#[test]
fn a_crash_after_scratch_unlinks_leaves_no_node_behind() {
    let m = Mount::new();
    fs::write(m.path("db"), b"database").unwrap();
    let round = |mnt: &Path, i: u32| -> std::io::Result<()> {
        let p = mnt.join("db-journal");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)?;
        f.write_all(&vec![i as u8; 9000])?;
        f.sync_all()?;
        drop(f);
        File::open(mnt)?.sync_all()?;
        fs::remove_file(&p)
    };
    let before = node_files(&m.store);
    for i in 0..200 {
        round(&m.mnt, i).unwrap();
    }
    crash(&m);
    detach(&m);
    assert_eq!(
        node_files(&m.store),
        before,
        "node files left in nodes/ by scratch unlinks that returned"
    );
    assert!(
        fsck_after_crash(&m.store).is_empty(),
        "a crash after scratch unlinks left problems"
    );
    m.mount();
    assert_eq!(fs::read(m.path("db")).unwrap(), b"database");

    // The kill lands while rounds run.
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (mnt, stop) = (m.mnt.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && round(&mnt, i).is_ok() {
                i += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut codes = BTreeMap::new();
    crash_and_recover(&m, &mut codes, |_| {
        stop.store(true, Ordering::SeqCst);
        worker.join().unwrap();
    });
    assert!(
        codes.keys().all(|c| c == "orphan") && codes.values().all(|n| *n <= 1),
        "more than the journal in flight: {codes:?}"
    );
    assert_eq!(fs::read(m.path("db")).unwrap(), b"database");
}

fn content(seed: u64, i: u64, gen: u64) -> Vec<u8> {
    let mut r = fastrand::Rng::with_seed(seed ^ (i << 20) ^ (gen << 40));
    let size = match r.u32(0..10) {
        0..=3 => r.usize(0..2000),
        4..=8 => r.usize(2000..200_000),
        _ => r.usize(4 << 20..6 << 20),
    };
    let mut d = vec![0u8; size];
    r.fill(&mut d);
    d
}

/// What a writer knows: for each file, the committed generation and the one in flight.
#[derive(Default, Clone)]
struct Ledger {
    committed: BTreeMap<u64, u64>,
    in_flight: Option<(u64, u64)>,
}

/// Writes files fully, closes them (close = commit), and replaces others with the
/// write-temp + fsync + rename pattern; records what was committed.
fn writer(dir: PathBuf, seed: u64, round: u64, stop: Arc<AtomicBool>, ledger: Arc<Mutex<Ledger>>) {
    let mut r = fastrand::Rng::with_seed(seed + round);
    // Generations are unique across rounds, so content never repeats by accident.
    let mut gen = round * 1_000_000;
    while !stop.load(Ordering::Relaxed) {
        gen += 1;
        let known: Vec<u64> = ledger.lock().unwrap().committed.keys().copied().collect();
        let i = if known.is_empty() || r.bool() {
            r.u64(0..60)
        } else {
            known[r.usize(0..known.len())]
        };
        let data = content(seed, i, gen);
        ledger.lock().unwrap().in_flight = Some((i, gen));
        let path = dir.join(format!("w{i}"));
        let res = (|| -> std::io::Result<()> {
            if r.bool() {
                let tmp = dir.join(format!("w{i}.tmp"));
                let mut f = fs::File::create(&tmp)?;
                f.write_all(&data)?;
                f.sync_all()?;
                drop(f);
                fs::rename(&tmp, &path)
            } else {
                let mut f = fs::File::create(&path)?;
                f.write_all(&data)?;
                f.sync_all()?;
                Ok(())
            }
        })();
        if res.is_err() {
            return; // the daemon is gone
        }
        let mut l = ledger.lock().unwrap();
        l.committed.insert(i, gen);
        l.in_flight = None;
    }
}

/// In-flight files found holding a prefix of their new content.
static PREFIXES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Check every committed file is exactly its committed content; the file in flight is
/// its old content or a prefix of its new content (empty after O_TRUNC, or what was
/// written before a flush: a close of the descriptor copy a fork() in another thread
/// made commits the session, as FUSE sends FLUSH on every close) — never a mix of old
/// and new, never bytes that were not written.
fn verify(dir: &Path, seed: u64, l: &Ledger) -> u64 {
    let mut bytes = 0;
    for (i, gen) in &l.committed {
        let got = fs::read(dir.join(format!("w{i}"))).unwrap();
        let want = content(seed, *i, *gen);
        if Some(*i) == l.in_flight.map(|f| f.0) {
            let new = content(seed, *i, l.in_flight.unwrap().1);
            assert!(
                got == want || new.starts_with(&got),
                "w{i}: in-flight file is neither its old content nor (a prefix of) its new \
                 content ({} bytes)",
                got.len()
            );
            if !got.is_empty() && got != want && got != new {
                PREFIXES.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            assert!(
                got == want,
                "w{i}: committed content lost or mixed ({} vs {} bytes)",
                got.len(),
                want.len()
            );
            bytes += got.len() as u64;
        }
    }
    if let Some((i, gen)) = l.in_flight {
        if !l.committed.contains_key(&i) {
            if let Ok(got) = fs::read(dir.join(format!("w{i}"))) {
                let new = content(seed, i, gen);
                assert!(new.starts_with(&got), "w{i}: new file holds garbage");
                if !got.is_empty() && got != new {
                    PREFIXES.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    bytes
}

/// kill -9 of the daemon while a writer commits files: every committed file survives
/// byte for byte, fsck finds at most orphans.
#[test]
fn crash_during_writes_loses_nothing_committed() {
    let m = Mount::new();
    let seed = 77;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut verified = 0u64;
    let rounds = crash_rounds(20);
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let dir = m.mnt.clone();
        let (s2, l2) = (stop.clone(), ledger.clone());
        let t = std::thread::spawn(move || writer(dir, seed, round, s2, l2));
        std::thread::sleep(Duration::from_millis(rng.u64(30..700)));
        crash_and_recover(&m, &mut codes, |_| {
            stop.store(true, Ordering::Relaxed);
            t.join().unwrap();
        });
        let l = ledger.lock().unwrap().clone();
        verified += verify(&m.mnt, seed, &l);
        // Files in flight are settled now: take them out of the ledger's doubt.
        let mut l = ledger.lock().unwrap();
        if let Some((i, _)) = l.in_flight.take() {
            l.committed.remove(&i);
            let _ = fs::remove_file(m.mnt.join(format!("w{i}")));
        }
    }
    let n = ledger.lock().unwrap().committed.len();
    eprintln!(
        "writer crashes: {rounds}, files checked: {n}, committed bytes verified (all rounds): {verified}, bytes lost: 0, \
         in-flight files holding a prefix of their new content: {}, repaired: {codes:?}",
        PREFIXES.load(Ordering::Relaxed)
    );
    assert!(n > 10, "the writer committed too little to mean anything");
}

/// kill -9 of the daemon during `cp -a` of a tree: every file that made it is either
/// complete or empty (never partial), fsck finds at most orphans.
#[test]
fn crash_during_cp_leaves_whole_or_empty_files() {
    let m = Mount::new();
    let src = m.dir.path().join("src");
    make_tree(&src, 3, 4, 40);
    let mut rng = fastrand::Rng::with_seed(3);
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let rounds = crash_rounds(20);
    let (mut whole, mut empty) = (0, 0);
    for round in 0..rounds {
        let dst = m.mnt.join(format!("copy{round}"));
        let mut child = Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(&dst)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.u64(20..600)));
        crash_and_recover(&m, &mut codes, |_| {
            let _ = child.wait();
        });
        if !dst.exists() {
            continue;
        }
        for e in walk(&dst) {
            let rel = e.strip_prefix(&dst).unwrap();
            let md = fs::symlink_metadata(&e).unwrap();
            if md.is_file() {
                let got = fs::read(&e).unwrap();
                let want = fs::read(src.join(rel)).unwrap();
                if got.is_empty() && !want.is_empty() {
                    empty += 1;
                } else {
                    assert!(
                        got == want,
                        "{}: partial or mixed content after a crash",
                        rel.display()
                    );
                    whole += 1;
                }
            }
        }
        // Keep the store small: remove this copy before the next round.
        fs::remove_dir_all(&dst).unwrap();
    }
    eprintln!("cp crashes: {rounds}, whole files: {whole}, empty in-flight files: {empty}, repaired: {codes:?}");
    assert!(whole > 0);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Crash tests with a timeline of every state: the fsx-like workload, concurrent writers.

const MIB: usize = 1 << 20;
/// The store's chunk size (the default of `decofs init`).
const CHUNK: usize = 4 * MIB;
/// Writes stay far below max_write (1 MiB), so the kernel splits one into requests only
/// at page boundaries (see `partial_write`).
const MAX_WRITE: usize = 256 * 1024;
/// Files of the model workload stay near this size: inline, one chunk or two.
const MODEL_MAX: usize = CHUNK + 2 * MIB;
/// Each writer of the shared file owns one region this long; regions 1 and 2 hold a
/// chunk boundary, and every chunk is shared by two regions.
const REGION: usize = 3 * MIB;

/// One change to a file's bytes.
enum Change {
    Write { off: usize, data: Vec<u8> },
    Truncate(usize),
    Punch { off: usize, len: usize },
}

impl Change {
    fn apply(&self, s: &mut Vec<u8>) {
        match self {
            Change::Write { off, data } => {
                let end = off + data.len();
                if s.len() < end {
                    s.resize(end, 0);
                }
                s[*off..end].copy_from_slice(data);
            }
            Change::Truncate(n) => s.resize(*n, 0),
            Change::Punch { off, len } => {
                let end = (off + len).min(s.len());
                if *off < end {
                    s[*off..end].fill(0);
                }
            }
        }
    }

    /// Make the change through `f`; `origin` is where byte 0 of the model is in the file.
    fn make(&self, f: &File, origin: usize) -> std::io::Result<()> {
        match self {
            Change::Write { off, data } => f.write_all_at(data, (origin + off) as u64),
            Change::Truncate(n) => f.set_len((origin + n) as u64),
            Change::Punch { off, len } => {
                let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                let (off, len) = ((origin + off) as libc::off_t, *len as libc::off_t);
                // SAFETY: a plain syscall on a descriptor `f` keeps open.
                if unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) } == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Change::Write { off, data } => format!("write {off}+{}", data.len()),
            Change::Truncate(n) => format!("truncate to {n}"),
            Change::Punch { off, len } => format!("punch {off}+{len}"),
        }
    }
}

/// close(2) that reports the error of the FLUSH (the commit), which dropping a File hides.
fn close(f: File) -> std::io::Result<()> {
    // SAFETY: the descriptor is owned by `f` and closed exactly once.
    if unsafe { libc::close(f.into_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Read the clock shared by the writers of a round (and advance it).
fn tick(clock: &AtomicU64) -> u64 {
    clock.fetch_add(1, Ordering::SeqCst)
}

struct Step {
    change: Change,
    /// The clock read before the call and after it returned (u64::MAX: it did not return,
    /// the daemon died; it may have been done or not).
    t0: u64,
    t1: u64,
    /// fsync or close was called right after this change.
    commit: bool,
}

/// Where in its timeline a file (or region) was found after a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Found {
    /// At its last confirmed commit.
    LastCommit,
    /// At a later state whose fsync or close was in flight at the crash.
    UnconfirmedCommit,
    /// At a later state no commit was asked for (see `Timeline`).
    LaterState,
    /// A write(2) split into requests, committed between them (see `partial_write`).
    PartialWrite,
}

/// What a writer knows of one file, or of its region of a shared file: the content of its
/// last confirmed commit (fsync or close returned 0) and every change since, stamped with
/// a clock all writers of a round share. After a crash the content must be one of the
/// states from there on — never a mixture of two, never bytes nobody wrote. Each of them
/// may legitimately have been committed: the last confirmed one, one whose fsync or close
/// was in flight, and also one no commit was asked for, because the close of a copy of a
/// descriptor (a fork() in another thread of the test binary, see `verify`) or a release
/// arriving late commits the session as it is at that moment.
struct Timeline {
    /// Where byte 0 of this timeline is in the file.
    origin: usize,
    base: Vec<u8>,
    /// The clock reading from which the base state was current (see `matches`).
    base_lo: u64,
    steps: Vec<Step>,
    /// The content now: the base with every step applied.
    now: Vec<u8>,
}

impl Timeline {
    fn new(origin: usize, content: Vec<u8>) -> Timeline {
        Timeline {
            origin,
            base: content.clone(),
            base_lo: 0,
            steps: Vec::new(),
            now: content,
        }
    }

    /// Make `change` through `f` and record it (also when the call fails: it may have
    /// been done before the daemon died).
    fn change(&mut self, f: &File, change: Change, clock: &AtomicU64) -> std::io::Result<()> {
        change.apply(&mut self.now);
        let t0 = tick(clock);
        let res = change.make(f, self.origin);
        let t1 = if res.is_ok() { tick(clock) } else { u64::MAX };
        self.steps.push(Step {
            change,
            t0,
            t1,
            commit: false,
        });
        res
    }

    /// Commit with `commit` (fsync or close); once it returned 0 the state now is the
    /// base. Returns the clock read before the call: the commit read it later.
    fn commit(
        &mut self,
        clock: &AtomicU64,
        commit: impl FnOnce() -> std::io::Result<()>,
    ) -> std::io::Result<u64> {
        if let Some(s) = self.steps.last_mut() {
            s.commit = true;
        }
        let t0 = tick(clock);
        commit()?;
        if let Some(s) = self.steps.last() {
            self.base_lo = s.t0 + 1;
        }
        self.base = self.now.clone();
        self.steps.clear();
        Ok(t0)
    }

    /// Every state of this timeline `got` is, as (lo, hi, kind): a commit that caught
    /// that state read the clock between lo and hi. (Step i's call read the clock before
    /// the daemon applied it and after; so the state after step i was current only after
    /// a reading of t0ᵢ + 1 and before one of t1ᵢ₊₁ — a commit reading the clock at c sees
    /// it only if t0ᵢ + 1 <= c <= t1ᵢ₊₁.)
    fn matches(&self, got: &[u8]) -> Vec<(u64, u64, Found)> {
        let mut out = Vec::new();
        let mut s = self.base.clone();
        let (mut lo, mut kind) = (self.base_lo, Found::LastCommit);
        for st in &self.steps {
            if got == &s[..] {
                out.push((lo, st.t1, kind));
            }
            if let Change::Write { off, data } = &st.change {
                if partial_write(got, &s, *off, data, self.origin) {
                    out.push((st.t0 + 1, st.t1, Found::PartialWrite));
                }
            }
            st.change.apply(&mut s);
            lo = st.t0 + 1;
            kind = if st.commit {
                Found::UnconfirmedCommit
            } else {
                Found::LaterState
            };
        }
        debug_assert!(s == self.now);
        if got == &s[..] {
            out.push((lo, u64::MAX, kind));
        }
        out
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// Is `got` the state `s` with only a leading part of the write of `data` at `off` done?
/// The kernel sends a write(2) as several requests split at page boundaries (a partly
/// written page that is not in the cache ends a request; writes are far below max_write),
/// and a commit may fall between two of them. `origin`: where `s` starts in the file.
fn partial_write(got: &[u8], s: &[u8], off: usize, data: &[u8], origin: usize) -> bool {
    let page = page_size();
    // The split points: 0 < k < data.len() with origin + off + k on a page boundary.
    let first = page - (origin + off) % page;
    let split = |k: usize| k >= first && k < data.len() && (k - first).is_multiple_of(page);
    if got.len() > s.len() {
        // The file grew: the split is at its new end.
        let Some(k) = got.len().checked_sub(off) else {
            return false;
        };
        let keep = off.min(s.len());
        return split(k)
            && got[..keep] == s[..keep]
            && got[keep..off].iter().all(|b| *b == 0)
            && got[off..] == data[..k];
    }
    if got.len() != s.len() || off >= s.len() {
        return false;
    }
    // Same size: the split is inside the window of old content the write covers; the
    // new bytes must reach up to it (p) and the old ones start at or before it (q).
    let w = (s.len() - off).min(data.len());
    if got[..off] != s[..off] || got[off + w..] != s[off + w..] {
        return false;
    }
    let (g, old) = (&got[off..off + w], &s[off..off + w]);
    let p = g.iter().zip(data).take_while(|(a, b)| a == b).count();
    let same_tail = g.iter().rev().zip(old.iter().rev());
    let q = w - same_tail.take_while(|(a, b)| a == b).count();
    (q..=p).any(split)
}

fn first_diff(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!("first difference at byte {i}"),
        None if a.len() == b.len() => "equal".into(),
        None => format!("equal up to byte {}", a.len().min(b.len())),
    }
}

/// The states of `tl` that `got` is; panics, naming what was seen, if it is none.
fn judge(what: &str, got: &[u8], tl: &Timeline) -> Vec<(u64, u64, Found)> {
    let ms = tl.matches(got);
    if ms.is_empty() {
        let steps: Vec<String> = tl
            .steps
            .iter()
            .map(|s| {
                let t1 = if s.t1 == u64::MAX {
                    "-".into()
                } else {
                    s.t1.to_string()
                };
                let c = if s.commit { ", then fsync/close" } else { "" };
                format!("{} (clock {}..{t1}){c}", s.change.describe(), s.t0)
            })
            .collect();
        panic!(
            "{what}: the {} bytes found after the crash are none of the states since the \
             last confirmed commit (a mixture, or bytes nobody wrote); vs that commit ({} \
             bytes): {}; vs the latest state ({} bytes): {}; the {} changes since:\n  {}",
            got.len(),
            tl.base.len(),
            first_diff(got, &tl.base),
            tl.now.len(),
            first_diff(got, &tl.now),
            steps.len(),
            steps.join("\n  ")
        );
    }
    ms
}

/// A workload thread's files, what it did, and how it ended.
struct Worked {
    files: Vec<(PathBuf, Timeline)>,
    ops: u64,
    commits: u64,
    /// The call that failed (the daemon was killed), and when.
    end: Option<(String, std::io::Error)>,
    end_at: Option<Instant>,
}

impl Worked {
    fn new(files: Vec<(PathBuf, Timeline)>) -> Worked {
        Worked {
            files,
            ops: 0,
            commits: 0,
            end: None,
            end_at: None,
        }
    }

    /// A workload may only fail because the daemon died: its connection is gone
    /// (ENOTCONN, ECONNABORTED), or — after the kill only — EIO: the kernel ends a request
    /// with EIO when copying it to a daemon thread fails, which a large write being read
    /// by a thread that SIGKILL is tearing down was seen to do.
    fn ended_by_the_crash(&self, killed: Instant, store: &Path) {
        let (Some((what, e)), Some(at)) = (&self.end, self.end_at) else {
            return;
        };
        let after = at > killed;
        let gone = matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED))
            || (after && e.raw_os_error() == Some(libc::EIO));
        let when = if after {
            format!("{:?} after the kill", at - killed)
        } else {
            format!("{:?} before the kill", killed - at)
        };
        assert!(
            gone,
            "{what} failed, and not because the daemon was killed: {e} ({when})\n\
             the daemon's log ends:\n{}",
            log_tail(store)
        );
    }
}

fn pick_len(rng: &mut fastrand::Rng) -> usize {
    match rng.u8(0..10) {
        0..=2 => rng.usize(1..=4096),
        3..=5 => rng.usize(1..=64 * 1024),
        _ => rng.usize(1..=MAX_WRITE),
    }
}

fn random_bytes(rng: &mut fastrand::Rng, len: usize) -> Vec<u8> {
    let mut d = vec![0u8; len];
    rng.fill(&mut d);
    d
}

/// An fsx-like change to a file of `size` bytes.
fn pick_change(rng: &mut fastrand::Rng, size: usize) -> Change {
    let len = pick_len(rng);
    let off = match rng.u8(0..20) {
        0..=7 => rng.usize(0..=size),               // inside
        8..=10 => CHUNK - rng.usize(1..len.max(2)), // across the chunk boundary
        11..=12 => size + rng.usize(1..=MIB),       // past the end, leaving a hole
        13..=15 => size,                            // append
        16..=17 => {
            let to = match rng.u8(0..3) {
                0 => rng.usize(0..=size),       // down
                1 => rng.usize(0..=2048),       // to inline size or about
                _ => size + rng.usize(1..=MIB), // up, a hole
            };
            return Change::Truncate(to.min(MODEL_MAX));
        }
        _ => {
            let off = rng.usize(0..=size);
            return Change::Punch {
                off,
                len: rng.usize(1..=MIB),
            };
        }
    };
    Change::Write {
        off: off.min(MODEL_MAX),
        data: random_bytes(rng, len),
    }
}

/// The fsx-like workload on `files` (each op on a random one; fsync, close or nothing
/// after it, at random) until a call fails — the daemon was killed — or `stop`.
fn model_workload(
    files: Vec<(PathBuf, Timeline)>,
    seed: u64,
    clock: &AtomicU64,
    stop: &AtomicBool,
) -> Worked {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut w = Worked::new(files);
    let mut open: Vec<Option<File>> = w.files.iter().map(|_| None).collect();
    while !stop.load(Ordering::Relaxed) {
        let i = rng.usize(0..w.files.len());
        if let Err(e) = model_op(&mut rng, &mut w, i, &mut open[i], clock) {
            w.end = Some(e);
            w.end_at = Some(Instant::now());
            break;
        }
    }
    w
}

type OpResult = Result<(), (String, std::io::Error)>;

fn model_op(
    rng: &mut fastrand::Rng,
    w: &mut Worked,
    i: usize,
    fd: &mut Option<File>,
    clock: &AtomicU64,
) -> OpResult {
    let (path, tl) = &mut w.files[i];
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    if fd.is_none() {
        let f = OpenOptions::new().write(true).open(path);
        *fd = Some(f.map_err(|e| (format!("open {name}"), e))?);
    }
    let change = pick_change(rng, tl.now.len());
    let what = format!("{} on {name}", change.describe());
    tl.change(fd.as_ref().unwrap(), change, clock)
        .map_err(|e| (what, e))?;
    w.ops += 1;
    match rng.u32(0..100) {
        0..=19 => {
            let f = fd.as_ref().unwrap();
            tl.commit(clock, || f.sync_all())
                .map_err(|e| (format!("fsync {name}"), e))?;
        }
        20..=34 => {
            let f = fd.take().unwrap();
            tl.commit(clock, || close(f))
                .map_err(|e| (format!("close {name}"), e))?;
        }
        _ => return Ok(()),
    }
    w.commits += 1;
    Ok(())
}

/// A writer of one region of a shared file through its own descriptor: pwrite at random
/// offsets in it (a third across the chunk boundary the region holds, if any), then
/// fsync, close or nothing, until a call fails or `stop`. A commit confirmed after the
/// clock read t means the last commit before the crash read it later: `lower` keeps the
/// highest such bound of all writers.
fn region_workload(
    path: PathBuf,
    tl: Timeline,
    seed: u64,
    clock: &AtomicU64,
    lower: &AtomicU64,
    stop: &AtomicBool,
) -> Worked {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut w = Worked::new(vec![(path, tl)]);
    let mut fd = None;
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = region_op(&mut rng, &mut w, &mut fd, clock, lower) {
            w.end = Some(e);
            w.end_at = Some(Instant::now());
            break;
        }
    }
    w
}

fn region_op(
    rng: &mut fastrand::Rng,
    w: &mut Worked,
    fd: &mut Option<File>,
    clock: &AtomicU64,
    lower: &AtomicU64,
) -> OpResult {
    let (path, tl) = &mut w.files[0];
    let name = format!("region {} of the shared file", tl.origin / REGION);
    if fd.is_none() {
        let f = OpenOptions::new().write(true).open(path);
        *fd = Some(f.map_err(|e| (format!("open {name}"), e))?);
    }
    let len = pick_len(rng);
    let boundary = (tl.origin / CHUNK + 1) * CHUNK - tl.origin;
    let off = if boundary < REGION && rng.u8(0..3) == 0 {
        (boundary - rng.usize(1..len.max(2))).min(REGION - len)
    } else {
        rng.usize(0..=REGION - len)
    };
    let change = Change::Write {
        off,
        data: random_bytes(rng, len),
    };
    let what = format!("{} in {name}", change.describe());
    tl.change(fd.as_ref().unwrap(), change, clock)
        .map_err(|e| (what, e))?;
    w.ops += 1;
    let t0 = match rng.u32(0..100) {
        0..=19 => {
            let f = fd.as_ref().unwrap();
            tl.commit(clock, || f.sync_all())
                .map_err(|e| (format!("fsync {name}"), e))?
        }
        20..=24 => {
            let f = fd.take().unwrap();
            tl.commit(clock, || close(f))
                .map_err(|e| (format!("close {name}"), e))?
        }
        _ => return Ok(()),
    };
    lower.fetch_max(t0 + 1, Ordering::SeqCst);
    w.commits += 1;
    Ok(())
}

/// Check each file of a finished workload against its timeline and count where it was
/// found; the content found is the start of the next round.
fn judge_files(
    w: Worked,
    what: &str,
    found: &mut BTreeMap<Found, usize>,
) -> Vec<(PathBuf, Timeline)> {
    w.files
        .into_iter()
        .map(|(path, tl)| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let got = fs::read(&path).unwrap_or_else(|e| panic!("{what}: read {name}: {e}"));
            let ms = judge(&format!("{what}: {name}"), &got, &tl);
            *found
                .entry(ms.iter().map(|m| m.2).min().unwrap())
                .or_default() += 1;
            (path, Timeline::new(0, got))
        })
        .collect()
}

/// Check the shared file: each region is one of its states, and one commit caught them
/// all — some clock reading no earlier than the last confirmed commit falls in a range
/// of every region's state. Returns the timelines of the next round.
fn judge_shared(
    path: &Path,
    regions: Vec<Worked>,
    lower: u64,
    what: &str,
    found: &mut BTreeMap<Found, usize>,
) -> Vec<Timeline> {
    let got = fs::read(path).unwrap_or_else(|e| panic!("{what}: read the shared file: {e}"));
    assert_eq!(
        got.len(),
        REGION * regions.len(),
        "{what}: the shared file changed size"
    );
    let tls: Vec<&Timeline> = regions.iter().map(|w| &w.files[0].1).collect();
    let all: Vec<Vec<(u64, u64, Found)>> = tls
        .iter()
        .map(|tl| {
            let region = &got[tl.origin..tl.origin + REGION];
            judge(
                &format!("{what}: region {}", tl.origin / REGION),
                region,
                tl,
            )
        })
        .collect();
    let holds = |ms: &Vec<(u64, u64, Found)>, c: u64| ms.iter().any(|m| m.0 <= c && c <= m.1);
    let at = std::iter::once(lower)
        .chain(all.iter().flatten().map(|m| m.0))
        .filter(|c| *c >= lower)
        .find(|c| all.iter().all(|ms| holds(ms, *c)));
    let Some(at) = at else {
        panic!(
            "{what}: the regions of the shared file hold states of different moments (a \
             mixture no commit saw): (from, to, kind) of each region's matching states: \
             {all:?}; the last confirmed commit read the clock after {lower}"
        );
    };
    for ms in &all {
        let kind = ms
            .iter()
            .filter(|m| m.0 <= at && at <= m.1)
            .map(|m| m.2)
            .min();
        *found.entry(kind.unwrap()).or_default() += 1;
    }
    tls.iter()
        .map(|tl| Timeline::new(tl.origin, got[tl.origin..tl.origin + REGION].to_vec()))
        .collect()
}

/// kill -9 of the daemon during the fsx-like workload — writes inside, across a chunk
/// boundary and past the end, appends, truncates and punched holes on three files, each
/// followed at random by fsync, close or nothing: after every crash fsck finds at most
/// orphans and each file is one state of its timeline since its last confirmed commit.
#[test]
fn crash_during_model_workload() {
    let m = Mount::new();
    let seed = 0x7c4a_5e01;
    let mut files = Vec::new();
    for name in ["m0", "m1", "m2"] {
        close(File::create(m.path(name)).unwrap()).unwrap();
        files.push((m.path(name), Timeline::new(0, Vec::new())));
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut codes, mut found) = (BTreeMap::new(), BTreeMap::new());
    let (mut ops, mut commits) = (0, 0);
    let rounds = crash_rounds(8);
    for round in 0..rounds {
        let clock = Arc::new(AtomicU64::new(1));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s, sd) = (clock.clone(), stop.clone(), seed ^ (round << 32));
        let t = std::thread::spawn(move || model_workload(files, sd, &c, &s));
        std::thread::sleep(Duration::from_millis(rng.u64(100..1500)));
        let w = crash_and_recover(&m, &mut codes, |killed| {
            stop.store(true, Ordering::Relaxed);
            let w = t.join().unwrap();
            w.ended_by_the_crash(killed, &m.store);
            w
        });
        (ops, commits) = (ops + w.ops, commits + w.commits);
        files = judge_files(w, &format!("seed {seed:#x}, round {round}"), &mut found);
    }
    eprintln!(
        "model crashes: {rounds}, changes: {ops}, confirmed commits: {commits}, files found \
         at: {found:?}, repaired: {codes:?}"
    );
    assert!(
        commits >= rounds,
        "the workload committed too little to mean anything"
    );
}

/// kill -9 of the daemon while 8 threads write: 4 run the fsx-like workload on a file of
/// their own, 4 pwrite their own region of one shared file through their own descriptor
/// (chunks straddle regions) with fsync or close now and then. After every crash fsck
/// finds at most orphans, each own file is one state of its timeline, and the shared file
/// is one state of every region's timeline, all current at one moment: what one commit
/// saw, never a mixture of commits.
#[test]
fn crash_during_concurrent_writers() {
    let m = Mount::new();
    let seed = 0x7c4a_5e02;
    let shared = m.path("shared");
    let f = File::create(&shared).unwrap();
    f.set_len((4 * REGION) as u64).unwrap();
    close(f).unwrap();
    let mut own: Vec<Vec<(PathBuf, Timeline)>> = (0..4)
        .map(|i| {
            let p = m.path(&format!("own{i}"));
            close(File::create(&p).unwrap()).unwrap();
            vec![(p, Timeline::new(0, Vec::new()))]
        })
        .collect();
    let mut regions: Vec<Timeline> = (0..4)
        .map(|r| Timeline::new(r * REGION, vec![0; REGION]))
        .collect();
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut codes, mut found, mut found_shared) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let (mut ops, mut commits) = (0, 0);
    let rounds = crash_rounds(8);
    for round in 0..rounds {
        let clock = Arc::new(AtomicU64::new(1));
        let lower = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (i, files) in own.drain(..).enumerate() {
            let (c, s, sd) = (
                clock.clone(),
                stop.clone(),
                seed ^ (round << 32) ^ (i << 8) as u64,
            );
            threads.push(std::thread::spawn(move || {
                model_workload(files, sd, &c, &s)
            }));
        }
        for (r, tl) in regions.drain(..).enumerate() {
            let (c, l, s) = (clock.clone(), lower.clone(), stop.clone());
            let (p, sd) = (shared.clone(), seed ^ (round << 32) ^ ((r + 4) << 8) as u64);
            threads.push(std::thread::spawn(move || {
                region_workload(p, tl, sd, &c, &l, &s)
            }));
        }
        std::thread::sleep(Duration::from_millis(rng.u64(100..1500)));
        let mut ws: Vec<Worked> = crash_and_recover(&m, &mut codes, |killed| {
            stop.store(true, Ordering::Relaxed);
            let ws: Vec<Worked> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            for w in &ws {
                w.ended_by_the_crash(killed, &m.store);
            }
            ws
        });
        for w in &ws {
            (ops, commits) = (ops + w.ops, commits + w.commits);
        }
        let what = format!("seed {seed:#x}, round {round}");
        let writers = ws.split_off(4);
        regions = judge_shared(
            &shared,
            writers,
            lower.load(Ordering::SeqCst),
            &what,
            &mut found_shared,
        );
        own = ws
            .into_iter()
            .map(|w| judge_files(w, &what, &mut found))
            .collect();
    }
    eprintln!(
        "concurrent writer crashes: {rounds}, changes: {ops}, confirmed commits: {commits}, \
         own files found at: {found:?}, shared regions found at: {found_shared:?}, repaired: \
         {codes:?}"
    );
    assert!(
        commits >= rounds,
        "the writers committed too little to mean anything"
    );
}
