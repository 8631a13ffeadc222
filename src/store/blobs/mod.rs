//! The blob-store seam: content-addressed, immutable blobs (invariants 1 and 5).
//!
//! Content, the fsync log and the checks reach blobs only through [`BlobStore`]: put,
//! get (verified, cached), read-verified (uncached, for checks and replay), exists,
//! restore, delete (the rename-aside protocol, safe against a writer reusing the blob),
//! list, and the two durability hooks (`sync`, `settle`). [`LocalBlobs`] (`local`) is
//! today's implementation, on the store's disk; a second one (an object store behind
//! the local disk as its cache) implements the same trait. What only the local disk has
//! (its staging pool, the filesystem sync tickets) stays on `LocalBlobs`.

mod local;
mod remote;

use std::sync::Arc;
use std::time::SystemTime;

pub(crate) use local::PREMADE_BATCH;
pub use local::{parse_doomed, LocalBlobs};
pub use remote::{GcDeleted, LedgerSays, RemoteBlobs, RemoteState};

use super::error::Result;
use super::node::Hash;

/// The hash that names `data`.
pub fn hash_of(data: &[u8]) -> Hash {
    *blake3::hash(data).as_bytes()
}

/// The largest blob an fsync log entry carries (bigger ones are fsynced instead), and so
/// the largest one `put` keeps verified in memory for that copy.
pub const CARRY_MAX: usize = 1 << 20;

/// A blob's bytes as read: a buffer that may start a little way in, so a direct read can
/// land on a page-aligned address without a copy.
pub struct Chunk {
    buf: Vec<u8>,
    start: usize,
}

impl From<Vec<u8>> for Chunk {
    fn from(buf: Vec<u8>) -> Chunk {
        Chunk { buf, start: 0 }
    }
}

impl std::ops::Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Why a blob could not be read whole (checks report it; nothing is returned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    Missing,
    Damaged,
    Unreadable(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Missing => f.write_str("missing"),
            Fault::Damaged => f.write_str("content does not match its hash"),
            Fault::Unreadable(e) => write!(f, "unreadable: {e}"),
        }
    }
}

/// What `delete` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// Gone; it held this many bytes.
    Freed(u64),
    /// Written or reused at or after the `since` the caller gave: kept.
    Reused,
    /// Not there (already deleted).
    Absent,
}

/// One item of a listing.
#[derive(Debug)]
pub enum Listed {
    /// A blob: its hash, length and when its bytes were last written or reused.
    Blob {
        hash: Hash,
        len: u64,
        written: SystemTime,
    },
    /// Something in the blob area that is not a blob (fsck reports and removes it).
    Stray {
        path: std::path::PathBuf,
        why: &'static str,
    },
}

/// Where blobs live.
pub trait BlobStore: Send + Sync {
    /// Store `data`, return its hash. Idempotent: an existing blob is reused (and its
    /// write time refreshed, so a concurrent `delete` keeps it).
    fn put(&self, data: &[u8], durable: bool) -> Result<Hash>;
    /// Read and verify a blob; a mismatch or a missing blob is `Error::Integrity`.
    fn get(&self, hash: &Hash) -> Result<Arc<Chunk>>;
    /// Read and verify a blob from storage, bypassing every cache (checks, replay).
    fn read_verified(&self, hash: &Hash) -> std::result::Result<Vec<u8>, Fault>;
    /// Is the blob there (not verified)?
    fn exists(&self, hash: &Hash) -> bool;
    /// Write `data` unless a good copy is in place (repairs a missing or damaged one).
    /// Not durable on return: the caller syncs once after many (replay ends with a
    /// syncfs). Returns whether it wrote.
    fn restore(&self, data: &[u8]) -> Result<bool>;
    /// Delete a blob no record names, unless it was written or reused at or after
    /// `since` (a writer deduplicated onto it meanwhile): moved aside first, then
    /// checked, then freed or moved back.
    fn delete(&self, hash: &Hash, since: SystemTime) -> Result<Deleted>;
    /// Every blob (and every stray) in storage, in no particular order. Stops at the
    /// first error: a listing that skipped a part would make blobs look unused.
    fn list(&self, visit: &mut dyn FnMut(Listed)) -> Result<()>;
    /// Load a blob into the cache in the background (a sequential reader's next chunk).
    fn prefetch(self: Arc<Self>, hash: Hash);
    /// Forget every cached copy (tests that damage a blob behind the cache; gc).
    fn drop_cache(&self);
    /// Make every blob `put` so far durable.
    fn sync(&self) -> Result<()>;
    /// Before a record names `hashes`: wait until the bytes of those `put` without
    /// `durable` are written to the device (docs/DESIGN.md, "Close ordering").
    fn settle(&self, hashes: &[Hash]) -> Result<()>;
    /// Was this blob `put` without `durable`, and is it not durable yet (the fsync log
    /// carries such blobs)?
    fn is_unsynced(&self, hash: &Hash) -> bool;
}
