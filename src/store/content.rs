//! File content: manifests, write sessions, revisions (invariants 1, 4, 5).
//!
//! A file's bytes are fixed-size chunks aligned to file offsets; each stored chunk is a
//! blob, absent chunks are holes and read as zeros. Files of at most
//! [`INLINE_DATA_MAX`] bytes live inline in the record; short chunk lists live in the
//! record, long ones in a manifest blob.
//!
//! All handles that write a node share one [`Session`] (one per node, reference counted
//! by open handles), so concurrent writers never lose each other's acknowledged writes.
//! Modified chunks are buffered in memory and sealed into blobs when full, when the
//! session holds too much, and on commit. `commit` (on flush/close and fsync) seals,
//! writes the new manifest, then swaps the record once. The first commit of a session
//! that changed content saves the record from before the session under
//! `revisions/<uuid>/<unix-nanos>`. Every chunk read is verified; a mismatch marks the
//! node `integrity_error` and returns EIO.

use std::collections::BTreeMap;
use std::fs;
use std::sync::{Arc, Mutex};

use super::blob::BlobStore;
use super::error::{Error, IoContext, Result};
use super::event::{Event, Op};
use super::node::{
    encode_body, frame, ChunkRef, Content, Hash, Kind, NodeId, NodeRecord, Status, Time,
};
use super::Store;

/// Files up to this size are stored inside their record.
pub const INLINE_DATA_MAX: u64 = 1024;
/// Chunk lists up to this length are stored inside the record.
const INLINE_CHUNKS_MAX: usize = 24;
/// A session holding more modified bytes than this seals them into blobs.
const DIRTY_LIMIT: usize = 64 << 20;

/// The shared write state of one open file.
pub struct Session {
    pub size: u64,
    /// Sealed chunks: stored as blobs, not yet (all) named by the record.
    chunks: BTreeMap<u64, ChunkRef>,
    /// Modified chunks in memory, each the chunk's bytes from its start.
    dirty: BTreeMap<u64, Vec<u8>>,
    dirty_bytes: usize,
    /// Open handles sharing this session.
    pub handles: u32,
    /// Content differs from the record.
    pub changed: bool,
    /// Time of the last write not yet in the record (cleared by an explicit utimens).
    pub mtime: Option<Time>,
    /// The record this session started from (saved as a revision on first commit).
    base: Option<NodeRecord>,
    /// Blobs this session sealed; if one is replaced before the session ends it may be
    /// garbage (nothing but an intermediate commit named it) and is offered to a sweep.
    sealed_here: std::collections::HashSet<Hash>,
    superseded: Vec<Hash>,
    /// The manifest blob of this session's last commit (replaced by the next one).
    last_manifest: Option<Hash>,
}

impl Session {
    /// Chunk `idx` leaves the sealed set (rewritten, truncated or punched).
    fn unseal(&mut self, idx: u64) {
        if let Some(c) = self.chunks.remove(&idx) {
            if self.sealed_here.contains(&c.hash) {
                self.superseded.push(c.hash);
            }
        }
    }
}

/// Copy `n` bytes of `data` starting at `off` into `out`, padding with zeros where the
/// stored chunk is shorter (a hole or a tail).
fn append_padded(out: &mut Vec<u8>, data: &[u8], off: usize, n: usize) {
    let avail = data.len().saturating_sub(off).min(n);
    if avail > 0 {
        out.extend_from_slice(&data[off..off + avail]);
    }
    out.resize(out.len() + (n - avail), 0);
}

/// Walk `off..off+len` (clamped to `size`) chunk by chunk.
fn for_each_piece(
    size: u64,
    cs: u64,
    off: u64,
    len: u64,
    mut f: impl FnMut(u64, usize, usize) -> Result<()>,
) -> Result<()> {
    let end = size.min(off.saturating_add(len));
    let mut pos = off;
    while pos < end {
        let idx = pos / cs;
        let cend = ((idx + 1) * cs).min(end);
        f(idx, (pos - idx * cs) as usize, (cend - pos) as usize)?;
        pos = cend;
    }
    Ok(())
}

