"""The workload groups, one module each, run in this order (the report lists their metrics
in the same order). A module has:

  a docstring   what it measures, how it is timed
  configure(cfg)  optional: its sizes, from BENCH_* variables (quick and full defaults)
  measure(b)    declares its metrics with b.metric(...), then runs and records them
                (b: runner.Bench; the loops b.each_rep / b.each_target record failures)
"""

from . import files, free, git, index, rand, remote, seq, snap, sqlite, tar, tree, undo

GROUPS = {"seq": seq, "rand": rand, "files": files, "tree": tree, "tar": tar, "git": git,
          "sqlite": sqlite, "undo": undo, "index": index, "snap": snap, "free": free,
          "remote": remote}
DEFAULT = [g for g in GROUPS if g not in ("index", "snap", "free", "remote")]  # when asked for
