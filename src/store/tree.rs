//! Changes of names: create, link, unlink, rmdir, rename (invariant 3); `names` reads them.
//!
//! A directory node is a directory holding only entries; an entry is a symlink named
//! exactly like the client's name whose target names the child node. A create makes
//! the node first and then binds the name with symlink(2), or, for a regular file made
//! from a spare (see `spare`), with renameat2(RENAME_NOREPLACE) of the spare's entry;
//! both fail with EEXIST if the name is taken: the loser removes its unbound node, so
//! concurrent creates of one name leave exactly one node. A rename is one rename(2)/renameat2(2) of the entry.
//! A node whose last entry goes away is moved to `trash/` with its origin (invariant 6),
//! which also keeps an open-but-unlinked file readable and writable.
//!
//! Every new entry (and every entry a rename moves) is owed to its directory's next
//! fsyncdir (`Fsync::sync_dir_node`): either a syncfs (inodes made on the spot) or the
//! file's record in the fsync log (a file from a spare), and the `nodes/` directories
//! that gained its node file only if some file could not go through the log.
//!
//! A change of a directory's entries that leaves its link count alone writes its times
//! later (`Records::touch_dir_times`): reads see them at once, the record follows within
//! a second, at the directory's fsync, with its next other change or at a clean close.
//!
//! Namespace consistency between a check and the rename(2) that follows (empty target
//! directory, no cycles) relies on the kernel's VFS locks, which serialize conflicting
//! namespace operations on one mount; the store is only ever written by one mount.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::content::Data;
use super::dirsync::DirDebts;
use super::error::{Error, IoContext, Result};
use super::event::Followers;
use super::event::{Event, Op};
use super::layout::Layout;
use super::lock::Fence;
use super::names::{validate_name, Names};
use super::node::ino_of;
use super::node::{Kind, NodeId, NodeRecord, Time, TrashOrigin};
use super::records::{Old, Records};
use super::spare::Spares;
use super::trash::{PreTrash, Trash};

/// Most links a node may have (ext4's limit).
pub const LINK_MAX: u32 = 65_000;

/// What a new node is.
#[derive(Clone, Debug)]
pub struct NewNode {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub target: Vec<u8>,
}

/// How a rename treats an existing target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    Replace,
    NoReplace,
    Exchange,
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::Invalid("path contains NUL"))
}

pub(super) fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    let (a, b) = (
        cpath(from).map_err(|_| ErrorKind::InvalidInput)?,
        cpath(to).map_err(|_| ErrorKind::InvalidInput)?,
    );
    // SAFETY: both paths are valid NUL-terminated strings.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Changes of names: create, link, unlink, rmdir, rename.
#[derive(Clone, Copy)]
pub struct Tree<'a> {
    pub(super) layout: &'a Layout,
    pub(super) records: &'a Records,
    pub(super) fence: &'a Fence,
    pub(super) spares: &'a Spares,
    pub(super) debts: &'a DirDebts,
    pub(super) followers: &'a Followers,
    pub(super) names: Names<'a>,
    pub(super) trash: Trash<'a>,
    pub(super) data: Data<'a>,
}

