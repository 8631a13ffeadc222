"""What every part of the bench uses: logging, errors, running a command in its own process
group, mounts, the kernel caches, the backing device's counters, environment sizes."""

import os
import shlex
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))

T0 = time.monotonic()


def log(msg):
    print(f"[bench {time.monotonic() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


class Interrupted(BaseException):
    pass


def env_int(name, default):
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else default


# ----------------------------------------------------------------------------- processes

# The child process group currently running a workload (we started it; it is killed on
# timeout or interruption, never anything else).
CURRENT_CHILD = None


def run(cmd, cwd=None, timeout=600, env=None, stdin=None, shell=False, check=True):
    """Run a command in its own process group; return (seconds, stdout, stderr)."""
    global CURRENT_CHILD
    if isinstance(stdin, str):
        stdin_f = open(stdin, "rb")
    else:
        stdin_f = subprocess.DEVNULL
    t = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=stdin_f, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, shell=shell, start_new_session=True)
    CURRENT_CHILD = p
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(p)
        raise BenchError(f"timeout after {timeout}s: {cmd if shell else shlex.join(cmd)}")
    finally:
        CURRENT_CHILD = None
        if stdin_f is not subprocess.DEVNULL:
            stdin_f.close()
    dt = time.perf_counter() - t
    out = out.decode(errors="replace")
    err = err.decode(errors="replace")
    if check and p.returncode != 0:
        what = cmd if shell else shlex.join(cmd)
        tail = (err.strip() or out.strip()).splitlines()[-3:]
        raise BenchError(f"exit {p.returncode}: {what[:200]}: {' | '.join(tail)[:400]}")
    return dt, out, err


def kill_group(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def pid_is_ours(pid, marker):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker.encode() in f.read()
    except OSError:
        return False


def tool_version(cmd):
    try:
        _, out, err = run(cmd, timeout=30, check=False)
        return (out.strip() or err.strip()).splitlines()[0]
    except Exception as e:  # noqa: BLE001 - only for the report
        return f"? ({e})"


# ----------------------------------------------------------------------------- mounts

def unescape_mountinfo(s):
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 3 < len(s) and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def mountpoints():
    with open("/proc/self/mountinfo") as f:
        return [unescape_mountinfo(line.split()[4]) for line in f]


def is_mounted(path):
    return os.path.realpath(path) in mountpoints()


def mounts_under(prefix):
    prefix = os.path.realpath(prefix).rstrip("/") + "/"
    return [m for m in mountpoints() if m.startswith(prefix)]


def wait_mounted(path, proc=None, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_mounted(path):
            return
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"daemon exited with {proc.returncode} before {path} was mounted")
        time.sleep(0.1)
    raise BenchError(f"{path} not mounted after {timeout}s")


def fs_type(path):
    _, out, _ = run(["df", "--output=fstype,source", path], check=False)
    lines = out.strip().splitlines()
    return lines[-1].split() if len(lines) > 1 else ["?", "?"]


# ----------------------------------------------------------------------------- caches, device

# None until the first drop; False once a drop failed (the report then says 'cold' is warm).
CAN_DROP = None


def drop_caches():
    """sync, then drop page/dentry/inode caches (root only)."""
    global CAN_DROP
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        CAN_DROP = True if CAN_DROP is None else CAN_DROP
    except OSError as e:
        if CAN_DROP is not False:
            log(f"cannot drop caches ({e}); 'cold' figures are warm")
        CAN_DROP = False


def diskstats(name):
    """(reads completed, cache flushes completed) of block device `name` (as
    /proc/diskstats names it), or None. Flushes are None on kernels before 5.5."""
    try:
        with open("/proc/diskstats") as f:
            for line in f:
                p = line.split()
                if len(p) >= 4 and p[2] == name:
                    return int(p[3]), (int(p[18]) if len(p) >= 19 else None)
    except OSError:
        pass
    return None


def block_device(path):
    """The /proc/diskstats name of the block device holding `path`, or None."""
    _, dev = fs_type(path)
    if not dev.startswith("/dev/"):
        return None
    name = os.path.basename(os.path.realpath(dev))
    return name if diskstats(name) else None


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])
