"""seq: sequential write and read of one large file, with fio.

  seq_write      fio, one job, psync, 1 MiB blocks, fresh random data (content-addressed
                 stores cannot dedupe it), fsync at the end; fio's bandwidth, which includes
                 the final fsync
  seq_read_cold  remount the FUSE target + drop the kernel caches, then read it back
  seq_read_warm  the same read again right away (fio runs with --invalidate=0, so it reads
                 the page cache the cold read filled)
"""

import os

from ..common import env_int, log


def configure(cfg):
    cfg.seq_mib = env_int("BENCH_SEQ_MIB", 128 if cfg.quick else 1024)  # the file's size


def measure(b):
    c = b.cfg
    size = f"{c.seq_mib}M"
    b.metric("seq_write", f"Sequential write {c.seq_mib} MiB, 1 MiB blocks, fsync at end (fio)",
             "MiB/s", True, "seq")
    b.metric("seq_read_cold", "Sequential read, cold (remount + drop caches)", "MiB/s", True,
             "seq")
    b.metric("seq_read_warm", "Sequential read, warm (right after the cold read)", "MiB/s",
             True, "seq")

    def one(t, rep):
        name = f"seq.{rep}"
        log(f"{t.name}: seq write/read rep {rep + 1}")
        j = b.fio(t, ["--name=seqwrite", f"--filename={name}", "--rw=write", "--bs=1M",
                      f"--size={size}", "--end_fsync=1", "--refill_buffers=1"])
        b.record("seq_write", t, j["write"]["bw"] / 1024)
        t.cold()
        for key in ("seq_read_cold", "seq_read_warm"):
            j = b.fio(t, ["--name=seqread", f"--filename={name}", "--rw=read", "--bs=1M",
                          f"--size={size}"])
            b.record(key, t, j["read"]["bw"] / 1024)
        os.unlink(os.path.join(t.fsdir, name))

    b.each_rep(["seq_write", "seq_read_cold", "seq_read_warm"], one)
