//! Bad input to the CLI: each is refused with one line on stderr naming a stable `code`
//! and a suggestion (or one JSON object with `--json`), a non-zero exit, and no change to
//! the store on disk. Assertions are on the code, never on the wording.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{daemon_pid, decofs, is_mounted, unmount_path, Mount};

/// Unmounts the given paths on drop, in case a command that should have failed mounted.
struct Unmounter(Vec<PathBuf>);

impl Drop for Unmounter {
    fn drop(&mut self) {
        for p in &self.0 {
            unmount_path(p);
        }
    }
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("decofs-bad")
        .tempdir_in(common::test_root())
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A recursive listing of a directory: per path its type, permissions, size, content
/// hash (files), target (symlinks) and xattrs. `skip` names top-level entries to ignore
/// (things a *running* mount may legitimately touch, like its index), or, ending in
/// `*`, a prefix of the paths to ignore.
fn listing(root: &Path, skip: &[&str]) -> BTreeMap<String, String> {
    fn fnv(data: &[u8]) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in data {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }
    fn walk(root: &Path, p: &Path, skip: &[&str], out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let child = p.join(&n);
            let rel = child
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let skipped = |s: &&str| match s.strip_suffix('*') {
                Some(prefix) => rel.starts_with(prefix),
                None => p == root && n.as_bytes() == s.as_bytes(),
            };
            if skip.iter().any(skipped) {
                continue;
            }
            let md = fs::symlink_metadata(&child).unwrap();
            let mut xattrs = String::new();
            if !md.file_type().is_symlink() {
                if let Ok(list) = xattr::list(&child) {
                    let mut list: Vec<_> = list.collect();
                    list.sort();
                    for a in list {
                        let v = xattr::get(&child, &a).ok().flatten().unwrap_or_default();
                        xattrs.push_str(&format!(" {}={:x}", a.to_string_lossy(), fnv(&v)));
                    }
                }
            }
            let desc = if md.is_dir() {
                format!("dir {:o}{xattrs}", md.mode() & 0o7777)
            } else if md.file_type().is_symlink() {
                format!("symlink -> {}", fs::read_link(&child).unwrap().display())
            } else {
                let data = fs::read(&child).unwrap_or_default();
                format!(
                    "file {:o} size={} content={:x}{xattrs}",
                    md.mode() & 0o7777,
                    md.len(),
                    fnv(&data)
                )
            };
            out.insert(rel, desc);
            if md.is_dir() {
                walk(root, &child, skip, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    if root.exists() {
        walk(root, root, skip, &mut out);
    }
    out
}

#[track_caller]
fn assert_same_listing(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    what: &str,
) {
    if before != after {
        let mut diff = String::new();
        for (k, v) in before {
            match after.get(k) {
                None => diff.push_str(&format!("  removed: {k}: {v}\n")),
                Some(x) if x != v => diff.push_str(&format!("  changed: {k}: {v} -> {x}\n")),
                _ => {}
            }
        }
        for (k, v) in after {
            if !before.contains_key(k) {
                diff.push_str(&format!("  added: {k}: {v}\n"));
            }
        }
        panic!("{what}: the store changed on disk:\n{diff}");
    }
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Human form: non-zero exit, exactly one non-empty line on stderr, naming the code.
#[track_caller]
fn assert_human_error(out: &Output, code: &str, what: &str) {
    assert!(!out.status.success(), "{what}: must fail\n{}", show(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: stderr must be exactly one line\n{}",
        show(out)
    );
    let line = lines[0];
    assert!(
        line.contains("code"),
        "{what}: the line must name the code\n{}",
        show(out)
    );
    assert!(
        line.contains(code),
        "{what}: expected code {code}\n{}",
        show(out)
    );
    // Something follows the code: the suggestion.
    let after = line
        .split(code)
        .nth(1)
        .unwrap_or("")
        .trim_start_matches(']')
        .trim();
    assert!(
        !after.is_empty(),
        "{what}: no suggestion after the code\n{}",
        show(out)
    );
}

/// JSON form: non-zero exit, stderr is one JSON object with the four keys.
#[track_caller]
fn assert_json_error(out: &Output, code: &str, what: &str) {
    assert!(
        !out.status.success(),
        "{what} (--json): must fail\n{}",
        show(out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap_or_else(|e| {
        panic!(
            "{what} (--json): stderr is not one JSON value ({e})\n{}",
            show(out)
        )
    });
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{what} (--json): not an object\n{}", show(out)));
    for k in ["error", "code", "reason", "suggestion"] {
        let val = obj
            .get(k)
            .unwrap_or_else(|| panic!("{what} (--json): key {k:?} missing\n{}", show(out)));
        let s = val
            .as_str()
            .unwrap_or_else(|| panic!("{what} (--json): {k:?} is not a string\n{}", show(out)));
        assert!(
            !s.is_empty(),
            "{what} (--json): {k:?} is empty\n{}",
            show(out)
        );
    }
    assert_eq!(
        obj["code"].as_str().unwrap(),
        code,
        "{what} (--json): code\n{}",
        show(out)
    );
}

/// Run `args` in human and JSON form; both must fail with `code` and leave `store`
/// (listing without `skip`) unchanged.
#[track_caller]
fn expect_refused(args: &[&str], code: &str, store: &Path, skip: &[&str], what: &str) {
    let before = listing(store, skip);
    let out = decofs(args);
    assert_human_error(&out, code, what);
    assert_same_listing(&before, &listing(store, skip), what);
    let mut jargs = vec!["--json"];
    jargs.extend_from_slice(args);
    let out = decofs(&jargs);
    assert_json_error(&out, code, what);
    assert_same_listing(&before, &listing(store, skip), &format!("{what} (--json)"));
}

fn new_store(dir: &Path, name: &str) -> PathBuf {
    let store = dir.join(name);
    let out = decofs(&["init", s(&store)]);
    assert!(out.status.success(), "init: {}", show(&out));
    store
}

// ---------------------------------------------------------------------------------------

#[test]
fn mount_missing_store() {
    let d = scratch();
    let store = d.path().join("no-such-store");
    let mnt = d.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _g = Unmounter(vec![mnt.clone()]);
    expect_refused(
        &["mount", s(&store), s(&mnt)],
        "store_not_found",
        &store,
        &[],
        "mount of a missing store",
    );
    assert!(
        !store.exists(),
        "a failed mount must not create the store path"
    );
    assert!(!is_mounted(&mnt));
}

#[test]
fn mount_directory_that_is_not_a_store() {
    let d = scratch();
    let store = d.path().join("plain");
    fs::create_dir(&store).unwrap();
    fs::write(store.join("some-file"), b"user data").unwrap();
    fs::create_dir(store.join("sub")).unwrap();
    let mnt = d.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _g = Unmounter(vec![mnt.clone()]);
    expect_refused(
        &["mount", s(&store), s(&mnt)],
        "not_a_store",
        &store,
        &[],
        "mount of a plain directory",
    );
    assert!(!is_mounted(&mnt));
    // An empty directory is not a store either.
    let empty = d.path().join("empty");
    fs::create_dir(&empty).unwrap();
    expect_refused(
        &["mount", s(&empty), s(&mnt)],
        "not_a_store",
        &empty,
        &[],
        "mount of an empty directory",
    );
    assert_eq!(fs::read_dir(&empty).unwrap().count(), 0);
}

#[test]
fn mount_store_of_unsupported_format() {
    let d = scratch();
    let store = new_store(d.path(), "store");
    let fmt = store.join("decofs.format");
    let text = fs::read_to_string(&fmt).unwrap();
    assert!(
        text.starts_with("decofs-format 1\n"),
        "format file starts with {:?}",
        text.lines().next()
    );
    fs::write(
        &fmt,
        text.replacen("decofs-format 1", "decofs-format 999", 1),
    )
    .unwrap();
    let mnt = d.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _g = Unmounter(vec![mnt.clone()]);
    expect_refused(
        &["mount", s(&store), s(&mnt)],
        "format_unsupported",
        &store,
        &[],
        "mount of a format-999 store",
    );
    assert!(!is_mounted(&mnt));
}

#[test]
fn mount_on_missing_mountpoint() {
    let d = scratch();
    let store = new_store(d.path(), "store");
    let mnt = d.path().join("no-such-mnt");
    let _g = Unmounter(vec![mnt.clone()]);
    expect_refused(
        &["mount", s(&store), s(&mnt)],
        "mountpoint_not_found",
        &store,
        &[],
        "mount on a missing mountpoint",
    );
    assert!(
        !mnt.exists(),
        "a failed mount must not create the mountpoint"
    );
}

#[test]
fn mount_on_busy_mountpoint() {
    let a = Mount::new();
    fs::write(a.path("hello"), b"from a").unwrap();
    let d = scratch();
    let store_b = new_store(d.path(), "store-b");
    let _g = Unmounter(vec![]);
    expect_refused(
        &["mount", s(&store_b), s(&a.mnt)],
        "mountpoint_busy",
        &store_b,
        &[],
        "mount on a mountpoint in use",
    );
    // The mount that was there is untouched and still works.
    assert!(is_mounted(&a.mnt));
    assert_eq!(fs::read(a.path("hello")).unwrap(), b"from a");
    fs::write(a.path("after"), b"still writable").unwrap();
    assert_eq!(fs::read(a.path("after")).unwrap(), b"still writable");
}

#[test]
fn umount_of_a_busy_mount_is_refused() {
    // A file held open in the mount: `decofs umount` (not lazy) refuses with
    // mountpoint_busy, after its short grace for holders on their way out, and the mount
    // goes on working; once the file is closed the same command unmounts.
    let a = Mount::new();
    fs::write(a.path("held"), b"open").unwrap();
    let held = fs::File::open(a.path("held")).unwrap();
    let out = decofs(&["umount", s(&a.mnt)]);
    assert_human_error(&out, "mountpoint_busy", "umount while a file is open");
    // It says what is wrong (in use), not what a mount's busy mountpoint means.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use") && !err.contains("already mounted"),
        "umount while a file is open: the message\n{}",
        show(&out)
    );
    let out = decofs(&["--json", "umount", s(&a.mnt)]);
    assert_json_error(
        &out,
        "mountpoint_busy",
        "umount while a file is open (--json)",
    );
    assert!(is_mounted(&a.mnt), "a refused umount must leave the mount");
    fs::write(a.path("after"), b"still writable").unwrap();
    assert_eq!(fs::read(a.path("held")).unwrap(), b"open");
    drop(held);
    let out = decofs(&["umount", s(&a.mnt)]);
    assert!(out.status.success(), "umount once closed: {}", show(&out));
    assert!(!is_mounted(&a.mnt));
}

#[test]
fn second_read_write_mount_is_locked() {
    let a = Mount::new();
    fs::write(a.path("hello"), b"from a").unwrap();
    let mnt2 = a.dir.path().join("mnt2");
    fs::create_dir(&mnt2).unwrap();
    let _g = Unmounter(vec![mnt2.clone()]);
    // The first mount runs meanwhile: its index, log and staging (spare node and blob
    // files made ahead, see store/spare.rs) may change, nothing else may. Its spares
    // thread makes a `nodes/` shard before its first spares: wait for those.
    common::wait_for_spares(&a.mnt, 1);
    let spares = format!("sessions/spare.{}.*", daemon_pid(&a.store, &a.mnt));
    let skip = ["index", "decofs.log", &spares];
    expect_refused(
        &["mount", s(&a.store), s(&mnt2)],
        "store_locked",
        &a.store,
        &skip,
        "second rw mount of a store",
    );
    assert!(!is_mounted(&mnt2), "the second mount must not be live");
    // The first mount still holds the lock and may still write (its epoch was not fenced).
    fs::write(a.path("after"), b"still writable").unwrap();
    assert_eq!(fs::read(a.path("after")).unwrap(), b"still writable");
    a.remount();
    assert_eq!(fs::read(a.path("after")).unwrap(), b"still writable");
}

#[test]
fn read_only_mount_coexists_with_writer() {
    let a = Mount::new();
    fs::write(a.path("hello"), b"from a").unwrap();
    a.remount(); // content committed on disk
    let mnt2 = a.dir.path().join("ro");
    fs::create_dir(&mnt2).unwrap();
    let _g = Unmounter(vec![mnt2.clone()]);
    let out = decofs(&["mount", s(&a.store), s(&mnt2), "-o", "ro,allow_other"]);
    assert!(
        out.status.success(),
        "read-only mount next to the writer: {}",
        show(&out)
    );
    assert!(is_mounted(&mnt2));
    assert_eq!(fs::read(mnt2.join("hello")).unwrap(), b"from a");
    let e = fs::write(mnt2.join("new"), b"x").unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EROFS),
        "write on a read-only mount: {e}"
    );
    // The writer is unaffected.
    fs::write(a.path("w"), b"w").unwrap();
    assert_eq!(fs::read(a.path("w")).unwrap(), b"w");
    let out = decofs(&["umount", s(&mnt2)]);
    assert!(
        out.status.success(),
        "umount of the read-only mount: {}",
        show(&out)
    );
    assert!(!is_mounted(&mnt2));
    assert!(is_mounted(&a.mnt));
}

#[test]
fn init_on_existing_store() {
    let d = scratch();
    let store = new_store(d.path(), "store");
    expect_refused(
        &["init", s(&store)],
        "store_exists",
        &store,
        &[],
        "init on an existing store",
    );
    // Also while it is mounted (the format file must not be rewritten under a mount).
    let mnt = d.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _g = Unmounter(vec![mnt.clone()]);
    let out = decofs(&["mount", s(&store), s(&mnt), "-o", "allow_other"]);
    assert!(out.status.success(), "mount: {}", show(&out));
    let before = fs::read(store.join("decofs.format")).unwrap();
    let out = decofs(&["init", s(&store)]);
    assert_human_error(&out, "store_exists", "init on a mounted store");
    assert_eq!(fs::read(store.join("decofs.format")).unwrap(), before);
}

#[test]
fn init_on_non_empty_directory() {
    let d = scratch();
    let dir = d.path().join("data");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("precious"), b"do not touch").unwrap();
    expect_refused(
        &["init", s(&dir)],
        "store_path_not_empty",
        &dir,
        &[],
        "init on a non-empty directory",
    );
}

#[test]
fn umount_of_something_not_mounted() {
    let d = scratch();
    let dir = d.path().join("plain");
    fs::create_dir(&dir).unwrap();
    let before = listing(&dir, &[]);
    let out = decofs(&["umount", s(&dir)]);
    assert_human_error(&out, "not_mounted", "umount of a plain directory");
    let out = decofs(&["--json", "umount", s(&dir)]);
    assert_json_error(&out, "not_mounted", "umount of a plain directory");
    assert_same_listing(&before, &listing(&dir, &[]), "umount of a plain directory");
}

// ---- issue 27: a CLI without rough edges ---------------------------------------------

#[test]
fn mount_option_values_are_checked() {
    // Every -o value is checked before anything starts: a bad one is invalid_option,
    // nothing is mounted and the store is not touched (not even its log).
    let d = scratch();
    let store = new_store(d.path(), "store");
    let mnt = d.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _g = Unmounter(vec![mnt.clone()]);
    for bad in [
        "log=banana",
        "allow_other,log=",
        "log=decofs=loud",
        "index=maybe",
        "index_queue=0",
        "index_delay=soon",
        "readahead=fast",
        "readahead=99999999",
        "trash_retention=forever",
        "revisions_keep=-1",
        "revisions_max_age=old",
        "nonempty=1",
        "frobnicate",
    ] {
        expect_refused(
            &["mount", s(&store), s(&mnt), "-o", bad],
            "invalid_option",
            &store,
            &[],
            &format!("mount -o {bad}"),
        );
        assert!(!is_mounted(&mnt), "mount -o {bad} must mount nothing");
    }
    // `mount --help` lists every option the parser takes.
    let out = decofs(&["mount", "--help"]);
    assert!(out.status.success(), "{}", show(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "ro,",
        "rw",
        "allow_other",
        "allow_root",
        "nonempty",
        "dev,",
        "nodev",
        "suid",
        "nosuid",
        "exec,",
        "noexec",
        "atime,",
        "noatime",
        "sync,",
        "async",
        "dirsync",
        "log=LEVEL",
        "trash_retention=",
        "revisions_keep=",
        "revisions_max_age=",
        "index=on",
        "index=off",
        "noindex",
        "index_queue=",
        "index_delay=",
        "readahead=",
        "defaults",
        "noauto",
        "_netdev",
        "nofail",
        "default_permissions",
    ] {
        assert!(help.contains(opt), "mount --help must list {opt}:\n{help}");
    }
    // Good values still mount.
    let out = decofs(&[
        "mount",
        s(&store),
        s(&mnt),
        "-o",
        "allow_other,log=decofs=debug,readahead=0,index_queue=100",
    ]);
    assert!(out.status.success(), "good options: {}", show(&out));
    assert!(is_mounted(&mnt));
}

#[test]
fn mount_on_a_non_empty_directory_needs_nonempty() {
    let d = scratch();
    let store = new_store(d.path(), "store");
    let mnt = d.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    fs::write(mnt.join("precious"), b"hidden by a mount").unwrap();
    let _g = Unmounter(vec![mnt.clone()]);
    let before = listing(&mnt, &[]);
    expect_refused(
        &["mount", s(&store), s(&mnt)],
        "mountpoint_not_empty",
        &store,
        &[],
        "mount on a non-empty directory",
    );
    assert!(!is_mounted(&mnt));
    assert_same_listing(&before, &listing(&mnt, &[]), "the mountpoint");
    // The foreground daemon (systemd, mount.decofs) refuses it alike.
    let out = decofs(&["mount", s(&store), s(&mnt), "--foreground"]);
    assert_human_error(&out, "mountpoint_not_empty", "mount --foreground");
    assert!(!is_mounted(&mnt));
    // -o nonempty mounts over it; the files are back once it is unmounted.
    let out = decofs(&["mount", s(&store), s(&mnt), "-o", "nonempty,allow_other"]);
    assert!(out.status.success(), "mount -o nonempty: {}", show(&out));
    assert!(is_mounted(&mnt));
    assert!(
        !mnt.join("precious").exists(),
        "the mount hides the directory"
    );
    unmount_path(&mnt);
    assert_eq!(
        fs::read(mnt.join("precious")).unwrap(),
        b"hidden by a mount"
    );
}

#[test]
fn trash_purge_without_a_selector_needs_all() {
    let m = Mount::new();
    fs::write(m.path("a"), b"deleted but wanted").unwrap();
    fs::remove_file(m.path("a")).unwrap();
    let mnt = s(&m.mnt);
    let count = || {
        let (c, v, e) = common::dj(&["trash", "ls", mnt]);
        assert_eq!(c, 0, "trash ls: {e}");
        v["entries"].as_array().unwrap().len()
    };
    assert_eq!(count(), 1);
    // No terminal here (stdin is not one): refused, nothing purged.
    let out = decofs(&["trash", "purge", mnt]);
    assert_human_error(&out, "confirmation_required", "trash purge, no selector");
    let out = decofs(&["--json", "trash", "purge", mnt]);
    assert_json_error(&out, "confirmation_required", "trash purge, no selector");
    assert_eq!(count(), 1, "a refused purge purges nothing");
    // --all says it; it does not combine with a selector.
    let out = decofs(&["trash", "purge", mnt, "--all", "--older-than", "1h"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert_eq!(count(), 1);
    let out = decofs(&["trash", "purge", mnt, "--all"]);
    assert!(out.status.success(), "purge --all: {}", show(&out));
    assert_eq!(count(), 0);
}

#[test]
fn versions_of_a_directory_is_an_error() {
    let m = Mount::new();
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("dir/f"), b"1").unwrap();
    fs::write(m.path("dir/f"), b"2").unwrap();
    let dir = m.path("dir");
    let out = decofs(&["versions", "ls", s(&dir)]);
    assert_human_error(&out, "is_a_directory", "versions ls of a directory");
    let out = decofs(&["--json", "versions", "ls", s(&dir)]);
    assert_json_error(&out, "is_a_directory", "versions ls of a directory");
    // A path that is not there: not_found, pointing at the trash (not at --help).
    let out = decofs(&["versions", "ls", s(&m.path("dir/nope"))]);
    assert_human_error(&out, "not_found", "versions ls of a missing file");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("trash ls"),
        "{}",
        show(&out)
    );
    // The mountpoint (the root directory) too, and unmounted through the store.
    let out = decofs(&["versions", "ls", s(&m.mnt)]);
    assert_human_error(&out, "is_a_directory", "versions ls of the root");
    m.unmount();
    let out = decofs(&["versions", "ls", s(&m.store.join("dir"))]);
    assert_human_error(&out, "is_a_directory", "versions ls STORE/dir");
    // A file still lists its versions.
    let out = decofs(&["--json", "versions", "ls", s(&m.store.join("dir/f"))]);
    assert!(out.status.success(), "{}", show(&out));
}

#[test]
fn suggestions_fit_the_mistake() {
    // A path that does not exist, a file, a directory with things in it: none is a
    // place to `decofs init`, so no suggestion says so. An empty directory is.
    let d = scratch();
    let missing = d.path().join("no-such-thing");
    let file = d.path().join("a-file");
    fs::write(&file, b"x").unwrap();
    let full = d.path().join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("x"), b"x").unwrap();
    let mnt = d.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _g = Unmounter(vec![mnt.clone()]);
    for (p, code) in [
        (&missing, "store_not_found"),
        (&file, "not_a_store"),
        (&full, "not_a_store"),
    ] {
        for args in [
            vec!["status", s(p)],
            vec!["fsck", s(p)],
            vec!["scrub", s(p)],
            vec!["gc", s(p)],
            vec!["mount", s(p), s(&mnt)],
        ] {
            let out = decofs(&args);
            assert_human_error(&out, code, &format!("{args:?}"));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !err.contains("init"),
                "{args:?}: suggests init\n{}",
                show(&out)
            );
        }
    }
    // Paths in no store at all.
    for args in [
        vec!["du".to_string(), s(&missing).to_string()],
        vec!["versions".into(), "ls".into(), s(&full.join("x")).into()],
        vec!["trash".into(), "ls".into(), s(&full).into()],
        vec!["changes".into(), s(&missing).into()],
    ] {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = decofs(&a);
        assert_human_error(&out, "store_not_found", &format!("{a:?}"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("init"),
            "{a:?}: suggests init\n{}",
            show(&out)
        );
    }
    // An empty directory: init is the way to make it a store.
    let out = decofs(&["fsck", s(&mnt)]);
    assert_human_error(&out, "not_a_store", "fsck of an empty directory");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("decofs init"), "{}", show(&out));
    assert_eq!(fs::read_dir(&mnt).unwrap().count(), 0, "nothing was made");
}
