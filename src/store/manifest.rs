//! How a record holds a file's content (invariant 1's "manifest"): inline bytes for a
//! small file, a chunk list in the record, or a manifest blob naming the chunks. The
//! format only: content writes it, the fsync log replays it, the checks read it.

use super::error::{Error, Result};
use super::node::{ChunkRef, Content, Hash};

/// Files up to this size are stored inside their record.
pub const INLINE_DATA_MAX: u64 = 1024;

/// Chunk lists up to this length are stored inside the record.
pub const INLINE_CHUNKS_MAX: usize = 24;

/// How a record holds `data`, a file of at most `INLINE_DATA_MAX` bytes: in itself, or
/// as `Empty` when every byte is zero (all holes).
pub fn inline_content(data: Vec<u8>) -> Content {
    if data.iter().all(|b| *b == 0) {
        Content::Empty
    } else {
        Content::Inline(data)
    }
}

/// How a record names the chunk list `list` (in index order): `Empty` when there is
/// none, the list itself when it is short, else a manifest blob, which `put` stores and
/// names. The one rule of commits and of the fsync log's replay.
pub fn chunks_content(
    list: Vec<ChunkRef>,
    put: impl FnOnce(&[u8]) -> Result<Hash>,
) -> Result<Content> {
    Ok(if list.is_empty() {
        Content::Empty
    } else if list.len() <= INLINE_CHUNKS_MAX {
        Content::Chunks(list)
    } else {
        let bytes = postcard::to_allocvec(&list).expect("manifests serialize");
        Content::Manifest(put(&bytes)?)
    })
}

/// The chunk list a manifest blob of `what` holds.
pub fn decode_manifest(what: impl std::fmt::Display, data: &[u8]) -> Result<Vec<ChunkRef>> {
    postcard::from_bytes(data).map_err(|e| Error::Integrity {
        what: format!("manifest of {what}"),
        detail: e.to_string(),
    })
}
