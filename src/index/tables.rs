//! The sled trees of one index generation and their encodings.
//!
//! ```text
//! g<N>.nodes     node id (16 bytes)                -> NodeSum (kind, apparent size, mtime)
//! g<N>.children  parent id ++ name                 -> child id
//! g<N>.links     child id ++ parent id ++ name     -> ()        (reverse of children)
//! g<N>.stats     directory id                      -> Stats (recursive, itself included)
//! changes        sequence number (big endian u64)  -> Change    (shared by generations)
//! meta           "format", "gen", "clean_epoch", "next_seq", "log_id"
//! ```
//! Only nodes reachable from the root are in `nodes`; a rebuild writes generation N+1
//! beside N and switches `meta.gen` when it is complete.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::{Error, Kind, NodeId, NodeRecord, Result, Time};

/// What the index keeps of a node: enough for find's filters and du's sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSum {
    pub kind: Kind,
    pub size: u64,
    pub mtime: Time,
}

impl NodeSum {
    pub fn of(rec: &NodeRecord) -> NodeSum {
        NodeSum {
            kind: rec.kind,
            size: rec.apparent_size(),
            mtime: rec.mtime,
        }
    }
}

/// Recursive totals of a directory: bytes (apparent sizes, the directory itself
/// included, every hard link counted, as `du -b -l`), files (non-directories) and
/// directories below it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub bytes: u64,
    pub files: u64,
    pub dirs: u64,
}

/// A signed change of [`Stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub bytes: i64,
    pub files: i64,
    pub dirs: i64,
}

impl std::ops::Neg for Delta {
    type Output = Delta;
    fn neg(self) -> Delta {
        Delta {
            bytes: -self.bytes,
            files: -self.files,
            dirs: -self.dirs,
        }
    }
}

impl Delta {
    pub fn add(&mut self, o: Delta) {
        self.bytes += o.bytes;
        self.files += o.files;
        self.dirs += o.dirs;
    }

    pub fn is_zero(&self) -> bool {
        *self == Delta::default()
    }

    /// What an entry pointing at a node adds to its directory: a file its size and one
    /// file; a directory its totals and itself.
    pub fn of_entry(sum: &NodeSum, dir_stats: Option<Stats>) -> Delta {
        match (sum.kind, dir_stats) {
            (Kind::Dir, Some(s)) => Delta {
                bytes: s.bytes as i64,
                files: s.files as i64,
                dirs: s.dirs as i64 + 1,
            },
            (Kind::Dir, None) => Delta {
                bytes: sum.size as i64,
                files: 0,
                dirs: 1,
            },
            _ => Delta {
                bytes: sum.size as i64,
                files: 1,
                dirs: 0,
            },
        }
    }
}

impl Stats {
    /// Apply a delta; false if it would go below zero (the index disagrees with itself).
    pub fn apply(&mut self, d: Delta) -> bool {
        let f = |v: &mut u64, d: i64| {
            let n = *v as i64 + d;
            *v = n.max(0) as u64;
            n >= 0
        };
        let a = f(&mut self.bytes, d.bytes);
        let b = f(&mut self.files, d.files);
        let c = f(&mut self.dirs, d.dirs);
        a && b && c
    }

    pub fn own(sum: &NodeSum) -> Stats {
        Stats {
            bytes: sum.size,
            files: 0,
            dirs: 0,
        }
    }
}

/// One entry of the change log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Change {
    pub seq: u64,
    pub at: Time,
    pub op: String,
    pub node: Option<NodeId>,
    /// The path (relative to the root) the change is about; None when the node has no
    /// name any more (an open file that was deleted).
    pub path: Option<Vec<u8>>,
    /// The second path of a rename or exchange.
    pub to: Option<Vec<u8>>,
    /// Found by a reconcile rather than reported by an operation.
    pub reconciled: bool,
}

pub fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("index values serialize")
}

pub fn dec<'a, T: Deserialize<'a>>(b: &'a [u8], what: &str) -> Result<T> {
    postcard::from_bytes(b).map_err(|e| Error::IndexCorrupt(format!("bad {what} value: {e}")))
}

pub fn id_bytes(id: NodeId) -> [u8; 16] {
    *id.0.as_bytes()
}

pub fn id_from(b: &[u8]) -> Result<NodeId> {
    Uuid::from_slice(b)
        .map(NodeId)
        .map_err(|_| Error::IndexCorrupt("bad node id in a key".into()))
}

fn sled_err(e: sled::Error) -> Error {
    match e {
        sled::Error::Io(io) => Error::io("index", io),
        other => Error::IndexCorrupt(other.to_string()),
    }
}

/// `?` on sled results.
pub trait SledResult<T> {
    fn ix(self) -> Result<T>;
}

impl<T> SledResult<T> for std::result::Result<T, sled::Error> {
    fn ix(self) -> Result<T> {
        self.map_err(sled_err)
    }
}

/// The four trees of one generation.
pub struct Gen {
    pub id: u64,
    pub nodes: sled::Tree,
    pub children: sled::Tree,
    pub links: sled::Tree,
    pub stats: sled::Tree,
}

const TREES: [&str; 4] = ["nodes", "children", "links", "stats"];

impl Gen {
    pub fn open(db: &sled::Db, id: u64) -> Result<Gen> {
        let t = |n: &str| db.open_tree(format!("g{id}.{n}")).ix();
        Ok(Gen {
            id,
            nodes: t(TREES[0])?,
            children: t(TREES[1])?,
            links: t(TREES[2])?,
            stats: t(TREES[3])?,
        })
    }

