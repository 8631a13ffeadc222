//! The store: the truth on disk. It knows nothing of FUSE or of the index.
//!
//! `Store` opens a store, owns its components and hands out views; it holds no
//! operation of its own (docs/DESIGN.md, "Module map"). Components own state:
//! - `records`: node records, written whole under a stripe lock, cached by the one
//!   writer (invariant 2), behind the `lock::Fence` (invariant 7);
//! - `blobs`: the blob-store seam and its local implementation (invariants 1 and 5);
//! - `content::{Sessions, ReadPattern}`, `revisions::Revisions`, `chunk_lists::ChunkLists`,
//!   `pins`, `sweep::SweepQueue`, `dirsync::DirDebts`, `fsynclog::FsyncLog`,
//!   `spare::Spares`, `event::Followers`.
//!
//! Views are the operations, each a struct of references to exactly the components
//! (and lower views) it uses, made per call by `Store::{names, tree, data, attrs, trash,
//! sweeper, fsync}`:
//! - `names::Names`: lookup, readdir, paths (invariant 3), read only;
//! - `tree::Tree`: create, link, unlink, rmdir, rename (invariant 3);
//! - `content::Data`: write sessions, reads, commits, revisions (invariants 4 and 5);
//! - `attr::Attrs`: attributes and xattrs;
//! - `trash::Trash`: the trash and restoring revisions (invariant 6);
//! - `sweep::Sweeper`: blob references, sweeps, revision retention (invariant 1);
//! - `dirsync::Fsync`: what fsync and fsyncdir make durable (invariants 11 and 12).
//!
//! They stand in layers: `Names`, `Fsync` and `Sweeper` use components only; `Data`
//! uses `Fsync` and `Sweeper`; `Trash` uses `Data`; `Tree` uses `Trash`; `Attrs` uses
//! `Data`. `check` (fsck, scrub, gc) reads the store from the side.

pub mod attr;
pub mod blobs;
pub mod check;
pub mod chunk_lists;
pub mod content;
pub mod dirsync;
pub mod error;
pub mod event;
mod fault;
pub mod fsynclog;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod names;
pub mod node;
pub mod pins;
pub mod records;
pub mod refs;
pub mod remote;
pub mod revisions;
pub mod snapshot;
pub mod snapshot_ops;
mod spare;
pub mod stream;
pub mod sweep;
pub mod trash;
pub mod tree;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

pub use error::{Error, Result};
pub use event::{InvalidateFn, Stale};
pub use node::{Kind, NodeId, NodeRecord, Time};

use blobs::{BlobStore, LocalBlobs, RemoteBlobs};
use error::IoContext;
use layout::{Format, Layout};
use lock::{Fence, StoreLock};
use records::Records;

#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    pub read_only: bool,
    /// Verified-chunk cache size in bytes.
    pub cache_bytes: usize,
    /// Read the tree as this snapshot saw it (read-only opens only).
    pub snapshot: Option<String>,
    /// A store bound to an object store: the bound of its local blob cache in bytes
    /// (None: half the size of the disk under the store; 0: no bound).
    pub cache_size: Option<u64>,
    /// A writer of a store on an object store takes its lease unless this is set (a
    /// clone being filled, which publishes nothing).
    pub no_lease: bool,
    /// The lease's TTL (None: `lease::DEFAULT_TTL`).
    pub lease_ttl: Option<std::time::Duration>,
    /// A mount: an object store that cannot be reached does not refuse the open; the
    /// lease is taken later (`Store::retry_lease`), and nothing is published before.
    pub lease_later: bool,
    /// Open as a follower of the store's published state (`remote::follow`): the
    /// local lock is taken, the lease is not, and every change is refused but the
    /// published ones the follower applies. Only for a store on an object store.
    pub follower: bool,
}

