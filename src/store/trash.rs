//! Undo: trash, purge, revisions and their restore, retention (invariant 6).
//!
//! A node whose last name goes away is not deleted: `tree` links it from
//! `trash/<unix-nanos>.<uuid>` and its record keeps its origin (parent, name, time).
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

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::error::{Error, Result};
use super::event::{Event, Op};
use super::layout::{Layout, Policy};
use super::node::{Hash, Kind, NodeId, Status, Time};
use super::Store;

/// One trashed node.
#[derive(Clone, Debug)]
pub struct TrashEntry {
    pub id: NodeId,
    /// The trash link's name: `<unix-nanos>.<uuid>`.
    pub link: String,
    pub at: Time,
    pub origin_parent: NodeId,
    pub origin_name: Vec<u8>,
    /// The original path (relative to the root) if its directory still exists.
    pub origin_path: Option<PathBuf>,
    pub kind: Kind,
    pub size: u64,
    pub stored: u64,
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
    One(String),
}

fn nanos(t: Time) -> i128 {
    t.secs as i128 * 1_000_000_000 + t.nanos as i128
}

impl Store {
    pub fn policy(&self) -> Policy {
        *self.policy.lock()
    }

    pub fn set_policy(&self, p: Policy) {
        *self.policy.lock() = p;
    }

    /// A handle of `id` closed. With trash off, the last close of an unlinked file frees it.
    pub fn unpin(&self, id: NodeId) {
        if !self.pins.unpin(id) || self.read_only() {
            return;
        }
        // Not by listing the trash: that reads every trashed record, and a program whose
        // files die young (a database's journal) would pay it at every close.
        if self.pins.is_unlinked(id) {
            // Deleted on a full disk without a trash link: free it now.
            let _ = self.free_unlinked(id);
        } else if self.policy().trash_retention_secs == 0 {
            if let Ok(rec) = self.records.read(id) {
                if rec.trash.is_some() && rec.nlink == 0 {
                    let _ = self.purge(PurgeSel::One(id.to_string()), false);
                }
            }
        }
    }

    /// Called by `tree` once a node went to trash: with trash off, free it now.
    pub(crate) fn trashed(&self, id: NodeId) -> Result<()> {
        if self.policy().trash_retention_secs == 0
            && !self.pins.pinned(id)
            && !self.sessions.contains(id)
        {
            self.purge(PurgeSel::One(id.to_string()), false)?;
        }
        Ok(())
    }

    /// The live path of a node relative to the root, if every step of its parent hints
    /// is a real entry (None for trashed nodes and their contents).
    pub fn path_of(&self, id: NodeId) -> Option<PathBuf> {
        let mut parts = Vec::new();
        let mut cur = id;
        for _ in 0..4096 {
            if cur == self.root() {
                parts.reverse();
                return Some(parts.iter().collect());
            }
            let rec = self.records.read(cur).ok()?;
            if rec.trash.is_some() {
                return None;
            }
            let parent = rec.parent?;
            let name = OsStr::from_bytes(&rec.name).to_os_string();
            if self.lookup(parent, &name).ok()? != cur {
                return None;
            }
            parts.push(name);
            cur = parent;
        }
        None
    }

