//! The store: the truth on disk. It knows nothing of FUSE or of the index.
//!
//! Every invariant of the design that concerns the disk is enforced here:
//! - records are written whole, under a per-node stripe lock with a version check
//!   (`update`, `cas`): invariant 2;
//! - blobs are written and named before a record names them (`blob`): invariant 1;
//! - names are bound by creating the entry symlink, which fails if taken (`tree`):
//!   invariant 3;
//! - all handles of a file share one write session (`content`): invariant 4;
//! - every chunk read is verified (`blob`): invariant 5.
//!
//! A read-write mount turns on the record cache ([`Store::enable_record_cache`]): the
//! records of live nodes, kept in memory and written through. It is coherent because the
//! mount is the only writer (invariant 7) and every record change in this process passes
//! through `write_record`; a reader that raced a write never installs what it read.
//! Trashed nodes are never cached (purging removes their files behind the cache).

pub mod attr;
pub mod blobs;
pub mod check;
pub mod content;
pub mod error;
pub mod event;
mod fault;
pub mod fsynclog;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod node;
pub mod pins;
pub mod records;
mod spare;
mod sweep;
pub mod trash;
pub mod tree;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

pub use error::{Error, Result};
pub use event::{InvalidateFn, Stale};
pub use node::{Kind, NodeId, NodeRecord, Time};

use blobs::{BlobStore, LocalBlobs};
use content::Session;
use error::IoContext;
use layout::{Format, Layout};
use lock::{Fence, StoreLock};
use node::{decode_body, encode_body, frame, unframe, Stored, INLINE_RECORD_LIMIT};
use records::Records;

#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    pub read_only: bool,
    /// Verified-chunk cache size in bytes.
    pub cache_bytes: usize,
}

pub struct Store {
    pub layout: Layout,
    pub format: Format,
    /// Blobs, through the seam: what content, the fsync log and the checks use.
    pub blobs: Arc<dyn BlobStore>,
    /// The same blobs' local disk: its staging pool and filesystem sync tickets.
    local: Arc<LocalBlobs>,
    /// May this process change the store (invariant 7)?
    fence: Arc<Fence>,
    /// Node records: read, written whole, cached (invariant 2).
    pub records: Records,
    sessions: Mutex<HashMap<NodeId, Arc<Mutex<Session>>>>,
    manifests: Mutex<HashMap<node::Hash, Arc<Vec<node::ChunkRef>>>>,
    /// Retention in force (the format's defaults, possibly overridden at mount).
    policy: Mutex<layout::Policy>,
    /// Open nodes: never purged while open.
    pub pins: pins::Pins,
    /// Blobs that may have lost their last reference, swept in batches.
    pending_sweep: Mutex<Vec<node::Hash>>,
    /// Who follows the store's changes: the index (events), the kernel (staleness).
    pub followers: event::Followers,
    /// Where the last read of each recently read file ended: a read that starts near
    /// there is sequential and prefetches the next chunk.
    read_ends: Mutex<HashMap<NodeId, u64>>,
    /// Per directory, what its next fsyncdir must make durable besides its own entries
    /// (see `UnsyncedDir`).
    unsynced_names: Mutex<Owed>,
    /// A writer's fsync log (see `fsynclog`): one fdatasync per file fsync.
    fsync_log: Option<fsynclog::FsyncLog>,
    /// Node files and entries made ahead for creates (see `spare`).
    spares: spare::Spares,
}

/// What a directory's fsyncdir owes beyond the directory itself, for the entries made
/// in it (or moved into it) since it was last synced. fsyncdir writes names, not the
/// inodes they name: on ext4 without a journal a new inode reaches the disk only with
/// its inode-table block, which nothing else writes for a while.
#[derive(Default)]
struct UnsyncedDir {
    /// `nodes/` directories that gained a node file for one of the new entries: synced,
    /// so a durable name never points at a node whose own name in `nodes/` was lost,
    /// unless the fsync log holds every such node (replay recreates a lost node file
    /// that a durable entry names).
    dirs: std::collections::HashSet<PathBuf>,
    /// The new entries' nodes.
    children: HashMap<NodeId, NewChild>,
    /// Too many children to list: a syncfs that starts after this ticket covers them.
    all_before: Option<u64>,
}

