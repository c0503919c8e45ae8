"""The package boundary, Conditioning, fingerprints, the DDIM sampler, and a host that predicts NaN."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import spare_engine
from spare_engine import Conditioning, add_noise, model_fingerprint, sample_ddim, weights_hash

from .tiny_denoiser import NaNAfter, TinyDenoiser, scaled_linear_alphas_cumprod

ROOT = Path(__file__).resolve().parents[2]


def test_import_pulls_in_no_comfy_and_no_foreign_packages():
    code = (
        "import sys, spare_engine;"
        "print([m for m in sys.modules if m.startswith('comfy')]);"
        "allowed = ('torch', 'safetensors', 'numpy', 'spare_engine');"
        "print(sorted({m.split('.')[0] for m in sys.modules"
        " if m.split('.')[0] not in sys.stdlib_module_names and not m.startswith(allowed)}))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    comfy_modules, foreign = out.stdout.strip().splitlines()
    assert comfy_modules == "[]"
    # torch itself imports a few helpers (typing_extensions, sympy, ...); spare_engine adds nothing on top.
    torch_only = subprocess.run([sys.executable, "-c", code.replace("spare_engine;", "torch, safetensors.torch, numpy;")],
                                env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert foreign == torch_only.stdout.strip().splitlines()[1]


def test_version_and_public_api():
    assert spare_engine.__version__ == "0.1.0"
    for name in spare_engine.__all__:
        assert hasattr(spare_engine, name), name


def test_tiny_denoiser_satisfies_the_protocol(denoiser):
    assert isinstance(denoiser, spare_engine.Denoiser)


def test_conditioning_rows():
    cond = Conditioning({"context": torch.arange(6.0).view(3, 2), "y": torch.tensor([[0], [1], [2]])})
    assert len(cond) == 3
    assert cond.select([2, 0, 2]).tensors["y"].flatten().tolist() == [2, 0, 2]
    assert cond.select(1).tensors["context"].tolist() == [[2.0, 3.0]]
    assert cond.repeat(2).tensors["y"].flatten().tolist() == [0, 1, 2, 0, 1, 2]
    both = Conditioning.cat([cond.select([0]), cond.select([1, 2])])
    assert torch.equal(both.tensors["context"], cond.tensors["context"])
    half = cond.to(dtype=torch.float16)
    assert half.tensors["context"].dtype == torch.float16 and half.tensors["y"].dtype == torch.long
    with pytest.raises(ValueError, match="batch size"):
        Conditioning({"context": torch.zeros(2, 1), "y": torch.zeros(3, 1)})
    with pytest.raises(ValueError, match="different keys"):
        Conditioning.cat([cond, Conditioning({"context": torch.zeros(1, 2)})])


def test_fingerprint_and_hash_see_weight_changes():
    a, b = TinyDenoiser(seed=0).module, TinyDenoiser(seed=0).module
    assert model_fingerprint(a) == model_fingerprint(b) and weights_hash(a) == weights_hash(b)
    assert model_fingerprint(a) != model_fingerprint(TinyDenoiser(seed=1).module)
    with torch.no_grad():
        b.diffusion_model.to_k.weight[0, 0] += 1e-3  # element 0 is in the fingerprint's strided sample
    assert model_fingerprint(a) != model_fingerprint(b)
    c = TinyDenoiser(seed=0).module
    with torch.no_grad():
        c.diffusion_model.to_k.weight[3, 5] += 1e-3  # off the sample: only the full hash notices
    assert weights_hash(a) != weights_hash(c)
    assert model_fingerprint(a) != model_fingerprint(TinyDenoiser(seed=0).module.to(torch.bfloat16))


def test_fingerprint_reads_weights_in_logical_order_whatever_their_memory_layout():
    a, b = TinyDenoiser(seed=0).module, TinyDenoiser(seed=0).module
    weight = b.diffusion_model.to_k.weight
    # The same values, held transposed in memory: a fingerprint sampling storage order would differ.
    b.diffusion_model.to_k.weight = torch.nn.Parameter(weight.detach().t().contiguous().t(), requires_grad=False)
    assert not b.diffusion_model.to_k.weight.is_contiguous()
    assert model_fingerprint(a) == model_fingerprint(b)


def test_fingerprint_reads_every_weight_dtype_a_host_stores():
    """ComfyUI can hold a UNet's weights in fp8 (its weight_dtype option); the fingerprint still tells them apart."""
    a, b, changed = TinyDenoiser(seed=0).module, TinyDenoiser(seed=0).module, TinyDenoiser(seed=0).module
    with torch.no_grad():
        changed.diffusion_model.to_k.weight[0, 0] += 1.0  # more than one fp8 step; element 0 is sampled
    for dtype in (torch.float8_e4m3fn, torch.float8_e5m2, torch.bfloat16, torch.float16, torch.float64):
        assert model_fingerprint(a.to(dtype)) == model_fingerprint(b.to(dtype)) != model_fingerprint(changed.to(dtype))


class Oracle:
    """Knows the one clean latent x0*: predicts the exact eps, so DDIM must land on x0*."""

    latent_shape = (4, 8, 8)
    device, dtype = torch.device("cpu"), torch.float32

    def __init__(self):
        self.alphas_cumprod = scaled_linear_alphas_cumprod()
        self.x0 = torch.randn(1, *self.latent_shape, generator=torch.Generator().manual_seed(7))

    def predict_eps(self, x_t, t, cond):
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x_t - ab.sqrt() * self.x0) / (1 - ab).sqrt()


