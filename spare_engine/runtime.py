"""Running the borrowed host network: mixed precision, and which weights get gradients."""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Literal, Union

import torch
from torch import nn

# "auto": bf16 on a CUDA device that supports it, full precision otherwise (always on CPU).
AutocastChoice = Union[torch.dtype, None, Literal["auto"]]


def resolve_autocast_dtype(choice: AutocastChoice, device: torch.device | str) -> torch.dtype | None:
    if choice != "auto":
        return choice
    device = torch.device(device)
    # bf16 keeps fp32's exponent range, so no GradScaler is ever needed.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device | str, dtype: torch.dtype | None, cache: bool = True) -> contextlib.AbstractContextManager:
    """`cache`: keep autocast's casts of weights within the block (off for a step recorded as a CUDA graph)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype, cache_enabled=cache)


@contextlib.contextmanager
def gradients_only_for(module: nn.Module, params: Iterable[torch.Tensor]) -> Iterator[None]:
    """Inside the block only `params` require grad in `module`; every flag is restored after.

    Host weights outside `params` then keep no activations for backward and never get a .grad.
    `params` may also be tensors outside `module` (adapter weights); those are simply enabled.
    """
    # Inference-mode tensors (how ComfyUI loads weights) cannot take a requires_grad flag
    # outside inference mode; such a host keeps them out of autograd itself.
    host = [p for p in module.parameters() if not torch.is_inference(p)]
    saved = [p.requires_grad for p in host]
    wanted = list(params)
    wanted_saved = [p.requires_grad for p in wanted]
    try:
        for p in host:
            p.requires_grad_(False)
        for p in wanted:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in zip(wanted, wanted_saved):
            p.requires_grad_(flag)
        for p, flag in zip(host, saved):
            p.requires_grad_(flag)


@contextlib.contextmanager
def autograd_enabled() -> Iterator[None]:
    """Autograd on, even inside the caller's no_grad or inference_mode (ComfyUI runs nodes in the latter)."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


@contextlib.contextmanager
def checkpointed(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Gradient checkpointing: inside the block each module keeps no activations for backward and
    recomputes them in the backward pass (torch.utils.checkpoint, non-reentrant) - activation
    memory drops to the modules' inputs, for one extra forward of them per backward.

    Forward hooks on layers inside a module (the adapters) run again in the recomputation, as
    they must; dict arguments (ComfyUI's transformer_options, mutated as the UNet runs) are
    copied at call time so the recomputation sees what the forward saw. Without autograd (the
    teacher pass) modules run as usual. The original forwards are restored in `finally`.
    """
    import torch.utils.checkpoint

    patched = []

    def wrap(forward):
        def run(*args, **kwargs):
            if not torch.is_grad_enabled():
                return forward(*args, **kwargs)
            args = tuple(dict(a) if isinstance(a, dict) else a for a in args)
            kwargs = {k: dict(v) if isinstance(v, dict) else v for k, v in kwargs.items()}
            return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return run

    try:
        for module in modules:
            own = module.__dict__.get("forward")  # an instance-level forward someone else set, if any
            module.forward = wrap(module.forward)
            patched.append((module, own))
        yield
    finally:
        for module, own in reversed(patched):
            if own is None:
                del module.forward
            else:
                module.forward = own


def checkpoint_modules(denoiser, choice: bool | str) -> list[nn.Module]:
    """The modules to checkpoint for `choice`: True, False, or "auto" (on for CUDA hosts, off on the CPU).

    "auto" checkpoints every CUDA host, SD1.5 included: at 4 + 4 rows per distill step an SD1.5 step keeps
    12.4 GiB (H100, bf16, 512 px) without it, above an 8 GB card; SDXL needs it even for saliency's one row
    (22.7 GiB). The CPU has the memory and no time to spare for the recomputation. The host names its units
    (Denoiser.checkpoint_modules(), optional); a host without them is never checkpointed.
    """
    if choice not in (True, False, "auto"):
        raise ValueError(f"gradient_checkpointing must be True, False or 'auto', got {choice!r}")
    host = getattr(denoiser, "checkpoint_modules", None)
    if host is None or choice is False:
        return []
    if choice == "auto" and torch.device(denoiser.device).type != "cuda":
        return []
    return list(host())


def release_cached_memory(device: torch.device | str) -> None:
    """Hand the CUDA caching allocator's free blocks back between phases (data-free sampling,
    then training), so training lays its memory out afresh instead of around sampling's blocks."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


class NonFiniteModelError(RuntimeError):
    """The host network predicted NaN or inf, so a stage could not measure anything."""


def check_finite(stage: str, values: Iterable[torch.Tensor]) -> None:
    """Raise NonFiniteModelError if any value is NaN or inf (one device sync for all of them)."""
    if not torch.stack([v.isfinite().all() for v in values]).all():
        raise NonFiniteModelError(
            f"{stage}: the model's predictions were NaN or inf, so nothing could be measured. The checkpoint may be "
            "broken (a failed merge or conversion), or fp16 overflowed: try the model in bf16 or fp32.")
