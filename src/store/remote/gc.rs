//! gc of the object store (docs/DESIGN.md, "Remote storage", gc): deletes the bucket's
//! blobs nothing in the store names (the blob reference counts: live records, trash,
//! revisions, snapshots, the published `.pub-` one included; open sessions' sealed
//! chunks) and the streams the head's chain does not name. Two phases with a grace
//! period: a run marks what it finds unreferenced (`STORE/remote/gc-candidates`); a
//! later run deletes a mark at least `grace` old whose object is at least `grace` old
//! and that is still unreferenced then. Only the lease's holder deletes, serialised
//! with publishing, and nothing is deleted unless every listing was whole.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::now_ms;
use super::publish::{self, HEAD_KEY};
use crate::store::blobs::GcDeleted;
use crate::store::error::{Error, Result};
use crate::store::layout::Layout;
use crate::store::node::{hash_hex, Hash};
use crate::store::Store;

/// The grace period by default (`decofs gc --remote-grace`): a clone reading an older
/// chain, or a blob uploaded a moment before its record names it, has this long.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// Blobs deleted per batch: one ledger flush and one lease check per batch.
const BATCH: usize = 64;

/// What gc of the object store found and did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RemoteGcReport {
    pub dry_run: bool,
    pub grace_secs: u64,
    /// Blobs in the bucket, and their bytes.
    pub blobs: u64,
    pub blob_bytes: u64,
    /// Of those, blobs something in the store names (or that wait for their upload).
    pub referenced: u64,
    /// Objects found unreferenced and marked by this run (phase 1), and marked by an
    /// earlier run and not due yet (younger than the grace period).
    pub candidates_marked: u64,
    pub candidates_waiting: u64,
    /// Blobs deleted from the bucket (phase 2; with dry_run: that would be), their bytes.
    pub blobs_deleted: u64,
    pub bytes_deleted: u64,
    /// Due blobs kept at deletion time: named or written again meanwhile.
    pub kept_named_again: u64,
    /// Deleted blobs whose local copy was written again meanwhile: uploaded again.
    pub requeued: u64,
    /// Stream objects in the bucket, and those deleted (not in the head's chain).
    pub streams: u64,
    pub streams_deleted: u64,
    /// Keys under `blobs/` that are not blob names (left alone).
    pub strays: u64,
    pub deleted_hashes: Vec<String>,
    pub deleted_streams: Vec<String>,
}

/// The marks of phase 1: object key -> when it was first found unreferenced (unix ms).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Marks {
    format: u32,
    marks: BTreeMap<String, i64>,
}

fn marks_path(layout: &Layout) -> std::path::PathBuf {
    layout.root.join("remote").join("gc-candidates")
}

