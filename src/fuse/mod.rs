//! The fuser adapter: turns kernel requests into store calls and store results into
//! replies. It owns only what the kernel protocol needs: the inode table (FUSE node id
//! <-> store node id, with lookup counts), open file and directory handles, and the one
//! mapping from `store::Error` to an errno. Every invariant is enforced by `store`.
//!
//! Listings: a child's type comes from its node id ([`NodeId::kind_hint`]), so readdir
//! reads no child record, and readdirplus lists a non-directory child whose record is
//! not in memory name-only (nodeid 0: the kernel shows the name and type and creates no
//! inode). Those records are then read in the background (`ReadAhead`) or, if a lookup
//! comes first, in one batch per directory. A listed directory's subdirectories are read
//! ahead of the walk (`DirAhead`). A lookup that finds nothing is answered as a
//! negative entry the kernel may cache: every name is bound through the kernel except by
//! a trash restore, which invalidates the name (`store::Stale::Entry`). For the same
//! reason the kernel may cache listings (`FOPEN_CACHE_DIR`): opendir lists nothing, the
//! first readdir of a handle lists, and a directory the kernel has cached is not listed.

mod ops;

use std::collections::HashMap;
use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock};
use std::time::Duration;

use fuser::{Errno, FileAttr, FileType, INodeNo};

use crate::store::{Error, Kind, NodeId, NodeRecord, Store};

/// How long the kernel may cache names and attributes of a read-write mount. All changes
/// pass through this mount (the single writer): the kernel updates or invalidates its
/// view on every request it sends, and the changes made outside a request (a restore
/// through the control socket) invalidate the inodes they touch. So the view only goes
/// stale where the daemon changes something on its own: see [`SHORT_TTL`].
const LONG_TTL: Duration = Duration::from_secs(3600);
/// For a read-only mount (a writer it cannot see may sit beside it), and for a file with
/// an open write session: its last close commits the content, which changes st_blocks
/// without the kernel knowing.
const SHORT_TTL: Duration = Duration::from_secs(1);

pub struct DecoFs {
    store: Arc<Store>,
    inodes: RwLock<HashMap<u64, (NodeId, u64)>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// Directories just listed with name-only entries (children whose records were not
    /// read), and how far their records have been read since. A lookup of such a child
    /// (`ls -l`, `stat` after the listing) reads the listing's records together, as
    /// readdirplus would have, instead of one per request.
    cold_listings: Mutex<HashMap<NodeId, ColdListing>>,
    /// Records to read in the background: the children a listing named without reading
    /// them (see [`ReadAhead`]).
    ahead: ReadAhead,
    /// Subdirectories to read before the walk gets there (see [`DirAhead`]).
    dirs_ahead: DirAhead,
}

/// Reads the subdirectories of a listed directory ahead of the walk, several at once.
///
/// A walk (`find`, `ls -lR`, `du`, `rm -r`, `cp -r` out of the mount) lists one
/// directory after another, and on a cold disk each listing waits for a chain of
/// reads: the directory node's parent in `nodes/`, its inode and blocks, its entries'
/// inodes, its subdirectories' records. The walk itself keeps one read in flight. So a
/// listing queues its subdirectories here, and `DIR_AHEAD_THREADS` readers warm them
/// (their entries, and the records a listing of them hands the kernel) while the walk
/// is still busy above them: a stack, so the newest listing's first subdirectory, where
/// a depth-first walk goes next, is read first. Only one level ahead of what was
/// listed, and a full stack drops its oldest entries: it only ever saves time.
struct DirAhead {
    shared: Arc<(Mutex<DirStack>, Condvar)>,
}

#[derive(Default)]
struct DirStack {
    dirs: Vec<NodeId>,
    stop: bool,
}

const DIR_AHEAD_THREADS: usize = 4;
const DIR_AHEAD_MAX: usize = 4096;

