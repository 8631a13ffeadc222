//! Blob reference counts (docs/DESIGN.md, "Blob references"): for every blob, how many
//! holders name it. A holder is a file that names blobs: a node's record, a revision, a
//! snapshot's copy of a record. Every change of a holder goes through [`Refs::change`]:
//! what it will name and what it named are logged before the change, its end after, so
//! after a kill -9 the log says exactly which changes happened (one begun and not ended
//! is decided by looking at its holder). Counts live in a sled tree, checkpointed with
//! the log; a sweep frees the blobs whose count is zero without reading the store.
//! After a power cut, or whenever the log cannot vouch for the counts, they are rebuilt
//! from a full scan at the next read-write open; until then sweeps scan as before.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::blobs::BlobStore;
use super::chunk_lists::ChunkLists;
use super::error::{Error, IoContext, Result};
use super::layout::Layout;
use super::node::{decode_body, unframe, Content, Hash, NodeId, NodeRecord, Stored};

/// The meta keys in the counts tree (a count's key is a 32-byte hash).
const GEN: &[u8] = b"gen";
const STATE: &[u8] = b"state";
/// A checkpoint after this many logged changes (and every few seconds).
const CHECKPOINT_AFTER: usize = 20_000;

/// What the holders of a store name, for recovery and the full scan.
pub trait Holders {
    /// What the holder at `path` names now, sorted (empty if it is gone; a directory
    /// holds what its files hold).
    fn names(&self, path: &Path) -> Result<Vec<Hash>>;
    /// Every holder's blobs: `f` once per holder. Sets `complete` false if some
    /// holder's blobs could only be listed in part (an unreadable manifest).
    fn each(&self, f: &mut dyn FnMut(&[Hash]), complete: &mut bool) -> Result<()>;
}

/// Every blob's count by a full scan of the holders, and whether every holder's blobs
/// could be listed.
pub fn scan(holders: &dyn Holders) -> Result<(HashMap<Hash, i64>, bool)> {
    let mut counts: HashMap<Hash, i64> = HashMap::new();
    let mut complete = true;
    holders.each(
        &mut |hs| {
            for h in hs {
                *counts.entry(*h).or_default() += 1;
            }
        },
        &mut complete,
    )?;
    Ok((counts, complete))
}

/// Sorted, without repeats: what one holder names counts once per blob.
pub fn normal(mut v: Vec<Hash>) -> Vec<Hash> {
    v.sort_unstable();
    v.dedup();
    v
}

/// The blobs a record's content names: its manifest and chunks. An unreadable
/// manifest is an error: what it names is unknown.
pub fn content_refs(lists: &ChunkLists, content: &Content) -> Result<Vec<Hash>> {
    let mut out = Vec::new();
    if let Content::Manifest(h) = content {
        out.push(*h);
    }
    out.extend(lists.get(content)?.iter().map(|c| c.hash));
    Ok(out)
}

/// The blobs a stored record value names: its content's, and the blob a large one
/// spilled into.
pub fn value_refs(
    lists: &ChunkLists,
    blobs: &dyn BlobStore,
    id: NodeId,
    value: &[u8],
) -> Result<Vec<Hash>> {
    Ok(match unframe(id, value)? {
        Stored::Inline(r) => normal(content_refs(lists, &r.content)?),
        Stored::InBlob(h) => {
            let r = decode_body(id, &blobs.get(&h)?)?;
            let mut v = content_refs(lists, &r.content)?;
            v.push(h);
            normal(v)
        }
    })
}

/// The blobs `rec` names if stored with `spill` (the blob a large record went to).
pub fn record_refs(lists: &ChunkLists, rec: &NodeRecord, spill: Option<Hash>) -> Result<Vec<Hash>> {
    let mut v = content_refs(lists, &rec.content)?;
    v.extend(spill);
    Ok(normal(v))
}

/// One logged change: where, what it named, what it will name.
#[derive(Clone)]
struct Change {
    holder: PathBuf,
    old: Vec<Hash>,
    new: Vec<Hash>,
}

/// `a` minus `b`, both sorted, as multisets.
fn minus(a: &[Hash], b: &[Hash]) -> Vec<Hash> {
    let (mut out, mut j) = (Vec::new(), 0);
    for h in a {
        while j < b.len() && b[j] < *h {
            j += 1;
        }
        if j < b.len() && b[j] == *h {
            j += 1;
        } else {
            out.push(*h);
        }
    }
    out
}

