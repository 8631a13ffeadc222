//! Content-addressed, immutable blobs (invariants 1 and 5).
//!
//! A blob is named by the BLAKE3 hash of its bytes. `put` writes to a staging file in
//! `sessions/`, then renames it to `blobs/ab/<hash>`; only then may a record name it.
//! `get` hashes what it read and returns `Error::Integrity` on any mismatch, so wrong
//! bytes never leave this module. Verified blobs are kept in a small in-memory cache so
//! a chunk is hashed once per read from disk, not once per 128 KiB request. Concurrent
//! readers of one blob share a single load, and `prefetch` loads a blob in the background
//! (sequential reads ask for the next chunk while the kernel still copies this one).
//! A cold blob of 1 MiB or more is read with O_DIRECT into an aligned buffer ([`Chunk`]);
//! a warm one through the page cache, hashed piece by piece.
//!
//! Durability: `put(.., durable=false)` leaves the blob to a later [`BlobStore::sync`],
//! which fsyncs every such blob and then the directories naming them, except on ext4
//! for blobs whose descriptor is still held: there the file's fsync also writes its new
//! name (tests/durability.rs checks this with a power cut).
//! Which blobs are not durable yet is known (`is_unsynced`): the fsync log copies
//! those a logged record names.
//!
//! Ordering (invariant 1 across a power cut, for files closed but not fsynced): a
//! record must not reach the device before the bytes of the blobs it names. `put`
//! starts writing a new blob at once (`sync_file_range`), and [`BlobStore::settle`],
//! called before a record naming it is written, waits until those writes completed.
//! A journal commits metadata in order, and ext4 marks the new extents written
//! (dioread_nolock's conversion) before the pages leave writeback, so the record's
//! change commits in the same transaction as the blob's or a later one: a power cut
//! leaves the old record, or the new one with its bytes (tests/durability.rs; without
//! this every file closed in the 30 s before the cut read EIO there). The device's
//! cache is not flushed (fsync's job: a journal commit flushes it before its commit
//! block). Without a journal nothing orders the record's block behind the bytes, so
//! neither is done there; fsck finds and repairs what a cut leaves (README).
//!
//! Recycling: the file of a swept blob of at most 1 MiB is emptied and kept (up to 256)
//! for the next `put`, which writes and renames it instead of creating a new inode. On
//! ext4 without a journal a new inode costs ~1 ms once many were deleted recently
//! (`find_inode_bit` skips every inode freed in the last 30 s), and a small-file
//! workload such as sqlite's journal deletes and creates several per transaction.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use std::time::SystemTime;

use super::{hash_of, BlobStore, Chunk, Deleted, Fault, Listed, CARRY_MAX};
use crate::store::error::{Error, IoContext, Result};
use crate::store::layout::{sync_dir, syncfs, Layout};
use crate::store::node::{hash_hex, is_hex, parse_hash, Hash};

/// Reads (`get`) the verified cache answered, and those it did not (a miss waits for a
/// load: its own or a prefetch's), since the process started: for `decofs stats`.
/// Prefetches are not counted. Per process, which serves one mount.
static CACHE_HITS: AtomicU64 = AtomicU64::new(0);
static CACHE_MISSES: AtomicU64 = AtomicU64::new(0);

pub struct LocalBlobs {
    layout: Layout,
    cache: Mutex<Cache>,
    seq: AtomicU64,
    /// Blob files written without fsync since the last `sync`.
    unsynced: Mutex<Vec<Unsynced>>,
    /// The hashes of `unsynced` plus those a running `sync` is still fsyncing: a blob
    /// leaves only once it is durable, so the fsync log can tell which blobs it must
    /// carry (see `is_unsynced`).
    not_durable: Mutex<HashMap<Hash, u32>>,
    /// The backing filesystem is ext4: an fsync of a file through a descriptor opened
    /// before its rename also makes its new name durable (see `sync`).
    name_rides_fsync: bool,
    /// `settle` waits: the backing filesystem orders metadata behind completed writes
    /// (a journal), so waiting for a blob's bytes orders the record after them. Not on
    /// ext4 without a journal, where nothing orders them (see the module doc).
    settle_waits: bool,
    /// Blobs being read from disk right now; later readers wait for that load.
    loading: Mutex<HashMap<Hash, Arc<Gate>>>,
    /// Background prefetches running (bounded by PREFETCH_MAX).
    prefetching: AtomicUsize,
    /// Files for `put` to write: swept small blobs, emptied (see `recycle`), and empty
    /// files the spares thread made ahead in a fresh block group (see `offer`). A new
    /// inode in `sessions/` costs ~1 ms on a churned ext4 without a journal.
    pool: Mutex<VecDeque<Pooled>>,
    /// Files in `pool` made ahead (`offer`), and what to nudge when they run low.
    premade: AtomicUsize,
    refill: Mutex<Option<crossbeam_channel::Sender<()>>>,
    /// Set by `drain_pool` (closing): from then on swept files are deleted.
    pool_closed: std::sync::atomic::AtomicBool,
    /// Tickets for `sync_filesystem`: `ticket` numbers a moment (the store takes one
    /// after it made an inode that only a syncfs makes durable), and `synced` is the
    /// newest ticket taken before a syncfs that has since completed.
    tickets: AtomicU64,
    synced: AtomicU64,
}

/// Swept blob files kept for reuse at most, and the largest blob recycled (bigger ones
/// cost mostly their data, not their inode).
const POOL_MAX: usize = 256;
const RECYCLE_MAX: u64 = 1 << 20;

