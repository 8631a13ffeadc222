//! Mounting a store: option parsing, mountpoint checks, the background daemon and its
//! readiness handshake, signals, and `umount`.
//!
//! `decofs mount` (background) re-executes itself with `--foreground` in a new session,
//! its output going to `STORE/decofs.log`, and waits on a pipe until the child reports
//! that the mount is live (after the FUSE handshake) or why it failed. So the command
//! returns only once the mount answers, and its exit code is honest.
//!
//! The daemon writes `STORE/sessions/mount.<pid>` (the mountpoint) so `decofs umount`
//! can wait for it to exit after the unmount. SIGINT/SIGTERM/SIGHUP commit every open
//! write session, then unmount.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::FromRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, SessionACL};

use crate::fuse::DecoFs;
use crate::store::error::IoContext;
use crate::store::{Error, OpenOptions, Result, Stale, Store};

const READY_ENV: &str = "DECOFS_READY_FD";

#[derive(Clone, Debug, Default)]
pub struct MountOpts {
    pub read_only: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    /// Kernel flags passed through (nosuid, noexec, ...).
    pub flags: Vec<MountOption>,
    /// Retention overrides: trash_retention=DURATION, revisions_keep=N,
    /// revisions_max_age=DURATION.
    pub trash_retention: Option<u64>,
    pub revisions_keep: Option<u32>,
    pub revisions_max_age: Option<u64>,
    /// index=off: keep no metadata index (find/du/changes are then unavailable).
    pub no_index: bool,
    /// index_queue=N, index_delay=MS.
    pub index: crate::index::IndexOpts,
    /// readahead=KIB: the kernel's readahead window for this mount (None: the default,
    /// READAHEAD_KIB; 0 keeps the kernel's own, 128 KiB).
    pub readahead_kib: Option<u32>,
}

/// Default readahead window. The kernel caps a FUSE mount's readahead at 128 KiB, so a
/// sequential reader waits on one 128 KiB request at a time; a wider window lets it send
/// requests of max_pages (1 MiB) several at once. Raised through the mount's bdi in sysfs.
pub const READAHEAD_KIB: u32 = 4096;

/// Parse `-o a,b,c`. Options for fstab/mount(8) that do not concern the daemon are
/// accepted and ignored.
pub fn parse_opts(s: &str) -> Result<MountOpts> {
    let mut o = MountOpts::default();
    for opt in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        match opt {
            "ro" => o.read_only = true,
            "rw" => o.read_only = false,
            "allow_other" => o.allow_other = true,
            "allow_root" => o.allow_root = true,
            "default_permissions"
            | "defaults"
            | "auto"
            | "noauto"
            | "user"
            | "nouser"
            | "users"
            | "_netdev"
            | "nofail" => {}
            "dev" => o.flags.push(MountOption::Dev),
            "nodev" => o.flags.push(MountOption::NoDev),
            "suid" => o.flags.push(MountOption::Suid),
            "nosuid" => o.flags.push(MountOption::NoSuid),
            "exec" => o.flags.push(MountOption::Exec),
            "noexec" => o.flags.push(MountOption::NoExec),
            "atime" => o.flags.push(MountOption::Atime),
            "noatime" => o.flags.push(MountOption::NoAtime),
            "sync" => o.flags.push(MountOption::Sync),
            "async" => o.flags.push(MountOption::Async),
            "dirsync" => o.flags.push(MountOption::DirSync),
            x if x.starts_with("log=") => {} // applied by main before logging starts
            "index=off" | "noindex" => o.no_index = true,
            "index=on" => o.no_index = false,
            x if x.starts_with("index_queue=") => {
                o.index.queue = x["index_queue=".len()..]
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| Error::BadOption(opt.to_string()))?;
            }
            x if x.starts_with("index_delay=") => {
                o.index.delay = Duration::from_millis(
                    x["index_delay=".len()..]
                        .parse()
                        .map_err(|_| Error::BadOption(opt.to_string()))?,
                );
            }
            x if x.starts_with("readahead=") => {
                o.readahead_kib = Some(
                    x["readahead=".len()..]
                        .parse()
                        .ok()
                        .filter(|n| *n <= 1 << 20)
                        .ok_or_else(|| Error::BadOption(opt.to_string()))?,
                );
            }
            x if x.starts_with("trash_retention=") => {
                o.trash_retention = Some(duration_opt(opt)?);
            }
            x if x.starts_with("revisions_max_age=") => {
                o.revisions_max_age = Some(duration_opt(opt)?);
            }
            x if x.starts_with("revisions_keep=") => {
                o.revisions_keep = Some(
                    opt["revisions_keep=".len()..]
                        .parse()
                        .map_err(|_| Error::BadOption(opt.to_string()))?,
                );
            }
            other => return Err(Error::BadOption(other.to_string())),
        }
    }
    Ok(o)
}

