//! The blobs of a store bound to an object store (docs/DESIGN.md, "Remote storage").
//! Every blob is written to the local disk first ([`LocalBlobs`]); a background
//! uploader copies each new one to the bucket, create-only; the local disk is then a
//! cache, bounded by `cache_size`, from which only uploaded blobs are evicted; a read
//! of a blob no longer on disk fetches it, verifies its hash and keeps it. A ledger
//! (sled, writer only) holds which blobs wait for their upload and which are uploaded.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::{Condvar, Mutex, RwLock};

use super::{hash_of, BlobStore, Chunk, Deleted, Fault, Listed, LocalBlobs};
use crate::store::error::{Error, Result};
use crate::store::node::{hash_hex, Hash, Time};
use crate::store::remote::{blob_key, Put, Remote};

/// Uploads in flight at once, and the bytes a batch may hold in memory.
const BATCH_BLOBS: usize = 8;
const BATCH_BYTES: usize = 64 << 20;
/// Retry a failed upload after this, doubling up to `BACKOFF_MAX`.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often the cache's size is measured again (a listing of the local blobs) when a
/// bound is set, at the latest.
const MEASURE_EVERY: Duration = Duration::from_secs(30);
/// Evicting stops at this share of the bound, so it runs in batches, not per blob.
const EVICT_TO_PERCENT: u64 = 90;
/// Background fetches of evicted blobs a sequential reader asks for ahead, at most.
const PREFETCH_MAX: usize = 4;

/// Which blobs are uploaded, and which wait (both survive a restart).
struct Ledger {
    pending: sled::Tree,
    uploaded: sled::Tree,
    db: sled::Db,
}

impl Ledger {
    fn open(dir: &Path) -> Result<Ledger> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(8 << 20)
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|e| Error::io(format!("open {}", dir.display()), sled_io(e)))?;
        let tree = |n: &str| {
            db.open_tree(n)
                .map_err(|e| Error::io(format!("open {} {n}", dir.display()), sled_io(e)))
        };
        Ok(Ledger {
            pending: tree("pending")?,
            uploaded: tree("uploaded")?,
            db: db.clone(),
        })
    }
}

fn sled_io(e: sled::Error) -> std::io::Error {
    match e {
        sled::Error::Io(io) => io,
        other => std::io::Error::other(other.to_string()),
    }
}

fn ledger_err(e: sled::Error) -> Error {
    Error::io("the upload ledger", sled_io(e))
}

/// What `decofs status` shows of the object store (times in unix seconds).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RemoteState {
    pub url: String,
    pub endpoint: String,
    /// Blobs written locally and not confirmed in the bucket yet, and their bytes.
    pub pending_blobs: u64,
    pub pending_bytes: u64,
    /// Uploaded, fetched and evicted by this process.
    pub uploaded: u64,
    pub uploaded_bytes: u64,
    pub fetched: u64,
    pub evicted: u64,
    /// The local cache: its bound (0 = none) and its size when last measured.
    pub cache_limit: u64,
    pub cache_bytes: u64,
    /// The last failure of an upload or fetch, and when.
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
    pub last_upload_at: Option<u64>,
}

fn unix_now() -> u64 {
    Time::now().secs.max(0) as u64
}

/// A fetch under way: its outcome, for the readers that waited for it.
#[derive(Default)]
struct Gate {
    done: Mutex<Option<std::result::Result<Arc<Chunk>, String>>>,
    cv: Condvar,
}

pub struct RemoteBlobs {
    local: Arc<LocalBlobs>,
    remote: Arc<Remote>,
    /// `None` for a read-only open: nothing is uploaded, fetched blobs stay in memory.
    ledger: Option<Ledger>,
    queue: Option<Sender<Hash>>,
    state: Mutex<RemoteState>,
    fetching: Mutex<HashMap<Hash, Arc<Gate>>>,
    prefetching: AtomicUsize,
    /// Bytes added to the cache since it was last measured.
    added: AtomicU64,
    /// Blobs the object store's gc is deleting from the bucket, and whether a `put`
    /// wrote one of them meanwhile (then it is kept). Eviction leaves them alone.
    doomed: Mutex<HashMap<Hash, bool>>,
    /// Held shared by an upload batch (from reading the local copy to the ledger's
    /// `confirm`) and by each eviction; exclusively by gc from taking blobs out of the
    /// ledger's `uploaded` to queueing their uploads again. So a confirmation never
    /// straddles a gc delete (docs/DESIGN.md, "Remote storage", gc's interleavings).
    gate: RwLock<()>,
}