impl UnsyncedDir {
    fn len(&self) -> usize {
        self.dirs.len() + self.children.len()
    }

    /// Owe what `other` owed too (a failed sync's debt, back).
    fn merge(&mut self, other: UnsyncedDir) {
        self.dirs.extend(other.dirs);
        for (c, n) in other.children {
            owe_child(&mut self.children, c, n);
        }
        self.all_before = self.all_before.max(other.all_before);
    }
}

/// What every directory's fsyncdir owes, and how many entries that is in all.
#[derive(Default)]
struct Owed {
    by_dir: HashMap<NodeId, UnsyncedDir>,
    entries: usize,
}

impl Owed {
    fn take(&mut self, dir: NodeId) -> Option<UnsyncedDir> {
        let u = self.by_dir.remove(&dir)?;
        self.entries -= u.len();
        Some(u)
    }

    /// Change what `dir` owes with `f`, keeping the count.
    fn with(&mut self, dir: NodeId, f: impl FnOnce(&mut UnsyncedDir)) {
        let u = self.by_dir.entry(dir).or_default();
        let before = u.len();
        f(u);
        self.entries = self.entries + u.len() - before;
    }
}

/// How a new entry's inodes become durable.
#[derive(Clone, Copy)]
enum NewChild {
    /// Made on the spot (entry symlink, and the node unless it came from a spare):
    /// only a syncfs that started after the ticket covers them.
    InPlace(u64),
    /// A file made from a spare (its inodes are durable): its record is, once the fsync
    /// log holds this version of it.
    FromSpare { logged: Option<u64> },
}

impl NewChild {
    /// What one entry owes when it is owed twice (say a hard link made in place and
    /// the node's spare-made first entry moved in beside it): the stricter of the two.
    fn join(self, other: NewChild) -> NewChild {
        use NewChild::*;
        match (self, other) {
            (InPlace(a), InPlace(b)) => InPlace(a.max(b)),
            (InPlace(t), FromSpare { .. }) | (FromSpare { .. }, InPlace(t)) => InPlace(t),
            (FromSpare { logged: a }, FromSpare { logged: b }) => FromSpare { logged: a.min(b) },
        }
    }
}

/// Owe `n` for `child` in `children`, joined with what it owed already.
fn owe_child(children: &mut HashMap<NodeId, NewChild>, child: NodeId, n: NewChild) {
    let joined = children.get(&child).map_or(n, |o| o.join(n));
    children.insert(child, joined);
}

/// A directory's children listed at most; beyond, its fsyncdir is one syncfs.
const CHILDREN_MAX: usize = 4096;
/// Entries owed in all at most (a big copy that never fsyncs); beyond, the whole store
/// is synced at once and everything owed forgotten.
const OWED_MAX: usize = 262_144;
/// New files from spares whose records fsyncdir logs one by one at most; beyond, one
/// syncfs is cheaper.
const LOG_CHILDREN_MAX: usize = 32;

/// What `log_sync` did.
enum LogSync {
    Logged,
    NotAFile,
    NoLog,
}

impl Store {
    /// Create a new store at `path` with an empty root directory owned by the caller.
    pub fn init(path: &Path, chunk_size: u32) -> Result<Format> {
        Store::init_with(path, chunk_size, layout::Policy::default())
    }

    /// Create a new store with the given retention defaults.
    pub fn init_with(path: &Path, chunk_size: u32, policy: layout::Policy) -> Result<Format> {
        let layout = Layout::new(path);
        let mut format = layout.create(chunk_size)?;
        format.policy = policy;
        let blobs = LocalBlobs::new(layout.clone(), 0);
        let store = Store::assemble(layout, format.clone(), blobs, false, None);
        // SAFETY: plain getters.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let rec = NodeRecord::new(Kind::Dir, 0o755, uid, gid, 1);
        let p = store.layout.node_path(format.root);
        fs::create_dir_all(&p).ctx(|| format!("create {}", p.display()))?;
        store.records.write(format.root, &rec, true)?;
        layout::sync_dir(p.parent().unwrap())?;
        store.layout.write_format(&format)?;
        Ok(format)
    }

