//! One method per kernel request; each resolves ids, calls the store, replies.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use super::DirEntries;

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::{errno, file_type, DecoFs, Handle};
use crate::store::attr::{SetAttr, SetTime, XattrMode};
use crate::store::tree::{NewNode, RenameMode};
use crate::store::{Error, Kind, NodeId, NodeRecord, Time};

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => SetTime::At(Time::from_system(st)),
    }
}

/// Is `gid` among the supplementary groups of process `pid` (from /proc)? Asked only
/// when a set-group-ID file without group execute is written without CAP_FSETID.
fn in_supplementary_groups(pid: u32, gid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
        })
        .unwrap_or(false)
}

/// The kind of a child a listing may name without reading its record: its id names
/// its kind (typed ids) and it is not a directory (a walk descends into those, so
/// readdirplus hands the kernel their attributes rather than have it look each one up).
fn listable_name_only(id: NodeId) -> Option<Kind> {
    id.kind_hint().filter(|k| *k != Kind::Dir)
}

/// The children of a listing whose records it hands the kernel (the rest are listed
/// name-only): what reading a directory ahead of its listing must bring into memory.
pub(super) fn records_a_listing_reads(entries: &[(std::ffi::OsString, NodeId)]) -> Vec<NodeId> {
    entries
        .iter()
        .map(|e| e.1)
        .filter(|id| listable_name_only(*id).is_none())
        .collect()
}

fn writes(flags: OpenFlags) -> bool {
    !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY)
}

impl DecoFs {
    /// Keep the kernel's page cache across opens: every change to a file's content
    /// passes through this mount (the single writer), and a restore, the one change
    /// made behind the kernel's back, invalidates the inode explicitly. A read-only
    /// mount may sit beside a writer it cannot see, so it re-reads at every open.
    fn file_open_flags(&self) -> FopenFlags {
        if self.store.read_only() {
            FopenFlags::empty()
        } else {
            FopenFlags::FOPEN_KEEP_CACHE
        }
    }

    /// Let the kernel cache directory listings (and keep them across opens): every
    /// change to a directory's entries passes through this mount, where the kernel
    /// drops its cached listing itself, except a restore, whose invalidation of the
    /// restored name drops it too. A read-only mount may sit beside a writer: it lists
    /// at every open.
    fn dir_open_flags(&self) -> FopenFlags {
        if self.store.read_only() {
            FopenFlags::empty()
        } else {
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        }
    }

