//! Real tools on a real mount: cp -a, mv, rsync, tar, git and sqlite3 do their ordinary
//! work on decofs and the result is compared byte for byte (and metadata for metadata)
//! with the same work on the backing disk, before and after an unmount + remount.
//!
//! Nothing is skipped: a missing tool fails the test and names the tool (scripts/test
//! installs them all).

mod common;

use common::{sh, Mount};
use std::fs;
use std::path::{Path, PathBuf};

/// Fail loudly, naming the tool, if it is not installed.
fn need(tools: &[&str]) {
    for t in tools {
        let found = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "required tool `{t}` is not installed (scripts/test installs it)"
        );
    }
}

/// Single-quote a path for bash.
fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// Scratch space on the backing disk (ext4), next to the test stores.
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tools-scratch")
        .tempdir_in(common::test_root())
        .unwrap()
}

/// `diff -r` that compares symlinks as links; panics with the diff output on a difference.
fn assert_same_tree(a: &Path, b: &Path) {
    sh(&format!("diff -r --no-dereference {} {}", q(a), q(b)));
}

/// Metadata of every entry under `dir` (not the dir itself): type, permissions, owner,
/// size of regular files, mtime to the nanosecond, symlink target.
fn manifest(dir: &Path) -> String {
    sh(&format!(
        "cd {} && find . -mindepth 1 \\( -type f -printf '%p f %m %U:%G %s %T@\\n' \\) \
         -o \\( -type d -printf '%p d %m %U:%G %T@\\n' \\) \
         -o \\( -type l -printf '%p l %U:%G -> %l\\n' \\) \
         -o -printf '%p %y %m %U:%G\\n' | LC_ALL=C sort",
        q(dir)
    ))
}

/// sha256 of every regular file under `dir`, by relative path.
fn checksums(dir: &Path) -> String {
    sh(&format!(
        "cd {} && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum",
        q(dir)
    ))
}