pub struct Store {
    pub layout: Layout,
    pub format: Format,
    /// Blobs, through the seam: what content, the fsync log and the checks use.
    pub blobs: Arc<dyn BlobStore>,
    /// The same blobs' local disk: its staging pool and filesystem sync tickets.
    local: Arc<LocalBlobs>,
    /// The blobs' object store, for a store bound to one (`remote`).
    remote: Option<Arc<RemoteBlobs>>,
    /// A writer's lease on that object store (taken at open, or later by a mount that
    /// could not reach the object store then).
    lease: std::sync::OnceLock<Arc<remote::lease::Lease>>,
    /// A follower's state (`OpenOptions::follower`).
    follower: Option<Arc<remote::follow::Follower>>,
    /// `-o remote_sync=fsync`: an fsync returns once its change is published.
    remote_sync: std::sync::atomic::AtomicBool,
    /// May this process change the store (invariant 7)?
    fence: Arc<Fence>,
    /// Node records: read, written whole, cached (invariant 2).
    pub records: Records,
    /// Open write sessions (invariant 4).
    pub sessions: content::Sessions,
    /// Earlier records of files (invariant 6).
    pub revisions: content::Revisions,
    /// Files' chunk lists, manifest blobs' cached.
    pub(crate) chunk_lists: Arc<content::ChunkLists>,
    /// Blob reference counts (a writer's; see `refs`).
    pub(crate) refs: Arc<refs::Refs>,
    /// Retention in force (the format's defaults, possibly overridden at mount).
    policy: Mutex<layout::Policy>,
    /// Open nodes: never purged while open.
    pub pins: pins::Pins,
    /// Blobs that may have lost their last reference, swept in batches.
    sweep_queue: sweep::SweepQueue,
    /// Who follows the store's changes: the index (events), the kernel (staleness).
    pub followers: event::Followers,
    /// Sequential readers, whose next chunks are loaded ahead.
    read_pattern: content::ReadPattern,
    /// Per directory, what its next fsyncdir must make durable besides its own entries.
    debts: dirsync::DirDebts,
    /// A writer's fsync log (see `fsynclog`): one fdatasync per file fsync.
    fsync_log: Option<fsynclog::FsyncLog>,
    /// Node files and entries made ahead for creates (see `spare`).
    spares: spare::Spares,
    /// Held by whatever binds or removes trashed nodes (restore, purge, expiry), so
    /// a purge never removes a node a restore is naming again.
    trash_ops: Mutex<()>,
    /// Snapshots of the tree, and the copies of what changed since (shared with
    /// `records`, which copies a record before it changes).
    snapshots: Arc<snapshot::Snapshots>,
}

impl Store {
    /// Create a new store at `path` with an empty root directory owned by the caller.
    pub fn init(path: &Path, chunk_size: u32) -> Result<Format> {
        Store::init_with(path, chunk_size, layout::Policy::default())
    }

    /// Create a new store with the given retention defaults.
    pub fn init_with(path: &Path, chunk_size: u32, policy: layout::Policy) -> Result<Format> {
        Store::init_full(path, chunk_size, policy, None)
    }

    /// Create a new store that is another's copy: its store id and root (a clone of
    /// what was published to an object store).
    pub fn init_as(
        path: &Path,
        chunk_size: u32,
        store_id: uuid::Uuid,
        root: NodeId,
    ) -> Result<Format> {
        Store::init_full(
            path,
            chunk_size,
            layout::Policy::default(),
            Some((store_id, root)),
        )
    }

