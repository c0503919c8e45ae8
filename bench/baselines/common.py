"""What every baseline shares: dense weight-delta adapters, their export, and the data they train on.

Full fine-tuning is simulated without touching the host: each selected Linear / Conv2d
layer gets a trainable delta dW (and db) of its own shape, added to the layer's output by a
forward hook, output + (x @ dW^T + db), exactly as spare_engine's LoRA adapters are added.
Since a Linear / Conv2d is linear in its weight, layer(x; W + dW) = layer(x; W) + layer(x; dW)
(bias aside), so training dW is training W itself, and the host's (possibly inference-mode)
tensors never get requires_grad, a .grad, or a write.

The result is exported as ComfyUI LoRA "diff" keys, `{name}.diff` (full-weight difference)
and `{name}.diff_b` (bias difference), which ComfyUI's stock LoRA loader applies as
W + strength * diff. Their size is what a user of a fine-tuning method has to store.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from spare_engine import Conditioning, Denoiser
from spare_engine.sampling import prompt_latents

Callback = Callable[[int, int, float], None]


class DeltaAdapter(nn.Module):
    """delta(x) = layer(x; dW * mask) + db * mask_b: a full-rank, optionally masked, weight update."""

    def __init__(self, layer: nn.Module, name: str = "layer", train_bias: bool = True,
                 weight_mask: torch.Tensor | None = None, bias_mask: torch.Tensor | None = None) -> None:
        super().__init__()
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1 or layer.padding_mode != "zeros":
                raise ValueError(f"{name}: only Conv2d with groups=1 and zero padding can be adapted")
            self.conv_args = {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation}
        elif isinstance(layer, nn.Linear):
            self.conv_args = None
        else:
            raise ValueError(f"{name}: only Linear and Conv2d layers can be adapted, got {type(layer).__name__}")
        device = layer.weight.device
        # New tensors of the layer's shape: never views of (or gradients into) the host's weights.
        self.delta_weight = nn.Parameter(torch.zeros(tuple(layer.weight.shape), device=device))
        has_bias = layer.bias is not None and train_bias
        self.delta_bias = nn.Parameter(torch.zeros(layer.weight.shape[0], device=device)) if has_bias else None
        if weight_mask is not None and tuple(weight_mask.shape) != tuple(layer.weight.shape):
            raise ValueError(f"{name}: weight_mask must have shape {list(layer.weight.shape)}")
        self.register_buffer("weight_mask", None if weight_mask is None else weight_mask.to(device, torch.float32))
        self.register_buffer("bias_mask", None if bias_mask is None or not has_bias else bias_mask.to(device, torch.float32))
        self.name = name
        self.enabled = True  # spare_engine.adapters_disabled() switches this off: the frozen teacher

    def effective(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight and bias differences this adapter currently adds (masks applied)."""
        w = self.delta_weight if self.weight_mask is None else self.delta_weight * self.weight_mask
        b = self.delta_bias
        if b is not None and self.bias_mask is not None:
            b = b * self.bias_mask
        return w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.effective()
        x = x.to(w.dtype)
        if self.conv_args is None:
            return F.linear(x, w, b)
        return F.conv2d(x, w, b, **self.conv_args)

    def trainable_count(self) -> int:
        """Entries the optimiser can change (masked-out entries excluded)."""
        count = self.delta_weight.numel() if self.weight_mask is None else int(self.weight_mask.sum())
        if self.delta_bias is not None:
            count += self.delta_bias.numel() if self.bias_mask is None else int(self.bias_mask.sum())
        return count


def build_delta_adapters(denoiser: Denoiser, names: list[str], train_bias: bool = True,
                         masks: dict[str, tuple[torch.Tensor, torch.Tensor | None]] | None = None
                         ) -> dict[str, DeltaAdapter]:
    layers = denoiser.adaptable_modules()
    missing = [n for n in names if n not in layers]
    if missing:
        raise ValueError(f"not adaptable modules of this model: {missing[:5]}")
    masks = masks or {}
    return {n: DeltaAdapter(layers[n], n, train_bias, *masks.get(n, (None, None))) for n in names}


def export_diff(adapters: dict[str, DeltaAdapter]) -> dict[str, torch.Tensor]:
    """ComfyUI LoRA "diff" format: `{name}.diff` [weight shape] and `{name}.diff_b` [out]."""
    state = {}
    for name, adapter in adapters.items():
        w, b = adapter.effective()
        state[f"{name}.diff"] = w.detach().float().cpu().clone()
        if b is not None:
            state[f"{name}.diff_b"] = b.detach().float().cpu().clone()
    return state


