"""Retrain the demo world from scratch: `python -m demo_world.train [--stage STAGE]`.

Stages run in dependency order: the VAE, then text encoder + UNet on VAE
latents (trained, then outline-weighted), then the classifiers, then the evaluation that fills the training
report (docs/demo_world/TRAINING.md). Everything is seeded from config.SEED.
"""
import argparse
import json
import os
import platform
import time
from pathlib import Path

from . import config
from .comfy_host import ensure_comfy

ensure_comfy()

import torch  # noqa: E402

from .training import report  # noqa: E402

STAGES = ["vae", "diffusion", "outline", "classifiers", "evaluate"]
CYCLED_STAGES = ("outline",)  # a stopped run resumes these at their next cycle
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
# What torch reports for an x86 CPU below AVX-512: it has no bf16 arithmetic, and bf16 autocast is emulated there
# (a 2-core AVX2 EPYC: 8.2 s a UNet step against 0.54 s in fp32; bench/results/train_precision_probe_avx2_2026-11-29.json).
CPUS_WITHOUT_BF16 = ("DEFAULT", "NO AVX", "AVX2")


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def machine(device):
    cpu = platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    where = f"{cpu} ({os.cpu_count()} cores, shared), {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    return f"{torch.cuda.get_device_name(device)}; {where}" if device.type == "cuda" else where


def precision_problem(precision, device):
    """Why `precision` should not train on `device`, or None."""
    capability = torch.backends.cpu.get_cpu_capability()
    if precision == "bf16" and device.type == "cpu" and capability in CPUS_WITHOUT_BF16:
        return (f"--precision bf16: this CPU has no bf16 arithmetic (torch reports {capability}), so bf16 autocast "
                f"runs emulated, about 15x slower than fp32; use --precision fp32 here (bf16 needs AVX-512 or a GPU)")
    return None


def run_stage(stage, device, cycles, autocast_dtype):
    if stage == "vae":
        from .training import vae
        return vae.train(log, device)
    if stage == "diffusion":
        from .training import diffusion
        return diffusion.train(log, device, autocast_dtype)
    if stage == "outline":
        from .training import diffusion
        return diffusion.outline(log, device, cycles, autocast_dtype)
    if stage == "classifiers":
        from .training import classifiers
        return classifiers.train(log, device)
    from .training import evaluate
    return evaluate.run(log)  # samples through ComfyUI, which picks its own device


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", choices=["all"] + STAGES, default="all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the networks train (default: cuda when there is one); the training data is "
                             "always made on the CPU")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                        help="arithmetic of the UNet stages' forward passes (weights, gradients and optimizer stay "
                             "fp32); bf16 autocast is cheaper on a CPU with bf16 matrix units, refused on one without, see "
                             "docs/demo_world/README.md")
    parser.add_argument("--out", type=Path,
                        help="folder for the weights and the training report (default: over the shipped ones in "
                             "demo_world/weights and docs/demo_world); stages after the first read their inputs there")
    parser.add_argument("--resume", action="store_true",
                        help="continue a stopped run: skip the stages its training_stats.json holds, and continue "
                             "outline from its last finished cycle")
    args = parser.parse_args()
    device = torch.device(args.device)
    problem = precision_problem(args.precision, device)
    if problem:
        parser.error(problem)
    if args.out:
        config.use_weights_dir(args.out)
        report.use_dir(args.out)
    torch.set_num_threads(args.threads)
    finished = report.load_stats() if args.resume else {}
    for stage in STAGES if args.stage == "all" else [args.stage]:
        if stage in finished:
            log(f"stage {stage}: finished before, skipped")
            continue
        cycles = report.CycleLog(stage, resume=args.resume) if stage in CYCLED_STAGES else None
        if cycles and cycles.done():
            log(f"stage {stage}: resuming after cycle {cycles.done()}")
        log(f"stage {stage} on {machine(device)}")
        result = {**run_stage(stage, device, cycles, PRECISIONS[args.precision]), "machine": machine(device)}
        stats = report.load_stats()  # re-read: stages may run side by side in separate processes
        stats[stage] = result
        report.save_stats(stats)
        report.write(stats)
        if cycles:
            cycles.close()
    log(json.dumps({k: round(v.get("minutes", 0), 1) for k, v in report.load_stats().items()}))


if __name__ == "__main__":
    main()
