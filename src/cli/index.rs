//! `find`, `du`, `changes`, `index verify|rebuild`: questions for the index, asked of
//! the writer daemon or of the unmounted store.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use decofs::control::{self, protocol, Report};
use decofs::jsonpath::WirePath;
use decofs::store::{layout::parse_duration, Error, Time};

use super::output::{self, errln, invalid, outln, Context, Failure, Outcome};

/// How a query treats an index that is behind the filesystem.
#[derive(clap::Args, Clone, Copy)]
pub struct FreshArgs {
    /// If the index lags, wait (up to --timeout seconds) until it is current.
    #[arg(long)]
    pub wait: bool,
    /// Answer from the index even if it lags (the answer then says so on stderr).
    #[arg(long, conflicts_with = "wait")]
    pub stale: bool,
    /// Seconds --wait waits before giving up with resource_not_consistent.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

impl FreshArgs {
    fn wait_ms(&self) -> Option<u64> {
        self.wait.then_some(self.timeout * 1000)
    }
}

#[derive(Subcommand)]
pub enum IndexCmd {
    /// Rebuild an index from the tree beside the live one and compare them. Exit 0
    /// when they are equal, 1 when they differ (the differences are listed). Waits
    /// for the index to be current first (run it when writes are quiet).
    Verify {
        path: PathBuf,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Rebuild the index from the tree now and report what was repaired.
    Rebuild { path: PathBuf },
}

/// `find`'s tests (besides the path and freshness).
pub struct FindArgs {
    pub name: Option<OsString>,
    pub kind: Option<String>,
    pub size: Option<String>,
    pub newer: Option<OsString>,
    pub print0: bool,
}

/// Where PATH is: (store, path relative to the filesystem root).
fn locate(path: &Path, what: &str) -> Result<(PathBuf, PathBuf), Failure> {
    let (store, _, rel) = control::locate(path).or_fail(what)?;
    Ok((store, rel))
}

/// Warn when the index answered although it lags (the request allowed it).
fn warn_if_stale(consistent: bool) {
    if !consistent {
        errln!("decofs: warning: the index lags the filesystem; this answer may be out of date [code: resource_not_consistent]");
    }
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// --newer: a file's mtime, @SECS[.FRAC], a UTC date, or an age.
pub fn parse_time(s: &OsString) -> Option<Time> {
    if let Ok(m) = std::fs::metadata(s) {
        return m.modified().ok().map(Time::from_system);
    }
    let t = s.to_str()?.trim();
    if let Some(rest) = t.strip_prefix('@') {
        let (secs, frac) = rest.split_once('.').unwrap_or((rest, ""));
        let nanos = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<9}")[..9].parse().ok()?
        };
        return Some(Time {
            secs: secs.parse().ok()?,
            nanos,
        });
    }
    if t.len() >= 10 && t.as_bytes()[4] == b'-' && t.as_bytes()[7] == b'-' {
        let (date, time) = match t.find(['T', ' ']) {
            Some(i) => (&t[..i], &t[i + 1..]),
            None => (t, "00:00:00"),
        };
        let mut dp = date.split('-').map(|x| x.parse::<i64>());
        let (y, mo, d) = (dp.next()?.ok()?, dp.next()?.ok()?, dp.next()?.ok()?);
        let mut tp = time
            .trim_end_matches('Z')
            .split(':')
            .map(|x| x.parse::<i64>());
        let h = tp.next().and_then(|x| x.ok()).unwrap_or(0);
        let mi = tp.next().and_then(|x| x.ok()).unwrap_or(0);
        let se = tp.next().and_then(|x| x.ok()).unwrap_or(0);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
            return None;
        }
        return Some(Time {
            secs: days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se,
            nanos: 0,
        });
    }
    let age = parse_duration(t)?;
    let now = Time::now();
    Some(Time {
        secs: now.secs - age as i64,
        nanos: now.nanos,
    })
}

/// --size: (op, bytes).
pub fn parse_size(s: &str) -> Option<(&'static str, u64)> {
    let (op, rest) = match s.as_bytes().first()? {
        b'+' => ("+", &s[1..]),
        b'-' => ("-", &s[1..]),
        _ => ("=", s),
    };
    let (num, mult) = match rest.chars().last()? {
        'c' => (&rest[..rest.len() - 1], 1u64),
        'k' | 'K' => (&rest[..rest.len() - 1], 1 << 10),
        'M' => (&rest[..rest.len() - 1], 1 << 20),
        'G' => (&rest[..rest.len() - 1], 1 << 30),
        _ => (rest, 1),
    };
    Some((op, num.parse::<u64>().ok()?.checked_mul(mult)?))
}

