"""The SPARE node graph on the demo model, through the real ComfyUI server."""
import json
import time

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

from comfy_server import error_message

TARGETS = "An star image in Neon style.\nAn circle image in Neon style."
SURROGATES = "An star image in Watercolor style.\nAn circle image in Watercolor style."
RETAIN = "An star image in Sunset style.\nAn circle image in Polka Dots style."
SAVE_NAME = "graph_test_erase"


def spare_workflow(steps=8, seed=0, save_name=SAVE_NAME, targets=TARGETS, surrogates=SURROGATES, retain=RETAIN,
                   rank=4, distill_model=("demo", 0)) -> dict:
    """Demo model -> Saliency Localize -> Timestep Profile -> SPARE Distill -> Apply -> Compare, in API format."""
    common = {"model": ["demo", 0], "clip": ["demo", 1], "targets": targets, "seed": seed, "resolution": 0}
    return {
        "demo": {"class_type": "SpareDemoModel", "inputs": {}},
        "localize": {"class_type": "SpareSaliencyLocalize", "inputs": {
            **common, "top_modules": 0.5, "row_fraction": 1.0, "samples": 1}},
        "profile": {"class_type": "SpareTimestepProfile", "inputs": {
            **common, "surrogates": surrogates, "scheme": "concept", "uniform_mix": 0.2, "samples": 1}},
        "distill": {"class_type": "SpareDistill", "inputs": {
            **common, "model": list(distill_model), "saliency": ["localize", 0], "timesteps": ["profile", 0],
            "surrogates": surrogates, "retain": retain, "rank": rank, "steps": steps, "learning_rate": 1e-3,
            "forget_weight": 1.0, "retain_weight": 1.0, "batch_size": 2, "save_name": save_name}},
        "apply": {"class_type": "SpareApplyErasureLora", "inputs": {
            "model": ["demo", 0], "lora_name": "[None]", "strength": 1.0, "erasure_lora": ["distill", 0]}},
        "compare": {"class_type": "SpareErasureCompare", "inputs": {
            "model": ["demo", 0], "erased_model": ["apply", 0], "clip": ["demo", 1], "vae": ["demo", 2],
            "prompts": "An star image in Neon style.\nAn star image in Sunset style.", "seed": 0, "steps": 4,
            "cfg": 6.0, "size": 0}},
        "save_grid": {"class_type": "SaveImage", "inputs": {"images": ["compare", 0], "filename_prefix": "compare"}},
        "save_curve": {"class_type": "PreviewImage", "inputs": {"images": ["distill", 1]}},
    }


def demo_hash(server) -> str:
    wf = {"demo": {"class_type": "SpareDemoModel", "inputs": {}},
          "hash": {"class_type": "SpareModelWeightsHash", "inputs": {"model": ["demo", 0]}}}
    return server.run(wf)["outputs"]["hash"]["text"][0]