fn assert_same_text(what: &str, a: &str, b: &str) {
    if a != b {
        let al: Vec<&str> = a.lines().collect();
        let bl: Vec<&str> = b.lines().collect();
        let mut diffs = Vec::new();
        for l in &al {
            if !bl.contains(l) {
                diffs.push(format!("- {l}"));
            }
        }
        for l in &bl {
            if !al.contains(l) {
                diffs.push(format!("+ {l}"));
            }
        }
        diffs.truncate(40);
        panic!(
            "{what} differ ({} vs {} lines):\n{}",
            al.len(),
            bl.len(),
            diffs.join("\n")
        );
    }
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                n += count_files(&e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

/// A copy on the backing disk of a real source tree of at least `min_files` files: whole
/// crates from the cargo registry, topped up with generated files if the registry is small.
/// Copying first keeps the test independent of anything that changes the registry meanwhile.
fn real_tree(dest: &Path, min_files: usize) {
    fs::create_dir_all(dest).unwrap();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    let mut crates: Vec<PathBuf> = Vec::new();
    if let Ok(indexes) = fs::read_dir(cargo_home.join("registry/src")) {
        for idx in indexes.flatten() {
            if let Ok(rd) = fs::read_dir(idx.path()) {
                crates.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
    }
    crates.sort_by_key(|p| p.file_name().unwrap().to_owned());
    crates.dedup_by_key(|p| p.file_name().unwrap().to_owned());
    let mut n = 0;
    for c in crates {
        if n >= min_files {
            break;
        }
        sh(&format!("cp -a {} {}/", q(&c), q(dest)));
        n += count_files(&dest.join(c.file_name().unwrap()));
    }
    if n < min_files {
        let gen = dest.join("generated");
        for i in 0..(min_files - n) {
            let d = gen.join(format!("d{:02}", i % 37));
            fs::create_dir_all(&d).unwrap();
            let body = format!("generated file {i}\n").repeat(1 + (i * 7919) % 300);
            fs::write(d.join(format!("f{i:05}.txt")), body).unwrap();
        }
    }
    assert!(count_files(dest) >= min_files);
}

/// A small tree with the things tools trip over: empty files and dirs, chunk-boundary
/// sizes, a multi-chunk random file, a sparse file, symlinks (relative, absolute,
/// dangling), odd names, modes, and old timestamps.
fn special_tree(dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    sh(&format!(
        r#"set -e; cd {d}
        mkdir -p empty-dir 'dir with spaces/inner' ünïcødé/ß deep/a/b/c/d/e/f/g
        : > empty-file
        printf x > one-byte
        head -c 4095 /dev/urandom > 4095
        head -c 4096 /dev/urandom > 4096
        head -c 4194304 /dev/urandom > 4MiB
        head -c 4194305 /dev/urandom > 4MiB+1
        head -c 9437283 /dev/urandom > 'dir with spaces/9MiB-random'
        truncate -s 20M sparse && printf tail >> sparse && printf head | dd of=sparse conv=notrunc status=none
        echo hello > ünïcødé/ß/grüße.txt
        echo deep > deep/a/b/c/d/e/f/g/leaf
        echo '#!/bin/sh' > script.sh && chmod 755 script.sh
        echo secret > private && chmod 600 private
        echo ro > readonly && chmod 444 readonly
        echo dash > ./-dash && echo hash > '#hash' && echo nl > 'new
line'
        ln -s one-byte rel-link
        ln -s /etc/hostname abs-link
        ln -s does/not/exist dangling-link
        ln -s ../../4096 'dir with spaces/inner/up-link'
        chmod 750 deep/a
        touch -d '2001-02-03 04:05:06.123456789' one-byte deep/a/b/c/d/e/f/g/leaf
        touch -h -d '1999-12-31 23:59:59' rel-link
        "#,
        d = q(dest)
    ));
}

#[test]
fn cp_a_thousands_of_files_then_remount() {
    need(&["cp", "diff", "find", "sha256sum"]);
    let s = scratch();
    let src = s.path().join("src");
    real_tree(&src, 3000);
    special_tree(&src.join("special"));
    let m = Mount::new();
    let dst = m.path("tree");

    sh(&format!("cp -a {} {}", q(&src), q(&dst)));
    assert_same_tree(&src, &dst);
    let want = manifest(&src);
    assert_same_text(
        "metadata after cp -a (ext4 vs decofs)",
        &want,
        &manifest(&dst),
    );
    let sums = checksums(&src);
    assert_same_text("checksums after cp -a", &sums, &checksums(&dst));

    m.remount();
    assert_same_tree(&src, &dst);
    assert_same_text("metadata after remount", &want, &manifest(&dst));
    assert_same_text("checksums after remount", &sums, &checksums(&dst));

    // A second cp -a over the existing tree (overwrites every file in place).
    sh(&format!("cp -a {}/. {}/", q(&src), q(&dst)));
    assert_same_tree(&src, &dst);
    assert_same_text("metadata after cp -a over itself", &want, &manifest(&dst));
    m.unmount();
    common::assert_counts_exact(&m.store, "after cp -a twice");
}

#[test]
fn mv_files_and_directories() {
    need(&["mv", "find"]);
    let m = Mount::new();
    let s = scratch();
    let root = m.path("mv");
    sh(&format!(
        r#"set -e; mkdir -p {r}/a/sub/subsub {r}/b {r}/c/empty
        cd {r}
        echo f1 > a/f1; echo f2 > a/f2; echo f3 > a/f3; echo y > b/y
        echo s1 > a/sub/s1; echo ss > a/sub/subsub/ss
        head -c 5000000 /dev/urandom > a/big
        cp a/big {scratch}/big.orig
        mv a/f1 a/f1-renamed            # rename in place
        mv a/f2 b/                      # across directories, same name
        mv a/f3 b/y                     # over an existing file
        mv a/sub b/sub2                 # directory with contents, new name
        mv b/sub2/subsub a/             # nested directory back up
        mv a/big c/empty/big            # into a deeper directory
        mv -T b/sub2 c/empty2           # directory onto a new name via -T
        mkdir c/target && mv -T a/subsub c/target  # directory onto an existing empty dir
        "#,
        r = q(&root),
        scratch = q(s.path())
    ));
    let expect = "\
./a
./a/f1-renamed
./b
./b/f2
./b/y
./c
./c/empty
./c/empty/big
./c/empty2
./c/empty2/s1
./c/target
./c/target/ss
";
    let check = |when: &str| {
        let listing = sh(&format!(
            "cd {} && find . -mindepth 1 | LC_ALL=C sort",
            q(&root)
        ));
        assert_eq!(listing, expect, "names after mv ({when})");
        let read = |p: &str| fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(read("a/f1-renamed"), "f1\n", "{when}");
        assert_eq!(read("b/f2"), "f2\n", "{when}");
        assert_eq!(
            read("b/y"),
            "f3\n",
            "mv over an existing file keeps the moved content ({when})"
        );
        assert_eq!(read("c/empty2/s1"), "s1\n", "{when}");
        assert_eq!(read("c/target/ss"), "ss\n", "{when}");
        sh(&format!(
            "cmp {} {}",
            q(&root.join("c/empty/big")),
            q(&s.path().join("big.orig"))
        ));
    };
    check("before remount");

    // Across filesystems: mv falls back to copy + unlink in both directions.
    let out = s.path().join("out");
    sh(&format!("mv {} {}", q(&root.join("c")), q(&out)));
    assert!(!root.join("c").exists(), "moved-out dir still on the mount");
    sh(&format!(
        "cmp {} {}",
        q(&out.join("empty/big")),
        q(&s.path().join("big.orig"))
    ));
    sh(&format!("mv {} {}", q(&out), q(&root.join("c"))));
    assert!(!out.exists());
    check("after moving c out and back");

    m.remount();
    check("after remount");
}

#[test]
fn rsync_round_trip() {
    need(&["rsync", "diff", "find"]);
    let s = scratch();
    let src = s.path().join("src");
    real_tree(&src, 500);
    special_tree(&src.join("special"));
    // rsync leaves a directory's mtime alone when it already matches to the second (it
    // does so on ext4 too), so give the source directories a time in the past.
    let age_dirs = |d: &Path| {
        sh(&format!(
            "find {} -type d -exec touch -d '2020-01-02 03:04:05.123456789' {{}} +",
            q(d)
        ))
    };
    age_dirs(&src);
    let back = s.path().join("back");
    let m = Mount::new();
    let on = m.path("r");

    sh(&format!("rsync -a {}/ {}/", q(&src), q(&on)));
    sh(&format!("rsync -a {}/ {}/", q(&on), q(&back)));
    assert_same_tree(&src, &on);
    assert_same_tree(&src, &back);
    let want = manifest(&src);
    assert_same_text("metadata src vs mount", &want, &manifest(&on));
    assert_same_text("metadata src vs round trip", &want, &manifest(&back));

    // Nothing changed, so a second rsync must find nothing to transfer (sizes and
    // nanosecond mtimes read back exactly as they were set).
    let again = sh(&format!(
        "rsync -a --itemize-changes {}/ {}/",
        q(&src),
        q(&on)
    ));
    assert_eq!(again, "", "second rsync found differences");

    // Changes are carried over incrementally, deletions included.
    sh(&format!(
        "set -e; cd {s}; echo changed >> special/one-byte; rm -r special/deep; mkdir new; echo n > new/n",
        s = q(&src)
    ));
    age_dirs(&src);
    sh(&format!("rsync -a --delete {}/ {}/", q(&src), q(&on)));
    m.remount();
    assert_same_tree(&src, &on);
    assert_same_text(
        "metadata after incremental rsync + remount",
        &manifest(&src),
        &manifest(&on),
    );
}

#[test]
fn rsync_hardlinks_and_xattrs() {
    need(&["rsync", "setfattr", "getfattr", "diff"]);
    let s = scratch();
    let src = s.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    sh(&format!(
        r#"set -e; cd {s}
        echo shared > a; ln a d/a-link; ln a b
        echo x > x; setfattr -n user.color -v blue x; setfattr -n user.empty x
        head -c 300 /dev/urandom | base64 -w0 > v; setfattr -n user.long -v "$(cat v)" x
        mkdir xd; setfattr -n user.dir -v yes xd"#,
        s = q(&src)
    ));
    let m = Mount::new();
    let on = m.path("r");
    let back = s.path().join("back");
    sh(&format!("rsync -aHX {}/ {}/", q(&src), q(&on)));
    sh(&format!("rsync -aHX {}/ {}/", q(&on), q(&back)));
    let links = |d: &Path| {
        sh(&format!("cd {} && stat -c '%n %h' a b d/a-link x && [ a -ef b ] && [ a -ef d/a-link ] && echo same", q(d)))
    };
    let xattrs = |d: &Path| {
        sh(&format!(
            "cd {} && getfattr -h --absolute-names -d -m '^user\\.(color|empty|long|dir)$' x xd",
            q(d)
        ))
    };
    for d in [&on, &back] {
        assert_same_tree(&src, d);
        assert_eq!(links(&src), links(d), "hard links in {}", d.display());
        assert_eq!(xattrs(&src), xattrs(d), "xattrs in {}", d.display());
    }
    m.remount();
    assert_eq!(links(&src), links(&on), "hard links after remount");
    assert_eq!(xattrs(&src), xattrs(&on), "xattrs after remount");
}

#[test]
fn tar_round_trip() {
    need(&["tar", "diff", "find"]);
    let s = scratch();
    let src = s.path().join("src");
    real_tree(&src, 500);
    special_tree(&src.join("special"));
    let back = s.path().join("back");
    fs::create_dir_all(&back).unwrap();
    let m = Mount::new();
    let on = m.path("t");
    fs::create_dir(&on).unwrap();

    sh(&format!(
        "set -o pipefail; tar -C {} -cf - . | tar -C {} -xpf -",
        q(&src),
        q(&on)
    ));
    sh(&format!(
        "set -o pipefail; tar -C {} -cf - . | tar -C {} -xpf -",
        q(&on),
        q(&back)
    ));
    assert_same_tree(&src, &on);
    assert_same_tree(&src, &back);
    // tar keeps mtimes to the second only, so compare everything but the time.
    let untimed = |d: &Path| {
        sh(&format!(
            "cd {} && find . -mindepth 1 -printf '%p %y %m %U:%G %l\\n' | LC_ALL=C sort",
            q(d)
        ))
    };
    assert_same_text(
        "metadata src vs tar onto mount",
        &untimed(&src),
        &untimed(&on),
    );
    assert_same_text(
        "metadata src vs tar round trip",
        &untimed(&src),
        &untimed(&back),
    );

    // An archive written onto the mount reads back the same.
    let ar = m.path("archive.tar.gz");
    sh(&format!("tar -C {} -czf {} .", q(&src), q(&ar)));
    sh(&format!("gzip -t {}", q(&ar)));
    m.remount();
    let again = s.path().join("again");
    fs::create_dir_all(&again).unwrap();
    sh(&format!("tar -C {} -xzpf {}", q(&again), q(&ar)));
    assert_same_tree(&src, &again);
    assert_same_tree(&src, &on);
}

fn git(dir: &Path, args: &str) -> String {
    sh(&format!(
        "cd {} && GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null git -c user.name=decofs-test \
         -c user.email=test@decofs.invalid -c safe.directory='*' -c init.defaultBranch=main \
         -c gc.auto=0 {args}",
        q(dir)
    ))
}

#[test]
fn git_workflow() {
    need(&["git", "diff"]);
    let s = scratch();
    let src = s.path().join("src");
    real_tree(&src, 300);
    let m = Mount::new();
    let repo = m.path("repo");
    sh(&format!("cp -a {} {}", q(&src), q(&repo)));
    // git does not track empty directories, so the clone compared below would lack them.
    sh(&format!(
        "find {} -mindepth 1 -type d -empty -delete",
        q(&repo)
    ));

    git(&repo, "init -q");
    // -f: the crates' .gitignore files would leave files out of the clone compared below.
    git(&repo, "add -A -f");
    git(&repo, "commit -q -m first");
    assert_eq!(
        git(&repo, "status --porcelain"),
        "",
        "clean after the first commit"
    );

    // Edit, rename, delete, add; commit again.
    sh(&format!(
        "set -e; cd {r}; export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null; \
         f=$(git ls-files | grep -m1 '\\.rs$'); echo '// edited' >> \"$f\"; \
         g=$(git ls-files | sed -n 5p); git mv \"$g\" renamed-file; \
         h=$(git ls-files | sed -n 9p); git rm -q \"$h\"; echo new > brand-new",
        r = q(&repo)
    ));
    git(&repo, "add -A");
    git(&repo, "commit -q -m second");
    assert_eq!(git(&repo, "status --porcelain"), "");
    git(&repo, "gc --quiet");
    git(&repo, "fsck --full --strict --no-progress");
    assert_eq!(git(&repo, "rev-list --count HEAD").trim(), "2");
    assert_eq!(git(&repo, "status --porcelain"), "", "clean after gc");

    // A clone made from the mount has the same working tree (`git mv` leaves the source
    // directory behind when it empties it; git does not track empty directories).
    sh(&format!(
        "find {} -mindepth 1 -type d -empty -not -path '*/.git/*' -delete",
        q(&repo)
    ));
    let clone = s.path().join("clone");
    git(s.path(), &format!("clone -q {} {}", q(&repo), q(&clone)));
    sh(&format!(
        "diff -r --no-dereference --exclude=.git {} {}",
        q(&repo),
        q(&clone)
    ));

    m.remount();
    assert_eq!(git(&repo, "status --porcelain"), "", "clean after remount");
    git(&repo, "fsck --full --strict --no-progress");
    assert_eq!(git(&repo, "rev-list --count HEAD").trim(), "2");
    sh(&format!(
        "diff -r --no-dereference --exclude=.git {} {}",
        q(&repo),
        q(&clone)
    ));

    // Branch, checkout back and forth rewrites the work tree.
    git(&repo, "checkout -q -b side HEAD~1");
    assert!(
        !repo.join("brand-new").exists(),
        "checkout of the first commit left a later file"
    );
    git(&repo, "checkout -q main");
    assert_eq!(fs::read_to_string(repo.join("brand-new")).unwrap(), "new\n");
    assert_eq!(git(&repo, "status --porcelain"), "");
    m.unmount();
    common::assert_counts_exact(&m.store, "after the git workflow");
}

fn sqlite_transactions(db: &Path, sql_file: &Path, n: usize, wal: bool) {
    let mut sql = String::new();
    if wal {
        sql.push_str("PRAGMA journal_mode=WAL;\n");
    }
    sql.push_str("CREATE TABLE t(id INTEGER PRIMARY KEY, n INTEGER NOT NULL, v TEXT NOT NULL);\n");
    for i in 0..n {
        sql.push_str(&format!(
            "BEGIN; INSERT INTO t(n, v) VALUES({i}, '{}'); COMMIT;\n",
            format!("row {i} ").repeat(1 + i % 50)
        ));
    }
    fs::write(sql_file, sql).unwrap();
    sh(&format!(
        "sqlite3 -bail {} < {} > /dev/null",
        q(db),
        q(sql_file)
    ));
}

fn sqlite_check(db: &Path, n: usize, when: &str) {
    let out = sh(&format!(
        "sqlite3 {} 'PRAGMA integrity_check; SELECT count(*), sum(n) FROM t;'",
        q(db)
    ));
    let expect = format!("ok\n{}|{}\n", n, n * (n - 1) / 2);
    assert_eq!(out, expect, "sqlite integrity_check / count {when}");
}

#[test]
fn sqlite_thousand_transactions() {
    need(&["sqlite3"]);
    let s = scratch();
    let m = Mount::new();
    let db = m.path("db.sqlite");
    sqlite_transactions(&db, &s.path().join("load.sql"), 1000, false);
    sqlite_check(&db, 1000, "on the mount");
    // The same work on the backing disk gives the same table.
    let plain = s.path().join("plain.sqlite");
    sqlite_transactions(&plain, &s.path().join("load.sql"), 1000, false);
    let dump = |d: &Path| sh(&format!("sqlite3 {} .dump", q(d)));
    assert!(
        dump(&db) == dump(&plain),
        "sqlite .dump differs between decofs and ext4"
    );
    m.remount();
    sqlite_check(&db, 1000, "after remount");
    assert!(
        dump(&db) == dump(&plain),
        "sqlite .dump differs after remount"
    );
    assert!(
        !m.path("db.sqlite-journal").exists(),
        "a hot journal was left behind"
    );
    m.unmount();
    common::assert_counts_exact(&m.store, "after 1,000 sqlite transactions");
}

#[test]
fn sqlite_wal_mode() {
    // WAL uses a shared mmap of the -shm file: a common trap for FUSE filesystems.
    need(&["sqlite3"]);
    let s = scratch();
    let m = Mount::new();
    let db = m.path("wal.sqlite");
    sqlite_transactions(&db, &s.path().join("load.sql"), 300, true);
    sqlite_check(&db, 300, "in WAL mode");
    m.remount();
    sqlite_check(&db, 300, "in WAL mode after remount");
}

#[test]
fn remount_keeps_everything() {
    need(&["sha256sum", "find", "setfattr", "getfattr"]);
    let s = scratch();
    let src = s.path().join("src");
    real_tree(&src, 200);
    special_tree(&src.join("special"));
    let m = Mount::new();
    let t = m.path("keep");
    sh(&format!("cp -a {} {}", q(&src), q(&t)));
    sh(&format!(
        r#"set -e; cd {t}
        echo linked > hl1 && ln hl1 hl2
        setfattr -n user.test.a -v alpha special/one-byte
        setfattr -n user.test.b -v 0x00ff00 special/4096
        mkdir -m 1777 sticky && mkdir -m 2755 setgid
        chown 65534:65534 special/private
        mkfifo fifo
        # a file rewritten in place, then truncated, then extended
        head -c 6000000 /dev/urandom > rewritten
        dd if=/dev/urandom of=rewritten bs=1000 seek=4000 count=10 conv=notrunc status=none
        truncate -s 4194000 rewritten && truncate -s 5000000 rewritten
        echo appended >> rewritten"#,
        t = q(&t)
    ));
    let xattrs = |d: &Path| {
        sh(&format!(
            "cd {} && getfattr -R -h -d -m '^user\\.test\\.' .",
            q(d)
        ))
    };
    let before = (
        checksums(&t),
        manifest(&t),
        xattrs(&t),
        sh(&format!("stat -c '%i %h' {}", q(&t.join("hl1")))),
    );
    assert!(
        before.2.contains("user.test.a=\"alpha\""),
        "xattr not set: {}",
        before.2
    );

    m.remount();
    let after = (
        checksums(&t),
        manifest(&t),
        xattrs(&t),
        sh(&format!("stat -c '%i %h' {}", q(&t.join("hl1")))),
    );
    assert_same_text("checksums across remount", &before.0, &after.0);
    assert_same_text("metadata across remount", &before.1, &after.1);
    assert_same_text("xattrs across remount", &before.2, &after.2);
    assert_eq!(
        before.3, after.3,
        "hard link inode number / link count across remount"
    );

    // And a second cycle, after reading everything once.
    m.remount();
    assert_same_text(
        "checksums after a second remount",
        &before.0,
        &checksums(&t),
    );
    assert_same_text("metadata after a second remount", &before.1, &manifest(&t));
}

/// `-o reader_token` (one request thread reads and serves in a row, handing over before
/// it blocks; docs/DESIGN.md, "Request threads"): a serial client (sqlite), parallel
/// writers and readers, and cold parallel reads after a remount (each record and blob
/// read hands the token over) all get every answer right, and the daemon exits at the
/// unmount (the gate lets every parked thread go).
#[test]
fn reader_token_serves_serial_and_parallel_clients() {
    need(&["sqlite3"]);
    let s = scratch();
    let m = Mount::with_opts("allow_other,reader_token");
    let db = m.path("db.sqlite");
    sqlite_transactions(&db, &s.path().join("load.sql"), 300, false);
    sqlite_check(&db, 300, "with the reader token");

    // File i of writer t.
    let content = |t: u64, i: u64| common::pattern(t * 1000 + i, 0, 3000 + (i as usize) * 700);
    // 8 writers at once, each reading its own files back and listing another's directory.
    let hs: Vec<_> = (0..8u64)
        .map(|t| {
            let mnt = m.mnt.clone();
            std::thread::spawn(move || {
                let dir = mnt.join(format!("w{t}"));
                fs::create_dir(&dir).unwrap();
                for i in 0..40u64 {
                    let p = dir.join(format!("f{i}"));
                    let data = content(t, i);
                    fs::write(&p, &data).unwrap();
                    common::assert_bytes_eq(&fs::read(&p).unwrap(), &data, "own file");
                    let other = mnt.join(format!("w{}", (t + 1) % 8));
                    let _ = fs::read_dir(&other).map(|d| d.count());
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    m.remount();
    // Cold: every record and blob is read from disk, by 8 readers at once.
    let hs: Vec<_> = (0..8u64)
        .map(|t| {
            let mnt = m.mnt.clone();
            std::thread::spawn(move || {
                for i in 0..40u64 {
                    let p = mnt.join(format!("w{t}/f{i}"));
                    common::assert_bytes_eq(
                        &fs::read(&p).unwrap(),
                        &content(t, i),
                        "after remount",
                    );
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    sqlite_check(&db, 300, "after remount with the reader token");
    let pid = common::daemon_pid(&m.store, &m.mnt);
    m.unmount();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !common::process_gone(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        common::process_gone(pid),
        "the daemon (pid {pid}) did not exit 30 s after the unmount"
    );
    common::assert_counts_exact(&m.store, "after the reader token's workload");
}
