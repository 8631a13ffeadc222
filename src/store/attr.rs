//! Attributes and client xattrs. Each change is one whole-record update (invariant 2).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::content::{Data, Sessions};
use super::error::{Error, Result};
use super::event::Followers;
use super::event::{Event, Op};
use super::lock::Fence;
use super::node::{Kind, NodeId, NodeRecord, Status, Time};
use super::records::Records;

/// The virtual xattr reporting a node's state (invariant 9).
pub const STATUS_XATTR: &[u8] = b"user.decofs.status";
/// Client xattr names under this prefix are reserved for decofs.
const RESERVED_PREFIX: &[u8] = b"user.decofs.";
/// The largest xattr value Linux allows.
pub const XATTR_SIZE_MAX: usize = 65_536;

/// A time to set: a given instant, or the current time.
#[derive(Clone, Copy, Debug)]
pub enum SetTime {
    At(Time),
    Now,
}

impl SetTime {
    fn resolve(self, now: Time) -> Time {
        match self {
            SetTime::At(t) => t,
            SetTime::Now => now,
        }
    }
}

/// The changes of one setattr call.
#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// What `set_xattr` may do with an existing value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrMode {
    Any,
    CreateOnly,
    ReplaceOnly,
}

/// Attributes and extended attributes of nodes.
#[derive(Clone, Copy)]
pub struct Attrs<'a> {
    pub(super) records: &'a Records,
    pub(super) fence: &'a Fence,
    pub(super) sessions: &'a Sessions,
    pub(super) followers: &'a Followers,
    pub(super) data: Data<'a>,
}