impl Change {
    /// What the change adds (counted at its start) and removes (at its end).
    fn added(&self) -> Vec<Hash> {
        minus(&self.new, &self.old)
    }
    fn removed(&self) -> Vec<Hash> {
        minus(&self.old, &self.new)
    }
}

/// Log entries: `B` a change begins (its additions counted), `C` the same carried over
/// a checkpoint (additions already in the tree), `E` it ended (removals counted), `X`
/// it failed (its additions taken back).
const BEGIN: u8 = b'B';
const CARRIED: u8 = b'C';
const END: u8 = b'E';
const ABORT: u8 = b'X';

fn put_hashes(out: &mut Vec<u8>, hs: &[Hash]) {
    out.extend((hs.len() as u32).to_le_bytes());
    for h in hs {
        out.extend(h);
    }
}

fn encode_entry(kind: u8, seq: u64, change: Option<&Change>) -> Vec<u8> {
    let mut body = vec![kind];
    body.extend(seq.to_le_bytes());
    if let Some(c) = change {
        let p = c.holder.as_os_str().as_encoded_bytes();
        body.extend((p.len() as u32).to_le_bytes());
        body.extend(p);
        put_hashes(&mut body, &c.old);
        put_hashes(&mut body, &c.new);
    }
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend((body.len() as u32).to_le_bytes());
    out.extend(&body);
    out.extend(crc32fast::hash(&body).to_le_bytes());
    out
}

/// Reads entries until the end or the first torn or damaged one (a kill -9 in the
/// middle of a write leaves at most the last entry torn).
struct Entries<'a> {
    buf: &'a [u8],
}

impl Iterator for Entries<'_> {
    type Item = (u8, u64, Option<Change>);
    fn next(&mut self) -> Option<Self::Item> {
        let take = |b: &mut &[u8], n: usize| -> Option<Vec<u8>> {
            if b.len() < n {
                return None;
            }
            let (a, rest) = b.split_at(n);
            *b = rest;
            Some(a.to_vec())
        };
        let u32_of = |v: &[u8]| u32::from_le_bytes(v.try_into().unwrap()) as usize;
        let mut b = self.buf;
        let len = u32_of(&take(&mut b, 4)?);
        let body = take(&mut b, len)?;
        let crc = take(&mut b, 4)?;
        if crc32fast::hash(&body).to_le_bytes()[..] != crc[..] || body.len() < 9 {
            return None;
        }
        self.buf = b;
        let kind = body[0];
        let seq = u64::from_le_bytes(body[1..9].try_into().unwrap());
        let mut r = &body[9..];
        if kind == END || kind == ABORT {
            return Some((kind, seq, None));
        }
        let n = u32_of(&take(&mut r, 4)?);
        let holder = PathBuf::from(std::ffi::OsString::from(
            String::from_utf8(take(&mut r, n)?).ok()?,
        ));
        let mut hashes = || -> Option<Vec<Hash>> {
            let n = u32_of(&take(&mut r, 4)?);
            (0..n)
                .map(|_| take(&mut r, 32).map(|v| v.try_into().unwrap()))
                .collect()
        };
        let old = hashes()?;
        let new = hashes()?;
        Some((kind, seq, Some(Change { holder, old, new })))
    }
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The counts of a writer: the tree, the log, and what the log holds beyond the tree.
struct Live {
    db: sled::Db,
    tree: sled::Tree,
    gen: u64,
    log: File,
    seq: u64,
    /// Count changes logged since the last checkpoint.
    overlay: HashMap<Hash, i64>,
    /// Changes begun and not ended.
    open: HashMap<u64, Change>,
    logged: usize,
}

impl Live {
    fn stored(&self, h: &Hash) -> Result<i64> {
        Ok(match self.tree.get(h).map_err(sled_err)? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])) as i64,
            None => 0,
        })
    }

    fn count(&self, h: &Hash) -> Result<i64> {
        Ok(self.stored(h)? + self.overlay.get(h).copied().unwrap_or(0))
    }

    fn add(&mut self, h: &Hash, d: i64) {
        let e = self.overlay.entry(*h).or_default();
        *e += d;
        if *e == 0 {
            self.overlay.remove(h);
        }
    }

    fn append(&mut self, entry: &[u8]) -> Result<()> {
        self.log
            .write_all(entry)
            .ctx(|| "write the reference log".into())?;
        self.logged += 1;
        Ok(())
    }
}

fn sled_err(e: sled::Error) -> Error {
    Error::io("the reference counts", std::io::Error::other(e.to_string()))
}