/// The user's PATH with a relative path appended (as find prints it).
fn shown(arg: &Path, rel: &WirePath) -> Vec<u8> {
    let mut out = arg.as_os_str().as_bytes().to_vec();
    let r = rel.as_bytes();
    if !r.is_empty() {
        if out.last() != Some(&b'/') {
            out.push(b'/');
        }
        out.extend_from_slice(r);
    }
    out
}

pub fn find(path: &Path, args: FindArgs, fresh: FreshArgs, json: bool) -> Outcome {
    let what = format!("cannot search {}", path.display());
    let (store, rel) = locate(path, &what)?;
    let start_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| path.as_os_str().to_os_string());
    let mut req = protocol::Find {
        path: WirePath(rel),
        start_name: WirePath::new(start_name),
        name: args.name.map(WirePath::new),
        kind: args.kind,
        wait_ms: fresh.wait_ms(),
        stale: fresh.stale,
        ..Default::default()
    };
    if let Some(sz) = args.size {
        let (op, n) = parse_size(&sz).ok_or_else(|| {
            invalid(
                &what,
                format!("'{sz}' is not a size"),
                "use +N, -N or N with an optional k, M or G suffix, e.g. --size +10M",
            )
        })?;
        req.size_op = Some(op.into());
        req.size = Some(n);
    }
    if let Some(t) = args.newer {
        let t = parse_time(&t).ok_or_else(|| {
            invalid(
                &what,
                format!("'{}' is not a time", t.to_string_lossy()),
                "use a file, @UNIXSECS, YYYY-MM-DD[THH:MM[:SS]] (UTC) or an age like 10m",
            )
        })?;
        req.newer_secs = Some(t.secs);
        req.newer_nanos = Some(t.nanos);
    }
    let v = control::run_index(&store, req).or_fail(&what)?;
    warn_if_stale(v.consistent);
    if json {
        output::json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = output::Out::new();
    for p in &v.paths {
        out.bytes(&shown(path, p))
            .bytes(if args.print0 { b"\0" } else { b"\n" });
    }
    Ok(ExitCode::SUCCESS)
}

