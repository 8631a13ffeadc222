//! Undo: trash, versions, restore, purge, retention — and the three decomposedfs
//! failures that must not happen here.

mod common;

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{decofs, sh, Mount};
use serde_json::Value;

fn ok_json(args: &[&str]) -> Value {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let out = decofs(&full);
    assert!(
        out.status.success(),
        "decofs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn fails_with(args: &[&str], code: &str) -> String {
    let out = decofs(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "decofs {args:?} should fail with {code}"
    );
    assert!(
        err.contains(code),
        "decofs {args:?}: expected {code}, got: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    err
}

/// `decofs fsck --grace 0` of an unmounted store finds nothing.
#[track_caller]
fn assert_fsck_clean(store: &Path, what: &str) {
    let out = decofs(&["fsck", store.to_str().unwrap(), "--grace", "0"]);
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn du_bytes(p: &Path) -> u64 {
    sh(&format!("du -sb '{}' | cut -f1", p.display()))
        .trim()
        .parse()
        .unwrap()
}

fn versions(file: &Path) -> Vec<String> {
    ok_json(&["versions", "ls", file.to_str().unwrap()])["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["rev"].as_str().unwrap().to_string())
        .collect()
}

fn wait_consistent(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = xattr::get(p, "user.decofs.status").unwrap().unwrap();
        if v == b"consistent" || Instant::now() > deadline {
            assert_eq!(v, b"consistent", "{} stays pending", p.display());
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A real tree deleted with rm -rf comes back whole (diff -r equal), mounted and unmounted.
#[test]
fn deleted_tree_restores_whole() {
    let m = Mount::new();
    let src = m.dir.path().join("src");
    fs::create_dir(&src).unwrap();
    // Part of this repository: a few dozen files in nested directories.
    sh(&format!(
        "cp -a '{}/src' '{}/tests' '{}/scripts' '{}/'",
        env!("CARGO_MANIFEST_DIR"),
        env!("CARGO_MANIFEST_DIR"),
        env!("CARGO_MANIFEST_DIR"),
        src.display()
    ));
    fs::write(
        src.join("big.bin"),
        (0..9_000_000u32)
            .map(|i| (i % 241) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    sh(&format!(
        "cp -a '{}' '{}'",
        src.display(),
        m.path("tree").display()
    ));
    sh(&format!("rm -rf '{}'", m.path("tree").display()));
    assert!(!m.path("tree").exists());
    let listed = ok_json(&["trash", "ls", m.mnt.to_str().unwrap()]);
    assert!(listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["origin"] == "tree"));
    let r = ok_json(&["trash", "restore", m.mnt.to_str().unwrap(), "tree"]);
    assert_eq!(r["restored_to"], "tree");
    sh(&format!(
        "diff -r '{}' '{}'",
        src.display(),
        m.path("tree").display()
    ));

    // Again, on the unmounted store, after a remount in between.
    sh(&format!("rm -rf '{}'", m.path("tree").display()));
    m.unmount();
    m.mount();
    assert!(!m.path("tree").exists());
    m.unmount();
    let r = ok_json(&["trash", "restore", m.store.to_str().unwrap(), "tree"]);
    assert_eq!(r["restored_to"], "tree");
    m.mount();
    sh(&format!(
        "diff -r '{}' '{}'",
        src.display(),
        m.path("tree").display()
    ));
}

/// Files under `p`, counted by walking it (0 if it does not exist).
fn count_files(p: &Path) -> usize {
    let Ok(it) = fs::read_dir(p) else {
        return 0;
    };
    it.flatten()
        .map(|e| {
            if e.file_type().unwrap().is_dir() {
                1 + count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// A restored tree appears in one step: a reader walking it while the restore runs
/// finds nothing or all of it, never part. The trash lists it as one entry with its
/// totals, and nested entries with their whole paths.
#[test]
fn a_restored_tree_appears_whole_at_once() {
    let m = Mount::new();
    let tree = m.path("tree");
    for d in 0..30 {
        let dir = tree.join(format!("d{d}")).join("inner");
        fs::create_dir_all(&dir).unwrap();
        for f in 0..40 {
            fs::write(dir.join(format!("f{f}")), format!("{d} {f}")).unwrap();
        }
    }
    let total = count_files(&tree);
    assert_eq!(total, 30 * 42);
    sh(&format!("rm -rf '{}'", tree.display()));

    let listed = ok_json(&["trash", "ls", m.mnt.to_str().unwrap()]);
    let entries = listed["entries"].as_array().unwrap();
    assert_eq!(entries.len(), total + 1);
    let tops: Vec<&Value> = entries.iter().filter(|e| e["within"].is_null()).collect();
    assert_eq!(tops.len(), 1, "one top entry: {tops:?}");
    assert_eq!(tops[0]["origin"], "tree");
    assert_eq!(tops[0]["nodes"], (total + 1) as u64);
    assert!(entries.iter().any(|e| e["origin"] == "tree/d7/inner/f3"));
    assert!(
        entries.iter().all(|e| !e["origin"].is_null()),
        "every entry has its whole path"
    );

    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, tree) = (done.clone(), tree.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !done.load(Ordering::SeqCst) {
                if tree.exists() {
                    seen.push(count_files(&tree));
                }
            }
            seen
        })
    };
    let r = ok_json(&["trash", "restore", m.mnt.to_str().unwrap(), "tree"]);
    done.store(true, Ordering::SeqCst);
    let seen = watcher.join().unwrap();
    assert_eq!(r["restored_to"], "tree");
    assert!(
        seen.iter().all(|&n| n == total),
        "a reader saw part of the tree: {:?}",
        seen.iter()
            .filter(|&&n| n != total)
            .take(5)
            .collect::<Vec<_>>()
    );
    assert_eq!(count_files(&tree), total);
    assert_eq!(
        fs::read_to_string(tree.join("d29/inner/f39")).unwrap(),
        "29 39"
    );
    assert_eq!(fs::metadata(tree.join("d3")).unwrap().nlink(), 3);
    assert_eq!(fs::metadata(&tree).unwrap().nlink(), 32);
    let after = ok_json(&["trash", "ls", m.mnt.to_str().unwrap()]);
    assert!(after["entries"].as_array().unwrap().is_empty());
    // Its entry symlinks were made ahead in a staging directory of their own: all
    // renamed into place, the directory gone, and the store sound.
    let staging: Vec<String> = fs::read_dir(m.store.join("sessions"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restore"))
        .collect();
    assert!(staging.is_empty(), "left behind: {staging:?}");
    m.unmount();
    assert_fsck_clean(&m.store, "fsck after the restore");
}

/// Scratch files skip the trash: names that are scratch by convention, and files
/// deleted younger than `trash_min_age`; everything else is kept. A scratch file
/// deleted while open lives until its last close and is freed then. Both rules are
/// set at init and per mount.
#[test]
fn scratch_files_skip_the_trash() {
    let mut m = Mount::with_init(&["--trash-min-age", "1s"], "allow_other");
    let mnt = m.mnt.to_str().unwrap().to_string();
    let mnt = mnt.as_str();
    let format = fs::read_to_string(m.store.join("decofs.format")).unwrap();
    assert!(format.contains("trash_min_age 1\n"), "{format}");
    assert!(format.contains("*-journal"), "{format}");
    for old in [
        "notes.txt",
        "db.sqlite-journal",
        "draft.tmp",
        ".notes.txt.swp",
        "x~",
    ] {
        fs::write(m.path(old), "old enough").unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    fs::write(m.path("young.txt"), "just made").unwrap();
    let mut open = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("open.part"))
        .unwrap();
    open.write_all(b"still open").unwrap();
    for name in [
        "notes.txt",
        "db.sqlite-journal",
        "draft.tmp",
        ".notes.txt.swp",
        "x~",
        "young.txt",
        "open.part",
    ] {
        fs::remove_file(m.path(name)).unwrap();
    }
    let origins = |mnt: &str| -> Vec<String> {
        let mut v: Vec<String> = ok_json(&["trash", "ls", mnt])["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["origin"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        origins(mnt),
        ["notes.txt"],
        "only the file that is not scratch"
    );
    // The deleted scratch file is readable and writable until its last close.
    open.write_all(b", written after the delete").unwrap();
    let mut back = vec![0u8; 64];
    let n = open.read_at(&mut back, 0).unwrap();
    assert_eq!(&back[..n], b"still open, written after the delete");
    drop(open);
    m.unmount();
    // Freed, not orphaned: fsck finds nothing to repair or re-trash.
    assert_fsck_clean(&m.store, "fsck");
    common::assert_counts_exact(&m.store, "after scratch files");

    // Per mount: no patterns and no age limit, and every deleted file is kept.
    m.opts = "allow_other,trash_skip=,trash_min_age=0".into();
    m.mount();
    fs::write(m.path("b.tmp"), "kept now").unwrap();
    fs::remove_file(m.path("b.tmp")).unwrap();
    assert_eq!(origins(mnt), ["b.tmp", "notes.txt"]);
}

/// Blob files in a store (`blobs/xx/<hash>`).
fn blob_files(store: &Path) -> usize {
    fs::read_dir(store.join("blobs"))
        .unwrap()
        .flatten()
        .filter(|d| d.path().is_dir())
        .map(|d| fs::read_dir(d.path()).unwrap().count())
        .sum()
}

/// A scratch file written, fsynced, closed and deleted at once (sqlite's journal, in
/// every transaction) never has its content stored: no blob appears for it.
#[test]
fn a_scratch_file_deleted_at_once_stores_no_blob() {
    let m = Mount::new();
    let before = blob_files(&m.store);
    for i in 0..20u32 {
        let p = m.path("db.sqlite-journal");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        let mut body = vec![0x5au8; 100_000]; // past the inline limit: a blob if stored
        body[..4].copy_from_slice(&i.to_le_bytes());
        f.write_all(&body).unwrap();
        f.sync_all().unwrap();
        drop(f);
        fs::remove_file(&p).unwrap();
    }
    // A file that is not scratch is stored at its close, as always.
    fs::write(m.path("kept.bin"), vec![0x33u8; 100_000]).unwrap();
    let after = blob_files(&m.store);
    assert_eq!(after, before + 1, "blobs before {before}, after {after}");
    assert!(
        ok_json(&["trash", "ls", m.mnt.to_str().unwrap()])["entries"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

/// Files deleted right after they were made (sqlite's `-journal` lives for one
/// transaction) take the trash links made ahead for them (`store/spare.rs`): every one
/// is in the trash under its own name, restores whole, and fsck finds the links sound.
#[test]
fn files_deleted_young_all_reach_the_trash() {
    let m = Mount::new();
    let mnt = m.mnt.to_str().unwrap();
    const N: usize = 300;
    let body = |i: usize| format!("journal {i:03}\n").repeat(200); // past inline: a blob
    for i in 0..N {
        let p = m.path(&format!("j-{i:03}"));
        fs::write(&p, body(i)).unwrap();
        fs::remove_file(&p).unwrap();
    }
    let listed = ok_json(&["trash", "ls", mnt]);
    let mut origins: Vec<String> = listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["origin"].as_str().unwrap_or_default().to_string())
        .collect();
    origins.sort();
    let want: Vec<String> = (0..N).map(|i| format!("j-{i:03}")).collect();
    assert_eq!(origins, want, "the trash holds each deleted file once");
    for i in [0, N / 2, N - 1] {
        let name = format!("j-{i:03}");
        let r = ok_json(&["trash", "restore", mnt, &name]);
        assert_eq!(r["restored_to"], name.as_str());
        assert_eq!(
            fs::read_to_string(m.path(&name)).unwrap(),
            body(i),
            "{name}"
        );
    }
    m.unmount();
    // Each trash link is `<nanos>.<id>.<parent>.<name tag>` and points at
    // `../nodes/xx/yy/<id>`, whether it was made ahead or at the delete.
    let trash = m.store.join("trash");
    let mut links = 0;
    for e in fs::read_dir(&trash).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let parts: Vec<&str> = name.split('.').collect();
        assert_eq!(parts.len(), 4, "trash link {name}");
        let id = parts[1].to_string();
        let target = fs::read_link(e.path()).unwrap();
        let want = format!("../nodes/{}/{}/{id}", &id[0..2], &id[2..4]);
        assert_eq!(target, Path::new(&want), "trash link {name}");
        assert!(trash.join(&target).exists(), "trash link {name} dangles");
        links += 1;
    }
    assert_eq!(links, N - 3, "one trash link per file still deleted");
    assert_fsck_clean(&m.store, "fsck after young deletes");
}

/// The kernel caches directory listings (`FOPEN_CACHE_DIR`): a listing read before a
/// change through the mount, or before a restore (made behind the kernel's back, through
/// the control socket), never hides the change.
#[test]
fn cached_listings_follow_changes_and_restores() {
    let m = Mount::new();
    let mnt = m.mnt.to_str().unwrap();
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    let names = |p: &Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    for n in ["a", "b", "c"] {
        fs::write(d.join(n), n).unwrap();
    }
    // Each listing twice: the second may come from the kernel's cache.
    let check = |want: &[&str], what: &str| {
        for k in 0..2 {
            assert_eq!(names(&d), want, "listing {k} {what}");
        }
    };
    check(&["a", "b", "c"], "after the creates");
    fs::remove_file(d.join("a")).unwrap();
    check(&["b", "c"], "after rm a");
    fs::rename(d.join("b"), d.join("b2")).unwrap();
    check(&["b2", "c"], "after mv b b2");
    fs::create_dir(d.join("sub")).unwrap();
    fs::hard_link(d.join("c"), d.join("c-link")).unwrap();
    check(&["b2", "c", "c-link", "sub"], "after mkdir and link");
    let r = ok_json(&["trash", "restore", mnt, "d/a"]);
    assert_eq!(r["restored_to"], "d/a");
    check(
        &["a", "b2", "c", "c-link", "sub"],
        "after the restore of d/a",
    );
    assert_eq!(fs::read_to_string(d.join("a")).unwrap(), "a");
    // A whole directory restored into a cached listing, and its own listing.
    fs::write(d.join("sub").join("x"), "x").unwrap();
    assert_eq!(names(&d.join("sub")), ["x"]);
    fs::remove_dir_all(d.join("sub")).unwrap();
    check(&["a", "b2", "c", "c-link"], "after rm -r sub");
    ok_json(&["trash", "restore", mnt, "d/sub"]);
    check(
        &["a", "b2", "c", "c-link", "sub"],
        "after the restore of d/sub",
    );
    assert_eq!(names(&d.join("sub")), ["x"]);
}

/// `mv b a` overwrites a: the old a is in the trash; restoring at a taken name is a
/// clear error, --to works; a vanished parent is a clear error too.
#[test]
fn overwrite_by_mv_restored_and_clear_errors() {
    let m = Mount::new();
    let mnt = m.mnt.to_str().unwrap();
    fs::write(m.path("a"), b"the original a, precious").unwrap();
    fs::write(m.path("b"), b"b replaces it").unwrap();
    sh(&format!(
        "mv '{}' '{}'",
        m.path("b").display(),
        m.path("a").display()
    ));
    assert_eq!(fs::read(m.path("a")).unwrap(), b"b replaces it");
    let err = fails_with(&["trash", "restore", mnt, "a"], "restore_name_taken");
    assert!(err.contains("--to"), "suggestion missing: {err}");
    let to = m.path("a.orig");
    ok_json(&[
        "trash",
        "restore",
        mnt,
        &m.path("a").to_string_lossy(),
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(fs::read(&to).unwrap(), b"the original a, precious");
    assert_eq!(fs::read(m.path("a")).unwrap(), b"b replaces it");

    // What was deleted out of a directory before the directory itself counts as
    // deleted with it: d/x deleted, then d; purging d purges x too.
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/x"), b"x").unwrap();
    fs::remove_file(m.path("d/x")).unwrap();
    let xid = ok_json(&["trash", "ls", mnt])["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["origin"] == "d/x")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    fs::remove_dir(m.path("d")).unwrap();
    let did = ok_json(&["trash", "ls", mnt])["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["origin"] == "d")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let listed = ok_json(&["trash", "ls", mnt])["entries"].clone();
    let x = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == xid.as_str())
        .unwrap()
        .clone();
    assert_eq!(x["within"], did.as_str(), "x is listed under d");
    // Parent gone: --to a directory that does not exist.
    let err = fails_with(
        &["trash", "restore", mnt, &xid, "--to", "no/such/x"],
        "restore_parent_gone",
    );
    assert!(err.contains("--to"), "{err}");
    let purged = ok_json(&["trash", "purge", mnt, "--id", &did]);
    assert_eq!(purged["nodes"], 2, "d and what was deleted out of it");
    fails_with(&["trash", "restore", mnt, &xid], "not_in_trash");
    fails_with(&["trash", "restore", mnt, "no/such/file"], "not_in_trash");
}

/// 10 revisions of a file, each restored byte-exact; they survive a remount.
#[test]
fn ten_revisions_each_restored_exactly() {
    let m = Mount::new();
    let f = m.path("doc");
    let content = |i: usize| -> Vec<u8> {
        (0..(50_000 + i * 700_000))
            .map(|j| ((j * 7 + i * 13) % 251) as u8)
            .collect()
    };
    for i in 0..11 {
        fs::write(&f, content(i)).unwrap();
        wait_consistent(&f);
    }
    let revs = versions(&f);
    assert_eq!(revs.len(), 10, "revisions: {revs:?}");
    m.remount();
    assert_eq!(versions(&f), revs);
    for (i, rev) in revs.iter().enumerate() {
        ok_json(&["versions", "restore", f.to_str().unwrap(), rev]);
        assert_eq!(
            fs::read(&f).unwrap(),
            content(i),
            "revision {i} not restored exactly"
        );
    }
    // Restores are undoable too: the content before each restore became a revision.
    assert!(versions(&f).len() == 10);
    m.unmount();
    // Unmounted: list through the store path.
    let offline = m.store.join("doc");
    assert_eq!(
        ok_json(&["versions", "ls", offline.to_str().unwrap()])["versions"]
            .as_array()
            .unwrap()
            .len(),
        10
    );
}

/// A version closed while another descriptor still holds the open file (so the kernel's
/// RELEASE has not come, as after any close(2) until it does) becomes a revision when the
/// file is opened and changed again: what a user closed is what they can go back to,
/// whatever the timing of the release.
#[test]
fn a_closed_version_is_a_revision_before_the_release() {
    let m = Mount::new();
    let f = m.path("doc");
    let old = vec![b'o'; 200_000];
    let w = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&f)
        .unwrap();
    let held = w.try_clone().unwrap(); // keeps the open file: close(w) flushes only
    (&w).write_all(&old).unwrap();
    drop(w);
    fs::write(&f, b"new content").unwrap();
    let revs = versions(&f);
    assert_eq!(revs.len(), 1, "revisions: {revs:?}");
    drop(held);
    ok_json(&["versions", "restore", f.to_str().unwrap(), &revs[0]]);
    assert!(fs::read(&f).unwrap() == old, "the closed version restored");
}

/// Purge frees the space, measured on the store; with trash off (mount option
/// trash_retention=0) space is freed at once after the last close.
#[test]
fn purge_frees_space() {
    let m = Mount::new();
    let blobs = m.store.join("blobs");
    // Incompressible and without repeated chunks (chunks are deduplicated).
    let mut rng = fastrand::Rng::with_seed(7);
    let data: Vec<u8> = (0..24_000_000).map(|_| rng.u8(..)).collect();
    fs::write(m.path("big"), &data).unwrap();
    wait_consistent(&m.path("big"));
    let before = du_bytes(&blobs);
    fs::remove_file(m.path("big")).unwrap();
    assert!(
        du_bytes(&blobs) >= before - 1_000_000,
        "deleting must not free: the file is in the trash"
    );
    let st = ok_json(&["status", m.mnt.to_str().unwrap()]);
    assert!(st["trash"]["bytes"].as_u64().unwrap() >= 24_000_000);
    let r = ok_json(&["trash", "purge", m.mnt.to_str().unwrap(), "--all"]);
    let after = du_bytes(&blobs);
    println!(
        "blobs before purge {before} B, after {after} B, reported freed {}",
        r["bytes_freed"]
    );
    assert!(
        before - after >= 23_000_000,
        "purge freed only {} bytes",
        before - after
    );
    assert!(r["bytes_freed"].as_u64().unwrap() >= 23_000_000);
    drop(m);

    let m = Mount::with_opts("allow_other,trash_retention=0");
    let blobs = m.store.join("blobs");
    let base = du_bytes(&blobs);
    fs::write(m.path("big"), &data).unwrap();
    wait_consistent(&m.path("big"));
    // Open, then unlink: still readable until closed.
    let mut open = fs::File::open(m.path("big")).unwrap();
    fs::remove_file(m.path("big")).unwrap();
    let mut back = Vec::new();
    open.read_to_end(&mut back).unwrap();
    assert!(back == data, "an open unlinked file must stay readable");
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(20);
    while du_bytes(&blobs) > base + 1_000_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        du_bytes(&blobs) <= base + 1_000_000,
        "trash off: space not freed after the last close; base {base}; blobs: {}; log:\n{}",
        sh(&format!("du -ab '{}'", blobs.display())),
        fs::read_to_string(m.store.join("decofs.log")).unwrap_or_default()
    );
    assert!(
        ok_json(&["trash", "ls", m.mnt.to_str().unwrap()])["entries"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

/// decomposedfs failure 1: concurrent mkdir of one name leaves orphans. Here one wins
/// and fsck finds nothing.
#[test]
fn concurrent_mkdir_one_winner_fsck_clean() {
    let m = Mount::new();
    for round in 0..10 {
        let p = m.path(&format!("d{round}"));
        let barrier = Arc::new(Barrier::new(16));
        let wins: usize = (0..16)
            .map(|_| {
                let (p, b) = (p.clone(), barrier.clone());
                std::thread::spawn(move || {
                    b.wait();
                    fs::create_dir(&p).is_ok() as usize
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(wins, 1, "round {round}");
    }
    m.unmount();
    assert_fsck_clean(&m.store, "fsck");
}

/// decomposedfs failure 2: concurrent writers lose data and are not versioned. Here no
/// acknowledged write is lost and every session's predecessor is a revision.
#[test]
fn concurrent_writers_lose_nothing_and_predecessors_are_revisions() {
    let m = Mount::new();
    let f = m.path("shared");
    fs::write(&f, b"").unwrap();
    let mut states: Vec<Vec<u8>> = Vec::new();
    for round in 0..6u8 {
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let (f, b) = (f.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let h = OpenOptions::new().write(true).open(&f).unwrap();
                    b.wait();
                    h.write_all_at(&vec![round * 10 + t as u8 + 1; 65_536], t * 65_536)
                        .unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        wait_consistent(&f);
        let now = fs::read(&f).unwrap();
        for t in 0..8usize {
            assert!(
                now[t * 65_536..(t + 1) * 65_536]
                    .iter()
                    .all(|b| *b == round * 10 + t as u8 + 1),
                "round {round}: writer {t} lost"
            );
        }
        states.push(now);
    }
    // Every committed state but the last is a revision (the first state's predecessor,
    // the empty file, has no content to keep).
    let mut revs = HashSet::new();
    for rev in versions(&f) {
        let copy = m.path("copy");
        let out = decofs(&["--json", "versions", "ls", f.to_str().unwrap()]);
        assert!(out.status.success());
        // Read a revision's bytes: restore it onto a hard link? No: restore and read, then
        // put the newest back.
        ok_json(&["versions", "restore", f.to_str().unwrap(), &rev]);
        revs.insert(fs::read(&f).unwrap());
        let _ = copy;
    }
    for (i, s) in states[..states.len() - 1].iter().enumerate() {
        assert!(
            revs.contains(s),
            "the state after round {i} is not a revision"
        );
    }
}

/// decomposedfs failure 3: a restore sets attributes one by one, so readers see a mix.
/// Here a reader during restores only ever sees one whole revision.
#[test]
fn reader_during_restore_sees_whole_revisions() {
    // Every restore adds a revision; keep them all so the list taken below stays valid.
    let m = Mount::with_opts("allow_other,revisions_keep=1000");
    let f = m.path("doc");
    let n = 6usize;
    let content = |i: usize| -> Vec<u8> {
        (0..65_536)
            .map(|j| ((j / 64 + i * 37) % 256) as u8)
            .collect()
    };
    let mut mtimes = Vec::new();
    for i in 0..n {
        fs::write(&f, content(i)).unwrap();
        xattr::set(&f, "user.rev", i.to_string().as_bytes()).unwrap();
        // Distinct, known mtimes per revision.
        sh(&format!(
            "touch -d @{} '{}'",
            1_600_000_000 + i * 1000,
            f.display()
        ));
        wait_consistent(&f);
        mtimes.push(1_600_000_000 + (i as i64) * 1000);
    }
    let revs = versions(&f);
    assert!(revs.len() >= n - 1);
    let stop = Arc::new(AtomicBool::new(false));
    let all: Vec<Vec<u8>> = (0..n).map(content).collect();
    let reader = {
        let (f, stop, all) = (f.clone(), stop.clone(), all.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut buf = Vec::new();
                fs::File::open(&f).unwrap().read_to_end(&mut buf).unwrap();
                assert!(
                    all.contains(&buf),
                    "a reader saw content that is no single revision (len {})",
                    buf.len()
                );
                let rev = xattr::get(&f, "user.rev").unwrap().unwrap();
                let r: usize = String::from_utf8(rev).unwrap().parse().unwrap();
                assert!(r < n);
                reads += 1;
            }
            reads
        })
    };
    for round in 0..20 {
        let rev = &revs[round % revs.len()];
        ok_json(&["versions", "restore", f.to_str().unwrap(), rev]);
        // Right after the restore: content, xattr and mtime all of one revision.
        let c = fs::read(&f).unwrap();
        let i = all.iter().position(|x| *x == c).expect("whole revision");
        let x: usize = String::from_utf8(xattr::get(&f, "user.rev").unwrap().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            x, i,
            "content of revision {i} with the xattr of revision {x}"
        );
        assert_eq!(
            fs::metadata(&f).unwrap().mtime(),
            mtimes[i],
            "content of revision {i} with another mtime"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().unwrap();
    println!("reader checked {reads} reads during 20 restores");
    assert!(reads > 0);
    let _ = std::io::stdout().flush();
}
