//! Nodes and their records.
//!
//! A node is named by a UUID: version 4 in stores made before typed ids, else a
//! version 8 id that carries the node's kind ([`NodeId::kind_hint`]). Its whole
//! metadata is one [`NodeRecord`], serialized with postcard, framed with a magic, a
//! format tag and a CRC32, and stored as the single xattr `user.decofs.node` on the
//! node's file, so one `setxattr` replaces it atomically (invariant 2). Records that
//! would not fit ext4's one-block xattr budget (long symlink targets, large client
//! xattrs, many chunks) are written as a blob first and the xattr holds only the blob's
//! hash (invariant 1: blob before reference).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::{Error, Result};

/// The xattr that holds a node's record.
pub const RECORD_XATTR: &str = "user.decofs.node";
const MAGIC: &[u8; 2] = b"DN";
/// Format 1: the body alone. Format 2: the body followed by the record's snapshot
/// generations (`gen`, `born`), written once a store has had a snapshot; a binary that
/// knows only format 1 refuses such a record instead of dropping its generations.
const RECORD_FORMAT: u8 = 1;
const RECORD_FORMAT_GENS: u8 = 2;
const FLAG_INLINE: u8 = 0;
const FLAG_IN_BLOB: u8 = 1;
/// Larger encoded records move into a blob (ext4 refuses ~4,000-byte values).
pub const INLINE_RECORD_LIMIT: usize = 2048;
/// The st_size of every directory.
pub const DIR_SIZE: u64 = 4096;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub Uuid);

/// The inode number of `id` in a store whose root is `root` (stable across remounts).
pub fn ino_of(root: NodeId, id: NodeId) -> u64 {
    if id == root {
        1
    } else {
        id.derived_ino()
    }
}

impl NodeId {
    pub fn new() -> NodeId {
        NodeId(Uuid::new_v4())
    }

    /// A new id for a node of `kind` that lives next to `near` in `nodes/`: same first
    /// two bytes, so the same `nodes/xx/yy/` directory. A directory's files are created
    /// this way, so the backing filesystem allocates their inodes and record blocks
    /// together (ext4 puts a file's inode in its directory's block group) and a cold
    /// listing reads a few inode-table blocks instead of one random block per entry;
    /// creating them also never needs a new `xx/yy` directory.
    pub fn new_near(near: NodeId, kind: Kind) -> NodeId {
        let mut b = *Uuid::new_v4().as_bytes();
        b[..2].copy_from_slice(&near.0.as_bytes()[..2]);
        Self::typed(b, kind)
    }

    /// A new id for a node of `kind`, placed at random in `nodes/` (directories: they
    /// spread over the store so no `nodes/xx/yy/` grows without bound).
    pub fn new_spread(kind: Kind) -> NodeId {
        Self::typed(*Uuid::new_v4().as_bytes(), kind)
    }

    /// Make random bytes an id that carries `kind`.
    ///
    /// Such ids are RFC 9562 version 8 (custom) UUIDs whose variant bits are `111`
    /// (byte 8's top bits; reserved by the RFC, so no version 4 id and no id an earlier
    /// decofs made has them) and whose byte 8's low five bits name the kind
    /// ([`Kind::code`]). A listing then knows each child's type from the id in its
    /// entry, without reading the child's record. 100 bits stay random, and
    /// `derived_ino` takes the inode number from random bytes only.
    fn typed(mut b: [u8; 16], kind: Kind) -> NodeId {
        b[6] = (b[6] & 0x0f) | 0x80; // version 8
        b[8] = TYPED_VARIANT | kind.code();
        NodeId(Uuid::from_bytes(b))
    }

    /// The kind this id carries, if it is a typed id (see [`NodeId::typed`]). Ids of
    /// stores made before typed ids, and the root's, carry none.
    pub fn kind_hint(&self) -> Option<Kind> {
        let b = self.0.as_bytes();
        if self.0.get_version_num() != 8 || b[8] & 0xe0 != TYPED_VARIANT {
            return None;
        }
        Kind::from_code(b[8] & 0x1f)
    }

    /// The node a file name in `nodes/`, `revisions/` or a trash link names, if any.
    pub fn from_name(name: &std::ffi::OsStr) -> Option<NodeId> {
        name.to_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .map(NodeId)
    }

