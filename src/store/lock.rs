//! The single-writer lock with a fencing epoch (invariant 7).
//!
//! A read-write open of a store takes an exclusive `flock` on `STORE/lock` and writes who
//! holds it there. A second writer fails at once with `store_locked`, naming the holder.
//! The kernel drops the flock when the holder dies, so a crashed daemon on this host
//! never blocks the next mount.
//!
//! Every acquisition also increases the epoch in `STORE/epoch` (replaced by rename, so
//! each epoch is a new inode). The holder remembers its epoch and the inode; before
//! every mutation it checks (one stat) that the epoch file is still its own. `decofs
//! lock break` (for a holder that died on another host, where flock cannot tell)
//! increments the epoch and removes the lock file: from then on the stale holder's
//! writes are refused with EROFS, never applied, and a new writer can take a fresh lock.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::error::{Error, IoContext, Result};
use super::layout::{sync_dir, Layout};

pub struct StoreLock {
    _file: File,
    pub epoch: u64,
    epoch_path: PathBuf,
    epoch_ino: u64,
    fenced: AtomicBool,
}

/// Whether this process may change the store (invariant 7): it is not read-only, not
/// remounted read-only for now, and the lock it took (if any) has not been broken
/// since. Checked before every change.
pub struct Fence {
    read_only: bool,
    lock: Option<StoreLock>,
    /// `mount -o remount,ro` of a writer: changes are refused, the lock is kept so that
    /// `remount,rw` can allow them again.
    paused: AtomicBool,
    /// Another writer took the store's object store (its lease or its published
    /// state): changes are refused for good, whatever a remount asks.
    lost: AtomicBool,
    /// A follower of a store's published state (a read-only mount of a store on an
    /// object store): changes are refused except the published ones it applies
    /// ([`Fence::applying`]); a remount cannot allow them.
    follower: AtomicBool,
    applying: parking_lot::Mutex<()>,
}

impl Fence {
    pub fn new(read_only: bool, lock: Option<StoreLock>) -> Fence {
        Fence {
            read_only,
            lock,
            paused: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            follower: AtomicBool::new(false),
            applying: parking_lot::Mutex::new(()),
        }
    }

    /// Make this writer a follower: every change is refused from now on, but for what
    /// [`Fence::applying`] lets through.
    pub fn follow(&self) {
        self.follower.store(true, Ordering::SeqCst);
        self.paused.store(true, Ordering::SeqCst);
    }

    pub fn follower(&self) -> bool {
        self.follower.load(Ordering::SeqCst)
    }

