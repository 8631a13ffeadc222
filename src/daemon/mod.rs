//! The daemon: mounting a store and serving it until it is unmounted.
//!
//! - [`opts`]: `-o` options. [`spawn`]: the background start and its readiness
//!   handshake. [`umount`]: unmounting and waiting for the daemon. [`handover`]: a new
//!   writer waits for one whose mount is gone. [`remount`]: `-o remount,ro|rw`.
//! - Here: the foreground daemon (`run_foreground`): mountpoint checks, the FUSE
//!   session, the control server (`control::serve`), the index, signals and the
//!   background upkeep of a writer.
//!
//! `decofs mount` (background) re-executes itself with `--foreground` in a new session
//! and returns only once the mount answers, so its exit code is honest. The daemon
//! registers in `STORE/sessions/mount.<pid>` (`crate::control::registry`) so
//! `decofs umount` can wait for it to exit. SIGINT/SIGTERM/SIGHUP commit every open
//! write session, then unmount. The daemon ignores SIGPIPE (the Rust runtime's
//! default): a client that hangs up on the control socket costs it nothing.

pub mod handover;
pub mod opts;
pub mod remount;
pub mod spawn;
pub mod umount;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, SessionACL};

use crate::control::{self, Report};
use crate::fuse::DecoFs;
use crate::host::mount_at;
use crate::panics;
use crate::store::error::IoContext;
use crate::store::{Error, OpenOptions, Result, Stale, Store};

pub use crate::store::lock::process_gone;
pub use handover::{wait_for_departing_writer, HANDOVER_WAIT};
pub use opts::{parse_opts, MountOpts, READAHEAD_KIB};
pub use spawn::spawn_background;
pub use umount::umount;

/// Widen the kernel's readahead for the mount at `mnt` (through its bdi in sysfs; needs
/// root). A failure only costs speed, so it is logged, not returned.
fn set_readahead(mnt: &Path, kib: u32) {
    if kib == 0 {
        return;
    }
    let Some(m) = mount_at(mnt) else {
        return;
    };
    let knob = PathBuf::from(format!("/sys/class/bdi/{}/read_ahead_kb", m.dev));
    match fs::write(&knob, format!("{kib}\n")) {
        Ok(()) => log::debug!("readahead {kib} KiB ({})", knob.display()),
        Err(e) => log::info!("cannot set readahead through {}: {e}", knob.display()),
    }
}

/// The mountpoint must exist, be a directory, and have nothing mounted on it.
pub fn check_mountpoint(p: &Path) -> Result<PathBuf> {
    let meta = match fs::metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::MountpointNotFound(p.to_path_buf()))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(Error::MountpointBusy(p.to_path_buf()))
        }
        Err(e) => return Err(Error::io(format!("stat {}", p.display()), e)),
    };
    if !meta.is_dir() {
        return Err(Error::MountpointNotDir(p.to_path_buf()));
    }
    let canon = fs::canonicalize(p).ctx(|| format!("resolve {}", p.display()))?;
    if mount_at(&canon).is_some() {
        return Err(Error::MountpointBusy(canon));
    }
    Ok(canon)
}

/// A mount hides what is in its mountpoint until it is unmounted: refuse a mountpoint
/// that has anything in it (code `mountpoint_not_empty`) unless `-o nonempty`. A
/// directory that cannot be listed is left to the mount to judge.
pub fn check_mountpoint_empty(p: &Path, opts: &MountOpts) -> std::result::Result<(), Report> {
    if opts.nonempty {
        return Ok(());
    }
    let Ok(mut entries) = fs::read_dir(p) else {
        return Ok(());
    };
    if entries.next().is_none() {
        return Ok(());
    }
    let reason = format!(
        "mountpoint {} is not empty (a mount would hide what is in it)",
        p.display()
    );
    Err(Report {
        what: reason.clone(),
        code: "mountpoint_not_empty".into(),
        reason,
        suggestion: "mount on an empty directory, or pass -o nonempty to mount over it anyway"
            .into(),
    })
}

