//! Write sessions: one per open-for-write node, shared by its handles (invariant 4);
//! dirty chunks as overlays on their stored base, the staging file, memory bounds.

use std::collections::HashMap;

use super::*;

/// How long a closed scratch file's session waits for its delete before it commits.
pub(in crate::store) const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// A session holding more head bytes in memory than this moves them to its staging file.
pub(super) const DIRTY_LIMIT: usize = 64 << 20;

/// A session whose dirty chunks and staged ranges together exceed this many entries
/// seals its most fragmented chunks (bounds the memory of the range maps).
pub(super) const ENTRY_LIMIT: usize = 1 << 17;

/// Disjoint, non-adjacent byte ranges `start -> end` within one chunk.
pub(super) type Ranges = BTreeMap<usize, usize>;

/// Add `a..b`, merging with what it overlaps or touches.
pub(super) fn ranges_insert(r: &mut Ranges, mut a: usize, mut b: usize) {
    if a >= b {
        return;
    }
    loop {
        let hit = r.range(..=b).next_back().map(|(s, e)| (*s, *e));
        match hit {
            Some((s, e)) if e >= a => {
                r.remove(&s);
                a = a.min(s);
                b = b.max(e);
            }
            _ => break,
        }
    }
    r.insert(a, b);
}

/// Remove `a..b`, splitting what straddles its ends.
pub(super) fn ranges_remove(r: &mut Ranges, a: usize, b: usize) {
    if a >= b {
        return;
    }
    let hits: Vec<(usize, usize)> = r
        .range(..b)
        .rev()
        .take_while(|(_, e)| **e > a)
        .map(|(s, e)| (*s, *e))
        .collect();
    for (s, e) in hits {
        r.remove(&s);
        if s < a {
            r.insert(s, a);
        }
        if e > b {
            r.insert(b, e);
        }
    }
}

/// A chunk modified in this session. Its byte at in-chunk offset `x` is: `head[x]` if
/// `x < head.len()`; else the staging file's byte if a range of `staged` holds `x`; else
/// the base chunk's byte (the session's sealed chunk of this index) if `x < base_len`;
/// else zero. Bytes at or past `len` are zero (up to the file size).
pub(super) struct Dirty {
    /// Stored length of the chunk (what sealing writes).
    pub(super) len: usize,
    /// How much of the base is still visible (a truncate cuts it).
    pub(super) base_len: usize,
    /// Bytes from the chunk's start, in memory.
    pub(super) head: Vec<u8>,
    /// Ranges whose bytes are in the staging file (all at or past `head.len()`).
    pub(super) staged: Ranges,
    /// Slot of this chunk in the staging file, once something was staged.
    pub(super) slot: Option<u64>,
}

/// The session's staging file and its slot allocation.
#[derive(Default)]
pub(super) struct Staging {
    pub(super) file: Option<fs::File>,
    pub(super) free: Vec<u64>,
    pub(super) next: u64,
}

/// The shared write state of one open file.
pub struct Session {
    pub size: u64,
    /// Stored chunks: sealed in this session (not yet all named by the record) or from
    /// before it; a dirty chunk's entry here is its base.
    pub(super) chunks: BTreeMap<u64, ChunkRef>,
    /// Modified chunks, overlays on their base.
    pub(super) dirty: BTreeMap<u64, Dirty>,
    /// Bytes held in memory by heads.
    pub(super) dirty_bytes: usize,
    /// Staged ranges over all dirty chunks.
    pub(super) staged_ranges: usize,
    pub(super) staging: Staging,
    /// Limits (constants; lowered by tests).
    pub(super) dirty_limit: usize,
    pub(super) entry_limit: usize,
    /// Open handles sharing this session.
    pub handles: u32,
    /// Content differs from the record.
    pub changed: bool,
    /// Time of the last write not yet in the record (cleared by an explicit utimens).
    pub mtime: Option<Time>,
    /// The record this session started from (saved as a revision on first commit).
    pub(super) base: Option<NodeRecord>,
    /// Blobs this session sealed; if one is replaced before the session ends it may be
    /// garbage (nothing but an intermediate commit named it) and is offered to a sweep.
    pub(super) sealed_here: std::collections::HashSet<Hash>,
    pub(super) superseded: Vec<Hash>,
    /// The manifest blob of this session's last commit (replaced by the next one).
    pub(super) last_manifest: Option<Hash>,
    /// The durable content this session's writes since then overlay, as the fsync log
    /// names it (`fsynclog::chain_base`): set by a durable commit, cleared by any other
    /// commit and by what is not a plain write (truncate, punched hole). While set, an
    /// fsync logs only `unlogged` (a delta) instead of committing. With it, the record
    /// version made durable then: a record changed since (chmod, utimens, a rename)
    /// makes the next fsync commit in full, so that it logs the attributes too.
    pub(super) chain: Option<(Vec<u8>, u64)>,
    /// The session began on an empty file (a new one) and has only written since: its
    /// first fsync can log the empty record and a delta on it (`log_first_delta`).
    pub(super) from_empty: bool,
    /// File byte ranges written since the last commit or logged delta (tracked while
    /// `chain` is set or `from_empty` holds).
    pub(super) unlogged: Ranges,
    /// Since when a scratch file's session outlives its last close, uncommitted (see
    /// `close_write`).
    pub(super) linger: Option<std::time::Instant>,
    /// Truncated down or punched since the last commit: blocks reserved by fallocate
    /// may be gone, so the commit counts `stored` from the chunks alone.
    pub(super) shrunk: bool,
}

