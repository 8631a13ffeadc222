//! Checking tools: `fsck`, `scrub` and `gc` (invariants 1, 3 and 5 from the outside).
//!
//! All three start from one read-only [`Scan`] of the store: every node file under
//! `nodes/` with its decoded record, every entry of every directory node, the trash,
//! the revisions, the blob files and the staging area. Nothing is written while
//! scanning; `fsck --repair` then applies the repairs the scan attached to each problem.
//!
//! - `fsck` checks the layout (stray files), that every record decodes (frame + CRC),
//!   that every entry names an existing node, link counts (a non-directory has one link
//!   per entry; a directory 2 + its subdirectories), the parent/name hints of
//!   directories, that every blob a record needs exists (chunks, manifest blobs, spilled
//!   records; for live, trashed, orphaned and revision records) and that each chunk blob
//!   has the length its record gives (a blob renamed into place before a power cut
//!   whose bytes never reached the disk is often empty), and finds orphans:
//!   nodes no entry names and that are not in the trash (invariant 3). Repairs: stray
//!   files and dangling entries are removed; a referenced node whose record is
//!   unreadable gets a fresh minimal record (mode 0600/0700, size 0; fsck names it,
//!   its content is lost); link counts and hints are set
//!   to what the entries say; orphans older than the grace period are bound in
//!   `/lost+found` under their uuid (a node whose record says it was being trashed goes
//!   back to the trash instead; a node file without any record — a create interrupted
//!   before its record was written — holds nothing and is removed); a live file whose
//!   content names a missing or damaged blob, or that a scrub marked `integrity_error`,
//!   gets the content of its newest revision whose blobs all verify, or, with none,
//!   keeps its whole chunks and reads zeros where a chunk is lost (as ext4 shows data a
//!   power cut lost); the report says which. A revision whose content names a missing or
//!   damaged blob can never be restored and is dropped.
//!   Exit codes as e2fsck: 0 clean, 1 errors repaired, 4 problems left, 8 not run.
//! - `scrub` reads every blob any record names and verifies its hash; damaged blobs are
//!   reported with the paths that use them, and live nodes using them are marked
//!   `integrity_error` when the scrub holds the writer lock.
//! - `gc` deletes blobs no record names (live, trashed, orphaned, revisions; manifest
//!   contents and spilled records included) and older than the grace period, so a blob
//!   a write session stored but has not yet named survives (invariant 1). If any record
//!   or manifest cannot be read, the referenced set is unknown and gc deletes nothing.
//!
//! The age of a node file is the later of its mtime and ctime (a record update changes
//! only the ctime), so a node touched recently is never taken for an old orphan. The age
//! of a blob is its mtime, the time its bytes were written.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use uuid::Uuid;

use super::blobs::{BlobStore, Listed, LocalBlobs};
use super::content::{chunks_content, decode_manifest};
use super::error::{Error, IoContext, Result};
use super::layout::Layout;
use super::lock::StoreLock;
use super::node::{
    decode_body, hash_hex, is_hex, unframe, ChunkRef, Content, Hash, Kind, NodeId, NodeRecord,
    Status, Stored, RECORD_XATTR,
};
use super::tree::NewNode;
use super::Store;

/// The records that use a blob: (display path, live node if any).
type Users = Vec<(String, Owner)>;

/// What needs a blob, as far as a repair is concerned.
#[derive(Clone, Debug, PartialEq)]
enum Owner {
    /// A node reachable from the root.
    Live(NodeId),
    /// The revision file at this path.
    Revision(PathBuf),
    /// A trashed or orphaned node, or a record's spill blob.
    Other,
}

impl Owner {
    fn live(&self) -> Option<NodeId> {
        match self {
            Owner::Live(id) => Some(*id),
            _ => None,
        }
    }
}
/// Every needed blob and who needs it.
type Needed = HashMap<Hash, Users>;
/// The length each chunk blob has (a blob's name is the hash of its bytes).
type ChunkLens = HashMap<Hash, u32>;

/// The directory in the root that adopted orphans are bound in.
pub const LOST_FOUND: &str = "lost+found";
/// Progress is reported every this many nodes (or blobs).
pub const PROGRESS_EVERY: u64 = 10_000;

/// Exit codes, as e2fsck.
pub const EXIT_CLEAN: u8 = 0;
pub const EXIT_REPAIRED: u8 = 1;
pub const EXIT_PROBLEMS_LEFT: u8 = 4;
pub const EXIT_NOT_RUN: u8 = 8;

/// Where a long check is: `phase` and how many items of it are done.
#[derive(Clone, Debug)]
pub struct Progress {
    pub phase: &'static str,
    pub done: u64,
}

/// One finding of fsck.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// Stable code: stray_file, corrupt_record, dangling_entry, bad_entry, kind_mismatch,
    /// nlink_mismatch, hint_mismatch, multiply_linked_dir, orphan, unbound_node,
    /// missing_blob, damaged_blob (a blob of another length than its record says),
    /// corrupt_manifest, corrupt_revision, revision_without_node,
    /// dangling_trash, integrity_error (a live file marked by a failed verification).
    /// A live file whose content is lost, damaged or marked is repaired by giving it
    /// its newest whole revision's content, or none.
    pub code: &'static str,
    /// The path in the filesystem (`/a/b`), or a store-relative path for store files.
    pub path: String,
    pub detail: String,
    pub repaired: bool,
    #[serde(skip)]
    action: Action,
}

