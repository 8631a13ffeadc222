//! The fsync log's format: entries (a node's whole record and the blobs it carries),
//! deltas (written ranges of a chain), names and tombstones, their encoding, framing,
//! checksums and scanning.

use super::*;

/// The current format: the kinds below, names and tombstones among them.
pub(super) const MAGIC: &[u8; 16] = b"decofs-fsynclog3";

/// The second format: full entries and deltas, no names (still replayed).
pub(super) const MAGIC_V2: &[u8; 16] = b"decofs-fsynclog2";

pub(super) const MAGIC_V1: &[u8; 16] = b"decofs-fsynclog1";

/// A full entry: the node's state from here on (its chains logged before end here).
pub(super) const KIND_FULL: u8 = 0;

pub(super) const KIND_DELTA: u8 = 1;

/// A full entry logged while the node has a live chain (fsyncdir logging a record
/// whose attributes changed): the chain's deltas still apply after it.
pub(super) const KIND_FULL_KEEP: u8 = 2;

/// A name bound: `parent [16] | node [16] | name_len u32 | name` (format 3).
pub(super) const KIND_NAME: u8 = 3;

/// A name's tombstone: the name no longer names the node (same layout, format 3).
pub(super) const KIND_UNNAME: u8 = 4;

pub(super) const ENTRY_HEAD: usize = 4 + 8 + 16;

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

/// One payload to append: its bytes, its node and, for a delta, its chain's base; for
/// a name or tombstone, what it says.
pub(super) struct Payload {
    pub(super) bytes: Vec<u8>,
    pub(super) node: [u8; 16],
    pub(super) chain: Option<Vec<u8>>,
    pub(super) name: Option<NameOp>,
}

impl Payload {
    pub(super) fn chain(d: &Delta) -> Payload {
        Payload {
            bytes: d.encode(),
            node: d.node,
            chain: Some(d.base.clone()),
            name: None,
        }
    }

    pub(super) fn name(n: &NameOp) -> Payload {
        Payload {
            bytes: n.encode(),
            node: n.node,
            chain: None,
            name: Some(n.clone()),
        }
    }
}

/// What identifies the content a chain starts from: the record's content and size.
pub fn chain_base(content: &Content, size: u64) -> Vec<u8> {
    postcard::to_allocvec(&(content, size)).expect("contents serialize")
}

/// A name of a directory bound to a node (`bound`), or no longer bound to it: the log
/// holds every change of a name from its first record on (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameOp {
    pub parent: [u8; 16],
    pub name: Vec<u8>,
    pub node: [u8; 16],
    pub bound: bool,
}

impl NameOp {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + 32 + 4 + self.name.len());
        v.push(if self.bound { KIND_NAME } else { KIND_UNNAME });
        v.extend_from_slice(&self.parent);
        v.extend_from_slice(&self.node);
        v.extend_from_slice(&(self.name.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.name);
        v
    }

    pub(super) fn decode(mut p: &[u8], bound: bool) -> Option<NameOp> {
        let parent: [u8; 16] = take(&mut p, 16)?.try_into().ok()?;
        let node: [u8; 16] = take(&mut p, 16)?.try_into().ok()?;
        let n = u32_of(&mut p)?;
        let name = take(&mut p, n)?.to_vec();
        p.is_empty().then_some(NameOp {
            parent,
            name,
            node,
            bound,
        })
    }
}

/// An entry as read back from a log; a full entry says whether it ends the node's
/// chain (see [`KIND_FULL_KEEP`]).
pub enum Logged {
    Full(Entry, bool),
    Delta(Delta),
    Name(NameOp),
}

