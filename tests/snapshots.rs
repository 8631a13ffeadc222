//! Snapshots on a real mount: random operations on decofs and on a reference directory,
//! a snapshot taken now and then together with a copy of the reference; at the end each
//! snapshot, mounted read-only, equals its copy (types, modes, sizes, contents, link
//! counts, hard-link groups), also after the trash was purged and a snapshot between
//! others was removed. And `snapshot diff` names exactly what changed.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;

const DIRS: [&str; 4] = ["a", "b", "c", "d"];
const FILES: [&str; 6] = ["f1", "f2", "f3", "g.txt", "h", "k"];

fn random_path(rng: &mut fastrand::Rng, dir: bool) -> String {
    let depth = rng.usize(0..3);
    let mut parts: Vec<&str> = (0..depth).map(|_| DIRS[rng.usize(0..4)]).collect();
    parts.push(if dir {
        DIRS[rng.usize(0..4)]
    } else {
        FILES[rng.usize(0..6)]
    });
    parts.join("/")
}

/// Per path: type, mode, size, content hash, nlink (files), target (symlinks); and the
/// hard-link groups.
fn listing(root: &Path) -> (BTreeMap<String, String>, Vec<Vec<String>>) {
    fn walk(
        root: &Path,
        rel: &str,
        out: &mut BTreeMap<String, String>,
        inos: &mut HashMap<u64, Vec<String>>,
    ) {
        let dir = root.join(rel);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let r = if rel.is_empty() {
                n.to_string_lossy().into_owned()
            } else {
                format!("{rel}/{}", n.to_string_lossy())
            };
            let p = root.join(&r);
            let md = fs::symlink_metadata(&p).unwrap();
            let perm = md.mode() & 0o7777;
            if md.is_dir() {
                out.insert(r.clone(), format!("dir {perm:o}"));
                walk(root, &r, out, inos);
            } else if md.file_type().is_symlink() {
                out.insert(
                    r.clone(),
                    format!("symlink {}", fs::read_link(&p).unwrap().display()),
                );
            } else {
                let data = fs::read(&p).unwrap();
                let h = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
                });
                out.insert(
                    r.clone(),
                    format!(
                        "file {perm:o} size={} nlink={} {h:016x}",
                        md.len(),
                        md.nlink()
                    ),
                );
                inos.entry(md.ino()).or_default().push(r);
            }
        }
    }
    let mut out = BTreeMap::new();
    let mut inos = HashMap::new();
    walk(root, "", &mut out, &mut inos);
    let mut groups: Vec<Vec<String>> = inos.into_values().filter(|v| v.len() > 1).collect();
    for g in &mut groups {
        g.sort();
    }
    groups.sort();
    (out, groups)
}

/// One random operation on both trees; the results must agree.
fn step(rng: &mut fastrand::Rng, dec: &Path, re: &Path) -> String {
    let p = random_path(rng, false);
    let d = random_path(rng, true);
    let qdir = rng.bool();
    let q = random_path(rng, qdir);
    let op = rng.u8(0..10);
    let desc = format!("op {op} {p} {d} {q}");
    let both = |f: &dyn Fn(&Path) -> std::io::Result<()>| {
        let a = f(dec).map_err(|e| e.raw_os_error());
        let b = f(re).map_err(|e| e.raw_os_error());
        assert_eq!(a, b, "{desc}: decofs and the reference disagree");
    };
    match op {
        0 => both(&|r| fs::create_dir(r.join(&d))),
        1 | 2 => {
            let data: Vec<u8> = (0..rng.usize(0..20_000)).map(|i| (i as u8) ^ op).collect();
            both(&|r| fs::write(r.join(&p), &data))
        }
        3 => {
            let extra = vec![7u8; rng.usize(1..5000)];
            both(&|r| {
                use std::io::Write;
                fs::OpenOptions::new()
                    .append(true)
                    .open(r.join(&p))?
                    .write_all(&extra)
            })
        }
        4 => {
            let t = random_path(rng, rng_dir(&q));
            both(&|r| fs::rename(r.join(&q), r.join(&t)))
        }
        5 => both(&|r| fs::remove_file(r.join(&p))),
        6 => both(&|r| fs::remove_dir(r.join(&d))),
        7 => {
            let mode = [0o600, 0o644, 0o755, 0o700][rng.usize(0..4)];
            both(&|r| fs::set_permissions(r.join(&q), fs::Permissions::from_mode(mode)))
        }
        8 => {
            let t = random_path(rng, false);
            both(&|r| fs::hard_link(r.join(&p), r.join(&t)))
        }
        _ => {
            let t = random_path(rng, false);
            both(&|r| std::os::unix::fs::symlink(&q, r.join(&t)))
        }
    }
    desc
}

fn rng_dir(q: &str) -> bool {
    DIRS.contains(&q.rsplit('/').next().unwrap())
}

