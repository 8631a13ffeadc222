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
    // fsck finds every blob a snapshot names.
    m.unmount();
    let (code, v, err) = dj(&["fsck", m.store.to_str().unwrap()]);
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
        let (code, v, err) = dj(&["fsck", m.store.to_str().unwrap(), "--grace", "0"]);
        assert!(
            code == 0 || code == 1,
            "fsck after crash {round}: {v} {err}"
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
