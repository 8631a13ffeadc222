//! Questions the index answers: find, du, the change log, and how two generations
//! differ (reconcile's repairs, `index verify`).

use std::ffi::CString;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::tables::{dec, Change, Gen, NodeSum, SledResult, Stats};
use super::{Index, MAX_VERIFY_EXAMPLES};
use crate::store::{Error, Kind, NodeId, Result, Time};

/// How to compare a size: more than, less than, exactly (bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeCmp {
    More(u64),
    Less(u64),
    Exactly(u64),
}

#[derive(Clone, Debug, Default)]
pub struct FindReq {
    /// Where to start, relative to the root ("" is the root).
    pub rel: Vec<u8>,
    /// The name the start is matched as (the last component the user typed).
    pub start_name: Vec<u8>,
    /// A shell glob matched against each name (fnmatch(3), like find -name).
    pub name: Option<Vec<u8>>,
    pub kind: Option<Kind>,
    pub size: Option<SizeCmp>,
    /// Only nodes modified after this time.
    pub newer: Option<Time>,
}

pub struct Found {
    /// Relative to the start ("" for the start itself).
    pub rel: Vec<u8>,
    pub kind: Kind,
    pub size: u64,
}

fn glob(pat: &CString, name: &[u8]) -> bool {
    let Ok(n) = CString::new(name) else {
        return false;
    };
    // SAFETY: both are NUL-terminated C strings.
    unsafe { libc::fnmatch(pat.as_ptr(), n.as_ptr(), 0) == 0 }
}

fn matches(req: &FindReq, pat: Option<&CString>, name: &[u8], s: &NodeSum) -> bool {
    if let Some(p) = pat {
        if !glob(p, name) {
            return false;
        }
    }
    if let Some(k) = req.kind {
        if s.kind != k {
            return false;
        }
    }
    match req.size {
        Some(SizeCmp::More(n)) if s.size <= n => return false,
        Some(SizeCmp::Less(n)) if s.size >= n => return false,
        Some(SizeCmp::Exactly(n)) if s.size != n => return false,
        _ => {}
    }
    if let Some(t) = req.newer {
        if s.mtime <= t {
            return false;
        }
    }
    true
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    super::join(dir, name)
}

/// A directory's totals by path relative to the start.
pub type DuList = Vec<(Vec<u8>, Stats)>;
/// (path relative to the start, name, node) of a directory's entries.
type Kids = Vec<(Vec<u8>, Vec<u8>, NodeId)>;

/// How the index is asked to be current before answering.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fresh {
    pub wait: Option<Duration>,
    pub stale: bool,
}

impl Index {
    fn start(&self, g: &Gen, rel: &[u8]) -> Result<(NodeId, NodeSum)> {
        let id = g.resolve(self.root(), rel)?.ok_or(Error::NotFound)?;
        let sum = g.node(id)?.ok_or(Error::NotFound)?;
        Ok((id, sum))
    }

    /// `decofs find`: every node below (and including) the start that matches, in
    /// depth-first name order. Returns the matches and whether the index was current.
    pub fn find(&self, req: &FindReq, fresh: Fresh) -> Result<(Vec<Found>, bool)> {
        let current = self.ready(fresh.wait, fresh.stale)?;
        let g = self.read_gen();
        let (top, top_sum) = self.start(&g, &req.rel)?;
        let pat = match &req.name {
            Some(p) => Some(
                CString::new(p.clone()).map_err(|_| Error::Invalid("a glob cannot hold NUL"))?,
            ),
            None => None,
        };
        let mut out = Vec::new();
        if matches(req, pat.as_ref(), &req.start_name, &top_sum) {
            out.push(Found {
                rel: Vec::new(),
                kind: top_sum.kind,
                size: top_sum.size,
            });
        }
        if top_sum.kind != Kind::Dir {
            return Ok((out, current));
        }
        // Iterative pre-order walk (find's order); a directory met twice (a
        // half-applied rename seen with --stale) is not walked twice.
        let mut seen = std::collections::HashSet::new();
        seen.insert(top);
        let kids = |dir: NodeId, path: &[u8]| -> Result<Kids> {
            let mut v = Vec::new();
            for kv in g.children_of(dir) {
                let (name, child) = kv?;
                v.push((join(path, &name), name, child));
            }
            v.reverse();
            Ok(v)
        };
        let mut stack = kids(top, &[])?;
        while let Some((p, name, child)) = stack.pop() {
            let Some(sum) = g.node(child)? else { continue };
            if matches(req, pat.as_ref(), &name, &sum) {
                out.push(Found {
                    rel: p.clone(),
                    kind: sum.kind,
                    size: sum.size,
                });
            }
            if sum.kind == Kind::Dir && seen.insert(child) {
                stack.extend(kids(child, &p)?);
            }
        }
        Ok((out, current))
    }

    /// `decofs du`: the totals of the start directory and, down to `depth` levels, of
    /// the directories below it. Returns (relative path, totals) and whether current.
    pub fn du(&self, rel: &[u8], depth: u32, fresh: Fresh) -> Result<(DuList, bool)> {
        let current = self.ready(fresh.wait, fresh.stale)?;
        let g = self.read_gen();
        let (top, sum) = self.start(&g, rel)?;
        if sum.kind != Kind::Dir {
            let s = Stats {
                bytes: sum.size,
                files: 1,
                dirs: 0,
            };
            return Ok((vec![(Vec::new(), s)], current));
        }
        let mut out = Vec::new();
        let mut stack = vec![(top, Vec::new(), 0u32)];
        while let Some((dir, path, d)) = stack.pop() {
            let st = g.stats(dir)?.unwrap_or_default();
            out.push((path.clone(), st));
            if d < depth {
                let mut subdirs = Vec::new();
                for kv in g.children_of(dir) {
                    let (name, child) = kv?;
                    if let Some(s) = g.node(child)? {
                        if s.kind == Kind::Dir {
                            subdirs.push((child, join(&path, &name), d + 1));
                        }
                    }
                }
                stack.extend(subdirs.into_iter().rev());
            }
        }
        Ok((out, current))
    }

