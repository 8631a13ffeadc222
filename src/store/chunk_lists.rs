//! Files' chunk lists: what a record's content names, with the lists of recently read
//! manifest blobs kept in memory. A component of its own, below content, fsync and the
//! sweep, which all read chunk lists.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::blobs::BlobStore;
use super::error::Result;
use super::manifest::decode_manifest;
use super::node::{hash_hex, ChunkRef, Content, Hash};

/// The chunk lists of files, with the lists of recently read manifest blobs kept in
/// memory (a manifest blob is immutable, so a cached list never goes stale).
pub struct ChunkLists {
    cache: Mutex<HashMap<Hash, Arc<Vec<ChunkRef>>>>,
    blobs: Arc<dyn BlobStore>,
}

impl ChunkLists {
    pub(crate) fn new(blobs: Arc<dyn BlobStore>) -> ChunkLists {
        ChunkLists {
            cache: Mutex::new(HashMap::new()),
            blobs,
        }
    }

    /// The chunk list a content value names.
    pub(crate) fn get(&self, content: &Content) -> Result<Arc<Vec<ChunkRef>>> {
        match content {
            Content::Empty | Content::Inline(_) => Ok(Arc::new(Vec::new())),
            Content::Chunks(v) => Ok(Arc::new(v.clone())),
            Content::Manifest(h) => {
                if let Some(m) = self.cache.lock().get(h) {
                    return Ok(m.clone());
                }
                let list = Arc::new(decode_manifest(hash_hex(h), &self.blobs.get(h)?)?);
                let mut m = self.cache.lock();
                if m.len() > 4096 {
                    m.clear();
                }
                m.insert(*h, list.clone());
                Ok(list)
            }
        }
    }
}
