//! Bringing one generation of the index in line with the tree, key by key.
//!
//! The applier never trusts an event's description of a change: for every node and
//! entry an event names it reads what the store holds *now* and moves the index from
//! what it held to that, keeping every directory's totals equal to its own size plus
//! what its entries contribute. Applying the same key twice, or late, is harmless, so
//! the index converges on the tree whatever order events arrive in.
//!
//! The same code builds a generation from nothing (`index_dir` on the root): a rebuild
//! is an applier that starts empty.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use super::tables::{Delta, Gen, NodeSum, Stats, MAX_DEPTH};
use crate::store::{Error, Kind, NodeId, Result, Store};

/// Work budget of one propagation (a chain of ancestors, times hard links); a cycle of
/// a half-applied index exhausts it and asks for a reconcile instead of looping.
const PROPAGATE_BUDGET: usize = 1 << 20;

pub struct Applier<'a> {
    pub g: &'a Gen,
    store: &'a Store,
    root: NodeId,
    /// Directory totals changed in this batch, not yet written.
    pending: HashMap<NodeId, Delta>,
    /// Nodes that lost their last entry in this batch (removed at `finish` unless a
    /// later key of the batch names them again, as the second half of a rename does).
    orphans: HashSet<NodeId>,
    /// Something did not add up: the caller should schedule a reconcile.
    pub inconsistent: bool,
    /// Nodes indexed (for a rebuild's report).
    pub indexed: u64,
    /// The parents of directories, cached for this batch (a chain of ancestors is
    /// walked for every size change); cleared whenever a directory is bound or unbound.
    parents: HashMap<NodeId, Vec<NodeId>>,
    /// Paths of directories, cached likewise, for the change log.
    paths: HashMap<NodeId, Option<Vec<u8>>>,
}