    fn reply_entry(&self, id: NodeId, reply: ReplyEntry) {
        match self.store.attrs().stat(id) {
            Ok(rec) => {
                self.remember(id);
                reply.entry(&self.ttl(id), &self.attr(id, &rec), Generation(0));
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        new: NewNode,
    ) -> Result<NodeId, Errno> {
        let p = self.node(parent)?;
        let _ = req;
        self.store
            .tree()
            .create(p, name, new)
            .map(|(id, _)| id)
            .map_err(|e| errno(&e))
    }

    fn file_handle(&self, fh: FileHandle) -> Option<(NodeId, bool)> {
        match self.handles.lock().get(&fh.0) {
            Some(Handle::File { id, write }) => Some((*id, *write)),
            _ => None,
        }
    }

    /// Entries of an open directory handle starting at `offset`; (re)reads the
    /// directory when a listing starts at 0 so rewinddir sees changes. The directory is
    /// read without holding the handle table.
    fn dir_entries(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
    ) -> Result<(NodeId, DirEntries), Errno> {
        let id = match self.handles.lock().get(&fh.0) {
            Some(Handle::Dir { id, entries }) => match entries {
                Some(e) if offset != 0 => return Ok((*id, e.clone())),
                _ => Some(*id),
            },
            _ => None,
        };
        let id = match id {
            Some(id) => id,
            None => self.node(ino)?,
        };
        // A listing from the start (the first, or a rewind, which sees changes since).
        let entries = Arc::new(self.store.names().readdir(id).map_err(|e| errno(&e))?);
        self.prefetch(&entries, 0);
        let subdirs: Vec<NodeId> = entries
            .iter()
            .map(|e| e.1)
            .filter(|c| c.kind_hint() == Some(Kind::Dir))
            .collect();
        self.dirs_ahead.push(&subdirs);
        if let Some(Handle::Dir { entries: e, .. }) = self.handles.lock().get_mut(&fh.0) {
            *e = Some(entries.clone());
        }
        Ok((id, entries))
    }

    /// A listing is about to report its entries from `start` on: read the records it
    /// needs among the next PREFETCH_WINDOW entries together rather than one at a time,
    /// unless the first of them is cached already (the window was read before). A huge
    /// directory so answers its first entries at once instead of after reading every
    /// record.
    fn prefetch(&self, entries: &[(std::ffi::OsString, NodeId)], start: usize) {
        const PREFETCH_WINDOW: usize = 4096;
        let end = entries.len().min(start + PREFETCH_WINDOW);
        let Some(window) = entries.get(start..end) else {
            return;
        };
        let ids = records_a_listing_reads(window);
        match ids.first() {
            Some(first) if !self.store.records.cached(*first) => self.store.records.prefetch(&ids),
            _ => {}
        }
    }

    /// `id` was looked up in `parent` and its record is not in memory: if `parent` was
    /// just listed name-only, read the records of its next entries together (a lookup of
    /// one child of a listing is followed by the others: `ls -l`, `du`, `rm -r`).
    fn lookup_after_listing(&self, parent: NodeId, id: NodeId) {
        const WINDOW: usize = 4096;
        if self.store.records.cached(id) {
            return;
        }
        let (entries, from) = {
            let mut cl = self.cold_listings.lock();
            let Some(l) = cl.get_mut(&parent) else {
                return;
            };
            let from = l.next;
            l.next = (from + WINDOW).min(l.entries.len());
            let entries = l.entries.clone();
            if l.next >= entries.len() {
                cl.remove(&parent);
            }
            (entries, from)
        };
        let ids: Vec<NodeId> = entries[from..(from + WINDOW).min(entries.len())]
            .iter()
            .map(|e| e.1)
            .chain(std::iter::once(id))
            .collect();
        self.store.records.prefetch(&ids);
    }

    /// Remember that `id` was listed with name-only entries (see `cold_listings`).
    fn listed_cold(&self, id: NodeId, entries: &DirEntries) {
        let mut cl = self.cold_listings.lock();
        if cl.len() >= super::COLD_LISTINGS_MAX && !cl.contains_key(&id) {
            cl.clear();
        }
        cl.insert(
            id,
            super::ColdListing {
                entries: entries.clone(),
                next: 0,
            },
        );
    }

    fn parent_of(&self, id: NodeId) -> NodeId {
        if id == self.store.root() {
            return id;
        }
        self.store
            .records
            .read(id)
            .ok()
            .and_then(|r| r.parent)
            .unwrap_or(self.store.root())
    }
}

impl Filesystem for DecoFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // HANDLE_KILLPRIV_V2: we drop set-ID bits and capabilities on write (the kernel
        // flags such writes), so the kernel marks inodes without them S_NOSEC and stops
        // asking getxattr(security.capability) before every write.
        let want = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        let have = config.capabilities();
        let _ = config.add_capabilities(want & have);
        let _ = config.set_max_write(1 << 20);
        Ok(())
    }

