//! The check's scan: every node, entry, trash link, revision and blob read once from
//! the disk (no cache), and which blobs the records need.

use super::*;

/// What the scan knows about one node file.
pub(super) struct NodeInfo {
    pub(super) is_dir: bool,
    pub(super) age: Duration,
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// The record, or why it could not be read. `Err(None)`: the file has no record.
    pub(super) rec: std::result::Result<NodeRecord, Option<String>>,
    /// The blob the record spilled into, if any.
    pub(super) spill: Option<Hash>,
}

/// One entry of a directory node.
pub(super) struct Entry {
    pub(super) name: OsString,
    pub(super) child: NodeId,
}

/// A record kept under revisions/.
pub(super) struct Revision {
    pub(super) node: NodeId,
    pub(super) stamp: String,
    pub(super) rec: NodeRecord,
    pub(super) spill: Option<Hash>,
}

/// Everything a read-only pass over the store finds.
#[derive(Default)]
pub(super) struct Scan {
    pub(super) nodes: HashMap<NodeId, NodeInfo>,
    pub(super) entries: HashMap<NodeId, Vec<Entry>>,
    /// Entries naming each node, over all directory nodes.
    pub(super) refs: HashMap<NodeId, Vec<(NodeId, OsString)>>,
    /// Display path of every node reachable from the root, a trashed node or an orphan.
    pub(super) paths: HashMap<NodeId, String>,
    pub(super) reachable: HashSet<NodeId>,
    /// trash link name -> node
    pub(super) trash: BTreeMap<String, NodeId>,
    pub(super) revisions: Vec<Revision>,
    /// Existing blob files: hash -> (size, age).
    pub(super) blobs: HashMap<Hash, (u64, Duration)>,
    pub(super) stale_staging: Vec<PathBuf>,
    pub(super) problems: Vec<Problem>,
    /// Some record could not be read: the referenced blob set is incomplete.
    pub(super) unknown_refs: bool,
}

