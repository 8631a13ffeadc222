//! Tests of the fsync log: replay after a crash, torn tails, deltas and chains.

use super::format::{checksum, framed, read_entries, Logged, ENTRY_HEAD, MAGIC_V1};
use super::*;
use crate::store::tests::new_file;
use crate::store::{OpenOptions, Store};

fn scratch() -> (tempfile::TempDir, PathBuf, Store) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("store");
    Store::init(&p, 64 * 1024).unwrap();
    let s = Store::open(&p, OpenOptions::default()).unwrap();
    (dir, p, s)
}

/// A crash: the store goes away without its clean close, its log left as is.
/// A power cut (the tests make its state of the files by hand).
fn crash(mut s: Store) {
    std::mem::forget(s.fsync_log.take());
    s.refs.cut_power();
    drop(s);
}

fn record_value(s: &Store, id: NodeId) -> Vec<u8> {
    xattr::get(s.layout.node_path(id), RECORD_XATTR)
        .unwrap()
        .unwrap()
}

fn read_all(s: &Store, id: NodeId) -> Vec<u8> {
    s.data().read(id, 0, 4 << 20).unwrap()
}

/// Equal bytes, or where they first differ (not megabytes of both).
fn same(got: &[u8], want: &[u8], what: &str) {
    let at = got.iter().zip(want).position(|(a, b)| a != b);
    assert!(
        at.is_none() && got.len() == want.len(),
        "{what}: {} bytes, {} wanted, first difference at {at:?}",
        got.len(),
        want.len()
    );
}

/// What a power cut after fsync can leave: the record and the blobs written since
/// the last sync lost. Replay brings back exactly the fsynced content.
#[test]
fn replay_restores_what_fsync_logged() {
    let (_d, p, s) = scratch();
    let id = new_file(&s, "f");
    let before = record_value(&s, id);
    let data: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
    s.data().write(id, 0, &data).unwrap();
    s.data().commit(id, true).unwrap();
    let log = journal_dir(&s.layout).join(format!("{}.log", s.epoch().unwrap()));
    assert_eq!(read_entries(&log).unwrap().len(), 1, "one fsync, one entry");
    // The cut: the record as before, the new blobs gone.
    let rec = s.records.read(id).unwrap();
    let hashes = crate::store::content::record_hashes(&rec);
    assert!(!hashes.is_empty());
    xattr::set(s.layout.node_path(id), RECORD_XATTR, &before).unwrap();
    for h in &hashes {
        fs::remove_file(s.local.path_of(h)).unwrap();
    }
    crash(s);
    let s = reopen_and_check(&p, id, &data);
    assert!(!pending(&s.layout).unwrap(), "replayed logs are deleted");
}

/// A newer record that reached the disk by itself is not rolled back, and a clean
/// close leaves no log.
#[test]
fn replay_keeps_a_newer_record_and_clean_close_leaves_no_log() {
    let (_d, p, s) = scratch();
    let id = new_file(&s, "f");
    s.data().write(id, 0, b"first, fsynced").unwrap();
    s.data().commit(id, true).unwrap();
    s.data().write(id, 0, b"second, written").unwrap();
    s.data().commit(id, false).unwrap();
    crash(s);
    let s = Store::open(&p, OpenOptions::default()).unwrap();
    assert_eq!(read_all(&s, id), b"second, written");
    s.data().write(id, 0, b"third, fsynced!").unwrap();
    s.data().commit(id, true).unwrap();
    assert!(pending(&s.layout).unwrap());
    drop(s);
    let layout = Layout::new(&p);
    assert!(!pending(&layout).unwrap(), "a clean close deletes the log");
}

/// The node's file lost (never written back) while its name survived: replay makes
/// it again; a node no entry names any more is not brought back.
#[test]
fn replay_recreates_a_lost_node_only_if_named() {
    let (_d, p, s) = scratch();
    let kept = new_file(&s, "kept");
    let gone = new_file(&s, "gone");
    for id in [kept, gone] {
        s.data().write(id, 0, b"content").unwrap();
        s.data().commit(id, true).unwrap();
    }
    let entry = s.layout.node_path(s.root()).join("gone");
    fs::remove_file(entry).unwrap();
    for id in [kept, gone] {
        fs::remove_file(s.layout.node_path(id)).unwrap();
    }
    crash(s);
    let s = Store::open(&p, OpenOptions::default()).unwrap();
    assert_eq!(read_all(&s, kept), b"content");
    assert!(!s.layout.node_path(gone).exists());
}

/// A torn last entry ends the log; entries before it still apply.
#[test]
fn torn_tail_is_ignored() {
    let (_d, _p, s) = scratch();
    let id = new_file(&s, "f");
    for i in 0..3u8 {
        s.data().write(id, 0, &[i; 10]).unwrap();
        s.data().commit(id, true).unwrap();
    }
    let log = journal_dir(&s.layout).join(format!("{}.log", s.epoch().unwrap()));
    let all = read_entries(&log).unwrap();
    assert_eq!(all.len(), 3);
    // Flip a byte in the last entry's payload.
    let f = fs::OpenOptions::new().write(true).open(&log).unwrap();
    let mut off = HEADER;
    for e in &all[..2] {
        let Logged::Full(e, _) = e else {
            panic!("a changed session's first fsync is a full entry")
        };
        off += (ENTRY_HEAD + e.encode().len()) as u64;
    }
    f.write_all_at(&[0xff], off + ENTRY_HEAD as u64 + 20)
        .unwrap();
    assert_eq!(read_entries(&log).unwrap().len(), 2);
}