    fn init_full(
        path: &Path,
        chunk_size: u32,
        policy: layout::Policy,
        ids: Option<(uuid::Uuid, NodeId)>,
    ) -> Result<Format> {
        let layout = Layout::new(path);
        let mut format = layout.create(chunk_size)?;
        format.policy = policy;
        if let Some((id, root)) = ids {
            format.store_id = id;
            format.root = root;
        }
        let blobs = Arc::new(LocalBlobs::new(layout.clone(), 0));
        let store = Store::assemble(layout, format.clone(), blobs, None, false, None);
        // SAFETY: plain getters.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let rec = NodeRecord::new(Kind::Dir, 0o755, uid, gid, 1);
        let p = store.layout.node_path(format.root);
        fs::create_dir_all(&p).ctx(|| format!("create {}", p.display()))?;
        store
            .records
            .write(format.root, &rec, true, records::Old::Fresh)?;
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
        let local = Arc::new(LocalBlobs::new(layout.clone(), cache));
        let remote = remote::open_blobs(&layout, &local, &opts)?;
        let mut store = Store::assemble(layout, format, local, remote, opts.read_only, lock);
        store.recover_crashed_writer()?;
        store.snapshots.load(!opts.read_only)?;
        if !opts.read_only {
            // A receive a crash interrupted happens whole before anything else.
            store.streams().resume()?;
            if opts.follower {
                if store.remote.is_none() {
                    return Err(Error::InvalidArgument(format!(
                        "{} is not on an object store: there is nothing to follow",
                        store.layout.root.display()
                    )));
                }
                store.fence.follow();
                store.follower = Some(Arc::default());
            } else if !opts.no_lease {
                // A mount that just found the object store unreachable does not wait
                // for it again: the lease is taken later.
                let unreachable = || {
                    store
                        .remote
                        .as_ref()
                        .and_then(|b| b.state().last_error)
                        .map(|e| Error::Remote {
                            op: "reach the object store".into(),
                            detail: e,
                        })
                };
                let taken = match unreachable().filter(|_| opts.lease_later) {
                    Some(e) => Err(e),
                    None => remote::publish::take_lease(&store, opts.lease_ttl),
                };
                match taken {
                    Ok(l) => store.set_lease(l),
                    Err(e @ Error::Remote { .. }) if opts.lease_later => log::warn!(
                        "the object store's lease cannot be taken now ({e}): serving locally, publishing nothing until it is taken"
                    ),
                    Err(e) => return Err(e),
                }
            }
        }
        if let Some(name) = &opts.snapshot {
            if !opts.read_only {
                return Err(Error::InvalidArgument(
                    "a snapshot is mounted read-only: add -o ro".into(),
                ));
            }
            store.records.view_snapshot(name)?;
            store.snapshots.hold(name)?;
        }
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
        local: Arc<LocalBlobs>,
        remote: Option<Arc<RemoteBlobs>>,
        read_only: bool,
        lock: Option<StoreLock>,
    ) -> Store {
        let policy = format.policy.clone();
        let spares = spare::Spares::new(layout.clone(), local.clone());
        let blobs: Arc<dyn BlobStore> = match &remote {
            Some(r) => r.clone(),
            None => local.clone(),
        };
        let fence = Arc::new(Fence::new(read_only, lock));
        let chunk_lists = Arc::new(content::ChunkLists::new(blobs.clone()));
        let refs = Arc::new(refs::Refs::new(
            layout.clone(),
            chunk_lists.clone(),
            blobs.clone(),
        ));
        let snapshots = Arc::new(snapshot::Snapshots::new(
            layout.clone(),
            blobs.clone(),
            refs.clone(),
        ));
        Store {
            records: Records::new(
                layout.clone(),
                blobs.clone(),
                fence.clone(),
                snapshots.clone(),
                refs.clone(),
            ),
            snapshots,
            debts: dirsync::DirDebts::new(layout.clone(), local.clone()),
            revisions: content::Revisions::new(layout.clone(), blobs.clone(), refs.clone()),
            chunk_lists,
            refs,
            layout,
            format,
            blobs,
            local,
            remote,
            lease: Default::default(),
            follower: None,
            remote_sync: Default::default(),
            fence,
            sessions: content::Sessions::default(),
            policy: Mutex::new(policy),
            pins: pins::Pins::default(),
            sweep_queue: sweep::SweepQueue::default(),
            read_pattern: content::ReadPattern::default(),
            fsync_log: None,
            spares,
            followers: event::Followers::default(),
            trash_ops: Mutex::new(()),
        }
    }

