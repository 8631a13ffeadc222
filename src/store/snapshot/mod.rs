//! Snapshots of the whole tree: taken in O(1), kept by copy-on-write of what changes.
//!
//! A store counts *generations*. Taking a snapshot names the current generation and
//! starts the next one; every record written carries the generation it was written in.
//! Before a record or a directory entry first changes after the newest snapshot, its
//! state is copied into that snapshot's *area* (`snapshots/<name>/records`,
//! `snapshots/<name>/entries`). A snapshot is read through its area and the areas of
//! every newer snapshot, oldest first, falling back to the live store for what never
//! changed since (`Lens`). Blobs are immutable and shared; the sweeps count what areas
//! name. docs/DESIGN.md, "Snapshots", has the reasoning.
//!
//! Every mutation of records and entries runs inside the *gate* (`op`), which a
//! snapshot's creation takes exclusively: a snapshot never sees half of an operation.

mod lens;

use std::cell::Cell;
use std::ffi::OsStr;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

pub use lens::Lens;

use super::blobs::BlobStore;
use super::error::{Error, IoContext, Result};
use super::layout::{sync_dir, Layout};
use super::node::{unframe, NodeId, NodeRecord, Stored, Time, RECORD_XATTR};

/// What a directory entry's copy holds when the name did not exist.
const ABSENT: &str = "-";
const INFO: &str = "info";
const GENERATION: &str = "generation";
/// Longest snapshot name.
pub const NAME_MAX: usize = 64;

/// What `for_each_copy` hands out: the snapshot's name, the node, its record as the
/// snapshot keeps it, and the blob a large record spilled into.
pub(crate) type CopyVisitor<'v> =
    dyn FnMut(&str, NodeId, &NodeRecord, Option<super::node::Hash>) + 'v;

/// One snapshot, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapInfo {
    pub name: String,
    /// The generation it froze: it sees every record written in this one or earlier.
    pub gen: u64,
    pub created: Time,
    /// The store it was received from (`decofs receive`), if any.
    pub source: Option<String>,
}

#[derive(Clone, Debug)]
struct Snap {
    info: SnapInfo,
    dir: PathBuf,
}

#[derive(Default)]
struct State {
    /// The generation records are written in now.
    cur: u64,
    /// Live snapshots, oldest first (ascending generation).
    list: Vec<Snap>,
}

thread_local! {
    /// How many gate guards this thread holds (a nested operation takes the gate
    /// again without waiting for a queued snapshot, which waits for it).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// This thread holds the gate exclusively (it is taking a snapshot).
    static EXCLUSIVE: Cell<bool> = const { Cell::new(false) };
}

/// A share of the gate: while any is held, no snapshot is taken.
pub struct OpGuard<'a> {
    _g: Option<RwLockReadGuard<'a, ()>>,
}

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        if self._g.is_some() {
            DEPTH.with(|d| d.set(d.get() - 1));
        }
    }
}

/// The snapshots of a store: their list, the current generation, the gate, and the
/// copies made before changes.
pub struct Snapshots {
    layout: Layout,
    blobs: Arc<dyn BlobStore>,
    /// Blob reference counts: a copy names what the record it keeps named.
    refs: Arc<crate::store::refs::Refs>,
    state: RwLock<State>,
    gate: RwLock<()>,
    /// Creation and removal, one at a time.
    admin: Mutex<()>,
    /// A read-only open: the writer may take or remove snapshots behind our back, so
    /// the list is read again when the directory changed (its mtime, last seen here).
    follow: Mutex<Option<Option<std::time::SystemTime>>>,
    /// The marker this process keeps in the area of the snapshot it serves (a
    /// read-only mount of it), so the snapshot is not removed under it.
    held: Mutex<Option<PathBuf>>,
}

