"""Helpers shared by the training stages."""
import os
import time

import torch
from safetensors.torch import save_file

CACHE_DIR = "/tmp/demo_world_cache"  # derived tensors (latents), never committed


def init_like_torch(module, zero_suffixes=()):
    """Give every layer PyTorch's default init.

    ComfyUI's layers skip weight init (they expect a checkpoint); training from
    scratch needs it back. Layers ending in `zero_suffixes` start at zero, as in
    the reference implementations, so each residual branch starts as identity.
    """
    torch_layers = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.Embedding)
    for name, m in module.named_modules():
        for cls in torch_layers:
            if isinstance(m, cls):
                cls.reset_parameters(m)
                if cls is torch.nn.Embedding:
                    torch.nn.init.normal_(m.weight, std=0.02)  # CLIP's init; N(0, 1) swamps the residual stream
                break
        if name.endswith(zero_suffixes):
            for p in m.parameters():
                torch.nn.init.zeros_(p)


def cosine_lr(step, total, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item()))


def save_fp16(state_dict, path, metadata=None):
    """Written beside `path`, then renamed over it: a run stopped while saving leaves the previous file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in state_dict.items()}
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, path)


class Clock:
    """Wall time of a stage, for the training report."""

    def __init__(self):
        self.start = time.time()

    def minutes(self):
        return (time.time() - self.start) / 60
