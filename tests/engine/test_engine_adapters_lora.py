"""Hooked sparse adapters, and the exported LoRA: ComfyUI's W + s * dW reproduces the hooked student."""
import copy
import os

import pytest
import safetensors
import torch

import spare_engine
import spare_engine.artifacts
from spare_engine import ErasureLoRA, LoraAdapter, adapters_disabled, attached, build_adapters, weights_hash

from .tiny_denoiser import TinyDenoiser, merge_lora

LAYERS = ["diffusion_model.conv_in", "diffusion_model.to_k", "diffusion_model.to_out", "diffusion_model.conv_out"]


def trained_looking_adapters(denoiser, rank=3, alpha=1.5):
    """Adapters with random (non-zero) up weights and row masks on some layers, as after training."""
    g = torch.Generator().manual_seed(11)
    layers = denoiser.adaptable_modules()
    selection = {name: (torch.rand(layers[name].weight.shape[0], generator=g) < 0.5) if i % 2 else None
                 for i, name in enumerate(LAYERS)}
    adapters = build_adapters(layers, selection, rank, alpha, g)
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.up.normal_(generator=g)
            if adapter.row_mask is not None:
                adapter.up[~adapter.row_mask] = 0  # training never moves masked rows
    return adapters


def run(denoiser, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(3, 4, 8, 8, generator=g), torch.randint(0, 1000, (3,), generator=g)
    return denoiser.predict_eps(x, t, denoiser.encode_prompts(["a cat", "a dog", ""]))


def test_fresh_adapters_are_a_no_op_and_disabled_adapters_are_the_host(denoiser):
    base = run(denoiser)
    layers = denoiser.adaptable_modules()
    fresh = build_adapters(layers, {n: None for n in LAYERS}, 2, 2.0, torch.Generator().manual_seed(0))
    with attached(denoiser, fresh):
        assert torch.equal(run(denoiser), base)
    trained = trained_looking_adapters(denoiser)
    with attached(denoiser, trained):
        assert not torch.allclose(run(denoiser), base)
        with adapters_disabled(trained):
            assert torch.equal(run(denoiser), base)
        assert not torch.allclose(run(denoiser), base)


def test_hooks_are_removed_on_exceptions(denoiser):
    before = weights_hash(denoiser.module)
    with pytest.raises(KeyboardInterrupt):
        with attached(denoiser, trained_looking_adapters(denoiser)):
            raise KeyboardInterrupt
    assert all(not m._forward_hooks for m in denoiser.module.modules())
    assert weights_hash(denoiser.module) == before


def test_a_rank_above_a_layers_size_is_allowed_and_exports_exactly(denoiser):
    """As in ComfyUI's own LoRA trainer: 17 exceeds to_k's 16 and conv_out's 4 outputs; those adapters are full-rank."""
    adapters = trained_looking_adapters(denoiser, rank=17, alpha=17.0)
    lora = ErasureLoRA.from_adapters(adapters, {})
    assert lora.state_dict()["diffusion_model.conv_out.lora_up.weight"].shape == (4, 17, 1, 1)
    with attached(denoiser, adapters):
        student = run(denoiser)
    merged = TinyDenoiser(seed=0)
    merge_lora(merged.module, lora.state_dict(), strength=1.0)
    assert torch.allclose(run(merged), student, atol=1e-5)


@pytest.mark.parametrize("rank", [0, -2, 1.5, True])
def test_a_rank_that_is_not_a_positive_integer_is_refused(denoiser, rank):
    with pytest.raises(ValueError, match=r"rank must be an integer >= 1, got"):
        LoraAdapter(denoiser.adaptable_modules()["diffusion_model.to_k"], rank, 1.0, name="diffusion_model.to_k")


@pytest.mark.parametrize("layer", [torch.nn.Linear(6, 5), torch.nn.Conv2d(3, 5, 3, padding=1)])
def test_on_a_network_fed_bf16_the_adapter_computes_in_bf16_and_trains_its_fp32_weights(layer):
    adapter = LoraAdapter(layer, rank=2, alpha=2.0, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapter.up.normal_(generator=torch.Generator().manual_seed(1))
    x = torch.randn(4, 6) if isinstance(layer, torch.nn.Linear) else torch.randn(4, 3, 5, 5)
    x = x.to(torch.bfloat16)
    delta = adapter(x)
    # The products ran in bf16 on the bf16 activation, as under autocast: the adapter's weights were cast, not x.
    down, up = adapter.down.to(torch.bfloat16), adapter.up.to(torch.bfloat16)
    if isinstance(layer, torch.nn.Linear):
        expected = torch.nn.functional.linear(torch.nn.functional.linear(x, down), up)
    else:
        expected = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, down, padding=1), up)
    assert delta.dtype == torch.bfloat16 and torch.equal(delta, expected)
    delta.float().square().sum().backward()
    assert adapter.down.dtype == adapter.up.dtype == torch.float32
    assert adapter.down.grad is not None and adapter.down.grad.abs().sum() > 0 and adapter.up.grad.abs().sum() > 0
    # On an fp32 network nothing is cast: the products run in fp32.
    assert adapter(x.float()).dtype == torch.float32