impl Drop for Snapshots {
    fn drop(&mut self) {
        if let Some(p) = self.held.lock().take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// `held.<pid>` in an area: "<pid> <process start time>".
fn held_marker(area: &Path) -> PathBuf {
    area.join(format!("held.{}", std::process::id()))
}

/// Is a live process (not a later one with its pid) holding the area?
fn held_by_live(area: &Path) -> bool {
    let mut live = false;
    for e in fs::read_dir(area).into_iter().flatten().flatten() {
        if !e.file_name().to_string_lossy().starts_with("held.") {
            continue;
        }
        let text = fs::read_to_string(e.path()).unwrap_or_default();
        let mut it = text.split_whitespace().map(|v| v.parse::<u64>().ok());
        let (Some(Some(pid)), Some(Some(start))) = (it.next(), it.next()) else {
            continue;
        };
        if crate::host::proc_starttime(pid as i32) == Some(start) {
            live = true;
        } else {
            let _ = fs::remove_file(e.path());
        }
    }
    live
}

/// The snapshots publishing to an object store takes: `.pub-<seq>` (no person's
/// snapshot starts with '.').
pub const PUBLISHED: &str = ".pub-";

/// Is `name` one of the published states' snapshots?
pub fn is_published(name: &str) -> bool {
    name.strip_prefix(PUBLISHED)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Is `name` a name a snapshot may have?
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && !name.starts_with('.')
        && !name.starts_with(GENERATION)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "snapshot name {name:?}: use 1 to {NAME_MAX} letters, digits or -_.:+@, not starting with '.' or 'generation'"
        )))
    }
}

fn io_ctx(what: &str, p: &Path) -> impl FnOnce() -> String {
    let s = format!("{what} {}", p.display());
    move || s
}

/// The copy of record `id` in an area.
fn record_copy(area: &Path, id: NodeId) -> PathBuf {
    let s = id.to_string();
    area.join("records").join(&s[0..2]).join(s)
}

/// The copy of entry `name` of directory `dir` in an area.
fn entry_copy(area: &Path, dir: NodeId, name: &OsStr) -> PathBuf {
    area.join("entries").join(dir.to_string()).join(name)
}

/// Write `value` as the record xattr of a new file at `p`, atomically (a temporary
/// file renamed into place). An existing copy is kept: it is the older state.
fn write_record_copy(area: &Path, p: &Path, value: &[u8]) -> Result<()> {
    if p.symlink_metadata().is_ok() {
        return Ok(());
    }
    let tmp = area.join(format!(
        "tmp.{}.{}",
        std::process::id(),
        p.file_name().unwrap().to_string_lossy()
    ));
    fs::File::create(&tmp).ctx(io_ctx("create", &tmp))?;
    let res = xattr::set(&tmp, RECORD_XATTR, value)
        .ctx(io_ctx("write", &tmp))
        .and_then(|_| {
            let parent = p.parent().unwrap();
            fs::create_dir_all(parent).ctx(io_ctx("create", parent))?;
            fs::rename(&tmp, p).ctx(io_ctx("install", p))
        });
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Read a record copy (None: there is none).
fn read_record_copy(
    blobs: &dyn BlobStore,
    p: &Path,
    id: NodeId,
) -> Result<Option<(NodeRecord, Option<super::node::Hash>)>> {
    let value = match xattr::get(p, RECORD_XATTR) {
        Ok(Some(v)) => v,
        Ok(None) => {
            return Err(Error::CorruptRecord {
                node: id.to_string(),
                detail: format!("snapshot copy {} has no record", p.display()),
            })
        }
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("read {}", p.display()), e)),
    };
    Ok(Some(match unframe(id, &value)? {
        Stored::Inline(r) => (r, None),
        Stored::InBlob(h) => (super::node::decode_body(id, &blobs.get(&h)?)?, Some(h)),
    }))
}

impl Snapshots {
    pub(crate) fn new(
        layout: Layout,
        blobs: Arc<dyn BlobStore>,
        refs: Arc<crate::store::refs::Refs>,
    ) -> Snapshots {
        Snapshots {
            layout,
            blobs,
            refs,
            state: RwLock::new(State::default()),
            gate: RwLock::new(()),
            admin: Mutex::new(()),
            held: Mutex::new(None),
            follow: Mutex::new(None),
        }
    }

