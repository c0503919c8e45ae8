"""Surrogate Ranking on the demo model, through the real ComfyUI server, feeding Timestep Profile."""
import pytest

from comfy_server import error_message

TARGETS = "An star image in Neon style.\nAn circle image in neon style."
CANDIDATES = "Sunset\nPixel Mosaic\nPencil Sketch"


def ranking_workflow(**change) -> dict:
    inputs = {"model": ["demo", 0], "clip": ["demo", 1], "targets": TARGETS, "concept": "Neon",
              "candidates": CANDIDATES, "samples": 1, "seed": 0, "resolution": 0, **change}
    return {
        "demo": {"class_type": "SpareDemoModel", "inputs": {}},
        "rank": {"class_type": "SpareSurrogateRanking", "inputs": inputs},
        # Its STRING output goes where a user would wire it: the surrogates input of Timestep Profile.
        "profile": {"class_type": "SpareTimestepProfile", "inputs": {
            "model": ["demo", 0], "clip": ["demo", 1], "targets": TARGETS, "surrogates": ["rank", 0],
            "scheme": "concept", "uniform_mix": 0.2, "samples": 1, "seed": 0, "resolution": 0}},
        "chart": {"class_type": "PreviewImage", "inputs": {"images": ["rank", 1]}},
        "profile_chart": {"class_type": "PreviewImage", "inputs": {"images": ["profile", 1]}},
    }


def test_closest_candidate_is_swapped_into_every_target_prompt(comfy_server):
    entry = comfy_server.run(ranking_workflow())
    text = entry["outputs"]["rank"]["text"][0]
    ranked, surrogates = text.split("\n\n")
    lines = ranked.splitlines()[1:]
    names = [line.rsplit(": ", 1)[0] for line in lines]
    values = [float(line.rsplit(": ", 1)[1]) for line in lines]
    assert sorted(names) == sorted(CANDIDATES.splitlines()) and values == sorted(values) and values[0] > 0
    closest = names[0]
    # Any case of the concept is replaced; the rest of each prompt is kept.
    assert surrogates.splitlines() == [f"An star image in {closest} style.", f"An circle image in {closest} style."]
    assert len(comfy_server.images(entry, "chart")) == 1 and len(comfy_server.images(entry, "profile_chart")) == 1


@pytest.mark.parametrize("change, expected", [
    ({"concept": "Watercolor"}, "concept 'Watercolor' does not occur in the target prompt 'An star image in Neon style.'"),
    ({"concept": " "}, "concept is empty"),
    ({"candidates": "\n"}, "candidates is empty"),
    ({"candidates": "Sunset\nneon"}, "candidates lists 'neon', the concept itself"),
])
def test_bad_input_gives_node_error_naming_it(comfy_server, change, expected):
    entry = comfy_server.wait(comfy_server.queue(ranking_workflow(**change)))
    assert entry["status"]["status_str"] == "error" and expected in error_message(entry)