/// Blob reference counts of a store (only a writer keeps them).
pub struct Refs {
    layout: Layout,
    live: Mutex<Option<Live>>,
    /// The counts may be wrong (a holder's blobs could not be listed, a write of the
    /// counts failed): sweeps scan the store, and the next open rebuilds them.
    stale: AtomicBool,
    /// Blobs whose count reached zero, for the next sweep.
    zeroed: Mutex<Vec<Hash>>,
    /// Why the open counted from a full scan, if it did.
    rebuilt: Mutex<Option<String>>,
    /// Closed (marked clean): a change counted after this makes the next open count
    /// afresh instead of trusting the mark.
    closed: AtomicBool,
    lists: Arc<ChunkLists>,
    blobs: Arc<dyn BlobStore>,
}

impl Refs {
    pub(crate) fn new(layout: Layout, lists: Arc<ChunkLists>, blobs: Arc<dyn BlobStore>) -> Refs {
        Refs {
            layout,
            live: Mutex::new(None),
            stale: AtomicBool::new(false),
            zeroed: Mutex::new(Vec::new()),
            rebuilt: Mutex::new(None),
            closed: AtomicBool::new(false),
            lists,
            blobs,
        }
    }

    fn dir(&self) -> PathBuf {
        self.layout.root.join("refs")
    }

    fn log_path(&self, gen: u64) -> PathBuf {
        self.dir().join(format!("log.{gen}"))
    }

    /// The marker that makes the next open rebuild the counts.
    fn stale_marker(&self) -> PathBuf {
        stale_marker(&self.layout)
    }

    pub fn chunk_lists(&self) -> &ChunkLists {
        &self.lists
    }

    /// The counts are not to be trusted any more: say why, and rebuild them at the next
    /// read-write open.
    pub fn distrust(&self, why: &str) {
        if !self.stale.swap(true, Ordering::SeqCst) {
            mark_stale(&self.layout, why);
            // The marker may not be written (a full disk is a likely reason to be
            // here); without the log the next open cannot trust the counts either.
            // (No caller holds `live` here.)
            if let Some(gen) = self.live.lock().as_ref().map(|l| l.gen) {
                let _ = fs::remove_file(self.log_path(gen));
            }
        }
    }

    /// The blobs of a record as stored with `spill`, or None (and the counts
    /// distrusted) if they cannot be listed.
    pub fn of_record(&self, rec: &NodeRecord, spill: Option<Hash>) -> Option<Vec<Hash>> {
        if !self.counting() {
            return None;
        }
        match record_refs(&self.lists, rec, spill) {
            Ok(v) => Some(v),
            Err(e) => {
                self.distrust(&format!("the blobs a record names cannot be listed: {e}"));
                None
            }
        }
    }