    /// The areas a reader of generation `gen` looks in, oldest first: those of every
    /// snapshot of that generation or newer.
    pub(crate) fn areas_from(&self, gen: u64) -> Vec<PathBuf> {
        self.refresh();
        self.state
            .read()
            .list
            .iter()
            .filter(|s| s.info.gen >= gen)
            .map(|s| s.dir.clone())
            .collect()
    }

    /// In a read-only open, read the list again if the directory changed (the writer
    /// took or removed a snapshot); nothing in the writer, whose list is the truth.
    fn refresh(&self) {
        let mut f = self.follow.lock();
        let Some(seen) = f.as_mut() else { return };
        let now = fs::metadata(self.dir()).and_then(|m| m.modified()).ok();
        // A directory's mtime has the clock's coarse grain: a second change within it
        // leaves the mtime as it was. Read again while the last change is that recent.
        let recent = now.is_some_and(|t| {
            t.elapsed()
                .map_or(true, |e| e < std::time::Duration::from_secs(1))
        });
        if now != *seen || recent {
            *seen = now;
            if let Ok(st) = self.read_state(false) {
                *self.state.write() = st;
            }
        }
    }

    /// This process serves snapshot `name` (a read-only mount): mark its area, so a
    /// removal is refused (`snapshot_busy`) while it lives.
    pub(crate) fn hold(&self, name: &str) -> Result<()> {
        let (_, chain) = self.chain(name)?;
        let p = held_marker(&chain[0]);
        let me = std::process::id();
        let start = crate::host::proc_starttime(me as i32).unwrap_or(0);
        fs::write(&p, format!("{me} {start}\n")).ctx(io_ctx("write", &p))?;
        *self.held.lock() = Some(p);
        Ok(())
    }

    fn dir(&self) -> PathBuf {
        self.layout.snapshots()
    }

