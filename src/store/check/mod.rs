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
//! - `scrub --remote` (`remote.rs`) verifies a bound store's object store: every blob in
//!   the bucket against its name, every blob the store names in the bucket or waiting
//!   for upload. (gc of the object store is `remote::gc`, run after the local gc.)
//!
//! The age of a node file is the later of its mtime and ctime (a record update changes
//! only the ctime), so a node touched recently is never taken for an old orphan. The age
//! of a blob is its mtime, the time its bytes were written.

mod fsck;
mod gc;
mod remote;
mod scan;
mod scrub;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::blobs::{BlobStore, Listed, LocalBlobs};
use super::error::{Error, IoContext, Result};
use super::layout::Layout;
use super::lock::StoreLock;
use super::manifest::{chunks_content, decode_manifest};
use super::node::{
    decode_body, hash_hex, is_hex, unframe, ChunkRef, Content, Hash, Kind, NodeId, NodeRecord,
    Status, Stored, RECORD_XATTR,
};
use super::tree::NewNode;
use super::Store;

pub use remote::{RemoteBlobProblem, RemoteScrubReport};
use scan::Scan;

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

/// Where a long check is: `phase`, how many items of it are done, and of how many when
/// that is known before the phase runs (the entries of the directories a scan found,
/// the blobs a scrub verifies; not the nodes and blobs a scan lists as it walks).
#[derive(Clone, Debug)]
pub struct Progress {
    pub phase: &'static str,
    pub done: u64,
    pub total: Option<u64>,
}

/// One finding of fsck.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// Stable code: stray_file, corrupt_record, dangling_entry, bad_entry, kind_mismatch,
    /// nlink_mismatch, hint_mismatch, multiply_linked_dir, orphan, unbound_node,
    /// missing_blob, damaged_blob (a blob of another length than its record says),
    /// corrupt_manifest, corrupt_revision, revision_without_node,
    /// dangling_trash, trash_link_target, trash_link_origin (a trash link's name says
    /// another origin directory or name than its record), integrity_error (a live file marked by a failed verification),
    /// interrupted_sweep (a blob a sweep that died moved aside, put back),
    /// refcount_mismatch (a blob reference count differs from a scan, recounted),
    /// snapshot_damaged (a name in a snapshot that leads to no record).
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
    /// Put a node whose record says it was trashed back into the trash as the named
    /// link (or point its trash link right); the link it replaces, if any, goes after.
    Retrash(NodeId, String, Option<PathBuf>),
    /// Remove a node file that holds no record and no entries.
    RemoveNode(NodeId, bool),
    /// Give a live file whose content names a lost or damaged blob (or failed a
    /// scrub) its newest whole revision's content, or none (`Checker::roll_back`).
    RollBack(NodeId),
    /// Move a blob an interrupted sweep left aside back into place.
    MoveBack {
        from: PathBuf,
        to: PathBuf,
    },
    /// Count every blob reference afresh (done after the other repairs).
    Recount,
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
    /// The blob reference counts against a scan: "exact", "N differ", or why they were
    /// not compared, or were counted afresh at this open.
    pub refcounts: String,
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

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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
    /// gc of the object store, for a store bound to one.
    #[serde(default)]
    pub remote: Option<crate::store::remote::gc::RemoteGcReport>,
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

/// The checks of one store: fsck, scrub and gc, each from one read-only scan.
pub struct Checker<'a> {
    s: &'a Store,
}

impl<'a> Checker<'a> {
    pub fn new(s: &'a Store) -> Checker<'a> {
        Checker { s }
    }
}

/// Open a store for checking: like [`Store::open`], but a root with an unreadable
/// record does not prevent it (fsck is what repairs that).
pub fn open(path: &Path, read_only: bool) -> Result<Store> {
    let layout = Layout::new(path);
    let format = layout.read_format()?;
    let lock = if read_only {
        None
    } else {
        Some(StoreLock::acquire(&layout)?)
    };
    let local = std::sync::Arc::new(LocalBlobs::new(layout.clone(), 64 << 20));
    let opts = crate::store::OpenOptions {
        read_only,
        ..Default::default()
    };
    let remote = crate::store::remote::open_blobs(&layout, &local, &opts)?;
    let store = Store::assemble(layout, format, local, remote, read_only, lock);
    store.recover_crashed_writer()?;
    store.snapshots.load(!read_only)?;
    if !read_only {
        store.streams().resume()?;
    }
    Ok(store)
}
