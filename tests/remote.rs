//! A store on a real object store (SeaweedFS started on 127.0.0.1 by the test, stopped
//! after): binding and its refusals, background uploads, the bounded local cache and
//! verified fetches of evicted blobs, an object store that is down, and a writer killed
//! with uploads pending (issue 26; docs/DESIGN.md, "Remote storage").

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::proxy::{Mode, Proxy};
use common::remote::*;
use common::seaweed::Seaweed;
use common::*;

/// `init` arguments binding a new store to `prefix` of the test's bucket at `endpoint`.
fn bound(sw: &Seaweed, endpoint: &str, prefix: &str) -> Vec<String> {
    vec![
        "--trash-min-age".into(),
        "0".into(),
        "--remote".into(),
        sw.url(prefix),
        "--endpoint".into(),
        endpoint.into(),
        "--allow-http".into(),
    ]
}

fn mount_bound(sw: &Seaweed, prefix: &str, opts: &str) -> Mount {
    env();
    let args = bound(sw, &sw.endpoint(), prefix);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    Mount::with_init(&args, opts)
}

/// Every blob file of the store: (hash, bytes).
fn local_blobs(store: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(shards) = std::fs::read_dir(store.join("blobs")) else {
        return out;
    };
    for shard in shards {
        for b in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let b = b.unwrap();
            out.push((
                b.file_name().to_string_lossy().into_owned(),
                std::fs::read(b.path()).unwrap(),
            ));
        }
    }
    out
}

fn local_blob_bytes(store: &Path) -> u64 {
    local_blobs(store).iter().map(|(_, d)| d.len() as u64).sum()
}

/// kill -9 the mount's daemon (started by this test), wait until it is gone, and
/// clear its dead mount.
fn kill_daemon(m: &Mount) {
    let pid = daemon_pid(&m.store, &m.mnt);
    // SAFETY: a plain signal to the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !process_gone(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    unmount_path(&m.mnt);
}

fn write_files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let files = vec![
        (root.join("big"), pattern(1, 0, 10 << 20)),
        (root.join("medium"), pattern(2, 0, 300 << 10)),
        (root.join("small"), pattern(3, 0, 5000)),
    ];
    for (p, d) in &files {
        std::fs::write(p, d).unwrap();
    }
    files
}

/// Drop the kernel's page cache, then remount (the daemon's verified-chunk cache goes
/// with its process): what is read next comes from the store.
fn cold(m: &Mount) {
    m.unmount();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    m.mount();
}

#[test]
fn blobs_are_uploaded_and_evicted_ones_come_back_verified() {
    let sw = Seaweed::start();
    let mut m = mount_bound(&sw, "one", "allow_other,cache_size=0");
    let files = write_files(&m.mnt);
    wait_uploaded(&m);
    // Every blob the store wrote is in the bucket, byte for byte, under its hash.
    let blobs = local_blobs(&m.store);
    assert!(
        blobs.len() >= 4,
        "10 MiB in 4 MiB chunks and more: {}",
        blobs.len()
    );
    for (hash, data) in &blobs {
        let remote = sw.get(&blob_key("one", hash));
        assert_eq!(
            remote.as_deref(),
            Some(&data[..]),
            "blob {hash} in the bucket"
        );
    }
    assert!(sw.get("one/store").is_some(), "the prefix is claimed");
    // Bounded to 1 MiB: the uploaded blobs leave the disk.
    m.unmount();
    m.opts = "allow_other,cache_size=1M".into();
    m.mount();
    wait_status(&m, 60, "eviction", |v| {
        v["remote"]["evicted"].as_u64().unwrap_or(0) > 0
    });
    let on_disk = local_blob_bytes(&m.store);
    assert!(on_disk <= 1 << 20, "{on_disk} bytes of blobs on disk");
    // Read cold: fetched from the bucket, verified, the same bytes.
    cold(&m);
    for (p, d) in &files {
        assert_bytes_eq(&std::fs::read(p).unwrap(), d, &p.display().to_string());
    }
    let v = status(&m.mnt);
    assert!(
        v["remote"]["fetched"].as_u64().unwrap_or(0) >= 3,
        "{}",
        v["remote"]
    );
    m.unmount();
    let (c, v, e) = dj(&["fsck", m.store.to_str().unwrap()]);
    assert_eq!(
        c, 0,
        "fsck of a store whose blobs are partly remote: {v} {e}"
    );
}