def sample_with(server, lora_node: dict) -> np.ndarray:
    wf = {
        "demo": {"class_type": "SpareDemoModel", "inputs": {}},
        "lora": lora_node,
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "An star image in Neon style.", "clip": ["demo", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["demo", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": ["lora", 0], "seed": 3, "steps": 6, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0], "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["demo", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "lora_check"}},
    }
    entry = server.run(wf)
    return np.asarray(server.images(entry, "save")[0])


def cached_nodes(entry: dict) -> set[str]:
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_cached":
            return set(data["nodes"])
    return set()


@pytest.fixture(scope="module")
def erased(comfy_server):
    """Runs the graph once; tests below inspect what it left."""
    before = demo_hash(comfy_server)
    entry = comfy_server.run(spare_workflow())
    again = comfy_server.run(spare_workflow())  # right after: ComfyUI's cache still holds every output
    return {"entry": entry, "again": again, "hash_before": before}


# First after the fixture: any other prompt in between would evict ComfyUI's cached outputs.
def test_unchanged_graph_is_not_retrained_but_a_new_seed_is(comfy_server, erased):
    assert {"localize", "profile", "distill"} <= cached_nodes(erased["again"])
    reseeded = spare_workflow()
    reseeded["distill"]["inputs"]["seed"] = 1
    rerun = cached_nodes(comfy_server.run(reseeded))
    assert {"localize", "profile"} <= rerun and "distill" not in rerun


def test_graph_saves_lora_with_metadata_and_leaves_model_unchanged(comfy_server, erased):
    path = comfy_server.models_dir / "loras" / f"{SAVE_NAME}.safetensors"
    assert path.exists()
    with safetensors.safe_open(str(path), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
        factor_dtypes = {f.get_tensor(k).dtype for k in keys if k.endswith(".weight")}
    assert any(k.endswith(".lora_up.weight") for k in keys)
    assert factor_dtypes == {torch.float16}  # the node's default file precision
    assert "Neon" in meta["targets"] and "Watercolor" in meta["surrogates"]
    assert json.loads(meta["config"])["steps"] == 8
    assert comfy_server.images(erased["entry"], "save_grid")[0].size[0] > 256
    assert demo_hash(comfy_server) == erased["hash_before"]


def test_saved_lora_in_stock_loader_gives_same_image_as_apply_erasure_lora(comfy_server, erased):
    name = f"{SAVE_NAME}.safetensors"
    stock = sample_with(comfy_server, {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": ["demo", 0], "lora_name": name, "strength_model": 0.8}})
    ours = sample_with(comfy_server, {"class_type": "SpareApplyErasureLora", "inputs": {
        "model": ["demo", 0], "lora_name": name, "strength": 0.8}})
    assert np.array_equal(stock, ours)


def test_cancel_stops_training_keeps_model_and_writes_no_file(comfy_server, erased):
    ws = comfy_server.websocket(timeout=300)
    try:
        prompt_id = comfy_server.queue(spare_workflow(steps=5000, seed=7, save_name="cancelled_erase"))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            message = ws.recv()
            if isinstance(message, str):
                data = json.loads(message)
                if data["type"] == "progress" and data["data"].get("node") == "distill" and data["data"]["value"] >= 3:
                    break
        else:
            pytest.fail("training never reported progress")
        started = time.monotonic()
        comfy_server.interrupt()
        entry = comfy_server.wait(prompt_id, timeout=120)
    finally:
        ws.close()
    assert time.monotonic() - started < 30, "Cancel did not stop training promptly"
    assert any(kind == "execution_interrupted" for kind, _ in entry["status"]["messages"])
    assert not (comfy_server.models_dir / "loras" / "cancelled_erase.safetensors").exists()
    assert demo_hash(comfy_server) == erased["hash_before"]


@pytest.mark.parametrize("change, expected", [
    ({"targets": "   \n"}, "targets is empty"),
    ({"surrogates": TARGETS}, "equals its surrogate"),
    ({"retain": "An star image in Neon style."}, "also a target"),
    ({"save_name": "../escape"}, "save_name: '../escape' is not allowed"),
    ({"save_name": "sub/dir"}, "save_name: 'sub/dir' is not allowed"),
])
def test_bad_input_gives_node_error_naming_it(comfy_server, erased, change, expected):
    entry = comfy_server.wait(comfy_server.queue(spare_workflow(**change)))
    assert entry["status"]["status_str"] == "error"
    assert expected in error_message(entry)
    assert not list(comfy_server.base_dir.rglob("escape*")) and not (comfy_server.models_dir / "loras" / "sub").exists()


def test_steps_zero_is_refused_at_queue_time(comfy_server):
    status, body = comfy_server.post_prompt(spare_workflow(steps=0))
    assert status == 400 and "distill" in body["node_errors"]


def test_saliency_from_another_model_is_refused(comfy_server, erased):
    # Distill on the model with an erasure applied: its weights differ from where saliency was measured.
    wf = spare_workflow(seed=11, save_name="", distill_model=("other", 0))
    wf["other"] = {"class_type": "SpareApplyErasureLora", "inputs": {
        "model": ["demo", 0], "lora_name": f"{SAVE_NAME}.safetensors", "strength": 5.0}}
    entry = comfy_server.wait(comfy_server.queue(wf))
    assert "saliency: saliency map was computed on model" in error_message(entry)


def sampling_patched(wf: dict, sampling: str) -> dict:
    """The SPARE stages get the demo MODEL through ModelSamplingDiscrete, as a user sets a v-prediction model."""
    wf["patched"] = {"class_type": "ModelSamplingDiscrete", "inputs": {
        "model": ["demo", 0], "sampling": sampling, "zsnr": False}}
    for node in ("localize", "profile", "distill"):
        wf[node]["inputs"]["model"] = ["patched", 0]
    return wf


def test_a_v_prediction_model_is_erased_and_left_unchanged(comfy_server, erased):
    comfy_server.run(sampling_patched(spare_workflow(save_name="vpred_erase"), "v_prediction"))
    loras = comfy_server.models_dir / "loras"
    v_lora = safetensors.torch.load_file(str(loras / "vpred_erase.safetensors"))
    eps_lora = safetensors.torch.load_file(str(loras / f"{SAVE_NAME}.safetensors"))
    assert any(k.endswith(".lora_up.weight") for k in v_lora)
    # Same graph and seed as the eps run: only reading the network's output as v can tell them apart.
    assert v_lora.keys() != eps_lora.keys() or any(not torch.equal(v_lora[k], eps_lora[k]) for k in v_lora)
    assert demo_hash(comfy_server) == erased["hash_before"]


def test_an_x0_prediction_model_is_refused_by_name(comfy_server):
    entry = comfy_server.wait(comfy_server.queue(sampling_patched(spare_workflow(), "x0")))
    assert "with ModelSamplingAdvanced sampling (x0 prediction, 1000 noise levels) is not supported" in error_message(entry)


def test_a_model_with_a_lora_loaded_is_erased_and_both_stay_unchanged(comfy_server, erased):
    """A user's MODEL often comes through a stock LoRA loader: SPARE trains on that combination and
    leaves both it and the checkpoint under it as they were."""
    lora_model = {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": ["demo", 0], "lora_name": f"{SAVE_NAME}.safetensors", "strength_model": 0.5}}

    def lora_model_hash() -> str:
        wf = {"demo": {"class_type": "SpareDemoModel", "inputs": {}}, "lora": lora_model,
              "hash": {"class_type": "SpareModelWeightsHash", "inputs": {"model": ["lora", 0]}}}
        return comfy_server.run(wf)["outputs"]["hash"]["text"][0]

    before = lora_model_hash()
    assert before != erased["hash_before"]
    wf = spare_workflow(seed=3, save_name="erase_over_lora")
    wf["lora"] = lora_model
    for node in ("localize", "profile", "distill"):
        wf[node]["inputs"]["model"] = ["lora", 0]
    comfy_server.run(wf)
    assert (comfy_server.models_dir / "loras" / "erase_over_lora.safetensors").exists()
    assert lora_model_hash() == before
    assert demo_hash(comfy_server) == erased["hash_before"]
