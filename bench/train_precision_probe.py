"""The demo world's diffusion stage from scratch in fp32 and under bf16 autocast, same draws (#3)

    python -m bench.train_precision_probe --steps 1500 --out bench/results/train_precision_probe.json

Issue #3 asks for a retrain that fits one CPU session; its UNet steps are most of the time. bf16 autocast makes
a step cheaper on a CPU with bf16 matrix units; this measures by how much, and whether the network learns as
fast per step. Both runs start from the same initial weights with the `diffusion` stage's settings (LR, warm-up,
uncapped v-weighting, EMA warm-up) and draw the same batches, timesteps and noise from the same seeds, on the
shipped VAE's latents; only the arithmetic of the forward passes differs. Weights go to a temporary folder,
never over the shipped ones. Written: ms per step (from the end of the first step to the end of the last, read
at _fit's log points) and the eps-MSE averaged over each WINDOW steps.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from demo_world.comfy_host import ensure_comfy

ensure_comfy()

import torch  # noqa: E402

from demo_world import config  # noqa: E402
from demo_world.train import PRECISIONS, machine  # noqa: E402
from demo_world.training import diffusion  # noqa: E402

WINDOW = 100


def run(precision: str, steps: int, data: dict) -> dict:
    torch.manual_seed(config.SEED)
    unet, clip, tokenizer = diffusion.new_models()
    ticks = []

    def log(message):  # after steps 0, 50, 100, ... and the last, each after a host sync
        ticks.append(time.perf_counter())
        print(precision, message, flush=True)

    losses = diffusion._fit(unet, clip, tokenizer, data, steps, diffusion.LR, warmup=200, max_weight=float("inf"),
                            gen=torch.Generator().manual_seed(config.SEED + 3), ema_warm_up=True, log=log,
                            device=torch.device("cpu"), autocast_dtype=PRECISIONS[precision])
    windows = [sum(losses[i:i + WINDOW]) / len(losses[i:i + WINDOW]) for i in range(0, steps, WINDOW)]
    return {"ms_per_step": 1000 * (ticks[-1] - ticks[0]) / max(1, steps - 1), "eps_mse_per_window": windows}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = diffusion.cached_latents(print)  # the shipped VAE's latents, before the weights folder moves
    report = {"machine": machine(torch.device("cpu")),
              "steps": args.steps, "batch": diffusion.BATCH, "window": WINDOW, "runs": {}}
    with tempfile.TemporaryDirectory() as folder:
        config.use_weights_dir(folder)
        try:
            for precision in PRECISIONS:
                report["runs"][precision] = run(precision, args.steps, data)
        finally:
            config.use_weights_dir(config.SHIPPED_WEIGHTS_DIR)
    fp32, bf16 = (report["runs"][p] for p in PRECISIONS)
    report["speedup"] = fp32["ms_per_step"] / bf16["ms_per_step"]
    report["eps_mse_ratio_per_window"] = [b / f for f, b in zip(fp32["eps_mse_per_window"], bf16["eps_mse_per_window"])]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("speedup", "eps_mse_ratio_per_window")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
