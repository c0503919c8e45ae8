"""Distill with the engine's CUDA graphs off and on, from the same start: ms per step and the adapters' difference (#7)

    python -m bench.gpu.graphs_probe --out $OUT [--family sd15] [--steps 40] [--checkpointing]
    python -m bench.gpu.graphs_probe --out /tmp/probe --tiny      # CPU dry run: the eager half only

Both runs are spare_engine.distill with the same seed, saliency and timestep profile; only
DistillConfig.cuda_graphs differs (False, then True). The first H100 run of this probe (2026-11-26,
its own copy of the step, before the engine had graphs) gave SD1.5's checkpointed step 413 -> 162 ms
and the unchecked one 209 -> 121 ms; this version measures the engine's own ReplayedStep. ms per
step excludes the first steps (warm-up, and for the graphed run the capture); `max_abs_diff` is the
largest difference between the two LoRAs (bf16 and the order of atomic adds make them differ a
little, as two eager runs on a GPU do). Written to graphs_probe_<family>.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
import traceback
import warnings
from pathlib import Path

import torch

from bench.gpu import run as bench

SKIPPED_STEPS = 5  # the graphed run's first steps: 3 eager warm-up steps, then the capture


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

    from comfyui_spare.spare_engine import DistillConfig, compute_saliency, compute_timestep_profile, distill

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
            config = dataclasses.replace(DistillConfig(), steps=args.steps, latents_per_prompt=1, sampling_steps=4,
                                         gradient_checkpointing=args.checkpointing, cuda_graphs=mode == "graphed")
            ticks, losses = [], []

            def callback(step, total, loss):
                bench.sync()
                ticks.append(time.perf_counter())
                losses.append(loss)

            try:
                bench.free_memory()  # the eager run's cached blocks would count in the graphed run's reserved peak
                bench.reset_peak()
                with engine_denoiser(model, clip, resolution) as d, warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    lora = distill(d, [bench.TARGET], [bench.SURROGATE], list(bench.RETAIN), saliency, profile, config,
                                   callback=callback)
                timed = ticks[min(SKIPPED_STEPS, len(ticks) - 2):]
                report[mode] = {"ms_per_step": 1000 * (timed[-1] - timed[0]) / (len(timed) - 1),
                                "first_losses": losses[:3], "last_losses": losses[-3:],
                                "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                                "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
                                # what ran: False here when the capture failed and the engine fell back
                                "cuda_graphs_used": lora.metadata["config"]["cuda_graphs"],
                                "warnings": [str(w.message) for w in caught]}
                trained[mode] = lora.up
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
