//! `decofs stats MOUNT`: live counters of a running mount, like `juicefs stats`. The
//! daemon keeps cumulative counters (`control::stats`); this samples them every
//! interval and prints the difference as rates: one line per interval, or with `--json`
//! one object per interval (with the cumulative counters under `"totals"`).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

use decofs::control::protocol::{Stats, StatsReply};
use decofs::control::{self, Report};
use decofs::store::Error;

use super::output::{self, Context, Outcome};

/// The groups of operations a line shows, by the operations they add up.
const GROUPS: &[(&str, &[&str])] = &[
    ("lookup_getattr", &["lookup", "getattr"]),
    ("read", &["read"]),
    ("write", &["write"]),
    (
        "create_unlink_rename",
        &[
            "create", "mknod", "mkdir", "symlink", "link", "unlink", "rmdir", "rename",
        ],
    ),
    ("fsync", &["fsync", "fsyncdir"]),
];

/// A header again after this many lines on a terminal (as vmstat does).
const HEADER_EVERY: u64 = 20;

/// The columns: all operations, lookup+getattr, read, write, create+unlink+rename (and
/// the other calls that make or remove names), fsync+fsyncdir, mean latency of all.
const HEADER: &str = "TIME        OPS/S  LOOKUP    READ   WRITE CR/RM/MV  FSYNC  LAT_US  READ_MiB/s  WRITE_MiB/s  HIT%  INDEX_LAG";

pub fn stats(path: &Path, interval: f64, count: Option<u64>, json: bool) -> Outcome {
    let what = format!("cannot read the counters of {}", path.display());
    if !interval.is_finite() || !(0.01..=86_400.0).contains(&interval) {
        return Err(output::invalid(
            &what,
            format!("--interval {interval} is not between 0.01 and 86400 seconds"),
            "give --interval in seconds, e.g. 1 or 0.5",
        ));
    }
    if count == Some(0) {
        return Err(output::invalid(
            &what,
            "--count 0 would print nothing".into(),
            "give --count 1 or more, or leave it out to run until interrupted",
        ));
    }
    let socket = daemon_socket(path).or_fail(&what)?;
    let ask = || {
        control::call(&socket, Stats {}, Duration::from_secs(10))
            .map_err(|r| output::Failure::new(r.with_what(what.as_str())))
    };
    let terminal = {
        use std::io::IsTerminal;
        std::io::stdout().is_terminal()
    };
    let mut prev = ask()?;
    let mut printed = 0u64;
    while count.is_none_or(|c| printed < c) {
        std::thread::sleep(Duration::from_secs_f64(interval));
        let cur = ask()?;
        let v = interval_json(&prev, &cur);
        if json {
            output::json(&v);
        } else {
            if printed == 0 || (terminal && printed.is_multiple_of(HEADER_EVERY)) {
                output::line(HEADER);
            }
            output::line(&text_line(&v));
        }
        prev = cur;
        printed += 1;
    }
    Ok(ExitCode::SUCCESS)
}

/// The control socket of the daemon serving `path` (a mountpoint, or a store: its
/// writer, else any mount of it); `not_mounted` when none runs.
fn daemon_socket(path: &Path) -> Result<std::path::PathBuf, Report> {
    let (store, mnt) = match control::resolve(path) {
        Ok(r) => r,
        // A directory that is neither: most likely a mountpoint whose mount is gone.
        Err(Error::NotAStore(_)) if path.is_dir() => {
            return Err(not_mounted(format!(
                "{} is not a decofs mount (nor a store)",
                path.display()
            )))
        }
        Err(e) => return Err(Report::reply(&e)),
    };
    let ds = control::daemons(&store);
    let pick = match &mnt {
        Some(m) => ds.iter().find(|d| &d.mountpoint == m),
        None => None,
    }
    .or(ds.iter().find(|d| d.writer))
    .or(ds.first());
    match pick {
        Some(d) => Ok(d.socket.clone()),
        None => Err(not_mounted(format!(
            "the store {} is not mounted: only a running mount has counters",
            store.display()
        ))),
    }
}

