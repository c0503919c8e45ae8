"""Apply Erasure LoRA through the real ComfyUI server, the way the browser drives it."""
import numpy as np
import pytest

from comfy_server import error_message
import tiny_checkpoints

CKPT = "tiny_sd15.safetensors"
LORA = "attention_lora.safetensors"


@pytest.fixture(scope="module")
def server(comfy_server):
    models = comfy_server.models_dir
    tiny_checkpoints.write_tiny_sd15_checkpoint(models / "checkpoints" / CKPT)
    tiny_checkpoints.write_lora(models / "loras" / LORA, scale=0.5)
    tiny_checkpoints.write_foreign_lora(models / "loras" / "flux_style.safetensors")
    (models / "loras" / "pickled.ckpt").write_bytes(b"not a safetensors file")
    (models / "loras" / "corrupt.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    (models / "loras" / "dangling.safetensors").symlink_to(models / "loras" / "gone.safetensors")
    return comfy_server


def sample_workflow(lora: dict | None, seed: int = 7) -> dict:
    """Checkpoint -> (Apply Erasure LoRA) -> KSampler -> VAEDecode -> SaveImage, in API format."""
    wf = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "seed": seed, "steps": 4, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["pos", 0], "negative": ["neg", 0],
            "latent_image": ["latent", 0], "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "apply_lora"}},
    }
    if lora is not None:
        wf["lora"] = {"class_type": "SpareApplyErasureLora", "inputs": {"model": ["ckpt", 0], **lora}}
        wf["sampler"]["inputs"]["model"] = ["lora", 0]
    return wf


def hash_workflow() -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "hash": {"class_type": "SpareModelWeightsHash", "inputs": {"model": ["ckpt", 0]}},
    }


def image(server, lora) -> np.ndarray:
    entry = server.run(sample_workflow(lora))
    return np.asarray(server.images(entry, "save")[0])


def weights_hash(server) -> str:
    return server.run(hash_workflow())["outputs"]["hash"]["text"][0]


def test_pack_nodes_are_listed(server):
    info = server.get_json("/object_info")
    assert "SpareApplyErasureLora" in info and "SpareModelWeightsHash" in info
    assert info["SpareApplyErasureLora"]["category"] == "SPARE"
    assert not server.pack_import_errors()


def test_strength_zero_is_identity_and_one_changes_image_and_host_is_untouched(server):
    before = weights_hash(server)
    plain = image(server, None)
    at_zero = image(server, {"lora_name": LORA, "strength": 0.0})
    at_one = image(server, {"lora_name": LORA, "strength": 1.0})
    after = weights_hash(server)

    assert np.array_equal(plain, at_zero), "strength 0 must give the very same image as no LoRA"
    assert np.abs(plain.astype(int) - at_one.astype(int)).mean() > 1.0, "strength 1 must change the image"
    assert before == after, "the checkpoint loader's model was changed by applying the LoRA"
    # Once the plain model is used again, it still gives the image it gave before.
    assert np.array_equal(image(server, None), plain)


@pytest.mark.parametrize("lora_name, expected", [
    ("flux_style.safetensors", "none of the 2 LoRA keys match"),
    ("pickled.ckpt", "only safetensors"),
    ("corrupt.safetensors", "not a readable safetensors file"),
    ("dangling.safetensors", "was not found in the loras folder"),
    ("no_such_file.safetensors", "was not found in the loras folder"),
])
def test_bad_lora_file_gives_node_error_and_server_keeps_serving(server, lora_name, expected):
    entry = server.wait(server.queue(sample_workflow({"lora_name": lora_name, "strength": 1.0})))
    assert entry["status"]["status_str"] == "error"
    message = error_message(entry)
    assert expected in message and lora_name in message, message
    assert "SpareApplyErasureLora" in message
    # The server still runs the next prompt.
    assert len(weights_hash(server)) == 64


def test_neither_file_nor_in_memory_lora_is_an_error(server):
    entry = server.wait(server.queue(sample_workflow({"lora_name": "[None]", "strength": 1.0})))
    assert "needs exactly one LoRA" in error_message(entry)
