//! Tests of file content: sessions, reads, writes, commits, revisions.

use super::*;
use crate::store::tests::{new_file, scratch};
use crate::store::Store;
use std::ffi::OsStr;

#[test]
fn write_read_across_chunks_and_holes() {
    let (_d, s) = scratch(); // 64 KiB chunks
    let id = new_file(&s, "f");
    s.data().open_write(id).unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8 + 1).collect();
    s.data().write(id, 10, &data).unwrap();
    s.data().write(id, 1_000_000, b"tail").unwrap();
    assert_eq!(s.data().read(id, 10, 200_000).unwrap(), data);
    s.data().close_write(id).unwrap();
    assert!(!s.sessions.contains(id));
    let back = s.data().read(id, 0, 2_000_000).unwrap();
    assert_eq!(back.len(), 1_000_004);
    assert_eq!(&back[10..200_010], &data[..]);
    assert!(back[200_010..1_000_000].iter().all(|b| *b == 0));
    assert_eq!(&back[1_000_000..], b"tail");
    // Shrink into a chunk and grow again: the cut part reads as zeros.
    s.data().truncate(id, 15).unwrap();
    s.data().truncate(id, 100_000).unwrap();
    let back = s.data().read(id, 0, 200_000).unwrap();
    assert_eq!(&back[10..15], &data[..5]);
    assert!(back[15..].iter().all(|b| *b == 0));
}

/// Invariant 1: after a commit every blob the record names exists and verifies.
#[test]
fn committed_records_name_existing_blobs() {
    let (_d, s) = scratch();
    let id = new_file(&s, "f");
    s.data().open_write(id).unwrap();
    s.data().write(id, 0, &vec![9u8; 64 * 1024 * 30]).unwrap(); // 30 chunks: a manifest blob
    s.data().close_write(id).unwrap();
    let rec = s.records.read(id).unwrap();
    assert!(matches!(rec.content, Content::Manifest(_)));
    for h in crate::store::content::record_hashes(&rec) {
        assert!(s.blobs.get(&h).is_ok());
    }
    for c in s.chunk_lists.get(&rec.content).unwrap().iter() {
        assert!(s.local.path_of(&c.hash).exists());
    }
}

/// Invariant 4: two handles share one session; both writes survive, and the content
/// from before the session becomes a revision.
#[test]
fn handles_share_a_session_and_predecessor_is_a_revision() {
    let (_d, s) = scratch();
    let id = new_file(&s, "f");
    s.data().write(id, 0, b"version one").unwrap();
    s.data().open_write(id).unwrap();
    s.data().open_write(id).unwrap();
    s.data().write(id, 0, b"VERSION").unwrap();
    s.data().write(id, 8, b"TWO").unwrap();
    s.data().close_write(id).unwrap();
    assert!(s.sessions.contains(id), "one handle is still open");
    s.data().close_write(id).unwrap();
    assert_eq!(s.data().read(id, 0, 100).unwrap(), b"VERSION TWO");
    let revs = s.revisions.list(id).unwrap();
    assert_eq!(revs.len(), 1);
    assert_eq!(
        s.data().read_content(id, &revs[0].1).unwrap(),
        b"version one"
    );
}

/// A file written, closed and reopened before the kernel's RELEASE of the first
/// handle arrived (flush committed it, the session lingers): the version it closed
/// still becomes a revision, as it does when the release comes first.
#[test]
fn reopen_before_release_keeps_the_closed_version() {
    let (_d, s) = scratch();
    let id = new_file(&s, "f");
    let old = vec![7u8; 300_000];
    s.data().open_write(id).unwrap();
    s.data().write(id, 0, &old).unwrap();
    s.data().commit(id, false).unwrap(); // flush of close(2)
    s.data().open_write(id).unwrap(); // the next open, before the first release
    s.data().truncate(id, 0).unwrap();
    s.data().write(id, 0, &[9u8; 200_000]).unwrap();
    s.data().commit(id, false).unwrap();
    s.data().close_write(id).unwrap(); // the two releases
    s.data().close_write(id).unwrap();
    let revs = s.revisions.list(id).unwrap();
    assert_eq!(revs.len(), 1, "the closed version is a revision");
    assert_eq!(s.data().read_content(id, &revs[0].1).unwrap(), old);
    assert_eq!(s.data().read(id, 0, 300_000).unwrap(), vec![9u8; 200_000]);
}