    fn destroy(&mut self) {
        self.ahead.stop();
        self.dirs_ahead.stop();
        if let Err(e) = self.store.data().commit_all() {
            log::error!("committing open files at unmount failed: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        super::guard("lookup", || {
            let p = match self.node(parent) {
                Ok(p) => p,
                Err(e) => return reply.error(e),
            };
            match self.store.names().lookup(p, name) {
                Ok(id) => {
                    self.lookup_after_listing(p, id);
                    self.reply_entry(id, reply)
                }
                Err(Error::NotFound) => {
                    // "No such name", cached by the kernel like a name (nodeid 0): every
                    // create passes through the kernel, and a restore, the one name bound
                    // behind its back, invalidates the entry. Saves the repeated probes of
                    // tools (sqlite's -wal and -journal, PATH and include searches).
                    let mut attr = self.attr(p, &NodeRecord::new(Kind::File, 0, 0, 0, 0));
                    attr.ino = INodeNo(0);
                    reply.entry(&self.negative_ttl(), &attr, Generation(0))
                }
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        super::guard("forget", || {
            self.forget_ino(ino.0, nlookup);
        })
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        super::guard("getattr", || {
            let id = match self.node(ino) {
                Ok(id) => id,
                Err(e) => return reply.error(e),
            };
            match self.store.attrs().stat(id) {
                Ok(rec) => reply.attr(&self.ttl(id), &self.attr(id, &rec)),
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        super::guard("setattr", || {
            let id = match self.node(ino) {
                Ok(id) => id,
                Err(e) => return reply.error(e),
            };
            let a = SetAttr {
                mode,
                uid,
                gid,
                size,
                atime: atime.map(set_time),
                mtime: mtime.map(set_time),
            };
            let rec = match self.store.attrs().setattr(id, &a) {
                Ok(rec) => rec,
                Err(e) => return reply.error(errno(&e)),
            };
            // With HANDLE_KILLPRIV_V2 the kernel leaves dropping set-ID bits and file
            // capabilities to us: on chown (for anyone) and on truncate (for a caller
            // without CAP_FSETID, taken as non-root), unless the same call sets the mode.
            let chown = uid.is_some() || gid.is_some();
            let truncate = size.is_some() && req.uid() != 0;
            let rec = if rec.kind != Kind::Dir && mode.is_none() && (chown || truncate) {
                let root = req.uid() == 0;
                let in_group =
                    |g: u32| root || req.gid() == g || in_supplementary_groups(req.pid(), g);
                match self
                    .store
                    .attrs()
                    .kill_privileges(id, in_group)
                    .and_then(|()| self.store.attrs().stat(id))
                {
                    Ok(rec) => rec,
                    Err(e) => return reply.error(errno(&e)),
                }
            } else {
                rec
            };
            reply.attr(&self.ttl(id), &self.attr(id, &rec))
        })
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        super::guard("readlink", || {
            match self
                .node(ino)
                .and_then(|id| self.store.records.read(id).map_err(|e| errno(&e)))
            {
                Ok(rec) if rec.kind == Kind::Symlink => reply.data(&rec.target),
                Ok(_) => reply.error(Errno::EINVAL),
                Err(e) => reply.error(e),
            }
        })
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        super::guard("mknod", || {
            let Some(kind) = Kind::from_mode(mode) else {
                return reply.error(Errno::EINVAL);
            };
            if kind == Kind::Dir || kind == Kind::Symlink {
                return reply.error(Errno::EINVAL);
            }
            let rdev = if matches!(kind, Kind::CharDev | Kind::BlockDev) {
                rdev
            } else {
                0
            };
            let new = NewNode {
                kind,
                mode: mode & !umask,
                uid: req.uid(),
                gid: req.gid(),
                rdev,
                target: vec![],
            };
            match self.make(req, parent, name, new) {
                Ok(id) => self.reply_entry(id, reply),
                Err(e) => reply.error(e),
            }
        })
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        super::guard("mkdir", || {
            let new = NewNode {
                kind: Kind::Dir,
                mode: mode & !umask,
                uid: req.uid(),
                gid: req.gid(),
                rdev: 0,
                target: vec![],
            };
            match self.make(req, parent, name, new) {
                Ok(id) => self.reply_entry(id, reply),
                Err(e) => reply.error(e),
            }
        })
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        super::guard("unlink", || {
            match self
                .node(parent)
                .and_then(|p| self.store.tree().unlink(p, name).map_err(|e| errno(&e)))
            {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(e),
            }
        })
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        super::guard("rmdir", || {
            match self
                .node(parent)
                .and_then(|p| self.store.tree().rmdir(p, name).map_err(|e| errno(&e)))
            {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(e),
            }
        })
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        super::guard("symlink", || {
            let new = NewNode {
                kind: Kind::Symlink,
                mode: 0o777,
                uid: req.uid(),
                gid: req.gid(),
                rdev: 0,
                target: target.as_os_str().as_bytes().to_vec(),
            };
            match self.make(req, parent, link_name, new) {
                Ok(id) => self.reply_entry(id, reply),
                Err(e) => reply.error(e),
            }
        })
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        super::guard("rename", || {
            let mode = if flags.contains(RenameFlags::RENAME_WHITEOUT) {
                return reply.error(Errno::EINVAL);
            } else if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                RenameMode::Exchange
            } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                RenameMode::NoReplace
            } else {
                RenameMode::Replace
            };
            let res = self.node(parent).and_then(|p| {
                let np = self.node(newparent)?;
                self.store
                    .tree()
                    .rename(p, name, np, newname, mode)
                    .map_err(|e| errno(&e))
            });
            match res {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        })
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        super::guard("link", || {
            let res = self.node(ino).and_then(|id| {
                let np = self.node(newparent)?;
                self.store
                    .tree()
                    .link(id, np, newname)
                    .map(|_| id)
                    .map_err(|e| errno(&e))
            });
            match res {
                Ok(id) => self.reply_entry(id, reply),
                Err(e) => reply.error(e),
            }
        })
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        super::guard("open", || {
            let id = match self.node(ino) {
                Ok(id) => id,
                Err(e) => return reply.error(e),
            };
            let write = writes(flags);
            if write {
                if let Err(e) = self.store.data().open_write(id) {
                    return reply.error(errno(&e));
                }
            }
            let fh = self.new_handle(Handle::File { id, write });
            reply.opened(FileHandle(fh), self.file_open_flags());
        })
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        super::guard("read", || {
            let id = match self
                .file_handle(fh)
                .map(|h| h.0)
                .ok_or(Errno::EBADF)
                .or_else(|_| self.node(ino))
            {
                Ok(id) => id,
                Err(e) => return reply.error(e),
            };
            match self.store.data().read_shared(id, offset, size) {
                Ok(data) => {
                    let n = data.len() as u64;
                    super::STATS
                        .bytes_read
                        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    reply.data(&data)
                }
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        super::guard("write", || {
            let id = match self
                .file_handle(fh)
                .map(|h| h.0)
                .ok_or(Errno::EBADF)
                .or_else(|_| self.node(ino))
            {
                Ok(id) => id,
                Err(e) => return reply.error(e),
            };
            if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
                let in_group =
                    |gid: u32| req.gid() == gid || in_supplementary_groups(req.pid(), gid);
                if let Err(e) = self.store.attrs().kill_privileges(id, in_group) {
                    return reply.error(errno(&e));
                }
            }
            match self.store.data().write(id, offset, data) {
                Ok(n) => {
                    super::STATS
                        .bytes_written
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    reply.written(n as u32)
                }
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        super::guard("flush", || {
            // close(2): commit what this file's session holds, so a closed file is on disk
            // even if the daemon dies before the release arrives (a scratch file's waits).
            match self.file_handle(fh) {
                Some((id, true)) => match self.store.data().flush(id) {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(errno(&e)),
                },
                _ => reply.ok(),
            }
        })
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        super::guard("release", || {
            let h = self.handles.lock().remove(&fh.0);
            let res = match h {
                Some(Handle::File { id, write }) => {
                    let res = if write {
                        self.store.data().close_write(id)
                    } else {
                        Ok(())
                    };
                    self.store.trash().unpin(id);
                    res
                }
                _ => Ok(()),
            };
            match res {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        super::guard("fsync", || {
            let id = match self
                .file_handle(fh)
                .map(|h| h.0)
                .ok_or(Errno::EBADF)
                .or_else(|_| self.node(ino))
            {
                Ok(id) => id,
                Err(e) => return reply.error(e),
            };
            match self.store.fsync_file(id) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        super::guard("opendir", || {
            let id = match self.node(ino) {
                Ok(id) => id,
                Err(e) => return reply.error(e),
            };
            // Listed at the first readdir: a directory the kernel has cached needs none.
            let fh = self.new_handle(Handle::Dir { id, entries: None });
            reply.opened(FileHandle(fh), self.dir_open_flags());
        })
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        super::guard("readdir", || {
            let (id, entries) = match self.dir_entries(ino, fh, offset) {
                Ok(x) => x,
                Err(e) => return reply.error(e),
            };
            self.prefetch(&entries, (offset as usize).saturating_sub(2));
            let dots = [
                (OsStr::new("."), id),
                (OsStr::new(".."), self.parent_of(id)),
            ];
            let mut i = offset as usize;
            while i < entries.len() + 2 {
                let (name, child) = if i < 2 {
                    (dots[i].0, dots[i].1)
                } else {
                    (entries[i - 2].0.as_os_str(), entries[i - 2].1)
                };
                let kind = if i < 2 {
                    Kind::Dir
                } else if let Some(k) = child.kind_hint() {
                    k
                } else {
                    match self.store.records.read(child) {
                        Ok(r) => r.kind,
                        Err(_) => {
                            i += 1;
                            continue;
                        }
                    }
                };
                if reply.add(
                    INodeNo(self.store.ino_of(child)),
                    (i + 1) as u64,
                    file_type(kind),
                    name,
                ) {
                    break;
                }
                i += 1;
            }
            reply.ok();
        })
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        super::guard("readdirplus", || {
            let (id, entries) = match self.dir_entries(ino, fh, offset) {
                Ok(x) => x,
                Err(e) => return reply.error(e),
            };
            let mut cold = Vec::new();
            self.prefetch(&entries, (offset as usize).saturating_sub(2));
            let dots = [
                (OsStr::new("."), id),
                (OsStr::new(".."), self.parent_of(id)),
            ];
            let mut i = offset as usize;
            while i < entries.len() + 2 {
                let (name, child) = if i < 2 {
                    (dots[i].0, dots[i].1)
                } else {
                    (entries[i - 2].0.as_os_str(), entries[i - 2].1)
                };
                let name_only = listable_name_only(child)
                    .filter(|_| i >= 2 && !self.store.records.cached(child));
                if let Some(kind) = name_only {
                    // A name-only entry: listing it reads nothing.
                    if reply.add_name_only(
                        INodeNo(self.store.ino_of(child)),
                        (i + 1) as u64,
                        name,
                        file_type(kind),
                    ) {
                        break;
                    }
                    cold.push(child);
                    i += 1;
                    continue;
                }
                let rec = match self.store.attrs().stat(child) {
                    Ok(r) => r,
                    Err(_) => {
                        // A damaged record does not hide a name whose id tells its type:
                        // lookup reports the error, as stat of a damaged inode does.
                        if let Some(k) = child.kind_hint().filter(|_| i >= 2) {
                            let ino = INodeNo(self.store.ino_of(child));
                            if reply.add_name_only(ino, (i + 1) as u64, name, file_type(k)) {
                                break;
                            }
                        }
                        i += 1;
                        continue;
                    }
                };
                let attr = self.attr(child, &rec);
                if reply.add(
                    INodeNo(self.store.ino_of(child)),
                    (i + 1) as u64,
                    name,
                    &self.ttl(child),
                    &attr,
                    Generation(0),
                ) {
                    break;
                }
                if i >= 2 {
                    // readdirplus entries (but not . and ..) count as lookups.
                    self.remember(child);
                }
                i += 1;
            }
            reply.ok();
            if !cold.is_empty() {
                self.listed_cold(id, &entries);
                self.ahead.push(&cold);
            }
        })
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        super::guard("releasedir", || {
            self.handles.lock().remove(&fh.0);
            reply.ok();
        })
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        super::guard("fsyncdir", || {
            let res = self.node(ino).and_then(|id| {
                self.store
                    .fsync()
                    .sync_dir_node(id)
                    .and_then(|()| self.store.synced())
                    .map_err(|e| errno(&e))
            });
            match res {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        })
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        super::guard("statfs", || match self.store.statfs() {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                255,
                st.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(&e)),
        })
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        super::guard("setxattr", || {
            let mode = if flags & libc::XATTR_CREATE != 0 {
                XattrMode::CreateOnly
            } else if flags & libc::XATTR_REPLACE != 0 {
                XattrMode::ReplaceOnly
            } else {
                XattrMode::Any
            };
            match self.node(ino).and_then(|id| {
                self.store
                    .attrs()
                    .set_xattr(id, name, value, mode)
                    .map_err(|e| errno(&e))
            }) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        })
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        super::guard("getxattr", || {
            match self.node(ino).and_then(|id| {
                self.store
                    .attrs()
                    .get_xattr(id, name)
                    .map_err(|e| errno(&e))
            }) {
                Ok(v) => reply_xattr(reply, &v, size),
                Err(e) => reply.error(e),
            }
        })
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        super::guard("listxattr", || {
            match self
                .node(ino)
                .and_then(|id| self.store.attrs().list_xattr(id).map_err(|e| errno(&e)))
            {
                Ok(v) => reply_xattr(reply, &v, size),
                Err(e) => reply.error(e),
            }
        })
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        super::guard("removexattr", || {
            match self.node(ino).and_then(|id| {
                self.store
                    .attrs()
                    .remove_xattr(id, name)
                    .map_err(|e| errno(&e))
            }) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        })
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        super::guard("access", || {
            // With default_permissions the kernel checks access itself; this answers the
            // same question for kernels that still ask.
            let rec = match self
                .node(ino)
                .and_then(|id| self.store.records.read(id).map_err(|e| errno(&e)))
            {
                Ok(r) => r,
                Err(e) => return reply.error(e),
            };
            let want = mask.bits() as u32 & 7;
            let ok = if req.uid() == 0 {
                want & 1 == 0 || rec.mode & 0o111 != 0 || rec.kind == Kind::Dir
            } else {
                let bits = if req.uid() == rec.uid {
                    (rec.mode >> 6) & 7
                } else if req.gid() == rec.gid {
                    (rec.mode >> 3) & 7
                } else {
                    rec.mode & 7
                };
                bits & want == want
            };
            if ok {
                reply.ok()
            } else {
                reply.error(Errno::EACCES)
            }
        })
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        super::guard("create", || {
            let new = NewNode {
                kind: Kind::File,
                mode: mode & !umask,
                uid: req.uid(),
                gid: req.gid(),
                rdev: 0,
                target: vec![],
            };
            let id = match self.make(req, parent, name, new) {
                Ok(id) => id,
                Err(e) => return reply.error(e),
            };
            let write = writes(OpenFlags(flags));
            if write {
                if let Err(e) = self.store.data().open_write(id) {
                    return reply.error(errno(&e));
                }
            }
            match self.store.attrs().stat(id) {
                Ok(rec) => {
                    self.remember(id);
                    let fh = self.new_handle(Handle::File { id, write });
                    reply.created(
                        &self.ttl(id),
                        &self.attr(id, &rec),
                        Generation(0),
                        FileHandle(fh),
                        self.file_open_flags(),
                    );
                }
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        super::guard("fallocate", || {
            let id = match self.node(ino) {
                Ok(id) => id,
                Err(e) => return reply.error(e),
            };
            // fallocate changes content, as a write does, but its request carries no
            // kill flag: a caller without CAP_FSETID (taken as non-root) drops the
            // set-ID bits and file capabilities here, as ext4 does.
            if req.uid() != 0 {
                let in_group =
                    |gid: u32| req.gid() == gid || in_supplementary_groups(req.pid(), gid);
                if let Err(e) = self.store.attrs().kill_privileges(id, in_group) {
                    return reply.error(errno(&e));
                }
            }
            let res = match mode {
                0 | libc::FALLOC_FL_KEEP_SIZE => {
                    let end = offset.saturating_add(length);
                    self.store
                        .data()
                        .fallocate(id, end, mode == libc::FALLOC_FL_KEEP_SIZE)
                }
                m if m == libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE => {
                    self.store.data().punch_hole(id, offset, length)
                }
                _ => Err(Error::NotSupported),
            };
            match res {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        super::guard("lseek", || {
            let id = match self.node(ino) {
                Ok(id) => id,
                Err(e) => return reply.error(e),
            };
            if offset < 0 {
                return reply.error(Errno::ENXIO);
            }
            let data = match whence {
                libc::SEEK_DATA => true,
                libc::SEEK_HOLE => false,
                _ => return reply.error(Errno::EINVAL),
            };
            match self.store.data().seek_data_hole(id, offset as u64, data) {
                Ok(Some(o)) => reply.offset(o as i64),
                Ok(None) => reply.error(Errno::ENXIO),
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        super::guard("copy_file_range", || {
            let res = self.node(ino_in).and_then(|a| {
                let b = self.node(ino_out)?;
                self.store
                    .data()
                    .copy_range(a, offset_in, b, offset_out, len)
                    .map_err(|e| errno(&e))
            });
            match res {
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(e),
            }
        })
    }

    /// No ioctls: ENOTTY, as a disk file answers isatty() (Python's open() asks that of
    /// every file it opens). fuser's default answered ENOSYS, which the kernel does not
    /// remember for ioctls, and logged a warning each time.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        super::guard("ioctl", || {
            reply.error(Errno::ENOTTY);
        })
    }
}

fn reply_xattr(reply: ReplyXattr, v: &[u8], size: u32) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if v.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(v);
    }
}
