"""The bookkeeping every workload shares: the metrics it declares, the values it records per
target, the errors, and the loops over repetitions and targets.

A workload group (a module of `workloads/`) declares its metrics with `b.metric(...)` when it
starts, in the order the report lists them, then records one value per repetition and target
with `b.record(key, t, value)`. A failure is recorded against the metrics of the step that
failed (`b.guarded`) and the run goes on with the next target."""

import json
import os

from . import common
from .common import Interrupted, is_mounted, log, run


class Bench:
    def __init__(self, cfg, targets):
        self.cfg = cfg
        self.targets = targets
        # key -> dict(label, unit, higher (is better), group, table); table=False: a figure of
        # one target only (the index group's details, device counters), listed in its own
        # section and the raw values, not in the main table.
        self.metrics = {}
        self.values = {}   # metric -> target -> [values]
        self.errors = {}   # metric -> target -> message
        self.notes = []
        self.index_info = {}  # target -> [one dict per repetition] (index group details)
        self.remote_info = {}  # the remote group's details (status figures, checks passed)
        # The backing disk's device: its counters say why some figures are what they are.
        self.dev = common.block_device(cfg.work)

    def metric(self, key, label, unit, higher, group, table=True):
        self.metrics[key] = dict(label=label, unit=unit, higher=higher, group=group, table=table)

    def record(self, key, t, value):
        self.values.setdefault(key, {}).setdefault(t.name, []).append(value)

    # -- the backing device's counters
    def io(self):
        """The backing device's (reads, flushes) counters now, or None."""
        return common.diskstats(self.dev) if self.dev else None

    def record_io(self, key, t, before, per=1, field=0):
        """Record the device counter `field` (0 reads, 1 flushes) gained since `before`,
        divided by `per`. Other processes' I/O is counted too: a median, not a proof."""
        after = self.io()
        if before is None or after is None or before[field] is None or after[field] is None:
            return
        self.record(key, t, (after[field] - before[field]) / per)

    # -- loops over targets and repetitions
    def live(self, rep):
        ts = [t for t in self.targets if t.available]
        k = rep % len(ts) if ts else 0
        return ts[k:] + ts[:k]  # rotate the order every repetition to spread noise

    def each_target(self, keys, fn):
        """fn(t) once on every target (setup before the repetitions), failures under `keys`."""
        for t in self.live(0):
            self.guarded(keys, t, lambda: fn(t))

    def each_rep(self, keys, fn, skip_failed=False):
        """fn(t, rep) for every repetition on every target, in rotating order; a failure is
        recorded under `keys`. skip_failed: a target with an error under keys[0] (e.g. its
        setup failed) is not run again."""
        for rep in range(self.cfg.reps):
            for t in self.live(rep):
                if skip_failed and t.name in self.errors.get(keys[0], {}):
                    continue
                self.guarded(keys, t, lambda: fn(t, rep))

    def fail(self, keys, t, e):
        msg = str(e).replace("\n", " ")[:300]
        for k in keys:
            self.errors.setdefault(k, {}).setdefault(t.name, msg)
        log(f"{t.name}: {','.join(keys)} failed: {msg}")

    def guarded(self, keys, t, fn):
        if t.broken:
            for k in keys:
                self.errors.setdefault(k, {}).setdefault(t.name, f"skipped: {t.broken}")
            return
        try:
            fn()
        except Interrupted:
            raise
        except Exception as e:  # noqa: BLE001 - any failure is recorded, the run goes on
            self.fail(keys, t, e)
            # A target whose mount went away cannot run the rest.
            if t.fuse and not is_mounted(t.mnt):
                t.broken = f"mount lost during {keys[0]}"
                try:
                    t.mount()
                    t.broken = None
                except Exception as e2:  # noqa: BLE001
                    t.broken = f"mount lost during {keys[0]} and remount failed: {e2}"

    # -- a tool two groups share
    def fio(self, t, args):
        """Run fio in the target's directory; return its first job's JSON."""
        out = os.path.join(self.cfg.work, f"fio-{t.name}.json")
        run(["fio", "--output-format=json", f"--output={out}", "--ioengine=psync",
             "--invalidate=0", "--fallocate=none", "--thread"] + args,
            cwd=t.fsdir, timeout=self.cfg.timeout)
        with open(out) as f:
            txt = f.read()
        return json.loads(txt[txt.index("{"):])["jobs"][0]