    /// The blobs a stored value names, or None as [`Self::of_record`].
    pub fn of_value(&self, id: NodeId, value: &[u8]) -> Option<Vec<Hash>> {
        if !self.counting() {
            return None;
        }
        match value_refs(&self.lists, &*self.blobs, id, value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.distrust(&format!(
                    "the blobs a record of {id} names cannot be listed: {e}"
                ));
                None
            }
        }
    }

    /// Are changes being counted, and may a sweep go by the counts (a writer, counts
    /// not given up)?
    pub fn counting(&self) -> bool {
        !self.stale.load(Ordering::SeqCst) && self.live.lock().is_some()
    }

    /// Run `f`, which makes the holder at `holder` name `new` instead of `old` (None:
    /// unknown, which gives the counts up). What `f` returns says whether it happened:
    /// an error is taken as nothing changed.
    pub fn change<T>(
        &self,
        holder: &Path,
        old: Option<Vec<Hash>>,
        new: Option<Vec<Hash>>,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if !self.counting() {
            if self.closed.swap(false, Ordering::SeqCst) {
                mark_stale(&self.layout, "a change after the clean close");
            }
            return f();
        }
        let (Some(mut old), Some(mut new)) = (old, new) else {
            self.distrust(&format!("a change of {} was not counted", holder.display()));
            return f();
        };
        old.sort_unstable();
        new.sort_unstable();
        if old == new {
            return f();
        }
        let rel = holder
            .strip_prefix(&self.layout.root)
            .unwrap_or(holder)
            .to_path_buf();
        let c = Change {
            holder: rel,
            old,
            new,
        };
        let seq = match self.begin(&c) {
            Ok(s) => s,
            Err(e) => {
                self.distrust(&format!("the reference log: {e}"));
                return f();
            }
        };
        let res = f();
        if let Err(e) = self.end(seq, &c, res.is_ok()) {
            self.distrust(&format!("the reference log: {e}"));
        }
        res
    }

    fn begin(&self, c: &Change) -> Result<u64> {
        let mut g = self.live.lock();
        let Some(l) = g.as_mut() else {
            return Err(Error::ReadOnly);
        };
        l.seq += 1;
        let seq = l.seq;
        l.append(&encode_entry(BEGIN, seq, Some(c)))?;
        for h in c.added() {
            l.add(&h, 1);
        }
        l.open.insert(seq, c.clone());
        Ok(seq)
    }

    fn end(&self, seq: u64, c: &Change, happened: bool) -> Result<()> {
        let mut g = self.live.lock();
        let Some(l) = g.as_mut() else {
            return Ok(());
        };
        l.open.remove(&seq);
        l.append(&encode_entry(if happened { END } else { ABORT }, seq, None))?;
        let gone = if happened { c.removed() } else { c.added() };
        let mut zero = Vec::new();
        for h in &gone {
            l.add(h, -1);
            let n = l.count(h)?;
            if n < 0 {
                drop(g);
                self.distrust(&format!(
                    "blob {} counted below zero",
                    super::node::hash_hex(h)
                ));
                return Ok(());
            }
            if n == 0 {
                zero.push(*h);
            }
        }
        let full = l.logged >= CHECKPOINT_AFTER;
        drop(g);
        self.zeroed.lock().extend(zero);
        if full {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// What a power cut does to the counts (tests that make a cut's state by hand): the
    /// writer stops without a close, and its log is from another boot.
    #[cfg(test)]
    pub(crate) fn cut_power(&self) {
        self.kill();
        mark_stale(&self.layout, "a simulated power cut");
    }

    /// What a kill -9 does to the counts: the writer stops without a close.
    #[cfg(test)]
    pub(crate) fn kill(&self) {
        drop(self.live.lock().take());
    }

    /// Did the open count from a full scan?
    pub fn rebuilt(&self) -> bool {
        self.rebuilt.lock().is_some()
    }

    /// Why the open counted from a full scan, if it did.
    pub fn rebuilt_because(&self) -> Option<String> {
        self.rebuilt.lock().clone()
    }

    /// Are counts open (a writer), trusted or not?
    pub fn is_open(&self) -> bool {
        self.live.lock().is_some()
    }

    /// How many holders name `h` (None: counts not kept or not trusted).
    pub fn count(&self, h: &Hash) -> Option<i64> {
        if self.stale.load(Ordering::SeqCst) {
            return None;
        }
        self.live.lock().as_ref().and_then(|l| l.count(h).ok())
    }

    /// The blobs whose count reached zero since the last call.
    pub fn take_zeroed(&self) -> Vec<Hash> {
        std::mem::take(&mut *self.zeroed.lock())
    }

    /// Write what the log holds into the tree and start a new log (the changes under
    /// way carried into it).
    pub fn checkpoint(&self) -> Result<()> {
        let mut g = self.live.lock();
        let Some(l) = g.as_mut() else {
            return Ok(());
        };
        if self.stale.load(Ordering::SeqCst) {
            return Ok(()); // given up: nothing is written that a later open could trust
        }
        if l.logged == 0 && l.overlay.is_empty() {
            return Ok(());
        }
        let res = self.checkpoint_locked(l, false);
        drop(g);
        if let Err(e) = &res {
            self.distrust(&format!("checkpoint of the counts: {e}"));
        }
        res
    }

    fn checkpoint_locked(&self, l: &mut Live, clean: bool) -> Result<()> {
        let gen = l.gen + 1;
        let mut log = new_log(&self.log_path(gen))?;
        for (seq, c) in &l.open {
            log.write_all(&encode_entry(CARRIED, *seq, Some(c)))
                .ctx(|| "write the reference log".into())?;
        }
        let mut batch = sled::Batch::default();
        for (h, d) in &l.overlay {
            let n = l.stored(h)? + d;
            if n > 0 {
                batch.insert(&h[..], &(n as u64).to_be_bytes()[..]);
            } else {
                batch.remove(&h[..]);
            }
        }
        batch.insert(GEN, &gen.to_be_bytes()[..]);
        batch.insert(STATE, if clean { &b"clean"[..] } else { &b"open"[..] });
        l.tree.apply_batch(batch).map_err(sled_err)?;
        l.db.flush().map_err(sled_err)?;
        let _ = fs::remove_file(self.log_path(l.gen));
        l.gen = gen;
        l.log = log;
        l.overlay.clear();
        l.logged = 0;
        Ok(())
    }

    /// Start counting (a read-write open): load the counts, finish what the log of a
    /// killed writer says, or rebuild them from a full scan.
    pub(crate) fn open(&self, holders: &dyn Holders) -> Result<()> {
        fs::create_dir_all(self.dir()).ctx(|| format!("create {}", self.dir().display()))?;
        let open = || {
            sled::Config::new()
                .path(self.dir().join("db"))
                .cache_capacity(16 << 20)
                .flush_every_ms(None)
                .open()
        };
        let db = match open() {
            Ok(db) => db,
            // A writer whose lock was broken still runs and holds them: this writer
            // goes without (sweeps scan), and the next open counts afresh.
            Err(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.distrust("another process (a writer whose lock was broken) holds them");
                return Ok(());
            }
            // They are derived from the holders: damaged, they are made again.
            Err(e) => {
                log::warn!("blob reference counts unreadable ({e}): counted afresh");
                let _ = fs::remove_dir_all(self.dir().join("db"));
                open().map_err(sled_err)?
            }
        };
        let tree = db.open_tree("counts").map_err(sled_err)?;
        let stored_gen = tree
            .get(GEN)
            .map_err(sled_err)?
            .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])));
        let clean = tree.get(STATE).map_err(sled_err)?.as_deref() == Some(&b"clean"[..]);
        let mut live = Live {
            log: new_log(&self.dir().join("log.open"))?,
            db,
            tree,
            gen: stored_gen.unwrap_or(0),
            seq: 0,
            overlay: HashMap::new(),
            open: HashMap::new(),
            logged: 0,
        };
        let _ = fs::remove_file(self.dir().join("log.open"));
        let why = if self.stale_marker().exists() {
            Some(fs::read_to_string(self.stale_marker()).unwrap_or_default())
        } else if stored_gen.is_none() {
            Some("no counts yet".to_string())
        } else if clean {
            None
        } else {
            self.replay(&mut live, holders).err()
        };
        let mut complete = true;
        if let Some(why) = why {
            log::info!("counting blob references from a full scan ({why})");
            // A crash while counting counts afresh again (clearing is not atomic).
            if !self.stale_marker().exists() {
                write_stale(&self.layout, &why);
            }
            self.rebuild(&mut live, holders, &mut complete)?;
            *self.rebuilt.lock() = Some(why);
        }
        for p in fs::read_dir(self.dir()).into_iter().flatten().flatten() {
            let n = p.file_name().to_string_lossy().into_owned();
            if n.starts_with("log.") && n != format!("log.{}", live.gen) {
                let _ = fs::remove_file(p.path());
            }
        }
        self.checkpoint_locked(&mut live, false)?;
        let _ = fs::remove_file(self.stale_marker());
        *self.live.lock() = Some(live);
        self.stale.store(false, Ordering::SeqCst);
        if !complete {
            self.distrust("some file's manifest cannot be read (fsck --repair fixes it)");
        }
        Ok(())
    }

    /// Apply the log of a writer that did not close: changes ended count whole, changes
    /// begun and not ended count as their holder says. An error says why the log
    /// cannot be trusted.
    fn replay(&self, l: &mut Live, holders: &dyn Holders) -> std::result::Result<(), String> {
        let path = self.log_path(l.gen);
        let mut buf = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let head = format!("DECOFS-REFS 1 {}\n", boot_id());
        if !buf.starts_with(head.as_bytes()) {
            return Err("the log was written before the machine restarted".into());
        }
        let mut open: HashMap<u64, (bool, Change)> = HashMap::new();
        for (kind, seq, c) in (Entries {
            buf: &buf[head.len()..],
        }) {
            match (kind, c) {
                (BEGIN, Some(c)) | (CARRIED, Some(c)) => {
                    if kind == BEGIN {
                        for h in c.added() {
                            l.add(&h, 1);
                        }
                    }
                    open.insert(seq, (kind == CARRIED, c));
                }
                (END, None) | (ABORT, None) => {
                    let Some((_, c)) = open.remove(&seq) else {
                        return Err(format!("log entry {seq} ends a change never begun"));
                    };
                    let gone = if kind == END { c.removed() } else { c.added() };
                    for h in gone {
                        l.add(&h, -1);
                    }
                }
                _ => return Err(format!("log entry {seq} is not understood")),
            }
        }
        for (_, c) in open.into_values() {
            let now = holders
                .names(&self.layout.root.join(&c.holder))
                .map_err(|e| format!("{}: {e}", c.holder.display()))?;
            let gone = if now == c.new {
                c.removed()
            } else if now == c.old {
                c.added()
            } else {
                return Err(format!(
                    "{} is neither before nor after its last change",
                    c.holder.display()
                ));
            };
            for h in gone {
                l.add(&h, -1);
            }
        }
        let mut zero = Vec::new();
        for (h, _) in l.overlay.iter().filter(|(_, d)| **d < 0) {
            match l.count(h) {
                Ok(0) => zero.push(*h),
                Ok(n) if n < 0 => return Err("a blob counted below zero".into()),
                _ => {}
            }
        }
        self.zeroed.lock().extend(zero);
        Ok(())
    }

    /// Count every holder's blobs afresh.
    fn rebuild(&self, l: &mut Live, holders: &dyn Holders, complete: &mut bool) -> Result<()> {
        let (counts, whole) = scan(holders)?;
        *complete &= whole;
        l.tree.clear().map_err(sled_err)?;
        let mut batch = sled::Batch::default();
        for (h, n) in counts {
            batch.insert(&h[..], &(n as u64).to_be_bytes()[..]);
        }
        batch.insert(GEN, &l.gen.to_be_bytes()[..]);
        l.tree.apply_batch(batch).map_err(sled_err)?;
        l.overlay.clear();
        l.open.clear();
        Ok(())
    }

    /// Every count (for fsck's comparison with a full scan).
    pub fn all(&self) -> Option<HashMap<Hash, i64>> {
        let g = self.live.lock();
        let l = g.as_ref()?;
        let mut out: HashMap<Hash, i64> = HashMap::new();
        for kv in l.tree.iter() {
            let (k, v) = kv.ok()?;
            if let (Ok(h), Ok(n)) = (
                <[u8; 32]>::try_from(k.as_ref()),
                <[u8; 8]>::try_from(v.as_ref()),
            ) {
                out.insert(h, u64::from_be_bytes(n) as i64);
            }
        }
        for (h, d) in &l.overlay {
            *out.entry(*h).or_default() += d;
        }
        out.retain(|_, n| *n != 0);
        Some(out)
    }

    /// Count everything afresh now (after fsck repaired holders behind the counts).
    pub fn recount(&self, holders: &dyn Holders) -> Result<()> {
        let mut g = self.live.lock();
        let Some(l) = g.as_mut() else {
            return Ok(());
        };
        // Until the new counts are checkpointed, a crash must leave a reason to count
        // afresh (clearing the tree is not atomic, and the log would be replayed twice).
        write_stale(&self.layout, "a recount did not finish");
        let _ = fs::remove_file(self.log_path(l.gen));
        let mut complete = true;
        self.rebuild(l, holders, &mut complete)?;
        self.checkpoint_locked(l, false)?;
        drop(g);
        if complete {
            let _ = fs::remove_file(self.stale_marker());
            self.stale.store(false, Ordering::SeqCst);
        }
        Ok(())
    }

    /// A clean close: everything in the tree, marked clean (the next open trusts it
    /// without a log). The caller made the store's files durable first.
    pub fn close(&self) {
        let mut g = self.live.lock();
        let Some(mut l) = g.take() else {
            return;
        };
        if self.stale.load(Ordering::SeqCst) {
            return; // given up: the next open counts afresh
        }
        let clean = l.open.is_empty();
        match self.checkpoint_locked(&mut l, clean) {
            Ok(()) => self.closed.store(clean, Ordering::SeqCst),
            Err(e) => log::warn!("blob reference counts: {e}"),
        }
    }
}