/// The log is written (zeros) ahead of its entries a step at a time, never over an
/// entry, and entries written across a step's end all replay.
#[test]
fn zeroed_ahead_in_steps_and_entries_cross_steps() {
    let (_d, p, s) = scratch();
    let id = new_file(&s, "f");
    let mut last = Vec::new();
    for i in 0..12u32 {
        // Incompressible-ish content so each entry carries ~600 KB of blobs.
        last = (0..600_000u32)
            .map(|j| (j.wrapping_mul(i + 7) % 253) as u8)
            .collect();
        s.data().write(id, 0, &last).unwrap();
        s.data().commit(id, true).unwrap();
        let log = s.fsync_log.as_ref().unwrap();
        let w = log.w.lock();
        assert!(w.zeroed >= w.off, "entries never pass the zeroed end");
        assert!(w.zeroed % ZERO_STEP == 0 || w.zeroed == GEN_END);
        let f = w.file.as_ref().unwrap();
        let mut tail = vec![1u8; (w.zeroed - w.off) as usize];
        f.read_exact_at(&mut tail, w.off).unwrap();
        assert!(tail.iter().all(|b| *b == 0), "beyond the last entry: zeros");
    }
    let log = journal_dir(&s.layout).join(format!("{}.log", s.epoch().unwrap()));
    assert_eq!(read_entries(&log).unwrap().len(), 12, "past two zero steps");
    let rec = s.records.read(id).unwrap();
    let hashes = crate::store::content::record_hashes(&rec);
    for h in &hashes {
        fs::remove_file(s.local.path_of(h)).unwrap();
    }
    crash(s);
    let s = Store::open(&p, OpenOptions::default()).unwrap();
    assert_eq!(read_all(&s, id), last);
}

fn kinds(s: &Store) -> (usize, usize) {
    let log = journal_dir(&s.layout).join(format!("{}.log", s.epoch().unwrap()));
    let all = read_entries(&log).unwrap();
    let full = all.iter().filter(|e| matches!(e, Logged::Full(..))).count();
    (full, all.len() - full)
}

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(seed * 2 + 1) % 251) as u8)
        .collect()
}

/// Write `data` at `off` into `want` too (what the file must hold).
fn write(s: &Store, id: NodeId, want: &mut Vec<u8>, off: usize, data: &[u8]) {
    s.data().write(id, off as u64, data).unwrap();
    if want.len() < off + data.len() {
        want.resize(off + data.len(), 0);
    }
    want[off..off + data.len()].copy_from_slice(data);
}

/// A file "db", open for writing, holding `first` committed (as a close would) and
/// then fsynced: one full entry, its content durable in the record, so its next
/// fsync after plain writes logs a delta on that content. (A new file's first fsync
/// would log a delta on its empty record instead: `a_new_files_first_fsync_…`.)
fn open_db(s: &Store, first: &[u8]) -> (NodeId, Vec<u8>) {
    let id = new_file(s, "db");
    s.data().open_write(id).unwrap();
    let mut want = Vec::new();
    write(s, id, &mut want, 0, first);
    s.data().commit(id, false).unwrap();
    s.data().commit(id, true).unwrap();
    (id, want)
}

fn reopen_and_check(p: &Path, id: NodeId, want: &[u8]) -> Store {
    let s = Store::open(p, OpenOptions::default()).unwrap();
    same(&read_all(&s, id), want, "the fsynced bytes, no others");
    assert_eq!(s.records.read(id).unwrap().size, want.len() as u64);
    let rep = crate::store::check::Checker::new(&s)
        .fsck(false, std::time::Duration::ZERO, |_| {})
        .unwrap();
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    s
}

/// An open file's later fsyncs log only what was written (deltas: across a chunk
/// boundary, past the end), the record stays as the first fsync left it, and after
/// a crash replay rebuilds exactly the fsynced content; a write never fsynced is gone.
#[test]
fn deltas_replay_what_was_fsynced() {
    let (_d, p, s) = scratch();
    let (id, mut want) = open_db(&s, &pattern(1, 150_000));
    let committed = record_value(&s, id);
    write(&s, id, &mut want, 130_000, &pattern(2, 5_000)); // crosses 131,072
    s.data().commit(id, true).unwrap();
    write(&s, id, &mut want, 149_000, &pattern(3, 20_000)); // past the end
    s.data().commit(id, true).unwrap();
    assert_eq!(kinds(&s), (1, 2), "one full entry, then deltas");
    assert_eq!(record_value(&s, id), committed, "a delta leaves the record");
    same(&read_all(&s, id), &want, "the session serves its bytes");
    s.data().write(id, 0, b"never fsynced").unwrap();
    crash(s);
    let s = reopen_and_check(&p, id, &want);
    assert!(!pending(&s.layout).unwrap());
}

