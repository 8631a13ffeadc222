//! The fsync log: a file's fsync costs one `fdatasync` of a preallocated log.
//!
//! Without it, fsync of a file that changed costs an fsync of each new blob (a new
//! inode, its blocks and its directory entry) and then one of the node's file (its
//! record): on the benchmark disk about 0.8 ms + 0.5 ms, where an fdatasync of
//! preallocated space costs 0.2–0.3 ms. So fsync writes the blobs and the record as
//! always (the store stays the truth, invariants 1 and 2 unchanged), without syncing
//! them, and appends one entry to `STORE/journal/<epoch>.log`:
//!
//! - the node, its record's version and the record's stored value (the xattr bytes);
//! - the bytes of every blob the record names that is not durable yet (at most
//!   [`CARRY_MAX`](super::blobs::CARRY_MAX); beyond that those blobs are fsynced first, as before).
//!
//! One `fdatasync` of the log then makes the fsync durable. Concurrent fsyncs share
//! one: whoever syncs covers every entry appended before it started (group commit).
//!
//! Replay ([`recover`]) runs at the next open that can take the single-writer lock,
//! before anything reads a record: in order, it writes every carried blob that is
//! missing or damaged, recreates a node file that an entry still names but the power
//! cut lost, and installs the logged record where the one on disk has an older version
//! (a newer one reached the disk by itself and wins). Then one `syncfs`, and the logs
//! are deleted.
//!
//! The log is bounded ([`LOG_BYTES`]): when full, a checkpoint syncs the whole backing
//! filesystem (`syncfs`, which makes every record and blob the entries stand for
//! durable) and starts a new generation; entries of an older generation are ignored.
//! A clean unmount checkpoints and deletes the log, so a clean store has none. Each
//! writer epoch has its own file: a fenced writer (its lock broken) can only append to
//! a file the next writer has already replayed and deleted.
//!
//! # Deltas: an fsync that writes no blob
//!
//! A file's content is stored in 4 MiB chunks, and committing a session seals every
//! chunk it changed: a database that changes one 4 KiB page per transaction would write
//! (and hash, and log) a whole chunk per fsync. So an fsync whose file is already
//! durable as of some content (the session's *chain base*: a full entry or a sync made
//! it so) and which has only written since (no truncate, no punched hole) logs a
//! [`Delta`] instead: the byte ranges written since the previous fsync, the size and
//! the mtime. The session keeps its overlay; the record is not touched. Deltas on one
//! base form a *chain*; any commit of the session (the next full fsync, a close, a
//! flush) ends it, since the record then holds those bytes itself.
//!
//! A new file (its session began on an empty record and has only written) has no
//! durable content yet, but its first fsync need not store a blob either: it logs the
//! record as stored (empty content, its attributes) and, after it, a delta on that
//! empty content, under one sync ([`FsyncLog::append_with_delta`]). Replay installs the
//! record (recreating the node's file if its name survived) and then applies the chain.
//! A database's journal, new in each transaction, is such a file.
//!
//! Replay reads the log in order. A full entry is the node's durable state from then
//! on, so it drops the node's chain logged before it, unless it was logged while that
//! chain was live (fsyncdir logging a record whose attributes changed: kind
//! `KIND_FULL_KEEP`); the chain's base alone cannot tell, as content can return to an
//! earlier value (a truncate to zero). Each node's last chain is then applied, if the
//! node's record still has the chain's base content (a newer commit that reached the
//! disk wins, as for full entries, if the blobs it names did too; attribute changes
//! such as chmod do not stop it):
//! the written bytes overlay the base's chunks (read verified), the changed chunks are
//! written as blobs and the record gets the new content, size and mtime.
//!
//! A checkpoint must not drop a live chain (its bytes are nowhere else on the disk), so
//! the log keeps a copy of every live chain's entries in memory (at most [`CHAINS_MAX`]
//! bytes in all, [`CHAIN_MAX`] per chain; beyond that fsync commits in full) and writes
//! them, tagged with the new generation, into one of two *carried slots* at the end of
//! the file, synced before the header that names the new generation and the slot: a
//! cut before the header leaves the old generation whole, a cut after finds the chains
//! in the slot. Replay reads the slot's entries, then the generation's.
//!
//! # Format
//!
//! A 4 KiB header (`MAGIC`, generation, carried slot, checksum), then entries:
//! `len u32 | generation u64 | blake3(generation, payload)[..16] | payload`, where the
//! payload is `0u8 (or 2u8) | node [16] | version u64 | value_len u32 | value | count
//! u32 | (blob_len u32 | blob)*` for a full entry and `1u8 | node [16] | base_len u32 |
//! base | size u64 | has_mtime u8 | secs i64 | nanos u32 | count u32 | (offset u64 |
//! len u32 | bytes)*` for a delta (little-endian; hand-framed because serde writes a
//! byte vector one element at a time). Logs of the first format (`MAGIC_V1`, full
//! entries without the kind byte, no slots) are still replayed.

use parking_lot::Mutex;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::collections::{BTreeMap, HashMap};

use super::blobs::hash_of;
use super::blobs::BlobStore;
use super::content::{chunks_content, decode_manifest, inline_content, INLINE_DATA_MAX};
use super::error::{Error, IoContext, Result};
use super::layout::syncfs;
use super::layout::{sync_dir, Layout};
use super::node::{
    decode_body, encode_body, frame, hash_hex, unframe, ChunkRef, Content, Kind, NodeId,
    NodeRecord, Stored, Time, INLINE_RECORD_LIMIT, RECORD_XATTR,
};

/// Size of a log file (preallocated). Entries carry small files' blobs whole, so a
/// busy sqlite database fills it every few hundred commits; then one syncfs.
pub const LOG_BYTES: u64 = 64 << 20;
/// Live chains' entries kept for carrying across a checkpoint, in all and per chain.
pub const CHAINS_MAX: usize = 8 << 20;
pub const CHAIN_MAX: usize = 4 << 20;
const HEADER: u64 = 4096;
/// One carried slot (two sit at the end of the file, after the generation's space).
const SLOT_BYTES: u64 = CHAINS_MAX as u64 + (64 << 10);
/// Entries of a generation live in `HEADER..GEN_END`.
const GEN_END: u64 = LOG_BYTES - 2 * SLOT_BYTES;
/// The log is written with zeros this far ahead of its entries. posix_fallocate
/// reserves the space as unwritten extents, and the first write into one changes the
/// extent tree, which each fdatasync would then write too (measured on the bench disk:
/// 314–419 µs per 10 KB append and fdatasync into fallocated space, 188–216 µs into
/// space written before). Zeroing a step at a time moves that cost to one sync per step.
const ZERO_STEP: u64 = 4 << 20;
const MAGIC: &[u8; 16] = b"decofs-fsynclog2";
const MAGIC_V1: &[u8; 16] = b"decofs-fsynclog1";
/// A full entry: the node's state from here on (its chains logged before end here).
const KIND_FULL: u8 = 0;
const KIND_DELTA: u8 = 1;
/// A full entry logged while the node has a live chain (fsyncdir logging a record
/// whose attributes changed): the chain's deltas still apply after it.
const KIND_FULL_KEEP: u8 = 2;
const ENTRY_HEAD: usize = 4 + 8 + 16;

/// One logged fsync.
pub struct Entry {
    pub node: [u8; 16],
    pub version: u64,
    /// The record as stored (the xattr value).
    pub value: Vec<u8>,
    /// Blobs the record names that were not durable yet.
    pub blobs: Vec<Vec<u8>>,
}

/// One fsync that logged only what was written since the previous one (see the module
/// doc): the chain of deltas on `base` rebuilds the file's content at replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    pub node: [u8; 16],
    /// The content the chain starts from ([`chain_base`] of the durable record).
    pub base: Vec<u8>,
    /// File size after the writes.
    pub size: u64,
    /// The session's time of last write, if it has one (an explicit utimens clears it).
    pub mtime: Option<Time>,
    /// (file offset, bytes) in the order to apply.
    pub writes: Vec<(u64, Vec<u8>)>,
}