    /// Resolve a path relative to the root (no symlinks are followed).
    pub fn resolve_path(&self, rel: &Path) -> Result<NodeId> {
        let mut cur = self.root();
        for c in rel.components() {
            match c {
                Component::Normal(n) => cur = self.lookup(cur, n)?,
                Component::RootDir | Component::CurDir => {}
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(Error::Invalid("'..' is not allowed here"))
                }
            }
        }
        Ok(cur)
    }

    /// Everything in the trash, oldest first.
    pub fn trash_list(&self) -> Result<Vec<TrashEntry>> {
        self.trash_list_from(|_| true)
    }

    /// The trash entries whose link passes `wanted`, which sees the time in the link's
    /// name (`<nanos>.<id>`, taken just before the node was trashed, so never after its
    /// record's `trash.at`), or None for a name without one. Entries it turns away cost
    /// a directory entry, not a readlink and record reads.
    fn trash_list_from(&self, wanted: impl Fn(Option<i128>) -> bool) -> Result<Vec<TrashEntry>> {
        let mut out = Vec::new();
        let it = match fs::read_dir(self.layout.trash()) {
            Ok(it) => it,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io("read trash", e)),
        };
        for e in it.flatten() {
            let link = e.file_name().to_string_lossy().into_owned();
            let stamp = link
                .split_once('.')
                .and_then(|(n, _)| n.parse::<i128>().ok());
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
            let Some(origin) = rec.trash.clone() else {
                continue;
            };
            let origin_path = if origin.parent == self.root() {
                Some(PathBuf::from(OsStr::from_bytes(&origin.name)))
            } else {
                self.path_of(origin.parent)
                    .map(|p| p.join(OsStr::from_bytes(&origin.name)))
            };
            out.push(TrashEntry {
                id,
                link,
                at: origin.at,
                origin_parent: origin.parent,
                origin_name: origin.name,
                origin_path,
                kind: rec.kind,
                size: rec.size,
                stored: rec.stored,
            });
        }
        out.sort_by_key(|e| nanos(e.at));
        Ok(out)
    }

    /// Find a trash entry by node id (or a unique prefix of it) or by original path
    /// (the most recent one deleted from there).
    fn trash_find(&self, sel: &OsStr) -> Result<TrashEntry> {
        let list = self.trash_list()?;
        let as_id = sel.to_str().unwrap_or("");
        let by_id: Vec<&TrashEntry> = list
            .iter()
            .filter(|e| as_id.len() >= 4 && e.id.to_string().starts_with(as_id))
            .collect();
        if by_id.len() == 1 {
            return Ok(by_id[0].clone());
        }
        if by_id.len() > 1 {
            return Err(Error::Invalid("ambiguous trash id prefix"));
        }
        let b = sel.as_bytes();
        let start = b.iter().position(|c| *c != b'/').unwrap_or(b.len());
        let want = Path::new(OsStr::from_bytes(&b[start..]));
        list.iter()
            .rev()
            .find(|e| e.origin_path.as_deref() == Some(want))
            .cloned()
            .ok_or_else(|| Error::NotInTrash(sel.to_string_lossy().into_owned()))
    }

    /// Bring a trashed node back, at its origin or at `to` (a path relative to the root).
    /// Returns where it was restored.
    pub fn trash_restore(&self, sel: &OsStr, to: Option<&Path>) -> Result<PathBuf> {
        self.writable()?;
        let e = self.trash_find(sel)?;
        let (parent, name) = match to {
            Some(p) => {
                let name = p
                    .file_name()
                    .ok_or(Error::Invalid("--to needs a file name"))?
                    .to_os_string();
                let dir = p.parent().unwrap_or(Path::new(""));
                let parent = self
                    .resolve_path(dir)
                    .map_err(|_| Error::RestoreParentGone(dir.to_path_buf()))?;
                (parent, name)
            }
            None => (
                e.origin_parent,
                OsStr::from_bytes(&e.origin_name).to_os_string(),
            ),
        };
        let prec = self
            .records
            .read(parent)
            .map_err(|_| Error::RestoreParentGone(e.origin_path.clone().unwrap_or_default()))?;
        if prec.kind != Kind::Dir || prec.nlink == 0 || prec.trash.is_some() {
            let shown = e
                .origin_path
                .clone()
                .unwrap_or_else(|| PathBuf::from(OsStr::from_bytes(&e.origin_name)));
            return Err(Error::RestoreParentGone(shown));
        }
        let where_ = self.path_of(parent).unwrap_or_default().join(&name);
        self.restore_into(&e, parent, &name)
            .map_err(|err| match err {
                Error::Exists => Error::RestoreNameTaken(where_.clone()),
                other => other,
            })?;
        Ok(where_)
    }

    /// Bind `e` as `name` in `parent`, clear its origin, and bring back what was deleted
    /// out of it if it is a directory.
    fn restore_into(&self, e: &TrashEntry, parent: NodeId, name: &OsStr) -> Result<()> {
        std::os::unix::fs::symlink(Layout::entry_target(e.id), self.entry_path(parent, name))
            .map_err(|err| match err.kind() {
                std::io::ErrorKind::AlreadyExists => Error::Exists,
                _ => Error::io("restore", err),
            })?;
        self.debts.child_unsynced(parent, e.id, true, []);
        let now = Time::now();
        let r = (|| {
            self.records.update(e.id, |r| {
                r.trash = None;
                r.parent = Some(parent);
                r.name = name.as_bytes().to_vec();
                r.nlink = if r.kind == Kind::Dir { 2 } else { 1 };
                r.ctime = now;
                Ok(())
            })?;
            let _ = fs::remove_file(self.layout.trash().join(&e.link));
            self.records.update(parent, |r| {
                r.mtime = now;
                r.ctime = now;
                if e.kind == Kind::Dir {
                    r.nlink += 1;
                }
                Ok(())
            })
        })();
        self.followers
            .emit(Event::new(Op::Restore, &[e.id, parent]).entry(parent, name));
        r?;
        if e.kind == Kind::Dir {
            // The directory's former contents: the latest trashed entry per name.
            let mut latest: BTreeMap<Vec<u8>, TrashEntry> = BTreeMap::new();
            for c in self.trash_list()? {
                if c.origin_parent == e.id {
                    latest.insert(c.origin_name.clone(), c);
                }
            }
            for (n, c) in latest {
                if let Err(err) = self.restore_into(&c, e.id, OsStr::from_bytes(&n)) {
                    log::warn!("restoring {:?} into {}: {err}", OsStr::from_bytes(&n), e.id);
                }
            }
        }
        Ok(())
    }

    /// Purge trash entries; their space is freed (blobs no one else references).
    pub fn trash_purge(&self, sel: PurgeSel) -> Result<PurgeReport> {
        self.purge(sel, true)
    }

    /// Purge; `sweep_now` frees blobs before returning, otherwise they are queued for the
    /// daemon's batched sweep (one reference scan for many unlinks).
    fn purge(&self, sel: PurgeSel, sweep_now: bool) -> Result<PurgeReport> {
        self.writable()?;
        let since = SystemTime::now();
        let now = nanos(Time::now());
        let chosen: Vec<TrashEntry> = match sel {
            PurgeSel::All => self.trash_list()?,
            // Retention runs every minute: a link younger than `d` by its name is not
            // read at all (its node was trashed after the link was made).
            PurgeSel::OlderThan(d) => {
                let d = d.as_nanos() as i128;
                self.trash_list_from(|stamp| stamp.is_none_or(|t| now - t >= d))?
                    .into_iter()
                    .filter(|e| now - nanos(e.at) >= d)
                    .collect()
            }
            PurgeSel::One(s) => vec![self.trash_find(OsStr::new(&s))?],
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
        if sweep_now {
            report.bytes_freed = self.sweep(candidates, since)?;
        } else {
            self.sweep_queue.push(candidates);
        }
        Ok(report)
    }

    /// Delete a node that no name reaches, and its revisions; the blobs they named are
    /// added to `candidates` for a sweep. Returns the number of revisions dropped (None
    /// if the node could not be removed).
    fn remove_node(&self, id: NodeId, candidates: &mut Vec<Hash>) -> Result<Option<u64>> {
        let rec = match self.records.read(id) {
            Ok(r) => r,
            Err(_) => return Ok(None),
        };
        candidates.extend(self.blob_refs(id, &rec));
        let revs = self.revisions.list(id)?;
        for (_, r) in &revs {
            candidates.extend(self.blob_refs(id, r));
        }
        let p = self.layout.node_path(id);
        let gone = if rec.kind == Kind::Dir {
            fs::remove_dir(&p)
        } else {
            fs::remove_file(&p)
        };
        if let Err(err) = gone {
            log::warn!("purge {id}: {err}");
            return Ok(None);
        }
        let _ = fs::remove_dir_all(self.layout.revisions_of(id));
        Ok(Some(revs.len() as u64))
    }

    /// A node lost its last name while the disk was too full to link it from the trash:
    /// free it now (or at its last close), so deleting files can still free space.
    pub(crate) fn untrashable(&self, id: NodeId) -> Result<()> {
        log::warn!("node {id}: no space to keep it in the trash; it is deleted for good");
        // Marked before the check: a last close racing this either finds the mark (and
        // frees the node) or was over before the check (and this frees it).
        self.pins.mark_unlinked(id);
        if self.pins.pinned(id) || self.sessions.contains(id) {
            return Ok(()); // `unpin` frees it at the last close
        }
        self.free_unlinked(id)
    }

    /// Free a node `untrashable` marked, unless someone else did already.
    fn free_unlinked(&self, id: NodeId) -> Result<()> {
        if !self.pins.take_unlinked(id) {
            return Ok(());
        }
        let mut candidates = Vec::new();
        self.remove_node(id, &mut candidates)?;
        self.sweep_queue.push(candidates);
        Ok(())
    }

    /// Apply the retention policy: purge old trash, drop old revisions. The blobs they
    /// named are queued for the batched sweep (`run_pending_sweep`), not swept here: a
    /// sweep scans every record of the store, and the daemon runs this every minute, so
    /// sweeping here cost up to two whole-store scans a minute outside the bound the
    /// batched sweep keeps (see `spawn_maintenance`). `bytes_freed` is therefore 0.
    pub fn expire(&self) -> Result<PurgeReport> {
        let p = self.policy();
        let mut report = self.purge(
            PurgeSel::OlderThan(Duration::from_secs(p.trash_retention_secs)),
            false,
        )?;
        let mut candidates = Vec::new();
        for id in self.revision_owners() {
            let (n, c) = self.prune_revisions(id)?;
            report.revisions += n;
            candidates.extend(c);
        }
        self.sweep_queue.push(candidates);
        Ok(report)
    }

    /// Drop revisions of `id` beyond the count or age limits. Returns (dropped, blobs
    /// they referenced).
    pub(crate) fn prune_revisions(&self, id: NodeId) -> Result<(u64, Vec<Hash>)> {
        let p = self.policy();
        let now = nanos(Time::now());
        let max_age = p.revisions_max_age_secs as i128 * 1_000_000_000;
        // Asked after every commit that keeps a revision, and of every file with
        // revisions every minute: which to drop follows from the names (stamps), so only
        // the dropped ones are read (for the blobs they name).
        let (dir, stamps) = self.revisions.stamps(id)?;
        let keep_from = stamps.len().saturating_sub(p.revisions_keep as usize);
        let mut dropped = 0;
        let mut blobs = Vec::new();
        for (i, stamp) in stamps.iter().enumerate() {
            if i < keep_from || now - stamp > max_age {
                let path = dir.join(stamp.to_string());
                if let Some(r) = self.revisions.read(id, *stamp, &path)? {
                    blobs.extend(self.blob_refs(id, &r));
                }
                let _ = fs::remove_file(path);
                dropped += 1;
            }
        }
        if dropped > 0 && dropped as usize == stamps.len() {
            let _ = fs::remove_dir(&dir);
        }
        Ok((dropped, blobs))
    }

    /// Restore revision `stamp` of file `id`: one record swap. The current content
    /// becomes a revision; open handles see the restored content from now on.
    pub fn version_restore(&self, id: NodeId, stamp: i128) -> Result<()> {
        self.writable()?;
        let revs = self.revisions.list(id)?;
        let Some((_, rev)) = revs.into_iter().find(|(t, _)| *t == stamp) else {
            return Err(Error::NoSuchRevision(stamp.to_string()));
        };
        let session = self.sessions.get(id);
        let mut guard = session.as_ref().map(|s| s.lock());
        if let Some(s) = guard.as_mut() {
            self.commit_locked(id, s, false)?;
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
            self.reset_session(s, &new);
        }
        drop(guard);
        let (_, blobs) = self.prune_revisions(id)?;
        self.sweep_queue.push(blobs);
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
        s.unlink(root, OsStr::new("a")).unwrap();
        s.unpin(a);
        assert!(s.trash_list().unwrap().iter().any(|e| e.id == a));
        assert!(s.records.read(a).is_ok());

        // As on a full disk: no trash link.
        let b = new_file(&s, "b");
        s.pins.pin(b);
        s.pins.pin(b);
        s.unlink(root, OsStr::new("b")).unwrap();
        let link = s
            .trash_list()
            .unwrap()
            .into_iter()
            .find(|e| e.id == b)
            .unwrap()
            .link;
        fs::remove_file(s.layout.trash().join(link)).unwrap();
        s.untrashable(b).unwrap();
        s.unpin(b);
        assert!(s.records.read(b).is_ok(), "freed while a handle is open");
        s.unpin(b);
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
        s.unlink(root, OsStr::new("c")).unwrap();
        assert!(s.records.read(c).is_ok(), "purged while open");
        s.unpin(c);
        assert!(
            matches!(s.records.read(c), Err(Error::NotFound)),
            "trash off: kept"
        );
        assert!(
            s.records.read(a).is_ok(),
            "a closed file's trash went with another's close"
        );
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
        s.open_write(f).unwrap();
        s.write(f, 0, &vec![7u8; 100_000]).unwrap();
        s.close_write(f).unwrap();
        let blobs = Store::record_hashes(&s.records.read(f).unwrap());
        assert!(!blobs.is_empty());
        s.unlink(s.root(), OsStr::new("f")).unwrap();
        s.run_pending_sweep().unwrap();
        assert!(
            blobs.iter().all(|h| s.local.path_of(h).exists()),
            "in the trash"
        );

        let mut p = s.policy();
        p.trash_retention_secs = 0;
        s.set_policy(p);
        let r = s.expire().unwrap();
        assert_eq!(r.nodes, 1);
        assert!(matches!(s.records.read(f), Err(Error::NotFound)));
        assert!(
            blobs.iter().all(|h| s.local.path_of(h).exists()),
            "swept by retention itself"
        );
        assert!(s.run_pending_sweep().unwrap() >= 100_000);
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
            s.open_write(id).unwrap();
            s.write(id, 0, &[b'a' + v; 3]).unwrap();
            s.close_write(id).unwrap();
        }
        // Each commit pruned to the newest two: "ccc" and "ddd".
        let revs = s.revisions.list(id).unwrap();
        let kept: Vec<Vec<u8>> = revs
            .iter()
            .map(|(_, r)| s.read_content(id, r).unwrap())
            .collect();
        assert_eq!(kept, vec![b"ccc".to_vec(), b"ddd".to_vec()]);

        // Trash younger than the retention stays; an hour of retention keeps both.
        let g = new_file(&s, "g");
        s.unlink(s.root(), OsStr::new("g")).unwrap();
        s.unlink(s.root(), OsStr::new("f")).unwrap();
        let r = s.expire().unwrap();
        assert_eq!((r.nodes, r.revisions), (0, 0));
        assert_eq!(s.trash_list().unwrap().len(), 2);

        // No retention: both go, with f's revisions.
        let mut p = s.policy();
        p.trash_retention_secs = 0;
        s.set_policy(p);
        let r = s.expire().unwrap();
        assert_eq!((r.nodes, r.revisions), (2, 2));
        assert!(s.trash_list().unwrap().is_empty());
        assert!(s.revisions.list(id).unwrap().is_empty());
        assert!(matches!(s.records.read(g), Err(Error::NotFound)));
    }
}
