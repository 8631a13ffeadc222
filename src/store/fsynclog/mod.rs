//! The fsync log: a file's fsync costs one `fdatasync` of a preallocated log.
//!
//! Without it, fsync of a file that changed costs an fsync of each new blob (a new
//! inode, its blocks and its directory entry) and then one of the node's file (its
//! record): on the benchmark disk about 0.8 ms + 0.5 ms, where an fdatasync of
//! preallocated space costs 0.2–0.3 ms. So fsync writes the blobs and the record as
//! always (the store stays the truth, invariants 1 and 2 unchanged), without syncing
//! them, and appends one entry to `STORE/journal/<epoch>.log`:
//!
//! - the node, its record's version and the record's stored value (the xattr bytes);
//! - the bytes of every blob the record names that is not durable yet (at most
//!   [`CARRY_MAX`](super::blobs::CARRY_MAX); beyond that those blobs are fsynced first, as before).
//!
//! One `fdatasync` of the log then makes the fsync durable. Concurrent fsyncs share
//! one: whoever syncs covers every entry appended before it started (group commit).
//!
//! Replay ([`recover`]) runs at the next open that can take the single-writer lock,
//! before anything reads a record: in order, it writes every carried blob that is
//! missing or damaged, recreates a node file that an entry still names but the power
//! cut lost, and installs the logged record where the one on disk has an older version
//! (a newer one reached the disk by itself and wins). Then one `syncfs`, and the logs
//! are deleted.
//!
//! The log is bounded ([`LOG_BYTES`]): when full, a checkpoint syncs the whole backing
//! filesystem (`syncfs`, which makes every record and blob the entries stand for
//! durable) and starts a new generation; entries of an older generation are ignored.
//! A clean unmount checkpoints and deletes the log, so a clean store has none. Each
//! writer epoch has its own file: a fenced writer (its lock broken) can only append to
//! a file the next writer has already replayed and deleted.
//!
//! # Deltas: an fsync that writes no blob
//!
//! A file's content is stored in 4 MiB chunks, and committing a session seals every
//! chunk it changed: a database that changes one 4 KiB page per transaction would write
//! (and hash, and log) a whole chunk per fsync. So an fsync whose file is already
//! durable as of some content (the session's *chain base*: a full entry or a sync made
//! it so) and which has only written since (no truncate, no punched hole) logs a
//! [`Delta`] instead: the byte ranges written since the previous fsync, the size and
//! the mtime. The session keeps its overlay; the record is not touched. Deltas on one
//! base form a *chain*; any commit of the session (the next full fsync, a close, a
//! flush) ends it, since the record then holds those bytes itself.
//!
//! A new file (its session began on an empty record and has only written) has no
//! durable content yet, but its first fsync need not store a blob either: it logs the
//! record as stored (empty content, its attributes) and, after it, a delta on that
//! empty content, under one sync ([`FsyncLog::append_with_delta`]). Replay installs the
//! record (recreating the node's file if its name survived) and then applies the chain.
//! A database's journal, new in each transaction, is such a file.
//!
//! Replay reads the log in order. A full entry is the node's durable state from then
//! on, so it drops the node's chain logged before it, unless it was logged while that
//! chain was live (fsyncdir logging a record whose attributes changed: kind
//! `KIND_FULL_KEEP`); the chain's base alone cannot tell, as content can return to an
//! earlier value (a truncate to zero). Each node's last chain is then applied, if the
//! node's record still has the chain's base content (a newer commit that reached the
//! disk wins, as for full entries, if the blobs it names did too; attribute changes
//! such as chmod do not stop it):
//! the written bytes overlay the base's chunks (read verified), the changed chunks are
//! written as blobs and the record gets the new content, size and mtime.
//!
//! A checkpoint must not drop a live chain (its bytes are nowhere else on the disk), so
//! the log keeps a copy of every live chain's entries in memory (at most [`CHAINS_MAX`]
//! bytes in all, [`CHAIN_MAX`] per chain; beyond that fsync commits in full) and writes
//! them, tagged with the new generation, into one of two *carried slots* at the end of
//! the file, synced before the header that names the new generation and the slot: a
//! cut before the header leaves the old generation whole, a cut after finds the chains
//! in the slot. Replay reads the slot's entries, then the generation's.
//!
//! # Names
//!
//! A new file's fsync also logs its name (parent, name → node), and every later change
//! of a name the log holds is appended as it happens, unsynced: a tombstone, the new
//! name of a rename. Replay binds the names the log ends on and removes entries of
//! nodes it removed, before the records (docs/DESIGN.md, "Fsync log and deltas"). So
//! fsyncdir of a directory whose new entries are all logged syncs no directory. A log
//! that fails while it holds names has the store synced and its names voided by a
//! marker, `<epoch>.names-void`, which replay honours ([`FsyncLog::void_names`]).
//!
//! # Format
//!
//! A 4 KiB header (`MAGIC`, generation, carried slot, checksum), then entries:
//! `len u32 | generation u64 | blake3(generation, payload)[..16] | payload`, where the
//! payload is `0u8 (or 2u8) | node [16] | version u64 | value_len u32 | value | count
//! u32 | (blob_len u32 | blob)*` for a full entry and `1u8 | node [16] | base_len u32 |
//! base | size u64 | has_mtime u8 | secs i64 | nanos u32 | count u32 | (offset u64 |
//! len u32 | bytes)*` for a delta, `3u8 (name) or 4u8 (tombstone) | parent [16] | node
//! [16] | name_len u32 | name` (little-endian; hand-framed because serde writes a
//! byte vector one element at a time). The header's `MAGIC` is of the third format;
//! logs of the second (`MAGIC_V2`, no names) and the first (`MAGIC_V1`, full entries
//! without the kind byte, no slots) are still replayed.