/// Empty files kept made ahead for `put`, and how many may be missing before the
/// spares thread is asked for more (it makes them a batch at a time).
pub(crate) const PREMADE_DEPTH: usize = 64;
pub(crate) const PREMADE_BATCH: usize = 16;

/// A file in the pool. `file` is held for one made ahead: it is a new inode whose
/// first name ext4 marked new at create, and the held descriptor keeps that mark in
/// memory until `put` names the blob (see `remember_unsynced`).
struct Pooled {
    path: PathBuf,
    file: Option<fs::File>,
}

/// A blob written without fsync, with its descriptor while it is among the newest.
struct Unsynced {
    hash: Hash,
    path: PathBuf,
    file: Option<fs::File>,
}

/// Descriptors kept open for the newest unsynced blobs (the ones an fsync soon after
/// needs); older ones are reopened by path.
const HELD_MAX: usize = 64;

/// Unsynced blobs remembered at most; beyond this the backing filesystem is synced
/// whole (syncfs) and the list starts again, so a long run without fsync neither grows
/// memory nor leaves one huge fsync for later.
const UNSYNCED_MAX: usize = 65_536;

/// Opened when a load finishes (whatever its outcome).
#[derive(Default)]
struct Gate {
    done: Mutex<bool>,
    cv: Condvar,
}

/// At most this many background prefetches at once: each holds a chunk in memory and a
/// core busy hashing it.
const PREFETCH_MAX: usize = 4;

/// The verified-chunk cache, first in first out. Each insert is numbered; `order` may
/// hold entries a `forget` left behind (their number is not the map's), skipped when
/// they come up and dropped once they outnumber the live ones: a purge forgetting
/// thousands of blobs costs one pass over `order`, not one per blob.
struct Cache {
    map: HashMap<Hash, (Arc<Chunk>, u64)>,
    order: VecDeque<(Hash, u64)>,
    seq: u64,
    bytes: usize,
    limit: usize,
}

impl Cache {
    fn insert(&mut self, h: Hash, data: Arc<Chunk>) {
        if data.len() > self.limit / 4 || self.map.contains_key(&h) {
            return;
        }
        self.seq += 1;
        self.bytes += data.len();
        self.map.insert(h, (data, self.seq));
        self.order.push_back((h, self.seq));
        while self.bytes > self.limit {
            match self.order.pop_front() {
                Some((old, n)) => {
                    if self.map.get(&old).is_some_and(|(_, m)| *m == n) {
                        let (d, _) = self.map.remove(&old).expect("just seen");
                        self.bytes -= d.len();
                    }
                }
                None => break,
            }
        }
    }

    fn get(&self, h: &Hash) -> Option<Arc<Chunk>> {
        self.map.get(h).map(|(d, _)| d.clone())
    }

    fn forget(&mut self, h: &Hash) {
        if let Some((d, _)) = self.map.remove(h) {
            self.bytes -= d.len();
        }
        if self.order.len() > 2 * self.map.len() + 1024 {
            let map = &self.map;
            self.order
                .retain(|(h, n)| map.get(h).is_some_and(|(_, m)| m == n));
        }
    }
}

impl LocalBlobs {
    pub fn new(layout: Layout, cache_bytes: usize) -> LocalBlobs {
        LocalBlobs {
            layout: layout.clone(),
            cache: Mutex::new(Cache {
                map: HashMap::new(),
                order: VecDeque::new(),
                seq: 0,
                bytes: 0,
                limit: cache_bytes,
            }),
            seq: AtomicU64::new(0),
            name_rides_fsync: is_ext4(&layout.blobs()),
            settle_waits: !ext4_without_journal(&layout.blobs()),
            unsynced: Mutex::new(Vec::new()),
            not_durable: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
            prefetching: AtomicUsize::new(0),
            pool: Mutex::new(VecDeque::new()),
            premade: AtomicUsize::new(0),
            refill: Mutex::new(None),
            pool_closed: std::sync::atomic::AtomicBool::new(false),
            tickets: AtomicU64::new(0),
            synced: AtomicU64::new(0),
        }
    }

    /// Note a blob written without fsync (see `Unsynced`). Called before the blob is
    /// renamed into place, so there is no moment when it is visible but not known to be
    /// unsynced. Returns whether more than `UNSYNCED_MAX` are listed: then the caller,
    /// once the blob is named, syncs the filesystem.
    /// Only a `fresh` file (a new inode) is held: ext4 marks an inode's first name as
    /// new at create, and that mark is what makes its fsync write the name; a recycled
    /// inode may have lost it.
    fn remember_unsynced(&self, hash: Hash, path: PathBuf, file: fs::File, fresh: bool) -> bool {
        *self.not_durable.lock().entry(hash).or_insert(0) += 1;
        let n = {
            let mut u = self.unsynced.lock();
            u.push(Unsynced {
                hash,
                path,
                file: (self.name_rides_fsync && fresh).then_some(file),
            });
            let n = u.len();
            if n > HELD_MAX {
                u[n - 1 - HELD_MAX].file = None;
            }
            n
        };
        n > UNSYNCED_MAX
    }

    /// Make every blob written so far durable with one syncfs of the backing
    /// filesystem (which writes everything else of the store too), and forget them.
    /// Blobs written while it runs stay listed.
    pub fn sync_filesystem(&self) -> Result<()> {
        let n = self.unsynced.lock().len();
        let ticket = self.tickets.load(Ordering::SeqCst);
        syncfs(&self.layout.blobs())?;
        self.synced.fetch_max(ticket, Ordering::SeqCst);
        let done: Vec<Hash> = {
            let mut u = self.unsynced.lock();
            let n = n.min(u.len());
            u.drain(..n).map(|u| u.hash).collect()
        };
        self.now_durable(done);
        Ok(())
    }

