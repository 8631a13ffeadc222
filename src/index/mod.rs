//! The metadata index: a cache of the tree in sled, fed by the store's change events
//! (invariant 8). It answers `find`, `du` and `changes`; no filesystem answer ever
//! comes from it.
//!
//! - The store emits an [`Event`] after every mutation into a bounded crossbeam
//!   channel ([`Queue`]). `try_send` never blocks a filesystem call: when the channel is
//!   full the event is dropped and the index is marked dirty.
//! - One worker thread applies events in batches ([`apply::Applier`]): it re-reads the
//!   records and entries an event names, so late or reordered events still converge.
//! - The reconciler rebuilds a new generation of the trees from the tree on disk and
//!   switches to it; it runs when the index is dirty, when the last shutdown was not
//!   clean (or someone else wrote the store since: the lock epoch moved), and on
//!   `decofs index rebuild`. What it repaired is counted and logged as changes.
//! - A clean close records the lock epoch; the next open at the following epoch trusts
//!   the index without a walk. An index that cannot be opened is deleted and rebuilt.
//! - A query first checks the index is current (every emitted event applied, nothing
//!   dropped, no reconcile running); otherwise it fails with `resource_not_consistent`,
//!   or waits (`wait`), or answers anyway saying so (`stale`).

pub mod apply;
pub mod query;
pub mod tables;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError, TrySendError};
use serde_json::{json, Value};

use crate::store::event::{Event, EventSink, Op};
use crate::store::{Error, NodeId, Result, Store, Time};
use apply::Applier;
use tables::{enc, Change, Gen, SledResult};

/// Events the channel holds before a burst overflows it.
pub const QUEUE_CAPACITY: usize = 1 << 16;
/// At most this many events are applied per batch (one lock, one set of totals writes).
const BATCH: usize = 4096;

/// How long the worker, rung awake by the first event after it slept, lets events
/// gather before it applies them: one wake-up per window instead of one per event
/// (docs/BENCHMARKS.md, "sqlite in DELETE mode": each wake-up of an idle thread costs
/// the request that rang it an inter-processor interrupt on these virtual machines).
const GATHER: Duration = Duration::from_millis(5);
/// The change log keeps the newest this many entries.
const CHANGES_KEEP: u64 = 1_000_000;
/// A reconcile logs at most this many repaired paths as changes.
const RECONCILE_LOG_MAX: usize = 100_000;
const FORMAT: &[u8] = b"decofs-index 1";
/// `index verify` reports at most this many differing paths.
pub const MAX_VERIFY_EXAMPLES: usize = 20;

fn now_ns() -> u64 {
    let t = Time::now();
    (t.secs as u64) * 1_000_000_000 + t.nanos as u64
}

fn time_ns(t: Time) -> u64 {
    (t.secs.max(0) as u64) * 1_000_000_000 + t.nanos as u64
}

/// The store side of the channel: counts what went in and notices overflow.
pub struct Queue {
    tx: Sender<Event>,
    /// Events queued (dropped ones are not counted: they make the index dirty).
    emitted: AtomicU64,
    /// Events the worker took off the queue and applied (or superseded by a reconcile).
    applied: AtomicU64,
    dropped: AtomicU64,
    dirty: AtomicBool,
    dirty_since_ns: AtomicU64,
    dirty_why: Mutex<String>,
    reconciling: AtomicBool,
    /// When the event the worker is applying was emitted (0 when idle).
    head_ns: AtomicU64,
    stop: AtomicBool,
    /// Wakes the worker when it sleeps (see [`Bell`]).
    bell: Bell,
}

impl Queue {
    fn mark_dirty(&self, why: &str) {
        if !self.dirty.swap(true, Ordering::SeqCst) {
            self.dirty_since_ns.store(now_ns(), Ordering::SeqCst);
            *self.dirty_why.lock() = why.to_string();
        }
        self.bell.ring();
    }
}