/// One payload to append: its bytes, its node and, for a delta, its chain's base.
struct Payload {
    bytes: Vec<u8>,
    node: [u8; 16],
    chain: Option<Vec<u8>>,
}

impl Payload {
    fn chain(d: &Delta) -> Payload {
        Payload {
            bytes: d.encode(),
            node: d.node,
            chain: Some(d.base.clone()),
        }
    }
}

/// What identifies the content a chain starts from: the record's content and size.
pub fn chain_base(content: &Content, size: u64) -> Vec<u8> {
    postcard::to_allocvec(&(content, size)).expect("contents serialize")
}

/// An entry as read back from a log; a full entry says whether it ends the node's
/// chain (see [`KIND_FULL_KEEP`]).
pub enum Logged {
    Full(Entry, bool),
    Delta(Delta),
}

impl Delta {
    fn encode(&self) -> Vec<u8> {
        let n: usize = self.writes.iter().map(|(_, b)| 12 + b.len()).sum();
        let mut v = Vec::with_capacity(1 + 16 + 4 + self.base.len() + 8 + 13 + 4 + n);
        v.push(KIND_DELTA);
        v.extend_from_slice(&self.node);
        v.extend_from_slice(&(self.base.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.base);
        v.extend_from_slice(&self.size.to_le_bytes());
        let t = self.mtime.unwrap_or(Time { secs: 0, nanos: 0 });
        v.push(self.mtime.is_some() as u8);
        v.extend_from_slice(&t.secs.to_le_bytes());
        v.extend_from_slice(&t.nanos.to_le_bytes());
        v.extend_from_slice(&(self.writes.len() as u32).to_le_bytes());
        for (off, b) in &self.writes {
            v.extend_from_slice(&off.to_le_bytes());
            v.extend_from_slice(&(b.len() as u32).to_le_bytes());
            v.extend_from_slice(b);
        }
        v
    }

    fn decode(mut p: &[u8]) -> Option<Delta> {
        let node: [u8; 16] = take(&mut p, 16)?.try_into().ok()?;
        let n = u32_of(&mut p)?;
        let base = take(&mut p, n)?.to_vec();
        let size = u64_of(&mut p)?;
        let has = take(&mut p, 1)?[0] == 1;
        let secs = u64_of(&mut p)? as i64;
        let nanos = u32_of(&mut p)? as u32;
        let count = u32_of(&mut p)?;
        let mut writes = Vec::new();
        for _ in 0..count {
            let off = u64_of(&mut p)?;
            let n = u32_of(&mut p)?;
            writes.push((off, take(&mut p, n)?.to_vec()));
        }
        p.is_empty().then_some(Delta {
            node,
            base,
            size,
            mtime: has.then_some(Time { secs, nanos }),
            writes,
        })
    }
}

fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if p.len() < n {
        return None;
    }
    let (a, b) = p.split_at(n);
    *p = b;
    Some(a)
}

fn u32_of(p: &mut &[u8]) -> Option<usize> {
    Some(u32::from_le_bytes(take(p, 4)?.try_into().ok()?) as usize)
}

fn u64_of(p: &mut &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(take(p, 8)?.try_into().ok()?))
}

impl Entry {
    fn encode(&self) -> Vec<u8> {
        let n: usize = self.blobs.iter().map(|b| 4 + b.len()).sum();
        let mut v = Vec::with_capacity(1 + 16 + 8 + 4 + self.value.len() + 4 + n);
        v.push(KIND_FULL);
        v.extend_from_slice(&self.node);
        v.extend_from_slice(&self.version.to_le_bytes());
        v.extend_from_slice(&(self.value.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.value);
        v.extend_from_slice(&(self.blobs.len() as u32).to_le_bytes());
        for b in &self.blobs {
            v.extend_from_slice(&(b.len() as u32).to_le_bytes());
            v.extend_from_slice(b);
        }
        v
    }

    /// A full entry's payload after its kind byte (the whole payload in a v1 log).
    fn decode(mut p: &[u8]) -> Option<Entry> {
        let node: [u8; 16] = take(&mut p, 16)?.try_into().ok()?;
        let version = u64::from_le_bytes(take(&mut p, 8)?.try_into().ok()?);
        let n = u32_of(&mut p)?;
        let value = take(&mut p, n)?.to_vec();
        let count = u32_of(&mut p)?;
        let mut blobs = Vec::new();
        for _ in 0..count {
            let n = u32_of(&mut p)?;
            blobs.push(take(&mut p, n)?.to_vec());
        }
        p.is_empty().then_some(Entry {
            node,
            version,
            value,
            blobs,
        })
    }
}

struct Writer {
    file: Option<File>,
    gen: u64,
    off: u64,
    /// The file holds written (zero or entry) blocks up to here (see `ZERO_STEP`).
    zeroed: u64,
    /// The carried slot the header names (0: none, 1 or 2).
    slot: u64,
    /// Live chains by node: their base and their entries' payloads, in order.
    chains: HashMap<[u8; 16], Chain>,
    /// Bytes of all live chains' entries (heads included).
    chain_bytes: usize,
    /// Closed (clean close): nothing is appended any more.
    closed: bool,
}

struct Chain {
    base: Vec<u8>,
    payloads: Vec<Vec<u8>>,
    bytes: usize,
}

fn slot_off(slot: u64) -> u64 {
    GEN_END + (slot - 1) * SLOT_BYTES
}

/// An entry as written: head (length, generation, checksum) and payload.
fn framed(gen: u64, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(ENTRY_HEAD + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&gen.to_le_bytes());
    buf.extend_from_slice(&checksum(gen, payload));
    buf.extend_from_slice(payload);
    buf
}

pub struct FsyncLog {
    dir: PathBuf,
    path: PathBuf,
    root: PathBuf,
    w: Mutex<Writer>,
    /// Bytes ever appended (across generations), and how many of them are durable.
    lsn: AtomicU64,
    synced: AtomicU64,
    /// One fdatasync at a time; the others wait and usually find their entry covered.
    sync_lock: Mutex<()>,
    /// Set when the log could not be written or synced: fsync then takes the old path.
    broken: AtomicBool,
}

fn checksum(gen: u64, payload: &[u8]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(&gen.to_le_bytes());
    h.update(payload);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

fn header_sum(gen: u64, slot: u64) -> [u8; 16] {
    let mut m = MAGIC.to_vec();
    m.extend_from_slice(&slot.to_le_bytes());
    checksum(gen, &m)
}

fn header(gen: u64, slot: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER as usize);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&gen.to_le_bytes());
    v.extend_from_slice(&slot.to_le_bytes());
    v.extend_from_slice(&header_sum(gen, slot));
    v.resize(HEADER as usize, 0);
    v
}

fn fdatasync(f: &File) -> std::io::Result<()> {
    f.sync_data()
}

pub fn journal_dir(layout: &Layout) -> PathBuf {
    layout.root.join("journal")
}

impl FsyncLog {
    /// The log of the writer holding `epoch`. Nothing is created until the first fsync.
    pub fn new(layout: &Layout, epoch: u64) -> FsyncLog {
        let dir = journal_dir(layout);
        FsyncLog {
            path: dir.join(format!("{epoch}.log")),
            dir,
            root: layout.root.clone(),
            w: Mutex::new(Writer {
                file: None,
                gen: 0,
                off: HEADER,
                zeroed: 0,
                slot: 0,
                chains: HashMap::new(),
                chain_bytes: 0,
                closed: false,
            }),
            lsn: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            sync_lock: Mutex::new(()),
            broken: AtomicBool::new(false),
        }
    }

    pub fn usable(&self) -> bool {
        !self.broken.load(Ordering::Relaxed)
    }

