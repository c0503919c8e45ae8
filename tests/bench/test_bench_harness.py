"""The harness's bookkeeping against hand-computed cases: prompts, eval sets, UA/IRA/CRA, aggregation, acceptance."""
from dataclasses import replace

import pytest

from bench import metrics, run
from demo_world.classifiers import Judgement
from demo_world.dataset import OBJECTS, STYLES

QUICK = run.PROFILES["quick"]


def test_tasks_pair_each_target_prompt_with_its_surrogate_and_keep_targets_out_of_retain():
    task = run.build_task(["heart"], QUICK)
    assert task.surrogate_concepts == ["cross"]  # the next object, as SalUn's (c + 1) mod K
    assert len(task.targets) == len(task.surrogates) == QUICK.target_prompts
    for t, s in zip(task.targets, task.surrogates):
        assert "heart" in t and t.replace("heart", "cross") == s
    assert len(task.retain) == QUICK.retain_partners * QUICK.retain_prompts
    assert not any("heart" in r for r in task.retain)
    assert task.retain_concepts == [o for o in OBJECTS if o != "heart"]  # the quick profile lists every kept one
    several = run.build_task(["heart"], replace(QUICK, retain_partners=3))
    assert len(several.retain) == 3 * QUICK.retain_prompts and len(set(several.retain)) == len(several.retain)
    for i, concept in enumerate(several.retain_concepts):  # three prompts per kept concept, three different styles
        prompts = several.retain[3 * i:3 * i + 3]
        assert all(concept in p for p in prompts)
        assert len({style for p in prompts for style in STYLES if style in p}) == 3
    multi = run.build_task(["Watercolor", "Neon"], QUICK)
    assert multi.surrogate_concepts == ["Pixel Mosaic", "Pixel Mosaic"]  # never another target
    targets, surrogates, retain = multi.inputs("UCE")
    assert targets[:2] == ["Watercolor", "Neon"] and retain[: len(multi.retain_concepts)] == multi.retain_concepts
    # With a ranking (Bench.surrogate_ranking's, closest first) the first concept not being erased is taken.
    ranked = run.build_task(["Watercolor", "Neon"], QUICK, rankings={"Watercolor": ["Neon", "Sunset"], "Neon": ["Sunset"]})
    assert ranked.surrogate_concepts == ["Sunset", "Sunset"]
    assert [t.replace("Watercolor", "Sunset").replace("Neon", "Sunset") for t in ranked.targets] == ranked.surrogates
    assert ranked.targets == multi.targets  # the ranking changes the surrogates only


def test_multi_concept_budget_scales_iterative_methods_only():
    from bench.baselines import esd, salun, spare, uce

    assert run.per_concept_budget(spare.SpareConfig(steps=200), 3).steps == 600
    salun_scaled = run.per_concept_budget(salun.SalUnConfig(steps=50, sampling_steps=20), 6)
    assert (salun_scaled.steps, salun_scaled.sampling_steps) == (300, 20)
    scaled = run.per_concept_budget(esd.ESDConfig.demo("x"), 3)
    assert scaled.iterations == 3 * esd.ESDConfig.demo("x").iterations
    assert scaled.ddim_steps == esd.ESDConfig.demo("x").ddim_steps
    assert run.per_concept_budget(uce.UCEConfig.demo(), 6) == uce.UCEConfig.demo()


def test_quick_eval_set_covers_every_concept():
    items = run.eval_items("object", ["heart"], QUICK)
    assert len(items) == len(QUICK.eval_seeds) * (12 + 11) and len(QUICK.eval_seeds) == 6
    for seed in QUICK.eval_seeds:  # the same set on every seed
        assert sorted(i.style for i in items if i.object == "heart" and i.seed == seed) == sorted(STYLES)
        assert len([i for i in items if i.seed == seed]) == 12 + 11
    assert {i.object for i in items} == set(OBJECTS) and {i.style for i in items} == set(STYLES)
    full = run.eval_items("style", ["Neon"], run.PROFILES["full"])
    assert len(full) == 12 * 12 * 2


