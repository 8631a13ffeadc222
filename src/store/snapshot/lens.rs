//! Reading the tree as a snapshot saw it: each record and entry from the first area
//! (the snapshot's own, then newer ones') that holds a copy, else from the live store,
//! whose state then dates from the snapshot or before.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::ErrorKind;
use std::path::PathBuf;

use super::{entry_copy, read_record_copy, record_copy, Snapshots, ABSENT};
use crate::store::error::{Error, Result};
use crate::store::layout::Layout;
use crate::store::node::{NodeId, NodeRecord};

/// Snapshot `gen`, read through the areas of it and of every newer snapshot (as they
/// are at each read: a snapshot taken or removed meanwhile counts).
#[derive(Clone, Copy)]
pub struct Lens<'a> {
    snaps: &'a Snapshots,
    gen: u64,
}

/// What an area's copy of an entry says.
enum Copied {
    Named(NodeId),
    Absent,
}

impl<'a> Lens<'a> {
    pub(crate) fn new(snaps: &'a Snapshots, gen: u64) -> Lens<'a> {
        Lens { snaps, gen }
    }

    fn chain(&self) -> Vec<PathBuf> {
        self.snaps.areas_from(self.gen)
    }

    pub fn generation(&self) -> u64 {
        self.gen
    }

    /// The record of `id` as the snapshot saw it; `live` reads the live one.
    pub fn record(
        &self,
        id: NodeId,
        live: impl FnOnce() -> Result<NodeRecord>,
    ) -> Result<NodeRecord> {
        if let Some(r) = self.copied_record(id)? {
            return r;
        }
        let r = live()?;
        if r.gen > self.gen {
            // Changed since: its copy was made before the change, so it is there now
            // (we looked before it was made). None: the node did not exist then.
            return self.copied_record(id)?.unwrap_or(Err(Error::NotFound));
        }
        Ok(r)
    }

    /// The first copy of `id`'s record in the areas: the state at this snapshot, or
    /// NotFound if that copy was written after it (a newer snapshot kept a node that
    /// did not exist yet). None: no copy.
    fn copied_record(&self, id: NodeId) -> Result<Option<Result<NodeRecord>>> {
        for area in self.chain().iter() {
            if let Some((r, _)) = read_record_copy(self.snaps.blobs(), &record_copy(area, id), id)?
            {
                return Ok(Some(if r.gen > self.gen {
                    Err(Error::NotFound)
                } else {
                    Ok(r)
                }));
            }
        }
        Ok(None)
    }

    fn copied_entry(&self, dir: NodeId, name: &OsStr) -> Result<Option<Copied>> {
        for area in self.chain().iter() {
            match fs::read_link(entry_copy(area, dir, name)) {
                Ok(t) if t.as_os_str() == ABSENT => return Ok(Some(Copied::Absent)),
                Ok(t) => {
                    return Layout::parse_entry_target(&t)
                        .map(|id| Some(Copied::Named(id)))
                        .ok_or_else(|| Error::CorruptRecord {
                            node: dir.to_string(),
                            detail: format!("snapshot copy of entry {name:?} has a bad target"),
                        })
                }
                Err(e)
                    if e.kind() == ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ENOTDIR) => {}
                Err(e) => return Err(Error::io(format!("read snapshot entry {name:?}"), e)),
            }
        }
        Ok(None)
    }

    /// Entry `name` of directory `dir` as the snapshot saw it.
    pub fn lookup(
        &self,
        dir: NodeId,
        name: &OsStr,
        live: impl FnOnce() -> Result<NodeId>,
    ) -> Result<NodeId> {
        let decide = |c: Copied| match c {
            Copied::Named(id) => Ok(id),
            Copied::Absent => Err(Error::NotFound),
        };
        if let Some(c) = self.copied_entry(dir, name)? {
            return decide(c);
        }
        let now = live();
        // A change that raced this read copied the entry before it changed it: look
        // again, and the copy wins over what the live read saw.
        match self.copied_entry(dir, name)? {
            Some(c) => decide(c),
            None => now,
        }
    }

    /// The entries of `dir` as the snapshot saw them; `live` lists the live directory.
    pub fn readdir(
        &self,
        dir: NodeId,
        live: impl FnOnce() -> Result<Vec<(OsString, NodeId)>>,
    ) -> Result<Vec<(OsString, NodeId)>> {
        let mut decided = self.copied_entries(dir)?;
        let live = match live() {
            Ok(v) => v,
            // Removed since (purged): what it held is in the copies.
            Err(Error::NotFound) => Vec::new(),
            Err(e) => return Err(e),
        };
        // Copies made while the live directory was read (before their changes) win.
        for (n, v) in self.copied_entries(dir)? {
            decided.entry(n).or_insert(v);
        }
        let mut out: Vec<(OsString, NodeId)> = live
            .into_iter()
            .filter(|(n, _)| !decided.contains_key(n))
            .collect();
        let mut copied: Vec<(OsString, NodeId)> = decided
            .into_iter()
            .filter_map(|(n, id)| id.map(|id| (n, id)))
            .collect();
        copied.sort();
        out.extend(copied);
        Ok(out)
    }

    /// The entries of `dir` the areas hold copies of (the first area's copy of each).
    fn copied_entries(&self, dir: NodeId) -> Result<HashMap<OsString, Option<NodeId>>> {
        let mut decided: HashMap<OsString, Option<NodeId>> = HashMap::new();
        for area in self.chain().iter() {
            let d = area.join("entries").join(dir.to_string());
            let it = match fs::read_dir(&d) {
                Ok(it) => it,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("read {}", d.display()), e)),
            };
            for e in it {
                let e = e.map_err(|e| Error::io(format!("read {}", d.display()), e))?;
                let name = e.file_name();
                if decided.contains_key(&name) {
                    continue;
                }
                let t = fs::read_link(e.path())
                    .map_err(|err| Error::io(format!("read {}", e.path().display()), err))?;
                let v = if t.as_os_str() == ABSENT {
                    None
                } else {
                    Layout::parse_entry_target(&t)
                };
                decided.insert(name, v);
            }
        }
        Ok(decided)
    }
}
