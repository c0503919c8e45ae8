"""SPARE on ComfyUI's SDXL model class, in-process, through the nodes themselves.

SDXL differs from SD1.x where the engine touches it: the UNet also takes `y` (CLIP-G's pooled
output plus size embeddings), the context is 2048 wide (CLIP-L and CLIP-G side by side), and
LoRA keys follow SDXL's block names. This runs ComfyUI's own SDXL classes (model_base.SDXL,
the SDXL tokenizer and both real text encoders, random weights) with a small UNet of the same
kind, since a full-size SDXL does not fit a CPU test run (bench/gpu measures that one).
"""
import pytest
import torch

import comfy.lora
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models

import tiny_checkpoints
from node_chain import erase_with_nodes
from spare_engine.denoiser import weights_hash

TINY_SDXL_UNET = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 32, "num_res_blocks": [1, 1],
    "channel_mult": (1, 2), "transformer_depth": [0, 1], "transformer_depth_output": [0, 0, 1, 1],
    "transformer_depth_middle": 1, "context_dim": 2048, "adm_in_channels": 2816, "num_classes": "sequential",
    "num_head_channels": 16, "use_spatial_transformer": True, "use_linear_in_transformer": True, "legacy": False,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
TARGET, SURROGATE, RETAIN = "a photo of a parachute", "a photo of the sky", "a photo of a church"


def tiny_sdxl_model(checkpoint_markers: dict[str, torch.Tensor],
                    config_class=comfy.supported_models.SDXL) -> comfy.model_patcher.ModelPatcher:
    """The tiny SDXL UNet as ComfyUI builds it from a checkpoint holding these marker keys
    (a v-prediction SDXL checkpoint holds "v_pred", and "ztsnr" when trained for zero terminal SNR)."""
    return tiny_checkpoints.comfy_model(config_class, TINY_SDXL_UNET, checkpoint_markers)


@pytest.fixture(scope="module")
def sdxl():
    model = tiny_sdxl_model({})
    model_config = comfy.supported_models.SDXL(dict(TINY_SDXL_UNET))
    with torch.inference_mode():
        clip = comfy.sd.CLIP(model_config.clip_target(), parameters=0)
        tiny_checkpoints.fill_(clip.cond_stage_model, seed=1)
    return model, clip


@pytest.mark.parametrize("markers, prediction", [
    ({}, "eps"), ({"v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}, "v_prediction")])
def test_sdxl_conditioning_reaches_the_unet_as_comfyui_passes_it(sdxl, pack, markers, prediction):
    from comfyui_spare.nodes.comfy_denoiser import ComfyDenoiser, prediction_type

    _, clip = sdxl
    model = tiny_sdxl_model(markers)
    sampling = model.get_model_object("model_sampling")
    assert prediction_type(sampling) == prediction and sampling.zsnr == bool(markers)
    d = ComfyDenoiser(model, clip, resolution=64)
    d.load()
    try:
        cond = d.encode_prompts([TARGET, SURROGATE])
        assert cond.tensors["context"].shape == (2, 77, 2048) and cond.tensors["y"].shape == (2, 2816)
        assert not torch.equal(cond.tensors["y"][0], cond.tensors["y"][1])  # the pooled text is in y
        g = torch.Generator().manual_seed(0)
        x_t = torch.randn(2, *d.latent_shape, generator=g)
        t = torch.tensor([100, 700])
        with torch.no_grad():
            ours = d.predict_eps(x_t, t, cond)
            # ComfyUI's path: k-diffusion input scaling, sigma in, denoised x0 out, y as SDXL's extra cond.
            ab = d.alphas_cumprod[t].view(-1, 1, 1, 1)
            sigma = d.patcher.model.model_sampling.sigmas[t]
            x_k = x_t / ab.sqrt()
            denoised = d.patcher.model.apply_model(x_k, sigma, c_crossattn=cond.tensors["context"], y=cond.tensors["y"])
            theirs = (x_k - denoised) / sigma.view(-1, 1, 1, 1)
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)
    finally:
        d.release()


@pytest.mark.parametrize("config_class", [comfy.supported_models.SDXL, comfy.supported_models.SSD1B,
                                          comfy.supported_models.Segmind_Vega, comfy.supported_models.KOALA_1B])
def test_sdxl_and_its_distilled_kin_generate_training_latents_at_1024_px(sdxl, pack, config_class):
    from comfyui_spare.nodes.comfy_denoiser import ComfyDenoiser

    d = ComfyDenoiser(tiny_sdxl_model({}, config_class), sdxl[1])
    assert d.resolution == 1024 and d.latent_shape == (4, 128, 128)


def test_a_text_encoder_of_another_model_is_refused_by_name(sdxl, pack):
    from comfyui_spare.nodes.comfy_denoiser import ComfyDenoiser
    from demo_world.model import load_demo_model

    demo_model, demo_clip, _ = load_demo_model()
    for model, clip, message in (
            (sdxl[0], demo_clip, r"clip: its text embeddings are 128 wide \(pooled conditioning 1664\); the "
                                 r"model's UNet takes 2048 \(2816\)"),
            (demo_model, sdxl[1], r"clip: its text embeddings are 2048 wide \(pooled conditioning None\); the "
                                  r"model's UNet takes 128 \(None\)")):
        d = ComfyDenoiser(model, clip, resolution=64)
        with pytest.raises(ValueError, match=message + r"\. Connect the CLIP loaded with this model\."):
            d.encode_prompts([TARGET])


def test_nodes_erase_from_sdxl_and_leave_it_unchanged(sdxl, pack):
    from comfyui_spare.nodes.apply_lora import ApplyErasureLora
    from comfyui_spare.nodes.lora_files import NO_FILE

    model, clip = sdxl
    before = weights_hash(model.model)
    saliency, lora = erase_with_nodes(model, clip, TARGET, SURROGATE, RETAIN, resolution=64)
    with torch.inference_mode():
        erased = ApplyErasureLora.execute(model, NO_FILE, 1.0, erasure_lora=lora).result[0]
    assert weights_hash(model.model) == before, "training changed the SDXL model's weights"

    # Every adapter lands on an SDXL weight under ComfyUI's own LoRA key map, and only the chosen layers change.
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    patches = comfy.lora.load_lora(lora, key_map, log_missing=False)
    patched_layers = {k.removeprefix("diffusion_model.").removesuffix(".weight") for k in patches}
    assert patched_layers == {name.removeprefix("diffusion_model.") for name in saliency.select()}
    original = {name: p.detach().clone() for name, p in model.model.diffusion_model.named_parameters()}
    # Loading the erased clone patches the shared weights in place; unloading restores them.
    comfy.model_management.load_models_gpu([erased], force_full_load=True)
    try:
        changed = {name for name, p in erased.model.diffusion_model.named_parameters()
                   if not torch.equal(p, original[name])}
    finally:
        comfy.model_management.unload_all_models()
    assert changed and {name.removesuffix(".weight") for name in changed} <= patched_layers
    assert weights_hash(model.model) == before, "applying the erasure changed the SDXL model's weights"
