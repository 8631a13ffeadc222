//! fsync and fsyncdir: what they make durable, and how (invariants 11 and 12).
//!
//! A file's fsync logs its record, with the blobs it names that are not durable yet,
//! in the fsync log (one fdatasync), or syncs the files when there is no usable log.
//! A directory's fsyncdir also owes what its new entries name: the `nodes/`
//! directories that gained their node files, the inodes made on the spot (a syncfs),
//! and the records of new files made from spares. Those debts are kept per directory
//! (`Owed`), follow renames, and are bounded (docs/DESIGN.md, "Fsyncdir debts").

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use std::fs;
use std::path::{Path, PathBuf};

use super::blobs::{BlobStore, LocalBlobs};
use super::chunk_lists::ChunkLists;
use super::error::{Error, IoContext, Result};
use super::fsynclog::FsyncLog;
use super::layout::Layout;
use super::lock::Fence;
use super::node::{
    self, decode_body, encode_body, frame, unframe, Kind, NodeId, NodeRecord, Stored,
    INLINE_RECORD_LIMIT,
};
use super::records::Records;
use super::{appended, blobs, fsynclog, layout};

/// What a directory's fsyncdir owes beyond the directory itself, for the entries made
/// in it (or moved into it) since it was last synced. fsyncdir writes names, not the
/// inodes they name: on ext4 without a journal a new inode reaches the disk only with
/// its inode-table block, which nothing else writes for a while.
#[derive(Default)]
pub(super) struct UnsyncedDir {
    /// `nodes/` directories that gained a node file for one of the new entries: synced,
    /// so a durable name never points at a node whose own name in `nodes/` was lost,
    /// unless the fsync log holds every such node (replay recreates a lost node file
    /// that a durable entry names).
    pub(super) dirs: std::collections::HashSet<PathBuf>,
    /// The new entries' nodes.
    pub(super) children: HashMap<NodeId, NewChild>,
    /// Too many children to list: a syncfs that starts after this ticket covers them.
    pub(super) all_before: Option<u64>,
    /// A change the fsync log does not describe (a name removed or moved that it does
    /// not hold, the directory's own record): the directory itself is synced, unless
    /// a syncfs that started after this ticket did it.
    pub(super) changed: Option<u64>,
    /// Tombstones of names of this directory were appended to the fsync log, without
    /// a sync: its next fsyncdir syncs the log.
    pub(super) unnamed: bool,
}

impl UnsyncedDir {
    pub(super) fn len(&self) -> usize {
        self.dirs.len()
            + self.children.len()
            + self.changed.is_some() as usize
            + self.unnamed as usize
    }

    /// Owe what `other` owed too (a failed sync's debt, back).
    pub(super) fn merge(&mut self, other: UnsyncedDir) {
        self.dirs.extend(other.dirs);
        for (c, n) in other.children {
            owe_child(&mut self.children, c, n);
        }
        self.all_before = self.all_before.max(other.all_before);
        self.changed = self.changed.max(other.changed);
        self.unnamed |= other.unnamed;
    }
}

/// What every directory's fsyncdir owes, and how many entries that is in all.
#[derive(Default)]
pub(super) struct Owed {
    pub(super) by_dir: HashMap<NodeId, UnsyncedDir>,
    pub(super) entries: usize,
}

impl Owed {
    pub(super) fn take(&mut self, dir: NodeId) -> Option<UnsyncedDir> {
        let u = self.by_dir.remove(&dir)?;
        self.entries -= u.len();
        Some(u)
    }

    /// Change what `dir` owes with `f`, keeping the count.
    pub(super) fn with(&mut self, dir: NodeId, f: impl FnOnce(&mut UnsyncedDir)) {
        let u = self.by_dir.entry(dir).or_default();
        let before = u.len();
        f(u);
        self.entries = self.entries + u.len() - before;
    }
}

/// How a new entry's inodes become durable.
#[derive(Clone, Copy)]
pub(super) enum NewChild {
    /// Made on the spot (entry symlink, and the node unless it came from a spare):
    /// only a syncfs that started after the ticket covers them.
    InPlace(u64),
    /// A file made from a spare (its inodes are durable): its record is, once the fsync
    /// log holds this version of it; its entry is, once the log holds its name
    /// (`named`), else by a sync of the directory.
    FromSpare { logged: Option<u64>, named: bool },
}

