"""free: what freeing space costs on decofs (only when asked for: `--workloads free`;
other targets have no trash to purge, so every figure is decofs against itself in the
same run).

  free_purge_N   `decofs trash purge --all --json` of one deleted 4 MiB file on a store
                 holding N other files (BENCH_FREE_SIZES, default 1000,100000), the CLI's
                 whole run: the purge frees the file's blobs at once (the file is older
                 than trash_min_age, so its delete put it in the trash; the purge must
                 report its 4 MiB freed). With blob reference counts the sweep asks the
                 counts of the freed blobs only, so the figure is flat in N; the ratio of
                 the largest N to the smallest is what the store's size adds (a sweep that
                 scans every record grows with N).

The tree is made once (the snap group's maker, 4 processes, directories of 1,000 files
of 64 bytes) and grown from one size to the next; at each size the disk is synced
(untimed), then the REPS purges are taken one after the other. The tree stays for the
run's cleanup (deleting it through the mount would only fill the trash).
"""

import json
import os
import sys
import time

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

    def purge(t):
        d = os.path.join(t.fsdir, "free.tree")
        made = 0
        for n in c.free_sizes:
            log(f"{t.name}: free: grow the tree to {n:,} files")
            run([sys.executable, "-c", MAKE, d, str(made), str(n - made), "4"],
                timeout=c.timeout * 4)
            made = n
            os.sync()
            for rep in range(c.reps):
                f = os.path.join(t.fsdir, f"free.big.{n}.{rep}")
                with open(f, "wb") as out:
                    out.write(os.urandom(4 << 20))
                # Older than trash_min_age (5 s), so the delete puts it in the trash
                # instead of freeing it at once as a scratch file.
                time.sleep(6)
                os.unlink(f)
                dt, out, _ = run([t.bin, "trash", "purge", t.mnt, "--all", "--json"],
                                 timeout=c.timeout)
                freed = json.loads(out).get("bytes_freed", 0)
                if freed < 4 << 20:
                    raise BenchError(f"the purge freed {freed} bytes, not the 4 MiB file")
                b.record(f"free_purge_{n}", t, dt * 1000)

    for t in decofs:
        b.guarded([f"free_purge_{n}" for n in c.free_sizes], t, lambda: purge(t))
