//! Names, read only: lookup, readdir, a node's path and a path's node (invariant 3).
//!
//! An entry is a symlink in its directory node named like the client's name, whose
//! target names the child; resolving a name is one readlink(2). `Names` is what the
//! other components use to find nodes; `tree` changes names.

use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use super::error::{Error, IoContext, Result};
use super::layout::Layout;
use super::node::{Kind, NodeId, NodeRecord};
use super::records::Records;
use super::snapshot::Lens;

/// The longest name a directory entry may have (as on ext4).
pub const NAME_MAX: usize = 255;

/// A name a client may bind: not empty, no `/` or NUL, not `.` or `..`, at most
/// [`NAME_MAX`] bytes.
pub fn validate_name(name: &OsStr) -> Result<()> {
    let b = name.as_bytes();
    if b.len() > NAME_MAX {
        return Err(Error::NameTooLong);
    }
    if b.is_empty() || b.contains(&b'/') || b.contains(&0) || b == b"." || b == b".." {
        return Err(Error::Invalid("bad file name"));
    }
    Ok(())
}

/// readlink(2) of `name` in the directory open as `dir`.
fn readlink_at(dir: &fs::File, name: &OsStr) -> std::io::Result<PathBuf> {
    use std::os::unix::io::AsRawFd;
    let c = CString::new(name.as_bytes()).map_err(|_| ErrorKind::InvalidInput)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: valid fd, NUL-terminated name, and a buffer of the length given.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(PathBuf::from(OsString::from_vec(buf)))
}

/// Name resolution over the records and the entry symlinks.
#[derive(Clone, Copy)]
pub struct Names<'a> {
    pub(super) layout: &'a Layout,
    pub(super) records: &'a Records,
    pub(super) root: NodeId,
    /// Read names and records as this snapshot saw them (else as the store is read).
    pub(super) at: Option<&'a Lens<'a>>,
}

impl<'a> Names<'a> {
    /// The same names as snapshot `lens` saw them.
    pub fn at(self, lens: &'a Lens<'a>) -> Names<'a> {
        Names {
            at: Some(lens),
            ..self
        }
    }

    fn lens(&self) -> Option<Lens<'_>> {
        match self.at {
            Some(l) => Some(*l),
            None => self.records.lens(),
        }
    }

    /// A node's record, as these names see it.
    pub fn record(&self, id: NodeId) -> Result<NodeRecord> {
        match self.at {
            Some(l) => l.record(id, || self.records.read_live_disk(id)),
            None => self.records.read(id),
        }
    }

    pub(crate) fn entry_path(&self, parent: NodeId, name: &OsStr) -> PathBuf {
        self.layout.node_path(parent).join(name)
    }

    /// The directory record of `id`, or NotDir / NotFound (a removed directory).
    pub(super) fn dir_record(&self, id: NodeId) -> Result<NodeRecord> {
        let rec = self.record(id)?;
        if rec.kind != Kind::Dir {
            return Err(Error::NotDir);
        }
        if rec.nlink == 0 {
            return Err(Error::NotFound);
        }
        Ok(rec)
    }

    /// Resolve a name in a directory to a node id.
    pub fn lookup(&self, parent: NodeId, name: &OsStr) -> Result<NodeId> {
        validate_name(name)?;
        match self.lens() {
            Some(lens) => lens.lookup(parent, name, || self.lookup_live(parent, name)),
            None => self.lookup_live(parent, name),
        }
    }

    fn lookup_live(&self, parent: NodeId, name: &OsStr) -> Result<NodeId> {
        crate::blocking::soon();
        match fs::read_link(self.entry_path(parent, name)) {
            Ok(t) => Layout::parse_entry_target(&t).ok_or_else(|| Error::CorruptRecord {
                node: parent.to_string(),
                detail: format!("entry {:?} has a bad target", name),
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::NotFound),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Err(Error::NotDir),
            Err(e) => Err(Error::io(format!("lookup {:?}", name), e)),
        }
    }

    pub(super) fn is_empty_dir(&self, id: NodeId) -> Result<bool> {
        if self.lens().is_some() {
            return Ok(self.readdir(id)?.is_empty());
        }
        let mut it = fs::read_dir(self.layout.node_path(id)).ctx(|| format!("read dir {id}"))?;
        Ok(it.next().is_none())
    }

    /// Is `node` `ancestor` itself or below it? Walks the parent hints of directories.
    pub(super) fn is_within(&self, mut node: NodeId, ancestor: NodeId) -> Result<bool> {
        for _ in 0..4096 {
            if node == ancestor {
                return Ok(true);
            }
            if node == self.root {
                return Ok(false);
            }
            match self.record(node)?.parent {
                Some(p) => node = p,
                None => return Ok(false),
            }
        }
        Ok(false)
    }

    /// The live path of a node relative to the root, if every step of its parent hints
    /// is a real entry (None for trashed nodes and their contents).
    pub fn path_of(&self, id: NodeId) -> Option<PathBuf> {
        let mut parts = Vec::new();
        let mut cur = id;
        for _ in 0..4096 {
            if cur == self.root {
                parts.reverse();
                return Some(parts.iter().collect());
            }
            let rec = self.record(cur).ok()?;
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
        let mut cur = self.root;
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

    /// The entries of a directory, in on-disk order.
    pub fn readdir(&self, id: NodeId) -> Result<Vec<(OsString, NodeId)>> {
        match self.lens() {
            Some(lens) => lens.readdir(id, || self.readdir_live(id)),
            None => self.readdir_live(id),
        }
    }

    /// Before entry `name` of `dir` is made, removed or replaced: the snapshots that
    /// hold it keep it (call inside the change's `Snapshots::op`).
    pub(super) fn preserve_entry(&self, dir: NodeId, name: &OsStr) -> Result<()> {
        let snaps = self.records.snapshots();
        if snaps.newest().is_none() {
            return Ok(());
        }
        let born = self.records.read(dir)?.born;
        snaps.preserve_entry(dir, born, name)
    }

    fn readdir_live(&self, id: NodeId) -> Result<Vec<(OsString, NodeId)>> {
        crate::blocking::soon();
        let dir = self.layout.node_path(id);
        let open_err = |e: std::io::Error| match e.raw_os_error() {
            Some(libc::ENOENT) => Error::NotFound,
            Some(libc::ENOTDIR) => Error::NotDir,
            _ => Error::io(format!("read dir {id}"), e),
        };
        // Entries are read relative to the directory: no path walk per entry.
        let dirfd = fs::File::open(&dir).map_err(open_err)?;
        let it = fs::read_dir(&dir).map_err(open_err)?;
        let mut out = Vec::new();
        for ent in it {
            let ent = ent.ctx(|| format!("read dir {id}"))?;
            let target = match readlink_at(&dirfd, &ent.file_name()) {
                Ok(t) => t,
                Err(e) if e.kind() == ErrorKind::NotFound => continue, // removed meanwhile
                Err(e) => return Err(Error::io(format!("read entry in {id}"), e)),
            };
            match Layout::parse_entry_target(&target) {
                Some(child) => out.push((ent.file_name(), child)),
                None => log::warn!(
                    "directory {id}: entry {:?} has a bad target, skipped",
                    ent.file_name()
                ),
            }
        }
        Ok(out)
    }
}