    /// Read the list and the generation from disk. `writable`: finish removals a crash
    /// interrupted and drop half-made snapshots (only the writer may).
    pub(crate) fn load(&self, writable: bool) -> Result<()> {
        let st = self.read_state(writable)?;
        *self.state.write() = st;
        *self.follow.lock() = if writable {
            None
        } else {
            Some(fs::metadata(self.dir()).and_then(|m| m.modified()).ok())
        };
        if writable {
            let dir = self.dir();
            for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with(".rm.") {
                    let info = read_info(&e.path())?;
                    self.merge_removed(&e.path(), &info)?;
                }
            }
        }
        Ok(())
    }

    fn read_state(&self, writable: bool) -> Result<State> {
        let dir = self.dir();
        let mut st = State {
            cur: read_generation(&dir)?,
            ..Default::default()
        };
        match fs::read_dir(&dir) {
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
            Ok(it) => {
                for e in it.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let p = e.path();
                    if name.starts_with(".tmp.") {
                        if writable {
                            let _ = fs::remove_dir_all(&p);
                        }
                    } else if name.starts_with(".rm.") {
                    } else if e.file_type().is_ok_and(|t| t.is_dir()) {
                        let info = read_info(&p)?;
                        st.cur = st.cur.max(info.gen + 1);
                        st.list.push(Snap { info, dir: p });
                    }
                }
            }
        }
        st.list.sort_by_key(|s| s.info.gen);
        Ok(st)
    }

    /// Enter an operation that changes records or entries: no snapshot is taken until
    /// the guard is dropped.
    pub fn op(&self) -> OpGuard<'_> {
        if EXCLUSIVE.with(|e| e.get()) {
            return OpGuard { _g: None };
        }
        let depth = DEPTH.with(|d| d.get());
        let g = if depth == 0 {
            self.gate.read()
        } else {
            self.gate.read_recursive()
        };
        DEPTH.with(|d| d.set(depth + 1));
        OpGuard { _g: Some(g) }
    }

    /// The generation records are written in now.
    pub fn current(&self) -> u64 {
        self.state.read().cur
    }

    /// Does a snapshot hold a record written in generation `gen` (is it not newer than
    /// the newest snapshot)?
    pub fn holds(&self, gen: u64) -> bool {
        self.state
            .read()
            .list
            .last()
            .is_some_and(|s| gen <= s.info.gen)
    }

    /// The generation of the newest snapshot, if any.
    pub fn newest(&self) -> Option<u64> {
        self.state.read().list.last().map(|s| s.info.gen)
    }

    /// The live snapshots, oldest first.
    pub fn list(&self) -> Vec<SnapInfo> {
        self.refresh();
        self.state
            .read()
            .list
            .iter()
            .map(|s| s.info.clone())
            .collect()
    }

    pub fn get(&self, name: &str) -> Result<SnapInfo> {
        self.refresh();
        self.state
            .read()
            .list
            .iter()
            .find(|s| s.info.name == name)
            .map(|s| s.info.clone())
            .ok_or_else(|| Error::SnapshotNotFound(name.to_string()))
    }

    /// The areas a reader of snapshot `name` looks in, in order: its own and every
    /// newer one's.
    pub(crate) fn chain(&self, name: &str) -> Result<(u64, Vec<PathBuf>)> {
        self.refresh();
        let st = self.state.read();
        let i = st
            .list
            .iter()
            .position(|s| s.info.name == name)
            .ok_or_else(|| Error::SnapshotNotFound(name.to_string()))?;
        Ok((
            st.list[i].info.gen,
            st.list[i..].iter().map(|s| s.dir.clone()).collect(),
        ))
    }

    /// Before record `id` changes: if its state `old` belongs to the newest snapshot
    /// (written in its generation or earlier), copy it into that snapshot's area unless
    /// a copy is there. `value` frames `old` as a record xattr.
    pub(crate) fn preserve_record(
        &self,
        id: NodeId,
        old: &NodeRecord,
        value: impl FnOnce() -> Result<(Vec<u8>, Option<Vec<super::node::Hash>>)>,
    ) -> Result<()> {
        let st = self.state.read();
        let Some(newest) = st.list.last() else {
            return Ok(());
        };
        if old.gen > newest.info.gen {
            return Ok(());
        }
        let p = record_copy(&newest.dir, id);
        if p.symlink_metadata().is_ok() {
            return Ok(());
        }
        let (value, refs) = value()?;
        self.refs.change(&p, Some(vec![]), refs, || {
            write_record_copy(&newest.dir, &p, &value)
        })
    }

    /// Before entry `name` of directory `dir` (created in generation `dir_born`)
    /// changes: copy what it names now (or that it does not exist) into the newest
    /// snapshot's area unless a copy is there.
    pub(crate) fn preserve_entry(&self, dir: NodeId, dir_born: u64, name: &OsStr) -> Result<()> {
        let st = self.state.read();
        let Some(newest) = st.list.last() else {
            return Ok(());
        };
        if dir_born > newest.info.gen {
            return Ok(());
        }
        let p = entry_copy(&newest.dir, dir, name);
        if p.symlink_metadata().is_ok() {
            return Ok(());
        }
        let live = self.layout.node_path(dir).join(name);
        let target = match fs::read_link(&live) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => PathBuf::from(ABSENT),
            Err(e) => return Err(Error::io(format!("read entry {}", live.display()), e)),
        };
        let tmp = newest
            .dir
            .join(format!("tmp.{}.{:x}.entry", std::process::id(), rand_u64()));
        std::os::unix::fs::symlink(&target, &tmp).ctx(io_ctx("create", &tmp))?;
        let parent = p.parent().unwrap();
        let res = fs::create_dir_all(parent)
            .ctx(io_ctx("create", parent))
            .and_then(|_| fs::rename(&tmp, &p).ctx(io_ctx("install", &p)));
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// Take a snapshot named `name` of the tree as it is now.
    pub fn create(&self, name: &str) -> Result<SnapInfo> {
        self.exclusive(|| self.create_exclusive(name, Time::now(), None))
    }

    /// Run `f` with every operation shut out (the gate held exclusively) and snapshot
    /// administration to itself; inside, operations of this thread pass the gate.
    pub(crate) fn exclusive<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let _admin = self.admin.lock();
        let _gate = self.gate.write();
        EXCLUSIVE.with(|e| e.set(true));
        let res = f();
        EXCLUSIVE.with(|e| e.set(false));
        res
    }

    /// Take snapshot `name` (inside `exclusive`): `created` and `source` are a received
    /// snapshot's (its time and the store it came from).
    pub(crate) fn create_exclusive(
        &self,
        name: &str,
        created: Time,
        source: Option<String>,
    ) -> Result<SnapInfo> {
        if !is_published(name) {
            validate_name(name)?;
        }
        if self.get(name).is_ok() {
            return Err(Error::SnapshotExists(name.to_string()));
        }
        let dir = self.dir();
        fs::create_dir_all(&dir).ctx(io_ctx("create", &dir))?;
        let tmp = dir.join(format!(".tmp.{name}"));
        let _ = fs::remove_dir_all(&tmp);
        let res = (|| {
            fs::create_dir(&tmp).ctx(io_ctx("create", &tmp))?;
            fs::create_dir(tmp.join("records")).ctx(io_ctx("create", &tmp))?;
            fs::create_dir(tmp.join("entries")).ctx(io_ctx("create", &tmp))?;
            let gen = self.state.read().cur;
            let info = SnapInfo {
                name: name.to_string(),
                gen,
                created,
                source,
            };
            // The next generation first: a crash between leaves a generation without
            // a snapshot, which is harmless.
            write_generation(&dir, gen + 1)?;
            write_info(&tmp, &info)?;
            let fin = dir.join(name);
            fs::rename(&tmp, &fin).ctx(io_ctx("install", &fin))?;
            sync_dir(&dir)?;
            let mut st = self.state.write();
            st.cur = gen + 1;
            st.list.push(Snap {
                info: info.clone(),
                dir: fin,
            });
            Ok(info)
        })();
        if res.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        res
    }

    /// Does snapshot `name`'s area hold any copy (did anything change after it)?
    pub(crate) fn has_copies(&self, name: &str) -> Result<bool> {
        self.copies(name).map(|(r, e)| r + e > 0)
    }

    /// How many records and entries changed since snapshot `name` was taken and
    /// before the next one.
    pub(crate) fn copies(&self, name: &str) -> Result<(usize, usize)> {
        let (_, chain) = self.chain(name)?;
        let (recs, entries) = changed_keys(&[&chain[0]]);
        Ok((recs.len(), entries.len()))
    }

    /// Remove snapshot `name`. What it holds that the snapshot before it still needs
    /// moves into that one's area; the rest is dropped (blobs it alone named are left
    /// to the sweep: returns the records dropped, for the caller to queue their blobs).
    pub fn remove(&self, name: &str) -> Result<Vec<(NodeId, NodeRecord)>> {
        let _admin = self.admin.lock();
        let info = self.get(name)?;
        let dir = self.dir();
        let src = dir.join(name);
        if held_by_live(&src) {
            return Err(Error::SnapshotInUse(name.to_string()));
        }
        let gone = dir.join(format!(".rm.{name}"));
        // The newest snapshot's area takes copies while it is merged: shut them out
        // for the merge. An older one's area is written by nobody else.
        let newest = self.newest() == Some(info.gen);
        let gate = self.gate.write();
        fs::rename(&src, &gone).ctx(io_ctx("remove", &src))?;
        sync_dir(&dir)?;
        self.state.write().list.retain(|s| s.info.name != name);
        if !newest {
            drop(gate);
        }
        EXCLUSIVE.with(|e| e.set(newest));
        let res = self.merge_removed(&gone, &info);
        EXCLUSIVE.with(|e| e.set(false));
        res
    }

    /// Finish removing the snapshot whose area was moved to `gone`.
    fn merge_removed(&self, gone: &Path, info: &SnapInfo) -> Result<Vec<(NodeId, NodeRecord)>> {
        let prev = {
            let st = self.state.read();
            st.list
                .iter()
                .rev()
                .find(|s| s.info.gen < info.gen)
                .cloned()
        };
        let mut dropped = Vec::new();
        // What the copies that go name (None: unknown).
        let mut released = Some(Vec::new());
        let records = gone.join("records");
        for shard in fs::read_dir(&records).into_iter().flatten().flatten() {
            for f in fs::read_dir(shard.path()).into_iter().flatten().flatten() {
                let Some(id) = NodeId::from_name(&f.file_name()) else {
                    continue;
                };
                let rec = read_record_copy(&*self.blobs, &f.path(), id)?;
                let keep = match (&prev, &rec) {
                    (Some(p), Some((r, _))) if r.gen <= p.info.gen => {
                        let to = record_copy(&p.dir, id);
                        if to.symlink_metadata().is_err() {
                            let parent = to.parent().unwrap();
                            fs::create_dir_all(parent).ctx(io_ctx("create", parent))?;
                            fs::rename(f.path(), &to).ctx(io_ctx("move", &to))?;
                            true
                        } else {
                            false
                        }
                    }
                    _ => false,
                };
                if !keep {
                    if let Some((r, spill)) = rec {
                        if self.refs.counting() {
                            match (&mut released, self.refs.of_record(&r, spill)) {
                                (Some(a), Some(v)) => a.extend(v),
                                _ => released = None,
                            }
                        }
                        dropped.push((id, r));
                    }
                }
            }
        }
        let entries = gone.join("entries");
        for d in fs::read_dir(&entries).into_iter().flatten().flatten() {
            let Some(p) = &prev else { break };
            let Some(dir_id) = NodeId::from_name(&d.file_name()) else {
                continue;
            };
            for e in fs::read_dir(d.path()).into_iter().flatten().flatten() {
                let to = entry_copy(&p.dir, dir_id, &e.file_name());
                if to.symlink_metadata().is_err() {
                    let parent = to.parent().unwrap();
                    fs::create_dir_all(parent).ctx(io_ctx("create", parent))?;
                    fs::rename(e.path(), &to).ctx(io_ctx("move", &to))?;
                }
            }
        }
        self.refs.change(gone, released, Some(vec![]), || {
            fs::remove_dir_all(gone).ctx(io_ctx("remove", gone))
        })?;
        Ok(dropped)
    }

    /// Every record copy in every area (and in one being removed), with the blob a
    /// large one spilled into, for counting blob references. `f` gets the snapshot's
    /// name too. Areas being removed are listed first: a removal only moves copies
    /// from them into live areas, so a copy in flight is seen in one or the other.
    /// Takes no lock (a sweep may run beside any operation).
    pub(crate) fn for_each_copy(&self, f: &mut CopyVisitor<'_>) -> Result<()> {
        let dir = self.dir();
        let mut areas: Vec<(String, PathBuf)> = match fs::read_dir(&dir) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
            Ok(it) => it
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .filter(|(n, _)| !n.starts_with(".tmp."))
                .collect(),
        };
        areas.sort_by_key(|(n, _)| !n.starts_with(".rm."));
        for (name, area) in areas {
            for shard in fs::read_dir(area.join("records"))
                .into_iter()
                .flatten()
                .flatten()
            {
                for c in fs::read_dir(shard.path()).into_iter().flatten().flatten() {
                    let Some(id) = NodeId::from_name(&c.file_name()) else {
                        continue;
                    };
                    if let Some((rec, spill)) = read_record_copy(&*self.blobs, &c.path(), id)? {
                        f(&name, id, &rec, spill);
                    }
                }
            }
        }
        Ok(())
    }

    /// A reader of snapshot `name`.
    pub fn lens(&self, name: &str) -> Result<Lens<'_>> {
        Ok(Lens::new(self, self.get(name)?.gen))
    }

    fn blobs(&self) -> &dyn BlobStore {
        &*self.blobs
    }
}