/// Block the termination signals in this thread (and so in every thread spawned after)
/// and handle them in one thread with sigwait.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local, zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // A daemon started from a non-interactive shell inherits SIGINT ignored;
            // restore the default so the signal is delivered to sigwait.
            libc::signal(s, libc::SIG_DFL);
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Mount in this process and serve until unmounted.
pub fn run_foreground(
    store_path: &Path,
    mountpoint: &Path,
    opts: &MountOpts,
    threads: usize,
) -> std::result::Result<(), Report> {
    // Before any thread exists, so every thread inherits the mask and only the sigwait
    // thread below ever receives these signals.
    let set = block_signals();
    let res = check_mountpoint(mountpoint)
        .map_err(|e| Report::reply(&e))
        .and_then(|m| check_mountpoint_empty(&m, opts))
        .and_then(|()| {
            prepare(store_path, mountpoint, opts, threads).map_err(|e| Report::reply(&e))
        });
    let (store, session, mnt) = match res {
        Ok(x) => x,
        Err(r) => {
            spawn::report_ready(Err(r.clone()));
            return Err(r);
        }
    };
    let store_root = store.layout.root.clone();
    let pidf = control::registry::register(&store_root, &mnt, opts.read_only);
    // The index follows the store's events; if it cannot be opened the filesystem
    // still works, and queries say why they cannot be answered.
    let index = if opts.read_only {
        Err("this mount is read-only; the read-write mount keeps the index".to_string())
    } else if opts.no_index {
        Err("this mount was mounted with index=off".to_string())
    } else {
        crate::index::Index::open(store.clone(), true, opts.index).map_err(|e| {
            log::error!("index: cannot open it ({e}); serving without it");
            format!("it could not be opened: {e}")
        })
    };
    let remount_mnt = mnt.clone();
    let info = control::DaemonInfo {
        mountpoint: mnt.clone(),
        started: Instant::now(),
        index: index.clone(),
        remount: Some(Arc::new(
            move |st: &Store, req: &control::protocol::Remount| {
                remount::remount(st, &remount_mnt, req)
            },
        )),
    };
    let sock = match control::serve(store.clone(), info) {
        Ok(p) => Some(p),
        Err(e) => {
            log::warn!(
                "no control socket ({e}); status and other commands will read the store directly"
            );
            None
        }
    };
    // A restore replaces content and binds a name behind the kernel's caches (which may
    // hold "no such name"), and a write that drops set-ID bits changes the mode behind
    // them: tell it. An offset of -1 invalidates the attributes only, which takes no
    // page lock (a write in flight holds some).
    let notifier = session.notifier();
    let inval_store = Arc::downgrade(&store);
    store.followers.set_invalidate(Box::new(move |what| {
        let Some(st) = inval_store.upgrade() else {
            return;
        };
        let ino = |id| fuser::INodeNo(st.ino_of(id));
        // The kernel may wait for a request in flight (page locks): let another thread
        // read it.
        crate::blocking::soon();
        let _ = match what {
            Stale::Content(id) => notifier.inval_inode(ino(id), 0, 0),
            Stale::Attrs(id) => notifier.inval_inode(ino(id), -1, 0),
            Stale::Entry(parent, name) => notifier.inval_entry(ino(parent), name),
        };
    }));
    if !opts.read_only {
        let schedule = opts
            .snapshot_every
            .map(|every| (every, opts.snapshots_keep.unwrap_or(DEFAULT_SNAPSHOTS_KEEP)));
        spawn_maintenance(Arc::downgrade(&store), schedule);
        if store.remote().is_some() {
            if store.lease().is_none() {
                spawn_lease_taker(
                    Arc::downgrade(&store),
                    opts.lease_ttl.map(Duration::from_secs),
                );
            }
            let every = opts.publish_interval.unwrap_or(DEFAULT_PUBLISH_SECS);
            if every > 0 {
                spawn_publisher(Arc::downgrade(&store), Duration::from_secs(every));
            }
        }
        store.start_spares();
    }
    if store.follower().is_some() {
        let every = opts.follow_interval.unwrap_or(DEFAULT_FOLLOW_SECS);
        spawn_follower(Arc::downgrade(&store), Duration::from_secs(every));
    }
    log::info!("mounted {} on {}", store_root.display(), mnt.display());
    spawn::report_ready(Ok(()));
    sd_notify("READY=1");
    let sig_mnt = mnt.clone();
    let sig_store = store.clone();
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: waiting on a valid signal set.
        unsafe { libc::sigwait(&set, &mut sig) };
        log::info!("signal {sig}: committing open files and unmounting");
        sd_notify("STOPPING=1");
        if let Err(e) = sig_store.data().commit_all() {
            log::error!("commit on signal failed: {e}");
        }
        if let Err(e) = unmount_now(&sig_mnt) {
            log::error!("unmount on signal failed: {e}");
        }
        // Open files can keep a lazily detached mount alive; everything is committed,
        // so do not wait forever.
        std::thread::sleep(Duration::from_secs(10));
        let _ = sig_store.data().commit_all();
        if let Err(e) = sig_store.close_fsync_log() {
            log::error!("closing the fsync log failed (it is replayed at the next mount): {e}");
        }
        std::process::exit(0);
    });
    let res = session.run().ctx(|| "serve the mount".into());
    sd_notify("STOPPING=1");
    // The mount is gone. A writer keeps the lock until it exits, after the commit and
    // the index's close below: its pid file, marked, stays until then, so a new mount
    // waits for it instead of refusing (`handover`); a later mount or `decofs umount`
    // removes it.
    if opts.read_only {
        let _ = fs::remove_file(&pidf);
    } else {
        control::registry::mark_unmounted(&pidf);
    }
    // Remounted read-only before the unmount: nothing can write through the mount any
    // more, so let the close finish as a writer's (a clean index close is recorded).
    if store.fence().paused() {
        let _ = store.fence().set_paused(false);
    }
    let commit = store.data().commit_all();
    let commit = commit.and_then(|()| store.close_fsync_log());
    crate::store::remote::publish::close(&store);
    if let Ok(ix) = &index {
        ix.close();
    }
    if let Some(p) = sock {
        let _ = fs::remove_file(p);
    }
    log::info!("unmounted {}", mnt.display());
    res.and(commit).map_err(|e| Report::reply(&e))
}

