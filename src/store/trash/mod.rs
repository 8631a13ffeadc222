//! Undo: trash, purge, revisions and their restore, retention (invariant 6).
//!
//! A node whose last name goes away is not deleted: `tree` links it from
//! `trash/<unix-nanos>.<uuid>.<parent>.<name tag>` and its record keeps its origin
//! (parent, name, time). Parent and name tag in the link's name let one entry's tree be
//! found without reading every trashed record (`links`).
//! Restoring binds a name again (the origin, or `--to`) with the same atomic symlink as a
//! create, then clears the origin in one record update; a directory restores whole, with
//! everything that was deleted out of it. Purging removes the node file, its trash link
//! and its revisions, then sweeps the blobs only they referenced.
//!
//! Revisions (`revisions/<uuid>/<unix-nanos>`) are whole earlier records pointing at
//! immutable chunks. Restoring one is a single record swap: the current record becomes a
//! revision, and the restored content, size, times and xattrs appear together.
//!
//! Purged nodes' blobs are freed by the sweep (`sweep`), open nodes are known to `pins`.

mod links;

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use std::time::{Duration, SystemTime};

use super::content::{Data, Revisions, Sessions};
use super::dirsync::DirDebts;
use super::error::{Error, IoContext, Result};
use super::event::Followers;
use super::event::{Event, Op};
use super::layout::{Layout, Policy};
use super::lock::Fence;
use super::names::Names;
use super::node::{Hash, Kind, NodeId, NodeRecord, Status, Time};
use super::pins::Pins;
use super::records::Records;
use super::spare::Spares;
use super::sweep::Sweeper;
use links::Links;

/// One trashed node.
#[derive(Clone, Debug)]
pub struct TrashEntry {
    pub id: NodeId,
    /// The trash link's name: `<unix-nanos>.<uuid>.<parent>.<name tag>`
    /// (`Layout::trash_link_name`).
    pub link: String,
    pub at: Time,
    pub origin_parent: NodeId,
    pub origin_name: Vec<u8>,
    /// The original path (relative to the root), through the trashed directories it
    /// was deleted with; None if its directory is gone for good.
    pub origin_path: Option<PathBuf>,
    pub kind: Kind,
    pub size: u64,
    pub stored: u64,
    /// The trashed directory it was deleted out of; None for a top entry (deleted
    /// from a live directory, or from one since purged).
    pub within: Option<NodeId>,
    /// This node and everything deleted with it (its tree, for a directory).
    pub nodes: u64,
    /// The bytes those hold (`stored`).
    pub bytes: u64,
}

impl TrashEntry {
    /// The entry of trashed node `id` behind trash link `link`, not yet connected to
    /// the others (`Trash::list`); None if its record says it is not in the trash.
    fn of(id: NodeId, link: String, rec: NodeRecord) -> Option<TrashEntry> {
        let origin = rec.trash?;
        Some(TrashEntry {
            id,
            link,
            at: origin.at,
            origin_parent: origin.parent,
            origin_name: origin.name,
            origin_path: None,
            kind: rec.kind,
            size: rec.size,
            stored: rec.stored,
            within: None,
            nodes: 1,
            bytes: rec.stored,
        })
    }
}

/// What a purge did.
#[derive(Clone, Debug, Default)]
pub struct PurgeReport {
    pub nodes: u64,
    pub revisions: u64,
    pub bytes_freed: u64,
    /// Trashed nodes kept because a handle still has them open.
    pub skipped_open: u64,
}

/// Which trash entries to purge.
pub enum PurgeSel {
    All,
    OlderThan(Duration),
    /// An id (or unique prefix) or an original path, with everything deleted with it.
    One(String),
    /// One trashed node by id, alone (the trash-off frees at unlink and last close).
    Node(NodeId),
}

/// Entry symlinks a restore made ahead (`Trash::stage_entries`); what is left of them
/// (entries that could not be bound) goes with their directory when this is dropped.
#[derive(Default)]
struct Staged {
    dir: Option<PathBuf>,
    links: HashMap<NodeId, PathBuf>,
}

impl Staged {
    fn clear(&mut self) {
        for p in std::mem::take(&mut self.links).into_values() {
            let _ = fs::remove_file(p);
        }
        if let Some(d) = self.dir.take() {
            let _ = fs::remove_dir(d);
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        self.clear();
    }
}

/// What `pre_trash` did before a name goes away.
pub(super) enum PreTrash {
    /// The node keeps other names: nothing to do.
    NotLast,
    /// The node is linked from the trash already.
    Linked(PathBuf),
    /// No space for the trash link: the node is deleted for good.
    Full,
    /// A scratch file: freed, not kept.
    Scratch,
}

/// Undo: the trash (what deleting keeps, restoring, purging) and restoring revisions.
#[derive(Clone, Copy)]
pub struct Trash<'a> {
    pub(super) layout: &'a Layout,
    pub(super) records: &'a Records,
    pub(super) fence: &'a Fence,
    pub(super) pins: &'a Pins,
    pub(super) sessions: &'a Sessions,
    pub(super) revisions: &'a Revisions,
    pub(super) policy: &'a Mutex<Policy>,
    pub(super) followers: &'a Followers,
    pub(super) debts: &'a DirDebts,
    pub(super) spares: &'a Spares,
    /// Restores, purges and expiry take turns (see `Store`'s `trash_ops`).
    pub(super) ops: &'a Mutex<()>,
    pub(super) names: Names<'a>,
    pub(super) sweeper: Sweeper<'a>,
    pub(super) data: Data<'a>,
}

