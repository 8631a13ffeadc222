//! Tests of fsck, scrub and gc on scratch stores.

use super::*;
use crate::store::tests::{new_file, scratch};
use crate::store::tree::NewNode;

fn file() -> NewNode {
    crate::store::tests::file_node()
}

#[test]
fn fresh_store_is_clean_and_gc_keeps_referenced() {
    let (_d, s) = scratch();
    let id = new_file(&s, "f");
    s.data().write(id, 0, &vec![3u8; 200_000]).unwrap();
    s.data().write(id, 0, &vec![4u8; 200_000]).unwrap(); // old content kept as a revision
    let r = Checker::new(&s)
        .fsck(false, Duration::ZERO, |_| {})
        .unwrap();
    assert_eq!(r.exit_code, 0, "{:?}", r.problems);
    let g = Checker::new(&s).gc(false, Duration::ZERO).unwrap();
    assert_eq!(g.deleted, 0);
    assert!(g.referenced >= 2);
}

#[test]
fn online_gc_passes_nodes_without_record() {
    let (_d, s) = scratch();
    let id = new_file(&s, "f");
    s.data().write(id, 0, &vec![5u8; 100_000]).unwrap();
    // A node the instant after create: its file exists, its record not yet.
    let young = NodeId::new_near(s.root(), Kind::File);
    fs::write(s.layout.node_path(young), b"").unwrap();
    let g = Checker::new(&s).gc_online(false, Duration::ZERO).unwrap();
    assert_eq!(g.deleted, 0, "{g:?}");
    assert!(g.referenced >= 1);
    // A record that is there but garbage still stops gc.
    xattr::set(s.layout.node_path(young), RECORD_XATTR, b"garbage").unwrap();
    assert!(matches!(
        Checker::new(&s).gc_online(false, Duration::ZERO),
        Err(Error::Integrity { .. })
    ));
}

/// Listings take a child's type from its id: a record of another kind is reported,
/// and a record fsck writes afresh takes the id's kind.
#[test]
fn record_kind_must_match_the_id() {
    let (_d, s) = scratch();
    let fifo = NewNode {
        kind: Kind::Fifo,
        ..file()
    };
    let id = s.tree().create(s.root(), OsStr::new("p"), fifo).unwrap().0;
    assert_eq!(id.kind_hint(), Some(Kind::Fifo));
    let r = Checker::new(&s)
        .fsck(false, Duration::ZERO, |_| {})
        .unwrap();
    assert_eq!(r.exit_code, 0, "{:?}", r.problems);
    let mut rec = s.records.read(id).unwrap();
    rec.kind = Kind::File;
    s.records
        .write(id, &rec, true, crate::store::records::Old::OnDisk)
        .unwrap();
    let r = Checker::new(&s)
        .fsck(false, Duration::ZERO, |_| {})
        .unwrap();
    assert_eq!(r.exit_code, 4, "{:?}", r.problems);
    assert!(r
        .problems
        .iter()
        .any(|p| p.code == "kind_mismatch" && p.path == "/p"));
    // A lost record comes back as a fifo.
    xattr::remove(s.layout.node_path(id), RECORD_XATTR).unwrap();
    let r = Checker::new(&s).fsck(true, Duration::ZERO, |_| {}).unwrap();
    assert_eq!(r.exit_code, 1, "{:?}", r.problems);
    assert_eq!(s.records.read(id).unwrap().kind, Kind::Fifo);
}

#[test]
fn orphan_is_adopted_and_nlink_fixed() {
    let (_d, s) = scratch();
    let id = new_file(&s, "f");
    fs::remove_file(s.names().entry_path(s.root(), OsStr::new("f"))).unwrap();
    let r = Checker::new(&s)
        .fsck(false, Duration::from_secs(3600), |_| {})
        .unwrap();
    assert_eq!(r.exit_code, 0);
    assert_eq!(r.young_orphans, 1);
    let r = Checker::new(&s).fsck(true, Duration::ZERO, |_| {}).unwrap();
    assert_eq!(r.exit_code, 1, "{:?}", r.problems);
    let lf = s.names().lookup(s.root(), OsStr::new(LOST_FOUND)).unwrap();
    assert_eq!(
        s.names().lookup(lf, OsStr::new(&id.to_string())).unwrap(),
        id
    );
    let r = Checker::new(&s)
        .fsck(false, Duration::ZERO, |_| {})
        .unwrap();
    assert_eq!(r.exit_code, 0, "{:?}", r.problems);
}

