"""Can SPARE's training step run as a replayed CUDA graph under ComfyUI, and how much faster is it? (#7)

    python -m bench.gpu.graphs_probe --out $OUT [--family sd15] [--steps 40] [--checkpointing]
    python -m bench.gpu.graphs_probe --out /tmp/probe --tiny      # CPU dry run: the eager half only

The H200 profile of distill shows a launch-bound loop (68 ms of GPU work in a 254 ms SD1.5 step), which
is what CUDA graphs remove. This probe runs the distill step exactly as spare_engine.distill builds it
(same adapters, rows, timesteps, noise, teacher targets and loss) twice from the same start: N steps
eagerly, then N steps as one captured graph replayed N times (AdamW with capturable=True, autocast
without its cast cache, inputs copied into static tensors before each replay). It records ms per step
both ways and the largest difference between the two runs' trained adapter weights, in
graphs_probe_<family>.json. Nothing here changes the engine; it is the evidence for doing so.
"""
from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.gpu import run as bench


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--family", default="sd15")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--checkpointing", action="store_true", help="the engine's gradient checkpointing on")
    parser.add_argument("--tiny", action="store_true", help="CPU dry run on the tests' tiny SD1.5 at 16 px")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    engine_denoiser = bench.setup_host()
    import comfy.sd

    from comfyui_spare.spare_engine import compute_saliency, compute_timestep_profile

    cuda = torch.cuda.is_available()
    report: dict = {"gpu": torch.cuda.get_device_name() if cuda else None, "torch": torch.__version__,
                    "family": args.family, "steps": args.steps, "checkpointing": args.checkpointing}
    result_path = out / f"graphs_probe_{args.family}.json"

    def save():
        result_path.write_text(json.dumps(report, indent=1) + "\n")

    path, resolution = bench.scratch_checkpoint(args.family, args.tiny)
    with torch.inference_mode():
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)
        with engine_denoiser(model, clip, resolution) as d:
            saliency = compute_saliency(d, [bench.TARGET], n_latents=1, samples_per_latent=1)
        with engine_denoiser(model, clip, resolution) as d:
            profile = compute_timestep_profile(d, [bench.TARGET], [bench.SURROGATE], n_latents=1)
        trained = {}
        for mode in ("eager", "graphed") if cuda else ("eager",):
            try:
                with engine_denoiser(model, clip, resolution) as d:
                    report[mode], trained[mode] = train(d, saliency, profile, args.steps, graphed=mode == "graphed",
                                                        checkpointing=args.checkpointing)
            except Exception as e:  # noqa: BLE001
                report[mode] = {"error": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc()[-3000:]}
            print(mode, json.dumps({k: v for k, v in report[mode].items() if k != "traceback"}), flush=True)
            save()
    if len(trained) == 2:
        eager, graphed = trained["eager"], trained["graphed"]
        report["max_abs_diff"] = max(float((eager[k] - graphed[k]).abs().max()) for k in eager)
        report["max_abs"] = max(float(v.abs().max()) for v in eager.values())
        report["speedup"] = report["eager"]["ms_per_step"] / report["graphed"]["ms_per_step"]
    save()
    print(json.dumps({k: report.get(k) for k in ("max_abs_diff", "max_abs", "speedup")}), flush=True)
    path.unlink(missing_ok=True)
    return 0


def train(denoiser, saliency, profile, n_steps: int, graphed: bool, checkpointing: bool) -> tuple[dict, dict]:
    """n_steps of distill's step from a fixed start: (timings, the trained adapter weights)."""
    from comfyui_spare.spare_engine.runtime import autograd_enabled

    with autograd_enabled():
        return _train(denoiser, saliency, profile, n_steps, graphed, checkpointing)


