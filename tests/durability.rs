//! What fsync promises is on the device, at the moment fsync returns.
//!
//! kill -9 tests cannot show this: the page cache survives a killed daemon. Here the
//! store lives on a loop-mounted ext4 image. The loop device writes into the image
//! file, so a copy of the image taken right after fsync(2) returned is what a power cut
//! at that instant would leave: what ext4 had sent to the device, nothing that was
//! still only in memory. The copy (after e2fsck replays its journal, if it has one) is
//! mounted as a second store, which must pass fsck (orphans and link counts of a crash
//! allowed) and hold the fsynced files byte for byte.
//!
//! Both ext4 modes run: without a journal (as the CI disk) and with one. Without a
//! journal nothing is written back behind decofs's back within the few seconds a test
//! takes (dirty data waits 30 s), so a missing fsync shows up as missing data here.
//! If loop devices are unavailable the test fails: it cannot be checked otherwise.

mod common;

use common::{dj, problems};

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A loop-mounted ext4 image. Dropping it unmounts it (lazily as a last resort).
struct Image {
    img: PathBuf,
    root: PathBuf,
}

impl Image {
    fn new(dir: &Path, name: &str, mkfs: &[&str]) -> Image {
        Image::with_options(dir, name, mkfs, "loop")
    }

    /// `opts`: mount(8) options, `loop` among them.
    fn with_options(dir: &Path, name: &str, mkfs: &[&str], opts: &str) -> Image {
        let img = dir.join(format!("{name}.img"));
        let root = dir.join(name);
        fs::create_dir(&root).unwrap();
        common::mkfs_ext4(&img, 512 << 20, mkfs);
        Image::mount_with(img, root, opts)
    }

    fn mount(img: PathBuf, root: PathBuf) -> Image {
        Image::mount_with(img, root, "loop")
    }

    fn mount_with(img: PathBuf, root: PathBuf, opts: &str) -> Image {
        let out = Command::new("mount")
            .args(["-o", opts])
            .arg(&img)
            .arg(&root)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -o loop {} (loop devices are needed for this test): {}",
            img.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Image { img, root }
    }

    /// What the device holds now, as a new image: a copy of the image file, with its
    /// journal replayed (e2fsck), mounted at `dir/name`.
    fn power_cut_copy(&self, dir: &Path, name: &str) -> Image {
        let img = dir.join(format!("{name}.img"));
        let root = dir.join(name);
        fs::create_dir(&root).unwrap();
        common::sh(&format!(
            "cp --sparse=always '{}' '{}'",
            self.img.display(),
            img.display()
        ));
        // As after a power cut: e2fsck replays the journal, or (no journal) repairs
        // what was half written. Exit 0-2: clean or fixed.
        let out = Command::new("e2fsck")
            .args(["-f", "-y"])
            .arg(&img)
            .output()
            .unwrap();
        eprintln!(
            "e2fsck of the power-cut image: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            matches!(out.status.code(), Some(0..=2)),
            "e2fsck could not repair the device image: {out:?}"
        );
        Image::mount(img, root)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        common::umount_fs(&self.root);
    }
}

/// A decofs mount, undone in every outcome.
struct Decofs(PathBuf);

impl Decofs {
    fn mount(store: &Path, mnt: &Path) -> Decofs {
        fs::create_dir_all(mnt).unwrap();
        let out = common::decofs(&[
            "mount",
            store.to_str().unwrap(),
            mnt.to_str().unwrap(),
            "-o",
            "allow_other",
        ]);
        assert!(out.status.success(), "mount: {out:?}");
        Decofs(mnt.to_path_buf())
    }
}

impl Drop for Decofs {
    fn drop(&mut self) {
        common::unmount_path(&self.0);
    }
}

fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut r = fastrand::Rng::with_seed(seed);
    let mut d = vec![0u8; len];
    r.fill(&mut d);
    d
}

fn fsync_path(p: &Path) {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(p)
        .unwrap();
    f.sync_all().unwrap();
}

