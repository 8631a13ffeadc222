"""The decofs benchmark harness behind scripts/bench (layout: bench/README.md).

  common.py    logging, errors, commands in their own process group, mounts, caches
  config.py    command line + BENCH_* environment -> the run's configuration
  prepare.py   tools, the frozen decofs binary, the machine's description
  source.py    the real source tree the tree/tar/git/index groups use
  targets.py   disk, decofs, bindfs, juicefs, decofs-noindex: setup, mounts, teardown
  runner.py    metrics, recorded values and errors, loops over repetitions and targets
  workloads/   one module per workload group
  figures.py   medians, number formats, speed ratios
  report.py    the markdown report and the .json of raw values
"""
