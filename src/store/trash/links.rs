//! The trash as its link names tell it (`<nanos>.<uuid>.<parent>.<name tag>`): which
//! node was deleted out of which directory, and by about which name, known from one
//! listing of `trash/` without reading a record. Finding, restoring and purging one
//! entry read the records of that entry's tree and of the entries its path names, not
//! every record in the trash.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::{Trash, TrashEntry};
use crate::store::error::{Error, Result};
use crate::store::layout::Layout;
use crate::store::node::NodeId;

/// One trash link, by its name.
pub(super) struct Link {
    pub name: String,
    pub id: NodeId,
    /// The directory the node was deleted from.
    pub parent: NodeId,
    /// `Layout::name_tag` of the name it was deleted as (None in an old link).
    pub tag: Option<u32>,
}

/// Every trash link, by node and by the directory it was deleted from.
pub(super) struct Links {
    links: Vec<Link>,
    by_parent: HashMap<NodeId, Vec<usize>>,
    by_id: HashMap<NodeId, usize>,
}

impl Links {
    /// List `trash/`. A link named before names carried the parent costs a record read.
    pub(super) fn read(t: &Trash) -> Result<Links> {
        let mut links = vec![];
        for e in t.links()? {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(p) = Layout::parse_trash_link(&name) else {
                continue;
            };
            let parent = match p.parent {
                Some(parent) => parent,
                None => match t.records.read(p.id).ok().and_then(|r| r.trash) {
                    Some(origin) => origin.parent,
                    None => continue,
                },
            };
            links.push(Link {
                name,
                id: p.id,
                parent,
                tag: p.tag,
            });
        }
        let mut by_parent: HashMap<NodeId, Vec<usize>> = HashMap::new();
        let mut by_id = HashMap::new();
        for (i, l) in links.iter().enumerate() {
            by_parent.entry(l.parent).or_default().push(i);
            by_id.insert(l.id, i);
        }
        Ok(Links {
            links,
            by_parent,
            by_id,
        })
    }

    /// The links of what was deleted out of `dir`.
    pub(super) fn children(&self, dir: NodeId) -> impl Iterator<Item = &Link> {
        let at = self.by_parent.get(&dir).map(Vec::as_slice).unwrap_or(&[]);
        at.iter()
            .map(|&i| &self.links[i])
            .filter(move |l| l.id != dir)
    }

    /// Node `id`'s link and everything deleted out of it, down the tree, deepest first
    /// (each directory comes after what was in it).
    pub(super) fn tree(&self, id: NodeId) -> Vec<&Link> {
        let Some(&top) = self.by_id.get(&id) else {
            return vec![];
        };
        let mut out = vec![&self.links[top]];
        let mut i = 0;
        while i < out.len() {
            let dir = out[i].id;
            out.extend(self.children(dir));
            i += 1;
        }
        out.reverse();
        out
    }
}

