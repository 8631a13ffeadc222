//! The write lease on the object store (docs/DESIGN.md, "Remote storage"): one object,
//! `lease`, created or replaced only by conditional writes, naming its holder, an
//! epoch that grows with every acquisition, and when it expires. A writer renews it
//! every third of its TTL; a renewal refused because the lease changed means another
//! writer took it, and this one turns read-only for good. While the object store
//! cannot be reached the writer goes on locally (its publishes fail); whoever takes
//! the lease after it expired also moves the published head to the new epoch, so the
//! old writer's next publish fails too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{now_ms, Remote};
use crate::store::error::{Error, Result};
use crate::store::lock::Fence;

pub const LEASE_KEY: &str = "lease";

/// The default lease TTL (`-o lease_ttl`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// What `lease` holds (JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaseRec {
    /// "pid P on host H, store PATH".
    pub holder: String,
    pub host: String,
    pub store_path: String,
    pub epoch: u64,
    pub ttl_ms: u64,
    /// Wall-clock unix milliseconds after which another writer may take it.
    pub expires_unix_ms: i64,
    /// Given back by a clean close: free at once.
    pub released: bool,
}

/// How a holder's lease stands (status).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LeaseState {
    pub epoch: u64,
    pub ttl_ms: u64,
    /// Unix ms until which the bucket's lease is this writer's (as last renewed).
    pub expires_unix_ms: i64,
    /// Taken by another writer: this one is read-only for good.
    pub lost: bool,
    pub last_error: Option<String>,
}

pub struct Lease {
    remote: Arc<Remote>,
    fence: Arc<Fence>,
    rec: Mutex<(LeaseRec, String)>,
    lost: AtomicBool,
    last_error: Mutex<Option<String>>,
}

fn body(rec: &LeaseRec) -> Vec<u8> {
    serde_json::to_vec(rec).expect("a lease serializes")
}

/// Read the bucket's lease and its ETag.
pub fn read(remote: &Remote) -> Result<Option<(LeaseRec, String)>> {
    let Some(got) = remote.get(LEASE_KEY)? else {
        return Ok(None);
    };
    let rec = serde_json::from_slice(&got.data).map_err(|e| Error::CorruptRecord {
        node: format!("{}/{LEASE_KEY}", remote.url()),
        detail: e.to_string(),
    })?;
    Ok(Some((rec, got.etag.unwrap_or_default())))
}

/// Break the bucket's lease (`decofs lock break` of a store on an object store): mark
/// it given back, so the next writer takes it at once with a new epoch. Its holder, if
/// it still runs, finds its next renewal refused and turns read-only. Returns the lease
/// as it was (None: there was none).
pub fn break_lease(remote: &Remote) -> Result<Option<LeaseRec>> {
    for _ in 0..8 {
        let Some((old, etag)) = read(remote)? else {
            return Ok(None);
        };
        let mut rec = old.clone();
        rec.holder = format!(
            "broken by pid {} on host {}",
            std::process::id(),
            crate::store::lock::hostname()
        );
        rec.released = true;
        rec.expires_unix_ms = now_ms();
        if remote.put_if_match(LEASE_KEY, body(&rec), &etag)?.is_some() {
            log::warn!("broke the object store's lease of {}", old.holder);
            return Ok(Some(old));
        }
    }
    Err(Error::Remote {
        op: format!("break the lease at {}", remote.url()),
        detail: "it kept changing".into(),
    })
}

impl Lease {
    /// Take the lease: free, given back, expired, or left by a writer of this very
    /// store on this host (the caller holds the store's local lock, so that writer is
    /// gone). A live lease of another writer is `store_locked`, naming it. The epoch
    /// is one more than any the bucket has seen (`min_epoch`: the head's).
    pub fn acquire(
        remote: Arc<Remote>,
        fence: Arc<Fence>,
        ttl: Duration,
        store_path: &str,
        min_epoch: u64,
    ) -> Result<Arc<Lease>> {
        let host = crate::store::lock::hostname();
        for _ in 0..8 {
            let cur = read(&remote)?;
            let started = now_ms();
            let epoch = cur.as_ref().map_or(0, |(r, _)| r.epoch).max(min_epoch) + 1;
            let rec = LeaseRec {
                holder: format!(
                    "pid {} on host {host}, store {store_path}",
                    std::process::id()
                ),
                host: host.clone(),
                store_path: store_path.to_string(),
                epoch,
                ttl_ms: ttl.as_millis() as u64,
                expires_unix_ms: started + ttl.as_millis() as i64,
                released: false,
            };
            let written = match &cur {
                None => remote.put_create_etag(LEASE_KEY, body(&rec))?,
                Some((old, etag)) => {
                    let mine = old.host == host && old.store_path == store_path;
                    // Clocks may differ: an expiry is trusted a quarter TTL late.
                    let grace = old.ttl_ms as i64 / 4;
                    if !old.released && !mine && old.expires_unix_ms + grace > started {
                        return Err(Error::StoreLocked {
                            path: format!("{}", remote.url()).into(),
                            holder: format!(
                                "{} (its lease on the object store runs {} s more unless renewed)",
                                old.holder,
                                (old.expires_unix_ms + grace - started).max(0) / 1000
                            ),
                        });
                    }
                    remote.put_if_match(LEASE_KEY, body(&rec), etag)?
                }
            };
            if let Some(etag) = written {
                log::info!("took the object store's lease, epoch {epoch}");
                let lease = Arc::new(Lease {
                    remote,
                    fence,
                    rec: Mutex::new((rec, etag)),
                    lost: AtomicBool::new(false),
                    last_error: Mutex::new(None),
                });
                let weak = Arc::downgrade(&lease);
                std::thread::Builder::new()
                    .name("decofs-lease".into())
                    .spawn(move || renew_loop(weak, ttl))
                    .map_err(|e| Error::io("start the lease renewal", e))?;
                return Ok(lease);
            }
            // Another writer changed it meanwhile: look again.
        }
        Err(Error::Remote {
            op: format!("take the lease at {}", remote.url()),
            detail: "it kept changing under this writer".into(),
        })
    }

