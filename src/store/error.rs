//! The one error type of decofs. Every failure has a stable `code()` (for people and
//! scripts), a suggestion, and maps to exactly one errno (for the kernel) in one place.

use std::io;
use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("file name too long")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("operation not permitted")]
    NotPermitted,
    #[error("permission denied")]
    Access,
    #[error("no such attribute")]
    NoAttr,
    #[error("value too large for the buffer")]
    Range,
    #[error("not supported")]
    NotSupported,
    #[error("read-only filesystem")]
    ReadOnly,
    #[error("too many links")]
    TooManyLinks,
    #[error("no space left on device")]
    NoSpace,
    #[error("record of node {0} changed concurrently")]
    Conflict(String),
    #[error("content of {what} failed verification: {detail}")]
    Integrity { what: String, detail: String },
    #[error("corrupt record for node {node}: {detail}")]
    CorruptRecord { node: String, detail: String },
    #[error("no decofs store at {0}")]
    StoreNotFound(PathBuf),
    #[error("{0} is not a decofs store (it has no decofs.format)")]
    NotAStore(PathBuf),
    #[error("a store already exists at {0}")]
    StoreExists(PathBuf),
    #[error("{0} is not empty and is not a decofs store")]
    InitNotEmpty(PathBuf),
    #[error(
        "store format '{found}' is not supported by this decofs (it reads format {supported})"
    )]
    FormatUnsupported { found: String, supported: u32 },
    #[error("store {path} is locked by {holder}")]
    StoreLocked { path: PathBuf, holder: String },
    #[error("the backing filesystem of {0} does not support user xattrs")]
    NoXattrSupport(PathBuf),
    #[error("mountpoint {0} does not exist")]
    MountpointNotFound(PathBuf),
    #[error("mountpoint {0} is not a directory")]
    MountpointNotDir(PathBuf),
    #[error("mountpoint {0} is busy (something is already mounted there)")]
    MountpointBusy(PathBuf),
    #[error("{0} is in use (a process has a file or directory open in it)")]
    MountInUse(PathBuf),
    #[error("{0} is not a decofs mount")]
    NotMounted(PathBuf),
    #[error("{0} is not in the trash")]
    NotInTrash(String),
    #[error("cannot restore to {0}: its directory no longer exists")]
    RestoreParentGone(PathBuf),
    #[error("cannot restore to {0}: the name is taken")]
    RestoreNameTaken(PathBuf),
    #[error("no revision {0} of this file")]
    NoSuchRevision(String),
    #[error("no snapshot named {0:?}")]
    SnapshotNotFound(String),
    #[error("a snapshot named {0:?} exists")]
    SnapshotExists(String),
    #[error("snapshot {0:?} is mounted")]
    SnapshotInUse(String),
    #[error("{0} file(s) are open for writing on the mount")]
    FilesOpenForWriting(usize),
    #[error("the stream cannot be used: {0}")]
    StreamInvalid(String),
    #[error("the stream's base is not here: {0}")]
    SnapshotBaseMissing(String),
    #[error("the stream does not apply to this store: {0}")]
    ReceiveConflict(String),
    #[error("the object store failed to {op}: {detail}")]
    Remote { op: String, detail: String },
    #[error("the object store does not enforce conditional writes: {0}")]
    RemoteUnsafe(String),
    #[error("the object store's prefix belongs to another store: {0}")]
    RemoteConflict(String),
    #[error("another writer published to the object store: {0}")]
    RemoteFenced(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("unknown or invalid mount option '{0}'")]
    BadOption(String),
    #[error("the mount daemon failed: {0}")]
    Daemon(String),
    #[error("the index lags the filesystem by {events} event(s), {ms} ms{why}")]
    NotConsistent { events: u64, ms: u64, why: String },
    #[error("the index is not available: {0}")]
    IndexUnavailable(String),
    #[error("the index is damaged: {0}")]
    IndexCorrupt(String),
    #[error("the change log starts at {first}; changes after {since} were trimmed")]
    ChangesTruncated { since: u64, first: u64 },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// A stable machine-readable code; scripts match on it, so never rename one.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NotFound => "not_found",
            Error::Exists => "exists",
            Error::NotDir => "not_a_directory",
            Error::IsDir => "is_a_directory",
            Error::NotEmpty => "not_empty",
            Error::NameTooLong => "name_too_long",
            Error::Invalid(_) => "invalid_argument",
            Error::NotPermitted => "not_permitted",
            Error::Access => "permission_denied",
            Error::NoAttr => "no_attribute",
            Error::Range => "range",
            Error::NotSupported => "not_supported",
            Error::ReadOnly => "read_only",
            Error::TooManyLinks => "too_many_links",
            Error::NoSpace => "no_space",
            Error::Conflict(_) => "conflict",
            Error::Integrity { .. } => "integrity_error",
            Error::CorruptRecord { .. } => "corrupt_record",
            Error::StoreNotFound(_) => "store_not_found",
            Error::NotAStore(_) => "not_a_store",
            Error::StoreExists(_) => "store_exists",
            Error::InitNotEmpty(_) => "store_path_not_empty",
            Error::FormatUnsupported { .. } => "format_unsupported",
            Error::StoreLocked { .. } => "store_locked",
            Error::NoXattrSupport(_) => "xattr_unsupported",
            Error::MountpointNotFound(_) => "mountpoint_not_found",
            Error::MountpointNotDir(_) => "mountpoint_not_a_directory",
            Error::MountpointBusy(_) | Error::MountInUse(_) => "mountpoint_busy",
            Error::NotMounted(_) => "not_mounted",
            Error::BadOption(_) => "invalid_option",
            Error::NotInTrash(_) => "not_in_trash",
            Error::RestoreParentGone(_) => "restore_parent_gone",
            Error::RestoreNameTaken(_) => "restore_name_taken",
            Error::NoSuchRevision(_) => "no_such_revision",
            Error::SnapshotNotFound(_) => "snapshot_not_found",
            Error::SnapshotExists(_) => "snapshot_exists",
            Error::SnapshotInUse(_) => "snapshot_busy",
            Error::FilesOpenForWriting(_) => "files_open",
            Error::StreamInvalid(_) => "stream_invalid",
            Error::SnapshotBaseMissing(_) => "snapshot_base_missing",
            Error::ReceiveConflict(_) => "receive_conflict",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::Remote { .. } => "remote_unavailable",
            Error::RemoteUnsafe(_) => "remote_unsafe",
            Error::RemoteConflict(_) => "remote_conflict",
            Error::RemoteFenced(_) => "remote_fenced",
            Error::Daemon(_) => "daemon_failed",
            Error::NotConsistent { .. } => "resource_not_consistent",
            Error::IndexUnavailable(_) => "index_unavailable",
            Error::IndexCorrupt(_) => "index_corrupt",
            Error::ChangesTruncated { .. } => "changes_truncated",
            Error::Io { .. } => "io_error",
        }
    }

    /// What a person should do about it.
    pub fn suggestion(&self) -> String {
        match self {
            Error::StoreNotFound(p) => {
                format!("check the path, or create a store with `decofs init {}`", p.display())
            }
            Error::NotAStore(p) => format!(
                "point decofs at a store made by `decofs init`; to make one here, use an empty or new directory instead of {}",
                p.display()
            ),
            Error::StoreExists(_) => "mount the existing store, or choose a new path".into(),
            Error::InitNotEmpty(_) => "choose a new or empty directory for the store".into(),
            Error::FormatUnsupported { .. } => {
                "use the decofs version that created this store".into()
            }
            Error::StoreLocked { .. } => {
                "unmount the other mount first, or mount read-only with -o ro".into()
            }
            Error::NoXattrSupport(_) => {
                "put the store on ext4, xfs or btrfs (mounted with user_xattr)".into()
            }
            Error::MountpointNotFound(p) => format!("create it first: mkdir -p {}", p.display()),
            Error::MountpointNotDir(_) => "mount on a directory".into(),
            Error::MountpointBusy(p) => {
                format!("unmount it first (`decofs umount {}`) or choose another directory", p.display())
            }
            Error::MountInUse(p) => format!(
                "close what uses it (`fuser -vm {0}` lists it), or detach it now with `decofs umount --lazy {0}`",
                p.display()
            ),
            Error::NotMounted(_) => "check the mountpoint with `findmnt -t fuse.decofs`".into(),
            Error::BadOption(_) => "see the mount options in `decofs mount --help`".into(),
            Error::NotInTrash(_) => "list the trash with `decofs trash ls`".into(),
            Error::RestoreParentGone(_) | Error::RestoreNameTaken(_) => {
                "restore elsewhere with --to PATH (a path inside the mount)".into()
            }
            Error::NoSuchRevision(_) => "list revisions with `decofs versions ls FILE`".into(),
            Error::SnapshotNotFound(_) => "list snapshots with `decofs snapshot ls`".into(),
            Error::SnapshotExists(_) => {
                "choose another name, or remove the old one with `decofs snapshot rm`".into()
            }
            Error::SnapshotInUse(_) => {
                "unmount the snapshot's read-only mount first (`findmnt -t fuse.decofs`)".into()
            }
            Error::FilesOpenForWriting(_) => {
                "close them first (`fuser -vm MOUNTPOINT` lists who has them open)".into()
            }
            Error::StreamInvalid(_) => {
                "send the stream again; nothing was changed here".into()
            }
            Error::SnapshotBaseMissing(_) => {
                "receive the whole stream first (`decofs send STORE NAME` without --from), or send from a snapshot this store has".into()
            }
            Error::ReceiveConflict(_) => {
                "receive into a new store (`decofs init`), or into one left as its last received snapshot".into()
            }
            Error::Daemon(_) => "see the daemon log, STORE/decofs.log".into(),
            Error::Remote { .. } => {
                "check the object store's endpoint, credentials (AWS_* variables) and network; `decofs status` shows the last error".into()
            }
            Error::RemoteUnsafe(_) => {
                "use an object store that enforces If-None-Match and If-Match on PUT (AWS S3, MinIO, SeaweedFS, R2); without them two writers could both publish".into()
            }
            Error::RemoteConflict(_) => {
                "bind the store to an empty prefix of its own".into()
            }
            Error::RemoteFenced(_) => {
                "this store lost the object store to another writer: its unpublished changes stay here; clone the published state (decofs clone) to go on".into()
            }
            Error::NotConsistent { .. } => {
                "retry in a moment, or pass --wait to wait until the index is current (--stale answers from the lagging index)".into()
            }
            Error::IndexUnavailable(_) => {
                "query the read-write mount, or the unmounted store; mount without index=off".into()
            }
            Error::IndexCorrupt(_) => "run `decofs index rebuild` (the index is a cache; nothing is lost)".into(),
            Error::ChangesTruncated { first, .. } => format!(
                "scan the tree once (e.g. `decofs find`), then follow with --since {}",
                first.saturating_sub(1)
            ),
            Error::Integrity { .. } => "run `decofs fsck` on the store; restore the file from a version or backup".into(),
            Error::CorruptRecord { .. } => "run `decofs fsck` on the store".into(),
            Error::NoSpace => "free space on the disk that holds the store".into(),
            Error::Io { .. } => "check permissions and free space of the store's disk".into(),
            _ => "see `decofs --help`".into(),
        }
    }

    /// The errno a local filesystem would return for this error. The only mapping.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound | Error::StoreNotFound(_) | Error::MountpointNotFound(_) => {
                libc::ENOENT
            }
            Error::Exists | Error::StoreExists(_) => libc::EEXIST,
            Error::NotDir | Error::MountpointNotDir(_) => libc::ENOTDIR,
            Error::IsDir => libc::EISDIR,
            Error::NotEmpty => libc::ENOTEMPTY,
            Error::NameTooLong => libc::ENAMETOOLONG,
            Error::Invalid(_)
            | Error::NotAStore(_)
            | Error::NotMounted(_)
            | Error::BadOption(_) => libc::EINVAL,
            Error::Daemon(_) | Error::IndexCorrupt(_) => libc::EIO,
            Error::NotConsistent { .. } => libc::EAGAIN,
            Error::IndexUnavailable(_) => libc::ENOTSUP,
            Error::ChangesTruncated { .. } => libc::ERANGE,
            Error::NotInTrash(_) | Error::NoSuchRevision(_) | Error::SnapshotNotFound(_) => {
                libc::ENOENT
            }
            Error::SnapshotExists(_) => libc::EEXIST,
            Error::SnapshotInUse(_) | Error::FilesOpenForWriting(_) => libc::EBUSY,
            Error::StreamInvalid(_) | Error::ReceiveConflict(_) => libc::EINVAL,
            Error::SnapshotBaseMissing(_) => libc::ENOENT,
            Error::InvalidArgument(_) => libc::EINVAL,
            Error::Remote { .. } => libc::EIO,
            Error::RemoteUnsafe(_) => libc::EOPNOTSUPP,
            Error::RemoteConflict(_) => libc::EEXIST,
            Error::RemoteFenced(_) => libc::EROFS,
            Error::RestoreParentGone(_) => libc::ENOENT,
            Error::RestoreNameTaken(_) => libc::EEXIST,
            Error::InitNotEmpty(_) => libc::ENOTEMPTY,
            Error::NotPermitted => libc::EPERM,
            Error::Access => libc::EACCES,
            Error::NoAttr => libc::ENODATA,
            Error::Range => libc::ERANGE,
            Error::NotSupported | Error::NoXattrSupport(_) => libc::EOPNOTSUPP,
            Error::ReadOnly => libc::EROFS,
            Error::TooManyLinks => libc::EMLINK,
            Error::NoSpace => libc::ENOSPC,
            Error::Conflict(_) => libc::EAGAIN,
            Error::Integrity { .. } | Error::CorruptRecord { .. } => libc::EIO,
            Error::FormatUnsupported { .. } => libc::EPROTO,
            Error::StoreLocked { .. } | Error::MountpointBusy(_) | Error::MountInUse(_) => {
                libc::EBUSY
            }
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    /// Wrap an io error with what we were doing. ENOSPC/EDQUOT become `NoSpace` so the
    /// caller sees the condition, not a generic I/O failure.
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Error::NoSpace,
            Some(libc::ENAMETOOLONG) => Error::NameTooLong,
            _ => Error::Io {
                context: context.into(),
                source,
            },
        }
    }
}

/// `result.ctx("what")` turns an io::Result into our Result with context.
pub trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}
