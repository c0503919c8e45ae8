"""SPARE stage 1: find the weights that carry the target concept.

Saliency of a weight = sum over samples of |dL/dW|, with L the plain denoising loss
MSE(eps_theta(x_t, t, c_target), eps) on latents the frozen model generates for the target
itself (so no images are needed). Weights whose loss gradient is large are the ones the
model uses to draw the concept; the adapter is then confined to them.

Scores are kept per output row of each adaptable layer (a LoRA's up matrix maps rank ->
output rows, so a row mask is exactly what a sparse LoRA can express) and per layer (mean).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Callable
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .artifacts import check_fingerprint, load_artifact, save_artifact
from .denoiser import Denoiser, model_fingerprint
from .runtime import (AutocastChoice, autocast, autograd_enabled, check_finite, checkpoint_modules, checkpointed,
                      gradients_only_for, release_cached_memory, resolve_autocast_dtype)
from .sampling import add_noise, forward_batch_rows, prompt_latents
from .version import __version__

SALIENCY_FORMAT = "spare_engine.saliency_map"


@dataclass
class SaliencyMap:
    row_scores: dict[str, torch.Tensor]  # per layer, [out_features]: summed |grad| over the row and all samples
    row_sizes: dict[str, int]  # weights per output row (in_features, or in_channels * kh * kw)
    targets: list[str]
    n_samples: int  # gradient samples summed, over all targets
    model_fingerprint: str
    # Budget. top_modules: a fraction (float in (0, 1]) or a count (int >= 1) of layers, best
    # mean saliency first; the authors keep the top half. row_fraction: None keeps every row
    # of a kept layer, q in (0, 1] keeps the top q of their rows, ranked across all kept layers.
    top_modules: float | int = 0.5
    row_fraction: float | None = None

    def __post_init__(self) -> None:
        check_budget(self.top_modules, self.row_fraction)

    @property
    def module_scores(self) -> dict[str, float]:
        """Mean |grad| per weight of each layer (summed over samples)."""
        return {name: float(rows.sum()) / (len(rows) * self.row_sizes[name]) for name, rows in self.row_scores.items()}

    def select(self) -> dict[str, torch.Tensor | None]:
        """Layers to adapt under the budget, in model order, each with its kept-row mask (None: all rows)."""
        scores = self.module_scores
        ranked = sorted(scores, key=scores.__getitem__, reverse=True)  # stable: ties keep model order
        count = self.top_modules if isinstance(self.top_modules, int) else max(1, round(len(ranked) * self.top_modules))
        kept_layers = set(ranked[:count])
        chosen = [name for name in self.row_scores if name in kept_layers]
        if self.row_fraction is None:
            return {name: None for name in chosen}
        # Rows compete across layers by mean |grad| per weight, so wide layers are not favoured.
        per_weight = torch.cat([self.row_scores[name].cpu() / self.row_sizes[name] for name in chosen])
        keep = max(1, round(len(per_weight) * self.row_fraction))
        kept = torch.zeros(len(per_weight), dtype=torch.bool)
        kept[torch.argsort(per_weight, descending=True, stable=True)[:keep]] = True
        masks = kept.split([len(self.row_scores[name]) for name in chosen])
        return {name: mask for name, mask in zip(chosen, masks) if mask.any()}

    def check_model(self, denoiser: Denoiser) -> None:
        check_fingerprint("saliency map", self.model_fingerprint, denoiser)

    def save(self, path: str | os.PathLike) -> None:
        meta = {
            "targets": self.targets,
            "n_samples": self.n_samples,
            "model_fingerprint": self.model_fingerprint,
            "top_modules": self.top_modules,
            "row_fraction": self.row_fraction,
            "row_sizes": self.row_sizes,  # also fixes the layer order, which safetensors does not keep
            "engine_version": __version__,
        }
        save_artifact(path, SALIENCY_FORMAT, self.row_scores, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SaliencyMap:
        tensors, meta = load_artifact(path, SALIENCY_FORMAT)
        return cls(
            row_scores={name: tensors[name] for name in meta["row_sizes"]},
            row_sizes=meta["row_sizes"],
            targets=meta["targets"],
            n_samples=meta["n_samples"],
            model_fingerprint=meta["model_fingerprint"],
            top_modules=meta["top_modules"],
            row_fraction=meta["row_fraction"],
        )


def check_budget(top_modules: float | int, row_fraction: float | None) -> None:
    count_ok = isinstance(top_modules, int) and not isinstance(top_modules, bool) and top_modules >= 1
    fraction_ok = isinstance(top_modules, float) and 0 < top_modules <= 1
    if not (count_ok or fraction_ok):
        raise ValueError(f"top_modules must be a fraction in (0, 1] or a layer count >= 1, got {top_modules!r}")
    if row_fraction is not None and not 0 < row_fraction <= 1:
        raise ValueError(f"row_fraction must be None (all rows) or in (0, 1], got {row_fraction!r}")


@dataclass
class NoisySamples:
    x0: torch.Tensor  # [N, C, H, W]
    t: torch.Tensor  # [N] int64
    eps: torch.Tensor  # [N, C, H, W]


def draw_samples(latents: torch.Tensor, samples_per_latent: int, num_timesteps: int, generator: torch.Generator) -> NoisySamples:
    """Each latent `samples_per_latent` times, each time with its own uniform t and noise."""
    x0 = latents.repeat_interleave(samples_per_latent, dim=0)
    t = torch.randint(0, num_timesteps, (len(x0),), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    return NoisySamples(x0, t.to(x0.device), eps.to(x0.device))


@autograd_enabled()  # ComfyUI runs nodes under inference_mode
def compute_saliency(
    denoiser: Denoiser,
    targets: list[str],
    *,
    latents: dict[str, torch.Tensor] | None = None,
    n_latents: int = 4,
    samples_per_latent: int = 2,
    sampling_steps: int = 20,
    cfg_scale: float = 7.5,
    top_modules: float | int = 0.5,
    row_fraction: float | None = None,
    seed: int = 0,
    autocast_dtype: AutocastChoice = "auto",
    gradient_checkpointing: bool | str = "auto",
    callback: Callable[[int, int], None] | None = None,
) -> SaliencyMap:
    """Saliency of every adaptable layer's weight for the target prompt(s).

    `latents` optionally gives x_0 per target ([N, C, H, W]); other targets get `n_latents`
    DDIM samples of the frozen model. Randomness comes from one CPU generator seeded with
    `seed`: first the generated latents (targets in order), then `draw_samples` per target.
    `gradient_checkpointing` as in DistillConfig: each layer's input, which its row scores
    need in the backward, is then recomputed there instead of kept from the forward.
    """
    if not targets:
        raise ValueError("targets must name at least one concept")
    check_budget(top_modules, row_fraction)
    if samples_per_latent < 1:
        raise ValueError(f"samples_per_latent must be >= 1, got {samples_per_latent}")
    generator = torch.Generator().manual_seed(seed)
    precision = resolve_autocast_dtype(autocast_dtype, denoiser.device)
    layers = denoiser.adaptable_modules()
    row_scores = {name: torch.zeros(layer.weight.shape[0], device=denoiser.device) for name, layer in layers.items()}

    with torch.no_grad():
        conds = denoiser.encode_prompts([*targets, ""]).to(denoiser.device)
        with autocast(denoiser.device, precision):
            x0 = prompt_latents(denoiser, targets, conds, conds.select([len(targets)]), n_per_prompt=n_latents,
                                steps=sampling_steps, cfg_scale=cfg_scale, generator=generator, given=latents)
    release_cached_memory(denoiser.device)
    n_samples = 0
    # Samples per forward and backward pass: an eighth of a no-grad pass's rows, since a backward keeps activations
    # (SD1.5 at 512 px 4; SDXL at 1024 px 1, as before, its VRAM being the tight one). The demo model's 96 samples
    # (12 prompts, 4 latents, 2 samples each) took 7.0-7.8 s one a pass and 4.0 s four a pass (2-core CPU).
    pass_rows = max(1, forward_batch_rows(denoiser.latent_shape) // 8)
    current = _Pass()
    # Host weights frozen: the backward computes activation gradients only, and no host .grad ever appears.
    with gradients_only_for(denoiser.module, []), _row_saliency_hooks(layers, row_scores, current, precision), \
            checkpointed(checkpoint_modules(denoiser, gradient_checkpointing)):
        for row, target in enumerate(targets):
            samples = draw_samples(x0[target], samples_per_latent, len(denoiser.alphas_cumprod), generator)
            for i in range(0, len(samples.t), pass_rows):
                t, eps = samples.t[i:i + pass_rows], samples.eps[i:i + pass_rows]
                x_t = add_noise(denoiser.alphas_cumprod, samples.x0[i:i + pass_rows], t, eps)
                current.samples = len(t)
                current.probes.clear()
                with autocast(denoiser.device, precision):
                    eps_pred = denoiser.predict_eps(x_t, t, conds.select([row] * len(t)))
                if not current.probes:
                    raise ValueError("none of the denoiser's adaptable_modules() ran in predict_eps")
                # Each sample's own loss; the rows of a pass do not interact, so the backward of their sum gives
                # every row the gradient of its own loss, and the row hooks take |dL/dW| sample by sample.
                # Differentiating w.r.t. the probes runs the backward pass that fires the row hooks.
                per_sample = F.mse_loss(eps_pred.float(), eps, reduction="none").flatten(1).mean(1)
                torch.autograd.grad(per_sample.sum(), current.probes, allow_unused=True)
                n_samples += len(t)
                if callback is not None:
                    callback(n_samples, len(targets) * len(samples.t))

    check_finite("saliency", row_scores.values())
    return SaliencyMap(
        row_scores={name: s.cpu() for name, s in row_scores.items()},
        row_sizes={name: layer.weight.shape[1:].numel() for name, layer in layers.items()},
        targets=list(targets),
        n_samples=n_samples,
        model_fingerprint=model_fingerprint(denoiser.module),
        top_modules=top_modules,
        row_fraction=row_fraction,
    )


def weight_gradient(layer: nn.Module, x: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """dL/dW of a Linear / Conv2d call, from its input and output gradient (what autograd gives the weight)."""
    x, grad_output = x.float(), grad_output.float()
    if isinstance(layer, nn.Conv2d):
        return torch.nn.grad.conv2d_weight(x, layer.weight.shape, grad_output, layer.stride, layer.padding,
                                           layer.dilation, layer.groups)
    return grad_output.reshape(-1, grad_output.shape[-1]).T @ x.reshape(-1, x.shape[-1])


class _RowSaliency(torch.autograd.Function):
    """Identity on a layer's output; its backward adds the layer's per-row sum of |dL/dW| to `scores`.

    The layer's input is kept with save_for_backward, so under gradient checkpointing it is
    recomputed in the backward instead of held from the forward.
    """

    @staticmethod
    def forward(ctx, output, probe, x, layer, scores):
        ctx.save_for_backward(x)
        ctx.layer, ctx.scores = layer, scores
        return output.clone()

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        # Per sample: saliency sums |dL/dW| of each sample, not |dL/dW| of the pass's summed loss.
        for i in range(len(x)):
            ctx.scores += weight_gradient(ctx.layer, x[i:i + 1], grad_output[i:i + 1]).abs().flatten(1).sum(1)
        return grad_output, None, None, None, None


@dataclass
class _Pass:
    """The forward pass in progress, as the row hooks see it: its number of samples, and a probe per layer call."""

    samples: int = 0
    probes: list[torch.Tensor] = field(default_factory=list)


@contextlib.contextmanager
def _row_saliency_hooks(
    layers: dict[str, nn.Module], row_scores: dict[str, torch.Tensor], current: _Pass,
    precision: torch.dtype | None,
) -> Iterator[None]:
    """While active, each backward adds every layer's per-row sum of |dL/dW| into row_scores.

    The host weights never need a gradient (ComfyUI's are inference tensors that cannot have
    one): dL/dW is rebuilt from the layer's input and output gradient. A zero scalar that
    requires grad (a probe) enters each layer's _RowSaliency node, so the node is in the graph
    even where nothing upstream needs a gradient (frozen weights, integer timesteps, text context).
    """

    def hook_for(name: str, layer: nn.Module):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            if inputs[0].shape[0] != current.samples:
                raise ValueError(
                    f"saliency: layer {name} got an input of {inputs[0].shape[0]} rows in a pass of {current.samples} "
                    f"samples; per-sample scores need every adaptable layer to take one row per sample (dim 0)")
            # Under autocast the layer multiplied by its input in `precision`: keep that (half
            # the memory of an fp32 input after a norm layer).
            x = inputs[0].detach() if precision is None else inputs[0].detach().to(precision)
            probe = torch.zeros((), device=output.device, dtype=output.dtype, requires_grad=True)
            current.probes.append(probe)
            return _RowSaliency.apply(output, probe, x, layer, row_scores[name])

        return hook

    handles = [layer.register_forward_hook(hook_for(name, layer)) for name, layer in layers.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
