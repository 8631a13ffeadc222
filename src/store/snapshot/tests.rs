use std::ffi::OsStr;
use std::sync::Arc;

use crate::store::tests::{new_file, scratch};
use crate::store::{OpenOptions, Store};

/// A record and an entry changed after a snapshot read as they were through its lens;
/// the live store reads the new ones; an unchanged record is read live.
#[test]
fn the_lens_sees_the_tree_as_it_was() {
    let (d, s) = scratch();
    let a = new_file(&s, "a");
    let b = new_file(&s, "b");
    s.data().write(a, 0, b"before").unwrap();
    s.data().close_write(a).unwrap();
    s.snapshots().create(Some("one")).unwrap();
    s.data().write(a, 0, b"AFTER!").unwrap();
    s.data().close_write(a).unwrap();
    s.tree().unlink(s.root(), OsStr::new("b")).unwrap();
    new_file(&s, "c");
    let lens = s.snapshots.lens("one").unwrap();
    let names = s.names().at(&lens);
    assert_eq!(names.lookup(s.root(), OsStr::new("b")).unwrap(), b);
    assert!(names.lookup(s.root(), OsStr::new("c")).is_err());
    let mut listed: Vec<_> = names
        .readdir(s.root())
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    listed.sort();
    assert_eq!(listed, ["a", "b"]);
    assert_eq!(names.record(a).unwrap().size, 6);
    assert_ne!(
        names.record(a).unwrap().content,
        s.records.read(a).unwrap().content
    );
    // A store opened at the snapshot reads the same.
    drop(s);
    let p = d.path().join("store");
    let ro = Store::open(
        &p,
        OpenOptions {
            read_only: true,
            snapshot: Some("one".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ro.data().read(a, 0, 100).unwrap(), b"before");
    assert!(ro.names().lookup(ro.root(), OsStr::new("c")).is_err());
}

/// Removing the newer of two snapshots moves what the older still needs into its
/// area; removing the only one drops everything.
#[test]
fn removing_a_snapshot_keeps_what_an_older_one_needs() {
    let (_d, s) = scratch();
    let a = new_file(&s, "a");
    s.data().write(a, 0, b"v1").unwrap();
    s.data().close_write(a).unwrap();
    s.snapshots().create(Some("old")).unwrap();
    s.snapshots().create(Some("new")).unwrap();
    s.data().write(a, 0, b"v2").unwrap();
    s.data().close_write(a).unwrap();
    // The copy went to the newest snapshot's area; the old one reads through it.
    s.snapshots().remove("new").unwrap();
    let lens = s.snapshots.lens("old").unwrap();
    let r = lens.record(a, || s.records.read_live_disk(a)).unwrap();
    assert_ne!(
        r.content,
        s.records.read(a).unwrap().content,
        "the old content"
    );
    assert!(s.snapshots().remove("new").is_err());
    s.snapshots().remove("old").unwrap();
    assert!(s.snapshots.list().is_empty());
    assert!(std::fs::read_dir(s.layout.snapshots())
        .unwrap()
        .flatten()
        .all(|e| e.file_name() == "generation"));
}

/// Taking a snapshot waits for operations in flight and never sees half of one: many
/// threads rename between two names while snapshots are taken; each snapshot has
/// exactly one of the two names.
#[test]
fn a_snapshot_never_sees_half_an_operation() {
    let (_d, s) = scratch();
    let s = Arc::new(s);
    new_file(&s, "x");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (from, to) = if i.is_multiple_of(2) {
                    ("x", "y")
                } else {
                    ("y", "x")
                };
                s.tree()
                    .rename(
                        s.root(),
                        OsStr::new(from),
                        s.root(),
                        OsStr::new(to),
                        crate::store::tree::RenameMode::Replace,
                    )
                    .unwrap();
                i += 1;
            }
        })
    };
    for k in 0..30 {
        let name = format!("s{k}");
        s.snapshots().create(Some(&name)).unwrap();
        let lens = s.snapshots.lens(&name).unwrap();
        let names = s.names().at(&lens);
        let listed: Vec<_> = names.readdir(s.root()).unwrap();
        assert_eq!(listed.len(), 1, "snapshot {name}: {listed:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    t.join().unwrap();
}

/// A node made after a snapshot and changed after a newer one: the newer snapshot's
/// copy of it does not make it exist in the older one.
#[test]
fn a_newer_snapshots_copy_is_not_an_older_ones() {
    let (_d, s) = scratch();
    s.snapshots().create(Some("old")).unwrap();
    let late = new_file(&s, "late");
    s.snapshots().create(Some("new")).unwrap();
    s.data().write(late, 0, b"changed").unwrap();
    s.data().close_write(late).unwrap();
    let old = s.snapshots.lens("old").unwrap();
    assert!(matches!(
        old.record(late, || s.records.read_live_disk(late)),
        Err(crate::store::Error::NotFound)
    ));
    let new = s.snapshots.lens("new").unwrap();
    assert_eq!(
        new.record(late, || s.records.read_live_disk(late))
            .unwrap()
            .size,
        0
    );
}

/// Names that would collide with the store's own files are refused.
#[test]
fn snapshot_names_are_checked() {
    use super::validate_name;
    for bad in [
        "",
        ".hidden",
        "a/b",
        "generation",
        "generation.tmp",
        "x y",
        &"n".repeat(65),
    ] {
        assert!(validate_name(bad).is_err(), "{bad:?}");
    }
    for good in [
        "daily",
        "2026-12-07T02:30:11Z",
        "auto-1",
        "before-restore-x.1",
        "a@b+c",
    ] {
        assert!(validate_name(good).is_ok(), "{good:?}");
    }
}