    /// Run `f`, a follower's apply of published changes, with changes allowed. Only
    /// the follower's own thread changes anything meanwhile: its mount is read-only in
    /// the kernel, which refuses every change before it reaches the store.
    pub fn applying<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        struct Pause<'a>(&'a AtomicBool);
        impl Drop for Pause<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let _one = self.applying.lock();
        if !self.follower() || self.lost() {
            return Err(Error::ReadOnly);
        }
        self.paused.store(false, Ordering::SeqCst);
        let _pause = Pause(&self.paused);
        f()
    }

    /// Another writer took over the object store: refuse every change from now on.
    pub fn lose(&self) {
        self.lost.store(true, Ordering::SeqCst);
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Was the object store taken over by another writer?
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// `Err(ReadOnly)` when this process may not change the store.
    pub fn check(&self) -> Result<()> {
        if self.read_only || self.paused.load(Ordering::SeqCst) || self.lost() {
            return Err(Error::ReadOnly);
        }
        match &self.lock {
            Some(l) if !l.valid() => Err(Error::ReadOnly),
            _ => Ok(()),
        }
    }

    /// Opened read-only (no writer lock). A writer remounted read-only is not: see
    /// [`Fence::paused`].
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Refuse changes from now on (`paused`), or allow them again. Only a writer (it
    /// holds the lock) may allow them again: a read-only open would need the lock, and
    /// with it the fsync log replay, the record cache and the index a writer sets up at
    /// open, so it stays read-only (`Err(ReadOnly)`).
    pub fn set_paused(&self, paused: bool) -> Result<()> {
        if !paused && (self.read_only || self.lock.is_none() || self.lost() || self.follower()) {
            return Err(Error::ReadOnly);
        }
        self.paused.store(paused, Ordering::SeqCst);
        Ok(())
    }

    /// Remounted read-only: changes are refused until [`Fence::set_paused`]`(false)`.
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// The fencing epoch held (None for read-only opens).
    pub fn epoch(&self) -> Option<u64> {
        self.lock.as_ref().map(|l| l.epoch)
    }
}

/// Read the current epoch (0 for a store that was never mounted read-write).
pub fn read_epoch(layout: &Layout) -> Result<u64> {
    match fs::read_to_string(layout.epoch_file()) {
        Ok(s) => s.trim().parse().map_err(|_| Error::CorruptRecord {
            node: "epoch".into(),
            detail: format!("bad epoch file: {s:?}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::io("read epoch", e)),
    }
}

/// Replace the epoch file with `epoch` (new inode), durably. Returns the new inode.
fn write_epoch(layout: &Layout, epoch: u64) -> Result<u64> {
    let tmp = layout
        .sessions()
        .join(format!("epoch.{}.tmp", std::process::id()));
    let mut f = File::create(&tmp).ctx(|| format!("create {}", tmp.display()))?;
    f.write_all(format!("{epoch}\n").as_bytes())
        .ctx(|| "write epoch".into())?;
    f.sync_all().ctx(|| "sync epoch".into())?;
    let ino = f.metadata().ctx(|| "stat epoch".into())?.ino();
    fs::rename(&tmp, layout.epoch_file()).ctx(|| "install epoch".into())?;
    sync_dir(&layout.root)?;
    Ok(ino)
}

/// Who holds the lock, as written in the lock file ("" if nobody wrote one).
pub fn holder(layout: &Layout) -> String {
    fs::read_to_string(layout.lock_file())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// No thread of `pid` is still running (zombies count as gone).
pub fn process_gone(pid: i32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|t| task_exited(&t.path().join("stat")))
}

/// Has the task whose `/proc/.../stat` is `stat` exited (gone, zombie or dead)?
pub fn task_exited(stat: &Path) -> bool {
    match fs::read_to_string(stat) {
        Ok(s) => s
            .rsplit(')')
            .next()
            .map(|r| r.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => true,
    }
}

/// The pid of the holder named in a lock file ("pid N on host H …") when it is a
/// process of this host (None for another host's or an unreadable holder).
pub fn local_holder_pid(holder: &str) -> Option<i32> {
    let mut words = holder.split_whitespace();
    let (Some("pid"), Some(pid), Some("on"), Some("host"), Some(host)) = (
        words.next(),
        words.next().and_then(|p| p.parse::<i32>().ok()),
        words.next(),
        words.next(),
        words.next(),
    ) else {
        return None;
    };
    (host == hostname()).then_some(pid)
}

/// Is the holder named in a lock file a process of this host whose main thread has
/// already exited, so that the whole process is on its way out?
fn holder_exiting(holder: &str) -> bool {
    let Some(pid) = local_holder_pid(holder) else {
        return false;
    };
    // Gone already counts too: the kernel is releasing its files.
    task_exited(Path::new(&format!("/proc/{pid}/stat")))
}

/// Is the lock held by a live process (on this host)?
pub fn is_locked(layout: &Layout) -> bool {
    let Ok(f) = File::open(layout.lock_file()) else {
        return false;
    };
    // SAFETY: flock on an owned descriptor; the probe lock goes away with `f`.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) != 0 }
}

impl StoreLock {
    pub fn acquire(layout: &Layout) -> Result<StoreLock> {
        let path = layout.lock_file();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .ctx(|| format!("open {}", path.display()))?;
        // A holder on this host that is already exiting (its main thread gone, the rest
        // still closing files) lets go within moments: wait for it rather than refuse, so
        // `kill <daemon>; decofs mount …` works. A live holder is refused at once.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            // SAFETY: flock on a valid, owned descriptor.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(Error::io(format!("lock {}", path.display()), err));
            }
            let mut holder = String::new();
            file.seek(SeekFrom::Start(0)).ctx(|| "seek lock".into())?;
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim().to_string();
            if holder_exiting(&holder) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
            return Err(Error::StoreLocked {
                path: layout.root.clone(),
                holder: if holder.is_empty() {
                    "another process".into()
                } else {
                    holder
                },
            });
        }
        let epoch = read_epoch(layout)? + 1;
        let epoch_ino = write_epoch(layout, epoch)?;
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let info = format!(
            "pid {} on host {} since {} (unix time), epoch {}\n",
            std::process::id(),
            hostname(),
            since,
            epoch
        );
        file.set_len(0).ctx(|| "truncate lock".into())?;
        file.seek(SeekFrom::Start(0)).ctx(|| "seek lock".into())?;
        file.write_all(info.as_bytes())
            .ctx(|| "write lock".into())?;
        Ok(StoreLock {
            _file: file,
            epoch,
            epoch_path: layout.epoch_file(),
            epoch_ino,
            fenced: AtomicBool::new(false),
        })
    }

    /// Is this holder still the current one? Once fenced, always fenced.
    pub fn valid(&self) -> bool {
        if self.fenced.load(Ordering::Relaxed) {
            return false;
        }
        let current = fs::metadata(&self.epoch_path).map(|m| m.ino()).unwrap_or(0);
        if current == self.epoch_ino {
            return true;
        }
        log::error!(
            "the store lock was broken (epoch {} is no longer current): refusing all writes",
            self.epoch
        );
        self.fenced.store(true, Ordering::Relaxed);
        false
    }
}

/// Break the lock of a store whose holder is gone: a new epoch fences the old holder,
/// and removing the lock file lets a new writer lock a fresh one. Returns (old holder,
/// new epoch).
pub fn break_lock(root: &Path) -> Result<(String, u64)> {
    let layout = Layout::new(root);
    layout.read_format()?;
    let old = holder(&layout);
    let epoch = read_epoch(&layout)? + 1;
    write_epoch(&layout, epoch)?;
    match fs::remove_file(layout.lock_file()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove lock", e)),
    }
    sync_dir(&layout.root)?;
    Ok((old, epoch))
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