def test_ddim_recovers_the_clean_latent_of_an_exact_predictor():
    oracle = Oracle()
    cond = Conditioning({"context": torch.zeros(3, 1)})
    x0 = sample_ddim(oracle, cond, cond.select([0]), steps=10, cfg_scale=7.5, generator=torch.Generator().manual_seed(0))
    assert x0.shape == (3, 4, 8, 8)
    assert torch.allclose(x0, oracle.x0.expand(3, -1, -1, -1), atol=1e-4)


def test_ddim_is_deterministic_and_add_noise_follows_ddpm(denoiser):
    cond = denoiser.encode_prompts(["a cat", "a dog"])
    uncond = denoiser.encode_prompts([""])
    runs = [sample_ddim(denoiser, cond, uncond, steps=5, cfg_scale=3.0, generator=torch.Generator().manual_seed(1))
            for _ in range(2)]
    assert torch.equal(*runs)
    x0, eps, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([0, 999])
    ab = denoiser.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(add_noise(denoiser.alphas_cumprod, x0, t, eps), ab.sqrt() * x0 + (1 - ab).sqrt() * eps)


def test_rows_of_the_unconditional_prompt_sample_without_a_guidance_twin(denoiser):
    conds = denoiser.encode_prompts(["a cat", ""])
    cond, uncond = conds.select([0, 1, 1]), conds.select([1])
    batches = []
    inner = denoiser.predict_eps

    def counted(x_t, t, c):
        batches.append(len(x_t))
        return inner(x_t, t, c)

    denoiser.predict_eps = counted
    try:
        runs = {scale: sample_ddim(denoiser, cond, uncond, steps=4, cfg_scale=scale,
                                   generator=torch.Generator().manual_seed(2)) for scale in (3.0, 9.0)}
    finally:
        del denoiser.predict_eps
    assert batches == [3 + 1] * 8  # the cat row's twin only
    # Guidance moves the cat row and cannot move the empty prompt's rows, which it never touched.
    assert not torch.equal(runs[3.0][0], runs[9.0][0])
    assert torch.equal(runs[3.0][1:], runs[9.0][1:])


class ViewlessWeight(torch.Tensor):
    """A host weight that refuses views and detach, as ComfyUI-loaded weights did on an H200
    (torch 2.11 + CUDA: "Inference tensors do not track version counter", even in inference mode)."""

    VIEWS = {torch.Tensor.detach, torch.Tensor.reshape, torch.Tensor.view, torch.Tensor.__getitem__,
             torch.Tensor.flatten, torch.Tensor.contiguous}
    armed = False  # off while nn.Parameter wraps it (that detaches once)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if not cls.armed:
            return super().__torch_function__(func, types, args, kwargs)
        if func in cls.VIEWS and args and type(args[0]) is cls:
            raise RuntimeError(f"{func.__name__}: Inference tensors do not track version counter.")
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


def viewless(module: torch.nn.Module) -> torch.nn.Module:
    for layer in module.modules():
        for name, param in list(layer.named_parameters(recurse=False)):
            weight = torch.nn.Parameter(param.data.as_subclass(ViewlessWeight), requires_grad=False)
            setattr(layer, name, weight)
    return module


def test_host_weights_are_read_by_copy_never_by_view():
    plain, strict = TinyDenoiser(seed=0), TinyDenoiser(seed=0)
    viewless(strict.module)
    ViewlessWeight.armed = True
    try:
        check_copies_only(strict, plain)
    finally:
        ViewlessWeight.armed = False


def check_copies_only(strict: TinyDenoiser, plain: TinyDenoiser) -> None:
    with pytest.raises(RuntimeError, match="version counter"):
        strict.module.diffusion_model.to_k.weight.detach()
    assert model_fingerprint(strict.module) == model_fingerprint(plain.module)
    assert weights_hash(strict.module) == weights_hash(plain.module)
    smap = spare_engine.compute_saliency(strict, ["a cat"], n_latents=1, samples_per_latent=1, sampling_steps=3,
                                         top_modules=2, row_fraction=0.5)
    assert smap.model_fingerprint == model_fingerprint(plain.module)


@pytest.mark.parametrize("stage, run", [
    ("saliency", lambda d: spare_engine.compute_saliency(d, ["a cat"], n_latents=1, samples_per_latent=1,
                                                         sampling_steps=2)),
    ("timestep profile", lambda d: spare_engine.compute_timestep_profile(d, ["a cat"], ["a dog"], grid_size=3,
                                                                         n_latents=1, sampling_steps=2)),
    ("surrogate ranking", lambda d: spare_engine.rank_surrogates(d, ["a cat"], {"dog": ["a dog"]}, grid_size=3,
                                                                 n_latents=1, sampling_steps=2)),
])
def test_a_model_that_predicts_nan_is_named_as_the_cause(stage, run):
    """A broken checkpoint (or an fp16 overflow) makes every score NaN; the stage says so instead of
    handing NaN on to a chart or a sampler that fails with an unrelated message."""
    model = NaNAfter(seed=0)
    model.poisoned = True
    with pytest.raises(spare_engine.NonFiniteModelError, match=rf"^{stage}: the model's predictions were NaN or inf"):
        run(model)
