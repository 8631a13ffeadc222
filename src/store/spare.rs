//! Spare node files: the inodes of a create, made ahead of need.
//!
//! A create allocates two inodes on the backing disk: the node file and the entry
//! symlink that names it. On ext4 without a journal an allocation skips every inode of
//! the block group freed in the last 12 hours whose inode-table block is still cached
//! (`recently_deleted`, bounded by `vm.dirtytime_expire_seconds`), so on a disk that
//! has seen many deletes one allocation took 0.2-2 ms here, against 10-20 µs on a
//! fresh block group. A background thread therefore makes spares: a node file and the
//! entry symlink naming it, under a new id, in a staging directory under `sessions/`
//! placed in a fresh block group (see [`Staging`]). A create of a regular file
//! renames both into place, which allocates nothing: the node file to its path in
//! `nodes/`, the entry with RENAME_NOREPLACE, so a taken name still fails with EEXIST
//! and concurrent creates of one name still leave one node.
//!
//! A spare is durable before it is offered: the thread makes them in batches and
//! syncs the filesystem once per batch. fsyncdir syncs a directory and the `nodes/`
//! directories that gained node files, which writes names, not the inodes they name;
//! on ext4 without a journal a new inode reaches the disk with its inode-table block,
//! and nothing would write that block for an inode made in a far block group (a
//! symlink cannot even be fsynced). Made durable ahead, a spare's inodes survive a
//! power cut once the names bound to them are synced. Inodes made on the spot (no
//! spare ready, or not a regular file) are made in place, next to their directory, as
//! before; only trash links (which no fsync promises) are also made in the staging
//! directory and renamed into place.
//!
//! Each new blob is one more inode (written at flush or fsync, then renamed into
//! `blobs/`). The thread keeps `PREMADE_DEPTH` (64) empty files made ahead in
//! the staging directory, still open, in the blob store's pool (`LocalBlobs::offer`);
//! `put` writes one and renames it, and when a batch is missing asks the thread for more.
//! Measured: 5,000 creates of 4 KiB files took 2.9-3.8 s with them (daemon CPU 3.0-3.7
//! s), against 6.3-7.7 s without (CPU 6.0-7.4 s) once deletes had churned the disk.
//!
//! A delete allocates one more: the trash link. Where files die young (sqlite's
//! `-journal` lives for one transaction), the thread also makes each spare's trash link
//! ahead, and the delete renames it into `trash/`. Whether files die young is learnt
//! from the last [`YOUNG`] files made from spares: each one deleted while among them
//! raises `churn`, each one that outlives them lowers it, and trash links are made
//! ahead only while it is above zero (unused ones are deleted again).
//!
//! Spare ids share their first two bytes in runs of [`SHARD_RUN`] (one `nodes/xx/yy/`
//! directory, made and synced by the thread before its first spare is offered), so
//! files created together lie together, as `NodeId::new_near` arranges for the slow
//! path. Spares are staging (`spare.<pid>.*.tmp`): a clean close deletes them and fsck
//! collects those of a writer that died.
//!
//! Freeing a node file is slow on the bench disk: ext4 without a journal, mounted with
//! `discard`, frees the record's xattr block with a synchronous discard (median 167 µs,
//! mean 1.1 ms per node file in sqlite's journal churn). [`Spares::remove_later`]
//! renames a dead node file into the staging directory instead (a rename frees
//! nothing) and a second thread, the reaper, unlinks it there. A node file that waits
//! in staging is staging like a spare: a clean close deletes it, fsck counts it as stale
//! staging of a dead writer (not a problem) and `--repair` removes it.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::blobs::{LocalBlobs, PREMADE_BATCH};
use super::layout::{self, Layout};
use super::node::{Kind, NodeId};

/// Spares kept ready: a burst of creates beyond this takes the slow path while the
/// thread catches up.
const DEPTH: usize = 64;
/// Spares made at least at once (each batch costs one syncfs).
const BATCH: usize = 16;
/// Spares whose ids share one `nodes/xx/yy/`.
const SHARD_RUN: u32 = 4096;
/// Files made from spares that are watched for an early delete.
const YOUNG: usize = 256;
/// Highest `churn`.
const CHURN_MAX: u32 = 32;

/// A node file and the entry symlink naming it, ready to be renamed into place, and
/// perhaps its trash link.
pub(crate) struct Spare {
    pub id: NodeId,
    pub node: PathBuf,
    pub entry: PathBuf,
    trash: Option<PathBuf>,
}