impl NewChild {
    /// What one entry owes when it is owed twice (say a hard link made in place and
    /// the node's spare-made first entry moved in beside it): the stricter of the two.
    pub(super) fn join(self, other: NewChild) -> NewChild {
        use NewChild::*;
        match (self, other) {
            (InPlace(a), InPlace(b)) => InPlace(a.max(b)),
            (InPlace(t), FromSpare { .. }) | (FromSpare { .. }, InPlace(t)) => InPlace(t),
            (
                FromSpare {
                    logged: a,
                    named: x,
                },
                FromSpare {
                    logged: b,
                    named: y,
                },
            ) => FromSpare {
                logged: a.min(b),
                named: x && y,
            },
        }
    }
}

/// Owe `n` for `child` in `children`, joined with what it owed already.
pub(super) fn owe_child(children: &mut HashMap<NodeId, NewChild>, child: NodeId, n: NewChild) {
    let joined = children.get(&child).map_or(n, |o| o.join(n));
    children.insert(child, joined);
}

/// A directory's children listed at most; beyond, its fsyncdir is one syncfs.
pub(super) const CHILDREN_MAX: usize = 4096;
/// Entries owed in all at most (a big copy that never fsyncs); beyond, the whole store
/// is synced at once and everything owed forgotten.
pub(super) const OWED_MAX: usize = 262_144;
/// New files from spares whose records fsyncdir logs one by one at most; beyond, one
/// syncfs is cheaper.
pub(super) const LOG_CHILDREN_MAX: usize = 32;

/// What `log_sync` did.
pub(super) enum LogSync {
    Logged,
    NotAFile,
    NoLog,
}

/// A record as stored: its xattr value, the record, and the blob a large one spilled
/// into.
type StoredRecord = (Vec<u8>, NodeRecord, Option<node::Hash>);

/// Directories in the order to sync them: deepest first, because a new `nodes/xx/yy`
/// is named in `nodes/xx`, which is synced after it.
fn deepest_first(dirs: impl IntoIterator<Item = PathBuf>) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = dirs.into_iter().collect();
    v.sort_by(|a, b| (b.components().count().cmp(&a.components().count())).then_with(|| a.cmp(b)));
    v.dedup();
    v
}

/// What each directory's next fsyncdir owes (see `UnsyncedDir`), kept as entries are
/// made, moved and logged.
pub struct DirDebts {
    owed: Mutex<Owed>,
    layout: Layout,
    /// The store's local disk: its sync tickets and syncfs.
    local: Arc<LocalBlobs>,
}

impl DirDebts {
    pub(crate) fn new(layout: Layout, local: Arc<LocalBlobs>) -> DirDebts {
        DirDebts {
            owed: Mutex::new(Owed::default()),
            layout,
            local,
        }
    }

    /// Take what `dir` owes, to pay it.
    fn take(&self, dir: NodeId) -> Option<UnsyncedDir> {
        self.owed.lock().take(dir)
    }