    fn create(&self) -> Result<File> {
        fs::create_dir_all(&self.dir).ctx(|| format!("create {}", self.dir.display()))?;
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.path)
            .ctx(|| format!("create {}", self.path.display()))?;
        // SAFETY: plain call on a descriptor we own.
        let rc = unsafe {
            libc::posix_fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
                LOG_BYTES as libc::off_t,
            )
        };
        if rc != 0 {
            let _ = fs::remove_file(&self.path);
            return Err(Error::io(
                format!("preallocate {}", self.path.display()),
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        f.write_all_at(&header(1, 0), 0)
            .ctx(|| format!("write {}", self.path.display()))?;
        f.sync_all()
            .ctx(|| format!("sync {}", self.path.display()))?;
        sync_dir(&self.dir)?;
        sync_dir(&self.root)?;
        Ok(f)
    }

    /// Make everything durable (syncfs) and start a new generation, the live chains
    /// carried into the slot the current header does not name. `w` is locked.
    fn checkpoint(&self, w: &mut Writer, sync_store: &dyn Fn() -> Result<()>) -> Result<()> {
        sync_store()?;
        self.synced
            .fetch_max(self.lsn.load(Ordering::SeqCst), Ordering::SeqCst);
        if let Some(f) = &w.file {
            let gen = w.gen + 1;
            let slot = match (w.chains.is_empty(), w.slot) {
                (true, _) => 0,
                (false, 1) => 2,
                (false, _) => 1,
            };
            if slot != 0 {
                let mut buf = Vec::with_capacity(w.chain_bytes);
                for c in w.chains.values() {
                    for p in &c.payloads {
                        buf.extend_from_slice(&framed(gen, p));
                    }
                }
                debug_assert!(buf.len() as u64 <= SLOT_BYTES);
                // The slot first, synced: the header below must never name a slot
                // that is not whole.
                f.write_all_at(&buf, slot_off(slot))
                    .ctx(|| format!("write {}", self.path.display()))?;
                fdatasync(f).ctx(|| format!("sync {}", self.path.display()))?;
            }
            f.write_all_at(&header(gen, slot), 0)
                .ctx(|| format!("write {}", self.path.display()))?;
            fdatasync(f).ctx(|| format!("sync {}", self.path.display()))?;
            w.gen = gen;
            w.slot = slot;
            w.off = HEADER;
        }
        Ok(())
    }

    /// Start a new generation now (tests: what a full log does).
    #[cfg(test)]
    pub(crate) fn checkpoint_now(&self, sync_store: &dyn Fn() -> Result<()>) -> Result<()> {
        let mut w = self.w.lock();
        self.checkpoint(&mut w, sync_store)
    }

    /// Log a delta and return once it is durable; `Ok(false)` (nothing logged) when
    /// the chain would pass its budget: the caller then commits in full.
    pub fn append_delta(&self, d: &Delta, sync_store: &dyn Fn() -> Result<()>) -> Result<bool> {
        self.append_checked(vec![Payload::chain(d)], sync_store)
    }

    /// Log the record of a file whose stored content is empty and, after it, a delta on
    /// that empty content (the first fsync of a new file), made durable by one sync.
    /// `Ok(false)`: the delta would pass its chain's budget, nothing was logged.
    pub fn append_with_delta(
        &self,
        entry: &Entry,
        d: &Delta,
        sync_store: &dyn Fn() -> Result<()>,
    ) -> Result<bool> {
        debug_assert_eq!(entry.node, d.node);
        let first = Payload {
            bytes: entry.encode(),
            node: entry.node,
            chain: None,
        };
        self.append_checked(vec![first, Payload::chain(d)], sync_store)
    }

    /// The session of `node` committed (or ended): its chain's bytes are in the record
    /// now, so no checkpoint needs to carry them.
    pub fn end_chain(&self, node: [u8; 16]) {
        let mut w = self.w.lock();
        if let Some(c) = w.chains.remove(&node) {
            w.chain_bytes -= c.bytes;
        }
    }

    /// Append `entry` and return once it is durable. `sync_store` makes the whole store
    /// durable (used when the log is full). Any failure marks the log broken.
    pub fn append(&self, entry: &Entry, sync_store: &dyn Fn() -> Result<()>) -> Result<()> {
        let p = Payload {
            bytes: entry.encode(),
            node: entry.node,
            chain: None,
        };
        self.append_checked(vec![p], sync_store).map(|_| ())
    }

    /// `append_payloads`, marking the log broken on failure.
    fn append_checked(
        &self,
        payloads: Vec<Payload>,
        sync_store: &dyn Fn() -> Result<()>,
    ) -> Result<bool> {
        let res = self.append_payloads(payloads, sync_store);
        if res.is_err() {
            self.broken.store(true, Ordering::SeqCst);
        }
        res
    }

    /// Append payloads (in order, none or all) and wait until they are durable.
    /// `Ok(false)`: a delta over its chain's budget, nothing written.
    fn append_payloads(
        &self,
        mut payloads: Vec<Payload>,
        sync_store: &dyn Fn() -> Result<()>,
    ) -> Result<bool> {
        let lens: Vec<u64> = payloads
            .iter()
            .map(|p| (ENTRY_HEAD + p.bytes.len()) as u64)
            .collect();
        let total: u64 = lens.iter().sum();
        if total > GEN_END - HEADER {
            return Err(Error::Invalid("fsync log entry too large"));
        }
        let end = {
            let mut w = self.w.lock();
            if w.closed {
                // After close (a late fsync of a lazily unmounted store): never make
                // the file again, it may hold chains kept for replay.
                return Err(Error::Invalid("fsync log closed"));
            }
            for (p, len) in payloads.iter_mut().zip(&lens) {
                match &p.chain {
                    None if w.chains.contains_key(&p.node) => p.bytes[0] = KIND_FULL_KEEP,
                    None => {}
                    Some(base) => {
                        // A chain on another base (the file was committed since) starts
                        // over.
                        let same = w.chains.get(&p.node).filter(|c| &c.base == base);
                        let have = same.map_or(0, |c| c.bytes);
                        let others = w.chain_bytes - w.chains.get(&p.node).map_or(0, |c| c.bytes);
                        let n = *len as usize;
                        if have + n > CHAIN_MAX || others + have + n > CHAINS_MAX {
                            return Ok(false);
                        }
                    }
                }
            }
            if w.file.is_none() {
                w.file = Some(self.create()?);
                w.gen = 1;
                w.off = HEADER;
                w.zeroed = HEADER;
            }
            if w.off + total > GEN_END {
                self.checkpoint(&mut w, sync_store)?;
            }
            if w.off + total > w.zeroed {
                let to = (w.off + total)
                    .div_ceil(ZERO_STEP)
                    .saturating_mul(ZERO_STEP)
                    .min(GEN_END);
                let zeros = vec![0u8; (to - w.zeroed) as usize];
                let f = w.file.as_ref().expect("created above");
                f.write_all_at(&zeros, w.zeroed)
                    .ctx(|| format!("write {}", self.path.display()))?;
                w.zeroed = to;
            }
            for (p, len) in payloads.into_iter().zip(lens) {
                let f = w.file.as_ref().expect("created above");
                f.write_all_at(&framed(w.gen, &p.bytes), w.off)
                    .ctx(|| format!("write {}", self.path.display()))?;
                w.off += len;
                if let Some(base) = p.chain {
                    // Under the same lock as the write: a checkpoint carries every entry
                    // of a live chain that the log holds.
                    let w = &mut *w;
                    let c = w.chains.entry(p.node).or_insert_with(|| Chain {
                        base: base.clone(),
                        payloads: Vec::new(),
                        bytes: 0,
                    });
                    if c.base != base {
                        w.chain_bytes -= c.bytes;
                        *c = Chain {
                            base,
                            payloads: Vec::new(),
                            bytes: 0,
                        };
                    }
                    c.payloads.push(p.bytes);
                    c.bytes += len as usize;
                    w.chain_bytes += len as usize;
                }
            }
            self.lsn.fetch_add(total, Ordering::SeqCst) + total
        };
        if self.synced.load(Ordering::SeqCst) >= end {
            return Ok(true);
        }
        let _g = self.sync_lock.lock();
        if self.synced.load(Ordering::SeqCst) >= end {
            return Ok(true);
        }
        let target = self.lsn.load(Ordering::SeqCst);
        let f = {
            let w = self.w.lock();
            w.file
                .as_ref()
                .expect("created above")
                .try_clone()
                .ctx(|| "clone the fsync log".into())?
        };
        fdatasync(&f).ctx(|| format!("sync {}", self.path.display()))?;
        self.synced.fetch_max(target, Ordering::SeqCst);
        Ok(true)
    }

    /// Clean close: make everything durable and delete the log. A live chain (a file
    /// fsynced and never committed since: its commit failed) keeps the log for replay.
    pub fn close(&self, sync_store: &dyn Fn() -> Result<()>) -> Result<()> {
        let mut w = self.w.lock();
        w.closed = true;
        if w.file.is_none() {
            return Ok(());
        }
        sync_store()?;
        if !w.chains.is_empty() {
            log::warn!(
                "fsync log kept: {} file(s) fsynced but not committed; replayed at the next open",
                w.chains.len()
            );
            w.file = None;
            return Ok(());
        }
        w.file = None;
        fs::remove_file(&self.path).ctx(|| format!("remove {}", self.path.display()))?;
        sync_dir(&self.dir)
    }
}

/// The entries of one log file that belong to its current generation, in order: the
/// carried slot's, then those after the header. A torn or stale entry ends a run.
fn read_entries(path: &Path) -> Result<Vec<Logged>> {
    let data = fs::read(path).ctx(|| format!("read {}", path.display()))?;
    let mut out = Vec::new();
    if data.len() < HEADER as usize {
        return Ok(out); // created but never written: nothing was logged
    }
    let gen = u64::from_le_bytes(data[16..24].try_into().unwrap());
    if &data[..16] == MAGIC_V1 {
        if data[24..40] == checksum(gen, MAGIC_V1) {
            scan(&data, HEADER as usize, data.len(), gen, false, &mut out);
        }
        return Ok(out);
    }
    let slot = u64::from_le_bytes(data[24..32].try_into().unwrap());
    if &data[..16] != MAGIC || data[32..48] != header_sum(gen, slot) || slot > 2 {
        return Ok(out);
    }
    if slot != 0 {
        let a = slot_off(slot) as usize;
        scan(&data, a, a + SLOT_BYTES as usize, gen, true, &mut out);
    }
    scan(
        &data,
        HEADER as usize,
        GEN_END as usize,
        gen,
        true,
        &mut out,
    );
    Ok(out)
}

/// Read the entries of generation `gen` in `from..to` of `data` until one is not.
fn scan(data: &[u8], from: usize, to: usize, gen: u64, kinds: bool, out: &mut Vec<Logged>) {
    let to = to.min(data.len());
    let mut off = from;
    while off + ENTRY_HEAD <= to {
        let len = u32::from_le_bytes(data[off..off + 4].try_into().unwrap()) as usize;
        let egen = u64::from_le_bytes(data[off + 4..off + 12].try_into().unwrap());
        let sum = &data[off + 12..off + 28];
        let start = off + ENTRY_HEAD;
        if egen != gen || len == 0 || start + len > to {
            break;
        }
        let payload = &data[start..start + len];
        if sum != checksum(gen, payload) {
            break;
        }
        let e = match (kinds, payload[0]) {
            (false, _) => Entry::decode(payload).map(|e| Logged::Full(e, true)),
            (true, KIND_FULL) => Entry::decode(&payload[1..]).map(|e| Logged::Full(e, true)),
            (true, KIND_FULL_KEEP) => Entry::decode(&payload[1..]).map(|e| Logged::Full(e, false)),
            (true, KIND_DELTA) => Delta::decode(&payload[1..]).map(Logged::Delta),
            _ => None,
        };
        match e {
            Some(e) => out.push(e),
            None => break,
        }
        off = start + len;
    }
}

/// The log files of a store, oldest epoch first.
fn log_files(layout: &Layout) -> Result<Vec<PathBuf>> {
    let dir = journal_dir(layout);
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
    };
    let mut v: Vec<(u64, PathBuf)> = Vec::new();
    for ent in rd {
        let ent = ent.ctx(|| format!("read {}", dir.display()))?;
        let name = ent.file_name();
        let Some(epoch) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        v.push((epoch, ent.path()));
    }
    v.sort();
    Ok(v.into_iter().map(|(_, p)| p).collect())
}

