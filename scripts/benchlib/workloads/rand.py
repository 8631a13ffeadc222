"""rand: random 4 KiB I/O at queue depth 1 in one file, with fio.

The file is laid out once per target (fresh random data, fsync at the end). Then, every
repetition:
  rand_read   remount the FUSE target + drop the kernel caches; fio --rw=randread --bs=4k
              over --io_size bytes (psync, QD1, --randrepeat=1 so every target reads the same
              offsets), capped at --runtime; fio's IOPS
  rand_write  fio --rw=randwrite --bs=4k --end_fsync=1; fio's IOPS (its runtime includes the
              final fsync)
"""

import os

from ..common import env_int, log


def configure(cfg):
    q = cfg.quick
    cfg.rand_mib = env_int("BENCH_RAND_MIB", 32 if q else 256)  # the file's size
    cfg.rand_io_mib = env_int("BENCH_RAND_IO_MIB", 8 if q else 64)  # I/O per measurement
    cfg.rand_runtime = env_int("BENCH_RAND_RUNTIME", 20 if q else 60)  # cap per measurement, s


def measure(b):
    c = b.cfg
    b.metric("rand_read", f"Random 4 KiB reads, QD1, cold, {c.rand_io_mib} MiB over a "
             f"{c.rand_mib} MiB file (fio)", "IOPS", True, "rand")
    b.metric("rand_write", f"Random 4 KiB writes, QD1, {c.rand_io_mib} MiB over a "
             f"{c.rand_mib} MiB file, fsync at end (fio)", "IOPS", True, "rand")
    keys = ["rand_read", "rand_write"]
    common = ["--bs=4k", f"--size={c.rand_mib}M", f"--io_size={c.rand_io_mib}M",
              f"--runtime={c.rand_runtime}", "--randrepeat=1"]

    def layout(t):
        log(f"{t.name}: laying out the random-I/O file")
        b.fio(t, ["--name=layout", "--filename=rand.dat", "--rw=write", "--bs=1M",
                  f"--size={c.rand_mib}M", "--end_fsync=1", "--refill_buffers=1"])

    def one(t, rep):
        log(f"{t.name}: random read/write rep {rep + 1}")
        t.cold()
        j = b.fio(t, ["--name=randread", "--filename=rand.dat", "--rw=randread"] + common)
        b.record("rand_read", t, j["read"]["iops"])
        j = b.fio(t, ["--name=randwrite", "--filename=rand.dat", "--rw=randwrite",
                      "--end_fsync=1", "--refill_buffers=1"] + common)
        b.record("rand_write", t, j["write"]["iops"])

    b.each_target(keys, layout)
    b.each_rep(keys, one, skip_failed=True)  # no file laid out: nothing to measure
    for t in b.live(0):
        p = os.path.join(t.fsdir, "rand.dat")
        if os.path.exists(p):
            os.unlink(p)
