//! The command line's rough edges (issue 27): `changes` says when it stopped at its
//! limit, the checks take a mountpoint or a store alike and exit alike, times read as
//! local ISO 8601 in text and unix seconds in `--json`, `status` names the epoch once,
//! `trash purge` asks on a terminal, and completions and a man page come from the clap
//! definitions. Bad input (one-line errors with codes) is in `tests/badinput.rs`.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::{decofs, decofs_bin, dj, Mount};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `decofs ARGS` that must succeed: its stdout.
fn ok(args: &[&str]) -> String {
    let out = decofs(args);
    assert!(out.status.success(), "decofs {args:?}: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Does `t` read "YYYY-MM-DD HH:MM:SS +HHMM" (local ISO 8601 with the offset)?
fn is_iso(t: &str) -> bool {
    let b = t.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b[i].is_ascii_digit());
    b.len() == 25
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b' '
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b' '
        && (b[20] == b'+' || b[20] == b'-')
        && digits(21..25)
}

#[test]
fn changes_says_when_it_stops_at_its_limit() {
    let m = Mount::new();
    for i in 0..5 {
        fs::write(m.path(&format!("f{i}")), b"x").unwrap();
    }
    let mnt = s(&m.mnt);
    // Text: three lines on stdout, one line on stderr saying where to go on.
    let out = decofs(&["changes", mnt, "--wait", "--limit", "3"]);
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", show(&out));
    let third = lines[2].split('\t').next().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{}", show(&out));
    assert!(
        stderr.contains("limit") && stderr.contains(&format!("--since {third}")),
        "{}",
        show(&out)
    );
    // JSON: the changes, then one object saying the limit was reached.
    let out = decofs(&["--json", "changes", mnt, "--wait", "--limit", "3"]);
    assert!(out.status.success(), "{}", show(&out));
    let objs: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objs.len(), 4, "{}", show(&out));
    let last = &objs[3];
    assert_eq!(last["limit_reached"], true, "{last}");
    assert_eq!(last["limit"], 3);
    assert_eq!(last["next_since"], objs[2]["seq"], "{last}");
    assert!(last["last_seq"].as_u64().unwrap() > objs[2]["seq"].as_u64().unwrap());
    // Going on from there reaches the end, and the end is not called a limit.
    let next = last["next_since"].to_string();
    let out = decofs(&["changes", mnt, "--since", &next, "--limit", "1000"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(out.stderr.is_empty(), "{}", show(&out));
    assert!(!out.stdout.is_empty(), "{}", show(&out));
    let out = decofs(&["--json", "changes", mnt, "--since", &next]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("limit_reached"),
        "{}",
        show(&out)
    );
}

#[test]
fn checks_take_a_mountpoint_or_a_store() {
    let m = Mount::new();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/f"), b"one").unwrap();
    fs::write(m.path("d/f"), b"two").unwrap();
    let (mnt, store) = (s(&m.mnt), s(&m.store));
    // fsck and scrub of the mountpoint check its store: the same report.
    for cmd in ["fsck", "scrub"] {
        let (cm, vm, em) = dj(&[cmd, mnt]);
        let (cs, vs, es) = dj(&[cmd, store]);
        assert_eq!(cm, cs, "{cmd}: mountpoint {vm} {em} / store {vs} {es}");
        assert!(cm == 0, "{cmd} {mnt}: {em}");
        for k in ["nodes", "files", "blobs", "blobs_checked"] {
            assert_eq!(vm[k], vs[k], "{cmd} {k}: {vm} / {vs}");
        }
    }
    let (c, v, e) = dj(&["fsck", mnt]);
    assert_eq!((c, v["files"].as_u64()), (0, Some(1)), "{v} {e}");
    // du and versions: the mountpoint, a path in it, the store, a path in the store.
    let (c, du_m, e) = dj(&["du", mnt, "--wait"]);
    assert_eq!(c, 0, "{e}");
    let (c, du_s, e) = dj(&["du", store, "--wait"]);
    assert_eq!(c, 0, "{e}");
    assert_eq!(du_m["entries"][0]["bytes"], du_s["entries"][0]["bytes"]);
    assert_eq!(du_m["entries"][0]["files"].as_u64(), Some(1), "{du_m}");
    let (c, vm, e) = dj(&["versions", "ls", s(&m.path("d/f"))]);
    assert_eq!(c, 0, "{e}");
    let (c, vs, e) = dj(&["versions", "ls", s(&m.store.join("d/f"))]);
    assert_eq!(c, 0, "{e}");
    assert_eq!(vm, vs);
    assert_eq!(vm["versions"].as_array().unwrap().len(), 1, "{vm}");
    // lock show too (lock break resolves alike).
    let (c, lm, e) = dj(&["lock", "show", mnt]);
    assert_eq!(c, 0, "{e}");
    let (c, ls, e) = dj(&["lock", "show", store]);
    assert_eq!(c, 0, "{e}");
    assert_eq!(lm, ls);
    assert_eq!(lm["locked"], true, "{lm}");
    // Unmounted, the store path answers the same.
    m.unmount();
    let (c, v, e) = dj(&["fsck", store]);
    assert_eq!((c, v["files"].as_u64()), (0, Some(1)), "{v} {e}");
    let (c, v, e) = dj(&["du", store]);
    assert_eq!(
        (c, &v["entries"][0]["bytes"]),
        (0, &du_s["entries"][0]["bytes"]),
        "{e}"
    );
}

#[test]
fn checks_that_cannot_run_exit_alike() {
    // fsck, scrub and gc: 8 when they cannot run at all (here: no store there).
    let d = tempfile::tempdir_in(common::test_root()).unwrap();
    let missing = d.path().join("missing");
    for cmd in ["fsck", "scrub", "gc"] {
        let out = decofs(&[cmd, s(&missing)]);
        assert_eq!(out.status.code(), Some(8), "{cmd}: {}", show(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("store_not_found"));
    }
    let help = ok(&["--help"]);
    assert!(help.contains("8 the check could not run"), "{help}");
    assert!(ok(&["gc", "--help"]).contains("8 could not run"));
}

#[test]
fn times_are_local_iso_in_text_and_unix_in_json() {
    let m = Mount::new();
    fs::write(m.path("f"), b"one").unwrap();
    fs::write(m.path("f"), b"two").unwrap();
    fs::write(m.path("gone"), b"x").unwrap();
    fs::remove_file(m.path("gone")).unwrap();
    let fp = m.path("f");
    let (mnt, f) = (s(&m.mnt), s(&fp));
    // A zone given as TZ (POSIX form: no tz database needed) is the zone shown.
    let text = |args: &[&str]| {
        let out = Command::new(decofs_bin())
            .args(args)
            .env("TZ", "XST-5:30")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", show(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // trash ls: the second column.
    let t = text(&["trash", "ls", mnt]);
    let row = t.lines().nth(1).unwrap_or_else(|| panic!("{t}"));
    let when = row[38..63].to_string();
    assert!(is_iso(&when) && when.ends_with("+0530"), "{when:?} in {t}");
    let (_, v, _) = dj(&["trash", "ls", mnt]);
    assert!(
        v["entries"][0]["deleted_at"].as_i64().unwrap() > 1_600_000_000,
        "{v}"
    );
    // versions ls: the last column.
    let t = text(&["versions", "ls", f]);
    let row = t.lines().nth(1).unwrap_or_else(|| panic!("{t}"));
    let when = &row[row.len() - 25..];
    assert!(is_iso(when) && when.ends_with("+0530"), "{when:?} in {t}");
    let (_, v, _) = dj(&["versions", "ls", f]);
    assert!(v["versions"][0]["mtime"].is_i64(), "{v}");
    // changes: the second field.
    let t = text(&["changes", mnt, "--wait"]);
    for l in t.lines() {
        let when = l.split('\t').nth(1).unwrap();
        assert!(is_iso(when) && when.ends_with("+0530"), "{l}");
    }
    let j = ok(&["--json", "changes", mnt]);
    for l in j.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["at"].as_i64().unwrap() > 1_600_000_000, "{v}");
    }
    // status: the lock holder's time is local, and the epoch is named once.
    let t = text(&["status", mnt]);
    let lock = t.lines().find(|l| l.starts_with("lock:")).unwrap();
    assert_eq!(lock.matches("epoch").count(), 1, "{lock}");
    assert!(lock.contains("+0530") && !lock.contains("unix"), "{lock}");
    let t = text(&["lock", "show", s(&m.store)]);
    assert_eq!(t.matches("epoch").count(), 1, "{t}");
    // --json's help says what it changes.
    let help = ok(&["--help"]);
    let json_help = help
        .lines()
        .find(|l| l.trim_start().starts_with("--json"))
        .unwrap_or_else(|| panic!("{help}"));
    assert!(json_help.contains("unix seconds"), "{help}");
}

#[test]
fn trash_purge_asks_on_a_terminal() {
    // `script` gives the command a terminal; the answer comes from our stdin.
    let m = Mount::new();
    fs::write(m.path("a"), b"x").unwrap();
    fs::remove_file(m.path("a")).unwrap();
    let mnt = s(&m.mnt);
    let count = || {
        let (c, v, e) = dj(&["trash", "ls", mnt]);
        assert_eq!(c, 0, "{e}");
        v["entries"].as_array().unwrap().len()
    };
    let on_tty = |answer: &str| {
        let cmd = format!("{} trash purge {mnt}", s(&decofs_bin()));
        common::sh(&format!(
            "printf '{answer}\\n' | script -qec '{cmd}' /dev/null; echo \"exit $?\""
        ))
    };
    let said = on_tty("n");
    assert!(said.contains("[y/N]"), "no question asked: {said}");
    assert!(
        said.contains("not_confirmed") && said.contains("exit 1"),
        "{said}"
    );
    assert_eq!(count(), 1, "no means nothing purged");
    let said = on_tty("y");
    assert!(said.contains("exit 0"), "{said}");
    assert_eq!(count(), 0, "yes purges");
}

#[test]
fn completions_and_man_page_come_from_the_command_line() {
    let bash = ok(&["completions", "bash"]);
    assert!(bash.contains("_decofs") && bash.contains("purge"), "{bash}");
    assert!(ok(&["completions", "zsh"]).starts_with("#compdef decofs"));
    let fish = ok(&["completions", "fish"]);
    assert!(fish.contains("complete -c decofs"), "{fish}");
    let man = ok(&["manpage"]);
    assert!(man.contains(".TH decofs 1"), "{man}");
    for sub in ["mount", "trash", "fsck", "changes", "completions"] {
        assert!(man.contains(sub), "the man page names {sub}");
    }
    let out = decofs(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
}

/// The rows of a text `trash ls` (its header checked and left out), each as
/// (kind, files, size, origin).
fn trash_rows(args: &[&str]) -> Vec<(String, u64, String, String)> {
    let t = ok(args);
    assert!(!t.contains("(gone)"), "{t}");
    let mut lines = t.lines();
    let head = lines.next().unwrap_or_else(|| panic!("no header: {t}"));
    assert!(head.starts_with("ID") && head.ends_with("ORIGIN"), "{t}");
    lines
        .map(|l| {
            // ID, date, time, zone, kind, files, size (number and unit), origin.
            let w: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(w.len(), 9, "{l}");
            let files = w[5].parse().unwrap_or_else(|_| panic!("{l}"));
            (
                w[4].into(),
                files,
                format!("{} {}", w[6], w[7]),
                w[8].into(),
            )
        })
        .collect()
}

fn origins(rows: &[(String, u64, String, String)]) -> Vec<&str> {
    rows.iter().map(|r| r.3.as_str()).collect()
}

#[test]
fn trash_ls_shows_one_line_per_deletion() {
    let m = Mount::new();
    fs::create_dir_all(m.path("tree/sub")).unwrap();
    fs::write(m.path("tree/a"), b"aaaa").unwrap();
    fs::write(m.path("tree/b"), b"bb").unwrap();
    fs::write(m.path("tree/sub/c"), vec![7u8; 3000]).unwrap();
    fs::write(m.path("one"), b"1").unwrap();
    fs::write(m.path("two"), vec![9u8; 2 << 20]).unwrap();
    fs::remove_dir_all(m.path("tree")).unwrap();
    fs::remove_file(m.path("one")).unwrap();
    fs::remove_file(m.path("two")).unwrap();
    let mnt = s(&m.mnt);

    // What the user deleted, newest last: the tree is one line with its 5 nodes.
    let rows = trash_rows(&["trash", "ls", mnt]);
    assert_eq!(origins(&rows), ["tree", "one", "two"], "{rows:?}");
    assert_eq!((rows[0].0.as_str(), rows[0].1), ("dir", 5), "{rows:?}");
    assert_eq!((rows[1].0.as_str(), rows[1].1), ("file", 1), "{rows:?}");
    assert_eq!(rows[2].2, "2.0 MiB", "{rows:?}");

    // --all: every entry, each with its whole original path.
    let all = trash_rows(&["trash", "ls", mnt, "--all"]);
    let mut got = origins(&all);
    got.sort();
    assert_eq!(
        got,
        [
            "one",
            "tree",
            "tree/a",
            "tree/b",
            "tree/sub",
            "tree/sub/c",
            "two"
        ]
    );
    let sub = all.iter().find(|r| r.3 == "tree/sub").unwrap();
    assert_eq!(sub.1, 2, "tree/sub holds itself and c: {all:?}");

    // A PATH expands what was deleted at or under it, relative or under the mount.
    let under = trash_rows(&["trash", "ls", mnt, "tree/sub"]);
    let mut got = origins(&under);
    got.sort();
    assert_eq!(got, ["tree/sub", "tree/sub/c"]);
    let abs = m.path("tree");
    assert_eq!(trash_rows(&["trash", "ls", mnt, s(&abs)]).len(), 5);
    assert!(trash_rows(&["trash", "ls", mnt, "tre"]).is_empty());

    // Filters, on what is listed.
    let big = trash_rows(&["trash", "ls", mnt, "--min-size", "1M"]);
    assert_eq!(origins(&big), ["two"]);
    assert_eq!(
        trash_rows(&["trash", "ls", mnt, "--newer-than", "1h"]).len(),
        3
    );
    assert!(trash_rows(&["trash", "ls", mnt, "--older-than", "1h"]).is_empty());
    let all_big = trash_rows(&["trash", "ls", mnt, "--all", "--min-size", "2k"]);
    let mut got = origins(&all_big);
    got.sort();
    assert_eq!(got, ["tree", "tree/sub", "tree/sub/c", "two"]);

    // --json: every entry (also those deleted with a listed one), same PATH and filters.
    let n = |args: &[&str]| {
        let (c, v, e) = dj(args);
        assert_eq!(c, 0, "{e}");
        v["entries"].as_array().unwrap().len()
    };
    assert_eq!(n(&["trash", "ls", mnt]), 7);
    assert_eq!(n(&["trash", "ls", mnt, "--older-than", "1h"]), 0);
    assert_eq!(n(&["trash", "ls", mnt, "--min-size", "1M"]), 1);
    assert_eq!(n(&["trash", "ls", mnt, "tree/sub"]), 2);
    let (_, v, _) = dj(&["trash", "ls", mnt, "tree"]);
    let top = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["origin"] == "tree");
    let top = top.unwrap_or_else(|| panic!("{v}"));
    assert!(top["within"].is_null() && top["nodes"] == 5, "{v}");

    // A filter that is not one is refused with a code.
    let out = decofs(&["trash", "ls", mnt, "--min-size", "lots"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_argument"));
}

/// A restore and a purge through the daemon (which wait as long as it lives) print
/// their result and nothing else when stderr is not a terminal: no progress noise.
#[test]
fn restore_and_purge_through_the_daemon_are_quiet_off_a_terminal() {
    let m = Mount::new();
    fs::create_dir_all(m.path("tree/sub")).unwrap();
    for i in 0..50 {
        fs::write(m.path(&format!("tree/sub/f{i}")), b"x").unwrap();
    }
    fs::remove_dir_all(m.path("tree")).unwrap();
    let mnt = s(&m.mnt);
    let out = decofs(&["trash", "restore", mnt, "tree"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "restored to tree\n");
    assert!(out.stderr.is_empty(), "{}", show(&out));
    assert_eq!(fs::read_dir(m.path("tree/sub")).unwrap().count(), 50);
    fs::remove_dir_all(m.path("tree")).unwrap();
    let out = decofs(&["trash", "purge", mnt, "--all"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(out.stderr.is_empty(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("purged 52 node(s)"));
}

/// fsck reports progress every 10,000 nodes: on a terminal a counter is drawn (and
/// cleared), with --json nothing, and off a terminal stderr stays empty (it printed a
/// `decofs: nodes: 10000 done` line before).
#[test]
fn checks_show_progress_only_on_a_terminal() {
    let m = Mount::new();
    fs::create_dir(m.path("d")).unwrap();
    // Past the inline limit (1 KiB), each file's content is a blob of its own: a
    // scrub then verifies 10,050 blobs, a phase whose total it knows.
    for i in 0..10_050u32 {
        let mut body = vec![b'x'; 1100];
        body[..4].copy_from_slice(&i.to_le_bytes());
        fs::write(m.path(&format!("d/{i}")), body).unwrap();
    }
    let mnt = s(&m.mnt);
    for args in [&["fsck", mnt][..], &["scrub", mnt], &["gc", mnt]] {
        let out = decofs(args);
        assert!(out.status.success(), "{args:?}: {}", show(&out));
        assert!(out.stderr.is_empty(), "{args:?}: {}", show(&out));
    }
    let on_tty = |args: &str| {
        let cmd = format!("{} {args}", s(&decofs_bin()));
        common::sh(&format!(
            "TERM=xterm script -qec '{cmd}' /dev/null </dev/null; echo \"exit $?\""
        ))
    };
    let said = on_tty(&format!("fsck {mnt}"));
    assert!(said.contains("exit 0") && said.contains("clean"), "{said}");
    assert!(said.contains("fsck: "), "no progress drawn: {said:?}");
    let said = on_tty(&format!("scrub {mnt}"));
    assert!(said.contains("exit 0"), "{said}");
    assert!(
        said.contains("/10,050") && said.contains("left"),
        "no bar with the total and the time left: {said:?}"
    );
    let said = on_tty(&format!("gc {mnt}"));
    assert!(said.contains("collecting unreferenced blobs"), "{said:?}");
    let said = on_tty(&format!("--json fsck {mnt}"));
    assert!(said.contains("exit 0"), "{said}");
    assert!(!said.contains("fsck: "), "progress with --json: {said:?}");
}
