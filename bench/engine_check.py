"""The engine's own check (issue #4): SPARE at its default settings on single styles and objects, judged on the
whole generation set, with the uniform-timestep, no-saliency and no-unconditional-rows variants, all in one run.

    python -m bench.engine_check                     # the benchmark's reported and tuning targets, ~40 min on 2 cores
    python -m bench.engine_check --targets Neon,moon --seeds 0 --name engine_check_more
    python -m bench.engine_check --targets Sunset,Camouflage --no-variants --name engine_check_styles

Every erasure uses `spare.SpareConfig()` as it stands (the engine's and the nodes' defaults, not the
benchmark's tuned settings), the `full` profile's prompts (the target with 12 partners across the four
phrasings; three retain prompts, each with another partner, per kept concept of the domain: 33) and its evaluation: every object x style
pair, seeds 0 and 1, 288 images. SPARE runs once per training seed (`--seeds`, default 0, 1, 2): one run's
CRA moves by several points with the seed alone, so the acceptance is judged on the mean over seeds. The
variants run at the first seed. Per erasure: UA / IRA / CRA, wall time per stage, peak RSS growth, the
LoRA file's size, trainable parameters. Reference rows: the original model and the ideal substitution.
Results: bench/results/<name>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, replace

from bench.run import ABLATIONS, PROFILES, RESULTS, TUNING, Bench, eval_items

# The benchmark's reported targets (held out from every tuning), then its tuning targets.
DEFAULT_TARGETS = ["Blueprint", "Watercolor", "heart", "arrow", "Checkerboard", "triangle"]
VARIANTS = {**{label: ABLATIONS[label] for label in ("SPARE (uniform timesteps)", "SPARE (no saliency: all layers)")},
            "SPARE (no unconditional rows)": {"unconditional_share": 0.0}}
DEFAULT_SEEDS = (0, 1, 2)
# Issue #4: each single-target erasure at default settings, on the demo world's generation set.
THRESHOLDS = {"UA": 0.90, "IRA": 0.85, "CRA": 0.90}
MAX_SECONDS = 300.0


def run(targets: list[str], name: str, threads: int, seeds: tuple[int, ...] = DEFAULT_SEEDS,
        retain_partners: int | None = None, variants: bool = True) -> dict:
    from bench.baselines import spare

    profile = replace(PROFILES["full"], name=name)
    if retain_partners is not None:
        profile = replace(profile, retain_partners=retain_partners)
    bench = Bench(profile, threads)
    result = {"name": name, "targets": targets, "profile": asdict(profile), "config": asdict(spare.SpareConfig()),
              "machine": f"{platform.processor() or platform.machine()}, {threads} torch threads",
              "created": time.strftime("%Y-%m-%d %H:%M"), "seeds": list(seeds), "rows": []}
    for target in targets:
        task = bench.task([target])
        result.setdefault("surrogates", {})[target] = task.surrogate_concepts[0]
        items = eval_items(task.domain, task.concepts, profile)
        result["rows"] += bench.reference_rows(task, items)
        runs = [("SPARE", {"seed": seed}) for seed in seeds]
        runs += [(label, {**switch, "seed": seeds[0]}) for label, switch in VARIANTS.items() if variants]
        for label, switch in runs:
            for row in bench.row("SPARE", replace(spare.SpareConfig(), **switch), task, label=label):
                result["rows"].append({**row, "retain": task.retain, "surrogate_prompts": task.surrogates[:3]})
        result["surrogate_rankings"] = bench.rankings
        result["minutes"] = bench.minutes()
        write(result)
    result["host_weights_unchanged"] = bench.weights_hash(bench.model.model.diffusion_model) == bench.host_hash
    write(result)
    return result


def seed_summary(result: dict) -> list[dict]:
    """Per target, SPARE's runs at its defaults over the training seeds: mean, lowest and highest of each figure."""
    by_target: dict[str, list[dict]] = {}
    for row in result["rows"]:
        if row["method"] == "SPARE":
            by_target.setdefault(row["targets"][0], []).append(row)
    summary = []
    for target, rows in by_target.items():
        entry = {"target": target, "domain": rows[0]["domain"], "seeds": [r["config"]["seed"] for r in rows]}
        for metric in (*THRESHOLDS, "seconds"):
            values = [r[metric] for r in rows]
            entry[metric] = {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}
        summary.append(entry)
    return summary


def acceptance(result: dict) -> list[tuple[str, str, bool]]:
    """Issue #4's thresholds on each target's mean over seeds; the erase time on its slowest seed."""
    checks = []
    for entry in seed_summary(result):
        name, n = f"{entry['target']} ({entry['domain']})", len(entry["seeds"])
        for metric, floor in THRESHOLDS.items():
            value = entry[metric]
            spread = f" (seeds: {100 * value['min']:.1f}-{100 * value['max']:.1f})" if n > 1 else ""
            checks.append((f"{name} {metric}", f"{100 * value['mean']:.1f}%{spread}, mean of {n} (>= {100 * floor:.0f}%)",
                           value["mean"] >= floor))
        slowest = entry["seconds"]["max"]
        checks.append((f"{name} erase time", f"{slowest:.0f} s slowest (< {MAX_SECONDS:.0f} s)", slowest < MAX_SECONDS))
    return checks