/// A revision left empty by a power cut names nothing and is skipped; one holding
/// garbage frees nothing: the counts still hold what the revision named, and a sweep
/// that scans (counts not kept) stops at it rather than free what it may name.
#[test]
fn empty_revision_is_skipped_and_garbage_one_stops_the_sweep() {
    let (_d, s) = scratch();
    let id = new_file(&s, "f");
    s.data().write(id, 0, &vec![1u8; 100_000]).unwrap();
    s.data().write(id, 0, &vec![2u8; 100_000]).unwrap(); // version 1 is now a revision
    let old = crate::store::content::record_hashes(&s.revisions.list(id).unwrap()[0].1);
    let dir = s.layout.revisions_of(id);
    fs::write(dir.join("1"), b"").unwrap();
    assert_eq!(
        s.revisions.list(id).unwrap().len(),
        1,
        "the empty one is skipped"
    );
    assert_eq!(
        s.sweeper()
            .sweep(old.clone(), std::time::SystemTime::now())
            .unwrap(),
        0
    );
    fs::write(dir.join("2"), b"not a record").unwrap();
    assert!(s.revisions.list(id).is_err());
    assert_eq!(
        s.sweeper()
            .sweep(old.clone(), std::time::SystemTime::now())
            .unwrap(),
        0,
        "by the counts"
    );
    s.refs.distrust("the test scans");
    assert!(s
        .sweeper()
        .sweep(old.clone(), std::time::SystemTime::now())
        .is_err());
    for h in &old {
        assert!(
            s.local.path_of(h).exists(),
            "a blob a revision names was freed"
        );
    }
}

/// Invariant 5: a corrupted chunk reads as EIO and marks the node.
#[test]
fn corrupted_chunk_gives_integrity_error() {
    let (_d, s) = scratch();
    let id = new_file(&s, "f");
    s.data().write(id, 0, &vec![1u8; 100_000]).unwrap();
    let rec = s.records.read(id).unwrap();
    let h = crate::store::content::record_hashes(&rec)[0];
    let p = s.local.path_of(&h);
    let mut d = fs::read(&p).unwrap();
    d[5] ^= 0xff;
    fs::write(&p, d).unwrap();
    s.blobs.drop_cache();
    let err = s.data().read(id, 0, 10).unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    assert_eq!(s.records.read(id).unwrap().status, Status::IntegrityError);
    // Overwriting only part of the file keeps the mark (the bad chunk is still there)...
    s.data().write(id, 200_000, b"tail").unwrap();
    assert_eq!(s.records.read(id).unwrap().status, Status::IntegrityError);
    // ...rewriting it from scratch clears it.
    s.data().truncate(id, 0).unwrap();
    s.data().write(id, 0, &vec![2u8; 100_000]).unwrap();
    assert_eq!(s.records.read(id).unwrap().status, Status::Consistent);
    assert_eq!(s.data().read(id, 0, 10).unwrap(), vec![2u8; 10]);
}

#[test]
fn sparse_terabyte_costs_nothing() {
    let (_d, s) = scratch();
    let id = new_file(&s, "f");
    s.data().truncate(id, 1 << 40).unwrap();
    let rec = s.records.read(id).unwrap();
    assert_eq!(rec.size, 1 << 40);
    assert_eq!(rec.content, Content::Empty);
    assert_eq!(
        s.data().read(id, (1 << 40) - 10, 100).unwrap(),
        vec![0u8; 10]
    );
    assert_eq!(s.data().seek_data_hole(id, 0, true).unwrap(), None);
    assert_eq!(s.data().seek_data_hole(id, 5, false).unwrap(), Some(5));
}

/// Lower a session's memory limits so spilling and sealing under pressure happen.
fn squeeze(s: &Store, id: NodeId, dirty_limit: usize, entry_limit: usize) {
    let h = s.sessions.get(id).unwrap();
    let mut g = h.lock();
    g.dirty_limit = dirty_limit;
    g.entry_limit = entry_limit;
}

