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
//!   [`CARRY_MAX`]; beyond that those blobs are fsynced first, as before).
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
//! Layout of a log: a 4 KiB header (`MAGIC`, generation, checksum), then entries:
//! `len u32 | generation u64 | blake3(generation, payload)[..16] | payload`, where the
//! payload is `node [16] | version u64 | value_len u32 | value | count u32 |
//! (blob_len u32 | blob)*` (little-endian; hand-framed because serde writes a byte
//! vector one element at a time).

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::blob::{hash_of, syncfs};
use super::check::read_verified;
use super::error::{Error, IoContext, Result};
use super::layout::{sync_dir, Layout};
use super::node::{decode_body, hash_hex, unframe, NodeId, Stored, RECORD_XATTR};

/// Size of a log file (preallocated). Entries carry small files' blobs whole, so a
/// busy sqlite database fills it every few hundred commits; then one syncfs.
pub const LOG_BYTES: u64 = 64 << 20;
/// An entry carries at most this many bytes of blobs; a bigger fsync syncs its blobs.
pub const CARRY_MAX: usize = 1 << 20;
const HEADER: u64 = 4096;
/// The log is written with zeros this far ahead of its entries. posix_fallocate
/// reserves the space as unwritten extents, and the first write into one changes the
/// extent tree, which each fdatasync would then write too (measured on the bench disk:
/// 314–419 µs per 10 KB append and fdatasync into fallocated space, 188–216 µs into
/// space written before). Zeroing a step at a time moves that cost to one sync per step.
const ZERO_STEP: u64 = 4 << 20;
const MAGIC: &[u8; 16] = b"decofs-fsynclog1";
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

impl Entry {
    fn encode(&self) -> Vec<u8> {
        let n: usize = self.blobs.iter().map(|b| 4 + b.len()).sum();
        let mut v = Vec::with_capacity(16 + 8 + 4 + self.value.len() + 4 + n);
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

    fn decode(mut p: &[u8]) -> Option<Entry> {
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

fn header(gen: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER as usize);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&gen.to_le_bytes());
    v.extend_from_slice(&checksum(gen, MAGIC));
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
        f.write_all_at(&header(1), 0)
            .ctx(|| format!("write {}", self.path.display()))?;
        f.sync_all()
            .ctx(|| format!("sync {}", self.path.display()))?;
        sync_dir(&self.dir)?;
        sync_dir(&self.root)?;
        Ok(f)
    }

    /// Make everything durable (syncfs) and start a new generation. `w` is locked.
    fn checkpoint(&self, w: &mut Writer, sync_store: &dyn Fn() -> Result<()>) -> Result<()> {
        sync_store()?;
        self.synced
            .fetch_max(self.lsn.load(Ordering::SeqCst), Ordering::SeqCst);
        if let Some(f) = &w.file {
            let gen = w.gen + 1;
            f.write_all_at(&header(gen), 0)
                .ctx(|| format!("write {}", self.path.display()))?;
            fdatasync(f).ctx(|| format!("sync {}", self.path.display()))?;
            w.gen = gen;
            w.off = HEADER;
        }
        Ok(())
    }

    /// Append `entry` and return once it is durable. `sync_store` makes the whole store
    /// durable (used when the log is full). Any failure marks the log broken.
    pub fn append(&self, entry: &Entry, sync_store: &dyn Fn() -> Result<()>) -> Result<()> {
        let res = self.append_inner(entry, sync_store);
        if res.is_err() {
            self.broken.store(true, Ordering::SeqCst);
        }
        res
    }