def test_scores_by_hand():
    items = run.eval_items("object", ["heart"], replace(QUICK, eval_seeds=(0,)))
    judgements = []
    for i in items:
        obj, style = i.object, i.style
        if i.object == "heart" and i.style not in STYLES[:3]:
            obj = "cross"  # 9 of the 12 heart images no longer show a heart
        if i.object == "heart" and i.style == STYLES[0]:
            style = "Neon"  # one style mistake, on a Candy Stripes image
        if i.object == "circle":
            obj = "square"  # the one circle image is drawn wrong
        judgements.append(Judgement(obj, 1.0, style, 1.0))
    scores = run.score("object", ["heart"], judgements, items)
    assert scores["UA"] == pytest.approx(1 - 3 / 12)
    assert scores["IRA"] == pytest.approx(10 / 11)  # 11 kept objects, one image each, circle wrong
    # Candy Stripes has two images (heart row + circle), one wrong; the other 11 styles are all right.
    assert scores["CRA"] == pytest.approx((0.5 + 11) / 12)
    assert run.score("object", ["heart"], None, items) == {"UA": None, "IRA": None, "CRA": None}


ROWS = [
    {"method": "SPARE", "domain": "style", "UA": 0.9, "IRA": 0.8, "CRA": 1.0, "seconds": 10, "stored_bytes": 100,
     "trainable_params": 10, "peak_rss_mb": 5},
    {"method": "SPARE", "domain": "object", "UA": 1.0, "IRA": 0.9, "CRA": 0.8, "seconds": 20, "stored_bytes": 100,
     "trainable_params": 10, "peak_rss_mb": 7},
    {"method": "ESD-x", "domain": "style", "UA": 0.5, "IRA": 0.9, "CRA": 0.9, "seconds": 200, "stored_bytes": 20000,
     "trainable_params": 1000, "peak_rss_mb": 50},
    {"method": "UCE", "domain": "style", "UA": None, "IRA": None, "CRA": None, "seconds": 1, "stored_bytes": 10,
     "trainable_params": 1, "peak_rss_mb": 1},
]


def test_summary_by_hand():
    s = metrics.summarize(ROWS)
    assert s["SPARE"]["style"] == {"UA": 0.9, "IRA": 0.8, "CRA": 1.0}
    assert s["SPARE"]["UA"] == pytest.approx(0.95) and s["SPARE"]["IRA"] == pytest.approx(0.85)
    assert s["SPARE"]["CRA"] == pytest.approx(0.9) and s["SPARE"]["retain"] == pytest.approx(0.875)
    assert s["SPARE"]["mean3"] == pytest.approx(0.9) and s["SPARE"]["seconds"] == 15
    assert s["ESD-x"]["mean3"] == pytest.approx((0.5 + 0.9 + 0.9) / 3)
    assert "UA" not in s["UCE"] and s["UCE"]["seconds"] == 1  # costs only, without classifiers
    assert metrics.retain_score(ROWS[0]) == pytest.approx(0.9) and metrics.overall(ROWS[0]) == pytest.approx(0.9)


def test_acceptance_by_hand():
    checks = {c["check"]: c for c in metrics.acceptance(metrics.summarize(ROWS))}
    assert not checks["SPARE UA (styles)"]["ok"] and checks["SPARE UA (objects)"]["ok"]
    assert checks["SPARE IRA (objects)"]["ok"] and not checks["SPARE IRA (styles)"]["ok"]
    assert checks["SPARE mean(UA, IRA, CRA) above every baseline"]["ok"]
    assert checks["time to erase: ESD-x / SPARE"]["value"] == pytest.approx(200 / 15)
    assert checks["stored size: ESD-x / SPARE"]["value"] == pytest.approx(200) and checks["stored size: ESD-x / SPARE"]["ok"]
    assert checks["stored size: ESD-u / SPARE"]["value"] is None and not checks["stored size: ESD-u / SPARE"]["ok"]