impl Session {
    /// Chunk `idx` leaves the sealed set (rewritten, truncated or punched).
    pub(super) fn unseal(&mut self, idx: u64) {
        if let Some(c) = self.chunks.remove(&idx) {
            if self.sealed_here.contains(&c.hash) {
                self.superseded.push(c.hash);
            }
        }
    }

    /// The dirty overlay of chunk `idx`, made (with nothing written yet) if needed.
    pub(super) fn dirty_mut(&mut self, idx: u64) -> &mut Dirty {
        let base = self.chunks.get(&idx).map(|c| c.len as usize).unwrap_or(0);
        self.dirty.entry(idx).or_insert_with(|| Dirty {
            len: base,
            base_len: base,
            head: Vec::new(),
            staged: Ranges::new(),
            slot: None,
        })
    }

    /// Forget the overlay of chunk `idx` (its base stays in `chunks`).
    pub(super) fn drop_dirty(&mut self, idx: u64, cs: u64) -> Result<()> {
        let Some(d) = self.dirty.remove(&idx) else {
            return Ok(());
        };
        self.dirty_bytes -= d.head.len();
        self.staged_ranges -= d.staged.len();
        if let Some(slot) = d.slot {
            if self.staging.free.len() as u64 + 1 == self.staging.next {
                // Nothing staged any more: give all the space back at once.
                if let Some(f) = &self.staging.file {
                    f.set_len(0).ctx(|| "truncate the staging file".into())?;
                }
                self.staging.free.clear();
                self.staging.next = 0;
            } else {
                if let Some(f) = &self.staging.file {
                    zero_range(f, slot * cs, cs)?;
                }
                self.staging.free.push(slot);
            }
        }
        Ok(())
    }

    /// The slot of dirty chunk `idx` in the staging file, allocated (and the file made)
    /// if needed.
    pub(super) fn slot_of(
        &mut self,
        layout: &crate::store::layout::Layout,
        idx: u64,
    ) -> Result<u64> {
        if self.staging.file.is_none() {
            self.staging.file = Some(staging_file(&layout.sessions())?);
        }
        let d = self.dirty.get_mut(&idx).expect("dirty chunk");
        let slot = match d.slot {
            Some(s) => s,
            None => {
                let s = match self.staging.free.pop() {
                    Some(s) => s,
                    None => {
                        self.staging.next += 1;
                        self.staging.next - 1
                    }
                };
                d.slot = Some(s);
                s
            }
        };
        Ok(slot)
    }
}