/// What `decofs status` of `mnt` says of ordering closes (see `closed_files_...`).
fn close_orders_blobs(mnt: &Path) -> Option<bool> {
    let (c, v, e) = dj(&["status", mnt.to_str().unwrap()]);
    assert_eq!(c, 0, "status: {v} {e}");
    v["close_orders_blobs"].as_bool()
}

fn fsynced_files_survive_a_power_cut(mkfs: &[&str]) {
    let dir = tempfile::Builder::new()
        .prefix("decofs-durable")
        .tempdir_in(common::test_root())
        .unwrap();
    let disk = Image::new(dir.path(), "disk", mkfs);
    let store = disk.root.join("store");
    let out = common::decofs(&["init", store.to_str().unwrap()]);
    assert!(out.status.success(), "init: {out:?}");
    // Everything before the workload is on the device (as after a long idle time).
    common::sh("sync");
    let mnt = dir.path().join("mnt");
    let m = Decofs::mount(&store, &mnt);
    // A close waits for its blobs' bytes only where that orders them before the record.
    let journal = !mkfs.contains(&"^has_journal");
    assert_eq!(
        close_orders_blobs(&mnt),
        Some(journal),
        "journal: {journal}"
    );
    // The workload's files are made from spares (store/spare.rs), whose inodes were made
    // ahead in another block group: wait until some are ready.
    common::wait_for_spares(&mnt, 8);

    // Names whose inodes are made on the spot (no spare): symlinks, directories, FIFOs
    // and hard links, in a new directory, then it and its parent fsynced. Enough of
    // them that their inodes span many inode-table blocks, which nothing else writes
    // (the spares are all made: their thread is idle, so no syncfs of its own).
    fs::create_dir(mnt.join("e")).unwrap();
    fs::write(mnt.join("e/target"), b"linked").unwrap();
    for i in 0..64 {
        std::os::unix::fs::symlink(format!("to/{i}"), mnt.join(format!("e/s{i}"))).unwrap();
    }
    for i in 0..8 {
        fs::create_dir(mnt.join(format!("e/sub{i}"))).unwrap();
        fs::hard_link(mnt.join("e/target"), mnt.join(format!("e/l{i}"))).unwrap();
        common::sh(&format!("mkfifo {}", mnt.join(format!("e/p{i}")).display()));
    }
    fs::File::open(mnt.join("e/target"))
        .unwrap()
        .sync_all()
        .unwrap();
    fsync_path(&mnt.join("e"));
    fsync_path(&mnt);

    // The workload: a new directory; in it a small file, a two-chunk file and a file
    // rewritten after it was fsynced (the second version fsynced too), each fsynced and
    // then the directory fsynced, as careful programs do. Plus a file written but never
    // fsynced, which may or may not survive, but must never be garbage.
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("small", data(1, 3000)),
        ("two-chunks", data(2, (4 << 20) + 12345)),
        ("rewritten", data(3, 100_000)),
    ];
    fs::create_dir(mnt.join("d")).unwrap();
    fsync_path(&mnt);
    for (name, bytes) in &files {
        let mut f = fs::File::create(mnt.join("d").join(name)).unwrap();
        f.write_all(bytes).unwrap();
        f.sync_all().unwrap();
    }
    let second = data(4, 150_000);
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(mnt.join("d/rewritten"))
            .unwrap();
        f.write_all(&second).unwrap();
        f.sync_all().unwrap();
    }
    // A database's pattern: one descriptor kept open, pages rewritten in place (one
    // across a chunk boundary) and the file grown, each fsynced. After the first, the
    // fsyncs log only the written bytes (deltas, store/fsynclog.rs), and the descriptor
    // is still open at the cut, so only the fsync log holds them.
    let mut db_want = data(7, (4 << 20) + 200_000);
    let db = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(mnt.join("d/db"))
        .unwrap();
    db.write_all_at(&db_want, 0).unwrap();
    db.sync_all().unwrap();
    fsync_path(&mnt.join("d"));
    let pages = [100usize, (4 << 20) - 1000, 3_000_000, (4 << 20) + 199_000];
    for (i, off) in pages.into_iter().enumerate() {
        let page = data(8 + i as u64, 4096);
        db.write_all_at(&page, off as u64).unwrap();
        if db_want.len() < off + page.len() {
            db_want.resize(off + page.len(), 0);
        }
        db_want[off..off + page.len()].copy_from_slice(&page);
        db.sync_all().unwrap();
    }
    // A database's journal: a new file written and fsynced (its record, still empty,
    // and the bytes written are logged, no blob: store/content.rs `log_first_delta`),
    // its directory fsynced, its header rewritten and more appended, fsynced again, and
    // still open at the cut. Its mode comes back too: the record is logged, not only
    // the bytes.
    let mut journal_want = data(9, 9000);
    let journal = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(mnt.join("d/journal"))
        .unwrap();
    journal.write_all_at(&journal_want, 0).unwrap();
    journal.sync_all().unwrap();
    fsync_path(&mnt.join("d"));
    let header = data(10, 512);
    journal.write_all_at(&header, 0).unwrap();
    journal_want[..512].copy_from_slice(&header);
    let more = data(11, 4096);
    journal.write_all_at(&more, 9000).unwrap();
    journal_want.extend_from_slice(&more);
    journal.sync_all().unwrap();

    let unsynced = data(5, 50_000);
    fs::write(mnt.join("d/unsynced"), &unsynced).unwrap();

    // Files written and closed, never fsynced, in a directory synced before them
    // (last, so that no syncfs made for another directory covers them):
    // fsyncdir makes their names durable, so they must be there after the cut, empty
    // or whole (these are made from spares, so only their records are new).
    fs::create_dir(mnt.join("f")).unwrap();
    fsync_path(&mnt);
    let written = data(6, 5000);
    for i in 0..4 {
        fs::write(mnt.join(format!("f/w{i}")), &written).unwrap();
    }
    fsync_path(&mnt.join("f"));

    // The power cut, while the daemon still runs.
    let copy = disk.power_cut_copy(dir.path(), "after-cut");
    drop(db);
    drop(journal);
    drop(m);

    let cstore = copy.root.join("store");
    // What the cut left for the fsync log's replay (run by fsck's open below).
    let logs = fs::read_dir(cstore.join("journal"))
        .map(|d| d.count())
        .unwrap_or(0);
    eprintln!("fsync logs in the cut copy: {logs}");
    let (c, v, e) = dj(&["fsck", "--repair", "--grace", "0", cstore.to_str().unwrap()]);
    let ps = problems(&v);
    assert!(c == 0 || c == 1, "fsck after the power cut: {c} {v:#} {e}");
    // What a crash may leave (tests/check.rs), plus one thing only a power cut leaves:
    // revisions are written without fsync, so the newest can be lost, or, with a
    // journal that committed their rename before their data, be empty. fsck removes
    // an empty one. The fsynced content itself must be whole (checked below).
    let allowed = [
        "orphan",
        "unbound_node",
        "nlink_mismatch",
        "corrupt_revision",
    ];
    assert!(
        ps.iter().all(|p| allowed.contains(&p.0.as_str()) && p.2),
        "the power cut left more than a crash may: {ps:?}"
    );
    let (c, v, _) = dj(&["fsck", "--grace", "0", cstore.to_str().unwrap()]);
    assert_eq!(c, 0, "clean after repair: {v:#}");
    let cm = dir.path().join("cmnt");
    let _cm = Decofs::mount(&cstore, &cm);
    for (name, bytes) in &files {
        let want = if *name == "rewritten" { &second } else { bytes };
        let got = fs::read(cm.join("d").join(name))
            .unwrap_or_else(|e| panic!("{name} after the power cut: {e}"));
        common::assert_bytes_eq(&got, want, name);
    }
    let got = fs::read(cm.join("d/db")).expect("db after the power cut");
    common::assert_bytes_eq(
        &got,
        &db_want,
        "db (fsynced in place, still open at the cut)",
    );
    let got = fs::read(cm.join("d/journal")).expect("journal after the power cut");
    common::assert_bytes_eq(&got, &journal_want, "journal (new, fsynced twice, open)");
    let mode = fs::metadata(cm.join("d/journal"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(
        mode, 0o640,
        "the journal's mode after the power cut: {mode:o}"
    );
    let e = cm.join("e");
    for i in 0..64 {
        let t = fs::read_link(e.join(format!("s{i}")))
            .unwrap_or_else(|err| panic!("symlink s{i} after the power cut: {err}"));
        assert_eq!(t, Path::new(&format!("to/{i}")));
    }
    for i in 0..8 {
        use std::os::unix::fs::FileTypeExt;
        let m = fs::symlink_metadata(e.join(format!("sub{i}")))
            .unwrap_or_else(|err| panic!("directory sub{i} after the power cut: {err}"));
        assert!(m.is_dir());
        let m = fs::symlink_metadata(e.join(format!("p{i}")))
            .unwrap_or_else(|err| panic!("FIFO p{i} after the power cut: {err}"));
        assert!(m.file_type().is_fifo());
        let got = fs::read(e.join(format!("l{i}")))
            .unwrap_or_else(|err| panic!("hard link l{i} after the power cut: {err}"));
        assert_eq!(got, b"linked");
    }
    for i in 0..4 {
        let got = fs::read(cm.join(format!("f/w{i}")))
            .unwrap_or_else(|err| panic!("f/w{i} after the power cut: {err}"));
        assert!(
            got.is_empty() || got == written,
            "f/w{i}: {} other bytes",
            got.len()
        );
    }
    match fs::read(cm.join("d/unsynced")) {
        Ok(got) => assert!(
            got.is_empty() || got == unsynced,
            "a file never fsynced is empty or whole after a power cut, not {} other bytes",
            got.len()
        ),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "unsynced: {e}"),
    }
}

