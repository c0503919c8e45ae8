"""The training report's acceptance table: issue #3's thresholds, held against a stage's figures."""
import copy
import json

from demo_world.training import report


def shipped_stats():
    return json.loads((report.SHIPPED_DOCS / "training_stats.json").read_text())


def unmet(stats):
    return [what for what, _, met in report.acceptance(stats) if not met]


def test_the_shipped_model_meets_every_threshold():
    rows = report.acceptance(shipped_stats())
    assert len(rows) == 10
    assert unmet(shipped_stats()) == []


def test_one_concept_under_75_percent_fails_only_its_row():
    stats = copy.deepcopy(shipped_stats())
    stats["evaluate"]["per_object"]["hexagon"] = 0.708
    assert unmet(stats) == ["every object >= 75%"]
    assert "lowest: hexagon 70.8% | **no**" in "\n".join(report.acceptance_markdown(stats))


def test_a_phrasing_six_points_off_fails_and_five_points_passes():
    stats = copy.deepcopy(shipped_stats())
    first = stats["evaluate"]["per_template"][0]["style"]
    stats["evaluate"]["per_template"][2]["style"] = first - 0.06
    assert unmet(stats) == ["style accuracy of every phrasing within 5 points of the first"]
    stats["evaluate"]["per_template"][2]["style"] = first - 0.05
    assert unmet(stats) == []


def test_a_report_without_the_judged_stages_has_no_acceptance_table():
    stats = {k: v for k, v in shipped_stats().items() if k in ("vae", "diffusion")}
    assert report.acceptance(stats) == []
    assert report.acceptance_markdown(stats) == []
