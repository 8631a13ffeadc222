//! Changing content: writes into a session, sealing dirty chunks into blobs, truncate,
//! fallocate, hole punching, copy_file_range.

use super::commit::DELTA_RANGES_MAX;
use super::session::{ranges_insert, ranges_remove, zero_range};
use super::*;

/// The unit reservations are counted in (ext4's block).
const RESERVE_BLOCK: u64 = 4096;

impl Data<'_> {
    /// Write `data` at `off`.
    pub fn write(&self, id: NodeId, off: u64, data: &[u8]) -> Result<usize> {
        let cs = self.chunk_size;
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
                self.write_piece(id, s, idx, in_off, &rest[..n])?;
                if s.chain.is_some() || s.from_empty {
                    ranges_insert(&mut s.unlogged, pos as usize, pos as usize + n);
                    if s.unlogged.len() > DELTA_RANGES_MAX {
                        // Too scattered for a delta: the next fsync commits.
                        s.unlogged.clear();
                        s.chain = None;
                        s.from_empty = false;
                    }
                }
                pos += n as u64;
                rest = &rest[n..];
                // Per piece, so a later failure never leaves written bytes past the size
                // (a truncate up would show them instead of zeros).
                s.size = s.size.max(pos);
                s.changed = true;
            }
            s.mtime = Some(Time::now());
            self.relieve(id, s, off / cs)?;
            Ok(data.len())
        })
    }

    /// Write `data` at in-chunk offset `a` of chunk `idx`, without reading the chunk.
    pub(super) fn write_piece(
        &self,
        id: NodeId,
        s: &mut Session,
        idx: u64,
        a: usize,
        data: &[u8],
    ) -> Result<()> {
        let cs = self.chunk_size;
        let b = a + data.len();
        if a <= s.dirty_mut(idx).head.len() {
            // Continues (or rewrites) the bytes held from the chunk's start: memory.
            let d = s.dirty.get_mut(&idx).expect("made above");
            let before = d.head.len();
            if d.head.len() < b {
                d.head.resize(b, 0);
            }
            d.head[a..b].copy_from_slice(data);
            let n0 = d.staged.len();
            ranges_remove(&mut d.staged, a, b);
            // A range staged earlier that the head now reaches joins it (writes that
            // arrived out of order), so a chunk written front to back stays in memory.
            let next = d.staged.iter().next().map(|(s, e)| (*s, *e));
            if let Some((st, en)) = next.filter(|(st, _)| *st == d.head.len()) {
                let f = s.staging.file.as_ref().expect("staged data has a file");
                let slot = d.slot.expect("staged data has a slot");
                d.head.resize(en, 0);
                f.read_exact_at(&mut d.head[st..], slot * cs + st as u64)
                    .ctx(|| "read the staging file".into())?;
                d.staged.remove(&st);
            }
            s.staged_ranges = s.staged_ranges + d.staged.len() - n0;
            s.dirty_bytes = s.dirty_bytes + d.head.len() - before;
        } else {
            let slot = s.slot_of(self.layout, idx)?;
            let f = s.staging.file.as_ref().expect("slot_of made it");
            f.write_all_at(data, slot * cs + a as u64)
                .ctx(|| "write the staging file".into())?;
            let d = s.dirty.get_mut(&idx).expect("made above");
            let n0 = d.staged.len();
            ranges_insert(&mut d.staged, a, b);
            s.staged_ranges = s.staged_ranges + d.staged.len() - n0;
        }
        let d = s.dirty.get_mut(&idx).expect("made above");
        d.len = d.len.max(b);
        let cs = cs as usize;
        // A chunk whose every byte is now written is usually done (sequential writes):
        // seal it while it is at hand; its base is not needed.
        let h = d.head.len();
        let full = h == cs || (b == cs && d.staged.len() == 1 && d.staged.get(&h) == Some(&cs));
        if full {
            self.seal(id, s, idx)?;
        }
        Ok(())
    }

    /// Keep a session's memory bounded: past `dirty_limit` move heads (except that of
    /// chunk `current`) to the staging file; past `entry_limit` seal the chunks with the
    /// most staged ranges.
    pub(super) fn relieve(&self, id: NodeId, s: &mut Session, current: u64) -> Result<()> {
        let cs = self.chunk_size;
        if s.dirty_bytes > s.dirty_limit {
            let mut order: Vec<(usize, u64)> = s
                .dirty
                .iter()
                .filter(|(i, d)| **i != current && !d.head.is_empty())
                .map(|(i, d)| (d.head.len(), *i))
                .collect();
            order.sort_unstable_by(|x, y| y.cmp(x));
            for (_, idx) in order {
                if s.dirty_bytes <= s.dirty_limit / 2 {
                    break;
                }
                let slot = s.slot_of(self.layout, idx)?;
                let f = s.staging.file.as_ref().expect("slot_of made it");
                let d = s.dirty.get_mut(&idx).expect("listed above");
                f.write_all_at(&d.head, slot * cs)
                    .ctx(|| "write the staging file".into())?;
                let n0 = d.staged.len();
                ranges_insert(&mut d.staged, 0, d.head.len());
                s.staged_ranges = s.staged_ranges + d.staged.len() - n0;
                s.dirty_bytes -= d.head.len();
                d.head = Vec::new();
            }
        }
        if s.dirty.len() + s.staged_ranges > s.entry_limit {
            let mut order: Vec<(usize, u64)> =
                s.dirty.iter().map(|(i, d)| (d.staged.len(), *i)).collect();
            order.sort_unstable_by(|x, y| y.cmp(x));
            for (_, idx) in order {
                if s.dirty.len() + s.staged_ranges <= s.entry_limit / 2 {
                    break;
                }
                self.seal(id, s, idx)?;
            }
        }
        Ok(())
    }

    /// Turn one modified chunk into a blob, reading its base (verified) once if any of
    /// it is still visible. An all-zero chunk becomes a hole.
    pub(super) fn seal(&self, id: NodeId, s: &mut Session, idx: u64) -> Result<()> {
        let Some(d) = s.dirty.get(&idx) else {
            return Ok(());
        };
        let assembled;
        let data: &[u8] = if d.staged.is_empty() && d.head.len() >= d.len {
            &d.head[..d.len]
        } else {
            let mut v = Vec::with_capacity(d.len);
            self.read_dirty(id, s, idx, 0, d.len, &mut v)?;
            assembled = v;
            &assembled
        };
        let sealed = if data.iter().any(|b| *b != 0) {
            let hash = self.blobs.put(data, false)?;
            Some(ChunkRef {
                index: idx,
                hash,
                len: data.len() as u32,
            })
        } else {
            None
        };
        s.unseal(idx);
        if let Some(c) = sealed {
            s.sealed_here.insert(c.hash);
            s.chunks.insert(idx, c);
        }
        s.drop_dirty(idx, self.chunk_size)
    }

    pub(super) fn seal_all(&self, id: NodeId, s: &mut Session) -> Result<()> {
        let idxs: Vec<u64> = s.dirty.keys().copied().collect();
        for idx in idxs {
            self.seal(id, s, idx)?;
        }
        Ok(())
    }

    /// Set the size of a file (truncate or extend with a hole).
    pub fn truncate(&self, id: NodeId, size: u64) -> Result<()> {
        if size > i64::MAX as u64 {
            return Err(Error::Invalid("size too large"));
        }
        let cs = self.chunk_size;
        self.with_session(id, |s| {
            if size < s.size {
                s.shrunk = true;
                let keep = size.div_ceil(cs);
                let cut: Vec<u64> = s.chunks.range(keep..).map(|(i, _)| *i).collect();
                for i in cut {
                    s.unseal(i);
                }
                let cut: Vec<u64> = s.dirty.range(keep..).map(|(i, _)| *i).collect();
                for i in cut {
                    s.drop_dirty(i, cs)?;
                }
                let tail = (size % cs) as usize;
                let idx = size / cs;
                if tail != 0 && (s.dirty.contains_key(&idx) || s.chunks.contains_key(&idx)) {
                    // Cut the partial last chunk (without reading it) so a later
                    // extension reads zeros.
                    let d = s.dirty_mut(idx);
                    d.len = d.len.min(tail);
                    d.base_len = d.base_len.min(tail);
                    let cut = d.head.len().saturating_sub(tail);
                    d.head.truncate(tail);
                    let n0 = d.staged.len();
                    ranges_remove(&mut d.staged, tail, usize::MAX);
                    let n1 = d.staged.len();
                    s.dirty_bytes -= cut;
                    s.staged_ranges = s.staged_ranges + n1 - n0;
                }
            }
            s.size = size;
            s.changed = true;
            s.mtime = Some(Time::now());
            // Not a write: the fsync log's deltas cannot say it; the next fsync commits.
            s.chain = None;
            s.from_empty = false;
            Ok(())
        })
    }

    /// Reserve space up to `end` (posix_fallocate). Content is stored on write, so this
    /// checks the disk has room, counts the range in `stored` (st_blocks, as ext4
    /// counts reserved blocks; writing into it later does not grow it) and, unless
    /// `keep_size`, extends the file.
    pub fn fallocate(&self, id: NodeId, end: u64, keep_size: bool) -> Result<()> {
        let mut rec = self.records.read(id)?;
        self.overlay(id, &mut rec);
        if rec.kind != Kind::File {
            return Err(Error::Invalid("fallocate on a non-regular file"));
        }
        let st = self.layout.statfs()?;
        if end.saturating_sub(rec.size.max(rec.stored)) > st.f_bavail.saturating_mul(st.f_frsize) {
            return Err(Error::NoSpace);
        }
        let reserved = end.div_ceil(RESERVE_BLOCK) * RESERVE_BLOCK;
        if reserved > rec.stored {
            self.fence.check()?;
            self.records.update(id, |r| {
                r.stored = r.stored.max(reserved);
                Ok(())
            })?;
            self.followers.emit(Event::new(Op::Attr, &[id]));
        }
        if keep_size || end <= rec.size {
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
        let cs = self.chunk_size;
        self.with_session(id, |s| {
            let end = off.saturating_add(len).min(s.size);
            let mut pos = off;
            while pos < end {
                let idx = pos / cs;
                let cstart = idx * cs;
                let cend = (cstart + cs).min(end);
                if pos == cstart && cend == cstart + cs {
                    s.drop_dirty(idx, cs)?;
                    s.unseal(idx);
                } else if s.dirty.contains_key(&idx) || s.chunks.contains_key(&idx) {
                    let d = s.dirty_mut(idx);
                    let a = (pos - cstart) as usize;
                    let b = ((cend - cstart) as usize).min(d.len);
                    let h = d.head.len();
                    if a < h {
                        d.head[a..b.min(h)].fill(0);
                    }
                    // The rest becomes a staged range that reads as zeros.
                    let a = a.max(h);
                    if a < b {
                        let slot = s.slot_of(self.layout, idx)?;
                        let f = s.staging.file.as_ref().expect("slot_of made it");
                        zero_range(f, slot * cs + a as u64, (b - a) as u64)?;
                        let d = s.dirty.get_mut(&idx).expect("made above");
                        let n0 = d.staged.len();
                        ranges_insert(&mut d.staged, a, b);
                        s.staged_ranges = s.staged_ranges + d.staged.len() - n0;
                    }
                }
                pos = cend;
            }
            s.changed = true;
            s.shrunk = true;
            s.mtime = Some(Time::now());
            s.chain = None;
            s.from_empty = false;
            self.relieve(id, s, u64::MAX)
        })
    }
}