def _train(denoiser, saliency, profile, n_steps: int, graphed: bool, checkpointing: bool) -> tuple[dict, dict]:
    from comfyui_spare.spare_engine import DistillConfig
    from comfyui_spare.spare_engine.adapters import adapters_disabled, attached, build_adapters
    from comfyui_spare.spare_engine.denoiser import Conditioning
    from comfyui_spare.spare_engine.distill import LatentPool, _draw_steps
    from comfyui_spare.spare_engine.runtime import (checkpoint_modules, checkpointed, gradients_only_for,
                                                    resolve_autocast_dtype)
    from comfyui_spare.spare_engine.sampling import prompt_latents

    config = DistillConfig()
    device = torch.device(denoiser.device)
    precision = resolve_autocast_dtype("auto", device)
    generator = torch.Generator().manual_seed(0)
    adapters = build_adapters(denoiser.adaptable_modules(), saliency.select(), config.rank, float(config.rank), generator)
    params = [p for a in adapters.values() for p in a.parameters()]
    retain = [*bench.RETAIN, ""]
    prompts = [bench.TARGET, bench.SURROGATE, *retain]
    row = {p: i for i, p in enumerate(prompts)}
    with torch.no_grad():
        conds = denoiser.encode_prompts(prompts).to(device)
        latents = prompt_latents(denoiser, [bench.TARGET, *retain], conds.select([row[p] for p in [bench.TARGET, *retain]]),
                                 conds.select([row[""]]), n_per_prompt=1, steps=4, cfg_scale=7.5, generator=generator)
    forget = LatentPool.build(latents, [(bench.TARGET, row[bench.TARGET], row[bench.SURROGATE])])
    keep = LatentPool.build(latents, [(p, row[p], row[p]) for p in retain])
    batch = config.batch_size

    def autocast():
        if precision is None:
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=precision, cache_enabled=False)  # graphs: no cast cache

    def step_loss(x_t, t, cond, teacher):
        with autocast():
            student = denoiser.predict_eps(x_t, t, cond).float()
        return config.forget_weight * F.mse_loss(student[:batch], teacher[:batch]) + \
            config.retain_weight * F.mse_loss(student[batch:], teacher[batch:])

    with gradients_only_for(denoiser.module, params), attached(denoiser, adapters), \
            checkpointed(checkpoint_modules(denoiser, checkpointing)):
        with adapters_disabled(adapters):
            steps = _draw_steps(denoiser, conds, forget, keep, profile, batch, generator, precision, n_steps)
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0, capturable=graphed)
        times, losses = [], []
        if not graphed:
            for x_t, t, rows, teacher in steps:
                started = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                loss = step_loss(x_t, t, conds.select(rows), teacher)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                losses.append(loss.item())
                times.append(time.perf_counter() - started)
            capture_s = None
        else:
            x_t0, t0, rows0, teacher0 = steps[0]
            static_x, static_t, static_teacher = x_t0.clone(), t0.clone(), teacher0.clone()
            static_cond = Conditioning({k: v.clone() for k, v in conds.select(rows0).tensors.items()})
            start = [p.detach().clone() for p in params]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the graph, as torch's docs ask
                for _ in range(3):
                    optimizer.zero_grad(set_to_none=True)
                    step_loss(static_x, static_t, static_cond, static_teacher).backward()
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                    optimizer.step()
            torch.cuda.current_stream().wait_stream(side)
            started = time.perf_counter()
            graph = torch.cuda.CUDAGraph()
            optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                static_loss = step_loss(static_x, static_t, static_cond, static_teacher)
                static_loss.backward()
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
            torch.cuda.synchronize()
            capture_s = time.perf_counter() - started
            with torch.no_grad():  # back to the eager run's start: weights and optimizer state
                for p, value in zip(params, start):
                    p.copy_(value)
                for state in optimizer.state.values():
                    for value in state.values():
                        if torch.is_tensor(value):
                            value.zero_()
            for x_t, t, rows, teacher in steps:
                started = time.perf_counter()
                static_x.copy_(x_t)
                static_t.copy_(t)
                for k, v in conds.select(rows).tensors.items():
                    static_cond.tensors[k].copy_(v)
                static_teacher.copy_(teacher)
                graph.replay()
                losses.append(static_loss.item())
                times.append(time.perf_counter() - started)
    skip = min(3, len(times) - 1)  # first steps: allocator and kernel warm-up
    record = {
        "ms_per_step": 1000 * sum(times[skip:]) / len(times[skip:]),
        "capture_s": capture_s,
        "first_losses": losses[:3], "last_losses": losses[-3:],
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }
    weights = {f"{name}.{k}": v.detach().float().cpu() for name, a in adapters.items()
               for k, v in (("down", a.down), ("up", a.up))}
    return record, weights


if __name__ == "__main__":
    raise SystemExit(main())