/// The same killed (kill -9, not a power cut): the replay's record writes are counted
/// in the blob references, which the next open recovers from their log, not a scan
/// (`reopen_and_check`'s fsck compares them with one).
#[test]
fn a_killed_writers_replayed_deltas_are_counted() {
    let (_d, p, mut s) = scratch();
    let (id, mut want) = open_db(&s, &pattern(1, 150_000));
    write(&s, id, &mut want, 130_000, &pattern(2, 5_000));
    s.data().commit(id, true).unwrap();
    write(&s, id, &mut want, 149_000, &pattern(3, 20_000));
    s.data().commit(id, true).unwrap();
    std::mem::forget(s.fsync_log.take());
    s.refs.kill();
    drop(s);
    let s = reopen_and_check(&p, id, &want);
    assert!(!s.refs.rebuilt(), "counted from the log");
    assert!(s.refs.counting());
}

/// A checkpoint (the log full) carries the live chain into a slot, alternating
/// slots, and what the old generation held of it replays from there.
#[test]
fn a_checkpoint_carries_live_chains() {
    let (_d, p, s) = scratch();
    let id = new_file(&s, "db");
    let other = new_file(&s, "other");
    s.data().open_write(id).unwrap();
    let mut want = Vec::new();
    write(&s, id, &mut want, 0, &pattern(1, 100_000));
    // Committed, then fsynced: the chain starts on this content (one full entry).
    s.data().commit(id, false).unwrap();
    s.data().commit(id, true).unwrap();
    let log = s.fsync_log.as_ref().unwrap();
    let sync = || s.local.sync_filesystem();
    for round in 0..3u32 {
        write(
            &s,
            id,
            &mut want,
            1000 * round as usize,
            &pattern(round + 5, 3000),
        );
        s.data().commit(id, true).unwrap();
        s.data().write(other, 0, &pattern(round + 9, 2000)).unwrap();
        s.data().commit(other, true).unwrap();
        log.checkpoint_now(&sync).unwrap();
        assert_eq!(log.w.lock().slot, 1 + round as u64 % 2);
        assert_eq!(
            kinds(&s),
            (0, round as usize + 1),
            "only the chain is carried"
        );
    }
    write(&s, id, &mut want, 99_000, &pattern(8, 4000));
    s.data().commit(id, true).unwrap();
    assert_eq!(kinds(&s), (0, 4));
    crash(s);
    reopen_and_check(&p, id, &want);
}

/// Any commit ends the chain (the record holds its bytes): a newer record that
/// reached the disk wins; if it did not, the chain rebuilds the fsynced content.
/// An attribute change on the way does not stop a chain.
#[test]
fn a_commit_ends_a_chain_and_chmod_does_not() {
    for reached in [true, false] {
        let (_d, p, s) = scratch();
        let (id, mut want) = open_db(&s, &pattern(1, 3000));
        let durable = record_value(&s, id);
        write(&s, id, &mut want, 500, &pattern(2, 100));
        s.data().commit(id, true).unwrap();
        let fsynced = want.clone();
        s.records
            .update(id, |r| {
                r.mode = (r.mode & !0o7777) | 0o600;
                Ok(())
            })
            .unwrap();
        write(&s, id, &mut want, 2900, &pattern(3, 200));
        s.data().commit(id, false).unwrap(); // a flush: not durable
        assert!(s.fsync_log.as_ref().unwrap().w.lock().chains.is_empty());
        if !reached {
            // The cut lost the commit (and the chmod): the durable record is back.
            xattr::set(s.layout.node_path(id), RECORD_XATTR, &durable).unwrap();
        }
        crash(s);
        let s = reopen_and_check(&p, id, if reached { &want } else { &fsynced });
        if reached {
            assert_eq!(s.records.read(id).unwrap().mode & 0o7777, 0o600);
        }
    }
    // The chmod reached the disk, the chain's writes did not: they still apply.
    let (_d, p, s) = scratch();
    let (id, mut want) = open_db(&s, &pattern(1, 3000));
    write(&s, id, &mut want, 10, &pattern(2, 100));
    s.data().commit(id, true).unwrap();
    s.records
        .update(id, |r| {
            r.mode = (r.mode & !0o7777) | 0o600;
            Ok(())
        })
        .unwrap();
    assert_eq!(kinds(&s), (1, 1));
    crash(s);
    let s = reopen_and_check(&p, id, &want);
    assert_eq!(s.records.read(id).unwrap().mode & 0o7777, 0o600);
}

