"""Writing a benchmark result: <name>.json (everything), <name>.md (the tables), <name>.png (the trade-off)."""
from __future__ import annotations

import json
from pathlib import Path

from bench.metrics import METRICS, ORIGINAL, SUBSTITUTION, acceptance, retain_score, summarize
from bench.plot import tradeoff_png

MAIN = ["SPARE", "ESD-x", "ESD-u", "SalUn", "UCE"]


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _num(v, fmt="{:.1f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def _size(n) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2 ** 20:.2f} MB" if n >= 2 ** 20 else f"{n / 2 ** 10:.1f} KB"


def fewer_targets(rows: list[dict], methods: list[str], reference: str = "SPARE") -> list[str]:
    """A line for each method whose mean covers fewer targets than the table's others (the time budget stopped
    the run before it reached them), with `reference`'s scores on just that method's targets: like for like."""
    covered = {m: {tuple(r["targets"]) for r in rows if r["method"] == m} for m in methods}
    every = set().union(*covered.values())
    lines = []
    for m in methods:
        missing = sorted(every - covered[m])
        if not missing:
            continue
        line = (f"**{m}** averages {len(covered[m])} of the {len(every)} targets (not "
                f"{'; '.join(', '.join(t) for t in missing)}: the time budget ran out before them)")
        same = summarize([r for r in rows if r["method"] == reference and tuple(r["targets"]) in covered[m]])
        if m != reference and covered[m] <= covered.get(reference, set()) and "mean3" in same.get(reference, {}):
            s = same[reference]
            line += (f"; {reference} on the same {len(covered[m])}: UA {_pct(s['UA'])}, IRA {_pct(s['IRA'])}, "
                     f"CRA {_pct(s['CRA'])}, mean {_pct(s['mean3'])}")
        lines += ["", line + "."]
    return lines


def markdown(result: dict) -> str:
    rows = result["rows"]
    summary = summarize(rows)
    base = summarize(result.get("base", []))
    p = result["profile"]
    lines = [f"# Erasure benchmark on the demo world: `{result['name']}`", "",
             f"Profile `{p['name']}`; reported targets {result['reported_targets']}; tuning targets "
             f"{result['tuning_targets']} (tuning: {'chosen ' + json.dumps(result['tuning']['chosen']) if result.get('tuning') else 'not run; untuned demo settings'}).",
             f"Evaluation: {'full object x style grid' if p['eval_per_concept'] is None else 'every target image + ' + str(p['eval_per_concept']) + ' image(s) per other concept'}, "
             f"seeds {p['eval_seeds']}, euler 20 steps, cfg 6, 128x128, prompt template 0. Classifiers: "
             f"{'yes' if result.get('classifiers') else 'MISSING - no UA/IRA/CRA'}. "
             f"Total {result.get('minutes', 0):.1f} min; host weights unchanged: {result.get('host_unchanged', 'n/a')}.", "",
             *[f"**Note:** {n}" for n in result.get("notes", [])], "",
             "UA / IRA / CRA in %, means over the reported targets (style | object | all). Time = wall time of the "
             "erasure itself (latent generation, saliency, training / solve). Peak mem = peak RSS growth during the "
             "erasure (psutil, 10 ms sampling). Stored = safetensors file of the result (ComfyUI LoRA format). "
             f"The row \"{SUBSTITUTION}\" is no erasure but a reference: the original model with each target prompt "
             "re-worded to name its surrogate, scored as the target. It is what an erasure that draws exactly the "
             "surrogate would score, so its CRA bounds the CRA of every method that maps the target to that surrogate.", "",
             "| method | UA s/o/all | IRA s/o/all | CRA s/o/all | mean(UA,IRA,CRA) | time (s) | peak mem (MB) | stored | trainable params |",
             "|---|---|---|---|---|---|---|---|---|"]

    def line(name, s):
        cells = []
        for m in METRICS:
            cells.append(" / ".join(_pct(s.get(d, {}).get(m)) for d in ("style", "object")) + f" / **{_pct(s.get(m))}**")
        return (f"| {name} | {' | '.join(cells)} | {_pct(s.get('mean3'))} | {_num(s.get('seconds'))} | "
                f"{_num(s.get('peak_rss_mb'), '{:.0f}')} | {_size(s.get('stored_bytes'))} | "
                f"{_num(s.get('trainable_params'), '{:,.0f}')} |")

    if base:
        lines.append(line("original model (no erasure)", base[ORIGINAL]))
    if SUBSTITUTION in base:
        lines.append(line(SUBSTITUTION, base[SUBSTITUTION]))
    def is_ablation(method):
        return method.startswith("SPARE (")

    # Ablation rows cover only the first targets: they are compared like for like in their own table below.
    ordered = [m for m in MAIN if m in summary] + [m for m in summary if m not in MAIN and not is_ablation(m)]
    for m in ordered:
        lines.append(line(m, summary[m]))
    lines += fewer_targets(rows, ordered)
    ablated = [r for r in rows if is_ablation(r["method"])]
    if ablated:
        same = {tuple(r["targets"]) for r in ablated}
        compared = [r for r in rows if r["method"] == "SPARE" and tuple(r["targets"]) in same] + ablated
        part = summarize(compared)
        lines += ["", f"## Ablations (on {', '.join(', '.join(t) for t in sorted(same))}; SPARE on the same targets)", "",
                  "A variant trains on the latents its target's SPARE row drew (the same prompts and latent settings "
                  "give the same draw); their drawing time, measured there, is counted in the variant's time.", "",
                  "| variant | UA | IRA | CRA | mean(UA,IRA,CRA) | time (s) | stored | trainable params |",
                  "|---|---|---|---|---|---|---|---|"]
        for m, s in part.items():
            lines.append(f"| {m} | {_pct(s.get('UA'))} | {_pct(s.get('IRA'))} | {_pct(s.get('CRA'))} | {_pct(s.get('mean3'))} | "
                         f"{_num(s.get('seconds'))} | {_size(s.get('stored_bytes'))} | {_num(s.get('trainable_params'), '{:,.0f}')} |")
        lines += fewer_targets(compared, list(part))
    tuning = result.get("tuning") or {}
    if tuning.get("trials"):
        lines += ["", f"## Tuning (on the tuning targets {result['tuning_targets']}; {tuning['minutes']:.1f} min)", "",
                  "Every method tried the same number of settings; the best mean(UA,IRA,CRA) over the tuning targets "
                  "is the one used above.", "", "| method | setting | mean(UA,IRA,CRA) | chosen |", "|---|---|---|---|"]
        for t in tuning["trials"]:
            lines.append(f"| {t['method']} | `{json.dumps(t['settings'])}` | {_pct(t['mean3'])} | "
                         f"{'yes' if t['settings'] == tuning['chosen'].get(t['method']) else ''} |")
    staged = [r for r in rows if r.get("info", {}).get("stage_seconds")]
    if staged:
        stages = list(staged[0]["info"]["stage_seconds"])
        lines += ["", "## SPARE per stage (wall seconds; peak RSS growth of the whole erasure)", "",
                  f"| variant | target | {' | '.join(stages)} | total | peak mem (MB) | stored |",
                  "|---|---|" + "---|" * (len(stages) + 3)]
        for r in staged:
            t = r["info"]["stage_seconds"]
            lines.append(f"| {r['method']} | {', '.join(r['targets'])} | {' | '.join(_num(t.get(k)) for k in stages)} | "
                         f"{_num(r['seconds'])} | {_num(r.get('peak_rss_mb'), '{:.0f}')} | {_size(r['stored_bytes'])} |")
    lines += ["", "## Acceptance (issue #6), measured in this run", "", "| check | value | required | met |",
              "|---|---|---|---|"]
    for c in acceptance(summary, esd_paper_estimate=result.get("esd_x_paper_estimate")):
        v = c["value"]
        shown = "n/a" if v is None else (f"{100 * v:.1f}%" if "UA" in c["check"] or "IRA" in c["check"] or "CRA" in c["check"] or "mean" in c["check"] else f"{v:.1f}x")
        met = ("yes" if c["ok"] else "**no**") + (", extrapolated" if c.get("extrapolated") else "")
        lines.append(f"| {c['check']} | {shown} | {c['required']} | {met} |")
    lines += ["", "## Per target", "", "| method | target | surrogate | UA | IRA | CRA | time (s) |", "|---|---|---|---|---|---|---|"]
    for r in result.get("base", []) + rows:
        lines.append(f"| {r['method']} | {', '.join(r['targets'])} | {', '.join(r.get('surrogates', []))} | {_pct(r['UA'])} | "
                     f"{_pct(r['IRA'])} | {_pct(r['CRA'])} | {_num(r.get('seconds'))} |")
    curve = result.get("curve", [])
    if curve:
        lines += ["", "## SPARE strength curve (LoRA applied at strength s)", "", "| s | UA | IRA | CRA | targets |",
                  "|---|---|---|---|---|"]
        for s, part in _by_strength(curve).items():
            lines.append(f"| {s} | {_pct(part['UA'])} | {_pct(part['IRA'])} | {_pct(part['CRA'])} | {part['n']} |")
    multi = result.get("multi", [])
    if multi:
        lines += ["", "## Multi-concept (styles erased at once into one result)", "",
                  "An iterative method gets its single-concept steps once per erased concept "
                  "(`bench.run.per_concept_budget`).", "",
                  "| method | concepts | UA | IRA | CRA | time (s) | stored | trainable params |", "|---|---|---|---|---|---|---|---|"]
        for r in multi:
            lines.append(f"| {r['method']} | {r['n_concepts']}: {', '.join(r['targets'])} | {_pct(r['UA'])} | {_pct(r['IRA'])} | "
                         f"{_pct(r['CRA'])} | {_num(r.get('seconds'))} | {_size(r.get('stored_bytes'))} | "
                         f"{_num(r.get('trainable_params'), '{:,.0f}')} |")
    estimate = result.get("esd_x_paper_estimate")
    if estimate:
        lines += ["", f"ESD-x at the paper's settings (1000 iterations, 50-step DDIM grid): "
                      f"{estimate['estimated_seconds_for_1000']:.0f} s estimated ({estimate['note']}; "
                      f"{estimate['measured_seconds']:.1f} s measured)."]
    if result.get("skipped"):
        lines += ["", f"**Skipped (time budget of {p['budget_minutes']} min reached):** " + "; ".join(result["skipped"])]
    lines += ["", "## Settings", "", "Used in this run (demo-scaled; see bench/baselines/* for the rationale):", "",
              "```json", json.dumps(result["configs"], indent=1), "```", "", "Paper / reference defaults:", "",
              "```json", json.dumps(result["paper_configs"], indent=1), "```"]
    if result.get("weights"):
        lines += ["", "Demo-world weights measured: " + ", ".join(
            f"{k} {v['sha256']} ({v['modified']} UTC)" for k, v in result["weights"].items())]
    return "\n".join(lines) + "\n"


def _by_strength(curve: list[dict]) -> dict:
    out = {}
    for s in sorted({r["strength"] for r in curve}):
        part = [r for r in curve if r["strength"] == s and r["UA"] is not None]
        if part:
            out[s] = {m: sum(r[m] for r in part) / len(part) for m in METRICS}
            out[s]["n"] = len(part)
    return out


def write_all(result: dict, prefix: Path) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.json").write_text(json.dumps(result, indent=1, default=str))
    Path(f"{prefix}.md").write_text(markdown(result))
    summary = summarize(result["rows"])
    points = {m: (s["UA"], s["retain"]) for m, s in summary.items() if s.get("UA") is not None}
    base = summarize(result.get("base", [])).get(ORIGINAL, {})
    if base.get("UA") is not None:
        points[ORIGINAL] = (base["UA"], base["retain"])
    curve_targets = {tuple(r["targets"]) for r in result.get("curve", [])}
    curve = [(s, v["UA"], (v["IRA"] + v["CRA"]) / 2) for s, v in _by_strength(result.get("curve", [])).items()]
    if points:
        tradeoff_png(f"{prefix}.png", points, curve,
                     f"Forget vs retain, demo world ({result['name']}; curve on {len(curve_targets)} targets)")


__all__ = ["markdown", "write_all", "retain_score"]