    /// The inode number of a node: derived from its id so that it is stable across
    /// remounts without any table; the root is always 1 (FUSE's root nodeid).
    /// 63 random bits: a collision needs ~3 billion nodes for a 50% chance.
    pub fn derived_ino(&self) -> u64 {
        let b = self.0.as_bytes();
        let v = if self.0.get_version_num() == 8 {
            // `new_near` ids: bytes 0-1 are shared with a neighbour, byte 8 may hold
            // the kind; 2-5 and 9-15 are random.
            u64::from_le_bytes([b[2], b[3], b[4], b[5], b[9], b[10], b[11], b[12]]) >> 1
        } else {
            u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[8], b[9]]) >> 1
        };
        v.max(2)
    }
}

impl Default for NodeId {
    fn default() -> Self {
        NodeId::new()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

/// Byte 8's top three bits in a typed id (the RFC's reserved variant).
const TYPED_VARIANT: u8 = 0xe0;

impl Kind {
    /// Every kind, in the order of the codes typed ids carry (see [`Kind::code`]).
    pub const ALL: [Kind; 7] = [
        Kind::File,
        Kind::Dir,
        Kind::Symlink,
        Kind::Fifo,
        Kind::Socket,
        Kind::CharDev,
        Kind::BlockDev,
    ];

    /// The code a typed id carries for this kind: its place in [`Kind::ALL`] plus one
    /// (never 0, fits 5 bits).
    fn code(self) -> u8 {
        Kind::ALL
            .iter()
            .position(|k| *k == self)
            .expect("every kind is in ALL") as u8
            + 1
    }

    fn from_code(c: u8) -> Option<Kind> {
        Kind::ALL.get((c as usize).checked_sub(1)?).copied()
    }

    /// The S_IFMT bits of this kind.
    pub fn ifmt(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
            Kind::CharDev => libc::S_IFCHR,
            Kind::BlockDev => libc::S_IFBLK,
        }
    }

    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => return None,
        })
    }
}

/// A timestamp with nanoseconds, as stat reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

impl Time {
    pub fn now() -> Time {
        Time::from_system(SystemTime::now())
    }

    /// Nanoseconds since the epoch: the stamps in trash link and revision names.
    pub fn unix_nanos(&self) -> i128 {
        self.secs as i128 * 1_000_000_000 + self.nanos as i128
    }

    pub fn from_unix_nanos(n: i128) -> Time {
        Time {
            secs: n.div_euclid(1_000_000_000) as i64,
            nanos: n.rem_euclid(1_000_000_000) as u32,
        }
    }

    pub fn from_system(t: SystemTime) -> Time {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Time {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let (mut secs, mut nanos) = (-(d.as_secs() as i64), d.subsec_nanos());
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Time { secs, nanos }
            }
        }
    }

    pub fn to_system(self) -> SystemTime {
        if self.secs >= 0 {
            UNIX_EPOCH + std::time::Duration::new(self.secs as u64, self.nanos)
        } else {
            UNIX_EPOCH - std::time::Duration::from_secs((-self.secs) as u64)
                + std::time::Duration::from_nanos(self.nanos as u64)
        }
    }
}

/// A BLAKE3 hash naming a blob.
pub type Hash = [u8; 32];

/// Is `s` exactly `len` lowercase hex digits?
pub fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The hash a blob's name (`hash_hex`) spells, if it spells one.
pub fn parse_hash(s: &str) -> Option<Hash> {
    if !is_hex(s, 64) {
        return None;
    }
    let mut h = [0u8; 32];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(h)
}

pub fn hash_hex(h: &Hash) -> String {
    let mut s = String::with_capacity(64);
    for b in h {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// One chunk of a file: chunk `index` covers bytes `index*chunk_size ..`; its blob holds
/// `len` bytes (a shorter tail reads as zeros up to the file size).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub index: u64,
    pub hash: Hash,
    pub len: u32,
}

/// Where a file's bytes are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// No stored bytes: the file is empty or all holes.
    #[default]
    Empty,
    /// Very small files live in the record itself.
    Inline(Vec<u8>),
    /// The chunk list itself (short manifests).
    Chunks(Vec<ChunkRef>),
    /// A manifest blob holding the chunk list (long manifests).
    Manifest(Hash),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    #[default]
    Consistent,
    IntegrityError,
}

