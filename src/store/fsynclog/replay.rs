//! Replaying fsync logs a writer left behind (invariant 11): entries and delta chains
//! applied to records and blobs, never over a newer record.

use super::format::{read_entries, Logged, NameOp};
use super::*;
use std::collections::HashSet;

/// The log files of a store, oldest epoch first.
pub(super) fn log_files(layout: &Layout) -> Result<Vec<PathBuf>> {
    let dir = journal_dir(layout);
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
    };
    let mut v: Vec<(u64, PathBuf)> = Vec::new();
    for ent in rd {
        let ent = ent.ctx(|| format!("read {}", dir.display()))?;
        let name = ent.file_name();
        let Some(epoch) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        v.push((epoch, ent.path()));
    }
    v.sort();
    Ok(v.into_iter().map(|(_, p)| p).collect())
}

/// What a replay works on: the store's paths and its blobs, and the blob reference
/// counts that count its record writes (a writer's open; None for a read-only open,
/// whose replay makes the next writer count afresh).
pub(crate) struct Target<'a> {
    pub layout: &'a Layout,
    pub blobs: &'a dyn BlobStore,
    pub refs: Option<&'a crate::store::refs::Refs>,
}

/// Write `value` as the record xattr of node `id` at `path`, replacing `old` (None: no
/// record), counted in the blob references.
fn set_record(
    t: &Target<'_>,
    id: NodeId,
    path: &Path,
    old: Option<&[u8]>,
    value: &[u8],
) -> Result<()> {
    let set = || {
        xattr::set(path, RECORD_XATTR, value)
            .map_err(|err| Error::io(format!("write record of {id}"), err))
    };
    match t.refs {
        Some(r) if r.counting() => {
            let before = old.map_or(Some(vec![]), |v| r.of_value(id, v));
            r.change(path, before, r.of_value(id, value), set)
        }
        _ => set(),
    }
}

/// Version of the record stored in `value` (None: unreadable).
pub(super) fn stored_version(t: &Target<'_>, id: NodeId, value: &[u8]) -> Option<u64> {
    match unframe(id, value).ok()? {
        Stored::Inline(r) => Some(r.version),
        Stored::InBlob(h) => {
            let body = t.blobs.read_verified(&h).ok()?;
            decode_body(id, &body).ok().map(|r| r.version)
        }
    }
}

/// Does an entry of the directory `parent` still name `id` as `name`?
pub(super) fn named_by(t: &Target<'_>, parent: NodeId, name: &[u8], id: NodeId) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let entry = t
        .layout
        .node_path(parent)
        .join(std::ffi::OsStr::from_bytes(name));
    fs::read_link(entry)
        .ok()
        .and_then(|t| Layout::parse_entry_target(&t))
        == Some(id)
}

/// What the log says of one name: the node it names at the end (None: unbound), and
/// every node it stopped naming on the way.
#[derive(Default)]
pub(super) struct NameState {
    pub(super) last: Option<[u8; 16]>,
    pub(super) gone: HashSet<[u8; 16]>,
}

/// Follow one name record or tombstone.
pub(super) fn follow(names: &mut HashMap<(Vec<u8>, [u8; 16]), NameState>, n: &NameOp) {
    let s = names.entry((n.name.clone(), n.parent)).or_default();
    if n.bound {
        s.last = Some(n.node);
    } else {
        if s.last == Some(n.node) {
            s.last = None;
        }
        s.gone.insert(n.node);
    }
}