/// A new file's first fsync logs its record as stored (empty content, its mode) and
/// the bytes written as a delta on it, made durable by one sync: no blob is stored
/// or carried, the record is not touched. A power cut that loses the node's file
/// (its name survived) gets both back from the log; a later fsync is a delta on
/// the same chain, and a truncate before the first fsync makes it a full one.
#[test]
fn a_new_files_first_fsync_logs_its_record_and_a_delta() {
    let (_d, p, s) = scratch();
    let id = new_file(&s, "journal");
    s.records
        .update(id, |r| {
            r.mode = (r.mode & !0o7777) | 0o640;
            Ok(())
        })
        .unwrap();
    s.data().open_write(id).unwrap();
    let empty = record_value(&s, id);
    let mut want = Vec::new();
    write(&s, id, &mut want, 0, &pattern(1, 9000));
    s.data().commit(id, true).unwrap();
    assert_eq!(kinds(&s), (1, 1), "the record, then a delta");
    assert_eq!(record_value(&s, id), empty, "the record is not touched");
    write(&s, id, &mut want, 0, &pattern(2, 512));
    write(&s, id, &mut want, 9000, &pattern(3, 4096));
    s.data().commit(id, true).unwrap();
    assert_eq!(kinds(&s), (1, 2), "the same chain");
    same(&read_all(&s, id), &want, "the session serves its bytes");
    // The cut: the node's file never reached the disk.
    fs::remove_file(s.layout.node_path(id)).unwrap();
    crash(s);
    let s = reopen_and_check(&p, id, &want);
    assert_eq!(s.records.read(id).unwrap().mode & 0o7777, 0o640);

    drop(s);

    // Truncated (not a plain write) before its first fsync: committed in full.
    let (_d, _p, s) = scratch();
    let id = new_file(&s, "truncated");
    s.data().open_write(id).unwrap();
    s.data().truncate(id, 100).unwrap();
    s.data().write(id, 10, b"x").unwrap();
    s.data().commit(id, true).unwrap();
    assert_eq!(kinds(&s), (1, 0));
}

/// Deltas that grow an inline file past 24 chunks: replay stores a manifest.
/// And a writer dropped with a live chain (its commit never ran) keeps its log.
#[test]
fn deltas_grow_an_inline_file_into_a_manifest_and_keep_the_log() {
    let (_d, p, s) = scratch();
    let (id, mut want) = open_db(&s, b"small");
    assert!(matches!(
        s.records.read(id).unwrap().content,
        Content::Inline(_)
    ));
    write(&s, id, &mut want, 3, &pattern(4, 800_000));
    s.data().commit(id, true).unwrap();
    write(&s, id, &mut want, 800_003, &pattern(5, 850_000));
    s.data().commit(id, true).unwrap();
    assert_eq!(kinds(&s), (1, 2));
    drop(s); // Drop closes the log, but the chain is live: it stays
    assert!(pending(&Layout::new(&p)).unwrap());
    let s = reopen_and_check(&p, id, &want);
    assert!(matches!(
        s.records.read(id).unwrap().content,
        Content::Manifest(_)
    ));
}

/// A truncate is not a write: the next fsync commits in full.
#[test]
fn a_truncate_makes_the_next_fsync_full() {
    let (_d, p, s) = scratch();
    let id = new_file(&s, "db");
    s.data().open_write(id).unwrap();
    let mut want = pattern(1, 10_000);
    s.data().write(id, 0, &want).unwrap();
    s.data().commit(id, true).unwrap();
    s.data().truncate(id, 4000).unwrap();
    want.truncate(4000);
    s.data().commit(id, true).unwrap();
    write(&s, id, &mut want, 3990, b"tail");
    s.data().commit(id, true).unwrap();
    // The new file's first fsync: its empty record and a delta; the truncate's: in
    // full; the tail: a delta on that.
    assert_eq!(kinds(&s), (2, 2));
    crash(s);
    reopen_and_check(&p, id, &want);
}

/// Seeded random streams of writes, fsyncs, flushes, truncates, chmods and
/// checkpoints on one open file, then a crash: the file holds what its last commit
/// or, if an fsync logged deltas after it, its last fsync left (a crash here loses
/// nothing the backing filesystem had, so a non-durable commit survives too).
#[test]
fn random_streams_replay_to_the_last_commit_or_fsync() {
    for seed in 0..24u64 {
        let mut r = fastrand::Rng::with_seed(seed);
        let (_d, p, s) = scratch();
        let id = new_file(&s, "db");
        s.data().open_write(id).unwrap();
        let mut now: Vec<u8> = Vec::new();
        let mut expect = Vec::new();
        for step in 0..40 {
            match r.u32(0..100) {
                0..=54 => {
                    let off = r.usize(0..(now.len() + 2000).min(300_000));
                    let n = if r.bool() {
                        r.usize(1..5000)
                    } else {
                        r.usize(1..70_000)
                    };
                    let mut d = vec![0u8; n];
                    r.fill(&mut d);
                    write(&s, id, &mut now, off, &d);
                }
                55..=79 => {
                    s.data().commit(id, true).unwrap();
                    expect = now.clone();
                }
                80..=87 => {
                    s.data().commit(id, false).unwrap();
                    expect = now.clone();
                }
                88..=92 => {
                    let n = r.usize(0..now.len() + 1000);
                    s.data().truncate(id, n as u64).unwrap();
                    now.resize(n, 0);
                }
                93..=96 => {
                    s.records
                        .update(id, |rec| {
                            rec.mode ^= 0o4;
                            Ok(())
                        })
                        .unwrap();
                }
                _ => {
                    let log = s.fsync_log.as_ref().unwrap();
                    log.checkpoint_now(&|| s.local.sync_filesystem()).unwrap();
                }
            }
            let _ = step;
        }
        crash(s);
        let s = Store::open(&p, OpenOptions::default()).unwrap();
        same(&read_all(&s, id), &expect, &format!("seed {seed}"));
        let rep = crate::store::check::Checker::new(&s)
            .fsck(false, std::time::Duration::ZERO, |_| {})
            .unwrap();
        assert!(rep.problems.is_empty(), "seed {seed}: {:?}", rep.problems);
    }
}