def trainable_parameters(adapters: dict[str, DeltaAdapter]) -> int:
    return sum(a.trainable_count() for a in adapters.values())


def state_dict_bytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of tensor data a user has to keep (safetensors adds a small JSON header on top)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def merge_into(module: nn.Module, state: dict[str, torch.Tensor], strength: float = 1.0) -> None:
    """Apply a LoRA / diff state dict to a (test) network in place, as ComfyUI's loader does.

    Only for tests on throw-away networks; the benchmark applies results through ComfyUI.
    """
    layers = dict(module.named_modules())
    with torch.no_grad():
        for key, value in state.items():
            if key.endswith(".diff"):
                layers[key[: -len(".diff")]].weight += strength * value.to(layers[key[: -len(".diff")]].weight)
            elif key.endswith(".diff_b"):
                layers[key[: -len(".diff_b")]].bias += strength * value.to(layers[key[: -len(".diff_b")]].bias)
            elif key.endswith(".lora_down.weight"):
                name = key[: -len(".lora_down.weight")]
                down, up = value, state[f"{name}.lora_up.weight"]
                alpha = float(state[f"{name}.alpha"])
                weight = layers[name].weight
                weight += strength * (alpha / down.shape[0]) * (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)


@dataclass
class PromptRows:
    """Every prompt of a run encoded once; `row[prompt]` indexes `conds`."""

    conds: Conditioning
    row: dict[str, int] = field(default_factory=dict)

    @classmethod
    def encode(cls, denoiser: Denoiser, prompts: list[str]) -> PromptRows:
        unique = list(dict.fromkeys(prompts))
        with torch.no_grad():
            conds = denoiser.encode_prompts(unique).to(denoiser.device)
        return cls(conds, {p: i for i, p in enumerate(unique)})

    def select(self, prompts: list[str]) -> Conditioning:
        return self.conds.select([self.row[p] for p in prompts])


def frozen_latents(denoiser: Denoiser, prompts: PromptRows, wanted: list[str], *, n_per_prompt: int,
                   steps: int, cfg_scale: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """x_0 per prompt, drawn by the frozen model: the same data-free training data SPARE uses.

    The published baselines train on a data set (UnlearnCanvas images); here, as for SPARE,
    the model's own samples of the prompts stand in for it, so no method sees other data.
    """
    wanted = list(dict.fromkeys(wanted))
    with torch.no_grad():
        return prompt_latents(denoiser, wanted, prompts.select(wanted), prompts.select([""]),
                              n_per_prompt=n_per_prompt, steps=steps, cfg_scale=cfg_scale, generator=generator)


def ddim_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """The same evenly spaced grid spare_engine's sampler uses, from T-1 down to 0."""
    return torch.linspace(num_timesteps - 1, 0, steps).round().long().tolist()


@torch.no_grad()
def ddim_partial(denoiser: Denoiser, x: torch.Tensor, cond: Conditioning, uncond: Conditioning, *,
                 steps: int, stop: int, cfg_scale: float) -> tuple[torch.Tensor, int]:
    """Run `stop` of `steps` deterministic DDIM steps from pure noise x; return (x_t, t).

    x_t is the latent at timestep t = grid[stop], with whatever network (adapters on or off)
    the denoiser currently is: ESD samples its z_t with the model being trained.
    """
    ab = denoiser.alphas_cumprod.to(device=denoiser.device, dtype=torch.float32)
    grid = ddim_timesteps(len(ab), steps)
    batch = x.shape[0]
    both = Conditioning.cat([cond, uncond.repeat(batch)])
    for i in range(stop):
        t, t_next = grid[i], grid[i + 1]
        t_batch = torch.full((2 * batch,), t, dtype=torch.long, device=denoiser.device)
        eps_c, eps_u = denoiser.predict_eps(torch.cat([x, x]), t_batch, both).float().chunk(2)
        eps = eps_u + cfg_scale * (eps_c - eps_u)
        x0 = (x - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()
        x = ab[t_next].sqrt() * x0 + (1 - ab[t_next]).sqrt() * eps
    return x, grid[stop]


def optimizer_step(optimizer, loss: torch.Tensor, step: int, total: int, method: str, losses: list[float],
                   callback: Callback | None) -> None:
    """One step of a baseline's loop: stop on a non-finite loss, update, record, report."""
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"{method}: loss became {value} at step {step} of {total}; lower the learning rate")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    losses.append(value)
    if callback is not None:
        callback(step, total, value)
