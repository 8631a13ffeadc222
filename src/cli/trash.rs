//! `decofs trash`: list, restore and purge deleted files, through the daemon or on the
//! unmounted store.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use decofs::control::{self, protocol};
use decofs::jsonpath::WirePath;
use decofs::store::layout::parse_duration;

use decofs::control::Report;

use super::index::parse_size;
use super::output::{self, invalid, outln, Context, Failure, Outcome};
use super::progress::Spinner;

/// `trash purge` without a selector empties the whole trash, for good: ask on a
/// terminal; without one (a script, a pipe), refuse unless --all says so.
fn confirm_purge_all(target: &Path, what: &str) -> Result<(), Failure> {
    let report = |code: &str, reason: &str| {
        Failure::new(Report {
            what: what.into(),
            code: code.into(),
            reason: reason.into(),
            suggestion: "pass --all to purge the whole trash, or select entries with \
                         --older-than DURATION or --id ID"
                .into(),
        })
    };
    if !output::interactive() {
        return Err(report(
            "confirmation_required",
            "no entries selected, and there is no terminal to confirm purging the whole trash",
        ));
    }
    let (store, _, _) = control::locate(target).or_fail(what)?;
    let v = control::run(&store, protocol::TrashLs {}, false).or_fail(what)?;
    let tops = v.entries.iter().filter(|e| e.within.is_none());
    let (deleted, nodes, bytes) =
        tops.fold((0, 0, 0), |(d, n, b), e| (d + 1, n + e.nodes, b + e.bytes));
    let question = format!(
        "purge everything in the trash of {} ({deleted} deletions, {nodes} files, {})? This cannot be undone. [y/N] ",
        target.display(),
        human_bytes(bytes)
    );
    if output::ask(&question) {
        Ok(())
    } else {
        Err(report(
            "not_confirmed",
            "the purge was not confirmed; nothing was purged",
        ))
    }
}