/// Where a trashed node came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrashOrigin {
    pub parent: NodeId,
    pub name: Vec<u8>,
    pub at: Time,
}

/// The whole metadata of one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Incremented by every write of the record; the compare-and-swap token.
    pub version: u64,
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (no S_IFMT).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub size: u64,
    /// Bytes held in this node's chunks (what `st_blocks` reports).
    pub stored: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub crtime: Time,
    pub nlink: u32,
    pub ino: u64,
    /// Hints for path display and repair; the entries are the truth.
    pub parent: Option<NodeId>,
    pub name: Vec<u8>,
    pub content: Content,
    pub target: Vec<u8>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub trash: Option<TrashOrigin>,
    pub status: Status,
    /// The snapshot generation in which this record was written (see
    /// `store::snapshot`): a snapshot of generation G sees it iff `gen <= G`. Encoded
    /// after the body, not in it (format 2), so records of stores that never had a
    /// snapshot keep format 1.
    #[serde(skip)]
    pub gen: u64,
    /// The generation in which the node was created: no snapshot older than it holds
    /// the node, so its directory entries need no copies.
    #[serde(skip)]
    pub born: u64,
}

impl NodeRecord {
    /// The size stat reports: a directory shows one block, anything else its size
    /// (a symlink the length of its target). du(1) and the index add these up.
    pub fn apparent_size(&self) -> u64 {
        if self.kind == Kind::Dir {
            DIR_SIZE
        } else {
            self.size
        }
    }

    pub fn new(kind: Kind, mode: u32, uid: u32, gid: u32, ino: u64) -> NodeRecord {
        let now = Time::now();
        NodeRecord {
            version: 0,
            kind,
            mode: mode & 0o7777,
            uid,
            gid,
            rdev: 0,
            size: 0,
            stored: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            ino,
            parent: None,
            name: Vec::new(),
            content: Content::Empty,
            target: Vec::new(),
            xattrs: BTreeMap::new(),
            trash: None,
            status: Status::Consistent,
            gen: 0,
            born: 0,
        }
    }

    /// Does this record carry snapshot generations (format 2)?
    pub fn has_gens(&self) -> bool {
        self.gen != 0 || self.born != 0
    }
}

/// What the record xattr holds once decoded: the record, or the hash of the blob that
/// holds it.
#[allow(clippy::large_enum_variant)] // short-lived, never stored in bulk
pub enum Stored {
    Inline(NodeRecord),
    InBlob(Hash),
}

/// Serialize a record's body (no framing): the record, then its generations if it has
/// any.
pub fn encode_body(rec: &NodeRecord) -> Vec<u8> {
    let mut out = postcard::to_allocvec(rec).expect("records always serialize");
    if rec.has_gens() {
        out.extend(postcard::to_allocvec(&(rec.gen, rec.born)).expect("integers serialize"));
    }
    out
}

pub fn decode_body(node: NodeId, body: &[u8]) -> Result<NodeRecord> {
    let corrupt = |e: postcard::Error| Error::CorruptRecord {
        node: node.to_string(),
        detail: format!("undecodable record: {e}"),
    };
    let (mut rec, rest): (NodeRecord, &[u8]) = postcard::take_from_bytes(body).map_err(corrupt)?;
    if !rest.is_empty() {
        (rec.gen, rec.born) = postcard::from_bytes(rest).map_err(corrupt)?;
    }
    Ok(rec)
}