#[test]
fn missing_blob_becomes_a_hole_without_revisions_and_gc_refuses_unknown_references() {
    let (_d, s) = scratch();
    let id = new_file(&s, "f");
    s.data().write(id, 0, &vec![5u8; 100_000]).unwrap();
    let h = crate::store::content::record_hashes(&s.records.read(id).unwrap())[0];
    fs::remove_file(s.local.path_of(&h)).unwrap();
    let r = Checker::new(&s)
        .fsck(false, Duration::ZERO, |_| {})
        .unwrap();
    assert_eq!(r.exit_code, EXIT_PROBLEMS_LEFT);
    assert!(r
        .problems
        .iter()
        .any(|p| p.code == "missing_blob" && p.path == "/f" && !p.repaired));
    // Repaired: no earlier content to go back to, so the lost chunk reads as zeros
    // (as ext4 shows data a power cut lost) and the whole one is kept.
    let r = Checker::new(&s).fsck(true, Duration::ZERO, |_| {}).unwrap();
    assert_eq!(r.exit_code, EXIT_REPAIRED, "{:?}", r.problems);
    assert!(
        r.problems.iter().any(|p| p.code == "missing_blob"
            && p.repaired
            && p.detail
                .ends_with("; no whole revision: 1 of 2 chunks lost, they read as zeros")),
        "{:?}",
        r.problems
    );
    let mut want = vec![0u8; 65_536];
    want.resize(100_000, 5);
    assert_eq!(s.data().read(id, 0, 200_000).unwrap(), want);
    assert_eq!(s.attrs().stat(id).unwrap().size, 100_000);
    let r = Checker::new(&s)
        .fsck(false, Duration::ZERO, |_| {})
        .unwrap();
    assert_eq!(r.exit_code, EXIT_CLEAN, "{:?}", r.problems);
    // A garbage record: which blobs it names is unknown, so gc deletes nothing.
    let g = new_file(&s, "g");
    xattr::set(s.layout.node_path(g), RECORD_XATTR, b"garbage!!").unwrap();
    assert!(matches!(
        Checker::new(&s).gc(false, Duration::ZERO),
        Err(Error::Integrity { .. })
    ));
}

/// A revision whose blob is lost (here: one a damaged file left when it was
/// overwritten) can never be restored: fsck names it, --repair drops it and leaves
/// the file and its whole revisions alone, and the store is clean again.
#[test]
fn a_revision_with_a_lost_blob_is_dropped() {
    let (_d, s) = scratch();
    let id = new_file(&s, "f");
    s.data().write(id, 0, &vec![4u8; 90_000]).unwrap();
    s.data().write(id, 0, &vec![5u8; 100_000]).unwrap();
    s.data().write(id, 0, &vec![6u8; 110_000]).unwrap(); // revisions: the 4s, the 5s
    let revs = s.revisions.list(id).unwrap();
    assert_eq!(revs.len(), 2);
    let h = crate::store::content::record_hashes(&revs[1].1)[0];
    fs::remove_file(s.local.path_of(&h)).unwrap();
    s.blobs.drop_cache();
    let r = Checker::new(&s)
        .fsck(false, Duration::ZERO, |_| {})
        .unwrap();
    assert_eq!(r.exit_code, EXIT_PROBLEMS_LEFT, "{:?}", r.problems);
    let at = format!("revision {} of /f", revs[1].0);
    assert!(
        r.problems
            .iter()
            .any(|p| p.code == "missing_blob" && p.path == at),
        "{:?}",
        r.problems
    );
    let r = Checker::new(&s).fsck(true, Duration::ZERO, |_| {}).unwrap();
    assert_eq!(r.exit_code, EXIT_REPAIRED, "{:?}", r.problems);
    assert!(r.problems.iter().all(|p| p.repaired), "{:?}", r.problems);
    let left = s.revisions.list(id).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, revs[0].0, "the whole revision is kept");
    assert_eq!(
        s.data().read_content(id, &left[0].1).unwrap(),
        vec![4u8; 90_000]
    );
    assert_eq!(s.data().read(id, 0, 200_000).unwrap(), vec![6u8; 110_000]);
    let r = Checker::new(&s)
        .fsck(false, Duration::ZERO, |_| {})
        .unwrap();
    assert_eq!(r.exit_code, EXIT_CLEAN, "{:?}", r.problems);
}