#[test]
fn a_damaged_copy_in_the_object_store_is_refused_with_eio() {
    let sw = Seaweed::start();
    let m = mount_bound(&sw, "dmg", "allow_other,cache_size=1");
    let data = pattern(7, 0, 2 << 20);
    std::fs::write(m.path("f"), &data).unwrap();
    wait_uploaded(&m);
    m.unmount();
    let hash = local_blobs(&m.store)
        .into_iter()
        .find(|(_, d)| d == &data)
        .map(|(h, _)| h);
    let keys = sw.list("dmg/blobs/");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key = keys[0].clone();
    if let Some(h) = hash {
        assert_eq!(key, blob_key("dmg", &h));
    }
    let good = sw.get(&key).unwrap();
    let mut bad = good.clone();
    bad[12345] ^= 0x40;
    sw.put(&key, &bad);
    // Mounted with a 1-byte bound: the local copy goes; the read must fetch.
    m.mount();
    wait_status(&m, 60, "eviction", |_| local_blob_bytes(&m.store) == 0);
    cold(&m);
    let err = std::fs::read(m.path("f")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let log = std::fs::read_to_string(m.store.join("decofs.log")).unwrap_or_default();
    assert!(
        log.contains("does not match its hash"),
        "the log names the damage: {}",
        log_tail(&m.store)
    );
    // The right bytes back in the bucket: the file reads again.
    sw.put(&key, &good);
    assert_bytes_eq(&std::fs::read(m.path("f")).unwrap(), &data, "f");
}

#[test]
fn an_object_store_that_ignores_conditional_writes_is_refused() {
    env();
    let sw = Seaweed::start();
    let proxy = Proxy::start(sw.s3_port());
    proxy.set(Mode::StripConditional);
    let dir = tempfile::tempdir_in(test_root()).unwrap();
    let store = dir.path().join("store");
    let args = bound(&sw, &proxy.endpoint(), "unsafe");
    let mut a = vec!["init", store.to_str().unwrap()];
    a.extend(args.iter().map(|s| s.as_str()));
    let (c, v, e) = dj(&a);
    assert_eq!(c, 1, "{v} {e}");
    let err: serde_json::Value = serde_json::from_str(e.trim()).unwrap();
    assert_eq!(err["code"], "remote_unsafe", "{e}");
    assert!(
        !store.exists(),
        "nothing is made when the object store is refused"
    );
    // An existing store stays unbound.
    let out = decofs(&["init", store.to_str().unwrap()]);
    assert!(out.status.success());
    let add = |endpoint: &str| {
        dj(&[
            "remote",
            "add",
            store.to_str().unwrap(),
            &sw.url("unsafe"),
            "--endpoint",
            endpoint,
            "--allow-http",
        ])
    };
    let (c, _, e) = add(&proxy.endpoint());
    assert_eq!(c, 1, "{e}");
    assert!(e.contains("remote_unsafe"), "{e}");
    assert!(!store.join("remote/binding").exists());
    // The same object store without the proxy in between is accepted.
    let (c, v, e) = add(&sw.endpoint());
    assert_eq!(c, 0, "{v} {e}");
}

#[test]
fn bad_urls_and_another_stores_prefix_are_refused() {
    env();
    let sw = Seaweed::start();
    let dir = tempfile::tempdir_in(test_root()).unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for s in [&a, &b] {
        assert!(decofs(&["init", s.to_str().unwrap()]).status.success());
    }
    for url in [
        "http://bucket/x",
        "s3://",
        "s3://UPPER/x",
        "s3://bucket/a/../b",
    ] {
        let (c, _, e) = dj(&["remote", "add", a.to_str().unwrap(), url]);
        assert_eq!(c, 1, "{url}: {e}");
        assert!(e.contains("invalid_argument"), "{url}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    }
    let add = |s: &Path| {
        dj(&[
            "remote",
            "add",
            s.to_str().unwrap(),
            &sw.url("shared"),
            "--endpoint",
            &sw.endpoint(),
            "--allow-http",
        ])
    };
    let (c, v, e) = add(&a);
    assert_eq!(c, 0, "{v} {e}");
    let (c, v, e) = add(&a);
    assert_eq!(c, 0, "binding again to its own prefix: {v} {e}");
    let (c, _, e) = add(&b);
    assert_eq!(c, 1, "{e}");
    assert!(e.contains("remote_conflict"), "{e}");
    assert!(!b.join("remote/binding").exists());
}

#[test]
fn writes_go_on_while_the_object_store_is_down_and_are_uploaded_after() {
    let mut sw = Seaweed::start();
    // A 1-byte cache: whatever is uploaded leaves the disk, nothing else may.
    let m = mount_bound(&sw, "down", "allow_other,cache_size=1");
    std::fs::write(m.path("before"), pattern(4, 0, 100_000)).unwrap();
    wait_uploaded(&m);
    sw.stop();
    let files = write_files(&m.mnt);
    let written: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    for (p, d) in &files {
        assert_bytes_eq(&std::fs::read(p).unwrap(), d, "written while down");
    }
    wait_status(&m, 60, "the failure shows", |v| {
        v["remote"]["pending_blobs"].as_u64().unwrap_or(0) > 0
            && v["remote"]["last_error"].is_string()
    });
    // An eviction pass measured the new blobs and kept them: none is in the bucket.
    wait_status(&m, 60, "a pass over the cache", |v| {
        v["remote"]["cache_bytes"].as_u64().unwrap_or(0) >= written
    });
    assert!(local_blob_bytes(&m.store) >= written);
    sw.restart();
    wait_uploaded(&m);
    m.unmount();
    for (hash, data) in local_blobs(&m.store) {
        assert_eq!(
            sw.get(&blob_key("down", &hash)).as_deref(),
            Some(&data[..]),
            "blob {hash}"
        );
    }
}

#[test]
fn uploads_pending_at_a_kill_are_done_by_the_next_mount() {
    let mut sw = Seaweed::start();
    let m = mount_bound(&sw, "kill", "allow_other,cache_size=0");
    sw.stop();
    let files = write_files(&m.mnt);
    wait_status(&m, 60, "uploads wait", |v| {
        v["remote"]["pending_blobs"].as_u64().unwrap_or(0) >= 3
    });
    // The ledger is written within a second; then the writer dies.
    std::thread::sleep(Duration::from_millis(1500));
    kill_daemon(&m);
    sw.restart();
    m.mount();
    wait_uploaded(&m);
    for (p, d) in &files {
        assert_bytes_eq(&std::fs::read(p).unwrap(), d, "after the kill");
    }
    m.unmount();
    let blobs = local_blobs(&m.store);
    assert!(!blobs.is_empty());
    for (hash, data) in blobs {
        assert_eq!(
            sw.get(&blob_key("kill", &hash)).as_deref(),
            Some(&data[..]),
            "blob {hash}"
        );
    }
}

#[test]
fn published_states_clone_into_equal_trees() {
    let sw = Seaweed::start();
    let a = mount_bound(&sw, "pub", "allow_other,publish_interval=0,cache_size=0");
    let root = &a.mnt;
    std::fs::create_dir_all(root.join("d/e/f")).unwrap();
    let files = write_files(root);
    std::fs::write(root.join("d/e/f/deep"), pattern(9, 0, 70_000)).unwrap();
    std::fs::hard_link(root.join("small"), root.join("d/hard")).unwrap();
    std::os::unix::fs::symlink("../big", root.join("d/link")).unwrap();
    sh(&format!(
        "chmod 640 {0}/medium && chmod 700 {0}/d/e",
        root.display()
    ));
    let v = publish(root);
    assert_eq!(
        (v["published"].as_bool(), v["seq"].as_u64()),
        (Some(true), Some(1))
    );
    let v = publish(root);
    assert_eq!(v["published"], false, "nothing changed: {v}");
    let work = tempfile::tempdir_in(test_root()).unwrap();
    // Not following: a copy of the first state.
    let b = clone_mounted_with(
        &sw,
        "pub",
        work.path(),
        "b",
        "ro,allow_other,follow_interval=0",
    );
    assert_same_tree(root, &b.mnt);
    // Three differential publishes: renames, a directory move, deletes, rewrites.
    let steps: [&dyn Fn(&Path); 3] = [
        &|r: &Path| {
            std::fs::rename(r.join("big"), r.join("d/big-moved")).unwrap();
            std::fs::remove_file(r.join("d/hard")).unwrap();
            std::fs::write(r.join("new"), pattern(10, 0, 4_500_000)).unwrap();
        },
        &|r: &Path| {
            std::fs::rename(r.join("d/e"), r.join("e-moved")).unwrap();
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(r.join("medium"))
                .unwrap();
            std::io::Write::write_all(&mut f, &pattern(11, 0, 10_000)).unwrap();
        },
        &|r: &Path| {
            std::fs::remove_dir_all(r.join("e-moved")).unwrap();
            std::fs::write(r.join("small"), b"rewritten").unwrap();
            std::fs::create_dir(r.join("empty")).unwrap();
        },
    ];
    for (i, step) in steps.iter().enumerate() {
        step(root);
        let v = publish(root);
        assert_eq!(v["seq"].as_u64(), Some(i as u64 + 2), "{v}");
        let c = clone_mounted(&sw, "pub", work.path(), &format!("c{i}"));
        cold(&c);
        assert_same_tree(root, &c.mnt);
        c.unmount();
        let (code, v, e) = dj(&["fsck", c.store.to_str().unwrap()]);
        assert_eq!(code, 0, "fsck of clone {i}: {v} {e}");
    }
    drop(files);
    // The first clone, mounted without following, still shows the first state.
    assert!(b.mnt.join("big").exists() && !b.mnt.join("new").exists());
}

#[test]
fn a_partitioned_writer_is_taken_over_and_fenced() {
    env();
    let sw = Seaweed::start();
    // Host a reaches the object store through a proxy that can cut it off.
    let proxy = Proxy::start(sw.s3_port());
    let args = bound(&sw, &proxy.endpoint(), "take");
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let a = Mount::with_init(&args, "allow_other,publish_interval=0,lease_ttl=3");
    std::fs::write(a.path("one"), b"published by a").unwrap();
    publish(&a.mnt);
    // Host b clones; its read-write mount is refused while a's lease lives.
    let work = tempfile::tempdir_in(test_root()).unwrap();
    let mut b = clone_mounted(&sw, "take", work.path(), "b");
    b.unmount();
    b.opts = "allow_other,publish_interval=0,lease_ttl=3".into();
    let (c, _, e) = dj(&[
        "mount",
        b.store.to_str().unwrap(),
        b.mnt.to_str().unwrap(),
        "-o",
        &b.opts,
    ]);
    assert_eq!(c, 1, "a second writer while the lease lives: {e}");
    assert!(e.contains("store_locked") && e.contains("pid"), "{e}");
    // a is cut off: it goes on locally, unpublished.
    proxy.set(Mode::Blackhole);
    std::fs::write(a.path("three"), b"a's unpublished change").unwrap();
    // Once a's lease expired (3 s, trusted a quarter later), b takes over.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (c, _, e) = dj(&[
            "mount",
            b.store.to_str().unwrap(),
            b.mnt.to_str().unwrap(),
            "-o",
            &b.opts,
        ]);
        if c == 0 {
            break;
        }
        assert!(e.contains("store_locked"), "{e}");
        assert!(Instant::now() < deadline, "b never took over: {e}");
        std::thread::sleep(Duration::from_millis(500));
    }
    std::fs::write(b.path("two"), b"written by b").unwrap();
    let v = publish(&b.mnt);
    assert_eq!(v["seq"].as_u64(), Some(2), "{v}");
    // a reconnects: its lease renewal is refused, and it turns read-only for good.
    proxy.set(Mode::Pass);
    wait_erofs(&a, "four", 90);
    let (c, _, e) = dj(&["publish", a.mnt.to_str().unwrap()]);
    assert_eq!(c, 1, "{e}");
    assert!(
        e.contains("remote_fenced") || e.contains("read_only"),
        "{e}"
    );
    let v = status(&a.mnt);
    assert_eq!(v["remote"]["lease"]["lost"], true, "{}", v["remote"]);
    // a's unpublished change stays readable there, and is exported for a person.
    assert_eq!(
        std::fs::read(a.path("three")).unwrap(),
        b"a's unpublished change"
    );
    let out = work.path().join("unpublished");
    let (c, v, e) = dj(&[
        "unpublished",
        "export",
        a.mnt.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert_eq!(c, 0, "{v} {e}");
    assert_eq!(
        std::fs::read(out.join("three")).unwrap(),
        b"a's unpublished change"
    );
    assert!(
        !out.join("one").exists(),
        "published files are not exported"
    );
    let listing = std::fs::read_to_string(out.join(".decofs-unpublished")).unwrap();
    assert!(listing.contains("created three"), "{listing}");
    // The published state is b's.
    let c = clone_mounted(&sw, "take", work.path(), "c");
    assert_eq!(std::fs::read(c.mnt.join("two")).unwrap(), b"written by b");
    assert_eq!(std::fs::read(c.mnt.join("one")).unwrap(), b"published by a");
    assert!(!c.mnt.join("three").exists());
    drop(b);
}

#[test]
fn a_publish_waits_for_its_blobs_and_fails_whole_while_the_store_is_down() {
    let mut sw = Seaweed::start();
    let a = mount_bound(&sw, "order", "allow_other,publish_interval=0,cache_size=0");
    std::fs::write(a.path("first"), pattern(20, 0, 1_000_000)).unwrap();
    publish(&a.mnt);
    let head_before = sw.get("order/head").unwrap();
    sw.stop();
    std::fs::write(a.path("second"), pattern(21, 0, 6_000_000)).unwrap();
    let (c, _, e) = dj(&["publish", a.mnt.to_str().unwrap()]);
    assert_eq!(c, 1, "{e}");
    assert!(e.contains("remote_unavailable"), "{e}");
    // Writable still: an unreachable store is not another writer.
    std::fs::write(a.path("third"), b"still writable").unwrap();
    sw.restart();
    assert_eq!(
        sw.get("order/head").unwrap(),
        head_before,
        "the head did not move"
    );
    // The publish makes sure of every blob it names (uploading what is still waiting).
    let v = publish(&a.mnt);
    assert_eq!(v["seq"].as_u64(), Some(2), "{v}");
    let work = tempfile::tempdir_in(test_root()).unwrap();
    let c = clone_mounted(&sw, "order", work.path(), "c");
    cold(&c);
    assert_same_tree(&a.mnt, &c.mnt);
}

#[test]
fn a_writer_killed_while_publishing_resumes_and_publishes_whole() {
    let sw = Seaweed::start();
    let a = mount_bound(&sw, "crash", "allow_other,publish_interval=1,cache_size=0");
    let mut rng = fastrand::Rng::with_seed(26);
    for round in 0..4u64 {
        for i in 0..20u64 {
            let len = rng.usize(0..300_000);
            std::fs::write(
                a.path(&format!("r{round}-{i}")),
                pattern(round * 100 + i, 0, len),
            )
            .unwrap();
            if i % 7 == 3 {
                let _ =
                    std::fs::remove_file(a.path(&format!("r{}-{}", round.saturating_sub(1), i)));
            }
        }
        // Killed somewhere in the publishes and uploads of the second after.
        std::thread::sleep(Duration::from_millis(rng.u64(200..2500)));
        kill_daemon(&a);
        // The same host takes its dead writer's lease at once, and goes on.
        a.mount();
    }
    publish(&a.mnt);
    let work = tempfile::tempdir_in(test_root()).unwrap();
    let c = clone_mounted(&sw, "crash", work.path(), "c");
    cold(&c);
    assert_same_tree(&a.mnt, &c.mnt);
    c.unmount();
    a.unmount();
    assert_fsck_clean(&[&a.store, &c.store]);
}

/// Poll the follower's status until it shows publish `seq` (at most 60 s).
#[track_caller]
fn wait_followed(f: &Mount, seq: u64) {
    wait_status(f, 60, &format!("the follower reaches publish {seq}"), |v| {
        v["remote"]["follow"]["seq"].as_u64() == Some(seq)
    });
}

#[track_caller]
fn assert_erofs(r: std::io::Result<()>, what: &str) {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
        other => panic!("{what} on a follower: {other:?}, not EROFS"),
    }
}

#[test]
fn a_read_only_mount_of_a_clone_follows_the_writer_and_can_take_over() {
    let sw = Seaweed::start();
    let a = mount_bound(&sw, "follow", "allow_other,publish_interval=0,cache_size=0");
    let root = &a.mnt;
    write_files(root);
    std::fs::create_dir(root.join("d")).unwrap();
    publish(root);
    let work = tempfile::tempdir_in(test_root()).unwrap();
    let f = clone_mounted_with(
        &sw,
        "follow",
        work.path(),
        "f",
        "ro,allow_other,follow_interval=1",
    );
    assert_same_tree(root, &f.mnt);
    let v = status(&f.mnt);
    assert_eq!(v["read_only"], true, "{v}");
    // Nothing changes through a follower, and it cannot be remounted read-write.
    assert_erofs(std::fs::write(f.mnt.join("x"), b"x"), "create");
    assert_erofs(std::fs::remove_file(f.mnt.join("small")), "unlink");
    assert_erofs(std::fs::create_dir(f.mnt.join("dd")), "mkdir");
    assert_erofs(
        std::fs::OpenOptions::new()
            .write(true)
            .open(f.mnt.join("small"))
            .map(drop),
        "open for writing",
    );
    let out = decofs(&[
        "mount",
        f.store.to_str().unwrap(),
        f.mnt.to_str().unwrap(),
        "-o",
        "remount,rw",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("[code: read_only]"),
        "remount,rw of a follower: {err}"
    );
    // A file open on the follower while the writer deletes it stays readable.
    let held = std::fs::File::open(f.mnt.join("medium")).unwrap();
    let medium = std::fs::read(root.join("medium")).unwrap();
    // Publish 2 (differential) makes the chain outweigh its whole stream, so publish 3
    // restarts it whole; followers still get a differential stream.
    std::fs::remove_file(root.join("medium")).unwrap();
    for i in 0..150 {
        std::fs::write(root.join(format!("d/n{i}")), format!("file {i}")).unwrap();
    }
    assert_eq!(publish(root)["seq"], 2);
    wait_followed(&f, 2);
    assert_same_tree(root, &f.mnt);
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut &held, &mut back).unwrap();
    assert_bytes_eq(&back, &medium, "a file removed while open on the follower");
    drop(held);
    std::fs::rename(root.join("d"), root.join("d2")).unwrap();
    std::fs::write(root.join("big"), pattern(40, 0, 3_000_000)).unwrap();
    std::os::unix::fs::symlink("d2/n1", root.join("link")).unwrap();
    let v = publish(root);
    assert_eq!(v["seq"], 3, "{v}");
    let head: serde_json::Value = serde_json::from_slice(&sw.get("follow/head").unwrap()).unwrap();
    assert_eq!(
        head["chain"].as_array().map(|c| c.len()),
        Some(1),
        "publish 3 is whole: {head}"
    );
    wait_followed(&f, 3);
    assert_same_tree(root, &f.mnt);
    // gc of the object store keeps the streams followers apply (the head's `follow`),
    // and deletes the restarted chain's old whole stream.
    let streams = || sw.list("follow/streams/");
    let before = streams();
    for _ in 0..2 {
        let (c, v, e) = dj(&["gc", root.to_str().unwrap(), "--remote-grace", "0"]);
        assert_eq!(c, 0, "gc: {v} {e}");
    }
    let after = streams();
    for k in head["follow"].as_array().unwrap() {
        let k = format!("follow/{}", k.as_str().unwrap());
        assert!(after.contains(&k), "{k} kept: {after:?}");
    }
    assert!(after.len() < before.len(), "{before:?} -> {after:?}");
    cold(&f);
    assert_same_tree(root, &f.mnt);
    // Takeover: the writer leaves (publishing at its close, its lease given back), the
    // follower becomes the writer; the old writer, mounted read-only, follows it.
    std::fs::write(root.join("at-close"), b"published when a unmounted").unwrap();
    unmount_and_wait(&a);
    wait_followed(&f, 4);
    assert_eq!(
        std::fs::read(f.mnt.join("at-close")).unwrap(),
        b"published when a unmounted"
    );
    f.unmount();
    let mut f = f;
    f.opts = "allow_other,publish_interval=0".into();
    f.mount();
    std::fs::write(
        f.mnt.join("by-f"),
        b"written by the follower that took over",
    )
    .unwrap();
    assert_eq!(publish(&f.mnt)["seq"], 5);
    let mut a = a;
    a.opts = "ro,allow_other,follow_interval=1".into();
    a.mount();
    wait_followed(&a, 5);
    assert_same_tree(&f.mnt, &a.mnt);
    f.unmount();
    a.unmount();
    assert_fsck_clean(&[&a.store, &f.store]);
}

#[test]
fn lock_break_hands_the_lease_over_and_fences_the_old_writer() {
    let sw = Seaweed::start();
    // A long lease: only the break lets another host in soon.
    let a = mount_bound(&sw, "break", "allow_other,publish_interval=0,lease_ttl=60");
    std::fs::write(a.path("one"), b"one").unwrap();
    publish(&a.mnt);
    let work = tempfile::tempdir_in(test_root()).unwrap();
    let mut b = clone_mounted(&sw, "break", work.path(), "b");
    b.unmount();
    b.opts = "allow_other,publish_interval=0".into();
    let mount_b = || {
        dj(&[
            "mount",
            b.store.to_str().unwrap(),
            b.mnt.to_str().unwrap(),
            "-o",
            &b.opts,
        ])
    };
    let (c, _, e) = mount_b();
    assert!(c != 0 && e.contains("store_locked"), "{e}");
    let (c, v, e) = dj(&["lock", "break", b.store.to_str().unwrap()]);
    assert_eq!(c, 0, "{v} {e}");
    assert!(
        v["remote_lease_holder"]
            .as_str()
            .is_some_and(|h| h.contains(&format!("{}", a.store.display()))),
        "{v}"
    );
    let (c, _, e) = mount_b();
    assert_eq!(c, 0, "b mounts at once after the break: {e}");
    std::fs::write(b.path("two"), b"two").unwrap();
    assert_eq!(publish(&b.mnt)["seq"], 2);
    // a's next renewal (every 20 s) is refused: it turns read-only.
    wait_erofs(&a, "late", 90);
    let v = status(&a.mnt);
    assert_eq!(v["remote"]["lease"]["lost"], true, "{}", v["remote"]);
    let c = clone_mounted(&sw, "break", work.path(), "c");
    assert_eq!(std::fs::read(c.mnt.join("two")).unwrap(), b"two");
    assert!(!c.mnt.join("late").exists());
    drop(b);
}

#[test]
fn remote_sync_fsync_returns_once_published() {
    env();
    let sw = Seaweed::start();
    let proxy = Proxy::start(sw.s3_port());
    let args = bound(&sw, &proxy.endpoint(), "sync");
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let a = Mount::with_init(
        &args,
        "allow_other,publish_interval=0,remote_sync=fsync,cache_size=0",
    );
    let seq = || -> u64 {
        sw.get("sync/head")
            .map(|h| {
                serde_json::from_slice::<serde_json::Value>(&h).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .unwrap_or(0)
    };
    for i in 1..=3u64 {
        let mut f = std::fs::File::create(a.path(&format!("f{i}"))).unwrap();
        std::io::Write::write_all(&mut f, &pattern(i, 0, 200_000)).unwrap();
        assert_eq!(seq(), i - 1, "not published before the fsync");
        f.sync_all().unwrap();
        assert_eq!(seq(), i, "published when fsync returned");
    }
    let work = tempfile::tempdir_in(test_root()).unwrap();
    let c = clone_mounted_with(
        &sw,
        "sync",
        work.path(),
        "c",
        "ro,allow_other,follow_interval=0",
    );
    cold(&c);
    assert_same_tree(&a.mnt, &c.mnt);
    // Cut off: the fsync fails (the change stays local), and succeeds once reconnected.
    proxy.set(Mode::Reset);
    let mut f = std::fs::File::create(a.path("cut")).unwrap();
    std::io::Write::write_all(&mut f, b"written while cut off").unwrap();
    let e = f
        .sync_all()
        .expect_err("fsync while the object store is cut off");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_eq!(seq(), 3);
    proxy.set(Mode::Pass);
    f.sync_all().unwrap();
    assert_eq!(seq(), 4);
}

#[test]
fn a_writer_mounted_while_the_object_store_is_unreachable_takes_the_lease_later() {
    env();
    let sw = Seaweed::start();
    let proxy = Proxy::start(sw.s3_port());
    let args = bound(&sw, &proxy.endpoint(), "late");
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let a = Mount::with_init(&args, "allow_other,publish_interval=0,lease_ttl=5");
    std::fs::write(a.path("one"), b"one").unwrap();
    publish(&a.mnt);
    unmount_and_wait(&a);
    // Mounted while unreachable: it serves locally, publishes nothing.
    proxy.set(Mode::Reset);
    a.mount();
    std::fs::write(a.path("two"), b"written while unreachable").unwrap();
    let v = status(&a.mnt);
    assert!(v["remote"]["lease"].is_null(), "{}", v["remote"]);
    let (c, _, e) = dj(&["publish", a.mnt.to_str().unwrap()]);
    assert_ne!(c, 0, "a publish without the lease: {e}");
    // Reachable again: it takes the lease and publishes.
    proxy.set(Mode::Pass);
    wait_status(&a, 90, "the lease is taken", |v| {
        v["remote"]["lease"]["epoch"].as_u64().is_some()
    });
    assert_eq!(publish(&a.mnt)["seq"], 2);
    unmount_and_wait(&a);
    // Unreachable at its next mount, while another host takes over and publishes: once
    // it reaches the object store, it turns read-only, its change kept.
    proxy.set(Mode::Reset);
    a.mount();
    std::fs::write(a.path("three"), b"never published").unwrap();
    let work = tempfile::tempdir_in(test_root()).unwrap();
    let mut b = clone_mounted(&sw, "late", work.path(), "b");
    b.unmount();
    b.opts = "allow_other,publish_interval=0".into();
    b.mount();
    std::fs::write(b.path("four"), b"written by b").unwrap();
    assert_eq!(publish(&b.mnt)["seq"], 3);
    unmount_and_wait(&b);
    proxy.set(Mode::Pass);
    wait_erofs(&a, "five", 120);
    assert_eq!(std::fs::read(a.path("three")).unwrap(), b"never published");
    let c = clone_mounted(&sw, "late", work.path(), "c");
    assert_eq!(std::fs::read(c.mnt.join("four")).unwrap(), b"written by b");
    assert_eq!(
        std::fs::read(c.mnt.join("two")).unwrap(),
        b"written while unreachable"
    );
    assert!(!c.mnt.join("three").exists());
}

#[test]
fn a_slow_object_store_and_one_killed_mid_upload_lose_nothing() {
    env();
    let mut sw = Seaweed::start();
    let proxy = Proxy::start(sw.s3_port());
    let args = bound(&sw, &proxy.endpoint(), "faults");
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let a = Mount::with_init(&args, "allow_other,publish_interval=1,cache_size=0");
    // Slow: every chunk either way waits 50 ms. Writes and reads go on at local speed
    // meanwhile (not asserted: timing is the benchmark's), and publishes go out.
    proxy.set(Mode::Delay(Duration::from_millis(50)));
    let mut files = Vec::new();
    for i in 0..12u64 {
        let p = a.path(&format!("slow-{i}"));
        let d = pattern(300 + i, 0, 700_000 + i as usize * 1000);
        std::fs::write(&p, &d).unwrap();
        files.push((p, d));
    }
    for (p, d) in &files {
        assert_bytes_eq(&std::fs::read(p).unwrap(), d, "read back while slow");
    }
    wait_status(&a, 120, "uploads finish while slow", |v| {
        v["remote"]["pending_blobs"].as_u64() == Some(0)
    });
    proxy.set(Mode::Pass);
    // Killed (SIGKILL) while uploads are under way, then restarted: the uploads are
    // retried and every blob reaches the bucket whole.
    for i in 0..6u64 {
        let p = a.path(&format!("big-{i}"));
        let d = pattern(400 + i, 0, 6_000_000);
        std::fs::write(&p, &d).unwrap();
        files.push((p, d));
    }
    let pending = status(&a.mnt)["remote"]["pending_blobs"]
        .as_u64()
        .unwrap_or(0);
    sw.kill();
    std::fs::write(
        a.path("while-down"),
        b"written while the object store is down",
    )
    .unwrap();
    sw.restart();
    wait_uploaded(&a);
    let v = publish(&a.mnt);
    assert!(v["seq"].as_u64().unwrap_or(0) >= 1, "{v}");
    for (hash, data) in &local_blobs(&a.store) {
        let remote = sw.get(&blob_key("faults", hash));
        assert_eq!(
            remote.as_deref(),
            Some(&data[..]),
            "blob {hash} in the bucket ({pending} were pending at the kill)"
        );
    }
    assert_clone_equal(&sw, "faults", &a);
}

#[test]
fn an_object_store_answering_503_keeps_the_mount_working_and_loses_nothing() {
    env();
    let sw = Seaweed::start();
    let proxy = Proxy::start(sw.s3_port());
    let args = bound(&sw, &proxy.endpoint(), "busy");
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let a = Mount::with_init(&args, "allow_other,publish_interval=0,cache_size=0");
    std::fs::write(a.path("before"), pattern(60, 0, 300_000)).unwrap();
    publish(&a.mnt);
    let head = sw.get("busy/head").unwrap();
    // Up and failing: every request is answered 503.
    proxy.set(Mode::Unavailable);
    std::fs::write(a.path("during"), pattern(61, 0, 2_000_000)).unwrap();
    assert_bytes_eq(
        &std::fs::read(a.path("during")).unwrap(),
        &pattern(61, 0, 2_000_000),
        "read back while the object store fails",
    );
    let (c, _, e) = dj(&["publish", a.mnt.to_str().unwrap()]);
    assert_eq!(c, 1, "a publish while every request fails: {e}");
    assert!(e.contains("remote_unavailable"), "{e}");
    assert_eq!(sw.get("busy/head").unwrap(), head, "the head did not move");
    wait_status(&a, 60, "the failure is shown", |v| {
        v["remote"]["last_error"].is_string() && v["remote"]["pending_blobs"].as_u64() > Some(0)
    });
    // Well again: the uploads finish and the publish goes out.
    proxy.set(Mode::Pass);
    wait_uploaded(&a);
    assert_eq!(publish(&a.mnt)["seq"], 2);
    assert_clone_equal(&sw, "busy", &a);
}

/// A writer that died after its first head went out and before it wrote that down
/// (`STORE/remote/published`) finds the head is its own publish at its next mount.
#[test]
fn a_first_publish_whose_head_went_out_unrecorded_is_adopted() {
    let sw = Seaweed::start();
    let a = mount_bound(&sw, "adopt", "allow_other,publish_interval=0");
    std::fs::write(a.path("one"), b"one").unwrap();
    assert_eq!(publish(&a.mnt)["seq"], 1);
    unmount_and_wait(&a);
    std::fs::remove_file(a.store.join("remote/published")).unwrap();
    a.mount();
    std::fs::write(a.path("two"), b"two").unwrap();
    assert_eq!(publish(&a.mnt)["seq"], 2);
    assert_clone_equal(&sw, "adopt", &a);
}