def test_report_renders_partial_results(tmp_path):
    from bench.report import markdown, write_all

    result = {"name": "t", "profile": {**vars(replace(QUICK)), "eval_seeds": (0,)}, "reported_targets": run.REPORTED_QUICK,
              "tuning_targets": run.TUNING, "tuning": None, "configs": {}, "paper_configs": {}, "classifiers": True,
              "rows": [{**r, "targets": ["x"], "surrogates": ["y"]} for r in ROWS], "base": [], "minutes": 1.0,
              "curve": [{**ROWS[0], "targets": ["x"], "strength": s} for s in (0.5, 1.0)], "skipped": [],
              "multi": [{"method": metrics.SUBSTITUTION, "targets": ["x", "y"], "n_concepts": 2, "UA": 1.0, "IRA": 0.9, "CRA": 0.8}]}
    text = markdown(result)
    assert f"| {metrics.SUBSTITUTION} | 2: x, y | 100.0 | 90.0 | 80.0 | n/a | n/a | n/a |" in text  # a reference: no costs
    assert "| SPARE |" in text and "95.0" in text
    assert "ESD-x at the paper's 1000 iterations" not in text  # no estimate in this result
    spare_seconds = metrics.summarize(result["rows"])["SPARE"]["seconds"]
    result["esd_x_paper_estimate"] = {"measured_iterations": 20, "measured_seconds": 0.24 * spare_seconds,
                                      "estimated_seconds_for_1000": 12 * spare_seconds, "note": "extrapolated"}
    assert "extrapolated from 20 measured / SPARE | 12.0x | >= 10 | yes, extrapolated |" in markdown(result)
    write_all(result, tmp_path / "t")
    assert (tmp_path / "t.png").stat().st_size > 0 and (tmp_path / "t.json").exists()


def test_report_keeps_ablations_out_of_the_main_table():
    from bench.report import markdown

    ablated = {**ROWS[0], "method": "SPARE (uniform timesteps)", "UA": 0.7, "targets": ["x"], "surrogates": ["y"]}
    result = {"name": "t", "profile": vars(replace(QUICK)), "reported_targets": run.REPORTED_QUICK,
              "tuning_targets": run.TUNING, "tuning": None, "configs": {}, "paper_configs": {}, "classifiers": True,
              "rows": [{**r, "targets": ["x"], "surrogates": ["y"]} for r in ROWS] + [ablated], "base": [],
              "minutes": 1.0, "curve": [], "multi": [], "skipped": []}
    main_table, rest = markdown(result).split("## Ablations", 1)
    assert "| SPARE |" in main_table and "uniform timesteps" not in main_table
    assert "| SPARE (uniform timesteps) | 70.0 |" in rest.split("## SPARE per stage")[0]


def test_report_says_when_the_budget_left_a_variant_fewer_targets_and_compares_it_on_those():
    from bench.report import markdown

    def row(method, target, ua):
        return {**ROWS[0], "method": method, "targets": [target], "surrogates": ["y"], "UA": ua, "IRA": 1.0, "CRA": 1.0}

    # The budget ran out before one variant's second target: its mean covers one of the two the others cover.
    rows = [row("SPARE", "a", 1.0), row("SPARE", "b", 0.5), row("SPARE (no retain term)", "a", 0.9),
            row("SPARE (no retain term)", "b", 0.9), row("SPARE (uniform timesteps)", "a", 0.8)]
    result = {"name": "t", "profile": vars(replace(QUICK)), "reported_targets": run.REPORTED_QUICK,
              "tuning_targets": run.TUNING, "tuning": None, "configs": {}, "paper_configs": {}, "classifiers": True,
              "rows": rows, "base": [], "minutes": 1.0, "curve": [], "multi": [], "skipped": []}
    main_table, ablations = markdown(result).split("## Ablations", 1)
    assert "averages" not in main_table
    assert ("**SPARE (uniform timesteps)** averages 1 of the 2 targets (not b: the time budget ran out before them); "
            "SPARE on the same 1: UA 100.0, IRA 100.0, CRA 100.0, mean 100.0.") in ablations
    assert "**SPARE** averages" not in ablations and "**SPARE (no retain term)** averages" not in ablations
    result["rows"] = rows + [row("SPARE (uniform timesteps)", "b", 0.4)]
    assert "averages" not in markdown(result)


