//! Committing a session: seal, store the manifest, swap the record once (invariants 1
//! and 4); an fsync that only wrote since the last durable state logs a delta instead.

use super::read::append_padded;
use super::*;

/// An fsync logs a delta of at most this many written ranges (else it commits).
pub(super) const DELTA_RANGES_MAX: usize = 4096;

impl Data<'_> {
    /// Make the session's content the record's content. `durable` (fsync) also makes
    /// the blobs and the record reach the disk before returning.
    pub fn commit(&self, id: NodeId, durable: bool) -> Result<()> {
        let Some(s) = self.sessions.get(id) else {
            if durable {
                self.fsync.sync_node(id)?;
            }
            return Ok(());
        };
        let mut s = s.lock();
        self.commit_locked(id, &mut s, durable)
    }

    /// `commit` with the session already locked by the caller. A durable commit of a
    /// session that only wrote since its content was last made durable logs a delta
    /// (`fsynclog` module doc) and leaves the record as it is.
    pub(crate) fn commit_locked(&self, id: NodeId, s: &mut Session, durable: bool) -> Result<()> {
        if !s.changed {
            if durable {
                self.fsync.sync_node(id)?;
                if s.chain.is_none() {
                    // The record is durable now and the session holds nothing else.
                    let rec = self.records.read(id)?;
                    s.chain = Some((
                        crate::store::fsynclog::chain_base(&rec.content, rec.size),
                        rec.version,
                    ));
                    s.unlogged.clear();
                }
            }
            return Ok(());
        }
        if durable {
            if let Some((base, version)) = s.chain.clone() {
                if self.records.read(id)?.version == version && self.log_delta(id, s, base)? {
                    return Ok(());
                }
            } else if s.from_empty && self.log_first_delta(id, s)? {
                return Ok(());
            }
        }
        // Inline content was just read whole, so every byte of it was written or verified.
        let mut inline = false;
        let content = if s.size <= INLINE_DATA_MAX
            && s.chunks.keys().chain(s.dirty.keys()).all(|i| *i == 0)
        {
            let mut data = Vec::with_capacity(s.size as usize);
            if s.dirty.contains_key(&0) {
                self.read_dirty(id, s, 0, 0, s.size as usize, &mut data)?;
            } else if let Some(c) = s.chunks.get(&0) {
                append_padded(&mut data, &self.load_chunk(id, c)?, 0, s.size as usize);
            } else {
                data.resize(s.size as usize, 0);
            }
            inline = true;
            inline_content(data)
        } else {
            self.seal_all(id, s)?;
            let list: Vec<ChunkRef> = s.chunks.values().cloned().collect();
            chunks_content(list, |bytes| {
                let h = self.blobs.put(bytes, durable)?;
                if let Some(old) = s.last_manifest.replace(h) {
                    if old != h {
                        s.superseded.push(old);
                    }
                }
                Ok(h)
            })?
        };
        let stored: u64 = match &content {
            Content::Inline(d) => d.len() as u64,
            _ => s.chunks.values().map(|c| c.len as u64).sum(),
        };
        // Every byte of the new content was written or verified in this session (no
        // chunk is left unread from before): an earlier integrity error no longer applies.
        let fresh = inline || s.chunks.values().all(|c| s.sealed_here.contains(&c.hash));
        if durable && !self.fsync.fsync_logged() {
            self.blobs.sync()?;
        } else {
            // Invariant 1 across a power cut: the record waits for the bytes it names.
            let mut named: Vec<Hash> = s.chunks.values().map(|c| c.hash).collect();
            if let Content::Manifest(h) = &content {
                named.push(*h);
            }
            self.blobs.settle(&named)?;
        }
        if let Some(base) = s.base.take() {
            if self.revisions.save(id, &base)? {
                let (_, blobs) = self.sweeper.prune_revisions(id)?;
                self.sweeper.queue(blobs);
            }
        }
        let (size, mtime, shrunk) = (s.size, s.mtime, s.shrunk);
        let base = durable.then(|| crate::store::fsynclog::chain_base(&content, size));
        let new = self.records.update(id, |r| {
            r.content = content;
            r.size = size;
            // Blocks fallocate reserved stay counted until a truncate or punch (ext4).
            r.stored = if shrunk { stored } else { stored.max(r.stored) };
            if fresh {
                r.status = Status::Consistent;
            }
            if let Some(t) = mtime {
                r.mtime = t;
                r.ctime = r.ctime.max(t);
            }
            Ok(())
        })?;
        self.followers.emit(Event::new(Op::Write, &[id]));
        s.changed = false;
        s.shrunk = false;
        s.mtime = None;
        // The record holds every byte the session's deltas logged.
        s.unlogged.clear();
        s.chain = None;
        s.from_empty = false;
        if let Some(l) = &self.fsync_log {
            l.end_chain(id.0.into_bytes());
        }
        // The record no longer names what this session sealed and then replaced.
        let superseded = std::mem::take(&mut s.superseded);
        self.sweeper.queue(superseded);
        if durable {
            self.fsync.sync_node(id)?;
            s.chain = base.map(|b| (b, new.version));
        }
        Ok(())
    }

    /// Log the bytes `s` wrote since its content was last durable (`base`) as a delta.
    /// `Ok(false)`: not logged (too much, no usable log); the caller commits in full.
    pub(super) fn log_delta(&self, id: NodeId, s: &mut Session, base: Vec<u8>) -> Result<bool> {
        let Some(log) = self.fsync_log.as_ref().filter(|l| l.usable()) else {
            return Ok(false);
        };
        let Some(d) = self.delta_of(id, s, base)? else {
            return Ok(false);
        };
        let logged = appended(log.append_delta(&d, &|| self.local.sync_filesystem()));
        if logged == Some(true) {
            s.unlogged.clear();
        }
        Ok(logged == Some(true))
    }

    /// The first fsync of a session that began on an empty file and has only written
    /// (a new file: a database's journal, each transaction). Committing it would store
    /// a blob and carry its bytes in the log; instead log the record as stored (its
    /// attributes, still empty content) and the written bytes as a delta on it, made
    /// durable by one sync. Replay installs the record and then applies the chain,
    /// as for any chain (`fsynclog` module doc). `Ok(false)`: not logged (the record
    /// has content since, too much written, no usable log); the caller commits.
    pub(super) fn log_first_delta(&self, id: NodeId, s: &mut Session) -> Result<bool> {
        let Some(log) = self.fsync_log.as_ref().filter(|l| l.usable()) else {
            return Ok(false);
        };
        let Some((value, rec, rec_blob)) = self.fsync.stored_file_record(id)? else {
            return Ok(false);
        };
        if rec.size != 0 || rec.content != Content::Empty {
            return Ok(false);
        }
        let base = crate::store::fsynclog::chain_base(&Content::Empty, 0);
        let Some(d) = self.delta_of(id, s, base.clone())? else {
            return Ok(false);
        };
        let entry = self.fsync.log_entry(id, value, &rec, rec_blob)?;
        let sync = || self.local.sync_filesystem();
        // A new file's name goes with it (fsyncdir then needs no sync of the directory).
        let name = self.fsync.new_name(id, &rec);
        let check = |n: &crate::store::fsynclog::NameOp| self.fsync.still_named(n);
        let with = name.clone().map(|n| {
            (
                n,
                &check as &dyn Fn(&crate::store::fsynclog::NameOp) -> bool,
            )
        });
        if appended(log.append_with_delta(&entry, &d, with, &sync)) != Some(true) {
            return Ok(false);
        }
        let named = name.is_some_and(|n| log.holds_name(&(n.parent, n.name)));
        self.debts.child_logged(rec.parent, id, rec.version, named);
        s.unlogged.clear();
        s.from_empty = false;
        s.chain = Some((base, rec.version));
        Ok(true)
    }

    /// The delta of the bytes `s` wrote since `base` was durable, or None if it is too
    /// large or too scattered for the log.
    pub(super) fn delta_of(
        &self,
        id: NodeId,
        s: &Session,
        base: Vec<u8>,
    ) -> Result<Option<crate::store::fsynclog::Delta>> {
        let total: usize = s.unlogged.iter().map(|(a, b)| b - a).sum();
        if total > crate::store::blobs::CARRY_MAX || s.unlogged.len() > DELTA_RANGES_MAX {
            return Ok(None);
        }
        self.fence.check()?;
        let mut writes = Vec::with_capacity(s.unlogged.len());
        for (&a, &b) in &s.unlogged {
            let (a, b) = (a as u64, (b as u64).min(s.size));
            if a < b {
                let mut out = Vec::with_capacity((b - a) as usize);
                self.read_session(id, s, a, b - a, &mut out)?;
                writes.push((a, out));
            }
        }
        Ok(Some(crate::store::fsynclog::Delta {
            node: id.0.into_bytes(),
            base,
            size: s.size,
            mtime: s.mtime,
            writes,
        }))
    }

    /// Commit every open session (shutdown, signals).
    pub fn commit_all(&self) -> Result<()> {
        let ids: Vec<NodeId> = self.sessions.ids();
        let mut first_err = None;
        for id in ids {
            // In full, not as a delta: a clean close leaves everything in the store.
            let res = match self.sessions.get(id) {
                Some(s) => {
                    let mut s = s.lock();
                    s.chain = None;
                    s.from_empty = false;
                    self.commit_locked(id, &mut s, true)
                }
                None => self.commit(id, true),
            };
            if let Err(e) = res {
                log::error!("commit of {id} failed: {e}");
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
