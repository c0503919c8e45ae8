"""What the engine needs from a host diffusion model, and how it recognises one.

The engine never imports a host framework. A host (ComfyUI, or a tiny torch model in the
tests) wraps its network in an object satisfying `Denoiser`; everything else in
`spare_engine` talks to that object only.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import nn


@dataclass
class Conditioning:
    """Text conditioning for a batch: named tensors that all share the batch size on dim 0.

    SD1.x needs {"context": [B, L, D]}; SDXL adds {"y": [B, 2816]}. The engine only moves
    rows around; the host decides what the keys mean.
    """

    tensors: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        if not self.tensors:
            raise ValueError("Conditioning needs at least one tensor")
        sizes = {name: t.shape[0] for name, t in self.tensors.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"Conditioning tensors must share the batch size on dim 0, got {sizes}")

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def select(self, rows: torch.Tensor | Sequence[int] | int) -> Conditioning:
        """The given rows (repeats allowed), in the given order."""
        index = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        return Conditioning({k: t.index_select(0, index.to(t.device)) for k, t in self.tensors.items()})

    def repeat(self, n: int) -> Conditioning:
        """The whole batch tiled n times: rows 0..B-1, 0..B-1, ..."""
        return Conditioning({k: t.repeat(n, *[1] * (t.dim() - 1)) for k, t in self.tensors.items()})

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        keys = parts[0].tensors.keys()
        if any(p.tensors.keys() != keys for p in parts):
            raise ValueError("cannot concatenate conditionings with different keys")
        return Conditioning({k: torch.cat([p.tensors[k] for p in parts]) for k in keys})

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Conditioning:
        """Move to a device; `dtype` applies to floating tensors only (ids and masks keep theirs)."""
        return Conditioning({
            k: t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None)
            for k, t in self.tensors.items()
        })


@runtime_checkable
class Denoiser(Protocol):
    """An eps-prediction diffusion network, as the engine sees it.

    DDPM convention: x_t = sqrt(ab_t) * x_0 + sqrt(1 - ab_t) * eps, with ab = alphas_cumprod.
    """

    module: nn.Module  # root whose parameters are the host weights (never modified by the engine)
    alphas_cumprod: torch.Tensor  # [T], T usually 1000
    latent_shape: tuple[int, int, int]  # (C, H, W) of the latents the engine generates
    device: torch.device
    dtype: torch.dtype

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """eps prediction for latents x_t [B, C, H, W] at int64 timesteps t [B]."""
        ...

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """One conditioning row per prompt, on `device`."""
        ...

    def adaptable_modules(self) -> dict[str, nn.Module]:
        """Linear / Conv2d modules the engine may adapt, by stable name.

        The names are exactly the LoRA export keys, e.g. "diffusion_model.input_blocks.1.1.proj_in".
        """
        ...


# Both read the host's weights through a copy (clone, torch.take, .to) made in inference mode, never a view or detach
# of the weight itself: weights that ComfyUI loaded refused views on an H200 (torch 2.11 + CUDA:
# "Inference tensors do not track version counter"), even in inference mode; the clone ran there.
@torch.inference_mode()
def model_fingerprint(module: nn.Module, samples_per_tensor: int = 64) -> str:
    """Cheap identity of a network: names, shapes, dtypes and a strided sample of every parameter.

    Reading a few values per tensor is enough to tell checkpoints (or fine-tunes) apart
    without hashing gigabytes; `weights_hash` is the exact check.
    """
    digest = hashlib.sha256()
    for name, param in module.named_parameters():
        # torch.take copies just the sampled values, in the order a flattened copy lists them (cloning every
        # weight to read 64 values of each took 0.43-0.75 s per call on an SD1.5 UNet on a 2-core CPU, 0.01 s so).
        stride = max(1, param.numel() // samples_per_tensor)
        index = torch.arange(0, param.numel(), stride, device=param.device)[:samples_per_tensor]
        digest.update(f"{name}|{tuple(param.shape)}|{param.dtype}|".encode())
        # `take` has no kernel for fp8 weights (ComfyUI's fp8 weight_dtype): read those through an exact fp16 copy.
        values = param.to(torch.float16) if param.is_floating_point() and param.element_size() == 1 else param
        digest.update(_raw_bytes(torch.take(values, index)))
    return digest.hexdigest()


@torch.inference_mode()
def weights_hash(module: nn.Module) -> str:
    """sha256 of every parameter and buffer byte, by name: proves the host is unchanged."""
    digest = hashlib.sha256()
    tensors = dict(module.named_parameters())
    tensors.update(module.named_buffers())
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(_raw_bytes(tensors[name]))
    return digest.hexdigest()


def _raw_bytes(t: torch.Tensor) -> bytes:
    # Viewed as bytes so that every dtype (bf16 included) hashes without a lossy conversion.
    return t.clone(memory_format=torch.contiguous_format).reshape(-1).view(torch.uint8).cpu().numpy().tobytes()