impl Delta {
    pub(super) fn encode(&self) -> Vec<u8> {
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

    pub(super) fn decode(mut p: &[u8]) -> Option<Delta> {
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

pub(super) fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if p.len() < n {
        return None;
    }
    let (a, b) = p.split_at(n);
    *p = b;
    Some(a)
}

pub(super) fn u32_of(p: &mut &[u8]) -> Option<usize> {
    Some(u32::from_le_bytes(take(p, 4)?.try_into().ok()?) as usize)
}

pub(super) fn u64_of(p: &mut &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(take(p, 8)?.try_into().ok()?))
}

impl Entry {
    pub(super) fn encode(&self) -> Vec<u8> {
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
    pub(super) fn decode(mut p: &[u8]) -> Option<Entry> {
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

pub(super) fn slot_off(slot: u64) -> u64 {
    GEN_END + (slot - 1) * SLOT_BYTES
}

/// An entry as written: head (length, generation, checksum) and payload.
pub(super) fn framed(gen: u64, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(ENTRY_HEAD + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&gen.to_le_bytes());
    buf.extend_from_slice(&checksum(gen, payload));
    buf.extend_from_slice(payload);
    buf
}

pub(super) fn checksum(gen: u64, payload: &[u8]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(&gen.to_le_bytes());
    h.update(payload);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

pub(super) fn header_sum(magic: &[u8; 16], gen: u64, slot: u64) -> [u8; 16] {
    let mut m = magic.to_vec();
    m.extend_from_slice(&slot.to_le_bytes());
    checksum(gen, &m)
}

pub(super) fn header(gen: u64, slot: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER as usize);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&gen.to_le_bytes());
    v.extend_from_slice(&slot.to_le_bytes());
    v.extend_from_slice(&header_sum(MAGIC, gen, slot));
    v.resize(HEADER as usize, 0);
    v
}

/// The entries of one log file that belong to its current generation, in order: the
/// carried slot's, then those after the header. A torn or stale entry ends a run.
pub(super) fn read_entries(path: &Path) -> Result<Vec<Logged>> {
    let data = fs::read(path).ctx(|| format!("read {}", path.display()))?;
    let mut out = Vec::new();
    if data.len() < HEADER as usize {
        return Ok(out); // created but never written: nothing was logged
    }
    let gen = u64::from_le_bytes(data[16..24].try_into().unwrap());
    if &data[..16] == MAGIC_V1 {
        if data[24..40] == checksum(gen, MAGIC_V1) {
            scan(
                &data,
                HEADER as usize,
                data.len(),
                gen,
                Format::V1,
                &mut out,
            );
        }
        return Ok(out);
    }
    let slot = u64::from_le_bytes(data[24..32].try_into().unwrap());
    let format = match &data[..16] {
        m if m == MAGIC => Format::V3,
        m if m == MAGIC_V2 => Format::V2,
        _ => return Ok(out),
    };
    let magic = if format == Format::V3 {
        MAGIC
    } else {
        MAGIC_V2
    };
    if data[32..48] != header_sum(magic, gen, slot) || slot > 2 {
        return Ok(out);
    }
    if slot != 0 {
        let a = slot_off(slot) as usize;
        scan(&data, a, a + SLOT_BYTES as usize, gen, format, &mut out);
    }
    scan(
        &data,
        HEADER as usize,
        GEN_END as usize,
        gen,
        format,
        &mut out,
    );
    Ok(out)
}

/// The formats a log can be in: v1 has no kind byte, v2 full entries and deltas, v3
/// names and tombstones too.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Format {
    V1,
    V2,
    V3,
}

/// Read the entries of generation `gen` in `from..to` of `data` until one is not.
pub(super) fn scan(
    data: &[u8],
    from: usize,
    to: usize,
    gen: u64,
    format: Format,
    out: &mut Vec<Logged>,
) {
    let kinds = format != Format::V1;
    let names = format == Format::V3;
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
            (true, KIND_NAME) if names => NameOp::decode(&payload[1..], true).map(Logged::Name),
            (true, KIND_UNNAME) if names => NameOp::decode(&payload[1..], false).map(Logged::Name),
            _ => None,
        };
        match e {
            Some(e) => out.push(e),
            None => break,
        }
        off = start + len;
    }
}