/// A blob renamed into place before a power cut whose bytes never reached the disk
/// is empty: fsck finds it by its length alone, and scrub, reading it, agrees. The
/// repair gives the file its content from before that write (its newest revision).
#[test]
fn an_emptied_blob_is_found_by_its_length_and_rolled_back() {
    let (_d, s) = scratch();
    let id = new_file(&s, "f");
    s.data().write(id, 0, &vec![5u8; 100_000]).unwrap();
    s.data().write(id, 0, &vec![6u8; 120_000]).unwrap(); // the first kept as a revision
    let r = Checker::new(&s)
        .fsck(false, Duration::ZERO, |_| {})
        .unwrap();
    assert_eq!(r.exit_code, EXIT_CLEAN, "{:?}", r.problems);
    let h = crate::store::content::record_hashes(&s.records.read(id).unwrap())[0];
    fs::File::create(s.local.path_of(&h)).unwrap(); // the first 64 KiB chunk, now empty
    s.blobs.drop_cache();
    let r = Checker::new(&s)
        .fsck(false, Duration::ZERO, |_| {})
        .unwrap();
    assert_eq!(r.exit_code, EXIT_PROBLEMS_LEFT, "{:?}", r.problems);
    assert!(
        r.problems.iter().any(|p| p.code == "damaged_blob"
            && p.path == "/f"
            && p.detail.ends_with("is 0 bytes long, not 65536")
            && !p.repaired),
        "{:?}",
        r.problems
    );
    let sc = Checker::new(&s).scrub(|_| {}).unwrap();
    assert_eq!(sc.damaged_paths, vec!["/f".to_string()]);
    let r = Checker::new(&s).fsck(true, Duration::ZERO, |_| {}).unwrap();
    assert_eq!(r.exit_code, EXIT_REPAIRED, "{:?}", r.problems);
    // The blob's problem and the mark scrub set: one roll back repairs both.
    assert!(r.problems.iter().all(|p| p.repaired), "{:?}", r.problems);
    assert_eq!(
        r.problems
            .iter()
            .filter(|p| p.detail.contains("; rolled back to revision ")
                && p.detail.ends_with("(100000 bytes)"))
            .count(),
        1,
        "{:?}",
        r.problems
    );
    assert_eq!(s.data().read(id, 0, 200_000).unwrap(), vec![5u8; 100_000]);
    let r = Checker::new(&s)
        .fsck(false, Duration::ZERO, |_| {})
        .unwrap();
    assert_eq!(r.exit_code, EXIT_CLEAN, "{:?}", r.problems);
}

#[test]
fn interrupted_trashing_goes_back_to_the_trash() {
    let (_d, s) = scratch();
    s.tree().create(s.root(), OsStr::new("f"), file()).unwrap();
    let id = s.tree().unlink(s.root(), OsStr::new("f")).unwrap();
    // The crash window: record says trashed, the trash link is not there yet.
    for e in fs::read_dir(s.layout.trash()).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
    let r = Checker::new(&s).fsck(true, Duration::ZERO, |_| {}).unwrap();
    assert_eq!(r.exit_code, EXIT_REPAIRED, "{:?}", r.problems);
    let links: Vec<_> = fs::read_dir(s.layout.trash()).unwrap().collect();
    assert_eq!(links.len(), 1);
    assert!(s.names().lookup(s.root(), OsStr::new(LOST_FOUND)).is_err());
    let r = Checker::new(&s)
        .fsck(false, Duration::ZERO, |_| {})
        .unwrap();
    assert_eq!(r.exit_code, EXIT_CLEAN, "{:?}", r.problems);
    assert_eq!(s.records.read(id).unwrap().nlink, 0);
}

