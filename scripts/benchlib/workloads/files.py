"""files: small-file creation.

  create_files  one python3 process creates BENCH_FILES files of BENCH_FILE_KIB KiB (distinct
                content) in one new directory: open(O_CREAT|O_EXCL), write, close; no fsync.
                The time of the loop only, measured inside that process.
"""

import os
import sys

from ..common import env_int, log, run


def configure(cfg):
    cfg.nfiles = env_int("BENCH_FILES", 1000 if cfg.quick else 10000)
    cfg.file_kib = env_int("BENCH_FILE_KIB", 4)


# Run as `python3 -c CREATE DIR N BYTES`; prints the seconds of the loop.
CREATE = r"""
import os, sys, time
d, n, sz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
base = os.urandom(sz)
os.mkdir(d)
t = time.perf_counter()
for i in range(n):
    fd = os.open(f"{d}/f{i:06d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, i.to_bytes(8, "little") + base[8:])
    os.close(fd)
print(time.perf_counter() - t)
"""


def measure(b):
    c = b.cfg
    b.metric("create_files", f"Create {c.nfiles:,} files of {c.file_kib} KiB in one directory "
             "(open/write/close, no fsync)", "s", False, "files")

    def one(t, rep):
        log(f"{t.name}: create {c.nfiles} files rep {rep + 1}")
        d = os.path.join(t.fsdir, f"small.{rep}")
        _, out, _ = run([sys.executable, "-c", CREATE, d, str(c.nfiles),
                         str(c.file_kib * 1024)], timeout=c.timeout)
        b.record("create_files", t, float(out.strip()))
        run(["rm", "-rf", d], timeout=c.timeout)

    b.each_rep(["create_files"], one)