/// The snapshots' names, oldest first, as `snapshot ls --json` lists them.
fn snapshot_names(target: &Path) -> Vec<String> {
    let (code, v, err) = dj(&["snapshot", "ls", target.to_str().unwrap()]);
    assert_eq!(code, 0, "snapshot ls: {err}");
    v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

fn snapshot_create(target: &Path, name: &str) {
    let (code, v, err) = dj(&["snapshot", "create", target.to_str().unwrap(), name]);
    assert_eq!(code, 0, "snapshot create {name}: {err}");
    assert_eq!(v["name"], name);
}

/// Mount snapshot `name` read-only at a new mountpoint under `dir`; unmounted on drop.
struct SnapMount(PathBuf);

impl SnapMount {
    fn new(store: &Path, dir: &Path, name: &str) -> SnapMount {
        let mnt = dir.join(format!("snap-{name}"));
        fs::create_dir_all(&mnt).unwrap();
        let out = decofs(&[
            "mount",
            store.to_str().unwrap(),
            mnt.to_str().unwrap(),
            "-o",
            &format!("snapshot={name}"),
        ]);
        assert!(
            out.status.success(),
            "mount snapshot {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SnapMount(mnt)
    }
}

impl Drop for SnapMount {
    fn drop(&mut self) {
        unmount_path(&self.0);
    }
}

fn check_snapshot(m: &Mount, name: &str, copy: &Path, when: &str) {
    let sm = SnapMount::new(&m.store, m.dir.path(), name);
    let got = listing(&sm.0);
    let want = listing(copy);
    assert_eq!(
        got.0, want.0,
        "snapshot {name} ({when}) differs from its copy"
    );
    assert_eq!(
        got.1, want.1,
        "snapshot {name} ({when}): hard-link groups differ"
    );
    // Read-only, whatever the caller tries.
    assert_eq!(
        fs::write(sm.0.join("new-file"), b"x")
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EROFS)
    );
}

#[test]
fn snapshots_equal_their_copies_after_random_operations() {
    let seed = std::env::var("DECOFS_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0x5a4b_0001);
    eprintln!("seed {seed:#x}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let m = Mount::new();
    let re = m.dir.path().join("reference");
    fs::create_dir(&re).unwrap();
    let copies = m.dir.path().join("copies");
    fs::create_dir(&copies).unwrap();
    let mut names = Vec::new();
    for i in 0..600 {
        step(&mut rng, &m.mnt, &re);
        if i % 100 == 99 {
            let name = format!("s{}", names.len());
            snapshot_create(&m.mnt, &name);
            let copy = copies.join(&name);
            sh(&format!("cp -a {} {}", re.display(), copy.display()));
            names.push(name);
        }
    }
    assert_eq!(listing(&m.mnt), listing(&re), "the live tree");
    for n in &names {
        check_snapshot(&m, n, &copies.join(n), "after the operations");
    }
    // Purging the trash frees what only the trash held, never what a snapshot needs.
    let out = decofs(&["trash", "purge", m.mnt.to_str().unwrap(), "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(snapshot_names(&m.mnt), names);
    // Remove one in the middle: the older ones keep what it held for them.
    let (code, _, err) = dj(&["snapshot", "rm", m.mnt.to_str().unwrap(), "s3"]);
    assert_eq!(code, 0, "{err}");
    for n in names.iter().filter(|n| *n != "s3") {
        check_snapshot(&m, n, &copies.join(n), "after purge and rm s3");
    }
    // A remount (the generation and the list come from disk) changes nothing.
    m.remount();
    check_snapshot(&m, "s2", &copies.join("s2"), "after a remount");
    // fsck finds every blob a snapshot names, and (a read-write fsck) every blob
    // reference count equal to a scan: nothing to repair.
    m.unmount();
    let (code, v, err) = dj(&["fsck", m.store.to_str().unwrap(), "--repair"]);
    assert_eq!(code, 0, "fsck: {v} {err}");
    m.mount();
}

#[test]
fn diff_names_what_changed() {
    let m = Mount::new();
    let p = |r: &str| m.path(r);
    fs::write(p("a"), b"one").unwrap();
    fs::write(p("b"), b"two").unwrap();
    fs::create_dir(p("dir")).unwrap();
    fs::write(p("dir/c"), b"three").unwrap();
    fs::create_dir(p("old")).unwrap();
    fs::write(p("old/x"), b"x").unwrap();
    snapshot_create(&m.mnt, "s1");
    fs::write(p("a"), b"ONE!").unwrap();
    fs::remove_file(p("b")).unwrap();
    fs::rename(p("dir/c"), p("dir/d")).unwrap();
    fs::write(p("e"), b"new").unwrap();
    fs::create_dir_all(p("f/g")).unwrap();
    fs::remove_file(p("old/x")).unwrap();
    fs::remove_dir(p("old")).unwrap();
    let want = vec![
        ("modified", "a", None),
        ("deleted", "b", None),
        ("renamed", "dir/d", Some("dir/c")),
        ("created", "e", None),
        ("created", "f", None),
        ("created", "f/g", None),
        ("deleted", "old", None),
        ("deleted", "old/x", None),
    ];
    let got = |v: &serde_json::Value| -> Vec<(String, String, Option<String>)> {
        v["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["change"].as_str().unwrap().to_string(),
                    c["path"].as_str().unwrap().to_string(),
                    c["from"].as_str().map(str::to_string),
                )
            })
            .collect()
    };
    let want: Vec<(String, String, Option<String>)> = want
        .into_iter()
        .map(|(a, b, c)| (a.into(), b.into(), c.map(str::to_string)))
        .collect();
    let (code, v, err) = dj(&["snapshot", "diff", m.mnt.to_str().unwrap(), "s1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(got(&v), want, "s1 against the live tree");
    // Between two snapshots: the same, and nothing after the second.
    snapshot_create(&m.mnt, "s2");
    fs::write(p("late"), b"after s2").unwrap();
    let (code, v, err) = dj(&["snapshot", "diff", m.mnt.to_str().unwrap(), "s1", "s2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(got(&v), want, "s1 against s2");
    let text = decofs(&["snapshot", "diff", m.mnt.to_str().unwrap(), "s2"]);
    assert_eq!(String::from_utf8_lossy(&text.stdout), "+ late\n");
    // Bad input: one line, a code, nothing changed.
    let (code, _, err) = dj(&["snapshot", "diff", m.mnt.to_str().unwrap(), "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("snapshot_not_found"), "{err}");
    let (code, _, err) = dj(&["snapshot", "create", m.mnt.to_str().unwrap(), "s1"]);
    assert_eq!(code, 1);
    assert!(err.contains("snapshot_exists"), "{err}");
    let (code, _, err) = dj(&["snapshot", "create", m.mnt.to_str().unwrap(), "../x"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid_argument"), "{err}");
    // No name the user did not make appears in the live tree.
    let mut root: Vec<String> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    root.sort();
    assert_eq!(root, ["a", "dir", "e", "f", "late"]);
}

/// A file open for writing contributes what was last committed: the writer is another
/// process that never forks (a close of any copy of its descriptor, even at an exec,
/// would commit), and is told to close only after the snapshot.
#[test]
fn a_snapshot_sees_an_open_file_as_last_committed() {
    use std::io::{BufRead, Write};
    use std::process::{Command, Stdio};
    let m = Mount::new();
    fs::write(m.path("open"), b"committed").unwrap();
    let script = "import os,sys\nfd=os.open(sys.argv[1],os.O_WRONLY)\nos.write(fd,b'UNCOMMIT')\nprint('ready',flush=True)\nsys.stdin.readline()\nos.close(fd)\n";
    let mut w = Command::new("python3")
        .args(["-c", script, m.path("open").to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(w.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    snapshot_create(&m.mnt, "mid");
    writeln!(w.stdin.take().unwrap()).unwrap();
    assert!(w.wait().unwrap().success());
    assert_eq!(fs::read(m.path("open")).unwrap(), b"UNCOMMITd");
    let sm = SnapMount::new(&m.store, m.dir.path(), "mid");
    assert_eq!(fs::read(sm.0.join("open")).unwrap(), b"committed");
    // Not removed while it is mounted; once unmounted, it is.
    let (code, _, err) = dj(&["snapshot", "rm", m.mnt.to_str().unwrap(), "mid"]);
    assert_eq!(code, 1);
    assert!(err.contains("snapshot_busy"), "{err}");
    drop(sm);
    let (code, _, err) = dj(&["snapshot", "rm", m.mnt.to_str().unwrap(), "mid"]);
    assert_eq!(code, 0, "{err}");
}

/// `-o snapshot_every=1s,snapshots_keep=2` takes scheduled snapshots and keeps the
/// newest two of them; a snapshot a person named stays.
#[test]
fn scheduled_snapshots_are_taken_and_expired() {
    let m = Mount::with_opts("allow_other,snapshot_every=1s,snapshots_keep=2");
    snapshot_create(&m.mnt, "mine");
    let mut seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let autos = loop {
        let names = snapshot_names(&m.mnt);
        assert!(names.contains(&"mine".to_string()), "{names:?}");
        let autos: Vec<String> = names
            .into_iter()
            .filter(|n| n.starts_with("auto-"))
            .collect();
        assert!(
            autos.len() <= 3,
            "at most keep (+1 while one is taken): {autos:?}"
        );
        seen.extend(autos.iter().cloned());
        if seen.len() >= 4 && autos.len() == 2 {
            break autos;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "scheduled snapshots: saw {seen:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    // The two kept are the newest taken.
    let newest: Vec<String> = seen.iter().rev().take(2).rev().cloned().collect();
    assert!(autos.iter().all(|a| seen.contains(a)));
    assert!(
        autos.iter().all(|a| *a >= newest[0]),
        "{autos:?} kept, {seen:?} seen"
    );
    // status counts them.
    let (code, v, err) = dj(&["status", m.mnt.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(v["snapshots"]["count"].as_u64().unwrap() >= 3, "{v}");
}

/// fsck walks every snapshot: a name in one that leads to no record is reported
/// (`snapshot_damaged`, exit 4), and status counts snapshots and their copies.
#[test]
fn fsck_reports_a_damaged_snapshot() {
    let m = Mount::new();
    fs::write(m.path("f"), b"old").unwrap();
    snapshot_create(&m.mnt, "s");
    fs::write(m.path("f"), b"new content").unwrap();
    let (code, v, err) = dj(&["status", m.mnt.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["snapshots"]["count"], 1);
    assert!(v["snapshots"]["copies"].as_u64().unwrap() >= 1, "{v}");
    m.unmount();
    let (code, v, err) = dj(&["fsck", m.store.to_str().unwrap()]);
    assert_eq!(code, 0, "clean before the damage: {v} {err}");
    // Lose the copy of f's record: the snapshot's f now leads nowhere.
    let copies = sh(&format!(
        "find {}/snapshots/s/records -type f",
        m.store.display()
    ));
    let node = node_of(&m.store, "f");
    let id = node.file_name().unwrap().to_str().unwrap().to_string();
    let copy = copies
        .lines()
        .find(|l| l.ends_with(&id))
        .expect("a copy of f's record");
    fs::remove_file(copy).unwrap();
    let (code, v, _) = dj(&["fsck", m.store.to_str().unwrap()]);
    assert_eq!(code, 4, "{v}");
    let found = problems(&v);
    assert!(
        found
            .iter()
            .any(|(c, p, _)| c == "snapshot_damaged" && p == "snapshot s: /f"),
        "{found:?}"
    );
    m.mount();
}

/// kill -9 of the daemon while snapshots are being taken: each snapshot exists whole
/// (equal to the tree, which does not change meanwhile) or not at all, and fsck is
/// clean after each crash.
#[test]
fn a_crash_during_create_leaves_a_whole_snapshot_or_none() {
    let m = Mount::new();
    for i in 0..50 {
        fs::create_dir_all(m.path(&format!("d{}", i % 5))).unwrap();
        fs::write(m.path(&format!("d{}/f{i}", i % 5)), vec![i as u8; 3000]).unwrap();
    }
    let want = listing(&m.mnt);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut made = Vec::new();
    for round in 0..6 {
        let name = format!("c{round}");
        let pid = daemon_pid(&m.store, &m.mnt);
        let mut child = std::process::Command::new(decofs_bin())
            .args(["snapshot", "create", m.mnt.to_str().unwrap(), &name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_micros(rng.u64(0..30_000)));
        // SAFETY: a signal to the daemon this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        let _ = child.wait();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        while !process_gone(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "daemon survived SIGKILL"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = std::process::Command::new("fusermount3")
            .arg("-uz")
            .arg(&m.mnt)
            .output();
        let (code, v, err) = dj(&[
            "fsck",
            m.store.to_str().unwrap(),
            "--grace",
            "0",
            "--repair",
        ]);
        assert!(
            code == 0 || code == 1,
            "fsck after crash {round}: {v} {err}"
        );
        assert!(
            !v.to_string().contains("refcount_mismatch"),
            "the counts after crash {round}: {v}"
        );
        m.mount();
        let listed = snapshot_names(&m.mnt);
        if listed.contains(&name) {
            made.push(name.clone());
        }
        assert_eq!(listed, made, "round {round}");
        assert!(
            fs::read_dir(m.store.join("snapshots")).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".tmp.")),
            "a half-made snapshot was left after round {round}"
        );
    }
    for n in &made {
        let sm = SnapMount::new(&m.store, m.dir.path(), n);
        assert_eq!(listing(&sm.0), want, "snapshot {n}");
    }
    eprintln!("{} of 6 snapshots were taken before the kill", made.len());
}

/// A snapshot mounted read-only stays as it was while the live tree goes on: changes
/// made after newer snapshots were taken (their copies land in the newer areas) and a
/// newer snapshot removed in between.
#[test]
fn a_mounted_snapshot_stays_put_while_newer_ones_come_and_go() {
    let m = Mount::new();
    fs::write(m.path("f"), b"first").unwrap();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/g"), b"gee").unwrap();
    snapshot_create(&m.mnt, "s1");
    let sm = SnapMount::new(&m.store, m.dir.path(), "s1");
    let want = listing(&sm.0);
    snapshot_create(&m.mnt, "s2");
    fs::write(m.path("f"), b"second, longer").unwrap();
    fs::remove_file(m.path("d/g")).unwrap();
    fs::write(m.path("d/h"), b"new").unwrap();
    snapshot_create(&m.mnt, "s3");
    fs::rename(m.path("d"), m.path("e")).unwrap();
    // Past the mount's 1 s attribute and entry timeouts.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(listing(&sm.0), want, "s1 after later snapshots and changes");
    let (code, _, err) = dj(&["snapshot", "rm", m.mnt.to_str().unwrap(), "s2"]);
    assert_eq!(code, 0, "{err}");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(listing(&sm.0), want, "s1 after s2 was removed");
    assert_eq!(fs::read(sm.0.join("f")).unwrap(), b"first");
}

/// Run `decofs ARGS` and kill -9 it after `micros` microseconds (if it still runs).
fn run_killed(args: &[&str], micros: u64) {
    let mut child = std::process::Command::new(decofs_bin())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_micros(micros));
    let _ = child.kill();
    let _ = child.wait();
}

/// A store made by `decofs init` in the test's directory (not mounted).
fn new_store(m: &Mount, name: &str) -> PathBuf {
    let p = m.dir.path().join(name);
    let out = decofs(&["init", p.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p
}

fn send(m: &Mount, name: &str, from: Option<&str>) -> PathBuf {
    let file = m.dir.path().join(format!("{name}.stream"));
    let mut args = vec![
        "send",
        m.mnt.to_str().unwrap(),
        name,
        "-o",
        file.to_str().unwrap(),
    ];
    if let Some(f) = from {
        args.extend(["--from", f]);
    }
    let out = decofs(&args);
    assert!(
        out.status.success(),
        "send {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    file
}

fn receive(store: &Path, file: &Path) -> (i32, String) {
    let out = decofs(&[
        "receive",
        store.to_str().unwrap(),
        "-i",
        file.to_str().unwrap(),
    ]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every file under a store directory with its size and, for files, a hash: a store
/// "unchanged" has the same picture before and after. Bookkeeping is left out: the
/// index, log, lock, epoch, staging, and the blob reference counts (derived from the
/// holders; every read-write open checkpoints them into a new log).
fn store_picture(store: &Path) -> BTreeMap<String, String> {
    let out = sh(&format!(
        "cd {} && find . -path ./index -prune -o -path ./decofs.log -prune -o -path ./lock -prune -o -path ./epoch -prune -o -path ./sessions -prune -o -path ./refs -prune -o -printf '%p %y %s %l\\n' | sort",
        store.display()
    ));
    out.lines()
        .map(|l| {
            let (p, rest) = l.split_once(' ').unwrap();
            (p.to_string(), rest.to_string())
        })
        .collect()
}

/// A whole stream, then three differential ones, after random operations: the
/// receiving store, mounted, equals each snapshot every time, and lists the same
/// snapshots. The streams are checked for their size against the bytes changed.
#[test]
fn send_and_receive_round_trips() {
    let mut rng = fastrand::Rng::with_seed(0x5e4d_0001);
    let m = Mount::new();
    let re = m.dir.path().join("reference");
    fs::create_dir(&re).unwrap();
    let other = new_store(&m, "other");
    let omnt = m.dir.path().join("other-mnt");
    fs::create_dir(&omnt).unwrap();
    let mut prev: Option<String> = None;
    for round in 0..4 {
        for _ in 0..120 {
            step(&mut rng, &m.mnt, &re);
        }
        let name = format!("r{round}");
        snapshot_create(&m.mnt, &name);
        let file = send(&m, &name, prev.as_deref());
        let (code, err) = receive(&other, &file);
        assert_eq!(code, 0, "receive {name}: {err}");
        let out = decofs(&[
            "mount",
            other.to_str().unwrap(),
            omnt.to_str().unwrap(),
            "-o",
            "ro",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = listing(&omnt);
        unmount_path(&omnt);
        assert_eq!(got, listing(&re), "the receiver after {name}");
        prev = Some(name);
    }
    let (code, v, err) = dj(&["snapshot", "ls", other.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 4);
    let (code, v, err) = dj(&["fsck", other.to_str().unwrap()]);
    assert_eq!(code, 0, "fsck of the receiver: {v} {err}");
}

/// A differential stream grows with what changed, not with the store: 1 MiB changed in
/// a store of 8 MiB (64 KiB chunks) sends about 1 MiB.
#[test]
fn a_differential_stream_grows_with_what_changed() {
    let m = Mount::with_init(
        &["--trash-min-age", "0", "--chunk-size", "65536"],
        "allow_other",
    );
    fs::write(m.path("big"), pattern(1, 0, 8 << 20)).unwrap();
    snapshot_create(&m.mnt, "b1");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(m.path("big"))
        .unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(3 << 20)).unwrap();
    // Bytes found nowhere in the file (a pattern's other seed would repeat its chunks).
    let mut rng = fastrand::Rng::with_seed(9);
    let new: Vec<u8> = (0..1 << 20).map(|_| rng.u8(..)).collect();
    std::io::Write::write_all(&mut f, &new).unwrap();
    drop(f);
    snapshot_create(&m.mnt, "b2");
    let whole = fs::metadata(send(&m, "b2", None)).unwrap().len();
    let diff = fs::metadata(send(&m, "b2", Some("b1"))).unwrap().len();
    eprintln!("whole stream {whole} bytes, differential {diff} bytes for 1 MiB changed");
    assert!(whole > 8 << 20, "{whole}");
    assert!(
        ((1 << 20)..(1 << 20) + (64 << 10)).contains(&diff),
        "differential {diff} bytes"
    );
}

/// Every kind of damaged or misdirected stream is refused with a code, and the
/// receiving store is unchanged.
#[test]
fn damaged_streams_are_refused_and_change_nothing() {
    let m = Mount::new();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/a"), vec![1u8; 100_000]).unwrap();
    fs::write(m.path("b"), b"bee").unwrap();
    snapshot_create(&m.mnt, "s1");
    fs::write(m.path("d/c"), b"sea").unwrap();
    snapshot_create(&m.mnt, "s2");
    fs::write(m.path("e"), b"ee").unwrap();
    snapshot_create(&m.mnt, "s3");
    let whole = fs::read(send(&m, "s1", None)).unwrap();
    let target = new_store(&m, "target");
    let bad = m.dir.path().join("bad.stream");
    let refused = |bytes: &[u8], code: &str, what: &str| {
        let before = store_picture(&target);
        fs::write(&bad, bytes).unwrap();
        let (c, err) = receive(&target, &bad);
        assert_eq!(c, 1, "{what}: {err}");
        assert!(err.contains(code), "{what}: expected {code}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{what}: one line: {err}");
        assert_eq!(store_picture(&target), before, "{what}: the store changed");
    };
    refused(&whole[..whole.len() - 10], "stream_invalid", "truncated");
    refused(&whole[..whole.len() / 2], "stream_invalid", "cut in half");
    let mut flipped = whole.clone();
    let i = flipped.len() / 3;
    flipped[i] ^= 0x40;
    refused(&flipped, "stream_invalid", "a flipped byte");
    refused(b"not a stream at all", "stream_invalid", "garbage");
    // Two frames swapped: each frame is whole, the order is not.
    let frames = split_frames(&whole);
    assert!(frames.len() > 4);
    let mut swapped = whole[..16].to_vec();
    let mut order: Vec<usize> = (0..frames.len()).collect();
    order.swap(2, 3);
    for k in order {
        swapped.extend_from_slice(frames[k]);
    }
    refused(&swapped, "stream_invalid", "reordered frames");
    let mut doubled = whole[..16].to_vec();
    for (k, f) in frames.iter().enumerate() {
        doubled.extend_from_slice(f);
        if k == 2 {
            doubled.extend_from_slice(f);
        }
    }
    refused(&doubled, "stream_invalid", "a repeated frame");
    // A differential stream whose base the target lacks.
    refused(
        &fs::read(send(&m, "s2", Some("s1"))).unwrap(),
        "snapshot_base_missing",
        "no base",
    );
    // The whole stream is accepted; then a differential one skipping s2 is refused.
    fs::write(&bad, &whole).unwrap();
    let (c, err) = receive(&target, &bad);
    assert_eq!(c, 0, "{err}");
    refused(
        &fs::read(send(&m, "s3", Some("s2"))).unwrap(),
        "snapshot_base_missing",
        "wrong base",
    );
    // A whole stream into a store that is not empty.
    refused(&whole, "snapshot_exists", "s1 again");
    let (c, err) = receive(&target, &send(&m, "s2", Some("s1")));
    assert_eq!(c, 0, "{err}");
    let (c, err) = receive(&target, &send(&m, "s3", Some("s2")));
    assert_eq!(c, 0, "{err}");
}

/// The frames of a stream (after its 16-byte start), each with its head and CRC.
fn split_frames(s: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut i = 16;
    while i < s.len() {
        let len = u32::from_le_bytes(s[i + 1..i + 5].try_into().unwrap()) as usize;
        out.push(&s[i..i + 5 + len + 4]);
        i += 5 + len + 4;
    }
    out
}

/// kill -9 of `decofs receive` at random moments: after the next read-write open the
/// receive happened whole (the snapshot exists and the tree equals it) or not at all
/// (the store as it was), and fsck is clean.
#[test]
fn a_killed_receive_happens_whole_or_not_at_all() {
    let m = Mount::new();
    for i in 0..200 {
        fs::create_dir_all(m.path(&format!("d{}", i % 10))).unwrap();
        fs::write(
            m.path(&format!("d{}/f{i}", i % 10)),
            vec![i as u8; 5000 + i],
        )
        .unwrap();
    }
    snapshot_create(&m.mnt, "k1");
    let want = listing(&m.mnt);
    let file = send(&m, "k1", None);
    let mut rng = fastrand::Rng::with_seed(11);
    let mut whole = 0;
    for round in 0..6 {
        let target = new_store(&m, &format!("k{round}"));
        run_killed(
            &[
                "receive",
                target.to_str().unwrap(),
                "-i",
                file.to_str().unwrap(),
            ],
            rng.u64(0..150_000),
        );
        // The next read-write open finishes an interrupted receive.
        let tm = m.dir.path().join(format!("k{round}-mnt"));
        fs::create_dir(&tm).unwrap();
        let out = decofs(&["mount", target.to_str().unwrap(), tm.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = listing(&tm);
        let names = snapshot_names(&tm);
        unmount_path(&tm);
        if names == ["k1"] {
            assert_eq!(got, want, "round {round}: received, so equal");
            whole += 1;
        } else {
            assert!(names.is_empty(), "round {round}: {names:?}");
            assert!(
                got.0.is_empty(),
                "round {round}: not received, so empty: {got:?}"
            );
        }
        let (code, v, err) = dj(&["fsck", target.to_str().unwrap(), "--grace", "0"]);
        assert_eq!(code, 0, "round {round}: fsck {v} {err}");
    }
    eprintln!("{whole} of 6 receives had happened when killed");
}

/// `snapshot restore` of an unmounted store makes the live tree equal to the snapshot
/// (nodes deleted since come back and leave the trash; nodes made since go), keeps the
/// state before as a snapshot, and restoring that one undoes it. fsck is clean.
#[test]
fn restore_rolls_the_tree_back_and_can_be_undone() {
    let mut rng = fastrand::Rng::with_seed(0x7e57_0001);
    let m = Mount::new();
    let re = m.dir.path().join("reference");
    fs::create_dir(&re).unwrap();
    for _ in 0..200 {
        step(&mut rng, &m.mnt, &re);
    }
    snapshot_create(&m.mnt, "then");
    let then = m.dir.path().join("then");
    sh(&format!("cp -a {} {}", re.display(), then.display()));
    for _ in 0..200 {
        step(&mut rng, &m.mnt, &re);
    }
    let now = listing(&m.mnt);
    assert_eq!(now, listing(&re));
    // A file open for writing on the mount: refused, nothing changed.
    let open = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .append(true)
        .open(m.path("held-open"))
        .unwrap();
    let (code, _, err) = dj(&["snapshot", "restore", m.mnt.to_str().unwrap(), "then"]);
    assert_eq!(code, 1);
    assert!(err.contains("files_open"), "{err}");
    drop(open);
    fs::remove_file(m.path("held-open")).unwrap();
    assert_eq!(listing(&m.mnt), now, "a refused restore changes nothing");
    m.unmount();
    let (code, v, err) = dj(&["snapshot", "restore", m.store.to_str().unwrap(), "then"]);
    assert_eq!(code, 0, "{err}");
    let before = v["before"].as_str().unwrap().to_string();
    assert!(before.starts_with("before-restore-"), "{v}");
    let (code, v, err) = dj(&["fsck", m.store.to_str().unwrap()]);
    assert_eq!(code, 0, "fsck after the restore: {v} {err}");
    m.mount();
    assert_eq!(
        listing(&m.mnt),
        listing(&then),
        "the live tree after the restore"
    );
    // Nothing live is in the trash.
    let (code, v, err) = dj(&["trash", "ls", m.mnt.to_str().unwrap(), "--all"]);
    assert_eq!(code, 0, "{err}");
    for e in v["entries"].as_array().unwrap() {
        let id = e["id"].as_str().unwrap();
        assert!(
            !node_of_id_is_named(&m.store, id),
            "trash entry {id} names a node the tree names"
        );
    }
    check_snapshot(&m, &before, &re, "the state before the restore");
    // Undo.
    m.unmount();
    let (code, _, err) = dj(&["snapshot", "restore", m.store.to_str().unwrap(), &before]);
    assert_eq!(code, 0, "{err}");
    m.mount();
    assert_eq!(
        listing(&m.mnt),
        now,
        "restoring the state before undoes the restore"
    );
}

/// A restore through the mount's daemon: the mount shows the snapshot's tree at once
/// (the kernel's cached names, attributes and pages of what changed are dropped), a
/// file the restore removes stays readable through a descriptor opened before until its
/// last close, the index follows, and restoring the state before undoes it.
#[test]
fn a_mounted_restore_shows_at_once_and_keeps_open_files() {
    let m = Mount::new();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("a"), vec![1u8; 300_000]).unwrap();
    fs::write(m.path("d/b"), b"bee").unwrap();
    fs::write(m.path("old-name"), b"renamed later").unwrap();
    snapshot_create(&m.mnt, "then");
    let then = listing(&m.mnt);
    // Changes, each read back so the kernel caches the new state.
    fs::write(m.path("a"), vec![2u8; 200_000]).unwrap();
    fs::remove_file(m.path("d/b")).unwrap();
    fs::create_dir(m.path("d/new-dir")).unwrap();
    fs::write(m.path("c"), b"made after the snapshot").unwrap();
    fs::rename(m.path("old-name"), m.path("new-name")).unwrap();
    let now = listing(&m.mnt);
    assert_ne!(now, then);
    assert_eq!(fs::read(m.path("a")).unwrap(), vec![2u8; 200_000]);
    assert!(
        fs::metadata(m.path("d/b")).is_err(),
        "a cached negative entry"
    );
    let kept = fs::File::open(m.path("c")).unwrap();
    let (code, v, err) = dj(&["snapshot", "restore", m.mnt.to_str().unwrap(), "then"]);
    assert_eq!(code, 0, "{err}");
    let before = v["before"].as_str().unwrap().to_string();
    assert_eq!(
        listing(&m.mnt),
        then,
        "the mount shows the snapshot at once"
    );
    assert_eq!(fs::read(m.path("a")).unwrap(), vec![1u8; 300_000]);
    assert_eq!(fs::read(m.path("d/b")).unwrap(), b"bee");
    assert!(fs::metadata(m.path("c")).is_err());
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut &kept, &mut back).unwrap();
    assert_eq!(
        back, b"made after the snapshot",
        "an open file stays until closed"
    );
    drop(kept);
    // The index follows (find answers from it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = decofs(&["find", m.mnt.to_str().unwrap(), "--name", "c", "--wait"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && !text.lines().any(|l| l.ends_with("/c")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "index: {text}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Undo, mounted too.
    let (code, _, err) = dj(&["snapshot", "restore", m.mnt.to_str().unwrap(), &before]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(listing(&m.mnt), now, "restoring the state before undoes it");
    m.unmount();
    let (code, v, err) = dj(&["fsck", m.store.to_str().unwrap(), "--grace", "0"]);
    assert_eq!(code, 0, "fsck: {v} {err}");
    common::assert_counts_exact(&m.store, "after mounted restores");
    m.mount();
}

/// A stream received into a mounted store (from a pipe: standard input) through its
/// daemon: the mount shows the snapshot's tree at once, then a differential one.
#[test]
fn a_mounted_store_receives_a_stream_from_a_pipe() {
    let src = Mount::new();
    fs::create_dir(src.path("d")).unwrap();
    fs::write(src.path("d/a"), vec![3u8; 100_000]).unwrap();
    snapshot_create(&src.mnt, "s1");
    let s1 = listing(&src.mnt);
    fs::write(src.path("d/a"), b"changed").unwrap();
    fs::write(src.path("e"), b"new").unwrap();
    snapshot_create(&src.mnt, "s2");
    let s2 = listing(&src.mnt);
    let dst = Mount::new();
    listing(&dst.mnt); // the kernel caches the empty root
    let pipe = |args: &str| {
        sh(&format!(
            "{bin} send {src} {args} | {bin} --json receive {dst}",
            bin = common::decofs_bin().display(),
            src = src.mnt.display(),
            dst = dst.mnt.display()
        ))
    };
    let out = pipe("s1");
    assert!(out.contains("\"snapshot\":\"s1\""), "{out}");
    assert_eq!(listing(&dst.mnt).0, s1.0, "s1 on the mounted target");
    let out = pipe("s2 --from s1");
    assert!(out.contains("\"base\":\"s1\""), "{out}");
    assert_eq!(listing(&dst.mnt).0, s2.0, "s2 on the mounted target");
    assert_eq!(fs::read(dst.path("d/a")).unwrap(), b"changed");
    assert!(
        !sh(&format!("ls -A {}/sessions", dst.store.display())).contains(".in.tmp"),
        "the spool of standard input is gone"
    );
    dst.unmount();
    common::assert_counts_exact(&dst.store, "after receiving on a mount");
    dst.mount();
}

/// Does an entry of some directory of the store name node `id`?
fn node_of_id_is_named(store: &Path, id: &str) -> bool {
    let out = sh(&format!(
        "find {}/nodes -type l -lname '*{id}' | head -1",
        store.display()
    ));
    !out.trim().is_empty()
}

/// kill -9 of `decofs snapshot restore` at random moments: after the next read-write
/// open the tree is the snapshot's (restored whole) or as it was (not restored), and
/// fsck is clean.
#[test]
fn a_killed_restore_happens_whole_or_not_at_all() {
    let m = Mount::new();
    for i in 0..150 {
        fs::create_dir_all(m.path(&format!("d{}", i % 6))).unwrap();
        fs::write(m.path(&format!("d{}/f{i}", i % 6)), vec![i as u8; 3000 + i]).unwrap();
    }
    snapshot_create(&m.mnt, "then");
    let then = listing(&m.mnt);
    let mut rng = fastrand::Rng::with_seed(12);
    let mut restored = 0;
    for round in 0..5 {
        // Change the tree, so there is something to restore.
        for i in 0..40 {
            let p = m.path(&format!("d{}/f{}", i % 6, rng.usize(0..150)));
            match rng.u8(0..3) {
                0 => drop(fs::remove_file(&p)),
                1 => drop(fs::write(&p, b"changed")),
                _ => drop(fs::write(
                    m.path(&format!("d{}/n{round}-{i}", i % 6)),
                    b"new",
                )),
            }
        }
        let now = listing(&m.mnt);
        m.unmount();
        run_killed(
            &["snapshot", "restore", m.store.to_str().unwrap(), "then"],
            rng.u64(0..100_000),
        );
        m.mount();
        let got = listing(&m.mnt);
        if got == then {
            restored += 1;
        } else {
            assert_eq!(got, now, "round {round}: neither restored nor as it was");
        }
        m.unmount();
        let (code, v, err) = dj(&["fsck", m.store.to_str().unwrap(), "--grace", "0"]);
        assert_eq!(code, 0, "round {round}: fsck {v} {err}");
        m.mount();
    }
    eprintln!("{restored} of 5 restores had happened when killed");
}
