"""The ComfyUI side of the engine's Denoiser protocol, in-process on a real ComfyUI model."""
import pytest
import torch

import comfy.model_management
import comfy.sd

import tiny_checkpoints
from node_chain import erase_with_nodes
from spare_engine.denoiser import weights_hash


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    path = tiny_checkpoints.write_tiny_sd15_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")
    with torch.inference_mode():  # as ComfyUI's executor loads it
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(path))
    return model, clip


@pytest.fixture(scope="module")
def denoiser_cls(pack):
    import comfyui_spare.nodes.comfy_denoiser
    return comfyui_spare.nodes.comfy_denoiser.ComfyDenoiser


@pytest.mark.parametrize("sampling, zsnr", [("eps", False), ("v_prediction", False), ("v_prediction", True)])
def test_eps_matches_comfyui_own_denoising(sd15, denoiser_cls, sampling, zsnr):
    """What the engine trains on, eps, agrees with the x0 ComfyUI's samplers get from the same network,
    for the predictions SPARE supports, set as a user sets them (ModelSamplingDiscrete)."""
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

    model, clip = sd15
    (patched,) = ModelSamplingDiscrete().patch(model, sampling, zsnr)
    d = denoiser_cls(patched, clip, resolution=64)
    d.load()
    cond = d.encode_prompts(["a red circle", "a blue square"])
    assert cond.tensors["context"].shape == (2, 77, 768)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, *d.latent_shape, generator=g)
    eps = torch.randn(2, *d.latent_shape, generator=g)
    t = torch.tensor([100, 700])
    ab = d.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    with torch.no_grad():
        ours = d.predict_eps(x_t, t, cond)
        # ComfyUI's own path: k-diffusion scaling, sigma in, denoised x0 out.
        model_sampling = d.patcher.model.model_sampling
        assert type(model_sampling) is type(patched.get_model_object("model_sampling"))
        sigma = model_sampling.sigmas[t]
        x_k = x_t / ab.sqrt()
        denoised = d.patcher.model.apply_model(x_k, sigma, c_crossattn=cond.tensors["context"])
        theirs = (x_k - denoised) / sigma.view(-1, 1, 1, 1)
        raw = d.patcher.model.diffusion_model(x_t, t.float(), context=cond.tensors["context"])
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)
    # The network's raw output is eps only for an eps model: the v conversion is not a no-op.
    assert torch.allclose(raw, ours, atol=1e-3) == (sampling == "eps")


@pytest.mark.parametrize("sampling", ["x0", "lcm"])
def test_other_predictions_are_refused_by_name(sd15, denoiser_cls, sampling):
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

    model, clip = sd15
    (patched,) = ModelSamplingDiscrete().patch(model, sampling, False)
    expected = {"x0": r"x0 prediction, 1000 noise levels", "lcm": r"lcm prediction, 50 noise levels"}[sampling]
    with pytest.raises(ValueError, match=rf"model: SD15 with ModelSamplingAdvanced sampling \({expected}\) is not "
                                         r"supported; SPARE needs a UNet that predicts eps or v"):
        denoiser_cls(patched, clip, resolution=64)


def tiny_model(config_class, checkpoint_keys: dict, **unet_config):
    """A small SD-style UNet of a ComfyUI model class; `unet_config` overrides its layout."""
    return tiny_checkpoints.comfy_model(config_class, {
        "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 64, "num_res_blocks": [1],
        "channel_mult": (1,), "transformer_depth": [1], "transformer_depth_output": [1, 1],
        "transformer_depth_middle": 1, "context_dim": 768, "adm_in_channels": None, "use_spatial_transformer": True,
        "use_linear_in_transformer": False, "legacy": False, "use_temporal_attention": False,
        "use_temporal_resblock": False, **unet_config}, checkpoint_keys)


