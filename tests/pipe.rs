//! Every command survives a reader that goes away: `decofs trash ls | head -1` and the
//! like end quietly with exit 141, as `cat` killed by SIGPIPE would, instead of panicking
//! on EPIPE (exit 101); 141 and not 0, so `fsck | head` does not pass for clean. The
//! listings here are far larger than a pipe's buffer, so the write after `head` exits
//! fails for certain (`assert_cut`); a short output may fit before the reader leaves
//! (`assert_survives`: 0 or 141). The daemon is untouched by a client hanging up.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{decofs, decofs_bin, Mount};

/// Run `decofs ARGS | READER`: (decofs's exit status, its stderr, what the reader
/// printed first).
fn piped(reader: &str, args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let err = dir.path().join("stderr");
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"reader=$1; bin=$2; err=$3; shift 3; "$bin" "$@" 2>"$err" | $reader; s=${PIPESTATUS[0]}; echo; echo "status $s""#)
        .arg("bash")
        .arg(reader)
        .arg(decofs_bin())
        .arg(&err)
        .args(args)
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = stdout
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("status "))
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1);
    let first: String = stdout
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    (status, fs::read_to_string(&err).unwrap_or_default(), first)
}

/// A short output: it may all fit in the pipe before `head` leaves (exit 0) or not (141).
fn assert_survives(args: &[&str]) {
    check_piped("head -1", args, &[0, 141]);
}

/// An output far larger than the pipe: the reader leaves first, for certain.
fn assert_cut(args: &[&str]) {
    check_piped("head -1", args, &[141]);
}

fn check_piped(reader: &str, args: &[&str], allowed: &[i32]) {
    let (status, stderr, first) = piped(reader, args);
    assert!(
        !stderr.contains("panicked"),
        "decofs {args:?} | {reader} panicked: {stderr}"
    );
    assert!(
        allowed.contains(&status),
        "decofs {args:?} | {reader} exited {status}, not one of {allowed:?} (stderr: {stderr}; first line: {first})"
    );
    assert!(!first.is_empty(), "decofs {args:?} printed nothing");
}

/// Enough files, with long names, that every listing below is hundreds of KiB.
fn populate(root: &Path, n: usize) {
    let dir = root.join("d");
    fs::create_dir(&dir).unwrap();
    for i in 0..n {
        fs::write(
            dir.join(format!(
                "a-rather-long-file-name-so-the-listings-fill-a-pipe-{i:06}"
            )),
            b"x",
        )
        .unwrap();
    }
}

fn trash_all(root: &Path, n: usize) {
    for i in (0..n).step_by(2) {
        fs::remove_file(root.join(format!(
            "d/a-rather-long-file-name-so-the-listings-fill-a-pipe-{i:06}"
        )))
        .unwrap();
    }
}

#[test]
fn commands_piped_into_head_exit_quietly() {
    let m = Mount::new();
    let n = 4000;
    populate(&m.mnt, n);
    trash_all(&m.mnt, n);
    let mnt = m.mnt.to_str().unwrap();
    let store = m.store.to_str().unwrap();

    assert_survives(&["--help"]);
    assert_survives(&["manpage"]);
    assert_survives(&["completions", "bash"]);
    assert_cut(&["trash", "ls", mnt]);
    assert_cut(&["find", mnt, "--wait"]);
    check_piped("head -c 100", &["find", mnt, "--wait", "-0"], &[141]);
    assert_survives(&["du", mnt, "-d", "1", "--wait"]);
    assert_cut(&["changes", mnt, "--wait"]);
    assert_cut(&["--json", "changes", mnt, "--wait"]);
    assert_survives(&["status", mnt]);
    // The daemon never saw any of it: it still answers.
    let out = decofs(&["status", mnt]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Unmounted, the CLI answers from the store itself.
    m.unmount();
    assert_cut(&["trash", "ls", store]);
    assert_cut(&["find", store]);
    assert_cut(&["changes", store]);
    assert_survives(&["fsck", store]);
}
