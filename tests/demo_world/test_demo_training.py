"""The diffusion training loop that both phases share: what it saves, and how its moving average starts."""
import pytest
import torch
from safetensors.torch import load_file

from demo_world import config
from demo_world.training import diffusion


@pytest.fixture
def weights_in(tmp_path, monkeypatch):
    """The stages write the shipped weight files; point them at a temporary folder."""
    monkeypatch.setattr(config, "UNET_FILE", tmp_path / "unet.safetensors")
    monkeypatch.setattr(config, "TEXT_ENCODER_FILE", tmp_path / "text_encoder.safetensors")
    return tmp_path


def one_step(ema_warm_up):
    """One training step on four random latents; the UNet's weights before and after, and what was saved.

    The large learning rate makes Adam's first step (about lr per weight) far bigger than fp16 rounding,
    so the two decays below give clearly different saved weights."""
    torch.manual_seed(0)
    unet, clip, tokenizer = diffusion.new_models()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    data = {"latents": torch.randn(4, config.LATENT_CHANNELS, 16, 16),
            "objects": torch.arange(4), "styles": torch.arange(4)}
    losses = diffusion._fit(unet, clip, tokenizer, data, steps=1, lr=0.05, warmup=1, max_weight=5.0,
                            gen=torch.Generator().manual_seed(0), ema_warm_up=ema_warm_up, log=lambda msg: None)
    after = unet.state_dict()
    saved = {k: v.float() for k, v in load_file(str(config.UNET_FILE)).items()}
    return before, after, saved, losses


@pytest.mark.parametrize("ema_warm_up, decay", [(True, 0.1), (False, diffusion.EMA_DECAY)])
def test_saved_weights_are_the_moving_average(weights_in, ema_warm_up, decay):
    # From scratch the average warms up (decay (1 + step) / (10 + step) = 0.1 at step 0); refining
    # trained weights uses the full decay at once, so the first steps cannot wash them out.
    before, after, saved, losses = one_step(ema_warm_up)
    assert len(losses) == 1 and torch.isfinite(torch.tensor(losses)).all()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved, "one optimizer step changed no weight"
    for k in moved:
        expected = decay * before[k] + (1 - decay) * after[k]
        torch.testing.assert_close(saved[k], expected.half().float(), atol=1e-3, rtol=2e-3)
    assert (weights_in / "text_encoder.safetensors").exists()