/// An unnamed file in `dir` (O_TMPFILE), or a named one unlinked at once where the
/// backing filesystem lacks O_TMPFILE. Either way nothing is left behind by a crash
/// (the `blob.<pid>.…tmp` name is what fsck collects should we die in between).
pub(super) fn staging_file(dir: &std::path::Path) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    match fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
    {
        Ok(f) => return Ok(f),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::EISDIR)
            ) => {}
        Err(e) => {
            return Err(Error::io(
                format!("create a staging file in {}", dir.display()),
                e,
            ))
        }
    }
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let p = dir.join(format!(
        "blob.{}.stage.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)
        .ctx(|| format!("create {}", p.display()))?;
    fs::remove_file(&p).ctx(|| format!("unlink {}", p.display()))?;
    Ok(f)
}

/// Make `off..off+len` of `f` read as zeros (freeing its blocks where possible).
pub(super) fn zero_range(f: &fs::File, off: u64, len: u64) -> Result<()> {
    use std::os::unix::io::AsRawFd;
    let end = off + len;
    // SAFETY: a plain syscall on a descriptor we own.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(Error::io("punch the staging file", e));
        }
        let zeros = vec![0u8; 64 << 10];
        let mut pos = off;
        while pos < end {
            let n = (end - pos).min(zeros.len() as u64) as usize;
            f.write_all_at(&zeros[..n], pos)
                .ctx(|| "zero the staging file".into())?;
            pos += n as u64;
        }
        return Ok(());
    }
    // A punch keeps the size: make sure the range exists so reads of it succeed.
    let have = f.metadata().ctx(|| "stat the staging file".into())?.len();
    if have < end {
        f.set_len(end).ctx(|| "extend the staging file".into())?;
    }
    Ok(())
}

/// The open write sessions, one per node (invariant 4).
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<NodeId, Arc<Mutex<Session>>>>,
}

impl Sessions {
    /// The session of `id`, if it has one.
    pub fn get(&self, id: NodeId) -> Option<Arc<Mutex<Session>>> {
        self.map.lock().get(&id).cloned()
    }

    /// Does this node have an open write session (status `pending`)?
    pub fn contains(&self, id: NodeId) -> bool {
        self.map.lock().contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions with a handle open (not those lingering after their last close).
    pub fn writing(&self) -> usize {
        let all: Vec<_> = self.map.lock().values().cloned().collect();
        all.iter().filter(|s| s.lock().handles > 0).count()
    }

    /// The nodes with a session now.
    pub(crate) fn ids(&self) -> Vec<NodeId> {
        self.map.lock().keys().copied().collect()
    }
}

impl crate::store::sweep::OpenContent for Sessions {
    /// The sealed chunks of every open session (referenced, though not yet by a record).
    fn sealed_blobs(&self) -> Vec<Hash> {
        let all: Vec<Arc<Mutex<Session>>> = self.map.lock().values().cloned().collect();
        let mut out = Vec::new();
        for s in all {
            if let Some(g) = s.try_lock() {
                out.extend(g.chunks.values().map(|c| c.hash));
            } else {
                // Busy: wait for it (never while holding the map lock).
                out.extend(s.lock().chunks.values().map(|c| c.hash));
            }
        }
        out
    }
}

impl Data<'_> {
    /// Point a session at a record that replaced its content (a restore), keeping its
    /// handles.
    pub(crate) fn reset_session(&self, s: &mut Session, rec: &NodeRecord) {
        let fresh = self.new_session(rec);
        let handles = s.handles;
        *s = fresh;
        s.handles = handles;
    }

    pub(super) fn new_session(&self, rec: &NodeRecord) -> Session {
        let mut s = Session {
            size: rec.size,
            chunks: BTreeMap::new(),
            dirty: BTreeMap::new(),
            dirty_bytes: 0,
            staged_ranges: 0,
            staging: Staging::default(),
            dirty_limit: DIRTY_LIMIT,
            entry_limit: ENTRY_LIMIT,
            handles: 0,
            changed: false,
            mtime: None,
            base: Some(rec.clone()),
            sealed_here: Default::default(),
            superseded: Vec::new(),
            last_manifest: None,
            chain: None,
            from_empty: rec.size == 0 && rec.content == Content::Empty,
            unlogged: Ranges::new(),
            linger: None,
            shrunk: false,
        };
        match &rec.content {
            Content::Inline(d) => {
                s.dirty_bytes = d.len();
                s.dirty.insert(
                    0,
                    Dirty {
                        len: d.len(),
                        base_len: 0,
                        head: d.clone(),
                        staged: Ranges::new(),
                        slot: None,
                    },
                );
            }
            other => {
                // Errors surface on read; a session over an unreadable manifest starts empty
                // only if the manifest is missing entirely, which load below reports.
                if let Ok(list) = self.chunk_lists.get(other) {
                    for c in list.iter() {
                        s.chunks.insert(c.index, c.clone());
                    }
                }
            }
        }
        s
    }