/// How the worker sleeps until there is work. A blocking `recv` on a crossbeam channel
/// spins and calls sched_yield several times before it parks: with an event every few
/// hundred microseconds (one per create) the worker did ~7 sched_yield per event on
/// a 2-core machine, each a chance to switch away from the thread serving the request.
/// Here the worker parks at once on a condvar, and a sender rings only if it sleeps.
#[derive(Default)]
struct Bell {
    sleeping: AtomicBool,
    m: Mutex<()>,
    cv: parking_lot::Condvar,
}

impl Bell {
    fn ring(&self) {
        // Pairs with the fence in `sleep`: either the sender sees `sleeping`, or the
        // worker's `ready` sees what the sender did before ringing.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            let _g = self.m.lock();
            self.cv.notify_one();
        }
    }

    /// Sleep until rung or `timeout`, unless `ready` already holds.
    fn sleep(&self, timeout: Duration, ready: impl Fn() -> bool) {
        let mut g = self.m.lock();
        self.sleeping.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        if !ready() {
            self.cv.wait_for(&mut g, timeout);
        }
        self.sleeping.store(false, Ordering::SeqCst);
    }
}

impl EventSink for Queue {
    fn emit(&self, ev: Event) {
        match self.tx.try_send(ev) {
            Ok(()) => {
                self.emitted.fetch_add(1, Ordering::SeqCst);
                self.bell.ring();
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.mark_dirty("the change queue overflowed");
            }
        }
    }
}

/// Tuning of a live index (mount options).
#[derive(Clone, Copy, Debug)]
pub struct IndexOpts {
    /// Capacity of the change queue (index_queue=N).
    pub queue: usize,
    /// Pause after every batch (index_delay=MS): makes lag visible on purpose, for
    /// testing how queries and status report it.
    pub delay: Duration,
}

impl Default for IndexOpts {
    fn default() -> Self {
        IndexOpts {
            queue: QUEUE_CAPACITY,
            delay: Duration::ZERO,
        }
    }
}

pub struct Index {
    store: Arc<Store>,
    opts: IndexOpts,
    path: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    changes: sled::Tree,
    /// The generation queries read; the worker holds the write side while it applies
    /// a batch, so no query sees half a batch.
    gen: RwLock<Arc<Gen>>,
    /// Serializes everything that changes the trees (batches, reconciles, verify).
    writer: Mutex<()>,
    next_seq: AtomicU64,
    q: Arc<Queue>,
    rx: Receiver<Event>,
    worker: Mutex<Option<JoinHandle<()>>>,
    last_reconcile: Mutex<Value>,
    /// A worker follows events (a mount); otherwise the index is queried once.
    live: bool,
}

fn open_db(path: &Path) -> Result<sled::Db> {
    sled::Config::new()
        .path(path)
        .cache_capacity(64 << 20)
        .mode(sled::Mode::HighThroughput)
        // No periodic fsync: after a crash the index is reconciled anyway; a clean
        // close flushes.
        .flush_every_ms(None)
        .open()
        .ix()
}

