"""SPARE's timestep sampling: train where the concept lives.

A concept is not carried equally by every noise level, and which levels carry it is measured,
not assumed (on the demo model a style differs most at low noise, where its texture is drawn, and
least at t = T - 1). On a grid of K levels we measure how far the frozen model's eps prediction
for the target is from its prediction for the surrogate, on the target's own noisy latents.
That divergence, interpolated to all T levels and mixed with a uniform floor, is the
distribution the forget loss draws its timesteps from.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .artifacts import check_fingerprint, load_artifact, save_artifact
from .denoiser import Conditioning, Denoiser, model_fingerprint
from .runtime import AutocastChoice, autocast, check_finite, resolve_autocast_dtype
from .sampling import add_noise, forward_batch_rows, predict_eps_in_passes, prompt_latents
from .version import __version__

PROFILE_FORMAT = "spare_engine.timestep_profile"


@dataclass
class TimestepProfile:
    probabilities: torch.Tensor  # [T] float64, sums to 1
    scheme: str  # "concept" (measured) or "uniform" (the ablation)
    uniform_mix: float  # share of the mass spread uniformly over all T levels
    grid: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # [K] measured levels
    divergence: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # [K] target-vs-surrogate MSE
    targets: list[str] = field(default_factory=list)
    surrogates: list[str] = field(default_factory=list)
    model_fingerprint: str = ""  # "" fits any model with the same number of timesteps

    @classmethod
    def uniform(cls, num_timesteps: int = 1000) -> TimestepProfile:
        return cls(torch.full((num_timesteps,), 1 / num_timesteps, dtype=torch.float64), "uniform", 1.0)

    @classmethod
    def from_divergence(
        cls, grid: torch.Tensor, divergence: torch.Tensor, num_timesteps: int, uniform_mix: float, **provenance
    ) -> TimestepProfile:
        """p(t) = (1 - uniform_mix) * d(t) / sum d + uniform_mix / T, d linearly interpolated from the grid."""
        if not 0 <= uniform_mix <= 1:
            raise ValueError(f"uniform_mix must be in [0, 1], got {uniform_mix}")
        d = np.interp(np.arange(num_timesteps), grid.numpy(), divergence.clamp(min=0).double().numpy())
        # A surrogate the model cannot tell from the target leaves nothing to focus on: fall back to uniform.
        concept = d / d.sum() if d.sum() > 0 else np.full(num_timesteps, 1 / num_timesteps)
        probabilities = torch.from_numpy((1 - uniform_mix) * concept + uniform_mix / num_timesteps)
        return cls(probabilities, "concept", uniform_mix, grid.long(), divergence.float(), **provenance)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n timesteps (int64, on the generator's device) drawn from the profile."""
        return torch.multinomial(self.probabilities.to(generator.device), n, replacement=True, generator=generator)

    def check_model(self, denoiser: Denoiser) -> None:
        if len(self.probabilities) != len(denoiser.alphas_cumprod):
            raise ValueError(
                f"timestep profile covers {len(self.probabilities)} timesteps, "
                f"this model has {len(denoiser.alphas_cumprod)}"
            )
        if self.model_fingerprint:
            check_fingerprint("timestep profile", self.model_fingerprint, denoiser)

    def save(self, path: str | os.PathLike) -> None:
        tensors = {"probabilities": self.probabilities, "grid": self.grid, "divergence": self.divergence}
        meta = {
            "scheme": self.scheme,
            "uniform_mix": self.uniform_mix,
            "targets": self.targets,
            "surrogates": self.surrogates,
            "model_fingerprint": self.model_fingerprint,
            "engine_version": __version__,
        }
        save_artifact(path, PROFILE_FORMAT, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TimestepProfile:
        tensors, meta = load_artifact(path, PROFILE_FORMAT)
        return cls(
            probabilities=tensors["probabilities"],
            scheme=meta["scheme"],
            uniform_mix=meta["uniform_mix"],
            grid=tensors["grid"],
            divergence=tensors["divergence"],
            targets=meta["targets"],
            surrogates=meta["surrogates"],
            model_fingerprint=meta["model_fingerprint"],
        )


@torch.no_grad()
def compute_timestep_profile(
    denoiser: Denoiser,
    targets: list[str],
    surrogates: list[str],
    *,
    latents: dict[str, torch.Tensor] | None = None,
    grid_size: int = 20,
    n_latents: int = 2,
    sampling_steps: int = 20,
    cfg_scale: float = 7.5,
    uniform_mix: float = 0.2,
    seed: int = 0,
    autocast_dtype: AutocastChoice = "auto",
    callback: Callable[[int, int], None] | None = None,
) -> TimestepProfile:
    """Measure where (in noise level) each target differs from its surrogate; average over pairs and latents.

    `callback(done, total)` runs after each measured (pair, noise level).
    """
    if not targets or len(targets) != len(surrogates):
        raise ValueError(f"targets and surrogates must be non-empty and pair up, got {len(targets)} and {len(surrogates)}")
    if not 0 <= uniform_mix <= 1:
        raise ValueError(f"uniform_mix must be in [0, 1], got {uniform_mix}")
    num_timesteps = len(denoiser.alphas_cumprod)
    grid = measured_levels(num_timesteps, grid_size)
    generator = torch.Generator().manual_seed(seed)
    precision = resolve_autocast_dtype(autocast_dtype, denoiser.device)
    pairs = len(targets)

    conds = denoiser.encode_prompts([*targets, *surrogates, ""]).to(denoiser.device)
    with autocast(denoiser.device, precision):
        x0 = prompt_latents(denoiser, targets, conds.select(list(range(pairs))), conds.select([2 * pairs]),
                            n_per_prompt=n_latents, steps=sampling_steps, cfg_scale=cfg_scale,
                            generator=generator, given=latents)
    divergence = target_surrogate_divergence(denoiser, conds.select(list(range(pairs))),
                                             [conds.select(list(range(pairs, 2 * pairs)))],
                                             [x0[target] for target in targets], grid, generator, precision, callback)[0]
    check_finite("timestep profile", [divergence])

    return TimestepProfile.from_divergence(
        grid, divergence, num_timesteps, uniform_mix,
        targets=list(targets), surrogates=list(surrogates), model_fingerprint=model_fingerprint(denoiser.module),
    )


def measured_levels(num_timesteps: int, grid_size: int) -> torch.Tensor:
    """The K = grid_size evenly spaced noise levels the divergence is measured on."""
    if grid_size < 2:
        raise ValueError(f"grid_size must be >= 2, got {grid_size}")
    return torch.linspace(0, num_timesteps - 1, grid_size).round().long()


def target_surrogate_divergence(
    denoiser: Denoiser,
    target_conds: Conditioning,
    surrogate_conds: list[Conditioning],
    x0: list[torch.Tensor],
    grid: torch.Tensor,
    generator: torch.Generator,
    precision: torch.dtype | None,
    callback: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """[C, K] float64: for each of C surrogate sets, at each level of `grid`, the frozen model's
    target-vs-surrogate eps MSE on the target's latents, averaged over the P target prompts.

    `target_conds` has one row per target prompt; each of `surrogate_conds` one row per target prompt,
    in the same order; `x0[p]` are target p's latents [N, C, H, W]. Every surrogate set is measured
    on the same noisy latents, and the target's prediction is made once for all of them.
    `callback(done, total)` runs after each noise level, `done` counting measured (target prompt, level) pairs.
    """
    pairs, grid_size, copies = len(target_conds), len(grid), 1 + len(surrogate_conds)
    conds = Conditioning.cat([target_conds, *surrogate_conds])  # prompt set c, target p: row c * pairs + p
    # The noise of every (target prompt, level), drawn up front in that order.
    noise = [[torch.randn(latents.shape, generator=generator) for _ in range(grid_size)] for latents in x0]
    # A level's rows: per target prompt, its latents once per prompt set, the target's first. All target prompts
    # share the level's passes: on a CPU a pass of 8 rows took 6.5 ms a row, one of 32 rows 2.9 (demo UNet). A
    # pass holds at least two prompt sets' rows, so a target and one surrogate always go through together.
    sizes = [len(latents) for latents in x0]
    rows = torch.cat([torch.arange(p, copies * pairs, pairs).repeat_interleave(n) for p, n in enumerate(sizes)])
    pass_rows = max(2, forward_batch_rows(x0[0].shape[1:]) // max(sizes)) * max(sizes)
    divergence = torch.zeros(len(surrogate_conds), grid_size, dtype=torch.float64)
    for k, t in enumerate(grid.tolist()):
        t_batch = torch.full((len(rows),), t, dtype=torch.long, device=denoiser.device)
        x_t = torch.cat([add_noise(denoiser.alphas_cumprod, latents, t_batch[:len(latents)],
                                   noise[p][k].to(denoiser.device)).repeat(copies, 1, 1, 1)
                         for p, latents in enumerate(x0)])
        with autocast(denoiser.device, precision):
            eps_pred = predict_eps_in_passes(denoiser, x_t, t_batch, conds, rows, pass_rows)
        for n, block in zip(sizes, eps_pred.split([copies * n for n in sizes])):
            on_target, *on_surrogates = block.split(n)
            for c, on_surrogate in enumerate(on_surrogates):
                divergence[c, k] += F.mse_loss(on_target, on_surrogate).item() / pairs
        if callback is not None:
            callback((k + 1) * pairs, pairs * grid_size)
    return divergence