impl Checker<'_> {
    /// Read a node's record straight from its file: the record and its spill blob.
    pub(super) fn check_read_record(
        &self,
        id: NodeId,
        path: &Path,
    ) -> (
        std::result::Result<NodeRecord, Option<String>>,
        Option<Hash>,
    ) {
        let value = match xattr::get(path, RECORD_XATTR) {
            Ok(Some(v)) => v,
            Ok(None) => return (Err(None), None),
            Err(e) => return (Err(Some(format!("cannot read record: {e}"))), None),
        };
        self.decode_value(id, &value)
    }

    pub(super) fn decode_value(
        &self,
        id: NodeId,
        value: &[u8],
    ) -> (
        std::result::Result<NodeRecord, Option<String>>,
        Option<Hash>,
    ) {
        match unframe(id, value) {
            Ok(Stored::Inline(r)) => (Ok(r), None),
            Ok(Stored::InBlob(h)) => match self.s.blobs.read_verified(&h) {
                Ok(body) => (
                    decode_body(id, &body).map_err(|e| Some(e.to_string())),
                    Some(h),
                ),
                Err(why) => (
                    Err(Some(format!("record blob {} is {why}", hash_hex(&h)))),
                    Some(h),
                ),
            },
            Err(Error::CorruptRecord { detail, .. }) => (Err(Some(detail)), None),
            Err(e) => (Err(Some(e.to_string())), None),
        }
    }

    /// The read-only pass shared by fsck, scrub and gc.
    pub(super) fn scan(&self, progress: &mut dyn FnMut(&Progress)) -> Result<Scan> {
        let now = SystemTime::now();
        let mut s = Scan::default();
        let rel = |p: &Path| -> String {
            p.strip_prefix(&self.s.layout.root)
                .unwrap_or(p)
                .display()
                .to_string()
        };
        let stray = |s: &mut Scan, p: &Path, why: &str| {
            s.problems.push(Problem {
                code: "stray_file",
                path: rel(p),
                detail: why.into(),
                repaired: false,
                action: Action::RemovePath(p.to_path_buf()),
            })
        };

        // 1. Every node file: nodes/ab/cd/<uuid>.
        let mut done = 0u64;
        for a in read_dir_sorted(&self.s.layout.nodes())? {
            let an = a.file_name().to_string_lossy().into_owned();
            if !is_hex(&an, 2) || !a.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stray(&mut s, &a.path(), "not a node shard directory");
                continue;
            }
            for b in read_dir_sorted(&a.path())? {
                let bn = b.file_name().to_string_lossy().into_owned();
                if !is_hex(&bn, 2) || !b.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stray(&mut s, &b.path(), "not a node shard directory");
                    continue;
                }
                for n in read_dir_sorted(&b.path())? {
                    let name = n.file_name().to_string_lossy().into_owned();
                    let id = match Uuid::parse_str(&name) {
                        Ok(u)
                            if u.hyphenated().to_string() == name
                                && name[0..2] == an
                                && name[2..4] == bn =>
                        {
                            NodeId(u)
                        }
                        _ => {
                            stray(&mut s, &n.path(), "not a node (name is not its uuid)");
                            continue;
                        }
                    };
                    let md = match fs::symlink_metadata(n.path()) {
                        Ok(md) => md,
                        Err(_) => continue, // removed meanwhile
                    };
                    if !(md.is_dir() || md.is_file()) {
                        stray(&mut s, &n.path(), "a node is a file or a directory");
                        continue;
                    }
                    let (rec, spill) = self.check_read_record(id, &n.path());
                    s.nodes.insert(
                        id,
                        NodeInfo {
                            is_dir: md.is_dir(),
                            age: age_of(&md, now),
                            uid: md.uid(),
                            gid: md.gid(),
                            rec,
                            spill,
                        },
                    );
                    done += 1;
                    if done.is_multiple_of(PROGRESS_EVERY) {
                        progress(&Progress {
                            phase: "nodes",
                            done,
                            total: None,
                        });
                    }
                }
            }
        }

        // 2. Every entry of every directory node.
        let dir_ids: Vec<NodeId> = s
            .nodes
            .iter()
            .filter(|(_, n)| n.is_dir)
            .map(|(id, _)| *id)
            .collect();
        for (i, dir) in dir_ids.iter().enumerate() {
            if (i as u64 + 1).is_multiple_of(PROGRESS_EVERY) {
                progress(&Progress {
                    phase: "entries",
                    done: i as u64 + 1,
                    total: Some(dir_ids.len() as u64),
                });
            }
            let dpath = self.s.layout.node_path(*dir);
            let mut list = Vec::new();
            for e in read_dir_sorted(&dpath)? {
                let p = e.path();
                let is_link = e.file_type().map(|t| t.is_symlink()).unwrap_or(false);
                if !is_link {
                    s.problems.push(Problem {
                        code: "stray_file",
                        path: rel(&p),
                        detail: "a directory node holds only entries (symlinks)".into(),
                        repaired: false,
                        action: Action::RemovePath(p),
                    });
                    continue;
                }
                let child = fs::read_link(&p)
                    .ok()
                    .and_then(|t| Layout::parse_entry_target(&t));
                match child {
                    Some(c) if s.nodes.contains_key(&c) => {
                        s.refs.entry(c).or_default().push((*dir, e.file_name()));
                        list.push(Entry {
                            name: e.file_name(),
                            child: c,
                        });
                    }
                    Some(c) => s.problems.push(Problem {
                        code: "dangling_entry",
                        path: format!("{}/{}", dir, lossy(&e.file_name())),
                        detail: format!("names node {c}, which does not exist"),
                        repaired: false,
                        action: Action::RemovePath(p),
                    }),
                    None => s.problems.push(Problem {
                        code: "bad_entry",
                        path: format!("{}/{}", dir, lossy(&e.file_name())),
                        detail: "the entry's target names no node".into(),
                        repaired: false,
                        action: Action::RemovePath(p),
                    }),
                }
            }
            s.entries.insert(*dir, list);
        }

        // 3. The trash.
        for t in read_dir_sorted(&self.s.layout.trash())? {
            let name = t.file_name().to_string_lossy().into_owned();
            let parsed = Layout::parse_trash_link(&name);
            let is_link = t.file_type().map(|f| f.is_symlink()).unwrap_or(false);
            let raw = fs::read_link(t.path()).ok();
            let target = raw.as_deref().and_then(Layout::parse_entry_target);
            match (parsed.map(|l| l.id), is_link, target) {
                (Some(id), true, Some(tid)) if id == tid => {
                    if let Some(node) = s.nodes.get(&id) {
                        // Parent and name tag in the name must be the record's: a restore
                        // or purge finds a directory's contents by them (`trash::links`).
                        let origin = node.rec.as_ref().ok().and_then(|r| r.trash.as_ref());
                        if let (Some(o), Some(l)) = (origin, parsed.filter(|l| l.parent.is_some()))
                        {
                            let right = Layout::trash_link_name(l.nanos, id, o.parent, &o.name);
                            if right != name {
                                s.problems.push(Problem {
                                    code: "trash_link_origin",
                                    path: rel(&t.path()),
                                    detail: format!(
                                        "the name says another origin (directory or name) than the record: {right}"
                                    ),
                                    repaired: false,
                                    action: Action::Retrash(id, right, Some(t.path())),
                                });
                            }
                        }
                        let want = Layout::trash_target(id);
                        if raw.as_deref() != Some(Path::new(&want)) {
                            s.problems.push(Problem {
                                code: "trash_link_target",
                                path: rel(&t.path()),
                                detail: format!(
                                    "points at {:?}, not at {want}",
                                    raw.as_deref().unwrap_or(Path::new(""))
                                ),
                                repaired: false,
                                action: Action::Retrash(id, name.clone(), None),
                            });
                        }
                        s.trash.insert(name, id);
                    } else {
                        s.problems.push(Problem {
                            code: "dangling_trash",
                            path: rel(&t.path()),
                            detail: format!("names node {id}, which does not exist"),
                            repaired: false,
                            action: Action::RemovePath(t.path()),
                        });
                    }
                }
                _ => stray(
                    &mut s,
                    &t.path(),
                    "not a trash link <nanos>.<uuid>.<parent>",
                ),
            }
        }

        // 4. Paths: from the root, then from trashed nodes, then from orphans.
        let root = self.s.root();
        if !s.nodes.contains_key(&root) {
            return Err(Error::CorruptRecord {
                node: root.to_string(),
                detail: "the root node is missing".into(),
            });
        }
        let walk = |s: &mut Scan, start: NodeId, path: String, live: bool| {
            let mut q = VecDeque::new();
            if s.paths.contains_key(&start) {
                return;
            }
            s.paths.insert(start, path.clone());
            if live {
                s.reachable.insert(start);
            }
            q.push_back((start, path));
            while let Some((dir, dpath)) = q.pop_front() {
                let kids: Vec<(OsString, NodeId)> = s
                    .entries
                    .get(&dir)
                    .map(|v| v.iter().map(|e| (e.name.clone(), e.child)).collect())
                    .unwrap_or_default();
                for (name, child) in kids {
                    if s.paths.contains_key(&child) {
                        continue;
                    }
                    let cp = join_display(&dpath, &name);
                    s.paths.insert(child, cp.clone());
                    if live {
                        s.reachable.insert(child);
                    }
                    if s.nodes.get(&child).map(|n| n.is_dir).unwrap_or(false) {
                        q.push_back((child, cp));
                    }
                }
            }
        };
        walk(&mut s, root, "/".into(), true);
        let trashed: Vec<(String, NodeId)> =
            s.trash.iter().map(|(n, id)| (n.clone(), *id)).collect();
        for (name, id) in trashed {
            walk(&mut s, id, format!("trash:{name}"), false);
        }
        let mut unnamed: Vec<NodeId> = s
            .nodes
            .keys()
            .filter(|id| !s.refs.contains_key(id) && **id != root)
            .copied()
            .collect();
        unnamed.sort();
        for id in unnamed {
            walk(&mut s, id, format!("orphan:{id}"), false);
        }

        // 5. Revisions: revisions/<uuid>/<nanos>.
        let rdir = self.s.layout.revisions();
        for d in read_dir_sorted(&rdir)? {
            let name = d.file_name().to_string_lossy().into_owned();
            let id = match Uuid::parse_str(&name) {
                Ok(u) if d.file_type().map(|t| t.is_dir()).unwrap_or(false) => NodeId(u),
                _ => {
                    stray(&mut s, &d.path(), "not a revisions/<uuid> directory");
                    continue;
                }
            };
            if !s.nodes.contains_key(&id) {
                s.problems.push(Problem {
                    code: "revision_without_node",
                    path: rel(&d.path()),
                    detail: format!("revisions of node {id}, which does not exist"),
                    repaired: false,
                    action: Action::RemovePath(d.path()),
                });
                continue;
            }
            for r in read_dir_sorted(&d.path())? {
                let stamp = r.file_name().to_string_lossy().into_owned();
                if stamp.parse::<i128>().is_err()
                    || !r.file_type().map(|t| t.is_file()).unwrap_or(false)
                {
                    stray(&mut s, &r.path(), "not a revision <nanos>");
                    continue;
                }
                let raw = fs::read(r.path()).ctx(|| format!("read {}", r.path().display()))?;
                match self.decode_value(id, &raw) {
                    (Ok(rec), spill) => s.revisions.push(Revision {
                        node: id,
                        stamp,
                        rec,
                        spill,
                    }),
                    (Err(why), _) => {
                        s.unknown_refs = true;
                        let at = s.paths.get(&id).cloned().unwrap_or_else(|| id.to_string());
                        s.problems.push(Problem {
                            code: "corrupt_revision",
                            path: format!("revision {stamp} of {at}"),
                            detail: why.unwrap_or_else(|| "empty".into()),
                            repaired: false,
                            action: Action::RemovePath(r.path()),
                        });
                    }
                }
            }
        }

        // 6. Blobs, and what is in their area that is not a blob.
        let mut nblobs = 0u64;
        let mut strays = Vec::new();
        self.s.blobs.list(&mut |item| match item {
            Listed::Blob { hash, len, written } => {
                // A blob's age is its mtime: the time its bytes were written.
                let age = now.duration_since(written).unwrap_or(Duration::ZERO);
                s.blobs.insert(hash, (len, age));
                nblobs += 1;
                if nblobs.is_multiple_of(PROGRESS_EVERY) {
                    progress(&Progress {
                        phase: "blobs",
                        done: nblobs,
                        total: None,
                    });
                }
            }
            Listed::Stray { path, why } => strays.push((path, why)),
        })?;
        strays.sort();
        for (path, why) in strays {
            stray(&mut s, &path, why);
        }

        // 7. Staging: blob and revision files and spare directories of sessions that no
        // longer run, pid files of dead mounts.
        for e in read_dir_sorted(&self.s.layout.sessions())? {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name
                .strip_prefix("blob.")
                .or_else(|| name.strip_prefix("rev."))
                .or_else(|| name.strip_prefix("spare."))
                .or_else(|| name.strip_prefix("receive."))
            {
                let pid = rest.split('.').next().and_then(|p| p.parse::<i32>().ok());
                let mine = pid == Some(std::process::id() as i32);
                if name.ends_with(".tmp")
                    && !mine
                    && (!self.s.read_only() || !pid.map(pid_alive).unwrap_or(false))
                {
                    s.stale_staging.push(e.path());
                }
            } else if name.starts_with("doomed.") {
                // A blob a sweep moved aside. If that sweep died, whether it was to be
                // freed or kept is unknown: kept is safe (gc frees it later if nothing
                // names it). A read-write open puts these back itself.
                let Some((pid, hash)) = crate::store::blobs::parse_doomed(&name) else {
                    continue;
                };
                if pid == std::process::id() as i32 || pid_alive(pid) {
                    continue; // a sweep under way
                }
                if s.blobs.contains_key(&hash) {
                    s.stale_staging.push(e.path()); // back in place already
                    continue;
                }
                let md = e
                    .metadata()
                    .ctx(|| format!("stat {}", e.path().display()))?;
                s.blobs.insert(hash, (md.len(), age_of(&md, now)));
                s.problems.push(Problem {
                    code: "interrupted_sweep",
                    path: rel(&e.path()),
                    detail: format!(
                        "blob {} was moved aside by a sweep that did not finish",
                        hash_hex(&hash)
                    ),
                    repaired: false,
                    action: Action::MoveBack {
                        from: e.path(),
                        to: self.s.layout.blob_path(&hash_hex(&hash)),
                    },
                });
            } else if let Some(pid) = name
                .strip_prefix("mount.")
                .and_then(|p| p.parse::<i32>().ok())
            {
                if !pid_alive(pid) {
                    s.stale_staging.push(e.path());
                }
            }
        }
        Ok(s)
    }

    /// Every blob a record needs, each with the record's display path; manifests that
    /// cannot be read (who, blob, why: a manifest's chunks are found by reading it); and
    /// the length each chunk blob must have.
    pub(super) fn needed_blobs(
        &self,
        s: &Scan,
    ) -> (Needed, Vec<(String, Hash, String)>, ChunkLens) {
        let mut need: Needed = HashMap::new();
        let mut bad = Vec::new();
        let mut lens = ChunkLens::new();
        let mut manifests: HashMap<Hash, std::result::Result<Vec<ChunkRef>, String>> =
            HashMap::new();
        let mut add = |rec: &NodeRecord,
                       spill: Option<Hash>,
                       who: String,
                       owner: Owner,
                       need: &mut Needed| {
            if let Some(h) = spill {
                // A revision that cannot be read is as lost as one whose content is.
                let o = match &owner {
                    Owner::Revision(_) => owner.clone(),
                    _ => Owner::Other,
                };
                need.entry(h).or_default().push((who.clone(), o));
            }
            match &rec.content {
                Content::Chunks(v) => {
                    for c in v {
                        need.entry(c.hash)
                            .or_default()
                            .push((who.clone(), owner.clone()));
                        lens.insert(c.hash, c.len);
                    }
                }
                Content::Manifest(h) => {
                    need.entry(*h)
                        .or_default()
                        .push((who.clone(), owner.clone()));
                    let list = manifests
                        .entry(*h)
                        .or_insert_with(|| manifest_on_disk(&*self.s.blobs, h));
                    match list {
                        Ok(v) => {
                            for c in v.iter() {
                                need.entry(c.hash)
                                    .or_default()
                                    .push((who.clone(), owner.clone()));
                                lens.insert(c.hash, c.len);
                            }
                        }
                        Err(why) => bad.push((who.clone(), *h, why.clone())),
                    }
                }
                Content::Empty | Content::Inline(_) => {}
            }
        };
        let mut ids: Vec<&NodeId> = s.nodes.keys().collect();
        ids.sort();
        for id in ids {
            let n = &s.nodes[id];
            if let Ok(rec) = &n.rec {
                let who = s.paths.get(id).cloned().unwrap_or_else(|| id.to_string());
                let owner = if s.reachable.contains(id) {
                    Owner::Live(*id)
                } else {
                    Owner::Other
                };
                add(rec, n.spill, who, owner, &mut need);
            }
        }
        for r in &s.revisions {
            let at = s
                .paths
                .get(&r.node)
                .cloned()
                .unwrap_or_else(|| r.node.to_string());
            let path = self.s.layout.revisions_of(r.node).join(&r.stamp);
            add(
                &r.rec,
                r.spill,
                format!("revision {} of {at}", r.stamp),
                Owner::Revision(path),
                &mut need,
            );
        }
        // Records snapshots keep: a copy that cannot be read hides which blobs it
        // needs, as a manifest that cannot be read does.
        let copies = self
            .s
            .records
            .snapshots()
            .for_each_copy(&mut |name, id, rec, spill| {
                add(
                    rec,
                    spill,
                    format!("snapshot {name}: node {id}"),
                    Owner::Other,
                    &mut need,
                )
            });
        if let Err(e) = copies {
            bad.push(("snapshots".into(), [0; 32], e.to_string()));
        }
        (need, bad, lens)
    }
}