fn not_mounted(reason: String) -> Report {
    Report {
        what: String::new(),
        code: Error::NotMounted(Default::default()).code().into(),
        reason,
        suggestion: "give the mountpoint of a running mount (`findmnt -t fuse.decofs`), \
                     or mount the store first (`decofs mount STORE MOUNTPOINT`)"
            .into(),
    }
}

/// Counters of one operation, or of a group, between two samples.
fn delta(prev: &StatsReply, cur: &StatsReply, ops: &[&str]) -> (u64, u64) {
    ops.iter().fold((0, 0), |(n, t), op| {
        let c = cur.ops.get(*op).copied().unwrap_or_default();
        let p = prev.ops.get(*op).copied().unwrap_or_default();
        (
            n + c.count.saturating_sub(p.count),
            t + c.nanos.saturating_sub(p.nanos),
        )
    })
}

/// One interval as the JSON object `--json` prints (the text line is made from it).
fn interval_json(prev: &StatsReply, cur: &StatsReply) -> Value {
    let secs = (cur.uptime_ns.saturating_sub(prev.uptime_ns) as f64 / 1e9).max(1e-9);
    let rate = |n: u64| n as f64 / secs;
    let mean_us = |(n, t): (u64, u64)| {
        if n == 0 {
            Value::Null
        } else {
            json!(t as f64 / n as f64 / 1e3)
        }
    };
    let mut per_s = serde_json::Map::new();
    let mut lat = serde_json::Map::new();
    let mut grouped: Vec<&str> = Vec::new();
    for (name, ops) in GROUPS {
        let d = delta(prev, cur, ops);
        per_s.insert(name.to_string(), json!(rate(d.0)));
        lat.insert(name.to_string(), mean_us(d));
        grouped.extend(ops.iter());
    }
    let all: Vec<&str> = cur.ops.keys().map(String::as_str).collect();
    let other: Vec<&str> = all
        .iter()
        .copied()
        .filter(|o| !grouped.contains(o))
        .collect();
    let d = delta(prev, cur, &other);
    per_s.insert("other".into(), json!(rate(d.0)));
    lat.insert("other".into(), mean_us(d));
    let d = delta(prev, cur, &all);
    per_s.insert("total".into(), json!(rate(d.0)));
    lat.insert("total".into(), mean_us(d));
    let mib = |c: u64, p: u64| c.saturating_sub(p) as f64 / secs / (1 << 20) as f64;
    let hits = cur.cache_hits.saturating_sub(prev.cache_hits);
    let misses = cur.cache_misses.saturating_sub(prev.cache_misses);
    let ratio = if hits + misses == 0 {
        Value::Null
    } else {
        json!(hits as f64 / (hits + misses) as f64)
    };
    json!({
        "at": cur.at_ms / 1000,
        "interval_s": secs,
        "ops_per_s": per_s,
        "mean_latency_us": lat,
        "read_mib_per_s": mib(cur.bytes_read, prev.bytes_read),
        "write_mib_per_s": mib(cur.bytes_written, prev.bytes_written),
        "cache_hits": hits,
        "cache_misses": misses,
        "cache_hit_ratio": ratio,
        "index": cur.index,
        "totals": cur,
    })
}