/// Content can come back to a chain's base (a truncate to zero, fsynced): the full
/// entry of that fsync ends the chain, which must not be replayed over it.
#[test]
fn a_later_durable_state_equal_to_the_base_ends_the_chain() {
    let (_d, p, s) = scratch();
    let id = new_file(&s, "db");
    s.data().open_write(id).unwrap();
    s.data().commit(id, true).unwrap(); // nothing written: the empty content is durable
    s.data().write(id, 0, b"secret").unwrap();
    s.data().commit(id, true).unwrap();
    assert_eq!(
        kinds(&s),
        (1, 1),
        "the write went as a delta on the empty base"
    );
    s.data().truncate(id, 0).unwrap();
    s.data().commit(id, true).unwrap();
    crash(s);
    reopen_and_check(&p, id, b"");
}

/// Attributes changed since the chain began: the next fsync commits in full (so it
/// logs them). A record logged while the chain is live (fsyncdir after a chmod)
/// does not end it.
#[test]
fn attribute_changes_are_logged_and_do_not_end_a_live_chain() {
    let (_d, p, s) = scratch();
    let (id, mut want) = open_db(&s, &pattern(1, 3000));
    write(&s, id, &mut want, 100, &pattern(2, 50));
    s.data().commit(id, true).unwrap();
    s.records
        .update(id, |r| {
            r.mode = (r.mode & !0o7777) | 0o600;
            Ok(())
        })
        .unwrap();
    s.fsync().sync_node(id).unwrap(); // what fsyncdir does for a child whose record changed
    assert_eq!(kinds(&s), (2, 1));
    let log = journal_dir(&s.layout).join(format!("{}.log", s.epoch().unwrap()));
    assert!(matches!(
        read_entries(&log).unwrap()[2],
        Logged::Full(_, false)
    ));
    crash(s);
    let s = reopen_and_check(&p, id, &want);
    assert_eq!(s.records.read(id).unwrap().mode & 0o7777, 0o600);
    s.data().open_write(id).unwrap();
    write(&s, id, &mut want, 10, b"x");
    s.data().commit(id, true).unwrap();
    s.records
        .update(id, |r| {
            r.mode = (r.mode & !0o7777) | 0o640;
            Ok(())
        })
        .unwrap();
    write(&s, id, &mut want, 20, b"y");
    s.data().commit(id, true).unwrap();
    assert_eq!(
        kinds(&s),
        (2, 0),
        "after the chmod the fsync commits in full"
    );
    crash(s);
    let s = reopen_and_check(&p, id, &want);
    assert_eq!(s.records.read(id).unwrap().mode & 0o7777, 0o640);
}

/// A clean close commits open sessions in full: no log is left. A log kept by a
/// close (a live chain whose commit failed) is never written again.
#[test]
fn clean_close_commits_in_full_and_a_kept_log_stays_as_kept() {
    let (_d, p, s) = scratch();
    let (id, mut want) = open_db(&s, &pattern(1, 3000));
    write(&s, id, &mut want, 7, b"delta");
    s.data().commit(id, true).unwrap();
    assert_eq!(kinds(&s), (1, 1));
    s.data().commit_all().unwrap();
    s.close_fsync_log().unwrap();
    assert!(
        !pending(&s.layout).unwrap(),
        "committed in full, log deleted"
    );
    drop(s);
    let s = reopen_and_check(&p, id, &want);
    // A live chain at close keeps the log; a later fsync leaves it alone.
    let other = new_file(&s, "other");
    s.data().open_write(id).unwrap();
    write(&s, id, &mut want, 0, b"first");
    s.data().commit(id, true).unwrap();
    write(&s, id, &mut want, 2000, b"second");
    s.data().commit(id, true).unwrap();
    s.close_fsync_log().unwrap();
    let log = journal_dir(&s.layout).join(format!("{}.log", s.epoch().unwrap()));
    let kept = fs::read(&log).unwrap();
    s.data().write(other, 0, b"late").unwrap();
    s.data().commit(other, true).unwrap();
    assert!(fs::read(&log).unwrap() == kept, "the kept log is untouched");
    crash(s);
    reopen_and_check(&p, id, &want);
}