pub fn du(path: &Path, depth: u32, fresh: FreshArgs, json: bool) -> Outcome {
    let what = format!("cannot sum up {}", path.display());
    let (store, rel) = locate(path, &what)?;
    let req = protocol::Du {
        path: WirePath(rel),
        depth,
        wait_ms: fresh.wait_ms(),
        stale: fresh.stale,
    };
    let v = control::run_index(&store, req).or_fail(&what)?;
    warn_if_stale(v.consistent);
    if json {
        output::json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = output::Out::new();
    for e in &v.entries {
        out.str(&format!("{}\t{}\t{}\t", e.bytes, e.files, e.dirs))
            .bytes(&shown(path, &e.path))
            .bytes(b"\n");
    }
    Ok(ExitCode::SUCCESS)
}

/// One change as `changes` prints it: SEQ, TIME (local), OP, PATH [-> PATH]
/// (tab-separated; `--json` gives the unix time).
fn change_line(c: &protocol::ChangeItem) -> Vec<u8> {
    let mut line = format!("{}\t{}\t{}\t", c.seq, output::local_time(c.at), c.op).into_bytes();
    match &c.path {
        Some(p) => line.extend_from_slice(p.as_bytes()),
        None => line
            .extend_from_slice(format!("(node {})", c.node.as_deref().unwrap_or("?")).as_bytes()),
    }
    if let Some(to) = &c.to {
        line.extend_from_slice(b" -> ");
        line.extend_from_slice(to.as_bytes());
    }
    if c.reconciled {
        line.extend_from_slice(b"\t(found by reconcile)");
    }
    line.push(b'\n');
    line
}

pub fn changes(
    path: &Path,
    since: Option<u64>,
    follow: bool,
    limit: u64,
    wait: bool,
    json: bool,
) -> Outcome {
    let what = format!("cannot read the change log of {}", path.display());
    let (store, _) = locate(path, &what)?;
    let mut since = since;
    loop {
        let req = protocol::Changes {
            since,
            limit,
            wait_ms: wait.then_some(60_000),
        };
        let v = control::run_index(&store, req).or_fail(&what)?;
        let mut out = output::Out::new();
        for c in &v.changes {
            if json {
                out.str(&output::json_line(c)).str("\n");
            } else {
                out.bytes(&change_line(c));
            }
        }
        // Out before the wait: a follower sees each batch at once.
        drop(out);
        if let Some(last) = v.changes.last() {
            since = Some(last.seq);
        } else if since.is_none() {
            since = Some(v.last_seq);
        }
        if !follow {
            // Stopped at the limit with more in the log: say so (and where to go on),
            // instead of looking like the end of the log.
            let next = v.changes.last().map(|c| c.seq);
            if v.changes.len() as u64 >= limit && next.is_some_and(|n| n < v.last_seq) {
                let next = next.unwrap_or_default();
                if json {
                    let mut out = output::Out::new();
                    out.str(&output::json_line(&serde_json::json!({
                        "limit_reached": true,
                        "limit": limit,
                        "next_since": next,
                        "last_seq": v.last_seq,
                    })))
                    .str("\n");
                } else {
                    errln!(
                        "decofs: stopped at the limit of {limit} changes; the log goes on to {}: continue with --since {next} (or raise --limit)",
                        v.last_seq
                    );
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        if (v.changes.len() as u64) < limit {
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
}

pub fn index(cmd: IndexCmd, json: bool) -> Outcome {
    match cmd {
        IndexCmd::Verify { path, timeout } => {
            let what = format!("cannot verify the index of {}", path.display());
            let (store, _) = locate(&path, &what)?;
            let req = protocol::IndexVerify {
                wait_ms: timeout * 1000,
            };
            let v = control::run_index(&store, req).or_fail(&what)?;
            if json {
                output::json(&v);
            } else if v.equal {
                outln!("index verified: it equals a rebuild from the tree");
            } else {
                let mut out = output::Out::new();
                out.str(&format!(
                    "index differs from the tree: {} node(s), {} entr(ies), {} total(s)\n",
                    v.nodes, v.entries, v.totals
                ));
                for e in &v.examples {
                    out.str(&format!("  {} {}\n", e.what, e.path.show()));
                }
            }
            if v.equal {
                Ok(ExitCode::SUCCESS)
            } else {
                Err(Failure::new(Report::of(
                    "index verify found differences",
                    &Error::IndexCorrupt("it differs from a rebuild".into()),
                )))
            }
        }
        IndexCmd::Rebuild { path } => {
            let what = format!("cannot rebuild the index of {}", path.display());
            let (store, _) = locate(&path, &what)?;
            let v = control::run_index(&store, protocol::IndexRebuild {}).or_fail(&what)?;
            if json {
                output::json(&v);
            } else {
                outln!(
                    "index rebuilt: {} node(s) in {} ms; repaired {} node(s), {} entr(ies), {} total(s)",
                    v.nodes, v.duration_ms, v.repaired_nodes, v.repaired_entries, v.repaired_totals
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_find_with_exact_bytes() {
        assert_eq!(parse_size("+10"), Some(("+", 10)));
        assert_eq!(parse_size("-3k"), Some(("-", 3072)));
        assert_eq!(parse_size("2M"), Some(("=", 2 << 20)));
        assert_eq!(parse_size("100c"), Some(("=", 100)));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("+"), None);
    }

    #[test]
    fn times_parse() {
        let t = parse_time(&OsString::from("@1700000000.5")).unwrap();
        assert_eq!((t.secs, t.nanos), (1_700_000_000, 500_000_000));
        let t = parse_time(&OsString::from("2023-11-14T22:13:20")).unwrap();
        assert_eq!(t.secs, 1_700_000_000);
        let t = parse_time(&OsString::from("1970-01-02")).unwrap();
        assert_eq!(t.secs, 86_400);
        let t = parse_time(&OsString::from("10m")).unwrap();
        assert!((Time::now().secs - t.secs - 600).abs() <= 1);
        assert!(parse_time(&OsString::from("yesterday-ish")).is_none());
    }
}
