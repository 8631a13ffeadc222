//! The answers to control requests, the same whether a daemon gives them or the CLI
//! opened the store (or its index) itself.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::protocol::*;
use crate::index::query::{FindReq, Fresh, SizeCmp};
use crate::index::Index;
use crate::jsonpath::WirePath;
use crate::store::layout::{Layout, FORMAT_VERSION};
use crate::store::trash::PurgeSel;
use crate::store::{lock, Error, Kind, Result, Store, Time};

/// Turns a daemon's mount read-only (true) or back to read-write (false), with the
/// kernel flags of a [`Remount`] request (the daemon's, which knows its mount).
pub type RemountFn = dyn Fn(&Store, &Remount) -> Result<()> + Send + Sync;

/// What a daemon knows about itself.
#[derive(Clone)]
pub struct DaemonInfo {
    pub mountpoint: PathBuf,
    pub started: Instant,
    /// The index this mount keeps, or why it keeps none.
    pub index: std::result::Result<Arc<Index>, String>,
    /// How this daemon remounts (None: it cannot).
    pub remount: Option<Arc<RemountFn>>,
}

/// A daemon's answer to `remount`.
pub fn remount(store: &Store, info: &DaemonInfo, req: &Remount) -> Result<Remounted> {
    let f = info.remount.as_ref().ok_or(Error::NotSupported)?;
    f(store, req)?;
    Ok(Remounted {
        read_only: store.read_only() || store.fence().paused(),
    })
}

/// A request the store answers.
pub trait StoreAnswer: Ask {
    fn answer(&self, store: &Store) -> Result<Self::Reply>;
}

/// A request the index answers.
pub trait IndexAnswer: Ask {
    fn answer(&self, ix: &Index) -> Result<Self::Reply>;
}

/// Space held by trashed nodes and by revisions: (count, bytes) each. Revisions share
/// chunks with the live file, so their bytes are an upper bound of what they pin.
fn held_space(store: &Store) -> ((u64, u64), (u64, u64)) {
    let mut trash = (0, 0);
    if let Ok(it) = fs::read_dir(store.layout.trash()) {
        for e in it.flatten() {
            let Some(id) = fs::read_link(e.path())
                .ok()
                .and_then(|t| Layout::parse_entry_target(&t))
            else {
                continue;
            };
            if let Ok(r) = store.records.read(id) {
                trash.0 += 1;
                if r.kind == Kind::File {
                    trash.1 += r.stored;
                }
            }
        }
    }
    let mut revs = (0, 0);
    for id in store.sweeper().revision_owners() {
        for (_, r) in store.revisions.list(id).unwrap_or_default() {
            revs.0 += 1;
            revs.1 += r.stored;
        }
    }
    (trash, revs)
}

/// Snapshots and what their copies hold (one pass over the copies, not the tree).
fn snapshots_held(store: &Store) -> SnapshotsHeld {
    let mut held = SnapshotsHeld {
        count: store.snapshots().list_names().len() as u64,
        ..Default::default()
    };
    let _ = store.snapshots().for_each_copy(&mut |_, _, rec| {
        held.copies += 1;
        if rec.kind == Kind::File {
            held.bytes += rec.stored;
        }
    });
    held
}

/// What status shows of the object store of a bound store.
fn remote_held(store: &Store) -> Option<super::protocol::RemoteHeld> {
    Some(super::protocol::RemoteHeld {
        state: store.remote()?.state(),
        live: store.still_writer(),
        lease: store.lease().map(|l| l.state()),
        published: crate::store::remote::publish::publish_state(store)
            .ok()
            .flatten(),
        follow: store.follower().map(|f| f.state()),
    })
}

