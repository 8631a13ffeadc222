//! gc: delete the blobs no record names (invariant 1), offline from a scan or online
//! through the batched sweep's rename-aside delete.

use super::*;
use crate::store::blobs::Deleted;

impl Checker<'_> {
    /// `gc` on a store this process serves (through the daemon): the filesystem keeps
    /// running, so blobs are freed with the sweep's protocol (a blob a writer reuses
    /// while we look is kept) and blobs of open write sessions count as referenced.
    /// Refuses, like `gc`, while any record cannot be read.
    pub fn gc_online(&self, dry_run: bool, grace: Duration) -> Result<GcReport> {
        if !dry_run {
            self.s.writable()?;
        }
        let since = std::time::SystemTime::now();
        let mut referenced: HashSet<Hash> = HashSet::new();
        for id in self.s.sweeper().node_ids()? {
            // A manifest that cannot be read hides which chunks are in use.
            let strict = |rec: &NodeRecord| -> Result<()> {
                self.s.chunk_lists.get(&rec.content).map(|_| ()).map_err(|e| {
                Error::Integrity {
                    what: "the store's manifests".into(),
                    detail: format!(
                        "a manifest of {id} cannot be read ({e}), so which blobs are in use is unknown; gc deletes nothing until `decofs fsck --repair` fixed it"
                    ),
                }
            })
            };
            if let Some(rec) = self.s.sweeper().record_naming_blobs(id)? {
                strict(&rec)?;
                referenced.extend(self.s.sweeper().blob_refs(id, &rec));
            }
            for (_, r) in self.s.revisions.list(id)? {
                strict(&r)?;
                referenced.extend(self.s.sweeper().blob_refs(id, &r));
            }
        }
        self.s.sweeper().snapshot_refs(&mut |_, h| {
            referenced.insert(h);
        })?;
        referenced.extend(crate::store::sweep::OpenContent::sealed_blobs(
            &self.s.sessions,
        ));
        let mut rep = GcReport {
            dry_run,
            ..Default::default()
        };
        let mut cands = Vec::new();
        let mut sizes = HashMap::new();
        self.s.blobs.list(&mut |item| {
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
        rep.bytes_freed = self.s.sweeper().sweep(cands.clone(), since)?;
        for h in cands {
            if !self.s.local.exists(&h) {
                rep.deleted += 1;
                rep.deleted_hashes.push(hash_hex(&h));
            }
        }
        Ok(rep)
    }

    /// Delete blobs no record names and older than `grace`.
    pub fn gc(&self, dry_run: bool, grace: Duration) -> Result<GcReport> {
        if !dry_run {
            self.s.writable()?;
        }
        let since = std::time::SystemTime::now();
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
            let freed = if dry_run {
                *size
            } else {
                match self.s.blobs.delete(h, since)? {
                    Deleted::Freed(n) => n,
                    Deleted::Reused | Deleted::Absent => continue,
                }
            };
            rep.deleted += 1;
            rep.bytes_freed += freed;
            rep.deleted_hashes.push(hash_hex(h));
        }
        if !dry_run {
            self.s.blobs.drop_cache();
        }
        Ok(rep)
    }
}
