"""The shipped demo model loads into stock ComfyUI objects (what it draws: tests/test_demo_model_server.py)."""
import pytest

from demo_world import config


@pytest.fixture(scope="module")
def demo():
    from demo_world.model import load_demo_model
    return load_demo_model()


def test_loads_as_comfy_objects(demo):
    import comfy.model_patcher
    import comfy.sd
    from comfy.taesd.taesd import TAESD
    model, clip, vae = demo
    assert isinstance(model, comfy.model_patcher.ModelPatcher)
    assert isinstance(clip, comfy.sd.CLIP) and isinstance(vae, comfy.sd.VAE)
    assert isinstance(vae.first_stage_model, TAESD)  # comfy's own detection picked TAESD
    cond = clip.encode_from_tokens(clip.tokenize("An star image in Neon style."))
    assert cond.shape == (1, 77, config.TEXT_WIDTH)


def test_weights_fit_the_budget():
    from demo_world.training.report import WEIGHTS_MAX_BYTES  # the 32 MB, as the training report holds it
    total = sum(f.stat().st_size for f in config.WEIGHTS_DIR.glob("*.safetensors"))
    assert total <= WEIGHTS_MAX_BYTES
