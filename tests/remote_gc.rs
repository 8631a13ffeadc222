//! gc and scrub of the object store (issue 26; docs/DESIGN.md, "Remote storage"), on
//! a real SeaweedFS started on 127.0.0.1 by each test and stopped by its pid:
//! `scrub --remote` finds a damaged and a missing blob and stops when the object
//! store does; gc marks in one run and deletes in a later one exactly the blobs
//! nothing names (and streams no head names), a clone still reads everything; a
//! listing cut off in the middle deletes nothing; a blob written again after it was
//! marked survives.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::proxy::{Mode, Proxy};
use common::remote::*;
use common::seaweed::Seaweed;
use common::*;

/// A new store bound to `prefix` at `endpoint` (64 KiB chunks: a 2 MiB file has a
/// manifest), mounted with `opts`.
fn mount_bound_at(sw: &Seaweed, endpoint: &str, prefix: &str, opts: &str) -> Mount {
    env();
    let url = sw.url(prefix);
    let args = [
        "--trash-min-age",
        "0",
        "--chunk-size",
        "65536",
        "--remote",
        &url,
        "--endpoint",
        endpoint,
        "--allow-http",
    ];
    Mount::with_init(&args, opts)
}

fn mount_bound(sw: &Seaweed, prefix: &str) -> Mount {
    mount_bound_at(
        sw,
        &sw.endpoint(),
        prefix,
        "allow_other,publish_interval=0,cache_size=0",
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The hashes of the blob files on the store's disk.
fn local_blobs(store: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for shard in std::fs::read_dir(store.join("blobs")).into_iter().flatten() {
        for b in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            out.insert(b.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// The hashes of the blobs under `prefix` in the bucket.
fn bucket_blobs(sw: &Seaweed, prefix: &str) -> BTreeSet<String> {
    sw.list(&format!("{prefix}/blobs/"))
        .into_iter()
        .filter_map(|k| k.rsplit('/').next().map(str::to_string))
        .collect()
}

fn hash_of(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

fn scrub_remote(target: &Path) -> (i32, serde_json::Value, String) {
    dj(&["scrub", "--remote", s(target)])
}

/// `decofs gc` with local grace 0 and the object store's grace `remote_grace`.
fn gc(target: &Path, remote_grace: &str) -> (i32, serde_json::Value, String) {
    dj(&[
        "gc",
        s(target),
        "--grace",
        "0",
        "--remote-grace",
        remote_grace,
    ])
}

#[track_caller]
fn gc_ok(target: &Path, remote_grace: &str) -> serde_json::Value {
    let (c, v, e) = gc(target, remote_grace);
    assert_eq!(c, 0, "gc: {v} {e}");
    assert!(v["remote"].is_object(), "gc of a bound store: {v}");
    v["remote"].clone()
}

fn hashes(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["hash"].as_str().map(str::to_string))
        .collect()
}

/// Files of distinct content: (path, bytes).
fn write(root: &Path, files: &[(&str, Vec<u8>)]) -> Vec<(PathBuf, Vec<u8>)> {
    files
        .iter()
        .map(|(n, d)| {
            let p = root.join(n);
            std::fs::write(&p, d).unwrap();
            (p, d.clone())
        })
        .collect()
}

#[test]
fn scrub_remote_finds_damaged_and_missing_blobs() {
    let mut sw = Seaweed::start();
    let m = mount_bound(&sw, "scrub");
    write(
        &m.mnt,
        &[
            ("a", pattern(1, 0, 300 << 10)),
            ("b", pattern(2, 0, 5000)),
            ("c", pattern(3, 0, 2 << 20)),
        ],
    );
    publish(&m.mnt);
    wait_uploaded(&m);
    let named = local_blobs(&m.store);
    let (c, v, e) = scrub_remote(&m.mnt);
    assert_eq!(c, 0, "a fresh published store is clean: {v} {e}");
    assert_eq!(v["result"], "clean", "{v}");
    assert_eq!(v["checked"].as_u64(), Some(named.len() as u64), "{v}");
    assert!(v["bytes"].as_u64().unwrap() > 2 << 20, "{v}");
    assert_eq!(v["missing"].as_array().map(Vec::len), Some(0), "{v}");
    assert_eq!(v["pending"], 0, "{v}");
    // Text for people says so too.
    let out = decofs(&["scrub", "--remote", s(&m.mnt)]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("clean"));

    // One blob overwritten in the bucket, another deleted from it.
    let b = hash_of(&pattern(2, 0, 5000));
    let a0 = hash_of(&pattern(1, 0, 64 << 10));
    assert!(named.contains(&b) && named.contains(&a0), "{named:?}");
    sw.put(&blob_key("scrub", &b), b"not the bytes of its name");
    sw.delete(&blob_key("scrub", &a0));
    let (c, v, e) = scrub_remote(&m.mnt);
    assert_eq!(c, 4, "damage found: {v} {e}");
    assert_eq!(v["result"], "integrity_error", "{v}");
    assert_eq!(hashes(&v["damaged"]), BTreeSet::from([b.clone()]), "{v}");
    assert_eq!(hashes(&v["missing"]), BTreeSet::from([a0.clone()]), "{v}");
    let users = v["damaged"][0]["used_by"].to_string();
    assert!(users.contains("/b"), "who uses the damaged blob: {users}");
    let out = decofs(&["scrub", "--remote", s(&m.mnt)]);
    assert_eq!(out.status.code(), Some(4));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("[code: integrity_error]") && text.contains(&b) && text.contains(&a0),
        "{text}"
    );
    // The same, unmounted (the store opened directly, with its ledger); it only read.
    m.unmount();
    let (c, v, e) = scrub_remote(&m.store);
    assert_eq!(c, 4, "unmounted: {v} {e}");
    assert_eq!(hashes(&v["damaged"]), BTreeSet::from([b.clone()]), "{v}");
    assert_eq!(hashes(&v["missing"]), BTreeSet::from([a0.clone()]), "{v}");
    assert_eq!(
        sw.get(&blob_key("scrub", &b)).as_deref(),
        Some(&b"not the bytes of its name"[..]),
        "scrub changes nothing"
    );
    // The object store down: not a partial result taken for clean.
    sw.stop();
    let (c, v, e) = scrub_remote(&m.store);
    assert_eq!(c, 8, "{v} {e}");
    assert!(e.contains("remote_unavailable"), "{e}");
}

/// Files `keep*` stay, files `gone*` are deleted (one with a manifest, 2 MiB in 64 KiB
/// chunks), purged from the trash, a snapshot naming them removed, and published.
/// Returns the blobs only the gone files named.
fn make_garbage(m: &Mount, prefix: &str, sw: &Seaweed) -> BTreeSet<String> {
    write(
        &m.mnt,
        &[
            ("keep1", pattern(10, 0, 200 << 10)),
            ("keep2", pattern(11, 0, 3000)),
            ("gone1", pattern(12, 0, 130 << 10)),
            ("gone2", pattern(13, 0, 2 << 20)),
        ],
    );
    publish(&m.mnt);
    let (c, v, e) = dj(&["snapshot", "create", s(&m.mnt), "before"]);
    assert_eq!(c, 0, "snapshot: {v} {e}");
    wait_uploaded(m);
    let before = bucket_blobs(sw, prefix);
    std::fs::remove_file(m.path("gone1")).unwrap();
    std::fs::remove_file(m.path("gone2")).unwrap();
    let (c, v, e) = dj(&["trash", "purge", s(&m.mnt), "--all"]);
    assert_eq!(c, 0, "purge: {v} {e}");
    let (c, v, e) = dj(&["snapshot", "rm", s(&m.mnt), "before"]);
    assert_eq!(c, 0, "snapshot rm: {v} {e}");
    publish(&m.mnt);
    wait_uploaded(m);
    // What the store names: its blobs on disk (no cache bound) but those a local gc
    // would delete (a dry run: it marks nothing in the bucket either).
    let (c, v, e) = dj(&["gc", s(&m.mnt), "--grace", "0", "--dry-run"]);
    assert_eq!(c, 0, "{v} {e}");
    let unnamed: BTreeSet<String> = v["deleted_hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect();
    let named: BTreeSet<String> = local_blobs(&m.store)
        .difference(&unnamed)
        .cloned()
        .collect();
    let garbage: BTreeSet<String> = before.difference(&named).cloned().collect();
    // gone2's manifest and chunks, and gone1's chunks.
    assert!(garbage.len() >= 20, "{} garbage blobs", garbage.len());
    assert!(garbage.contains(&hash_of(&pattern(12, 0, 64 << 10))));
    assert!(named.contains(&hash_of(&pattern(10, 0, 64 << 10))));
    garbage
}

#[test]
fn gc_deletes_what_nothing_names_in_two_phases() {
    let sw = Seaweed::start();
    let a = mount_bound(&sw, "gc");
    let garbage = make_garbage(&a, "gc", &sw);
    let all = bucket_blobs(&sw, "gc");
    // A stream no head names (a publish cut short before its head).
    sw.put("gc/streams/0000000099-not-in-the-chain", b"junk");
    // Phase 1 marks; nothing is deleted.
    let r = gc_ok(&a.mnt, "2s");
    assert_eq!(r["blobs_deleted"], 0, "{r}");
    assert_eq!(
        r["candidates_marked"].as_u64(),
        Some(garbage.len() as u64 + 1),
        "the garbage and the stray stream: {r}"
    );
    assert_eq!(bucket_blobs(&sw, "gc"), all, "nothing deleted by phase 1");
    assert!(a.store.join("remote/gc-candidates").exists());
    // Too soon: the marks wait out the grace period.
    let r = gc_ok(&a.mnt, "1h");
    assert_eq!(r["blobs_deleted"], 0, "{r}");
    assert_eq!(bucket_blobs(&sw, "gc"), all);
    std::thread::sleep(Duration::from_millis(2500));
    // Phase 2: exactly the garbage goes.
    let r = gc_ok(&a.mnt, "2s");
    assert_eq!(
        r["blobs_deleted"].as_u64(),
        Some(garbage.len() as u64),
        "{r}"
    );
    assert_eq!(r["streams_deleted"], 1, "{r}");
    let deleted: BTreeSet<String> = r["deleted_hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect();
    assert_eq!(deleted, garbage);
    let left = bucket_blobs(&sw, "gc");
    let want: BTreeSet<String> = all.difference(&garbage).cloned().collect();
    assert_eq!(
        left, want,
        "every blob still named is there, the rest is gone"
    );
    assert!(sw.get("gc/streams/0000000099-not-in-the-chain").is_none());
    let chain = sw.list("gc/streams/");
    assert_eq!(chain.len(), 2, "the head's chain stays: {chain:?}");
    // Nothing more to do.
    let r = gc_ok(&a.mnt, "2s");
    assert_eq!(
        (r["blobs_deleted"].as_u64(), r["candidates_marked"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
    let (c, v, e) = scrub_remote(&a.mnt);
    assert_eq!(c, 0, "scrub --remote after gc: {v} {e}");
    assert_eq!(v["unreferenced"], 0, "{v}");
    // A clone of the published state reads every file, cold.
    let work = tempfile::tempdir_in(test_root()).unwrap();
    let b = clone_mounted(&sw, "gc", work.path(), "b");
    assert_same_tree(&a.mnt, &b.mnt);
    let (c, v, e) = dj(&["fsck", s(&b.store)]);
    assert_eq!(c, 0, "fsck of the clone: {v} {e}");
    drop(b);
    // Its counts are exact although the chain's first stream names gone2's manifest,
    // which gc deleted (the clone counted afresh once its state was whole).
    assert_counts_exact(&work.path().join("b"), "the clone");
    // Offline: the store opened directly takes the lease for the bucket's part.
    a.unmount();
    let (c, v, e) = gc(&a.store, "2s");
    assert_eq!(c, 0, "offline gc: {v} {e}");
    assert_eq!(v["remote"]["blobs_deleted"], 0, "{v}");
    let (c, v, e) = scrub_remote(&a.store);
    assert_eq!(c, 0, "{v} {e}");
}

#[test]
fn gc_deletes_nothing_when_a_listing_is_cut_off() {
    let sw = Seaweed::start();
    let proxy = Proxy::start(sw.s3_port());
    let a = mount_bound_at(
        &sw,
        &proxy.endpoint(),
        "cut",
        "allow_other,publish_interval=0,cache_size=0",
    );
    let garbage = make_garbage(&a, "cut", &sw);
    let all = bucket_blobs(&sw, "cut");
    assert!(all.len() > 30, "a listing of some length: {}", all.len());
    let r = gc_ok(&a.mnt, "1s");
    assert_eq!(r["blobs_deleted"], 0, "{r}");
    std::thread::sleep(Duration::from_millis(1500));
    // Due now; the listing is cut off after its first 1,500 bytes.
    proxy.set(Mode::CutAfter(1500));
    let (c, v, e) = gc(&a.mnt, "1s");
    assert_eq!(c, 8, "gc on a cut-off listing fails: {v} {e}");
    assert!(e.contains("remote_unavailable"), "{e}");
    assert!(e.contains("list"), "it says the listing failed: {e}");
    assert_eq!(proxy.mode(), Mode::Reset, "the cut happened");
    assert_eq!(bucket_blobs(&sw, "cut"), all, "nothing deleted");
    // The object store answering again, the due blobs go.
    proxy.set(Mode::Pass);
    let r = gc_ok(&a.mnt, "1s");
    assert_eq!(
        r["blobs_deleted"].as_u64(),
        Some(garbage.len() as u64),
        "{r}"
    );
    let want: BTreeSet<String> = all.difference(&garbage).cloned().collect();
    assert_eq!(bucket_blobs(&sw, "cut"), want);
}

#[test]
fn a_blob_written_again_after_it_was_marked_survives() {
    let sw = Seaweed::start();
    let a = mount_bound(&sw, "again");
    let data = pattern(20, 0, 100 << 10);
    write(&a.mnt, &[("x", data.clone()), ("y", pattern(21, 0, 1000))]);
    publish(&a.mnt);
    wait_uploaded(&a);
    let x_blobs: BTreeSet<String> = [hash_of(&data[..64 << 10]), hash_of(&data[64 << 10..])].into();
    std::fs::remove_file(a.path("x")).unwrap();
    let (c, v, e) = dj(&["trash", "purge", s(&a.mnt), "--all"]);
    assert_eq!(c, 0, "purge: {v} {e}");
    publish(&a.mnt);
    let r = gc_ok(&a.mnt, "1s");
    assert!(r["candidates_marked"].as_u64().unwrap() >= 2, "{r}");
    for h in &x_blobs {
        assert!(
            sw.get(&blob_key("again", h)).is_some(),
            "{h} marked, not deleted"
        );
    }
    // The same bytes written again (deduplicated: the blobs exist, marked).
    write(&a.mnt, &[("x2", data.clone())]);
    publish(&a.mnt);
    std::thread::sleep(Duration::from_millis(1500));
    let r = gc_ok(&a.mnt, "1s");
    assert_eq!(r["blobs_deleted"], 0, "named again: {r}");
    wait_uploaded(&a);
    for h in &x_blobs {
        assert!(
            sw.get(&blob_key("again", h)).is_some(),
            "{h} is named again and stays"
        );
    }
    let (c, v, e) = scrub_remote(&a.mnt);
    assert_eq!(c, 0, "{v} {e}");
    // A clone reads it.
    let work = tempfile::tempdir_in(test_root()).unwrap();
    let b = clone_mounted(&sw, "again", work.path(), "b");
    assert_bytes_eq(&std::fs::read(b.mnt.join("x2")).unwrap(), &data, "x2");
}