#[test]
fn fsync_is_on_the_device_ext4_without_journal() {
    fsynced_files_survive_a_power_cut(&["-O", "^has_journal"]);
}

#[test]
fn fsync_is_on_the_device_ext4_with_journal() {
    fsynced_files_survive_a_power_cut(&[]);
}

/// Invariant 1 across a power cut, for files closed but never fsynced: a record may name
/// a blob only once the blob's bytes are on the device, so after the cut each such file
/// reads its old content or its new one, whole, and fsck finds no lost blob. With a
/// journal, a record's change is committed within the commit interval (1 s here) while
/// delayed allocation could keep a new blob's bytes in memory for 30 s.
#[test]
fn closed_files_are_old_or_new_after_a_power_cut_ext4_with_journal() {
    let dir = tempfile::Builder::new()
        .prefix("decofs-closed")
        .tempdir_in(common::test_root())
        .unwrap();
    let disk = Image::with_options(dir.path(), "disk", &[], "loop,commit=1");
    let store = disk.root.join("store");
    let out = common::decofs(&["init", store.to_str().unwrap()]);
    assert!(out.status.success(), "init: {out:?}");
    let mnt = dir.path().join("mnt");
    let m = Decofs::mount(&store, &mnt);
    common::wait_for_spares(&mnt, 8);
    assert_eq!(
        close_orders_blobs(&mnt),
        Some(true),
        "a journal orders closes"
    );
    // Sizes past what a record holds inline, one of them two chunks.
    let sizes = [5_000usize, 40_000, 100_000, 700_000, (4 << 20) + 5_000];
    let names: Vec<String> = (0..16).map(|i| format!("f{i}")).collect();
    let old = |i: usize| data(100 + i as u64, sizes[i % sizes.len()]);
    let new = |i: usize| data(200 + i as u64, sizes[(i + 2) % sizes.len()]);
    for (i, n) in names.iter().enumerate() {
        fs::write(mnt.join(n), old(i)).unwrap();
    }
    // The old versions on the device, as after a long idle time.
    common::wait_for_no_sessions(&mnt);
    common::sh("sync");
    for (i, n) in names.iter().enumerate() {
        fs::write(mnt.join(n), new(i)).unwrap();
    }
    // Three journal commits: every record change made above is committed.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let copy = disk.power_cut_copy(dir.path(), "after-cut");
    drop(m);

    let cstore = copy.root.join("store");
    let (c, v, e) = dj(&["fsck", "--grace", "0", cstore.to_str().unwrap()]);
    let ps = problems(&v);
    let lost: Vec<_> = ps
        .iter()
        .filter(|p| p.0.contains("blob") || p.0.contains("integrity"))
        .collect();
    assert!(
        lost.is_empty(),
        "records name blobs that did not reach the device (fsck exit {c}): {lost:?} {e}"
    );
    let (c, v, e) = dj(&["fsck", "--repair", "--grace", "0", cstore.to_str().unwrap()]);
    assert!(
        c == 0 || c == 1,
        "fsck --repair after the cut: {c} {v:#} {e}"
    );
    let cm = dir.path().join("cmnt");
    let _cm = Decofs::mount(&cstore, &cm);
    for (i, n) in names.iter().enumerate() {
        let got = fs::read(cm.join(n)).unwrap_or_else(|e| panic!("{n} after the cut: {e}"));
        assert!(
            got == old(i) || got == new(i),
            "{n} after the cut is neither its old nor its new content ({} bytes)",
            got.len()
        );
    }
}