impl Trash<'_> {
    /// How long the trash keeps what it holds (0: the trash is off).
    fn retention_secs(&self) -> u64 {
        self.policy.lock().trash_retention_secs
    }

    /// The trash directory's links (none while it does not exist).
    fn links(&self) -> Result<impl Iterator<Item = fs::DirEntry>> {
        let it = match fs::read_dir(self.layout.trash()) {
            Ok(it) => Some(it),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("read trash", e)),
        };
        Ok(it.into_iter().flatten().flatten())
    }

    /// A handle of `id` closed. With trash off, the last close of an unlinked file frees it.
    pub fn unpin(&self, id: NodeId) {
        if !self.pins.unpin(id) || self.fence.read_only() {
            return;
        }
        // Not by listing the trash: that reads every trashed record, and a program whose
        // files die young (a database's journal) would pay it at every close.
        if self.pins.is_unlinked(id) {
            // Deleted on a full disk without a trash link: free it now.
            let _ = self.free_unlinked(id);
        } else if self.retention_secs() == 0 {
            if let Ok(rec) = self.records.read(id) {
                if rec.trash.is_some() && rec.nlink == 0 {
                    let _ = self.purge_with(PurgeSel::Node(id), false);
                }
            }
        }
    }

    /// Does a file deleted now skip the trash? When its name is a scratch name, or it
    /// lived less than `trash_min_age` (docs/DESIGN.md, "Scratch files"). Directories
    /// always go to the trash (what was deleted out of them is restored with them).
    fn scratch(&self, rec: &NodeRecord, name: &OsStr, now: Time) -> bool {
        let p = self.policy.lock();
        if rec.kind == Kind::Dir || p.trash_retention_secs == 0 {
            return false;
        }
        let age = now.unix_nanos() - rec.crtime.unix_nanos();
        // A crtime in the future (the clock was set back) is not young.
        p.trash_skip.matches(name.as_bytes())
            || (0..p.trash_min_age_secs as i128 * 1_000_000_000).contains(&age)
    }

    /// A scratch file lost its last name: free it now, or at its last close if open.
    pub(crate) fn discard(&self, id: NodeId) -> Result<()> {
        self.pins.mark_unlinked(id);
        // Closed, but its session lingers (`Data::close_write`): nothing to store.
        self.data.drop_lingering(id);
        if self.pins.pinned(id) || self.sessions.contains(id) {
            return Ok(()); // `unpin` frees it at the last close
        }
        self.free_unlinked(id)
    }

    /// Called by `tree` once a node went to trash: with trash off, free it now.
    /// `link` is its trash link when the caller knows it (then no listing of the trash).
    pub(crate) fn trashed(&self, id: NodeId, link: Option<&Path>) -> Result<()> {
        if self.retention_secs() != 0 || self.pins.pinned(id) || self.sessions.contains(id) {
            return Ok(());
        }
        match link {
            Some(link) => {
                let _turn = self.ops.lock();
                let mut candidates = Vec::new();
                if self.remove_node(id, &mut candidates)?.is_some() {
                    let _ = fs::remove_file(link);
                }
                self.sweeper.queue(candidates);
            }
            None => {
                self.purge_with(PurgeSel::Node(id), false)?;
            }
        }
        Ok(())
    }

    /// Before removing what may be the last name of `id` (`name` in `parent`), link it
    /// from the trash. If that fails (a full disk needs a new block in `trash/`), nothing
    /// has changed yet; the other order could leave a node that neither a directory nor
    /// the trash reaches. A scratch file (`scratch`) is not linked: it is freed instead.
    pub(super) fn pre_trash(&self, id: NodeId, parent: NodeId, name: &OsStr) -> Result<PreTrash> {
        let rec = self.records.read(id)?;
        if rec.kind != Kind::Dir && rec.nlink > 1 {
            return Ok(PreTrash::NotLast);
        }
        let now = Time::now();
        if self.scratch(&rec, name, now) {
            if let Some(ahead) = self.spares.take_trash(id) {
                let _ = fs::remove_file(ahead);
            }
            return Ok(PreTrash::Scratch);
        }
        let nanos = now.unix_nanos();
        let link =
            self.layout
                .trash()
                .join(Layout::trash_link_name(nanos, id, parent, name.as_bytes()));
        // A link made ahead (see `spare`) if the node has one, else a new one.
        if let Some(ahead) = self.spares.take_trash(id) {
            if fs::rename(&ahead, &link).is_ok() {
                return Ok(PreTrash::Linked(link));
            }
            let _ = fs::remove_file(&ahead);
        }
        let target = Layout::trash_target(id);
        let made = self.make_staged(&link, |p| std::os::unix::fs::symlink(&target, p));
        match made.ctx(|| format!("trash {id}")) {
            Ok(()) => Ok(PreTrash::Linked(link)),
            // A full disk must not stop a delete (that is how space is freed): the node
            // is then deleted for good instead of kept in the trash.
            Err(Error::NoSpace) => Ok(PreTrash::Full),
            Err(e) => Err(e),
        }
    }

    /// Make a new inode at `dest` (whose name is unique) by way of the staging
    /// directory (see `spare`): `make` makes it at a fresh path there, whose block
    /// group allocates inodes fast, and it is renamed to `dest`. Only for inodes whose
    /// durability no fsync promises (trash links): nothing syncs the staging directory's
    /// block group. Without a staging directory, or if making it there fails, `make`
    /// runs at `dest` itself.
    fn make_staged(
        &self,
        dest: &Path,
        make: impl Fn(&Path) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        if let Some(tmp) = self.spares.staged_path() {
            if make(&tmp).is_ok() {
                let moved = fs::rename(&tmp, dest);
                if moved.is_err() {
                    let _ = fs::remove_file(&tmp);
                }
                return moved;
            }
        }
        make(dest)
    }

    /// Everything in the trash, oldest first, connected: each entry knows the trashed
    /// directory it was deleted out of (`within`), its whole original path (through
    /// those directories), and the nodes and bytes of everything deleted with it.
    /// Reads each trashed record once: linear in the size of the trash.
    pub fn list(&self) -> Result<Vec<TrashEntry>> {
        let mut all = self.list_from(|_| true)?;
        self.connect(&mut all);
        Ok(all)
    }

    /// The trash entries whose link passes `wanted`, which sees the time in the link's
    /// name (`<nanos>.<id>`, taken just before the node was trashed, so never after its
    /// record's `trash.at`), or None for a name without one. Entries it turns away cost
    /// a directory entry, not a readlink and record reads. Not connected (`list`).
    fn list_from(&self, wanted: impl Fn(Option<i128>) -> bool) -> Result<Vec<TrashEntry>> {
        let mut out = Vec::new();
        for e in self.links()? {
            let link = e.file_name().to_string_lossy().into_owned();
            let stamp = Layout::parse_trash_link(&link).map(|l| l.nanos);
            if !wanted(stamp) {
                continue;
            }
            let Some(id) = fs::read_link(e.path())
                .ok()
                .and_then(|t| Layout::parse_entry_target(&t))
            else {
                continue;
            };
            let Ok(rec) = self.records.read(id) else {
                continue;
            };
            out.extend(TrashEntry::of(id, link, rec));
        }
        out.sort_by_key(|e| e.at.unix_nanos());
        Ok(out)
    }

    /// Fill in `within`, `origin_path`, `nodes` and `bytes` (see `list`).
    fn connect(&self, all: &mut [TrashEntry]) {
        let at: HashMap<NodeId, usize> = all.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
        let up: Vec<Option<usize>> = all
            .iter()
            .map(|e| {
                at.get(&e.origin_parent)
                    .copied()
                    .filter(|&p| all[p].id != e.id)
            })
            .collect();
        let ids: Vec<NodeId> = all.iter().map(|e| e.id).collect();
        for (e, u) in all.iter_mut().zip(&up) {
            e.within = u.map(|p| ids[p]);
        }
        // Paths and depths, each entry's from its directory's: walk up to an entry
        // already done (or a top), then fill in on the way down. Live directories'
        // paths are asked once each.
        let mut live: HashMap<NodeId, Option<PathBuf>> = HashMap::new();
        let mut depth: Vec<Option<usize>> = vec![None; all.len()];
        for start in 0..all.len() {
            let mut chain = vec![];
            let mut i = start;
            while depth[i].is_none() && !chain.contains(&i) {
                chain.push(i);
                match up[i] {
                    Some(p) => i = p,
                    None => break,
                }
            }
            for &i in chain.iter().rev() {
                let name = PathBuf::from(OsStr::from_bytes(&all[i].origin_name));
                let (path, d) = match up[i] {
                    Some(p) if depth[p].is_some() => (
                        all[p].origin_path.as_ref().map(|d| d.join(&name)),
                        depth[p].unwrap() + 1,
                    ),
                    // A cycle cannot be made by deleting; if records say so, stop.
                    Some(_) => (None, 0),
                    None if all[i].origin_parent == self.names.root => (Some(name), 0),
                    None => {
                        let dir = live
                            .entry(all[i].origin_parent)
                            .or_insert_with_key(|d| self.names.path_of(*d));
                        (dir.as_ref().map(|d| d.join(&name)), 0)
                    }
                };
                all[i].origin_path = path;
                depth[i] = Some(d);
            }
        }
        // Totals, deepest first, each added to its directory's.
        let mut order: Vec<usize> = (0..all.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(depth[i]));
        for i in order {
            if let Some(p) = up[i] {
                let (n, b) = (all[i].nodes, all[i].bytes);
                all[p].nodes += n;
                all[p].bytes += b;
            }
        }
    }

    /// Bring a trashed node back, at its origin or at `to` (a path relative to the root).
    /// Returns where it was restored. A directory comes back whole, with what was
    /// deleted out of it (the latest of each name), and appears in one step: its
    /// contents are bound inside it while it is still in the trash, and binding it in
    /// its parent comes last. Reads one listing of `trash/` and the records of the
    /// restored tree (`links`), however much else the trash holds.
    pub fn restore(&self, sel: &OsStr, to: Option<&Path>) -> Result<PathBuf> {
        self.fence.check()?;
        // A snapshot sees a restored tree whole or not at all.
        let _op = self.records.snapshots().op();
        let _turn = self.ops.lock();
        let links = Links::read(self)?;
        let e = &self.find(&links, sel)?;
        let (parent, name) = match to {
            Some(p) => {
                let name = p
                    .file_name()
                    .ok_or(Error::Invalid("--to needs a file name"))?
                    .to_os_string();
                let dir = p.parent().unwrap_or(Path::new(""));
                let parent = self
                    .names
                    .resolve_path(dir)
                    .map_err(|_| Error::RestoreParentGone(dir.to_path_buf()))?;
                (parent, name)
            }
            None => (
                e.origin_parent,
                OsStr::from_bytes(&e.origin_name).to_os_string(),
            ),
        };
        let shown = || {
            e.origin_path
                .clone()
                .unwrap_or_else(|| PathBuf::from(OsStr::from_bytes(&e.origin_name)))
        };
        let prec = self
            .records
            .read(parent)
            .map_err(|_| Error::RestoreParentGone(shown()))?;
        if prec.kind != Kind::Dir || prec.nlink == 0 || prec.trash.is_some() {
            return Err(Error::RestoreParentGone(shown()));
        }
        let where_ = self.names.path_of(parent).unwrap_or_default().join(&name);
        // The name is checked before anything moves, so the usual refusal changes nothing.
        match self.names.lookup(parent, &name) {
            Err(Error::NotFound) => {}
            Ok(_) => return Err(Error::RestoreNameTaken(where_)),
            Err(err) => return Err(err),
        }
        let plan = match e.kind {
            Kind::Dir => self.restore_plan(&links, e),
            _ => vec![],
        };
        let ids: Vec<NodeId> = plan
            .iter()
            .flat_map(|(_, kids)| kids.iter().map(|c| c.id))
            .chain([e.id])
            .collect();
        let mut staged = self.stage_entries(&ids);
        let subdirs = self.restore_contents(e, &plan, &mut staged.links);
        self.bind(
            e,
            parent,
            &name,
            subdirs,
            Time::now(),
            staged.links.remove(&e.id),
        )
        .map_err(|err| match err {
            Error::Exists => Error::RestoreNameTaken(where_.clone()),
            other => other,
        })?;
        self.records.update(parent, |r| {
            let now = Time::now();
            r.mtime = now;
            r.ctime = now;
            if e.kind == Kind::Dir {
                r.nlink += 1;
            }
            Ok(())
        })?;
        Ok(where_)
    }

    /// What restoring trashed directory `top` binds inside it, down the tree: per
    /// directory, the latest deletion of each name out of it; a directory's group comes
    /// before its subdirectories'.
    fn restore_plan(&self, links: &Links, top: &TrashEntry) -> Vec<(NodeId, Vec<TrashEntry>)> {
        let mut plan = vec![];
        let mut dirs = vec![top.id];
        while let Some(dir) = dirs.pop() {
            let kids = self.latest_children(links, dir);
            dirs.extend(kids.iter().filter(|c| c.kind == Kind::Dir).map(|c| c.id));
            if !kids.is_empty() {
                plan.push((dir, kids));
            }
        }
        plan
    }

    /// Entry symlinks for `ids`, made ahead in a staging directory of their own
    /// (`sessions/spare.<pid>.restore<n>.tmp/`: `sessions/` is an ext4 top directory, so
    /// it lands in the block group with the most free inodes) and made durable with one
    /// syncfs; `bind` renames each into place. Made in place, a tree's symlinks ask ext4
    /// for inodes in the block groups its delete just churned (`recently_deleted`, see
    /// `spare`): 13,000 took 5 s, or a minute after larger deletes. Only for a tree of
    /// `STAGE_MIN` nodes or more (a syncfs is not free); the others are made in place.
    fn stage_entries(&self, ids: &[NodeId]) -> Staged {
        const STAGE_MIN: usize = 64;
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut st = Staged::default();
        if ids.len() < STAGE_MIN {
            return st;
        }
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self
            .layout
            .sessions()
            .join(format!("spare.{}.restore{n}.tmp", std::process::id()));
        if fs::create_dir(&dir).is_err() {
            return st;
        }
        st.dir = Some(dir.clone());
        for (k, &id) in ids.iter().enumerate() {
            let tmp = dir.join(k.to_string());
            if std::os::unix::fs::symlink(Layout::entry_target(id), &tmp).is_err() {
                break;
            }
            st.links.insert(id, tmp);
        }
        if let Err(err) = super::layout::syncfs(&dir) {
            log::warn!("restore: syncfs: {err}; the entries are made in place");
            st.clear();
        }
        st
    }

    /// Bind the planned contents of trashed directory `top` back into it, while `top`
    /// is still unreachable. A directory that cannot be bound keeps its contents in the
    /// trash; each failure is logged. Returns the directories bound in `top` itself (its
    /// record is the caller's to write).
    fn restore_contents(
        &self,
        top: &TrashEntry,
        plan: &[(NodeId, Vec<TrashEntry>)],
        staged: &mut HashMap<NodeId, PathBuf>,
    ) -> u32 {
        let now = Time::now();
        let mut top_subdirs = 0;
        let mut left: HashSet<NodeId> = HashSet::new();
        for (dir, kids) in plan {
            if left.contains(dir) {
                left.extend(kids.iter().map(|c| c.id));
                continue;
            }
            let mut subdirs = 0;
            for c in kids {
                let name = OsStr::from_bytes(&c.origin_name);
                match self.bind(c, *dir, name, 0, now, staged.remove(&c.id)) {
                    Ok(()) if c.kind == Kind::Dir => subdirs += 1,
                    Ok(()) => {}
                    Err(err) => {
                        log::warn!("restoring {name:?} into {dir}: {err}; it stays in the trash");
                        left.insert(c.id);
                    }
                }
            }
            if *dir == top.id {
                top_subdirs = subdirs;
                continue;
            }
            // One update of the directory for all its restored entries.
            let r = self.records.update(*dir, |r| {
                r.mtime = now;
                r.ctime = now;
                r.nlink += subdirs;
                Ok(())
            });
            if let Err(err) = r {
                log::warn!("restoring into {dir}: {err}");
            }
        }
        top_subdirs
    }

    /// Bind trashed node `e` as `name` in `parent` and clear its origin; a directory
    /// gets 2 + `subdirs` links. The parent's record is the caller's to update. The
    /// entry symlink is `staged` renamed into place (`stage_entries`), or made here.
    fn bind(
        &self,
        e: &TrashEntry,
        parent: NodeId,
        name: &OsStr,
        subdirs: u32,
        now: Time,
        staged: Option<PathBuf>,
    ) -> Result<()> {
        self.names.preserve_entry(parent, name)?;
        let dest = self.names.entry_path(parent, name);
        let in_place = || std::os::unix::fs::symlink(Layout::entry_target(e.id), &dest);
        let made = match staged {
            Some(tmp) => {
                let r = super::tree::renameat2(&tmp, &dest, libc::RENAME_NOREPLACE);
                if r.is_err() {
                    let _ = fs::remove_file(&tmp);
                }
                match r {
                    Err(err) if err.raw_os_error() == Some(libc::EINVAL) => in_place(),
                    r => r,
                }
            }
            None => in_place(),
        };
        made.map_err(|err| match err.kind() {
            std::io::ErrorKind::AlreadyExists => Error::Exists,
            _ => Error::io("restore", err),
        })?;
        self.debts.child_unsynced(parent, e.id, true, []);
        self.data.fsync.name_bound(parent, name.as_bytes(), e.id);
        let r = self.records.update(e.id, |r| {
            r.trash = None;
            r.parent = Some(parent);
            r.name = name.as_bytes().to_vec();
            r.nlink = if r.kind == Kind::Dir { 2 + subdirs } else { 1 };
            r.ctime = now;
            Ok(())
        });
        if r.is_ok() {
            let _ = fs::remove_file(self.layout.trash().join(&e.link));
        }
        self.followers
            .emit(Event::new(Op::Restore, &[e.id, parent]).entry(parent, name));
        r.map(|_| ())
    }

    /// Purge trash entries; their space is freed (blobs no one else references). One
    /// entry goes with everything deleted with it (a directory's whole tree).
    pub fn purge(&self, sel: PurgeSel) -> Result<PurgeReport> {
        self.purge_with(sel, true)
    }

    /// Purge; `sweep_now` frees blobs before returning, otherwise they are queued for the
    /// daemon's batched sweep (one reference scan for many unlinks).
    fn purge_with(&self, sel: PurgeSel, sweep_now: bool) -> Result<PurgeReport> {
        self.fence.check()?;
        let turn = self.ops.lock();
        let since = SystemTime::now();
        let now = Time::now().unix_nanos();
        let chosen: Vec<TrashEntry> = match sel {
            PurgeSel::All => self.list_from(|_| true)?,
            // Retention runs every minute: a link younger than `d` by its name is not
            // read at all (its node was trashed after the link was made).
            PurgeSel::OlderThan(d) => {
                let d = d.as_nanos() as i128;
                self.list_from(|stamp| stamp.is_none_or(|t| now - t >= d))?
                    .into_iter()
                    .filter(|e| now - e.at.unix_nanos() >= d)
                    .collect()
            }
            PurgeSel::One(s) => {
                // The entry and every entry deleted out of it, down the tree (by the
                // links' names: no other record is read); removed deepest first, so
                // each directory is empty when its turn comes.
                let links = Links::read(self)?;
                let top = self.find(&links, OsStr::new(&s))?;
                links
                    .tree(top.id)
                    .into_iter()
                    .filter_map(|l| self.records.read(l.id).ok().map(|r| (l, r)))
                    .filter_map(|(l, r)| TrashEntry::of(l.id, l.name.clone(), r))
                    .collect()
            }
            PurgeSel::Node(id) => self.link_of(id)?.into_iter().collect(),
        };
        let mut report = PurgeReport::default();
        let mut candidates = Vec::new();
        for e in chosen {
            if self.pins.pinned(e.id) || self.sessions.contains(e.id) {
                report.skipped_open += 1;
                continue;
            }
            if let Some(revs) = self.remove_node(e.id, &mut candidates)? {
                let _ = fs::remove_file(self.layout.trash().join(&e.link));
                report.nodes += 1;
                report.revisions += revs;
            }
        }
        log::debug!(
            "purged {} node(s), {} revision(s), {} open kept; {} blob(s) to sweep",
            report.nodes,
            report.revisions,
            report.skipped_open,
            candidates.len()
        );
        // The sweep reads every record: not while restores wait.
        drop(turn);
        if sweep_now {
            report.bytes_freed = self.sweeper.sweep(candidates, since)?;
        } else {
            self.sweeper.queue(candidates);
        }
        Ok(report)
    }

    /// The trash entry of node `id`, found by its link's name: one directory listing
    /// and one record read, whatever the size of the trash.
    fn link_of(&self, id: NodeId) -> Result<Option<TrashEntry>> {
        for e in self.links()? {
            let link = e.file_name().to_string_lossy().into_owned();
            if Layout::parse_trash_link(&link).is_none_or(|l| l.id != id) {
                continue;
            }
            return Ok(TrashEntry::of(id, link, self.records.read(id)?));
        }
        Ok(None)
    }

    /// Delete a node that no name reaches, and its revisions; the blobs they named are
    /// added to `candidates` for a sweep. Returns the number of revisions dropped (None
    /// if the node could not be removed).
    fn remove_node(&self, id: NodeId, candidates: &mut Vec<Hash>) -> Result<Option<u64>> {
        let rec = match self.records.read(id) {
            Ok(r) => r,
            Err(_) => return Ok(None),
        };
        candidates.extend(self.sweeper.blob_refs(id, &rec));
        let revs = self.revisions.list(id)?;
        for (_, r) in &revs {
            candidates.extend(self.sweeper.blob_refs(id, r));
        }
        if let Err(err) = self.records.remove_node(id, rec.kind == Kind::Dir) {
            log::warn!("purge {id}: {err}");
            return Ok(None);
        }
        if let Err(err) = self.revisions.remove_all(id) {
            log::warn!("purge {id}: revisions: {err}");
        }
        Ok(Some(revs.len() as u64))
    }

    /// A node lost its last name while the disk was too full to link it from the trash:
    /// free it now (or at its last close), so deleting files can still free space.
    pub(crate) fn untrashable(&self, id: NodeId) -> Result<()> {
        log::warn!("node {id}: no space to keep it in the trash; it is deleted for good");
        // Marked before the check (in `discard`): a last close racing this either finds
        // the mark (and frees the node) or was over before the check (and this frees it).
        self.discard(id)
    }

    /// Free a node `untrashable` marked, unless someone else did already.
    fn free_unlinked(&self, id: NodeId) -> Result<()> {
        // A fenced or paused writer changes nothing; fsck finds the node later.
        self.fence.check()?;
        if !self.pins.take_unlinked(id) {
            return Ok(());
        }
        // Its last close may have left its session lingering after the unlink looked.
        self.data.drop_lingering(id);
        let mut candidates = Vec::new();
        self.remove_node(id, &mut candidates)?;
        self.sweeper.queue(candidates);
        Ok(())
    }

    /// Apply the retention policy: purge old trash, drop old revisions. The blobs they
    /// named are queued for the batched sweep (`run_pending_sweep`), not swept here: a
    /// sweep scans every record of the store, and the daemon runs this every minute, so
    /// sweeping here cost up to two whole-store scans a minute outside the bound the
    /// batched sweep keeps (see `spawn_maintenance`). `bytes_freed` is therefore 0.
    pub fn expire(&self) -> Result<PurgeReport> {
        let mut report = self.purge_with(
            PurgeSel::OlderThan(Duration::from_secs(self.retention_secs())),
            false,
        )?;
        let mut candidates = Vec::new();
        for id in self.sweeper.revision_owners() {
            let (n, c) = self.sweeper.prune_revisions(id)?;
            report.revisions += n;
            candidates.extend(c);
        }
        self.sweeper.queue(candidates);
        Ok(report)
    }

    /// Restore revision `stamp` of file `id`: one record swap. The current content
    /// becomes a revision; open handles see the restored content from now on.
    pub fn version_restore(&self, id: NodeId, stamp: i128) -> Result<()> {
        self.fence.check()?;
        let revs = self.revisions.list(id)?;
        let Some((_, rev)) = revs.into_iter().find(|(t, _)| *t == stamp) else {
            return Err(Error::NoSuchRevision(stamp.to_string()));
        };
        let session = self.sessions.get(id);
        let mut guard = session.as_ref().map(|s| s.lock());
        if let Some(s) = guard.as_mut() {
            self.data.commit_locked(id, s, false)?;
        }
        let now = Time::now();
        let new = self.records.update(id, |r| {
            if r.kind != Kind::File {
                return Err(Error::Invalid("only regular files have revisions"));
            }
            self.revisions.save(id, r)?;
            r.content = rev.content.clone();
            r.size = rev.size;
            r.stored = rev.stored;
            r.mtime = rev.mtime;
            r.atime = rev.atime;
            r.xattrs = rev.xattrs.clone();
            r.status = Status::Consistent;
            r.ctime = now;
            Ok(())
        })?;
        self.followers.emit(Event::new(Op::Revert, &[id]));
        if let Some(s) = guard.as_mut() {
            self.data.reset_session(s, &new);
        }
        drop(guard);
        let (_, blobs) = self.sweeper.prune_revisions(id)?;
        self.sweeper.queue(blobs);
        self.followers.invalidated(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{new_file, scratch};
    use super::*;

    /// The last close of a file deleted while open: it stays in the trash, unless the
    /// delete found no room for a trash link (freed then, not before) or the trash is off.
    #[test]
    fn last_close_of_a_deleted_file_keeps_or_frees_it_as_its_delete_left_it() {
        let (_d, s) = scratch();
        let root = s.root();
        let a = new_file(&s, "a");
        s.pins.pin(a);
        s.tree().unlink(root, OsStr::new("a")).unwrap();
        s.trash().unpin(a);
        assert!(s.trash().list().unwrap().iter().any(|e| e.id == a));
        assert!(s.records.read(a).is_ok());

        // As on a full disk: no trash link.
        let b = new_file(&s, "b");
        s.pins.pin(b);
        s.pins.pin(b);
        s.tree().unlink(root, OsStr::new("b")).unwrap();
        let link = s
            .trash()
            .list()
            .unwrap()
            .into_iter()
            .find(|e| e.id == b)
            .unwrap()
            .link;
        fs::remove_file(s.layout.trash().join(link)).unwrap();
        s.trash().untrashable(b).unwrap();
        s.trash().unpin(b);
        assert!(s.records.read(b).is_ok(), "freed while a handle is open");
        s.trash().unpin(b);
        assert!(
            matches!(s.records.read(b), Err(Error::NotFound)),
            "not freed at the last close"
        );
        assert!(!s.pins.is_unlinked(b), "still marked after it was freed");

        let mut p = s.policy();
        p.trash_retention_secs = 0;
        s.set_policy(p);
        let c = new_file(&s, "c");
        s.pins.pin(c);
        s.tree().unlink(root, OsStr::new("c")).unwrap();
        assert!(s.records.read(c).is_ok(), "purged while open");
        s.trash().unpin(c);
        assert!(
            matches!(s.records.read(c), Err(Error::NotFound)),
            "trash off: kept"
        );
        assert!(
            s.records.read(a).is_ok(),
            "a closed file's trash went with another's close"
        );
    }

    /// A deleted tree, as `rm -rf` leaves it: one top entry with its totals, nested
    /// entries with whole original paths; restoring the top brings the tree back with
    /// its link counts, in one step; purging it frees every node of it.
    #[test]
    fn a_deleted_tree_is_one_entry_restored_and_purged_whole() {
        use crate::store::tests::file_node;
        use crate::store::tree::NewNode;
        let (_d, s) = scratch();
        let root = s.root();
        let dir = |p: NodeId, n: &str| {
            let new = NewNode {
                kind: Kind::Dir,
                mode: 0o755,
                ..file_node()
            };
            s.tree().create(p, OsStr::new(n), new).unwrap().0
        };
        let file = |p: NodeId, n: &str, bytes: &[u8]| {
            let id = s.tree().create(p, OsStr::new(n), file_node()).unwrap().0;
            s.data().write(id, 0, bytes).unwrap();
            s.data().commit(id, false).unwrap();
            id
        };
        let d = dir(root, "d");
        let sub = dir(d, "sub");
        let deeper = dir(sub, "deeper");
        file(d, "a", b"aaaa");
        file(sub, "b", b"bb");
        file(deeper, "c", b"c");
        let keep = file(root, "keep", b"k");
        // rm -rf d: contents first, then each directory once empty.
        let t = s.tree();
        t.unlink(deeper, OsStr::new("c")).unwrap();
        t.rmdir(sub, OsStr::new("deeper")).unwrap();
        t.unlink(sub, OsStr::new("b")).unwrap();
        t.rmdir(d, OsStr::new("sub")).unwrap();
        t.unlink(d, OsStr::new("a")).unwrap();
        t.rmdir(root, OsStr::new("d")).unwrap();

        let all = s.trash().list().unwrap();
        assert_eq!(all.len(), 6);
        let tops: Vec<&TrashEntry> = all.iter().filter(|e| e.within.is_none()).collect();
        assert_eq!(tops.len(), 1, "one line for the deleted tree");
        assert_eq!(tops[0].id, d);
        assert_eq!((tops[0].nodes, tops[0].bytes), (6, 7));
        let mut paths: Vec<String> = all
            .iter()
            .map(|e| e.origin_path.as_ref().unwrap().display().to_string())
            .collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                "d",
                "d/a",
                "d/sub",
                "d/sub/b",
                "d/sub/deeper",
                "d/sub/deeper/c"
            ]
        );
        // A nested entry's directory is in the trash: it cannot come back alone there.
        assert!(matches!(
            s.trash().restore(OsStr::new("d/sub/b"), None),
            Err(Error::RestoreParentGone(_))
        ));

        s.trash().restore(OsStr::new("d"), None).unwrap();
        assert!(s.trash().list().unwrap().is_empty());
        let n = s.names();
        let path = |p: &str| n.resolve_path(Path::new(p)).unwrap();
        assert_eq!(path("d"), d);
        assert_eq!(s.records.read(d).unwrap().nlink, 3, "d: 2 + sub");
        assert_eq!(s.records.read(sub).unwrap().nlink, 3, "sub: 2 + deeper");
        assert_eq!(s.records.read(deeper).unwrap().nlink, 2);
        assert_eq!(s.records.read(root).unwrap().nlink, 3, "root: 2 + d");
        let c = path("d/sub/deeper/c");
        assert_eq!(s.data().read(c, 0, 10).unwrap(), b"c");
        assert_eq!(s.records.read(c).unwrap().nlink, 1);
        assert!(s.records.read(c).unwrap().trash.is_none());

        // Deleted again and purged by its path: every node of it goes.
        let t = s.tree();
        t.unlink(deeper, OsStr::new("c")).unwrap();
        t.rmdir(sub, OsStr::new("deeper")).unwrap();
        t.unlink(sub, OsStr::new("b")).unwrap();
        t.rmdir(d, OsStr::new("sub")).unwrap();
        t.unlink(d, OsStr::new("a")).unwrap();
        t.rmdir(root, OsStr::new("d")).unwrap();
        let r = s.trash().purge(PurgeSel::One("d".into())).unwrap();
        assert_eq!(r.nodes, 6);
        assert!(s.trash().list().unwrap().is_empty());
        for id in [d, sub, deeper, c] {
            assert!(
                matches!(s.records.read(id), Err(Error::NotFound)),
                "{id} kept"
            );
        }
        assert!(s.records.read(keep).is_ok());
    }

    /// Restoring or purging one deleted tree reads that tree's records, not every record
    /// in the trash: the links' names say which directory each node was deleted from.
    /// A path through a directory that was deleted later, and an id prefix, find the
    /// same entries as `list` shows.
    #[test]
    fn restore_and_purge_of_a_tree_read_its_records_not_the_whole_trash() {
        use crate::store::tests::file_node;
        use crate::store::tree::NewNode;
        let (_d, s) = scratch();
        let root = s.root();
        let t = s.tree();
        let mkdir = |p: NodeId, n: &str| {
            let new = NewNode {
                kind: Kind::Dir,
                mode: 0o755,
                ..file_node()
            };
            t.create(p, OsStr::new(n), new).unwrap().0
        };
        let mkfile = |p: NodeId, n: &str| t.create(p, OsStr::new(n), file_node()).unwrap().0;
        // 300 unrelated deletions, 100 of them out of the root.
        let junk = mkdir(root, "junk");
        for i in 0..200 {
            mkfile(junk, &format!("j{i}"));
        }
        for i in 0..100 {
            mkfile(root, &format!("r{i}"));
        }
        for i in 0..200 {
            t.unlink(junk, OsStr::new(&format!("j{i}"))).unwrap();
        }
        for i in 0..100 {
            t.unlink(root, OsStr::new(&format!("r{i}"))).unwrap();
        }
        // The tree: a/b/{x,y}; b/x deleted first on its own, then a/b/y, b, a.
        let a = mkdir(root, "a");
        let b = mkdir(a, "b");
        let x = mkfile(b, "x");
        let y = mkfile(b, "y");
        t.unlink(b, OsStr::new("x")).unwrap();
        let x2 = mkfile(b, "x");
        t.unlink(b, OsStr::new("x")).unwrap();
        t.unlink(b, OsStr::new("y")).unwrap();
        t.rmdir(a, OsStr::new("b")).unwrap();
        t.rmdir(root, OsStr::new("a")).unwrap();
        for l in fs::read_dir(s.layout.trash()).unwrap() {
            let name = l.unwrap().file_name().into_string().unwrap();
            let p = Layout::parse_trash_link(&name).unwrap();
            let origin = s.records.read(p.id).unwrap().trash.unwrap();
            assert_eq!(p.parent, Some(origin.parent), "{name}");
        }
        // A path through trashed directories, the latest of two deletions of a name.
        let links = Links::read(&s.trash()).unwrap();
        let by_path = s.trash().find(&links, OsStr::new("a/b/x")).unwrap();
        assert_eq!(by_path.id, x2);
        assert_eq!(by_path.origin_path.as_deref(), Some(Path::new("a/b/x")));
        let by_id = s
            .trash()
            .find(&links, OsStr::new(&x.to_string()[..8]))
            .unwrap();
        assert_eq!(by_id.id, x);
        assert_eq!(by_id.origin_path.as_deref(), Some(Path::new("a/b/x")));

        let before = s.records.disk_reads();
        s.trash().restore(OsStr::new("a"), None).unwrap();
        let reads = s.records.disk_reads() - before;
        assert!(reads < 60, "a restore of 5 nodes read {reads} records");
        let n = s.names();
        assert_eq!(n.resolve_path(Path::new("a/b/x")).unwrap(), x2);
        assert_eq!(n.resolve_path(Path::new("a/b/y")).unwrap(), y);
        // The older x stays in the trash, now deleted out of a live directory.
        let left: Vec<TrashEntry> = s.trash().list().unwrap();
        assert_eq!(left.len(), 301);
        let old_x = left.iter().find(|e| e.id == x).unwrap();
        assert_eq!(old_x.origin_path.as_deref(), Some(Path::new("a/b/x")));
        assert!(old_x.within.is_none());

        for (d, name) in [(b, "x"), (b, "y"), (a, "b"), (root, "a")] {
            if d == a || d == root {
                t.rmdir(d, OsStr::new(name)).unwrap();
            } else {
                t.unlink(d, OsStr::new(name)).unwrap();
            }
        }
        let before = s.records.disk_reads();
        let r = s.trash().purge(PurgeSel::One("a".into())).unwrap();
        let reads = s.records.disk_reads() - before;
        // The older x was deleted out of b too: it goes with b's tree.
        assert_eq!(r.nodes, 5);
        assert!(reads < 60, "a purge of 5 nodes read {reads} records");
        for id in [a, b, x, x2, y] {
            assert!(matches!(s.records.read(id), Err(Error::NotFound)));
        }
        assert_eq!(s.trash().list().unwrap().len(), 300);
    }

    /// Retention frees nodes and revisions at once and leaves their blobs to the batched
    /// sweep, which frees them (one reference scan for everything queued).
    #[test]
    fn retention_leaves_the_blobs_to_the_batched_sweep() {
        let (_d, s) = scratch();
        let mut p = s.policy();
        p.trash_retention_secs = 3600;
        s.set_policy(p);
        let f = new_file(&s, "f");
        s.data().open_write(f).unwrap();
        s.data().write(f, 0, &vec![7u8; 100_000]).unwrap();
        s.data().close_write(f).unwrap();
        let blobs = crate::store::content::record_hashes(&s.records.read(f).unwrap());
        assert!(!blobs.is_empty());
        s.tree().unlink(s.root(), OsStr::new("f")).unwrap();
        s.sweeper().run_pending_sweep().unwrap();
        assert!(
            blobs.iter().all(|h| s.local.path_of(h).exists()),
            "in the trash"
        );

        let mut p = s.policy();
        p.trash_retention_secs = 0;
        s.set_policy(p);
        let r = s.trash().expire().unwrap();
        assert_eq!(r.nodes, 1);
        assert!(matches!(s.records.read(f), Err(Error::NotFound)));
        assert!(
            blobs.iter().all(|h| s.local.path_of(h).exists()),
            "swept by retention itself"
        );
        assert!(s.sweeper().run_pending_sweep().unwrap() >= 100_000);
        assert!(blobs.iter().all(|h| !s.local.path_of(h).exists()));
    }

    /// Retention decides from the names of trash links and revision files; what it
    /// keeps and drops must be what the records say.
    #[test]
    fn retention_drops_what_is_over_the_limits_and_keeps_the_rest() {
        let (_d, s) = scratch();
        let mut p = s.policy();
        p.revisions_keep = 2;
        p.trash_retention_secs = 3600;
        s.set_policy(p);
        let id = new_file(&s, "f");
        for v in 0..5u8 {
            s.data().open_write(id).unwrap();
            s.data().write(id, 0, &[b'a' + v; 3]).unwrap();
            s.data().close_write(id).unwrap();
        }
        // Each commit pruned to the newest two: "ccc" and "ddd".
        let revs = s.revisions.list(id).unwrap();
        let kept: Vec<Vec<u8>> = revs
            .iter()
            .map(|(_, r)| s.data().read_content(id, r).unwrap())
            .collect();
        assert_eq!(kept, vec![b"ccc".to_vec(), b"ddd".to_vec()]);

        // Trash younger than the retention stays; an hour of retention keeps both.
        let g = new_file(&s, "g");
        s.tree().unlink(s.root(), OsStr::new("g")).unwrap();
        s.tree().unlink(s.root(), OsStr::new("f")).unwrap();
        let r = s.trash().expire().unwrap();
        assert_eq!((r.nodes, r.revisions), (0, 0));
        assert_eq!(s.trash().list().unwrap().len(), 2);

        // No retention: both go, with f's revisions.
        let mut p = s.policy();
        p.trash_retention_secs = 0;
        s.set_policy(p);
        let r = s.trash().expire().unwrap();
        assert_eq!((r.nodes, r.revisions), (2, 2));
        assert!(s.trash().list().unwrap().is_empty());
        assert!(s.revisions.list(id).unwrap().is_empty());
        assert!(matches!(s.records.read(g), Err(Error::NotFound)));
    }
}
