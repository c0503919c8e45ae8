"""The demo world's diffusion training step with CUDA graphs off and on, from the same start (#3)

    python -m bench.gpu.train_probe --out $OUT [--steps 400]
    python -m bench.gpu.train_probe --out /tmp/probe --steps 3     # CPU dry run: the eager half only

Retraining the demo UNet means 23,000 steps of demo_world.training.diffusion._fit (about 2 h in bf16 on the
2-core CPU). On a GPU a step of so small a network is mostly kernel launches and Python, which a replayed
CUDA graph skips. Both runs start from the shipped UNet and text encoder, train on random latents of the
real shape (speed does not depend on their values) with the outline stage's weighting, and write their
weights to a temporary folder, never over the shipped ones. `ms_per_step` runs from the end of the first
step to the end of the last (the graphed run's warm-up steps and capture included, which many steps
amortise); `max_abs_diff` is the largest difference between the two runs' final UNet weights. Written to
train_probe.json.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
import warnings
from pathlib import Path

from demo_world.comfy_host import ensure_comfy

ensure_comfy()

import torch  # noqa: E402

from demo_world import config  # noqa: E402
from demo_world.dataset import OBJECTS, STYLES  # noqa: E402
from demo_world.training import diffusion  # noqa: E402

TRAIN_IMAGES = diffusion.PER_PAIR * len(OBJECTS) * len(STYLES)


def probe(mode: str, steps: int, device: torch.device, folder: Path) -> tuple[dict, dict]:
    """One run of `steps` steps; its report and its final UNet weights."""
    unet, clip, tokenizer = diffusion.shipped_models()
    data = {"latents": torch.randn(TRAIN_IMAGES, config.LATENT_CHANNELS, 16, 16, generator=torch.Generator().manual_seed(0)),
            "objects": torch.arange(TRAIN_IMAGES) % len(OBJECTS),
            "styles": torch.arange(TRAIN_IMAGES) // len(OBJECTS) % len(STYLES)}
    pixel_weights = 0.5 + torch.rand(TRAIN_IMAGES, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    ticks = []

    def log(message):  # _fit logs after steps 0, 50, 100, ... and the last, each time after a host sync
        ticks.append(time.perf_counter())
        print(mode, message, flush=True)

    shipped = config.UNET_FILE, config.TEXT_ENCODER_FILE
    config.UNET_FILE, config.TEXT_ENCODER_FILE = folder / f"{mode}_unet.safetensors", folder / f"{mode}_te.safetensors"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            losses = diffusion._fit(unet, clip, tokenizer, data, steps, diffusion.OUTLINE_LR, warmup=100,
                                    max_weight=diffusion.OUTLINE_MAX_WEIGHT, gen=torch.Generator().manual_seed(2),
                                    ema_warm_up=False, log=log, device=device, pixel_weights=pixel_weights,
                                    cuda_graphs=mode == "graphed")
    finally:  # the next run reads the shipped weights again
        config.UNET_FILE, config.TEXT_ENCODER_FILE = shipped
    report = {"ms_per_step": 1000 * (ticks[-1] - ticks[0]) / max(1, steps - 1),
              "first_losses": losses[:3], "last_losses": losses[-3:],
              "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]}
    return report, {k: v.detach().float().cpu() for k, v in unet.state_dict().items()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    report: dict = {"gpu": torch.cuda.get_device_name() if cuda else None, "torch": torch.__version__,
                    "steps": args.steps, "batch": diffusion.BATCH, "train_images": TRAIN_IMAGES}
    weights = {}
    with tempfile.TemporaryDirectory() as folder:
        for mode in ("eager", "graphed") if cuda else ("eager",):
            try:
                report[mode], weights[mode] = probe(mode, args.steps, device, Path(folder))
            except Exception as e:  # noqa: BLE001
                report[mode] = {"error": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc()[-3000:]}
            (out / "train_probe.json").write_text(json.dumps(report, indent=1) + "\n")
    if len(weights) == 2:
        report["max_abs_diff"] = max(float((weights["eager"][k] - weights["graphed"][k]).abs().max()) for k in weights["eager"])
        report["speedup"] = report["eager"]["ms_per_step"] / report["graphed"]["ms_per_step"]
        # The UNet stages' steps, at the graphed rate: what a whole retrain of the UNet costs there.
        total = diffusion.STEPS + diffusion.OUTLINE_CYCLES * diffusion.OUTLINE_STEPS
        report["unet_retrain_minutes_at_graphed_rate"] = total * report["graphed"]["ms_per_step"] / 60000
    (out / "train_probe.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("eager", "graphed")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
