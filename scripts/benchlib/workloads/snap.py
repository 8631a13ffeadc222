"""snap: snapshots on decofs (only when asked for: `--workloads snap`; other targets have
none, so every figure is decofs against itself in the same run).

  snap_create_N   `decofs snapshot create` on a store holding N files (BENCH_SNAP_SIZES,
                  default 10000,100000; add 1000000 for issue 25's row, about 6 minutes more
                  to build here), the CLI's whole run (process start included): O(1), so
                  flat in N
  snap_live_0     a mixed live workload (create BENCH_SNAP_FILES files of 4 KiB, rewrite
                  half of them, rename a quarter, delete a quarter) with no snapshot
  snap_live_10    the same workload on the same tree with 10 snapshots present, each taken
                  after a round of changes (so their areas hold copies); its ratio to
                  snap_live_0 is the cost of snapshots to live writes

The tree of N files is built once per target, through the mount, by BENCH_SNAP_PROCS
processes at once (each takes whole directories of 1,000 files of 64 bytes:
open(O_CREAT|O_EXCL), write, close), growing from one size to the next; snap_build_N is
the time to grow it to N (a detail, in the raw values), snap_nodes_N the files
`decofs du` counts in it (it must be N). Before the creates at each size the daemon's
index is let catch up and the backing disk is synced (neither timed), so that a create
measures the store at rest, not the build's leftover writeback. Then the REPS creates are
taken one after the other, each snapshot removed (untimed) before the next. The live
workload runs first; the creates then start on a fresh store, whose tree is left for the
run's cleanup to remove with the scratch area (`rm -rf` of 1,000,000 files through the
mount would only fill the trash).
"""

import os
import shlex
import sys
import time

from ..common import BenchError, env_int, log, run

# `python3 -c MAKE DIR START COUNT PROCS`: files START..START+COUNT-1 of 64 bytes, file i
# in DIR/d{i // 1000}, made by PROCS processes at once (each takes whole directories).
MAKE = r"""
import os, sys
d, start, n, procs = sys.argv[1], *map(int, sys.argv[2:5])
PER, body = 1000, b"x" * 64
dirs = range(start // PER, (start + n + PER - 1) // PER)
def work(k):
    for j in dirs[k::procs]:
        sub = f"{d}/d{j:04d}"
        os.makedirs(sub, exist_ok=True)
        for i in range(max(start, j * PER), min(start + n, (j + 1) * PER)):
            fd = os.open(f"{sub}/f{i:07d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, body)
            os.close(fd)
os.makedirs(d, exist_ok=True)
pids = []
for k in range(min(procs, len(dirs))):
    pid = os.fork()
    if pid == 0:
        try:
            work(k)
            os._exit(0)
        except BaseException as e:
            print(f"creator {k}: {e}", file=sys.stderr, flush=True)
            os._exit(1)
    pids.append(pid)
bad = [p for p in pids if os.waitpid(p, 0)[1] != 0]
if bad:
    sys.exit(f"{len(bad)} creating process(es) failed")
"""

# `python3 -c MIXED DIR N ROUND`: the live workload.
MIXED = r"""
import os, sys
d, n, r = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.makedirs(d, exist_ok=True)
body = os.urandom(4096)
for i in range(n):
    with open(f"{d}/f{i}", "wb") as f:
        f.write(body)
for i in range(0, n, 2):
    with open(f"{d}/f{i}", "r+b") as f:
        f.write(r.encode() * 16)
for i in range(0, n, 4):
    os.rename(f"{d}/f{i}", f"{d}/g{i}")
for i in range(1, n, 4):
    os.unlink(f"{d}/f{i}")
"""


def configure(cfg):
    sizes = os.environ.get("BENCH_SNAP_SIZES", "1000" if cfg.quick else "10000,100000")
    cfg.snap_sizes = [int(s) for s in sizes.split(",") if s]
    cfg.snap_sizes = sorted(set(cfg.snap_sizes))
    cfg.snap_files = env_int("BENCH_SNAP_FILES", 500 if cfg.quick else 2000)
    cfg.snap_procs = max(1, env_int("BENCH_SNAP_PROCS", 4))
    cfg.snap_index_wait = env_int("BENCH_SNAP_INDEX_WAIT", 600)