impl Index {
    /// Open (or create) the index of `store`, which must be open read-write. With
    /// `live`, a worker thread follows the store's events from now on; without, the
    /// index is made current before this returns.
    pub fn open(store: Arc<Store>, live: bool, opts: IndexOpts) -> Result<Arc<Index>> {
        let epoch = store
            .epoch()
            .ok_or_else(|| Error::IndexUnavailable("the store is open read-only".into()))?;
        let path = store.layout.root.join("index");
        let mut why: Option<String> = None;
        let db = match open_db(&path).and_then(|db| {
            let meta = db.open_tree("meta").ix()?;
            match meta.get("format").ix()? {
                Some(f) if f.as_ref() == FORMAT => Ok(db),
                None if !db.was_recovered() => Ok(db),
                Some(f) => Err(Error::IndexCorrupt(format!(
                    "unknown index format {:?}",
                    String::from_utf8_lossy(&f)
                ))),
                None => Err(Error::IndexCorrupt("no format record".into())),
            }
        }) {
            Ok(db) => db,
            Err(e) => {
                log::warn!(
                    "index at {} is unreadable ({e}); deleting it and rebuilding it from the tree (nothing in the filesystem is affected)",
                    path.display()
                );
                let _ = std::fs::remove_dir_all(&path);
                why = Some(format!("the index was unreadable ({e}) and is rebuilt"));
                open_db(&path)?
            }
        };
        let meta = db.open_tree("meta").ix()?;
        let fresh = meta.get("format").ix()?.is_none();
        meta.insert("format", FORMAT).ix()?;
        if meta.get("log_id").ix()?.is_none() {
            meta.insert("log_id", uuid::Uuid::new_v4().to_string().as_bytes())
                .ix()?;
        }
        let changes = db.open_tree("changes").ix()?;
        let gen_id = match meta.get("gen").ix()? {
            Some(v) if v.len() == 8 => u64::from_be_bytes(v.as_ref().try_into().unwrap()),
            _ => 0,
        };
        let gen = Gen::open(&db, gen_id)?;
        let clean = match meta.get("clean_epoch").ix()? {
            Some(v) if v.len() == 8 => Some(u64::from_be_bytes(v.as_ref().try_into().unwrap())),
            _ => None,
        };
        let fast = !fresh && why.is_none() && clean.map(|c| c + 1) == Some(epoch);
        if why.is_none() {
            why = Some(if fresh {
                "a new index is built".to_string()
            } else if clean.is_none() {
                "the index was not closed cleanly".to_string()
            } else {
                "the store was changed without this index since it was closed".to_string()
            });
        }
        // From now on a crash leaves the index marked unclean.
        meta.remove("clean_epoch").ix()?;
        db.flush().ix()?;
        let last = changes
            .last()
            .ix()?
            .map(|(k, _)| u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])))
            .unwrap_or(0);
        let stored_next = meta
            .get("next_seq")
            .ix()?
            .filter(|v| v.len() == 8)
            .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap()))
            .unwrap_or(1);
        let (tx, rx) = bounded(opts.queue.max(1));
        let q = Arc::new(Queue {
            tx,
            emitted: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            dirty_since_ns: AtomicU64::new(0),
            dirty_why: Mutex::new(String::new()),
            reconciling: AtomicBool::new(false),
            head_ns: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            bell: Bell::default(),
        });
        let ix = Arc::new(Index {
            store: store.clone(),
            opts,
            path,
            db,
            meta,
            changes,
            gen: RwLock::new(Arc::new(gen)),
            writer: Mutex::new(()),
            next_seq: AtomicU64::new(stored_next.max(last + 1)),
            q: q.clone(),
            rx,
            worker: Mutex::new(None),
            last_reconcile: Mutex::new(Value::Null),
            live,
        });
        if fast {
            *ix.last_reconcile.lock() = json!({
                "at": now_ns() / 1_000_000_000,
                "kind": "fast",
                "reason": format!("closed cleanly at epoch {}", epoch - 1),
                "repaired": 0,
            });
            log::info!("index: closed cleanly last time, trusted without a walk");
        } else {
            let why = why.unwrap_or_default();
            log::info!("index: {why}; reconciling with the tree");
            q.mark_dirty(&why);
        }
        if live {
            store
                .followers
                .set_sink(Some(q.clone() as Arc<dyn EventSink>));
            let w = ix.clone();
            let h = std::thread::Builder::new()
                .name("index".into())
                .stack_size(16 << 20)
                .spawn(move || {
                    // A cache is background work: filesystem threads come first.
                    // SAFETY: setpriority on this thread (Linux: per-thread nice).
                    unsafe {
                        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10)
                    };
                    w.work()
                })
                .map_err(|e| Error::io("spawn the index worker", e))?;
            *ix.worker.lock() = Some(h);
        } else if !fast {
            ix.q.dirty.store(false, Ordering::SeqCst);
            let why = ix.q.dirty_why.lock().clone();
            ix.reconcile(&why)?;
        }
        Ok(ix)
    }

    /// Stop following events, apply what is queued, and mark the index clean if it
    /// is current (the next open at the next epoch then skips the walk).
    pub fn close(&self) {
        if self.live {
            self.store.followers.set_sink(None);
        }
        self.q.stop.store(true, Ordering::SeqCst);
        self.q.bell.ring();
        if let Some(h) = self.worker.lock().take() {
            let _ = h.join();
        }
        let _w = self.writer.lock();
        let current = !self.q.dirty.load(Ordering::SeqCst) && self.store.still_writer();
        let _ = self.meta.insert(
            "next_seq",
            &self.next_seq.load(Ordering::SeqCst).to_be_bytes(),
        );
        if current {
            if let Some(e) = self.store.epoch() {
                let _ = self.meta.insert("clean_epoch", &e.to_be_bytes());
            }
        }
        if let Err(e) = self.db.flush() {
            log::warn!("index: flush at close failed: {e}");
        }
    }

    /// The worker: batches of events, and a reconcile whenever the index is dirty.
    fn work(&self) {
        loop {
            let stopping = self.q.stop.load(Ordering::SeqCst);
            if self.q.dirty.load(Ordering::SeqCst) && !stopping {
                // The walk sees everything queued so far; what happens during it is
                // queued (or overflows and makes the index dirty again). Queued events
                // are kept for the change log and applied after the walk (applying one
                // twice is harmless), unless the queue is so full that the walk would
                // overflow it: then they go, and the reconcile logs what it finds.
                if self.rx.len() > self.opts.queue / 2 {
                    while self.rx.try_recv().is_ok() {
                        self.q.applied.fetch_add(1, Ordering::SeqCst);
                    }
                }
                self.q.dirty.store(false, Ordering::SeqCst);
                let why = self.q.dirty_why.lock().clone();
                if let Err(e) = self.reconcile(&why) {
                    log::error!("index: reconcile failed: {e}; retrying in 5 s");
                    self.q
                        .mark_dirty(&format!("the last reconcile failed: {e}"));
                    std::thread::sleep(Duration::from_secs(5));
                }
                continue;
            }
            let first = match self.rx.try_recv() {
                Ok(ev) => ev,
                Err(TryRecvError::Empty) if stopping => return,
                Err(TryRecvError::Empty) => {
                    self.q.bell.sleep(Duration::from_millis(200), || {
                        !self.rx.is_empty()
                            || self.q.stop.load(Ordering::SeqCst)
                            || self.q.dirty.load(Ordering::SeqCst)
                    });
                    // Not sleeping now, so the events of the window ring no one.
                    if !self.q.stop.load(Ordering::SeqCst) && !self.rx.is_empty() {
                        std::thread::sleep(GATHER);
                    }
                    continue;
                }
                Err(TryRecvError::Disconnected) => return,
            };
            self.q.head_ns.store(time_ns(first.at), Ordering::SeqCst);
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match self.rx.try_recv() {
                    Ok(ev) => batch.push(ev),
                    Err(_) => break,
                }
            }
            let n = batch.len() as u64;
            if let Err(e) = self.apply_batch(&batch) {
                log::warn!("index: applying {n} event(s) failed: {e}; reconciling");
                self.q.mark_dirty(&format!("applying events failed: {e}"));
            }
            if !self.opts.delay.is_zero() {
                std::thread::sleep(self.opts.delay);
            }
            self.q.head_ns.store(0, Ordering::SeqCst);
            self.q.applied.fetch_add(n, Ordering::SeqCst);
        }
    }

    fn apply_batch(&self, batch: &[Event]) -> Result<()> {
        let _w = self.writer.lock();
        let gen = self.gen.write();
        let mut a = Applier::new(&gen, &self.store);
        let mut log = Vec::with_capacity(batch.len());
        // Every event of the batch happened before the batch was taken off the queue,
        // so one read of each entry and record sees all of them: refresh each once.
        let mut entries_done = std::collections::HashSet::new();
        let mut nodes = Vec::new();
        let mut nodes_seen = std::collections::HashSet::new();
        for ev in batch {
            for (p, name) in &ev.entries {
                if entries_done.insert((*p, name.clone())) {
                    a.refresh_entry(*p, name)?;
                }
            }
            for n in &ev.nodes {
                if nodes_seen.insert(*n) {
                    nodes.push(*n);
                }
            }
            let mut entry_path = |i: usize| -> Result<Option<Vec<u8>>> {
                let Some((p, name)) = ev.entries.get(i) else {
                    return Ok(None);
                };
                Ok(a.dir_path(*p)?.map(|pp| join(&pp, name.as_encoded_bytes())))
            };
            let (path, to) = match ev.op {
                Op::Rename | Op::Exchange => {
                    let from = entry_path(0)?;
                    (from, entry_path(1)?)
                }
                Op::Create | Op::Link | Op::Unlink | Op::Rmdir | Op::Restore => {
                    (entry_path(0)?, None)
                }
                Op::Attr | Op::Xattr | Op::Write | Op::Revert => match ev.nodes.first() {
                    Some(id) => (a.node_path(*id)?, None),
                    None => (None, None),
                },
            };
            log.push(Change {
                seq: 0,
                at: ev.at,
                op: ev.op.name().to_string(),
                node: ev.nodes.first().copied(),
                path,
                to,
                reconciled: false,
            });
        }
        for n in nodes {
            a.refresh_node(n)?;
        }
        if a.finish()? {
            self.q.mark_dirty("the index's totals did not add up");
        }
        drop(gen);
        self.append_changes(log)
    }

    fn append_changes(&self, log: Vec<Change>) -> Result<()> {
        if log.is_empty() {
            return Ok(());
        }
        // Plain inserts, not a sled::Batch: sled writes out and syncs its log buffer
        // twice for every batch (its recovery marker), which cost two synchronous
        // disk writes per event batch. Atomicity is not needed: readers are kept out
        // by the writer lock, and after a crash the log resumes after its last entry
        // on disk (Index::open).
        let mut seq = self.next_seq.load(Ordering::SeqCst);
        for mut c in log {
            c.seq = seq;
            self.changes.insert(seq.to_be_bytes(), enc(&c)).ix()?;
            seq += 1;
        }
        self.next_seq.store(seq, Ordering::SeqCst);
        self.meta.insert("next_seq", &seq.to_be_bytes()).ix()?;
        // Trim the oldest entries beyond what is kept.
        if seq > CHANGES_KEEP + BATCH as u64 {
            let cut = (seq - CHANGES_KEEP).to_be_bytes();
            let mut n = 0;
            for kv in self.changes.range(..cut.as_slice()) {
                let (k, _) = kv.ix()?;
                self.changes.remove(k).ix()?;
                n += 1;
                if n >= 2 * BATCH {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Build a new generation from the tree, count what differs from the current one
    /// (logging those paths as changes), and switch to it.
    pub fn reconcile(&self, why: &str) -> Result<Value> {
        let _w = self.writer.lock();
        self.q.reconciling.store(true, Ordering::SeqCst);
        let r = self.reconcile_locked(why);
        self.q.reconciling.store(false, Ordering::SeqCst);
        let v = r?;
        *self.last_reconcile.lock() = v.clone();
        Ok(v)
    }

    fn reconcile_locked(&self, why: &str) -> Result<Value> {
        let t0 = Instant::now();
        let cur = self.gen.read().clone();
        let new_id = cur.id + 1;
        Gen::drop_trees(&self.db, new_id);
        let ng = Gen::open(&self.db, new_id)?;
        let indexed = self.build(&ng)?;
        let diff = query::compare(&cur, &ng, self.store.root(), RECONCILE_LOG_MAX)?;
        {
            let mut g = self.gen.write();
            self.meta.insert("gen", &new_id.to_be_bytes()).ix()?;
            *g = Arc::new(ng);
        }
        drop(cur);
        Gen::drop_trees(&self.db, new_id - 1);
        // A first build has nothing to compare with: it is not a list of changes.
        let first_build = diff.old_nodes == 0;
        if !first_build {
            let at = Time::now();
            let log = diff
                .changed
                .iter()
                .map(|(op, path, node)| Change {
                    seq: 0,
                    at,
                    op: op.to_string(),
                    node: *node,
                    path: Some(path.clone()),
                    to: None,
                    reconciled: true,
                })
                .collect();
            self.append_changes(log)?;
        }
        self.db.flush().ix()?;
        let ms = t0.elapsed().as_millis() as u64;
        let (n, e, t) = if first_build {
            (0, 0, 0)
        } else {
            (diff.nodes, diff.entries, diff.totals)
        };
        log::info!(
            "index: reconciled in {ms} ms ({why}): {indexed} node(s), repaired {n} node(s), {e} entr(ies), {t} total(s)"
        );
        Ok(json!({
            "at": now_ns() / 1_000_000_000,
            "kind": if first_build { "build" } else { "full" },
            "reason": why,
            "duration_ms": ms,
            "nodes": indexed,
            "repaired": n + e + t,
            "repaired_nodes": n,
            "repaired_entries": e,
            "repaired_totals": t,
        }))
    }

    /// Fill an empty generation from the tree. Returns the number of nodes indexed.
    fn build(&self, g: &Gen) -> Result<u64> {
        g.clear()?;
        let mut a = Applier::new(g, &self.store);
        if a.index_new(self.store.root())?.is_none() {
            return Err(Error::CorruptRecord {
                node: self.store.root().to_string(),
                detail: "the root has no record".into(),
            });
        }
        let n = a.indexed;
        a.finish()?;
        Ok(n)
    }

    /// Is every event emitted so far applied, with nothing dropped and no reconcile
    /// running? Waits up to `wait` for it; with `stale`, answers anyway (false).
    pub fn ready(&self, wait: Option<Duration>, stale: bool) -> Result<bool> {
        let target = self.q.emitted.load(Ordering::SeqCst);
        let deadline = wait.map(|w| Instant::now() + w);
        loop {
            let applied = self.q.applied.load(Ordering::SeqCst);
            let busy =
                self.q.dirty.load(Ordering::SeqCst) || self.q.reconciling.load(Ordering::SeqCst);
            if applied >= target && !busy {
                return Ok(true);
            }
            if stale {
                return Ok(false);
            }
            match deadline {
                Some(d) if Instant::now() < d && !self.q.stop.load(Ordering::SeqCst) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let (events, ms, why) = self.lag();
                    return Err(Error::NotConsistent { events, ms, why });
                }
            }
        }
    }

    /// (events behind, milliseconds behind, what it is doing).
    fn lag(&self) -> (u64, u64, String) {
        let q = &self.q;
        let events = q
            .emitted
            .load(Ordering::SeqCst)
            .saturating_sub(q.applied.load(Ordering::SeqCst));
        let now = now_ns();
        let mut ms = 0;
        let head = q.head_ns.load(Ordering::SeqCst);
        if events > 0 && head > 0 {
            ms = now.saturating_sub(head) / 1_000_000;
        }
        let mut why = String::new();
        if q.dirty.load(Ordering::SeqCst) || q.reconciling.load(Ordering::SeqCst) {
            let since = q.dirty_since_ns.load(Ordering::SeqCst);
            if since > 0 {
                ms = ms.max(now.saturating_sub(since) / 1_000_000);
            }
            why = format!(" ({}: reconciling with the tree)", q.dirty_why.lock());
        }
        (events, ms, why)
    }

    /// What `decofs status` shows about the index.
    pub fn status(&self) -> Value {
        let q = &self.q;
        let (events, ms, _) = self.lag();
        let state = if q.reconciling.load(Ordering::SeqCst) {
            "reconciling"
        } else if q.dirty.load(Ordering::SeqCst) {
            "dirty"
        } else if events > 0 {
            "lagging"
        } else {
            "current"
        };
        let first = self
            .changes
            .first()
            .ok()
            .flatten()
            .map(|(k, _)| u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])));
        json!({
            "state": state,
            "queue_depth": self.rx.len(),
            "queue_capacity": self.opts.queue,
            "lag_events": events,
            "lag_ms": ms,
            "applied": q.applied.load(Ordering::SeqCst),
            "dropped": q.dropped.load(Ordering::SeqCst),
            "dirty_reason": if q.dirty.load(Ordering::SeqCst) || q.reconciling.load(Ordering::SeqCst) {
                json!(q.dirty_why.lock().clone())
            } else { Value::Null },
            "last_reconcile": self.last_reconcile.lock().clone(),
            "changes": {
                "first_seq": first,
                "last_seq": self.next_seq.load(Ordering::SeqCst) - 1,
                "log_id": self.log_id(),
            },
            "path": crate::jsonpath::path_to_json(&self.path),
        })
    }

    fn log_id(&self) -> String {
        self.meta
            .get("log_id")
            .ok()
            .flatten()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
    }

    /// The generation queries read, held for the query's duration.
    fn read_gen(&self) -> parking_lot::RwLockReadGuard<'_, Arc<Gen>> {
        self.gen.read()
    }

    pub fn root(&self) -> NodeId {
        self.store.root()
    }
}

