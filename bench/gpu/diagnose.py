"""Where SDXL's erase spends its time and memory (one GPU call): per-sample peaks of saliency and
per-step times / peaks of distill for a few engine variants, and a torch.profiler table; `oom_message`
records what a user sees when the card is too small (a stage at 8192 px).

    python -m bench.gpu.diagnose --out $OUT [--family sdxl]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
import traceback
from pathlib import Path

import torch

from bench.gpu import run as bench

GiB = 2**30


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--family", default="sdxl")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--tiny", action="store_true", help="CPU dry run on the tests' tiny SD1.5 at 16 px")
    parser.add_argument("--only", default="", help="comma-separated run names (default: all); the distill runs "
                        "need saliency_ckpt_on and profile")
    parser.add_argument("--no-profiler", action="store_true")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    engine_denoiser = bench.setup_host()
    import comfy.sd

    from comfyui_spare.spare_engine import DistillConfig, compute_saliency, compute_timestep_profile, distill

    report: dict = {"gpu": torch.cuda.get_device_name() if cuda else None, "torch": torch.__version__,
                    "distill_default_batch_size": DistillConfig().batch_size, "runs": {}}

    def save():
        (out / f"diagnose_{args.family}.json").write_text(json.dumps(report, indent=1))

    t0 = time.perf_counter()
    path, resolution = bench.scratch_checkpoint(args.family, args.tiny)
    report["write_s"] = time.perf_counter() - t0

    wanted = {n for n in args.only.split(",") if n}

    def measured(name, fn):
        if wanted and name not in wanted:
            return None
        ticks, peaks, reserved = [], [], []

        def callback(step, total, loss=None):
            bench.sync()
            ticks.append(time.perf_counter())
            if cuda:
                peaks.append(torch.cuda.max_memory_allocated() / GiB)
                reserved.append(torch.cuda.max_memory_reserved() / GiB)
                torch.cuda.reset_peak_memory_stats()

        bench.free_memory()
        bench.reset_peak()
        started = time.perf_counter()
        rec = {}
        try:
            result = fn(callback)
        except Exception as e:  # noqa: BLE001
            result = None
            rec["error"] = f"{type(e).__name__}: {e}"[:1500]
            rec["traceback"] = traceback.format_exc()[-1500:]
        bench.sync()
        rec.update({"wall_s": time.perf_counter() - started, "before_first_s": ticks[0] - started if ticks else None,
                    "step_s": [round(b - a, 4) for a, b in zip(ticks, ticks[1:])],
                    "peak_gib_per_step": [round(p, 2) for p in peaks],
                    "reserved_gib_per_step": [round(r, 2) for r in reserved],
                    "peak_gib_tail": torch.cuda.max_memory_allocated() / GiB if cuda else None})
        config = getattr(result, "metadata", {}).get("config", {})
        if "cuda_graphs" in config:
            rec["cuda_graphs_used"] = config["cuda_graphs"]  # False where a capture failed and the steps ran eagerly
        report["runs"][name] = rec
        print(name, json.dumps({k: v for k, v in rec.items() if k != "traceback"}), flush=True)
        save()
        return result

    with torch.inference_mode():
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)
        target, surrogate, retain = bench.TARGET, bench.SURROGATE, list(bench.RETAIN)

        def saliency(checkpointing, precision="auto", bf16_compute=False):
            def fn(cb):
                with engine_denoiser(model, clip, resolution) as d:
                    if bf16_compute:
                        d.dtype = torch.bfloat16  # see bf16_compute in distilled()
                    return compute_saliency(d, [target], n_latents=1, samples_per_latent=3, seed=0,
                                            gradient_checkpointing=checkpointing, autocast_dtype=precision, callback=cb)
            return fn

        def out_of_memory(cb):
            # Far more pixels than any card holds (issue #7: the message must say how much was needed). Given
            # latents skip the data-free sampling, so the first gradient pass runs out at once.
            size = 64 if args.tiny else 8192
            with engine_denoiser(model, clip, size) as d:
                latents = {target: torch.randn(1, *d.latent_shape, device=d.device)}
                return compute_saliency(d, [target], latents=latents, samples_per_latent=1,
                                        gradient_checkpointing=False, callback=cb)

        measured("oom_message", out_of_memory)
        sal = measured("saliency_ckpt_on", saliency(True))
        measured("saliency_ckpt_off", saliency(False))
        measured("saliency_fp16_ckpt_on", saliency(True, None))
        measured("saliency_bf16_compute_ckpt_on", saliency(True, None, bf16_compute=True))
        prof = measured("profile", lambda cb: _profile(engine_denoiser, model, clip, resolution, compute_timestep_profile, cb))

        def distilled(only_wide_blocks=False, channels_last=False, bf16_compute=False, **changes):
            config = dataclasses.replace(DistillConfig(), steps=args.steps, latents_per_prompt=1, **changes)

            def fn(cb):
                with engine_denoiser(model, clip, resolution) as d:
                    if bf16_compute:
                        # The network fed bf16 with autocast off (run it with autocast_dtype=None): ComfyUI's layers
                        # cast each weight to their input's dtype, so every layer, norms included, runs in bf16, as
                        # in ComfyUI's own bf16 inference. Under autocast, each norm's output is fp32; the next
                        # layer then casts its fp16 weight to fp32 and autocast casts both to bf16 again (the casts
                        # and copies in the profiles). The adapters then cast their own small weights to bf16
                        # (LoraAdapter.forward), as autocast does. Quality: bench/results/precision_probe.md.
                        d.dtype = torch.bfloat16
                    if channels_last:
                        # Latents in NHWC memory order: cuDNN's convolutions then run without converting each
                        # input and output (the SD1.5 profile's nchwToNhwc / nhwcToNchw kernels), and attention's
                        # "b c h w -> b (h w) c" becomes a view. The weights stay as ComfyUI holds them.
                        inner = d.predict_eps
                        d.predict_eps = lambda x_t, t, cond: inner(x_t.contiguous(memory_format=torch.channels_last),
                                                                   t, cond)
                    if only_wide_blocks:
                        # Checkpoint only the transformer blocks of the lowest resolution (SDXL: 60 blocks at
                        # 1280 channels, most of the activation memory) and keep the others' activations.
                        every = d.checkpoint_modules()
                        d.checkpoint_modules = lambda: [m for m in every if hasattr(m, "attn1")
                                                        and m.attn1.to_q.in_features >= 1280]
                    return distill(d, [target], [surrogate], retain, sal, prof, config, callback=cb)
            return fn

        measured("distill_ckpt_on_bf16", distilled(gradient_checkpointing=True))
        measured("distill_ckpt_off_bf16", distilled(gradient_checkpointing=False))
        measured("distill_ckpt_on_fp16native", distilled(gradient_checkpointing=True, autocast_dtype=None))
        measured("distill_ckpt_off_fp16native", distilled(gradient_checkpointing=False, autocast_dtype=None))
        measured("distill_ckpt_on_bf16_batch1", distilled(gradient_checkpointing=True, batch_size=1))
        measured("distill_ckpt_on_bf16_batch2", distilled(gradient_checkpointing=True, batch_size=2))
        measured("distill_ckpt_wide_blocks_bf16", distilled(only_wide_blocks=True, gradient_checkpointing=True))
        measured("distill_ckpt_on_bf16_channels_last", distilled(channels_last=True, gradient_checkpointing=True))
        measured("distill_ckpt_on_bf16_compute", distilled(bf16_compute=True, gradient_checkpointing=True,
                                                           autocast_dtype=None))

        if args.no_profiler:
            return 0
        from torch.profiler import ProfilerActivity, profile, schedule
        config = dataclasses.replace(DistillConfig(), steps=6, latents_per_prompt=1, gradient_checkpointing=True)
        try:
            with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []),
                         schedule=schedule(wait=1, warmup=1, active=4)) as p:
                with engine_denoiser(model, clip, resolution) as d:
                    distill(d, [target], [surrogate], retain, sal, prof, config, callback=lambda *a: p.step())
            events = p.key_averages()
            text = events.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=35) + "\n\n" + \
                events.table(sort_by="self_cpu_time_total", row_limit=35)
            (out / f"diagnose_profile_{args.family}.txt").write_text(text)
            print(text[:6000], flush=True)
        except Exception as e:  # noqa: BLE001
            print("profile failed", e, traceback.format_exc(), flush=True)
    return 0


def _profile(engine_denoiser, model, clip, resolution, compute_timestep_profile, cb):
    with engine_denoiser(model, clip, resolution) as d:
        return compute_timestep_profile(d, [bench.TARGET], [bench.SURROGATE], n_latents=1, seed=0, callback=cb)


if __name__ == "__main__":
    raise SystemExit(main())