impl DirAhead {
    fn start(store: &Arc<Store>) -> DirAhead {
        let shared = Arc::new((Mutex::new(DirStack::default()), Condvar::new()));
        for _ in 0..DIR_AHEAD_THREADS {
            let (shared, store) = (shared.clone(), Arc::downgrade(store));
            let spawned = std::thread::Builder::new()
                .name("decofs-dirahead".into())
                .spawn(move || loop {
                    let dir = {
                        let (m, cv) = &*shared;
                        let mut st = m.lock();
                        loop {
                            if st.stop {
                                return;
                            }
                            if let Some(d) = st.dirs.pop() {
                                break d;
                            }
                            cv.wait(&mut st);
                        }
                    };
                    let Some(s) = store.upgrade() else { return };
                    // Only warms caches: errors are left for the listing to report.
                    if let Ok(entries) = s.names().readdir(dir) {
                        s.records.prefetch(&ops::records_a_listing_reads(&entries));
                    }
                });
            if let Err(e) = spawned {
                log::warn!("no background directory reader: {e}");
            }
        }
        DirAhead { shared }
    }

    /// Queue `dirs` (in listing order) to be read ahead, the first one first.
    fn push(&self, dirs: &[NodeId]) {
        if dirs.is_empty() {
            return;
        }
        let (m, cv) = &*self.shared;
        let mut st = m.lock();
        st.dirs.extend(dirs.iter().rev());
        if st.dirs.len() > DIR_AHEAD_MAX {
            let excess = st.dirs.len() - DIR_AHEAD_MAX;
            st.dirs.drain(..excess);
        }
        cv.notify_all();
    }

    fn stop(&self) {
        let (m, cv) = &*self.shared;
        m.lock().stop = true;
        cv.notify_all();
    }
}