type Prepared = (Arc<Store>, fuser::Session<DecoFs>, PathBuf);

fn prepare(
    store_path: &Path,
    mountpoint: &Path,
    opts: &MountOpts,
    threads: usize,
) -> Result<Prepared> {
    let store_root = fs::canonicalize(store_path).unwrap_or_else(|_| store_path.to_path_buf());
    // The mountpoint is checked before the store is opened so a bad mountpoint never
    // touches the store (not even its lock).
    let mnt = check_mountpoint(mountpoint)?;
    crate::store::layout::Layout::new(&store_root).read_format()?;
    if !opts.read_only {
        wait_for_departing_writer(&store_root, &mut |m| log::warn!("{m}"))?;
    }
    let open = |follower: bool| {
        Store::open(
            &store_root,
            OpenOptions {
                read_only: opts.read_only && !follower,
                cache_bytes: 0,
                snapshot: opts.snapshot.clone(),
                cache_size: opts.cache_size,
                no_lease: false,
                lease_ttl: opts.lease_ttl.map(Duration::from_secs),
                lease_later: true,
                follower,
            },
        )
    };
    // A read-only mount of a store on an object store follows what its writer
    // publishes, unless a writer on this host holds the store: then it sees that
    // writer's live tree, as any read-only mount does.
    let follow = opts.read_only
        && opts.snapshot.is_none()
        && opts.follow_interval != Some(0)
        && crate::store::remote::Binding::read(&crate::store::layout::Layout::new(&store_root))?
            .is_some();
    let store = Arc::new(match open(follow) {
        Err(Error::StoreLocked { holder, .. }) if follow => {
            log::info!("{holder} writes this store here: this mount shows its live tree and follows nothing");
            open(false)?
        }
        other => other?,
    });
    store.set_remote_sync(opts.remote_sync_fsync);
    let mut mo = vec![
        MountOption::FSName(store_root.to_string_lossy().into_owned()),
        MountOption::CUSTOM("subtype=decofs".into()),
        MountOption::DefaultPermissions,
    ];
    if opts.read_only {
        mo.push(MountOption::RO);
    }
    mo.extend(opts.flags.iter().cloned());
    let mut config = Config::default();
    config.mount_options = mo;
    config.acl = if opts.allow_other {
        SessionACL::All
    } else if opts.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(threads.max(1));
    config.reader_token = opts.reader_token;
    let mut policy = store.policy();
    if let Some(v) = opts.trash_retention {
        policy.trash_retention_secs = v;
    }
    if let Some(v) = opts.revisions_keep {
        policy.revisions_keep = v;
    }
    if let Some(v) = opts.revisions_max_age {
        policy.revisions_max_age_secs = v;
    }
    if let Some(v) = opts.trash_min_age {
        policy.trash_min_age_secs = v;
    }
    if let Some(v) = &opts.trash_skip {
        policy.trash_skip = v.clone();
    }
    store.set_policy(policy);
    let fs_ = DecoFs::new(store.clone());
    let session = fuser::Session::new(fs_, &mnt, &config).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => Error::MountpointBusy(mnt.clone()),
        _ => Error::io(format!("mount on {}", mnt.display()), e),
    })?;
    set_readahead(&mnt, opts.readahead_kib.unwrap_or(READAHEAD_KIB));
    Ok((store, session, mnt))
}