mod format;
mod replay;
#[cfg(test)]
mod tests;
mod writer;

use parking_lot::Mutex;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::collections::{BTreeMap, HashMap};

use super::blobs::hash_of;
use super::blobs::BlobStore;
use super::error::{Error, IoContext, Result};
use super::layout::syncfs;
use super::layout::{sync_dir, Layout};
use super::manifest::{chunks_content, decode_manifest, inline_content, INLINE_DATA_MAX};
use super::node::{
    decode_body, encode_body, frame, hash_hex, unframe, ChunkRef, Content, Kind, NodeId,
    NodeRecord, Stored, Time, INLINE_RECORD_LIMIT, RECORD_XATTR,
};

pub use format::{chain_base, Delta, Entry, NameOp};
use replay::log_files;
pub(crate) use replay::{recover, Target};
pub use writer::FsyncLog;
pub use writer::{NameKey, NewName};

/// Size of a log file (preallocated). Entries carry small files' blobs whole, so a
/// busy sqlite database fills it every few hundred commits; then one syncfs.
pub const LOG_BYTES: u64 = 64 << 20;

/// Live chains' entries kept for carrying across a checkpoint, in all and per chain.
pub const CHAINS_MAX: usize = 8 << 20;

pub const CHAIN_MAX: usize = 4 << 20;

const HEADER: u64 = 4096;

/// One carried slot (two sit at the end of the file, after the generation's space).
const SLOT_BYTES: u64 = CHAINS_MAX as u64 + (64 << 10);

/// Entries of a generation live in `HEADER..GEN_END`.
const GEN_END: u64 = LOG_BYTES - 2 * SLOT_BYTES;

/// The log is written with zeros this far ahead of its entries. posix_fallocate
/// reserves the space as unwritten extents, and the first write into one changes the
/// extent tree, which each fdatasync would then write too (measured on the bench disk:
/// 314–419 µs per 10 KB append and fdatasync into fallocated space, 188–216 µs into
/// space written before). Zeroing a step at a time moves that cost to one sync per step.
const ZERO_STEP: u64 = 4 << 20;

pub fn journal_dir(layout: &Layout) -> PathBuf {
    layout.root.join("journal")
}

/// The marker that voids the names of the log at `log` (`<epoch>.log` →
/// `<epoch>.names-void`): written, durably, when that log failed while it held names
/// (`FsyncLog::void_names`); replay then ignores the log's name records and tombstones.
pub(super) fn void_path(log: &Path) -> PathBuf {
    log.with_extension("names-void")
}

/// Remove a log's void marker, if there is one (not synced: the caller syncs the
/// journal directory).
pub(super) fn remove_void(void: &Path) -> Result<()> {
    match fs::remove_file(void) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("remove {}", void.display()), e))
        }
        _ => Ok(()),
    }
}

/// Are there logs left by a writer that did not close cleanly?
pub fn pending(layout: &Layout) -> Result<bool> {
    Ok(!log_files(layout)?.is_empty())
}