    /// A new ticket: a `sync_filesystem` that starts from now on covers this moment.
    pub fn ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Has a `sync_filesystem` started after `ticket` was taken completed?
    pub fn synced_since(&self, ticket: u64) -> bool {
        self.synced.load(Ordering::SeqCst) >= ticket
    }

    fn now_durable(&self, hashes: Vec<Hash>) {
        let mut m = self.not_durable.lock();
        for h in hashes {
            if let Some(c) = m.get_mut(&h) {
                *c -= 1;
                if *c == 0 {
                    m.remove(&h);
                }
            }
        }
    }

    /// A swept blob's file (already renamed out of `blobs/`): keep it, emptied, for a
    /// later `put`, or delete it. Returns the bytes it held. Its name,
    /// `blob.<pid>.pool<n>.tmp`, is staging: fsck collects it should we die.
    pub fn recycle(&self, doomed: &std::path::Path) -> u64 {
        let len = fs::metadata(doomed).map(|m| m.len()).unwrap_or(0);
        if len <= RECYCLE_MAX
            && !self.pool_closed.load(Ordering::SeqCst)
            && self.pool.lock().len() < POOL_MAX
        {
            let p = self.layout.sessions().join(format!(
                "blob.{}.pool{}.tmp",
                std::process::id(),
                self.seq.fetch_add(1, Ordering::Relaxed)
            ));
            let kept = fs::rename(doomed, &p).is_ok()
                && fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .and_then(|f| f.set_len(0))
                    .is_ok();
            if kept {
                let mut pool = self.pool.lock();
                if !self.pool_closed.load(Ordering::SeqCst) {
                    pool.push_back(Pooled {
                        path: p,
                        file: None,
                    });
                    return len;
                }
            }
            let _ = fs::remove_file(&p);
        }
        let _ = fs::remove_file(doomed);
        len
    }

