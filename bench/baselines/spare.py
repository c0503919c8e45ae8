"""SPARE itself (spare_engine), behind the same `erase(...)` interface as the baselines, with its ablations.

saliency -> timestep profile -> self-distillation, all three on one set of latents that the
frozen model draws for the target and retain prompts (each stage would otherwise draw its own).
Ablations are switches of this config:
  * no saliency      top_modules = 1.0   (a LoRA on every candidate layer)
  * uniform steps    timesteps = "uniform"
  * no retain term   retain_weight = 0
  * row sparsity     row_fraction = q    (finer than the default per-module selection)
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields

import torch

from spare_engine import (DistillConfig, TimestepProfile, compute_saliency, compute_timestep_profile, distill)

from .common import Callback, PromptRows, frozen_latents


@dataclass
class SpareConfig:
    # stage 1
    top_modules: float | int = 0.5
    row_fraction: float | None = None
    samples_per_latent: int = 2
    # timesteps
    timesteps: str = "concept"  # or "uniform"
    grid_size: int = 20
    uniform_mix: float = 0.2
    # stage 2: spare_engine.DistillConfig's defaults
    rank: int = DistillConfig.rank
    steps: int = DistillConfig.steps
    lr: float = DistillConfig.lr
    batch_size: int = DistillConfig.batch_size
    forget_weight: float = DistillConfig.forget_weight
    retain_weight: float = DistillConfig.retain_weight
    unconditional_share: float = DistillConfig.unconditional_share
    latents_per_prompt: int = DistillConfig.latents_per_prompt
    sampling_steps: int = DistillConfig.sampling_steps
    cfg_scale: float = DistillConfig.cfg_scale
    seed: int = DistillConfig.seed

    def distill_config(self) -> DistillConfig:
        names = {f.name for f in fields(DistillConfig)}
        return DistillConfig(**{k: v for k, v in asdict(self).items() if k in names})


def erase(denoiser, targets: list[str], surrogates: list[str], retain: list[str],
          config: SpareConfig | None = None, callback: Callback | None = None,
          latent_store: dict | None = None):
    """`latent_store`: latents drawn by an earlier erasure of the same model, prompts and latent settings
    (every ablation of a task draws the same ones) are taken from it, and this run's are put in it. A reused
    draw's measured seconds are reported as this run's latents stage and as info["reused_seconds"], so that a
    caller counts them in the erasure's time."""
    config = config or SpareConfig()
    stage_seconds = {}
    clock = time.perf_counter()

    def stage_done(name):
        nonlocal clock
        now = time.perf_counter()
        stage_seconds[name] = now - clock
        clock = now

    key = (tuple(targets), tuple(retain), config.latents_per_prompt, config.sampling_steps, config.cfg_scale,
           config.seed)
    reused = latent_store is not None and key in latent_store
    if reused:
        latents, reused_seconds = latent_store[key]
        stage_done("latents")
        stage_seconds["latents"] = reused_seconds
    else:
        generator = torch.Generator().manual_seed(config.seed)
        prompts = PromptRows.encode(denoiser, [*targets, *retain, ""])
        latents = frozen_latents(denoiser, prompts, [*targets, *retain, ""], n_per_prompt=config.latents_per_prompt,
                                 steps=config.sampling_steps, cfg_scale=config.cfg_scale, generator=generator)
        stage_done("latents")
        reused_seconds = 0.0
        if latent_store is not None:
            latent_store[key] = (latents, stage_seconds["latents"])
    saliency = compute_saliency(denoiser, targets, latents={t: latents[t] for t in targets},
                                samples_per_latent=config.samples_per_latent, top_modules=config.top_modules,
                                row_fraction=config.row_fraction, seed=config.seed)
    stage_done("saliency")
    if config.timesteps == "uniform":
        profile = TimestepProfile.uniform(len(denoiser.alphas_cumprod))
    elif config.timesteps == "concept":
        profile = compute_timestep_profile(denoiser, targets, surrogates, latents={t: latents[t] for t in targets},
                                           grid_size=config.grid_size, uniform_mix=config.uniform_mix,
                                           seed=config.seed)
    else:
        raise ValueError(f"timesteps must be 'concept' or 'uniform', got {config.timesteps!r}")
    stage_done("timesteps")
    losses = []

    def record(step, total, loss):
        losses.append(loss)
        if callback is not None:
            callback(step, total, loss)

    lora = distill(denoiser, targets, surrogates, retain, saliency, profile, config.distill_config(),
                   callback=record, latents=latents)
    stage_done("distill")
    selection = saliency.select()
    layers = denoiser.adaptable_modules()
    trainable = 0
    for name in selection:
        a = lora.down[name].numel()  # down is fully trained; up only on its kept rows
        rows = selection[name]
        up = lora.up[name]
        trainable += a + (up.numel() if rows is None else int(rows.sum()) * up[0].numel())
    info = {"method": "SPARE", "config": asdict(config), "layers": len(selection),
            "candidate_layers": len(layers), "trainable_params": trainable, "losses": losses,
            "stage_seconds": stage_seconds, "reused_seconds": reused_seconds}
    return lora.state_dict(), info