/// `dir/name` with an empty `dir` meaning the root.
fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        let mut v = Vec::with_capacity(dir.len() + 1 + name.len());
        v.extend_from_slice(dir);
        v.push(b'/');
        v.extend_from_slice(name);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::query::Fresh;
    use crate::store::tree::{NewNode, RenameMode};
    use crate::store::{Kind, OpenOptions};
    use std::ffi::OsStr;

    fn node(kind: Kind) -> NewNode {
        NewNode {
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            rdev: 0,
            target: vec![],
        }
    }

    /// Store operations without FUSE: the live index follows them and equals a
    /// rebuild; du's totals are the sums by hand; a clean reopen takes the fast path.
    #[test]
    fn live_index_follows_store_operations() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("store");
        Store::init(&p, 64 * 1024).unwrap();
        let s = Arc::new(Store::open(&p, OpenOptions::default()).unwrap());
        let ix = Index::open(s.clone(), true, IndexOpts::default()).unwrap();
        let root = s.root();
        let (a, _) = s
            .tree()
            .create(root, OsStr::new("a"), node(Kind::Dir))
            .unwrap();
        let (f, _) = s
            .tree()
            .create(a, OsStr::new("f"), node(Kind::File))
            .unwrap();
        s.data().open_write(f).unwrap();
        s.data().write(f, 0, &[7u8; 100_000]).unwrap();
        s.data().close_write(f).unwrap();
        s.tree().link(f, root, OsStr::new("hard")).unwrap();
        let (sub, _) = s
            .tree()
            .create(a, OsStr::new("sub"), node(Kind::Dir))
            .unwrap();
        s.tree()
            .create(sub, OsStr::new("g"), node(Kind::File))
            .unwrap();
        s.tree()
            .rename(
                root,
                OsStr::new("a"),
                root,
                OsStr::new("b"),
                RenameMode::Replace,
            )
            .unwrap();
        s.tree()
            .create(root, OsStr::new("gone"), node(Kind::File))
            .unwrap();
        s.tree().unlink(root, OsStr::new("gone")).unwrap();
        let fresh = Fresh {
            wait: Some(Duration::from_secs(30)),
            stale: false,
        };
        let (list, current) = ix.du(b"", 1, fresh).unwrap();
        assert!(current);
        let get = |p: &[u8]| list.iter().find(|(x, _)| x == p).unwrap().1;
        // root, b, b/sub: three directories; f twice (two links), g once.
        let dir_size = crate::store::node::DIR_SIZE;
        assert_eq!(
            get(b""),
            tables::Stats {
                bytes: 3 * dir_size + 200_000,
                files: 3,
                dirs: 2
            }
        );
        assert_eq!(get(b"b").bytes, 2 * dir_size + 100_000);
        assert!(ix.verify(Duration::from_secs(30)).unwrap().is_empty());
        let (changes, _, _, _) = ix.changes(0, 100).unwrap();
        let ops: Vec<&str> = changes.iter().map(|c| c.op.as_str()).collect();
        assert_eq!(
            ops,
            [
                "create", "create", "write", "link", "create", "create", "rename", "create",
                "unlink"
            ]
        );
        assert_eq!(changes[6].to.as_deref(), Some(&b"b"[..]));
        ix.close();
        drop(ix);
        drop(s);
        let s = Arc::new(Store::open(&p, OpenOptions::default()).unwrap());
        let ix = Index::open(s, false, IndexOpts::default()).unwrap();
        assert_eq!(ix.status()["last_reconcile"]["kind"], "fast");
        let (found, _) = ix
            .find(
                &query::FindReq {
                    name: Some(b"g".to_vec()),
                    ..Default::default()
                },
                Fresh::default(),
            )
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].rel, b"b/sub/g");
        ix.close();
    }
}
