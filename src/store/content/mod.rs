//! File content: manifests, write sessions, revisions (invariants 1, 4, 5).
//!
//! A file's bytes are fixed-size chunks aligned to file offsets; each stored chunk is a
//! blob, absent chunks are holes and read as zeros. Files of at most
//! [`INLINE_DATA_MAX`] bytes live inline in the record; short chunk lists live in the
//! record, long ones in a manifest blob.
//!
//! All handles that write a node share one [`Session`] (one per node, reference counted
//! by open handles), so concurrent writers never lose each other's acknowledged writes.
//! `commit` (on flush/close and fsync) seals, writes the new manifest, then swaps the
//! record once. The first commit of a session that changed content saves the record from
//! before the session under `revisions/<uuid>/<unix-nanos>`; a handle that joins a
//! session with nothing uncommitted starts a new version the same way (a file closed and
//! reopened before the kernel's RELEASE still gets its closed version kept). An fsync of a session that
//! only wrote since its content was last made durable commits nothing: it logs the
//! written bytes as a delta (`fsynclog` module doc), so a database that rewrites a page
//! and fsyncs does not seal, hash and store the page's whole 4 MiB chunk each time.
//! Every chunk read is verified; a mismatch marks the node `integrity_error` and
//! returns EIO.
//!
//! # Dirty chunks
//!
//! A write never reads the chunk it modifies: verifying a stored chunk means hashing all
//! of it, which made every small random write cost a 4 MiB read and hash. A modified
//! chunk is a [`Dirty`] overlay on its stored version (the *base*, kept in the session's
//! sealed set so a sweep cannot take it): bytes written contiguously from the chunk's
//! start are kept in memory (the *head*, which is what sequential writes fill), any other
//! written byte range goes to the session's *staging file* (an unnamed, sparse file in
//! `STORE/sessions/`, one 4 MiB slot per dirty chunk) and is listed in the chunk's range
//! map. Only sealing (a head that fills its chunk, commit, fsync, last close, or memory
//! pressure) reads the base once, verified, overlays the written ranges, hashes and
//! stores the result. Memory stays bounded: heads beyond [`DIRTY_LIMIT`] are moved to
//! the staging file, and when the range maps grow past [`ENTRY_LIMIT`] entries the most
//! fragmented chunks are sealed. A base that fails verification is reported (EIO,
//! `integrity_error`) when the chunk is read or sealed, like a disk's writeback error.

mod commit;
mod read;
mod session;
#[cfg(test)]
mod tests;
mod write;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use parking_lot::Mutex;

use super::appended;
use super::blobs::Chunk;
use super::blobs::{BlobStore, LocalBlobs};
use super::dirsync::{DirDebts, Fsync};
use super::error::{Error, IoContext, Result};
use super::event::Followers;
use super::event::{Event, Op};
use super::fsynclog::FsyncLog;
use super::layout::{Layout, Policy};
use super::lock::Fence;
use super::node::{ChunkRef, Content, Hash, Kind, NodeId, NodeRecord, Status, Time};
use super::pins::Pins;
use super::records::Records;
use super::sweep::Sweeper;

pub use super::chunk_lists::ChunkLists;
use super::manifest::{chunks_content, inline_content, INLINE_DATA_MAX};
pub use super::revisions::Revisions;
pub use read::{ReadData, ReadPattern};
pub use session::{Session, Sessions};

/// Files' bytes: write sessions, reads, commits, and the revisions commits keep.
#[derive(Clone, Copy)]
pub struct Data<'a> {
    pub(in crate::store) layout: &'a Layout,
    pub(in crate::store) records: &'a Records,
    pub(in crate::store) blobs: &'a Arc<dyn BlobStore>,
    pub(in crate::store) local: &'a LocalBlobs,
    pub(in crate::store) fence: &'a Fence,
    pub(in crate::store) sessions: &'a Sessions,
    pub(in crate::store) revisions: &'a Revisions,
    pub(in crate::store) chunk_lists: &'a ChunkLists,
    pub(in crate::store) followers: &'a Followers,
    pub(in crate::store) read_pattern: &'a ReadPattern,
    pub(in crate::store) debts: &'a DirDebts,
    pub(in crate::store) fsync_log: &'a Option<FsyncLog>,
    pub(in crate::store) policy: &'a Mutex<Policy>,
    pub(in crate::store) pins: &'a Pins,
    pub(in crate::store) chunk_size: u64,
    pub(in crate::store) fsync: Fsync<'a>,
    pub(in crate::store) sweeper: Sweeper<'a>,
}

/// The blobs a record's content names directly: its chunks, or its manifest blob
/// (not the chunks the manifest lists). Used by tests that damage a file's blob.
pub fn record_hashes(rec: &NodeRecord) -> Vec<Hash> {
    match &rec.content {
        Content::Chunks(v) => v.iter().map(|c| c.hash).collect(),
        Content::Manifest(h) => vec![*h],
        _ => vec![],
    }
}