/// What the ledger says of a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LedgerSays {
    Pending,
    Uploaded,
    Unknown,
}

/// What gc did with a batch of blobs it found unreferenced in the bucket.
#[derive(Clone, Debug, Default)]
pub struct GcDeleted {
    /// Deleted from the bucket, with their listed sizes.
    pub deleted: Vec<(Hash, u64)>,
    /// Kept: named again, written again, or waiting for their upload meanwhile.
    pub kept: u64,
    /// Deleted, but a local copy was there (written again): queued for upload again.
    pub requeued: u64,
}

impl RemoteBlobs {
    /// The blobs of a store bound to `remote`. A writer (`ledger_dir` given) opens
    /// its ledger and starts the uploader, which first queues what an earlier run left
    /// waiting; `cache_limit` bounds the local copies (0: no bound).
    pub fn open(
        local: Arc<LocalBlobs>,
        remote: Arc<Remote>,
        ledger_dir: Option<&Path>,
        cache_limit: u64,
    ) -> Result<Arc<RemoteBlobs>> {
        let ledger = match ledger_dir {
            Some(d) => Some(Ledger::open(d)?),
            None => None,
        };
        let mut state = RemoteState {
            url: remote.url().to_string(),
            endpoint: remote.endpoint().to_string(),
            cache_limit,
            ..Default::default()
        };
        let mut waiting = Vec::new();
        if let Some(l) = &ledger {
            for kv in l.pending.iter() {
                let (k, v) = kv.map_err(ledger_err)?;
                if let Ok(h) = <Hash>::try_from(&k[..]) {
                    waiting.push(h);
                    state.pending_blobs += 1;
                    state.pending_bytes += len_of(&v);
                }
            }
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let writer = ledger.is_some();
        let me = Arc::new(RemoteBlobs {
            local,
            remote,
            ledger,
            queue: writer.then_some(tx.clone()),
            state: Mutex::new(state),
            fetching: Mutex::new(HashMap::new()),
            prefetching: AtomicUsize::new(0),
            added: AtomicU64::new(0),
            doomed: Mutex::new(HashMap::new()),
            gate: RwLock::new(()),
        });
        if writer {
            for h in waiting {
                let _ = tx.send(h);
            }
            drop(tx);
            let weak = Arc::downgrade(&me);
            std::thread::Builder::new()
                .name("decofs-upload".into())
                .spawn(move || uploader(weak, rx))
                .map_err(|e| Error::io("start the uploader", e))?;
        }
        Ok(me)
    }

    pub fn remote(&self) -> &Arc<Remote> {
        &self.remote
    }

    /// Make the ledger durable (sled writes it every second otherwise).
    pub fn flush(&self) -> Result<()> {
        if let Some(l) = &self.ledger {
            l.db.flush().map_err(ledger_err)?;
        }
        Ok(())
    }

    /// What status shows.
    pub fn state(&self) -> RemoteState {
        self.state.lock().clone()
    }

    /// Set the bound of the local cache (0: none).
    pub fn set_cache_limit(&self, bytes: u64) {
        self.state.lock().cache_limit = bytes;
    }

    /// What this store's ledger says of a blob (None: no ledger, a read-only open).
    pub fn ledger_says(&self, hash: &Hash) -> Option<LedgerSays> {
        let l = self.ledger.as_ref()?;
        Some(if l.pending.contains_key(hash).unwrap_or(false) {
            LedgerSays::Pending
        } else if l.uploaded.contains_key(hash).unwrap_or(false) {
            LedgerSays::Uploaded
        } else {
            LedgerSays::Unknown
        })
    }

    /// Every blob waiting for its upload.
    pub fn pending(&self) -> Result<std::collections::HashSet<Hash>> {
        let mut out = std::collections::HashSet::new();
        if let Some(l) = &self.ledger {
            for kv in l.pending.iter() {
                let (k, _) = kv.map_err(ledger_err)?;
                if let Ok(h) = <Hash>::try_from(&k[..]) {
                    out.insert(h);
                }
            }
        }
        Ok(out)
    }

    /// Does the local disk hold a copy of this blob?
    pub fn local_exists(&self, hash: &Hash) -> bool {
        self.local.exists(hash)
    }

    /// The object store's gc deletes `batch` (blobs it listed in the bucket, with their
    /// sizes, that nothing named when it looked) from the bucket, blob by blob safe
    /// against the writer (docs/DESIGN.md, "Remote storage", gc):
    /// 1. doom them: eviction leaves them alone, and a `put` of one marks it touched;
    /// 2. keep those `still_free` now denies (named again by the counts or an open
    ///    session), those waiting for upload, and those whose local copy the sweep's
    ///    rename-aside delete keeps (written since `since`, when gc began);
    /// 3. with the gate held exclusively (no upload batch or eviction in between):
    ///    keep those touched meanwhile, take the rest out of `uploaded` and make that
    ///    durable, delete them from the bucket, and queue again for upload any whose
    ///    local copy exists by then (written again: a dedup that raced the delete).
    ///
    /// Stops at the first failed delete (the error); what was deleted before it is
    /// reported through `done`.
    pub fn gc_delete(
        &self,
        batch: &[(Hash, u64)],
        since: SystemTime,
        still_free: &dyn Fn(&Hash) -> bool,
        done: &mut GcDeleted,
    ) -> Result<()> {
        let l = self.ledger.as_ref().ok_or(Error::ReadOnly)?;
        {
            let mut d = self.doomed.lock();
            for (h, _) in batch {
                d.insert(*h, false);
            }
        }
        // Undoomed whatever happens.
        struct Undoom<'a>(&'a RemoteBlobs, Vec<Hash>);
        impl Drop for Undoom<'_> {
            fn drop(&mut self) {
                let mut d = self.0.doomed.lock();
                for h in &self.1 {
                    d.remove(h);
                }
            }
        }
        let _undoom = Undoom(self, batch.iter().map(|(h, _)| *h).collect());
        let mut go = Vec::new();
        for (h, len) in batch {
            if !still_free(h) || l.pending.contains_key(h).map_err(ledger_err)? {
                done.kept += 1;
                continue;
            }
            // The local copy goes as a sweep frees it: a put since `since` keeps it,
            // and the blob with it.
            if self.local.exists(h) {
                match self.local.delete(h, since)? {
                    Deleted::Reused => {
                        done.kept += 1;
                        continue;
                    }
                    Deleted::Freed(_) | Deleted::Absent => {}
                }
            }
            go.push((*h, *len));
        }
        if go.is_empty() {
            return Ok(());
        }
        let _gate = self.gate.write();
        {
            let d = self.doomed.lock();
            go.retain(|(h, _)| {
                let touched = d.get(h).copied().unwrap_or(true);
                if touched {
                    done.kept += 1;
                }
                !touched
            });
        }
        for (h, _) in &go {
            l.uploaded.remove(h).map_err(ledger_err)?;
        }
        // Durable before any delete: a ledger that still said "uploaded" after a crash
        // would let a later write of the same bytes skip its upload.
        l.db.flush().map_err(ledger_err)?;
        let mut res = Ok(());
        let mut tried = 0;
        for (h, len) in &go {
            tried += 1;
            if let Err(e) = self.remote.delete(&blob_key(h)) {
                self.failed(&e);
                res = Err(e);
                break;
            }
            done.deleted.push((*h, *len));
        }
        // Written again while doomed (or between the sweep above and now): upload it
        // again, whatever the ledger said meanwhile.
        for (h, _) in &go[..tried] {
            if let Ok(md) = self.local.path_of(h).metadata() {
                self.requeue(l, *h, md.len())?;
                done.requeued += 1;
            }
        }
        res
    }

    /// Queue a blob for upload whatever the ledger says (gc deleted the bucket's copy
    /// of a blob that was written again).
    fn requeue(&self, l: &Ledger, hash: Hash, len: u64) -> Result<()> {
        l.uploaded.remove(hash).map_err(ledger_err)?;
        let fresh = l
            .pending
            .insert(hash, &len.to_be_bytes()[..])
            .map_err(ledger_err)?
            .is_none();
        if fresh {
            let mut s = self.state.lock();
            s.pending_blobs += 1;
            s.pending_bytes += len;
        }
        if let Some(q) = &self.queue {
            let _ = q.send(hash);
        }
        Ok(())
    }

    /// Is this blob confirmed in the bucket (by this store's ledger)?
    pub fn is_uploaded(&self, hash: &Hash) -> bool {
        self.ledger
            .as_ref()
            .is_some_and(|l| l.uploaded.contains_key(hash).unwrap_or(false))
    }

    /// Before a published state names `hashes`: make sure each is in the bucket (the
    /// ledger says so, or it is uploaded now from the local copy, or the bucket has
    /// it). A blob found nowhere fails the publish. Returns how many were uploaded now.
    pub fn ensure_uploaded(&self, hashes: &[Hash]) -> Result<u64> {
        let l = self.ledger.as_ref().ok_or(Error::ReadOnly)?;
        // No gc delete between a check here and its confirmation (gc also holds the
        // publish lock for its whole run).
        let _gate = self.gate.read();
        let todo: Vec<Hash> = hashes
            .iter()
            .filter(|h| !l.uploaded.contains_key(h).unwrap_or(false))
            .copied()
            .collect();
        let mut uploaded = 0;
        for batch in todo.chunks(BATCH_BLOBS) {
            let mut items = Vec::new();
            let mut which = Vec::new();
            for h in batch {
                match self.local.read_verified(h) {
                    Ok(data) => {
                        items.push((blob_key(h), data));
                        which.push(*h);
                    }
                    // Missing or damaged here: the bucket may have it.
                    Err(_) if self.remote.head(&blob_key(h))?.is_some() => {
                        self.mark_uploaded(&[*h])?;
                    }
                    Err(f) => {
                        return Err(Error::Integrity {
                            what: format!("blob {}", hash_hex(h)),
                            detail: format!(
                                "not published: here it is {f}, and the object store lacks it"
                            ),
                        })
                    }
                }
            }
            let lens: Vec<u64> = items.iter().map(|(_, d)| d.len() as u64).collect();
            for ((h, r), len) in which
                .into_iter()
                .zip(self.remote.put_create_many(items))
                .zip(lens)
            {
                match r {
                    Ok(Put::Created) | Ok(Put::Exists) => {
                        self.confirm(l, &h, len)?;
                        uploaded += 1;
                    }
                    Err(e) => {
                        self.failed(&e);
                        return Err(e);
                    }
                }
            }
        }
        Ok(uploaded)
    }

    /// Note blobs known to be in the bucket (received from a published stream).
    pub fn mark_uploaded(&self, hashes: &[Hash]) -> Result<()> {
        let Some(l) = &self.ledger else {
            return Ok(());
        };
        for h in hashes {
            if !l.uploaded.contains_key(h).map_err(ledger_err)? {
                l.uploaded
                    .insert(h, &0u64.to_be_bytes()[..])
                    .map_err(ledger_err)?;
            }
            self.settled(l, h);
        }
        Ok(())
    }

    /// Queue every local blob the ledger does not know (a store bound to an object
    /// store after it had blobs). Returns how many were queued.
    pub fn queue_unknown(&self) -> Result<u64> {
        let mut found = Vec::new();
        self.local.list(&mut |item| {
            if let Listed::Blob { hash, len, .. } = item {
                found.push((hash, len));
            }
        })?;
        let mut n = 0;
        for (h, len) in found {
            if self.note(h, len)? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// A blob written locally: queue its upload unless the ledger knows it. Returns
    /// whether it was queued.
    fn note(&self, hash: Hash, len: u64) -> Result<bool> {
        let (Some(l), Some(q)) = (&self.ledger, &self.queue) else {
            return Ok(false);
        };
        if let Some(touched) = self.doomed.lock().get_mut(&hash) {
            *touched = true;
        }
        self.added.fetch_add(len, Ordering::Relaxed);
        if l.uploaded.contains_key(hash).map_err(ledger_err)? {
            return Ok(false);
        }
        let fresh = l
            .pending
            .compare_and_swap(hash, None as Option<&[u8]>, Some(&len.to_be_bytes()[..]))
            .map_err(ledger_err)?
            .is_ok();
        if fresh {
            {
                let mut s = self.state.lock();
                s.pending_blobs += 1;
                s.pending_bytes += len;
            }
            let _ = q.send(hash);
        }
        Ok(fresh)
    }

    /// Note a failure of the object store's side (a publish) for status.
    pub fn note_error(&self, e: &Error) {
        self.failed(e)
    }

    fn failed(&self, e: &Error) {
        let mut s = self.state.lock();
        s.last_error = Some(e.to_string());
        s.last_error_at = Some(unix_now());
    }

    /// Upload one batch; returns the hashes to try again.
    fn upload_batch(&self, batch: Vec<Hash>) -> Vec<Hash> {
        let Some(l) = &self.ledger else {
            return Vec::new();
        };
        // From reading the local copy to the confirmation: no gc delete in between.
        let _gate = self.gate.read();
        let mut items = Vec::new();
        let mut hashes = Vec::new();
        for h in batch {
            match self.local.read_verified(&h) {
                Ok(data) => {
                    items.push((blob_key(&h), data));
                    hashes.push(h);
                }
                // Swept before its upload: nothing names it any more.
                Err(Fault::Missing) => self.settled(l, &h),
                Err(f) => {
                    log::error!("upload of blob {}: the local copy is {f}", hash_hex(&h));
                    self.failed(&Error::Integrity {
                        what: format!("blob {}", hash_hex(&h)),
                        detail: format!("not uploaded: the local copy is {f}"),
                    });
                }
            }
        }
        if items.is_empty() {
            return Vec::new();
        }
        let lens: Vec<u64> = items.iter().map(|(_, d)| d.len() as u64).collect();
        let results = self.remote.put_create_many(items);
        let mut again = Vec::new();
        for ((h, r), len) in hashes.into_iter().zip(results).zip(lens) {
            match r {
                Ok(Put::Created) | Ok(Put::Exists) => {
                    if let Err(e) = self.confirm(l, &h, len) {
                        self.failed(&e);
                        again.push(h);
                        continue;
                    }
                    let mut s = self.state.lock();
                    s.uploaded += 1;
                    s.uploaded_bytes += len;
                    s.last_upload_at = Some(unix_now());
                }
                Err(e) => {
                    log::warn!("upload of blob {}: {e}", hash_hex(&h));
                    self.failed(&e);
                    again.push(h);
                }
            }
        }
        again
    }

    /// A blob the bucket confirmed (created or found there): in the ledger's
    /// `uploaded`, no longer pending.
    fn confirm(&self, l: &Ledger, h: &Hash, len: u64) -> Result<()> {
        l.uploaded
            .insert(h, &len.to_be_bytes()[..])
            .map_err(ledger_err)?;
        self.settled(l, h);
        Ok(())
    }

    /// A pending blob is done with: uploaded, or gone before it was.
    fn settled(&self, l: &Ledger, h: &Hash) {
        match l.pending.remove(h) {
            Ok(Some(v)) => {
                let mut s = self.state.lock();
                s.pending_blobs = s.pending_blobs.saturating_sub(1);
                s.pending_bytes = s.pending_bytes.saturating_sub(len_of(&v));
            }
            Ok(None) => {}
            Err(e) => self.failed(&ledger_err(e)),
        }
    }

    /// Measure the local cache and, over its bound, evict the oldest uploaded blobs
    /// (by write time) until it is at `EVICT_TO_PERCENT` of it. A blob not confirmed
    /// in the bucket, or not yet durable locally, is never evicted.
    pub fn evict(&self) -> Result<u64> {
        let limit = self.state.lock().cache_limit;
        let Some(l) = &self.ledger else {
            return Ok(0);
        };
        let mut blobs = Vec::new();
        let mut total = 0u64;
        self.local.list(&mut |item| {
            if let Listed::Blob { hash, len, written } = item {
                total += len;
                blobs.push((written, hash, len));
            }
        })?;
        self.added.store(0, Ordering::Relaxed);
        self.state.lock().cache_bytes = total;
        // A blob the ledger does not know (its entry was lost with sled's last second
        // at a crash) is queued again: uploaded, or found in the bucket, it becomes
        // evictable.
        for (_, h, len) in &blobs {
            if !l.uploaded.contains_key(h).unwrap_or(true)
                && !l.pending.contains_key(h).unwrap_or(true)
            {
                self.note(*h, *len)?;
            }
        }
        self.added.store(0, Ordering::Relaxed);
        if limit == 0 || total <= limit {
            return Ok(0);
        }
        let target = limit / 100 * EVICT_TO_PERCENT;
        // What the ledger says is uploaded must outlive a crash before any local copy
        // goes: a blob it forgot would look missing.
        l.db.flush().map_err(ledger_err)?;
        blobs.sort();
        let mut evicted = 0;
        for (_, h, len) in blobs {
            if total <= target {
                break;
            }
            // Not while gc deletes it from the bucket (it may be written again then).
            let _gate = self.gate.read();
            if self.doomed.lock().contains_key(&h)
                || self.local.is_unsynced(&h)
                || !l.uploaded.contains_key(h).unwrap_or(false)
            {
                continue;
            }
            match std::fs::remove_file(self.local.path_of(&h)) {
                Ok(()) => {
                    total -= len;
                    evicted += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("evict blob {}", hash_hex(&h)), e)),
            }
        }
        let mut s = self.state.lock();
        s.cache_bytes = total;
        s.evicted += evicted;
        Ok(evicted)
    }

    /// Fetch a blob from the bucket and verify it (no cache involved).
    fn fetch_verified(&self, hash: &Hash) -> Result<Vec<u8>> {
        let got = match self.remote.get(&blob_key(hash)) {
            Ok(g) => g,
            Err(e) => {
                self.failed(&e);
                return Err(e);
            }
        };
        let Some(got) = got else {
            return Err(Error::Integrity {
                what: format!("blob {}", hash_hex(hash)),
                detail: "missing here and in the object store".into(),
            });
        };
        if &hash_of(&got.data) != hash {
            log::error!(
                "blob {}: the object store's copy does not match its hash",
                hash_hex(hash)
            );
            return Err(Error::Integrity {
                what: format!("blob {}", hash_hex(hash)),
                detail: "the object store's copy does not match its hash".into(),
            });
        }
        self.state.lock().fetched += 1;
        Ok(got.data)
    }

    /// A blob not on the local disk: fetched once at a time per hash, kept on disk (a
    /// writer's) and in memory.
    fn fetch(&self, hash: &Hash) -> Result<Arc<Chunk>> {
        crate::blocking::soon();
        let (gate, mine) = {
            let mut f = self.fetching.lock();
            match f.get(hash) {
                Some(g) => (g.clone(), false),
                None => {
                    let g = Arc::new(Gate::default());
                    f.insert(*hash, g.clone());
                    (g, true)
                }
            }
        };
        if !mine {
            let mut done = gate.done.lock();
            while done.is_none() {
                gate.cv.wait(&mut done);
            }
            // The fetch's outcome, its failure too: readers do not ask again, one
            // after the other, while the object store fails.
            return match done.as_ref().expect("set before the gate opens") {
                Ok(c) => Ok(c.clone()),
                Err(why) => Err(Error::Integrity {
                    what: format!("blob {}", hash_hex(hash)),
                    detail: why.clone(),
                }),
            };
        }
        // Opened whatever happens, a panic included: no reader waits forever.
        struct Open<'a>(&'a RemoteBlobs, Hash, Arc<Gate>);
        impl Drop for Open<'_> {
            fn drop(&mut self) {
                self.0.fetching.lock().remove(&self.1);
                let mut d = self.2.done.lock();
                if d.is_none() {
                    *d = Some(Err("the fetch was cut short".into()));
                }
                self.2.cv.notify_all();
            }
        }
        let open = Open(self, *hash, gate);
        let res = self.fetch_verified(hash).map(|data| {
            if self.ledger.is_some() {
                match self.local.restore(&data) {
                    Ok(_) => {
                        self.added.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => log::warn!("keeping fetched blob {}: {e}", hash_hex(hash)),
                }
            }
            let c = Arc::new(Chunk::from(data));
            self.local.remember(*hash, c.clone());
            c
        });
        *open.2.done.lock() = Some(match &res {
            Ok(c) => Ok(c.clone()),
            Err(e) => Err(e.to_string()),
        });
        drop(open);
        res
    }
}

