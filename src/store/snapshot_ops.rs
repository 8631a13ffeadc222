//! Snapshot commands over a store: create, list (with the space each one alone holds),
//! remove (freeing what only it held), and diff between two snapshots or a snapshot and
//! the live tree. The copy-on-write itself lives in `snapshot`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::error::Result;
use super::lock::Fence;
use super::names::Names;
use super::node::{Hash, Kind, NodeId, NodeRecord, Time};
use super::snapshot::{SnapInfo, Snapshots};
use super::sweep::Sweeper;

/// A snapshot and what it costs.
#[derive(Clone, Debug)]
pub struct Usage {
    pub info: SnapInfo,
    /// Records and entries copied because they changed after it.
    pub copies: u64,
    /// Bytes of blobs no one but this snapshot names (freed by removing it).
    pub held_bytes: u64,
}

/// How a path differs between two states of the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChangeKind {
    Created,
    Deleted,
    Modified,
    Renamed,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    pub kind: ChangeKind,
    /// The path (relative to the root): in the new state, or the old one for a delete.
    pub path: PathBuf,
    /// For a rename: where it was.
    pub from: Option<PathBuf>,
}

/// The snapshot commands.
#[derive(Clone, Copy)]
pub struct SnapshotOps<'a> {
    pub(super) snaps: &'a Snapshots,
    pub(super) fence: &'a Fence,
    pub(super) names: Names<'a>,
    pub(super) sweeper: Sweeper<'a>,
}

/// The prefix of scheduled snapshots' names.
pub const AUTO: &str = "auto-";

/// A name for a snapshot taken without one: the UTC time, `2026-12-07T02:30:11Z`.
pub(crate) fn generated_name(t: Time) -> String {
    let secs = t.secs;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

impl SnapshotOps<'_> {
    /// The snapshots' names, oldest first (no scan).
    pub fn list_names(&self) -> Vec<String> {
        self.snaps.list().into_iter().map(|i| i.name).collect()
    }

    /// Every record the snapshots keep: the snapshot's name, the node, the record.
    pub fn for_each_copy(&self, f: &mut dyn FnMut(&str, NodeId, &NodeRecord)) -> Result<()> {
        self.snaps.for_each_copy(&mut |n, id, r, _| f(n, id, r))
    }

    /// Take a snapshot of the tree now, named `name` or after the time.
    pub fn create(&self, name: Option<&str>) -> Result<SnapInfo> {
        self.fence.check()?;
        let name = match name {
            Some(n) => n.to_string(),
            None => {
                let base = generated_name(Time::now());
                let mut n = base.clone();
                let mut i = 1;
                while self.snaps.get(&n).is_ok() {
                    n = format!("{base}.{i}");
                    i += 1;
                }
                n
            }
        };
        self.snaps.create(&name)
    }

    /// Scheduled snapshots (`-o snapshot_every=…,snapshots_keep=…`): take one named
    /// `auto-<UTC time>` if the newest scheduled one is `every` old or more (or there is
    /// none), then remove the oldest scheduled ones beyond `keep`. Snapshots a person
    /// named are never removed here. Returns (taken, bytes freed by removals).
    pub fn scheduled(&self, every: u64, keep: u32) -> Result<(Option<String>, u64)> {
        let now = Time::now();
        let autos = |l: Vec<SnapInfo>| -> Vec<SnapInfo> {
            l.into_iter().filter(|i| i.name.starts_with(AUTO)).collect()
        };
        let due = autos(self.snaps.list())
            .last()
            .is_none_or(|i| now.secs - i.created.secs >= every as i64);
        let taken = if due && keep > 0 {
            let name = format!("{AUTO}{}", generated_name(now));
            Some(self.create(Some(&name))?.name)
        } else {
            None
        };
        let all = autos(self.snaps.list());
        let mut freed = 0;
        for old in all.iter().take(all.len().saturating_sub(keep as usize)) {
            freed += self.remove(&old.name)?;
        }
        Ok((taken, freed))
    }

    /// The snapshots, oldest first, with their copies and the bytes only each holds.
    pub fn list(&self) -> Result<Vec<Usage>> {
        let infos = self.snaps.list();
        // Who names each blob: everything else (live, trash, revisions) or snapshots.
        let mut others = self.sweeper.node_and_revision_refs()?;
        let mut by_snap: HashMap<String, HashMap<Hash, u64>> = HashMap::new();
        let mut holders: HashMap<Hash, u32> = HashMap::new();
        let mut copies: HashMap<String, u64> = HashMap::new();
        // A copy written no later than the previous snapshot is that one's state too:
        // removing this snapshot would move it there, not free it.
        let prev_gen: HashMap<&str, u64> = infos
            .windows(2)
            .map(|w| (w[1].name.as_str(), w[0].gen))
            .collect();
        self.snaps.for_each_copy(&mut |name, _, rec, _| {
            *copies.entry(name.to_string()).or_default() += 1;
            if prev_gen.get(name).is_some_and(|p| rec.gen <= *p) {
                others.extend(self.sweeper.content_refs(rec));
                return;
            }
            let sizes = by_snap.entry(name.to_string()).or_default();
            if let Ok(list) = self.sweeper.chunk_lists.get(&rec.content) {
                for c in list.iter() {
                    if sizes.insert(c.hash, c.len as u64).is_none() {
                        *holders.entry(c.hash).or_default() += 1;
                    }
                }
            }
        })?;
        Ok(infos
            .into_iter()
            .map(|info| {
                let held = by_snap.get(&info.name).map_or(0, |m| {
                    m.iter()
                        .filter(|(h, _)| !others.contains(*h) && holders.get(*h) == Some(&1))
                        .map(|(_, n)| n)
                        .sum()
                });
                let entries = entry_copies(self.snaps, &info.name);
                Usage {
                    copies: copies.get(&info.name).copied().unwrap_or(0) + entries,
                    held_bytes: held,
                    info,
                }
            })
            .collect())
    }

    /// Remove snapshot `name`; the blobs only it named are freed. Returns bytes freed.
    pub fn remove(&self, name: &str) -> Result<u64> {
        self.fence.check()?;
        let since = SystemTime::now();
        let dropped = self.snaps.remove(name)?;
        let mut candidates = Vec::new();
        for (_, rec) in &dropped {
            candidates.extend(self.sweeper.content_refs(rec));
        }
        self.sweeper.sweep(candidates, since)
    }

    /// What changed from snapshot `old` to snapshot `new` (None: the live tree): one
    /// change per path, sorted by path.
    pub fn diff(&self, old: &str, new: Option<&str>) -> Result<Vec<Change>> {
        let a_lens = self.snaps.lens(old)?;
        let b_lens = new.map(|n| self.snaps.lens(n)).transpose()?;
        if let Some(b) = &b_lens {
            if b.generation() < a_lens.generation() {
                return Err(super::Error::InvalidArgument(format!(
                    "snapshot {old:?} is newer than {:?}: give the older one first",
                    new.unwrap_or("")
                )));
            }
        }
        // What may differ: every copy made from `old` up to `new` (or now).
        let (_, a_chain) = self.snaps.chain(old)?;
        let b_chain = match new {
            Some(n) => self.snaps.chain(n)?.1,
            None => Vec::new(),
        };
        let areas: Vec<&PathBuf> = a_chain.iter().filter(|p| !b_chain.contains(p)).collect();
        let (rec_keys, entry_keys) = super::snapshot::changed_keys(&areas);
        let a = self.names.at(&a_lens);
        let b = match &b_lens {
            Some(l) => self.names.at(l),
            None => self.names,
        };
        let mut gone: HashMap<NodeId, PathBuf> = HashMap::new();
        let mut came: HashMap<NodeId, PathBuf> = HashMap::new();
        for (dir, name) in &entry_keys {
            // Only directories both states reach; a directory made or removed in
            // between is listed whole by the walk below.
            let (Some(pa), Some(pb)) = (a.path_of(*dir), b.path_of(*dir)) else {
                continue;
            };
            let ia = a.lookup(*dir, name).ok();
            let ib = b.lookup(*dir, name).ok();
            if ia == ib {
                continue;
            }
            if let Some(i) = ia {
                walk(&a, i, pa.join(name), &mut gone);
            }
            if let Some(i) = ib {
                walk(&b, i, pb.join(name), &mut came);
            }
        }
        let mut out = Vec::new();
        for (id, from) in &gone {
            match came.get(id) {
                Some(to) if to == from => {}
                Some(to) => out.push(Change {
                    kind: ChangeKind::Renamed,
                    path: to.clone(),
                    from: Some(from.clone()),
                }),
                None => out.push(Change {
                    kind: ChangeKind::Deleted,
                    path: from.clone(),
                    from: None,
                }),
            }
        }
        for (id, to) in &came {
            if !gone.contains_key(id) {
                out.push(Change {
                    kind: ChangeKind::Created,
                    path: to.clone(),
                    from: None,
                });
            }
        }
        for id in rec_keys {
            if came.contains_key(&id) && !gone.contains_key(&id) {
                continue; // created: listed once
            }
            let (Ok(ra), Ok(rb)) = (a.record(id), b.record(id)) else {
                continue;
            };
            let Some(pb) = b.path_of(id) else { continue };
            if a.path_of(id).is_none() || !modified(&ra, &rb) {
                continue;
            }
            out.push(Change {
                kind: ChangeKind::Modified,
                path: pb,
                from: None,
            });
        }
        out.sort_by(|x, y| x.path.cmp(&y.path).then(x.kind.cmp(&y.kind)));
        out.dedup();
        Ok(out)
    }
}

