"""Does bf16 arithmetic cost SPARE's erasure quality? The demo world's figures come from fp32 on the CPU; on a GPU
the engine computes in bf16 (autocast: matmuls and convolutions in bf16, norms in fp32). This probe erases each
target twice at the defaults, seed 0, with the engine_check's prompts and evaluation: once in fp32, once with the
whole network fed bf16 (every layer, norms included, in bf16: ComfyUI's layers cast their weights to their input's
dtype, and so do the adapters, whose weights stay fp32), which is coarser than the GPU's autocast. Both LoRAs are judged the same way,
applied to the fp32 model. A bf16 erasure that scores as the fp32 one says bf16 is safe for the quality; the seeds'
spread in `engine_check.md` says how much one erasure moves by chance.

    python -m bench.precision_probe                     # the engine check's six targets, ~25 min on 2 cores
    python -m bench.precision_probe --targets Neon,moon --name precision_probe_more

Needs a CPU with bf16 arithmetic to be quick (AVX512-BF16 here); results: bench/results/<name>.json and .md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from dataclasses import asdict, replace

import torch

from bench.engine_check import DEFAULT_TARGETS
from bench.run import PROFILES, RESULTS, Bench

MODES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def run(targets: list[str], name: str, threads: int) -> dict:
    from bench.baselines import spare

    profile = replace(PROFILES["full"], name=name)
    bench = Bench(profile, threads)
    engine_denoiser = bench.engine_denoiser
    compute_dtype = {"value": torch.float32}

    @contextlib.contextmanager
    def denoiser_in_compute_dtype(model, clip, resolution=None):
        with engine_denoiser(model, clip, resolution) as denoiser:
            denoiser.dtype = compute_dtype["value"]  # what ComfyDenoiser feeds the network
            yield denoiser

    result = {"name": name, "targets": targets, "config": asdict(spare.SpareConfig()), "modes": list(MODES),
              "machine": f"{platform.processor() or platform.machine()}, {threads} torch threads, torch {torch.__version__}",
              "created": time.strftime("%Y-%m-%d %H:%M"), "rows": []}
    for target in targets:
        task = bench.task([target])  # a style's surrogate ranking runs here, in fp32 for both modes
        states = {}
        for mode, dtype in MODES.items():
            compute_dtype["value"] = dtype
            bench.engine_denoiser = denoiser_in_compute_dtype
            try:
                erased = bench.erase("SPARE", spare.SpareConfig(), task)
            finally:
                bench.engine_denoiser = engine_denoiser
            scores, eval_seconds = bench.evaluate(erased["state"], 1.0, task)
            states[mode] = erased["state"]
            result["rows"].append({"target": target, "domain": task.domain, "surrogate": task.surrogate_concepts[0],
                                   "mode": mode, **scores, "seconds": erased["seconds"],
                                   "stage_seconds": erased["info"]["stage_seconds"], "eval_seconds": eval_seconds,
                                   "final_loss": erased["final_loss"]})
            bench.log(f"[{bench.minutes():5.1f} min] {target:14s} {mode}: "
                      + " ".join(f"{m}={scores[m]:.3f}" for m in ("UA", "IRA", "CRA")) + f"  erase {erased['seconds']:.1f}s")
        # Saliency in bf16 may choose other layers; the weights are compared where both have them.
        layers = {mode: {k.rsplit(".", 2)[0] for k in state if k.endswith(".lora_down.weight")} for mode, state in states.items()}
        shared = [k for k in states["fp32"] if k.endswith(".weight") and k in states["bf16"]]
        result["rows"][-1].update({
            "layers": {mode: len(names) for mode, names in layers.items()},
            "layers_shared": len(layers["fp32"] & layers["bf16"]),
            "lora_max_abs_diff": max((states["fp32"][k].float() - states["bf16"][k].float()).abs().max().item() for k in shared),
            "lora_max_abs_fp32": max(states["fp32"][k].float().abs().max().item() for k in shared),
        })
        result["minutes"] = bench.minutes()
        write(result)
    result["host_weights_unchanged"] = bench.weights_hash(bench.model.model.diffusion_model) == bench.host_hash
    write(result)
    return result


def markdown(result: dict) -> str:
    lines = [f"# bf16 against fp32 arithmetic in SPARE's erasure: `{result['name']}`", "",
             "SPARE at its defaults (`SpareConfig()`), seed 0, the engine check's prompts and evaluation (every object x "
             "style pair, seeds 0 and 1, 288 images, judged with the LoRA on the fp32 model). fp32: as every demo-world "
             "figure. bf16: the whole network fed bf16 during the erasure (data-free latents, saliency, timestep "
             "profile, distillation), norms and the adapters' products included (their weights fp32). "
             f"Machine: {result['machine']}; {result.get('minutes', 0):.1f} min; host weights unchanged: "
             f"{result.get('host_weights_unchanged')}.", "",
             "| target | surrogate | mode | UA | IRA | CRA | erase (s) | final loss | layers adapted (fp32, bf16, both) "
             "| largest LoRA difference / largest weight, on the shared layers |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        pct = " | ".join(f"{100 * row[m]:.1f}" for m in ("UA", "IRA", "CRA"))
        layers = f"{row['layers']['fp32']}, {row['layers']['bf16']}, {row['layers_shared']}" if "layers" in row else ""
        diff = f"{row['lora_max_abs_diff']:.4f} / {row['lora_max_abs_fp32']:.4f}" if "lora_max_abs_diff" in row else ""
        lines.append(f"| {row['target']} | {row['surrogate']} | {row['mode']} | {pct} | {row['seconds']:.1f} | "
                     f"{row['final_loss']:.4f} | {layers} | {diff} |")
    means = {}
    for mode in result["modes"]:
        rows = [r for r in result["rows"] if r["mode"] == mode]
        means[mode] = {m: sum(r[m] for r in rows) / len(rows) for m in ("UA", "IRA", "CRA")} if rows else None
    lines += ["", "| mode | mean UA | mean IRA | mean CRA |", "|---|---|---|---|"]
    lines += [f"| {mode} | " + " | ".join(f"{100 * v[m]:.1f}" for m in ("UA", "IRA", "CRA")) + " |"
              for mode, v in means.items() if v]
    return "\n".join(lines) + "\n"


def write(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{result['name']}.json").write_text(json.dumps(result, indent=1))
    (RESULTS / f"{result['name']}.md").write_text(markdown(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS))
    parser.add_argument("--name", default="precision_probe")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    run([t for t in args.targets.split(",") if t], args.name, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
