"""git: committing the source tree (see source.py) and asking for its status.

The tree is unpacked once per target into repo/. Then, every repetition:
  git_commit       remove repo/.git, then time `git init && git add -A && git commit`
  git_status_cold  remount the FUSE target + drop the kernel caches, `git status --porcelain`
                   (it must be clean)
  git_status_warm  the same right after
Wall-clock times of the commands. Also the device reads during the cold status
(git_status_cold_reads: a detail listed under "Device I/O", not a workload).
"""

import os
import shlex
import time

from ..common import BenchError, log, run

GIT = ["git", "-c", "core.fsmonitor=false", "-c", "gc.auto=0", "-c", "init.defaultBranch=main"]


def measure(b):
    c = b.cfg
    b.metric("git_commit", "git init + add -A + commit of the tree", "s", False, "git")
    b.metric("git_status_cold", "git status, cold (remount + drop caches)", "s", False, "git")
    b.metric("git_status_warm", "git status, warm (right after the cold one)", "s", False, "git")
    b.metric("git_status_cold_reads", "device reads during the cold git status", "reads",
             False, "io", table=False)
    keys = ["git_commit", "git_status_cold", "git_status_warm"]
    env = dict(os.environ, HOME=c.work, GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="bench",
               GIT_AUTHOR_EMAIL="bench@localhost", GIT_COMMITTER_NAME="bench",
               GIT_COMMITTER_EMAIL="bench@localhost", LC_ALL="C")
    git = shlex.join(GIT)

    def setup(t):
        log(f"{t.name}: the tree for git")
        d = os.path.join(t.fsdir, "repo")
        os.mkdir(d)
        run(["tar", "xf", c.tarball, "-C", d], timeout=c.timeout)

    def one(t, rep):
        log(f"{t.name}: git commit and status rep {rep + 1}")
        d = os.path.join(t.fsdir, "repo")
        # Each repetition commits the whole tree into a new repository.
        run(["rm", "-rf", os.path.join(d, ".git")], timeout=c.timeout)
        dt, _, _ = run(f"{git} init -q && {git} add -A && {git} commit -q -m tree", shell=True,
                       cwd=d, env=env, timeout=c.timeout)
        b.record("git_commit", t, dt)
        # Settle the index (racily-clean entries) so that every timed status is alike.
        time.sleep(1.1)
        run(GIT + ["update-index", "-q", "--refresh"], cwd=d, env=env, check=False,
            timeout=c.timeout)
        run(GIT + ["status", "--porcelain"], cwd=d, env=env, timeout=c.timeout)
        t.cold()
        for key in ("git_status_cold", "git_status_warm"):
            io0 = b.io()
            dt, out, _ = run(GIT + ["status", "--porcelain"], cwd=d, env=env, timeout=c.timeout)
            if key == "git_status_cold":
                b.record_io("git_status_cold_reads", t, io0)
            if out.strip():
                raise BenchError(f"git status not clean: {out.strip()[:200]}")
            b.record(key, t, dt)

    b.each_target(keys, setup)
    b.each_rep(keys, one, skip_failed=True)  # no tree unpacked: nothing to commit
    for t in b.live(0):
        run(["rm", "-rf", os.path.join(t.fsdir, "repo")], timeout=c.timeout, check=False)