/// Are there logs left by a writer that did not close cleanly?
pub fn pending(layout: &Layout) -> Result<bool> {
    Ok(!log_files(layout)?.is_empty())
}

/// What a replay works on: the store's paths and its blobs.
pub(crate) struct Target<'a> {
    pub layout: &'a Layout,
    pub blobs: &'a dyn BlobStore,
}

/// Version of the record stored in `value` (None: unreadable).
fn stored_version(t: &Target<'_>, id: NodeId, value: &[u8]) -> Option<u64> {
    match unframe(id, value).ok()? {
        Stored::Inline(r) => Some(r.version),
        Stored::InBlob(h) => {
            let body = t.blobs.read_verified(&h).ok()?;
            decode_body(id, &body).ok().map(|r| r.version)
        }
    }
}

/// Does an entry of the directory `parent` still name `id` as `name`?
fn named_by(t: &Target<'_>, parent: NodeId, name: &[u8], id: NodeId) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let entry = t
        .layout
        .node_path(parent)
        .join(std::ffi::OsStr::from_bytes(name));
    fs::read_link(entry)
        .ok()
        .and_then(|t| Layout::parse_entry_target(&t))
        == Some(id)
}

/// Apply one entry; returns whether it changed anything.
fn apply(t: &Target<'_>, e: &Entry) -> Result<bool> {
    let id = NodeId(uuid::Uuid::from_bytes(e.node));
    let mut changed = false;
    for b in &e.blobs {
        changed |= t.blobs.restore(b)?;
    }
    let path = t.layout.node_path(id);
    let current = match xattr::get(&path, RECORD_XATTR) {
        Ok(v) => v,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            // The node's file did not survive. Bring it back only if an entry still
            // names it (the logged record's parent hint), so a node deleted since is
            // not resurrected.
            let rec = match unframe(id, &e.value) {
                Ok(Stored::Inline(r)) => Some(r),
                Ok(Stored::InBlob(h)) => t
                    .blobs
                    .read_verified(&h)
                    .ok()
                    .and_then(|b| decode_body(id, &b).ok()),
                Err(_) => None,
            };
            let named = rec.as_ref().is_some_and(|r| {
                r.trash.is_none() && r.parent.is_some_and(|p| named_by(t, p, &r.name, id))
            });
            if !named {
                return Ok(changed);
            }
            let dir = path.parent().expect("node paths have a parent");
            fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
            File::create(&path).ctx(|| format!("create {}", path.display()))?;
            log::warn!("fsync log: node {id} was lost and is restored from the log");
            None
        }
        Err(err) => return Err(Error::io(format!("read record of {id}"), err)),
    };
    let older = match &current {
        None => true,
        Some(v) => stored_version(t, id, v).is_none_or(|have| have < e.version),
    };
    if older {
        if !path.is_file() {
            return Ok(changed); // a directory or something else: not ours to touch
        }
        xattr::set(&path, RECORD_XATTR, &e.value)
            .map_err(|err| Error::io(format!("write record of {id}"), err))?;
        changed = true;
    }
    Ok(changed)
}

/// Are all the blobs `rec` names present and whole?
fn record_whole(t: &Target<'_>, id: NodeId, rec: &NodeRecord) -> bool {
    let list: Vec<ChunkRef> = match &rec.content {
        Content::Empty | Content::Inline(_) => return true,
        Content::Chunks(v) => v.clone(),
        Content::Manifest(h) => match manifest(t, id, h) {
            Ok(v) => v,
            Err(_) => return false,
        },
    };
    list.iter().all(|c| t.blobs.read_verified(&c.hash).is_ok())
}

/// A blob a chain builds on, verified.
fn verified(t: &Target<'_>, id: NodeId, h: &super::node::Hash) -> Result<Vec<u8>> {
    t.blobs.read_verified(h).map_err(|fault| Error::Integrity {
        what: format!("blob {} of {id}", hash_hex(h)),
        detail: fault.to_string(),
    })
}

/// The chunk list of `id`'s manifest blob `h`, verified.
fn manifest(t: &Target<'_>, id: NodeId, h: &super::node::Hash) -> Result<Vec<ChunkRef>> {
    decode_manifest(id, &verified(t, id, h)?)
}