impl Tree<'_> {
    /// Create a node and bind it to `name` in `parent`.
    pub fn create(
        &self,
        parent: NodeId,
        name: &OsStr,
        new: NewNode,
    ) -> Result<(NodeId, NodeRecord)> {
        self.fence.check()?;
        validate_name(name)?;
        let snaps = self.records.snapshots();
        let _op = snaps.op();
        let prec = self.names.dir_record(parent)?;
        // What the name is now (free, or taken: the bind below fails then), for the
        // snapshots that hold the directory; no snapshot is taken until `_op` ends.
        self.names.preserve_entry(parent, name)?;
        // A regular file takes a spare node file and entry if one is ready (see
        // `spare`). Otherwise directories spread over `nodes/` at random, and everything
        // else lives beside its directory (see NodeId::new_near).
        let spare = if new.kind == Kind::File {
            self.spares.take()
        } else {
            None
        };
        let id = match &spare {
            Some(s) => s.id,
            None if new.kind == Kind::Dir => NodeId::new_spread(Kind::Dir),
            None => NodeId::new_near(parent, new.kind),
        };
        let mut rec = NodeRecord::new(
            new.kind,
            new.mode,
            new.uid,
            new.gid,
            ino_of(self.names.root, id),
        );
        rec.rdev = new.rdev;
        rec.target = new.target;
        if new.kind == Kind::Symlink {
            rec.size = rec.target.len() as u64;
            rec.mode = 0o777;
        }
        // BSD group semantics of a setgid directory, as ext4 does.
        if prec.mode & libc::S_ISGID != 0 {
            rec.gid = prec.gid;
            if new.kind == Kind::Dir {
                rec.mode |= libc::S_ISGID;
            }
        }
        rec.parent = Some(parent);
        rec.name = name.as_bytes().to_vec();
        rec.born = snaps.current();
        rec.gen = rec.born;

        // 1. the node, unbound
        let npath = self.layout.node_path(id);
        let make = |p: &Path| -> std::io::Result<()> {
            if new.kind == Kind::Dir {
                fs::create_dir(p)
            } else {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(p)
                    .map(|_| ())
            }
        };
        let mut new_shard = false;
        if let Some(sp) = &spare {
            // The spare's `nodes/xx/yy/` exists and is durable already.
            if let Err(e) = fs::rename(&sp.node, &npath) {
                sp.discard();
                return Err(Error::io(format!("create node {id}"), e));
            }
        } else if let Err(e) = make(&npath) {
            if e.kind() != ErrorKind::NotFound {
                return Err(Error::io(format!("create node {id}"), e));
            }
            let shard = npath.parent().unwrap();
            fs::create_dir_all(shard).ctx(|| format!("create {}", shard.display()))?;
            make(&npath).ctx(|| format!("create node {id}"))?;
            new_shard = true;
        }
        if let Err(e) = self.records.write(id, &rec, false, Old::Fresh) {
            self.remove_node_files(id, new.kind);
            if let Some(sp) = &spare {
                sp.discard();
            }
            return Err(e);
        }
        // 2. bind the name; EEXIST means another create won
        let entry = self.names.entry_path(parent, name);
        let bind = |p: &Path| std::os::unix::fs::symlink(Layout::entry_target(id), p);
        let mut in_place = spare.is_none();
        let bound = match &spare {
            Some(sp) => match renameat2(&sp.entry, &entry, libc::RENAME_NOREPLACE) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.no_noreplace(&e);
                    sp.discard();
                    in_place = true;
                    bind(&entry)
                }
                r => r,
            },
            None => bind(&entry),
        };
        if let Err(e) = bound {
            self.remove_node_files(id, new.kind);
            if let Some(sp) = &spare {
                sp.discard();
            }
            return Err(match e.kind() {
                ErrorKind::AlreadyExists => Error::Exists,
                ErrorKind::NotFound => Error::NotFound,
                _ => Error::io(format!("bind {:?}", name), e),
            });
        }
        // The node's name in nodes/xx/yy, and a new nodes/xx/yy (perhaps nodes/xx) one
        // level up, become durable with the parent's next fsyncdir.
        let shard = npath.parent().unwrap();
        let new_levels = if new_shard { 2 } else { 0 };
        self.debts
            .child_unsynced(parent, id, in_place, shard.ancestors().take(1 + new_levels));
        // 3. the parent's times (and link count for a subdirectory)
        let r = self.touch_dir(parent, if new.kind == Kind::Dir { 1 } else { 0 });
        self.followers
            .emit(Event::new(Op::Create, &[id, parent]).entry(parent, name));
        r?;
        Ok((id, rec))
    }

    /// The backing filesystem refuses RENAME_NOREPLACE: stop staging (and making
    /// spares), so names are bound by symlink(2) itself.
    fn no_noreplace(&self, e: &std::io::Error) {
        log::warn!("spares: the backing filesystem refuses RENAME_NOREPLACE ({e}); new inodes are made in place");
        self.spares.close();
    }

    fn remove_node_files(&self, id: NodeId, kind: Kind) {
        let _ = self.records.remove_node(id, kind == Kind::Dir);
    }

    /// Update a directory's mtime/ctime and adjust its link count.
    fn touch_dir(&self, dir: NodeId, nlink_delta: i64) -> Result<NodeRecord> {
        let now = Time::now();
        if nlink_delta == 0 {
            return self.records.touch_dir_times(dir, now);
        }
        self.records.update(dir, |r| {
            r.mtime = now;
            r.ctime = now;
            r.nlink = (r.nlink as i64 + nlink_delta).max(0) as u32;
            Ok(())
        })
    }

    /// Add a hard link to a non-directory node.
    pub fn link(&self, id: NodeId, newparent: NodeId, newname: &OsStr) -> Result<NodeRecord> {
        self.fence.check()?;
        let _op = self.records.snapshots().op();
        validate_name(newname)?;
        self.names.dir_record(newparent)?;
        let rec = self.records.read(id)?;
        if rec.kind == Kind::Dir {
            return Err(Error::NotPermitted);
        }
        if rec.nlink == 0 {
            return Err(Error::NotFound);
        }
        if rec.nlink >= LINK_MAX {
            return Err(Error::TooManyLinks);
        }
        self.data.end_lingering(id)?;
        self.names.preserve_entry(newparent, newname)?;
        std::os::unix::fs::symlink(
            Layout::entry_target(id),
            self.names.entry_path(newparent, newname),
        )
        .map_err(|e| match e.kind() {
            ErrorKind::AlreadyExists => Error::Exists,
            _ => Error::io(format!("link {:?}", newname), e),
        })?;
        self.debts.child_unsynced(newparent, id, true, []);
        self.data
            .fsync
            .name_bound(newparent, newname.as_bytes(), id);
        let ev = Event::new(Op::Link, &[id, newparent]).entry(newparent, newname);
        let rec = self.records.update(id, |r| {
            r.nlink += 1;
            r.ctime = Time::now();
            Ok(())
        });
        let t = rec.is_ok().then(|| self.touch_dir(newparent, 0));
        self.followers.emit(ev);
        let rec = rec?;
        if let Some(t) = t {
            t?;
        }
        Ok(rec)
    }

    /// A scratch file (`PreTrash::Scratch`: its last link) lost its name: free it now,
    /// without first writing its record with no link and a trash origin as `drop_link`
    /// does (that record would be removed a moment later), and with its node file moved
    /// into staging and freed by the reaper (`Spares::remove_later`; freeing it in
    /// place cost the request an xattr block's synchronous discard). False, having
    /// changed nothing, when the general path must take it: a handle or session still
    /// has it (freed at its last close, which needs the record), or it has revisions.
    ///
    /// A crash after its entry went and before its node file did leaves an orphan, as
    /// `drop_link` does in the same window (docs/DESIGN.md, invariant 6); the window is
    /// shorter here (no record write, no discard). Its record then still says one link
    /// and no trash origin, so fsck adopts it rather than putting it back in the trash,
    /// and replay may bind a logged name of it again: the outcomes of today's path when
    /// its (unsynced) record write did not reach the disk. Once moved into staging the
    /// node file is not a node any more: fsck counts it as stale staging.
    fn free_scratch(&self, id: NodeId) -> Result<bool> {
        let t = &self.trash;
        let rec = self.records.read(id)?;
        if rec.kind == Kind::Dir || rec.nlink > 1 {
            return Ok(false);
        }
        // Closed, but its session lingers (`Data::close_write`): nothing to store.
        self.data.drop_lingering(id);
        if t.pins.pinned(id) || t.sessions.contains(id) {
            return Ok(false);
        }
        if !t.revisions.stamps(id)?.1.is_empty() {
            return Ok(false);
        }
        // As `Trash::discard`: marked, then checked again, so a handle opened meanwhile
        // either sees the mark at its last close or is seen here (then the general path
        // writes the record and that close frees it).
        t.pins.mark_unlinked(id);
        if t.pins.pinned(id) || t.sessions.contains(id) {
            return Ok(false);
        }
        if !t.pins.take_unlinked(id) {
            return Ok(true); // freed by a last close already
        }
        let candidates = t.sweeper.blob_refs(id, &rec);
        self.records.preserve_for_snapshots(id, &rec)?;
        self.records
            .remove_node_by(id, |p| self.spares.remove_later(p))?;
        t.sweeper.queue(candidates);
        Ok(true)
    }

    /// One link of `id` went away: drop the count, and trash the node at zero.
    /// `prepared` is the trash link `pre_trash` made.
    fn drop_link(
        &self,
        id: NodeId,
        parent: NodeId,
        name: &OsStr,
        prepared: PreTrash,
    ) -> Result<()> {
        let now = Time::now();
        let rec = self.records.update(id, |r| {
            r.nlink = if r.kind == Kind::Dir {
                0
            } else {
                r.nlink.saturating_sub(1)
            };
            r.ctime = now;
            if r.nlink == 0 {
                r.trash = Some(TrashOrigin {
                    parent,
                    name: name.as_bytes().to_vec(),
                    at: now,
                });
            }
            Ok(())
        })?;
        match (rec.nlink == 0, prepared) {
            (true, PreTrash::Linked(link)) => self.trash.trashed(id, Some(&link))?,
            (true, PreTrash::Full) => self.trash.untrashable(id)?,
            (true, PreTrash::Scratch) => self.trash.discard(id)?,
            (true, PreTrash::NotLast) => {
                // It lost its other links meanwhile: trash it now.
                match self.trash.pre_trash(id, parent, name)? {
                    PreTrash::Full => self.trash.untrashable(id)?,
                    PreTrash::Scratch => self.trash.discard(id)?,
                    PreTrash::Linked(link) => self.trash.trashed(id, Some(&link))?,
                    PreTrash::NotLast => self.trash.trashed(id, None)?,
                }
            }
            (false, PreTrash::Linked(link)) => {
                // A link was added meanwhile: it is not trash.
                let _ = fs::remove_file(link);
            }
            (false, _) => {}
        }
        Ok(())
    }

    /// Remove a non-directory name.
    pub fn unlink(&self, parent: NodeId, name: &OsStr) -> Result<NodeId> {
        self.fence.check()?;
        let _op = self.records.snapshots().op();
        let id = self.names.lookup(parent, name)?;
        if self.records.read(id)?.kind == Kind::Dir {
            return Err(Error::IsDir);
        }
        self.names.preserve_entry(parent, name)?;
        let prepared = self.trash.pre_trash(id, parent, name)?;
        if let Err(e) = fs::remove_file(self.names.entry_path(parent, name)) {
            if let PreTrash::Linked(link) = prepared {
                let _ = fs::remove_file(link);
            }
            return Err(match e.kind() {
                ErrorKind::NotFound => Error::NotFound,
                _ => Error::io(format!("unlink {:?}", name), e),
            });
        }
        self.data
            .fsync
            .names_changed(&[(parent, name.as_bytes(), id)], None);
        let freed = match prepared {
            PreTrash::Scratch => self.free_scratch(id),
            _ => Ok(false),
        };
        let r = match freed {
            Ok(true) => Ok(()),
            Ok(false) => self.drop_link(id, parent, name, prepared),
            Err(e) => Err(e),
        }
        .and_then(|_| self.touch_dir(parent, 0));
        self.followers
            .emit(Event::new(Op::Unlink, &[id, parent]).entry(parent, name));
        r?;
        Ok(id)
    }

    /// Remove an empty directory.
    pub fn rmdir(&self, parent: NodeId, name: &OsStr) -> Result<NodeId> {
        self.fence.check()?;
        let _op = self.records.snapshots().op();
        let id = self.names.lookup(parent, name)?;
        if self.records.read(id)?.kind != Kind::Dir {
            return Err(Error::NotDir);
        }
        if !self.names.is_empty_dir(id)? {
            return Err(Error::NotEmpty);
        }
        self.names.preserve_entry(parent, name)?;
        let prepared = self.trash.pre_trash(id, parent, name)?;
        if let Err(e) = fs::remove_file(self.names.entry_path(parent, name)) {
            if let PreTrash::Linked(link) = prepared {
                let _ = fs::remove_file(link);
            }
            return Err(Error::io(format!("rmdir {:?}", name), e));
        }
        self.debts.dir_changed(parent);
        let r = self
            .drop_link(id, parent, name, prepared)
            .and_then(|_| self.touch_dir(parent, -1));
        self.followers
            .emit(Event::new(Op::Rmdir, &[id, parent]).entry(parent, name));
        r?;
        Ok(id)
    }

    /// Rename `name` in `parent` to `newname` in `newparent`.
    pub fn rename(
        &self,
        parent: NodeId,
        name: &OsStr,
        newparent: NodeId,
        newname: &OsStr,
        mode: RenameMode,
    ) -> Result<()> {
        self.fence.check()?;
        let _op = self.records.snapshots().op();
        validate_name(newname)?;
        let src = self.names.lookup(parent, name)?;
        let srec = self.records.read(src)?;
        self.data.end_lingering(src)?;
        self.names.dir_record(newparent)?;
        let dst = match self.names.lookup(newparent, newname) {
            Ok(id) => Some(id),
            Err(Error::NotFound) => None,
            Err(e) => return Err(e),
        };
        let drec = match dst {
            Some(d) => Some(self.records.read(d)?),
            None => None,
        };
        let from = self.names.entry_path(parent, name);
        let to = self.names.entry_path(newparent, newname);
        let now = Time::now();

        if mode == RenameMode::Exchange {
            let (dst, drec) = match (dst, drec) {
                (Some(d), Some(r)) => (d, r),
                _ => return Err(Error::NotFound),
            };
            if parent != newparent {
                if srec.kind == Kind::Dir && self.names.is_within(newparent, src)? {
                    return Err(Error::Invalid("cannot move a directory into itself"));
                }
                if drec.kind == Kind::Dir && self.names.is_within(parent, dst)? {
                    return Err(Error::Invalid("cannot move a directory into itself"));
                }
            }
            self.names.preserve_entry(parent, name)?;
            self.names.preserve_entry(newparent, newname)?;
            renameat2(&from, &to, libc::RENAME_EXCHANGE).ctx(|| "rename exchange".into())?;
            self.debts.child_moved(parent, newparent, src);
            self.debts.child_moved(newparent, parent, dst);
            self.data.fsync.names_changed(
                &[
                    (parent, name.as_bytes(), src),
                    (newparent, newname.as_bytes(), dst),
                ],
                None,
            );
            // Each node is bound again to a name; logged where the log knows the name.
            self.data
                .fsync
                .name_bound(newparent, newname.as_bytes(), src);
            self.data.fsync.name_bound(parent, name.as_bytes(), dst);
            self.debts.dir_changed(parent);
            self.debts.dir_changed(newparent);
            let r = (|| {
                self.rehome(src, newparent, newname, now)?;
                self.rehome(dst, parent, name, now)?;
                let (sd, dd) = (
                    (srec.kind == Kind::Dir) as i64,
                    (drec.kind == Kind::Dir) as i64,
                );
                if parent == newparent {
                    self.touch_dir(parent, 0)?;
                } else {
                    self.touch_dir(parent, dd - sd)?;
                    self.touch_dir(newparent, sd - dd)?;
                }
                Ok(())
            })();
            self.followers.emit(
                Event::new(Op::Exchange, &[src, dst, parent, newparent])
                    .entry(parent, name)
                    .entry(newparent, newname),
            );
            return r;
        }

        if let (Some(dst), Some(drec)) = (dst, drec.as_ref()) {
            if mode == RenameMode::NoReplace {
                return Err(Error::Exists);
            }
            if dst == src {
                // Two links of one node: POSIX says do nothing.
                return Ok(());
            }
            match (srec.kind == Kind::Dir, drec.kind == Kind::Dir) {
                (true, false) => return Err(Error::NotDir),
                (false, true) => return Err(Error::IsDir),
                (true, true) if !self.names.is_empty_dir(dst)? => return Err(Error::NotEmpty),
                _ => {}
            }
        }
        if srec.kind == Kind::Dir && parent != newparent && self.names.is_within(newparent, src)? {
            return Err(Error::Invalid("cannot move a directory into itself"));
        }
        let flags = if mode == RenameMode::NoReplace {
            libc::RENAME_NOREPLACE
        } else {
            0
        };
        // The node this rename displaces is linked from the trash before it loses its name.
        self.names.preserve_entry(parent, name)?;
        self.names.preserve_entry(newparent, newname)?;
        let prepared = match dst {
            Some(d) if mode == RenameMode::Replace => {
                self.trash.pre_trash(d, newparent, newname)?
            }
            _ => PreTrash::NotLast,
        };
        if let Err(e) = renameat2(&from, &to, flags) {
            if let PreTrash::Linked(link) = prepared {
                let _ = fs::remove_file(link);
            }
            return Err(match e.kind() {
                ErrorKind::AlreadyExists => Error::Exists,
                ErrorKind::NotFound => Error::NotFound,
                _ => Error::io("rename", e),
            });
        }
        self.debts.child_moved(parent, newparent, src);
        let mut gone = vec![(parent, name.as_bytes(), src)];
        gone.extend(dst.map(|d| (newparent, newname.as_bytes(), d)));
        self.data
            .fsync
            .names_changed(&gone, Some((newparent, newname.as_bytes())));
        let r = (|| {
            self.rehome(src, newparent, newname, now)?;
            let src_dir = (srec.kind == Kind::Dir) as i64;
            let mut new_delta = 0;
            if let (Some(dst), Some(drec)) = (dst, drec) {
                self.drop_link(dst, newparent, newname, prepared)?;
                if drec.kind == Kind::Dir {
                    new_delta -= 1;
                }
            }
            if parent == newparent {
                self.touch_dir(parent, new_delta)?;
            } else {
                self.touch_dir(parent, -src_dir)?;
                self.touch_dir(newparent, new_delta + src_dir)?;
            }
            Ok(())
        })();
        let mut nodes = vec![src, parent, newparent];
        nodes.extend(dst);
        self.followers.emit(
            Event::new(Op::Rename, &nodes)
                .entry(parent, name)
                .entry(newparent, newname),
        );
        r
    }

    /// A node got a new name: update its hints and ctime.
    fn rehome(&self, id: NodeId, parent: NodeId, name: &OsStr, now: Time) -> Result<()> {
        self.records
            .update(id, |r| {
                r.parent = Some(parent);
                r.name = name.as_bytes().to_vec();
                r.ctime = now;
                Ok(())
            })
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::scratch;
    use std::sync::Arc;

    fn file(uid: u32) -> NewNode {
        NewNode {
            kind: Kind::File,
            mode: 0o644,
            uid,
            gid: 0,
            rdev: 0,
            target: vec![],
        }
    }

    /// Invariant 3: concurrent creates of one name: one winner, no unbound node left.
    #[test]
    fn racing_creates_leave_one_node() {
        let (_d, s) = scratch();
        let s = Arc::new(s);
        let root = s.root();
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    s.tree().create(root, OsStr::new("same"), file(i)).is_ok()
                })
            })
            .collect();
        let wins = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|w| *w)
            .count();
        assert_eq!(wins, 1);
        // Count node files: root + the winner, nothing else.
        let mut nodes = 0;
        for a in fs::read_dir(s.layout.nodes()).unwrap() {
            for b in fs::read_dir(a.unwrap().path()).unwrap() {
                nodes += fs::read_dir(b.unwrap().path()).unwrap().count();
            }
        }
        assert_eq!(nodes, 2);
    }

    #[test]
    fn rename_checks_kinds_and_emptiness() {
        let (_d, s) = scratch();
        let root = s.root();
        let dir = |n: &str| {
            s.tree()
                .create(
                    root,
                    OsStr::new(n),
                    NewNode {
                        kind: Kind::Dir,
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                        rdev: 0,
                        target: vec![],
                    },
                )
                .unwrap()
                .0
        };
        let a = dir("a");
        dir("b");
        s.tree().create(root, OsStr::new("f"), file(0)).unwrap();
        s.tree().create(a, OsStr::new("inner"), file(0)).unwrap();
        let r = |x: &str, y: &str, m| s.tree().rename(root, OsStr::new(x), root, OsStr::new(y), m);
        assert!(matches!(
            r("b", "a", RenameMode::Replace),
            Err(Error::NotEmpty)
        ));
        assert!(matches!(
            r("f", "b", RenameMode::Replace),
            Err(Error::IsDir)
        ));
        assert!(matches!(
            r("b", "f", RenameMode::Replace),
            Err(Error::NotDir)
        ));
        assert!(matches!(
            r("f", "a", RenameMode::NoReplace),
            Err(Error::Exists)
        ));
        assert!(matches!(
            s.tree().rename(
                root,
                OsStr::new("a"),
                a,
                OsStr::new("x"),
                RenameMode::Replace
            ),
            Err(Error::Invalid(_))
        ));
        r("f", "a", RenameMode::Exchange).unwrap();
        assert_eq!(
            s.records
                .read(s.names().lookup(root, OsStr::new("f")).unwrap())
                .unwrap()
                .kind,
            Kind::Dir
        );
        // root: 2 + a + b
        assert_eq!(s.records.read(root).unwrap().nlink, 4);
        r("b", "f", RenameMode::NoReplace).unwrap_err();
        s.tree().rmdir(a, OsStr::new("nothing")).unwrap_err();
        s.tree().unlink(root, OsStr::new("a")).unwrap();
        r("b", "a", RenameMode::Replace).unwrap();
        assert_eq!(
            s.records.read(root).unwrap().nlink,
            4,
            "b moved over nothing: a(dir f), a"
        );
    }

    #[test]
    fn long_names_are_refused() {
        let (_d, s) = scratch();
        let long = "x".repeat(256);
        assert!(matches!(
            s.tree().create(s.root(), OsStr::new(&long), file(0)),
            Err(Error::NameTooLong)
        ));
        s.tree()
            .create(s.root(), OsStr::new(&long[..255]), file(0))
            .unwrap();
    }
}
