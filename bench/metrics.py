"""Aggregation of the benchmark's numbers: pure functions over per-run rows (tested by hand-computed cases).

A row is one erasure run: {"method", "domain", "targets", "UA", "IRA", "CRA", "seconds", ...}
with UA / IRA / CRA from demo_world.metrics.erasure_metrics (UnlearnCanvas definitions,
fractions in [0, 1]). Means over targets are unweighted, per domain and over both domains.
"""
from __future__ import annotations

from statistics import mean

METRICS = ("UA", "IRA", "CRA")
COSTS = ("seconds", "peak_rss_mb", "stored_bytes", "trainable_params")
# Reference rows (no training): the original model, and the original model prompted with the surrogate instead
# of the target.
ORIGINAL = "original model"
SUBSTITUTION = "ideal substitution (original model, surrogate prompted)"


def retain_score(row: dict) -> float:
    """The trade-off plot's y axis: mean(IRA, CRA)."""
    return (row["IRA"] + row["CRA"]) / 2


def overall(row: dict) -> float:
    """mean(UA, IRA, CRA): the single number the issue ranks methods by."""
    return sum(row[m] for m in METRICS) / len(METRICS)


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Per method: mean metrics per domain and over all targets, plus mean costs.

    Rows without metrics (classifiers unavailable) contribute to costs only.
    """
    out: dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        scored = [r for r in mine if all(r.get(m) is not None for m in METRICS)]
        summary: dict = {"runs": len(mine)}
        for domain in ("style", "object"):
            part = [r for r in scored if r["domain"] == domain]
            if part:
                summary[domain] = {m: mean(r[m] for r in part) for m in METRICS}
        if scored:
            summary.update({m: mean(r[m] for r in scored) for m in METRICS})
            summary["retain"] = (summary["IRA"] + summary["CRA"]) / 2
            summary["mean3"] = overall(summary)
        for cost in COSTS:
            values = [r[cost] for r in mine if r.get(cost) is not None]
            if values:
                summary[cost] = mean(values)
        out[method] = summary
    return out


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator in (None, 0):
        return None
    return numerator / denominator


ACCEPTANCE = {"UA": 0.95, "IRA": 0.90, "CRA": 0.95}


def acceptance(summary: dict[str, dict], method: str = "SPARE", esd: str = "ESD-x",
               esd_paper_estimate: dict | None = None) -> list[dict]:
    """The issue's acceptance checks, each {"check", "value", "required", "ok"}; None values are not ok.

    `esd_paper_estimate` (the run's extrapolated ESD-x time at the paper's 1000 iterations) adds a reference
    check marked "extrapolated": True, since it is not measured in full.
    """
    checks = []
    mine = summary.get(method, {})
    for domain in ("style", "object"):
        for metric, required in ACCEPTANCE.items():
            value = mine.get(domain, {}).get(metric)
            checks.append({"check": f"{method} {metric} ({domain}s)", "value": value, "required": f">= {required}",
                           "ok": value is not None and value >= required})
    others = {m: s.get("mean3") for m, s in summary.items() if m != method and not m.startswith(f"{method} ")}
    best_other = max((v for v in others.values() if v is not None), default=None)
    value = mine.get("mean3")
    checks.append({"check": f"{method} mean(UA, IRA, CRA) above every baseline", "value": value,
                   "required": f"> {best_other:.3f}" if best_other is not None else "> baselines",
                   "ok": value is not None and best_other is not None and value > best_other})
    speed = ratio(summary.get(esd, {}).get("seconds"), mine.get("seconds"))
    checks.append({"check": f"time to erase: {esd} / {method}", "value": speed, "required": ">= 10",
                   "ok": speed is not None and speed >= 10})
    if esd_paper_estimate:
        speed = ratio(esd_paper_estimate["estimated_seconds_for_1000"], mine.get("seconds"))
        checks.append({"check": f"(for reference) time to erase: {esd} at the paper's 1000 iterations, extrapolated "
                                f"from {esd_paper_estimate['measured_iterations']} measured / {method}",
                       "value": speed, "required": ">= 10", "ok": speed is not None and speed >= 10,
                       "extrapolated": True})
    for other in ("ESD-x", "ESD-u"):
        size = ratio(summary.get(other, {}).get("stored_bytes"), mine.get("stored_bytes"))
        checks.append({"check": f"stored size: {other} / {method}", "value": size, "required": ">= 100",
                       "ok": size is not None and size >= 100})
    return checks
