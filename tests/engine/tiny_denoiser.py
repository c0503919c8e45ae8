"""A small but real conditional eps-predictor implementing spare_engine's Denoiser protocol.

Latents 4x8x8; a conv stem, a time embedding, a residual conv, one cross-attention block
over a toy word-embedding "text encoder", and a conv head. Layer names mimic ComfyUI's
(`diffusion_model.` prefix) so the LoRA keys look like the real ones.
"""
from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F
from torch import nn

from spare_engine import Conditioning

CHANNELS, CONTEXT_DIM, TOKENS, VOCAB = 16, 16, 6, 97


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, device=t.device) / (dim // 2))
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class TinyUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        c = CHANNELS
        self.conv_in = nn.Conv2d(4, c, 3, padding=1)
        self.time_embed = nn.Sequential(nn.Linear(c, c), nn.SiLU(), nn.Linear(c, c))
        self.res = nn.Conv2d(c, c, 3, padding=1)
        self.proj_in = nn.Linear(c, c)
        self.to_q = nn.Linear(c, c, bias=False)
        self.to_k = nn.Linear(CONTEXT_DIM, c, bias=False)
        self.to_v = nn.Linear(CONTEXT_DIM, c, bias=False)
        self.to_out = nn.Linear(c, c)
        self.conv_out = nn.Conv2d(c, 4, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        hidden = self.conv_in(x) + self.time_embed(timestep_embedding(t, CHANNELS).to(x.dtype))[:, :, None, None]
        hidden = hidden + self.res(F.silu(hidden))
        tokens = self.proj_in(hidden.flatten(2).transpose(1, 2))  # [B, HW, C]
        attention = torch.softmax(self.to_q(tokens) @ self.to_k(context).transpose(1, 2) / math.sqrt(CHANNELS), -1)
        tokens = tokens + self.to_out(attention @ self.to_v(context))
        hidden = hidden + tokens.transpose(1, 2).reshape(b, CHANNELS, h, w)
        return self.conv_out(F.silu(hidden))


class Root(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.diffusion_model = TinyUNet()

    def forward(self, x, t, context):
        return self.diffusion_model(x, t, context)


def scaled_linear_alphas_cumprod(num_timesteps: int = 1000) -> torch.Tensor:
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, num_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


class TinyDenoiser:
    latent_shape = (4, 8, 8)

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.module = Root()
        # The "text encoder" sits outside `module`, as ComfyUI's CLIP sits outside the diffusion model.
        self.embedding = nn.Embedding(VOCAB, CONTEXT_DIM)
        self.embedding.requires_grad_(False)
        self.alphas_cumprod = scaled_linear_alphas_cumprod()
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.calls = 0

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        self.calls += 1
        return self.module(x_t.to(self.dtype), t, cond.tensors["context"].to(self.dtype))

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        ids = torch.zeros(len(prompts), TOKENS, dtype=torch.long)  # id 0 = padding
        for row, prompt in enumerate(prompts):
            for col, word in enumerate(prompt.lower().split()[:TOKENS]):
                ids[row, col] = 1 + zlib.crc32(word.encode()) % (VOCAB - 1)
        with torch.no_grad():
            return Conditioning({"context": self.embedding(ids)})

    def adaptable_modules(self) -> dict[str, nn.Module]:
        return {n: m for n, m in self.module.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


class NaNAfter(TinyDenoiser):
    """Predicts NaN once `poisoned` is set (e.g. from a training callback)."""

    poisoned = False

    def predict_eps(self, x_t, t, cond):
        eps = super().predict_eps(x_t, t, cond)
        return eps * float("nan") if self.poisoned else eps


def merge_lora(module: nn.Module, state_dict: dict[str, torch.Tensor], strength: float) -> None:
    """Apply a LoRA state_dict to the weights in place, the way ComfyUI's stock loader does."""
    layers = dict(module.named_modules())
    suffix = ".lora_down.weight"
    with torch.no_grad():
        for key in state_dict:
            if not key.endswith(suffix):
                continue
            name = key[: -len(suffix)]
            down, up = state_dict[key], state_dict[f"{name}.lora_up.weight"]
            alpha = state_dict[f"{name}.alpha"].item()
            weight = layers[name].weight
            delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
            weight += strength * (alpha / down.shape[0]) * delta