    pub fn epoch(&self) -> u64 {
        self.rec.lock().0.epoch
    }

    /// Still this writer's (as far as it knows)?
    pub fn held(&self) -> bool {
        !self.lost.load(Ordering::SeqCst)
    }

    /// Held, and its last renewal runs at least `margin` more: what may delete from the
    /// bucket (gc) can count on no other writer for that long.
    pub fn valid_for(&self, margin: Duration) -> bool {
        self.held() && self.rec.lock().0.expires_unix_ms - margin.as_millis() as i64 > now_ms()
    }

    pub fn state(&self) -> LeaseState {
        let r = self.rec.lock();
        LeaseState {
            epoch: r.0.epoch,
            ttl_ms: r.0.ttl_ms,
            expires_unix_ms: r.0.expires_unix_ms,
            lost: !self.held(),
            last_error: self.last_error.lock().clone(),
        }
    }

    /// Renew once. `Ok(false)`: the lease changed in the bucket (taken over).
    fn renew(&self) -> Result<bool> {
        let (mut rec, etag) = self.rec.lock().clone();
        let started = now_ms();
        rec.expires_unix_ms = started + rec.ttl_ms as i64;
        let written = self.remote.put_if_match(LEASE_KEY, body(&rec), &etag);
        let new = match written {
            Ok(Some(new)) => Some(new),
            // Refused, or no answer: a retry of a renewal that went through is refused
            // too. The bucket's lease says whether it is this renewal.
            Ok(None) | Err(_) => match read(&self.remote)? {
                Some((now, new))
                    if now.holder == rec.holder
                        && now.epoch == rec.epoch
                        && now.expires_unix_ms == rec.expires_unix_ms =>
                {
                    Some(new)
                }
                _ => match written {
                    Err(e) => return Err(e),
                    Ok(_) => None,
                },
            },
        };
        match new {
            Some(new) => {
                *self.rec.lock() = (rec, new);
                *self.last_error.lock() = None;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Another writer has the object store: refuse changes for good.
    pub fn lose(&self, why: &str) {
        if !self.lost.swap(true, Ordering::SeqCst) {
            log::error!(
                "the object store's lease is lost ({why}); the store is read-only from now on"
            );
        }
        *self.last_error.lock() = Some(why.to_string());
        self.fence.lose();
    }

    /// Give the lease back (a clean close): the next writer need not wait it out.
    /// This writer publishes nothing more.
    pub fn release(&self) {
        if self.lost.swap(true, Ordering::SeqCst) {
            return;
        }
        let (mut rec, etag) = self.rec.lock().clone();
        rec.released = true;
        rec.expires_unix_ms = now_ms();
        if let Err(e) = self.remote.put_if_match(LEASE_KEY, body(&rec), &etag) {
            log::warn!("the object store's lease was not given back ({e}); it expires on its own");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release();
    }
}

/// Renew every third of the TTL. A refused renewal is a takeover; an object store that
/// cannot be reached is retried (the store goes on locally; status says since when).
fn renew_loop(lease: Weak<Lease>, ttl: Duration) {
    let every = (ttl / 3).max(Duration::from_millis(200));
    let mut next = Instant::now() + every;
    loop {
        std::thread::sleep(next.saturating_duration_since(Instant::now()).min(every));
        let Some(l) = lease.upgrade() else { return };
        if !l.held() {
            return;
        }
        if Instant::now() < next {
            continue;
        }
        match l.renew() {
            Ok(true) => next = Instant::now() + every,
            Ok(false) => {
                l.lose("another writer took it");
                return;
            }
            Err(e) => {
                log::warn!("renewing the object store's lease: {e}");
                *l.last_error.lock() = Some(e.to_string());
                next = Instant::now() + Duration::from_secs(1).min(every);
            }
        }
    }
}
