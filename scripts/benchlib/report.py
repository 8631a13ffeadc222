"""The report: markdown on stdout and in OUT/<YYYY-MM-DD>-<host>[-quick][-N].md, and every
raw value in a .json next to it. Its layout is a format that readers and older results
depend on: sections, tables, columns and JSON keys change only on purpose.

Sections, in order: title, Machine, Targets, Results (median) with the ratios, Device I/O
behind some figures, Metadata index (workloads/index.py), Remote storage
(workloads/remote.py), Issue 8 targets, Errors, Notes, Raw values, Configuration.
"""

import json
import os

from . import common, config
from .figures import cell, esc, fmt, median, speed_ratio, times
from .workloads import index, remote


def report(b, cfg, targets, machine, started, finished):
    """Returns (markdown text, the issue 8 checks, the index checks)."""
    names = [t.name for t in targets]
    tmap = {t.name: t for t in targets}
    med = {k: {n: median(b.values.get(k, {}).get(n, [])) for n in names} for k in b.metrics}
    L = []
    title = "quick smoke run" if cfg.quick else "full run"
    L.append(f"# decofs benchmark — {started:%Y-%m-%d} on {machine['host']} ({title})")
    L.append("")
    L.append(f"Produced by `scripts/bench{' --quick' if cfg.quick else ''}` "
             f"({started:%H:%M}–{finished:%H:%M} UTC); method in `bench/README.md`.")
    L.append("")
    L.append("## Machine")
    L.append("")
    for k in ("host", "cpus", "memory", "kernel", "os", "backing", "decofs", "tools", "load"):
        L.append(f"- **{k}**: {machine[k]}")
    L.append("")
    L.append("**Noise.** This machine has 2 cores and other engineers were building and testing "
             "on it during the run (load averages above), so figures can be off by tens of "
             "percent between runs; each figure is the median of "
             f"{cfg.reps} repetition(s), the target order rotates between repetitions, and the "
             "raw values are listed below. Treat ratios near 1.0 as ties.")
    if cfg.quick:
        L.append("")
        L.append("**Quick mode**: sizes are scaled down ~10x to check that the harness works; "
                 "small sizes favour caches and startup costs, so do not judge the targets "
                 "from this file.")
    if common.CAN_DROP is False:
        L.append("")
        L.append("**Caches could not be dropped** (not root?): 'cold' figures are warm.")
    L.append("")
    L.append("## Targets")
    L.append("")
    for t in targets:
        state = t.desc if t.available else f"**not available**: {t.reason}"
        L.append(f"- `{t.name}`: {state}")
    L.append("")
    main_table(L, b, names, tmap, med)
    io_table(L, b, names)
    index_checks = index.report_section(L, b, cfg, names, med)
    remote.report_section(L, b, cfg, names)
    checks = issue8_checks(L, b, names, tmap, med)
    errs = [(k, n, e) for k, d in b.errors.items() for n, e in d.items()]
    if errs:
        L.append("## Errors")
        L.append("")
        for k, n, e in errs:
            L.append(f"- `{n}` / `{k}`: {e}")
        L.append("")
    if b.notes:
        L.append("## Notes")
        L.append("")
        for n in b.notes:
            L.append(f"- {n}")
        L.append("")
    L.append("## Raw values")
    L.append("")
    L.append("| workload | unit | " + " | ".join(names) + " |")
    L.append("|---|---|" + "|".join(["---"] * len(names)) + "|")
    for k, m in b.metrics.items():
        row = [k, m["unit"]]
        for n in names:
            vs = b.values.get(k, {}).get(n, [])
            row.append(", ".join(fmt(v, m["unit"]) for v in vs) or "—")
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    L.append("## Configuration")
    L.append("")
    L.append("```")
    for k, v in config.summary(cfg).items():
        L.append(f"{k} = {v}")
    L.append("```")
    L.append("")
    return "\n".join(L), checks, index_checks


# The remote targets' ratios (a, b): a's speed over b's, each in the run when both are.
REMOTE_PAIRS = (("decofs-remote", "decofs"), ("decofs-remote", "juicefs-s3"),
                ("juicefs-s3", "juicefs"))


def main_table(L, b, names, tmap, med):
    """Every workload (metrics with table=True): the median per target, then decofs's speed
    against the disk (a share) and against each peer (a ratio); with the remote targets,
    their ratios too (REMOTE_PAIRS)."""
    L.append("## Results (median)")
    L.append("")
    pairs = [(x, y) for x, y in REMOTE_PAIRS if x in names and y in names]
    L.append("Speed ratios: > 1 means decofs is faster (for times this is other/decofs). "
             "`vs disk` is decofs's speed as a share of the plain disk."
             + (" `decofs vs decofs-noindex` is decofs's speed with the metadata index over its "
                "speed with `-o index=off`: < 1 is what the index costs."
                if "decofs-noindex" in names else "")
             + (" `A vs B` of the remote targets is A's speed over B's (> 1: A is faster): "
                "`decofs-remote vs decofs` is what the object store costs decofs, "
                "`juicefs-s3 vs juicefs` what it costs JuiceFS." if pairs else ""))
    L.append("")
    peers = [p for p in ("bindfs", "juicefs", "decofs-noindex") if p in names]
    head = ["workload", "unit"] + names
    if "decofs" in names:
        head += ["decofs vs disk"] if "disk" in names else []
        head += [f"decofs vs {p}" for p in peers]
    head += [f"{x} vs {y}" for x, y in pairs]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
    for k, m in b.metrics.items():
        if not m.get("table", True):
            continue
        row = [esc(m["label"]), m["unit"]]
        for n in names:
            row.append(cell(b, k, n) if tmap[n].available else "n/a")
        if "decofs" in names:
            d = med[k]["decofs"]
            if "disk" in names:
                r = speed_ratio(m, d, med[k]["disk"])
                row.append(f"{r * 100:.0f}%" if r is not None else "—")
            for peer in peers:
                row.append(times(speed_ratio(m, d, med[k][peer])))
        for x, y in pairs:
            row.append(times(speed_ratio(m, med[k][x], med[k][y])))
        L.append("| " + " | ".join(row) + " |")
    L.append("")