    /// Open an existing store. A read-write open takes the single-writer lock.
    pub fn open(path: &Path, opts: OpenOptions) -> Result<Store> {
        let layout = Layout::new(path);
        let format = layout.read_format()?;
        layout::check_xattr_support(&layout.sessions())?;
        let lock = if opts.read_only {
            None
        } else {
            Some(StoreLock::acquire(&layout)?)
        };
        let cache = if opts.cache_bytes == 0 {
            256 << 20
        } else {
            opts.cache_bytes
        };
        let blobs = LocalBlobs::new(layout.clone(), cache);
        replay_fsync_logs(&layout, &blobs, lock.is_some())?;
        let mut store = Store::assemble(layout, format, blobs, opts.read_only, lock);
        if let Some(epoch) = store.epoch() {
            store.fsync_log = Some(fsynclog::FsyncLog::new(&store.layout, epoch));
        }
        // A root without a record means this is not a store we can serve.
        store.records.read(store.root())?;
        Ok(store)
    }

    fn assemble(
        layout: Layout,
        format: Format,
        blobs: LocalBlobs,
        read_only: bool,
        lock: Option<StoreLock>,
    ) -> Store {
        let policy = format.policy;
        let local = Arc::new(blobs);
        let spares = spare::Spares::new(layout.clone(), local.clone());
        let blobs: Arc<dyn BlobStore> = local.clone();
        let fence = Arc::new(Fence::new(read_only, lock));
        Store {
            records: Records::new(layout.clone(), blobs.clone(), fence.clone()),
            layout,
            format,
            blobs,
            local,
            fence,
            sessions: Mutex::new(HashMap::new()),
            manifests: Mutex::new(HashMap::new()),
            policy: Mutex::new(policy),
            pins: pins::Pins::default(),
            pending_sweep: Mutex::new(Vec::new()),
            read_ends: Mutex::new(HashMap::new()),
            unsynced_names: Mutex::new(Owed::default()),
            fsync_log: None,
            spares,
            followers: event::Followers::default(),
        }
    }

    pub fn root(&self) -> NodeId {
        self.format.root
    }

    pub fn read_only(&self) -> bool {
        self.fence.read_only()
    }

    pub fn chunk_size(&self) -> u64 {
        self.format.chunk_size as u64
    }

    /// Make node files for creates ahead of need, in the background (a writer's mount).
    pub fn start_spares(&self) {
        if !self.read_only() {
            self.spares.start();
        }
    }

    /// Spare node files ready for creates (see `spare`).
    pub fn spare_nodes(&self) -> usize {
        self.spares.ready()
    }

    /// Does a close wait until its new blobs are written before their record (so a
    /// power cut leaves a closed file old or new)? Not on ext4 without a journal.
    pub fn close_orders_blobs(&self) -> bool {
        self.local.settle_waits()
    }

    /// May this process change the store? Not when read-only, and not once its lock
    /// has been broken (fencing: the stale holder's writes are refused, never applied).
    fn writable(&self) -> Result<()> {
        self.fence.check()
    }

    /// Does this process still hold the store's write lock (not read-only, not fenced)?
    pub fn still_writer(&self) -> bool {
        self.writable().is_ok()
    }

    /// The fencing epoch this writer holds (None for read-only opens).
    pub fn epoch(&self) -> Option<u64> {
        self.fence.epoch()
    }

    /// The inode number of a node (stable across remounts).
    pub fn ino_of(&self, id: NodeId) -> u64 {
        if id == self.root() {
            1
        } else {
            id.derived_ino()
        }
    }