fn stale_marker(layout: &Layout) -> PathBuf {
    layout.root.join("refs").join("stale")
}

/// Make the next read-write open count every blob reference afresh (something changed
/// holders without counting), saying why.
pub fn mark_stale(layout: &Layout, why: &str) {
    log::warn!("blob reference counts will be rebuilt at the next open: {why}");
    write_stale(layout, why);
}

/// The marker itself, quietly (a count afresh under way leaves it until it is done).
fn write_stale(layout: &Layout, why: &str) {
    let _ = fs::create_dir_all(layout.root.join("refs"));
    let _ = fs::write(stale_marker(layout), why);
}

/// A new log file: its header names the boot, so a log from before a restart (whose
/// writes a power cut may have lost) is never trusted.
fn new_log(p: &Path) -> Result<File> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(p)
        .ctx(|| format!("create {}", p.display()))?;
    f.write_all(format!("DECOFS-REFS 1 {}\n", boot_id()).as_bytes())
        .ctx(|| format!("write {}", p.display()))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{new_file, scratch};
    use crate::store::trash::PurgeSel;
    use crate::store::{OpenOptions, Store};

    /// The counts equal a full scan of every holder.
    fn assert_exact(s: &Store, when: &str) {
        let (want, complete) = scan(&s.sweeper()).unwrap();
        assert!(complete, "{when}: every holder listed");
        assert!(s.refs.counting(), "{when}: counts kept");
        assert_eq!(s.refs.all().unwrap(), want, "{when}: counts against a scan");
    }

    fn reopen(d: &tempfile::TempDir) -> Store {
        Store::open(&d.path().join("store"), OpenOptions::default()).unwrap()
    }

    /// Writes, overwrites (revisions), deletes, purges, snapshots taken and removed:
    /// after each the counts are exact, and a sweep by them frees what lost its last
    /// holder while every file still reads whole.
    #[test]
    fn counts_follow_every_kind_of_holder() {
        let (d, s) = scratch();
        let write = |id, off, data: &[u8]| {
            s.data().open_write(id).unwrap();
            s.data().write(id, off, data).unwrap();
            s.data().close_write(id).unwrap();
        };
        let a = new_file(&s, "a");
        let b = new_file(&s, "b");
        write(a, 0, &vec![1u8; 300_000]);
        write(b, 0, &vec![1u8; 300_000]); // the same chunks
        assert_exact(&s, "written");
        write(a, 0, &vec![2u8; 100_000]);
        assert_exact(&s, "rewritten (a revision)");
        // The blobs only a names (its first chunks, now 2s).
        let only_a: Vec<Hash> = crate::store::content::record_hashes(&s.records.read(a).unwrap())
            .into_iter()
            .filter(|h| s.refs.count(h) == Some(1))
            .collect();
        assert!(!only_a.is_empty());
        s.snapshots().create(Some("one")).unwrap();
        write(b, 70_000, &vec![3u8; 10_000]);
        s.tree()
            .unlink(s.root(), std::ffi::OsStr::new("a"))
            .unwrap();
        assert_exact(&s, "changed after a snapshot");
        s.trash().purge(PurgeSel::All).unwrap();
        assert_exact(&s, "purged");
        s.snapshots().remove("one").unwrap();
        assert_exact(&s, "snapshot removed");
        s.sweeper().run_pending_sweep().unwrap();
        for h in &only_a {
            assert!(
                !s.local.path_of(h).exists(),
                "what lost its last holder is freed"
            );
        }
        let mut want = vec![1u8; 300_000];
        want[70_000..80_000].fill(3);
        assert_eq!(s.data().read(b, 0, 400_000).unwrap(), want);
        drop(s);
        let s = reopen(&d);
        assert_exact(&s, "reopened after a clean close");
        assert_eq!(s.data().read(b, 0, 400_000).unwrap(), want);
    }

    /// A writer killed in the middle of a change: the log has its start and not its
    /// end, and the next open decides by the holder whether it happened, either way.
    #[test]
    fn a_change_cut_short_is_decided_by_its_holder() {
        for happened in [false, true] {
            let (d, s) = scratch();
            let a = new_file(&s, "a");
            s.data().write(a, 0, &vec![5u8; 200_000]).unwrap();
            let path = s.layout.node_path(a);
            let rec = s.records.read(a).unwrap();
            let old = record_refs(&s.chunk_lists, &rec, None).unwrap();
            let fake = [9u8; 32];
            let mut new = old.clone();
            new.push(fake);
            new.sort_unstable();
            let c = Change {
                holder: path.strip_prefix(&s.layout.root).unwrap().to_path_buf(),
                old: old.clone(),
                new: new.clone(),
            };
            s.refs.begin(&c).unwrap();
            assert_eq!(s.refs.count(&fake), Some(1), "counted at the start");
            if happened {
                // The record really names it now (a chunk no blob holds is fine here).
                let mut r = rec.clone();
                let mut list = s.chunk_lists.get(&r.content).unwrap().to_vec();
                list.push(crate::store::node::ChunkRef {
                    hash: fake,
                    ..list[0].clone()
                });
                r.content = Content::Chunks(list);
                let v = crate::store::node::frame(
                    false,
                    &crate::store::node::encode_body(&r),
                    r.has_gens(),
                );
                xattr::set(&path, crate::store::node::RECORD_XATTR, &v).unwrap();
            }
            // As a kill -9: nothing more is written, the log is left as it is.
            s.refs.kill();
            drop(s);
            let s = reopen(&d);
            assert!(!s.refs.rebuilt(), "the log decides");
            assert_eq!(
                s.refs.count(&fake),
                Some(happened as i64),
                "happened: {happened}"
            );
            assert_exact(&s, "after the cut change");
        }
    }

    /// A log written before the machine restarted (a power cut may have lost part of
    /// it) is not replayed: the counts are rebuilt from a scan.
    #[test]
    fn a_log_from_another_boot_is_not_trusted() {
        let (d, s) = scratch();
        let a = new_file(&s, "a");
        s.data().write(a, 0, &vec![5u8; 200_000]).unwrap();
        // A count the scan will not find, logged as ended, then "killed".
        let fake = [7u8; 32];
        s.refs
            .change(
                &s.layout.node_path(a),
                Some(vec![]),
                Some(vec![fake]),
                || Ok(()),
            )
            .unwrap();
        let gen = s.refs.live.lock().as_ref().unwrap().gen;
        s.refs.kill();
        let log = s.refs.log_path(gen);
        drop(s);
        let raw = fs::read(&log).unwrap();
        let head = raw.iter().position(|b| *b == b'\n').unwrap();
        let mut other = b"DECOFS-REFS 1 another-boot".to_vec();
        other.extend(&raw[head..]);
        fs::write(&log, other).unwrap();
        let s = reopen(&d);
        assert!(s.refs.rebuilt());
        assert_eq!(s.refs.count(&fake), Some(0));
        assert_exact(&s, "rebuilt");
    }

    /// Two removers of one holder (a commit's pruning and retention's, a purge and a
    /// receive's drop): only the one whose unlink removed it releases what it named.
    #[test]
    fn a_holder_removed_twice_is_released_once() {
        let (_d, s) = scratch();
        let a = new_file(&s, "a");
        for fill in [1u8, 2, 3] {
            s.data().open_write(a).unwrap();
            s.data().write(a, 0, &vec![fill; 100_000]).unwrap();
            s.data().close_write(a).unwrap();
        }
        let revs = s.revisions.list(a).unwrap();
        assert!(!revs.is_empty());
        let (stamp, rec) = &revs[0];
        let p = s.layout.revisions_of(a).join(stamp.to_string());
        assert!(!s.revisions.remove(&p, rec).unwrap().is_empty());
        assert!(
            s.revisions.remove(&p, rec).unwrap().is_empty(),
            "gone already"
        );
        assert_exact(&s, "a revision removed twice");
        s.records.remove_node(a, false).unwrap();
        s.records.remove_node(a, false).unwrap();
        s.revisions.remove_all(a).unwrap();
        s.revisions.remove_all(a).unwrap();
        assert_exact(&s, "a node and its revisions removed twice");
    }

    /// Counts given up stay given up across a restart even when the marker cannot be
    /// written (a full disk): the log goes too, so the next open counts afresh.
    #[test]
    fn counts_given_up_are_counted_afresh_without_the_marker() {
        let (d, s) = scratch();
        let a = new_file(&s, "a");
        s.data().write(a, 0, &vec![5u8; 200_000]).unwrap();
        s.refs.distrust("the test");
        fs::remove_file(s.refs.stale_marker()).unwrap(); // as if it could not be written
                                                         // Uncounted from now on.
        s.data().write(a, 0, &vec![6u8; 200_000]).unwrap();
        s.refs.kill();
        drop(s);
        let s = reopen(&d);
        assert!(s.refs.rebuilt(), "not trusted");
        assert_exact(&s, "after counts given up");
    }

    /// fsck compares the counts with a scan: a wrong count is reported and repaired.
    #[test]
    fn fsck_finds_and_repairs_a_wrong_count() {
        let (_d, s) = scratch();
        let a = new_file(&s, "a");
        s.data().write(a, 0, &vec![5u8; 200_000]).unwrap();
        let h = crate::store::content::record_hashes(&s.records.read(a).unwrap())[0];
        s.refs
            .change(&s.layout.node_path(a), Some(vec![h]), Some(vec![]), || {
                Ok(())
            })
            .unwrap();
        let c = crate::store::check::Checker::new(&s);
        let r = c.fsck(false, std::time::Duration::ZERO, |_| {}).unwrap();
        assert_eq!(
            r.problems.iter().map(|p| p.code).collect::<Vec<_>>(),
            vec!["refcount_mismatch"]
        );
        let r = c.fsck(true, std::time::Duration::ZERO, |_| {}).unwrap();
        assert!(r.problems.iter().all(|p| p.repaired), "{:?}", r.problems);
        assert_exact(&s, "recounted");
        let r = c.fsck(false, std::time::Duration::ZERO, |_| {}).unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }
}
