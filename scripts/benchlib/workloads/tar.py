"""tar: unpacking an archive of the source tree (see source.py).

  tar_x  `tar xf` of tree.tar into a new directory on the target; the archive is on the local
         disk and read once right before, so it is warm. Wall-clock time of tar; the file
         count is checked afterwards (not timed).
"""

import os
import shlex

from .. import source
from ..common import log, run


def measure(b):
    c = b.cfg
    b.metric("tar_x", "tar x of an archive of the tree (archive warm on the local disk)", "s",
             False, "tar")

    def one(t, rep):
        log(f"{t.name}: tar x rep {rep + 1}")
        d = os.path.join(t.fsdir, f"untar.{rep}")
        os.mkdir(d)
        run(f"cat {shlex.quote(c.tarball)} > /dev/null", shell=True)
        dt, _, _ = run(["tar", "xf", c.tarball, "-C", d], timeout=c.timeout)
        _, out, _ = run("find . -type f | wc -l", shell=True, cwd=d, timeout=c.timeout)
        source.check_count(c, t, d, out)
        b.record("tar_x", t, dt)
        run(["rm", "-rf", d], timeout=c.timeout)

    b.each_rep(["tar_x"], one)