/// A log of the first format (no kind byte, no carried slots), as an older decofs
/// left it at a crash, still replays.
#[test]
fn a_first_format_log_replays() {
    let (_d, p, s) = scratch();
    let id = new_file(&s, "f");
    let before = record_value(&s, id);
    s.data()
        .write(id, 0, b"fsynced by an older decofs")
        .unwrap();
    s.data().commit(id, true).unwrap();
    let log = journal_dir(&s.layout).join(format!("{}.log", s.epoch().unwrap()));
    let Logged::Full(e, _) = read_entries(&log).unwrap().remove(0) else {
        panic!("a full entry")
    };
    xattr::set(s.layout.node_path(id), RECORD_XATTR, &before).unwrap();
    crash(s);
    let mut v1 = MAGIC_V1.to_vec();
    v1.extend_from_slice(&7u64.to_le_bytes());
    v1.extend_from_slice(&checksum(7, MAGIC_V1));
    v1.resize(HEADER as usize, 0);
    v1.extend_from_slice(&framed(7, &e.encode()[1..]));
    fs::write(&log, &v1).unwrap();
    reopen_and_check(&p, id, b"fsynced by an older decofs");
}

/// A commit at close reached the disk without its blobs (a journal committed the
/// record before delayed data): replay treats it as lost and rebuilds the
/// fsynced content from the chain.
#[test]
fn a_newer_record_without_its_blobs_does_not_hide_the_chain() {
    let (_d, p, s) = scratch();
    let (id, mut want) = open_db(&s, &pattern(1, 150_000));
    write(&s, id, &mut want, 70_000, &pattern(2, 3000));
    s.data().commit(id, true).unwrap();
    s.data().write(id, 0, b"closed, never fsynced").unwrap();
    s.data().commit(id, false).unwrap();
    let rec = s.records.read(id).unwrap();
    for h in crate::store::content::record_hashes(&rec) {
        if !s.local.path_of(&h).exists() {
            continue;
        }
        fs::write(s.local.path_of(&h), b"").unwrap(); // as the cut left them
    }
    crash(s);
    reopen_and_check(&p, id, &want);
}

/// A store making spares (`spare_file`).
fn scratch_spares() -> (tempfile::TempDir, PathBuf, Store) {
    let (d, p, s) = scratch();
    s.start_spares();
    (d, p, s)
}

/// A file made from a spare (only those log their names), once spares are ready.
fn spare_file(s: &Store, name: &str) -> NodeId {
    let t0 = std::time::Instant::now();
    while s.spare_nodes() == 0 {
        assert!(t0.elapsed().as_secs() < 60, "no spare node files were made");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    new_file(s, name)
}

fn names_logged(s: &Store) -> Vec<(Vec<u8>, NodeId, bool)> {
    let log = journal_dir(&s.layout).join(format!("{}.log", s.epoch().unwrap()));
    read_entries(&log)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            Logged::Name(n) => Some((n.name, NodeId(uuid::Uuid::from_bytes(n.node)), n.bound)),
            _ => None,
        })
        .collect()
}

fn entry(s: &Store, name: &str) -> PathBuf {
    s.layout.node_path(s.root()).join(name)
}

/// What a cut can leave of a new file that its fsync and fsyncdir made durable
/// through the log: neither its entry nor its node file (renamed from a spare, never
/// synced). Replay binds the name and brings the content back.
#[test]
fn a_logged_name_is_recreated() {
    let (_d, p, s) = scratch_spares();
    let id = spare_file(&s, "j");
    s.data().write(id, 0, b"journal").unwrap();
    s.data().commit(id, true).unwrap();
    s.fsync().sync_dir_node(s.root()).unwrap();
    assert_eq!(names_logged(&s), vec![(b"j".to_vec(), id, true)]);
    fs::remove_file(entry(&s, "j")).unwrap();
    fs::remove_file(s.layout.node_path(id)).unwrap();
    crash(s);
    reopen_and_check(&p, id, b"journal");
    let s = Store::open(&p, OpenOptions::default()).unwrap();
    assert_eq!(s.names().lookup(s.root(), "j".as_ref()).unwrap(), id);
}

/// An unlink of a logged name appends a tombstone without a sync; the next sync of
/// the log (another file's fsync) carries it. If the cut kept the entry (its removal
/// never reached the disk), replay removes it: the file does not come back with its
/// old content.
#[test]
fn a_synced_tombstone_keeps_the_name_removed() {
    let (_d, p, s) = scratch_spares();
    let j = spare_file(&s, "j");
    s.data().write(j, 0, b"stale journal").unwrap();
    s.data().commit(j, true).unwrap();
    s.fsync().sync_dir_node(s.root()).unwrap();
    let record = record_value(&s, j);
    s.tree().unlink(s.root(), "j".as_ref()).unwrap();
    let db = spare_file(&s, "db");
    s.data().write(db, 0, b"committed").unwrap();
    s.data().commit(db, true).unwrap();
    assert_eq!(
        names_logged(&s),
        vec![
            (b"j".to_vec(), j, true),
            (b"j".to_vec(), j, false),
            (b"db".to_vec(), db, true)
        ]
    );
    // The cut kept the old entry and node file (the unlink's changes were lost).
    std::os::unix::fs::symlink(Layout::entry_target(j), entry(&s, "j")).unwrap();
    fs::File::create(s.layout.node_path(j)).unwrap();
    xattr::set(s.layout.node_path(j), RECORD_XATTR, &record).unwrap();
    crash(s);
    let s = Store::open(&p, OpenOptions::default()).unwrap();
    assert!(matches!(
        s.names().lookup(s.root(), "j".as_ref()),
        Err(crate::store::Error::NotFound)
    ));
    assert_eq!(read_all(&s, db), b"committed");
}