#[derive(Subcommand)]
pub enum TrashCmd {
    /// List what was deleted, newest last: one line per deletion (a deleted tree is one
    /// line with its files and bytes). --all or a PATH lists the entries deleted with
    /// them too, each with its whole original path. With --json: every entry (also
    /// those deleted with a listed one), after the same PATH and filters.
    Ls {
        target: PathBuf,
        /// List every entry at or under this original path (relative to the filesystem
        /// root, or absolute under the mountpoint), the trees deleted there expanded.
        path: Option<PathBuf>,
        /// List every entry, also those deleted with a directory.
        #[arg(long)]
        all: bool,
        /// Only entries deleted longer ago than this (30s, 10m, 2h, 1d, 1w).
        #[arg(long, value_name = "DURATION")]
        older_than: Option<String>,
        /// Only entries deleted within this duration.
        #[arg(long, value_name = "DURATION")]
        newer_than: Option<String>,
        /// Only entries holding at least this many bytes, with what was deleted with
        /// them (a number with k, M or G: 10M).
        #[arg(long, value_name = "SIZE")]
        min_size: Option<String>,
    },
    /// Restore by id (or a unique prefix of it) or by original path (relative to the
    /// filesystem root, or absolute under the mountpoint). Directories restore whole.
    Restore {
        target: PathBuf,
        selector: PathBuf,
        /// Restore to this path instead of the origin.
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Purge (free for good) trash entries: those older than a duration (30s, 10m, 2h,
    /// 1d), one id, or everything with --all. Without a selector it asks on a terminal
    /// and is refused otherwise (confirmation_required).
    Purge {
        target: PathBuf,
        #[arg(long, value_name = "DURATION")]
        older_than: Option<String>,
        #[arg(long)]
        id: Option<String>,
        /// Purge everything in the trash, without asking.
        #[arg(long, conflicts_with_all = ["older_than", "id"])]
        all: bool,
    },
}

/// A path inside the filesystem as the store's namespace sees it (mount prefix removed).
pub fn fs_path(p: &Path, mount: &Option<PathBuf>) -> PathBuf {
    let rel = match mount {
        Some(m) if p.is_absolute() => p.strip_prefix(m).unwrap_or(p),
        _ => p,
    };
    rel.strip_prefix("/").unwrap_or(rel).to_path_buf()
}

/// Which entries `trash ls` lists.
struct Filter {
    /// Entries at or under this original path (relative to the root), expanded.
    under: Option<PathBuf>,
    /// Every entry, not only what the user deleted.
    all: bool,
    /// Deleted at least this many seconds ago.
    older_than: Option<u64>,
    /// Deleted less than this many seconds ago.
    newer_than: Option<u64>,
    /// Holding at least this many bytes (with everything deleted with it).
    min_size: Option<u64>,
    /// Unix seconds.
    now: i64,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The entries `trash ls` lists, as indices into `entries` (kept in their order, oldest
/// first): those the text shows, and those `--json` gives. Without a PATH or --all the
/// text shows the top entries (what the user deleted) and `--json` adds everything
/// deleted with them, so unfiltered it is the whole trash; with either, both are the
/// entries the PATH and --all select. The filters apply to the selected entries.
fn select(entries: &[protocol::TrashItem], f: &Filter) -> (Vec<usize>, Vec<usize>) {
    let passes = |e: &protocol::TrashItem| {
        let age = f.now.saturating_sub(e.deleted_at).max(0) as u64;
        f.older_than.is_none_or(|d| age >= d)
            && f.newer_than.is_none_or(|d| age < d)
            && f.min_size.is_none_or(|m| e.bytes >= m)
    };
    let selected = |e: &protocol::TrashItem| match &f.under {
        Some(p) => e.origin.as_ref().is_some_and(|o| o.0.starts_with(p)),
        None => f.all || e.within.is_none(),
    };
    let listed: Vec<usize> = (0..entries.len())
        .filter(|&i| selected(&entries[i]) && passes(&entries[i]))
        .collect();
    if f.under.is_some() || f.all {
        return (listed.clone(), listed);
    }
    // Each entry's top (the entry deleted by the user it went with).
    let by_id: HashMap<&str, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.as_str(), i))
        .collect();
    let top = |mut i: usize| {
        for _ in 0..entries.len() {
            match entries[i].within.as_deref().and_then(|w| by_id.get(w)) {
                Some(&p) => i = p,
                None => break,
            }
        }
        i
    };
    let wanted: std::collections::HashSet<usize> = listed.iter().copied().collect();
    let in_json = (0..entries.len())
        .filter(|&i| wanted.contains(&top(i)))
        .collect();
    (listed, in_json)
}

/// An entry's original path as shown: the whole path, or for one whose directory is
/// gone for good `?/` and its path from what is left (`?/dir/name`).
fn origin_shown(
    entries: &[protocol::TrashItem],
    by_id: &HashMap<&str, usize>,
    mut i: usize,
) -> String {
    let mut names = Vec::new();
    for _ in 0..=entries.len() {
        let e = &entries[i];
        if let Some(p) = &e.origin {
            names.push(p.show());
            break;
        }
        names.push(e.origin_name.show());
        match e.within.as_deref().and_then(|w| by_id.get(w)) {
            Some(&p) => i = p,
            None => {
                names.push("?".into());
                break;
            }
        }
    }
    names.reverse();
    names.join("/")
}

/// Bytes for people: 512 B, 1.5 KiB, 10.0 MiB.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

pub fn run(cmd: TrashCmd, json: bool) -> Outcome {
    match cmd {
        TrashCmd::Ls {
            target,
            path,
            all,
            older_than,
            newer_than,
            min_size,
        } => {
            let what = "cannot list the trash";
            let duration = |d: Option<String>| -> Result<Option<u64>, Failure> {
                d.map(|d| {
                    parse_duration(&d).ok_or_else(|| {
                        invalid(
                            what,
                            format!("'{d}' is not a duration"),
                            "use seconds or a number with s, m, h, d or w, e.g. 2h",
                        )
                    })
                })
                .transpose()
            };
            let min_size = match min_size {
                None => None,
                Some(m) => match parse_size(&m) {
                    Some(("=", n)) => Some(n),
                    _ => {
                        return Err(invalid(
                            what,
                            format!("'{m}' is not a size"),
                            "use bytes or a number with k, M or G, e.g. 10M",
                        ))
                    }
                },
            };
            let (store, mount, _) = control::locate(&target).or_fail(what)?;
            let filter = Filter {
                under: path.map(|p| fs_path(&p, &mount)),
                all,
                older_than: duration(older_than)?,
                newer_than: duration(newer_than)?,
                min_size,
                now: unix_now(),
            };
            let v = control::run(&store, protocol::TrashLs {}, false).or_fail(what)?;
            let (listed, in_json) = select(&v.entries, &filter);
            if json {
                let entries = in_json.iter().map(|&i| v.entries[i].clone()).collect();
                output::json(&protocol::TrashList { entries });
                return Ok(ExitCode::SUCCESS);
            }
            let mut o = output::Out::new();
            o.str(&format!(
                "{:<36}  {:<25}  {:<8}  {:>7}  {:>10}  ORIGIN\n",
                "ID", "DELETED", "KIND", "FILES", "SIZE"
            ));
            let by_id: HashMap<&str, usize> = v
                .entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.id.as_str(), i))
                .collect();
            for i in listed {
                let e = &v.entries[i];
                // Times are local for people; `--json` keeps unix seconds.
                o.str(&format!(
                    "{:<36}  {:<25}  {:<8}  {:>7}  {:>10}  {}\n",
                    e.id,
                    output::local_time(e.deleted_at),
                    e.kind,
                    e.nodes,
                    human_bytes(e.bytes),
                    origin_shown(&v.entries, &by_id, i)
                ));
            }
        }
        TrashCmd::Restore {
            target,
            selector,
            to,
        } => {
            let what = "cannot restore from the trash";
            let mount = control::locate(&target).ok().and_then(|l| l.1);
            let req = protocol::TrashRestore {
                sel: WirePath(fs_path(&selector, &mount)),
                to: to.map(|t| WirePath(fs_path(&t, &mount))),
            };
            let (store, _, _) = control::locate(&target).or_fail(what)?;
            let spinner = Spinner::new(&format!("restoring {}", selector.display()), json);
            let v = control::run(&store, req, true).or_fail(what)?;
            drop(spinner);
            if json {
                output::json(&v);
            } else {
                outln!("restored to {}", v.restored_to.show());
            }
        }
        TrashCmd::Purge {
            target,
            older_than,
            id,
            all,
        } => {
            let what = "cannot purge the trash";
            if older_than.is_none() && id.is_none() && !all {
                confirm_purge_all(&target, what)?;
            }
            let older_than = match older_than {
                Some(d) => Some(parse_duration(&d).ok_or_else(|| {
                    invalid(
                        what,
                        format!("'{d}' is not a duration"),
                        "use seconds or a number with s, m, h, d or w, e.g. 2h",
                    )
                })?),
                None => None,
            };
            let req = protocol::TrashPurge { older_than, id };
            let (store, _, _) = control::locate(&target).or_fail(what)?;
            let spinner = Spinner::new("purging", json);
            let v = control::run(&store, req, true).or_fail(what)?;
            drop(spinner);
            if json {
                output::json(&v);
            } else {
                outln!(
                    "purged {} node(s) and {} revision(s), freed {} bytes ({} still open, kept)",
                    v.nodes,
                    v.revisions,
                    v.bytes_freed,
                    v.skipped_open
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::TrashItem;

    /// An entry `id` deleted at `at` from `origin` (None: its directory is gone), out
    /// of the trashed directory `within`, holding `bytes` with `nodes` nodes.
    fn item(id: &str, at: i64, origin: Option<&str>, within: Option<&str>) -> TrashItem {
        let name = origin.unwrap_or(id).rsplit('/').next().unwrap();
        TrashItem {
            id: id.into(),
            deleted_at: at,
            origin: origin.map(WirePath::new),
            origin_name: WirePath::new(name),
            kind: "file".into(),
            size: 1,
            stored: 1,
            within: within.map(String::from),
            nodes: 1,
            bytes: 1,
        }
    }

    fn filter() -> Filter {
        Filter {
            under: None,
            all: false,
            older_than: None,
            newer_than: None,
            min_size: None,
            now: 1000,
        }
    }

    /// A tree `d` (d/x, d/e/y) and a file `f` deleted later.
    fn trash() -> Vec<TrashItem> {
        let mut d = item("d", 100, Some("d"), None);
        (d.nodes, d.bytes, d.kind) = (4, 3 << 20, "dir".into());
        let mut e = item("e", 100, Some("d/e"), Some("d"));
        (e.nodes, e.bytes, e.kind) = (2, 1, "dir".into());
        vec![
            d,
            item("x", 100, Some("d/x"), Some("d")),
            e,
            item("y", 100, Some("d/e/y"), Some("e")),
            item("f", 900, Some("f"), None),
        ]
    }

    fn ids(entries: &[TrashItem], is: &[usize]) -> Vec<String> {
        is.iter().map(|&i| entries[i].id.clone()).collect()
    }

    #[test]
    fn a_deleted_tree_is_one_line_and_json_keeps_all() {
        let t = trash();
        let (text, json) = select(&t, &filter());
        assert_eq!(ids(&t, &text), ["d", "f"]);
        assert_eq!(json.len(), t.len());
        let all = Filter {
            all: true,
            ..filter()
        };
        let (text, json) = select(&t, &all);
        assert_eq!((text.len(), json.len()), (t.len(), t.len()));
    }

    #[test]
    fn a_path_expands_what_is_under_it() {
        let t = trash();
        let under = |p: &str| Filter {
            under: Some(PathBuf::from(p)),
            ..filter()
        };
        let (text, json) = select(&t, &under("d/e"));
        assert_eq!(ids(&t, &text), ["e", "y"]);
        assert_eq!(text, json);
        // Components, not string prefixes: "d/e" is not under "d/ee".
        assert!(select(&t, &under("d/ee")).0.is_empty());
    }

    #[test]
    fn filters_apply_to_what_is_listed() {
        let t = trash();
        let f = |g: fn(&mut Filter)| {
            let mut f = filter();
            g(&mut f);
            let (text, json) = select(&t, &f);
            (ids(&t, &text), json.len())
        };
        // d was deleted 900 s ago, f 100 s ago.
        assert_eq!(f(|f| f.older_than = Some(500)), (vec!["d".into()], 4));
        assert_eq!(f(|f| f.newer_than = Some(500)), (vec!["f".into()], 1));
        assert_eq!(f(|f| f.min_size = Some(1 << 20)), (vec!["d".into()], 4));
        let all_big = |f: &mut Filter| {
            f.all = true;
            f.min_size = Some(2);
        };
        assert_eq!(f(all_big), (vec!["d".into()], 1));
    }

    #[test]
    fn a_gone_directory_shows_as_a_question_mark() {
        let mut t = trash();
        for e in &mut t[..4] {
            e.origin = None;
        }
        let by_id: HashMap<&str, usize> = t
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id.as_str(), i))
            .collect();
        assert_eq!(origin_shown(&t, &by_id, 0), "?/d");
        assert_eq!(origin_shown(&t, &by_id, 3), "?/d/e/y");
        assert_eq!(origin_shown(&t, &by_id, 4), "f");
    }

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(10 << 20), "10.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
