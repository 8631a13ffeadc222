//! The fsync log's writer: appends with group commit, checkpoints, chains, names, close.

use super::format::{
    framed, header, slot_off, NameOp, Payload, ENTRY_HEAD, KIND_FULL, KIND_FULL_KEEP,
};
use super::*;

/// A name of a directory: (parent, name).
pub type NameKey = ([u8; 16], Vec<u8>);

/// A new file's name to log with it, and the check, made under the log's lock, that the
/// entry still names the file.
pub type NewName<'a> = (NameOp, &'a dyn Fn(&NameOp) -> bool);

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
    /// Names the current generation holds (a name record and no tombstone after it):
    /// their every change is logged from then on.
    pub(super) names: HashMap<NameKey, [u8; 16]>,
    /// Names the current generation has any record of: a node bound to one of them
    /// again (rename, link, restore) is logged, or replay would take the entry for one
    /// the log removed.
    pub(super) touched: std::collections::HashSet<NameKey>,
    /// The file may hold name records of its current generation (set before one is
    /// written, cleared by a checkpoint): a break then voids them (`void_names`).
    pub(super) named: bool,
    /// The log's names are void (its marker is durable): replay ignores them.
    pub(super) voided: bool,
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
    /// Set when the log could not be written or synced (never cleared): nothing is
    /// appended any more, fsync and fsyncdir take the old paths (`break_log`).
    pub(super) broken: AtomicBool,
    /// The marker that voids the log's names (`void_path`).
    pub(super) void: PathBuf,
}

pub(super) fn fdatasync(f: &File) -> std::io::Result<()> {
    crate::blocking::soon();
    f.sync_data()
}