/// The records and the entries the given areas hold copies of: what may differ
/// between the snapshot of the first area and a later state.
pub(crate) fn changed_keys(areas: &[&PathBuf]) -> (Vec<NodeId>, Vec<(NodeId, std::ffi::OsString)>) {
    let mut recs = std::collections::BTreeSet::new();
    let mut entries = std::collections::BTreeSet::new();
    for area in areas {
        for shard in fs::read_dir(area.join("records"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in fs::read_dir(shard.path()).into_iter().flatten().flatten() {
                recs.extend(NodeId::from_name(&f.file_name()));
            }
        }
        for d in fs::read_dir(area.join("entries"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Some(dir) = NodeId::from_name(&d.file_name()) else {
                continue;
            };
            for e in fs::read_dir(d.path()).into_iter().flatten().flatten() {
                entries.insert((dir, e.file_name()));
            }
        }
    }
    (recs.into_iter().collect(), entries.into_iter().collect())
}

fn rand_u64() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

fn read_generation(dir: &Path) -> Result<u64> {
    let p = dir.join(GENERATION);
    match fs::read_to_string(&p) {
        Ok(s) => s
            .trim()
            .strip_prefix("decofs-generation ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::Integrity {
                what: p.display().to_string(),
                detail: "not a generation file".into(),
            }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::io(format!("read {}", p.display()), e)),
    }
}

fn write_durably(p: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let tmp = p.with_extension("tmp");
    let mut f = fs::File::create(&tmp).ctx(io_ctx("create", &tmp))?;
    f.write_all(text.as_bytes()).ctx(io_ctx("write", &tmp))?;
    f.sync_all().ctx(io_ctx("sync", &tmp))?;
    fs::rename(&tmp, p).ctx(io_ctx("install", p))
}

fn write_generation(dir: &Path, gen: u64) -> Result<()> {
    write_durably(&dir.join(GENERATION), &format!("decofs-generation {gen}\n"))?;
    sync_dir(dir)
}

fn write_info(area: &Path, info: &SnapInfo) -> Result<()> {
    write_durably(
        &area.join(INFO),
        &format!(
            "decofs-snapshot 1\nname {}\ngen {}\ncreated {}\n{}",
            info.name,
            info.gen,
            info.created.unix_nanos(),
            info.source
                .as_ref()
                .map(|s| format!("source {s}\n"))
                .unwrap_or_default()
        ),
    )
}

fn read_info(area: &Path) -> Result<SnapInfo> {
    let p = area.join(INFO);
    let text = fs::read_to_string(&p).ctx(io_ctx("read", &p))?;
    let bad = || Error::Integrity {
        what: p.display().to_string(),
        detail: "not a snapshot description".into(),
    };
    let mut lines = text.lines();
    if lines.next() != Some("decofs-snapshot 1") {
        return Err(bad());
    }
    let (mut name, mut gen, mut created, mut source) = (None, None, None, None);
    for l in lines {
        let (k, v) = l.split_once(' ').ok_or_else(bad)?;
        match k {
            "name" => name = Some(v.to_string()),
            "gen" => gen = v.parse::<u64>().ok(),
            "created" => created = v.parse::<i128>().ok(),
            "source" => source = Some(v.to_string()),
            _ => {}
        }
    }
    let created = created.ok_or_else(bad)?;
    Ok(SnapInfo {
        name: name.ok_or_else(bad)?,
        gen: gen.ok_or_else(bad)?,
        created: Time::from_unix_nanos(created),
        source,
    })
}

/// Before a replay of the fsync log rewrites record `id` (no mount is up): copy its
/// stored value into the newest snapshot's area if that snapshot holds it. Returns
/// the generation to write the new record in.
pub(crate) fn preserve_at_replay(
    t: &crate::store::fsynclog::Target<'_>,
    id: NodeId,
    old: &NodeRecord,
    old_value: &[u8],
) -> Result<u64> {
    let dir = t.layout.snapshots();
    let mut cur = read_generation(&dir)?;
    let mut newest: Option<(u64, PathBuf)> = None;
    for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
        let n = e.file_name();
        if n.as_bytes().starts_with(b".") || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let info = read_info(&e.path())?;
        cur = cur.max(info.gen + 1);
        if newest.as_ref().is_none_or(|(g, _)| info.gen > *g) {
            newest = Some((info.gen, e.path()));
        }
    }
    if let Some((g, area)) = newest {
        let p = record_copy(&area, id);
        if old.gen <= g && p.symlink_metadata().is_err() {
            let write = || write_record_copy(&area, &p, old_value);
            match t.refs {
                Some(r) if r.counting() => {
                    r.change(&p, Some(vec![]), r.of_value(id, old_value), write)?
                }
                _ => write()?,
            }
        }
    }
    Ok(cur)
}

#[cfg(test)]
mod tests;