#[derive(Clone, Debug, Default)]
enum Action {
    #[default]
    None,
    /// Remove a store file or directory tree that does not belong there.
    RemovePath(PathBuf),
    /// Write a fresh minimal record for a node whose record is unreadable.
    FreshRecord {
        id: NodeId,
        is_dir: bool,
        nlink: u32,
        hint: Option<(NodeId, Vec<u8>)>,
    },
    SetNlink(NodeId, u32),
    SetHints(NodeId, NodeId, Vec<u8>),
    /// Bind an orphan in lost+found (with a fresh record first if it has none).
    Adopt {
        id: NodeId,
        is_dir: bool,
        nlink: u32,
        fresh: bool,
    },
    /// Put a node whose record says it was trashed back into the trash (or point its
    /// trash link right).
    Retrash(NodeId, i128),
    /// Remove a node file that holds no record and no entries.
    RemoveNode(NodeId, bool),
    /// Give a live file whose content names a lost or damaged blob (or failed a
    /// scrub) its newest whole revision's content, or none (`Store::roll_back`).
    RollBack(NodeId),
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FsckReport {
    pub nodes: u64,
    pub dirs: u64,
    pub files: u64,
    pub other: u64,
    pub entries: u64,
    pub trash: u64,
    pub revisions: u64,
    pub blobs: u64,
    /// Orphans younger than the grace period: probably a create in progress; left alone.
    pub young_orphans: u64,
    /// Staging files of write sessions that no longer run (removed with --repair).
    pub stale_staging: u64,
    pub stale_staging_removed: u64,
    pub problems: Vec<Problem>,
    pub repaired: bool,
    pub exit_code: u8,
}

impl FsckReport {
    fn finish(&mut self) {
        self.exit_code = if self.problems.iter().any(|p| !p.repaired) {
            EXIT_PROBLEMS_LEFT
        } else if self.problems.is_empty() {
            EXIT_CLEAN
        } else {
            EXIT_REPAIRED
        };
    }
}

/// A blob that failed verification and who uses it.
#[derive(Clone, Debug, Serialize)]
pub struct DamagedBlob {
    pub hash: String,
    /// "missing" or "content does not match its hash".
    pub detail: String,
    /// Paths of the files that use it (`/a/b`, `trash:<name>`, `revision <nanos> of /a/b`).
    pub used_by: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ScrubReport {
    pub blobs_checked: u64,
    pub bytes_checked: u64,
    pub damaged: Vec<DamagedBlob>,
    /// Records that could not be read (run fsck); their blobs were not checked.
    pub unreadable_records: Vec<String>,
    /// Live nodes marked `integrity_error` by this scrub.
    pub marked: u64,
    /// Paths of every file with damaged content (deduplicated).
    pub damaged_paths: Vec<String>,
    pub exit_code: u8,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub blobs: u64,
    pub referenced: u64,
    /// Unreferenced blobs deleted (or, with dry_run, that would be deleted).
    pub deleted: u64,
    pub bytes_freed: u64,
    /// Unreferenced blobs younger than the grace period, kept.
    pub kept_young: u64,
    pub deleted_hashes: Vec<String>,
}

/// What the scan knows about one node file.
struct NodeInfo {
    is_dir: bool,
    age: Duration,
    uid: u32,
    gid: u32,
    /// The record, or why it could not be read. `Err(None)`: the file has no record.
    rec: std::result::Result<NodeRecord, Option<String>>,
    /// The blob the record spilled into, if any.
    spill: Option<Hash>,
}

/// One entry of a directory node.
struct Entry {
    name: OsString,
    child: NodeId,
}

/// A record kept under revisions/.
struct Revision {
    node: NodeId,
    stamp: String,
    rec: NodeRecord,
    spill: Option<Hash>,
}

/// Everything a read-only pass over the store finds.
#[derive(Default)]
struct Scan {
    nodes: HashMap<NodeId, NodeInfo>,
    entries: HashMap<NodeId, Vec<Entry>>,
    /// Entries naming each node, over all directory nodes.
    refs: HashMap<NodeId, Vec<(NodeId, OsString)>>,
    /// Display path of every node reachable from the root, a trashed node or an orphan.
    paths: HashMap<NodeId, String>,
    reachable: HashSet<NodeId>,
    /// trash link name -> node
    trash: BTreeMap<String, NodeId>,
    revisions: Vec<Revision>,
    /// Existing blob files: hash -> (size, age).
    blobs: HashMap<Hash, (u64, Duration)>,
    stale_staging: Vec<PathBuf>,
    problems: Vec<Problem>,
    /// Some record could not be read: the referenced blob set is incomplete.
    unknown_refs: bool,
}

fn age_of(md: &fs::Metadata, now: SystemTime) -> Duration {
    let m = md.modified().unwrap_or(now);
    let c = SystemTime::UNIX_EPOCH
        + Duration::new(
            md.ctime().max(0) as u64,
            md.ctime_nsec().clamp(0, 999_999_999) as u32,
        );
    now.duration_since(m.max(c)).unwrap_or(Duration::ZERO)
}

fn lossy(p: &OsStr) -> String {
    String::from_utf8_lossy(p.as_bytes()).into_owned()
}

fn join_display(parent: &str, name: &OsStr) -> String {
    if parent.ends_with('/') {
        format!("{parent}{}", lossy(name))
    } else {
        format!("{parent}/{}", lossy(name))
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    let mut v: Vec<fs::DirEntry> = match fs::read_dir(dir) {
        Ok(it) => it
            .collect::<std::io::Result<_>>()
            .ctx(|| format!("read {}", dir.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
    };
    v.sort_by_key(|e| e.file_name());
    Ok(v)
}

/// The chunk list of manifest blob `h`, read and verified from the disk (no cache).
fn manifest_on_disk(blobs: &dyn BlobStore, h: &Hash) -> std::result::Result<Vec<ChunkRef>, String> {
    let d = blobs.read_verified(h).map_err(|f| f.to_string())?;
    decode_manifest(hash_hex(h), &d).map_err(|e| match e {
        Error::Integrity { detail, .. } => format!("undecodable: {detail}"),
        other => format!("undecodable: {other}"),
    })
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) => Err(e),
    }
}

/// A killed daemon whose parent has not reaped it yet is a zombie: not alive.
fn pid_alive(pid: i32) -> bool {
    !super::lock::process_gone(pid)
}

impl Store {
    /// Open a store for checking: like [`Store::open`], but a root with an unreadable
    /// record does not prevent it (fsck is what repairs that).
    pub fn open_for_check(path: &Path, read_only: bool) -> Result<Store> {
        let layout = Layout::new(path);
        let format = layout.read_format()?;
        let lock = if read_only {
            None
        } else {
            Some(StoreLock::acquire(&layout)?)
        };
        let blobs = LocalBlobs::new(layout.clone(), 64 << 20);
        super::replay_fsync_logs(&layout, &blobs, lock.is_some())?;
        Ok(Store::assemble(layout, format, blobs, read_only, lock))
    }

    /// Read a node's record straight from its file: the record and its spill blob.
    fn check_read_record(
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

    fn decode_value(
        &self,
        id: NodeId,
        value: &[u8],
    ) -> (
        std::result::Result<NodeRecord, Option<String>>,
        Option<Hash>,
    ) {
        match unframe(id, value) {
            Ok(Stored::Inline(r)) => (Ok(r), None),
            Ok(Stored::InBlob(h)) => match self.blobs.read_verified(&h) {
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
    fn scan(&self, progress: &mut dyn FnMut(&Progress)) -> Result<Scan> {
        let now = SystemTime::now();
        let mut s = Scan::default();
        let rel = |p: &Path| -> String {
            p.strip_prefix(&self.layout.root)
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
        for a in read_dir_sorted(&self.layout.nodes())? {
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
                });
            }
            let dpath = self.layout.node_path(*dir);
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
        for t in read_dir_sorted(&self.layout.trash())? {
            let name = t.file_name().to_string_lossy().into_owned();
            let parsed = name.split_once('.').and_then(|(nanos, u)| {
                nanos.parse::<i128>().ok()?;
                Uuid::parse_str(u).ok().map(NodeId)
            });
            let is_link = t.file_type().map(|f| f.is_symlink()).unwrap_or(false);
            let raw = fs::read_link(t.path()).ok();
            let target = raw.as_deref().and_then(Layout::parse_entry_target);
            match (parsed, is_link, target) {
                (Some(id), true, Some(tid)) if id == tid => {
                    if s.nodes.contains_key(&id) {
                        let want = Layout::trash_target(id);
                        if raw.as_deref() != Some(Path::new(&want)) {
                            let nanos = name.split_once('.').and_then(|(n, _)| n.parse().ok());
                            s.problems.push(Problem {
                                code: "trash_link_target",
                                path: rel(&t.path()),
                                detail: format!(
                                    "points at {:?}, not at {want}",
                                    raw.as_deref().unwrap_or(Path::new(""))
                                ),
                                repaired: false,
                                action: nanos.map_or(Action::None, |n| Action::Retrash(id, n)),
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
                _ => stray(&mut s, &t.path(), "not a trash link <nanos>.<uuid>"),
            }
        }

        // 4. Paths: from the root, then from trashed nodes, then from orphans.
        let root = self.root();
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
        let rdir = self.layout.revisions();
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
        self.blobs.list(&mut |item| match item {
            Listed::Blob { hash, len, written } => {
                // A blob's age is its mtime: the time its bytes were written.
                let age = now.duration_since(written).unwrap_or(Duration::ZERO);
                s.blobs.insert(hash, (len, age));
                nblobs += 1;
                if nblobs.is_multiple_of(PROGRESS_EVERY) {
                    progress(&Progress {
                        phase: "blobs",
                        done: nblobs,
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
        for e in read_dir_sorted(&self.layout.sessions())? {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name
                .strip_prefix("blob.")
                .or_else(|| name.strip_prefix("rev."))
                .or_else(|| name.strip_prefix("spare."))
            {
                let pid = rest.split('.').next().and_then(|p| p.parse::<i32>().ok());
                let mine = pid == Some(std::process::id() as i32);
                if name.ends_with(".tmp")
                    && !mine
                    && (!self.read_only() || !pid.map(pid_alive).unwrap_or(false))
                {
                    s.stale_staging.push(e.path());
                }
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
    fn needed_blobs(&self, s: &Scan) -> (Needed, Vec<(String, Hash, String)>, ChunkLens) {
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
                        .or_insert_with(|| manifest_on_disk(&*self.blobs, h));
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
            let path = self.layout.revisions_of(r.node).join(&r.stamp);
            add(
                &r.rec,
                r.spill,
                format!("revision {} of {at}", r.stamp),
                Owner::Revision(path),
                &mut need,
            );
        }
        (need, bad, lens)
    }

    /// Check the store; with `repair`, fix what can be fixed (needs a writable store).
    pub fn fsck(
        &self,
        repair: bool,
        grace: Duration,
        mut progress: impl FnMut(&Progress),
    ) -> Result<FsckReport> {
        if repair {
            self.writable()?;
        }
        let mut s = self.scan(&mut progress)?;
        let root = self.root();
        let mut rep = FsckReport {
            nodes: s.nodes.len() as u64,
            trash: s.trash.len() as u64,
            revisions: s.revisions.len() as u64,
            blobs: s.blobs.len() as u64,
            stale_staging: s.stale_staging.len() as u64,
            ..Default::default()
        };
        let mut problems = std::mem::take(&mut s.problems);
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
                                at.secs as i128 * 1_000_000_000 + at.nanos as i128,
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
    fn roll_back(&self, id: NodeId) -> Result<String> {
        // Read from the disk, never from a cache. None: the manifest is lost.
        let chunks = |content: &Content| match content {
            Content::Empty | Content::Inline(_) => Some(Vec::new()),
            Content::Chunks(v) => Some(v.clone()),
            Content::Manifest(h) => manifest_on_disk(&*self.blobs, h).ok(),
        };
        let chunk_whole = |c: &ChunkRef| {
            self.blobs
                .read_verified(&c.hash)
                .is_ok_and(|d| d.len() == c.len as usize)
        };
        let whole =
            |rec: &NodeRecord| chunks(&rec.content).is_some_and(|l| l.iter().all(chunk_whole));
        let cur = self.read_record(id)?;
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
                self.update(id, |r| {
                    r.status = Status::Consistent;
                    Ok(())
                })?;
                return Ok("every blob verifies now: mark cleared".into());
            }
            return Ok("whole again (repaired with another problem of this file)".into());
        }
        let revisions = self.revisions(id)?;
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
                let content = chunks_content(kept, |b| self.blobs.put(b, true))?;
                (
                    content,
                    cur.size,
                    stored,
                    cur.mtime,
                    format!("no whole revision: {lost} of {all} chunks lost, they read as zeros"),
                )
            }
        };
        self.update(id, |r| {
            r.content = content;
            r.size = size;
            r.stored = stored;
            r.mtime = mtime;
            r.ctime = super::node::Time::now();
            r.status = Status::Consistent;
            Ok(())
        })?;
        Ok(what)
    }

    /// Apply the repairs of `problems` in a safe order: removals and fresh records
    /// first, then link counts and hints, then orphans (which may create lost+found).
    fn apply_repairs(&self, problems: &mut [Problem], s: &Scan) {
        let rank = |a: &Action| match a {
            Action::None => 9,
            Action::RemovePath(_) | Action::RemoveNode(..) => 0,
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
                Action::None => continue,
                Action::RemovePath(p) => remove_any(&p).ctx(|| format!("remove {}", p.display())),
                Action::RemoveNode(id, is_dir) => {
                    let p = self.layout.node_path(id);
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
                    .update(id, |r| {
                        r.nlink = nl;
                        Ok(())
                    })
                    .map(|_| ()),
                Action::RollBack(id) => self
                    .roll_back(id)
                    .map(|what| problems[i].detail.push_str(&format!("; {what}"))),
                Action::SetHints(id, p, name) => self
                    .update(id, |r| {
                        r.parent = Some(p);
                        r.name = name;
                        Ok(())
                    })
                    .map(|_| ()),
                Action::Retrash(id, nanos) => {
                    let link = self.layout.trash().join(format!("{nanos}.{id}"));
                    let target = Layout::trash_target(id);
                    // A link that points wrong is replaced.
                    if fs::symlink_metadata(&link).is_ok() {
                        let _ = fs::remove_file(&link);
                    }
                    std::os::unix::fs::symlink(target, &link).ctx(|| format!("trash {id}"))
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
                        self.entry_path(lf, OsStr::new(&name)),
                    ) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(Error::io(format!("bind {name} in lost+found"), e)),
                    }
                    self.update(id, |r| {
                        r.nlink = nlink;
                        r.parent = Some(lf);
                        r.name = name.as_bytes().to_vec();
                        r.trash = None;
                        Ok(())
                    })?;
                    if is_dir {
                        self.update(lf, |r| {
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
    fn lost_found(&self) -> Result<NodeId> {
        let root = self.root();
        match self.lookup(root, OsStr::new(LOST_FOUND)) {
            Ok(id) => {
                if self.read_record(id)?.kind != Kind::Dir {
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
                Ok(self.create(root, OsStr::new(LOST_FOUND), new)?.0)
            }
            Err(e) => Err(e),
        }
    }

    /// Give a node whose record is lost a fresh minimal record. A file's content is
    /// gone (fsck's report names it); it is not marked `integrity_error`, which would
    /// make every later fsck fail on a file that is now merely empty.
    fn write_fresh(
        &self,
        id: NodeId,
        is_dir: bool,
        nlink: u32,
        hint: Option<(NodeId, Vec<u8>)>,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        self.writable()?;
        let _g = self.stripe(id).lock();
        // The kind the id carries, where it fits the node file (listings report it).
        let kind = match id.kind_hint() {
            Some(k) if (k == Kind::Dir) == is_dir => k,
            _ if is_dir => Kind::Dir,
            _ => Kind::File,
        };
        let mode = if id == self.root() {
            0o755
        } else if is_dir {
            0o700
        } else {
            0o600
        };
        let mut rec = NodeRecord::new(kind, mode, uid, gid, self.ino_of(id));
        rec.nlink = nlink;
        if let Some((p, n)) = hint {
            rec.parent = Some(p);
            rec.name = n;
        }
        // Versions only need to increase from here on; a fresh record starts high so a
        // stale reader's CAS cannot match it.
        rec.version = 1 << 32;
        self.write_record(id, &rec, true)
    }

    /// Read and verify every blob any record names.
    pub fn scrub(&self, mut progress: impl FnMut(&Progress)) -> Result<ScrubReport> {
        let s = self.scan(&mut progress)?;
        let (need, bad, _) = self.needed_blobs(&s);
        let mut rep = ScrubReport::default();
        for (id, n) in &s.nodes {
            if let Err(why) = &n.rec {
                if why.is_some() {
                    rep.unreadable_records.push(format!(
                        "{}: {}",
                        s.paths.get(id).cloned().unwrap_or(id.to_string()),
                        why.clone().unwrap_or_default()
                    ));
                }
            }
        }
        let mut hashes: Vec<&Hash> = need.keys().collect();
        hashes.sort();
        let mut to_mark: HashSet<NodeId> = HashSet::new();
        let mut paths: std::collections::BTreeSet<String> = Default::default();
        let mut bad_manifest: HashMap<Hash, ()> = HashMap::new();
        for (_, h, _) in &bad {
            bad_manifest.insert(*h, ());
        }
        for h in hashes {
            rep.blobs_checked += 1;
            if rep.blobs_checked % PROGRESS_EVERY == 0 {
                progress(&Progress {
                    phase: "scrub",
                    done: rep.blobs_checked,
                });
            }
            let res = self.blobs.read_verified(h);
            let why = match res {
                Ok(d) => {
                    rep.bytes_checked += d.len() as u64;
                    if !bad_manifest.contains_key(h) {
                        continue;
                    }
                    "an undecodable manifest".to_string()
                }
                Err(why) => why.to_string(),
            };
            let mut used_by = Vec::new();
            for (who, owner) in &need[h] {
                if !used_by.contains(who) {
                    used_by.push(who.clone());
                }
                paths.insert(who.clone());
                if let Some(id) = owner.live() {
                    to_mark.insert(id);
                }
            }
            rep.damaged.push(DamagedBlob {
                hash: hash_hex(h),
                detail: why,
                used_by,
            });
        }
        if !self.read_only() {
            for id in to_mark {
                let marked = self.update(id, |r| {
                    if r.status == Status::IntegrityError {
                        return Err(Error::Exists); // nothing to change
                    }
                    r.status = Status::IntegrityError;
                    Ok(())
                });
                if marked.is_ok() {
                    rep.marked += 1;
                }
            }
        }
        self.blobs.drop_cache();
        rep.damaged_paths = paths.into_iter().collect();
        rep.exit_code = if rep.damaged.is_empty() && rep.unreadable_records.is_empty() {
            EXIT_CLEAN
        } else {
            EXIT_PROBLEMS_LEFT
        };
        Ok(rep)
    }

    /// `gc` on a store this process serves (through the daemon): the filesystem keeps
    /// running, so blobs are freed with the sweep's protocol (a blob a writer reuses
    /// while we look is kept) and blobs of open write sessions count as referenced.
    /// Refuses, like `gc`, while any record cannot be read.
    pub fn gc_online(&self, dry_run: bool, grace: Duration) -> Result<GcReport> {
        if !dry_run {
            self.writable()?;
        }
        let since = std::time::SystemTime::now();
        let mut referenced: HashSet<Hash> = HashSet::new();
        for id in self.node_ids()? {
            // A manifest that cannot be read hides which chunks are in use.
            let strict = |rec: &NodeRecord| -> Result<()> {
                self.chunk_list(&rec.content).map(|_| ()).map_err(|e| {
                Error::Integrity {
                    what: "the store's manifests".into(),
                    detail: format!(
                        "a manifest of {id} cannot be read ({e}), so which blobs are in use is unknown; gc deletes nothing until `decofs fsck --repair` fixed it"
                    ),
                }
            })
            };
            if let Some(rec) = self.record_naming_blobs(id)? {
                strict(&rec)?;
                referenced.extend(self.blob_refs(id, &rec));
            }
            for (_, r) in self.revisions(id)? {
                strict(&r)?;
                referenced.extend(self.blob_refs(id, &r));
            }
        }
        referenced.extend(self.session_blobs());
        let mut rep = GcReport {
            dry_run,
            ..Default::default()
        };
        let mut cands = Vec::new();
        let mut sizes = HashMap::new();
        self.blobs.list(&mut |item| {
            let Listed::Blob { hash, len, written } = item else {
                return;
            };
            rep.blobs += 1;
            if referenced.contains(&hash) {
                rep.referenced += 1;
                return;
            }
            if since.duration_since(written).unwrap_or_default() < grace {
                rep.kept_young += 1;
                return;
            }
            sizes.insert(hash, len);
            cands.push(hash);
        })?;
        cands.sort();
        if dry_run {
            rep.deleted = cands.len() as u64;
            rep.bytes_freed = sizes.values().sum();
            rep.deleted_hashes = cands.iter().map(hash_hex).collect();
            return Ok(rep);
        }
        rep.bytes_freed = self.sweep(cands.clone(), since)?;
        for h in cands {
            if !self.blobs.exists(&h) {
                rep.deleted += 1;
                rep.deleted_hashes.push(hash_hex(&h));
            }
        }
        Ok(rep)
    }

    /// Delete blobs no record names and older than `grace`.
    pub fn gc(&self, dry_run: bool, grace: Duration) -> Result<GcReport> {
        if !dry_run {
            self.writable()?;
        }
        let s = self.scan(&mut |_| {})?;
        let (need, bad, _) = self.needed_blobs(&s);
        let unreadable = s.nodes.values().any(|n| matches!(n.rec, Err(Some(_))));
        if s.unknown_refs || unreadable || !bad.is_empty() {
            return Err(Error::Integrity {
                what: "the store's records".into(),
                detail: "some records or manifests cannot be read, so which blobs are in use is \
                         unknown; gc deletes nothing until `decofs fsck --repair` fixed them"
                    .into(),
            });
        }
        let mut rep = GcReport {
            dry_run,
            blobs: s.blobs.len() as u64,
            referenced: need.keys().filter(|h| s.blobs.contains_key(*h)).count() as u64,
            ..Default::default()
        };
        let mut cands: Vec<(&Hash, &(u64, Duration))> = s
            .blobs
            .iter()
            .filter(|(h, _)| !need.contains_key(*h))
            .collect();
        cands.sort();
        for (h, (size, age)) in cands {
            if *age < grace {
                rep.kept_young += 1;
                continue;
            }
            let p = self.layout.blob_path(&hash_hex(h));
            if !dry_run {
                match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io(format!("remove {}", p.display()), e)),
                }
            }
            rep.deleted += 1;
            rep.bytes_freed += size;
            rep.deleted_hashes.push(hash_hex(h));
        }
        if !dry_run {
            self.blobs.drop_cache();
        }
        Ok(rep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::scratch;
    use crate::store::tree::NewNode;

    fn file() -> NewNode {
        crate::store::tests::file_node()
    }

    #[test]
    fn fresh_store_is_clean_and_gc_keeps_referenced() {
        let (_d, s) = scratch();
        let id = s.create(s.root(), OsStr::new("f"), file()).unwrap().0;
        s.write(id, 0, &vec![3u8; 200_000]).unwrap();
        s.write(id, 0, &vec![4u8; 200_000]).unwrap(); // old content kept as a revision
        let r = s.fsck(false, Duration::ZERO, |_| {}).unwrap();
        assert_eq!(r.exit_code, 0, "{:?}", r.problems);
        let g = s.gc(false, Duration::ZERO).unwrap();
        assert_eq!(g.deleted, 0);
        assert!(g.referenced >= 2);
    }

    #[test]
    fn online_gc_passes_nodes_without_record() {
        let (_d, s) = scratch();
        let id = s.create(s.root(), OsStr::new("f"), file()).unwrap().0;
        s.write(id, 0, &vec![5u8; 100_000]).unwrap();
        // A node the instant after create: its file exists, its record not yet.
        let young = NodeId::new_near(s.root(), Kind::File);
        fs::write(s.layout.node_path(young), b"").unwrap();
        let g = s.gc_online(false, Duration::ZERO).unwrap();
        assert_eq!(g.deleted, 0, "{g:?}");
        assert!(g.referenced >= 1);
        // A record that is there but garbage still stops gc.
        xattr::set(s.layout.node_path(young), RECORD_XATTR, b"garbage").unwrap();
        assert!(matches!(
            s.gc_online(false, Duration::ZERO),
            Err(Error::Integrity { .. })
        ));
    }

    /// Listings take a child's type from its id: a record of another kind is reported,
    /// and a record fsck writes afresh takes the id's kind.
    #[test]
    fn record_kind_must_match_the_id() {
        let (_d, s) = scratch();
        let fifo = NewNode {
            kind: Kind::Fifo,
            ..file()
        };
        let id = s.create(s.root(), OsStr::new("p"), fifo).unwrap().0;
        assert_eq!(id.kind_hint(), Some(Kind::Fifo));
        let r = s.fsck(false, Duration::ZERO, |_| {}).unwrap();
        assert_eq!(r.exit_code, 0, "{:?}", r.problems);
        let mut rec = s.read_record(id).unwrap();
        rec.kind = Kind::File;
        s.write_record(id, &rec, true).unwrap();
        let r = s.fsck(false, Duration::ZERO, |_| {}).unwrap();
        assert_eq!(r.exit_code, 4, "{:?}", r.problems);
        assert!(r
            .problems
            .iter()
            .any(|p| p.code == "kind_mismatch" && p.path == "/p"));
        // A lost record comes back as a fifo.
        xattr::remove(s.layout.node_path(id), RECORD_XATTR).unwrap();
        let r = s.fsck(true, Duration::ZERO, |_| {}).unwrap();
        assert_eq!(r.exit_code, 1, "{:?}", r.problems);
        assert_eq!(s.read_record(id).unwrap().kind, Kind::Fifo);
    }

    #[test]
    fn orphan_is_adopted_and_nlink_fixed() {
        let (_d, s) = scratch();
        let id = s.create(s.root(), OsStr::new("f"), file()).unwrap().0;
        fs::remove_file(s.entry_path(s.root(), OsStr::new("f"))).unwrap();
        let r = s.fsck(false, Duration::from_secs(3600), |_| {}).unwrap();
        assert_eq!(r.exit_code, 0);
        assert_eq!(r.young_orphans, 1);
        let r = s.fsck(true, Duration::ZERO, |_| {}).unwrap();
        assert_eq!(r.exit_code, 1, "{:?}", r.problems);
        let lf = s.lookup(s.root(), OsStr::new(LOST_FOUND)).unwrap();
        assert_eq!(s.lookup(lf, OsStr::new(&id.to_string())).unwrap(), id);
        let r = s.fsck(false, Duration::ZERO, |_| {}).unwrap();
        assert_eq!(r.exit_code, 0, "{:?}", r.problems);
    }

    #[test]
    fn missing_blob_becomes_a_hole_without_revisions_and_gc_refuses_unknown_references() {
        let (_d, s) = scratch();
        let id = s.create(s.root(), OsStr::new("f"), file()).unwrap().0;
        s.write(id, 0, &vec![5u8; 100_000]).unwrap();
        let h = Store::record_hashes(&s.read_record(id).unwrap())[0];
        fs::remove_file(s.local.path_of(&h)).unwrap();
        let r = s.fsck(false, Duration::ZERO, |_| {}).unwrap();
        assert_eq!(r.exit_code, EXIT_PROBLEMS_LEFT);
        assert!(r
            .problems
            .iter()
            .any(|p| p.code == "missing_blob" && p.path == "/f" && !p.repaired));
        // Repaired: no earlier content to go back to, so the lost chunk reads as zeros
        // (as ext4 shows data a power cut lost) and the whole one is kept.
        let r = s.fsck(true, Duration::ZERO, |_| {}).unwrap();
        assert_eq!(r.exit_code, EXIT_REPAIRED, "{:?}", r.problems);
        assert!(
            r.problems.iter().any(|p| p.code == "missing_blob"
                && p.repaired
                && p.detail
                    .ends_with("; no whole revision: 1 of 2 chunks lost, they read as zeros")),
            "{:?}",
            r.problems
        );
        let mut want = vec![0u8; 65_536];
        want.resize(100_000, 5);
        assert_eq!(s.read(id, 0, 200_000).unwrap(), want);
        assert_eq!(s.stat(id).unwrap().size, 100_000);
        let r = s.fsck(false, Duration::ZERO, |_| {}).unwrap();
        assert_eq!(r.exit_code, EXIT_CLEAN, "{:?}", r.problems);
        // A garbage record: which blobs it names is unknown, so gc deletes nothing.
        let g = s.create(s.root(), OsStr::new("g"), file()).unwrap().0;
        xattr::set(s.layout.node_path(g), RECORD_XATTR, b"garbage!!").unwrap();
        assert!(matches!(
            s.gc(false, Duration::ZERO),
            Err(Error::Integrity { .. })
        ));
    }

    /// A revision whose blob is lost (here: one a damaged file left when it was
    /// overwritten) can never be restored: fsck names it, --repair drops it and leaves
    /// the file and its whole revisions alone, and the store is clean again.
    #[test]
    fn a_revision_with_a_lost_blob_is_dropped() {
        let (_d, s) = scratch();
        let id = s.create(s.root(), OsStr::new("f"), file()).unwrap().0;
        s.write(id, 0, &vec![4u8; 90_000]).unwrap();
        s.write(id, 0, &vec![5u8; 100_000]).unwrap();
        s.write(id, 0, &vec![6u8; 110_000]).unwrap(); // revisions: the 4s, the 5s
        let revs = s.revisions(id).unwrap();
        assert_eq!(revs.len(), 2);
        let h = Store::record_hashes(&revs[1].1)[0];
        fs::remove_file(s.local.path_of(&h)).unwrap();
        s.blobs.drop_cache();
        let r = s.fsck(false, Duration::ZERO, |_| {}).unwrap();
        assert_eq!(r.exit_code, EXIT_PROBLEMS_LEFT, "{:?}", r.problems);
        let at = format!("revision {} of /f", revs[1].0);
        assert!(
            r.problems
                .iter()
                .any(|p| p.code == "missing_blob" && p.path == at),
            "{:?}",
            r.problems
        );
        let r = s.fsck(true, Duration::ZERO, |_| {}).unwrap();
        assert_eq!(r.exit_code, EXIT_REPAIRED, "{:?}", r.problems);
        assert!(r.problems.iter().all(|p| p.repaired), "{:?}", r.problems);
        let left = s.revisions(id).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, revs[0].0, "the whole revision is kept");
        assert_eq!(s.read_content(id, &left[0].1).unwrap(), vec![4u8; 90_000]);
        assert_eq!(s.read(id, 0, 200_000).unwrap(), vec![6u8; 110_000]);
        let r = s.fsck(false, Duration::ZERO, |_| {}).unwrap();
        assert_eq!(r.exit_code, EXIT_CLEAN, "{:?}", r.problems);
    }

    /// A blob renamed into place before a power cut whose bytes never reached the disk
    /// is empty: fsck finds it by its length alone, and scrub, reading it, agrees. The
    /// repair gives the file its content from before that write (its newest revision).
    #[test]
    fn an_emptied_blob_is_found_by_its_length_and_rolled_back() {
        let (_d, s) = scratch();
        let id = s.create(s.root(), OsStr::new("f"), file()).unwrap().0;
        s.write(id, 0, &vec![5u8; 100_000]).unwrap();
        s.write(id, 0, &vec![6u8; 120_000]).unwrap(); // the first kept as a revision
        let r = s.fsck(false, Duration::ZERO, |_| {}).unwrap();
        assert_eq!(r.exit_code, EXIT_CLEAN, "{:?}", r.problems);
        let h = Store::record_hashes(&s.read_record(id).unwrap())[0];
        fs::File::create(s.local.path_of(&h)).unwrap(); // the first 64 KiB chunk, now empty
        s.blobs.drop_cache();
        let r = s.fsck(false, Duration::ZERO, |_| {}).unwrap();
        assert_eq!(r.exit_code, EXIT_PROBLEMS_LEFT, "{:?}", r.problems);
        assert!(
            r.problems.iter().any(|p| p.code == "damaged_blob"
                && p.path == "/f"
                && p.detail.ends_with("is 0 bytes long, not 65536")
                && !p.repaired),
            "{:?}",
            r.problems
        );
        let sc = s.scrub(|_| {}).unwrap();
        assert_eq!(sc.damaged_paths, vec!["/f".to_string()]);
        let r = s.fsck(true, Duration::ZERO, |_| {}).unwrap();
        assert_eq!(r.exit_code, EXIT_REPAIRED, "{:?}", r.problems);
        // The blob's problem and the mark scrub set: one roll back repairs both.
        assert!(r.problems.iter().all(|p| p.repaired), "{:?}", r.problems);
        assert_eq!(
            r.problems
                .iter()
                .filter(|p| p.detail.contains("; rolled back to revision ")
                    && p.detail.ends_with("(100000 bytes)"))
                .count(),
            1,
            "{:?}",
            r.problems
        );
        assert_eq!(s.read(id, 0, 200_000).unwrap(), vec![5u8; 100_000]);
        let r = s.fsck(false, Duration::ZERO, |_| {}).unwrap();
        assert_eq!(r.exit_code, EXIT_CLEAN, "{:?}", r.problems);
    }

    #[test]
    fn interrupted_trashing_goes_back_to_the_trash() {
        let (_d, s) = scratch();
        s.create(s.root(), OsStr::new("f"), file()).unwrap();
        let id = s.unlink(s.root(), OsStr::new("f")).unwrap();
        // The crash window: record says trashed, the trash link is not there yet.
        for e in fs::read_dir(s.layout.trash()).unwrap() {
            fs::remove_file(e.unwrap().path()).unwrap();
        }
        let r = s.fsck(true, Duration::ZERO, |_| {}).unwrap();
        assert_eq!(r.exit_code, EXIT_REPAIRED, "{:?}", r.problems);
        let links: Vec<_> = fs::read_dir(s.layout.trash()).unwrap().collect();
        assert_eq!(links.len(), 1);
        assert!(s.lookup(s.root(), OsStr::new(LOST_FOUND)).is_err());
        let r = s.fsck(false, Duration::ZERO, |_| {}).unwrap();
        assert_eq!(r.exit_code, EXIT_CLEAN, "{:?}", r.problems);
        assert_eq!(s.read_record(id).unwrap().nlink, 0);
    }
}
