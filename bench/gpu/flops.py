"""Arithmetic of one distill step on SD1.5 / SDXL, counted on the CPU (meta tensors, no memory), and what share of
a card's peak a measured step time reaches (#7).

    python -m bench.gpu.flops [--step-ms sd15=198,sdxl=877] [--peak-tflops 989]

ComfyUI's own UNetModel is built on the meta device with the real configs (bench/gpu/checkpoints.py) and run once
forward and once backward under torch.utils.flop_counter.FlopCounterMode. The backward is of the input only (frozen
weights get no gradient; the LoRA's are negligible), through the whole network: an upper bound, since the real
backward stops at the earliest adapted layer. A distill step of `rows` rows (forget + retain) with gradient
checkpointing runs the teacher's forward, the student's forward, the student's recomputation and the backward.
Writes bench/results/unet_flops.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.gpu import checkpoints

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "unet_flops.json"


def unet_flops(family: str) -> tuple[float, float]:
    """(forward, input-gradient backward) FLOPs of one image at the family's native resolution (the nodes')."""
    from bench.host import setup

    setup()  # ComfyUI and the pack importable, as the demo-world bench has them
    import comfy.ldm.modules.attention as attention
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfyui_spare.nodes.comfy_denoiser import NATIVE_RESOLUTION
    from torch.utils.flop_counter import FlopCounterMode

    config = checkpoints.UNET_CONFIGS[family]
    side = NATIVE_RESOLUTION[checkpoints.FAMILIES[family]] // 8
    with torch.device("meta"):
        unet = UNetModel(**config, dtype=torch.float32, device="meta", operations=comfy.ops.disable_weight_init)
    unet.requires_grad_(False)
    x = torch.randn(1, config["in_channels"], side, side, device="meta", requires_grad=True)
    extra = {"y": torch.randn(1, config["adm_in_channels"], device="meta")} if config["adm_in_channels"] else {}
    context = torch.randn(1, 77, config["context_dim"], device="meta")
    # The CPU's default attention asks the allocator for free memory, which meta tensors do not have; plain
    # scaled_dot_product_attention counts the same FLOPs. ComfyUI's own choice is put back afterwards.
    chosen, attention.optimized_attention = attention.optimized_attention, attention.attention_pytorch
    try:
        with FlopCounterMode(display=False) as counter:
            out = unet(x, torch.ones(1, device="meta"), context=context, **extra)
        forward = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            out.sum().backward()
    finally:
        attention.optimized_attention = chosen
    return float(forward), float(counter.get_total_flops())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=8, help="rows per distill step (batch 4 forget + 4 retain)")
    parser.add_argument("--step-ms", default="", help="measured graphed step times, e.g. sd15=198,sdxl=877")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the card's dense bf16 peak (H100 / H200 SXM: 989)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    measured = dict(item.split("=") for item in args.step_ms.split(",") if item)
    report = {"rows": args.rows, "peak_tflops": args.peak_tflops, "models": {}}
    for family in checkpoints.UNET_CONFIGS:
        forward, backward = unet_flops(family)
        step = args.rows * (3 * forward + backward)  # teacher + student + recomputation, then the backward
        rec = {"forward_tflop_per_image": forward / 1e12, "backward_tflop_per_image": backward / 1e12,
               "step_tflop": step / 1e12}
        if family in measured:
            seconds = float(measured[family]) / 1e3
            rec.update({"step_ms": float(measured[family]), "achieved_tflops": step / seconds / 1e12,
                        "share_of_peak": step / seconds / 1e12 / args.peak_tflops})
        report["models"][family] = rec
        print(family, json.dumps(rec), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
