"""The example workflows: real nodes only, and the demo erases its concept through the real server."""
import json
from pathlib import Path

import numpy as np
import pytest

from comfy_workflows import to_api
from demo_world import demo_erasure

WORKFLOWS = sorted((Path(__file__).resolve().parent.parent / "workflows").glob("*.json"))


def test_there_are_the_four_example_workflows():
    assert {p.stem for p in WORKFLOWS} == {
        "spare_demo_erase_style", "spare_sd15_erase_style", "spare_sdxl_erase_object", "spare_apply_saved_erasure"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_uses_only_existing_nodes_and_consistent_links(comfy_server, path):
    info = comfy_server.get_json("/object_info")
    ui = json.loads(path.read_text())
    missing = [n["type"] for n in ui["nodes"] if n["type"] not in info]
    assert not missing, f"{path.name} uses nodes this ComfyUI does not have: {missing}"
    ids = {n["id"] for n in ui["nodes"]}
    for link_id, source, slot, target, target_slot, kind in ui["links"]:
        assert source in ids and target in ids
        assert info[next(n["type"] for n in ui["nodes"] if n["id"] == source)]["output"][slot] == kind
    prompt = to_api(ui, info)
    for node in prompt.values():
        required = info[node["class_type"]]["input"].get("required", {})
        assert set(required) <= set(node["inputs"]), f"{node['class_type']} lacks {set(required) - set(node['inputs'])}"


def test_a_workflow_saved_before_an_optional_input_existed_still_converts(comfy_server):
    info = comfy_server.get_json("/object_info")
    ui = json.loads((WORKFLOWS[0].parent / "spare_demo_erase_style.json").read_text())
    distill = next(n for n in ui["nodes"] if n["type"] == "SpareDistill")
    assert distill["widgets_values"].pop() == "fp16"  # save_dtype, the newest input
    inputs = to_api(ui, info)[str(distill["id"])]["inputs"]
    assert "save_dtype" not in inputs and inputs["resolution"] == 0


def test_templates_are_served_to_the_frontend(comfy_server):
    served = comfy_server.get_json("/workflow_templates")
    assert set(served["comfyui-spare"]) == {p.stem for p in WORKFLOWS}


def test_demo_workflow_erases_the_style_and_keeps_the_rest(comfy_server):
    from demo_world.classifiers import classify

    info = comfy_server.get_json("/object_info")
    prompt = to_api(json.loads((WORKFLOWS[0].parent / "spare_demo_erase_style.json").read_text()), info)
    compare = next(k for k, v in prompt.items() if v["class_type"] == "SpareErasureCompare")
    prompt["test_before"] = {"class_type": "SaveImage", "inputs": {"images": [compare, 1], "filename_prefix": "b"}}
    prompt["test_after"] = {"class_type": "SaveImage", "inputs": {"images": [compare, 2], "filename_prefix": "a"}}
    entry = comfy_server.run(prompt, timeout=1800)

    assert (comfy_server.models_dir / "loras" / "spare_demo_neon_erased.safetensors").exists()
    before = classify(np.stack([np.asarray(i) for i in comfy_server.images(entry, "test_before")]))
    after = classify(np.stack([np.asarray(i) for i in comfy_server.images(entry, "test_after")]))
    n = len(demo_erasure.COMPARE_KEPT)
    target = demo_erasure.TARGET_STYLE
    kept_styles = [s for _, s in demo_erasure.COMPARE_KEPT]
    drawn_before = sum(j.style == target for j in before[:n])
    assert drawn_before >= n - 1, f"before erasure the demo model drew {target} in only {drawn_before} of {n} images"
    unlearned = sum(j.style != target for j in after[:n]) / n
    kept = sum(j.style == s for j, s in zip(after[n:], kept_styles)) / n
    print(f"demo workflow: UA {unlearned:.0%}, kept styles {kept:.0%}")
    assert unlearned >= 0.9 and kept >= 0.85