def measure(b):
    c = b.cfg
    for n in c.snap_sizes:
        b.metric(f"snap_create_{n}", f"decofs snapshot create on a store of {n:,} files",
                 "ms", False, "snap")
    for n in c.snap_sizes:
        b.metric(f"snap_build_{n}", f"grow the tree to {n:,} files ({c.snap_procs} processes)",
                 "s", False, "snap", table=False)
        b.metric(f"snap_nodes_{n}", f"files decofs du counts in the tree of {n:,}", "files",
                 False, "snap", table=False)
    b.metric("snap_live_0", f"mixed workload ({c.snap_files:,} files), no snapshot", "s",
             False, "snap")
    b.metric("snap_live_10", f"the same with 10 snapshots present", "s", False, "snap")
    decofs = [t for t in b.targets if t.name.startswith("decofs")]

    def settle(t):
        """Let the daemon's index catch up with the build, then sync the backing disk."""
        if t.index:
            deadline = time.monotonic() + c.snap_index_wait
            while True:
                st = t.index_status()
                if st.get("state") == "current" and not st.get("lag_events"):
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"index not current {c.snap_index_wait}s after the "
                                     f"build: {st}")
                time.sleep(0.2)
        os.sync()

    def count(t, d):
        """The files in the tree: from the index (`decofs du`), or a walk without one."""
        if t.index:
            _, out, _ = run([t.bin, "du", d], timeout=c.timeout)
            log(f"{t.name}: snap: decofs du: {out.strip()} (bytes, files, dirs)")
            return int(out.split()[1])
        _, out, _ = run(f"find {shlex.quote(d)} -type f | wc -l", shell=True,
                        timeout=c.timeout)
        return int(out)

    def create(t):
        # A fresh store: the live workload's files are in the trash of this one.
        t.fresh()
        d = os.path.join(t.fsdir, "snap.tree")
        made = 0
        for n in c.snap_sizes:
            log(f"{t.name}: snap: grow the tree to {n:,} files ({c.snap_procs} processes)")
            dt, _, _ = run([sys.executable, "-c", MAKE, d, str(made), str(n - made),
                            str(c.snap_procs)], timeout=c.timeout * 4)
            made = n
            b.record(f"snap_build_{n}", t, dt)
            t0 = time.monotonic()
            settle(t)
            log(f"{t.name}: snap: index current and disk synced "
                f"{time.monotonic() - t0:.1f} s after the build")
            files = count(t, d)
            b.record(f"snap_nodes_{n}", t, files)
            if files != n:
                raise BenchError(f"{files} files in the tree, not {n}")
            for rep in range(c.reps):
                name = f"bench-{rep}-{n}"
                dt, _, _ = run([t.bin, "snapshot", "create", t.mnt, name],
                               timeout=c.timeout)
                b.record(f"snap_create_{n}", t, dt * 1000)
                run([t.bin, "snapshot", "rm", t.mnt, name], timeout=c.timeout)
            log(f"{t.name}: snap: built in {b.values[f'snap_build_{n}'][t.name][-1]:.1f} s; "
                f"create on {n:,} files: " + ", ".join(
                    f"{v:.1f}" for v in b.values[f"snap_create_{n}"][t.name]) + " ms")
        # The tree stays: the scratch area goes at the end of the run (removing it through
        # the mount would move every file to the trash).

    def live(t, rep):
        base = os.path.join(t.fsdir, f"snap.live.{rep}")
        # Alternate which runs first, so warm-up favours neither.
        order = [0, 10] if rep % 2 == 0 else [10, 0]
        for k in order:
            d = f"{base}.{k}"
            names = []
            if k:
                # 10 snapshots, each after a round of changes in the same directory.
                for i in range(k):
                    run([sys.executable, "-c", MIXED, d, "200", str(i % 10)],
                        timeout=c.timeout)
                    name = f"bench-live-{rep}-{i}"
                    run([t.bin, "snapshot", "create", t.mnt, name], timeout=c.timeout)
                    names.append(name)
            else:
                run([sys.executable, "-c", MIXED, d, "200", "0"], timeout=c.timeout)
            dt, _, _ = run([sys.executable, "-c", MIXED, d, str(c.snap_files), "7"],
                           timeout=c.timeout)
            b.record(f"snap_live_{k}", t, dt)
            for name in names:
                run([t.bin, "snapshot", "rm", t.mnt, name], timeout=c.timeout)
            run(["rm", "-rf", d], timeout=c.timeout)

    if not decofs:
        raise BenchError("the snap group needs a decofs target")
    for rep in range(c.reps):
        for t in decofs:
            b.guarded(["snap_live_0", "snap_live_10"], t, lambda: live(t, rep))
    for t in decofs:
        b.guarded([f"snap_create_{n}" for n in c.snap_sizes], t, lambda: create(t))