    /// Get the session of `id`, creating it; `handle` counts an open handle.
    ///
    /// A handle that opens a session holding nothing uncommitted starts a new version:
    /// what is committed now becomes a revision once this session changes it again. The
    /// kernel sends RELEASE after close(2) returns, so a file written, closed and at once
    /// reopened often finds its old session still there; without this, the version it
    /// closed would never become a revision, depending on that timing.
    pub(super) fn session(&self, id: NodeId, handle: bool) -> Result<(Arc<Mutex<Session>>, bool)> {
        let mut map = self.sessions.map.lock();
        if let Some(s) = map.get(&id) {
            let s = s.clone();
            if handle {
                s.lock().handles += 1;
                drop(map);
                let mut g = s.lock();
                g.linger = None;
                if !g.changed && g.base.is_none() {
                    // Unreadable now: no revision of it then, and the open still works
                    // (the handle is counted); a read reports the record's error.
                    g.base = self.records.read(id).ok();
                }
            }
            return Ok((s, false));
        }
        let rec = self.records.read(id)?;
        match rec.kind {
            Kind::File => {}
            Kind::Dir => return Err(Error::IsDir),
            _ => return Err(Error::Invalid("not a regular file")),
        }
        if let Content::Manifest(_) = rec.content {
            self.chunk_lists.get(&rec.content)?; // surface a missing or corrupt manifest now
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
        self.fence.check()?;
        self.session(id, true).map(|_| ())
    }

    /// A writing handle of `id` closed: the last one commits and ends the session.
    ///
    /// Except for a scratch file (by name, see `Policy::trash_skip`): its session
    /// lingers, uncommitted, for up to `LINGER` (`commit_lingering`), so one deleted at
    /// once (sqlite's journal: written, fsynced, closed, unlinked) never has its content
    /// stored as a blob. What it fsynced is in the fsync log meanwhile; what a close
    /// promises (the old content or the new after a power cut) holds. (`flush`, at
    /// close(2), leaves such a file's session uncommitted too.)
    pub fn close_write(&self, id: NodeId) -> Result<()> {
        let Some(s) = self.sessions.get(id) else {
            return Ok(());
        };
        let last = {
            // Decided and marked under the session's lock, so an unlink that finds the
            // session either sees it lingering (and drops it) or sees a handle.
            let mut g = s.lock();
            g.handles = g.handles.saturating_sub(1);
            if g.handles == 0 && self.lingers(id) {
                g.linger = Some(std::time::Instant::now());
                return Ok(());
            }
            g.handles == 0
        };
        if last && self.pins.is_unlinked(id) {
            // Deleted for good while open (a scratch file, or no room for a trash link):
            // it is freed right after this close, so its content is not stored.
            self.drop_unused(id, false);
            return Ok(());
        }
        if last {
            return self.end_session(id);
        }
        Ok(())
    }

    /// close(2) of a writing handle of `id`: commit what the session holds, so a closed
    /// file is on disk even if the daemon dies before the release; but not a scratch
    /// file's (`close_write`), whose content a delete right after would make useless.
    pub fn flush(&self, id: NodeId) -> Result<()> {
        if self.lingers(id) {
            return Ok(());
        }
        self.commit(id, false)
    }

    /// Is `id` a live scratch file whose session should outlive its last close?
    fn lingers(&self, id: NodeId) -> bool {
        let Ok(rec) = self.records.read(id) else {
            return false;
        };
        let p = self.policy.lock();
        p.trash_retention_secs > 0
            && rec.nlink > 0
            && rec.trash.is_none()
            && p.trash_skip.matches(&rec.name)
    }

    /// Commit and end the sessions whose files were closed `LINGER` ago or more and not
    /// opened since (the daemon calls this every second).
    pub fn commit_lingering(&self) {
        for id in self.sessions.ids() {
            let Some(s) = self.sessions.get(id) else {
                continue;
            };
            let due = {
                let g = s.lock();
                g.handles == 0 && g.linger.is_some_and(|t| t.elapsed() >= LINGER)
            };
            if due {
                if let Err(e) = self.end_session(id) {
                    log::warn!("node {id}: committing a closed scratch file: {e}");
                }
            }
        }
    }

    /// A scratch file lost its last name while its session lingers after its last
    /// close: end the session without storing anything (its blobs made so far go to
    /// the sweep). Returns whether it did.
    pub(crate) fn drop_lingering(&self, id: NodeId) -> bool {
        self.drop_unused(id, true)
    }

    /// End `id`'s session without storing anything, if no handle has it open (and,
    /// with `only_lingering`, if it lingers after its last close).
    fn drop_unused(&self, id: NodeId, only_lingering: bool) -> bool {
        let mut map = self.sessions.map.lock();
        let Some(s) = map.get(&id).cloned() else {
            return false;
        };
        let g = s.lock();
        if g.handles != 0 || (only_lingering && g.linger.is_none()) {
            return false;
        }
        map.remove(&id);
        drop(map);
        self.sweeper.queue(g.sealed_here.iter().copied().collect());
        if let Some(l) = self.fsync_log {
            l.end_chain(id.0.into_bytes());
        }
        true
    }

    /// A file whose session lingers gets a name that may outlive it (a rename, a hard
    /// link: `x.tmp` saved as `x`): commit it now, as its last close would have.
    pub(crate) fn end_lingering(&self, id: NodeId) -> Result<()> {
        let lingers = self.sessions.get(id).is_some_and(|s| {
            let g = s.lock();
            g.handles == 0 && g.linger.is_some()
        });
        if lingers {
            self.end_session(id)?;
        }
        Ok(())
    }

    /// The last handle of `id` is gone: commit, and end the session unless a handle
    /// opened it again meanwhile.
    fn end_session(&self, id: NodeId) -> Result<()> {
        let res = self.commit(id, false);
        let dropped = {
            let mut map = self.sessions.map.lock();
            let still_unused = map.get(&id).map(|s| s.lock().handles == 0).unwrap_or(false);
            if still_unused {
                // Even if the commit failed (a full disk): the last handle is gone and
                // the error went to close(2); a session kept now would pin the node
                // forever.
                if let Err(e) = &res {
                    log::error!(
                        "node {id}: last close could not commit, unsaved writes dropped: {e}"
                    );
                    // Dropped here, so not brought back by a replay either (unless the
                    // power fails before the file's next durable state is logged).
                    if let Some(l) = &self.fsync_log {
                        l.end_chain(id.0.into_bytes());
                    }
                }
                map.remove(&id);
            }
            still_unused && res.is_err()
        };
        if dropped {
            // The kernel still caches the dropped writes (pages and size): the file
            // went back to its record behind its back. Told outside the sessions
            // lock: the kernel waits for page locks a write in flight may hold.
            self.followers.invalidated(id);
        }
        res
    }

    /// Run `f` on the session of `id`; a session made just for `f` is committed and ended.
    pub(super) fn with_session<T>(
        &self,
        id: NodeId,
        f: impl FnOnce(&mut Session) -> Result<T>,
    ) -> Result<T> {
        self.fence.check()?;
        let (s, fresh) = self.session(id, false)?;
        let out = f(&mut s.lock());
        if fresh && out.is_err() {
            // A session made for `f` alone must not outlive it, or the node would stay
            // "open" (pending, never purged) for good.
            let mut map = self.sessions.map.lock();
            if map.get(&id).is_some_and(|s| s.lock().handles == 0) {
                map.remove(&id);
            }
        }
        let out = out?;
        if fresh {
            let res = self.commit(id, false);
            let mut map = self.sessions.map.lock();
            if map.get(&id).map(|s| s.lock().handles == 0).unwrap_or(false) {
                map.remove(&id);
            }
            res?;
        }
        Ok(out)
    }

    /// Size and mtime as a reader sees them now (session overlay on the record).
    pub fn overlay(&self, id: NodeId, rec: &mut NodeRecord) {
        if let Some(s) = self.sessions.get(id) {
            let s = s.lock();
            rec.size = s.size;
            if let Some(t) = s.mtime {
                rec.mtime = t;
                rec.ctime = rec.ctime.max(t);
            }
        }
    }
}
