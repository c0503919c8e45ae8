"""Batched text-to-image with any MODEL/CLIP/VAE, through ComfyUI's own sampling.

Each image equals what CLIPTextEncode -> KSampler (batch 1, that seed, empty
negative prompt) -> VAEDecode would produce: the same noise (prepare_noise with
the image's seed), the same `comfy.sample.sample`, the same decode. Prompts are
batched so evaluating a whole generation set takes minutes, not hours.
"""
from .comfy_host import ensure_comfy

ensure_comfy()

import torch  # noqa: E402

import comfy.sample  # noqa: E402

from . import config  # noqa: E402


def encode_prompts(clip, prompts):
    """One CONDITIONING holding a batch of prompts (cond [B, 77, width])."""
    conds, pooled = [], []
    for text in prompts:
        out = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True)
        conds.append(out["cond"])
        pooled.append(out["pooled_output"])
    return [[torch.cat(conds), {"pooled_output": torch.cat(pooled)}]]


def seeded_noise(seeds, height, width):
    """Per-image noise, identical to the KSampler node's for a batch of one."""
    shape = (1, config.LATENT_CHANNELS, height // config.DOWNSCALE, width // config.DOWNSCALE)
    return torch.cat([comfy.sample.prepare_noise(torch.zeros(shape), seed) for seed in seeds])


@torch.inference_mode()  # as ComfyUI executes every node
def generate(model, clip, vae, prompts, seeds, negative="", sampler=config.SAMPLER,
             height=128, width=128, batch=48):
    """Images for prompts[i] with seeds[i]: float [N, H, W, 3] in 0..1 (a ComfyUI IMAGE)."""
    assert len(prompts) == len(seeds)
    images = []
    for i in range(0, len(prompts), batch):
        chunk, chunk_seeds = prompts[i:i + batch], seeds[i:i + batch]
        positive = encode_prompts(clip, chunk)
        negative_cond = encode_prompts(clip, [negative])
        noise = seeded_noise(chunk_seeds, height, width)
        samples = comfy.sample.sample(
            model, noise, sampler["steps"], sampler["cfg"], sampler["sampler_name"], sampler["scheduler"],
            positive, negative_cond, torch.zeros_like(noise), disable_pbar=True, seed=chunk_seeds[0])
        images.append(vae.decode(samples).float().cpu())
    return torch.cat(images)
