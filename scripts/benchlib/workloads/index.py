"""index: the metadata index of decofs (runs on decofs and decofs-noindex only; not in the
default run).

decofs keeps a sled index of the tree (it answers `decofs find` and `decofs du` without a
walk), fed by a queue of change events; `decofs status MNT --json` reports its state. The
group runs BENCH_INDEX_REPS times, each step on a fresh store, on both targets (order
rotating), so that the burst and the copy have a same-run figure without the index:

1. Burst and convergence. One python3 parent forks BENCH_INDEX_PROCS processes that create
   BENCH_INDEX_FILES files in BENCH_INDEX_DIRS new directories as fast as they can, while a
   thread samples status every BENCH_INDEX_POLL_BURST_MS. idx_burst: fork of the first
   creator → exit of the last (CLOCK_MONOTONIC, shared with this script). On decofs, status
   is then polled every BENCH_INDEX_POLL_MS until it says current with lag_events 0;
   idx_converge is the end of the burst → that answer (an error after BENCH_INDEX_WAIT s).
2. find: `decofs find MNT --wait | wc -l` must print files + dirs + 1; timed.
3. du: `decofs du MNT` against `du -s -b MNT`, warm, then each after its own remount + drop
   caches; bytes, files and dirs must match what was created.
4. Lag during cp -a: cp -a of the source tree (see source.py) onto a fresh store while status
   is sampled every BENCH_INDEX_POLL_CP_MS; idx_cp is the cp's time, then the lag figures and
   idx_cp_converge; `decofs find MNT/tree --type f --wait` must count every file.

idx_burst and idx_cp are in the main table; the other figures are decofs-only, in the
report's "Metadata index" section (report_section, at the end of this file), whose checks
make the script exit with status 3 if any failed.
"""

import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time

from .. import source
from ..common import BenchError, env_int, log, run
from ..figures import cell, esc, fmt, median, speed_ratio, times

TARGETS = ["decofs", "decofs-noindex"]  # the targets this group runs on