impl Spare {
    /// Delete what is left of an unused (or half-used) spare.
    pub fn discard(&self) {
        let _ = fs::remove_file(&self.node);
        let _ = fs::remove_file(&self.entry);
        if let Some(t) = &self.trash {
            let _ = fs::remove_file(t);
        }
    }
}

/// The files most recently made from spares, with their trash links made ahead.
#[derive(Default)]
struct Young {
    trash: HashMap<NodeId, Option<PathBuf>>,
    order: VecDeque<NodeId>,
}

struct Inner {
    layout: Layout,
    blobs: Arc<LocalBlobs>,
    ready: Mutex<VecDeque<Spare>>,
    young: Mutex<Young>,
    /// How strongly recent files died young (see the module doc).
    churn: AtomicU32,
    closed: AtomicBool,
    /// The staging directory in use (None until the thread made one, and after close).
    staging: RwLock<Option<PathBuf>>,
    /// Names of inodes staged by `staged_path`.
    staged: AtomicU64,
}

pub(crate) struct Spares {
    inner: Arc<Inner>,
    /// Nudges the thread (None until `start`, and for read-only stores).
    wake: Mutex<Option<Sender<()>>>,
    /// `start` ran: this process has staging directories to remove at close.
    started: AtomicBool,
    /// Dead node files set aside in staging for the reaper (None until `start`, after
    /// `close`, and for read-only stores), and the reaper's thread.
    reap: Mutex<Option<(Arc<Reaping>, std::thread::JoinHandle<()>)>>,
}

impl Spares {
    pub fn new(layout: Layout, blobs: Arc<LocalBlobs>) -> Spares {
        Spares {
            inner: Arc::new(Inner {
                layout,
                blobs,
                ready: Mutex::new(VecDeque::new()),
                young: Mutex::new(Young::default()),
                churn: AtomicU32::new(0),
                closed: AtomicBool::new(false),
                staging: RwLock::new(None),
                staged: AtomicU64::new(0),
            }),
            wake: Mutex::new(None),
            started: AtomicBool::new(false),
            reap: Mutex::new(None),
        }
    }