/// Apply a chain of deltas to node `node` if its record still has the chain's base
/// content; returns whether it did.
fn apply_chain(t: &Target<'_>, cs: u64, node: [u8; 16], chain: &[Delta]) -> Result<bool> {
    let id = NodeId(uuid::Uuid::from_bytes(node));
    let path = t.layout.node_path(id);
    let value = match xattr::get(&path, RECORD_XATTR) {
        Ok(Some(v)) => v,
        Ok(None) => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(format!("read record of {id}"), e)),
    };
    let mut rec: NodeRecord = match unframe(id, &value)? {
        Stored::Inline(r) => r,
        Stored::InBlob(h) => decode_body(id, &verified(t, id, &h)?)?,
    };
    let Some(first) = chain.first() else {
        return Ok(false);
    };
    if rec.kind != Kind::File {
        return Ok(false);
    }
    if chain_base(&rec.content, rec.size) != first.base {
        // A newer commit reached the disk: it holds these bytes, if it is whole. A
        // commit at close is not synced, so its record can reach the disk before its
        // blobs (ext4 with a journal commits the xattr and the blob's rename before
        // delayed data): then it never happened, and the chain rebuilds the file.
        if record_whole(t, id, &rec) {
            return Ok(false);
        }
        let Ok((content, size)) = postcard::from_bytes::<(Content, u64)>(&first.base) else {
            return Ok(false);
        };
        log::warn!(
            "fsync log: node {id}'s newer record names lost blobs; its fsynced content is rebuilt"
        );
        rec.content = content;
        rec.size = size;
    }
    // The base's chunks, and the bytes of every chunk the chain writes.
    let mut list: BTreeMap<u64, ChunkRef> = BTreeMap::new();
    let mut bytes: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    match &rec.content {
        Content::Empty => {}
        Content::Inline(d) => {
            bytes.insert(0, d.clone());
        }
        Content::Chunks(v) => list.extend(v.iter().map(|c| (c.index, c.clone()))),
        Content::Manifest(h) => {
            list.extend(manifest(t, id, h)?.into_iter().map(|c| (c.index, c)));
        }
    }
    let mut size = rec.size;
    let mut mtime = None;
    for d in chain {
        for (off, data) in &d.writes {
            let mut pos = *off;
            let mut rest = &data[..];
            while !rest.is_empty() {
                let idx = pos / cs;
                let a = (pos - idx * cs) as usize;
                let n = rest.len().min(cs as usize - a);
                let buf = match bytes.entry(idx) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(match list.get(&idx) {
                            Some(c) => verified(t, id, &c.hash)?,
                            None => Vec::new(),
                        })
                    }
                };
                if buf.len() < a + n {
                    buf.resize(a + n, 0);
                }
                buf[a..a + n].copy_from_slice(&rest[..n]);
                pos += n as u64;
                rest = &rest[n..];
            }
        }
        size = d.size;
        mtime = d.mtime.or(mtime);
    }
    // The new content, stored as a commit stores it.
    let only_first = list.keys().chain(bytes.keys()).all(|i| *i == 0);
    if size <= INLINE_DATA_MAX && only_first {
        let mut d = match (bytes.remove(&0), list.get(&0)) {
            (Some(b), _) => b,
            (None, Some(c)) => verified(t, id, &c.hash)?,
            (None, None) => Vec::new(),
        };
        d.resize(size as usize, 0);
        rec.stored = d.len() as u64;
        rec.content = inline_content(d);
    } else {
        for (idx, mut d) in bytes {
            d.truncate((size.saturating_sub(idx * cs)).min(cs) as usize);
            if d.iter().all(|b| *b == 0) {
                list.remove(&idx);
                continue;
            }
            t.blobs.restore(&d)?;
            list.insert(
                idx,
                ChunkRef {
                    index: idx,
                    hash: hash_of(&d),
                    len: d.len() as u32,
                },
            );
        }
        let v: Vec<ChunkRef> = list.into_values().collect();
        rec.stored = v.iter().map(|c| c.len as u64).sum();
        rec.content = chunks_content(v, |m| {
            t.blobs.restore(m)?;
            Ok(hash_of(m))
        })?;
    }
    rec.size = size;
    if let Some(t) = mtime {
        rec.mtime = t;
        rec.ctime = rec.ctime.max(t);
    }
    rec.version += 1;
    let body = encode_body(&rec);
    let value = if body.len() > INLINE_RECORD_LIMIT {
        t.blobs.restore(&body)?;
        frame(true, &hash_of(&body))
    } else {
        frame(false, &body)
    };
    xattr::set(&path, RECORD_XATTR, &value)
        .map_err(|e| Error::io(format!("write record of {id}"), e))?;
    Ok(true)
}