/// A trash link whose name says another origin than its record (a restore would look
/// for it in the wrong directory) is renamed to the record's; a link from a store made
/// before names carried the origin (`<nanos>.<uuid>`) is no problem, and restores.
#[test]
fn a_trash_link_named_for_another_origin_is_renamed() {
    let (_d, s) = scratch();
    s.tree().create(s.root(), OsStr::new("f"), file()).unwrap();
    s.tree().create(s.root(), OsStr::new("g"), file()).unwrap();
    let f = s.tree().unlink(s.root(), OsStr::new("f")).unwrap();
    let g = s.tree().unlink(s.root(), OsStr::new("g")).unwrap();
    let link_of = |id: NodeId| {
        fs::read_dir(s.layout.trash())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().contains(&id.to_string()))
            .unwrap()
    };
    let name = |p: &std::path::Path| p.file_name().unwrap().to_string_lossy().into_owned();
    let right = name(&link_of(f));
    let l = Layout::parse_trash_link(&right).unwrap();
    let wrong = Layout::trash_link_name(l.nanos, f, f, b"f");
    fs::rename(link_of(f), s.layout.trash().join(&wrong)).unwrap();
    let old = format!(
        "{}.{g}",
        Layout::parse_trash_link(&name(&link_of(g))).unwrap().nanos
    );
    fs::rename(link_of(g), s.layout.trash().join(&old)).unwrap();
    let r = Checker::new(&s).fsck(true, Duration::ZERO, |_| {}).unwrap();
    assert_eq!(r.exit_code, EXIT_REPAIRED, "{:?}", r.problems);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert_eq!(r.problems[0].code, "trash_link_origin");
    assert_eq!(name(&link_of(f)), right);
    assert_eq!(name(&link_of(g)), old);
    let r = Checker::new(&s)
        .fsck(false, Duration::ZERO, |_| {})
        .unwrap();
    assert_eq!(r.exit_code, EXIT_CLEAN, "{:?}", r.problems);
    s.trash().restore(OsStr::new("g"), None).unwrap();
    s.trash().restore(OsStr::new("f"), None).unwrap();
    assert_eq!(s.names().lookup(s.root(), OsStr::new("g")).unwrap(), g);
    assert_eq!(s.names().lookup(s.root(), OsStr::new("f")).unwrap(), f);
}

/// A sweep that died between moving a blob aside and freeing or moving it back left
/// the blob in `sessions/`: fsck does not call it missing (no roll-back of the file
/// that names it), and --repair puts it back, after which the file reads whole.
#[test]
fn a_blob_an_interrupted_sweep_moved_aside_is_put_back() {
    let (_d, s) = scratch();
    let id = new_file(&s, "f");
    s.data().write(id, 0, &vec![7u8; 100_000]).unwrap();
    let h = crate::store::content::record_hashes(&s.records.read(id).unwrap())[0];
    // As a sweep of a process that no longer runs (no pid is i32::MAX).
    let aside = s
        .layout
        .sessions()
        .join(format!("doomed.{}.3.{}.tmp", i32::MAX, hash_hex(&h)));
    fs::rename(s.local.path_of(&h), &aside).unwrap();
    s.blobs.drop_cache();
    let r = Checker::new(&s)
        .fsck(false, Duration::ZERO, |_| {})
        .unwrap();
    assert_eq!(r.exit_code, EXIT_PROBLEMS_LEFT, "{:?}", r.problems);
    assert!(
        r.problems.iter().all(|p| p.code == "interrupted_sweep"),
        "only the interrupted sweep, no missing blob: {:?}",
        r.problems
    );
    let r = Checker::new(&s).fsck(true, Duration::ZERO, |_| {}).unwrap();
    assert_eq!(r.exit_code, EXIT_REPAIRED, "{:?}", r.problems);
    assert!(s.local.path_of(&h).exists() && !aside.exists());
    assert_eq!(s.data().read(id, 0, 200_000).unwrap(), vec![7u8; 100_000]);
    let r = Checker::new(&s)
        .fsck(false, Duration::ZERO, |_| {})
        .unwrap();
    assert_eq!(r.exit_code, EXIT_CLEAN, "{:?}", r.problems);
}