impl Attrs<'_> {
    /// A node's record as a reader sees it now (open sessions included).
    pub fn stat(&self, id: NodeId) -> Result<NodeRecord> {
        let mut rec = self.records.read(id)?;
        self.data.overlay(id, &mut rec);
        Ok(rec)
    }

    pub fn setattr(&self, id: NodeId, a: &SetAttr) -> Result<NodeRecord> {
        self.fence.check()?;
        if let Some(size) = a.size {
            match self.records.read(id)?.kind {
                Kind::File => self.data.truncate(id, size)?,
                Kind::Dir => return Err(Error::IsDir),
                _ => return Err(Error::Invalid("cannot truncate this kind of file")),
            }
        }
        let now = Time::now();
        // A chown to the owner it has changes only the ctime: deferred, as directory
        // times are (no record write now).
        let cur = self.records.read(id)?;
        if cur.kind != Kind::Dir
            && a.size.is_none()
            && a.mode.is_none()
            && a.atime.is_none()
            && a.mtime.is_none()
            && a.uid.is_none_or(|u| u == cur.uid)
            && a.gid.is_none_or(|g| g == cur.gid)
        {
            let mut rec = self.records.defer_times(id, now, false)?;
            self.followers.emit(Event::new(Op::Attr, &[id]));
            self.data.overlay(id, &mut rec);
            return Ok(rec);
        }
        let mut rec = self.records.update(id, |r| {
            if let Some(m) = a.mode {
                r.mode = m & 0o7777;
            }
            if let Some(u) = a.uid {
                r.uid = u;
            }
            if let Some(g) = a.gid {
                r.gid = g;
            }
            if let Some(t) = a.atime {
                r.atime = t.resolve(now);
            }
            if let Some(t) = a.mtime {
                r.mtime = t.resolve(now);
            } else if a.size.is_some() {
                r.mtime = now;
            }
            r.ctime = now;
            Ok(())
        })?;
        if rec.kind == Kind::Dir {
            // Not a name: its fsyncdir syncs the directory itself.
            self.data.debts.dir_changed(id);
        }
        self.followers.emit(Event::new(Op::Attr, &[id]));
        if a.mtime.is_some() {
            // An explicit time wins over the time of earlier writes in an open session.
            if let Some(s) = self.sessions.get(id) {
                s.lock().mtime = None;
            }
        }
        self.data.overlay(id, &mut rec);
        Ok(rec)
    }

    /// A directory's own record changed: its next fsyncdir syncs the directory.
    fn dir_changed(&self, id: NodeId) {
        if self.records.read(id).is_ok_and(|r| r.kind == Kind::Dir) {
            self.data.debts.dir_changed(id);
        }
    }

    /// The status a node reports through `user.decofs.status`.
    pub fn status_of(&self, id: NodeId, rec: &NodeRecord) -> &'static str {
        if rec.status == Status::IntegrityError {
            "integrity_error"
        } else if self.sessions.contains(id) {
            "pending"
        } else {
            "consistent"
        }
    }

    pub fn get_xattr(&self, id: NodeId, name: &OsStr) -> Result<Vec<u8>> {
        let name = name.as_bytes();
        Self::supported_xattr(name)?;
        let rec = self.records.read(id)?;
        if name == STATUS_XATTR {
            return Ok(self.status_of(id, &rec).as_bytes().to_vec());
        }
        rec.xattrs.get(name).cloned().ok_or(Error::NoAttr)
    }

    /// Client xattr names, each NUL-terminated (the listxattr wire format).
    pub fn list_xattr(&self, id: NodeId) -> Result<Vec<u8>> {
        let rec = self.records.read(id)?;
        let mut out = Vec::new();
        for k in rec.xattrs.keys() {
            // Stored before the name was refused (an older decofs kept security.selinux).
            if Self::supported_xattr(k).is_err() {
                continue;
            }
            out.extend_from_slice(k);
            out.push(0);
        }
        Ok(out)
    }

    fn check_xattr_name(name: &[u8]) -> Result<()> {
        if name.is_empty() || name.len() > 255 {
            return Err(if name.is_empty() {
                Error::Invalid("empty xattr name")
            } else {
                Error::Range
            });
        }
        if name.starts_with(RESERVED_PREFIX) {
            return Err(Error::NotPermitted);
        }
        Self::supported_xattr(name)
    }

    /// Whether decofs keeps xattrs of this name at all; the answer is the same for get,
    /// set, list and remove, so a tool that learns "not supported" once (ls, cp) can stop
    /// asking for the whole mount.
    ///
    /// - POSIX ACLs (`system.posix_acl_*`, and the rest of `system.`): not supported.
    ///   Storing them would pretend to enforce them; the kernel enforces only the mode.
    /// - `security.selinux`: not kept. A FUSE mount's SELinux label comes from the
    ///   policy (genfscon), and on a kernel with SELinux the security module answers
    ///   and refuses this name before the daemon sees it; this makes a kernel without
    ///   SELinux say the same. Other `security.` names (capabilities, IMA) are kept.
    fn supported_xattr(name: &[u8]) -> Result<()> {
        let kept = name.starts_with(b"user.")
            || name.starts_with(b"trusted.")
            || (name.starts_with(b"security.") && name != b"security.selinux");
        if kept {
            Ok(())
        } else {
            Err(Error::NotSupported)
        }
    }

    pub fn set_xattr(&self, id: NodeId, name: &OsStr, value: &[u8], mode: XattrMode) -> Result<()> {
        self.fence.check()?;
        let name = name.as_bytes();
        Self::check_xattr_name(name)?;
        if value.len() > XATTR_SIZE_MAX {
            return Err(Error::Range);
        }
        self.records.update(id, |r| {
            let exists = r.xattrs.contains_key(name);
            match mode {
                XattrMode::CreateOnly if exists => return Err(Error::Exists),
                XattrMode::ReplaceOnly if !exists => return Err(Error::NoAttr),
                _ => {}
            }
            r.xattrs.insert(name.to_vec(), value.to_vec());
            r.ctime = Time::now();
            Ok(())
        })?;
        self.dir_changed(id);
        self.followers.emit(Event::new(Op::Xattr, &[id]));
        Ok(())
    }

    /// A write by someone without CAP_FSETID (the kernel says so with the write, as the
    /// filesystem handles it: FUSE_HANDLE_KILLPRIV_V2): drop set-user-ID, file
    /// capabilities and set-group-ID, the last on a group-executable file or when the
    /// writer is not in the file's group (`in_group`), as the kernel does for ext4.
    pub fn kill_privileges(&self, id: NodeId, in_group: impl Fn(u32) -> bool) -> Result<()> {
        const CAPS: &[u8] = b"security.capability";
        let rec = self.stat(id)?;
        let drop_sgid = |r: &NodeRecord| {
            r.mode & libc::S_ISGID != 0 && (r.mode & libc::S_IXGRP != 0 || !in_group(r.gid))
        };
        let kill =
            rec.mode & libc::S_ISUID != 0 || drop_sgid(&rec) || rec.xattrs.contains_key(CAPS);
        if !kill {
            return Ok(());
        }
        self.records.update(id, |r| {
            r.mode &= !libc::S_ISUID;
            if drop_sgid(r) {
                r.mode &= !libc::S_ISGID;
            }
            r.xattrs.remove(CAPS);
            r.ctime = Time::now();
            Ok(())
        })?;
        // The kernel still holds the old mode; it asks again after this.
        self.followers.attrs_invalidated(id);
        self.followers.emit(Event::new(Op::Attr, &[id]));
        Ok(())
    }

    pub fn remove_xattr(&self, id: NodeId, name: &OsStr) -> Result<()> {
        self.fence.check()?;
        let name = name.as_bytes();
        if name.starts_with(RESERVED_PREFIX) {
            return Err(Error::NotPermitted);
        }
        Self::supported_xattr(name)?;
        self.records.update(id, |r| {
            r.xattrs.remove(name).ok_or(Error::NoAttr)?;
            r.ctime = Time::now();
            Ok(())
        })?;
        self.dir_changed(id);
        self.followers.emit(Event::new(Op::Xattr, &[id]));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{new_file, scratch};

    /// A chown to the owner a file has changes its ctime at once and writes its record
    /// within a second, not now; a chown to another owner writes it now.
    #[test]
    fn a_chown_to_the_same_owner_defers_the_record() {
        let (_d, s) = scratch();
        s.records.enable_cache();
        let id = new_file(&s, "journal");
        let disk = s.records.read_disk(id).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let same = SetAttr {
            uid: Some(disk.uid),
            gid: Some(disk.gid),
            ..Default::default()
        };
        let seen = s.attrs().setattr(id, &same).unwrap();
        assert!(seen.ctime > disk.ctime, "the ctime changed at once");
        assert_eq!(s.records.read(id).unwrap().ctime, seen.ctime);
        assert_eq!(
            s.records.read_disk(id).unwrap(),
            disk,
            "no record written yet"
        );
        s.records.flush_deferred().unwrap();
        assert_eq!(s.records.read_disk(id).unwrap().ctime, seen.ctime);
        let other = SetAttr {
            uid: Some(disk.uid + 1),
            ..Default::default()
        };
        let r = s.attrs().setattr(id, &other).unwrap();
        assert_eq!(
            s.records.read_disk(id).unwrap().uid,
            r.uid,
            "written at once"
        );
    }
}