    /// Drop every tree of generation `id`.
    pub fn drop_trees(db: &sled::Db, id: u64) {
        for n in TREES {
            let _ = db.drop_tree(format!("g{id}.{n}"));
        }
    }

    /// Empty all four trees (a rebuild starts from nothing).
    pub fn clear(&self) -> Result<()> {
        self.nodes.clear().ix()?;
        self.children.clear().ix()?;
        self.links.clear().ix()?;
        self.stats.clear().ix()
    }

    pub fn node(&self, id: NodeId) -> Result<Option<NodeSum>> {
        match self.nodes.get(id_bytes(id)).ix()? {
            Some(v) => Ok(Some(dec(&v, "node")?)),
            None => Ok(None),
        }
    }

    pub fn put_node(&self, id: NodeId, s: &NodeSum) -> Result<()> {
        self.nodes.insert(id_bytes(id), enc(s)).ix().map(|_| ())
    }

    pub fn del_node(&self, id: NodeId) -> Result<()> {
        self.nodes.remove(id_bytes(id)).ix()?;
        self.stats.remove(id_bytes(id)).ix().map(|_| ())
    }

    pub fn stats(&self, id: NodeId) -> Result<Option<Stats>> {
        match self.stats.get(id_bytes(id)).ix()? {
            Some(v) => Ok(Some(dec(&v, "stats")?)),
            None => Ok(None),
        }
    }

    pub fn put_stats(&self, id: NodeId, s: &Stats) -> Result<()> {
        self.stats.insert(id_bytes(id), enc(s)).ix().map(|_| ())
    }

    fn child_key(parent: NodeId, name: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(16 + name.len());
        k.extend_from_slice(&id_bytes(parent));
        k.extend_from_slice(name);
        k
    }

    fn link_key(child: NodeId, parent: NodeId, name: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(32 + name.len());
        k.extend_from_slice(&id_bytes(child));
        k.extend_from_slice(&id_bytes(parent));
        k.extend_from_slice(name);
        k
    }

    pub fn child(&self, parent: NodeId, name: &OsStr) -> Result<Option<NodeId>> {
        match self
            .children
            .get(Self::child_key(parent, name.as_bytes()))
            .ix()?
        {
            Some(v) => Ok(Some(id_from(&v)?)),
            None => Ok(None),
        }
    }

    /// Bind `parent/name` to `child` in both directions.
    pub fn bind(&self, parent: NodeId, name: &[u8], child: NodeId) -> Result<()> {
        self.children
            .insert(Self::child_key(parent, name), &id_bytes(child))
            .ix()?;
        self.links
            .insert(Self::link_key(child, parent, name), &[])
            .ix()
            .map(|_| ())
    }

    pub fn unbind(&self, parent: NodeId, name: &[u8], child: NodeId) -> Result<()> {
        self.children.remove(Self::child_key(parent, name)).ix()?;
        self.links
            .remove(Self::link_key(child, parent, name))
            .ix()
            .map(|_| ())
    }

    /// The entries naming `child`: (parent, name).
    pub fn links_of(&self, child: NodeId) -> Result<Vec<(NodeId, Vec<u8>)>> {
        let mut out = Vec::new();
        for kv in self.links.scan_prefix(id_bytes(child)) {
            let (k, _) = kv.ix()?;
            if k.len() < 32 {
                return Err(Error::IndexCorrupt("short link key".into()));
            }
            out.push((id_from(&k[16..32])?, k[32..].to_vec()));
        }
        Ok(out)
    }

    pub fn first_link(&self, child: NodeId) -> Result<Option<(NodeId, Vec<u8>)>> {
        match self.links.scan_prefix(id_bytes(child)).next() {
            Some(kv) => {
                let (k, _) = kv.ix()?;
                if k.len() < 32 {
                    return Err(Error::IndexCorrupt("short link key".into()));
                }
                Ok(Some((id_from(&k[16..32])?, k[32..].to_vec())))
            }
            None => Ok(None),
        }
    }

    /// The entries of a directory in name (byte) order.
    pub fn children_of(
        &self,
        parent: NodeId,
    ) -> impl Iterator<Item = Result<(Vec<u8>, NodeId)>> + '_ {
        self.children.scan_prefix(id_bytes(parent)).map(|kv| {
            let (k, v) = kv.ix()?;
            Ok((k[16..].to_vec(), id_from(&v)?))
        })
    }

    /// The path of a node relative to the root (empty for the root), through its first
    /// link at every level. None if it is not reachable in this generation.
    pub fn path_of(&self, root: NodeId, mut id: NodeId) -> Result<Option<Vec<u8>>> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        for _ in 0..MAX_DEPTH {
            if id == root {
                parts.reverse();
                return Ok(Some(parts.join(&b'/')));
            }
            match self.first_link(id)? {
                Some((p, name)) => {
                    parts.push(name);
                    id = p;
                }
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Resolve a relative path (components separated by '/') to a node.
    pub fn resolve(&self, root: NodeId, rel: &[u8]) -> Result<Option<NodeId>> {
        let mut id = root;
        for comp in rel.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            if comp == b"." {
                continue;
            }
            match self.child(id, OsStr::from_bytes(comp))? {
                Some(c) => id = c,
                None => return Ok(None),
            }
        }
        Ok(Some(id))
    }
}

/// Deeper than any tree decofs can hold (PATH_MAX is not a limit on depth, but a walk
/// that goes on longer than this has met a cycle of a half-applied index).
pub const MAX_DEPTH: usize = 1 << 16;