/// Make the names the log holds what it says they are: a name it ends on is bound to
/// its node (the power cut may have lost the entry, or kept an entry it says was
/// removed since); a name it ends unbound loses an entry naming a node it removed.
/// An entry naming a node the log never saw at that name is newer and stays. Returns
/// the nodes the log's names bind (their node files are recreated if lost).
pub(super) fn apply_names(
    t: &Target<'_>,
    names: &HashMap<(Vec<u8>, [u8; 16]), NameState>,
) -> Result<HashSet<NodeId>> {
    use std::os::unix::ffi::OsStrExt;
    let mut bound = HashSet::new();
    for ((name, parent), s) in names {
        let dir = t.layout.node_path(NodeId(uuid::Uuid::from_bytes(*parent)));
        if !dir.is_dir() {
            continue; // the directory is gone: so are its names
        }
        let entry = dir.join(std::ffi::OsStr::from_bytes(name));
        let now = match fs::symlink_metadata(&entry) {
            Ok(_) => match fs::read_link(&entry)
                .ok()
                .and_then(|l| Layout::parse_entry_target(&l))
            {
                Some(id) => Some(id.0.into_bytes()),
                None => continue, // not an entry: not ours to touch
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(format!("read {}", entry.display()), e)),
        };
        let stale = now.is_some_and(|n| s.gone.contains(&n) && Some(n) != s.last);
        if stale {
            fs::remove_file(&entry).ctx(|| format!("remove {}", entry.display()))?;
            log::warn!(
                "fsync log: {} named a node removed since; the entry is removed",
                entry.display()
            );
        }
        match s.last {
            Some(n) if (now.is_none() || stale) && !removed_since(t, n) => {
                let id = NodeId(uuid::Uuid::from_bytes(n));
                std::os::unix::fs::symlink(Layout::entry_target(id), &entry)
                    .ctx(|| format!("bind {}", entry.display()))?;
                log::warn!("fsync log: {} is restored from the log", entry.display());
                bound.insert(id);
            }
            Some(n) if now == Some(n) => {
                bound.insert(NodeId(uuid::Uuid::from_bytes(n)));
            }
            _ => {}
        }
    }
    Ok(bound)
}

/// Does node `n`'s record on disk say it lost its last name (a removal that reached the
/// disk while its tombstone did not)? Then it stays unnamed.
fn removed_since(t: &Target<'_>, n: [u8; 16]) -> bool {
    let id = NodeId(uuid::Uuid::from_bytes(n));
    match xattr::get(t.layout.node_path(id), RECORD_XATTR) {
        Ok(Some(v)) => match unframe(id, &v) {
            Ok(Stored::Inline(r)) => r.trash.is_some() || r.nlink == 0,
            _ => false,
        },
        _ => false,
    }
}

/// Apply one entry; returns whether it changed anything. `bound`: nodes the log's
/// names bind.
pub(super) fn apply(t: &Target<'_>, e: &Entry, bound: &HashSet<NodeId>) -> Result<bool> {
    let id = NodeId(uuid::Uuid::from_bytes(e.node));
    let mut changed = false;
    for b in &e.blobs {
        changed |= t.blobs.restore(b)?;
    }
    let path = t.layout.node_path(id);
    let current = match xattr::get(&path, RECORD_XATTR) {
        Ok(v) => v,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            // The node's file did not survive. Bring it back only if an entry still
            // names it (the logged record's parent hint), so a node deleted since is
            // not resurrected.
            let rec = match unframe(id, &e.value) {
                Ok(Stored::Inline(r)) => Some(r),
                Ok(Stored::InBlob(h)) => t
                    .blobs
                    .read_verified(&h)
                    .ok()
                    .and_then(|b| decode_body(id, &b).ok()),
                Err(_) => None,
            };
            let named = bound.contains(&id)
                || rec.as_ref().is_some_and(|r| {
                    r.trash.is_none() && r.parent.is_some_and(|p| named_by(t, p, &r.name, id))
                });
            if !named {
                return Ok(changed);
            }
            let dir = path.parent().expect("node paths have a parent");
            fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
            File::create(&path).ctx(|| format!("create {}", path.display()))?;
            log::warn!("fsync log: node {id} was lost and is restored from the log");
            None
        }
        Err(err) => return Err(Error::io(format!("read record of {id}"), err)),
    };
    let older = match &current {
        None => true,
        Some(v) => stored_version(t, id, v).is_none_or(|have| have < e.version),
    };
    if older {
        if !path.is_file() {
            return Ok(changed); // a directory or something else: not ours to touch
        }
        set_record(t, id, &path, current.as_deref(), &e.value)?;
        changed = true;
    }
    Ok(changed)
}

/// Are all the blobs `rec` names present and whole?
pub(super) fn record_whole(t: &Target<'_>, id: NodeId, rec: &NodeRecord) -> bool {
    let list: Vec<ChunkRef> = match &rec.content {
        Content::Empty | Content::Inline(_) => return true,
        Content::Chunks(v) => v.clone(),
        Content::Manifest(h) => match manifest(t, id, h) {
            Ok(v) => v,
            Err(_) => return false,
        },
    };
    list.iter().all(|c| t.blobs.read_verified(&c.hash).is_ok())
}