def test_report_lists_every_tuning_trial_and_marks_the_chosen_one():
    from bench.report import markdown

    tuning = {"chosen": {"SPARE": {"lr": 0.003}}, "file": "tuning_quick.json", "minutes": 16.5,
              "trials": [{"method": "SPARE", "settings": {"lr": 0.001}, "mean3": 0.9},
                         {"method": "SPARE", "settings": {"lr": 0.003}, "mean3": 0.95}]}
    result = {"name": "t", "profile": vars(replace(QUICK)), "reported_targets": run.REPORTED_QUICK,
              "tuning_targets": run.TUNING, "tuning": tuning, "configs": {}, "paper_configs": {}, "classifiers": True,
              "rows": [{**r, "targets": ["x"], "surrogates": ["y"]} for r in ROWS], "base": [], "minutes": 1.0,
              "curve": [], "multi": [], "skipped": []}
    section = markdown(result).split("## Tuning", 1)[1]
    assert '| SPARE | `{"lr": 0.001}` | 90.0 |  |' in section
    assert '| SPARE | `{"lr": 0.003}` | 95.0 | yes |' in section


def test_surrogate_drawn_instead_rewords_only_the_target_prompts():
    from demo_world.metrics import GenerationItem

    items = [GenerationItem("An heart image in Neon style.", "heart", "Neon", 0),
             GenerationItem("An star image in Blueprint style.", "star", "Blueprint", 1)]
    swapped = run.surrogate_drawn_instead(items, "style", ["Neon"], ["Watercolor"])
    assert swapped[0] == GenerationItem("An heart image in Watercolor style.", "heart", "Neon", 0)
    assert swapped[1] == items[1]
    swapped = run.surrogate_drawn_instead(items, "object", ["star"], ["cross"])
    assert swapped == [items[0], GenerationItem("An cross image in Blueprint style.", "star", "Blueprint", 1)]


def test_engine_check_judges_each_targets_mean_over_seeds_against_issue_4s_thresholds():
    from bench.engine_check import acceptance, markdown, seed_summary

    def spare_row(target, domain, ua, ira, cra, seconds, seed=0, method="SPARE"):
        return {"method": method, "domain": domain, "targets": [target], "UA": ua, "IRA": ira, "CRA": cra,
                "seconds": seconds, "config": {"seed": seed}, "peak_rss_mb": 120.0, "stored_bytes": 360_000,
                "trainable_params": 83_616,
                "info": {"stage_seconds": {"latents": 9.0, "saliency": 6.0, "timesteps": 11.0, "distill": 20.0}}}

    result = {"name": "check", "targets": ["Blueprint", "heart"], "config": {}, "machine": "cpu", "seeds": [0, 1],
              "profile": {"target_prompts": 12, "retain_prompts": 11, "eval_seeds": [0, 1]}, "rows": [
        {"method": "original model", "domain": "style", "targets": ["Blueprint"], "UA": 0.0, "IRA": 1.0, "CRA": 0.934},
        spare_row("Blueprint", "style", 1.0, 1.0, 0.91, 42.0, seed=0),
        spare_row("Blueprint", "style", 1.0, 1.0, 0.87, 44.0, seed=1),  # mean CRA 89.0: below 90 though seed 0 passes
        spare_row("Blueprint", "style", 0.5, 0.5, 0.5, 40.0, method="SPARE (uniform timesteps)"),
        spare_row("heart", "object", 1.0, 0.867, 1.0, 301.0, seed=0),
        spare_row("heart", "object", 1.0, 0.853, 1.0, 120.0, seed=1),
    ]}
    summary = {entry["target"]: entry for entry in seed_summary(result)}
    assert summary["Blueprint"]["seeds"] == [0, 1]  # the variant is not one of SPARE's seeds
    assert abs(summary["Blueprint"]["CRA"]["mean"] - 0.89) < 1e-9
    assert summary["Blueprint"]["CRA"]["min"] == 0.87 and summary["Blueprint"]["CRA"]["max"] == 0.91
    checks = {what: ok for what, _, ok in acceptance(result)}
    assert len(checks) == 8  # two targets x (UA, IRA, CRA, time), not the variant or the reference
    assert checks["Blueprint (style) UA"] and checks["Blueprint (style) IRA"]
    assert not checks["Blueprint (style) CRA"]  # mean 89.0 < 90
    assert checks["heart (object) IRA"]  # mean 86.0 >= 85
    assert not checks["heart (object) erase time"]  # the slowest seed, 301 s, is not under 5 minutes
    text = markdown(result)
    assert "| Blueprint (style) CRA | 89.0% (seeds: 87.0-91.0), mean of 2 (>= 90%) | **no** |" in text
    assert "| Blueprint | 0, 1 | 100.0 (100.0-100.0) | 100.0 (100.0-100.0) | 89.0 (87.0-91.0) | 43.0 |" in text
    assert "9.0 / 6.0 / 11.0 / 20.0" in text