    /// fsyncdir: make a directory's entries durable, with what they name: the `nodes/`
    /// directories holding node files of new entries, the inodes made for them (a
    /// syncfs, when any was made on the spot), and the records of new files from
    /// spares (through the fsync log, unless it holds them already).
    pub fn sync_dir_node(&self, id: NodeId) -> Result<()> {
        // Its times, if a create or unlink deferred them (a syncfs below covers them).
        self.records.flush_deferred_one(id)?;
        let Some(u) = self.unsynced_names.lock().take(id) else {
            return self.sync_node(id);
        };
        let res = self.sync_unsynced(id, &u);
        if res.is_err() {
            // Keep what is still owed for the next attempt.
            self.unsynced_names.lock().with(id, |e| e.merge(u));
        }
        res
    }

    fn sync_unsynced(&self, id: NodeId, u: &UnsyncedDir) -> Result<()> {
        let covered = |t: u64| self.local.synced_since(t);
        let mut whole = u.all_before.is_some_and(|t| !covered(t));
        let mut to_log = Vec::new();
        for (c, n) in &u.children {
            match n {
                NewChild::InPlace(t) => whole |= !covered(*t),
                NewChild::FromSpare { logged } => match self.records.read(*c) {
                    Ok(r)
                        if Some(r.version) != *logged
                            && r.kind == Kind::File
                            && r.trash.is_none() =>
                    {
                        to_log.push(*c)
                    }
                    _ => {} // logged as it is, or deleted since
                },
            }
        }
        if whole || to_log.len() > LOG_CHILDREN_MAX {
            // Writes every inode, name and record of the store.
            return self.local.sync_filesystem();
        }
        // A new file's node in the fsync log needs no sync of its `nodes/` directory:
        // should the power cut lose that name, replay recreates the node file, as the
        // entry this fsyncdir makes durable still names it. Children made on the spot
        // are covered by a syncfs (theirs or one since). So the directories are synced
        // only when some file could not go through the log.
        let mut all_logged = self.fsync_logged();
        for c in to_log {
            all_logged &= self.sync_node_logged(c)?;
        }
        if !all_logged {
            for d in deepest_first(u.dirs.iter().cloned()) {
                layout::sync_dir(&d)?;
            }
        }
        self.sync_node(id)
    }

