"""SPARE stage 2: self-distil a sparse LoRA that overwrites the target with its surrogate.

The student is the host network with adapters on the salient layers; the teacher is the
same network with the adapters switched off, run without gradients in the same step on the
same noisy latents. On the target's own noisy latents,

    loss = w_f * MSE(eps_{theta+delta}(x_t, t, c_target), sg[eps_theta(x_t, t, c_surrogate)])
         + w_r * MSE(eps_{theta+delta}(x_t, t, c_retain), sg[eps_theta(x_t, t, c_retain)])

so prompting the target now draws the surrogate, while retain prompts (the user's, plus
the empty prompt that classifier-free guidance relies on) keep their behaviour. Part of the
retain rows hold the empty prompt on any training latent, the target's included: guidance
samples with (1 - w) * eps(x, "") + w * eps(x, c), so an update that moves every prompt's
prediction alike cancels down to 1/w of itself in the target's guided prediction, and a
drift of the empty prompt's enters every image w - 1 times over.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from .adapters import adapters_disabled, attached, build_adapters
from .cuda_graphs import GraphChoice, ReplayedStep, use_cuda_graphs
from .denoiser import Conditioning, Denoiser, model_fingerprint
from .lora import ErasureLoRA
from .runtime import (AutocastChoice, autocast, autograd_enabled, checkpoint_modules, checkpointed,
                      gradients_only_for, release_cached_memory, resolve_autocast_dtype)
from .saliency import SaliencyMap
from .sampling import add_noise, prompt_latents
from .timesteps import TimestepProfile
from .version import __version__


@dataclass
class DistillConfig:
    rank: int = 4
    alpha: float | None = None  # None: alpha = rank, so the LoRA's scale is 1
    steps: int = 200
    # Chosen by the benchmark's first tuning run on its tuning targets: mean(UA, IRA, CRA) 96.5 / 97.3 / 84.4% for
    # 1e-3 / 3e-3 / 1e-2 (3e-4: 95.5%; 1e-4 erased 25% in 200 steps). Later reruns put 1e-3 and 3e-3 within a
    # point of each other (97.1 / 97.9 on 2026-11-27; 98.0 / 97.5 on 2026-11-28; 99.7 / 99.9 on the hourglass model
    # with three retain prompts per kept concept, bench/results/tuning_quick.json: the benchmark runs 3e-3 again).
    lr: float = 3e-3
    # Forget rows per step; as many retain rows ride in the same batch. With one, a run's result hangs on its
    # seed: Blueprint's CRA 88.9 / 83.7 / 85.1% for seeds 0 / 1 / 2; with four, 89.9 / 87.8 / 89.2% (the
    # tuning targets: 93-95% CRA and 92-93% IRA either way; bench/README.md).
    batch_size: int = 4
    forget_weight: float = 1.0
    # Chosen on the same tuning targets, judged on the whole generation set (288 images each, 11 retain
    # prompts, batch 1, one run each): Checkerboard CRA 93.1 / 94.1 / 92.0% and triangle IRA 89.8 / 93.2 / 88.6%
    # for 1 / 3 / 6, UA 100% throughout; differences within one seed's spread at batch 1 (bench/README.md).
    retain_weight: float = 3.0
    # Share of the retain rows that hold the empty prompt's prediction on a training latent of any prompt, the
    # target's included (the others: each retain prompt on its own latents). Without them nothing stops the
    # update from being shared by every prompt, which guidance cancels in the target's image: erased Blueprint was
    # drawn as a blend of it and its surrogate. On the demo model, means of three seeds: Blueprint's CRA 88.2 ->
    # 91.4%, Watercolor's 88.3 -> 89.7%, Camouflage's UA 75.0 -> 91.7%; objects' IRA 1-2 points lower (bench/README.md).
    unconditional_share: float = 0.5
    max_grad_norm: float | None = 1.0
    cfg_scale: float = 7.5  # guidance for the data-free latents
    sampling_steps: int = 20  # DDIM steps for the data-free latents
    latents_per_prompt: int = 4
    seed: int = 0
    autocast_dtype: AutocastChoice = "auto"  # "auto": bf16 on CUDA when supported, off on CPU
    # Recompute the student's activations in backward instead of keeping them (the host names the
    # modules: Denoiser.checkpoint_modules()). "auto": on for CUDA hosts, off on the CPU (runtime.checkpoint_modules).
    gradient_checkpointing: bool | str = "auto"
    # Replay the training step as a CUDA graph after a few eager steps (cuda_graphs.py). "auto": on CUDA.
    cuda_graphs: GraphChoice = "auto"

    def __post_init__(self) -> None:
        for name in ("rank", "steps", "batch_size", "sampling_steps", "latents_per_prompt"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.forget_weight < 0 or self.retain_weight < 0:
            raise ValueError(f"forget_weight and retain_weight must be >= 0, got {self.forget_weight}, {self.retain_weight}")
        if not 0.0 <= self.unconditional_share <= 1.0:
            raise ValueError(f"unconditional_share must be between 0 and 1, got {self.unconditional_share}")
        if self.cuda_graphs not in (True, False, "auto"):
            raise ValueError(f"cuda_graphs must be True, False or 'auto', got {self.cuda_graphs!r}")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the run is abandoned and nothing is returned."""

    def __init__(self, step: int, total: int, value: float) -> None:
        super().__init__(
            f"distillation loss became {value} at step {step} of {total}; no LoRA was produced. "
            f"Lower lr, or use bf16 / no autocast instead of fp16."
        )
        self.step = step