/// Random writes, truncates and hole punches within one session (and across
/// sessions and commits) read back exactly as a plain byte array, with the memory
/// limits low enough that heads spill and fragmented chunks seal early.
#[test]
fn random_ops_match_a_byte_array() {
    for seed in 0..6u64 {
        let (_d, s) = scratch(); // 64 KiB chunks
        let cs = s.chunk_size() as usize;
        let id = new_file(&s, "f");
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut model: Vec<u8> = Vec::new();
        s.data().open_write(id).unwrap();
        squeeze(&s, id, 3 * cs / 2, 12);
        let max = 6 * cs;
        for step in 0..600 {
            match rng.u32(0..100) {
                0..=59 => {
                    // Mostly page-sized and page-aligned, sometimes anywhere.
                    let (off, len) = if rng.bool() {
                        (rng.usize(0..max / 4096) * 4096, 4096 * rng.usize(1..4))
                    } else {
                        (rng.usize(0..max), rng.usize(1..cs + 100))
                    };
                    let data: Vec<u8> = (0..len).map(|_| rng.u8(1..=255)).collect();
                    s.data().write(id, off as u64, &data).unwrap();
                    if model.len() < off + len {
                        model.resize(off + len, 0);
                    }
                    model[off..off + len].copy_from_slice(&data);
                }
                60..=69 => {
                    let size = rng.usize(0..max);
                    s.data().truncate(id, size as u64).unwrap();
                    model.resize(size, 0);
                }
                70..=79 => {
                    let off = rng.usize(0..max);
                    let len = rng.usize(1..2 * cs);
                    s.data().punch_hole(id, off as u64, len as u64).unwrap();
                    let end = (off + len).min(model.len());
                    if off < end {
                        model[off..end].fill(0);
                    }
                }
                80..=89 => {
                    let off = rng.usize(0..max);
                    let len = rng.usize(1..3 * cs);
                    let got = s.data().read(id, off as u64, len as u32).unwrap();
                    let end = (off + len).min(model.len()).max(off);
                    let want = model.get(off..end).unwrap_or(&[]);
                    assert_eq!(got, want, "seed {seed} step {step}: read {off}+{len}");
                }
                90..=94 => s.data().commit(id, rng.bool()).unwrap(),
                _ => {
                    s.data().close_write(id).unwrap();
                    assert!(!s.sessions.contains(id));
                    s.data().open_write(id).unwrap();
                    squeeze(&s, id, 3 * cs / 2, 12);
                }
            }
            let h = s.sessions.get(id).unwrap();
            let g = h.lock();
            assert!(g.dirty_bytes <= g.dirty_limit + cs, "heads bounded");
            assert_eq!(
                g.dirty_bytes,
                g.dirty.values().map(|d| d.head.len()).sum::<usize>()
            );
            assert_eq!(
                g.staged_ranges,
                g.dirty.values().map(|d| d.staged.len()).sum::<usize>()
            );
            for (i, d) in &g.dirty {
                assert!(d.head.len() <= d.len && d.base_len <= d.len, "chunk {i}");
                assert!(d.staged.keys().all(|a| *a >= d.head.len()), "chunk {i}");
                assert!(d.base_len == 0 || g.chunks.contains_key(i), "chunk {i}");
            }
        }
        s.data().close_write(id).unwrap();
        assert_eq!(
            s.data().read(id, 0, (max * 2) as u32).unwrap(),
            model,
            "seed {seed}"
        );
        let rec = s.records.read(id).unwrap();
        assert_eq!(s.data().read_content(id, &rec).unwrap(), model);
    }
}