    /// Owe again what a failed fsyncdir of `dir` did not pay.
    fn give_back(&self, dir: NodeId, u: UnsyncedDir) {
        self.owed.lock().with(dir, |e| e.merge(u));
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
            NewChild::FromSpare {
                logged: None,
                named: false,
            }
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
            let mut m = self.owed.lock();
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

    /// The fsync log now holds `version` of file `id`'s record, and its name in
    /// `parent` if `named`.
    pub(crate) fn child_logged(
        &self,
        parent: Option<NodeId>,
        id: NodeId,
        version: u64,
        named: bool,
    ) {
        let Some(p) = parent else { return };
        if let Some(NewChild::FromSpare { logged, named: n }) = self
            .owed
            .lock()
            .by_dir
            .get_mut(&p)
            .and_then(|u| u.children.get_mut(&id))
        {
            *logged = Some(logged.map_or(version, |l| l.max(version)));
            *n |= named;
        }
    }

    /// Is `id` a new file of `parent` (from a spare) whose name the log does not hold?
    pub(crate) fn name_to_log(&self, parent: NodeId, id: NodeId) -> bool {
        matches!(
            self.owed
                .lock()
                .by_dir
                .get(&parent)
                .and_then(|u| u.children.get(&id)),
            Some(NewChild::FromSpare { named: false, .. })
        )
    }

    /// `dir` changed in a way the fsync log does not describe: its next fsyncdir syncs
    /// it.
    pub(crate) fn dir_changed(&self, dir: NodeId) {
        let t = self.local.ticket();
        self.owe(dir, |u| u.changed = u.changed.max(Some(t)));
    }

    /// Tombstones of names of `dir` were appended to the log: its next fsyncdir syncs
    /// the log.
    pub(crate) fn dir_unnamed(&self, dir: NodeId) {
        self.owe(dir, |u| u.unnamed = true);
    }

    /// Is `dir` a new entry of some directory, made in place and not yet durable?
    fn made_in_place(&self, dir: NodeId) -> bool {
        self.owed.lock().by_dir.values().any(|u| {
            u.all_before.is_some() || matches!(u.children.get(&dir), Some(NewChild::InPlace(_)))
        })
    }

    /// Add to what `parent`'s next fsyncdir owes. Bounded: a directory with more than
    /// CHILDREN_MAX new children owes one syncfs instead of the list, and past OWED_MAX
    /// entries in all the whole store is synced at once and everything owed forgotten.
    fn owe(&self, parent: NodeId, f: impl FnOnce(&mut UnsyncedDir)) {
        let full = {
            let mut m = self.owed.lock();
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
            let mut m = self.owed.lock();
            for (k, v) in full.by_dir {
                m.with(k, |u| u.merge(v));
            }
        }
    }
}

/// fsync and fsyncdir of nodes, through the fsync log when there is one.
#[derive(Clone, Copy)]
pub struct Fsync<'a> {
    pub(super) layout: &'a Layout,
    pub(super) records: &'a Records,
    pub(super) blobs: &'a dyn BlobStore,
    pub(super) local: &'a LocalBlobs,
    pub(super) fence: &'a Fence,
    pub(super) chunk_lists: &'a ChunkLists,
    pub(super) debts: &'a DirDebts,
    pub(super) fsync_log: &'a Option<FsyncLog>,
}

