//! scrub: read and verify every blob (invariant 5) without the cache.

use super::*;

impl Checker<'_> {
    /// Read and verify every blob any record names.
    pub fn scrub(&self, mut progress: impl FnMut(&Progress)) -> Result<ScrubReport> {
        let s = self.scan(&mut progress)?;
        let (need, bad, _) = self.needed_blobs(&s);
        let mut rep = ScrubReport::default();
        for (id, n) in &s.nodes {
            if let Err(why) = &n.rec {
                if why.is_some() {
                    rep.unreadable_records.push(format!(
                        "{}: {}",
                        s.paths.get(id).cloned().unwrap_or(id.to_string()),
                        why.clone().unwrap_or_default()
                    ));
                }
            }
        }
        let mut hashes: Vec<&Hash> = need.keys().collect();
        hashes.sort();
        let mut to_mark: HashSet<NodeId> = HashSet::new();
        let mut paths: std::collections::BTreeSet<String> = Default::default();
        let mut bad_manifest: HashMap<Hash, ()> = HashMap::new();
        for (_, h, _) in &bad {
            bad_manifest.insert(*h, ());
        }
        let total = hashes.len() as u64;
        for h in hashes {
            rep.blobs_checked += 1;
            if rep.blobs_checked % PROGRESS_EVERY == 0 {
                progress(&Progress {
                    phase: "scrub",
                    done: rep.blobs_checked,
                    total: Some(total),
                });
            }
            let res = self.s.blobs.read_verified(h);
            let why = match res {
                Ok(d) => {
                    rep.bytes_checked += d.len() as u64;
                    if !bad_manifest.contains_key(h) {
                        continue;
                    }
                    "an undecodable manifest".to_string()
                }
                Err(why) => why.to_string(),
            };
            let mut used_by = Vec::new();
            for (who, owner) in &need[h] {
                if !used_by.contains(who) {
                    used_by.push(who.clone());
                }
                paths.insert(who.clone());
                if let Some(id) = owner.live() {
                    to_mark.insert(id);
                }
            }
            rep.damaged.push(DamagedBlob {
                hash: hash_hex(h),
                detail: why,
                used_by,
            });
        }
        if !self.s.read_only() {
            for id in to_mark {
                let marked = self.s.records.update(id, |r| {
                    if r.status == Status::IntegrityError {
                        return Err(Error::Exists); // nothing to change
                    }
                    r.status = Status::IntegrityError;
                    Ok(())
                });
                if marked.is_ok() {
                    rep.marked += 1;
                }
            }
        }
        self.s.blobs.drop_cache();
        rep.damaged_paths = paths.into_iter().collect();
        rep.exit_code = if rep.damaged.is_empty() && rep.unreadable_records.is_empty() {
            EXIT_CLEAN
        } else {
            EXIT_PROBLEMS_LEFT
        };
        Ok(rep)
    }
}