@pytest.mark.parametrize("norm_std, prediction, resolution", [(0.0, "eps", 512), (1.0, "v_prediction", 768)])
def test_sd2_prediction_is_read_from_its_weights_and_sets_the_native_size(sd15, denoiser_cls, norm_std, prediction,
                                                                           resolution):
    """SD2.x checkpoints say v-prediction only through their weights (ComfyUI's SD20.model_type looks at one
    norm's spread): the 768-v ones are sampled at 768 px, the 512 base at 512."""
    import comfy.supported_models
    from comfyui_spare.nodes.comfy_denoiser import prediction_type

    _, clip = sd15
    norm_bias = torch.randn(320, generator=torch.Generator().manual_seed(0)) * norm_std
    model = tiny_model(comfy.supported_models.SD20, {"output_blocks.11.1.transformer_blocks.0.norm1.bias": norm_bias},
                       use_linear_in_transformer=True)
    assert prediction_type(model.get_model_object("model_sampling")) == prediction
    d = denoiser_cls(model, clip)
    assert d.resolution == resolution and d.latent_shape == (4, resolution // 8, resolution // 8)


def test_an_sd2_768_v_model_with_its_own_text_encoder_is_erased_and_left_unchanged(pack):
    """SD2.x end to end: ComfyUI's SD2 text encoder (OpenCLIP ViT-H, random weights) and a small SD20-class
    UNet whose weights say v-prediction, through the three nodes."""
    import comfy.supported_models

    norm_bias = torch.randn(320, generator=torch.Generator().manual_seed(0))
    model = tiny_model(comfy.supported_models.SD20, {"output_blocks.11.1.transformer_blocks.0.norm1.bias": norm_bias},
                       use_linear_in_transformer=True, context_dim=1024)
    with torch.inference_mode():
        clip = comfy.sd.CLIP(comfy.supported_models.SD20({"in_channels": 4}).clip_target(), parameters=0)
        tiny_checkpoints.fill_(clip.cond_stage_model, seed=1)
    comfy.model_management.load_models_gpu([model])
    before = weights_hash(model.model)
    _, lora = erase_with_nodes(model, clip, "a photo of a cat", "a photo of a dog", "a photo of a car", resolution=64)
    assert lora and all(v.isfinite().all() for v in lora.values())
    comfy.model_management.load_models_gpu([model])
    assert weights_hash(model.model) == before


def test_an_inpainting_unet_is_refused_by_name(sd15, denoiser_cls):
    import comfy.supported_models

    _, clip = sd15
    model = tiny_model(comfy.supported_models.SD15, {}, in_channels=9)
    with pytest.raises(ValueError, match=r"model: SD15 takes 9 input channels, its latents have 4: an inpainting"):
        denoiser_cls(model, clip)


def test_a_resolution_below_two_latent_pixels_is_refused_by_name(sd15, denoiser_cls):
    model, clip = sd15
    with pytest.raises(ValueError, match=r"resolution: 8 px is below 16 px \(2x2 latents\)"):
        denoiser_cls(model, clip, resolution=8)


def test_gradients_flow_and_host_is_untouched(sd15, denoiser_cls):
    model, clip = sd15
    comfy.model_management.load_models_gpu([model])
    before = weights_hash(model.model)
    d = denoiser_cls(model, clip, resolution=64)
    d.load()
    modules = d.adaptable_modules()
    assert "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k" in modules
    probe = torch.zeros(1, requires_grad=True)
    name = "diffusion_model.input_blocks.1.1.proj_in"
    handle = modules[name].register_forward_hook(lambda m, i, o: o + probe)
    try:
        with torch.inference_mode(False):
            cond = d.encode_prompts(["a red circle"])
            x = torch.randn(1, *d.latent_shape)
            d.predict_eps(x, torch.tensor([500]), cond).square().mean().backward()
    finally:
        handle.remove()
    assert probe.grad is not None and probe.grad.abs().item() > 0
    assert [n for n, p in model.model.named_parameters() if p.grad is not None] == [], "gradients reached host weights"
    comfy.model_management.load_models_gpu([model])
    assert weights_hash(model.model) == before
    assert not model.weight_wrapper_patches, "the user's ModelPatcher got wrappers"


def test_saliency_with_gradient_checkpointing_recomputes_and_scores_the_same(sd15, denoiser_cls):
    """Checkpointed saliency keeps no layer input from the forward (the backward recomputes it) and
    sums the same row scores: what lets SDXL's saliency fit in less VRAM (bench/gpu)."""
    import comfyui_spare.spare_engine as engine

    model, clip = sd15
    d = denoiser_cls(model, clip, resolution=64)
    d.load()
    inside = d.checkpoint_modules()[0]
    layer = next(m for m in inside.modules() if isinstance(m, torch.nn.Conv2d))
    runs = []
    handle = layer.register_forward_hook(lambda *_: runs.append(1))
    try:
        maps = {}
        for choice in (False, True):
            runs.clear()
            maps[choice] = engine.compute_saliency(d, ["a red circle"], n_latents=1, samples_per_latent=2,
                                                   sampling_steps=2, seed=0, gradient_checkpointing=choice)
            maps[choice, "runs"] = len(runs)
    finally:
        handle.remove()
    # 2 DDIM steps x (cond + uncond in one batch) = 2 runs, then the 2 gradient samples in one pass: 1 run, 2 when
    # recomputed.
    assert (maps[False, "runs"], maps[True, "runs"]) == (3, 4)
    for name, scores in maps[False].row_scores.items():
        torch.testing.assert_close(maps[True].row_scores[name], scores, rtol=1e-5, atol=0)
    assert maps[True].select() == maps[False].select()


def test_running_out_of_ram_says_how_much_and_releases_the_model(sd15, pack):
    from comfyui_spare.nodes.engine_run import engine_denoiser

    model, clip = sd15
    used = []
    with pytest.raises(RuntimeError, match=r"not enough RAM for SPARE on the CPU: one more allocation of 262144\.0 GiB "
                                           r"failed with [\d.]+ GiB of [\d.]+ GiB available\. Lower batch_size"):
        with engine_denoiser(model, clip, resolution=64) as d:
            used.append(d)
            torch.empty(2**48, dtype=torch.uint8)  # 256 TiB: no machine has it
    assert all(loaded.model is not used[0].patcher for loaded in comfy.model_management.current_loaded_models)
    assert not model.weight_wrapper_patches


def test_engine_stages_run_attention_without_cudnn_and_restore_the_choice(sd15, pack):
    from comfyui_spare.nodes.engine_run import engine_denoiser

    model, clip = sd15
    before = (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled(),
              torch.backends.cuda.math_sdp_enabled())
    with engine_denoiser(model, clip, resolution=64):
        inside = (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled(),
                  torch.backends.cuda.math_sdp_enabled())
    assert inside == (False, True, True)
    assert (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled(),
            torch.backends.cuda.math_sdp_enabled()) == before


def test_a_unet_held_in_fp8_is_erased_and_left_unchanged(tmp_path, pack):
    """ComfyUI's weight_dtype fp8 option (UNETLoader, model_options) stores the UNet in fp8 and computes in
    a wider dtype; the nodes train on it and leave its weights as they were."""
    path = tiny_checkpoints.write_tiny_sd15_checkpoint(tmp_path / "tiny.safetensors")
    with torch.inference_mode():
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(
            str(path), model_options={"dtype": torch.float8_e4m3fn})
    assert model.model.get_dtype() == torch.float8_e4m3fn
    comfy.model_management.load_models_gpu([model])
    before = weights_hash(model.model)
    _, lora = erase_with_nodes(model, clip, "a photo of a cat", "a photo of a dog", "a photo of a car",
                               resolution=32, scheme="uniform", steps=2)
    assert lora and all(v.dtype == torch.float32 and v.isfinite().all() for v in lora.values())
    comfy.model_management.load_models_gpu([model])
    assert weights_hash(model.model) == before