    fn append_inner(&self, entry: &Entry, sync_store: &dyn Fn() -> Result<()>) -> Result<()> {
        let payload = entry.encode();
        let len = (ENTRY_HEAD + payload.len()) as u64;
        if len > LOG_BYTES - HEADER {
            return Err(Error::Invalid("fsync log entry too large"));
        }
        let end = {
            let mut w = self.w.lock().unwrap();
            if w.file.is_none() {
                w.file = Some(self.create()?);
                w.gen = 1;
                w.off = HEADER;
                w.zeroed = HEADER;
            }
            if w.off + len > LOG_BYTES {
                self.checkpoint(&mut w, sync_store)?;
            }
            if w.off + len > w.zeroed {
                let to = (w.off + len)
                    .div_ceil(ZERO_STEP)
                    .saturating_mul(ZERO_STEP)
                    .min(LOG_BYTES);
                let zeros = vec![0u8; (to - w.zeroed) as usize];
                let f = w.file.as_ref().expect("created above");
                f.write_all_at(&zeros, w.zeroed)
                    .ctx(|| format!("write {}", self.path.display()))?;
                w.zeroed = to;
            }
            let mut buf = Vec::with_capacity(len as usize);
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&w.gen.to_le_bytes());
            buf.extend_from_slice(&checksum(w.gen, &payload));
            buf.extend_from_slice(&payload);
            let f = w.file.as_ref().expect("created above");
            f.write_all_at(&buf, w.off)
                .ctx(|| format!("write {}", self.path.display()))?;
            w.off += len;
            self.lsn.fetch_add(len, Ordering::SeqCst) + len
        };
        if self.synced.load(Ordering::SeqCst) >= end {
            return Ok(());
        }
        let _g = self.sync_lock.lock().unwrap();
        if self.synced.load(Ordering::SeqCst) >= end {
            return Ok(());
        }
        let target = self.lsn.load(Ordering::SeqCst);
        let f = {
            let w = self.w.lock().unwrap();
            w.file
                .as_ref()
                .expect("created above")
                .try_clone()
                .ctx(|| "clone the fsync log".into())?
        };
        fdatasync(&f).ctx(|| format!("sync {}", self.path.display()))?;
        self.synced.fetch_max(target, Ordering::SeqCst);
        Ok(())
    }

    /// Clean close: make everything durable and delete the log.
    pub fn close(&self, sync_store: &dyn Fn() -> Result<()>) -> Result<()> {
        let mut w = self.w.lock().unwrap();
        if w.file.is_none() {
            return Ok(());
        }
        sync_store()?;
        w.file = None;
        fs::remove_file(&self.path).ctx(|| format!("remove {}", self.path.display()))?;
        sync_dir(&self.dir)
    }
}

/// The entries of one log file that belong to its current generation, in order. A torn
/// or stale entry ends the log.
fn read_entries(path: &Path) -> Result<Vec<Entry>> {
    let data = fs::read(path).ctx(|| format!("read {}", path.display()))?;
    let mut out = Vec::new();
    if data.len() < HEADER as usize || &data[..16] != MAGIC {
        return Ok(out); // created but never written: nothing was logged
    }
    let gen = u64::from_le_bytes(data[16..24].try_into().unwrap());
    if data[24..40] != checksum(gen, MAGIC) {
        return Ok(out);
    }
    let mut off = HEADER as usize;
    while off + ENTRY_HEAD <= data.len() {
        let len = u32::from_le_bytes(data[off..off + 4].try_into().unwrap()) as usize;
        let egen = u64::from_le_bytes(data[off + 4..off + 12].try_into().unwrap());
        let sum = &data[off + 12..off + 28];
        let start = off + ENTRY_HEAD;
        if egen != gen || len == 0 || start + len > data.len() {
            break;
        }
        let payload = &data[start..start + len];
        if sum != checksum(gen, payload) {
            break;
        }
        match Entry::decode(payload) {
            Some(e) => out.push(e),
            None => break,
        }
        off = start + len;
    }
    Ok(out)
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

/// Version of the record stored in `value` (None: unreadable).
fn stored_version(layout: &Layout, id: NodeId, value: &[u8]) -> Option<u64> {
    match unframe(id, value).ok()? {
        Stored::Inline(r) => Some(r.version),
        Stored::InBlob(h) => {
            let body = read_verified(layout, &h).ok()?;
            decode_body(id, &body).ok().map(|r| r.version)
        }
    }
}

/// Does an entry of the directory `parent` still name `id` as `name`?
fn named_by(layout: &Layout, parent: NodeId, name: &[u8], id: NodeId) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let entry = layout
        .node_path(parent)
        .join(std::ffi::OsStr::from_bytes(name));
    fs::read_link(entry)
        .ok()
        .and_then(|t| Layout::parse_entry_target(&t))
        == Some(id)
}

