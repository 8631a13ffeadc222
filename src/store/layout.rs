//! Paths inside a store, the format file, creating and opening a store.
//!
//! ```text
//! STORE/decofs.format      "decofs-format 1", store id, root node id, chunk size (written once)
//! STORE/nodes/ab/cd/<uuid> one per node
//! STORE/blobs/ab/<hash>    immutable chunks and manifests
//! STORE/trash/             <unix-nanos>.<uuid> symlinks to trashed nodes
//! STORE/revisions/         earlier records of nodes
//! STORE/sessions/          staging for blob writes and the pid files of running mounts
//! STORE/index/             sled index (a cache)
//! STORE/lock               single-writer lock (flock) naming its holder
//! STORE/epoch              fencing epoch, increased by every lock acquisition or break
//! STORE/decofs.log         log of a background mount
//! STORE/journal/<epoch>.log  fsync log of the writer holding that epoch (`fsynclog`)
//! ```
//! Opening checks the format version first, so a store of another format is refused
//! before anything in it is touched.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::error::{Error, IoContext, Result};
use super::node::NodeId;

pub const FORMAT_FILE: &str = "decofs.format";
pub const FORMAT_VERSION: u32 = 1;
pub const DEFAULT_CHUNK_SIZE: u32 = 4 << 20;

/// What `decofs.format` says.
#[derive(Clone, Debug)]
pub struct Format {
    pub store_id: Uuid,
    pub root: NodeId,
    pub chunk_size: u32,
    /// Defaults for undo, chosen at init; mount options may override them.
    pub policy: Policy,
}

/// How long deleted and overwritten content is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Trashed nodes older than this are purged; 0 turns trash off (space is freed at
    /// once, open files still live until their last close).
    pub trash_retention_secs: u64,
    /// At most this many revisions per file (0: none are kept).
    pub revisions_keep: u32,
    /// Revisions older than this are dropped.
    pub revisions_max_age_secs: u64,
    /// A file deleted less than this long after it was made skips the trash (a
    /// program's scratch file); 0 keeps every deleted file.
    pub trash_min_age_secs: u64,
    /// Names of files that skip the trash whatever their age (scratch by convention).
    pub trash_skip: ScratchNames,
}

/// The default `trash_min_age`, in seconds (docs/DESIGN.md, "Scratch files").
pub const TRASH_MIN_AGE_SECS: u64 = 5;

impl Default for Policy {
    fn default() -> Self {
        Policy {
            trash_retention_secs: 86_400,
            revisions_keep: 10,
            revisions_max_age_secs: 30 * 86_400,
            trash_min_age_secs: TRASH_MIN_AGE_SECS,
            trash_skip: ScratchNames::default(),
        }
    }
}

/// File name patterns (`*` any run of bytes, `?` one byte), `:`-separated when written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScratchNames(std::sync::Arc<Vec<String>>);

/// Scratch files by convention: sqlite's journals, editors' swap, backup and lock
/// files, git's temporary objects and packs, downloads in progress, temporary files,
/// Office's owner files. Not `*.lock`: Cargo.lock and its kind are real files; git's
/// lock files live for milliseconds and skip the trash by age.
pub const SCRATCH_DEFAULT: &str = "*-journal:*-wal:*-shm:.*.swp:.*.swo:.*.swx:*~:#*#:.#*:\
tmp_obj_*:tmp_pack_*:tmp_idx_*:*.tmp:*.part:*.crdownload:~$*";

impl Default for ScratchNames {
    fn default() -> Self {
        ScratchNames::parse(SCRATCH_DEFAULT).expect("the default patterns parse")
    }
}

impl ScratchNames {
    /// Patterns separated by `:`; empty means none. A pattern holding `/` or NUL, or
    /// longer than a name can be, is refused.
    pub fn parse(s: &str) -> std::result::Result<ScratchNames, String> {
        let mut v = Vec::new();
        for p in s.split(':').filter(|p| !p.is_empty()) {
            if p.contains('/') || p.contains('\0') || p.len() > 255 {
                return Err(format!("'{p}' is not a file name pattern"));
            }
            v.push(p.to_string());
        }
        Ok(ScratchNames(std::sync::Arc::new(v)))
    }