impl Trash<'_> {
    /// The entry behind link `l` (its record read); None if the record says the node
    /// is not in the trash, or was deleted from another directory than the link says.
    fn entry_of(&self, l: &Link) -> Option<TrashEntry> {
        let rec = self.records.read(l.id).ok()?;
        TrashEntry::of(l.id, l.name.clone(), rec).filter(|e| e.origin_parent == l.parent)
    }

    /// What was deleted out of `dir`, the latest deletion of each name, by name.
    pub(super) fn latest_children(&self, links: &Links, dir: NodeId) -> Vec<TrashEntry> {
        let kids: Vec<&Link> = links.children(dir).collect();
        let ids: Vec<NodeId> = kids.iter().map(|l| l.id).collect();
        self.records.prefetch(&ids);
        let mut by_name: BTreeMap<Vec<u8>, TrashEntry> = BTreeMap::new();
        for e in kids.into_iter().filter_map(|l| self.entry_of(l)) {
            match by_name.get(&e.origin_name) {
                Some(had) if had.at.unix_nanos() > e.at.unix_nanos() => {}
                _ => {
                    by_name.insert(e.origin_name.clone(), e);
                }
            }
        }
        by_name.into_values().collect()
    }

    /// Find a trash entry by original path (the most recent one deleted from there) or
    /// by node id (or a unique prefix of it, 4 characters or more). A path comes first:
    /// in a large trash a short name like `cafe` is often also the prefix of some id.
    /// The entry's `origin_path` is filled in; the rest of the connection (`within`,
    /// totals) is `list`'s.
    pub(super) fn find(&self, links: &Links, sel: &OsStr) -> Result<TrashEntry> {
        if let Some(e) = self.find_by_path(links, Path::new(sel)) {
            return Ok(e);
        }
        let as_id = sel.to_str().unwrap_or("");
        let by_id: Vec<TrashEntry> = links
            .links
            .iter()
            .filter(|l| as_id.len() >= 4 && l.id.to_string().starts_with(as_id))
            .filter_map(|l| self.entry_of(l))
            .collect();
        match <[TrashEntry; 1]>::try_from(by_id) {
            Ok([mut e]) => {
                e.origin_path = self.origin_path(links, &e);
                Ok(e)
            }
            Err(v) if v.is_empty() => Err(Error::NotInTrash(sel.to_string_lossy().into_owned())),
            Err(_) => Err(Error::Invalid("ambiguous trash id prefix")),
        }
    }

    /// The latest entry deleted from `want` (relative to the root). The path is followed
    /// through live directories and trashed ones alike: `a/b/c` may be a file deleted
    /// from live `a/b`, or from a directory `b` deleted from `a` after it.
    fn find_by_path(&self, links: &Links, want: &Path) -> Option<TrashEntry> {
        let mut parts: Vec<&OsStr> = vec![];
        for c in want.components() {
            match c {
                Component::Normal(n) => parts.push(n),
                Component::RootDir | Component::CurDir => {}
                Component::ParentDir | Component::Prefix(_) => return None,
            }
        }
        // The nodes the path so far may name: (id, live).
        let mut at = vec![(self.names.root, true)];
        let mut found = vec![];
        for (k, part) in parts.iter().enumerate() {
            let last = k + 1 == parts.len();
            let mut next = vec![];
            for &(dir, live) in &at {
                if live && !last {
                    if let Ok(id) = self.names.lookup(dir, part) {
                        next.push((id, true));
                    }
                }
                let tag = Layout::name_tag(part.as_bytes());
                let named = links
                    .children(dir)
                    .filter(|l| l.tag.is_none_or(|t| t == tag));
                for e in named.filter_map(|l| self.entry_of(l)) {
                    if e.origin_name != part.as_bytes() {
                        continue;
                    }
                    if last {
                        found.push(e);
                    } else {
                        next.push((e.id, false));
                    }
                }
            }
            at = next;
        }
        let mut e = found.into_iter().max_by_key(|e| e.at.unix_nanos())?;
        e.origin_path = Some(parts.iter().collect());
        Some(e)
    }

    /// The original path of trashed entry `e`, through the trashed directories it was
    /// deleted with; None if one of them is gone for good.
    fn origin_path(&self, links: &Links, e: &TrashEntry) -> Option<PathBuf> {
        let mut names = vec![e.origin_name.clone()];
        let mut dir = e.origin_parent;
        for _ in 0..4096 {
            let base = match links.by_id.get(&dir) {
                Some(&i) => {
                    let up = self.entry_of(&links.links[i])?;
                    names.push(up.origin_name);
                    dir = up.origin_parent;
                    continue;
                }
                None if dir == self.names.root => PathBuf::new(),
                None => self.names.path_of(dir)?,
            };
            return Some(
                names
                    .iter()
                    .rev()
                    .fold(base, |p, n| p.join(OsStr::from_bytes(n))),
            );
        }
        None
    }
}