/// Did the node change in a way `diff` reports? A directory only by its own
/// attributes (its entries are reported as paths); anything else by content too.
fn modified(a: &NodeRecord, b: &NodeRecord) -> bool {
    let attrs = a.mode != b.mode
        || a.uid != b.uid
        || a.gid != b.gid
        || a.xattrs != b.xattrs
        || a.target != b.target;
    if a.kind == Kind::Dir {
        return attrs;
    }
    attrs || a.content != b.content || a.size != b.size || a.mtime != b.mtime
}

/// `id` at `path`, and everything under it if it is a directory.
fn walk(names: &Names<'_>, id: NodeId, path: PathBuf, out: &mut HashMap<NodeId, PathBuf>) {
    let mut stack = vec![(id, path)];
    while let Some((id, path)) = stack.pop() {
        if id.kind_hint() == Some(Kind::Dir) || names.record(id).is_ok_and(|r| r.kind == Kind::Dir)
        {
            for (n, c) in names.readdir(id).unwrap_or_default() {
                stack.push((c, path.join(n)));
            }
        }
        out.entry(id).or_insert(path);
    }
}

/// How many entry copies snapshot `name`'s area holds.
fn entry_copies(snaps: &Snapshots, name: &str) -> u64 {
    let Ok((_, chain)) = snaps.chain(name) else {
        return 0;
    };
    let area: &Path = &chain[0];
    fs::read_dir(area.join("entries"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| fs::read_dir(d.path()).map_or(0, |it| it.count() as u64))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_utc_times() {
        assert_eq!(
            generated_name(Time { secs: 0, nanos: 0 }),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            generated_name(Time {
                secs: 1_796_610_611,
                nanos: 5
            }),
            "2026-12-07T02:30:11Z"
        );
    }
}