/// Small writes into a stored chunk do not read it: a corrupted chunk is only
/// noticed (EIO, `integrity_error`) when the chunk is sealed, and a chunk rewritten
/// whole is never read at all.
#[test]
fn writes_do_not_read_the_chunk_they_modify() {
    let (_d, s) = scratch();
    let cs = s.chunk_size() as usize;
    let id = new_file(&s, "f");
    s.data().write(id, 0, &vec![1u8; cs]).unwrap();
    s.data().write(id, cs as u64, &vec![5u8; cs]).unwrap();
    let rec = s.records.read(id).unwrap();
    for h in crate::store::content::record_hashes(&rec) {
        let p = s.local.path_of(&h);
        let mut d = fs::read(&p).unwrap();
        d[7] ^= 0xff;
        fs::write(&p, d).unwrap();
    }
    s.blobs.drop_cache();
    s.data().open_write(id).unwrap();
    // Chunk 1 rewritten whole (out of order): sealed without its base.
    s.data()
        .write(id, (cs + 4096) as u64, &vec![3u8; cs - 4096])
        .unwrap();
    s.data().write(id, cs as u64, &vec![3u8; 4096]).unwrap();
    // Chunk 0: one page; the write succeeds, the seal needs the bad base.
    s.data().write(id, 4096, &[2u8; 4096]).unwrap();
    assert_eq!(s.data().read(id, 4096, 4096).unwrap(), vec![2u8; 4096]);
    assert_eq!(s.data().read(id, cs as u64, 10).unwrap(), vec![3u8; 10]);
    assert_eq!(s.data().read(id, 0, 10).unwrap_err().errno(), libc::EIO);
    assert_eq!(s.data().commit(id, true).unwrap_err().errno(), libc::EIO);
    assert_eq!(s.records.read(id).unwrap().status, Status::IntegrityError);
    // Overwriting the rest of chunk 0 makes the base irrelevant: the commit works.
    s.data().write(id, 0, &[2u8; 4096]).unwrap();
    s.data().write(id, 8192, &vec![2u8; cs - 8192]).unwrap();
    s.data().close_write(id).unwrap();
    let mut want = vec![2u8; cs];
    want.extend(vec![3u8; cs]);
    assert_eq!(s.data().read(id, 0, (3 * cs) as u32).unwrap(), want);
    assert_eq!(s.records.read(id).unwrap().status, Status::Consistent);
}

/// A scratch file's session outlives its last close, uncommitted: deleted at once
/// (sqlite's journal), nothing of it is stored; renamed or hard-linked to a name that
/// may outlive it, or left alone for `LINGER`, it is committed as a close would have.
#[test]
fn a_closed_scratch_file_is_committed_late_or_never() {
    let (_d, s) = scratch(); // 64 KiB chunks
    let root = s.root();
    let body: Vec<u8> = (0..150_000u32).map(|i| (i % 249) as u8 + 1).collect();
    let written = |name: &str| {
        let id = new_file(&s, name);
        s.data().open_write(id).unwrap();
        s.data().write(id, 0, &body).unwrap();
        s.data().close_write(id).unwrap();
        id
    };
    let blobs = |s: &Store| {
        let mut n = 0;
        s.blobs
            .list(&mut |l| {
                if let crate::store::blobs::Listed::Blob { .. } = l {
                    n += 1;
                }
            })
            .unwrap();
        n
    };

    // Deleted right after its last close: never committed, freed whole.
    let before = blobs(&s);
    let j = written("db-journal");
    assert!(
        s.sessions.contains(j),
        "the session lingers after the close"
    );
    assert_eq!(s.records.read(j).unwrap().size, 0, "not committed at close");
    assert_eq!(
        s.data().read(j, 0, 10).unwrap(),
        &body[..10],
        "readable meanwhile"
    );
    s.tree().unlink(root, OsStr::new("db-journal")).unwrap();
    assert!(!s.sessions.contains(j));
    assert!(matches!(s.records.read(j), Err(Error::NotFound)));
    assert!(s.trash().list().unwrap().is_empty());
    s.sweeper().run_pending_sweep().unwrap();
    assert_eq!(
        blobs(&s),
        before,
        "the deleted scratch file left blobs behind"
    );

    // Renamed to a lasting name: committed before the rename.
    let t = written("save.tmp");
    s.tree()
        .rename(
            root,
            OsStr::new("save.tmp"),
            root,
            OsStr::new("save"),
            crate::store::tree::RenameMode::Replace,
        )
        .unwrap();
    assert!(!s.sessions.contains(t));
    assert_eq!(s.records.read(t).unwrap().size, body.len() as u64);
    assert_eq!(s.data().read(t, 0, 200_000).unwrap(), body);

    // Opened again: the lingering ends; closed again, it lingers again.
    let w = written("x.part");
    s.data().open_write(w).unwrap();
    s.data().commit_lingering();
    assert!(s.sessions.contains(w));
    s.data().close_write(w).unwrap();
    assert_eq!(s.records.read(w).unwrap().size, 0);
    // Left alone: committed by the daemon's next round once LINGER has passed.
    std::thread::sleep(session::LINGER + std::time::Duration::from_millis(100));
    s.data().commit_lingering();
    assert!(!s.sessions.contains(w));
    assert_eq!(s.data().read(w, 0, 200_000).unwrap(), body);

    // A file whose name is not scratch commits at its last close, as always.
    let f = written("data.bin");
    assert!(!s.sessions.contains(f));
    assert_eq!(s.records.read(f).unwrap().size, body.len() as u64);
}