/// One interval for people, under [`HEADER`].
fn text_line(v: &Value) -> String {
    let n = |k: &str| v["ops_per_s"][k].as_f64().unwrap_or(0.0);
    let time = output::local_time((v["at"].as_u64().unwrap_or(0)) as i64);
    // "YYYY-MM-DD HH:MM:SS +ZZZZ": the clock is enough on a line a second.
    let time = time.get(11..19).unwrap_or(&time).to_string();
    let lat = match v["mean_latency_us"]["total"].as_f64() {
        Some(us) => format!("{us:.0}"),
        None => "-".into(),
    };
    let hit = match v["cache_hit_ratio"].as_f64() {
        Some(r) => format!("{:.0}", r * 100.0),
        None => "-".into(),
    };
    let ix = &v["index"];
    let lag = match ix["state"].as_str().unwrap_or("") {
        "off" => "off".to_string(),
        "current" => "0".to_string(),
        state => format!("{} ev, {} ms ({state})", ix["lag_events"], ix["lag_ms"]),
    };
    format!(
        "{time} {:>8.0} {:>7.0} {:>7.0} {:>7.0} {:>8.0} {:>6.0} {lat:>7} {:>11.2} {:>12.2} {hit:>5}  {lag}",
        n("total"),
        n("lookup_getattr"),
        n("read"),
        n("write"),
        n("create_unlink_rename"),
        n("fsync"),
        v["read_mib_per_s"].as_f64().unwrap_or(0.0),
        v["write_mib_per_s"].as_f64().unwrap_or(0.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use decofs::control::stats::{IndexLag, OpTotals};
    use decofs::jsonpath::WirePath;

    fn sample(
        ns: u64,
        ops: &[(&str, u64, u64)],
        bytes: (u64, u64),
        cache: (u64, u64),
    ) -> StatsReply {
        StatsReply {
            pid: 1,
            mountpoint: WirePath::new("/m"),
            read_only: false,
            at_ms: 1_796_600_554_000,
            uptime_ns: ns,
            ops: decofs::fuse::OPS
                .iter()
                .map(|o| {
                    let (count, nanos) = ops
                        .iter()
                        .find(|(n, _, _)| n == o)
                        .map(|(_, c, t)| (*c, *t))
                        .unwrap_or((0, 0));
                    (o.to_string(), OpTotals { count, nanos })
                })
                .collect(),
            bytes_read: bytes.0,
            bytes_written: bytes.1,
            cache_hits: cache.0,
            cache_misses: cache.1,
            index: IndexLag {
                state: "current".into(),
                ..IndexLag::default()
            },
        }
    }

    /// Rates are differences over the daemon's own clock, grouped as the line shows
    /// them; an idle interval has no latency and no hit ratio rather than zeros.
    #[test]
    fn an_interval_is_the_difference_of_two_samples() {
        let a = sample(1_000_000_000, &[("lookup", 10, 10_000)], (0, 0), (0, 0));
        let b = sample(
            3_000_000_000,
            &[
                ("lookup", 30, 30_000),
                ("getattr", 20, 20_000),
                ("create", 4, 40_000),
                ("rename", 2, 20_000),
                ("statfs", 2, 2_000),
            ],
            (4 << 20, 8 << 20),
            (3, 1),
        );
        let v = interval_json(&a, &b);
        assert_eq!(v["interval_s"], json!(2.0));
        assert_eq!(v["ops_per_s"]["lookup_getattr"], json!(20.0));
        assert_eq!(v["ops_per_s"]["create_unlink_rename"], json!(3.0));
        assert_eq!(v["ops_per_s"]["other"], json!(1.0));
        assert_eq!(v["ops_per_s"]["total"], json!(24.0));
        assert_eq!(v["mean_latency_us"]["create_unlink_rename"], json!(10.0));
        assert_eq!(v["mean_latency_us"]["fsync"], Value::Null);
        assert_eq!(v["read_mib_per_s"], json!(2.0));
        assert_eq!(v["write_mib_per_s"], json!(4.0));
        assert_eq!(v["cache_hit_ratio"], json!(0.75));
        let line = text_line(&v);
        assert!(line.contains(" 24 ") && line.ends_with(" 0"), "{line}");
        let idle = interval_json(&b, &b);
        assert_eq!(idle["cache_hit_ratio"], Value::Null);
        assert!(text_line(&idle).contains(" - "), "{}", text_line(&idle));
    }
}