impl FsyncLog {
    /// The log of the writer holding `epoch`. Nothing is created until the first fsync.
    pub fn new(layout: &Layout, epoch: u64) -> FsyncLog {
        let dir = journal_dir(layout);
        let path = dir.join(format!("{epoch}.log"));
        FsyncLog {
            void: void_path(&path),
            path,
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
                names: HashMap::new(),
                touched: Default::default(),
                named: false,
                voided: false,
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
        // The syncfs made every name durable; the new generation's replay knows none.
        w.names.clear();
        w.touched.clear();
        w.named = false;
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
        self.append_checked(vec![Payload::chain(d)], None, sync_store)
    }

    /// Log the record of a file whose stored content is empty and, after it, a delta on
    /// that empty content (the first fsync of a new file), made durable by one sync.
    /// `Ok(false)`: the delta would pass its chain's budget, nothing was logged.
    /// `name`: the file's new name, logged with it if `still_named` says so under the
    /// log's lock (see [`FsyncLog::append_named`]).
    pub fn append_with_delta(
        &self,
        entry: &Entry,
        d: &Delta,
        name: Option<NewName<'_>>,
        sync_store: &dyn Fn() -> Result<()>,
    ) -> Result<bool> {
        debug_assert_eq!(entry.node, d.node);
        let first = Payload {
            bytes: entry.encode(),
            node: entry.node,
            chain: None,
            name: None,
        };
        let mut v: Vec<Payload> = name.iter().map(|(n, _)| Payload::name(n)).collect();
        v.push(first);
        v.push(Payload::chain(d));
        let check = name.map(|(_, c)| c);
        self.append_checked(v, check, sync_store)
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
        self.append_named(entry, None, sync_store)
    }

    /// `append`, with the file's new name (`name`) logged before it, if `still_named`
    /// says under the log's lock that the name still names the file (a rename logs
    /// its changes under the same lock, so the log never holds a name already gone).
    pub fn append_named(
        &self,
        entry: &Entry,
        name: Option<NewName<'_>>,
        sync_store: &dyn Fn() -> Result<()>,
    ) -> Result<()> {
        let p = Payload {
            bytes: entry.encode(),
            node: entry.node,
            chain: None,
            name: None,
        };
        let mut v: Vec<Payload> = name.iter().map(|(n, _)| Payload::name(n)).collect();
        v.push(p);
        let check = name.map(|(_, c)| c);
        self.append_checked(v, check, sync_store).map(|_| ())
    }

    /// Does the log hold `key` as a name of a node now?
    pub fn holds_name(&self, key: &NameKey) -> bool {
        self.w.lock().names.contains_key(key)
    }

    /// Names that stopped naming a node (unlink, rename): `removed` (key, node) lost
    /// their node, `added` is the name a rename gave to the node of `removed[0]`.
    /// Appended in order, without a sync (the next sync of the log carries them).
    /// Returns which of `removed` the log held (now tombstoned), and whether `added` is
    /// logged: it is when the node's old name was a logged one (then a name `added`
    /// displaced is tombstoned too, logged or not, so replay knows it is stale).
    pub fn names_changed(
        &self,
        removed: &[(NameKey, [u8; 16])],
        added: Option<&NameKey>,
        sync_store: &dyn Fn() -> Result<()>,
    ) -> Result<(Vec<bool>, bool)> {
        let res = self.try_names_changed(removed, added, sync_store);
        self.failed(res, sync_store)
    }

    fn try_names_changed(
        &self,
        removed: &[(NameKey, [u8; 16])],
        added: Option<&NameKey>,
        sync_store: &dyn Fn() -> Result<()>,
    ) -> Result<(Vec<bool>, bool)> {
        let mut w = self.w.lock();
        let held: Vec<bool> = removed
            .iter()
            .map(|(k, n)| w.names.get(k) == Some(n))
            .collect();
        let moved = added.filter(|a| held.first() == Some(&true) || w.touched.contains(*a));
        let mut ops = Vec::new();
        for ((k, n), h) in removed.iter().zip(&held) {
            if *h || moved.is_some_and(|a| a == k) {
                ops.push(NameOp {
                    parent: k.0,
                    name: k.1.clone(),
                    node: *n,
                    bound: false,
                });
            }
        }
        if let Some(a) = moved {
            ops.push(NameOp {
                parent: a.0,
                name: a.1.clone(),
                node: removed[0].1,
                bound: true,
            });
        }
        if ops.is_empty() || w.file.is_none() {
            return Ok((held, false));
        }
        let payloads = ops.iter().map(Payload::name).collect();
        self.write_locked(&mut w, payloads, None, sync_store)?;
        Ok((held, moved.is_some()))
    }

    /// A name bound to `node` by a link or a restore: logged (without a sync) if the log
    /// has a record of that name. Returns whether it was.
    pub fn name_bound(
        &self,
        key: &NameKey,
        node: [u8; 16],
        sync_store: &dyn Fn() -> Result<()>,
    ) -> Result<bool> {
        let res = (|| {
            let mut w = self.w.lock();
            if !w.touched.contains(key) || w.file.is_none() {
                return Ok(false);
            }
            let op = NameOp {
                parent: key.0,
                name: key.1.clone(),
                node,
                bound: true,
            };
            self.write_locked(&mut w, vec![Payload::name(&op)], None, sync_store)
                .map(|_| true)
        })();
        self.failed(res, sync_store)
    }

    /// Make everything appended so far durable (tombstones appended without a sync).
    pub fn sync_pending(&self, sync_store: &dyn Fn() -> Result<()>) -> Result<()> {
        let end = self.lsn.load(Ordering::SeqCst);
        let res = self.sync_to(end);
        self.failed(res, sync_store)
    }

    /// `res`, the log broken if it is an error. Every failure of the log comes here.
    fn failed<T>(&self, res: Result<T>, sync_store: &dyn Fn() -> Result<()>) -> Result<T> {
        if res.is_err() {
            self.break_log(sync_store);
        }
        res
    }

    /// The log failed: nothing is appended from now on, so no later change of a name
    /// it holds can be logged, and a replay of it could bind again a name removed
    /// since (an old journal of a database) or remove one bound again. So if it holds
    /// names, they are voided (`void_names`). Its records and chains stay: a chain's
    /// bytes may be nowhere else.
    fn break_log(&self, sync_store: &dyn Fn() -> Result<()>) {
        self.broken.store(true, Ordering::SeqCst);
        if let Err(e) = self.void_names(sync_store) {
            // Tried again at the next name change (`DirSync::names_changed`).
            log::error!("fsync log: its names could not be voided: {e}");
        }
    }

    /// Void the names of a broken log: make the store durable (syncfs: every name
    /// change the log records was made in the store before it was logged, so each is
    /// durable in the store itself from then on), then write and sync a marker
    /// (`journal/<epoch>.names-void`) that makes replay ignore every name record and
    /// tombstone of this log. Done once; nothing to do for a log that is not broken
    /// or holds no names. Under the writer's lock, and the log refuses appends once
    /// broken, so no name is logged after the syncfs.
    pub fn void_names(&self, sync_store: &dyn Fn() -> Result<()>) -> Result<()> {
        if !self.broken.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut w = self.w.lock();
        if w.voided || !w.named {
            return Ok(());
        }
        sync_store()?;
        let write = || -> std::io::Result<()> {
            let f = File::create(&self.void)?;
            f.sync_all()
        };
        write().ctx(|| format!("write {}", self.void.display()))?;
        sync_dir(&self.dir)?;
        w.voided = true;
        w.names.clear();
        w.touched.clear();
        log::warn!(
            "fsync log {} failed: its names are voided (the store was synced)",
            self.path.display()
        );
        Ok(())
    }

    /// Does the log's file name names that replay will not follow? (tests)
    #[cfg(test)]
    pub(crate) fn names_voided(&self) -> bool {
        self.w.lock().voided && self.void.exists()
    }

    /// Make every later write of the log fail (tests: a device error).
    #[cfg(test)]
    pub(crate) fn fail_writes(&self) {
        let mut w = self.w.lock();
        w.file = Some(File::open(&self.path).unwrap());
    }

    /// `append_payloads`, marking the log broken on failure.
    pub(super) fn append_checked(
        &self,
        payloads: Vec<Payload>,
        still_named: Option<&dyn Fn(&NameOp) -> bool>,
        sync_store: &dyn Fn() -> Result<()>,
    ) -> Result<bool> {
        let res = self.append_payloads(payloads, still_named, sync_store);
        self.failed(res, sync_store)
    }

    /// Append payloads (in order, none or all) and wait until they are durable.
    /// `Ok(false)`: a delta over its chain's budget, nothing written.
    pub(super) fn append_payloads(
        &self,
        payloads: Vec<Payload>,
        still_named: Option<&dyn Fn(&NameOp) -> bool>,
        sync_store: &dyn Fn() -> Result<()>,
    ) -> Result<bool> {
        let end = {
            let mut w = self.w.lock();
            match self.write_locked(&mut w, payloads, still_named, sync_store)? {
                Some(end) => end,
                None => return Ok(false),
            }
        };
        self.sync_to(end)?;
        Ok(true)
    }

    /// Write payloads (in order, none or all) under the writer's lock, not synced; a
    /// name payload only if `still_named` says so. Returns the log position after
    /// them, or None: a delta over its chain's budget, nothing written.
    fn write_locked(
        &self,
        w: &mut Writer,
        mut payloads: Vec<Payload>,
        still_named: Option<&dyn Fn(&NameOp) -> bool>,
        sync_store: &dyn Fn() -> Result<()>,
    ) -> Result<Option<u64>> {
        if w.closed {
            // After close (a late fsync of a lazily unmounted store): never make
            // the file again, it may hold chains kept for replay.
            return Err(Error::Invalid("fsync log closed"));
        }
        if self.broken.load(Ordering::SeqCst) {
            // A caller that found the log usable before it broke: after a break the
            // log takes no name (see `void_names`), and nothing else either.
            return Err(Error::Invalid("fsync log broken"));
        }
        payloads.retain(|p| match (&p.name, still_named) {
            (Some(n), Some(check)) if n.bound => {
                !w.names.contains_key(&(n.parent, n.name.clone())) && check(n)
            }
            _ => true,
        });
        let lens: Vec<u64> = payloads
            .iter()
            .map(|p| (ENTRY_HEAD + p.bytes.len()) as u64)
            .collect();
        let total: u64 = lens.iter().sum();
        if total > GEN_END - HEADER {
            return Err(Error::Invalid("fsync log entry too large"));
        }
        {
            for (p, len) in payloads.iter_mut().zip(&lens) {
                match &p.chain {
                    None if p.name.is_some() => {}
                    None if w.chains.contains_key(&p.node) && p.bytes[0] == KIND_FULL => {
                        p.bytes[0] = KIND_FULL_KEEP
                    }
                    None => {}
                    Some(base) => {
                        // A chain on another base (the file was committed since) starts
                        // over.
                        let same = w.chains.get(&p.node).filter(|c| &c.base == base);
                        let have = same.map_or(0, |c| c.bytes);
                        let others = w.chain_bytes - w.chains.get(&p.node).map_or(0, |c| c.bytes);
                        let n = *len as usize;
                        if have + n > CHAIN_MAX || others + have + n > CHAINS_MAX {
                            return Ok(None);
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
                self.checkpoint(w, sync_store)?;
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
            // Set before the write: a failed write may still leave the record whole.
            w.named |= payloads.iter().any(|p| p.name.is_some());
            for (p, len) in payloads.into_iter().zip(lens) {
                let f = w.file.as_ref().expect("created above");
                f.write_all_at(&framed(w.gen, &p.bytes), w.off)
                    .ctx(|| format!("write {}", self.path.display()))?;
                w.off += len;
                if let Some(n) = &p.name {
                    let key = (n.parent, n.name.clone());
                    w.touched.insert(key.clone());
                    if n.bound {
                        w.names.insert(key, n.node);
                    } else {
                        w.names.remove(&key);
                    }
                }
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
            Ok(Some(self.lsn.fetch_add(total, Ordering::SeqCst) + total))
        }
    }

    /// Wait until the log is durable up to `end` (group commit: one fdatasync covers
    /// every entry appended before it started).
    fn sync_to(&self, end: u64) -> Result<()> {
        if self.synced.load(Ordering::SeqCst) >= end {
            return Ok(());
        }
        let _g = self.sync_lock.lock();
        if self.synced.load(Ordering::SeqCst) >= end {
            return Ok(());
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
        Ok(())
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
        // The marker after its log: a marker left alone is harmless (epochs never
        // repeat), a log left without its marker would not be.
        remove_void(&self.void)?;
        sync_dir(&self.dir)
    }
}