/// The power cut now: the device's copy, its fsync log replayed and repaired by fsck
/// (what a crash may leave allowed), mounted. Dropped in order: the mount, the image.
fn cut_and_mount(disk: &Image, dir: &Path, name: &str) -> (Decofs, Image, PathBuf) {
    let copy = disk.power_cut_copy(dir, name);
    let cstore = copy.root.join("store");
    let (c, v, e) = dj(&["fsck", "--repair", "--grace", "0", cstore.to_str().unwrap()]);
    let allowed = [
        "orphan",
        "unbound_node",
        "nlink_mismatch",
        "corrupt_revision",
    ];
    assert!(
        (c == 0 || c == 1) && problems(&v).iter().all(|p| allowed.contains(&p.0.as_str())),
        "fsck --repair after the cut: {c} {v:#} {e}"
    );
    let cm = dir.join(format!("{name}-mnt"));
    let m = Decofs::mount(&cstore, &cm);
    (m, copy, cm)
}

/// fsyncdir of a directory whose new entries are files whose fsyncs logged their names
/// syncs nothing more (docs/DESIGN.md, "Fsyncdir debts"): the names must survive a cut
/// right after it, and a name unlinked since, whose tombstone a later fsync carried,
/// must not come back.
fn names_through_the_log_survive_a_power_cut(mkfs: &[&str]) {
    let dir = tempfile::Builder::new()
        .prefix("decofs-names")
        .tempdir_in(common::test_root())
        .unwrap();
    let disk = Image::new(dir.path(), "disk", mkfs);
    let store = disk.root.join("store");
    let out = common::decofs(&["init", store.to_str().unwrap()]);
    assert!(out.status.success(), "init: {out:?}");
    common::sh("sync");
    let mnt = dir.path().join("mnt");
    let m = Decofs::mount(&store, &mnt);
    common::wait_for_spares(&mnt, 8);
    fs::create_dir(mnt.join("d")).unwrap();
    fsync_path(&mnt);

    // create, write, fsync, fsyncdir, cut: the name exists with the content.
    let a = data(20, 7000);
    {
        let mut f = fs::File::create(mnt.join("d/a")).unwrap();
        f.write_all(&a).unwrap();
        f.sync_all().unwrap();
    }
    fsync_path(&mnt.join("d"));
    {
        let (_m, _img, cm) = cut_and_mount(&disk, dir.path(), "cut1");
        let got = fs::read(cm.join("d/a")).expect("d/a after the cut");
        common::assert_bytes_eq(&got, &a, "d/a");
    }

    // create, fsync, fsyncdir, unlink, another file's fsync (carries the tombstone),
    // cut: the name is gone, the other file's content is there.
    let b = data(21, 5000);
    {
        let mut f = fs::File::create(mnt.join("d/b-journal")).unwrap();
        f.write_all(&b).unwrap();
        f.sync_all().unwrap();
    }
    fsync_path(&mnt.join("d"));
    fs::remove_file(mnt.join("d/b-journal")).unwrap();
    let c = data(22, 3000);
    let cf = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(mnt.join("d/a"))
        .unwrap();
    cf.write_all_at(&c, 0).unwrap();
    cf.sync_all().unwrap();
    let mut a2 = a.clone();
    a2[..c.len()].copy_from_slice(&c);
    {
        let (_m, _img, cm) = cut_and_mount(&disk, dir.path(), "cut2");
        assert!(
            !cm.join("d/b-journal").exists(),
            "a name whose removal a later fsync carried came back"
        );
        let got = fs::read(cm.join("d/a")).expect("d/a after the second cut");
        common::assert_bytes_eq(&got, &a2, "d/a rewritten");
    }
    drop(cf);
    drop(m);
}