@dataclass
class LatentPool:
    """Training rows: an x_0, the prompt row the student sees, and the prompt row the teacher sees."""

    x0: torch.Tensor  # [N, C, H, W] on the denoiser's device
    student_rows: torch.Tensor  # [N] indices into the run's conditionings
    teacher_rows: torch.Tensor  # [N]

    @classmethod
    def build(cls, latents: dict[str, torch.Tensor], rows: list[tuple[str, int, int]]) -> LatentPool:
        """rows: (prompt whose latents are used, student row, teacher row)."""
        x0, student_rows, teacher_rows = [], [], []
        for prompt, student_row, teacher_row in rows:
            n = len(latents[prompt])
            x0.append(latents[prompt])
            student_rows += [student_row] * n
            teacher_rows += [teacher_row] * n
        return cls(torch.cat(x0), torch.tensor(student_rows), torch.tensor(teacher_rows))


@torch.no_grad()
def _draw_step(
    denoiser: Denoiser, forget: LatentPool, keep: LatentPool, unconditional: LatentPool, unconditional_share: float,
    timesteps: TimestepProfile, batch: int, generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training batch: (x_t, t, student prompt rows, teacher prompt rows), `batch` forget rows then
    `batch` retain rows (each one, with probability unconditional_share, an empty-prompt row)."""
    device = torch.device(denoiser.device)
    f = torch.randint(len(forget.x0), (batch,), generator=generator)
    r = torch.randint(len(keep.x0), (batch,), generator=generator)
    u = torch.randint(len(unconditional.x0), (batch,), generator=generator)
    empty = torch.rand(batch, generator=generator) < unconditional_share
    # Forget rows at the concept's noise levels; retain rows at every level, since damage can show anywhere.
    t_forget = timesteps.sample(batch, generator)
    t_retain = torch.randint(len(denoiser.alphas_cumprod), (batch,), generator=generator)
    # `empty` is drawn on the CPU (the run's generator); the latents live on the denoiser's device.
    retain_x0 = torch.where(empty.to(keep.x0.device).view(-1, *[1] * (keep.x0.dim() - 1)),
                            unconditional.x0[u], keep.x0[r])
    # A retain row's student and teacher see the same prompt, in either pool.
    retain_rows = torch.where(empty, unconditional.student_rows[u], keep.student_rows[r])
    x0 = torch.cat([forget.x0[f], retain_x0])
    t = torch.cat([t_forget, t_retain]).to(device)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    x_t = add_noise(denoiser.alphas_cumprod, x0, t, noise)
    return (x_t, t, torch.cat([forget.student_rows[f], retain_rows]),
            torch.cat([forget.teacher_rows[f], retain_rows]))


@autograd_enabled()  # ComfyUI runs nodes under inference_mode; adapters must be normal tensors
def distill(
    denoiser: Denoiser,
    targets: list[str],
    surrogates: list[str],
    retain: list[str],
    saliency: SaliencyMap,
    timesteps: TimestepProfile,
    config: DistillConfig | None = None,
    callback: Callable[[int, int, float], None] | None = None,
    latents: dict[str, torch.Tensor] | None = None,
) -> ErasureLoRA:
    """Train the erasure LoRA; targets[i] is overwritten with surrogates[i].

    `latents` optionally gives x_0 [N, C, H, W] per target / retain prompt; the others are
    generated once by the frozen model. `callback(step, total, loss)` runs after every step;
    an exception it raises (a cancel) propagates after the hooks are removed. The host
    network is left bit-identical in every case.
    """
    config = config or DistillConfig()
    retain_prompts = _check_prompts(targets, surrogates, retain)
    for argument, artifact in (("saliency", saliency), ("timesteps", timesteps)):
        try:
            artifact.check_model(denoiser)
        except ValueError as error:
            raise ValueError(f"{argument}: {error}") from None
    device = torch.device(denoiser.device)
    precision = resolve_autocast_dtype(config.autocast_dtype, device)
    generator = torch.Generator().manual_seed(config.seed)  # CPU: same run on every device
    alpha = config.rank if config.alpha is None else config.alpha
    adapters = build_adapters(denoiser.adaptable_modules(), saliency.select(), config.rank, alpha, generator)
    params = [p for adapter in adapters.values() for p in adapter.parameters()]

    # Every prompt is encoded once for the whole run.
    prompts = list(dict.fromkeys([*targets, *surrogates, *retain_prompts]))
    row = {prompt: i for i, prompt in enumerate(prompts)}
    latent_prompts = list(dict.fromkeys([*targets, *retain_prompts]))  # the prompts whose x_0 are trained on
    with torch.no_grad(), record_function("spare/latents"):
        conds = denoiser.encode_prompts(prompts).to(device)
        with autocast(device, precision):
            x0 = prompt_latents(denoiser, latent_prompts, conds.select([row[p] for p in latent_prompts]),
                                conds.select([row[""]]),
                                n_per_prompt=config.latents_per_prompt, steps=config.sampling_steps,
                                cfg_scale=config.cfg_scale, generator=generator, given=latents)
    release_cached_memory(device)
    forget = LatentPool.build(x0, [(t, row[t], row[s]) for t, s in zip(targets, surrogates)])
    keep = LatentPool.build(x0, [(p, row[p], row[p]) for p in retain_prompts])
    unconditional = LatentPool.build(x0, [(p, row[""], row[""]) for p in latent_prompts])

    batch = config.batch_size
    graphed = use_cuda_graphs(config.cuda_graphs, device)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0, capturable=graphed)
    cond_keys = list(conds.tensors)

    def train_step(x_t: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        """Teacher pass, student forward, backward and update of one batch; no host sync, so that it can be
        replayed as a graph. `cond`: the student's conditioning tensors, then the teacher's."""
        student_cond = Conditioning(dict(zip(cond_keys, cond[:len(cond_keys)])))
        teacher_cond = Conditioning(dict(zip(cond_keys, cond[len(cond_keys):])))
        # The teacher is the network with adapters off. It runs inside the step, so a graphed step holds its
        # pass in the graph's own memory pool: computed eagerly between replays, the teacher's passes held memory
        # of their own beside that pool (H200, SDXL: 19.07 GiB reserved then, 16.25 now; eager steps 15.9).
        with torch.no_grad(), adapters_disabled(adapters), record_function("spare/teacher"), \
                autocast(device, precision, cache=not graphed):
            teacher = denoiser.predict_eps(x_t, t, teacher_cond).float()
        with record_function("spare/student"), autocast(device, precision, cache=not graphed):
            student = denoiser.predict_eps(x_t, t, student_cond).float()
        loss = config.forget_weight * F.mse_loss(student[:batch], teacher[:batch]) \
            + config.retain_weight * F.mse_loss(student[batch:], teacher[batch:])
        with record_function("spare/backward"):
            loss.backward()
        with record_function("spare/optimizer"):
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
        return loss.detach()

    run_step = ReplayedStep(train_step, optimizer, graphed)
    with gradients_only_for(denoiser.module, params), attached(denoiser, adapters), \
            checkpointed(checkpoint_modules(denoiser, config.gradient_checkpointing)):
        for step in range(1, config.steps + 1):
            x_t, t, student_rows, teacher_rows = _draw_step(denoiser, forget, keep, unconditional,
                                                            config.unconditional_share, timesteps, batch, generator)
            student_cond, teacher_cond = conds.select(student_rows), conds.select(teacher_rows)
            value = run_step(x_t, t, *(student_cond.tensors[k] for k in cond_keys),
                             *(teacher_cond.tensors[k] for k in cond_keys)).item()
            # A non-finite loss has already stepped the optimizer; the run is abandoned, so no LoRA carries it.
            if not math.isfinite(value):
                raise NonFiniteLossError(step, config.steps, value)
            if callback is not None:
                callback(step, config.steps, value)

    metadata = {
        "method": "SPARE",
        "targets": list(targets),
        "surrogates": list(surrogates),
        "retain": list(retain),
        "config": {**asdict(config), "alpha": alpha, "autocast_dtype": str(precision),
                   "cuda_graphs": run_step.graphed},  # what ran (False also where a capture failed)
        "saliency_budget": {"top_modules": saliency.top_modules, "row_fraction": saliency.row_fraction},
        "timestep_scheme": {"scheme": timesteps.scheme, "uniform_mix": timesteps.uniform_mix},
        "base_model_fingerprint": model_fingerprint(denoiser.module),
        "engine_version": __version__,
    }
    return ErasureLoRA.from_adapters(adapters, metadata)


def _check_prompts(targets: list[str], surrogates: list[str], retain: list[str]) -> list[str]:
    """Validate the prompt lists; return the retain prompts with the empty prompt added."""
    if not targets:
        raise ValueError("targets must name at least one concept to erase")
    if len(targets) != len(surrogates):
        raise ValueError(
            f"surrogates must have one entry per target: got {len(targets)} targets and {len(surrogates)} surrogates"
        )
    for i, (target, surrogate) in enumerate(zip(targets, surrogates)):
        if target.strip() == surrogate.strip():
            raise ValueError(f"targets[{i}] and surrogates[{i}] are both {target!r}; a surrogate must differ from its target")
    # The empty prompt is always retained: classifier-free guidance subtracts its prediction.
    retain_prompts = list(dict.fromkeys([*retain, ""]))
    for i, target in enumerate(targets):
        if target in retain_prompts:
            where = "the empty prompt is always retained" if target == "" else "retain must not contain a target"
            raise ValueError(f"targets[{i}] = {target!r} is also in retain ({where})")
    return retain_prompts
