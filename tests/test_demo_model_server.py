"""The SPARE Demo Model node through the real server with stock nodes: it draws what it is told,
and the batched in-process generator that every evaluation uses gives the same image."""
import numpy as np
import pytest

from demo_world import config
from demo_world.dataset import prompt

# Objects the shipped model draws in every style and seed of its evaluation (docs/demo_world/TRAINING.md).
CASES = [("ring", "Pencil Sketch", 0), ("moon", "Neon", 1), ("arrow", "Checkerboard", 0)]


def workflow(text: str, seed: int) -> dict:
    """SPARE Demo Model -> CLIPTextEncode -> KSampler (the evaluation settings) -> VAEDecode -> SaveImage."""
    return {
        "demo": {"class_type": "SpareDemoModel", "inputs": {}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["demo", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["demo", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": ["demo", 0], "seed": seed, **config.SAMPLER, "positive": ["pos", 0],
            "negative": ["neg", 0], "latent_image": ["latent", 0], "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["demo", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "demo_model"}},
    }


@pytest.fixture(scope="module")
def served_images(comfy_server):
    images = []
    for obj, style, seed in CASES:
        entry = comfy_server.run(workflow(prompt(obj, style), seed))
        images.append(np.asarray(comfy_server.images(entry, "save")[0], dtype=np.float32) / 255.0)
    return np.stack(images)


def test_served_images_show_the_prompted_object_and_style(served_images):
    import torch
    from demo_world.classifiers import classify

    judged = classify(torch.from_numpy(served_images))
    assert [(j.object, j.style) for j in judged] == [(o, s) for o, s, _ in CASES]


def test_in_process_generator_draws_the_same_images_as_the_server(served_images):
    from demo_world.generate import generate
    from demo_world.model import load_demo_model

    model, clip, vae = load_demo_model()
    local = generate(model, clip, vae, [prompt(o, s) for o, s, _ in CASES], [seed for *_, seed in CASES]).numpy()
    # SaveImage stores 8-bit PNGs: equal up to one quantisation step (plus float noise at the rounding edge).
    assert np.abs(local - served_images).max() <= 1.5 / 255