def markdown(result: dict) -> str:
    from demo_world.dataset import OBJECTS, STYLES

    tuning = TUNING["style"] + TUNING["object"]
    held_out = [t for t in result["targets"] if t not in tuning]
    profile = result["profile"]
    lines = [f"# SPARE's engine check on the demo world: `{result['name']}` (issue #4)", "",
             f"Targets {result['targets']}; `SpareConfig()` defaults: `{json.dumps(result['config'])}`.",
             f"Prompts: the target with {profile['target_prompts']} partners over the four phrasings; "
             f"{profile['retain_prompts']} kept concepts as retain prompts, {profile.get('retain_partners', 1)} per "
             "concept (each with another partner); surrogate: for a style the style the frozen model finds closest "
             "(`Bench.surrogate_ranking`), for an object the next object of the domain ("
             f"{', '.join(f'{t} -> {s}' for t, s in result.get('surrogates', {}).items())}). Judged on the whole generation set: every object x style pair, seeds "
             f"{', '.join(map(str, profile['eval_seeds']))} ({len(OBJECTS) * len(STYLES) * len(profile['eval_seeds'])} images), "
             "euler 20 steps, cfg 6. "
             f"Machine: {result['machine']}; {result.get('minutes', 0):.1f} min in all; host weights unchanged: "
             f"{result.get('host_weights_unchanged')}." + (f" {result['note']}" if result.get("note") else ""),
             f"The defaults' learning rate and retain weight were chosen on the tuning targets {tuning}; "
             f"this run's others are held out: {held_out}. The batch of 4 was chosen on Blueprint's spread over seeds "
             "(held out; the tuning targets scored at their ceiling with batch 1 and 4 alike, bench/README.md). The "
             "unconditional rows (`unconditional_share` 0.5) came from a diagnosis of Blueprint's erased images (held "
             "out) and were tried on Neon, Zigzag and triangle (tuning) and on Camouflage first (bench/README.md).", "",
             "| target | variant | seed | UA | IRA | CRA | latents / saliency / timesteps / distill (s) | erase (s) "
             "| peak RSS growth (MB) | LoRA file | trainable params |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        pct = " | ".join(f"{100 * row[m]:.1f}" for m in ("UA", "IRA", "CRA"))
        if "seconds" not in row:
            lines.append(f"| {row['targets'][0]} | {row['method']} | | {pct} | | | | | |")
            continue
        stages = row["info"]["stage_seconds"]
        split = " / ".join(f"{stages.get(s, 0.0):.1f}" for s in ("latents", "saliency", "timesteps", "distill"))
        lines.append(f"| {row['targets'][0]} | {row['method']} | {row['config']['seed']} | {pct} | {split} | {row['seconds']:.1f} | "
                     f"{row['peak_rss_mb']:.0f} | {row['stored_bytes'] / 1024:.1f} KB | {row['trainable_params']:,} |")
    lines += ["", "## SPARE at its defaults over the training seeds", "",
              "| target | seeds | UA mean (min-max) | IRA mean (min-max) | CRA mean (min-max) | erase (s), mean |",
              "|---|---|---|---|---|---|"]
    for entry in seed_summary(result):
        spread = " | ".join(f"{100 * entry[m]['mean']:.1f} ({100 * entry[m]['min']:.1f}-{100 * entry[m]['max']:.1f})"
                            for m in THRESHOLDS)
        lines.append(f"| {entry['target']} | {', '.join(map(str, entry['seeds']))} | {spread} | "
                     f"{entry['seconds']['mean']:.1f} |")
    lines += ["", "## Acceptance (issue #4), SPARE at its defaults", "", "| check | value | met |", "|---|---|---|"]
    lines += [f"| {what} | {value} | {'yes' if ok else '**no**'} |" for what, value, ok in acceptance(result)]
    return "\n".join(lines) + "\n"


def write(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{result['name']}.json").write_text(json.dumps(result, indent=1, default=str))
    (RESULTS / f"{result['name']}.md").write_text(markdown(result))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help="comma-separated concepts, each erased alone")
    parser.add_argument("--name", default="engine_check")
    parser.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)),
                        help="SPARE's training seeds, comma-separated; the variants run at the first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--retain-partners", type=int, default=None,
                        help="retain prompts per kept concept (default: the full profile's)")
    parser.add_argument("--no-variants", action="store_true",
                        help="SPARE at its defaults only, without the uniform-timestep, no-saliency and no-unconditional-rows variants")
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    from demo_world.dataset import OBJECTS, STYLES

    unknown = [t for t in targets if t not in OBJECTS + STYLES]
    if unknown or not targets:
        parser.error(f"--targets: unknown {unknown}; use the demo world's objects {OBJECTS} or styles {STYLES}")
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError:
        seeds = ()
    if not seeds:
        parser.error(f"--seeds: give one or more integers separated by commas, got {args.seeds!r}")
    if args.retain_partners is not None and args.retain_partners < 1:
        parser.error(f"--retain-partners: give an integer >= 1, got {args.retain_partners}")
    run(targets, args.name, args.threads, seeds, args.retain_partners, variants=not args.no_variants)


if __name__ == "__main__":
    main()