/// A blob a chain builds on, verified.
pub(super) fn verified(
    t: &Target<'_>,
    id: NodeId,
    h: &crate::store::node::Hash,
) -> Result<Vec<u8>> {
    t.blobs.read_verified(h).map_err(|fault| Error::Integrity {
        what: format!("blob {} of {id}", hash_hex(h)),
        detail: fault.to_string(),
    })
}

/// The chunk list of `id`'s manifest blob `h`, verified.
pub(super) fn manifest(
    t: &Target<'_>,
    id: NodeId,
    h: &crate::store::node::Hash,
) -> Result<Vec<ChunkRef>> {
    decode_manifest(id, &verified(t, id, h)?)
}

/// Apply a chain of deltas to node `node` if its record still has the chain's base
/// content; returns whether it did.
pub(super) fn apply_chain(
    t: &Target<'_>,
    cs: u64,
    node: [u8; 16],
    chain: &[Delta],
) -> Result<bool> {
    let id = NodeId(uuid::Uuid::from_bytes(node));
    let path = t.layout.node_path(id);
    let old_value = match xattr::get(&path, RECORD_XATTR) {
        Ok(Some(v)) => v,
        Ok(None) => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(format!("read record of {id}"), e)),
    };
    let mut rec: NodeRecord = match unframe(id, &old_value)? {
        Stored::Inline(r) => r,
        Stored::InBlob(h) => decode_body(id, &verified(t, id, &h)?)?,
    };
    let old = rec.clone();
    let Some(first) = chain.first() else {
        return Ok(false);
    };
    if rec.kind != Kind::File {
        return Ok(false);
    }
    if chain_base(&rec.content, rec.size) != first.base {
        // A newer commit reached the disk: it holds these bytes, if it is whole. A
        // commit at close is not synced, so its record can reach the disk before its
        // blobs (ext4 with a journal commits the xattr and the blob's rename before
        // delayed data): then it never happened, and the chain rebuilds the file.
        if record_whole(t, id, &rec) {
            return Ok(false);
        }
        let Ok((content, size)) = postcard::from_bytes::<(Content, u64)>(&first.base) else {
            return Ok(false);
        };
        log::warn!(
            "fsync log: node {id}'s newer record names lost blobs; its fsynced content is rebuilt"
        );
        rec.content = content;
        rec.size = size;
    }
    // The base's chunks, and the bytes of every chunk the chain writes.
    let mut list: BTreeMap<u64, ChunkRef> = BTreeMap::new();
    let mut bytes: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    match &rec.content {
        Content::Empty => {}
        Content::Inline(d) => {
            bytes.insert(0, d.clone());
        }
        Content::Chunks(v) => list.extend(v.iter().map(|c| (c.index, c.clone()))),
        Content::Manifest(h) => {
            list.extend(manifest(t, id, h)?.into_iter().map(|c| (c.index, c)));
        }
    }
    let mut size = rec.size;
    let mut mtime = None;
    for d in chain {
        for (off, data) in &d.writes {
            let mut pos = *off;
            let mut rest = &data[..];
            while !rest.is_empty() {
                let idx = pos / cs;
                let a = (pos - idx * cs) as usize;
                let n = rest.len().min(cs as usize - a);
                let buf = match bytes.entry(idx) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(match list.get(&idx) {
                            Some(c) => verified(t, id, &c.hash)?,
                            None => Vec::new(),
                        })
                    }
                };
                if buf.len() < a + n {
                    buf.resize(a + n, 0);
                }
                buf[a..a + n].copy_from_slice(&rest[..n]);
                pos += n as u64;
                rest = &rest[n..];
            }
        }
        size = d.size;
        mtime = d.mtime.or(mtime);
    }
    // The new content, stored as a commit stores it.
    let only_first = list.keys().chain(bytes.keys()).all(|i| *i == 0);
    if size <= INLINE_DATA_MAX && only_first {
        let mut d = match (bytes.remove(&0), list.get(&0)) {
            (Some(b), _) => b,
            (None, Some(c)) => verified(t, id, &c.hash)?,
            (None, None) => Vec::new(),
        };
        d.resize(size as usize, 0);
        rec.stored = d.len() as u64;
        rec.content = inline_content(d);
    } else {
        for (idx, mut d) in bytes {
            d.truncate((size.saturating_sub(idx * cs)).min(cs) as usize);
            if d.iter().all(|b| *b == 0) {
                list.remove(&idx);
                continue;
            }
            t.blobs.restore(&d)?;
            list.insert(
                idx,
                ChunkRef {
                    index: idx,
                    hash: hash_of(&d),
                    len: d.len() as u32,
                },
            );
        }
        let v: Vec<ChunkRef> = list.into_values().collect();
        rec.stored = v.iter().map(|c| c.len as u64).sum();
        rec.content = chunks_content(v, |m| {
            t.blobs.restore(m)?;
            Ok(hash_of(m))
        })?;
    }
    rec.size = size;
    if let Some(t) = mtime {
        rec.mtime = t;
        rec.ctime = rec.ctime.max(t);
    }
    rec.version += 1;
    // A snapshot taken while the chain was open saw the record before it.
    rec.gen = crate::store::snapshot::preserve_at_replay(t, id, &old, &old_value)?;
    let body = encode_body(&rec);
    let value = if body.len() > INLINE_RECORD_LIMIT {
        t.blobs.restore(&body)?;
        frame(true, &hash_of(&body), rec.has_gens())
    } else {
        frame(false, &body, rec.has_gens())
    };
    set_record(t, id, &path, Some(&old_value), &value)?;
    Ok(true)
}