#[test]
fn names_through_the_log_survive_a_power_cut_ext4_with_journal() {
    names_through_the_log_survive_a_power_cut(&[]);
}

#[test]
fn names_through_the_log_survive_a_power_cut_ext4_without_journal() {
    names_through_the_log_survive_a_power_cut(&["-O", "^has_journal"]);
}

/// sqlite in its default journal mode, a power cut after each acknowledged commit:
/// the database is whole and holds every committed row. With synchronous=FULL sqlite
/// does not sync the journal's removal, so the last commit may be rolled back (as on
/// any disk); with EXTRA it does, and every commit stays.
#[test]
fn sqlite_commits_survive_a_power_cut() {
    if Command::new("sqlite3").arg("--version").output().is_err() {
        panic!("sqlite3 (the command-line shell) is needed for this test");
    }
    let dir = tempfile::Builder::new()
        .prefix("decofs-sqlite")
        .tempdir_in(common::test_root())
        .unwrap();
    let disk = Image::new(dir.path(), "disk", &[]);
    let store = disk.root.join("store");
    let out = common::decofs(&["init", store.to_str().unwrap()]);
    assert!(out.status.success(), "init: {out:?}");
    common::sh("sync");
    let mnt = dir.path().join("mnt");
    let m = Decofs::mount(&store, &mnt);
    common::wait_for_spares(&mnt, 8);
    let sqlite = |db: &Path, sql: &str| -> String {
        let out = Command::new("sqlite3").arg(db).arg(sql).output().unwrap();
        assert!(out.status.success(), "sqlite3 {sql}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let mut cut = 0;
    for sync in ["FULL", "EXTRA"] {
        let db = mnt.join(format!("{sync}.db"));
        sqlite(
            &db,
            "PRAGMA journal_mode=DELETE; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);",
        );
        fsync_path(&mnt);
        for k in 1..=3 {
            sqlite(
                &db,
                &format!(
                    "PRAGMA synchronous={sync}; INSERT INTO t(id, v) VALUES({k}, randomblob(3000));"
                ),
            );
            cut += 1;
            let (_m, _img, cm) = cut_and_mount(&disk, dir.path(), &format!("cut{cut}"));
            let cdb = cm.join(format!("{sync}.db"));
            assert_eq!(
                sqlite(&cdb, "PRAGMA integrity_check;"),
                "ok",
                "{sync} after {k}"
            );
            let n: u32 = sqlite(&cdb, "SELECT count(*) FROM t;").parse().unwrap();
            let lowest = if sync == "FULL" { k - 1 } else { k };
            assert!(
                (lowest..=k).contains(&n),
                "synchronous={sync}: {n} rows after a cut following commit {k}"
            );
        }
    }
    drop(m);
}