    /// Remember that `parent` gained an entry for `child`, made on the spot
    /// (`in_place`) or from a spare, whose node file's name is new in `node_dirs`; its
    /// next fsyncdir makes them durable.
    pub(crate) fn child_unsynced<'a>(
        &self,
        parent: NodeId,
        child: NodeId,
        in_place: bool,
        node_dirs: impl IntoIterator<Item = &'a Path>,
    ) {
        let n = if in_place {
            NewChild::InPlace(self.local.ticket())
        } else {
            NewChild::FromSpare { logged: None }
        };
        self.owe(parent, |u| {
            u.dirs.extend(node_dirs.into_iter().map(Path::to_path_buf));
            owe_child(&mut u.children, child, n);
        });
    }

    /// A rename moved `child`'s entry from `from` to `to`: what `from` owed for it, `to`
    /// owes now (the node's `nodes/` directories too).
    pub(crate) fn child_moved(&self, from: NodeId, to: NodeId, child: NodeId) {
        if from == to {
            return;
        }
        let mut owed = None;
        {
            let mut m = self.unsynced_names.lock();
            if m.by_dir.contains_key(&from) {
                m.with(from, |u| owed = u.children.remove(&child));
            }
        }
        if let Some(n) = owed {
            let shard = self.layout.node_path(child);
            self.owe(to, |u| {
                owe_child(&mut u.children, child, n);
                // The node's directory and the one above it, in case either was new.
                for d in shard.ancestors().skip(1).take(2) {
                    u.dirs.insert(d.to_path_buf());
                }
            });
        }
    }

    /// The fsync log now holds `version` of file `id`'s record.
    fn child_logged(&self, parent: Option<NodeId>, id: NodeId, version: u64) {
        let Some(p) = parent else { return };
        if let Some(NewChild::FromSpare { logged }) = self
            .unsynced_names
            .lock()
            .by_dir
            .get_mut(&p)
            .and_then(|u| u.children.get_mut(&id))
        {
            *logged = Some(logged.map_or(version, |l| l.max(version)));
        }
    }

    /// Add to what `parent`'s next fsyncdir owes. Bounded: a directory with more than
    /// CHILDREN_MAX new children owes one syncfs instead of the list, and past OWED_MAX
    /// entries in all the whole store is synced at once and everything owed forgotten.
    fn owe(&self, parent: NodeId, f: impl FnOnce(&mut UnsyncedDir)) {
        let full = {
            let mut m = self.unsynced_names.lock();
            m.with(parent, |u| {
                f(u);
                if u.children.len() > CHILDREN_MAX {
                    u.children.clear();
                    u.all_before = Some(self.local.ticket());
                }
            });
            if m.entries > OWED_MAX {
                std::mem::take(&mut *m)
            } else {
                return;
            }
        };
        if let Err(e) = self.local.sync_filesystem() {
            log::warn!("sync the store: {e}");
            // Still owed.
            let mut m = self.unsynced_names.lock();
            for (k, v) in full.by_dir {
                m.with(k, |u| u.merge(v));
            }
        }
    }

    /// fsync of a node. A file's record, with the blobs it names, goes through the fsync
    /// log when there is one (one fdatasync); otherwise, and for directories, the
    /// node's file is fsynced (a file's unsynced blobs first).
    pub fn sync_node(&self, id: NodeId) -> Result<()> {
        self.sync_node_logged(id).map(|_| ())
    }

    /// `sync_node`, saying whether it went through the fsync log.
    fn sync_node_logged(&self, id: NodeId) -> Result<bool> {
        match self.log_sync(id)? {
            LogSync::Logged => return Ok(true),
            LogSync::NotAFile => self.records.flush_deferred_one(id)?,
            LogSync::NoLog => self.blobs.sync()?,
        }
        self.fsync_node_file(id)?;
        Ok(false)
    }

    /// Will a file's fsync go through the log (so its blobs need no fsync of their own)?
    pub(crate) fn fsync_logged(&self) -> bool {
        self.fsync_log.as_ref().is_some_and(|l| l.usable())
    }

    fn fsync_node_file(&self, id: NodeId) -> Result<()> {
        let path = self.layout.node_path(id);
        let f = fs::File::open(&path).ctx(|| format!("open {}", path.display()))?;
        f.sync_all().ctx(|| format!("sync {}", path.display()))
    }

    /// Log the record of file `id` as it is stored now, with the bytes of every blob it
    /// names that is not durable yet, and wait until the log entry is durable. A log
    /// that fails is given up (`NoLog`: the caller syncs the files themselves).
    fn log_sync(&self, id: NodeId) -> Result<LogSync> {
        // A blob of the record read can be swept before it is copied, if a newer
        // record replaced it meanwhile: then read the newer one.
        let mut tries = 0;
        loop {
            match self.try_log_sync(id) {
                Err(Error::Integrity { .. }) if tries < 3 => tries += 1,
                other => return other,
            }
        }
    }

    fn try_log_sync(&self, id: NodeId) -> Result<LogSync> {
        let Some((value, rec, rec_blob)) = self.stored_file_record(id)? else {
            return Ok(LogSync::NotAFile);
        };
        let Some(log) = self.fsync_log.as_ref().filter(|l| l.usable()) else {
            return Ok(LogSync::NoLog);
        };
        self.writable()?;
        let entry = self.log_entry(id, value, &rec, rec_blob)?;
        if appended(log.append(&entry, &|| self.local.sync_filesystem())).is_none() {
            return Ok(LogSync::NoLog);
        }
        self.child_logged(rec.parent, id, rec.version);
        Ok(LogSync::Logged)
    }

    /// The record of file `id` as stored, with its stored value (the xattr bytes) and
    /// the blob a large record spilled into. None: not a file.
    fn stored_file_record(&self, id: NodeId) -> Result<Option<StoredRecord>> {
        // A small record is its cached copy framed again (what `write_record` stored,
        // byte for byte), a large one is read for its blob.
        let cached = self.records.read(id)?;
        let body = encode_body(&cached);
        let (value, rec, rec_blob) = if body.len() <= INLINE_RECORD_LIMIT {
            (frame(false, &body), cached, None)
        } else {
            let value = self.records.value(id)?;
            match unframe(id, &value)? {
                Stored::Inline(r) => (value, r, None),
                Stored::InBlob(h) => (value, decode_body(id, &self.blobs.get(&h)?)?, Some(h)),
            }
        };
        Ok((rec.kind == Kind::File).then_some((value, rec, rec_blob)))
    }

    /// The fsync log entry of `rec` (stored as `value`): with the bytes of every blob it
    /// names that is not durable yet, or, past `CARRY_MAX`, with those blobs synced.
    fn log_entry(
        &self,
        id: NodeId,
        value: Vec<u8>,
        rec: &NodeRecord,
        rec_blob: Option<node::Hash>,
    ) -> Result<fsynclog::Entry> {
        let mut hashes: Vec<node::Hash> = rec_blob.into_iter().collect();
        if let node::Content::Manifest(h) = &rec.content {
            hashes.push(*h);
        }
        hashes.extend(self.chunk_list(&rec.content)?.iter().map(|c| c.hash));
        hashes.sort_unstable();
        hashes.dedup();
        let mut carried = Vec::new();
        let mut bytes = 0;
        for h in hashes {
            if self.blobs.is_unsynced(&h) {
                let d = self.blobs.get(&h)?;
                bytes += d.len();
                if bytes > blobs::CARRY_MAX {
                    // Too much to copy into the log: sync the blobs themselves.
                    carried.clear();
                    self.blobs.sync()?;
                    break;
                }
                carried.push(d.to_vec());
            }
        }
        Ok(fsynclog::Entry {
            node: id.0.into_bytes(),
            version: rec.version,
            value,
            blobs: carried,
        })
    }

    /// Clean close of a writer: make everything durable and delete the fsync log, so a
    /// cleanly closed store has nothing to replay.
    pub fn close_fsync_log(&self) -> Result<()> {
        if let Err(e) = self.records.flush_deferred() {
            log::warn!("closing: directory times not all written: {e}");
        }
        self.local.drain_pool();
        self.spares.close();
        match &self.fsync_log {
            Some(l) => l.close(&|| self.local.sync_filesystem()),
            None => Ok(()),
        }
    }

    /// Free and total space of the disk under the store: (blocks, bfree, bavail, files,
    /// ffree, bsize).
    pub fn statfs(&self) -> Result<libc::statvfs> {
        let c = std::ffi::CString::new(self.layout.root.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::Invalid("path"))?;
        // SAFETY: zeroed statvfs is a valid out-parameter; c is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        if rc != 0 {
            return Err(Error::io("statfs", std::io::Error::last_os_error()));
        }
        Ok(st)
    }
}