def test_only_linear_and_conv_layers_are_adapted():
    with pytest.raises(ValueError, match="only Linear and Conv2d"):
        LoraAdapter(torch.nn.LayerNorm(4), 1, 1.0)


def test_export_at_strength_one_is_the_hooked_student(denoiser):
    adapters = trained_looking_adapters(denoiser)
    lora = ErasureLoRA.from_adapters(adapters, {"targets": ["a cat"]})
    with attached(denoiser, adapters):
        student = run(denoiser)
    merged = TinyDenoiser(seed=0)
    merge_lora(merged.module, lora.state_dict(), strength=1.0)
    assert torch.allclose(run(merged), student, atol=1e-5)


@pytest.mark.parametrize("strength", [0.5, -1.0, 2.0])
def test_export_at_strength_s_is_w_plus_s_delta(denoiser, strength):
    lora = ErasureLoRA.from_adapters(trained_looking_adapters(denoiser), {})
    merged = copy.deepcopy(denoiser.module)
    merge_lora(merged, lora.state_dict(), strength)
    host, out = dict(denoiser.module.named_modules()), dict(merged.named_modules())
    for name, layer in host.items():
        if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        if name in lora.module_names:
            assert torch.allclose(out[name].weight, layer.weight + strength * lora.delta_weight(name), atol=1e-6)
        else:
            assert torch.equal(out[name].weight, layer.weight)  # not selected: bit-identical


def test_row_masks_are_baked_into_up(denoiser):
    adapters = trained_looking_adapters(denoiser)
    lora = ErasureLoRA.from_adapters(adapters, {})
    for name, adapter in adapters.items():
        delta = lora.delta_weight(name)
        assert delta.shape == denoiser.adaptable_modules()[name].weight.shape
        if adapter.row_mask is not None:
            assert delta[~adapter.row_mask].abs().max() == 0 and delta[adapter.row_mask].abs().max() > 0


