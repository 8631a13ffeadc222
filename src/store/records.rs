//! Node records (invariant 2): read, written whole, updated under a per-node stripe
//! lock, and kept in a write-through cache by the one writer (invariant 7). A read that
//! raced a write never installs what it read. Directory times may be deferred here for
//! up to a second (docs/DESIGN.md, "Deferred directory times").

use std::collections::HashMap;
use std::fs;
use std::hash::{Hash as _, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::blobs::BlobStore;
use super::error::{Error, IoContext, Result};
use super::layout::Layout;
use super::lock::Fence;
use super::node::{
    decode_body, encode_body, frame, unframe, Content, Hash, NodeId, NodeRecord, Stored, Time,
    INLINE_RECORD_LIMIT, RECORD_XATTR,
};
use super::refs::Refs;
use super::snapshot::{Lens, Snapshots};

const STRIPES: usize = 64;
/// Record cache: shards (by the same hash as the stripes) and records kept per shard.
const CACHE_SHARDS: usize = 64;
const CACHE_PER_SHARD: usize = 4096;

/// One shard of the record cache. `writes` counts record writes of its nodes: a reader
/// installs what it read from disk only if no write happened meanwhile, so a stale read
/// never replaces a newer record.
#[derive(Default)]
struct CacheShard {
    map: HashMap<NodeId, NodeRecord>,
    writes: u64,
}

impl CacheShard {
    fn put(&mut self, id: NodeId, rec: &NodeRecord) {
        if rec.trash.is_some() {
            self.map.remove(&id);
            return;
        }
        if self.map.len() >= CACHE_PER_SHARD && !self.map.contains_key(&id) {
            // Drop an arbitrary eighth: cheap, and the disk still has everything.
            let victims: Vec<NodeId> = self.map.keys().take(CACHE_PER_SHARD / 8).copied().collect();
            for v in victims {
                self.map.remove(&v);
            }
        }
        self.map.insert(id, rec.clone());
    }
}

/// The records of a store's nodes.
pub struct Records {
    layout: Layout,
    blobs: Arc<dyn BlobStore>,
    fence: Arc<Fence>,
    stripes: Vec<Mutex<()>>,
    /// Records of live nodes, written through; only used once enabled (a mount).
    cache_on: AtomicBool,
    cache: Vec<Mutex<CacheShard>>,
    /// Directories whose times changed (an entry made or removed in them) since their
    /// record was last written: the newer record, written within a second by the
    /// maintenance thread, by the directory's fsync, by any other change of the
    /// directory, and at a clean close (see `touch_dir_times`).
    deferred: Mutex<HashMap<NodeId, NodeRecord>>,
    /// The store's snapshots: a record that one holds is copied before it changes.
    snaps: Arc<Snapshots>,
    /// Opened at a snapshot (read only): its generation and the areas to read through.
    at: Option<u64>,
    /// Blob reference counts: every record write that changes what it names is counted.
    refs: Arc<Refs>,
    /// Records read from the disk (not the cache) since the store was opened.
    disk_reads: AtomicU64,
}

/// What a record write replaces, for counting the blobs it named.
#[derive(Clone, Copy)]
pub(crate) enum Old<'a> {
    /// The record as read under the node's stripe lock.
    Known(&'a NodeRecord),
    /// Unknown: read from disk (a repair, a receive).
    OnDisk,
    /// A node file made a moment ago, with no record yet.
    Fresh,
}

impl Records {
    pub(crate) fn new(
        layout: Layout,
        blobs: Arc<dyn BlobStore>,
        fence: Arc<Fence>,
        snaps: Arc<Snapshots>,
        refs: Arc<Refs>,
    ) -> Records {
        Records {
            layout,
            blobs,
            fence,
            snaps,
            refs,
            at: None,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            cache_on: AtomicBool::new(false),
            disk_reads: AtomicU64::new(0),
            cache: (0..CACHE_SHARDS)
                .map(|_| Mutex::new(CacheShard::default()))
                .collect(),
            deferred: Mutex::new(HashMap::new()),
        }
    }

    /// Read everything as snapshot `name` saw it from now on (a read-only open).
    pub(crate) fn view_snapshot(&mut self, name: &str) -> Result<()> {
        self.at = Some(self.snaps.get(name)?.gen);
        Ok(())
    }

    /// The snapshot this store is read at, if any.
    pub fn lens(&self) -> Option<Lens<'_>> {
        self.at.map(|gen| Lens::new(&self.snaps, gen))
    }

    pub fn snapshots(&self) -> &Snapshots {
        &self.snaps
    }

    fn id_hash(id: NodeId) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        h.finish() as usize
    }

    pub(crate) fn stripe(&self, id: NodeId) -> &Mutex<()> {
        &self.stripes[Self::id_hash(id) % STRIPES]
    }

    fn cache_shard(&self, id: NodeId) -> Option<&Mutex<CacheShard>> {
        if self.cache_on.load(Ordering::Relaxed) {
            Some(&self.cache[Self::id_hash(id) % CACHE_SHARDS])
        } else {
            None
        }
    }

    /// Keep the records of live nodes in memory from now on. Only for the one writer of
    /// the store (a read-write mount): every change must pass through this process.
    pub fn enable_cache(&self) {
        if !self.fence.read_only() {
            self.cache_on.store(true, Ordering::Relaxed);
        }
    }

    /// Forget the cached record of `id` (its files were removed, or changed on disk by
    /// other means than `write_record`).
    pub fn forget(&self, id: NodeId) {
        if let Some(sh) = self.cache_shard(id) {
            let mut g = sh.lock();
            g.writes += 1;
            g.map.remove(&id);
        }
        self.deferred.lock().remove(&id);
    }

    /// Delete the file of node `id` (its record with it), counting the blobs the record
    /// named as released. A node already gone is not an error.
    pub(crate) fn remove_node(&self, id: NodeId, dir: bool) -> Result<()> {
        self.remove_node_by(id, |path| {
            if dir {
                fs::remove_dir(path)
            } else {
                fs::remove_file(path)
            }
        })
    }

    /// `remove_node`, with `remove` taking the node file out of `nodes/` (a scratch
    /// file's is moved into staging and freed later: `Spares::remove_later`).
    pub(crate) fn remove_node_by(
        &self,
        id: NodeId,
        remove: impl FnOnce(&Path) -> std::io::Result<()>,
    ) -> Result<()> {
        // As any record write: no snapshot or receive in between, one change of the
        // node at a time (two removers must not both release what it named).
        let _op = self.snaps.op();
        let _g = self.stripe(id).lock();
        let path = self.layout.node_path(id);
        let old = if self.refs.counting() {
            self.old_refs(id, Old::OnDisk)
        } else {
            Some(vec![])
        };
        let res = self.refs.change(&path, old, Some(vec![]), || {
            remove(&path).map_err(|e| Error::io(format!("remove node {id}"), e))
        });
        self.forget(id);
        match res {
            // Gone already: whoever removed it counted it.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(())
            }
            other => other,
        }
    }

    /// Is this process still the store's writer (not fenced, not paused)?
    pub(crate) fn fence_check(&self) -> Result<()> {
        self.fence.check()
    }

    /// Bring the records of `ids` into the cache, several reads in flight at once (a
    /// directory about to be listed: on a cold disk its records are what a listing waits
    /// for, and one thread reading them one by one keeps a single request in flight).
    pub fn prefetch(&self, ids: &[NodeId]) {
        // Small batches too: a source tree's directories hold a handful of entries
        // each, and reading their records one after another is what a cold walk waits
        // on. A thread costs ~15 µs, a cold record (inode + xattr block) ~100-200 µs.
        const MIN_BATCH: usize = 2;
        const THREADS: usize = 8;
        let missing: Vec<NodeId> = ids.iter().copied().filter(|id| !self.cached(*id)).collect();
        if missing.len() < MIN_BATCH {
            return;
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let threads = THREADS.min(missing.len());
        std::thread::scope(|sc| {
            for _ in 0..threads {
                sc.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(id) = missing.get(i) else { break };
                    // Errors show up when the record is read for real.
                    let _ = self.read(*id);
                });
            }
        });
    }

    /// Is this node's record in the cache (or is there no cache to fill)?
    pub fn cached(&self, id: NodeId) -> bool {
        match self.cache_shard(id) {
            Some(sh) => sh.lock().map.contains_key(&id),
            None => true,
        }
    }

    /// How many records were read from the disk since the store was opened (what an
    /// operation costs on a cold disk).
    pub fn disk_reads(&self) -> u64 {
        self.disk_reads.load(Ordering::Relaxed)
    }

    /// Read a node's record (from the cache when it is on, else from its xattr).
    pub fn read(&self, id: NodeId) -> Result<NodeRecord> {
        let Some(sh) = self.cache_shard(id) else {
            return self.read_disk(id);
        };
        let seen = {
            let g = sh.lock();
            if let Some(r) = g.map.get(&id) {
                return Ok(r.clone());
            }
            g.writes
        };
        // A deferred record is newer than the disk's (and may have left the cache).
        if let Some(r) = self.deferred.lock().get(&id) {
            return Ok(r.clone());
        }
        let rec = self.read_disk(id)?;
        let mut g = sh.lock();
        if g.writes == seen {
            g.put(id, &rec);
        }
        Ok(rec)
    }

    /// A node's record as stored: the raw value of its xattr.
    pub(crate) fn value(&self, id: NodeId) -> Result<Vec<u8>> {
        match xattr::get(self.layout.node_path(id), RECORD_XATTR) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(Error::CorruptRecord {
                node: id.to_string(),
                detail: "node has no record".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound),
            Err(e) => Err(Error::io(format!("read record of {id}"), e)),
        }
    }

    /// Read a node's record from its xattr (following it into a blob if it was large),
    /// or as the snapshot this store is read at saw it.
    pub fn read_disk(&self, id: NodeId) -> Result<NodeRecord> {
        crate::blocking::soon();
        if let Some(lens) = self.lens() {
            return lens.record(id, || self.read_live_disk(id));
        }
        self.read_live_disk(id)
    }

    /// The live record on disk, whatever snapshot the store is read at.
    pub(crate) fn read_live_disk(&self, id: NodeId) -> Result<NodeRecord> {
        self.disk_reads.fetch_add(1, Ordering::Relaxed);
        let value = self.value(id)?;
        match unframe(id, &value)? {
            Stored::Inline(r) => Ok(r),
            Stored::InBlob(h) => decode_body(id, &self.blobs.get(&h)?),
        }
    }

    /// A record framed as its xattr value, and the blob a large record went to first.
    fn encode_value(&self, rec: &NodeRecord, durable: bool) -> Result<(Vec<u8>, Option<Hash>)> {
        let body = encode_body(rec);
        Ok(if body.len() > INLINE_RECORD_LIMIT {
            let h = self.blobs.put(&body, durable)?;
            if !durable {
                // Invariant 1 across a power cut (see `BlobStore::settle`).
                self.blobs.settle(&[h])?;
            }
            (frame(true, &h, rec.has_gens()), Some(h))
        } else {
            (frame(false, &body, rec.has_gens()), None)
        })
    }

    /// The blobs the stored record of `id`, `old`, names (None: unknown).
    fn old_refs(&self, id: NodeId, old: Old<'_>) -> Option<Vec<Hash>> {
        match old {
            Old::Fresh => Some(vec![]),
            Old::OnDisk => match xattr::get(self.layout.node_path(id), RECORD_XATTR) {
                Ok(Some(v)) => self.refs.of_value(id, &v),
                // No node file, or one made a moment ago without a record yet.
                Ok(None) => Some(vec![]),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(vec![]),
                Err(_) => None,
            },
            Old::Known(o) => {
                // Stored in a blob if large; the record read may carry deferred times
                // the disk lacks, so near the limit the disk says which blob.
                let spill = if encode_body(o).len() + 256 > INLINE_RECORD_LIMIT {
                    match self.value(id).map(|v| unframe(id, &v)) {
                        Ok(Ok(Stored::InBlob(h))) => Some(h),
                        Ok(Ok(Stored::Inline(_))) => None,
                        _ => return None,
                    }
                } else {
                    None
                };
                self.refs.of_record(o, spill)
            }
        }
    }

    /// Before the record `old` of `id` is replaced: keep it for the snapshots that hold
    /// it, and return the generation the new record is written in.
    fn preserve(&self, id: NodeId, old: Option<&NodeRecord>) -> Result<u64> {
        if let Some(old) = old {
            self.snaps.preserve_record(id, old, || {
                let (value, spill) = self.encode_value(old, false)?;
                Ok((value, self.refs.of_record(old, spill)))
            })?;
        }
        Ok(self.snaps.current())
    }

    /// Keep `rec`, the record of `id` about to go away, for the snapshots that hold it.
    pub(crate) fn preserve_for_snapshots(&self, id: NodeId, rec: &NodeRecord) -> Result<()> {
        let _op = self.snaps.op();
        if self.snaps.holds(rec.gen) {
            self.preserve(id, Some(rec))?;
        }
        Ok(())
    }

    /// Write the record of a node no snapshot holds yet (a new node, a repair): stamped
    /// with the current generation. `old` is what it replaces.
    pub(crate) fn write(
        &self,
        id: NodeId,
        rec: &NodeRecord,
        durable: bool,
        old: Old<'_>,
    ) -> Result<()> {
        let _op = self.snaps.op();
        let cur = self.snaps.current();
        if rec.gen == cur {
            return self.write_stamped(id, rec, durable, old);
        }
        let mut r = rec.clone();
        r.gen = cur;
        self.write_stamped(id, &r, durable, old)
    }

    /// Replace a node's record with one setxattr, as it is (generation included).
    fn write_stamped(
        &self,
        id: NodeId,
        rec: &NodeRecord,
        durable: bool,
        old: Old<'_>,
    ) -> Result<()> {
        let (value, spill) = self.encode_value(rec, durable)?;
        let path = self.layout.node_path(id);
        let set = || {
            xattr::set(&path, RECORD_XATTR, &value).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::NotFound
                } else {
                    Error::io(format!("write record of {id}"), e)
                }
            })
        };
        // Most writes name what the record named (times, modes, names): nothing to count.
        let same = match old {
            Old::Known(o) => {
                spill.is_none()
                    && o.content == rec.content
                    && encode_body(o).len() + 256 <= INLINE_RECORD_LIMIT
            }
            Old::Fresh => spill.is_none() && !names_blobs(&rec.content),
            Old::OnDisk => false,
        };
        let res = if same {
            set()
        } else if !self.refs.counting() {
            // Not counting (a reader, or counts given up or closed): `change` notes it.
            self.refs.change(&path, None, None, set)
        } else {
            let new = self.refs.of_record(rec, spill);
            self.refs.change(&path, self.old_refs(id, old), new, set)
        };
        if let Some(sh) = self.cache_shard(id) {
            let mut g = sh.lock();
            g.writes += 1;
            match &res {
                Ok(()) => g.put(id, rec),
                Err(_) => {
                    g.map.remove(&id);
                }
            }
        }
        res?;
        // Whatever was deferred for it is in what was just written (it was read under
        // the same stripe lock), or was replaced by it.
        self.deferred.lock().remove(&id);
        if durable {
            crate::blocking::soon();
            let f = fs::File::open(&path).ctx(|| format!("open {}", path.display()))?;
            f.sync_all().ctx(|| format!("sync {}", path.display()))?;
        }
        Ok(())
    }

    /// Read-modify-write of a whole record under the node's stripe lock. `f` sees one
    /// version and the result is written once with the version incremented; if `f`
    /// fails nothing is written.
    pub fn update<F>(&self, id: NodeId, f: F) -> Result<NodeRecord>
    where
        F: FnOnce(&mut NodeRecord) -> Result<()>,
    {
        self.fence.check()?;
        let _op = self.snaps.op();
        let _g = self.stripe(id).lock();
        let mut rec = self.read(id)?;
        super::fault::update_point(&rec);
        // What it was, for a snapshot that holds it and for counting the blobs it
        // named; none (and no clone) when neither needs it.
        let before = (self.snaps.holds(rec.gen) || self.refs.counting()).then(|| rec.clone());
        f(&mut rec)?;
        let held = before.as_ref().filter(|b| self.snaps.holds(b.gen));
        rec.gen = self.preserve(id, held)?;
        rec.version += 1;
        let old = before.as_ref().map_or(Old::OnDisk, Old::Known);
        self.write_stamped(id, &rec, false, old)?;
        Ok(rec)
    }

    /// Compare-and-swap: write `rec` only if the stored version is still `expected`.
    pub fn cas(&self, id: NodeId, expected: u64, mut rec: NodeRecord) -> Result<NodeRecord> {
        self.fence.check()?;
        let _op = self.snaps.op();
        let _g = self.stripe(id).lock();
        let cur = self.read(id)?;
        if cur.version != expected {
            return Err(Error::Conflict(id.to_string()));
        }
        rec.gen = self.preserve(id, Some(&cur))?;
        rec.version = expected + 1;
        self.write_stamped(id, &rec, false, Old::Known(&cur))?;
        Ok(rec)
    }

    /// Set a directory's mtime and ctime to `now` (an entry was made or removed in it)
    /// without writing its record now: a create or an unlink then writes one record
    /// (the new node's, or the removed one's) instead of two. The record is kept here
    /// and in the cache, and written within a second (`flush_deferred`), by fsync of
    /// the directory, by its next change of anything else, or at a clean close. Only
    /// the times wait: a crash loses at most their last second, as it loses
    /// unsynced data. Without the record cache (no mount) the record is written now.
    pub(crate) fn touch_dir_times(&self, dir: NodeId, now: Time) -> Result<NodeRecord> {
        self.defer_times(dir, now, true)
    }

    /// Set a node's ctime (and with `mtime` its mtime) to `now` the way
    /// `touch_dir_times` does: seen at once, written within a second. For a change of
    /// nothing but the times (a chown to the owner it has: sqlite's journal, made by
    /// root, is chowned to the database's owner every transaction).
    pub(crate) fn defer_times(&self, dir: NodeId, now: Time, mtime: bool) -> Result<NodeRecord> {
        let Some(sh) = self.cache_shard(dir) else {
            return self.update(dir, |r| {
                if mtime {
                    r.mtime = now;
                }
                r.ctime = now;
                Ok(())
            });
        };
        self.fence.check()?;
        let _op = self.snaps.op();
        let _g = self.stripe(dir).lock();
        let mut rec = self.read(dir)?;
        // The times change now (readers see them): a snapshot keeps what it saw.
        rec.gen = self.preserve(dir, Some(&rec))?;
        if mtime {
            rec.mtime = now;
        }
        rec.ctime = now;
        rec.version += 1;
        {
            let mut g = sh.lock();
            g.writes += 1;
            g.put(dir, &rec);
        }
        self.deferred.lock().insert(dir, rec.clone());
        Ok(rec)
    }

    /// Write the deferred record of `id`, if any.
    pub(crate) fn flush_deferred_one(&self, id: NodeId) -> Result<()> {
        let _op = self.snaps.op();
        let _g = self.stripe(id).lock();
        let Some(rec) = self.deferred.lock().get(&id).cloned() else {
            return Ok(());
        };
        if let Err(e) = self.fence.check() {
            self.deferred.lock().clear();
            return Err(e);
        }
        match self.write_stamped(id, &rec, false, Old::Known(&rec)) {
            Err(Error::NotFound) => {
                self.deferred.lock().remove(&id);
                Ok(())
            }
            other => other,
        }
    }

    /// Write every deferred directory record (see `touch_dir_times`).
    pub fn flush_deferred(&self) -> Result<()> {
        let ids: Vec<NodeId> = self.deferred.lock().keys().copied().collect();
        let mut first_err = None;
        for id in ids {
            if let Err(e) = self.flush_deferred_one(id) {
                log::warn!("directory {id}: record not written yet: {e}");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Does content stored this way name blobs?
fn names_blobs(c: &Content) -> bool {
    match c {
        Content::Empty | Content::Inline(_) => false,
        Content::Chunks(v) => !v.is_empty(),
        Content::Manifest(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::node;
    use crate::store::tests::scratch;

    /// Invariant 2: a CAS against a stale version fails and writes nothing.
    #[test]
    fn cas_refuses_stale_version() {
        let (_d, s) = scratch();
        let root = s.root();
        let r0 = s.records.read(root).unwrap();
        let mut a = r0.clone();
        a.mode = 0o700;
        let written = s.records.cas(root, r0.version, a).unwrap();
        assert_eq!(written.version, r0.version + 1);
        let mut b = r0.clone();
        b.uid = 4242;
        assert!(matches!(
            s.records.cas(root, r0.version, b),
            Err(Error::Conflict(_))
        ));
        let now = s.records.read(root).unwrap();
        assert_eq!(now.mode, 0o700);
        assert_ne!(
            now.uid, 4242,
            "a lost CAS must not mix attributes into the record"
        );
    }

    /// Invariant 2: concurrent read-modify-write updates are serialized, none is lost.
    #[test]
    fn concurrent_updates_lose_nothing() {
        let (_d, s) = scratch();
        let s = Arc::new(s);
        let root = s.root();
        let start = s.records.read(root).unwrap().version;
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        s.records
                            .update(root, |r| {
                                r.rdev += 1;
                                Ok(())
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let r = s.records.read(root).unwrap();
        assert_eq!(r.rdev, 400);
        assert_eq!(r.version, start + 400);
    }

    /// A record too large for an xattr goes to a blob and reads back whole.
    #[test]
    fn large_record_spills_to_blob() {
        let (_d, s) = scratch();
        let root = s.root();
        s.records
            .update(root, |r| {
                r.xattrs.insert(b"user.big".to_vec(), vec![7u8; 60_000]);
                Ok(())
            })
            .unwrap();
        let r = s.records.read(root).unwrap();
        assert_eq!(r.xattrs[&b"user.big".to_vec()].len(), 60_000);
        let raw = xattr::get(s.layout.node_path(root), RECORD_XATTR)
            .unwrap()
            .unwrap();
        assert!(raw.len() < 100, "the xattr holds only the blob reference");
    }

    /// The record cache serves what was last written, never a record of a trashed node,
    /// and concurrent readers never install a stale record over a newer one.
    #[test]
    fn record_cache_is_written_through() {
        let (_d, s) = scratch();
        s.records.enable_cache();
        let s = Arc::new(s);
        let root = s.root();
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (s, stop) = (s.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        s.records.forget(root);
                        s.records.read(root).unwrap();
                    }
                })
            })
            .collect();
        for i in 0..300 {
            let w = s
                .records
                .update(root, |r| {
                    r.rdev = i;
                    Ok(())
                })
                .unwrap();
            assert_eq!(s.records.read(root).unwrap(), w);
        }
        stop.store(true, Ordering::Relaxed);
        for t in readers {
            t.join().unwrap();
        }
        let cached = s.records.read(root).unwrap();
        assert_eq!(cached, s.records.read_disk(root).unwrap());
        assert_eq!(cached.rdev, 299);
        // A trashed record is read from the disk every time.
        s.records
            .update(root, |r| {
                r.trash = Some(node::TrashOrigin {
                    parent: root,
                    name: b"x".to_vec(),
                    at: Time::now(),
                });
                Ok(())
            })
            .unwrap();
        let sh = s.records.cache_shard(root).unwrap();
        assert!(!sh.lock().map.contains_key(&root));
        s.records.read(root).unwrap();
        assert!(!sh.lock().map.contains_key(&root));
    }
}