impl Drop for Store {
    /// A writer that goes away without a crash leaves no fsync log behind.
    fn drop(&mut self) {
        if let Err(e) = self.close_fsync_log() {
            log::warn!("fsync log kept for replay at the next open: {e}");
        }
        self.local.drain_pool();
        self.spares.close();
    }
}

/// A record as stored: its xattr value, the record, and the blob a large one spilled
/// into.
type StoredRecord = (Vec<u8>, NodeRecord, Option<node::Hash>);

/// Replay the fsync logs a writer left behind (it crashed, or the power failed). A
/// writer does it under its own lock; any other open does it only if it can take the
/// lock for a moment (if a writer holds it, that writer has replayed them already).
fn replay_fsync_logs(layout: &Layout, blobs: &dyn BlobStore, locked: bool) -> Result<()> {
    let t = fsynclog::Target { layout, blobs };
    if !fsynclog::pending(layout)? {
        return Ok(());
    }
    if locked {
        fsynclog::recover(&t)?;
        return Ok(());
    }
    match StoreLock::acquire(layout) {
        Ok(l) => {
            fsynclog::recover(&t)?;
            drop(l);
            Ok(())
        }
        Err(Error::StoreLocked { .. }) => Ok(()),
        Err(e) => {
            log::warn!("fsync log left by a crashed writer cannot be replayed now: {e}");
            Ok(())
        }
    }
}

