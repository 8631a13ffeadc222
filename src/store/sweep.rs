//! Freeing blobs (invariant 1, "reference before delete"): which blobs any record,
//! revision or open session still names, and the sweep that deletes the candidates none
//! names, through the blob store's rename-aside delete (safe against a writer reusing a
//! blob at the same moment: `put` refreshes the write time of a blob it reuses).
//! Unlinks and retention queue candidates (`SweepQueue`); the daemon sweeps them in
//! batches, because a sweep reads every record of the store (docs/DESIGN.md, "Batched
//! sweep and gc").

use std::collections::HashSet;
use std::fs;
use std::time::SystemTime;

use parking_lot::Mutex;

use super::blobs::BlobStore;
use super::blobs::Deleted;
use super::chunk_lists::ChunkLists;
use super::error::{Error, IoContext, Result};
use super::layout::{Layout, Policy};
use super::node::Time;
use super::node::{unframe, Content, Hash, NodeId, NodeRecord, Stored, RECORD_XATTR};
use super::records::Records;
use super::refs::{self, Holders, Refs};
use super::revisions::Revisions;

/// What open write sessions hold that no record names yet: the blobs they sealed. A
/// sweep must not free them (content's `Sessions` answers; the seam keeps this module
/// below content).
pub trait OpenContent {
    fn sealed_blobs(&self) -> Vec<Hash>;
}

/// Blobs that may have lost their last reference, queued for the next batched sweep.
#[derive(Default)]
pub struct SweepQueue {
    pending: Mutex<Vec<Hash>>,
}

impl SweepQueue {
    /// Queue blobs for the next batched sweep (the daemon runs it in the background).
    pub(crate) fn push(&self, hashes: Vec<Hash>) {
        self.pending.lock().extend(hashes);
    }

    fn take(&self) -> Vec<Hash> {
        std::mem::take(&mut *self.pending.lock())
    }
}

/// Freeing: which blobs are still named, the sweep of the candidates none names, and
/// revision retention (whose dropped revisions become candidates).
#[derive(Clone, Copy)]
pub struct Sweeper<'a> {
    pub(super) layout: &'a Layout,
    pub(super) records: &'a Records,
    pub(super) blobs: &'a dyn BlobStore,
    pub(super) sessions: &'a dyn OpenContent,
    pub(super) revisions: &'a Revisions,
    pub(super) chunk_lists: &'a ChunkLists,
    pub(super) sweep_queue: &'a SweepQueue,
    pub(super) policy: &'a Mutex<Policy>,
    pub(super) refs: &'a Refs,
}

