"""snap: snapshots on decofs (only when asked for: `--workloads snap`; other targets have
none, so every figure is decofs against itself in the same run).

  snap_create_N   `decofs snapshot create` on a store holding N files (BENCH_SNAP_SIZES,
                  default 10000,100000; 1000000 takes long to build), the CLI's whole run
                  (process start included): O(1), so flat in N
  snap_live_0     a mixed live workload (create BENCH_SNAP_FILES files of 4 KiB, rewrite
                  half of them, rename a quarter, delete a quarter) with no snapshot
  snap_live_10    the same workload on the same tree with 10 snapshots present, each taken
                  after a round of changes (so their areas hold copies); its ratio to
                  snap_live_0 is the cost of snapshots to live writes
"""

import os
import sys
import time

from ..common import BenchError, env_int, log, run

# `python3 -c MAKE DIR N`: N files of 64 bytes in directories of 1,000.
MAKE = r"""
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    sub = f"{d}/d{i // 1000:04d}"
    if i % 1000 == 0:
        os.makedirs(sub, exist_ok=True)
    with open(f"{sub}/f{i:07d}", "wb") as f:
        f.write(b"x" * 64)
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
    cfg.snap_files = env_int("BENCH_SNAP_FILES", 500 if cfg.quick else 2000)


def measure(b):
    c = b.cfg
    for n in c.snap_sizes:
        b.metric(f"snap_create_{n}", f"decofs snapshot create on a store of {n:,} files",
                 "ms", False, "snap")
    b.metric("snap_live_0", f"mixed workload ({c.snap_files:,} files), no snapshot", "s",
             False, "snap")
    b.metric("snap_live_10", f"the same with 10 snapshots present", "s", False, "snap")
    decofs = [t for t in b.targets if t.name.startswith("decofs")]

    def create(t, rep):
        made = 0
        for n in c.snap_sizes:
            d = os.path.join(t.fsdir, f"snap.tree.{rep}")
            log(f"{t.name}: snap: {n} files rep {rep + 1}")
            run([sys.executable, "-c", MAKE, d, str(n - made)], timeout=c.timeout * 4)
            made = n
            dt, _, _ = run([t.bin, "snapshot", "create", t.mnt, f"bench-{rep}-{n}"],
                           timeout=c.timeout)
            b.record(f"snap_create_{n}", t, dt * 1000)
        for n in c.snap_sizes:
            run([t.bin, "snapshot", "rm", t.mnt, f"bench-{rep}-{n}"], timeout=c.timeout)
        run(["rm", "-rf", os.path.join(t.fsdir, f"snap.tree.{rep}")], timeout=c.timeout * 4)

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
            b.guarded([f"snap_create_{n}" for n in c.snap_sizes], t, lambda: create(t, rep))
            b.guarded(["snap_live_0", "snap_live_10"], t, lambda: live(t, rep))
