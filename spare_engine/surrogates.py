"""Choosing a surrogate: what the target should turn into.

Self-distillation pulls the target's prediction onto the surrogate's, so the further apart the two
are in the frozen model, the larger the edit and the more it spills onto what should stay. On the
demo model a style erased into the style the model already finds closest kept more of its images'
objects on average (Watercolor into Polka Dots: CRA 92.7 against 89.7 into Neon; bench/README.md). Closeness is
the same quantity the timestep profile measures: the frozen model's target-vs-surrogate eps MSE on
the target's own noisy latents, here averaged over the noise levels.
"""
from __future__ import annotations

from typing import Callable

import torch

from .denoiser import Denoiser
from .runtime import AutocastChoice, autocast, check_finite, resolve_autocast_dtype
from .sampling import prompt_latents
from .timesteps import measured_levels, target_surrogate_divergence


@torch.no_grad()
def rank_surrogates(
    denoiser: Denoiser,
    targets: list[str],
    candidates: dict[str, list[str]],
    *,
    grid_size: int = 10,
    n_latents: int = 2,
    sampling_steps: int = 20,
    cfg_scale: float = 7.5,
    seed: int = 0,
    autocast_dtype: AutocastChoice = "auto",
    callback: Callable[[int, int], None] | None = None,
) -> list[tuple[str, float]]:
    """Candidates from closest to farthest, each with its mean divergence from the targets.

    `candidates` maps a name to its surrogate prompts, one per target prompt (the same sentence
    naming the candidate instead of the target). The target's latents are generated once and every
    candidate is measured on the same noisy latents, so the ranking compares like with like; the
    target's own prediction is made once for all candidates.
    `callback(done, total)` runs after each measured (target prompt, noise level).
    """
    if not candidates:
        raise ValueError("candidates is empty: give at least one surrogate to rank")
    for name, prompts in candidates.items():
        if len(prompts) != len(targets):
            raise ValueError(f"candidate {name!r} has {len(prompts)} prompts for {len(targets)} targets: give one per target")
    grid = measured_levels(len(denoiser.alphas_cumprod), grid_size)
    precision = resolve_autocast_dtype(autocast_dtype, denoiser.device)
    conds = denoiser.encode_prompts([*targets, ""]).to(denoiser.device)
    target_conds = conds.select(list(range(len(targets))))
    with autocast(denoiser.device, precision):
        latents = prompt_latents(denoiser, targets, target_conds, conds.select([len(targets)]), n_per_prompt=n_latents,
                                 steps=sampling_steps, cfg_scale=cfg_scale, generator=torch.Generator().manual_seed(seed))
    divergence = target_surrogate_divergence(
        denoiser, target_conds,
        [denoiser.encode_prompts(prompts).to(denoiser.device) for prompts in candidates.values()],
        [latents[target] for target in targets], grid, torch.Generator().manual_seed(seed), precision, callback)
    check_finite("surrogate ranking", [divergence])
    ranking = [(name, float(row.mean())) for name, row in zip(candidates, divergence)]
    return sorted(ranking, key=lambda pair: pair[1])
