//! The fsync log's writer: appends with group commit, checkpoints, chains, close.

use super::format::{framed, header, slot_off, Payload, ENTRY_HEAD, KIND_FULL_KEEP};
use super::*;

pub(super) struct Writer {
    pub(super) file: Option<File>,
    pub(super) gen: u64,
    pub(super) off: u64,
    /// The file holds written (zero or entry) blocks up to here (see `ZERO_STEP`).
    pub(super) zeroed: u64,
    /// The carried slot the header names (0: none, 1 or 2).
    pub(super) slot: u64,
    /// Live chains by node: their base and their entries' payloads, in order.
    pub(super) chains: HashMap<[u8; 16], Chain>,
    /// Bytes of all live chains' entries (heads included).
    pub(super) chain_bytes: usize,
    /// Closed (clean close): nothing is appended any more.
    pub(super) closed: bool,
}

pub(super) struct Chain {
    pub(super) base: Vec<u8>,
    pub(super) payloads: Vec<Vec<u8>>,
    pub(super) bytes: usize,
}

pub struct FsyncLog {
    pub(super) dir: PathBuf,
    pub(super) path: PathBuf,
    pub(super) root: PathBuf,
    pub(super) w: Mutex<Writer>,
    /// Bytes ever appended (across generations), and how many of them are durable.
    pub(super) lsn: AtomicU64,
    pub(super) synced: AtomicU64,
    /// One fdatasync at a time; the others wait and usually find their entry covered.
    pub(super) sync_lock: Mutex<()>,
    /// Set when the log could not be written or synced: fsync then takes the old path.
    pub(super) broken: AtomicBool,
}

pub(super) fn fdatasync(f: &File) -> std::io::Result<()> {
    f.sync_data()
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

    pub(super) fn create(&self) -> Result<File> {
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
    pub(super) fn checkpoint(
        &self,
        w: &mut Writer,
        sync_store: &dyn Fn() -> Result<()>,
    ) -> Result<()> {
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
    pub(super) fn append_checked(
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
    pub(super) fn append_payloads(
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