impl Store {
    /// The chunk list a content value names.
    pub(crate) fn chunk_list(&self, content: &Content) -> Result<Arc<Vec<ChunkRef>>> {
        match content {
            Content::Empty | Content::Inline(_) => Ok(Arc::new(Vec::new())),
            Content::Chunks(v) => Ok(Arc::new(v.clone())),
            Content::Manifest(h) => {
                if let Some(m) = self.manifests.lock().unwrap().get(h) {
                    return Ok(m.clone());
                }
                let data = self.blobs.get(h)?;
                let list: Vec<ChunkRef> =
                    postcard::from_bytes(&data).map_err(|e| Error::Integrity {
                        what: "manifest".into(),
                        detail: e.to_string(),
                    })?;
                let list = Arc::new(list);
                let mut m = self.manifests.lock().unwrap();
                if m.len() > 4096 {
                    m.clear();
                }
                m.insert(*h, list.clone());
                Ok(list)
            }
        }
    }

    /// Read a verified chunk; on a mismatch mark the node and report EIO.
    pub(crate) fn load_chunk(&self, id: NodeId, c: &ChunkRef) -> Result<Arc<Vec<u8>>> {
        match self.blobs.get(&c.hash) {
            Ok(d) => Ok(d),
            Err(e @ Error::Integrity { .. }) => {
                log::error!("node {id}: chunk {} failed verification: {e}", c.index);
                if !self.read_only() {
                    let _ = self.update(id, |r| {
                        r.status = Status::IntegrityError;
                        Ok(())
                    });
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    fn session_of(&self, id: NodeId) -> Option<Arc<Mutex<Session>>> {
        self.sessions.lock().unwrap().get(&id).cloned()
    }

    pub(crate) fn session_handle(&self, id: NodeId) -> Option<Arc<Mutex<Session>>> {
        self.session_of(id)
    }

    /// Point a session at a record that replaced its content (a restore), keeping its
    /// handles.
    pub(crate) fn reset_session(&self, s: &mut Session, rec: &NodeRecord) {
        let fresh = self.new_session(rec);
        let handles = s.handles;
        *s = fresh;
        s.handles = handles;
    }

    /// The sealed chunks of every open session (referenced, though not yet by a record).
    pub(crate) fn session_blobs(&self) -> Vec<Hash> {
        let all: Vec<Arc<Mutex<Session>>> =
            self.sessions.lock().unwrap().values().cloned().collect();
        let mut out = Vec::new();
        for s in all {
            if let Ok(g) = s.try_lock() {
                out.extend(g.chunks.values().map(|c| c.hash));
            } else {
                // Busy: wait for it (never while holding the map lock).
                out.extend(s.lock().unwrap().chunks.values().map(|c| c.hash));
            }
        }
        out
    }

    /// Does this node have an open write session (status `pending`)?
    pub fn has_session(&self, id: NodeId) -> bool {
        self.sessions.lock().unwrap().contains_key(&id)
    }

    pub fn open_sessions(&self) -> usize {
        self.sessions.lock().unwrap().len()
    }

    fn new_session(&self, rec: &NodeRecord) -> Session {
        let mut s = Session {
            size: rec.size,
            chunks: BTreeMap::new(),
            dirty: BTreeMap::new(),
            dirty_bytes: 0,
            handles: 0,
            changed: false,
            mtime: None,
            base: Some(rec.clone()),
            sealed_here: Default::default(),
            superseded: Vec::new(),
            last_manifest: None,
        };
        match &rec.content {
            Content::Inline(d) => {
                s.dirty_bytes = d.len();
                s.dirty.insert(0, d.clone());
            }
            other => {
                // Errors surface on read; a session over an unreadable manifest starts empty
                // only if the manifest is missing entirely, which load below reports.
                if let Ok(list) = self.chunk_list(other) {
                    for c in list.iter() {
                        s.chunks.insert(c.index, c.clone());
                    }
                }
            }
        }
        s
    }

    /// Get the session of `id`, creating it; `handle` counts an open handle.
    fn session(&self, id: NodeId, handle: bool) -> Result<(Arc<Mutex<Session>>, bool)> {
        let mut map = self.sessions.lock().unwrap();
        if let Some(s) = map.get(&id) {
            if handle {
                s.lock().unwrap().handles += 1;
            }
            return Ok((s.clone(), false));
        }
        let rec = self.read_record(id)?;
        match rec.kind {
            Kind::File => {}
            Kind::Dir => return Err(Error::IsDir),
            _ => return Err(Error::Invalid("not a regular file")),
        }
        if let Content::Manifest(_) = rec.content {
            self.chunk_list(&rec.content)?; // surface a missing or corrupt manifest now
        }
        let mut s = self.new_session(&rec);
        if handle {
            s.handles = 1;
        }
        let s = Arc::new(Mutex::new(s));
        map.insert(id, s.clone());
        Ok((s, true))
    }

    /// A handle opened `id` for writing.
    pub fn open_write(&self, id: NodeId) -> Result<()> {
        self.writable()?;
        self.session(id, true).map(|_| ())
    }

    /// A writing handle of `id` closed: the last one commits and ends the session.
    pub fn close_write(&self, id: NodeId) -> Result<()> {
        let Some(s) = self.session_of(id) else {
            return Ok(());
        };
        let last = {
            let mut g = s.lock().unwrap();
            g.handles = g.handles.saturating_sub(1);
            g.handles == 0
        };
        if last {
            let res = self.commit(id, false);
            let mut map = self.sessions.lock().unwrap();
            let still_unused = map
                .get(&id)
                .map(|s| s.lock().unwrap().handles == 0)
                .unwrap_or(false);
            if still_unused {
                // Even if the commit failed (a full disk): the last handle is gone and the
                // error went to close(2); a session kept now would pin the node forever.
                if let Err(e) = &res {
                    log::error!(
                        "node {id}: last close could not commit, unsaved writes dropped: {e}"
                    );
                }
                map.remove(&id);
            }
            return res;
        }
        Ok(())
    }

    /// Run `f` on the session of `id`; a session made just for `f` is committed and ended.
    fn with_session<T>(&self, id: NodeId, f: impl FnOnce(&mut Session) -> Result<T>) -> Result<T> {
        self.writable()?;
        let (s, fresh) = self.session(id, false)?;
        let out = f(&mut s.lock().unwrap())?;
        if fresh {
            let res = self.commit(id, false);
            let mut map = self.sessions.lock().unwrap();
            if map
                .get(&id)
                .map(|s| s.lock().unwrap().handles == 0)
                .unwrap_or(false)
            {
                map.remove(&id);
            }
            res?;
        }
        Ok(out)
    }

    /// Size and mtime as a reader sees them now (session overlay on the record).
    pub fn overlay(&self, id: NodeId, rec: &mut NodeRecord) {
        if let Some(s) = self.session_of(id) {
            let s = s.lock().unwrap();
            rec.size = s.size;
            if let Some(t) = s.mtime {
                rec.mtime = t;
                rec.ctime = rec.ctime.max(t);
            }
        }
    }

    /// Read up to `len` bytes at `off`.
    pub fn read(&self, id: NodeId, off: u64, len: u32) -> Result<Vec<u8>> {
        let cs = self.chunk_size();
        if let Some(s) = self.session_of(id) {
            let s = s.lock().unwrap();
            let mut out = Vec::with_capacity(len as usize);
            for_each_piece(s.size, cs, off, len as u64, |idx, in_off, n| {
                if let Some(buf) = s.dirty.get(&idx) {
                    append_padded(&mut out, buf, in_off, n);
                } else if let Some(c) = s.chunks.get(&idx) {
                    append_padded(&mut out, &self.load_chunk(id, c)?, in_off, n);
                } else {
                    append_padded(&mut out, &[], in_off, n);
                }
                Ok(())
            })?;
            return Ok(out);
        }
        let rec = self.read_record(id)?;
        if rec.kind == Kind::Dir {
            return Err(Error::IsDir);
        }
        let mut out = Vec::with_capacity(len as usize);
        if let Content::Inline(d) = &rec.content {
            for_each_piece(rec.size, cs, off, len as u64, |_, in_off, n| {
                append_padded(&mut out, d, in_off, n);
                Ok(())
            })?;
            return Ok(out);
        }
        let list = self.chunk_list(&rec.content)?;
        for_each_piece(rec.size, cs, off, len as u64, |idx, in_off, n| {
            match list.binary_search_by_key(&idx, |c| c.index) {
                Ok(i) => append_padded(&mut out, &self.load_chunk(id, &list[i])?, in_off, n),
                Err(_) => append_padded(&mut out, &[], in_off, n),
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Write `data` at `off`.
    pub fn write(&self, id: NodeId, off: u64, data: &[u8]) -> Result<usize> {
        let cs = self.chunk_size();
        off.checked_add(data.len() as u64)
            .filter(|e| *e <= i64::MAX as u64)
            .ok_or(Error::Invalid("offset too large"))?;
        self.with_session(id, |s| {
            let mut pos = off;
            let mut rest = data;
            while !rest.is_empty() {
                let idx = pos / cs;
                let in_off = (pos - idx * cs) as usize;
                let n = rest.len().min(cs as usize - in_off);
                let full = {
                    let buf = self.chunk_buf(id, s, idx)?;
                    let before = buf.len();
                    if buf.len() < in_off + n {
                        buf.resize(in_off + n, 0);
                    }
                    buf[in_off..in_off + n].copy_from_slice(&rest[..n]);
                    let grown = buf.len() - before;
                    s.dirty_bytes += grown;
                    in_off + n == cs as usize
                };
                if full {
                    // A chunk written up to its end is usually done (sequential writes).
                    self.seal(s, idx)?;
                }
                pos += n as u64;
                rest = &rest[n..];
            }
            s.size = s.size.max(off + data.len() as u64);
            s.changed = true;
            s.mtime = Some(Time::now());
            if s.dirty_bytes > DIRTY_LIMIT {
                self.seal_all(s)?;
            }
            Ok(data.len())
        })
    }

    /// The in-memory buffer of chunk `idx`, loading the sealed chunk if needed.
    fn chunk_buf<'a>(&self, id: NodeId, s: &'a mut Session, idx: u64) -> Result<&'a mut Vec<u8>> {
        if !s.dirty.contains_key(&idx) {
            let buf = match s.chunks.get(&idx) {
                Some(c) => self.load_chunk(id, c)?.as_ref().clone(),
                None => Vec::new(),
            };
            s.unseal(idx);
            s.dirty_bytes += buf.len();
            s.dirty.insert(idx, buf);
        }
        Ok(s.dirty.get_mut(&idx).expect("just inserted"))
    }

    /// Turn one modified chunk into a blob. An all-zero chunk becomes a hole.
    fn seal(&self, s: &mut Session, idx: u64) -> Result<()> {
        let Some(buf) = s.dirty.get(&idx) else {
            return Ok(());
        };
        let len = buf.len();
        if buf.iter().any(|b| *b != 0) {
            let hash = self.blobs.put(buf, false)?;
            s.sealed_here.insert(hash);
            s.chunks.insert(
                idx,
                ChunkRef {
                    index: idx,
                    hash,
                    len: len as u32,
                },
            );
        }
        s.dirty.remove(&idx);
        s.dirty_bytes -= len;
        Ok(())
    }

    fn seal_all(&self, s: &mut Session) -> Result<()> {
        let idxs: Vec<u64> = s.dirty.keys().copied().collect();
        for idx in idxs {
            self.seal(s, idx)?;
        }
        Ok(())
    }

    /// Set the size of a file (truncate or extend with a hole).
    pub fn truncate(&self, id: NodeId, size: u64) -> Result<()> {
        if size > i64::MAX as u64 {
            return Err(Error::Invalid("size too large"));
        }
        let cs = self.chunk_size();
        self.with_session(id, |s| {
            if size < s.size {
                let keep = size.div_ceil(cs);
                let cut: Vec<u64> = s.chunks.range(keep..).map(|(i, _)| *i).collect();
                for i in cut {
                    s.unseal(i);
                }
                let dropped: usize = s
                    .dirty
                    .iter()
                    .filter(|(i, _)| **i >= keep)
                    .map(|(_, b)| b.len())
                    .sum();
                s.dirty.retain(|i, _| *i < keep);
                s.dirty_bytes -= dropped;
                let tail = size % cs;
                if tail != 0 {
                    // Trim the partial last chunk so a later extension reads zeros.
                    let idx = size / cs;
                    let buf = self.chunk_buf(id, s, idx)?;
                    if buf.len() as u64 > tail {
                        let cut = buf.len() - tail as usize;
                        buf.truncate(tail as usize);
                        s.dirty_bytes -= cut;
                    }
                }
            }
            s.size = size;
            s.changed = true;
            s.mtime = Some(Time::now());
            Ok(())
        })
    }

    /// Reserve space up to `end` (posix_fallocate). Content is stored on write, so this
    /// only checks the disk has room and, unless `keep_size`, extends the file.
    pub fn fallocate(&self, id: NodeId, end: u64, keep_size: bool) -> Result<()> {
        let mut rec = self.read_record(id)?;
        self.overlay(id, &mut rec);
        if rec.kind != Kind::File {
            return Err(Error::Invalid("fallocate on a non-regular file"));
        }
        if end <= rec.size {
            return Ok(());
        }
        let st = self.statfs()?;
        if end - rec.size > st.f_bavail.saturating_mul(st.f_frsize) {
            return Err(Error::NoSpace);
        }
        if keep_size {
            Ok(())
        } else {
            self.truncate(id, end)
        }
    }

    /// Copy `len` bytes from one file to another (copy_file_range); returns bytes copied.
    pub fn copy_range(
        &self,
        from: NodeId,
        off_from: u64,
        to: NodeId,
        off_to: u64,
        len: u64,
    ) -> Result<usize> {
        let len = len.min(1 << 30);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(1 << 20) as u32;
            let data = self.read(from, off_from + done, n)?;
            if data.is_empty() {
                break;
            }
            self.write(to, off_to + done, &data)?;
            done += data.len() as u64;
            if data.len() < n as usize {
                break;
            }
        }
        Ok(done as usize)
    }

    /// Punch a hole: zero `off..off+len` without changing the size.
    pub fn punch_hole(&self, id: NodeId, off: u64, len: u64) -> Result<()> {
        let cs = self.chunk_size();
        self.with_session(id, |s| {
            let end = off.saturating_add(len).min(s.size);
            let mut pos = off;
            while pos < end {
                let idx = pos / cs;
                let cstart = idx * cs;
                let cend = (cstart + cs).min(end);
                if pos == cstart && cend == cstart + cs {
                    let dropped = s.dirty.remove(&idx).map(|b| b.len()).unwrap_or(0);
                    s.dirty_bytes -= dropped;
                    s.unseal(idx);
                } else {
                    let buf = self.chunk_buf(id, s, idx)?;
                    let a = (pos - cstart) as usize;
                    let b = ((cend - cstart) as usize).min(buf.len());
                    if a < b {
                        buf[a..b].fill(0);
                    }
                }
                pos = cend;
            }
            s.changed = true;
            s.mtime = Some(Time::now());
            Ok(())
        })
    }

    /// Offsets of data for SEEK_DATA / SEEK_HOLE, at chunk granularity: (next data at or
    /// after `off`, next hole at or after `off`), each None past the end.
    pub fn seek_data_hole(&self, id: NodeId, off: u64, data: bool) -> Result<Option<u64>> {
        let cs = self.chunk_size();
        let mut rec = self.read_record(id)?;
        self.overlay(id, &mut rec);
        if off >= rec.size {
            return Ok(None);
        }
        let present: std::collections::BTreeSet<u64> = match self.session_of(id) {
            Some(s) => {
                let s = s.lock().unwrap();
                s.chunks.keys().chain(s.dirty.keys()).copied().collect()
            }
            None => match &rec.content {
                Content::Inline(_) => [0].into_iter().collect(),
                c => self.chunk_list(c)?.iter().map(|c| c.index).collect(),
            },
        };
        let mut idx = off / cs;
        loop {
            let start = (idx * cs).max(off);
            if start >= rec.size {
                return Ok(if data { None } else { Some(rec.size) });
            }
            if present.contains(&idx) == data {
                return Ok(Some(start));
            }
            idx += 1;
        }
    }

    /// Make the session's content the record's content. `durable` (fsync) also makes
    /// the blobs and the record reach the disk before returning.
    pub fn commit(&self, id: NodeId, durable: bool) -> Result<()> {
        let Some(s) = self.session_of(id) else {
            if durable {
                self.sync_node(id)?;
            }
            return Ok(());
        };
        let mut s = s.lock().unwrap();
        self.commit_locked(id, &mut s, durable)
    }

    /// `commit` with the session already locked by the caller.
    pub(crate) fn commit_locked(&self, id: NodeId, s: &mut Session, durable: bool) -> Result<()> {
        if !s.changed {
            if durable {
                self.sync_node(id)?;
            }
            return Ok(());
        }
        let content = if s.size <= INLINE_DATA_MAX
            && s.chunks.keys().chain(s.dirty.keys()).all(|i| *i == 0)
        {
            let mut data = Vec::with_capacity(s.size as usize);
            match (s.dirty.get(&0), s.chunks.get(&0)) {
                (Some(buf), _) => append_padded(&mut data, buf, 0, s.size as usize),
                (None, Some(c)) => {
                    append_padded(&mut data, &self.load_chunk(id, c)?, 0, s.size as usize)
                }
                (None, None) => data.resize(s.size as usize, 0),
            }
            if data.iter().all(|b| *b == 0) {
                Content::Empty
            } else {
                Content::Inline(data)
            }
        } else {
            self.seal_all(s)?;
            let list: Vec<ChunkRef> = s.chunks.values().cloned().collect();
            if list.is_empty() {
                Content::Empty
            } else if list.len() <= INLINE_CHUNKS_MAX {
                Content::Chunks(list)
            } else {
                let bytes = postcard::to_allocvec(&list).expect("manifests serialize");
                let h = self.blobs.put(&bytes, durable)?;
                if let Some(old) = s.last_manifest.replace(h) {
                    if old != h {
                        s.superseded.push(old);
                    }
                }
                Content::Manifest(h)
            }
        };
        let stored: u64 = match &content {
            Content::Inline(d) => d.len() as u64,
            _ => s.chunks.values().map(|c| c.len as u64).sum(),
        };
        // Every byte of the new content was written or verified in this session (no
        // chunk is left unread from before): an earlier integrity error no longer applies.
        let fresh = s.chunks.values().all(|c| s.sealed_here.contains(&c.hash));
        if durable {
            self.blobs.sync()?;
        }
        if let Some(base) = s.base.take() {
            if self.save_revision(id, &base)? {
                let (_, blobs) = self.prune_revisions(id)?;
                self.schedule_sweep(blobs);
            }
        }
        let (size, mtime) = (s.size, s.mtime);
        self.update(id, |r| {
            r.content = content;
            r.size = size;
            r.stored = stored;
            if fresh {
                r.status = Status::Consistent;
            }
            if let Some(t) = mtime {
                r.mtime = t;
                r.ctime = r.ctime.max(t);
            }
            Ok(())
        })?;
        self.emit(Event::new(Op::Write, &[id]));
        s.changed = false;
        s.mtime = None;
        // The record no longer names what this session sealed and then replaced.
        let superseded = std::mem::take(&mut s.superseded);
        self.schedule_sweep(superseded);
        if durable {
            self.sync_node(id)?;
        }
        Ok(())
    }

    /// Keep the record from before a session as a revision (only if it had content).
    /// Returns whether a revision was written.
    pub(crate) fn save_revision(&self, id: NodeId, base: &NodeRecord) -> Result<bool> {
        if base.size == 0 && base.content == Content::Empty {
            return Ok(false);
        }
        let dir = self.layout.root.join("revisions").join(id.to_string());
        fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        let now = Time::now();
        let nanos = now.secs as i128 * 1_000_000_000 + now.nanos as i128;
        let path = dir.join(nanos.to_string());
        // Written aside and renamed in, so a crash never leaves a torn revision.
        let tmp = self
            .layout
            .sessions()
            .join(format!("rev.{}.{id}.{nanos}.tmp", std::process::id()));
        fs::write(&tmp, frame(false, &encode_body(base)))
            .ctx(|| format!("write {}", tmp.display()))?;
        fs::rename(&tmp, &path).ctx(|| format!("install {}", path.display()))?;
        Ok(true)
    }

    /// Revisions of a node, oldest first: (unix-nanos, record).
    pub fn revisions(&self, id: NodeId) -> Result<Vec<(i128, NodeRecord)>> {
        let dir = self.layout.root.join("revisions").join(id.to_string());
        let mut out = Vec::new();
        let it = match fs::read_dir(&dir) {
            Ok(it) => it,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
        };
        for ent in it {
            let ent = ent.ctx(|| "read revisions".into())?;
            let Some(stamp) = ent
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i128>().ok())
            else {
                continue;
            };
            let raw = fs::read(ent.path()).ctx(|| "read revision".into())?;
            match super::node::unframe(id, &raw)? {
                super::node::Stored::Inline(r) => out.push((stamp, r)),
                super::node::Stored::InBlob(h) => {
                    out.push((stamp, super::node::decode_body(id, &self.blobs.get(&h)?)?))
                }
            }
        }
        out.sort_by_key(|(t, _)| *t);
        Ok(out)
    }

    /// Read the content of a record (for revisions and checks), verified.
    pub fn read_content(&self, id: NodeId, rec: &NodeRecord) -> Result<Vec<u8>> {
        let cs = self.chunk_size();
        let mut out = Vec::with_capacity(rec.size as usize);
        if let Content::Inline(d) = &rec.content {
            append_padded(&mut out, d, 0, rec.size as usize);
            return Ok(out);
        }
        let list = self.chunk_list(&rec.content)?;
        for_each_piece(rec.size, cs, 0, rec.size, |idx, in_off, n| {
            match list.binary_search_by_key(&idx, |c| c.index) {
                Ok(i) => append_padded(&mut out, &self.load_chunk(id, &list[i])?, in_off, n),
                Err(_) => append_padded(&mut out, &[], in_off, n),
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Commit every open session (shutdown, signals).
    pub fn commit_all(&self) -> Result<()> {
        let ids: Vec<NodeId> = self.sessions.lock().unwrap().keys().copied().collect();
        let mut first_err = None;
        for id in ids {
            if let Err(e) = self.commit(id, true) {
                log::error!("commit of {id} failed: {e}");
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Hash of the blob a record spills into, if any (used by checks).
    pub fn record_hashes(rec: &NodeRecord) -> Vec<Hash> {
        match &rec.content {
            Content::Chunks(v) => v.iter().map(|c| c.hash).collect(),
            Content::Manifest(h) => vec![*h],
            _ => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::scratch;
    use crate::store::tree::NewNode;
    use std::ffi::OsStr;

    fn new_file(s: &Store, name: &str) -> NodeId {
        s.create(
            s.root(),
            OsStr::new(name),
            NewNode {
                kind: Kind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                rdev: 0,
                target: vec![],
            },
        )
        .unwrap()
        .0
    }

    #[test]
    fn write_read_across_chunks_and_holes() {
        let (_d, s) = scratch(); // 64 KiB chunks
        let id = new_file(&s, "f");
        s.open_write(id).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8 + 1).collect();
        s.write(id, 10, &data).unwrap();
        s.write(id, 1_000_000, b"tail").unwrap();
        assert_eq!(s.read(id, 10, 200_000).unwrap(), data);
        s.close_write(id).unwrap();
        assert!(!s.has_session(id));
        let back = s.read(id, 0, 2_000_000).unwrap();
        assert_eq!(back.len(), 1_000_004);
        assert_eq!(&back[10..200_010], &data[..]);
        assert!(back[200_010..1_000_000].iter().all(|b| *b == 0));
        assert_eq!(&back[1_000_000..], b"tail");
        // Shrink into a chunk and grow again: the cut part reads as zeros.
        s.truncate(id, 15).unwrap();
        s.truncate(id, 100_000).unwrap();
        let back = s.read(id, 0, 200_000).unwrap();
        assert_eq!(&back[10..15], &data[..5]);
        assert!(back[15..].iter().all(|b| *b == 0));
    }

    /// Invariant 1: after a commit every blob the record names exists and verifies.
    #[test]
    fn committed_records_name_existing_blobs() {
        let (_d, s) = scratch();
        let id = new_file(&s, "f");
        s.open_write(id).unwrap();
        s.write(id, 0, &vec![9u8; 64 * 1024 * 30]).unwrap(); // 30 chunks: a manifest blob
        s.close_write(id).unwrap();
        let rec = s.read_record(id).unwrap();
        assert!(matches!(rec.content, Content::Manifest(_)));
        for h in Store::record_hashes(&rec) {
            assert!(s.blobs.get(&h).is_ok());
        }
        for c in s.chunk_list(&rec.content).unwrap().iter() {
            assert!(s.blobs.path_of(&c.hash).exists());
        }
    }

    /// Invariant 4: two handles share one session; both writes survive, and the content
    /// from before the session becomes a revision.
    #[test]
    fn handles_share_a_session_and_predecessor_is_a_revision() {
        let (_d, s) = scratch();
        let id = new_file(&s, "f");
        s.write(id, 0, b"version one").unwrap();
        s.open_write(id).unwrap();
        s.open_write(id).unwrap();
        s.write(id, 0, b"VERSION").unwrap();
        s.write(id, 8, b"TWO").unwrap();
        s.close_write(id).unwrap();
        assert!(s.has_session(id), "one handle is still open");
        s.close_write(id).unwrap();
        assert_eq!(s.read(id, 0, 100).unwrap(), b"VERSION TWO");
        let revs = s.revisions(id).unwrap();
        assert_eq!(revs.len(), 1);
        assert_eq!(s.read_content(id, &revs[0].1).unwrap(), b"version one");
    }

    /// Invariant 5: a corrupted chunk reads as EIO and marks the node.
    #[test]
    fn corrupted_chunk_gives_integrity_error() {
        let (_d, s) = scratch();
        let id = new_file(&s, "f");
        s.write(id, 0, &vec![1u8; 100_000]).unwrap();
        let rec = s.read_record(id).unwrap();
        let h = Store::record_hashes(&rec)[0];
        let p = s.blobs.path_of(&h);
        let mut d = fs::read(&p).unwrap();
        d[5] ^= 0xff;
        fs::write(&p, d).unwrap();
        s.blobs.drop_cache();
        let err = s.read(id, 0, 10).unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
        assert_eq!(s.read_record(id).unwrap().status, Status::IntegrityError);
        // Overwriting only part of the file keeps the mark (the bad chunk is still there)...
        s.write(id, 200_000, b"tail").unwrap();
        assert_eq!(s.read_record(id).unwrap().status, Status::IntegrityError);
        // ...rewriting it from scratch clears it.
        s.truncate(id, 0).unwrap();
        s.write(id, 0, &vec![2u8; 100_000]).unwrap();
        assert_eq!(s.read_record(id).unwrap().status, Status::Consistent);
        assert_eq!(s.read(id, 0, 10).unwrap(), vec![2u8; 10]);
    }

    #[test]
    fn sparse_terabyte_costs_nothing() {
        let (_d, s) = scratch();
        let id = new_file(&s, "f");
        s.truncate(id, 1 << 40).unwrap();
        let rec = s.read_record(id).unwrap();
        assert_eq!(rec.size, 1 << 40);
        assert_eq!(rec.content, Content::Empty);
        assert_eq!(s.read(id, (1 << 40) - 10, 100).unwrap(), vec![0u8; 10]);
        assert_eq!(s.seek_data_hole(id, 0, true).unwrap(), None);
        assert_eq!(s.seek_data_hole(id, 5, false).unwrap(), Some(5));
    }
}