def test_masked_rows_of_up_stay_exactly_zero_through_training(denoiser):
    """The forward uses up as it is; the row mask acts on its gradient, so masked rows must never move."""
    layers = denoiser.adaptable_modules()
    mask = torch.arange(layers["diffusion_model.to_k"].weight.shape[0]) % 3 == 0
    adapters = build_adapters(layers, {"diffusion_model.to_k": mask, "diffusion_model.conv_in": None}, 2, 2.0,
                              torch.Generator().manual_seed(0))
    params = [p for a in adapters.values() for p in a.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    with attached(denoiser, adapters):
        for seed in range(3):
            optimizer.zero_grad()
            run(denoiser, seed).square().mean().backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
    up = adapters["diffusion_model.to_k"].up.detach()
    assert torch.equal(up[~mask], torch.zeros_like(up[~mask])) and up[mask].abs().min() > 0
    assert adapters["diffusion_model.conv_in"].up.detach().abs().min() > 0


def test_comfyui_key_format(denoiser):
    sd = ErasureLoRA.from_adapters(trained_looking_adapters(denoiser, rank=2, alpha=1.0), {}).state_dict()
    assert sd["diffusion_model.conv_in.lora_down.weight"].shape == (2, 4, 3, 3)
    assert sd["diffusion_model.conv_in.lora_up.weight"].shape == (16, 2, 1, 1)
    assert sd["diffusion_model.to_k.lora_down.weight"].shape == (2, 16)
    assert sd["diffusion_model.to_k.lora_up.weight"].shape == (16, 2)
    assert sd["diffusion_model.to_k.alpha"].shape == () and sd["diffusion_model.to_k.alpha"].item() == 1.0
    assert len(sd) == 3 * len(LAYERS)


def test_save_load_roundtrip(denoiser, tmp_path):
    lora = ErasureLoRA.from_adapters(trained_looking_adapters(denoiser), {"targets": ["a cat"], "steps": 3})
    path = tmp_path / "erase.safetensors"
    lora.save(path)
    assert os.listdir(tmp_path) == ["erase.safetensors"]  # no temporary file left behind
    loaded = ErasureLoRA.load(path)
    assert (loaded.rank, loaded.alpha, loaded.metadata) == (3, 1.5, {"targets": ["a cat"], "steps": 3})
    assert sorted(loaded.state_dict()) == sorted(lora.state_dict())
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in lora.state_dict().items())
    with pytest.raises(ValueError, match="is not a spare_engine.saliency_map file"):
        spare_engine.SaliencyMap.load(path)


def test_a_half_precision_file_is_half_the_size_and_loads_as_float32(denoiser, tmp_path):
    lora = ErasureLoRA.from_adapters(trained_looking_adapters(denoiser), {})
    lora.save(tmp_path / "fp32.safetensors")
    lora.save(tmp_path / "fp16.safetensors", torch.float16)
    with safetensors.safe_open(str(tmp_path / "fp16.safetensors"), "pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}
    assert {d for k, d in dtypes.items() if k.endswith(".weight")} == {torch.float16}
    assert {d for k, d in dtypes.items() if k.endswith(".alpha")} == {torch.float32}
    factor_bytes = sum(t.numel() * 2 for k, t in lora.state_dict().items() if k.endswith(".weight"))
    sizes = {n: (tmp_path / f"{n}.safetensors").stat().st_size for n in ("fp32", "fp16")}
    assert abs(sizes["fp32"] - sizes["fp16"] - factor_bytes) < 64  # the JSON header's offsets differ a little
    loaded = ErasureLoRA.load(tmp_path / "fp16.safetensors")
    for name in lora.module_names:
        assert loaded.down[name].dtype == loaded.up[name].dtype == torch.float32
        exact = lora.delta_weight(name)
        assert (loaded.delta_weight(name) - exact).norm() <= 2e-3 * exact.norm()  # fp16 keeps 11 bits
    with pytest.raises(ValueError, match="dtype: torch.float64 is not one of torch.float32, torch.float16, "
                                         "torch.bfloat16"):
        lora.save(tmp_path / "fp64.safetensors", torch.float64)
    assert not (tmp_path / "fp64.safetensors").exists()


def test_a_failed_save_leaves_no_file(denoiser, tmp_path, monkeypatch):
    def half_written(tensors, filename, metadata):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(spare_engine.artifacts, "save_file", half_written)
    with pytest.raises(OSError, match="disk full"):
        ErasureLoRA.from_adapters(trained_looking_adapters(denoiser), {}).save(tmp_path / "erase.safetensors")
    assert os.listdir(tmp_path) == []