impl Sweeper<'_> {
    /// Queue blobs that may have lost their last reference for the next batched sweep.
    pub(crate) fn queue(&self, hashes: Vec<Hash>) {
        self.sweep_queue.push(hashes);
    }

    /// The blobs a record's content names: chunks and its manifest.
    pub fn content_refs(&self, rec: &NodeRecord) -> Vec<Hash> {
        let mut out = Vec::new();
        if let Content::Manifest(h) = &rec.content {
            out.push(*h);
        }
        if let Ok(list) = self.chunk_lists.get(&rec.content) {
            out.extend(list.iter().map(|c| c.hash));
        }
        out
    }

    /// The blobs a record names: chunks, its manifest, and the blob it spills into.
    pub fn blob_refs(&self, id: NodeId, rec: &NodeRecord) -> Vec<Hash> {
        let mut out = self.content_refs(rec);
        if let Ok(Some(raw)) = xattr::get(self.layout.node_path(id), RECORD_XATTR) {
            if let Ok(Stored::InBlob(h)) = unframe(id, &raw) {
                out.push(h);
            }
        }
        out
    }

    /// Every blob referenced by any record: live and trashed nodes, revisions, the
    /// records snapshots keep, and the sealed chunks of open sessions.
    pub fn referenced_blobs(&self) -> Result<HashSet<Hash>> {
        let mut set = self.node_and_revision_refs()?;
        // Copies after records, for the same reason: a record is copied into a
        // snapshot's area before it is replaced.
        self.snapshot_refs(&mut |_, h| {
            set.insert(h);
        })?;
        set.extend(self.sessions.sealed_blobs());
        Ok(set)
    }

    /// Every blob the records of nodes (live and trashed) and their revisions name.
    pub fn node_and_revision_refs(&self) -> Result<HashSet<Hash>> {
        let mut set = HashSet::new();
        for id in self.node_ids()? {
            if let Some(rec) = self.record_naming_blobs(id)? {
                set.extend(self.blob_refs(id, &rec));
            }
        }
        // Revisions after records, listed once: a commit saves the revision before it
        // replaces the record, so a record read above with new content has its
        // revision listed here. One that cannot be read stops the sweep (the error):
        // skipping it would free the blobs it names.
        for id in self.revision_owners() {
            for (_, r) in self.revisions.list(id)? {
                set.extend(self.blob_refs(id, &r));
            }
        }
        Ok(set)
    }

    /// Every blob the records snapshots keep name, with the snapshot's name.
    pub fn snapshot_refs(&self, f: &mut dyn FnMut(&str, Hash)) -> Result<()> {
        self.records
            .snapshots()
            .for_each_copy(&mut |name, _, rec, spill| {
                for h in self.content_refs(rec).into_iter().chain(spill) {
                    f(name, h);
                }
            })
    }

    /// A node's record for counting the blobs it names: `None` for a node that names
    /// none (created a moment ago and without a record yet, or removed while we look),
    /// an error for a record that cannot be read, since the blobs it names are unknown.
    pub(crate) fn record_naming_blobs(&self, id: NodeId) -> Result<Option<NodeRecord>> {
        let mut rec = self.records.read(id);
        if let Err(Error::CorruptRecord { .. }) = rec {
            match xattr::get(self.layout.node_path(id), super::node::RECORD_XATTR) {
                Ok(None) => return Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                // Read again once, in case the record landed meanwhile.
                _ => rec = self.records.read(id),
            }
        }
        match rec {
            Ok(r) => Ok(Some(r)),
            Err(Error::NotFound) => Ok(None),
            Err(e) => Err(Error::Integrity {
                what: "the store's records".into(),
                detail: format!(
                    "record of {id} cannot be read ({e}), so which blobs are in use is unknown; nothing is deleted until `decofs fsck --repair` fixed it"
                ),
            }),
        }
    }

    /// Every node in `nodes/` (live, trashed, or not yet named).
    pub fn node_ids(&self) -> Result<Vec<NodeId>> {
        let mut out = Vec::new();
        for a in fs::read_dir(self.layout.nodes())
            .ctx(|| "read nodes".into())?
            .flatten()
        {
            for b in fs::read_dir(a.path()).into_iter().flatten().flatten() {
                for n in fs::read_dir(b.path()).into_iter().flatten().flatten() {
                    out.extend(NodeId::from_name(&n.file_name()));
                }
            }
        }
        Ok(out)
    }

    /// The nodes that have revisions.
    pub fn revision_owners(&self) -> Vec<NodeId> {
        fs::read_dir(self.layout.revisions())
            .map(|it| {
                it.flatten()
                    .filter_map(|e| NodeId::from_name(&e.file_name()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Free the `candidates` no record references. Returns bytes freed.
    pub fn sweep(&self, candidates: Vec<Hash>, since: SystemTime) -> Result<u64> {
        let mut candidates: Vec<Hash> = candidates;
        candidates.sort();
        candidates.dedup();
        if candidates.is_empty() {
            return Ok(0);
        }
        // A writer fenced off (its lock broken) knows nothing of the new writer's records.
        self.records.fence_check()?;
        // By the counts when they are kept (a blob named by none of the holders, and
        // not by a session's sealed chunks), else by a scan of every holder.
        let by_counts = self.refs.counting();
        let referenced = if by_counts {
            self.sessions.sealed_blobs().into_iter().collect()
        } else {
            self.referenced_blobs()?
        };
        let (n, mut kept_ref, mut kept_touched) = (candidates.len(), 0, 0);
        let mut freed = 0;
        for h in candidates {
            let named = referenced.contains(&h)
                || (by_counts && self.refs.count(&h).is_none_or(|c| c != 0));
            if named {
                kept_ref += 1;
                continue;
            }
            match self.blobs.delete(&h, since) {
                Ok(Deleted::Freed(n)) => freed += n,
                Ok(Deleted::Reused) => kept_touched += 1,
                Ok(Deleted::Absent) => {}
                // One blob that cannot be moved is left for the next sweep or gc.
                Err(e) => log::warn!("sweep: {e}"),
            }
        }
        log::debug!("sweep: {n} candidate(s), {kept_ref} still referenced, {kept_touched} reused meanwhile, {freed} bytes freed");
        Ok(freed)
    }

    /// Run the queued sweep (and the blobs whose count reached zero); returns bytes
    /// freed. The counts are checkpointed first.
    pub fn run_pending_sweep(&self) -> Result<u64> {
        if let Err(e) = self.refs.checkpoint() {
            log::warn!("blob reference counts: {e}");
        }
        let since = SystemTime::now();
        let mut pending = self.sweep_queue.take();
        pending.extend(self.refs.take_zeroed());
        self.sweep(pending, since)
    }

    /// Drop revisions of `id` beyond the count or age limits. Returns (dropped, blobs
    /// they referenced).
    pub(crate) fn prune_revisions(&self, id: NodeId) -> Result<(u64, Vec<Hash>)> {
        let (keep, max_age_secs) = {
            let p = self.policy.lock();
            (p.revisions_keep, p.revisions_max_age_secs)
        };
        let now = Time::now().unix_nanos();
        let max_age = max_age_secs as i128 * 1_000_000_000;
        // Asked after every commit that keeps a revision, and of every file with
        // revisions every minute: which to drop follows from the names (stamps), so only
        // the dropped ones are read (for the blobs they name).
        let (dir, stamps) = self.revisions.stamps(id)?;
        let keep_from = stamps.len().saturating_sub(keep as usize);
        let mut dropped = 0;
        let mut blobs = Vec::new();
        for (i, stamp) in stamps.iter().enumerate() {
            if i < keep_from || now - stamp > max_age {
                let path = dir.join(stamp.to_string());
                match self.revisions.read(id, *stamp, &path)? {
                    Some(r) => blobs.extend(self.revisions.remove(&path, &r)?),
                    None => {
                        let _ = fs::remove_file(path);
                    }
                }
                dropped += 1;
            }
        }
        if dropped > 0 && dropped as usize == stamps.len() {
            let _ = fs::remove_dir(&dir);
        }
        Ok((dropped, blobs))
    }
}

/// What holders name, read from the files themselves: for the counts' recovery and
/// full scan, and for fsck's comparison.
impl Holders for Sweeper<'_> {
    fn names(&self, path: &std::path::Path) -> Result<Vec<Hash>> {
        let lists = self.refs.chunk_lists();
        let md = match fs::symlink_metadata(path) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(Error::io(format!("stat {}", path.display()), e)),
        };
        let id_of = |p: &std::path::Path| p.file_name().and_then(NodeId::from_name);
        if path.starts_with(self.layout.revisions()) {
            // One revision, or a node's directory of them.
            let files: Vec<std::path::PathBuf> = if md.is_dir() {
                fs::read_dir(path)
                    .ctx(|| format!("read {}", path.display()))?
                    .flatten()
                    .map(|e| e.path())
                    .collect()
            } else {
                vec![path.to_path_buf()]
            };
            let owner = if md.is_dir() {
                path
            } else {
                path.parent().unwrap_or(path)
            };
            let id = id_of(owner).ok_or_else(|| Error::Integrity {
                what: path.display().to_string(),
                detail: "not a revision".into(),
            })?;
            let mut out = Vec::new();
            for f in files {
                let raw = fs::read(&f).ctx(|| format!("read {}", f.display()))?;
                if !raw.is_empty() {
                    out.extend(refs::value_refs(lists, self.blobs, id, &raw)?);
                }
            }
            out.sort_unstable();
            return Ok(out);
        }
        if path.starts_with(self.layout.snapshots()) && md.is_dir() {
            // An area (being removed): what its copies hold.
            let mut out = Vec::new();
            for shard in fs::read_dir(path.join("records"))
                .into_iter()
                .flatten()
                .flatten()
            {
                for c in fs::read_dir(shard.path()).into_iter().flatten().flatten() {
                    out.extend(self.names(&c.path())?);
                }
            }
            out.sort_unstable();
            return Ok(out);
        }
        // A node's record, or a snapshot's copy of one.
        let id = id_of(path).ok_or_else(|| Error::Integrity {
            what: path.display().to_string(),
            detail: "not a record holder".into(),
        })?;
        match xattr::get(path, RECORD_XATTR) {
            Ok(Some(v)) => refs::value_refs(lists, self.blobs, id, &v),
            Ok(None) => Ok(vec![]),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
        }
    }

    fn each(&self, f: &mut dyn FnMut(&[Hash]), complete: &mut bool) -> Result<()> {
        let lists = self.refs.chunk_lists();
        // What a holder names as far as it can be read: all of it, or (its manifest
        // unreadable) the blobs its record names directly.
        let mut count =
            |id: NodeId, value: &[u8], f: &mut dyn FnMut(&[Hash])| match refs::value_refs(
                lists, self.blobs, id, value,
            ) {
                Ok(v) => f(&v),
                Err(_) => {
                    *complete = false;
                    let direct = match unframe(id, value) {
                        Ok(Stored::Inline(r)) => match &r.content {
                            Content::Manifest(h) => vec![*h],
                            _ => refs::content_refs(lists, &r.content).unwrap_or_default(),
                        },
                        Ok(Stored::InBlob(h)) => vec![h],
                        Err(_) => vec![],
                    };
                    f(&refs::normal(direct));
                }
            };
        for id in self.node_ids()? {
            match xattr::get(self.layout.node_path(id), RECORD_XATTR) {
                Ok(Some(v)) => count(id, &v, f),
                Ok(None) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("read record of {id}"), e)),
            }
        }
        for id in self.revision_owners() {
            let (dir, stamps) = self.revisions.stamps(id)?;
            for stamp in stamps {
                let p = dir.join(stamp.to_string());
                match fs::read(&p) {
                    Ok(raw) if !raw.is_empty() => count(id, &raw, f),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(format!("read {}", p.display()), e)),
                }
            }
        }
        let mut err = None;
        self.records
            .snapshots()
            .for_each_copy(
                &mut |_, _, rec, spill| match refs::record_refs(lists, rec, spill) {
                    Ok(v) => f(&v),
                    Err(e) => {
                        *complete = false;
                        err.get_or_insert(e);
                        let mut v: Vec<Hash> = spill.into_iter().collect();
                        if let Content::Manifest(h) = &rec.content {
                            v.push(*h);
                        }
                        f(&refs::normal(v));
                    }
                },
            )?;
        if let Some(e) = err {
            log::warn!("a snapshot's copy names blobs that cannot be listed: {e}");
        }
        Ok(())
    }
}