/// The status of a store, from inside its daemon (`info`) or from outside (None).
pub fn status(store: &Store, info: Option<&DaemonInfo>) -> Result<StatusReply> {
    let layout = &store.layout;
    let ((tn, tb), (rn, rb)) = held_space(store);
    let index = match info.map(|i| &i.index) {
        Some(Ok(ix)) => ix.status(),
        Some(Err(why)) => json!({"state": "off", "note": why}),
        None => json!({"state": "closed", "note": "not mounted: queries open the index directly"}),
    };
    Ok(StatusReply {
        store: WirePath::new(&layout.root),
        store_id: store.format.store_id.to_string(),
        format: FORMAT_VERSION,
        chunk_size: store.format.chunk_size,
        mounted: info.is_some(),
        epoch: lock::read_epoch(layout)?,
        holder: lock::holder(layout),
        locked: lock::is_locked(layout),
        trash: TrashHeld {
            nodes: tn,
            bytes: tb,
        },
        revisions: RevisionsHeld {
            count: rn,
            bytes: rb,
        },
        snapshots: snapshots_held(store),
        index,
        remote: remote_held(store),
        daemon: info.map(|info| DaemonStatus {
            pid: std::process::id(),
            mountpoint: WirePath::new(&info.mountpoint),
            read_only: store.read_only() || store.fence().paused(),
            uptime_secs: info.started.elapsed().as_secs(),
            open_sessions: store.sessions.len() as u64,
            spare_nodes: store.spare_nodes() as u64,
            close_orders_blobs: store.close_orders_blobs(),
            my_epoch: store.epoch(),
        }),
        mounts: None,
    })
}

impl StoreAnswer for Gc {
    fn answer(&self, store: &Store) -> Result<crate::store::check::GcReport> {
        let mut rep = crate::store::check::Checker::new(store)
            .gc_online(self.dry_run, Duration::from_secs(self.grace))?;
        if store.remote().is_some() {
            let grace = self
                .remote_grace
                .map_or(crate::store::remote::gc::DEFAULT_GRACE, Duration::from_secs);
            rep.remote = Some(crate::store::remote::gc::collect(
                store,
                grace,
                self.dry_run,
            )?);
        }
        Ok(rep)
    }
}

impl StoreAnswer for ScrubRemote {
    fn answer(&self, store: &Store) -> Result<crate::store::check::RemoteScrubReport> {
        crate::store::check::Checker::new(store).scrub_remote(|_| {})
    }
}

impl StoreAnswer for TrashLs {
    fn answer(&self, store: &Store) -> Result<TrashList> {
        let entries = store
            .trash()
            .list()?
            .iter()
            .map(|e| TrashItem {
                id: e.id.to_string(),
                deleted_at: e.at.secs,
                origin: e.origin_path.as_deref().map(WirePath::new),
                origin_name: WirePath::from_bytes(&e.origin_name),
                kind: format!("{:?}", e.kind).to_lowercase(),
                size: e.size,
                stored: e.stored,
                within: e.within.map(|w| w.to_string()),
                nodes: e.nodes,
                bytes: e.bytes,
            })
            .collect();
        Ok(TrashList { entries })
    }
}

impl StoreAnswer for TrashRestore {
    fn answer(&self, store: &Store) -> Result<Restored> {
        let to = self.to.as_ref().map(|t| t.0.as_path());
        let at = store.trash().restore(self.sel.0.as_os_str(), to)?;
        Ok(Restored {
            restored_to: WirePath(at),
        })
    }
}

impl StoreAnswer for TrashPurge {
    fn answer(&self, store: &Store) -> Result<Purged> {
        let sel = if let Some(id) = &self.id {
            PurgeSel::One(id.clone())
        } else if let Some(secs) = self.older_than {
            PurgeSel::OlderThan(Duration::from_secs(secs))
        } else {
            PurgeSel::All
        };
        let r = store.trash().purge(sel)?;
        Ok(Purged {
            nodes: r.nodes,
            revisions: r.revisions,
            bytes_freed: r.bytes_freed,
            skipped_open: r.skipped_open,
        })
    }
}

impl StoreAnswer for Publish {
    fn answer(&self, store: &Store) -> Result<crate::store::remote::publish::PublishReport> {
        crate::store::remote::publish::publish(store)
    }
}