def configure(cfg):
    q = cfg.quick
    cfg.index_dirs = env_int("BENCH_INDEX_DIRS", 100)
    # The files of the burst, rounded down to a multiple of the directories.
    cfg.index_files = max(1, env_int("BENCH_INDEX_FILES", 10000 if q else 100000)
                          // cfg.index_dirs) * cfg.index_dirs
    cfg.index_procs = max(1, min(env_int("BENCH_INDEX_PROCS", 4), cfg.index_dirs))
    cfg.index_file_bytes = env_int("BENCH_INDEX_FILE_BYTES", 0)
    cfg.index_reps = env_int("BENCH_INDEX_REPS", 1)
    cfg.index_poll_ms = env_int("BENCH_INDEX_POLL_MS", 50)
    cfg.index_poll_burst_ms = env_int("BENCH_INDEX_POLL_BURST_MS", 100)
    cfg.index_poll_cp_ms = env_int("BENCH_INDEX_POLL_CP_MS", 100)
    cfg.index_wait = env_int("BENCH_INDEX_WAIT", 600)


def summary(cfg):
    """The group's sizes, for the report's Configuration block."""
    return {"index_files": cfg.index_files, "index_dirs": cfg.index_dirs,
            "index_procs": cfg.index_procs, "index_file_bytes": cfg.index_file_bytes,
            "index_reps": cfg.index_reps, "index_poll_ms": cfg.index_poll_ms,
            "index_poll_burst_ms": cfg.index_poll_burst_ms,
            "index_poll_cp_ms": cfg.index_poll_cp_ms, "index_wait_s": cfg.index_wait}


# ----------------------------------------------------------------------------- measure

def measure(b):
    c = b.cfg
    ts = [t for t in b.targets if t.name in TARGETS and t.available]
    if not ts:
        b.notes.append("index group: neither decofs nor decofs-noindex is a target; skipped")
        return
    N, D, P = c.index_files, c.index_dirs, c.index_procs
    kind = "empty" if not c.index_file_bytes else f"{c.index_file_bytes}-byte"
    b.metric("idx_burst", f"Index burst: create {N:,} {kind} files in {D} new directories, "
             f"{P} processes in parallel, on a fresh mount", "s", False, "index")
    b.metric("idx_cp", "Index lag run: cp -a of the tree onto a fresh mount", "s", False, "index")
    for k, label, unit in (
            ("idx_converge", "burst: end of the burst → status says current, lag_events 0",
             "s"),
            ("idx_burst_queue_max", "burst: peak queue_depth (burst start → current)",
             "events"),
            ("idx_burst_lag_events_max", "burst: peak lag_events", "events"),
            ("idx_burst_lag_ms_max", "burst: peak lag_ms", "ms"),
            ("idx_burst_dropped", "burst: dropped (queue overflow), highest value seen",
             "events"),
            ("idx_find_wait", "decofs find MNT --wait | wc -l after the burst (count checked)",
             "s"),
            ("idx_du_index", "decofs du MNT after the burst, warm", "s"),
            ("idx_du_walk", "du -s -b MNT after the burst, warm", "s"),
            ("idx_du_index_cold", "decofs du MNT --wait, after remount + drop caches", "s"),
            ("idx_du_walk_cold", "du -s -b MNT, after remount + drop caches", "s"),
            ("idx_cp_lag_events_max", "cp -a: max lag_events while cp runs", "events"),
            ("idx_cp_lag_events_mean", "cp -a: mean lag_events while cp runs", "events"),
            ("idx_cp_lag_ms_max", "cp -a: max lag_ms while cp runs", "ms"),
            ("idx_cp_lag_ms_mean", "cp -a: mean lag_ms while cp runs", "ms"),
            ("idx_cp_queue_max", "cp -a: peak queue_depth", "events"),
            ("idx_cp_dropped", "cp -a: dropped, highest value seen", "events"),
            ("idx_cp_converge", "cp -a: end of cp → status says current, lag_events 0", "s")):
        b.metric(k, label, unit, higher=False, group="index", table=False)

    for rep in range(c.index_reps):
        order = [t for t in b.live(rep) if t.name in TARGETS]
        # 1. A burst of creates on a fresh mount; convergence; find; du.
        for t in order:
            info = {"rep": rep + 1}
            b.index_info.setdefault(t.name, []).append(info)
            b.guarded(["idx_burst", "idx_converge"], t, lambda: burst(b, t, info, rep))
            if not t.index or not info.get("converged"):
                continue
            b.guarded(["idx_find_wait"], t, lambda: find(b, t, info))
            b.guarded(["idx_du_index", "idx_du_walk", "idx_du_index_cold", "idx_du_walk_cold"],
                      t, lambda: du(b, t, info))
        # 2. Lag while cp -a copies the source tree onto a fresh mount.
        for t in order:
            info = b.index_info[t.name][-1]
            b.guarded(["idx_cp", "idx_cp_converge"], t, lambda: cp(b, t, info, rep))


# Run as `python3 -c BURST MNT FILES DIRS PROCS BYTES`; prints the monotonic times of the
# first fork and the last exit.
BURST = r"""
import os, sys, time
m, nfiles, ndirs, procs, size = sys.argv[1], *map(int, sys.argv[2:6])
per = nfiles // ndirs
data = b"x" * size
def work(k):
    for d in range(k, ndirs, procs):
        dp = f"{m}/d{d:03d}"
        os.mkdir(dp)
        for i in range(per):
            fd = os.open(f"{dp}/f{i:06d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            if size:
                os.write(fd, data)
            os.close(fd)
pids = []
t0 = time.monotonic()
for k in range(procs):
    pid = os.fork()
    if pid == 0:
        try:
            work(k)
            os._exit(0)
        except BaseException as e:
            print(f"creator {k}: {e}", file=sys.stderr, flush=True)
            os._exit(1)
    pids.append(pid)
bad = [p for p in pids if os.waitpid(p, 0)[1] != 0]
t1 = time.monotonic()
if bad:
    sys.exit(f"{len(bad)} creating process(es) failed")
print(t0, t1)
"""


def burst(b, t, info, rep):
    """A burst of creates on a fresh store; on decofs, the time until the index is current."""
    c = b.cfg
    N, D, P = c.index_files, c.index_dirs, c.index_procs
    log(f"{t.name}: index burst of {N} creates rep {rep + 1}")
    t.fresh()
    poll = IndexPoller(t, c.index_poll_burst_ms / 1000).start()
    try:
        _, out, _ = run([sys.executable, "-c", BURST, t.mnt, str(N), str(D), str(P),
                         str(c.index_file_bytes)], timeout=c.timeout)
    finally:
        poll.stop()
    t0, t1 = map(float, out.split())
    b.record("idx_burst", t, t1 - t0)
    info.update(burst_s=t1 - t0, creates_per_s=(N + D) / (t1 - t0))
    if not t.index:
        return
    try:
        conv = wait_current(c, poll, t1, f"a burst of {N} creates")
    finally:
        win = poll.window(t0)
        info.update(burst_samples=len(win), status_errors=poll.errors,
                    status_last_error=poll.last_error,
                    samples_not_current=sum(not is_current(ix) for ix in win),
                    states_seen=sorted({str(ix.get("state")) for ix in win}),
                    last_status=win[-1] if win else None)
        for key, k in (("idx_burst_queue_max", "queue_depth"),
                       ("idx_burst_lag_events_max", "lag_events"),
                       ("idx_burst_lag_ms_max", "lag_ms"),
                       ("idx_burst_dropped", "dropped")):
            v = peak(win, k)
            if v is not None:
                b.record(key, t, v)
    b.record("idx_converge", t, conv)
    info.update(converge_s=conv, applied=win[-1].get("applied"),
                last_reconcile=win[-1].get("last_reconcile"))
    info["converged"] = True


def find(b, t, info):
    """`decofs find MNT --wait | wc -l` after the burst: timed, and the count checked."""
    c = b.cfg
    N, D = c.index_files, c.index_dirs
    expected = N + D + 1
    dt, n, ok = checked_count(c, f"{shlex.quote(t.bin)} find {shlex.quote(t.mnt)} --wait",
                              expected)
    info.update(find_count=n, find_expected=expected, find_ok=ok)
    if not ok:
        raise BenchError(f"`decofs find MNT --wait | wc -l` printed {n} paths, "
                         f"expected {expected} ({N} files + {D} dirs + MNT)")
    b.record("idx_find_wait", t, dt)


def du(b, t, info):
    """`decofs du MNT` against `du -s -b MNT`, warm, then each after its own remount + drop
    caches; the figures must agree with each other and with what the burst created."""
    c = b.cfg
    N, D = c.index_files, c.index_dirs
    dt, first, _ = run([t.bin, "du", t.mnt], timeout=c.timeout)
    b.record("idx_du_index", t, dt)
    fields = first.split("\t")
    ib, ifiles, idirs = int(fields[0]), int(fields[1]), int(fields[2])
    dt, out, _ = run(["du", "-s", "-b", t.mnt], timeout=c.timeout)
    b.record("idx_du_walk", t, dt)
    wb = int(out.split()[0])
    info.update(du_index=[ib, ifiles, idirs], du_walk_bytes=wb)
    t.cold()
    dt, out, _ = run(["du", "-s", "-b", t.mnt], timeout=c.timeout)
    b.record("idx_du_walk_cold", t, dt)
    t.cold()
    dt, out2, _ = run([t.bin, "du", t.mnt, "--wait"], timeout=c.timeout)
    b.record("idx_du_index_cold", t, dt)
    bad = []
    if ib != wb:
        bad.append(f"decofs du says {ib} bytes, du -s -b says {wb}")
    if (ifiles, idirs) != (N, D):
        bad.append(f"decofs du says {ifiles} files and {idirs} dirs, "
                   f"expected {N} and {D}")
    if out2.split("\t")[:3] != fields[:3]:
        bad.append(f"decofs du after the remount says {out2.strip()!r}, before "
                   f"{first.strip()!r}")
    info["du_ok"] = not bad
    if bad:
        info["du_problems"] = bad
        raise BenchError("; ".join(bad))


def cp(b, t, info, rep):
    """cp -a of the source tree onto a fresh store while status is sampled; on decofs, the
    lag during the copy, the time until the index is current, and a find count."""
    c = b.cfg
    log(f"{t.name}: index lag during cp -a rep {rep + 1}")
    t.fresh()
    source.warm(c)
    poll = IndexPoller(t, c.index_poll_cp_ms / 1000).start()
    try:
        t0 = time.monotonic()
        dt, _, _ = run(["cp", "-a", c.src, "tree"], cwd=t.mnt, timeout=c.timeout)
        t1 = time.monotonic()
    finally:
        poll.stop()
    b.record("idx_cp", t, dt)
    info.update(cp_s=dt)
    if not t.index:
        return
    try:
        conv = wait_current(c, poll, t1, "cp -a")
    finally:
        during = poll.window(t0, t1)
        allw = poll.window(t0)
        info.update(cp_samples=len(during), cp_status_errors=poll.errors,
                    cp_samples_not_current=sum(not is_current(ix) for ix in during),
                    cp_states_seen=sorted({str(ix.get("state")) for ix in allw}),
                    cp_last_status=allw[-1] if allw else None)
        for key, k, f in (("idx_cp_lag_events_max", "lag_events", peak),
                          ("idx_cp_lag_events_mean", "lag_events", mean),
                          ("idx_cp_lag_ms_max", "lag_ms", peak),
                          ("idx_cp_lag_ms_mean", "lag_ms", mean)):
            v = f(during, k)
            if v is not None:
                b.record(key, t, v)
        for key, k in (("idx_cp_queue_max", "queue_depth"),
                       ("idx_cp_dropped", "dropped")):
            v = peak(allw, k)
            if v is not None:
                b.record(key, t, v)
    b.record("idx_cp_converge", t, conv)
    info["cp_converge_s"] = conv
    _, n, ok = checked_count(
        c, f"{shlex.quote(t.bin)} find {shlex.quote(os.path.join(t.mnt, 'tree'))}"
        " --type f --wait", c.src_files)
    info.update(cp_find_files=n, cp_find_expected=c.src_files, cp_find_ok=ok)
    if not ok:
        raise BenchError(f"`decofs find MNT/tree --type f --wait` found {n} files, "
                         f"expected {c.src_files}")


# ----------------------------------------------------------------------------- status

class IndexPoller:
    """Samples `decofs status MNT --json` (its "index" object) in a background thread.

    Uses subprocess directly, not run(): run() tracks the one timed child of the main thread.
    Each sample is (monotonic time the answer arrived, index dict)."""

    def __init__(self, t, interval):
        self.t = t
        self.interval = interval
        self.samples = []
        self.errors = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = None

    def sample(self):
        try:
            r = subprocess.run([self.t.bin, "status", self.t.mnt, "--json"],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
            if r.returncode != 0:
                raise BenchError(f"exit {r.returncode}: {(r.stderr or r.stdout).decode()[:200]}")
            ix = json.loads(r.stdout).get("index") or {}
        except Exception as e:  # noqa: BLE001 - counted and reported
            self.errors += 1
            self.last_error = str(e)[:300]
            return None
        s = (time.monotonic(), ix)
        self.samples.append(s)
        return s

    def _loop(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def start(self):
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def window(self, t_from, t_to=None):
        return [ix for ts, ix in self.samples
                if ts >= t_from and (t_to is None or ts <= t_to)]


def is_current(ix):
    return ix.get("state") == "current" and ix.get("lag_events") == 0


def wait_current(cfg, poll, t_end, what):
    """Poll (in this thread) every index_poll_ms until the index is current with no lag;
    return the seconds from t_end (a time.monotonic()) to the answer saying so."""
    c = cfg
    deadline = time.monotonic() + c.index_wait
    while True:
        s = poll.sample()
        if s and is_current(s[1]):
            return max(0.0, s[0] - t_end)
        if time.monotonic() > deadline:
            last = json.dumps(poll.samples[-1][1]) if poll.samples else poll.last_error
            raise BenchError(f"index not current {c.index_wait}s after {what}; last status: "
                             f"{last[:400]}")
        time.sleep(c.index_poll_ms / 1000)


def checked_count(cfg, cmd, expected):
    """Run `cmd | wc -l` under pipefail; return (seconds, count, ok)."""
    dt, out, _ = run(["bash", "-o", "pipefail", "-c", f"{cmd} | wc -l"],
                     timeout=cfg.timeout)
    n = int(out.strip())
    return dt, n, n == expected


def numbers(samples, key):
    return [ix.get(key) for ix in samples if isinstance(ix.get(key), (int, float))]


def peak(samples, key):
    vs = numbers(samples, key)
    return max(vs) if vs else None


def mean(samples, key):
    vs = numbers(samples, key)
    return statistics.fmean(vs) if vs else None


# ----------------------------------------------------------------------------- report

def report_section(L, b, cfg, names, med):
    """Append the "Metadata index" section to the report's lines L (after the main table and
    the device I/O; also when only the cost of the index was measured); return its checks
    (what, verdict, detail)."""
    checks = []
    ran_group = "index" in cfg.groups and any(n in TARGETS for n in names)
    if not ran_group and "decofs-noindex" not in names:
        return checks
    L.append("## Metadata index")
    L.append("")
    L.append("decofs keeps a sled index of the tree (it answers `decofs find` and `decofs du` "
             "without walking the tree), fed by a queue of change events from the filesystem "
             "operations. `decofs status MNT --json` reports its `state` (`current`, `lagging`, "
             "`dirty`, `reconciling`), `queue_depth`, the lag in events (`lag_events`) and in "
             "milliseconds (`lag_ms`), and `dropped` (events lost to a full queue: the index "
             "is then marked dirty and a reconcile repairs it). `decofs-noindex` is the same "
             "binary mounted with `-o index=off`; comparing the two in one run gives the cost "
             "of the index.")
    L.append("")

    def v(key, n="decofs", u=""):
        vs = b.values.get(key, {}).get(n)
        if vs:
            s = fmt(median(vs), b.metrics[key]["unit"])
            if len(vs) > 1:
                s += " (" + ", ".join(fmt(x, b.metrics[key]["unit"]) for x in vs) + ")"
            return s + u
        err = b.errors.get(key, {}).get(n)
        return f"**error**: {esc(err)}" if err else "—"

    def x(a, c):
        ma = median(b.values.get(a, {}).get("decofs", []))
        mc = median(b.values.get(c, {}).get("decofs", []))
        return f"{mc / ma:.0f}×" if ma and mc else "—"

    infos = b.index_info.get("decofs", [])
    if ran_group and "decofs" in names:
        N, D, P = cfg.index_files, cfg.index_dirs, cfg.index_procs
        L.append(f"### Convergence after a burst of {N:,} creates")
        L.append("")
        L.append(f"On a fresh store, {P} processes create {N:,} "
                 f"{'empty' if not cfg.index_file_bytes else f'{cfg.index_file_bytes}-byte'} "
                 f"files in {D} new directories of {N // D:,} as fast as they can, while a "
                 f"thread runs `decofs status MNT --json` every {cfg.index_poll_burst_ms} ms "
                 f"(on `decofs-noindex` too, so both bursts carry the same load). After the last "
                 f"create, status is polled every {cfg.index_poll_ms} ms (one call takes a few "
                 "ms) until it says `current` with `lag_events` 0; convergence is the time from "
                 "the end of the burst to that answer, so its resolution is one poll. Then "
                 f"`decofs find MNT --wait | wc -l` must print {N + D + 1:,} lines (files + "
                 "directories + MNT), and `decofs du MNT` is timed against `du -s -b MNT` (warm, "
                 "then each after a remount + drop caches). "
                 f"{cfg.index_reps} repetition(s); several values are listed in brackets.")
        L.append("")
        L.append("| figure | value |")
        L.append("|---|---:|")
        L.append(f"| burst time, decofs | {v('idx_burst', u=' s')} |")
        if "decofs-noindex" in names:
            L.append(f"| burst time, decofs-noindex | "
                     f"{v('idx_burst', 'decofs-noindex', u=' s')} |")
            r = speed_ratio(b.metrics["idx_burst"], med["idx_burst"]["decofs"],
                            med["idx_burst"]["decofs-noindex"]) if "idx_burst" in med else None
            L.append(f"| burst speed, decofs / decofs-noindex | {times(r)} |")
        L.append(f"| **end of burst → index current** | **{v('idx_converge', u=' s')}** |")
        L.append(f"| peak queue_depth (burst start → current) | {v('idx_burst_queue_max')} |")
        L.append(f"| peak lag_events | {v('idx_burst_lag_events_max')} |")
        L.append(f"| peak lag_ms | {v('idx_burst_lag_ms_max', u=' ms')} |")
        L.append(f"| dropped (highest seen) | {v('idx_burst_dropped')} |")
        for i in infos:
            if "burst_samples" in i:
                lr = i.get("last_reconcile") or {}
                lr = ", ".join(f"{k} {lr[k]}" for k in ("kind", "duration_ms", "nodes", "repaired")
                               if k in lr) or "none"
                L.append(f"| rep {i['rep']}: status samples, of which not current; states seen; "
                         f"applied; last reconcile | {i['burst_samples']}, "
                         f"{i['samples_not_current']}; {'/'.join(i['states_seen'])}; "
                         f"{i.get('applied', '—')}; {lr} |")
            if i.get("status_errors"):
                L.append(f"| rep {i['rep']}: failed status calls | {i['status_errors']} "
                         f"(last: {esc(i['status_last_error'])}) |")
            if "find_count" in i:
                L.append(f"| rep {i['rep']}: `decofs find MNT --wait \\| wc -l` | "
                         f"{i['find_count']:,} of {i['find_expected']:,} "
                         f"{'(ok)' if i['find_ok'] else '**MISMATCH**'} |")
        L.append(f"| `decofs find MNT --wait \\| wc -l` time | {v('idx_find_wait', u=' s')} |")
        L.append(f"| `decofs du MNT`, warm | {v('idx_du_index', u=' s')} |")
        L.append(f"| `du -s -b MNT`, warm | {v('idx_du_walk', u=' s')} "
                 f"({x('idx_du_index', 'idx_du_walk')} the index's time) |")
        L.append(f"| `decofs du MNT --wait`, cold | {v('idx_du_index_cold', u=' s')} |")
        L.append(f"| `du -s -b MNT`, cold | {v('idx_du_walk_cold', u=' s')} "
                 f"({x('idx_du_index_cold', 'idx_du_walk_cold')} the index's time) |")
        L.append("")

        L.append("### Index lag during cp -a")
        L.append("")
        L.append(f"`cp -a` of the `tree` source tree ({cfg.src_files:,} files, {cfg.src_dirs:,} "
                 f"dirs) onto a fresh store while a thread samples `decofs status MNT --json` "
                 f"every {cfg.index_poll_cp_ms} ms; max and mean are over the samples taken "
                 "while cp ran; then the time from the end of cp until status says current; "
                 "then `decofs find MNT/tree --type f --wait` must count every file.")
        L.append("")
        L.append("| figure | value |")
        L.append("|---|---:|")
        L.append(f"| cp -a time, decofs | {v('idx_cp', u=' s')} |")
        if "decofs-noindex" in names:
            L.append(f"| cp -a time, decofs-noindex | {v('idx_cp', 'decofs-noindex', u=' s')} |")
        L.append(f"| lag_events, max / mean | {v('idx_cp_lag_events_max')} / "
                 f"{v('idx_cp_lag_events_mean')} |")
        L.append(f"| lag_ms, max / mean | {v('idx_cp_lag_ms_max', u=' ms')} / "
                 f"{v('idx_cp_lag_ms_mean', u=' ms')} |")
        L.append(f"| peak queue_depth | {v('idx_cp_queue_max')} |")
        L.append(f"| dropped (highest seen) | {v('idx_cp_dropped')} |")
        L.append(f"| **end of cp → index current** | **{v('idx_cp_converge', u=' s')}** |")
        for i in infos:
            if "cp_samples" in i:
                L.append(f"| rep {i['rep']}: samples during cp, of which not current; states "
                         f"seen | {i['cp_samples']}, {i['cp_samples_not_current']}; "
                         f"{'/'.join(i['cp_states_seen'])} |")
            if "cp_find_files" in i:
                L.append(f"| rep {i['rep']}: `decofs find MNT/tree --type f --wait` files | "
                         f"{i['cp_find_files']:,} of {i['cp_find_expected']:,} "
                         f"{'(ok)' if i['cp_find_ok'] else '**MISMATCH**'} |")
        L.append("")

        def judged(what, flag, detail_ok, err_keys):
            errs = [b.errors.get(k, {}).get("decofs") for k in err_keys]
            errs = [e for e in errs if e]
            vals = [i.get(flag) for i in infos if flag in i]
            if not vals and not errs:
                checks.append((what, "not run", ""))
            elif errs or not all(vals):
                checks.append((what, "**FAILED**", "; ".join(errs) or "see above"))
            else:
                checks.append((what, "**ok**", detail_ok))

        judged("index current after the burst", "converged",
               f"after {v('idx_converge', u=' s')}", ["idx_converge"])
        judged("`decofs find --wait` count = files + dirs + 1 after the burst", "find_ok",
               f"{N + D + 1:,} paths", ["idx_find_wait"])
        judged("`decofs du` = `du -s -b`, files and dirs as created", "du_ok", "bytes, files, dirs",
               ["idx_du_index"])
        judged("index current after cp -a, `find --type f` counts every file", "cp_find_ok",
               f"{cfg.src_files:,} files, current {v('idx_cp_converge', u=' s')} after cp",
               ["idx_cp_converge"])
        L.append("| check | verdict | detail |")
        L.append("|---|---|---|")
        for c in checks:
            L.append(f"| {c[0]} | {c[1]} | {esc(c[2])} |")
        L.append("")

    if "decofs" in names and "decofs-noindex" in names:
        L.append("### Cost of the index (decofs against decofs -o index=off, same run)")
        L.append("")
        L.append("Speed ratio decofs / decofs-noindex (for times: noindex time / decofs time): "
                 "1.00× means the index costs nothing, 0.80× means decofs with the index runs at "
                 "80% of the speed without it. On this noisy machine treat 0.8–1.2× as a tie "
                 "unless it repeats.")
        L.append("")
        L.append("| workload | unit | decofs | decofs-noindex | decofs / decofs-noindex |")
        L.append("|---|---|---:|---:|---:|")
        for k, m in b.metrics.items():
            if not m.get("table", True):
                continue
            r = speed_ratio(m, med[k].get("decofs"), med[k].get("decofs-noindex"))
            if r is None and not b.values.get(k, {}).get("decofs-noindex"):
                continue
            L.append(f"| {esc(m['label'])} | {m['unit']} | {cell(b, k, 'decofs')} | "
                     f"{cell(b, k, 'decofs-noindex')} | {times(r)} |")
        L.append("")
    return checks