/// A tombstone no sync carried is lost with the cut: the name comes back with the
/// content its fsync logged (as on a disk where the unlink was not yet durable).
#[test]
fn an_unsynced_tombstone_is_lost_with_the_cut() {
    let (_d, p, s) = scratch_spares();
    let j = spare_file(&s, "j");
    s.data().write(j, 0, b"journal").unwrap();
    s.data().commit(j, true).unwrap();
    s.fsync().sync_dir_node(s.root()).unwrap();
    let log = journal_dir(&s.layout).join(format!("{}.log", s.epoch().unwrap()));
    let durable = fs::read(&log).unwrap();
    s.tree().unlink(s.root(), "j".as_ref()).unwrap();
    assert_eq!(names_logged(&s).len(), 2, "the tombstone is appended");
    crash(s);
    // What the device held: the log as synced, the entry and node file gone.
    fs::write(&log, &durable).unwrap();
    reopen_and_check(&p, j, b"journal");
}

/// The same name bound to one node after another (a database's journal, one per
/// transaction), and a rename of a logged name: replay follows the log in order. An
/// entry the cut kept for an older node is replaced; the renamed file is found under
/// its new name only.
#[test]
fn names_reused_and_renamed_replay_in_order() {
    let (_d, p, s) = scratch_spares();
    let j1 = spare_file(&s, "j");
    s.data().write(j1, 0, b"first").unwrap();
    s.data().commit(j1, true).unwrap();
    s.fsync().sync_dir_node(s.root()).unwrap();
    s.tree().unlink(s.root(), "j".as_ref()).unwrap();
    let j2 = spare_file(&s, "j");
    s.data().write(j2, 0, b"second").unwrap();
    s.data().commit(j2, true).unwrap();
    s.fsync().sync_dir_node(s.root()).unwrap();
    let a = spare_file(&s, "a");
    s.data().write(a, 0, b"renamed").unwrap();
    s.data().commit(a, true).unwrap();
    s.fsync().sync_dir_node(s.root()).unwrap();
    s.tree()
        .rename(
            s.root(),
            "a".as_ref(),
            s.root(),
            "b".as_ref(),
            crate::store::tree::RenameMode::Replace,
        )
        .unwrap();
    s.fsync().sync_dir_node(s.root()).unwrap();
    let logged = names_logged(&s);
    assert_eq!(
        &logged[logged.len() - 2..],
        &[(b"a".to_vec(), a, false), (b"b".to_vec(), a, true)]
    );
    // The cut: `j` still names the first journal, the rename never reached the disk.
    fs::remove_file(entry(&s, "j")).unwrap();
    std::os::unix::fs::symlink(Layout::entry_target(j1), entry(&s, "j")).unwrap();
    fs::rename(entry(&s, "b"), entry(&s, "a")).unwrap();
    crash(s);
    let s = Store::open(&p, OpenOptions::default()).unwrap();
    let root = s.root();
    assert_eq!(s.names().lookup(root, "j".as_ref()).unwrap(), j2);
    assert_eq!(read_all(&s, j2), b"second");
    assert_eq!(s.names().lookup(root, "b".as_ref()).unwrap(), a);
    assert_eq!(read_all(&s, a), b"renamed");
    assert!(s.names().lookup(root, "a".as_ref()).is_err());
}

/// A name the log removed and a link binds again is logged again: replay keeps it.
#[test]
fn a_name_bound_again_by_a_link_is_kept() {
    let (_d, p, s) = scratch_spares();
    let j = spare_file(&s, "j");
    s.data().write(j, 0, b"kept").unwrap();
    s.data().commit(j, true).unwrap();
    s.fsync().sync_dir_node(s.root()).unwrap();
    s.tree().link(j, s.root(), "k".as_ref()).unwrap();
    s.tree().unlink(s.root(), "j".as_ref()).unwrap();
    s.tree().link(j, s.root(), "j".as_ref()).unwrap();
    s.fsync().sync_dir_node(s.root()).unwrap();
    crash(s);
    let s = Store::open(&p, OpenOptions::default()).unwrap();
    assert_eq!(s.names().lookup(s.root(), "j".as_ref()).unwrap(), j);
    assert_eq!(read_all(&s, j), b"kept");
}

