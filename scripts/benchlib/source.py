"""The real source tree that the tree, tar, git and index groups copy, unpack and commit.

Default: the cargo registry sources in ~/.cargo/registry/src (every 10th crate with --quick);
BENCH_TREE picks another directory. It is copied once into the scratch area (so it is on the
local disk and frozen for the run) and archived there as tree.tar for the tar and git groups.
"""

import os
import shlex
import subprocess

from .common import BenchError, log, run

GROUPS = ("tree", "tar", "git", "index")  # the groups that need it


def prepare(cfg):
    """Copy the source tree into the scratch area, count it, and make a tar archive of it.
    Sets cfg.src, cfg.src_files, cfg.src_dirs, cfg.src_bytes, cfg.src_desc, cfg.tarball."""
    if not any(g in cfg.groups for g in GROUPS):
        cfg.src_files = cfg.src_dirs = cfg.src_bytes = 0
        cfg.src_desc = "not used"
        return
    src_root = os.environ.get("BENCH_TREE")
    candidates = []
    if src_root:
        candidates = [src_root]
    else:
        reg = os.path.expanduser("~/.cargo/registry/src")
        if os.path.isdir(reg):
            candidates = [os.path.join(reg, d) for d in sorted(os.listdir(reg))]
        candidates = [c for c in candidates if os.path.isdir(c)] or ["/usr/include"]
        src_root = ", ".join(candidates)
    items = []
    for c in candidates:
        for d in sorted(os.listdir(c)):
            items.append(os.path.join(c, d))
    if cfg.quick:
        items = items[::10]
    dst = os.path.join(cfg.work, "source", "tree")
    os.makedirs(dst)
    log(f"copying {len(items)} top-level entries of {src_root} to the scratch area")
    for chunk in range(0, len(items), 200):
        subprocess.run(["cp", "-a", "--"] + items[chunk:chunk + 200] + [dst], check=True)
    nfiles = ndirs = nbytes = 0
    for dp, dns, fns in os.walk(dst):
        ndirs += len(dns)
        for fn in fns:
            p = os.path.join(dp, fn)
            st = os.lstat(p)
            nbytes += st.st_size
            if not os.path.islink(p):
                nfiles += 1
    cfg.src, cfg.src_files, cfg.src_dirs, cfg.src_bytes = dst, nfiles, ndirs, nbytes
    cfg.src_desc = (f"{len(items)} top-level entries of {src_root}"
                    f"{' (every 10th, --quick)' if cfg.quick else ''}")
    cfg.tarball = os.path.join(cfg.work, "source", "tree.tar")
    subprocess.run(["tar", "cf", cfg.tarball, "-C", os.path.dirname(dst), "tree"], check=True)
    log(f"source tree: {nfiles} files, {ndirs} dirs, {nbytes / 1e6:.0f} MB")


def warm(cfg):
    """Read every file of the local copy, so that copying it measures the target only."""
    run(f"find {shlex.quote(cfg.src)} -type f -print0 | xargs -0 cat > /dev/null",
        shell=True, timeout=cfg.timeout)


def check_count(cfg, t, d, out):
    """`out` is the output of `find . -type f | wc -l` in a copy `d` on target `t`."""
    n = int(out.strip())
    if n != cfg.src_files:
        raise BenchError(f"{t.name}: {d} holds {n} files, expected {cfg.src_files}")
