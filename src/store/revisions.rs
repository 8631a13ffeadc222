//! Revisions: the record from before a session's first commit, kept under
//! `revisions/<uuid>/<unix-nanos>` (invariant 6), listed and read back.

use std::fs;
use std::sync::Arc;

use super::blobs::BlobStore;
use super::error::{Error, IoContext, Result};
use super::layout::Layout;
use super::node::{encode_body, frame, Content, Hash, NodeId, NodeRecord, Time};
use super::refs::Refs;

/// The revisions of every node: files of whole earlier records, named by their time.
pub struct Revisions {
    layout: Layout,
    blobs: Arc<dyn BlobStore>,
    refs: Arc<Refs>,
}

impl Revisions {
    pub(crate) fn new(layout: Layout, blobs: Arc<dyn BlobStore>, refs: Arc<Refs>) -> Revisions {
        Revisions {
            layout,
            blobs,
            refs,
        }
    }

    /// Keep the record from before a session as a revision (only if it had content).
    /// Returns whether a revision was written.
    pub(crate) fn save(&self, id: NodeId, base: &NodeRecord) -> Result<bool> {
        if base.size == 0 && base.content == Content::Empty {
            return Ok(false);
        }
        let dir = self.layout.revisions_of(id);
        fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        let now = Time::now();
        let nanos = now.unix_nanos();
        let path = dir.join(nanos.to_string());
        // Written aside and renamed in, so a crash never leaves a torn revision.
        let tmp = self
            .layout
            .sessions()
            .join(format!("rev.{}.{id}.{nanos}.tmp", std::process::id()));
        fs::write(&tmp, frame(false, &encode_body(base), base.has_gens()))
            .ctx(|| format!("write {}", tmp.display()))?;
        let new = self.refs.of_record(base, None);
        self.refs.change(&path, Some(vec![]), new, || {
            fs::rename(&tmp, &path).ctx(|| format!("install {}", path.display()))
        })?;
        Ok(true)
    }

    /// Drop one revision, `rec` as read from `path`; returns the blobs it named. Of two
    /// that drop the same one (a commit's pruning and retention's), only the one whose
    /// unlink removed it counts it released.
    pub(crate) fn remove(&self, path: &std::path::Path, rec: &NodeRecord) -> Result<Vec<Hash>> {
        let refs = self.refs.of_record(rec, None);
        let res = self.refs.change(path, refs.clone(), Some(vec![]), || {
            fs::remove_file(path).map_err(|e| Error::io(format!("remove {}", path.display()), e))
        });
        match res {
            Ok(()) => Ok(refs.unwrap_or_default()),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(vec![])
            }
            Err(e) => Err(e),
        }
    }

    /// Drop every revision of `id` (its node is gone), one by one as `remove` does.
    pub(crate) fn remove_all(&self, id: NodeId) -> Result<()> {
        let (dir, stamps) = self.stamps(id)?;
        for stamp in stamps {
            let p = dir.join(stamp.to_string());
            match self.read(id, stamp, &p) {
                Ok(Some(r)) => {
                    self.remove(&p, &r)?;
                }
                // Empty (names nothing) or gone.
                Ok(None) => {
                    let _ = fs::remove_file(&p);
                }
                // Unreadable: what it names is unknown; counted afresh.
                Err(e) => {
                    self.refs
                        .distrust(&format!("revision {} unreadable: {e}", p.display()));
                    let _ = fs::remove_file(&p);
                }
            }
        }
        match fs::remove_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("remove {}", dir.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// Revisions of a node, oldest first: (unix-nanos, record).
    pub fn list(&self, id: NodeId) -> Result<Vec<(i128, NodeRecord)>> {
        let (dir, stamps) = self.stamps(id)?;
        let mut out = Vec::new();
        for stamp in stamps {
            if let Some(r) = self.read(id, stamp, &dir.join(stamp.to_string()))? {
                out.push((stamp, r));
            }
        }
        Ok(out)
    }

    /// The directory of a node's revisions and their times (file names), oldest first;
    /// no revision file is read.
    pub(crate) fn stamps(&self, id: NodeId) -> Result<(std::path::PathBuf, Vec<i128>)> {
        let dir = self.layout.revisions_of(id);
        let it = match fs::read_dir(&dir) {
            Ok(it) => it,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((dir, Vec::new())),
            Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
        };
        let mut stamps = Vec::new();
        for ent in it {
            let ent = ent.ctx(|| "read revisions".into())?;
            if let Some(stamp) = ent
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i128>().ok())
            {
                stamps.push(stamp);
            }
        }
        stamps.sort_unstable();
        Ok((dir, stamps))
    }

    /// One revision file: None if it is gone (pruned or purged meanwhile) or empty.
    pub(crate) fn read(
        &self,
        id: NodeId,
        stamp: i128,
        path: &std::path::Path,
    ) -> Result<Option<NodeRecord>> {
        let raw = match fs::read(path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
        };
        if raw.is_empty() {
            // Written without fsync and cut off by a power loss before its data (a
            // journal committed the name): it names nothing. fsck removes it.
            log::warn!("node {id}: revision {stamp} is empty, skipped");
            return Ok(None);
        }
        Ok(Some(match crate::store::node::unframe(id, &raw)? {
            crate::store::node::Stored::Inline(r) => r,
            crate::store::node::Stored::InBlob(h) => {
                crate::store::node::decode_body(id, &self.blobs.get(&h)?)?
            }
        }))
    }
}