/// Frame a payload: magic, format, flag, crc32, payload. `gens`: the record framed
/// (inline, or in the blob the payload names) carries generations (format 2).
pub fn frame(flag_in_blob: bool, payload: &[u8], gens: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(MAGIC);
    out.push(if gens {
        RECORD_FORMAT_GENS
    } else {
        RECORD_FORMAT
    });
    out.push(if flag_in_blob {
        FLAG_IN_BLOB
    } else {
        FLAG_INLINE
    });
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Check the frame of an xattr value and say what it holds.
pub fn unframe(node: NodeId, value: &[u8]) -> Result<Stored> {
    let corrupt = |detail: &str| Error::CorruptRecord {
        node: node.to_string(),
        detail: detail.into(),
    };
    if value.len() < 8 || &value[0..2] != MAGIC {
        return Err(corrupt("bad magic or truncated record"));
    }
    if value[2] != RECORD_FORMAT && value[2] != RECORD_FORMAT_GENS {
        return Err(corrupt("unknown record format"));
    }
    let crc = u32::from_le_bytes([value[4], value[5], value[6], value[7]]);
    let payload = &value[8..];
    if crc32fast::hash(payload) != crc {
        return Err(corrupt("record checksum mismatch"));
    }
    match value[3] {
        FLAG_INLINE => Ok(Stored::Inline(decode_body(node, payload)?)),
        FLAG_IN_BLOB if payload.len() == 32 => {
            let mut h = [0u8; 32];
            h.copy_from_slice(payload);
            Ok(Stored::InBlob(h))
        }
        _ => Err(corrupt("bad record flag")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_ids_share_the_directory_and_keep_random_inode_numbers() {
        // Version 4 ids keep the numbers they always had (stable across upgrades).
        let old = NodeId(Uuid::parse_str("4a5c4a81-33fa-424f-9d54-72e838d23525").unwrap());
        let b = old.0.as_bytes();
        let want = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[8], b[9]]) >> 1;
        assert_eq!(old.derived_ino(), want);
        let mut inos = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        for i in 0..200_000 {
            let kind = Kind::ALL[i % Kind::ALL.len()];
            let id = NodeId::new_near(old, kind);
            assert_eq!(&id.to_string()[..4], "4a5c");
            assert_eq!(id.0.get_version_num(), 8);
            assert_eq!(id.kind_hint(), Some(kind));
            assert!(NodeId::from_name(std::ffi::OsStr::new(&id.to_string())) == Some(id));
            assert!(ids.insert(id));
            assert!(inos.insert(id.derived_ino()), "inode number collision");
        }
        // The shared bytes do not feed the inode number: its top bits vary.
        let tops: std::collections::HashSet<u64> = inos.iter().map(|i| i >> 56).collect();
        assert!(tops.len() > 100, "{} distinct top bytes", tops.len());
    }

    #[test]
    fn only_typed_ids_carry_a_kind() {
        // Ids of older stores: version 4, and version 8 near ids with the RFC variant
        // whose byte 8 is random. None may be read as carrying a kind.
        for _ in 0..100_000 {
            assert_eq!(NodeId::new().kind_hint(), None);
            let mut b = *Uuid::new_v4().as_bytes();
            b[6] = (b[6] & 0x0f) | 0x80;
            assert_eq!(NodeId(Uuid::from_bytes(b)).kind_hint(), None);
        }
        let d = NodeId::new_spread(Kind::Dir);
        assert_eq!(d.kind_hint(), Some(Kind::Dir));
        // A typed id survives its text form (entry targets, node file names).
        let back = NodeId::from_name(std::ffi::OsStr::new(&d.to_string())).unwrap();
        assert_eq!(back.kind_hint(), Some(Kind::Dir));
    }

    #[test]
    fn record_roundtrip_and_checksum() {
        let id = NodeId::new();
        let mut r = NodeRecord::new(Kind::File, 0o644, 1, 2, id.derived_ino());
        r.xattrs.insert(b"user.a".to_vec(), b"b".to_vec());
        let framed = frame(false, &encode_body(&r), false);
        match unframe(id, &framed).unwrap() {
            Stored::Inline(back) => assert_eq!(back, r),
            Stored::InBlob(_) => panic!("expected inline"),
        }
        // A flipped byte anywhere in the payload is detected, never decoded into garbage.
        for i in 8..framed.len() {
            let mut bad = framed.clone();
            bad[i] ^= 0x40;
            assert!(matches!(
                unframe(id, &bad),
                Err(Error::CorruptRecord { .. })
            ));
        }
        // A truncated value is detected.
        assert!(unframe(id, &framed[..framed.len() - 1]).is_err());
        assert!(unframe(id, b"xx").is_err());
    }

    #[test]
    fn small_records_fit_an_xattr() {
        let id = NodeId::new();
        let r = NodeRecord::new(Kind::File, 0o644, 1000, 1000, id.derived_ino());
        assert!(frame(false, &encode_body(&r), false).len() < 200);
    }

    #[test]
    fn times_roundtrip_before_epoch() {
        for t in [
            Time { secs: -1, nanos: 5 },
            Time {
                secs: 12345,
                nanos: 999_999_999,
            },
        ] {
            assert_eq!(Time::from_system(t.to_system()), t);
        }
    }
}