class _RecordingBench:
    """Stands in for Bench's erasing and judging (minutes each on the CPU) to check what `benchmark` runs, in what
    order, and what a time budget cuts; prompts, eval sets and the result's bookkeeping are the real ones."""

    def __init__(self, profile, out_of_time_after: int | None = None):
        self.profile, self.calls, self.rankings, self.classifiers_ok = profile, [], {}, True
        self.out_of_time_after = out_of_time_after  # erasures allowed before the budget runs out
        self.model = type("Model", (), {"model": type("Inner", (), {"diffusion_model": None})()})()
        self.host_hash = "h"

    def task(self, concepts):
        return run.build_task(concepts, self.profile)

    def over_budget(self):
        return self.out_of_time_after is not None and len(self.calls) >= self.out_of_time_after

    def row(self, method, config, task, label=None, strengths=(1.0,)):
        self.calls.append((label or method, tuple(task.concepts)))
        return [{"method": label or method, "domain": task.domain, "targets": task.concepts, "strength": s,
                 "UA": 1.0, "IRA": 1.0, "CRA": 1.0, "seconds": float(len(self.calls))} for s in strengths]

    def erase(self, method, config, task):
        self.calls.append(("ESD-x paper timing", tuple(task.concepts)))
        return {"seconds": 1.0}

    def reference_rows(self, task, items):
        return [{"method": run.ORIGINAL, "domain": task.domain, "targets": task.concepts, "UA": 0.0, "IRA": 1.0, "CRA": 1.0}]

    def substitution(self, task, items):
        return {"method": run.SUBSTITUTION, "targets": task.concepts}

    def weights_hash(self, module):
        return "h"

    def minutes(self):
        return 0.0


def test_benchmark_times_esd_x_before_the_ablations_and_reuses_the_one_concept_row():
    bench = _RecordingBench(QUICK)
    result = run.benchmark(bench, QUICK, "t", ["SPARE", "ESD-x", "UCE"], write=lambda r: None)
    order = [label for label, _ in bench.calls]
    assert order.index("ESD-x paper timing") < order.index(next(iter(run.ABLATIONS)))
    # each method erases the one style once, as a target; its one-concept multi row makes no second erasure
    assert [label for label, concepts in bench.calls if concepts == (run.MULTI[0],) and label in ("SPARE", "UCE")] \
        == ["SPARE", "UCE"]
    one = {r["method"]: r for r in result["multi"] if r.get("n_concepts") == 1 and "seconds" in r}
    single = {r["method"]: r for r in result["rows"] if r["targets"] == [run.MULTI[0]]}
    assert sorted(one) == ["SPARE", "UCE"] and all(one[m]["seconds"] == single[m]["seconds"] for m in one)
    assert [r["method"] for r in result["multi"] if r.get("n_concepts") == 6] == [run.SUBSTITUTION, "UCE", "SPARE"]
    assert result["skipped"] == []


def test_a_spent_budget_skips_new_erasures_but_not_reused_rows():
    every_target = 4 * 3  # 4 targets x (SPARE, ESD-x, UCE)
    bench = _RecordingBench(QUICK, out_of_time_after=every_target)
    result = run.benchmark(bench, QUICK, "t", ["SPARE", "ESD-x", "UCE"], write=lambda r: None)
    assert len(bench.calls) == every_target
    assert "ESD-x paper-setting timing" in result["skipped"] and "UCE on 3 concepts" in result["skipped"]
    assert {r["method"] for r in result["multi"] if r.get("n_concepts") == 1 and "seconds" in r} == {"SPARE", "UCE"}
