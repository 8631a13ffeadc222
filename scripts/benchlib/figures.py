"""How a figure is summed up and printed in the report: medians, number formats, ratios."""

import statistics


def median(vs):
    return statistics.median(vs) if vs else None


def fmt(v, unit):
    if v is None:
        return "—"
    if unit == "s":
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    if unit.endswith("/tx"):
        return f"{v:.2f}"
    if isinstance(v, int) or v >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}"


def speed_ratio(m, a, b):
    """How many times as fast a is as b (> 1: a is faster); m is the metric."""
    if a is None or b is None or a == 0 or b == 0:
        return None
    return a / b if m["higher"] else b / a


def times(r):
    """A speed ratio as printed: 1.23×, or — if there is none."""
    return f"{r:.2f}×" if r is not None else "—"


def esc(text):
    """Text for a markdown table cell."""
    return str(text).replace("|", "\\|")


def cell(b, key, tname):
    """The median of metric `key` on target `tname`, or what stands in for it."""
    vs = b.values.get(key, {}).get(tname)
    if vs:
        return fmt(median(vs), b.metrics[key]["unit"])
    err = b.errors.get(key, {}).get(tname)
    if err:
        return "error" if not err.startswith("skipped") else "skipped"
    return "—"