/// The duration after the '=' of a `key=DURATION` option.
fn duration_opt(opt: &str) -> Result<u64> {
    opt.split_once('=')
        .and_then(|(_, v)| crate::store::layout::parse_duration(v))
        .ok_or_else(|| Error::BadOption(opt.to_string()))
}

/// One mount as /proc/self/mountinfo lists it.
#[derive(Debug)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
    /// "major:minor" of the mounted filesystem (names its /sys/class/bdi entry).
    pub dev: String,
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn mounts() -> Vec<MountEntry> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(" - ")?;
            let mut fields = a.split(' ');
            let dev = fields.nth(2)?.to_string();
            let mp = fields.nth(1)?;
            let mut rest = b.split(' ');
            Some(MountEntry {
                dev,
                mountpoint: PathBuf::from(unescape(mp)),
                fstype: rest.next()?.to_string(),
                source: unescape(rest.next()?),
            })
        })
        .collect()
}

fn mount_at(p: &Path) -> Option<MountEntry> {
    mounts().into_iter().rev().find(|m| m.mountpoint == p)
}

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

fn pid_file(store: &Path, pid: u32) -> PathBuf {
    store.join("sessions").join(format!("mount.{pid}"))
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

/// Tell the parent `decofs mount` how it went (if there is one waiting).
fn report_ready(res: &Result<()>) {
    let Some(fd) = std::env::var(READY_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    std::env::remove_var(READY_ENV);
    // SAFETY: the parent passed this descriptor to us for exactly this purpose.
    let mut f = unsafe { fs::File::from_raw_fd(fd) };
    let line = match res {
        Ok(()) => "ok\n".to_string(),
        Err(e) => format!(
            "{}\n",
            serde_json::json!({"code": e.code(), "reason": e.to_string(), "suggestion": e.suggestion()})
        ),
    };
    let _ = f.write_all(line.as_bytes());
}

/// Mount in this process and serve until unmounted.
pub fn run_foreground(
    store_path: &Path,
    mountpoint: &Path,
    opts: &MountOpts,
    threads: usize,
) -> Result<()> {
    // Before any thread exists, so every thread inherits the mask and only the sigwait
    // thread below ever receives these signals.
    let set = block_signals();
    let res = prepare(store_path, mountpoint, opts, threads);
    let (store, session, mnt) = match res {
        Ok(x) => x,
        Err(e) => {
            report_ready(&Err(e.clone_for_report()));
            return Err(e);
        }
    };
    let store_root = store.layout.root.clone();
    let pidf = pid_file(&store_root, std::process::id());
    let mut pid_text = mnt.as_os_str().as_bytes().to_vec();
    pid_text.extend_from_slice(if opts.read_only { b"\nro\n" } else { b"\nrw\n" });
    let me = std::process::id() as i32;
    pid_text.extend_from_slice(
        format!("{}\n", crate::control::proc_starttime(me).unwrap_or(0)).as_bytes(),
    );
    crate::control::clean_stale(&store_root);
    let _ = fs::write(&pidf, pid_text);
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
    let info = crate::control::DaemonInfo {
        mountpoint: mnt.clone(),
        started: Instant::now(),
        index: index.clone(),
    };
    let sock = match crate::control::serve(store.clone(), info) {
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
        let _ = match what {
            Stale::Content(id) => notifier.inval_inode(ino(id), 0, 0),
            Stale::Attrs(id) => notifier.inval_inode(ino(id), -1, 0),
            Stale::Entry(parent, name) => notifier.inval_entry(ino(parent), name),
        };
    }));
    if !opts.read_only {
        spawn_maintenance(Arc::downgrade(&store));
        store.start_spares();
    }
    log::info!("mounted {} on {}", store_root.display(), mnt.display());
    report_ready(&Ok(()));
    sd_notify("READY=1");
    let sig_mnt = mnt.clone();
    let sig_store = store.clone();
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: waiting on a valid signal set.
        unsafe { libc::sigwait(&set, &mut sig) };
        log::info!("signal {sig}: committing open files and unmounting");
        sd_notify("STOPPING=1");
        if let Err(e) = sig_store.commit_all() {
            log::error!("commit on signal failed: {e}");
        }
        if let Err(e) = unmount_now(&sig_mnt) {
            log::error!("unmount on signal failed: {e}");
        }
        // Open files can keep a lazily detached mount alive; everything is committed,
        // so do not wait forever.
        std::thread::sleep(Duration::from_secs(10));
        let _ = sig_store.commit_all();
        if let Err(e) = sig_store.close_fsync_log() {
            log::error!("closing the fsync log failed (it is replayed at the next mount): {e}");
        }
        std::process::exit(0);
    });
    let res = session.run().ctx(|| "serve the mount".into());
    sd_notify("STOPPING=1");
    let commit = store.commit_all();
    let commit = commit.and_then(|()| store.close_fsync_log());
    if let Ok(ix) = &index {
        ix.close();
    }
    let _ = fs::remove_file(&pidf);
    if let Some(p) = sock {
        let _ = fs::remove_file(p);
    }
    log::info!("unmounted {}", mnt.display());
    res.and(commit)
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
    let store = Arc::new(Store::open(
        &store_root,
        OpenOptions {
            read_only: opts.read_only,
            cache_bytes: 0,
        },
    )?);
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
    store.set_policy(policy);
    let fs_ = DecoFs::new(store.clone());
    let session = fuser::Session::new(fs_, &mnt, &config).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => Error::MountpointBusy(mnt.clone()),
        _ => Error::io(format!("mount on {}", mnt.display()), e),
    })?;
    set_readahead(&mnt, opts.readahead_kib.unwrap_or(READAHEAD_KIB));
    Ok((store, session, mnt))
}

