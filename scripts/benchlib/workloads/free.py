"""free: what freeing space costs on decofs (only when asked for: `--workloads free`;
other targets have no trash to purge, so every figure is decofs against itself in the
same run).

  free_purge_N   `decofs trash purge --all` of one deleted 4 MiB file on a store holding
                 N other files (BENCH_FREE_SIZES, default 1000,100000), the CLI's whole
                 run: the purge frees the file's blobs at once. With blob reference
                 counts the sweep asks the counts of the freed blobs only, so the figure
                 is flat in N; the ratio of the largest N to the smallest is what the
                 store's size adds (a sweep that scans every record grows with N).
"""

import os
import sys

from ..common import BenchError, log, run
from .snap import MAKE


def configure(cfg):
    sizes = os.environ.get("BENCH_FREE_SIZES", "1000" if cfg.quick else "1000,100000")
    cfg.free_sizes = [int(s) for s in sizes.split(",") if s]


def measure(b):
    c = b.cfg
    for n in c.free_sizes:
        b.metric(f"free_purge_{n}", f"trash purge of one 4 MiB file, store of {n:,} files",
                 "ms", False, "free")
    decofs = [t for t in b.targets if t.name.startswith("decofs")]
    if not decofs:
        raise BenchError("the free group needs a decofs target")

    def purge(t, rep):
        d = os.path.join(t.fsdir, f"free.tree.{rep}")
        made = 0
        for n in c.free_sizes:
            log(f"{t.name}: free: {n} files rep {rep + 1}")
            run([sys.executable, "-c", MAKE, d, str(n - made)], timeout=c.timeout * 4)
            made = n
            f = os.path.join(t.fsdir, f"free.big.{rep}")
            with open(f, "wb") as out:
                out.write(os.urandom(4 << 20))
            os.unlink(f)
            dt, _, _ = run([t.bin, "trash", "purge", t.mnt, "--all"], timeout=c.timeout)
            b.record(f"free_purge_{n}", t, dt * 1000)
        run(["rm", "-rf", d], timeout=c.timeout * 4)
        run([t.bin, "trash", "purge", t.mnt, "--all"], timeout=c.timeout * 4)

    for rep in range(c.reps):
        for t in decofs:
            b.guarded([f"free_purge_{n}" for n in c.free_sizes], t, lambda: purge(t, rep))