/// Write a carried blob unless a good copy is in place.
fn restore_blob(layout: &Layout, data: &[u8]) -> Result<bool> {
    let h = hash_of(data);
    let path = layout.blob_path(&hash_hex(&h));
    if read_verified(layout, &h).is_ok() {
        return Ok(false);
    }
    let dir = path.parent().expect("blob paths have a parent");
    fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
    let tmp = layout
        .sessions()
        .join(format!("blob.{}.replay.tmp", std::process::id()));
    fs::write(&tmp, data).ctx(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, &path).ctx(|| format!("install {}", path.display()))?;
    Ok(true)
}

/// Apply one entry; returns whether it changed anything.
fn apply(layout: &Layout, e: &Entry) -> Result<bool> {
    let id = NodeId(uuid::Uuid::from_bytes(e.node));
    let mut changed = false;
    for b in &e.blobs {
        changed |= restore_blob(layout, b)?;
    }
    let path = layout.node_path(id);
    let current = match xattr::get(&path, RECORD_XATTR) {
        Ok(v) => v,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            // The node's file did not survive. Bring it back only if an entry still
            // names it (the logged record's parent hint), so a node deleted since is
            // not resurrected.
            let rec = match unframe(id, &e.value) {
                Ok(Stored::Inline(r)) => Some(r),
                Ok(Stored::InBlob(h)) => read_verified(layout, &h)
                    .ok()
                    .and_then(|b| decode_body(id, &b).ok()),
                Err(_) => None,
            };
            let named = rec.as_ref().is_some_and(|r| {
                r.trash.is_none() && r.parent.is_some_and(|p| named_by(layout, p, &r.name, id))
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
        Some(v) => stored_version(layout, id, v).is_none_or(|have| have < e.version),
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

/// Replay every log of the store (the caller holds the writer lock), make the result
/// durable and delete the logs. Returns how many entries changed something.
pub fn recover(layout: &Layout) -> Result<usize> {
    let files = log_files(layout)?;
    if files.is_empty() {
        return Ok(0);
    }
    let mut applied = 0;
    let mut total = 0;
    for f in &files {
        let entries = read_entries(f)?;
        total += entries.len();
        for e in &entries {
            if apply(layout, e)? {
                applied += 1;
            }
        }
    }
    syncfs(&layout.root)?;
    for f in &files {
        fs::remove_file(f).ctx(|| format!("remove {}", f.display()))?;
    }
    sync_dir(&journal_dir(layout))?;
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
        s.read(id, 0, 1 << 20).unwrap()
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
            fs::remove_file(s.blobs.path_of(h)).unwrap();
        }
        crash(s);
        let s = Store::open(&p, OpenOptions::default()).unwrap();
        assert_eq!(read_all(&s, id), data);
        assert!(!pending(&s.layout).unwrap(), "replayed logs are deleted");
        let rep = s.fsck(false, std::time::Duration::ZERO, |_| {}).unwrap();
        assert!(rep.problems.is_empty(), "{:?}", rep.problems);
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
            let w = log.w.lock().unwrap();
            assert!(w.zeroed >= w.off, "entries never pass the zeroed end");
            assert!(w.zeroed % ZERO_STEP == 0 || w.zeroed == LOG_BYTES);
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
            fs::remove_file(s.blobs.path_of(h)).unwrap();
        }
        crash(s);
        let s = Store::open(&p, OpenOptions::default()).unwrap();
        assert_eq!(read_all(&s, id), last);
    }
}