    /// Does some pattern match the whole name?
    pub fn matches(&self, name: &[u8]) -> bool {
        self.0.iter().any(|p| glob_match(p.as_bytes(), name))
    }
}

impl std::fmt::Display for ScratchNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(":"))
    }
}

/// `*` and `?` glob matching, iterative (backtracking to the last `*` only).
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Parse a duration: plain seconds or a number with s, m, h, d, w.
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        's' => (&s[..s.len() - 1], 1),
        'm' => (&s[..s.len() - 1], 60),
        'h' => (&s[..s.len() - 1], 3600),
        'd' => (&s[..s.len() - 1], 86_400),
        'w' => (&s[..s.len() - 1], 7 * 86_400),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// A trash link's name taken apart (`Layout::parse_trash_link`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrashLinkName {
    /// When the node was trashed (just before; never after its record's `trash.at`).
    pub nanos: i128,
    pub id: NodeId,
    /// The directory it was deleted from; None in a link from before it was named.
    pub parent: Option<NodeId>,
    /// `Layout::name_tag` of the name it was deleted as; None with `parent`.
    pub tag: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    /// Free and total space of the disk under the store: (blocks, bfree, bavail, files,
    /// ffree, bsize).
    pub fn statfs(&self) -> Result<libc::statvfs> {
        let c = std::ffi::CString::new(self.root.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::Invalid("path"))?;
        // SAFETY: zeroed statvfs is a valid out-parameter; c is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: c outlives the call, st is ours to fill.
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        if rc != 0 {
            return Err(Error::io("statfs", std::io::Error::last_os_error()));
        }
        Ok(st)
    }

    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
        }
    }
    pub fn format_file(&self) -> PathBuf {
        self.root.join(FORMAT_FILE)
    }
    pub fn nodes(&self) -> PathBuf {
        self.root.join("nodes")
    }
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }
    pub fn trash(&self) -> PathBuf {
        self.root.join("trash")
    }
    pub fn sessions(&self) -> PathBuf {
        self.root.join("sessions")
    }
    pub fn revisions(&self) -> PathBuf {
        self.root.join("revisions")
    }
    /// `revisions/<uuid>`: the earlier records of one node, one file per revision.
    pub fn revisions_of(&self, id: NodeId) -> PathBuf {
        self.revisions().join(id.to_string())
    }
    /// `snapshots/`: the generation file and one directory per snapshot.
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }
    pub fn epoch_file(&self) -> PathBuf {
        self.root.join("epoch")
    }
    pub fn log_file(&self) -> PathBuf {
        self.root.join("decofs.log")
    }

    /// `nodes/ab/cd/<uuid>`: two levels of 256-way fan-out keep directories small.
    pub fn node_path(&self, id: NodeId) -> PathBuf {
        let s = id.to_string();
        let mut p = self.nodes();
        p.push(&s[0..2]);
        p.push(&s[2..4]);
        p.push(&s);
        p
    }

    /// The symlink target of an entry pointing at `id`, relative to the parent node
    /// directory (`nodes/xx/yy/<parent>/<name>`), so the store can be moved as a whole.
    pub fn entry_target(id: NodeId) -> String {
        let s = id.to_string();
        format!("../../../{}/{}/{}", &s[0..2], &s[2..4], s)
    }

    /// What a trash link (in `trash/`) points at: the node's path, relative.
    pub fn trash_target(id: NodeId) -> String {
        format!("../nodes/{}", &Self::entry_target(id)[9..])
    }

    /// A trash link's name: `<unix-nanos>.<uuid>.<origin parent uuid>.<name tag>`, the
    /// tag 8 hex digits of the BLAKE3 hash of the name it was deleted as. Parent and tag
    /// let a restore or purge find what was deleted out of a directory, and by which
    /// name, without reading every trashed record (docs/DESIGN.md, "Trash, revisions
    /// and retention").
    pub fn trash_link_name(nanos: i128, id: NodeId, parent: NodeId, name: &[u8]) -> String {
        format!("{nanos}.{id}.{parent}.{:08x}", Self::name_tag(name))
    }

    /// The tag of an origin name in a trash link's name (equal names, equal tags).
    pub fn name_tag(name: &[u8]) -> u32 {
        let h = blake3::hash(name);
        u32::from_be_bytes(h.as_bytes()[..4].try_into().expect("4 bytes"))
    }

    /// Parse a trash link's name; stores made before parent and tag were added have
    /// `<unix-nanos>.<uuid>` (parent and tag None).
    pub fn parse_trash_link(name: &str) -> Option<TrashLinkName> {
        let mut it = name.split('.');
        let nanos = it.next()?.parse::<i128>().ok()?;
        let id = NodeId(Uuid::parse_str(it.next()?).ok()?);
        let (parent, tag) = match (it.next(), it.next(), it.next()) {
            (None, _, _) => (None, None),
            (Some(p), Some(t), None) if t.len() == 8 => (
                Some(NodeId(Uuid::parse_str(p).ok()?)),
                Some(u32::from_str_radix(t, 16).ok()?),
            ),
            _ => return None,
        };
        Some(TrashLinkName {
            nanos,
            id,
            parent,
            tag,
        })
    }

    /// Parse an entry's symlink target back into the node id it names.
    pub fn parse_entry_target(target: &Path) -> Option<NodeId> {
        let name = target.file_name()?.to_str()?;
        Uuid::parse_str(name).ok().map(NodeId)
    }

    pub fn blob_path(&self, hash: &str) -> PathBuf {
        let mut p = self.blobs();
        p.push(&hash[0..2]);
        p.push(hash);
        p
    }

    /// Create a new store. Refuses an existing store or a non-empty directory.
    pub fn create(&self, chunk_size: u32) -> Result<Format> {
        if self.format_file().exists() {
            return Err(Error::StoreExists(self.root.clone()));
        }
        if self.root.exists() {
            if !self.root.is_dir() {
                return Err(Error::InitNotEmpty(self.root.clone()));
            }
            let mut it =
                fs::read_dir(&self.root).ctx(|| format!("read {}", self.root.display()))?;
            if it.next().is_some() {
                return Err(Error::InitNotEmpty(self.root.clone()));
            }
        }
        if !chunk_size.is_power_of_two() || !(4096..=(64 << 20)).contains(&chunk_size) {
            return Err(Error::Invalid(
                "chunk size must be a power of two between 4 KiB and 64 MiB",
            ));
        }
        fs::create_dir_all(&self.root).ctx(|| format!("create {}", self.root.display()))?;
        check_xattr_support(&self.root)?;
        for d in [
            self.nodes(),
            self.blobs(),
            self.trash(),
            self.sessions(),
            self.revisions(),
        ] {
            fs::create_dir_all(&d).ctx(|| format!("create {}", d.display()))?;
        }
        let format = Format {
            store_id: Uuid::new_v4(),
            root: NodeId::new(),
            chunk_size,
            policy: Policy::default(),
        };
        Ok(format)
    }

    /// Write the format file last: a store without it is not a store, so a failed init
    /// leaves nothing that could be mistaken for one.
    pub fn write_format(&self, f: &Format) -> Result<()> {
        let text = format!(
            "decofs-format {}\nstore {}\nroot {}\nchunk_size {}\ntrash_retention {}\nrevisions_keep {}\nrevisions_max_age {}\ntrash_min_age {}\ntrash_skip {}\n",
            FORMAT_VERSION,
            f.store_id,
            f.root,
            f.chunk_size,
            f.policy.trash_retention_secs,
            f.policy.revisions_keep,
            f.policy.revisions_max_age_secs,
            f.policy.trash_min_age_secs,
            f.policy.trash_skip
        );
        let tmp = self.sessions().join("format.tmp");
        let mut file = fs::File::create(&tmp).ctx(|| format!("create {}", tmp.display()))?;
        file.write_all(text.as_bytes())
            .ctx(|| "write format".into())?;
        file.sync_all().ctx(|| "sync format".into())?;
        fs::rename(&tmp, self.format_file()).ctx(|| "install format file".into())?;
        sync_dir(&self.root)
    }

    /// Read and check the format file.
    pub fn read_format(&self) -> Result<Format> {
        if !self.root.exists() {
            return Err(Error::StoreNotFound(self.root.clone()));
        }
        if !self.root.is_dir() {
            return Err(Error::NotAStore(self.root.clone()));
        }
        let text = match fs::read_to_string(self.format_file()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotAStore(self.root.clone()))
            }
            Err(e) => {
                return Err(Error::io(
                    format!("read {}", self.format_file().display()),
                    e,
                ))
            }
        };
        let mut lines = text.lines();
        let first = lines.next().unwrap_or("").trim().to_string();
        if first != format!("decofs-format {FORMAT_VERSION}") {
            return Err(Error::FormatUnsupported {
                found: first,
                supported: FORMAT_VERSION,
            });
        }
        let (mut store_id, mut root, mut chunk_size) = (None, None, None);
        let mut policy = Policy::default();
        for line in lines {
            let mut kv = line.splitn(2, ' ');
            match (kv.next(), kv.next()) {
                (Some("store"), Some(v)) => store_id = Uuid::parse_str(v.trim()).ok(),
                (Some("root"), Some(v)) => root = Uuid::parse_str(v.trim()).ok().map(NodeId),
                (Some("chunk_size"), Some(v)) => chunk_size = v.trim().parse().ok(),
                (Some("trash_retention"), Some(v)) => {
                    policy.trash_retention_secs =
                        v.trim().parse().unwrap_or(policy.trash_retention_secs)
                }
                (Some("revisions_keep"), Some(v)) => {
                    policy.revisions_keep = v.trim().parse().unwrap_or(policy.revisions_keep)
                }
                (Some("revisions_max_age"), Some(v)) => {
                    policy.revisions_max_age_secs =
                        v.trim().parse().unwrap_or(policy.revisions_max_age_secs)
                }
                (Some("trash_min_age"), Some(v)) => {
                    policy.trash_min_age_secs =
                        v.trim().parse().unwrap_or(policy.trash_min_age_secs)
                }
                (Some("trash_skip"), v) => {
                    if let Ok(n) = ScratchNames::parse(v.unwrap_or("").trim()) {
                        policy.trash_skip = n;
                    }
                }
                _ => {}
            }
        }
        match (store_id, root, chunk_size) {
            (Some(store_id), Some(root), Some(chunk_size)) => Ok(Format {
                store_id,
                root,
                chunk_size,
                policy,
            }),
            _ => Err(Error::FormatUnsupported {
                found: "decofs-format 1 with missing fields".into(),
                supported: FORMAT_VERSION,
            }),
        }
    }
}