    /// The blobs a sweep of a process that is gone moved aside and left there
    /// (`sessions/doomed.<pid>.<seq>.<hash>.tmp`): it died between moving one aside and
    /// freeing it or moving it back.
    pub fn swept_aside(&self) -> Result<Vec<(PathBuf, Hash)>> {
        let dir = self.layout.sessions();
        let entries = match fs::read_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            r => r.ctx(|| format!("read {}", dir.display()))?,
        };
        let mut left = vec![];
        for e in entries {
            let e = e.ctx(|| format!("read {}", dir.display()))?;
            let Some((pid, hash)) = parse_doomed(&e.file_name().to_string_lossy()) else {
                continue;
            };
            if pid != std::process::id() as i32 && crate::store::lock::process_gone(pid) {
                left.push((e.path(), hash));
            }
        }
        Ok(left)
    }

    /// Put back what [`Self::swept_aside`] found: whether that sweep was freeing a blob
    /// or keeping it for a writer that had just reused it is unknown, and a later sweep
    /// frees it if nothing names it. One already back in place is removed.
    pub fn put_back(&self, aside: &[(PathBuf, Hash)]) -> Result<()> {
        for (from, hash) in aside {
            let to = self.path_of(hash);
            if to.exists() {
                fs::remove_file(from).ctx(|| format!("remove {}", from.display()))?;
                continue;
            }
            if let Some(shard) = to.parent() {
                fs::create_dir_all(shard).ctx(|| format!("create {}", shard.display()))?;
            }
            fs::rename(from, &to).ctx(|| format!("move back {}", to.display()))?;
        }
        Ok(())
    }

    /// Delete the pooled files (a clean close leaves no staging behind).
    pub fn drain_pool(&self) {
        self.pool_closed.store(true, Ordering::SeqCst);
        self.refill.lock().take();
        let pooled = {
            let mut pool = self.pool.lock();
            self.premade.store(0, Ordering::SeqCst);
            std::mem::take(&mut *pool)
        };
        for p in pooled {
            let _ = fs::remove_file(p.path);
        }
    }

    /// Ask `tx` for files made ahead whenever they run low (the spares thread).
    pub(crate) fn set_refill(&self, tx: Option<crossbeam_channel::Sender<()>>) {
        *self.refill.lock() = tx;
    }

    /// How many files made ahead are missing from a full pool.
    pub(crate) fn premade_missing(&self) -> usize {
        PREMADE_DEPTH.saturating_sub(self.premade.load(Ordering::SeqCst))
    }

    /// A new empty file for `put`, made ahead at `path` and still open as `file`.
    /// Returns false (the caller deletes it) once the pool is closed.
    pub(crate) fn offer(&self, path: PathBuf, file: fs::File) -> bool {
        let mut pool = self.pool.lock();
        if self.pool_closed.load(Ordering::SeqCst) {
            return false;
        }
        self.premade.fetch_add(1, Ordering::SeqCst);
        pool.push_back(Pooled {
            path,
            file: Some(file),
        });
        true
    }

    /// A file from the pool for `put`, nudging the spares thread when the files made
    /// ahead run a batch short.
    fn take_pooled(&self) -> Option<Pooled> {
        let (p, left) = {
            let mut pool = self.pool.lock();
            let p = pool.pop_front()?;
            // Counted under the pool's lock, as `offer` and `drain_pool` count.
            if p.file.is_some() {
                self.premade.fetch_sub(1, Ordering::SeqCst);
            }
            (p, self.premade.load(Ordering::SeqCst))
        };
        if p.file.is_some() && left + PREMADE_BATCH <= PREMADE_DEPTH {
            if let Some(tx) = self.refill.lock().as_ref() {
                let _ = tx.try_send(());
            }
        }
        Some(p)
    }

    /// (hits, misses) of the verified cache in this process (see `CACHE_HITS`).
    pub fn cache_counts() -> (u64, u64) {
        (
            CACHE_HITS.load(Ordering::Relaxed),
            CACHE_MISSES.load(Ordering::Relaxed),
        )
    }

    /// Drop blobs from the verified-chunk cache.
    pub fn forget(&self, hashes: &[Hash]) {
        let mut c = self.cache.lock();
        for h in hashes {
            c.forget(h);
        }
    }

    /// Keep a blob verified elsewhere (fetched from the object store) in the cache.
    pub(crate) fn remember(&self, hash: Hash, data: Arc<Chunk>) {
        self.cache.lock().insert(hash, data);
    }

    fn cached(&self, hash: &Hash) -> Option<Arc<Chunk>> {
        self.cache.lock().get(hash)
    }

    /// Read and verify a blob from disk, once at a time per hash: a reader that finds a
    /// load of the same blob under way waits for it and takes its result from the cache.
    fn load(&self, hash: &Hash) -> Result<Arc<Chunk>> {
        if let Some(d) = self.cached(hash) {
            return Ok(d);
        }
        let (gate, mine) = {
            let mut l = self.loading.lock();
            match l.get(hash) {
                Some(g) => (g.clone(), false),
                None => {
                    let g = Arc::new(Gate::default());
                    l.insert(*hash, g.clone());
                    (g, true)
                }
            }
        };
        if !mine {
            crate::blocking::soon();
            let mut done = gate.done.lock();
            while !*done {
                gate.cv.wait(&mut done);
            }
            drop(done);
            if let Some(d) = self.cached(hash) {
                return Ok(d);
            }
            // The load failed or its blob was too big to cache: read it ourselves, so
            // an error is reported to this reader too.
            return self.read_checked(hash);
        }
        let res = self.read_checked(hash);
        if let Ok(d) = &res {
            self.cache.lock().insert(*hash, d.clone());
        }
        self.loading.lock().remove(hash);
        *gate.done.lock() = true;
        gate.cv.notify_all();
        res
    }

    fn read_checked(&self, hash: &Hash) -> Result<Arc<Chunk>> {
        crate::blocking::soon();
        let path = self.path_of(hash);
        let (data, actual) = match read_hashing(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Integrity {
                    what: format!("blob {}", hash_hex(hash)),
                    detail: "missing".into(),
                })
            }
            Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
        };
        if &actual != hash {
            log::error!("blob {} failed verification", hash_hex(hash));
            return Err(Error::Integrity {
                what: format!("blob {}", hash_hex(hash)),
                detail: "content does not match its hash".into(),
            });
        }
        Ok(Arc::new(data))
    }

    pub fn path_of(&self, hash: &Hash) -> PathBuf {
        self.layout.blob_path(&hash_hex(hash))
    }

    /// Does `settle` wait (see `settle_waits`)?
    pub fn settle_waits(&self) -> bool {
        self.settle_waits
    }

    /// Write a blob that is not on disk yet: into a file from the pool if there is one,
    /// else into a new file in `sessions/`.
    fn write_new(
        &self,
        hash: Hash,
        data: &[u8],
        path: &std::path::Path,
        durable: bool,
    ) -> Result<()> {
        if let Some(p) = self.take_pooled() {
            let fresh = p.file.is_some();
            match self.install(hash, data, path, durable, p, fresh) {
                // A pooled file deleted under us (closing): write a new one.
                Err(Error::Io { ref source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                r => return r,
            }
        }
        let tmp = self.layout.sessions().join(format!(
            "blob.{}.{}.tmp",
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        let p = Pooled {
            path: tmp,
            file: None,
        };
        self.install(hash, data, path, durable, p, true)
    }

    /// Write `data` into a file from the pool (or a new one) and name it `path`.
    /// `fresh`: the file is a new inode (see `remember_unsynced`).
    fn install(
        &self,
        hash: Hash,
        data: &[u8],
        path: &std::path::Path,
        durable: bool,
        tmp: Pooled,
        fresh: bool,
    ) -> Result<()> {
        let Pooled { path: tmp, file } = tmp;
        let mut too_many = false;
        let res = (|| {
            let mut f = match file {
                Some(f) => f,
                None => fs::File::create(&tmp).ctx(|| format!("create {}", tmp.display()))?,
            };
            f.write_all(data)
                .ctx(|| format!("write {}", tmp.display()))?;
            if durable {
                crate::blocking::soon();
                f.sync_all().ctx(|| format!("sync {}", tmp.display()))?;
            } else {
                if self.settle_waits {
                    // Its record waits for these bytes (`settle`): on their way now.
                    // Not otherwise: a file deleted soon (sqlite's journal) would be
                    // written for nothing.
                    start_writeback(&f);
                }
                // Listed before it is named; if naming fails, `sync` cannot open it
                // and drops it.
                too_many = self.remember_unsynced(hash, path.to_path_buf(), f, fresh);
            }
            let dir = path.parent().expect("blob paths have a parent");
            if let Err(e) = fs::rename(&tmp, path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(Error::io(format!("install {}", path.display()), e));
                }
                fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
                fs::rename(&tmp, path).ctx(|| format!("install {}", path.display()))?;
            }
            if durable {
                sync_dir(dir)?;
            }
            if too_many {
                self.sync_filesystem()?;
            }
            Ok(())
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }
}

impl BlobStore for LocalBlobs {
    fn read_verified(&self, hash: &Hash) -> std::result::Result<Vec<u8>, Fault> {
        match fs::read(self.path_of(hash)) {
            Ok(d) if &hash_of(&d) == hash => Ok(d),
            Ok(_) => Err(Fault::Damaged),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Fault::Missing),
            Err(e) => Err(Fault::Unreadable(e.to_string())),
        }
    }

    fn exists(&self, hash: &Hash) -> bool {
        self.path_of(hash).exists()
    }

    fn restore(&self, data: &[u8]) -> Result<bool> {
        let h = hash_of(data);
        if self.read_verified(&h).is_ok() {
            // Reused, as `put` does: a sweep that looked before keeps it.
            let _ = touch(&self.path_of(&h));
            return Ok(false);
        }
        let path = self.path_of(&h);
        let dir = path.parent().expect("blob paths have a parent");
        fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
        let tmp = self.layout.sessions().join(format!(
            "blob.{}.{}.tmp",
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        let res = (|| {
            fs::write(&tmp, data).ctx(|| format!("write {}", tmp.display()))?;
            fs::rename(&tmp, &path).ctx(|| format!("install {}", path.display()))
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        self.forget(&[h]);
        res.map(|()| true)
    }

    /// The rename-aside protocol: `put` refreshes the mtime of a blob it reuses, so a
    /// blob is first renamed out of `blobs/`, then kept (renamed back) if it was touched
    /// at or after `since`, else freed (its file recycled for a later `put`).
    fn delete(&self, hash: &Hash, since: SystemTime) -> Result<Deleted> {
        let path = self.path_of(hash);
        // A name of its own: two sweeps (the daemon's and an online gc) may delete the
        // same hash at once, and one must never move aside, then free, the copy a writer
        // put again after the other moved the old one aside.
        let doomed = self.layout.sessions().join(format!(
            "doomed.{}.{}.{}.tmp",
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed),
            hash_hex(hash)
        ));
        match fs::rename(&path, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Deleted::Absent),
            Err(e) => return Err(Error::io(format!("move aside {}", path.display()), e)),
        }
        let touched = fs::metadata(&doomed)
            .and_then(|m| m.modified())
            .map(|t| t >= since)
            .unwrap_or(true);
        if touched {
            // A writer reused this blob while we were looking: keep it.
            fs::rename(&doomed, &path).ctx(|| format!("move back {}", path.display()))?;
            return Ok(Deleted::Reused);
        }
        let freed = self.recycle(&doomed);
        self.forget(&[*hash]);
        Ok(Deleted::Freed(freed))
    }

    fn list(&self, visit: &mut dyn FnMut(Listed)) -> Result<()> {
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let shards = match fs::read_dir(self.layout.blobs()) {
            Err(e) if gone(&e) => return Ok(()), // no blob yet
            r => r.ctx(|| "read blobs".into())?,
        };
        for a in shards {
            let a = a.ctx(|| "read blobs".into())?;
            let an = a.file_name().to_string_lossy().into_owned();
            if !is_hex(&an, 2) || !a.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                visit(Listed::Stray {
                    path: a.path(),
                    why: "not a blob shard directory",
                });
                continue;
            }
            let what = || format!("read {}", a.path().display());
            let entries = match fs::read_dir(a.path()) {
                Err(e) if gone(&e) => continue, // removed meanwhile
                r => r.ctx(what)?,
            };
            for b in entries {
                let b = b.ctx(what)?;
                let bn = b.file_name().to_string_lossy().into_owned();
                let md = match fs::symlink_metadata(b.path()) {
                    Ok(md) => md,
                    Err(e) if gone(&e) => continue, // deleted meanwhile
                    Err(e) => return Err(Error::io(format!("stat {}", b.path().display()), e)),
                };
                match parse_hash(&bn) {
                    Some(hash) if bn.starts_with(&an) && md.is_file() => visit(Listed::Blob {
                        hash,
                        len: md.len(),
                        written: md.modified().unwrap_or_else(|_| SystemTime::now()),
                    }),
                    _ => visit(Listed::Stray {
                        path: b.path(),
                        why: "not a blob (name is not a hash)",
                    }),
                }
            }
        }
        Ok(())
    }

    /// Load a blob into the cache in the background, unless it is there, already being
    /// loaded, or enough prefetches run. Errors are left for the real read to report.
    fn prefetch(self: Arc<Self>, hash: Hash) {
        if self.cached(&hash).is_some() || self.loading.lock().contains_key(&hash) {
            return;
        }
        if self.prefetching.fetch_add(1, Ordering::AcqRel) >= PREFETCH_MAX {
            self.prefetching.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("decofs-prefetch".into())
            .spawn(move || {
                let _ = me.load(&hash);
                me.prefetching.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            self.prefetching.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Forget a cached copy (used by tests that corrupt a blob on disk).
    fn drop_cache(&self) {
        let mut c = self.cache.lock();
        c.map.clear();
        c.order.clear();
        c.bytes = 0;
    }
    fn is_unsynced(&self, hash: &Hash) -> bool {
        self.not_durable.lock().contains_key(hash)
    }

    fn put(&self, data: &[u8], durable: bool) -> Result<Hash> {
        let hash = hash_of(data);
        let path = self.path_of(&hash);
        // Reusing an existing blob refreshes its mtime, so a concurrent sweep keeps it
        // (see store::trash); if it vanished meanwhile, write it again.
        // A copy of the wrong length (a power cut on ext4 without a journal leaves a
        // new blob empty) is written again rather than named once more.
        match touch(&path).and_then(|()| fs::metadata(&path)) {
            Ok(m) if m.len() == data.len() as u64 => return Ok(hash),
            Ok(_) => log::warn!("blob {}: damaged copy written again", hash_hex(&hash)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("touch {}", path.display()), e)),
        }
        self.write_new(hash, data, &path, durable)?;
        // A blob an fsync may soon copy into the fsync log (one it can carry) is kept
        // verified in memory: the copy then reads no file and hashes nothing again.
        if !durable && data.len() <= CARRY_MAX {
            self.cache
                .lock()
                .insert(hash, Arc::new(Chunk::from(data.to_vec())));
        }
        Ok(hash)
    }

    fn get(&self, hash: &Hash) -> Result<Arc<Chunk>> {
        if let Some(d) = self.cached(hash) {
            CACHE_HITS.fetch_add(1, Ordering::Relaxed);
            return Ok(d);
        }
        CACHE_MISSES.fetch_add(1, Ordering::Relaxed);
        self.load(hash)
    }

    fn settle(&self, hashes: &[Hash]) -> Result<()> {
        if !self.settle_waits {
            return Ok(());
        }
        let pending: Vec<PathBuf> = {
            let nd = self.not_durable.lock();
            hashes
                .iter()
                .filter(|h| nd.contains_key(*h))
                .map(|h| self.path_of(h))
                .collect()
        };
        for p in pending {
            let f = match fs::File::open(&p) {
                Ok(f) => f,
                // Not expected (a session just put it); there is nothing left to wait
                // for, and whether the record may name it is `put`'s concern.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("open {}", p.display()), e)),
            };
            wait_written(&f).ctx(|| format!("write {}", p.display()))?;
        }
        Ok(())
    }

    /// fsync every unsynced blob, then the directories that name them. On ext4 a blob
    /// whose descriptor is still held needs no directory fsync: its inode carries the
    /// new-entry state from the rename, and ext4's fsync then writes the parent's entry
    /// (no journal: `ext4_sync_parent`) or commits the transaction that holds the rename
    /// (journal). Holding the descriptor keeps the inode, and so that state, in memory.
    /// Checked on this machine for both modes: after the file fsync alone the entry is
    /// on the device (`debugfs`, after a journal replay of a copy of the image).
    fn sync(&self) -> Result<()> {
        let list = std::mem::take(&mut *self.unsynced.lock());
        let mut dirs = std::collections::BTreeSet::new();
        let mut synced = Vec::with_capacity(list.len());
        let mut it = list.into_iter();
        while let Some(u) = it.next() {
            let (f, held) = match u.file {
                Some(f) => (f, self.name_rides_fsync),
                None => match fs::File::open(&u.path) {
                    Ok(f) => (f, false),
                    Err(_) => {
                        synced.push(u.hash); // swept meanwhile: nothing needs it
                        continue;
                    }
                },
            };
            crate::blocking::soon();
            if let Err(e) = f.sync_all() {
                // Keep what is not synced for the next attempt (by path, dir included).
                let mut back = self.unsynced.lock();
                back.push(Unsynced {
                    hash: u.hash,
                    path: u.path.clone(),
                    file: None,
                });
                back.extend(it.map(|r| Unsynced {
                    hash: r.hash,
                    path: r.path,
                    file: None,
                }));
                drop(back);
                self.now_durable(synced);
                return Err(Error::io(format!("sync {}", u.path.display()), e));
            }
            synced.push(u.hash);
            if !held {
                if let Some(d) = u.path.parent() {
                    dirs.insert(d.to_path_buf());
                }
            }
        }
        for d in dirs {
            sync_dir(&d)?;
        }
        self.now_durable(synced);
        Ok(())
    }
}

/// The pid and hash in `doomed.<pid>.<seq>.<hash>.tmp`, the name a sweep gives a blob
/// it moved aside (`delete`).
pub fn parse_doomed(name: &str) -> Option<(i32, Hash)> {
    let rest = name.strip_prefix("doomed.")?.strip_suffix(".tmp")?;
    let mut parts = rest.split('.');
    let pid = parts.next()?.parse::<i32>().ok()?;
    let hash = parts.nth(1).and_then(parse_hash)?;
    Some((pid, hash))
}

/// Start writing a file's dirty pages to the device, without waiting. Advisory: a
/// failure leaves the work to `wait_written`.
fn start_writeback(f: &fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a syscall on a descriptor `f` keeps open; no memory is passed.
    unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Write a file's dirty pages and wait until every page of it is written to the device
/// (its device cache is not flushed: that is fsync's job). A write error shows here.
fn wait_written(f: &fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: as in `start_writeback`.
    if unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Read a whole blob file and hash it.
///
/// A cold blob of 1 MiB or more (its first page is not in the page cache) is read with
/// O_DIRECT straight into an aligned buffer: one request for the whole chunk and no copy
/// out of the page cache, which was the largest CPU cost of a cold sequential read. A
/// blob still in the page cache (e.g. just written) is read through it, a piece at a
/// time, hashing each piece while the kernel's readahead fetches the next.
fn read_hashing(path: &std::path::Path) -> std::io::Result<(Chunk, Hash)> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    const PIECE: usize = 512 << 10;
    const DIRECT_MIN: usize = 1 << 20;
    let mut f = fs::File::open(path)?;
    let len = f.metadata()?.len() as usize;
    if len >= DIRECT_MIN && !first_page_cached(&f) {
        if let Some(c) = read_direct(path, len)? {
            let h = hash_of(&c);
            return Ok((c, h));
        }
    }
    if len > PIECE {
        // SAFETY: a plain advice call on a descriptor we own; failure only loses speed.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED) };
    }
    let mut data = Vec::with_capacity(len);
    let mut hasher = blake3::Hasher::new();
    loop {
        // read_to_end fills spare capacity without zeroing it first.
        let from = data.len();
        let n = (&mut f).take(PIECE as u64).read_to_end(&mut data)?;
        hasher.update(&data[from..]);
        if n == 0 {
            break; // a size change while we read shows up in the hash check
        }
    }
    Ok((data.into(), *hasher.finalize().as_bytes()))
}

/// Is the first page of this file in the page cache? (A one-byte read that may not block.)
fn first_page_cached(f: &fs::File) -> bool {
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 1];
    let iov = libc::iovec {
        iov_base: b.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: one valid iovec over a live buffer; the descriptor is ours.
    let r = unsafe { libc::preadv2(f.as_raw_fd(), &iov, 1, 0, libc::RWF_NOWAIT) };
    // EAGAIN: not cached. Any other failure (e.g. RWF_NOWAIT unsupported): take the
    // buffered path, which always works.
    r >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN)
}

/// The whole file with O_DIRECT, or None where the filesystem does not support it.
fn read_direct(path: &std::path::Path, len: usize) -> std::io::Result<Option<Chunk>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    const ALIGN: usize = 4096;
    let f = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
        Err(e) => return Err(e),
    };
    let rounded = len.div_ceil(ALIGN) * ALIGN;
    let mut buf: Vec<u8> = Vec::with_capacity(rounded + ALIGN);
    let start = buf.as_ptr().align_offset(ALIGN);
    buf.resize(start, 0);
    let mut done = 0;
    while done < rounded {
        // SAFETY: the destination lies inside buf's capacity (start + rounded <= cap),
        // is ALIGN-aligned, and so are the length and the file offset.
        let n = unsafe {
            libc::pread(
                f.as_raw_fd(),
                buf.as_mut_ptr().add(start + done).cast(),
                rounded - done,
                done as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            if e.raw_os_error() == Some(libc::EINVAL) && done == 0 {
                return Ok(None); // alignment this device does not accept
            }
            return Err(e);
        }
        let n = n as usize;
        // SAFETY: the kernel initialized these n bytes.
        unsafe { buf.set_len(start + done + n) };
        done += n;
        if n == 0 || !n.is_multiple_of(ALIGN) {
            break; // end of file (a size change shows up in the hash check)
        }
    }
    Ok(Some(Chunk { buf, start }))
}

/// Is `path` on ext4?
fn is_ext4(path: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const EXT4_SUPER_MAGIC: libc::c_long = 0xEF53;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: c is NUL-terminated and st is a plain out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above: c outlives the call, st is ours to fill.
    unsafe {
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as libc::c_long == EXT4_SUPER_MAGIC
    }
}

/// Is `path` on ext4 mounted without a journal? Its options in /proc/fs/ext4 then name
/// no `data=` mode. False where that cannot be told.
fn ext4_without_journal(path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if !is_ext4(path) {
        return false;
    }
    let Ok(dev) = fs::metadata(path).map(|m| m.dev()) else {
        return false;
    };
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let Ok(link) = fs::read_link(format!("/sys/dev/block/{major}:{minor}")) else {
        return false;
    };
    let Some(name) = link.file_name() else {
        return false;
    };
    let options = std::path::Path::new("/proc/fs/ext4")
        .join(name)
        .join("options");
    match fs::read_to_string(options) {
        Ok(o) => !o.lines().any(|l| l.starts_with("data=")),
        Err(_) => false,
    }
}

/// Set a file's mtime to now.
fn touch(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: c is NUL-terminated; a null times pointer means "now" for both times.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs() -> (tempfile::TempDir, LocalBlobs) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        fs::create_dir_all(layout.sessions()).unwrap();
        fs::create_dir_all(layout.blobs()).unwrap();
        (dir, LocalBlobs::new(layout, 1 << 20))
    }

    /// The verified cache after many forgets: bytes stay exact, a chunk forgotten and
    /// cached again is not evicted by its old place in line, and the line stays bounded.
    #[test]
    fn cache_forget_is_exact_and_bounded() {
        let mut c = Cache {
            map: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
            bytes: 0,
            limit: 40,
        };
        let h = |i: u8| [i; 32];
        let chunk = |n: usize| Arc::new(Chunk::from(vec![0u8; n]));
        for round in 0..10_000u32 {
            let i = (round % 200) as u8;
            c.insert(h(i), chunk(1));
            c.forget(&h(i));
        }
        assert_eq!((c.bytes, c.map.len()), (0, 0));
        assert!(c.order.len() <= 1024 + 1, "{} left in line", c.order.len());
        // a, b in; a forgotten and cached again; c pushes out the oldest live one: b.
        c.insert(h(1), chunk(10));
        c.insert(h(2), chunk(10));
        c.forget(&h(1));
        c.insert(h(1), chunk(10));
        c.insert(h(3), chunk(10));
        c.insert(h(4), chunk(10));
        assert_eq!(c.bytes, 40);
        c.insert(h(5), chunk(10));
        assert!(c.get(&h(2)).is_none());
        assert!(
            c.get(&h(1)).is_some(),
            "its old place in line did not evict it"
        );
        assert_eq!(c.bytes, 40);
    }

    #[test]
    fn put_get_roundtrip_and_dedup() {
        let (_d, b) = blobs();
        let h = b.put(b"hello", false).unwrap();
        assert_eq!(h, hash_of(b"hello"));
        assert_eq!(b.put(b"hello", true).unwrap(), h);
        assert_eq!(&**b.get(&h).unwrap(), b"hello");
        // No staging files are left behind.
        let staged: Vec<_> = fs::read_dir(b.layout.sessions()).unwrap().collect();
        assert!(staged.is_empty());
    }

    /// A blob whose file a power cut left empty is written again by the next `put` of
    /// the same bytes, not named as it is (which would read EIO until fsck repaired it).
    #[test]
    fn put_rewrites_a_damaged_copy() {
        let (_d, b) = blobs();
        let h = b.put(b"hello", true).unwrap();
        fs::File::create(b.path_of(&h)).unwrap(); // emptied, as the cut leaves it
        b.drop_cache();
        assert!(b.get(&h).is_err());
        assert_eq!(b.put(b"hello", false).unwrap(), h);
        assert_eq!(fs::read(b.path_of(&h)).unwrap(), b"hello");
        b.drop_cache();
        assert_eq!(&**b.get(&h).unwrap(), b"hello");
    }

    /// Files made ahead are written and named by `put` (no file is left where they
    /// were made), a batch taken asks for more, and closing deletes the unused ones.
    #[test]
    fn put_writes_files_made_ahead_and_close_deletes_the_rest() {
        let (_d, b) = blobs();
        let stage = b.layout.sessions().join("spare.1.1.tmp");
        fs::create_dir(&stage).unwrap();
        let (tx, rx) = crossbeam_channel::bounded(1);
        b.set_refill(Some(tx));
        let made: Vec<PathBuf> = (0..PREMADE_DEPTH)
            .map(|i| {
                let p = stage.join(format!("{i}.blob"));
                let f = fs::File::create_new(&p).unwrap();
                assert!(b.offer(p.clone(), f));
                p
            })
            .collect();
        assert_eq!(b.premade_missing(), 0);
        let mut hashes = Vec::new();
        for (i, p) in made.iter().take(PREMADE_BATCH).enumerate() {
            let data = format!("content {i}").into_bytes();
            let h = b.put(&data, i % 2 == 0).unwrap();
            assert!(!p.exists(), "file made ahead is renamed into place");
            assert_eq!(fs::read(b.path_of(&h)).unwrap(), data);
            hashes.push((h, data));
        }
        assert_eq!(b.premade_missing(), PREMADE_BATCH);
        assert!(rx.try_recv().is_ok(), "a missing batch asks for more");
        // The unsynced ones are synced through their held descriptors.
        b.sync().unwrap();
        b.drop_cache();
        for (h, data) in &hashes {
            assert!(!b.is_unsynced(h));
            assert_eq!(&**b.get(h).unwrap(), &data[..]);
        }
        b.drain_pool();
        assert_eq!(
            fs::read_dir(&stage).unwrap().count(),
            0,
            "closing deletes the rest"
        );
        let late = stage.join("late.blob");
        assert!(!b.offer(late.clone(), fs::File::create_new(&late).unwrap()));
        // Without a pool, put makes its own file.
        let h = b.put(b"after close", false).unwrap();
        assert_eq!(&**b.get(&h).unwrap(), b"after close");
    }

    /// Invariant 5: a flipped byte on disk is an integrity error, never wrong bytes.
    #[test]
    fn corrupted_blob_is_refused() {
        let (_d, b) = blobs();
        let h = b.put(b"precious bytes", false).unwrap();
        let p = b.path_of(&h);
        let mut data = fs::read(&p).unwrap();
        data[3] ^= 1;
        fs::write(&p, &data).unwrap();
        b.drop_cache();
        match b.get(&h) {
            Err(Error::Integrity { .. }) => {}
            other => panic!("expected integrity error, got {:?}", other.map(|d| d.len())),
        }
        fs::remove_file(&p).unwrap();
        assert!(matches!(b.get(&h), Err(Error::Integrity { .. })));
    }

    /// Write `data` to `p` and push it out of the page cache, so the next read of it
    /// is cold (and takes the O_DIRECT path where the filesystem has one).
    fn write_cold(p: &std::path::Path, data: &[u8]) {
        use std::os::fd::AsRawFd;
        fs::write(p, data).unwrap();
        let f = fs::File::open(p).unwrap();
        f.sync_all().unwrap();
        // SAFETY: advice on a descriptor we own.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }

    /// Blobs read warm (in pieces through the page cache) and cold (O_DIRECT): every
    /// byte comes back, and a flip in the last byte or a missing byte is caught.
    #[test]
    fn large_blobs_read_warm_and_cold_and_flips_are_caught() {
        let (_d, b) = blobs();
        let data: Vec<u8> = (0..(3 << 20) + 17).map(|i: u32| (i % 251) as u8).collect();
        let h = b.put(&data, false).unwrap();
        let p = b.path_of(&h);
        let mut bad = data.clone();
        *bad.last_mut().unwrap() ^= 1;
        for cold in [false, true] {
            let put = |bytes: &[u8]| {
                if cold {
                    write_cold(&p, bytes)
                } else {
                    fs::write(&p, bytes).unwrap()
                }
            };
            put(&data);
            b.drop_cache();
            assert!(**b.get(&h).unwrap() == data[..], "cold {cold}");
            put(&bad);
            b.drop_cache();
            assert!(
                matches!(b.get(&h), Err(Error::Integrity { .. })),
                "cold {cold}"
            );
            put(&data[..data.len() - 1]);
            b.drop_cache();
            assert!(
                matches!(b.get(&h), Err(Error::Integrity { .. })),
                "cold {cold}"
            );
        }
        // An exact multiple of the page size, cold.
        let even: Vec<u8> = (0..2u32 << 20).map(|i| (i % 253) as u8).collect();
        let h2 = b.put(&even, false).unwrap();
        write_cold(&b.path_of(&h2), &even);
        b.drop_cache();
        assert!(**b.get(&h2).unwrap() == even[..]);
    }
}
