"""undo: deleting a large tree, and on decofs restoring and purging it from the trash.

  undo_rm       rm -rf of a tree of BENCH_UNDO_FILES files of 2 KiB in directories of 100
                (a cargo registry's shape), made BENCH_UNDO_AGE_S seconds before so that
                decofs keeps every file in its trash (files deleted younger than
                trash_min_age, 5 s by default, skip it)
  undo_restore  decofs only: `decofs trash restore MNT TREE` of that tree, through the
                daemon (the command returns once the tree is back); the file count is
                checked after
  undo_purge    decofs only: the tree deleted again, `decofs trash purge MNT --id ID` of it
"""

import json
import os
import sys
import time

from ..common import BenchError, env_int, log, run

# Run as `python3 -c MAKE DIR N`: N files of 2 KiB in subdirectories of 100.
MAKE = r"""
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
body = os.urandom(2048)
for i in range(n):
    sub = f"{d}/pkg{i // 100:04d}"
    if i % 100 == 0:
        os.makedirs(sub)
    with open(f"{sub}/f{i:06d}.rs", "wb") as f:
        f.write(i.to_bytes(8, "little") + body[8:])
"""


def configure(cfg):
    cfg.undo_files = env_int("BENCH_UNDO_FILES", 1300 if cfg.quick else 13000)
    cfg.undo_age = env_int("BENCH_UNDO_AGE_S", 6)


def count_files(d):
    return sum(len(files) for _, _, files in os.walk(d))


def measure(b):
    c = b.cfg
    n = c.undo_files
    b.metric("undo_rm", f"rm -rf of a tree of {n:,} files (2 KiB, 100 per directory)", "s",
             False, "undo")
    b.metric("undo_restore", f"decofs trash restore of that tree ({n:,} files)", "s", False,
             "undo")
    b.metric("undo_purge", f"decofs trash purge of that tree ({n:,} files)", "s", False,
             "undo")

    def one(t, rep):
        name = f"undo.{rep}"
        d = os.path.join(t.fsdir, name)
        log(f"{t.name}: undo: {n} files rep {rep + 1}")
        run([sys.executable, "-c", MAKE, d, str(n)], timeout=c.timeout)
        time.sleep(c.undo_age)
        dt, _, _ = run(["rm", "-rf", d], timeout=c.timeout)
        b.record("undo_rm", t, dt)
        if not t.name.startswith("decofs"):
            return
        rel = os.path.relpath(d, t.mnt)
        dt, _, _ = run([t.bin, "trash", "restore", t.mnt, rel], timeout=c.timeout)
        got = count_files(d)
        if got != n:
            raise BenchError(f"restore brought back {got} of {n} files")
        b.record("undo_restore", t, dt)
        run(["rm", "-rf", d], timeout=c.timeout)
        _, out, _ = run([t.bin, "--json", "trash", "ls", t.mnt, rel], timeout=c.timeout)
        tops = [e for e in json.loads(out)["entries"]
                if e.get("within") is None and e.get("origin") == rel]
        if not tops:
            raise BenchError(f"{rel} is not in the trash after rm -rf")
        dt, _, _ = run([t.bin, "trash", "purge", t.mnt, "--id", tops[-1]["id"]],
                       timeout=c.timeout)
        b.record("undo_purge", t, dt)

    b.each_rep(["undo_rm", "undo_restore", "undo_purge"], one)