impl Fsync<'_> {
    /// fsyncdir: make a directory's entries durable, with what they name: the `nodes/`
    /// directories holding node files of new entries, the inodes made for them (a
    /// syncfs, when any was made on the spot), and the records of new files from
    /// spares (through the fsync log, unless it holds them already).
    pub fn sync_dir_node(&self, id: NodeId) -> Result<()> {
        // Its times, if a create or unlink deferred them, are written where the directory
        // or the whole store is synced (`sync_node` writes them first): an fsyncdir that
        // syncs only the log leaves them deferred, as it would not sync them either.
        let Some(u) = self.debts.take(id) else {
            return self.sync_node(id);
        };
        let res = self.sync_unsynced(id, &u);
        if res.is_err() {
            // Keep what is still owed for the next attempt.
            self.debts.give_back(id, u);
        }
        res
    }

    fn sync_unsynced(&self, id: NodeId, u: &UnsyncedDir) -> Result<()> {
        let covered = |t: u64| self.local.synced_since(t);
        let mut whole = u.all_before.is_some_and(|t| !covered(t));
        let mut to_log = Vec::new();
        // Every new entry's name is in the log (so the directory needs no sync).
        let mut all_named = true;
        for (c, n) in &u.children {
            match n {
                NewChild::InPlace(t) => {
                    whole |= !covered(*t);
                    all_named = false;
                }
                NewChild::FromSpare { logged, named } => match self.records.read(*c) {
                    Ok(r)
                        if (Some(r.version) != *logged || !named)
                            && r.kind == Kind::File
                            && r.trash.is_none() =>
                    {
                        to_log.push(*c)
                    }
                    _ => {} // logged as it is, or deleted since (its tombstone logged)
                },
            }
        }
        if whole || to_log.len() > LOG_CHILDREN_MAX {
            // Writes every inode, name and record of the store (the log's file too).
            self.records.flush_deferred_one(id)?;
            return self.local.sync_filesystem();
        }
        // A new file's node in the fsync log needs no sync of its `nodes/` directory:
        // should the power cut lose that name, replay recreates the node file, as the
        // entry this fsyncdir makes durable still names it. Children made on the spot
        // are covered by a syncfs (theirs or one since). So the directories are synced
        // only when some file could not go through the log.
        let mut all_logged = self.fsync_logged();
        for c in to_log {
            // Its debt was taken above: name it as a new entry of this directory.
            let (logged, named) = match self.log_sync_in(c, Some(id))? {
                (LogSync::Logged, named) => (true, named),
                (LogSync::NotAFile, _) => {
                    self.records.flush_deferred_one(c)?;
                    self.fsync_node_file(c)?;
                    (false, false)
                }
                (LogSync::NoLog, _) => {
                    self.blobs.sync()?;
                    self.fsync_node_file(c)?;
                    (false, false)
                }
            };
            all_logged &= logged;
            all_named &= named;
        }
        // Tombstones of this directory's names go first: a sync of the directory must
        // not make a removal durable that replay would undo.
        let log = self.fsync_log.as_ref().filter(|l| l.usable());
        if u.unnamed {
            match log {
                Some(l) => l.sync_pending(&|| self.local.sync_filesystem())?,
                None => all_named = false,
            }
        }
        // Names through the log: every change since the directory's last sync is a
        // logged name or tombstone, now durable; replay recreates exactly those names
        // (docs/DESIGN.md, "Fsyncdir debts"). The directory's deferred times stay
        // deferred (written within a second, at its next sync or a clean close).
        if all_logged
            && all_named
            && log.is_some()
            && u.changed.is_none_or(covered)
            && !self.debts.made_in_place(id)
        {
            if let Some(l) = log {
                l.sync_pending(&|| self.local.sync_filesystem())?;
            }
            return Ok(());
        }
        if !all_logged {
            for d in deepest_first(u.dirs.iter().cloned()) {
                layout::sync_dir(&d)?;
            }
        }
        self.sync_node(id)
    }

    /// fsync of a node. A file's record, with the blobs it names, goes through the fsync
    /// log when there is one (one fdatasync); otherwise, and for directories, the
    /// node's file is fsynced (a file's unsynced blobs first).
    pub fn sync_node(&self, id: NodeId) -> Result<()> {
        self.sync_node_logged(id).map(|_| ())
    }

    /// `sync_node`, saying whether it went through the fsync log.
    pub(super) fn sync_node_logged(&self, id: NodeId) -> Result<bool> {
        match self.log_sync(id)? {
            LogSync::Logged => return Ok(true),
            LogSync::NotAFile => self.records.flush_deferred_one(id)?,
            LogSync::NoLog => {
                // Times a no-op chown deferred (the log would have carried them).
                self.records.flush_deferred_one(id)?;
                self.blobs.sync()?
            }
        }
        self.fsync_node_file(id)?;
        Ok(false)
    }

    /// Will a file's fsync go through the log (so its blobs need no fsync of their own)?
    pub(crate) fn fsync_logged(&self) -> bool {
        self.fsync_log.as_ref().is_some_and(|l| l.usable())
    }

    pub(super) fn fsync_node_file(&self, id: NodeId) -> Result<()> {
        let path = self.layout.node_path(id);
        let f = fs::File::open(&path).ctx(|| format!("open {}", path.display()))?;
        crate::blocking::soon();
        f.sync_all().ctx(|| format!("sync {}", path.display()))
    }

    /// Log the record of file `id` as it is stored now, with the bytes of every blob it
    /// names that is not durable yet, and wait until the log entry is durable. A log
    /// that fails is given up (`NoLog`: the caller syncs the files themselves).
    pub(super) fn log_sync(&self, id: NodeId) -> Result<LogSync> {
        self.log_sync_in(id, None).map(|(l, _)| l)
    }

    /// `log_sync`, with the file's name logged if it is a new entry (or an entry of
    /// `dir`, whose fsyncdir took its debts); says whether the log holds the name.
    fn log_sync_in(&self, id: NodeId, dir: Option<NodeId>) -> Result<(LogSync, bool)> {
        // A blob of the record read can be swept before it is copied, if a newer
        // record replaced it meanwhile: then read the newer one.
        let mut tries = 0;
        loop {
            match self.try_log_sync(id, dir) {
                Err(Error::Integrity { .. }) if tries < 3 => tries += 1,
                other => return other,
            }
        }
    }

    fn try_log_sync(&self, id: NodeId, dir: Option<NodeId>) -> Result<(LogSync, bool)> {
        let Some((value, rec, rec_blob)) = self.stored_file_record(id)? else {
            return Ok((LogSync::NotAFile, false));
        };
        let Some(log) = self.fsync_log.as_ref().filter(|l| l.usable()) else {
            return Ok((LogSync::NoLog, false));
        };
        self.fence.check()?;
        let entry = self.log_entry(id, value, &rec, rec_blob)?;
        let name = self.new_name_in(id, &rec, dir);
        let check = |n: &fsynclog::NameOp| self.still_named(n);
        let with = name
            .clone()
            .map(|n| (n, &check as &dyn Fn(&fsynclog::NameOp) -> bool));
        if appended(log.append_named(&entry, with, &|| self.local.sync_filesystem())).is_none() {
            return Ok((LogSync::NoLog, false));
        }
        let named = name.is_some_and(|n| log.holds_name(&(n.parent, n.name)));
        self.debts.child_logged(rec.parent, id, rec.version, named);
        Ok((LogSync::Logged, named))
    }

    /// The name of file `id` (`rec`) to log with its record: a new file's, until the
    /// log holds it (see `NewChild::FromSpare`).
    pub(super) fn new_name(&self, id: NodeId, rec: &NodeRecord) -> Option<fsynclog::NameOp> {
        self.new_name_in(id, rec, None)
    }

    fn new_name_in(
        &self,
        id: NodeId,
        rec: &NodeRecord,
        dir: Option<NodeId>,
    ) -> Option<fsynclog::NameOp> {
        let p = rec.parent?;
        let new = dir == Some(p) || self.debts.name_to_log(p, id);
        (rec.nlink == 1 && rec.trash.is_none() && new).then(|| fsynclog::NameOp {
            parent: p.0.into_bytes(),
            name: rec.name.clone(),
            node: id.0.into_bytes(),
            bound: true,
        })
    }

    /// Does the entry `n` says still name its node? Asked under the log's lock, which
    /// a rename's logging takes too.
    pub(super) fn still_named(&self, n: &fsynclog::NameOp) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let parent = NodeId(uuid::Uuid::from_bytes(n.parent));
        let entry = self
            .layout
            .node_path(parent)
            .join(std::ffi::OsStr::from_bytes(&n.name));
        fs::read_link(entry)
            .ok()
            .and_then(|t| Layout::parse_entry_target(&t))
            == Some(NodeId(uuid::Uuid::from_bytes(n.node)))
    }

    /// `parent`'s `name` was bound to `id` by a link or a restore: logged if the log
    /// has a record of that name (see `FsyncLog::name_bound`).
    pub(crate) fn name_bound(&self, parent: NodeId, name: &[u8], id: NodeId) {
        let Some(l) = self.usable_log() else {
            return;
        };
        let key = (parent.0.into_bytes(), name.to_vec());
        match l.name_bound(&key, id.0.into_bytes(), &|| self.local.sync_filesystem()) {
            Ok(true) => self.debts.dir_unnamed(parent),
            Ok(false) => {}
            Err(e) => log::warn!("fsync log: a name not logged: {e}"),
        }
    }

    /// The fsync log, if usable. A broken one whose names could not be voided when it
    /// broke is voided now, before a name change it cannot log (`FsyncLog::void_names`):
    /// its replay must not undo that change.
    fn usable_log(&self) -> Option<&FsyncLog> {
        let l = self.fsync_log.as_ref()?;
        if l.usable() {
            return Some(l);
        }
        if let Err(e) = l.void_names(&|| self.local.sync_filesystem()) {
            log::error!("fsync log: its names could not be voided: {e}");
        }
        None
    }

    /// Names that stopped naming a node (unlink, rename; see `FsyncLog::names_changed`):
    /// tombstones for those the log holds, and what each directory's next fsyncdir owes.
    /// `added`: the name a rename gave to the node of `removed[0]`.
    pub(crate) fn names_changed(
        &self,
        removed: &[(NodeId, &[u8], NodeId)],
        added: Option<(NodeId, &[u8])>,
    ) {
        let log = self.usable_log();
        let keys: Vec<(fsynclog::NameKey, [u8; 16])> = removed
            .iter()
            .map(|(p, n, id)| ((p.0.into_bytes(), n.to_vec()), id.0.into_bytes()))
            .collect();
        let added_key = added.map(|(p, n)| (p.0.into_bytes(), n.to_vec()));
        let res = log
            .map(|l| l.names_changed(&keys, added_key.as_ref(), &|| self.local.sync_filesystem()));
        let (held, moved) = match res {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                log::warn!("fsync log: a name change not logged: {e}");
                (vec![false; keys.len()], false)
            }
            None => (vec![false; keys.len()], false),
        };
        for ((p, n, _), h) in removed.iter().zip(&held) {
            let displaced = moved && added.is_some_and(|(ap, an)| ap == *p && an == *n);
            if *h || displaced {
                self.debts.dir_unnamed(*p);
            } else {
                self.debts.dir_changed(*p);
            }
        }
        if let Some((p, _)) = added {
            if moved {
                self.debts.dir_unnamed(p);
            } else {
                self.debts.dir_changed(p);
            }
        }
    }

    /// The record of file `id` as stored, with its stored value (the xattr bytes) and
    /// the blob a large record spilled into. None: not a file.
    pub(super) fn stored_file_record(&self, id: NodeId) -> Result<Option<StoredRecord>> {
        // A small record is its cached copy framed again (what `write_record` stored,
        // byte for byte), a large one is read for its blob.
        let cached = self.records.read(id)?;
        let body = encode_body(&cached);
        let (value, rec, rec_blob) = if body.len() <= INLINE_RECORD_LIMIT {
            (frame(false, &body, cached.has_gens()), cached, None)
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
    pub(super) fn log_entry(
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
        hashes.extend(self.chunk_lists.get(&rec.content)?.iter().map(|c| c.hash));
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{file_node, scratch};
    use crate::store::tree;

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
        let (a, _) = s.tree().create(root, OsStr::new("a"), dir).unwrap();
        let f = s.tree().create(a, OsStr::new("f"), file_node()).unwrap().0;
        let g = s.tree().create(a, OsStr::new("g"), file_node()).unwrap().0;
        let owes = |d: NodeId, c: NodeId| {
            let m = s.debts.owed.lock();
            m.by_dir
                .get(&d)
                .is_some_and(|u| u.children.contains_key(&c))
        };
        assert!(owes(root, a) && owes(a, f) && owes(a, g));
        s.tree()
            .rename(
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
        s.fsync().sync_dir_node(a).unwrap();
        assert!(!owes(a, g));
        s.fsync().sync_dir_node(root).unwrap();
        {
            let m = s.debts.owed.lock();
            assert_eq!(m.entries, 0, "everything paid");
            assert!(m.by_dir.is_empty());
        }
        // Made in place (a directory): a syncfs covers it; a later one is owed again.
        let (b, _) = s
            .tree()
            .create(root, OsStr::new("b"), {
                let mut d = file_node();
                d.kind = Kind::Dir;
                d
            })
            .unwrap();
        let t = match s.debts.owed.lock().by_dir[&root].children[&b] {
            NewChild::InPlace(t) => t,
            NewChild::FromSpare { .. } => panic!("a directory is made in place"),
        };
        assert!(!s.local.synced_since(t));
        s.fsync().sync_dir_node(root).unwrap();
        assert!(s.local.synced_since(t), "fsyncdir synced the filesystem");
        // Past CHILDREN_MAX: the list gives way to one ticket.
        for i in 0..=CHILDREN_MAX {
            s.tree()
                .create(b, OsStr::new(&format!("n{i}")), file_node())
                .unwrap();
        }
        {
            let m = s.debts.owed.lock();
            let u = &m.by_dir[&b];
            assert!(u.children.len() < CHILDREN_MAX && u.all_before.is_some());
            assert_eq!(
                m.entries,
                m.by_dir.values().map(UnsyncedDir::len).sum::<usize>()
            );
        }
        s.fsync().sync_dir_node(b).unwrap();
        assert!(!s.debts.owed.lock().by_dir.contains_key(&b));
    }

    /// An entry owed twice owes the stricter: a syncfs after the later ticket beats a
    /// logged record, and an unlogged record beats a logged one.
    #[test]
    fn an_entry_owed_twice_owes_the_stricter() {
        use NewChild::*;
        let kind = |n: NewChild| match n {
            InPlace(t) => (true, Some(t)),
            FromSpare { logged, .. } => (false, logged),
        };
        let spare = |l| FromSpare {
            logged: l,
            named: false,
        };
        assert_eq!(kind(InPlace(3).join(InPlace(5))), (true, Some(5)));
        assert_eq!(kind(spare(Some(9)).join(InPlace(2))), (true, Some(2)));
        assert_eq!(kind(InPlace(2).join(spare(None))), (true, Some(2)));
        assert_eq!(kind(spare(Some(4)).join(spare(None))), (false, None));
        assert_eq!(kind(spare(Some(4)).join(spare(Some(6)))), (false, Some(4)));
    }
}