impl Error {
    /// Errors carry io::Error which is not Clone; reports need only code and text.
    fn clone_for_report(&self) -> Error {
        match self {
            Error::Io { context, source } => Error::Io {
                context: context.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            Error::StoreNotFound(p) => Error::StoreNotFound(p.clone()),
            Error::NotAStore(p) => Error::NotAStore(p.clone()),
            Error::FormatUnsupported { found, supported } => Error::FormatUnsupported {
                found: found.clone(),
                supported: *supported,
            },
            Error::StoreLocked { path, holder } => Error::StoreLocked {
                path: path.clone(),
                holder: holder.clone(),
            },
            Error::NoXattrSupport(p) => Error::NoXattrSupport(p.clone()),
            Error::MountpointNotFound(p) => Error::MountpointNotFound(p.clone()),
            Error::MountpointNotDir(p) => Error::MountpointNotDir(p.clone()),
            Error::MountpointBusy(p) => Error::MountpointBusy(p.clone()),
            other => Error::Daemon(format!("{other} [code: {}]", other.code())),
        }
    }
}

/// A failure reported by the background daemon, re-raised in the parent with the
/// daemon's code and suggestion.
#[derive(Debug)]
pub struct Reported {
    pub code: String,
    pub reason: String,
    pub suggestion: String,
}

/// Start the daemon in the background and wait until it reports.
pub fn spawn_background(store_path: &Path, args: &[OsString]) -> std::result::Result<(), Reported> {
    let daemon_err = |reason: String| Reported {
        code: "daemon_failed".into(),
        reason,
        suggestion: format!("see {}", store_path.join("decofs.log").display()),
    };
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(daemon_err(format!(
            "pipe: {}",
            std::io::Error::last_os_error()
        )));
    }
    let (rfd, wfd) = (fds[0], fds[1]);
    // Log next to the store if it is a store; otherwise nowhere (the error comes back
    // through the pipe and nothing is written into a directory that is not a store).
    let log = if store_path.join(crate::store::layout::FORMAT_FILE).exists() {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(store_path.join("decofs.log"))
            .ok()
    } else {
        None
    };
    let exe = std::env::current_exe().map_err(|e| daemon_err(e.to_string()))?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .arg("--foreground")
        .env(READY_ENV, "3")
        .stdin(Stdio::null());
    match log {
        Some(f) => {
            let f2 = f.try_clone().map_err(|e| daemon_err(e.to_string()))?;
            cmd.stdout(f).stderr(f2);
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            if libc::dup2(wfd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| daemon_err(format!("start daemon: {e}")))?;
    // SAFETY: closing our copy of the write end; reading the read end we own.
    unsafe { libc::close(wfd) };
    let mut r = unsafe { fs::File::from_raw_fd(rfd) };
    let mut line = String::new();
    let _ = r.read_to_string(&mut line);
    let line = line.trim();
    if line == "ok" {
        return Ok(());
    }
    let _ = child.wait();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        return Err(Reported {
            code: s("code"),
            reason: s("reason"),
            suggestion: s("suggestion"),
        });
    }
    Err(daemon_err(
        "the daemon exited before the mount was live".into(),
    ))
}

/// Unmount a decofs mount and wait for its daemon to exit.
pub fn umount(mountpoint: &Path, lazy: bool) -> Result<()> {
    let canon = fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let entry = mount_at(&canon).ok_or_else(|| Error::NotMounted(canon.clone()))?;
    if !(entry.fstype == "fuse.decofs" || entry.fstype == "fuse") {
        return Err(Error::NotMounted(canon));
    }
    // The daemon serving this mountpoint, to wait for after the unmount.
    let store = PathBuf::from(&entry.source);
    let daemon = crate::control::daemons(&store)
        .into_iter()
        .find(|d| d.mountpoint == canon)
        .map(|d| (d.pid, d.writer));
    let c =
        std::ffi::CString::new(canon.as_os_str().as_bytes()).map_err(|_| Error::Invalid("path"))?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // A mount is busy while anything holds a file or directory in it. Some holders are
    // gone within milliseconds: a process forked while a file here was open keeps a copy
    // of the descriptor until it execs (close-on-exec then closes it, after a FLUSH to
    // the daemon). Retry for UMOUNT_BUSY_GRACE before calling the mount busy.
    let start = Instant::now();
    // SAFETY: c is a valid NUL-terminated path.
    while unsafe { libc::umount2(c.as_ptr(), flags) } != 0 {
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EBUSY) if start.elapsed() < UMOUNT_BUSY_GRACE => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Some(libc::EBUSY) => return Err(Error::MountInUse(canon)),
            _ => return Err(Error::io(format!("unmount {}", canon.display()), e)),
        }
    }
    // Return only once the daemon has committed and let go of the store, so the next
    // mount of it succeeds: every thread gone and, for a writer, the lock free. That can
    // take a while after a burst of changes (the index applies what it has queued before
    // it closes): say so, and never report success while the store is still held.
    if let Some((pid, writer)) = daemon {
        let start = Instant::now();
        let mut told = false;
        while !(process_gone(pid) && (!writer || lock_free(&store))) {
            if !told && start.elapsed() >= UMOUNT_NOTICE {
                eprintln!(
                    "decofs: unmounted; waiting for the daemon (pid {pid}) to finish: it \
                     commits open files and brings the index up to date before it lets go \
                     of the store"
                );
                told = true;
            }
            if start.elapsed() >= UMOUNT_WAIT {
                return Err(Error::Daemon(format!(
                    "{} is unmounted, but its daemon (pid {pid}) still holds the store {} \
                     after {} s; the next read-write mount will be refused until it exits",
                    canon.display(),
                    store.display(),
                    UMOUNT_WAIT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// How long `umount` waits for the daemon to exit before it says it is waiting, and
/// before it gives up with an error.
const UMOUNT_NOTICE: Duration = Duration::from_secs(5);
const UMOUNT_WAIT: Duration = Duration::from_secs(900);
/// How long a busy mountpoint is retried before `umount` reports it busy.
const UMOUNT_BUSY_GRACE: Duration = Duration::from_secs(1);

pub use crate::store::lock::process_gone;

/// Could a writer take the store's lock right now?
fn lock_free(store: &Path) -> bool {
    use std::os::unix::io::AsRawFd;
    let Ok(f) = fs::File::open(store.join("lock")) else {
        return true;
    };
    // SAFETY: flock on an owned descriptor; a shared probe lock is dropped with `f`.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) == 0 }
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
fn spawn_maintenance(store: std::sync::Weak<Store>) {
    std::thread::spawn(move || {
        let mut tick = 0u64;
        let mut next_sweep = Instant::now();
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let Some(st) = store.upgrade() else { return };
            // Directory times deferred by creates and unlinks (Store::touch_dir_times).
            if let Err(e) = st.records.flush_deferred() {
                log::warn!("directory times: {e}");
            }
            // Each sweep scans every record for references: sweep at most every 2 s,
            // and on a store big enough for a scan to take long, wait ten times the
            // last scan, so sweeping takes at most a tenth of one core.
            if Instant::now() >= next_sweep {
                let t = Instant::now();
                if let Err(e) = st.run_pending_sweep() {
                    log::warn!("sweep: {e}");
                }
                next_sweep = Instant::now() + Duration::from_secs(2).max(t.elapsed() * 10);
            }
            if tick.is_multiple_of(60) {
                match st.expire() {
                    Ok(r) if r.nodes + r.revisions > 0 => log::info!(
                        "retention: purged {} trashed node(s), {} revision(s); the next sweep frees their space",
                        r.nodes,
                        r.revisions
                    ),
                    Ok(_) => {}
                    Err(e) => log::warn!("retention: {e}"),
                }
            }
            tick += 1;
        }
    });
}