fn len_of(v: &[u8]) -> u64 {
    <[u8; 8]>::try_from(v).map(u64::from_be_bytes).unwrap_or(0)
}

/// The uploader: batches of queued blobs, retried with backoff while the object store
/// fails; between batches, the cache is measured and evicted when over its bound.
fn uploader(me: Weak<RemoteBlobs>, rx: Receiver<Hash>) {
    let mut retry: VecDeque<Hash> = VecDeque::new();
    let mut backoff = Duration::ZERO;
    let mut measured = Instant::now() - MEASURE_EVERY;
    loop {
        let mut batch: Vec<Hash> = Vec::new();
        if !backoff.is_zero() || retry.is_empty() {
            let wait = if backoff.is_zero() {
                Duration::from_secs(1)
            } else {
                backoff
            };
            match rx.recv_timeout(wait) {
                Ok(h) => batch.push(h),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let Some(blobs) = me.upgrade() else { return };
        while batch.len() < BATCH_BLOBS {
            match retry.pop_front() {
                Some(h) => batch.push(h),
                None => break,
            }
        }
        let mut bytes = 0usize;
        while batch.len() < BATCH_BLOBS && bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(h) => {
                    bytes += blobs
                        .local
                        .path_of(&h)
                        .metadata()
                        .map_or(0, |m| m.len() as usize);
                    batch.push(h);
                }
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let again = blobs.upload_batch(batch);
            if again.is_empty() {
                backoff = Duration::ZERO;
            } else {
                backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                retry.extend(again);
            }
        }
        let limit = blobs.state.lock().cache_limit;
        if limit > 0
            && (measured.elapsed() >= MEASURE_EVERY
                || blobs.added.load(Ordering::Relaxed) > limit / 10)
        {
            measured = Instant::now();
            if let Err(e) = blobs.evict() {
                log::warn!("evicting from the local cache: {e}");
            }
        }
    }
}

impl BlobStore for RemoteBlobs {
    fn put(&self, data: &[u8], durable: bool) -> Result<Hash> {
        let h = self.local.put(data, durable)?;
        self.note(h, data.len() as u64)?;
        Ok(h)
    }

    fn get(&self, hash: &Hash) -> Result<Arc<Chunk>> {
        match self.local.get(hash) {
            Err(Error::Integrity { .. }) if !self.local.exists(hash) => self.fetch(hash),
            // A damaged local copy of an uploaded blob is replaced by the bucket's.
            Err(Error::Integrity { .. }) if self.is_uploaded(hash) => {
                log::warn!(
                    "blob {}: the local copy is damaged; fetching the object store's",
                    hash_hex(hash)
                );
                self.fetch(hash)
            }
            r => r,
        }
    }

    fn read_verified(&self, hash: &Hash) -> std::result::Result<Vec<u8>, Fault> {
        match self.local.read_verified(hash) {
            Err(Fault::Missing) => match self.fetch_verified(hash) {
                Ok(d) => Ok(d),
                Err(Error::Integrity { detail, .. }) if detail.starts_with("missing") => {
                    Err(Fault::Missing)
                }
                Err(Error::Integrity { .. }) => Err(Fault::Damaged),
                Err(e) => Err(Fault::Unreadable(e.to_string())),
            },
            r => r,
        }
    }

    /// Here, or in the bucket. An object store that cannot be asked counts as having
    /// it: a check must not repair away (turn into a hole) what it only cannot see.
    fn exists(&self, hash: &Hash) -> bool {
        if self.local.exists(hash) || self.is_uploaded(hash) {
            return true;
        }
        !matches!(self.remote.head(&blob_key(hash)), Ok(None))
    }

    fn restore(&self, data: &[u8]) -> Result<bool> {
        let wrote = self.local.restore(data)?;
        self.note(hash_of(data), data.len() as u64)?;
        Ok(wrote)
    }

    fn delete(&self, hash: &Hash, since: SystemTime) -> Result<Deleted> {
        // The local copy only: the bucket's copy stays until `decofs gc` of the object
        // store, since published states may still name it.
        self.local.delete(hash, since)
    }

    fn list(&self, visit: &mut dyn FnMut(Listed)) -> Result<()> {
        self.local.list(visit)
    }

    fn prefetch(self: Arc<Self>, hash: Hash) {
        if self.local.exists(&hash) {
            return self.local.clone().prefetch(hash);
        }
        if self.prefetching.fetch_add(1, Ordering::AcqRel) >= PREFETCH_MAX {
            self.prefetching.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("decofs-fetch".into())
            .spawn(move || {
                let _ = me.fetch(&hash);
                me.prefetching.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            self.prefetching.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn drop_cache(&self) {
        self.local.drop_cache()
    }

    fn sync(&self) -> Result<()> {
        self.local.sync()
    }

    fn settle(&self, hashes: &[Hash]) -> Result<()> {
        self.local.settle(hashes)
    }

    fn is_unsynced(&self, hash: &Hash) -> bool {
        self.local.is_unsynced(hash)
    }
}