/// The marks of earlier runs. A file that cannot be decoded counts as none: marks only
/// delay deletions, so losing them loses nothing but time.
fn read_marks(layout: &Layout) -> Result<Marks> {
    let p = marks_path(layout);
    match fs::read(&p) {
        Ok(b) => Ok(serde_json::from_slice(&b).unwrap_or_else(|e| {
            log::warn!("{}: {e}; gc marks afresh", p.display());
            Marks::default()
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Marks::default()),
        Err(e) => Err(Error::io(format!("read {}", p.display()), e)),
    }
}

fn write_marks(layout: &Layout, m: &Marks) -> Result<()> {
    super::write_json_file(layout, &marks_path(layout), m)
}

/// The hash a key `blobs/ab/<hex>` names.
fn blob_of(key: &str) -> Option<Hash> {
    let h = crate::store::node::parse_hash(key.rsplit_once('/')?.1)?;
    (super::blob_key(&h) == key).then_some(h)
}

/// The lease is this writer's, and was renewed recently enough to outlast a batch.
fn lease_ok(store: &Store) -> Result<()> {
    store.fence().check()?;
    match store.lease() {
        Some(l) if l.valid_for(Duration::from_millis(l.state().ttl_ms / 4)) => Ok(()),
        Some(l) if l.held() => Err(Error::Remote {
            op: "gc of the object store".into(),
            detail: "the lease was not renewed lately; gc deletes nothing until it is".into(),
        }),
        _ => Err(Error::RemoteFenced(
            "this process does not hold the object store's lease; gc of the object store needs it (run gc on the writer's mount, or unmounted)".into(),
        )),
    }
}

/// gc of the store's object store. With `dry_run`, nothing is written or deleted
/// (the report says what a run would mark and delete); otherwise this process must
/// hold the lease.
pub fn collect(store: &Store, grace: Duration, dry_run: bool) -> Result<RemoteGcReport> {
    let blobs = store.remote().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{} is not bound to an object store",
            store.layout.root.display()
        ))
    })?;
    if !dry_run {
        lease_ok(store)?;
    }
    // No publish while gc runs: the head, its chain and the `.pub-` snapshots stay as
    // they are, and no publish confirms a blob gc is deleting.
    let _one = publish::PUBLISHING.lock();
    let remote = blobs.remote();
    let layout = &store.layout;
    // Before anything is looked at: a local copy written since is kept (the sweep's
    // rename-aside delete compares its write time with this).
    let since = SystemTime::now();
    let now = now_ms();
    let grace_ms = grace.as_millis() as i64;
    let mut rep = RemoteGcReport {
        dry_run,
        grace_secs: grace.as_secs(),
        ..Default::default()
    };
    // Whole listings or nothing: `list` stops at the first error, and so does gc.
    let mut listed: Vec<(Hash, u64, i64)> = Vec::new();
    remote.list("blobs", &mut |key, size, modified| match blob_of(key) {
        Some(h) => listed.push((h, size, modified)),
        None => rep.strays += 1,
    })?;
    let mut streams: Vec<(String, u64, i64)> = Vec::new();
    remote.list("streams", &mut |key, size, modified| {
        streams.push((key.to_string(), size, modified))
    })?;
    // The head must be this store's last publish: a store another writer published
    // over does not know what that writer's state names.
    let head = publish::read_head(remote)?;
    let mine = publish::published_head(layout)?;
    let chain: HashSet<String> = match (&head, &mine) {
        (None, None) => HashSet::new(),
        (Some((h, _)), Some(m)) if h.seq == m.seq && h.created_nanos == m.created_nanos => {
            // Followers apply the `follow` streams.
            h.chain.iter().chain(&h.follow).cloned().collect()
        }
        _ => {
            return Err(Error::RemoteFenced(format!(
                "{}/{HEAD_KEY} is not this store's last publish ({}); gc of the object store deletes nothing (publish first, or clone again)",
                remote.url(),
                match (&head, &mine) {
                    (Some((h, _)), Some(m)) => format!("the bucket's is {}, this store's {}", h.seq, m.seq),
                    (Some((h, _)), None) => format!("the bucket's is {}, this store published none", h.seq),
                    _ => "the bucket has none".to_string(),
                }
            )))
        }
    };
    // What the store names: the counts (exact, kept by every change), else one scan of
    // every holder; open sessions' sealed chunks; blobs waiting for their upload.
    let counting = store.refs.counting();
    let scanned = if counting {
        None
    } else {
        Some(store.sweeper().referenced_blobs()?)
    };
    let named = |h: &Hash| match &scanned {
        Some(set) => set.contains(h),
        None => store.refs.count(h).is_none_or(|c| c != 0),
    };
    let sealed = |store: &Store| -> HashSet<Hash> {
        crate::store::sweep::OpenContent::sealed_blobs(&store.sessions)
            .into_iter()
            .collect()
    };
    let waiting = blobs.pending()?;
    let open = sealed(store);
    let old = read_marks(layout)?;
    let mut marks = Marks {
        format: 1,
        marks: BTreeMap::new(),
    };
    let due = |key: &str, modified: i64| {
        old.marks.get(key).is_some_and(|m| m + grace_ms <= now) && modified + grace_ms <= now
    };
    let mut doomed: Vec<(Hash, u64)> = Vec::new();
    rep.blobs = listed.len() as u64;
    for (h, size, modified) in &listed {
        rep.blob_bytes += size;
        if named(h) || open.contains(h) || waiting.contains(h) {
            rep.referenced += 1;
            continue;
        }
        let key = super::blob_key(h);
        if due(&key, *modified) {
            doomed.push((*h, *size));
        } else if old.marks.contains_key(&key) {
            rep.candidates_waiting += 1;
        } else {
            rep.candidates_marked += 1;
        }
        marks
            .marks
            .insert(key.clone(), old.marks.get(&key).copied().unwrap_or(now));
    }
    rep.streams = streams.len() as u64;
    let mut stale_streams = Vec::new();
    for (key, _, modified) in &streams {
        if chain.contains(key) {
            continue;
        }
        if due(key, *modified) {
            stale_streams.push(key.clone());
        } else if old.marks.contains_key(key) {
            rep.candidates_waiting += 1;
        } else {
            rep.candidates_marked += 1;
        }
        marks
            .marks
            .insert(key.clone(), old.marks.get(key).copied().unwrap_or(now));
    }
    doomed.sort();
    if dry_run {
        rep.blobs_deleted = doomed.len() as u64;
        rep.bytes_deleted = doomed.iter().map(|(_, s)| s).sum();
        rep.deleted_hashes = doomed.iter().map(|(h, _)| hash_hex(h)).collect();
        rep.streams_deleted = stale_streams.len() as u64;
        rep.deleted_streams = stale_streams;
        return Ok(rep);
    }
    // Phase 1's marks are down before phase 2 deletes anything.
    write_marks(layout, &marks)?;
    let mut done = GcDeleted::default();
    let mut res = Ok(());
    for batch in doomed.chunks(BATCH) {
        if let Err(e) = lease_ok(store) {
            res = Err(e);
            break;
        }
        let open = sealed(store);
        let still_free = |h: &Hash| !named(h) && !open.contains(h);
        if let Err(e) = blobs.gc_delete(batch, since, &still_free, &mut done) {
            res = Err(e);
            break;
        }
    }
    if res.is_ok() {
        for key in &stale_streams {
            if let Err(e) = lease_ok(store).and_then(|()| remote.delete(key)) {
                res = Err(e);
                break;
            }
            marks.marks.remove(key);
            rep.streams_deleted += 1;
            rep.deleted_streams.push(key.clone());
        }
    }
    for (h, size) in &done.deleted {
        marks.marks.remove(&super::blob_key(h));
        rep.blobs_deleted += 1;
        rep.bytes_deleted += size;
        rep.deleted_hashes.push(hash_hex(h));
    }
    rep.kept_named_again = done.kept;
    rep.requeued = done.requeued;
    // A due blob not deleted (named or written again meanwhile, or not reached
    // after an error) starts its grace period again if it is still free next time.
    let deleted: HashSet<&Hash> = done.deleted.iter().map(|(h, _)| h).collect();
    for (h, _) in &doomed {
        if !deleted.contains(h) {
            marks.marks.insert(super::blob_key(h), now);
        }
    }
    write_marks(layout, &marks)?;
    res?;
    log::info!(
        "gc of {}: {} blobs ({} referenced), {} marked, {} deleted ({} bytes), {} streams deleted",
        remote.url(),
        rep.blobs,
        rep.referenced,
        rep.candidates_marked,
        rep.blobs_deleted,
        rep.bytes_deleted,
        rep.streams_deleted
    );
    Ok(rep)
}
