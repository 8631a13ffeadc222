//! `decofs stats` (issue 27): a running mount's counters move by at least what a
//! workload did, sampled intervals are differences of them, and a store that is not
//! mounted is refused with `not_mounted`. No assertion depends on timing.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{decofs, decofs_bin, Mount};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `decofs --json stats ARGS`: the objects it printed, one per line.
fn stats_json(args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = vec!["--json", "stats"];
    a.extend_from_slice(args);
    let out = decofs(&a);
    assert!(
        out.status.success(),
        "decofs {a:?}: exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn count(v: &serde_json::Value, op: &str) -> u64 {
    v["totals"]["ops"][op]["count"].as_u64().unwrap()
}

#[test]
fn stats_count_at_least_what_a_workload_did() {
    let m = Mount::new();
    const FILES: usize = 50;
    const SIZE: usize = 3000;
    let body = vec![7u8; SIZE];
    fs::create_dir(m.path("d")).unwrap();
    for i in 0..FILES {
        fs::write(m.path(&format!("d/f{i}")), &body).unwrap();
    }
    // Read each file back from the daemon, not from the kernel's page cache.
    let mut read = 0;
    for i in 0..FILES {
        let mut f = fs::File::open(m.path(&format!("d/f{i}"))).unwrap();
        // SAFETY: a valid open descriptor; fadvise only drops clean cached pages.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let mut got = Vec::new();
        read += f.read_to_end(&mut got).unwrap();
        assert_eq!(got, body);
    }
    for i in 0..10 {
        fs::rename(m.path(&format!("d/f{i}")), m.path(&format!("d/g{i}"))).unwrap();
        fs::remove_file(m.path(&format!("d/g{i}"))).unwrap();
    }
    let f = fs::File::create(m.path("synced")).unwrap();
    f.sync_all().unwrap();
    drop(f);

    let lines = stats_json(&[s(&m.mnt), "--count", "2", "--interval", "0.5"]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    for v in &lines {
        let t = &v["totals"];
        assert!(count(v, "create") > FILES as u64, "{t}");
        assert!(count(v, "rename") >= 10 && count(v, "unlink") >= 10, "{t}");
        assert!(count(v, "fsync") >= 1, "{t}");
        assert!(count(v, "write") >= 1 && count(v, "read") >= 1, "{t}");
        assert!(count(v, "lookup") + count(v, "getattr") >= 1, "{t}");
        assert!(t["ops"]["create"]["nanos"].as_u64().unwrap() > 0, "{t}");
        assert!(
            t["bytes_written"].as_u64().unwrap() >= (FILES * SIZE) as u64,
            "{t}"
        );
        assert!(t["bytes_read"].as_u64().unwrap() >= read as u64, "{t}");
        assert!(
            t["cache_hits"].as_u64().unwrap() + t["cache_misses"].as_u64().unwrap() >= 1,
            "the reads of stored chunks went through the verified cache: {t}"
        );
        assert_eq!(t["mountpoint"], m.mnt.to_str().unwrap(), "{t}");
        assert!(v["index"]["state"].is_string(), "{v}");
        assert!(v["index"]["lag_events"].is_u64(), "{v}");
        assert!(v["interval_s"].as_f64().unwrap() > 0.0, "{v}");
        for g in [
            "lookup_getattr",
            "read",
            "write",
            "create_unlink_rename",
            "fsync",
            "total",
        ] {
            assert!(v["ops_per_s"][g].as_f64().unwrap() >= 0.0, "{g}: {v}");
        }
        assert!(
            v["read_mib_per_s"].is_f64() && v["write_mib_per_s"].is_f64(),
            "{v}"
        );
    }
    // The counters only grow.
    assert!(count(&lines[1], "create") >= count(&lines[0], "create"));

    // The store names the same mount; text prints a header and one line per interval.
    let out = decofs(&["stats", s(&m.store), "--count", "2", "--interval", "0.1"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let text: Vec<&str> = text.lines().collect();
    assert_eq!(text.len(), 3, "{text:?}");
    assert!(
        text[0].starts_with("TIME") && text[0].contains("OPS/S"),
        "{text:?}"
    );
}

/// While a workload runs through both intervals, each interval's creates are counted
/// in its rate (the rate times the interval adds up to the difference of the totals).
#[test]
fn stats_intervals_are_differences_of_the_totals() {
    let m = Arc::new(Mount::new());
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (m, stop) = (m.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                fs::write(m.path(&format!("w{}", i % 500)), b"some bytes").unwrap();
                i += 1;
            }
            i
        })
    };
    // The workload is under way before the first sample.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !m.path("w1").exists() {
        assert!(
            !worker.is_finished(),
            "the workload stopped before it began"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the workload never began"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let out = Command::new(decofs_bin())
        .args([
            "--json",
            "stats",
            s(&m.mnt),
            "--count",
            "2",
            "--interval",
            "0.5",
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let written = worker.join().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let ops = |v: &serde_json::Value| {
        v["ops_per_s"]["write"].as_f64().unwrap() * v["interval_s"].as_f64().unwrap()
    };
    let between = count(&lines[1], "write") - count(&lines[0], "write");
    assert!(
        (ops(&lines[1]) - between as f64).abs() < 0.5,
        "{} vs {between}",
        ops(&lines[1])
    );
    assert!(ops(&lines[0]) >= 1.0 && ops(&lines[1]) >= 1.0, "{lines:?}");
    assert!(count(&lines[1], "write") <= written, "{written}: {lines:?}");
}

#[test]
fn stats_of_a_store_that_is_not_mounted_is_refused_with_a_code() {
    let m = Mount::new();
    m.unmount();
    for p in [&m.store, &m.mnt] {
        let out = decofs(&["--json", "stats", s(p), "--count", "1"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        let e: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
        // The store, and its mountpoint once the mount is gone.
        assert_eq!(e["code"], "not_mounted", "{e}");
    }
    let out = decofs(&["stats", s(&m.store)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[code: not_mounted]") && err.contains("is not mounted"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