/// A log of the second format (no names) still replays.
#[test]
fn a_second_format_log_replays() {
    let (_d, p, s) = scratch();
    let id = new_file(&s, "f");
    let before = record_value(&s, id);
    s.data().write(id, 0, b"fsynced by decofs 2").unwrap();
    s.data().commit(id, true).unwrap();
    let log = journal_dir(&s.layout).join(format!("{}.log", s.epoch().unwrap()));
    let Logged::Full(e, _) = read_entries(&log).unwrap().remove(0) else {
        panic!("a full entry")
    };
    xattr::set(s.layout.node_path(id), RECORD_XATTR, &before).unwrap();
    crash(s);
    let mut v2 = super::format::MAGIC_V2.to_vec();
    v2.extend_from_slice(&3u64.to_le_bytes());
    v2.extend_from_slice(&0u64.to_le_bytes());
    v2.extend_from_slice(&super::format::header_sum(super::format::MAGIC_V2, 3, 0));
    v2.resize(HEADER as usize, 0);
    v2.extend_from_slice(&framed(3, &e.encode()));
    fs::write(&log, &v2).unwrap();
    reopen_and_check(&p, id, b"fsynced by decofs 2");
}

/// An exchange that brings a node back to a name the log removed it from logs that
/// name again: replay keeps both entries as the exchange left them.
#[test]
fn an_exchange_back_to_a_removed_name_is_kept() {
    let (_d, p, s) = scratch_spares();
    let root = s.root();
    let j = spare_file(&s, "j");
    s.data().write(j, 0, b"moved twice").unwrap();
    s.data().commit(j, true).unwrap();
    s.fsync().sync_dir_node(root).unwrap();
    let t = s.tree();
    t.rename(
        root,
        "j".as_ref(),
        root,
        "k".as_ref(),
        crate::store::tree::RenameMode::Replace,
    )
    .unwrap();
    let x = spare_file(&s, "j");
    t.rename(
        root,
        "j".as_ref(),
        root,
        "k".as_ref(),
        crate::store::tree::RenameMode::Exchange,
    )
    .unwrap();
    s.fsync().sync_dir_node(root).unwrap();
    crash(s);
    let s = Store::open(&p, OpenOptions::default()).unwrap();
    assert_eq!(s.names().lookup(s.root(), "j".as_ref()).unwrap(), j);
    assert_eq!(s.names().lookup(s.root(), "k".as_ref()).unwrap(), x);
    assert_eq!(read_all(&s, j), b"moved twice");
}

/// A log that fails while it holds names can append no tombstone any more: at the
/// break the store is synced and the log's names voided, so a name removed after the
/// break (its removal made durable by fsyncdir, which syncs the directory now) does
/// not come back, while the log's records and chains still replay.
#[test]
fn a_broken_log_voids_its_names() {
    let (_d, p, s) = scratch_spares();
    let j = spare_file(&s, "j");
    s.data().write(j, 0, b"stale journal").unwrap();
    s.data().commit(j, true).unwrap();
    let k = spare_file(&s, "k");
    s.data().write(k, 0, b"only in the log").unwrap();
    s.data().commit(k, true).unwrap();
    s.fsync().sync_dir_node(s.root()).unwrap();
    assert_eq!(
        names_logged(&s),
        vec![(b"j".to_vec(), j, true), (b"k".to_vec(), k, true)]
    );
    let log = s.fsync_log.as_ref().unwrap();
    log.fail_writes();
    // The next fsync fails to append: it syncs the files, the log is broken.
    let db = spare_file(&s, "db");
    s.data().write(db, 0, b"committed").unwrap();
    s.data().commit(db, true).unwrap();
    assert!(!log.usable());
    assert!(log.names_voided(), "the break voids the log's names");
    assert!(!log.holds_name(&(s.root().0.into_bytes(), b"j".to_vec())));
    let record = record_value(&s, j);
    s.tree().unlink(s.root(), "j".as_ref()).unwrap();
    // No tombstone: fsyncdir syncs the directory itself.
    s.fsync().sync_dir_node(s.root()).unwrap();
    assert_eq!(
        names_logged(&s).len(),
        2,
        "nothing appended after the break"
    );
    // The cut: the directory as synced (no `j`), the unlink's other changes lost (the
    // node file and its record as before).
    if !s.layout.node_path(j).exists() {
        fs::File::create(s.layout.node_path(j)).unwrap();
    }
    xattr::set(s.layout.node_path(j), RECORD_XATTR, &record).unwrap();
    crash(s);
    let s = Store::open(&p, OpenOptions::default()).unwrap();
    assert!(matches!(
        s.names().lookup(s.root(), "j".as_ref()),
        Err(crate::store::Error::NotFound)
    ));
    assert_eq!(s.names().lookup(s.root(), "k".as_ref()).unwrap(), k);
    assert_eq!(read_all(&s, k), b"only in the log");
    assert_eq!(read_all(&s, db), b"committed");
    assert!(!pending(&s.layout).unwrap(), "replayed logs are deleted");
    let left: Vec<_> = fs::read_dir(journal_dir(&s.layout))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "the marker goes with its log: {left:?}");
}
