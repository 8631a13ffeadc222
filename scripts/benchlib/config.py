"""The run's configuration: the command line and the BENCH_* environment (bench/README.md).

Sizes that belong to one workload group are read by that group's `configure(cfg)`; here are
the ones every group shares, which groups and targets run, and the Configuration block of the
report (`summary`)."""

import os

from . import targets, workloads
from .common import env_int
from .workloads import index, remote


class Config:
    pass


def from_args(args):
    cfg = Config()
    q = cfg.quick = args.quick
    cfg.reps = args.reps or env_int("BENCH_REPS", 1 if q else 3)
    for mod in workloads.GROUPS.values():
        if hasattr(mod, "configure"):
            mod.configure(cfg)
    cfg.timeout = env_int("BENCH_TIMEOUT", 600 if q else 1800)  # one command, then it is hung
    cfg.no_install = os.environ.get("BENCH_NO_INSTALL") == "1"
    cfg.juicefs_install_error = ""
    cfg.groups = [g.strip() for g in args.workloads.split(",") if g.strip()]
    if cfg.groups == ["remote"]:
        # Alone, the remote group also runs the default groups, so that the remote targets
        # have the whole table with the local baselines of the same run.
        cfg.groups = workloads.DEFAULT + ["remote"]
    cfg.wanted = wanted_targets(args, cfg.groups)
    for t in cfg.wanted:
        if t not in targets.ALL:
            raise SystemExit(f"bench: unknown target {t} (known: {','.join(targets.ALL)})")
    for g in cfg.groups:
        if g not in workloads.GROUPS:
            raise SystemExit(f"bench: unknown workload group {g} "
                             f"(known: {','.join(workloads.GROUPS)})")
    return cfg


def wanted_targets(args, groups):
    if args.targets:
        wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    else:
        # The index group runs on decofs and decofs-noindex only: alone, it needs no other.
        wanted = list(targets.DEFAULT) if any(g != "index" for g in groups) else []
        if "index" in groups:
            wanted += index.TARGETS
        if "remote" in groups:
            wanted += remote.TARGETS
    if args.index_cost:
        wanted += ["decofs", "decofs-noindex"]
    return list(dict.fromkeys(wanted))


def summary(cfg):
    """The report's Configuration block (and the .json's "config"), in this order."""
    s = {
        "reps": cfg.reps, "seq_mib": cfg.seq_mib, "rand_mib": cfg.rand_mib,
        "rand_io_mib": cfg.rand_io_mib, "rand_runtime_cap_s": cfg.rand_runtime,
        "files": cfg.nfiles, "file_kib": cfg.file_kib, "sqlite_tx": cfg.sqlite_tx,
        "tree": f"{cfg.src_desc}: {cfg.src_files} files, {cfg.src_dirs} dirs, "
                f"{cfg.src_bytes} bytes",
        "workloads": ",".join(cfg.groups), "targets": ",".join(cfg.wanted),
    }
    if "index" in cfg.groups:
        s.update(index.summary(cfg))
    if "snap" in cfg.groups:
        s.update(snap_sizes=",".join(map(str, cfg.snap_sizes)), snap_procs=cfg.snap_procs,
                 snap_files=cfg.snap_files)
    if "remote" in cfg.groups:
        s.update(remote.summary(cfg))
    return s