/// fsync a directory so a rename or create inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    crate::blocking::soon();
    let f = fs::File::open(dir).ctx(|| format!("open {}", dir.display()))?;
    f.sync_all().ctx(|| format!("sync {}", dir.display()))
}

/// syncfs(2) of the filesystem holding `path`.
pub fn syncfs(path: &std::path::Path) -> Result<()> {
    crate::blocking::soon();
    let dir = fs::File::open(path).ctx(|| format!("open {}", path.display()))?;
    // SAFETY: syncfs on a descriptor we own.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
        return Err(Error::io(
            "sync the store's filesystem",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Does a record of typical size (256 bytes) fit inside an inode of the filesystem
/// holding `dir`? Probed: an empty file given such an xattr has no block allocated if
/// it does. None if the probe could not run. ext4's default 256-byte inodes do not fit
/// one, so every record takes a block of its own, and a cold walk (find, ls -l, git
/// status) reads it: one more device read per file. `mkfs.ext4 -I 1024` keeps it
/// inside the inode (a cold git status of an 8,556-file checkout: 13,570 → 4,440 reads).
pub fn records_fit_in_inode(dir: &Path) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let probe = dir.join(format!(".inode-probe-{}", std::process::id()));
    let f = fs::File::create(&probe).ok()?;
    let res = xattr::set(&probe, "user.decofs.probe", &[0x5a; 256])
        .ok()
        .and_then(|_| f.metadata().ok())
        .map(|m| m.blocks() == 0);
    let _ = fs::remove_file(&probe);
    res
}

/// The node record lives in a user xattr: refuse backing filesystems without them.
pub fn check_xattr_support(dir: &Path) -> Result<()> {
    let probe = dir.join(format!(".xattr-probe-{}", std::process::id()));
    let _ = fs::File::create(&probe).ctx(|| format!("create {}", probe.display()))?;
    let res = xattr::set(&probe, "user.decofs.probe", b"1");
    let _ = fs::remove_file(&probe);
    res.map_err(|_| Error::NoXattrSupport(dir.to_path_buf()))
}