def io_table(L, b, names):
    """The backing device's counters recorded by some workloads (metrics of group "io")."""
    io_keys = [k for k, m in b.metrics.items() if m["group"] == "io" and b.values.get(k)]
    if not io_keys:
        return
    L.append(f"### Device I/O behind some figures (backing device `{b.dev}`, medians)")
    L.append("")
    L.append("Counted from /proc/diskstats around the timed command, so other processes' "
             "I/O is in them too. A cold walk of decofs reads each node's record, an "
             "xattr too big for the space inside an ext4 inode: one more block read per "
             "file. A sqlite transaction fsyncs its journal's directory; a target that does "
             "not implement fsyncdir skips that flush.")
    L.append("")
    L.append("| what | unit | " + " | ".join(names) + " |")
    L.append("|---|---|" + "|".join(["---:"] * len(names)) + "|")
    for k in io_keys:
        m = b.metrics[k]
        L.append(f"| {m['label']} | {m['unit']} | "
                 + " | ".join(cell(b, k, n) for n in names) + " |")
    L.append("")


def issue8_checks(L, b, names, tmap, med):
    """The "Issue 8 targets" section; returns its checks (target, verdict, detail)."""
    L.append("## Issue 8 targets")
    L.append("")
    checks = []

    def verdict(ok):
        return "**met**" if ok else "**MISSED**"

    def all_at_least(title, keys, peer, thr, show):
        """Each of `keys` at least `thr` times as fast on decofs as on `peer`."""
        parts, allok, known = [], True, True
        for k in keys:
            r = speed_ratio(b.metrics[k], med[k]["decofs"], med[k][peer]) \
                if k in b.metrics else None
            if r is None:
                known = False
                parts.append(f"{k}: no figure")
            else:
                allok &= r >= thr
                parts.append(f"{k} {show(r)}")
        checks.append((title, verdict(allok) if known else "not judged", ", ".join(parts)))

    if "decofs" in names and "disk" in names:
        all_at_least("Sequential write and read ≥ 80% of disk",
                     ("seq_write", "seq_read_cold", "seq_read_warm"), "disk", 0.8,
                     lambda r: f"{r * 100:.0f}%")
    for peer, op, thr, title in (("bindfs", ">=", 1.0, "Every workload at least as fast as bindfs"),
                                 ("juicefs", ">", 1.0, "Every workload faster than JuiceFS")):
        if "decofs" not in names or peer not in names:
            continue
        if not tmap[peer].available:
            checks.append((title, "not judged", f"{peer} not available: {tmap[peer].reason}"))
            continue
        missed, judged = [], 0
        for k, m in b.metrics.items():
            if not m.get("table", True):
                continue  # details (the index's, device counters), not workloads
            r = speed_ratio(m, med[k]["decofs"], med[k][peer])
            if r is None:
                continue
            judged += 1
            if (r < thr) if op == ">=" else (r <= thr):
                missed.append(f"{k} {r:.2f}×")
        checks.append((title, verdict(not missed) if judged else "not judged",
                       ("missed on: " + ", ".join(missed)) if missed else f"{judged} workloads"))
    if "decofs" in names and "juicefs" in names:
        title = "Small-file creation and the stat walk ≥ 2× JuiceFS"
        if not tmap["juicefs"].available:
            checks.append((title, "not judged", f"juicefs not available: {tmap['juicefs'].reason}"))
        else:
            all_at_least(title, ("create_files", "find_cold", "ls_lR"), "juicefs", 2.0, times)
    if checks:
        L.append("| target | verdict | detail |")
        L.append("|---|---|---|")
        for c in checks:
            L.append(f"| {c[0]} | {c[1]} | {c[2]} |")
    else:
        L.append("Not judged: they compare decofs with disk, bindfs and juicefs, and this run "
                 "has " + ("no decofs" if "decofs" not in names else "none of those") + ".")
    L.append("")
    return checks


def write(out, b, cfg, targets, machine, started, text, checks, index_checks):
    """Write the report and the raw values to OUT/<stem>.md and .json; never overwrite an
    earlier report: the second one of the day is <stem>-2, and so on. Returns the .md path."""
    os.makedirs(out, exist_ok=True)
    stem = f"{started:%Y-%m-%d}-{machine['host']}{'-quick' if cfg.quick else ''}"
    base_stem, k = stem, 1
    while any(os.path.exists(os.path.join(out, stem + e)) for e in (".md", ".json")):
        k += 1
        stem = f"{base_stem}-{k}"
    path = os.path.join(out, stem + ".md")
    with open(path, "w") as f:
        f.write(text)
    with open(os.path.join(out, stem + ".json"), "w") as f:
        json.dump({"machine": machine, "config": config.summary(cfg), "metrics": b.metrics,
                   "values": b.values, "errors": b.errors,
                   "unavailable": {t.name: t.reason for t in targets if not t.available},
                   "checks": checks, "index_checks": index_checks,
                   "index": b.index_info, "remote": b.remote_info}, f, indent=1)
    return path
