//! `decofs stats`: the cumulative counters a running mount keeps, sampled by the CLI
//! (`cli::stats`), which turns two samples into rates.
//!
//! The counters are the process's: requests and their time per operation and bytes
//! through read and write (`fuse::STATS`, counted in `fuse::guard`), verified-cache hits
//! and misses (`LocalBlobs::cache_counts`). The index's lag is read when asked. Only a
//! daemon answers: a store that is not mounted has nothing to count (`not_mounted`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::answer::DaemonInfo;
use crate::jsonpath::WirePath;
use crate::store::blobs::LocalBlobs;
use crate::store::Result;

/// The counters of the daemon answering.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {}

/// Cumulative counters since the daemon started, and when they were read.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatsReply {
    pub pid: u32,
    pub mountpoint: WirePath,
    pub read_only: bool,
    /// Unix milliseconds when the counters were read.
    pub at_ms: u64,
    /// Nanoseconds since the daemon started (monotonic): what rates divide by.
    pub uptime_ns: u64,
    /// Every operation `fuse::guard` counts (zeros included), by its name.
    pub ops: BTreeMap<String, OpTotals>,
    /// Bytes read and written through the mount (read and write requests).
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Reads of a blob the verified cache answered, and those it did not.
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub index: IndexLag,
}

/// Requests of one operation served, and the time they took in all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpTotals {
    pub count: u64,
    pub nanos: u64,
}

/// How far the index is behind the filesystem (`Index::status`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IndexLag {
    /// current, lagging, dirty, reconciling, or off (no index: `-o index=off`, a
    /// read-only mount).
    pub state: String,
    pub lag_events: u64,
    pub lag_ms: u64,
    pub queue_depth: u64,
}

/// A daemon's counters now.
pub fn answer(info: &DaemonInfo, read_only: bool) -> Result<StatsReply> {
    let s = &crate::fuse::STATS;
    let ops = crate::fuse::OPS
        .iter()
        .zip(s.ops.iter())
        .map(|(name, o)| {
            let t = OpTotals {
                count: o.count.load(Ordering::Relaxed),
                nanos: o.nanos.load(Ordering::Relaxed),
            };
            (name.to_string(), t)
        })
        .collect();
    let (cache_hits, cache_misses) = LocalBlobs::cache_counts();
    let index = match &info.index {
        Ok(ix) => {
            let v = ix.status();
            let n = |k: &str| v[k].as_u64().unwrap_or(0);
            IndexLag {
                state: v["state"].as_str().unwrap_or("").to_string(),
                lag_events: n("lag_events"),
                lag_ms: n("lag_ms"),
                queue_depth: n("queue_depth"),
            }
        }
        Err(_) => IndexLag {
            state: "off".into(),
            ..IndexLag::default()
        },
    };
    Ok(StatsReply {
        pid: std::process::id(),
        mountpoint: WirePath::new(&info.mountpoint),
        read_only,
        at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        uptime_ns: info.started.elapsed().as_nanos() as u64,
        ops,
        bytes_read: s.bytes_read.load(Ordering::Relaxed),
        bytes_written: s.bytes_written.load(Ordering::Relaxed),
        cache_hits,
        cache_misses,
        index,
    })
}