impl<'a> Applier<'a> {
    pub fn new(g: &'a Gen, store: &'a Store) -> Applier<'a> {
        Applier {
            g,
            store,
            root: store.root(),
            pending: HashMap::new(),
            orphans: HashSet::new(),
            inconsistent: false,
            indexed: 0,
            parents: HashMap::new(),
            paths: HashMap::new(),
        }
    }

    /// A directory was bound or unbound: cached ancestry no longer holds.
    fn moved(&mut self, kind: Kind) {
        if kind == Kind::Dir {
            self.parents.clear();
            self.paths.clear();
        }
    }

    fn parents_of(&mut self, dir: NodeId) -> Result<Vec<NodeId>> {
        if let Some(p) = self.parents.get(&dir) {
            return Ok(p.clone());
        }
        let p: Vec<NodeId> = self.g.links_of(dir)?.into_iter().map(|l| l.0).collect();
        self.parents.insert(dir, p.clone());
        Ok(p)
    }

    /// The path of any node through its first entry, None if unreachable.
    pub fn node_path(&mut self, id: NodeId) -> Result<Option<Vec<u8>>> {
        if id == self.root {
            return Ok(Some(Vec::new()));
        }
        let Some((p, name)) = self.g.first_link(id)? else {
            return Ok(None);
        };
        Ok(self.dir_path(p)?.map(|pp| super::join(&pp, &name)))
    }

    /// The path of a directory (relative to the root), None if unreachable.
    pub fn dir_path(&mut self, dir: NodeId) -> Result<Option<Vec<u8>>> {
        if let Some(p) = self.paths.get(&dir) {
            return Ok(p.clone());
        }
        let p = self.g.path_of(self.root, dir)?;
        self.paths.insert(dir, p.clone());
        Ok(p)
    }

    /// A directory's totals as of now (written plus pending).
    fn stats_of(&self, dir: NodeId) -> Result<Stats> {
        let mut s = self.g.stats(dir)?.unwrap_or_default();
        if let Some(d) = self.pending.get(&dir) {
            if !s.apply(*d) {
                return Err(Error::IndexCorrupt(format!("negative totals for {dir}")));
            }
        }
        Ok(s)
    }

    fn contribution(&self, id: NodeId, sum: &NodeSum) -> Result<Delta> {
        let st = if sum.kind == Kind::Dir {
            Some(self.stats_of(id)?)
        } else {
            None
        };
        Ok(Delta::of_entry(sum, st))
    }

    /// Add `d` to `dir` and to every directory above it, along every entry path.
    fn propagate(&mut self, dir: NodeId, d: Delta) -> Result<()> {
        if d.is_zero() {
            return Ok(());
        }
        let mut work = vec![(dir, 0usize)];
        let mut budget = PROPAGATE_BUDGET;
        while let Some((x, depth)) = work.pop() {
            if budget == 0 || depth > MAX_DEPTH {
                self.inconsistent = true;
                return Ok(());
            }
            budget -= 1;
            self.pending.entry(x).or_default().add(d);
            if x == self.root {
                continue;
            }
            for p in self.parents_of(x)? {
                work.push((p, depth + 1));
            }
        }
        Ok(())
    }

    /// A node's record may have changed: follow its size and mtime.
    pub fn refresh_node(&mut self, id: NodeId) -> Result<()> {
        let Some(old) = self.g.node(id)? else {
            return Ok(()); // not reachable: indexed when an entry names it
        };
        let rec = match self.store.records.read(id) {
            Ok(r) => r,
            Err(Error::NotFound) => return Ok(()), // its entries' events remove it
            Err(e) => {
                log::warn!("index: cannot read node {id}: {e}");
                return Ok(());
            }
        };
        let new = NodeSum::of(&rec);
        if new == old {
            return Ok(());
        }
        let d = Delta {
            bytes: new.size as i64 - old.size as i64,
            ..Delta::default()
        };
        self.g.put_node(id, &new)?;
        if new.kind == Kind::Dir {
            self.propagate(id, d)?;
        } else {
            for (p, _) in self.g.links_of(id)? {
                self.propagate(p, d)?;
            }
        }
        Ok(())
    }

    /// An entry may have been bound, removed or re-pointed.
    pub fn refresh_entry(&mut self, parent: NodeId, name: &OsStr) -> Result<()> {
        match self.g.node(parent)? {
            Some(s) if s.kind == Kind::Dir => {}
            _ => return Ok(()), // its directory is not reachable (yet)
        }
        let on_disk = match self.store.names().lookup(parent, name) {
            Ok(c) => Some(c),
            Err(Error::NotFound) | Err(Error::NotDir) => None,
            Err(e) => {
                log::warn!("index: cannot read entry {name:?} of {parent}: {e}");
                self.inconsistent = true;
                return Ok(());
            }
        };
        let indexed = self.g.child(parent, name)?;
        if on_disk == indexed {
            return Ok(());
        }
        if let Some(old) = indexed {
            let (d, kind) = match self.g.node(old)? {
                Some(sum) => (self.contribution(old, &sum)?, sum.kind),
                None => (Delta::default(), Kind::File),
            };
            self.g.unbind(parent, name.as_bytes(), old)?;
            self.moved(kind);
            self.propagate(parent, -d)?;
            if self.g.first_link(old)?.is_none() {
                self.orphans.insert(old);
            }
        }
        if let Some(new) = on_disk {
            self.attach(parent, name.as_bytes(), new)?;
        }
        Ok(())
    }

    /// Bind `parent/name` to `child`, indexing `child` (and what is below it) first if
    /// the index does not hold it yet.
    fn attach(&mut self, parent: NodeId, name: &[u8], child: NodeId) -> Result<()> {
        let sum = match self.g.node(child)? {
            Some(s) => s,
            None => match self.index_new(child)? {
                Some(s) => s,
                None => return Ok(()), // a dangling entry: nothing to index
            },
        };
        let d = self.contribution(child, &sum)?;
        self.g.bind(parent, name, child)?;
        self.moved(sum.kind);
        self.propagate(parent, d)?;
        self.orphans.remove(&child);
        Ok(())
    }

    /// Index a node the index does not hold, and if it is a directory everything below
    /// it, computing the totals bottom-up. Iterative: trees can be thousands deep.
    /// Returns None if the node has no readable record.
    pub fn index_new(&mut self, top: NodeId) -> Result<Option<NodeSum>> {
        let Some(top_sum) = self.read_sum(top) else {
            return Ok(None);
        };
        self.g.put_node(top, &top_sum)?;
        self.indexed += 1;
        if top_sum.kind != Kind::Dir {
            return Ok(Some(top_sum));
        }
        struct Frame {
            id: NodeId,
            entries: Vec<(OsString, NodeId)>,
            pos: usize,
            acc: Stats,
        }
        let frame = |s: &mut Self, id: NodeId, sum: &NodeSum| Frame {
            id,
            entries: s.entries_of(id),
            pos: 0,
            acc: Stats::own(sum),
        };
        let mut stack = vec![frame(self, top, &top_sum)];
        while let Some(f) = stack.last_mut() {
            if f.pos == f.entries.len() {
                let done = stack.pop().unwrap();
                self.g.put_stats(done.id, &done.acc)?;
                self.pending.remove(&done.id);
                if let Some(up) = stack.last_mut() {
                    let d = Delta::of_entry(
                        &NodeSum {
                            kind: Kind::Dir,
                            size: 0,
                            mtime: Default::default(),
                        },
                        Some(done.acc),
                    );
                    up.acc.apply(d);
                }
                continue;
            }
            let (name, child) = f.entries[f.pos].clone();
            f.pos += 1;
            let dir = f.id;
            if let Some(sum) = self.g.node(child)? {
                // Already indexed (another link of a file, or a directory seen twice in
                // a tree that changed during the walk): link it, do not descend.
                let d = self.contribution(child, &sum)?;
                self.g.bind(dir, name.as_bytes(), child)?;
                self.orphans.remove(&child);
                stack.last_mut().unwrap().acc.apply(d);
                continue;
            }
            let Some(sum) = self.read_sum(child) else {
                continue;
            };
            self.g.put_node(child, &sum)?;
            self.g.bind(dir, name.as_bytes(), child)?;
            self.indexed += 1;
            if sum.kind == Kind::Dir {
                if stack.len() > MAX_DEPTH {
                    self.inconsistent = true;
                    continue;
                }
                let fr = frame(self, child, &sum);
                stack.push(fr);
            } else {
                stack
                    .last_mut()
                    .unwrap()
                    .acc
                    .apply(Delta::of_entry(&sum, None));
            }
        }
        Ok(Some(top_sum))
    }

    fn read_sum(&mut self, id: NodeId) -> Option<NodeSum> {
        match self.store.records.read(id) {
            Ok(r) => Some(NodeSum::of(&r)),
            Err(Error::NotFound) => None,
            Err(e) => {
                log::warn!("index: node {id} skipped: {e}");
                None
            }
        }
    }

    fn entries_of(&mut self, dir: NodeId) -> Vec<(OsString, NodeId)> {
        match self.store.names().readdir(dir) {
            Ok(v) => v,
            Err(Error::NotFound) => Vec::new(),
            Err(e) => {
                log::warn!("index: directory {dir} not listed: {e}");
                self.inconsistent = true;
                Vec::new()
            }
        }
    }

    /// End of a batch: drop what lost its last entry, write the totals.
    pub fn finish(mut self) -> Result<bool> {
        let orphans: Vec<NodeId> = self.orphans.drain().collect();
        for o in orphans {
            if o != self.root && self.g.first_link(o)?.is_none() {
                self.remove_subtree(o)?;
            }
        }
        for (dir, d) in std::mem::take(&mut self.pending) {
            if d.is_zero() || self.g.node(dir)?.is_none() {
                continue;
            }
            let mut s = self.g.stats(dir)?.unwrap_or_default();
            if !s.apply(d) {
                self.inconsistent = true;
            }
            self.g.put_stats(dir, &s)?;
        }
        Ok(self.inconsistent)
    }

    /// Forget a node no entry names, and what only it reached.
    fn remove_subtree(&mut self, top: NodeId) -> Result<()> {
        let mut work = vec![top];
        while let Some(x) = work.pop() {
            self.g.del_node(x)?;
            self.pending.remove(&x);
            let kids: Vec<(Vec<u8>, NodeId)> = self.g.children_of(x).collect::<Result<_>>()?;
            for (name, c) in kids {
                self.g.unbind(x, &name, c)?;
                if c != self.root && self.g.first_link(c)?.is_none() {
                    work.push(c);
                }
            }
        }
        Ok(())
    }
}