    /// Start the thread that makes spares (a writer's mount does).
    pub fn start(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name("spares".into())
            .spawn(move || Inner::run(inner, rx));
        match spawned {
            Ok(_) => {
                self.started.store(true, Ordering::SeqCst);
                let _ = tx.try_send(());
                self.inner.blobs.set_refill(Some(tx.clone()));
                *self.wake.lock() = Some(tx);
            }
            Err(e) => log::warn!("spares: no thread ({e}); creates allocate inodes inline"),
        }
        let reaping = Arc::new(Reaping::default());
        let r = reaping.clone();
        let spawned = std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || r.run());
        match spawned {
            Ok(h) => *self.reap.lock() = Some((reaping, h)),
            Err(e) => log::warn!("spares: no reaper thread ({e}); node files are freed inline"),
        }
    }

    /// Remove the dead node file `path` (whose record no name and no handle reaches any
    /// more): renamed into the staging directory at once, unlinked there by the reaper
    /// (see the module doc). Without a staging directory or a reaper, or if the rename
    /// fails, it is removed in place. A file already gone gives NotFound.
    pub fn remove_later(&self, path: &Path) -> std::io::Result<()> {
        let r = self.reap.lock().as_ref().map(|(r, _)| r.clone());
        if let (Some(r), Some(aside)) = (r, self.staged_path()) {
            match fs::rename(path, &aside) {
                Ok(()) => {
                    r.push(aside);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !path.exists() => {
                    return Err(e);
                }
                // The staging directory was rotated away meanwhile: in place.
                Err(_) => {}
            }
        }
        fs::remove_file(path)
    }

    /// A spare for a new regular file, if one is ready; the thread makes the next. The
    /// file counts as young from now on.
    pub fn take(&self) -> Option<Spare> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return None;
        }
        let (mut s, left) = {
            let mut ready = self.inner.ready.lock();
            (ready.pop_front(), ready.len())
        };
        // The thread refills only a whole BATCH at a time: wake it only when one is
        // missing (a wake per create cost the thread a wakeup and its channel's spin
        // with sched_yield calls, on the cores serving requests).
        if left + BATCH <= DEPTH {
            if let Some(tx) = self.wake.lock().as_ref() {
                // Full: a nudge is pending already; disconnected: the thread is gone.
                let _ = tx.try_send(());
            }
        }
        if let Some(sp) = s.as_mut() {
            let outlived = {
                let mut y = self.inner.young.lock();
                y.trash.insert(sp.id, sp.trash.take());
                y.order.push_back(sp.id);
                if y.order.len() > YOUNG {
                    let old = y.order.pop_front().expect("not empty");
                    y.trash.remove(&old)
                } else {
                    None
                }
            };
            if let Some(link) = outlived {
                let _ = self
                    .inner
                    .churn
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1));
                if let Some(l) = link {
                    let _ = fs::remove_file(l);
                }
            }
        }
        s
    }

    /// How many spares are ready.
    pub fn ready(&self) -> usize {
        self.inner.ready.lock().len()
    }

    /// A new path in the staging directory, to make an inode at and then rename into
    /// place (see `Trash::make_staged`); None while there is no staging directory.
    pub fn staged_path(&self) -> Option<PathBuf> {
        let dir = self.inner.staging.read().clone()?;
        let n = self.inner.staged.fetch_add(1, Ordering::Relaxed);
        Some(dir.join(format!("s{n}")))
    }

    /// `id` is about to go to the trash: its trash link made ahead, if it has one. A
    /// young file's delete raises `churn`.
    pub fn take_trash(&self, id: NodeId) -> Option<PathBuf> {
        let link = self.inner.young.lock().trash.remove(&id)?;
        let _ = self
            .inner
            .churn
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                Some((c + 1).min(CHURN_MAX))
            });
        link
    }

    /// Stop making spares and delete the ready ones (closing, or the backing
    /// filesystem cannot rename them into place).
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        // The reaper finishes what it was given; the staging directories go below.
        if let Some((r, h)) = self.reap.lock().take() {
            r.close();
            let _ = h.join();
        }
        self.wake.lock().take();
        self.inner.blobs.set_refill(None);
        for s in std::mem::take(&mut *self.inner.ready.lock()) {
            s.discard();
        }
        let young = std::mem::take(&mut *self.inner.young.lock());
        for link in young.trash.into_values().flatten() {
            let _ = fs::remove_file(link);
        }
        // The staging directories, with whatever the thread was making meanwhile.
        self.inner.publish(None);
        if !self.started.load(Ordering::SeqCst) {
            return;
        }
        let mine = format!("spare.{}.", std::process::id());
        for e in fs::read_dir(self.inner.layout.sessions())
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with(&mine) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

impl Inner {
    /// Make `dir` where staged inodes are made (`staged_path`), or nowhere. A blob is
    /// never made at a staged path: one written into a staging directory that was just
    /// rotated away failed its write with EIO (seen once in CI). Blob files made ahead
    /// (`make_blob_files`) exist before they are offered, and a directory that holds
    /// one is not empty, so it is not removed under them.
    fn publish(&self, dir: Option<PathBuf>) {
        *self.staging.write() = dir;
    }

    fn run(self: Arc<Self>, rx: Receiver<()>) {
        let mut shard: Option<(NodeId, u32)> = None;
        let mut staging = Staging::new(self.clone());
        while rx.recv().is_ok() {
            self.make_spares(&mut staging, &mut shard);
            self.make_blob_files(&mut staging);
        }
        for s in std::mem::take(&mut *self.ready.lock()) {
            s.discard();
        }
        staging.close();
    }