/// Replay every log of the store (the caller holds the writer lock), make the result
/// durable and delete the logs. Returns how many entries changed something.
pub(crate) fn recover(t: &Target<'_>) -> Result<usize> {
    let files = log_files(t.layout)?;
    if files.is_empty() {
        return Ok(0);
    }
    let mut applied = 0;
    let mut total = 0;
    // The last chain of each node, in log order: a full entry that ends chains (the
    // node's durable state from then on) drops it, a delta on another base starts anew.
    let mut chains: HashMap<[u8; 16], Vec<Delta>> = HashMap::new();
    let mut order: Vec<[u8; 16]> = Vec::new();
    for f in &files {
        let entries = read_entries(f)?;
        total += entries.len();
        for e in entries {
            match e {
                Logged::Full(e, ends) => {
                    if ends {
                        chains.remove(&e.node);
                    }
                    if apply(t, &e)? {
                        applied += 1;
                    }
                }
                Logged::Delta(d) => {
                    let c = chains.entry(d.node).or_insert_with(|| {
                        order.push(d.node);
                        Vec::new()
                    });
                    if c.first().is_some_and(|f| f.base != d.base) {
                        c.clear();
                    }
                    c.push(d);
                }
            }
        }
    }
    if !chains.is_empty() {
        let cs = t.layout.read_format()?.chunk_size as u64;
        for node in &order {
            // A node listed twice (its chain ended and another began) is done once.
            let Some(chain) = chains.remove(node) else {
                continue;
            };
            match apply_chain(t, cs, *node, &chain) {
                Ok(true) => applied += 1,
                Ok(false) => {}
                // The content the fsyncs wrote over cannot be read: the file keeps
                // that content, and fsck reports the damaged blob.
                Err(e @ Error::Integrity { .. }) => {
                    log::error!(
                        "fsync log: writes to {} not replayed: {e}",
                        NodeId(uuid::Uuid::from_bytes(*node))
                    )
                }
                Err(e) => return Err(e),
            }
        }
    }
    syncfs(&t.layout.root)?;
    for f in &files {
        fs::remove_file(f).ctx(|| format!("remove {}", f.display()))?;
    }
    sync_dir(&journal_dir(t.layout))?;
    if total > 0 {
        log::info!("fsync log: replayed {total} entries ({applied} changed the store)");
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::new_file;
    use crate::store::{OpenOptions, Store};

    fn scratch() -> (tempfile::TempDir, PathBuf, Store) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("store");
        Store::init(&p, 64 * 1024).unwrap();
        let s = Store::open(&p, OpenOptions::default()).unwrap();
        (dir, p, s)
    }

    /// A crash: the store goes away without its clean close, its log left as is.
    fn crash(mut s: Store) {
        std::mem::forget(s.fsync_log.take());
        drop(s);
    }

    fn record_value(s: &Store, id: NodeId) -> Vec<u8> {
        xattr::get(s.layout.node_path(id), RECORD_XATTR)
            .unwrap()
            .unwrap()
    }

    fn read_all(s: &Store, id: NodeId) -> Vec<u8> {
        s.read(id, 0, 4 << 20).unwrap()
    }

    /// Equal bytes, or where they first differ (not megabytes of both).
    fn same(got: &[u8], want: &[u8], what: &str) {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        assert!(
            at.is_none() && got.len() == want.len(),
            "{what}: {} bytes, {} wanted, first difference at {at:?}",
            got.len(),
            want.len()
        );
    }

    /// What a power cut after fsync can leave: the record and the blobs written since
    /// the last sync lost. Replay brings back exactly the fsynced content.
    #[test]
    fn replay_restores_what_fsync_logged() {
        let (_d, p, s) = scratch();
        let id = new_file(&s, "f");
        let before = record_value(&s, id);
        let data: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        s.write(id, 0, &data).unwrap();
        s.commit(id, true).unwrap();
        let log = journal_dir(&s.layout).join(format!("{}.log", s.epoch().unwrap()));
        assert_eq!(read_entries(&log).unwrap().len(), 1, "one fsync, one entry");
        // The cut: the record as before, the new blobs gone.
        let rec = s.read_record(id).unwrap();
        let hashes = Store::record_hashes(&rec);
        assert!(!hashes.is_empty());
        xattr::set(s.layout.node_path(id), RECORD_XATTR, &before).unwrap();
        for h in &hashes {
            fs::remove_file(s.local.path_of(h)).unwrap();
        }
        crash(s);
        let s = reopen_and_check(&p, id, &data);
        assert!(!pending(&s.layout).unwrap(), "replayed logs are deleted");
    }

    /// A newer record that reached the disk by itself is not rolled back, and a clean
    /// close leaves no log.
    #[test]
    fn replay_keeps_a_newer_record_and_clean_close_leaves_no_log() {
        let (_d, p, s) = scratch();
        let id = new_file(&s, "f");
        s.write(id, 0, b"first, fsynced").unwrap();
        s.commit(id, true).unwrap();
        s.write(id, 0, b"second, written").unwrap();
        s.commit(id, false).unwrap();
        crash(s);
        let s = Store::open(&p, OpenOptions::default()).unwrap();
        assert_eq!(read_all(&s, id), b"second, written");
        s.write(id, 0, b"third, fsynced!").unwrap();
        s.commit(id, true).unwrap();
        assert!(pending(&s.layout).unwrap());
        drop(s);
        let layout = Layout::new(&p);
        assert!(!pending(&layout).unwrap(), "a clean close deletes the log");
    }

    /// The node's file lost (never written back) while its name survived: replay makes
    /// it again; a node no entry names any more is not brought back.
    #[test]
    fn replay_recreates_a_lost_node_only_if_named() {
        let (_d, p, s) = scratch();
        let kept = new_file(&s, "kept");
        let gone = new_file(&s, "gone");
        for id in [kept, gone] {
            s.write(id, 0, b"content").unwrap();
            s.commit(id, true).unwrap();
        }
        let entry = s.layout.node_path(s.root()).join("gone");
        fs::remove_file(entry).unwrap();
        for id in [kept, gone] {
            fs::remove_file(s.layout.node_path(id)).unwrap();
        }
        crash(s);
        let s = Store::open(&p, OpenOptions::default()).unwrap();
        assert_eq!(read_all(&s, kept), b"content");
        assert!(!s.layout.node_path(gone).exists());
    }

    /// A torn last entry ends the log; entries before it still apply.
    #[test]
    fn torn_tail_is_ignored() {
        let (_d, _p, s) = scratch();
        let id = new_file(&s, "f");
        for i in 0..3u8 {
            s.write(id, 0, &[i; 10]).unwrap();
            s.commit(id, true).unwrap();
        }
        let log = journal_dir(&s.layout).join(format!("{}.log", s.epoch().unwrap()));
        let all = read_entries(&log).unwrap();
        assert_eq!(all.len(), 3);
        // Flip a byte in the last entry's payload.
        let f = fs::OpenOptions::new().write(true).open(&log).unwrap();
        let mut off = HEADER;
        for e in &all[..2] {
            let Logged::Full(e, _) = e else {
                panic!("a changed session's first fsync is a full entry")
            };
            off += (ENTRY_HEAD + e.encode().len()) as u64;
        }
        f.write_all_at(&[0xff], off + ENTRY_HEAD as u64 + 20)
            .unwrap();
        assert_eq!(read_entries(&log).unwrap().len(), 2);
    }

    /// The log is written (zeros) ahead of its entries a step at a time, never over an
    /// entry, and entries written across a step's end all replay.
    #[test]
    fn zeroed_ahead_in_steps_and_entries_cross_steps() {
        let (_d, p, s) = scratch();
        let id = new_file(&s, "f");
        let mut last = Vec::new();
        for i in 0..12u32 {
            // Incompressible-ish content so each entry carries ~600 KB of blobs.
            last = (0..600_000u32)
                .map(|j| (j.wrapping_mul(i + 7) % 253) as u8)
                .collect();
            s.write(id, 0, &last).unwrap();
            s.commit(id, true).unwrap();
            let log = s.fsync_log.as_ref().unwrap();
            let w = log.w.lock();
            assert!(w.zeroed >= w.off, "entries never pass the zeroed end");
            assert!(w.zeroed % ZERO_STEP == 0 || w.zeroed == GEN_END);
            let f = w.file.as_ref().unwrap();
            let mut tail = vec![1u8; (w.zeroed - w.off) as usize];
            f.read_exact_at(&mut tail, w.off).unwrap();
            assert!(tail.iter().all(|b| *b == 0), "beyond the last entry: zeros");
        }
        let log = journal_dir(&s.layout).join(format!("{}.log", s.epoch().unwrap()));
        assert_eq!(read_entries(&log).unwrap().len(), 12, "past two zero steps");
        let rec = s.read_record(id).unwrap();
        let hashes = Store::record_hashes(&rec);
        for h in &hashes {
            fs::remove_file(s.local.path_of(h)).unwrap();
        }
        crash(s);
        let s = Store::open(&p, OpenOptions::default()).unwrap();
        assert_eq!(read_all(&s, id), last);
    }

    fn kinds(s: &Store) -> (usize, usize) {
        let log = journal_dir(&s.layout).join(format!("{}.log", s.epoch().unwrap()));
        let all = read_entries(&log).unwrap();
        let full = all.iter().filter(|e| matches!(e, Logged::Full(..))).count();
        (full, all.len() - full)
    }

    fn pattern(seed: u32, len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(seed * 2 + 1) % 251) as u8)
            .collect()
    }

    /// Write `data` at `off` into `want` too (what the file must hold).
    fn write(s: &Store, id: NodeId, want: &mut Vec<u8>, off: usize, data: &[u8]) {
        s.write(id, off as u64, data).unwrap();
        if want.len() < off + data.len() {
            want.resize(off + data.len(), 0);
        }
        want[off..off + data.len()].copy_from_slice(data);
    }

    /// A file "db", open for writing, holding `first` committed (as a close would) and
    /// then fsynced: one full entry, its content durable in the record, so its next
    /// fsync after plain writes logs a delta on that content. (A new file's first fsync
    /// would log a delta on its empty record instead: `a_new_files_first_fsync_…`.)
    fn open_db(s: &Store, first: &[u8]) -> (NodeId, Vec<u8>) {
        let id = new_file(s, "db");
        s.open_write(id).unwrap();
        let mut want = Vec::new();
        write(s, id, &mut want, 0, first);
        s.commit(id, false).unwrap();
        s.commit(id, true).unwrap();
        (id, want)
    }

    fn reopen_and_check(p: &Path, id: NodeId, want: &[u8]) -> Store {
        let s = Store::open(p, OpenOptions::default()).unwrap();
        same(&read_all(&s, id), want, "the fsynced bytes, no others");
        assert_eq!(s.read_record(id).unwrap().size, want.len() as u64);
        let rep = s.fsck(false, std::time::Duration::ZERO, |_| {}).unwrap();
        assert!(rep.problems.is_empty(), "{:?}", rep.problems);
        s
    }

    /// An open file's later fsyncs log only what was written (deltas: across a chunk
    /// boundary, past the end), the record stays as the first fsync left it, and after
    /// a crash replay rebuilds exactly the fsynced content; a write never fsynced is gone.
    #[test]
    fn deltas_replay_what_was_fsynced() {
        let (_d, p, s) = scratch();
        let (id, mut want) = open_db(&s, &pattern(1, 150_000));
        let committed = record_value(&s, id);
        write(&s, id, &mut want, 130_000, &pattern(2, 5_000)); // crosses 131,072
        s.commit(id, true).unwrap();
        write(&s, id, &mut want, 149_000, &pattern(3, 20_000)); // past the end
        s.commit(id, true).unwrap();
        assert_eq!(kinds(&s), (1, 2), "one full entry, then deltas");
        assert_eq!(record_value(&s, id), committed, "a delta leaves the record");
        same(&read_all(&s, id), &want, "the session serves its bytes");
        s.write(id, 0, b"never fsynced").unwrap();
        crash(s);
        let s = reopen_and_check(&p, id, &want);
        assert!(!pending(&s.layout).unwrap());
    }

    /// A checkpoint (the log full) carries the live chain into a slot, alternating
    /// slots, and what the old generation held of it replays from there.
    #[test]
    fn a_checkpoint_carries_live_chains() {
        let (_d, p, s) = scratch();
        let id = new_file(&s, "db");
        let other = new_file(&s, "other");
        s.open_write(id).unwrap();
        let mut want = Vec::new();
        write(&s, id, &mut want, 0, &pattern(1, 100_000));
        // Committed, then fsynced: the chain starts on this content (one full entry).
        s.commit(id, false).unwrap();
        s.commit(id, true).unwrap();
        let log = s.fsync_log.as_ref().unwrap();
        let sync = || s.local.sync_filesystem();
        for round in 0..3u32 {
            write(
                &s,
                id,
                &mut want,
                1000 * round as usize,
                &pattern(round + 5, 3000),
            );
            s.commit(id, true).unwrap();
            s.write(other, 0, &pattern(round + 9, 2000)).unwrap();
            s.commit(other, true).unwrap();
            log.checkpoint_now(&sync).unwrap();
            assert_eq!(log.w.lock().slot, 1 + round as u64 % 2);
            assert_eq!(
                kinds(&s),
                (0, round as usize + 1),
                "only the chain is carried"
            );
        }
        write(&s, id, &mut want, 99_000, &pattern(8, 4000));
        s.commit(id, true).unwrap();
        assert_eq!(kinds(&s), (0, 4));
        crash(s);
        reopen_and_check(&p, id, &want);
    }

    /// Any commit ends the chain (the record holds its bytes): a newer record that
    /// reached the disk wins; if it did not, the chain rebuilds the fsynced content.
    /// An attribute change on the way does not stop a chain.
    #[test]
    fn a_commit_ends_a_chain_and_chmod_does_not() {
        for reached in [true, false] {
            let (_d, p, s) = scratch();
            let (id, mut want) = open_db(&s, &pattern(1, 3000));
            let durable = record_value(&s, id);
            write(&s, id, &mut want, 500, &pattern(2, 100));
            s.commit(id, true).unwrap();
            let fsynced = want.clone();
            s.update(id, |r| {
                r.mode = (r.mode & !0o7777) | 0o600;
                Ok(())
            })
            .unwrap();
            write(&s, id, &mut want, 2900, &pattern(3, 200));
            s.commit(id, false).unwrap(); // a flush: not durable
            assert!(s.fsync_log.as_ref().unwrap().w.lock().chains.is_empty());
            if !reached {
                // The cut lost the commit (and the chmod): the durable record is back.
                xattr::set(s.layout.node_path(id), RECORD_XATTR, &durable).unwrap();
            }
            crash(s);
            let s = reopen_and_check(&p, id, if reached { &want } else { &fsynced });
            if reached {
                assert_eq!(s.read_record(id).unwrap().mode & 0o7777, 0o600);
            }
        }
        // The chmod reached the disk, the chain's writes did not: they still apply.
        let (_d, p, s) = scratch();
        let (id, mut want) = open_db(&s, &pattern(1, 3000));
        write(&s, id, &mut want, 10, &pattern(2, 100));
        s.commit(id, true).unwrap();
        s.update(id, |r| {
            r.mode = (r.mode & !0o7777) | 0o600;
            Ok(())
        })
        .unwrap();
        assert_eq!(kinds(&s), (1, 1));
        crash(s);
        let s = reopen_and_check(&p, id, &want);
        assert_eq!(s.read_record(id).unwrap().mode & 0o7777, 0o600);
    }

    /// A new file's first fsync logs its record as stored (empty content, its mode) and
    /// the bytes written as a delta on it, made durable by one sync: no blob is stored
    /// or carried, the record is not touched. A power cut that loses the node's file
    /// (its name survived) gets both back from the log; a later fsync is a delta on
    /// the same chain, and a truncate before the first fsync makes it a full one.
    #[test]
    fn a_new_files_first_fsync_logs_its_record_and_a_delta() {
        let (_d, p, s) = scratch();
        let id = new_file(&s, "journal");
        s.update(id, |r| {
            r.mode = (r.mode & !0o7777) | 0o640;
            Ok(())
        })
        .unwrap();
        s.open_write(id).unwrap();
        let empty = record_value(&s, id);
        let mut want = Vec::new();
        write(&s, id, &mut want, 0, &pattern(1, 9000));
        s.commit(id, true).unwrap();
        assert_eq!(kinds(&s), (1, 1), "the record, then a delta");
        assert_eq!(record_value(&s, id), empty, "the record is not touched");
        write(&s, id, &mut want, 0, &pattern(2, 512));
        write(&s, id, &mut want, 9000, &pattern(3, 4096));
        s.commit(id, true).unwrap();
        assert_eq!(kinds(&s), (1, 2), "the same chain");
        same(&read_all(&s, id), &want, "the session serves its bytes");
        // The cut: the node's file never reached the disk.
        fs::remove_file(s.layout.node_path(id)).unwrap();
        crash(s);
        let s = reopen_and_check(&p, id, &want);
        assert_eq!(s.read_record(id).unwrap().mode & 0o7777, 0o640);

        drop(s);

        // Truncated (not a plain write) before its first fsync: committed in full.
        let (_d, _p, s) = scratch();
        let id = new_file(&s, "truncated");
        s.open_write(id).unwrap();
        s.truncate(id, 100).unwrap();
        s.write(id, 10, b"x").unwrap();
        s.commit(id, true).unwrap();
        assert_eq!(kinds(&s), (1, 0));
    }

    /// Deltas that grow an inline file past 24 chunks: replay stores a manifest.
    /// And a writer dropped with a live chain (its commit never ran) keeps its log.
    #[test]
    fn deltas_grow_an_inline_file_into_a_manifest_and_keep_the_log() {
        let (_d, p, s) = scratch();
        let (id, mut want) = open_db(&s, b"small");
        assert!(matches!(
            s.read_record(id).unwrap().content,
            Content::Inline(_)
        ));
        write(&s, id, &mut want, 3, &pattern(4, 800_000));
        s.commit(id, true).unwrap();
        write(&s, id, &mut want, 800_003, &pattern(5, 850_000));
        s.commit(id, true).unwrap();
        assert_eq!(kinds(&s), (1, 2));
        drop(s); // Drop closes the log, but the chain is live: it stays
        assert!(pending(&Layout::new(&p)).unwrap());
        let s = reopen_and_check(&p, id, &want);
        assert!(matches!(
            s.read_record(id).unwrap().content,
            Content::Manifest(_)
        ));
    }

    /// A truncate is not a write: the next fsync commits in full.
    #[test]
    fn a_truncate_makes_the_next_fsync_full() {
        let (_d, p, s) = scratch();
        let id = new_file(&s, "db");
        s.open_write(id).unwrap();
        let mut want = pattern(1, 10_000);
        s.write(id, 0, &want).unwrap();
        s.commit(id, true).unwrap();
        s.truncate(id, 4000).unwrap();
        want.truncate(4000);
        s.commit(id, true).unwrap();
        write(&s, id, &mut want, 3990, b"tail");
        s.commit(id, true).unwrap();
        // The new file's first fsync: its empty record and a delta; the truncate's: in
        // full; the tail: a delta on that.
        assert_eq!(kinds(&s), (2, 2));
        crash(s);
        reopen_and_check(&p, id, &want);
    }

    /// Seeded random streams of writes, fsyncs, flushes, truncates, chmods and
    /// checkpoints on one open file, then a crash: the file holds what its last commit
    /// or, if an fsync logged deltas after it, its last fsync left (a crash here loses
    /// nothing the backing filesystem had, so a non-durable commit survives too).
    #[test]
    fn random_streams_replay_to_the_last_commit_or_fsync() {
        for seed in 0..24u64 {
            let mut r = fastrand::Rng::with_seed(seed);
            let (_d, p, s) = scratch();
            let id = new_file(&s, "db");
            s.open_write(id).unwrap();
            let mut now: Vec<u8> = Vec::new();
            let mut expect = Vec::new();
            for step in 0..40 {
                match r.u32(0..100) {
                    0..=54 => {
                        let off = r.usize(0..(now.len() + 2000).min(300_000));
                        let n = if r.bool() {
                            r.usize(1..5000)
                        } else {
                            r.usize(1..70_000)
                        };
                        let mut d = vec![0u8; n];
                        r.fill(&mut d);
                        write(&s, id, &mut now, off, &d);
                    }
                    55..=79 => {
                        s.commit(id, true).unwrap();
                        expect = now.clone();
                    }
                    80..=87 => {
                        s.commit(id, false).unwrap();
                        expect = now.clone();
                    }
                    88..=92 => {
                        let n = r.usize(0..now.len() + 1000);
                        s.truncate(id, n as u64).unwrap();
                        now.resize(n, 0);
                    }
                    93..=96 => {
                        s.update(id, |rec| {
                            rec.mode ^= 0o4;
                            Ok(())
                        })
                        .unwrap();
                    }
                    _ => {
                        let log = s.fsync_log.as_ref().unwrap();
                        log.checkpoint_now(&|| s.local.sync_filesystem()).unwrap();
                    }
                }
                let _ = step;
            }
            crash(s);
            let s = Store::open(&p, OpenOptions::default()).unwrap();
            same(&read_all(&s, id), &expect, &format!("seed {seed}"));
            let rep = s.fsck(false, std::time::Duration::ZERO, |_| {}).unwrap();
            assert!(rep.problems.is_empty(), "seed {seed}: {:?}", rep.problems);
        }
    }

    /// Content can come back to a chain's base (a truncate to zero, fsynced): the full
    /// entry of that fsync ends the chain, which must not be replayed over it.
    #[test]
    fn a_later_durable_state_equal_to_the_base_ends_the_chain() {
        let (_d, p, s) = scratch();
        let id = new_file(&s, "db");
        s.open_write(id).unwrap();
        s.commit(id, true).unwrap(); // nothing written: the empty content is durable
        s.write(id, 0, b"secret").unwrap();
        s.commit(id, true).unwrap();
        assert_eq!(
            kinds(&s),
            (1, 1),
            "the write went as a delta on the empty base"
        );
        s.truncate(id, 0).unwrap();
        s.commit(id, true).unwrap();
        crash(s);
        reopen_and_check(&p, id, b"");
    }

    /// Attributes changed since the chain began: the next fsync commits in full (so it
    /// logs them). A record logged while the chain is live (fsyncdir after a chmod)
    /// does not end it.
    #[test]
    fn attribute_changes_are_logged_and_do_not_end_a_live_chain() {
        let (_d, p, s) = scratch();
        let (id, mut want) = open_db(&s, &pattern(1, 3000));
        write(&s, id, &mut want, 100, &pattern(2, 50));
        s.commit(id, true).unwrap();
        s.update(id, |r| {
            r.mode = (r.mode & !0o7777) | 0o600;
            Ok(())
        })
        .unwrap();
        s.sync_node(id).unwrap(); // what fsyncdir does for a child whose record changed
        assert_eq!(kinds(&s), (2, 1));
        let log = journal_dir(&s.layout).join(format!("{}.log", s.epoch().unwrap()));
        assert!(matches!(
            read_entries(&log).unwrap()[2],
            Logged::Full(_, false)
        ));
        crash(s);
        let s = reopen_and_check(&p, id, &want);
        assert_eq!(s.read_record(id).unwrap().mode & 0o7777, 0o600);
        s.open_write(id).unwrap();
        write(&s, id, &mut want, 10, b"x");
        s.commit(id, true).unwrap();
        s.update(id, |r| {
            r.mode = (r.mode & !0o7777) | 0o640;
            Ok(())
        })
        .unwrap();
        write(&s, id, &mut want, 20, b"y");
        s.commit(id, true).unwrap();
        assert_eq!(
            kinds(&s),
            (2, 0),
            "after the chmod the fsync commits in full"
        );
        crash(s);
        let s = reopen_and_check(&p, id, &want);
        assert_eq!(s.read_record(id).unwrap().mode & 0o7777, 0o640);
    }

    /// A clean close commits open sessions in full: no log is left. A log kept by a
    /// close (a live chain whose commit failed) is never written again.
    #[test]
    fn clean_close_commits_in_full_and_a_kept_log_stays_as_kept() {
        let (_d, p, s) = scratch();
        let (id, mut want) = open_db(&s, &pattern(1, 3000));
        write(&s, id, &mut want, 7, b"delta");
        s.commit(id, true).unwrap();
        assert_eq!(kinds(&s), (1, 1));
        s.commit_all().unwrap();
        s.close_fsync_log().unwrap();
        assert!(
            !pending(&s.layout).unwrap(),
            "committed in full, log deleted"
        );
        drop(s);
        let s = reopen_and_check(&p, id, &want);
        // A live chain at close keeps the log; a later fsync leaves it alone.
        let other = new_file(&s, "other");
        s.open_write(id).unwrap();
        write(&s, id, &mut want, 0, b"first");
        s.commit(id, true).unwrap();
        write(&s, id, &mut want, 2000, b"second");
        s.commit(id, true).unwrap();
        s.close_fsync_log().unwrap();
        let log = journal_dir(&s.layout).join(format!("{}.log", s.epoch().unwrap()));
        let kept = fs::read(&log).unwrap();
        s.write(other, 0, b"late").unwrap();
        s.commit(other, true).unwrap();
        assert!(fs::read(&log).unwrap() == kept, "the kept log is untouched");
        crash(s);
        reopen_and_check(&p, id, &want);
    }

    /// A log of the first format (no kind byte, no carried slots), as an older decofs
    /// left it at a crash, still replays.
    #[test]
    fn a_first_format_log_replays() {
        let (_d, p, s) = scratch();
        let id = new_file(&s, "f");
        let before = record_value(&s, id);
        s.write(id, 0, b"fsynced by an older decofs").unwrap();
        s.commit(id, true).unwrap();
        let log = journal_dir(&s.layout).join(format!("{}.log", s.epoch().unwrap()));
        let Logged::Full(e, _) = read_entries(&log).unwrap().remove(0) else {
            panic!("a full entry")
        };
        xattr::set(s.layout.node_path(id), RECORD_XATTR, &before).unwrap();
        crash(s);
        let mut v1 = MAGIC_V1.to_vec();
        v1.extend_from_slice(&7u64.to_le_bytes());
        v1.extend_from_slice(&checksum(7, MAGIC_V1));
        v1.resize(HEADER as usize, 0);
        v1.extend_from_slice(&framed(7, &e.encode()[1..]));
        fs::write(&log, &v1).unwrap();
        reopen_and_check(&p, id, b"fsynced by an older decofs");
    }

    /// A commit at close reached the disk without its blobs (a journal committed the
    /// record before delayed data): replay treats it as lost and rebuilds the
    /// fsynced content from the chain.
    #[test]
    fn a_newer_record_without_its_blobs_does_not_hide_the_chain() {
        let (_d, p, s) = scratch();
        let (id, mut want) = open_db(&s, &pattern(1, 150_000));
        write(&s, id, &mut want, 70_000, &pattern(2, 3000));
        s.commit(id, true).unwrap();
        s.write(id, 0, b"closed, never fsynced").unwrap();
        s.commit(id, false).unwrap();
        let rec = s.read_record(id).unwrap();
        for h in Store::record_hashes(&rec) {
            if !s.local.path_of(&h).exists() {
                continue;
            }
            fs::write(s.local.path_of(&h), b"").unwrap(); // as the cut left them
        }
        crash(s);
        reopen_and_check(&p, id, &want);
    }
}