impl StoreAnswer for SnapshotCreate {
    fn answer(&self, store: &Store) -> Result<SnapshotMade> {
        let i = store.snapshots().create(self.name.as_deref())?;
        Ok(SnapshotMade {
            name: i.name,
            created: i.created.secs,
            generation: i.gen,
        })
    }
}

impl StoreAnswer for SnapshotLs {
    fn answer(&self, store: &Store) -> Result<SnapshotList> {
        let snapshots = store
            .snapshots()
            .list()?
            .into_iter()
            .map(|u| SnapshotItem {
                name: u.info.name,
                created: u.info.created.secs,
                generation: u.info.gen,
                copies: u.copies,
                held_bytes: u.held_bytes,
            })
            .collect();
        Ok(SnapshotList { snapshots })
    }
}

impl StoreAnswer for SnapshotRm {
    fn answer(&self, store: &Store) -> Result<SnapshotRemoved> {
        let bytes_freed = store.snapshots().remove(&self.name)?;
        Ok(SnapshotRemoved {
            name: self.name.clone(),
            bytes_freed,
        })
    }
}

impl StoreAnswer for SnapshotRestore {
    fn answer(&self, store: &Store) -> Result<SnapshotRestored> {
        // What lingers after a last close is committed first, not after the restore.
        store.data().commit_all()?;
        let r = store.streams().restore(&self.name)?;
        Ok(SnapshotRestored {
            restored: self.name.clone(),
            before: r.before,
            records: r.records,
            entries: r.entries,
            removed: r.drops,
        })
    }
}

impl StoreAnswer for Receive {
    fn answer(&self, store: &Store) -> Result<StreamReceived> {
        let p = &self.input.0;
        let f =
            std::fs::File::open(p).map_err(|e| Error::io(format!("open {}", p.display()), e))?;
        store.data().commit_all()?;
        let got = store.streams().receive(f)?;
        Ok(StreamReceived {
            snapshot: got.name,
            base: got.base,
            records: got.records,
            entries: got.entries,
            blobs: got.blobs,
            drops: got.drops,
        })
    }
}

impl StoreAnswer for SnapshotDiff {
    fn answer(&self, store: &Store) -> Result<SnapshotChanges> {
        let changes = store
            .snapshots()
            .diff(&self.old, self.new.as_deref())?
            .into_iter()
            .map(|c| SnapshotChange {
                change: format!("{:?}", c.kind).to_lowercase(),
                path: WirePath::new(&c.path),
                from: c.from.as_deref().map(WirePath::new),
            })
            .collect();
        Ok(SnapshotChanges { changes })
    }
}

impl StoreAnswer for VersionsLs {
    fn answer(&self, store: &Store) -> Result<VersionList> {
        let id = store.names().resolve_path(&self.path.0)?;
        // Revisions are kept per file: a directory has none, and an empty table would
        // read as "this file has no earlier versions".
        if store.records.read(id)?.kind == Kind::Dir {
            return Err(Error::IsDir);
        }
        let versions = store
            .revisions
            .list(id)?
            .iter()
            .map(|(t, r)| Version {
                rev: t.to_string(),
                size: r.size,
                mtime: r.mtime.secs,
                mtime_nanos: r.mtime.nanos,
                stored: r.stored,
            })
            .collect();
        Ok(VersionList { versions })
    }
}

impl StoreAnswer for VersionsRestore {
    fn answer(&self, store: &Store) -> Result<VersionRestored> {
        let id = store.names().resolve_path(&self.path.0)?;
        let rev: i128 = self
            .rev
            .parse()
            .map_err(|_| Error::Invalid("bad revision id"))?;
        store.trash().version_restore(id, rev)?;
        Ok(VersionRestored {
            restored: rev.to_string(),
        })
    }
}

fn fresh(wait_ms: Option<u64>, stale: bool) -> Fresh {
    Fresh {
        wait: wait_ms.map(Duration::from_millis),
        stale,
    }
}

