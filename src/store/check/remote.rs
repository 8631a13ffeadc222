//! `scrub --remote`: verify the object store's copy of the store (docs/DESIGN.md,
//! "Remote storage", scrub). Every blob under the prefix's `blobs/` is downloaded and
//! its BLAKE3 hash compared with its name; every blob the store names (live records,
//! trash, revisions, snapshots, the published `.pub-` one included) must be in the
//! bucket or waiting for its upload here. Reads only; a listing or download that fails
//! stops it (`remote_unavailable`) rather than pass a part for the whole.

use super::*;
use crate::store::blobs::{hash_of, LedgerSays};
use crate::store::remote::blob_key;

/// What `scrub --remote` found.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RemoteScrubReport {
    pub url: String,
    /// Blobs in the bucket downloaded and verified, and their bytes.
    pub checked: u64,
    pub bytes: u64,
    /// Blobs the store names.
    pub named: u64,
    /// Blobs in the bucket whose bytes do not match their name.
    pub damaged: Vec<RemoteBlobProblem>,
    /// Blobs the store names that are neither in the bucket nor waiting for upload.
    pub missing: Vec<RemoteBlobProblem>,
    /// Blobs the store names that are not in the bucket yet: their upload waits here.
    pub pending: u64,
    /// Blobs in the bucket nothing here names (gc of the object store deletes them).
    pub unreferenced: u64,
    /// Keys under `blobs/` that are not blob names.
    pub strays: u64,
    /// Records that could not be read (run fsck): the blobs they name are unknown.
    pub unreadable_records: Vec<String>,
    /// `clean`, or `integrity_error` when anything is damaged or missing (not named
    /// `code`: a reply with a code is an error report on the control socket).
    pub result: String,
    pub exit_code: u8,
}

/// A damaged or missing blob of the object store and who uses it here.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RemoteBlobProblem {
    pub hash: String,
    pub detail: String,
    pub used_by: Vec<String>,
}

fn users(need: &Needed, h: &Hash) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for (who, _) in need.get(h).into_iter().flatten() {
        if !v.contains(who) {
            v.push(who.clone());
        }
    }
    v
}

impl Checker<'_> {
    /// Verify the object store's copy of the store (reads only).
    pub fn scrub_remote(&self, mut progress: impl FnMut(&Progress)) -> Result<RemoteScrubReport> {
        let blobs = self.s.remote().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{} is not bound to an object store (decofs remote add)",
                self.s.layout.root.display()
            ))
        })?;
        let remote = blobs.remote();
        let s = self.scan(&mut progress)?;
        let (need, bad, _) = self.needed_blobs(&s);
        let mut rep = RemoteScrubReport {
            url: remote.url().to_string(),
            named: need.len() as u64,
            ..Default::default()
        };
        for (id, n) in &s.nodes {
            if let Err(Some(why)) = &n.rec {
                rep.unreadable_records.push(format!(
                    "{}: {why}",
                    s.paths.get(id).cloned().unwrap_or(id.to_string())
                ));
            }
        }
        for (who, _, why) in &bad {
            rep.unreadable_records.push(format!("{who}: {why}"));
        }
        // What the ledger said before the listing: a blob uploaded after the listing
        // was pending when asked, not missing.
        let said: HashMap<Hash, Option<LedgerSays>> =
            need.keys().map(|h| (*h, blobs.ledger_says(h))).collect();
        let mut listed: Vec<(Hash, u64)> = Vec::new();
        remote.list("blobs", &mut |key, size, _| match key
            .rsplit_once('/')
            .and_then(|(_, hex)| crate::store::node::parse_hash(hex))
            .filter(|h| blob_key(h) == key)
        {
            Some(h) => listed.push((h, size)),
            None => rep.strays += 1,
        })?;
        listed.sort();
        let total = listed.len() as u64;
        let mut present: HashSet<Hash> = HashSet::new();
        for (i, (h, _)) in listed.iter().enumerate() {
            if (i as u64 + 1).is_multiple_of(100) {
                progress(&Progress {
                    phase: "scrub --remote",
                    done: i as u64 + 1,
                    total: Some(total),
                });
            }
            // Gone since the listing (gc of the object store): as if not listed.
            let Some(got) = remote.get(&blob_key(h))? else {
                continue;
            };
            present.insert(*h);
            rep.checked += 1;
            rep.bytes += got.data.len() as u64;
            if &hash_of(&got.data) != h {
                rep.damaged.push(RemoteBlobProblem {
                    hash: hash_hex(h),
                    detail: "the object store's copy does not match its hash".into(),
                    used_by: users(&need, h),
                });
            }
            if !need.contains_key(h) {
                rep.unreferenced += 1;
            }
        }
        let mut named: Vec<&Hash> = need.keys().collect();
        named.sort();
        for h in named {
            if present.contains(h) {
                continue;
            }
            let local = blobs.local_exists(h);
            let detail = match said.get(h).copied().flatten() {
                Some(LedgerSays::Pending) => None,
                Some(LedgerSays::Uploaded) => Some(if local {
                    "not in the object store, though the upload ledger says it was uploaded (the local copy is kept)"
                } else {
                    "not in the object store, though the upload ledger says it was uploaded, and not here"
                }),
                // Without the ledger (or unknown to it): a local copy is on its way.
                _ if local => None,
                _ => Some("neither in the object store nor here"),
            };
            match detail {
                None => rep.pending += 1,
                Some(d) => rep.missing.push(RemoteBlobProblem {
                    hash: hash_hex(h),
                    detail: d.into(),
                    used_by: users(&need, h),
                }),
            }
        }
        let clean = rep.damaged.is_empty() && rep.missing.is_empty();
        rep.result = if clean { "clean" } else { "integrity_error" }.into();
        rep.exit_code = if clean && rep.unreadable_records.is_empty() {
            EXIT_CLEAN
        } else {
            EXIT_PROBLEMS_LEFT
        };
        Ok(rep)
    }
}