    /// Names, read only: lookup, readdir, paths.
    pub fn names(&self) -> names::Names<'_> {
        names::Names {
            layout: &self.layout,
            records: &self.records,
            root: self.format.root,
            at: None,
        }
    }

    /// Changes of names: create, link, unlink, rmdir, rename.
    pub fn tree(&self) -> tree::Tree<'_> {
        tree::Tree {
            layout: &self.layout,
            records: &self.records,
            fence: &self.fence,
            spares: &self.spares,
            debts: &self.debts,
            followers: &self.followers,
            names: self.names(),
            trash: self.trash(),
            data: self.data(),
        }
    }

    /// Files' bytes: sessions, reads, writes, commits.
    pub fn data(&self) -> content::Data<'_> {
        content::Data {
            layout: &self.layout,
            records: &self.records,
            blobs: &self.blobs,
            local: &self.local,
            fence: &self.fence,
            sessions: &self.sessions,
            revisions: &self.revisions,
            chunk_lists: &self.chunk_lists,
            followers: &self.followers,
            read_pattern: &self.read_pattern,
            debts: &self.debts,
            fsync_log: &self.fsync_log,
            policy: &self.policy,
            pins: &self.pins,
            chunk_size: self.chunk_size(),
            fsync: self.fsync(),
            sweeper: self.sweeper(),
        }
    }

    /// Attributes and xattrs.
    pub fn attrs(&self) -> attr::Attrs<'_> {
        attr::Attrs {
            records: &self.records,
            fence: &self.fence,
            sessions: &self.sessions,
            followers: &self.followers,
            data: self.data(),
        }
    }

    /// Undo: the trash and restoring revisions.
    pub fn trash(&self) -> trash::Trash<'_> {
        trash::Trash {
            layout: &self.layout,
            records: &self.records,
            fence: &self.fence,
            pins: &self.pins,
            sessions: &self.sessions,
            revisions: &self.revisions,
            policy: &self.policy,
            followers: &self.followers,
            debts: &self.debts,
            spares: &self.spares,
            ops: &self.trash_ops,
            names: self.names(),
            sweeper: self.sweeper(),
            data: self.data(),
        }
    }

    /// Freeing: blob references, sweeps, revision retention.
    pub fn sweeper(&self) -> sweep::Sweeper<'_> {
        sweep::Sweeper {
            layout: &self.layout,
            records: &self.records,
            blobs: &*self.blobs,
            sessions: &self.sessions,
            revisions: &self.revisions,
            chunk_lists: &self.chunk_lists,
            sweep_queue: &self.sweep_queue,
            policy: &self.policy,
            refs: &self.refs,
        }
    }

    /// Snapshots: create, list, remove, diff.
    pub fn snapshots(&self) -> snapshot_ops::SnapshotOps<'_> {
        snapshot_ops::SnapshotOps {
            snaps: &self.snapshots,
            fence: &self.fence,
            names: self.names(),
            sweeper: self.sweeper(),
        }
    }

    /// Send and receive snapshots as streams.
    pub fn streams(&self) -> stream::Streams<'_> {
        stream::Streams {
            layout: &self.layout,
            snaps: &self.snapshots,
            records: &self.records,
            names: self.names(),
            blobs: &*self.blobs,
            chunk_lists: &self.chunk_lists,
            revisions: &self.revisions,
            fence: &self.fence,
            followers: &self.followers,
            pins: &self.pins,
            writing: self.sessions.writing(),
            store_id: self.format.store_id.to_string(),
            root: self.format.root,
            chunk_size: self.format.chunk_size,
        }
    }

    /// fsync and fsyncdir.
    pub fn fsync(&self) -> dirsync::Fsync<'_> {
        dirsync::Fsync {
            layout: &self.layout,
            records: &self.records,
            blobs: &*self.blobs,
            local: &self.local,
            fence: &self.fence,
            chunk_lists: &self.chunk_lists,
            debts: &self.debts,
            fsync_log: &self.fsync_log,
        }
    }

    /// Retention in force.
    pub fn policy(&self) -> layout::Policy {
        self.policy.lock().clone()
    }

    pub fn set_policy(&self, p: layout::Policy) {
        *self.policy.lock() = p;
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

    /// Whether this process may change the store; `mount -o remount,ro` pauses it.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// The fencing epoch this writer holds (None for read-only opens).
    pub fn epoch(&self) -> Option<u64> {
        self.fence.epoch()
    }

    /// The inode number of a node (stable across remounts).
    pub fn ino_of(&self, id: NodeId) -> u64 {
        node::ino_of(self.root(), id)
    }

    /// Finish what a writer that crashed (or lost power) left, before anything reads:
    /// blobs its sweep had moved aside go back, its blob reference counts are recovered
    /// (a writer's open), and its fsync logs are replayed, counted. A writer does it
    /// under its own lock; any other open only if it can take the lock for a moment (if
    /// a writer holds it, that writer has done it already), and a replay that changed
    /// records there makes the next writer count afresh.
    fn recover_crashed_writer(&self) -> Result<()> {
        let layout = &self.layout;
        let blobs = &*self.local;
        if !self.fence.read_only() {
            blobs.put_back(&blobs.swept_aside()?)?;
            self.refs.open(&self.sweeper())?;
            if fsynclog::pending(layout)? {
                // Through the seam: blobs the replay writes are queued for upload too.
                let t = fsynclog::Target {
                    layout,
                    blobs: &*self.blobs,
                    refs: Some(&self.refs),
                };
                fsynclog::recover(&t)?;
            }
            return Ok(());
        }
        let logs = fsynclog::pending(layout)?;
        let aside = blobs.swept_aside()?;
        if !logs && aside.is_empty() {
            return Ok(());
        }
        match StoreLock::acquire(layout) {
            Ok(l) => {
                blobs.put_back(&aside)?;
                let t = fsynclog::Target {
                    layout,
                    blobs,
                    refs: None,
                };
                if logs {
                    // Before: a replay that fails halfway has changed records too.
                    refs::mark_stale(layout, "an fsync log was replayed by a read-only open");
                    fsynclog::recover(&t)?;
                }
                drop(l);
                Ok(())
            }
            Err(Error::StoreLocked { .. }) => Ok(()),
            Err(e) => {
                log::warn!("what a crashed writer left cannot be finished now: {e}");
                Ok(())
            }
        }
    }

    /// Clean close of a writer: make everything durable and delete the fsync log, so a
    /// cleanly closed store has nothing to replay.
    pub fn close_fsync_log(&self) -> Result<()> {
        if let Err(e) = self.records.flush_deferred() {
            log::warn!("closing: directory times not all written: {e}");
        }
        self.local.drain_pool();
        self.spares.close();
        if let Some(r) = &self.remote {
            if let Err(e) = r.flush() {
                log::warn!("closing: the upload ledger was not written: {e}");
            }
        }
        let res = match &self.fsync_log {
            Some(l) => l.close(&|| self.local.sync_filesystem()),
            None => Ok(()),
        };
        // The counts are marked clean only over a store whose files are durable.
        if res.is_ok() && self.refs.counting() && self.local.sync_filesystem().is_ok() {
            self.refs.close();
        }
        res
    }

    /// Take the object store's lease now, for a store opened read-write by a check
    /// (`decofs gc` of an unmounted bound store deletes from the bucket only with it).
    pub fn take_lease(&self) -> Result<()> {
        if self.lease().is_none() && !self.read_only() && self.remote.is_some() {
            self.set_lease(remote::publish::take_lease(self, None)?);
        }
        Ok(())
    }

    /// A writer's lease on its object store.
    pub fn lease(&self) -> Option<&Arc<remote::lease::Lease>> {
        self.lease.get()
    }

    fn set_lease(&self, l: Option<Arc<remote::lease::Lease>>) {
        if let Some(l) = l {
            let _ = self.lease.set(l);
        }
    }

    /// A writer of a store on an object store that has no lease yet (the object store
    /// could not be reached at open): try to take it. `Ok(true)`: held now (or not
    /// needed). Another writer's live lease is retried later; a head another writer
    /// moved since this store's last publish makes this writer read-only for good (its
    /// changes stay local: `decofs unpublished`).
    pub fn retry_lease(&self, ttl: Option<std::time::Duration>) -> Result<bool> {
        if self.lease().is_some() || self.remote.is_none() || self.follower.is_some() {
            return Ok(true);
        }
        self.writable()?;
        match remote::publish::take_lease(self, ttl) {
            Ok(l) => {
                self.set_lease(l);
                Ok(true)
            }
            Err(e @ Error::RemoteFenced(_)) => {
                log::error!("{e}; the store is read-only from now on");
                if let Some(b) = &self.remote {
                    b.note_error(&e);
                }
                self.fence.lose();
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// The object store's side of the blobs, for a store bound to one.
    /// `-o remote_sync=fsync` (a store on an object store): see [`Store::synced`].
    pub fn set_remote_sync(&self, on: bool) {
        self.remote_sync.store(
            on && self.remote.is_some(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// fsync(2) of a file: its content and record durable on the local disk, and with
    /// `remote_sync=fsync` published (its record written first: a publish sends
    /// records, not the fsync log's deltas). A failed publish fails the fsync.
    pub fn fsync_file(&self, id: NodeId) -> Result<()> {
        let publish = self.remote_sync.load(std::sync::atomic::Ordering::Relaxed);
        if publish {
            self.data().commit(id, false)?;
        }
        self.data().commit(id, true)?;
        self.synced()
    }

    /// An fsync made a change durable on the local disk. With `remote_sync=fsync` it
    /// returns once the change is published (a failed publish fails the fsync).
    pub fn synced(&self) -> Result<()> {
        if self.remote_sync.load(std::sync::atomic::Ordering::Relaxed) {
            crate::blocking::soon();
            remote::publish::publish(self)?;
        }
        Ok(())
    }

    /// A follower's state (a store opened with `OpenOptions::follower`).
    pub fn follower(&self) -> Option<&Arc<remote::follow::Follower>> {
        self.follower.as_ref()
    }

    pub fn remote(&self) -> Option<&Arc<RemoteBlobs>> {
        self.remote.as_ref()
    }

    /// Free and total space of the disk under the store.
    pub fn statfs(&self) -> Result<libc::statvfs> {
        self.layout.statfs()
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

/// What an fsync log append said, or None if it failed: the log is given up then (see
/// `fsynclog`), and each fsync syncs the files themselves from then on.
pub(crate) fn appended<T>(res: Result<T>) -> Option<T> {
    res.map_err(|e| log::warn!("fsync log given up, fsync syncs the files themselves: {e}"))
        .ok()
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
        s.tree()
            .create(s.root(), std::ffi::OsStr::new(name), file_node())
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
        s.fsync().sync_dir_node(root).unwrap();
        assert_eq!(
            s.records.read_disk(root).unwrap(),
            seen,
            "fsyncdir writes them"
        );

        s.tree().unlink(root, std::ffi::OsStr::new("a")).unwrap();
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

    /// A new store with 64 KiB chunks whose trash keeps files however young (the tests
    /// delete files they just made).
    pub fn scratch() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("store");
        let policy = layout::Policy {
            trash_min_age_secs: 0,
            ..Default::default()
        };
        Store::init_with(&p, 64 * 1024, policy).unwrap();
        let s = Store::open(&p, OpenOptions::default()).unwrap();
        (dir, s)
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
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(
            ro.records.update(ro.root(), |_| Ok(())),
            Err(Error::ReadOnly)
        ));
    }

    /// A writer killed while its sweep had a blob moved aside (it may have been a blob
    /// a writer had just reused, so a file names it) finds it back at the next open,
    /// read-only ones included; one whose blob is back in place already is removed.
    #[test]
    fn the_next_open_puts_back_what_a_killed_sweep_moved_aside() {
        for read_only in [false, true] {
            let (d, s) = scratch();
            let id = new_file(&s, "f");
            s.data().write(id, 0, &[5u8; 70_000]).unwrap();
            let hs = content::record_hashes(&s.records.read(id).unwrap());
            // As sweeps of a process that no longer runs (no pid is i32::MAX).
            let sessions = s.layout.sessions();
            let aside = |i: usize, h: &node::Hash| {
                sessions.join(format!("doomed.{}.{i}.{}.tmp", i32::MAX, node::hash_hex(h)))
            };
            fs::rename(s.local.path_of(&hs[0]), aside(1, &hs[0])).unwrap();
            fs::copy(s.local.path_of(&hs[1]), aside(2, &hs[1])).unwrap();
            drop(s);
            let s = Store::open(
                &d.path().join("store"),
                OpenOptions {
                    read_only,
                    ..Default::default()
                },
            )
            .unwrap();
            assert!(!aside(1, &hs[0]).exists() && !aside(2, &hs[1]).exists());
            assert_eq!(s.data().read(id, 0, 100_000).unwrap(), vec![5u8; 70_000]);
        }
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