/// What an fsync log append said, or None if it failed: the log is given up then (see
/// `fsynclog`), and each fsync syncs the files themselves from then on.
pub(crate) fn appended<T>(res: Result<T>) -> Option<T> {
    res.map_err(|e| log::warn!("fsync log given up, fsync syncs the files themselves: {e}"))
        .ok()
}

/// Directories in the order to sync them: deepest first, because a new `nodes/xx/yy`
/// is named in `nodes/xx`, which is synced after it.
fn deepest_first(dirs: impl IntoIterator<Item = PathBuf>) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = dirs.into_iter().collect();
    v.sort_by(|a, b| (b.components().count().cmp(&a.components().count())).then_with(|| a.cmp(b)));
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `create` needs for a plain file.
    pub fn file_node() -> tree::NewNode {
        tree::NewNode {
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            target: vec![],
        }
    }

    /// A new empty file `name` in the root.
    pub fn new_file(s: &Store, name: &str) -> NodeId {
        s.create(s.root(), std::ffi::OsStr::new(name), file_node())
            .unwrap()
            .0
    }

    /// A create or unlink writes the directory's times later (one record write less
    /// per call); reads see them at once, and a flush, the directory's fsync, any other
    /// change of it and a clean close write them.
    #[test]
    fn directory_times_are_written_later_but_seen_at_once() {
        let (d, s) = scratch();
        s.records.enable_cache();
        let root = s.root();
        let disk0 = s.records.read_disk(root).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        new_file(&s, "a");
        let seen = s.records.read(root).unwrap();
        assert!(seen.mtime > disk0.mtime && seen.ctime > disk0.ctime);
        assert_eq!(s.records.read_disk(root).unwrap(), disk0, "not written yet");
        s.records.flush_deferred().unwrap();
        assert_eq!(s.records.read_disk(root).unwrap(), seen);

        new_file(&s, "b");
        let seen = s.records.read(root).unwrap();
        s.sync_dir_node(root).unwrap();
        assert_eq!(
            s.records.read_disk(root).unwrap(),
            seen,
            "fsyncdir writes them"
        );

        s.unlink(root, std::ffi::OsStr::new("a")).unwrap();
        let t = s.records.read(root).unwrap().mtime;
        s.records
            .update(root, |r| {
                r.mode = 0o40700;
                Ok(())
            })
            .unwrap();
        let disk = s.records.read_disk(root).unwrap();
        assert_eq!(
            (disk.mtime, disk.mode),
            (t, 0o40700),
            "carried by the next write"
        );

        new_file(&s, "c");
        let seen = s.records.read(root).unwrap();
        let p = s.layout.root.clone();
        drop(s);
        let s = Store::open(&p, OpenOptions::default()).unwrap();
        assert_eq!(
            s.records.read_disk(root).unwrap(),
            seen,
            "a clean close writes them"
        );
        drop(d);
    }

    pub fn scratch() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("store");
        Store::init(&p, 64 * 1024).unwrap();
        let s = Store::open(&p, OpenOptions::default()).unwrap();
        (dir, s)
    }

    /// What fsyncdir owes follows renames, is paid by it, and its count stays exact;
    /// a directory with too many new children owes one syncfs instead of a list.
    #[test]
    fn fsyncdir_debts_follow_renames_and_are_paid() {
        use std::ffi::OsStr;
        let (_d, s) = scratch();
        let root = s.root();
        let mut dir = file_node();
        dir.kind = Kind::Dir;
        dir.mode = 0o755;
        let (a, _) = s.create(root, OsStr::new("a"), dir).unwrap();
        let f = s.create(a, OsStr::new("f"), file_node()).unwrap().0;
        let g = s.create(a, OsStr::new("g"), file_node()).unwrap().0;
        let owes = |d: NodeId, c: NodeId| {
            let m = s.unsynced_names.lock();
            m.by_dir
                .get(&d)
                .is_some_and(|u| u.children.contains_key(&c))
        };
        assert!(owes(root, a) && owes(a, f) && owes(a, g));
        s.rename(
            a,
            OsStr::new("f"),
            root,
            OsStr::new("f"),
            tree::RenameMode::Replace,
        )
        .unwrap();
        assert!(
            !owes(a, f) && owes(root, f),
            "the debt moves with the entry"
        );
        s.sync_dir_node(a).unwrap();
        assert!(!owes(a, g));
        s.sync_dir_node(root).unwrap();
        {
            let m = s.unsynced_names.lock();
            assert_eq!(m.entries, 0, "everything paid");
            assert!(m.by_dir.is_empty());
        }
        // Made in place (a directory): a syncfs covers it; a later one is owed again.
        let (b, _) = s
            .create(root, OsStr::new("b"), {
                let mut d = file_node();
                d.kind = Kind::Dir;
                d
            })
            .unwrap();
        let t = match s.unsynced_names.lock().by_dir[&root].children[&b] {
            NewChild::InPlace(t) => t,
            NewChild::FromSpare { .. } => panic!("a directory is made in place"),
        };
        assert!(!s.local.synced_since(t));
        s.sync_dir_node(root).unwrap();
        assert!(s.local.synced_since(t), "fsyncdir synced the filesystem");
        // Past CHILDREN_MAX: the list gives way to one ticket.
        for i in 0..=CHILDREN_MAX {
            s.create(b, OsStr::new(&format!("n{i}")), file_node())
                .unwrap();
        }
        {
            let m = s.unsynced_names.lock();
            let u = &m.by_dir[&b];
            assert!(u.children.len() < CHILDREN_MAX && u.all_before.is_some());
            assert_eq!(
                m.entries,
                m.by_dir.values().map(UnsyncedDir::len).sum::<usize>()
            );
        }
        s.sync_dir_node(b).unwrap();
        assert!(!s.unsynced_names.lock().by_dir.contains_key(&b));
    }

    /// An entry owed twice owes the stricter: a syncfs after the later ticket beats a
    /// logged record, and an unlogged record beats a logged one.
    #[test]
    fn an_entry_owed_twice_owes_the_stricter() {
        use NewChild::*;
        let kind = |n: NewChild| match n {
            InPlace(t) => (true, Some(t)),
            FromSpare { logged } => (false, logged),
        };
        let spare = |l| FromSpare { logged: l };
        assert_eq!(kind(InPlace(3).join(InPlace(5))), (true, Some(5)));
        assert_eq!(kind(spare(Some(9)).join(InPlace(2))), (true, Some(2)));
        assert_eq!(kind(InPlace(2).join(spare(None))), (true, Some(2)));
        assert_eq!(kind(spare(Some(4)).join(spare(None))), (false, None));
        assert_eq!(kind(spare(Some(4)).join(spare(Some(6)))), (false, Some(4)));
    }

    #[test]
    fn read_only_store_refuses_writes() {
        let (d, s) = scratch();
        drop(s);
        let ro = Store::open(
            &d.path().join("store"),
            OpenOptions {
                read_only: true,
                cache_bytes: 0,
            },
        )
        .unwrap();
        assert!(matches!(
            ro.records.update(ro.root(), |_| Ok(())),
            Err(Error::ReadOnly)
        ));
    }

    #[test]
    fn second_writer_is_refused() {
        let (d, _s) = scratch();
        match Store::open(&d.path().join("store"), OpenOptions::default()) {
            Err(Error::StoreLocked { holder, .. }) => assert!(holder.contains("pid")),
            other => panic!("expected store_locked, got {:?}", other.err()),
        }
    }
}
