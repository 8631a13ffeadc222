//! fsck: the problems a scan finds, and their repairs.

use super::*;

impl Checker<'_> {
    /// Check the store; with `repair`, fix what can be fixed (needs a writable store).
    pub fn fsck(
        &self,
        repair: bool,
        grace: Duration,
        mut progress: impl FnMut(&Progress),
    ) -> Result<FsckReport> {
        if repair {
            self.s.writable()?;
        }
        let mut s = self.scan(&mut progress)?;
        let root = self.s.root();
        let mut rep = FsckReport {
            nodes: s.nodes.len() as u64,
            trash: s.trash.len() as u64,
            revisions: s.revisions.len() as u64,
            blobs: s.blobs.len() as u64,
            stale_staging: s.stale_staging.len() as u64,
            ..Default::default()
        };
        let mut problems = std::mem::take(&mut s.problems);
        problems.extend(self.snapshot_problems());
        let (wrong, refcounts) = self.refcount_problems()?;
        problems.extend(wrong);
        rep.refcounts = refcounts;
        let path_of = |s: &Scan, id: NodeId| s.paths.get(&id).cloned().unwrap_or(id.to_string());
        for l in s.entries.values() {
            rep.entries += l.len() as u64;
        }
        // Dangling entries are only located by directory node in the scan: show paths.
        for p in problems.iter_mut() {
            if p.code == "dangling_entry" || p.code == "bad_entry" {
                if let Some((dir, name)) = p.path.split_once('/') {
                    if let Ok(u) = Uuid::parse_str(dir) {
                        if let Some(dp) = s.paths.get(&NodeId(u)) {
                            p.path = join_display(dp, OsStr::new(name));
                        }
                    }
                }
            }
        }
        let trashed: HashSet<NodeId> = s.trash.values().copied().collect();

        let mut ids: Vec<NodeId> = s.nodes.keys().copied().collect();
        ids.sort_by_key(|a| path_of(&s, *a));
        for id in ids {
            let n = &s.nodes[&id];
            match &n.rec {
                Ok(r) if r.kind == Kind::Dir => rep.dirs += 1,
                Ok(r) if r.kind == Kind::File => rep.files += 1,
                Ok(_) => rep.other += 1,
                Err(_) if n.is_dir => rep.dirs += 1,
                Err(_) => rep.files += 1,
            }
            let refs = s.refs.get(&id).map(|v| v.len()).unwrap_or(0);
            // Links a node should have: one per entry; a directory 2 + its subdirectories.
            let subdirs = s
                .entries
                .get(&id)
                .map(|l| {
                    l.iter()
                        .filter(|e| s.nodes.get(&e.child).map(|c| c.is_dir).unwrap_or(false))
                        .count()
                })
                .unwrap_or(0);
            let want_nlink = if n.is_dir {
                2 + subdirs as u32
            } else {
                refs as u32
            };
            let path = path_of(&s, id);
            let named = refs > 0 || id == root;
            if !named && !trashed.contains(&id) {
                // An orphan: no entry, not in the trash.
                if n.age < grace {
                    rep.young_orphans += 1;
                    continue;
                }
                let has_entries = s.entries.get(&id).map(|l| !l.is_empty()).unwrap_or(false);
                match &n.rec {
                    Err(None) if !has_entries => problems.push(Problem {
                        code: "unbound_node",
                        path,
                        detail: "a node without record or entry (an interrupted create)".into(),
                        repaired: false,
                        action: Action::RemoveNode(id, n.is_dir),
                    }),
                    Ok(r) if r.nlink == 0 && r.trash.is_some() && !has_entries => {
                        let at = r.trash.as_ref().unwrap().at;
                        problems.push(Problem {
                            code: "orphan",
                            path,
                            detail: "removed, but its trash link is missing".into(),
                            repaired: false,
                            action: Action::Retrash(
                                id,
                                Layout::trash_link_name(
                                    at.unix_nanos(),
                                    id,
                                    r.trash.as_ref().unwrap().parent,
                                    &r.trash.as_ref().unwrap().name,
                                ),
                                None,
                            ),
                        })
                    }
                    rec => problems.push(Problem {
                        code: "orphan",
                        path,
                        detail: match rec {
                            Ok(_) => "no entry names this node".into(),
                            Err(why) => format!(
                                "no entry names this node and its record is unreadable ({})",
                                why.clone().unwrap_or_else(|| "none".into())
                            ),
                        },
                        repaired: false,
                        action: Action::Adopt {
                            id,
                            is_dir: n.is_dir,
                            nlink: if n.is_dir { want_nlink } else { 1 },
                            fresh: rec.is_err(),
                        },
                    }),
                }
                continue;
            }
            if refs > 1 && n.is_dir {
                problems.push(Problem {
                    code: "multiply_linked_dir",
                    path: path.clone(),
                    detail: format!("{refs} entries name this directory"),
                    repaired: false,
                    action: Action::None,
                });
            }
            let rec = match &n.rec {
                Ok(r) => r,
                Err(why) => {
                    let hint = s
                        .refs
                        .get(&id)
                        .and_then(|v| v.first())
                        .map(|(p, nm)| (*p, nm.as_bytes().to_vec()));
                    problems.push(Problem {
                        code: "corrupt_record",
                        path,
                        detail: format!(
                            "{}; repair gives it a fresh empty record",
                            why.clone()
                                .unwrap_or_else(|| "the node has no record".into())
                        ),
                        repaired: false,
                        action: Action::FreshRecord {
                            id,
                            is_dir: n.is_dir,
                            nlink: if named { want_nlink } else { 0 },
                            hint,
                        },
                    });
                    continue;
                }
            };
            if (rec.kind == Kind::Dir) != n.is_dir {
                problems.push(Problem {
                    code: "kind_mismatch",
                    path,
                    detail: format!(
                        "the record says {:?} but the node is a {}",
                        rec.kind,
                        if n.is_dir { "directory" } else { "file" }
                    ),
                    repaired: false,
                    action: Action::None,
                });
                continue;
            }
            if let Some(k) = id.kind_hint().filter(|k| *k != rec.kind) {
                // Listings take the type from the id: they would disagree with stat.
                problems.push(Problem {
                    code: "kind_mismatch",
                    path,
                    detail: format!("the record says {:?} but the node id says {k:?}", rec.kind),
                    repaired: false,
                    action: Action::None,
                });
                continue;
            }
            if !named {
                // In the trash only.
                if rec.nlink != 0 {
                    problems.push(Problem {
                        code: "nlink_mismatch",
                        path,
                        detail: format!("in the trash with link count {}", rec.nlink),
                        repaired: false,
                        action: Action::SetNlink(id, 0),
                    });
                }
                continue;
            }
            if rec.status == Status::IntegrityError {
                problems.push(Problem {
                    code: "integrity_error",
                    path: path.clone(),
                    detail: "its content failed verification (see `decofs scrub`); restore it \
                             from a version or a backup, or remove it"
                        .into(),
                    repaired: false,
                    action: if rec.kind == Kind::File {
                        Action::RollBack(id)
                    } else {
                        Action::None
                    },
                });
            }
            if rec.nlink != want_nlink {
                problems.push(Problem {
                    code: "nlink_mismatch",
                    path: path.clone(),
                    detail: format!("link count {} but {} by its entries", rec.nlink, want_nlink),
                    repaired: false,
                    action: Action::SetNlink(id, want_nlink),
                });
            }
            if n.is_dir && id != root && refs == 1 {
                let (p, name) = &s.refs[&id][0];
                if rec.parent != Some(*p) || rec.name != name.as_bytes() {
                    problems.push(Problem {
                        code: "hint_mismatch",
                        path,
                        detail: "parent/name hints differ from its entry".into(),
                        repaired: false,
                        action: Action::SetHints(id, *p, name.as_bytes().to_vec()),
                    });
                }
            }
        }

        // Blobs every record needs.
        let (need, bad, lens) = self.needed_blobs(&s);
        for (who, h, why) in bad {
            problems.push(Problem {
                code: "corrupt_manifest",
                path: who,
                detail: format!("manifest blob {} is {why}", hash_hex(&h)),
                repaired: false,
                action: Action::None,
            });
        }
        // Missing, or of another length than its name says: a blob written (renamed into
        // place) before a power cut whose bytes never reached the disk is often empty.
        // Its content is only checked by `scrub` (reading every blob); its length costs
        // nothing, the scan has it.
        let mut lost: Vec<(&Hash, &Users, &'static str, String)> = need
            .iter()
            .filter_map(|(h, users)| match (s.blobs.get(h), lens.get(h)) {
                // Not on this disk: a store on an object store may have it there.
                (None, _) if self.s.blobs.exists(h) => None,
                (None, _) => Some((h, users, "missing_blob", "missing".to_string())),
                (Some((have, _)), Some(want)) if *have != u64::from(*want) => Some((
                    h,
                    users,
                    "damaged_blob",
                    format!("{have} bytes long, not {want}"),
                )),
                _ => None,
            })
            .collect();
        lost.sort_by(|a, b| a.1[0].0.cmp(&b.1[0].0));
        for (h, users, code, what) in lost {
            let mut seen = HashSet::new();
            for (who, owner) in users {
                if seen.insert(who) {
                    // A live file goes back to what it had before; a revision whose
                    // content is lost cannot be restored and is dropped.
                    let action = match owner {
                        Owner::Live(id)
                            if s.nodes[id].rec.as_ref().is_ok_and(|r| r.kind == Kind::File) =>
                        {
                            Action::RollBack(*id)
                        }
                        Owner::Revision(path) => Action::RemovePath(path.clone()),
                        _ => Action::None,
                    };
                    problems.push(Problem {
                        code,
                        path: who.clone(),
                        detail: format!("blob {} is {what}", hash_hex(h)),
                        repaired: false,
                        action,
                    });
                }
            }
        }

        if repair {
            self.apply_repairs(&mut problems, &s);
            // Repairs change holders behind the counts (and a mismatch is repaired so).
            if self.s.refs.is_open() && problems.iter().any(|p| !matches!(p.action, Action::None)) {
                let recount = self.s.refs.recount(&self.s.sweeper());
                for p in problems
                    .iter_mut()
                    .filter(|p| matches!(p.action, Action::Recount))
                {
                    p.repaired = recount.is_ok();
                }
                if let Err(e) = recount {
                    log::warn!("blob reference counts not recounted: {e}");
                }
            }
            for p in &s.stale_staging {
                // Spares are made in staging directories (see `spare`).
                let gone = if p.is_dir() {
                    fs::remove_dir_all(p)
                } else {
                    fs::remove_file(p)
                };
                if gone.is_ok() {
                    rep.stale_staging_removed += 1;
                }
            }
            rep.repaired = true;
        }
        rep.problems = problems;
        rep.finish();
        Ok(rep)
    }

    /// Give live file `id`, whose content names a lost or damaged blob, the content of
    /// its newest revision that is whole (every blob present and verified), or no
    /// content if none is: what ext4 shows of a file written just before a power cut
    /// (its earlier content, or zeros). The node keeps its attributes. Says what it did;
    /// a file already whole (another problem of it repaired it) is left as it is.
    pub(super) fn roll_back(&self, id: NodeId) -> Result<String> {
        // Read from the disk, never from a cache. None: the manifest is lost.
        let chunks = |content: &Content| match content {
            Content::Empty | Content::Inline(_) => Some(Vec::new()),
            Content::Chunks(v) => Some(v.clone()),
            Content::Manifest(h) => manifest_on_disk(&*self.s.blobs, h).ok(),
        };
        let chunk_whole = |c: &ChunkRef| {
            self.s
                .blobs
                .read_verified(&c.hash)
                .is_ok_and(|d| d.len() == c.len as usize)
        };
        let whole =
            |rec: &NodeRecord| chunks(&rec.content).is_some_and(|l| l.iter().all(chunk_whole));
        let cur = self.s.records.read(id)?;
        // The current chunks that are whole, each read once.
        let list = chunks(&cur.content);
        let kept: Vec<ChunkRef> = list
            .iter()
            .flatten()
            .filter(|c| chunk_whole(c))
            .cloned()
            .collect();
        if list.as_ref().is_some_and(|l| l.len() == kept.len()) {
            if cur.status == Status::IntegrityError {
                // Marked by a verification that failed then; every blob verifies now.
                self.s.records.update(id, |r| {
                    r.status = Status::Consistent;
                    Ok(())
                })?;
                return Ok("every blob verifies now: mark cleared".into());
            }
            return Ok("whole again (repaired with another problem of this file)".into());
        }
        let revisions = self.s.revisions.list(id)?;
        let newest_whole = revisions.iter().rev().find(|(_, r)| whole(r));
        let (content, size, stored, mtime, what) = match newest_whole {
            Some((stamp, r)) => (
                r.content.clone(),
                r.size,
                r.stored,
                r.mtime,
                format!("rolled back to revision {stamp} ({} bytes)", r.size),
            ),
            None => {
                // Keep every whole chunk; a lost one becomes a hole that reads as zeros,
                // as ext4 shows data a power cut lost. (A lost manifest loses them all.)
                let all = list.map_or(0, |l| l.len());
                let lost = all - kept.len();
                let stored = kept.iter().map(|c| c.len as u64).sum();
                let content = chunks_content(kept, |b| self.s.blobs.put(b, true))?;
                (
                    content,
                    cur.size,
                    stored,
                    cur.mtime,
                    format!("no whole revision: {lost} of {all} chunks lost, they read as zeros"),
                )
            }
        };
        self.s.records.update(id, |r| {
            r.content = content;
            r.size = size;
            r.stored = stored;
            r.mtime = mtime;
            r.ctime = crate::store::node::Time::now();
            r.status = Status::Consistent;
            Ok(())
        })?;
        Ok(what)
    }

    /// Apply the repairs of `problems` in a safe order: removals and fresh records
    /// first, then link counts and hints, then orphans (which may create lost+found).
    pub(super) fn apply_repairs(&self, problems: &mut [Problem], s: &Scan) {
        let rank = |a: &Action| match a {
            Action::None | Action::Recount => 9,
            Action::RemovePath(_) | Action::RemoveNode(..) | Action::MoveBack { .. } => 0,
            Action::FreshRecord { .. } | Action::RollBack(_) => 1,
            Action::SetNlink(..) | Action::SetHints(..) => 2,
            Action::Retrash(..) => 3,
            Action::Adopt { .. } => 4,
        };
        let mut order: Vec<usize> = (0..problems.len()).collect();
        order.sort_by_key(|i| rank(&problems[*i].action));
        let mut lost_found: Option<NodeId> = None;
        for i in order {
            let action = problems[i].action.clone();
            let res: Result<()> = match action {
                Action::None | Action::Recount => continue,
                Action::RemovePath(p) => remove_any(&p).ctx(|| format!("remove {}", p.display())),
                Action::MoveBack { from, to } => {
                    let dir = to.parent().expect("blob paths have a parent");
                    fs::create_dir_all(dir)
                        .and_then(|()| fs::rename(&from, &to))
                        .ctx(|| format!("move {} back", to.display()))
                }
                Action::RemoveNode(id, is_dir) => {
                    let p = self.s.layout.node_path(id);
                    if is_dir {
                        fs::remove_dir(&p)
                    } else {
                        fs::remove_file(&p)
                    }
                    .ctx(|| format!("remove {}", p.display()))
                }
                Action::FreshRecord {
                    id,
                    is_dir,
                    nlink,
                    hint,
                } => {
                    let n = &s.nodes[&id];
                    self.write_fresh(id, is_dir, nlink, hint, n.uid, n.gid)
                }
                Action::SetNlink(id, nl) => self
                    .s
                    .records
                    .update(id, |r| {
                        r.nlink = nl;
                        Ok(())
                    })
                    .map(|_| ()),
                Action::RollBack(id) => self
                    .roll_back(id)
                    .map(|what| problems[i].detail.push_str(&format!("; {what}"))),
                Action::SetHints(id, p, name) => self
                    .s
                    .records
                    .update(id, |r| {
                        r.parent = Some(p);
                        r.name = name;
                        Ok(())
                    })
                    .map(|_| ()),
                Action::Retrash(id, name, replaces) => {
                    let link = self.s.layout.trash().join(name);
                    let target = Layout::trash_target(id);
                    // A link that points wrong is replaced.
                    if fs::symlink_metadata(&link).is_ok() {
                        let _ = fs::remove_file(&link);
                    }
                    std::os::unix::fs::symlink(target, &link)
                        .ctx(|| format!("trash {id}"))
                        .and_then(|()| match replaces {
                            Some(old) => {
                                fs::remove_file(&old).ctx(|| format!("remove {}", old.display()))
                            }
                            None => Ok(()),
                        })
                }
                Action::Adopt {
                    id,
                    is_dir,
                    nlink,
                    fresh,
                } => (|| {
                    let lf = match lost_found {
                        Some(lf) => lf,
                        None => {
                            let lf = self.lost_found()?;
                            lost_found = Some(lf);
                            lf
                        }
                    };
                    let name = id.to_string();
                    if fresh {
                        let n = &s.nodes[&id];
                        self.write_fresh(
                            id,
                            is_dir,
                            nlink,
                            Some((lf, name.as_bytes().to_vec())),
                            n.uid,
                            n.gid,
                        )?;
                    }
                    match std::os::unix::fs::symlink(
                        Layout::entry_target(id),
                        self.s.names().entry_path(lf, OsStr::new(&name)),
                    ) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(Error::io(format!("bind {name} in lost+found"), e)),
                    }
                    self.s.records.update(id, |r| {
                        r.nlink = nlink;
                        r.parent = Some(lf);
                        r.name = name.as_bytes().to_vec();
                        r.trash = None;
                        Ok(())
                    })?;
                    if is_dir {
                        self.s.records.update(lf, |r| {
                            r.nlink += 1;
                            Ok(())
                        })?;
                    }
                    Ok(())
                })(),
            };
            match res {
                Ok(()) => problems[i].repaired = true,
                Err(e) => problems[i]
                    .detail
                    .push_str(&format!(" (repair failed: {e})")),
            }
        }
    }

    /// Find or create `/lost+found`.
    pub(super) fn lost_found(&self) -> Result<NodeId> {
        let root = self.s.root();
        match self.s.names().lookup(root, OsStr::new(LOST_FOUND)) {
            Ok(id) => {
                if self.s.records.read(id)?.kind != Kind::Dir {
                    return Err(Error::NotDir);
                }
                Ok(id)
            }
            Err(Error::NotFound) => {
                let new = NewNode {
                    kind: Kind::Dir,
                    mode: 0o700,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    target: vec![],
                };
                Ok(self.s.tree().create(root, OsStr::new(LOST_FOUND), new)?.0)
            }
            Err(e) => Err(e),
        }
    }

    /// Give a node whose record is lost a fresh minimal record. A file's content is
    /// gone (fsck's report names it); it is not marked `integrity_error`, which would
    /// make every later fsck fail on a file that is now merely empty.
    pub(super) fn write_fresh(
        &self,
        id: NodeId,
        is_dir: bool,
        nlink: u32,
        hint: Option<(NodeId, Vec<u8>)>,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        self.s.writable()?;
        let _g = self.s.records.stripe(id).lock();
        // The kind the id carries, where it fits the node file (listings report it).
        let kind = match id.kind_hint() {
            Some(k) if (k == Kind::Dir) == is_dir => k,
            _ if is_dir => Kind::Dir,
            _ => Kind::File,
        };
        let mode = if id == self.s.root() {
            0o755
        } else if is_dir {
            0o700
        } else {
            0o600
        };
        let mut rec = NodeRecord::new(kind, mode, uid, gid, self.s.ino_of(id));
        rec.nlink = nlink;
        if let Some((p, n)) = hint {
            rec.parent = Some(p);
            rec.name = n;
        }
        // Versions only need to increase from here on; a fresh record starts high so a
        // stale reader's CAS cannot match it.
        rec.version = 1 << 32;
        self.s
            .records
            .write(id, &rec, true, crate::store::records::Old::OnDisk)
    }

    /// The blob reference counts against a full scan of every holder (only where the
    /// counts are open: a read-write fsck), and what the comparison says ("exact", how
    /// many differ, or why nothing was compared). A scan that could not list every
    /// holder's blobs (a lost manifest, repaired by a roll-back) compares nothing.
    fn refcount_problems(&self) -> Result<(Vec<Problem>, String)> {
        let refs = &self.s.refs;
        if !refs.is_open() {
            return Ok((vec![], "not compared: a read-only check".into()));
        }
        // Counts given up are rebuilt at the next open, or by the repair's recount.
        let Some(have) = refs.all().filter(|_| refs.counting()) else {
            return Ok((vec![], "not compared: given up, counted afresh next".into()));
        };
        let (want, complete) = crate::store::refs::scan(&self.s.sweeper())?;
        if !complete {
            return Ok((vec![], "not compared: some blobs cannot be listed".into()));
        }
        let mut out = Vec::new();
        let mut keys: Vec<&Hash> = want.keys().chain(have.keys()).collect();
        keys.sort_unstable();
        keys.dedup();
        for h in keys {
            let (w, c) = (
                want.get(h).copied().unwrap_or(0),
                have.get(h).copied().unwrap_or(0),
            );
            if w != c {
                out.push(Problem {
                    code: "refcount_mismatch",
                    path: format!("refs/{}", hash_hex(h)),
                    detail: format!(
                        "blob {} is counted {c} times and named by {w} holders",
                        hash_hex(h)
                    ),
                    repaired: false,
                    action: Action::Recount,
                });
            }
        }
        let state = match (out.len(), refs.rebuilt_because()) {
            (0, None) => "exact".to_string(),
            (0, Some(why)) => format!("exact, counted afresh at this open ({why})"),
            (n, _) => format!("{n} differ"),
        };
        Ok((out, state))
    }

    /// Every snapshot's tree, walked as the snapshot sees it: each name must lead to a
    /// record (a copy in an area, or a live record old enough). Its blobs are checked
    /// with everyone else's (`needed_blobs` counts the copies).
    fn snapshot_problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let snaps = self.s.records.snapshots();
        for info in snaps.list() {
            let Ok(lens) = snaps.lens(&info.name) else {
                continue;
            };
            let names = self.s.names().at(&lens);
            let mut seen = HashSet::new();
            let mut stack = vec![(self.s.root(), PathBuf::from("/"))];
            while let Some((id, path)) = stack.pop() {
                if !seen.insert(id) {
                    continue;
                }
                let listed = names.record(id).and_then(|r| {
                    if r.kind == Kind::Dir {
                        names.readdir(id)
                    } else {
                        Ok(Vec::new())
                    }
                });
                match listed {
                    Ok(children) => {
                        stack.extend(children.into_iter().map(|(n, c)| (c, path.join(n))))
                    }
                    Err(e) => out.push(Problem {
                        code: "snapshot_damaged",
                        path: format!("snapshot {}: {}", info.name, path.display()),
                        detail: format!("node {id}: {e}"),
                        repaired: false,
                        action: Action::None,
                    }),
                }
            }
        }
        out
    }
}
