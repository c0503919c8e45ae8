"""Sparse LoRA adapters attached to a borrowed network with forward hooks.

Hooks instead of module surgery: the host's modules, parameters and forward code stay
exactly as they are (ComfyUI's layers have their own forward), and removing the hooks
restores the original network bit for bit. Switching the adapters off turns the same
network into the frozen teacher, so no second copy of the model is ever made.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .denoiser import Denoiser


class LoraAdapter(nn.Module):
    """delta(x) = scale * up(down(x)), with scale = alpha / rank, added to one layer's output.

    Linear: down [r, in], up [out, r]. Conv2d: down is a conv with the layer's own kernel,
    stride, padding and dilation [r, in, kh, kw], up a 1x1 conv [out, r, 1, 1]. An optional
    row mask zeroes output rows of up, so only the salient rows of the layer can change.
    """

    def __init__(
        self,
        layer: nn.Module,
        rank: int,
        alpha: float,
        row_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        name: str = "layer",
    ) -> None:
        super().__init__()
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1 or layer.padding_mode != "zeros":
                raise ValueError(f"{name}: only Conv2d with groups=1 and zero padding can be adapted")
            out_features, fan_in = layer.out_channels, layer.in_channels * math.prod(layer.kernel_size)
            down_shape, up_shape = (rank, layer.in_channels, *layer.kernel_size), (out_features, rank, 1, 1)
            self.conv_args = {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation}
        elif isinstance(layer, nn.Linear):
            out_features, fan_in = layer.out_features, layer.in_features
            down_shape, up_shape = (rank, fan_in), (out_features, rank)
            self.conv_args = None
        else:
            raise ValueError(f"{name}: only Linear and Conv2d layers can be adapted, got {type(layer).__name__}")
        # A rank above min(out_features, fan_in) is allowed, as in ComfyUI's own LoRA trainer: such an
        # adapter is full-rank on that layer, and one rank for every layer keeps the export a plain LoRA.
        # (SD's output convolution has 4 outputs: a cap there would forbid any rank above 4.)
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
        if row_mask is not None and row_mask.shape != (out_features,):
            raise ValueError(f"{name}: row_mask must have shape [{out_features}], got {list(row_mask.shape)}")
        device = layer.weight.device
        self.rank, self.alpha, self.scale = rank, float(alpha), float(alpha) / rank
        # down starts like nn.Linear's own init (uniform, bound 1/sqrt(fan_in)), up at zero:
        # the adapter is an exact no-op until trained. Drawn on the CPU generator for reproducibility.
        bound = 1 / math.sqrt(fan_in)
        down = (torch.rand(down_shape, generator=generator) * 2 - 1) * bound
        self.down = nn.Parameter(down.to(device))
        self.up = nn.Parameter(torch.zeros(up_shape, device=device))
        self.register_buffer("row_mask", None if row_mask is None else row_mask.to(device=device, dtype=torch.bool))
        if row_mask is not None:
            # The mask acts on up's gradient, not in the forward: up starts at zero, so its masked rows get
            # no gradient and stay exactly zero under AdamW (and plain SGD), and the forward saves the mask's
            # multiply, its backward and a cast per layer - a training step on a GPU is bound by kernel launches.
            self.up.register_hook(self._mask_rows)
        self.enabled = True

    def _mask_rows(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * self.row_mask.view(-1, *[1] * (grad.dim() - 1))

    def masked_up(self) -> torch.Tensor:
        """up with its masked rows zeroed: what is exported, whatever was written into up."""
        if self.row_mask is None:
            return self.up
        return self._mask_rows(self.up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under autocast the products run in its dtype whatever x's is. Without it they run in the lower of
        # x's and the adapter's precision, casting the side that is not the activation where possible: a
        # network fed bf16 casts the small adapter weights (as autocast would), an fp32 adapter on an fp32
        # network casts nothing, and a higher-precision x is cast down to the adapter's dtype.
        down, up = self.down, self.up
        if not torch.is_autocast_enabled(x.device.type):
            if x.element_size() < down.element_size():
                down, up = down.to(x.dtype), up.to(x.dtype)
            else:
                x = x.to(down.dtype)
        if self.conv_args is None:
            delta = F.linear(F.linear(x, down), up)
        else:
            delta = F.conv2d(F.conv2d(x, down, **self.conv_args), up)
        return delta if self.scale == 1.0 else self.scale * delta  # scale 1 (alpha = rank) is the default


def build_adapters(
    layers: dict[str, nn.Module],
    selection: dict[str, torch.Tensor | None],
    rank: int,
    alpha: float,
    generator: torch.Generator | None = None,
) -> dict[str, LoraAdapter]:
    """One adapter per selected layer name (with its row mask, None = all rows)."""
    missing = [name for name in selection if name not in layers]
    if missing:
        raise ValueError(f"selected layers are not adaptable modules of this model: {missing[:5]}")
    return {
        name: LoraAdapter(layers[name], rank, alpha, row_mask=mask, generator=generator, name=name)
        for name, mask in selection.items()
    }


def _add_adapter_output(adapter: LoraAdapter):
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not adapter.enabled:
            return None  # None keeps the layer's own output untouched
        return output + adapter(inputs[0]).to(output.dtype)

    return hook


@contextlib.contextmanager
def attached(denoiser: Denoiser, adapters: dict[str, LoraAdapter]) -> Iterator[None]:
    """Hook the adapters onto their layers for the duration of the block.

    The hooks are removed in `finally`: on success, on an exception, and on a cancel
    raised from a progress callback, so the host never keeps a hook.
    """
    layers = denoiser.adaptable_modules()
    missing = [name for name in adapters if name not in layers]
    if missing:
        raise ValueError(f"adapters name layers this model does not have: {missing[:5]}")
    handles = []
    try:
        for name, adapter in adapters.items():
            handles.append(layers[name].register_forward_hook(_add_adapter_output(adapter)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def adapters_disabled(adapters: dict[str, LoraAdapter]) -> Iterator[None]:
    """Inside the block the hooked network is the original one: the frozen teacher."""
    saved = [adapter.enabled for adapter in adapters.values()]
    try:
        for adapter in adapters.values():
            adapter.enabled = False
        yield
    finally:
        for adapter, enabled in zip(adapters.values(), saved):
            adapter.enabled = enabled