/// Tell systemd (Type=notify) about our state, if it is listening.
pub fn sd_notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let res = if let Some(name) = path.as_bytes().strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), Path::new(&path))
    };
    if let Err(e) = res {
        log::warn!("sd_notify {msg}: {e}");
    }
}

/// Unmount; if files are still open there, detach lazily (the kernel finishes once they
/// close). Used on SIGTERM/SIGINT, where waiting for every user is not an option.
fn unmount_now(mnt: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(mnt.as_os_str().as_bytes())?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EBUSY) {
        return Err(e);
    }
    log::warn!("{} is busy: detaching it lazily", mnt.display());
    // SAFETY: as above.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Background upkeep of a writer: deferred directory times written every second,
/// batched blob sweeps (space of purged nodes, dropped revisions, chunks replaced within
/// a session) every 2 s, retention every minute.
/// Scheduled snapshots kept when `snapshot_every` is given without `snapshots_keep`.
const DEFAULT_SNAPSHOTS_KEEP: u32 = 24;

fn spawn_maintenance(store: std::sync::Weak<Store>, schedule: Option<(u64, u32)>) {
    std::thread::spawn(move || {
        let mut tick = 0u64;
        let mut next_sweep = Instant::now();
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let Some(st) = store.upgrade() else { return };
            // Remounted read-only: nothing to write until remounted read-write.
            if st.fence().paused() {
                continue;
            }
            // A panic in one step is logged and the next round tries again.
            let contained = |what: &str, r: std::result::Result<(), String>| {
                if let Err(why) = r {
                    log::error!("maintenance: {what} panicked ({why}); the next round tries again");
                }
            };
            // Directory times deferred by creates and unlinks (Records::touch_dir_times).
            contained(
                "directory times",
                panics::catch(|| {
                    if let Err(e) = st.records.flush_deferred() {
                        log::warn!("directory times: {e}");
                    }
                }),
            );
            // Closed scratch files not deleted meanwhile (Data::close_write).
            contained(
                "scratch files",
                panics::catch(|| st.data().commit_lingering()),
            );
            // Each sweep scans every record for references: sweep at most every 2 s,
            // and on a store big enough for a scan to take long, wait ten times the
            // last scan, so sweeping takes at most a tenth of one core.
            if Instant::now() >= next_sweep {
                let t = Instant::now();
                contained(
                    "sweep",
                    panics::catch(|| {
                        if let Err(e) = st.sweeper().run_pending_sweep() {
                            log::warn!("sweep: {e}");
                        }
                    }),
                );
                next_sweep = Instant::now() + Duration::from_secs(2).max(t.elapsed() * 10);
            }
            if tick.is_multiple_of(60) {
                contained("retention", panics::catch(|| expire(&st)));
            }
            if let Some((every, keep)) = schedule {
                contained(
                    "scheduled snapshots",
                    panics::catch(|| {
                        match st.snapshots().scheduled(every, keep) {
                        Ok((Some(name), freed)) => log::info!(
                            "scheduled snapshot {name} taken; older ones removed freed {freed} bytes"
                        ),
                        Ok((None, _)) => {}
                        Err(e) => log::warn!("scheduled snapshot: {e}"),
                    }
                    }),
                );
            }
            tick += 1;
        }
    });
}

