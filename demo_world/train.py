"""Retrain the demo world from scratch: `python -m demo_world.train [--stage STAGE]`.

Stages run in dependency order: the VAE, then text encoder + UNet on VAE
latents (trained, refined, then outline-weighted), then the classifiers, then the evaluation that fills the training
report (docs/demo_world/TRAINING.md). Everything is seeded from config.SEED.
"""
import argparse
import json
import os
import platform
import time

from .comfy_host import ensure_comfy

ensure_comfy()

import torch  # noqa: E402

from .training import report  # noqa: E402

STAGES = ["vae", "diffusion", "refine", "outline", "classifiers", "evaluate"]


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def machine():
    cpu = platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu} ({os.cpu_count()} cores, shared), {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def run_stage(stage):
    if stage == "vae":
        from .training import vae
        return vae.train(log)
    if stage == "diffusion":
        from .training import diffusion
        return diffusion.train(log)
    if stage == "refine":
        from .training import diffusion
        return diffusion.refine(log)
    if stage == "outline":
        from .training import diffusion
        return diffusion.outline(log)
    if stage == "classifiers":
        from .training import classifiers
        return classifiers.train(log)
    from .training import evaluate
    return evaluate.run(log)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", choices=["all"] + STAGES, default="all")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for stage in STAGES if args.stage == "all" else [args.stage]:
        log(f"stage {stage} on {machine()}")
        result = {**run_stage(stage), "machine": machine()}
        stats = report.load_stats()  # re-read: stages may run side by side in separate processes
        stats[stage] = result
        report.save_stats(stats)
        report.write(stats)
    log(json.dumps({k: round(v.get("minutes", 0), 1) for k, v in stats.items()}))


if __name__ == "__main__":
    main()