/// Replay every log of the store (the caller holds the writer lock), make the result
/// durable and delete the logs. Returns how many entries changed something.
pub(crate) fn recover(t: &Target<'_>) -> Result<usize> {
    let files = log_files(t.layout)?;
    if files.is_empty() {
        return Ok(0);
    }
    let mut applied = 0;
    let mut total = 0;
    // The last chain of each node, in log order: a full entry that ends chains (the
    // node's durable state from then on) drops it, a delta on another base starts anew.
    let mut chains: HashMap<[u8; 16], Vec<Delta>> = HashMap::new();
    let mut order: Vec<[u8; 16]> = Vec::new();
    let mut all = Vec::new();
    for f in &files {
        let mut entries = read_entries(f)?;
        if void_path(f).exists() {
            // The log failed while it held names, and the store was synced then: its
            // names are in the store, its tombstones may be missing (`void_names`).
            entries.retain(|e| !matches!(e, Logged::Name(_)));
            log::info!("fsync log {}: names voided, not replayed", f.display());
        }
        all.extend(entries);
    }
    total += all.len();
    // Names first: a node file lost in the cut is recreated where a name binds it.
    let mut names = HashMap::new();
    for e in &all {
        if let Logged::Name(n) = e {
            follow(&mut names, n);
        }
    }
    let bound = apply_names(t, &names)?;
    {
        for e in all {
            match e {
                Logged::Name(_) => {}
                Logged::Full(e, ends) => {
                    if ends {
                        chains.remove(&e.node);
                    }
                    if apply(t, &e, &bound)? {
                        applied += 1;
                    }
                }
                Logged::Delta(d) => {
                    let c = chains.entry(d.node).or_insert_with(|| {
                        order.push(d.node);
                        Vec::new()
                    });
                    if c.first().is_some_and(|f| f.base != d.base) {
                        c.clear();
                    }
                    c.push(d);
                }
            }
        }
    }
    if !chains.is_empty() {
        let cs = t.layout.read_format()?.chunk_size as u64;
        for node in &order {
            // A node listed twice (its chain ended and another began) is done once.
            let Some(chain) = chains.remove(node) else {
                continue;
            };
            match apply_chain(t, cs, *node, &chain) {
                Ok(true) => applied += 1,
                Ok(false) => {}
                // The content the fsyncs wrote over cannot be read: the file keeps
                // that content, and fsck reports the damaged blob.
                Err(e @ Error::Integrity { .. }) => {
                    log::error!(
                        "fsync log: writes to {} not replayed: {e}",
                        NodeId(uuid::Uuid::from_bytes(*node))
                    )
                }
                Err(e) => return Err(e),
            }
        }
    }
    syncfs(&t.layout.root)?;
    for f in &files {
        fs::remove_file(f).ctx(|| format!("remove {}", f.display()))?;
        remove_void(&void_path(f))?;
    }
    sync_dir(&journal_dir(t.layout))?;
    if total > 0 {
        log::info!("fsync log: replayed {total} entries ({applied} changed the store)");
    }
    Ok(applied)
}
