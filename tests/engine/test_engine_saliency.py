"""Stage 1: saliency against a brute-force computation, the budget, and the saved artifact."""
import copy

import pytest
import torch

from spare_engine import SaliencyMap, compute_saliency
from spare_engine.saliency import draw_samples

from .tiny_denoiser import TinyDenoiser


def brute_force_saliency(denoiser, targets, latents, samples_per_latent, seed):
    """Per-element sum over samples of |grad|, one sample and one full backward at a time, on a copy."""
    model = copy.deepcopy(denoiser.module).requires_grad_(True)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    total = {n: torch.zeros_like(m.weight) for n, m in layers.items()}
    generator = torch.Generator().manual_seed(seed)  # latents are given, so the draws are its first use
    for target in targets:
        s = draw_samples(latents[target], samples_per_latent, 1000, generator)
        context = denoiser.encode_prompts([target]).tensors["context"]
        for i in range(len(s.t)):
            ab = denoiser.alphas_cumprod[s.t[i]]
            x_t = ab.sqrt() * s.x0[i] + (1 - ab).sqrt() * s.eps[i]
            model.zero_grad()
            ((model(x_t[None], s.t[i:i + 1], context) - s.eps[i][None]) ** 2).mean().backward()
            for n, m in layers.items():
                total[n] += m.weight.grad.abs()
    return total


def test_saliency_equals_brute_force(denoiser):
    targets = ["a cat", "a red car"]
    g = torch.Generator().manual_seed(5)
    latents = {t: torch.randn(2, 4, 8, 8, generator=g) for t in targets}
    smap = compute_saliency(denoiser, targets, latents=latents, samples_per_latent=2, seed=3, top_modules=3,
                            row_fraction=0.3)
    expected = brute_force_saliency(denoiser, targets, latents, 2, seed=3)

    assert smap.n_samples == 8 and list(smap.row_scores) == list(expected)
    for name, per_element in expected.items():
        assert torch.allclose(smap.row_scores[name], per_element.flatten(1).sum(1), rtol=1e-4, atol=1e-7), name
        assert smap.module_scores[name] == pytest.approx(per_element.mean().item(), rel=1e-4)

    # Budget: the 3 layers with the highest mean |grad|, then the top 30% of their rows by mean |grad| per weight.
    top3 = sorted(expected, key=lambda n: expected[n].mean().item(), reverse=True)[:3]
    chosen = [n for n in expected if n in top3]
    row_means = torch.cat([expected[n].flatten(1).mean(1) for n in chosen])
    cutoff = row_means.sort(descending=True).values[round(0.3 * len(row_means)) - 1]
    selection = smap.select()
    assert set(selection) <= set(top3)
    for name in chosen:
        want = expected[name].flatten(1).mean(1) >= cutoff
        got = selection.get(name, torch.zeros_like(want))
        assert torch.equal(got, want), name


def test_a_layer_that_does_not_take_one_row_per_sample_is_named(denoiser, monkeypatch):
    """Samples share a pass and each layer's |dL/dW| is taken per row of its input, so a layer fed all samples'
    tokens as rows of one matrix would mix samples: refused, naming the layer."""

    class Flattened(torch.nn.Module):
        """The Linear fed [B * HW, C] rather than [B, HW, C]; its output reshaped back."""

        def __init__(self, linear):
            super().__init__()
            self.linear = linear

        def forward(self, x):
            return self.linear(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)

    unet = denoiser.module.diffusion_model
    monkeypatch.setattr(unet, "proj_in", Flattened(unet.proj_in))
    latents = {"a cat": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    with pytest.raises(ValueError, match=r"layer diffusion_model.proj_in.linear got an input of 256 rows in a pass "
                                         r"of 4 samples"):
        compute_saliency(denoiser, ["a cat"], latents=latents, samples_per_latent=2)


def test_saliency_leaves_the_host_as_it_was(denoiser):
    layer = denoiser.module.diffusion_model.to_v
    layer.weight.requires_grad_(False)  # an unusual flag pattern, to be restored exactly
    flags = [p.requires_grad for p in denoiser.module.parameters()]
    compute_saliency(denoiser, ["a cat"], n_latents=1, samples_per_latent=1, sampling_steps=3)
    assert [p.requires_grad for p in denoiser.module.parameters()] == flags
    assert all(p.grad is None for p in denoiser.module.parameters())


def test_budget_by_fraction_and_count(saliency):
    names = list(saliency.row_scores)
    ranked = sorted(names, key=saliency.module_scores.__getitem__, reverse=True)
    half = saliency.select()  # default: the top half, like the authors' code
    assert set(half) == set(ranked[: len(names) // 2]) and all(mask is None for mask in half.values())
    assert list(SaliencyMap(**{**saliency.__dict__, "top_modules": 2}).select()) == [n for n in names if n in ranked[:2]]
    everything = SaliencyMap(**{**saliency.__dict__, "top_modules": 1.0, "row_fraction": 0.25}).select()
    kept = sum(int(mask.sum()) for mask in everything.values())
    assert kept == round(0.25 * sum(len(r) for r in saliency.row_scores.values()))


@pytest.mark.parametrize("budget, match", [({"top_modules": 0}, "top_modules"), ({"top_modules": 1.5}, "top_modules"),
                                           ({"top_modules": True}, "top_modules"), ({"row_fraction": 0.0}, "row_fraction")])
def test_budget_validation(saliency, budget, match):
    with pytest.raises(ValueError, match=match):
        SaliencyMap(**{**saliency.__dict__, **budget})


def test_save_load_and_model_check(saliency, tmp_path, denoiser):
    path = tmp_path / "saliency.safetensors"
    saliency.save(path)
    loaded = SaliencyMap.load(path)
    assert list(loaded.row_scores) == list(saliency.row_scores)
    assert all(torch.equal(loaded.row_scores[n], saliency.row_scores[n]) for n in saliency.row_scores)
    assert (loaded.targets, loaded.top_modules, loaded.row_fraction) == (saliency.targets, 0.5, None)
    assert loaded.select().keys() == saliency.select().keys()
    loaded.check_model(denoiser)
    with pytest.raises(ValueError, match="saliency map was computed on model .*, this is model "):
        loaded.check_model(TinyDenoiser(seed=1))