impl Drop for DirAhead {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads records in the background, so that a name-only listing answers at once and
/// the attributes are in memory by the time something asks for them (`ls -l` after
/// `find`, a file manager's second pass). The foreground never waits for it: a lookup
/// that comes first reads what it needs itself (see `lookup_after_listing`).
struct ReadAhead {
    tx: crossbeam_channel::Sender<NodeId>,
    stop: Arc<AtomicBool>,
}

/// Background readers, and how many ids may wait for them (more are dropped: reading
/// them is only ever an optimisation). One reader adds one I/O to what the walk has in
/// flight: measured on a 10,338-file tree, a cold `find` took 1.2-1.5 s with one reader,
/// 1.3-2.8 s with four and 1.0-1.2 s with none, and the `ls -lR` right after it 1.6-2.2
/// s, 2.3-4.6 s and 3.0 s (records read then, one lookup per file); reading every
/// record during the listing, as before typed ids, took 2.1-2.5 s and 1.8-2.6 s.
const READ_AHEAD_THREADS: usize = 1;
const READ_AHEAD_QUEUE: usize = 1 << 16;

impl ReadAhead {
    fn start(store: &Arc<Store>) -> ReadAhead {
        let (tx, rx) = crossbeam_channel::bounded::<NodeId>(READ_AHEAD_QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..READ_AHEAD_THREADS {
            let (rx, stop, store) = (rx.clone(), stop.clone(), Arc::downgrade(store));
            let spawned = std::thread::Builder::new()
                .name("decofs-readahead".into())
                .spawn(move || {
                    // Ends when the filesystem is dropped (the sender goes) or destroyed.
                    while let Ok(id) = rx.recv() {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let Some(s) = store.upgrade() else { return };
                        if !s.records.cached(id) {
                            let _ = s.records.read(id); // errors show when read for real
                        }
                    }
                });
            if let Err(e) = spawned {
                log::warn!("no background record reader: {e}");
            }
        }
        ReadAhead { tx, stop }
    }

    fn push(&self, ids: &[NodeId]) {
        for id in ids {
            if self.tx.try_send(*id).is_err() {
                return;
            }
        }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// See [`DecoFs::cold_listings`].
struct ColdListing {
    entries: Arc<Vec<(OsString, NodeId)>>,
    /// Entries before this index have had their records read.
    next: usize,
}

/// Most directories remembered in [`DecoFs::cold_listings`]; past this the map starts
/// over (a walk moves on, and a forgotten listing only costs one read per lookup).
const COLD_LISTINGS_MAX: usize = 256;

enum Handle {
    File {
        id: NodeId,
        write: bool,
    },
    /// A snapshot of the entries, shared so a readdir call does not copy it.
    Dir {
        id: NodeId,
        /// The listing the handle reads from, made by its first readdir (none yet when the
        /// kernel serves the directory from its cache) and again at every offset 0.
        entries: Option<DirEntries>,
    },
}

/// A directory listing: names and the nodes they name, in order.
type DirEntries = Arc<Vec<(OsString, NodeId)>>;

pub fn errno(e: &Error) -> Errno {
    match e {
        Error::Integrity { .. } | Error::CorruptRecord { .. } | Error::Io { .. } => {
            log::error!("{e}")
        }
        _ => log::debug!("{e}"),
    }
    Errno::from_i32(e.errno())
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

impl DecoFs {
    pub fn new(store: Arc<Store>) -> DecoFs {
        // This mount is the store's only writer: its records can be served from memory.
        store.records.enable_cache();
        let mut inodes = HashMap::new();
        inodes.insert(1, (store.root(), u64::MAX / 2));
        DecoFs {
            inodes: RwLock::new(inodes),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            cold_listings: Mutex::new(HashMap::new()),
            ahead: ReadAhead::start(&store),
            dirs_ahead: DirAhead::start(&store),
            store,
        }
    }

    fn attr(&self, id: NodeId, r: &NodeRecord) -> FileAttr {
        let size = r.apparent_size();
        let blocks = if r.kind == Kind::Dir {
            8
        } else {
            r.stored.div_ceil(512)
        };
        FileAttr {
            ino: INodeNo(self.store.ino_of(id)),
            size,
            blocks,
            atime: r.atime.to_system(),
            mtime: r.mtime.to_system(),
            ctime: r.ctime.to_system(),
            crtime: r.crtime.to_system(),
            kind: file_type(r.kind),
            perm: (r.mode & 0o7777) as u16,
            nlink: r.nlink,
            uid: r.uid,
            gid: r.gid,
            rdev: r.rdev,
            blksize: 4096,
            flags: 0,
        }
    }

    /// How long the kernel may cache the name and attributes of `id`.
    fn ttl(&self, id: NodeId) -> Duration {
        if self.store.read_only() || self.store.sessions.contains(id) {
            SHORT_TTL
        } else {
            LONG_TTL
        }
    }

    /// How long the kernel may remember that a name does not exist.
    fn negative_ttl(&self) -> Duration {
        if self.store.read_only() {
            SHORT_TTL
        } else {
            LONG_TTL
        }
    }

    /// The kernel learned about `id` (lookup, create, readdirplus): count it.
    fn remember(&self, id: NodeId) -> u64 {
        let ino = self.store.ino_of(id);
        let mut t = self.inodes.write();
        let e = t.entry(ino).or_insert((id, 0));
        e.0 = id;
        e.1 += 1;
        ino
    }

    fn forget_ino(&self, ino: u64, n: u64) {
        if ino == 1 {
            return;
        }
        let mut t = self.inodes.write();
        if let Some(e) = t.get_mut(&ino) {
            e.1 = e.1.saturating_sub(n);
            if e.1 == 0 {
                t.remove(&ino);
            }
        }
    }

    fn node(&self, ino: INodeNo) -> Result<NodeId, Errno> {
        self.inodes
            .read()
            .get(&ino.0)
            .map(|e| e.0)
            .ok_or(Errno::ENOENT)
    }

    /// A new open handle; an open file is pinned so purging never frees it under a reader.
    fn new_handle(&self, h: Handle) -> u64 {
        if let Handle::File { id, .. } = &h {
            self.store.pins.pin(*id);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, h);
        fh
    }
}

/// Run one request's handler. A panic in it is caught here: the reply it owned is
/// dropped unanswered, which fuser answers EIO, and the thread goes on serving. Locks
/// are `parking_lot`'s and do not poison, so the lock the panic held is free again and
/// no later request inherits the failure (docs/DESIGN.md, "Panics").
///
/// It also counts the request and its time under `op` ([`STATS`], for `decofs stats`):
/// two relaxed atomic adds on the operation's own cache line and two clock reads.
#[inline(always)]
fn guard(op: &'static str, f: impl FnOnce()) {
    let started = std::time::Instant::now();
    if let Err(why) = crate::panics::catch(f) {
        log::error!("{op}: the request panicked ({why}); answered EIO");
    }
    STATS.ops[op_index(op)].add(started.elapsed());
}

/// Declares the operations `guard` counts: [`OPS`] (their names, in the order of
/// `Stats::ops`) and `op_index` (a name's slot; an unknown name takes the last,
/// "other"). `guard` is inlined with a constant name, so the lookup folds away.
macro_rules! counted_ops {
    ($($name:literal),* $(,)?) => {
        /// The operations counted, in the order of [`Stats::ops`]; the last is "other".
        pub const OPS: &[&str] = &[$($name,)* "other"];

        #[inline(always)]
        fn op_index(op: &str) -> usize {
            let mut i = 0;
            $(
                if op == $name {
                    return i;
                }
                i += 1;
            )*
            i
        }
    };
}

counted_ops!(
    "lookup",
    "forget",
    "getattr",
    "setattr",
    "readlink",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "open",
    "read",
    "write",
    "flush",
    "release",
    "fsync",
    "opendir",
    "readdir",
    "readdirplus",
    "releasedir",
    "fsyncdir",
    "statfs",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
    "access",
    "create",
    "fallocate",
    "lseek",
    "copy_file_range",
    "ioctl",
);

/// Requests served and the time they took, per operation, and the bytes read and
/// written through the mount, since the process started: what `decofs stats` samples
/// (`control::stats`). One process serves one mount. Only atomics: no request waits.
pub struct Stats {
    pub ops: [OpStat; OPS.len()],
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
}

/// One operation's count and total time. Each on its own cache line, so threads
/// serving different operations do not share one.
#[repr(align(64))]
pub struct OpStat {
    pub count: AtomicU64,
    pub nanos: AtomicU64,
}

impl OpStat {
    const fn new() -> OpStat {
        OpStat {
            count: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
        }
    }

    #[inline(always)]
    fn add(&self, took: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }
}

pub static STATS: Stats = Stats {
    ops: [const { OpStat::new() }; OPS.len()],
    bytes_read: AtomicU64::new(0),
    bytes_written: AtomicU64::new(0),
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Reading a directory ahead of its listing brings in what the listing hands the
    /// kernel: the records of subdirectories and of untyped ids, not those of files,
    /// symlinks and the like (listed name-only).
    #[test]
    fn read_ahead_reads_what_a_listing_hands_the_kernel() {
        let dir = NodeId::new_spread(Kind::Dir);
        let untyped = NodeId(uuid::Uuid::new_v4());
        let file = NodeId::new_near(dir, Kind::File);
        let link = NodeId::new_near(dir, Kind::Symlink);
        let entries: Vec<(OsString, NodeId)> = [dir, file, untyped, link]
            .iter()
            .enumerate()
            .map(|(i, id)| (OsString::from(format!("e{i}")), *id))
            .collect();
        assert_eq!(ops::records_a_listing_reads(&entries), vec![dir, untyped]);
    }

    /// Every operation `guard` is called with has a slot of its own (ops.rs names
    /// them), and the names are told apart.
    #[test]
    fn every_guarded_operation_is_counted_apart() {
        let src = include_str!("ops.rs");
        let mut named = 0;
        for part in src.split("super::guard(\"").skip(1) {
            let op = &part[..part.find('"').unwrap()];
            let i = op_index(op);
            assert!(i < OPS.len() - 1, "{op} has no slot");
            assert_eq!(OPS[i], op);
            named += 1;
        }
        assert_eq!(named, OPS.len() - 1);
        assert_eq!(op_index("nonsense"), OPS.len() - 1);
    }
}