/// How often a writer on an object store publishes its state when it changed.
const DEFAULT_PUBLISH_SECS: u64 = 5;

/// A writer on an object store publishes its state every `every` when it changed
/// (docs/DESIGN.md, "Remote storage"). A publish another writer beat (`remote_fenced`)
/// turns the mount read-only: its changes since stay local.
fn spawn_publisher(store: std::sync::Weak<Store>, every: Duration) {
    std::thread::spawn(move || loop {
        std::thread::sleep(every);
        let Some(st) = store.upgrade() else { return };
        if st.fence().paused() {
            continue;
        }
        let r = panics::catch(|| crate::store::remote::publish::publish(&st));
        match r {
            Ok(Ok(p)) if p.published => log::info!(
                "published {} ({} bytes, {} records)",
                p.seq,
                p.stream_bytes,
                p.records
            ),
            Ok(Ok(_)) => {}
            // A fenced publish turned the mount read-only (`publish` says why).
            Ok(Err(Error::RemoteFenced(_))) => {}
            Ok(Err(e)) => log::warn!("publish: {e}; retried in {} s", every.as_secs()),
            Err(why) => log::error!("publish panicked ({why}); retried"),
        }
    });
}

/// A writer mounted while its object store could not be reached: take the lease once
/// it can (every 2 s, backing off to 30 s).
fn spawn_lease_taker(store: std::sync::Weak<Store>, ttl: Option<Duration>) {
    std::thread::spawn(move || {
        let mut wait = Duration::from_secs(2);
        loop {
            std::thread::sleep(wait);
            let Some(st) = store.upgrade() else { return };
            match panics::catch(|| st.retry_lease(ttl)) {
                Ok(Ok(_)) => {
                    log::info!("took the object store's lease: publishing resumes");
                    return;
                }
                Ok(Err(Error::RemoteFenced(_) | Error::ReadOnly)) if st.fence().lost() => return,
                Ok(Err(e)) => log::debug!("the lease is not taken yet: {e}"),
                Err(why) => log::error!("taking the lease panicked ({why}); retried"),
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    });
}

/// How often a follower reads the published head by default (`follow_interval`).
const DEFAULT_FOLLOW_SECS: u64 = 2;

/// A follower's thread: apply what the writer published, every `every`.
fn spawn_follower(store: std::sync::Weak<Store>, every: Duration) {
    std::thread::spawn(move || {
        let mut failing = false;
        loop {
            let Some(st) = store.upgrade() else { return };
            let Some(f) = st.follower() else { return };
            match panics::catch(|| f.step(&st)) {
                Ok(Ok(n)) => {
                    if n > 0 {
                        log::info!("follow: applied {n} publish(es), now at {}", f.state().seq);
                    }
                    failing = false;
                }
                // Said once, not every round.
                Ok(Err(e)) if !failing => {
                    log::warn!("follow: {e}; retried every {} s", every.as_secs());
                    failing = true;
                }
                Ok(Err(_)) => {}
                Err(why) => log::error!("follow panicked ({why}); retried"),
            }
            drop(st);
            std::thread::sleep(every);
        }
    });
}

/// Apply the retention policy, saying what it purged.
fn expire(st: &Store) {
    match st.trash().expire() {
        Ok(r) if r.nodes + r.revisions > 0 => log::info!(
            "retention: purged {} trashed node(s), {} revision(s); the next sweep frees their space",
            r.nodes,
            r.revisions
        ),
        Ok(_) => {}
        Err(e) => log::warn!("retention: {e}"),
    }
}