    /// The change log after `since`, at most `limit` entries. Returns (entries, first
    /// sequence number kept, last sequence number written, log id).
    pub fn changes(&self, since: u64, limit: usize) -> Result<(Vec<Change>, u64, u64, String)> {
        let last = self.next_seq.load(Ordering::SeqCst) - 1;
        let first = self
            .changes
            .first()
            .ix()?
            .map(|(k, _)| u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])))
            .unwrap_or(last + 1);
        if since + 1 < first && since < last {
            return Err(Error::ChangesTruncated { since, first });
        }
        let mut out = Vec::new();
        for kv in self.changes.range((since + 1).to_be_bytes()..) {
            let (_, v) = kv.ix()?;
            out.push(dec::<Change>(&v, "change")?);
            if out.len() >= limit {
                break;
            }
        }
        Ok((out, first, last, self.log_id()))
    }

    /// Build a fresh generation beside the live one and compare them. The index is
    /// first made current (waiting up to `wait`).
    pub fn verify(&self, wait: Duration) -> Result<Diff> {
        self.ready(Some(wait), false)?;
        let _w = self.writer.lock();
        const VERIFY_GEN: u64 = u64::MAX - 1;
        Gen::drop_trees(&self.db, VERIFY_GEN);
        let vg = Gen::open(&self.db, VERIFY_GEN)?;
        let r = self
            .build(&vg)
            .and_then(|_| compare(&self.read_gen(), &vg, self.root(), MAX_VERIFY_EXAMPLES));
        drop(vg);
        Gen::drop_trees(&self.db, VERIFY_GEN);
        r
    }
}

/// How two generations differ.
#[derive(Debug, Default)]
pub struct Diff {
    pub nodes: u64,
    pub entries: u64,
    pub totals: u64,
    pub old_nodes: u64,
    /// (what, path, node): "create", "delete", "modify" as seen from `old` to `new`.
    pub changed: Vec<(&'static str, Vec<u8>, Option<NodeId>)>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.nodes == 0 && self.entries == 0 && self.totals == 0
    }
}

/// Merge-join two sorted trees; call `f(key, old, new)` for every key whose values
/// differ (None where a side lacks the key).
fn merge(
    a: &sled::Tree,
    b: &sled::Tree,
    mut f: impl FnMut(&[u8], Option<&[u8]>, Option<&[u8]>) -> Result<()>,
) -> Result<()> {
    let mut ia = a.iter();
    let mut ib = b.iter();
    let mut x = ia.next().transpose().ix()?;
    let mut y = ib.next().transpose().ix()?;
    loop {
        match (&x, &y) {
            (None, None) => return Ok(()),
            (Some((ka, va)), None) => {
                f(ka, Some(va), None)?;
                x = ia.next().transpose().ix()?;
            }
            (None, Some((kb, vb))) => {
                f(kb, None, Some(vb))?;
                y = ib.next().transpose().ix()?;
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    f(ka, Some(va), None)?;
                    x = ia.next().transpose().ix()?;
                }
                std::cmp::Ordering::Greater => {
                    f(kb, None, Some(vb))?;
                    y = ib.next().transpose().ix()?;
                }
                std::cmp::Ordering::Equal => {
                    if va != vb {
                        f(ka, Some(va), Some(vb))?;
                    }
                    x = ia.next().transpose().ix()?;
                    y = ib.next().transpose().ix()?;
                }
            },
        }
    }
}

/// Compare generation `old` with `new`, keeping at most `keep` changed paths.
pub fn compare(old: &Gen, new: &Gen, root: NodeId, keep: usize) -> Result<Diff> {
    let mut d = Diff {
        old_nodes: old.nodes.len() as u64,
        ..Diff::default()
    };
    let id = |k: &[u8]| super::tables::id_from(&k[..16]);
    merge(&old.children, &new.children, |k, o, n| {
        d.entries += 1;
        if d.changed.len() < keep {
            let (parent, name) = (id(k)?, &k[16..]);
            let (what, g) = match (o, n) {
                (Some(_), None) => ("delete", old),
                (None, Some(_)) => ("create", new),
                _ => ("replace", new),
            };
            let node = super::tables::id_from(n.or(o).unwrap_or(&[])).ok();
            if let Some(pp) = g.path_of(root, parent)? {
                d.changed.push((what, join(&pp, name), node));
            }
        }
        Ok(())
    })?;
    merge(&old.nodes, &new.nodes, |k, o, n| {
        d.nodes += 1;
        if o.is_some() && n.is_some() && d.changed.len() < keep {
            let node = id(k)?;
            if let Some(p) = new.path_of(root, node)? {
                d.changed.push(("modify", p, Some(node)));
            }
        }
        Ok(())
    })?;
    merge(&old.stats, &new.stats, |_, _, _| {
        d.totals += 1;
        Ok(())
    })?;
    Ok(d)
}