    /// Refill the spares in batches of at least BATCH: one syncfs makes a batch durable.
    fn make_spares(&self, staging: &mut Staging, shard: &mut Option<(NodeId, u32)>) {
        let missing = DEPTH.saturating_sub(self.ready.lock().len());
        if missing < BATCH {
            return;
        }
        let mut batch = Vec::with_capacity(missing);
        while batch.len() < missing && !self.closed.load(Ordering::SeqCst) {
            let anchor = match *shard {
                Some((a, n)) if n < SHARD_RUN => {
                    *shard = Some((a, n + 1));
                    a
                }
                _ => match self.new_shard() {
                    Ok(a) => {
                        *shard = Some((a, 1));
                        a
                    }
                    Err(e) => {
                        log::debug!("spares: {e}");
                        break;
                    }
                },
            };
            let t = Instant::now();
            let made = staging
                .dir()
                .and_then(|(dir, seq)| self.make(NodeId::new_near(anchor, Kind::File), &dir, seq));
            staging.cost(t.elapsed());
            match made {
                Ok(s) => batch.push(s),
                // A full disk: the creates themselves will say so.
                Err(e) => {
                    log::debug!("spares: {e}");
                    break;
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        let synced = self.blobs.sync_filesystem();
        let mut ready = self.ready.lock();
        if synced.is_err() || self.closed.load(Ordering::SeqCst) {
            if let Err(e) = synced {
                log::debug!("spares: {e}");
            }
            batch.iter().for_each(Spare::discard);
        } else {
            ready.extend(batch);
        }
    }

    /// A new `nodes/xx/yy/` for the next run of spares, durable before any spare in it
    /// is offered (a create then only has to sync the directory itself).
    fn new_shard(&self) -> std::io::Result<NodeId> {
        let anchor = NodeId::new_spread(Kind::File);
        let shard = self.layout.node_path(anchor);
        let shard = shard.parent().expect("node paths have a shard");
        let made: Vec<PathBuf> = shard
            .ancestors()
            .take(2)
            .filter(|d| !d.exists())
            .map(|d| d.to_path_buf())
            .collect();
        fs::create_dir_all(shard)?;
        if !made.is_empty() {
            // Each new level, and its name in the level above.
            let mut dirs = vec![shard.to_path_buf()];
            dirs.extend(
                made.iter()
                    .filter_map(|d| d.parent())
                    .map(|d| d.to_path_buf()),
            );
            for d in dirs {
                layout::sync_dir(&d).map_err(std::io::Error::other)?;
            }
        }
        Ok(anchor)
    }

    /// Top up the blob files made ahead (`LocalBlobs::offer`), a batch at a time. They
    /// need no syncfs: a blob is made durable through its own file (fsync) or the
    /// fsync log, never by a sync of someone else's.
    fn make_blob_files(&self, staging: &mut Staging) {
        let missing = self.blobs.premade_missing();
        if missing < PREMADE_BATCH {
            return;
        }
        for _ in 0..missing {
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            let t = Instant::now();
            let made = staging.dir().and_then(|(dir, seq)| {
                let path = dir.join(format!("{seq}.blob"));
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map(|f| (path, f))
            });
            staging.cost(t.elapsed());
            match made {
                Ok((path, f)) => {
                    if !self.blobs.offer(path.clone(), f) {
                        let _ = fs::remove_file(path);
                        return;
                    }
                }
                // A full disk: the writes themselves will say so.
                Err(e) => {
                    log::debug!("spares: blob file: {e}");
                    return;
                }
            }
        }
    }

    fn make(&self, id: NodeId, dir: &Path, seq: u64) -> std::io::Result<Spare> {
        let mut s = Spare {
            id,
            node: dir.join(format!("{seq}.node")),
            entry: dir.join(format!("{seq}.entry")),
            trash: None,
        };
        let made = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&s.node)
            .and_then(|_| std::os::unix::fs::symlink(Layout::entry_target(id), &s.entry));
        if let Err(e) = made {
            s.discard();
            return Err(e);
        }
        if self.churn.load(Ordering::SeqCst) > 0 {
            let t = dir.join(format!("{seq}.trash"));
            if std::os::unix::fs::symlink(Layout::trash_target(id), &t).is_ok() {
                s.trash = Some(t);
            }
        }
        Ok(s)
    }
}

/// How long the reaper lets dead node files gather before it frees the next round.
const REAP_ROUND: Duration = Duration::from_millis(10);

/// The reaper's queue of dead node files (`Spares::remove_later`). The reaper parks on
/// a condvar that a push rings only while it sleeps with nothing to do, and frees what
/// gathered in rounds: a blocking channel receive spins with `sched_yield` before it
/// parks (4.4 calls per sqlite transaction, on the cores serving requests), and a wake
/// per file is a futex call on the request's path (see `index::Bell`).
#[derive(Default)]
struct Reaping {
    state: Mutex<ReapState>,
    cv: parking_lot::Condvar,
}

#[derive(Default)]
struct ReapState {
    paths: Vec<PathBuf>,
    idle: bool,
    closed: bool,
}

impl Reaping {
    fn push(&self, p: PathBuf) {
        let mut s = self.state.lock();
        if s.closed {
            drop(s);
            let _ = fs::remove_file(p);
            return;
        }
        s.paths.push(p);
        if s.idle {
            self.cv.notify_one();
        }
    }

    /// Free what was pushed and what will be, until `close`.
    fn run(&self) {
        loop {
            let round = {
                let mut s = self.state.lock();
                while s.paths.is_empty() && !s.closed {
                    s.idle = true;
                    self.cv.wait(&mut s);
                    s.idle = false;
                }
                if s.paths.is_empty() {
                    return; // closed, and nothing left
                }
                std::mem::take(&mut s.paths)
            };
            for p in round {
                let _ = fs::remove_file(p);
            }
            std::thread::sleep(REAP_ROUND);
        }
    }

    /// The reaper frees what is queued, then ends.
    fn close(&self) {
        self.state.lock().closed = true;
        self.cv.notify_one();
    }
}

/// Spares made in a row whose cost is averaged.
const COST_RUN: u32 = 32;
/// Average cost of one spare (two or three inodes) above which the staging directory
/// moves: a fresh block group makes one in 30-60 µs, a churned one in 1-3 ms.
const COST_SLOW: Duration = Duration::from_micros(250);
/// ext4's FS_TOPDIR_FL (chattr +T): the Orlov allocator spreads subdirectories of such
/// a directory over the block groups with the most free inodes and fewest directories.
const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;

/// Where spares are made: `sessions/spare.<pid>.<n>.tmp/`. Inodes of a regular file
/// or symlink come from its directory's block group, and `sessions/` is marked a top
/// directory, so each new staging directory lands in a group chosen afresh. When the
/// group becomes slow to allocate from (deletes of our own files churn it too), the
/// next staging directory moves elsewhere. Emptied old ones are removed.
struct Staging {
    sessions: PathBuf,
    inner: Arc<Inner>,
    current: Option<PathBuf>,
    old: Vec<PathBuf>,
    n: u64,
    seq: u64,
    made: u32,
    cost: Duration,
}

impl Staging {
    fn new(inner: Arc<Inner>) -> Staging {
        let sessions = inner.layout.sessions();
        if let Err(e) = set_topdir(&sessions) {
            log::debug!(
                "spares: {} not marked a top directory: {e}",
                sessions.display()
            );
        }
        Staging {
            sessions,
            inner,
            current: None,
            old: Vec::new(),
            n: 0,
            seq: 0,
            made: 0,
            cost: Duration::ZERO,
        }
    }

    /// What making one spare took: a run of slow ones moves the staging directory.
    fn cost(&mut self, took: Duration) {
        self.cost += took;
        self.made += 1;
        if self.made == COST_RUN {
            if self.cost / COST_RUN > COST_SLOW {
                log::debug!(
                    "spares: {:?} per spare, moving the staging directory",
                    self.cost / COST_RUN
                );
                self.old.extend(self.current.take());
            }
            self.made = 0;
            self.cost = Duration::ZERO;
        }
    }

    /// The directory for the next spare, and the spare's number.
    fn dir(&mut self) -> std::io::Result<(PathBuf, u64)> {
        let dir = match &self.current {
            Some(d) => d.clone(),
            None => {
                self.n += 1;
                let d = self
                    .sessions
                    .join(format!("spare.{}.{}.tmp", std::process::id(), self.n));
                fs::create_dir(&d)?;
                self.current = Some(d.clone());
                self.inner.publish(Some(d.clone()));
                d
            }
        };
        // Old directories go once the new one is published (a staged inode made in one
        // meanwhile falls back to its place: see `Trash::make_staged`). One that still
        // holds a trash link made ahead is tried again a batch later, not per spare.
        if self.seq.is_multiple_of(BATCH as u64) {
            self.old.retain(|d| fs::remove_dir(d).is_err());
        }
        self.seq += 1;
        Ok((dir, self.seq))
    }

    /// Remove the staging directories (their spares are gone by now; a trash link
    /// made ahead keeps its directory until it is used or discarded).
    fn close(&mut self) {
        self.inner.publish(None);
        self.old.extend(self.current.take());
        self.old.retain(|d| fs::remove_dir(d).is_err());
    }
}

/// Mark `dir` a top directory for ext4's Orlov allocator (no-op elsewhere: an error).
fn set_topdir(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(dir)?;
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS/SETFLAGS read and write one int through the pointer (the
    // ioctl numbers say long, the kernel uses int).
    unsafe {
        if libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if flags & FS_TOPDIR_FL != 0 {
            return Ok(());
        }
        flags |= FS_TOPDIR_FL;
        if libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