impl IndexAnswer for Find {
    fn answer(&self, ix: &Index) -> Result<Found> {
        let kind = match self.kind.as_deref() {
            None => None,
            Some(t) => Some(match t {
                "f" => Kind::File,
                "d" => Kind::Dir,
                "l" => Kind::Symlink,
                "p" => Kind::Fifo,
                "s" => Kind::Socket,
                "c" => Kind::CharDev,
                "b" => Kind::BlockDev,
                _ => return Err(Error::Invalid("--type takes f, d, l, p, s, c or b")),
            }),
        };
        let size = match (self.size_op.as_deref(), self.size) {
            (Some("+"), Some(n)) => Some(SizeCmp::More(n)),
            (Some("-"), Some(n)) => Some(SizeCmp::Less(n)),
            (Some(_), Some(n)) => Some(SizeCmp::Exactly(n)),
            _ => None,
        };
        let newer = self.newer_secs.map(|secs| Time {
            secs,
            nanos: self.newer_nanos.unwrap_or(0),
        });
        let fr = FindReq {
            rel: self.path.as_bytes().to_vec(),
            start_name: self.start_name.as_bytes().to_vec(),
            name: self.name.as_ref().map(|n| n.as_bytes().to_vec()),
            kind,
            size,
            newer,
        };
        let (found, current) = ix.find(&fr, fresh(self.wait_ms, self.stale))?;
        Ok(Found {
            consistent: current,
            paths: found.iter().map(|f| WirePath::from_bytes(&f.rel)).collect(),
        })
    }
}

impl IndexAnswer for Du {
    fn answer(&self, ix: &Index) -> Result<DuReply> {
        let (list, current) = ix.du(
            self.path.as_bytes(),
            self.depth,
            fresh(self.wait_ms, self.stale),
        )?;
        Ok(DuReply {
            consistent: current,
            entries: list
                .iter()
                .map(|(p, s)| DuEntry {
                    path: WirePath::from_bytes(p),
                    bytes: s.bytes,
                    files: s.files,
                    dirs: s.dirs,
                })
                .collect(),
        })
    }
}

impl IndexAnswer for Changes {
    fn answer(&self, ix: &Index) -> Result<ChangeList> {
        if let Some(w) = self.wait_ms {
            ix.ready(Some(Duration::from_millis(w)), false)?;
        }
        let limit = self.limit.clamp(1, 1_000_000) as usize;
        let (_, first, _, _) = ix.changes(u64::MAX - 1, 1)?;
        let since = self.since.unwrap_or(first.saturating_sub(1));
        let (list, first, last, log_id) = ix.changes(since, limit)?;
        Ok(ChangeList {
            log_id,
            first_seq: first,
            last_seq: last,
            index: ix.status()["state"].clone(),
            changes: list
                .iter()
                .map(|c| ChangeItem {
                    seq: c.seq,
                    at: c.at.secs,
                    at_nanos: c.at.nanos,
                    op: c.op.clone(),
                    node: c.node.map(|n| n.to_string()),
                    path: c.path.as_deref().map(WirePath::from_bytes),
                    to: c.to.as_deref().map(WirePath::from_bytes),
                    reconciled: c.reconciled,
                })
                .collect(),
        })
    }
}

impl IndexAnswer for IndexVerify {
    fn answer(&self, ix: &Index) -> Result<Verified> {
        let d = ix.verify(Duration::from_millis(self.wait_ms))?;
        Ok(Verified {
            equal: d.is_empty(),
            nodes: d.nodes,
            entries: d.entries,
            totals: d.totals,
            examples: d
                .changed
                .iter()
                .map(|(what, p, _)| VerifyExample {
                    what: what.to_string(),
                    path: WirePath::from_bytes(p),
                })
                .collect(),
        })
    }
}

impl IndexAnswer for IndexRebuild {
    fn answer(&self, ix: &Index) -> Result<Rebuilt> {
        let v = ix.reconcile("requested by decofs index rebuild")?;
        serde_json::from_value(v)
            .map_err(|e| Error::Daemon(format!("the index reported a rebuild oddly: {e}")))
    }
}
