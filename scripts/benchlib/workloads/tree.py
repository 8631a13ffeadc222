"""tree: a real source tree (see source.py: BENCH_TREE, its size is the tree's) copied,
walked and removed, each step timed as the wall-clock time of the command.

  cp_tree    `cp -a` of the tree from a warm local copy
  find_cold  remount the FUSE target + drop the kernel caches, then `find . -type f | wc -l`
             in the copy (the count is checked)
  ls_lR      `ls -lR > /dev/null` right after, dentries warm
  rm_tree    `rm -rf` of the copy
Also the device reads during the cold find (find_cold_reads: a detail listed under "Device
I/O", not a workload).
"""

import os

from .. import source
from ..common import log, run


def measure(b):
    c = b.cfg
    tag = f"{c.src_files:,} files, {c.src_dirs:,} dirs, {c.src_bytes / 1e6:.0f} MB"
    b.metric("cp_tree", f"cp -a of a source tree ({tag}) from a warm local copy", "s", False,
             "tree")
    b.metric("find_cold", "find . -type f | wc -l, cold (remount + drop caches)", "s", False,
             "tree")
    b.metric("ls_lR", "ls -lR > /dev/null, right after the find", "s", False, "tree")
    b.metric("rm_tree", "rm -rf of the tree", "s", False, "tree")
    b.metric("find_cold_reads", "device reads during the cold find", "reads", False, "io",
             table=False)

    def one(t, rep):
        log(f"{t.name}: cp -a / find / ls -lR / rm -rf rep {rep + 1}")
        d = f"tree.{rep}"
        source.warm(c)
        dt, _, _ = run(["cp", "-a", c.src, d], cwd=t.fsdir, timeout=c.timeout)
        b.record("cp_tree", t, dt)
        t.cold()
        io0 = b.io()
        dt, out, _ = run("find . -type f | wc -l", shell=True, cwd=os.path.join(t.fsdir, d),
                         timeout=c.timeout)
        b.record_io("find_cold_reads", t, io0)
        source.check_count(c, t, d, out)
        b.record("find_cold", t, dt)
        dt, _, _ = run("ls -lR > /dev/null", shell=True, cwd=os.path.join(t.fsdir, d),
                       timeout=c.timeout)
        b.record("ls_lR", t, dt)
        dt, _, _ = run(["rm", "-rf", d], cwd=t.fsdir, timeout=c.timeout)
        b.record("rm_tree", t, dt)

    b.each_rep(["cp_tree", "find_cold", "ls_lR", "rm_tree"], one)
