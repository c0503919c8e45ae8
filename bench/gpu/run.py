"""SPARE at real scale (SD1.5, SDXL) on one GPU: time, VRAM, storage, against ESD-x in the same run (issue #7).

    python -m bench.gpu.run                         # GPU: sd15 and sdxl, results in bench/results/
    python -m bench.gpu.run --models sd15 --out $OUT
    python -m bench.gpu.run --tiny --models sd15    # CPU smoke test: the test suite's tiny SD1.5, 16 px
    python -m bench.gpu.run --merge a.json b.json   # one gpu_<card>.json/.md from per-model runs

Per model family:
  1. a random-weight checkpoint in the real single-file format (bench/gpu/checkpoints.py), written
     now, loaded with ComfyUI's checkpoint loader (what CheckpointLoaderSimple calls);
  2. weights hash of the input MODEL (spare_engine.weights_hash after load_models_gpu);
  3. SPARE exactly as the three nodes run it: for each stage its own `engine_denoiser(model, clip,
     resolution)` and the engine function with the node's arguments, the defaults read from the
     nodes' own schemas, under torch.inference_mode() as ComfyUI's executor runs nodes; per stage
     wall time, steps, steps/s, peak VRAM (max_memory_allocated / reserved, reset per stage);
     the adapter's file size;
  4. ESD-x (bench/baselines/esd.py) at its paper defaults (1000 iterations, lr 1e-5, 50-step DDIM
     grid for z_t, cfg 3) on the same denoiser: N iterations measured, 1000 extrapolated (stated);
  5. optionally (--also-checkpointed) distill again with gradient checkpointing, the proposed
     engine change: time, peak VRAM, and its LoRA against the first;
  6. optionally (--profile) a torch.profiler table of distill's training steps;
  7. the weights hash again, after everything that ran on the MODEL;
  8. SD1.5 (or --server): the same erase once through a real ComfyUI server via /prompt
     (CheckpointLoaderSimple -> SpareSaliencyLocalize -> SpareTimestepProfile -> SpareDistill),
     timed and compared with the direct run, and the server's MODEL hashed afterwards.
Results: <out>/gpu_<card>.json and .md; the JSON is rewritten after every phase, so a run cut
short still leaves what it measured.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import datetime
import functools
import gc
import hashlib
import importlib
import json
import math
import os
import platform
import re
import resource
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"

# One concept, one surrogate, two retain prompts (the empty prompt is always retained as well).
TARGET = "a painting in the style of Vincent van Gogh"
SURROGATE = "a painting"
RETAIN = ["a painting in the style of Claude Monet", "a photo of a dog"]

ALLOCATORS = ("native", "cudaMallocAsync")  # torch's CUDA allocator backends

# Issue #7's acceptance targets.
TARGETS = {
    "sd15": {"erase_s": 60.0, "peak_gib": 8.0, "adapter_mib": 10.0},
    "sdxl": {"erase_s": 180.0, "peak_gib": 16.0},
    "speedup_vs_esd_x": 20.0,
    "server_vs_direct": 0.10,
}
ESD_PAPER_ITERATIONS = 1000
TINY_RESOLUTION = 16  # --tiny: 2x2 latents; the tiny UNet has no down-sampling
# --tiny also shortens distill (both in the direct and the /prompt run) to keep the CPU smoke test
# under a minute and a half on two shared cores; every other node input keeps its default.
TINY_OVERRIDES = {"distill": {"steps": 20}}
GiB = 2**30


def engine_source_digest(root: Path = ROOT) -> str:
    """sha256 of the engine's and the nodes' Python sources under `root`: which code a result measured. The GPU
    machine gets a copy of the working tree without .git, so a commit cannot be read there; the digest of a
    commit is this function run on its checkout (e.g. `git worktree add /tmp/c COMMIT`)."""
    digest = hashlib.sha256()
    for path in sorted([*(root / "spare_engine").rglob("*.py"), *(root / "nodes").rglob("*.py")]):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------- host


def comfy_dir() -> str:
    own = os.environ.get("SPARE_COMFYUI_DIR")
    if own:
        return own
    host = ROOT / ".host" / "host.json"
    if not host.exists():
        raise SystemExit("no ComfyUI: set SPARE_COMFYUI_DIR=/path/to/ComfyUI or run `python3 scripts/setup_host.py`")
    return json.loads(host.read_text())["comfyui"]


def setup_host():
    """ComfyUI first on sys.path (its `nodes` module must win over the pack's `nodes/`), the pack as
    `comfyui_spare` (bench/host.py: one spare_engine shared with the baselines). Returns engine_denoiser."""
    comfy = comfy_dir()
    sys.path[:] = [p for p in sys.path if p not in ("", str(ROOT), os.getcwd())]
    sys.path.insert(0, comfy)
    sys.path.append(str(ROOT))
    sys.path.append(str(ROOT / "scripts"))
    # A server started later (scripts/comfy_server.host()) uses the same ComfyUI and python.
    os.environ.setdefault("SPARE_COMFYUI_DIR", comfy)
    os.environ.setdefault("SPARE_COMFYUI_PYTHON", sys.executable)
    import comfy.cli_args

    comfy.cli_args.args.cpu = not torch.cuda.is_available()
    from bench.host import setup

    return setup()


def node_defaults() -> dict[str, dict]:
    """Every widget default of the three SPARE nodes, read from their schemas."""
    out = {}
    for key, module, cls in (("localize", "localize", "SaliencyLocalize"),
                             ("profile", "timestep_profile", "TimestepProfileNode"),
                             ("distill", "distill", "SpareDistill")):
        node = getattr(importlib.import_module(f"comfyui_spare.nodes.{module}"), cls)
        schema = node.define_schema()
        out[key] = {"node_id": schema.node_id,
                    "inputs": {i.id: i.default for i in schema.inputs if getattr(i, "default", None) is not None}}
    return out


# ---------------------------------------------------------------------------------------- measuring


def cuda() -> bool:
    return torch.cuda.is_available()


def sync() -> None:
    if cuda():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if cuda():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def memory() -> dict:
    if cuda():
        return {"peak_allocated_gib": torch.cuda.max_memory_allocated() / GiB,
                "peak_reserved_gib": torch.cuda.max_memory_reserved() / GiB,
                "allocated_now_gib": torch.cuda.memory_allocated() / GiB}
    # No VRAM on the CPU: the process's lifetime peak RSS instead (not reset per stage).
    return {"peak_allocated_gib": None, "peak_reserved_gib": None, "allocated_now_gib": None,
            "cpu_maxrss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB}


def free_memory() -> None:
    import comfy.model_management

    gc.collect()
    comfy.model_management.soft_empty_cache()
    if cuda():
        torch.cuda.empty_cache()


class Stage:
    """Times one stage: wall clock around it, a timestamp per engine step (the callback), peak memory.

    The callback also drives the node's own StepProgress (progress bar, cancel check), as in a node.
    """

    def __init__(self, name: str, unit: str, progress_label: str | None = None):
        self.name, self.unit = name, unit
        self.progress_label = progress_label
        self.ticks: list[float] = []
        self.done: list[int] = []  # each callback's step count: a callback may report several steps (saliency passes)
        self.losses: list[float] = []
        self.total = None
        self.record: dict = {"unit": unit}
        # (step, reserved GiB then, peak reserved GiB so far) at each step where the peak grew by 10 MiB or
        # more: which step set the stage's peak (distill: eager warm-up steps 1-3, the capture at step 4),
        # where max_memory_reserved alone says only how high.
        self.reserved_growth: list[list[float]] = []
        self.marks: dict[str, float] = {}  # seconds from the stage's start; see `denoiser`

    @contextlib.contextmanager
    def denoiser(self, entered):
        """`entered` (an engine_denoiser context) with marks of what comes before the first step: the model
        loaded, the prompts encoded (end of the first encode), and the first pass with gradients (the data-free
        latents are done; saliency's first sample, distill's first step). Each mark syncs the device once."""
        def mark(name: str) -> None:
            if name not in self.marks:
                sync()
                self.marks[name] = time.perf_counter() - self.started

        with entered as denoiser:
            mark("model_loaded")
            encode, predict = denoiser.encode_prompts, denoiser.predict_eps

            def encode_prompts(prompts):
                conds = encode(prompts)
                mark("prompts_encoded")
                return conds

            def predict_eps(x_t, t, cond):
                if torch.is_grad_enabled():
                    mark("first_grad_pass")
                return predict(x_t, t, cond)

            denoiser.encode_prompts, denoiser.predict_eps = encode_prompts, predict_eps
            try:
                yield denoiser
            finally:
                del denoiser.encode_prompts, denoiser.predict_eps

    def __enter__(self):
        free_memory()
        reset_peak()
        self.record["allocated_before_gib"] = torch.cuda.memory_allocated() / GiB if cuda() else None
        self.progress = None
        if self.progress_label:
            from comfyui_spare.nodes.engine_run import StepProgress

            self.progress = StepProgress(self.progress_label)
        self.started = time.perf_counter()
        return self

    def callback(self, step: int, total: int, loss: float | None = None) -> None:
        sync()
        self.ticks.append(time.perf_counter())
        self.done.append(step)
        self.total = total
        if cuda():
            peak = torch.cuda.max_memory_reserved() / GiB
            if not self.reserved_growth or peak >= self.reserved_growth[-1][2] + 0.01:
                self.reserved_growth.append([step, round(torch.cuda.memory_reserved() / GiB, 3), round(peak, 3)])
        if loss is not None:
            self.losses.append(loss)
        if self.progress is not None:
            self.progress(step, total, loss)

    def __exit__(self, kind, error, tb):
        sync()
        ended = time.perf_counter()
        if self.progress is not None:
            self.progress.close()
        wall = ended - self.started
        n = self.done[-1] if self.done else 0
        self.record.update({
            "wall_s": wall,
            "steps": n,
            "steps_total": self.total,
            "steps_per_s": n / wall if wall > 0 else None,
            # The step loop alone: from the first step's end to the last's (model load, prompts and
            # the data-free latents come before the first step).
            "loop_steps_per_s": (n - self.done[0]) / (self.ticks[-1] - self.ticks[0]) if len(self.ticks) >= 2 and self.ticks[-1] > self.ticks[0] else None,
            "before_first_step_s": self.ticks[0] - self.started if n else None,
            "after_last_step_s": ended - self.ticks[-1] if n else None,
            **memory(),
        })
        if self.reserved_growth:
            self.record["reserved_growth"] = self.reserved_growth
        if self.marks:
            self.record["marks_s"] = self.marks
        if kind is not None:
            self.record["error"] = f"{kind.__name__}: {error}"
        return False


def scratch_folder(prefix: str) -> Path:
    """A fresh temporary folder, removed with everything in it when the process exits."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def scratch_checkpoint(family: str, tiny: bool) -> tuple[Path, int | None]:
    """For the one-call GPU tools (diagnose.py, graphs_probe.py): a random-weight checkpoint of `family`
    in a fresh temporary folder, removed with its file when the process exits (--tiny: the tests' tiny SD1.5
    for a CPU dry run), and the resolution input to erase at (None: the model's native one)."""
    from bench.gpu import checkpoints

    path = scratch_folder("spare-ckpt-") / f"random_{family}.safetensors"
    if tiny:
        checkpoints.write_tiny_checkpoint("sd15", path)
        return path, TINY_RESOLUTION
    checkpoints.write_checkpoint(family, path, device="cuda" if cuda() else "cpu")
    return path, None


# ------------------------------------------------------------------------------------------- stages


def run_spare(engine_denoiser, model, clip, resolution: int, defaults: dict, adapter_dir: Path, out: dict) -> dict:
    """The three nodes' execute() bodies (nodes/localize.py, timestep_profile.py, distill.py), minus the plots."""
    from comfyui_spare.spare_engine import (FILE_DTYPES, DistillConfig, compute_saliency, compute_timestep_profile,
                                            distill)

    loc, prof, dis = defaults["localize"]["inputs"], defaults["profile"]["inputs"], defaults["distill"]["inputs"]
    res = resolution or None
    stages = out.setdefault("stages", {})

    with Stage("saliency", "gradient samples", "saliency") as s:
        stages["saliency"] = s.record  # kept even if the stage fails
        with s.denoiser(engine_denoiser(model, clip, res)) as denoiser:
            row_fraction = loc["row_fraction"]
            saliency = compute_saliency(
                denoiser, [TARGET], n_latents=loc["samples"], top_modules=loc["top_modules"],
                row_fraction=None if row_fraction >= 1.0 else row_fraction, seed=loc["seed"], callback=s.callback)
    stages["saliency"]["layers_chosen"] = len(saliency.select())
    stages["saliency"]["layers_candidate"] = len(saliency.row_scores)

    if prof["scheme"] != "concept":
        raise ValueError(f"the Timestep Profile node's default scheme is {prof['scheme']!r}; this benchmark expects 'concept'")
    with Stage("timestep_profile", "(pair, noise level) measurements", "timestep profile") as s:
        stages["timestep_profile"] = s.record  # kept even if the stage fails
        with s.denoiser(engine_denoiser(model, clip, res)) as denoiser:
            profile = compute_timestep_profile(
                denoiser, [TARGET], [SURROGATE], n_latents=prof["samples"], uniform_mix=prof["uniform_mix"],
                seed=prof["seed"], callback=s.callback)

    config = DistillConfig(rank=dis["rank"], steps=dis["steps"], lr=dis["learning_rate"],
                           forget_weight=dis["forget_weight"], retain_weight=dis["retain_weight"],
                           batch_size=dis["batch_size"], seed=dis["seed"])
    with Stage("distill", "optimisation steps", "distill") as s:
        stages["distill"] = s.record  # kept even if the stage fails
        with s.denoiser(engine_denoiser(model, clip, res)) as denoiser:
            erasure = distill(denoiser, [TARGET], [SURROGATE], list(RETAIN), saliency, profile, config,
                              callback=s.callback)
    stages["distill"]["final_loss"] = s.losses[-1] if s.losses else None
    stages["distill"]["config"] = {k: v for k, v in dataclasses.asdict(config).items() if k != "autocast_dtype"}
    stages["distill"]["cuda_graphs_used"] = erasure.metadata["config"]["cuda_graphs"]  # False too if capture failed

    started = time.perf_counter()
    path = adapter_dir / "spare_erasure.safetensors"
    erasure.save(path, FILE_DTYPES[dis["save_dtype"]])  # the node's default precision for the file
    save_s = time.perf_counter() - started
    state = erasure.state_dict()
    out["adapter"] = {
        "bytes": path.stat().st_size,
        "mib": path.stat().st_size / 2**20,
        "tensor_bytes": sum(t.numel() * t.element_size() for t in state.values()),
        "layers": len(erasure.module_names) if hasattr(erasure, "module_names") else None,
        "save_s": save_s,
        "rank": config.rank,
        "dtype": dis["save_dtype"],
    }
    walls = [stages[k]["wall_s"] for k in ("saliency", "timestep_profile", "distill")]
    out["erase_s"] = sum(walls) + save_s
    out["peak_allocated_gib"] = max((stages[k]["peak_allocated_gib"] or 0) for k in stages) if cuda() else None
    out["peak_reserved_gib"] = max((stages[k]["peak_reserved_gib"] or 0) for k in stages) if cuda() else None
    return {"saliency": saliency, "profile": profile, "config": config, "erasure": erasure}


def run_distill_checkpointed(engine_denoiser, model, clip, resolution: int, artifacts: dict, reference) -> dict:
    """Distill again with the engine's gradient checkpointing on, same saliency, profile and config:
    its time, peak VRAM and distance to the reference LoRA."""
    from comfyui_spare.spare_engine import distill

    config = dataclasses.replace(artifacts["config"], gradient_checkpointing=True)
    with Stage("distill_checkpointed", "optimisation steps", "distill (checkpointed)") as s:
        with engine_denoiser(model, clip, resolution or None) as denoiser:
            erasure = distill(denoiser, [TARGET], [SURROGATE], list(RETAIN), artifacts["saliency"],
                              artifacts["profile"], config, callback=s.callback)
    rec = s.record
    diff = max(float((erasure.up[n] - reference.up[n]).abs().max()) for n in reference.up)
    scale = max(float(reference.up[n].abs().max()) for n in reference.up) or 1.0
    rec.update({"applied_by": "engine (DistillConfig.gradient_checkpointing=True)",
                "lora_up_max_abs_diff": diff, "lora_up_max_abs": scale, "final_loss": s.losses[-1] if s.losses else None})
    return rec


def run_esd_x(engine_denoiser, model, clip, resolution: int, iterations: int) -> dict:
    """ESD-x at its paper settings for `iterations` steps; the 1000-step time is extrapolated from them.

    A step's cost grows with its z_t depth (`stop` DDIM steps, uniform in [1, ddim_steps - 2]): it
    is 2 * stop + 5 UNet evaluations. The measured steps (the first, warm-up, left out) give a time
    per evaluation, taken at the paper's mean depth; the plain mean and, with enough steps, a
    linear fit a + b * stop are reported as well.
    """
    import numpy as np

    from bench.baselines import esd
    from bench.baselines.common import state_dict_bytes

    paper = esd.ESDConfig.paper("x")
    config = dataclasses.replace(paper, iterations=iterations)
    stops: list[int] = []
    original = esd.ddim_partial

    def recording(*args, **kwargs):
        stops.append(int(kwargs["stop"]))
        return original(*args, **kwargs)

    esd.ddim_partial = recording
    try:
        with Stage("esd_x", "iterations") as s:
            with engine_denoiser(model, clip, resolution or None) as denoiser:
                state, info = esd.erase(denoiser, [TARGET], config=config, callback=s.callback)
    finally:
        esd.ddim_partial = original
    rec = s.record
    # Step k (k >= 2) lasted ticks[k-1] - ticks[k-2] and sampled z_t with stops[k-1] DDIM steps.
    step_times = np.diff(np.array(s.ticks))
    step_stops = np.array(stops[1:len(s.ticks)], dtype=float)
    mean_stop = (1 + (paper.ddim_steps - 2)) / 2  # randint(1, ddim_steps - 1): uniform on [1, ddim_steps - 2]

    def units(stop):
        # Batch-1 UNet evaluations per iteration: z_t sampling with cfg (2 per DDIM step), the frozen
        # model's e_c and e_0 (2), the trained model's forward and backward (~3).
        return 2 * stop + 5

    fit = None
    if len(step_times):
        per_unit = float(np.mean(step_times / units(step_stops)))
        step_s = per_unit * units(mean_stop)
        if len(step_times) >= 3 and np.ptp(step_stops) > 0:
            b, a = np.polyfit(step_stops, step_times, 1)
            fit = {"a_s": float(a), "b_s_per_ddim_step": float(b), "step_s_at_paper_mean": float(a + b * mean_stop)}
    else:
        per_unit, step_s = None, rec["wall_s"]
    # Before the first tick: model load, prompts, and the first iteration itself (at its own depth).
    first_s = per_unit * units(stops[0]) if per_unit is not None and stops else step_s
    setup_s = max(0.0, (rec["before_first_step_s"] or 0.0) - first_s)
    full = iterations >= paper.iterations
    rec.update({
        "paper_iterations": paper.iterations,
        "measured_iterations": iterations,
        "extrapolated": not full,
        "stops": stops,
        "mean_stop_measured": float(np.mean(stops)) if stops else None,
        "mean_stop_paper": mean_stop,
        "step_model": "step_s = (mean over measured steps of time / (2 * depth + 5)) * (2 * paper mean depth + 5)",
        "step_s_per_unit": per_unit,
        "step_time_linear_fit": fit,
        "step_s_mean_measured": float(step_times.mean()) if len(step_times) else None,
        "step_s": step_s,
        "setup_s": setup_s,
        "paper_total_s": rec["wall_s"] if full else setup_s + paper.iterations * step_s,
        "config": dataclasses.asdict(paper),
        "trained_layers": info["layers"],
        "trainable_params": info["trainable_params"],
        "stored_bytes": state_dict_bytes(state),
        "implementation": "bench/baselines/esd.py (ESD-x: attn2 layers, dense weight deltas)",
    })
    return rec


def model_hash(model) -> tuple[str, float]:
    import comfy.model_management

    from comfyui_spare.spare_engine import weights_hash

    started = time.perf_counter()
    comfy.model_management.load_models_gpu([model])
    digest = weights_hash(model.model)
    return digest, time.perf_counter() - started


def run_profile(engine_denoiser, model, clip, resolution: int, artifacts: dict, out_dir: Path, family: str) -> dict:
    """torch.profiler over 4 of distill's training steps, node settings otherwise.

    Eager steps (the CPU): after 1 skipped and 1 warm-up step; the teacher's and the student's passes are
    labelled by wrapping the denoiser's predict_eps (record_function). Graphed steps (CUDA): only replays, after
    the eager warm-up steps, the capture and 1 more; a replay has no Python, so the table is its kernels alone.
    """
    from torch.profiler import ProfilerActivity, profile, record_function, schedule

    from comfyui_spare.spare_engine import distill
    from comfyui_spare.spare_engine.cuda_graphs import WARMUP_STEPS, use_cuda_graphs

    graphed = use_cuda_graphs(artifacts["config"].cuda_graphs, "cuda" if cuda() else "cpu")
    wait, warmup, active = (WARMUP_STEPS + 1 if graphed else 1), 1, 4
    config = dataclasses.replace(artifacts["config"], steps=wait + warmup + active)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda() else [])
    with profile(activities=activities, schedule=schedule(wait=wait, warmup=warmup, active=active),
                 record_shapes=False, profile_memory=False) as prof:
        with engine_denoiser(model, clip, resolution or None) as denoiser:
            inner = denoiser.predict_eps

            def labelled(x_t, t, cond):
                with record_function("predict_eps/" + ("student (grad)" if torch.is_grad_enabled() else "teacher (no grad)")):
                    return inner(x_t, t, cond)

            denoiser.predict_eps = labelled
            try:
                distill(denoiser, [TARGET], [SURROGATE], list(RETAIN), artifacts["saliency"], artifacts["profile"],
                        config, callback=lambda *a: prof.step())
            finally:
                del denoiser.predict_eps
    events = prof.key_averages()
    sort = "self_device_time_total" if cuda() else "self_cpu_time_total"
    try:
        table = events.table(sort_by=sort, row_limit=30)
    except (AttributeError, KeyError, RuntimeError):  # older torch: the CUDA names
        sort = "self_cuda_time_total"
        table = events.table(sort_by=sort, row_limit=30)
    path = out_dir / f"profile_{family}.txt"
    path.write_text(f"torch.profiler: SPARE distill, {active} recorded training steps ({family}), sorted by {sort}\n\n"
                    + table + "\n")

    def device_us(e, kind: str) -> float:
        prefix = "self_" if kind == "self" else ""
        for name in (f"{prefix}device_time_total", f"{prefix}cuda_time_total"):  # newer torch first
            if hasattr(e, name):
                return float(getattr(e, name))
        return 0.0

    rows = []
    for e in events:
        rows.append({"name": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3,
                     "self_device_ms": device_us(e, "self") / 1e3 if cuda() else None,
                     "cpu_total_ms": e.cpu_time_total / 1e3,
                     "device_total_ms": device_us(e, "") / 1e3 if cuda() else None})
    key = (lambda r: r["self_device_ms"] or 0.0) if cuda() else (lambda r: r["self_cpu_ms"])
    labels = [r for r in rows if r["name"].startswith(("predict_eps/", "spare/"))]  # ours, and the engine's if it labels
    rows = sorted((r for r in rows if r not in labels and not r["name"].startswith("ProfilerStep")), key=key, reverse=True)
    return {"file": path.name, "sorted_by": sort, "recorded_steps": active, "graph_replays": graphed,
            "top": rows[:12], "labels": labels}


# ------------------------------------------------------------------------------------------- server


def erase_prompt(ckpt_name: str, defaults: dict, resolution: int, save_name: str) -> dict:
    loc, prof, dis = defaults["localize"]["inputs"], defaults["profile"]["inputs"], defaults["distill"]["inputs"]
    common = {"model": ["ckpt", 0], "clip": ["ckpt", 1], "targets": TARGET, "resolution": resolution}
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "localize": {"class_type": defaults["localize"]["node_id"], "inputs": {**loc, **common}},
        "profile": {"class_type": defaults["profile"]["node_id"], "inputs": {**prof, **common, "surrogates": SURROGATE}},
        "distill": {"class_type": defaults["distill"]["node_id"], "inputs": {
            **dis, **common, "saliency": ["localize", 0], "timesteps": ["profile", 0], "surrogates": SURROGATE,
            "retain": "\n".join(RETAIN), "save_name": save_name}},
    }


class DevicePoller:
    """Device-wide GPU memory in use (all processes), sampled every 0.5 s: the server's footprint.

    Every sample is a driver call from this process into the GPU the server is training on; at 50 ms
    the /prompt run came out 31% slower than the direct one (H100, 1d90f2e), so it samples seldom: a
    training stage's memory stays at its peak for the whole loop."""

    def __init__(self):
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            free, total = torch.cuda.mem_get_info()
            self.peak = max(self.peak, total - free)
            time.sleep(0.5)

    def __enter__(self):
        if cuda():
            free, total = torch.cuda.mem_get_info()
            self.baseline = total - free
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if cuda():
            self.stop.set()
            self.thread.join()
        return False


# The /prompt graph's node ids and the direct run's stages they match.
STAGE_OF_NODE = {"localize": "saliency", "profile": "timestep_profile", "distill": "distill"}


def run_server(checkpoint: Path, defaults: dict, resolution: int, family: str) -> dict:
    """The same erase through a real ComfyUI server via /prompt, timed from ComfyUI's own messages."""
    from comfy_server import ComfyServer, new_base_dir, remove_base_dir

    save_name = f"gpu_bench_{family}"
    base = new_base_dir()
    # ComfyUI switches its process to torch's cudaMallocAsync allocator unless told not to; with
    # --disable-cuda-malloc it keeps the PYTORCH_CUDA_ALLOC_CONF it inherits from this process, so
    # both runs use the same allocator and the comparison measures the node path alone.
    server = ComfyServer(base, cpu=not cuda(), extra_args=("--disable-cuda-malloc",))
    rec: dict = {"resolution": resolution}
    try:
        (base / "models" / "checkpoints").mkdir(parents=True, exist_ok=True)
        os.symlink(checkpoint, base / "models" / "checkpoints" / checkpoint.name)
        started = time.perf_counter()
        server.start(timeout=300.0)
        rec["server_start_s"] = time.perf_counter() - started
        device_line = re.search(r"^Device: (.*)$", server.log(), re.MULTILINE)
        rec["server_device"] = device_line.group(1).strip() if device_line else None
        errors = server.pack_import_errors()
        if errors:
            raise RuntimeError("the pack failed to import in ComfyUI:\n" + "\n".join(errors))
        prompt = erase_prompt(checkpoint.name, defaults, resolution, save_name)
        rec["prompt"] = prompt
        ws = server.websocket(timeout=1200)
        node_start: dict[str, float] = {}
        node_order: list[str] = []
        progress: dict[str, list[tuple[float, int]]] = {}  # node -> (arrival, value) of its progress messages
        with DevicePoller() as poller:
            queued = time.perf_counter()
            prompt_id = server.queue(prompt)
            try:
                while True:
                    message = ws.recv()
                    now = time.perf_counter()
                    if not isinstance(message, str):
                        continue
                    data = json.loads(message)
                    body = data.get("data", {})
                    if body.get("prompt_id") not in (None, prompt_id):
                        continue
                    if data["type"] == "executing":
                        node = body.get("node")
                        if node is None:
                            break
                        node_start[node] = now
                        node_order.append(node)
                    elif data["type"] == "progress" and body.get("node"):
                        progress.setdefault(body["node"], []).append((now, body.get("value", 0)))
                    elif data["type"] in ("execution_error", "execution_interrupted"):
                        break
                    elif data["type"] == "execution_success":
                        break
            finally:
                ws.close()
            done = time.perf_counter()
        entry = server.wait(prompt_id, timeout=60)
        if entry["status"].get("status_str") != "success":
            from comfy_server import PromptFailed

            raise PromptFailed(entry)
        stamps = {kind: body.get("timestamp") for kind, body in entry["status"]["messages"]}
        rec["client_wall_s"] = done - queued
        if stamps.get("execution_start") and stamps.get("execution_success"):
            rec["execution_s"] = (stamps["execution_success"] - stamps["execution_start"]) / 1000.0
        else:
            rec["execution_s"] = rec["client_wall_s"]
        ends = node_order[1:] + [None]
        rec["node_s"] = {node: ((node_start[nxt] if nxt else done) - node_start[node]) for node, nxt in zip(node_order, ends)}
        rec["node_order"] = node_order
        # Each node's step rate from its first to its last progress message, as the direct run's loop_steps_per_s:
        # it separates a slower loop from a slower start (model load, prompt encoding, data-free latents).
        rec["node_loop_steps_per_s"] = {node: (ticks[-1][1] - ticks[0][1]) / (ticks[-1][0] - ticks[0][0])
                                        for node, ticks in progress.items()
                                        if len(ticks) >= 2 and ticks[-1][0] > ticks[0][0]}
        if cuda():
            rec["device_used_peak_gib"] = poller.peak / GiB
            rec["device_used_baseline_gib"] = poller.baseline / GiB
            rec["server_peak_gib_approx"] = (poller.peak - poller.baseline) / GiB
        lora = server.models_dir / "loras" / f"{save_name}.safetensors"
        rec["adapter_bytes"] = lora.stat().st_size if lora.exists() else None
        # The server's MODEL after the erase: the loader's output is cached, so this hashes the very
        # object the three nodes worked on.
        hashed = server.run({"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint.name}},
                             "hash": {"class_type": "SpareModelWeightsHash", "inputs": {"model": ["ckpt", 0]}}},
                            timeout=600)
        rec["hash_after"] = hashed["outputs"]["hash"]["text"][0]
    except Exception as e:  # noqa: BLE001 - recorded, and the run goes on
        rec["error"] = f"{type(e).__name__}: {e}"[:4000]
        rec["log_tail"] = server.log()[-3000:]
    finally:
        server.stop()
        remove_base_dir(base)
    return rec


# ---------------------------------------------------------------------------------------- per model


def run_model(family: str, args, engine_denoiser, defaults: dict, ckpt_dir: Path, out_dir: Path,
              save: callable) -> dict:
    import comfy.model_management
    import comfy.sd

    from bench.gpu import checkpoints
    from comfyui_spare.nodes.comfy_denoiser import native_resolution

    rec: dict = {"family": family, "engine_source_sha256": engine_source_digest()}
    save(family, rec)
    resolution = args.resolution or (TINY_RESOLUTION if args.tiny else 0)
    rec["resolution_input"] = resolution

    # 1. checkpoint
    path = ckpt_dir / f"random_{family}{'_tiny' if args.tiny else ''}.safetensors"
    started = time.perf_counter()
    if not (args.reuse_checkpoints and path.exists()):
        if args.tiny:
            checkpoints.write_tiny_checkpoint(family, path)
        else:
            checkpoints.write_checkpoint(family, path, device="cuda" if cuda() else "cpu")
    rec["checkpoint"] = {"file": path.name, "bytes": path.stat().st_size, "gib": path.stat().st_size / GiB,
                         "write_s": time.perf_counter() - started, "tiny": args.tiny,
                         "random_weights": True}
    if not args.tiny:
        report = checkpoints.check_detection(family)
        rec["checkpoint"]["params"] = {k: report[k] for k in ("unet_params", "text_params", "vae_params")}
    log(f"{family}: checkpoint {path.name} ({rec['checkpoint']['gib']:.2f} GiB) in {rec['checkpoint']['write_s']:.1f}s")
    save(family, rec)

    with torch.inference_mode():  # as ComfyUI's executor runs every node
        free_memory()
        started = time.perf_counter()
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)
        sync()
        base = model.model
        rec["load"] = {"s": time.perf_counter() - started, "detected": type(base.model_config).__name__,
                       "unet_dtype": str(base.get_dtype()), "manual_cast_dtype": str(base.manual_cast_dtype),
                       "device": str(comfy.model_management.get_torch_device())}
        rec["resolution"] = resolution or native_resolution(model)  # as the nodes choose
        if rec["load"]["detected"] != checkpoints.FAMILIES[family]:
            raise RuntimeError(f"ComfyUI detected {rec['load']['detected']}, expected {checkpoints.FAMILIES[family]}")
        log(f"{family}: loaded as {rec['load']['detected']} in {rec['load']['s']:.1f}s ({rec['load']['unet_dtype']})")

        # 2. hash before
        digest, hash_s = model_hash(model)
        rec["weights_hash"] = {"before": digest, "hash_s": hash_s}
        save(family, rec)

        # 3. SPARE through the nodes' code path
        spare: dict = {}
        rec["spare"] = spare
        artifacts = None
        try:
            artifacts = run_spare(engine_denoiser, model, clip, resolution, defaults, out_dir_tmp(), spare)
            log(f"{family}: SPARE erase {spare['erase_s']:.1f}s "
                + ", ".join(f"{k} {v['wall_s']:.1f}s" for k, v in spare["stages"].items())
                + (f", peak {spare['peak_allocated_gib']:.2f} GiB allocated" if cuda() else ""))
        except Exception as e:  # noqa: BLE001
            spare["error"] = f"{type(e).__name__}: {e}"[:4000]
            spare["traceback"] = traceback.format_exc()[-3000:]
            log(f"{family}: SPARE failed: {spare['error']}")
        save(family, rec)

        # 4. ESD-x
        try:
            rec["esd_x"] = run_esd_x(engine_denoiser, model, clip, resolution, args.esd_steps)
            e = rec["esd_x"]
            log(f"{family}: ESD-x {e['measured_iterations']} it. in {e['wall_s']:.1f}s, step {e['step_s']:.3f}s, "
                f"{e['paper_iterations']} it. {'extrapolated' if e['extrapolated'] else 'measured'}: {e['paper_total_s']:.0f}s")
        except Exception as e:  # noqa: BLE001
            rec["esd_x"] = {"error": f"{type(e).__name__}: {e}"[:4000], "traceback": traceback.format_exc()[-3000:]}
            log(f"{family}: ESD-x failed: {rec['esd_x']['error']}")
        if "erase_s" in spare and "paper_total_s" in rec["esd_x"]:
            rec["speedup_vs_esd_x"] = rec["esd_x"]["paper_total_s"] / spare["erase_s"]
        save(family, rec)

        # 5. the proposed gradient checkpointing, measured on the same card in the same run
        if args.also_checkpointed and artifacts is not None:
            try:
                spare["distill_checkpointed"] = run_distill_checkpointed(
                    engine_denoiser, model, clip, resolution, artifacts, artifacts["erasure"])
                v = spare["distill_checkpointed"]
                log(f"{family}: distill with gradient checkpointing {v['wall_s']:.1f}s"
                    + (f", peak {v['peak_allocated_gib']:.2f} GiB allocated" if cuda() else ""))
            except Exception as e:  # noqa: BLE001
                spare["distill_checkpointed"] = {"error": f"{type(e).__name__}: {e}"[:4000]}
            save(family, rec)

        # 6. profile
        if args.profile and artifacts is not None:
            try:
                rec["profile"] = run_profile(engine_denoiser, model, clip, resolution, artifacts, out_dir, family)
            except Exception as e:  # noqa: BLE001
                rec["profile"] = {"error": f"{type(e).__name__}: {e}"[:2000]}

        # 7. hash after everything that ran on this MODEL
        digest, hash_s = model_hash(model)
        rec["weights_hash"].update({"after": digest, "unchanged": digest == rec["weights_hash"]["before"]})
        log(f"{family}: input weights unchanged: {rec['weights_hash']['unchanged']}")
        save(family, rec)
        direct_total = rec["load"]["s"] + spare.get("erase_s", float("nan"))
        rec["direct_with_load_s"] = direct_total
        del model, clip, vae, base, artifacts
        comfy.model_management.unload_all_models()
        free_memory()

    # 8. server
    if family in args.server_models:
        log(f"{family}: the same erase through a ComfyUI server (/prompt) ...")
        server = run_server(path, defaults, resolution, family)
        rec["server"] = server
        if "execution_s" in server and math.isfinite(direct_total):
            server["vs_direct"] = server["execution_s"] / direct_total - 1.0
            server["direct_with_load_s"] = direct_total
        if "hash_after" in server:
            server["hash_equals_direct_before"] = server["hash_after"] == rec["weights_hash"]["before"]
        log(f"{family}: server " + (f"{server['execution_s']:.1f}s vs direct {direct_total:.1f}s "
                                    f"({100 * server['vs_direct']:+.1f}%)" if "vs_direct" in server
                                    else f"failed: {server.get('error')}"))
    else:
        rec["server"] = {"skipped": f"--server {','.join(args.server_models) or '(none)'}"}
    if not args.keep_checkpoints:
        path.unlink(missing_ok=True)
    save(family, rec)
    return rec


@functools.cache
def out_dir_tmp() -> Path:
    return scratch_folder("spare-gpu-bench-")


def log(message: str) -> None:
    print(f"[gpu-bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------------- report


def card_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "cpu"


def acceptance(results: dict) -> list[dict]:
    rows = []
    models = results["models"]
    real = results["device"] == "cuda" and not results["tiny"]

    def add(check, target, value, ok):
        rows.append({"check": check, "target": target, "value": value,
                     "pass": (bool(ok) if value is not None else None), "counts": real})

    for family, t in (("sd15", TARGETS["sd15"]), ("sdxl", TARGETS["sdxl"])):
        m = models.get(family)
        if not m:
            continue
        spare = m.get("spare", {})
        name = {"sd15": "SD1.5", "sdxl": "SDXL"}[family]
        erase = spare.get("erase_s")
        add(f"{name}: SPARE erase (3 stages + save) s", f"<= {t['erase_s']:.0f}", erase,
            erase is not None and erase <= t["erase_s"])
        server = m.get("server", {})
        if "execution_s" in server:
            add(f"{name}: node path via /prompt, with checkpoint load, s", f"<= {t['erase_s']:.0f}",
                server["execution_s"], server["execution_s"] <= t["erase_s"])
        peak = spare.get("peak_allocated_gib")
        add(f"{name}: peak VRAM allocated GiB", f"<= {t['peak_gib']:.0f}", peak, peak is not None and peak <= t["peak_gib"])
        reserved = spare.get("peak_reserved_gib")
        add(f"{name}: peak VRAM reserved GiB", f"<= {t['peak_gib']:.0f}", reserved,
            reserved is not None and reserved <= t["peak_gib"])
        speed = m.get("speedup_vs_esd_x")
        add(f"{name}: speed-up vs ESD-x (1000 it.)", f">= {TARGETS['speedup_vs_esd_x']:.0f}x", speed,
            speed is not None and speed >= TARGETS["speedup_vs_esd_x"])
        if "adapter_mib" in t:
            mib = spare.get("adapter", {}).get("mib")
            add(f"{name}: adapter MiB", f"<= {t['adapter_mib']:.0f}", mib, mib is not None and mib <= t["adapter_mib"])
        if "vs_direct" in server:
            add(f"{name}: /prompt time vs direct run", f"within {100 * TARGETS['server_vs_direct']:.0f}%",
                server["vs_direct"], abs(server["vs_direct"]) <= TARGETS["server_vs_direct"])
        unchanged = m.get("weights_hash", {}).get("unchanged")
        add(f"{name}: input weights unchanged (hash)", "equal", unchanged, unchanged)
        if "hash_equals_direct_before" in server:
            add(f"{name}: server MODEL after erase hashes as loaded", "equal", server["hash_equals_direct_before"],
                server["hash_equals_direct_before"])
    return rows


def _f(value, fmt="{:.2f}") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return fmt.format(value)
    return str(value)


def markdown(results: dict) -> str:
    lines = [f"# SPARE at real scale on {results['gpu'] or 'CPU'} (issue #7)", ""]
    lines += [f"* Device: **{results['gpu'] or 'CPU'}**; torch {results['torch']} (CUDA {results['cuda']}); "
              f"ComfyUI {results['comfyui']}; engine {results['engine_version']}; {results['created']}"
              + (f"; CUDA allocator {results['allocator']}" if results.get("allocator") else "") + ".",
              f"* Command: `{results['command']}`.",
              "* Models: random weights in the real SD1.5 / SDXL single-file formats (bench/gpu/checkpoints.py), "
              "loaded with ComfyUI's checkpoint loader; speed and memory do not depend on the weights' values.",
              f"* Concept: erase \"{TARGET}\" -> \"{SURROGATE}\", retain {RETAIN} (+ the empty prompt).",
              "* SPARE runs as the nodes run it (each stage its own `engine_denoiser`, node defaults from the node "
              "schemas, under `torch.inference_mode()`), timed around each stage including its model load to the GPU.",
              "* **Measured vs extrapolated**: every SPARE figure, the /prompt run and the hashes are measured. "
              "ESD-x's 1000-iteration time is "
              + ("**extrapolated** from the measured iterations (time per UNet evaluation x the 2 x depth + 5 "
                 "evaluations of an iteration at the paper's mean z_t depth)." if any(m.get("esd_x", {}).get("extrapolated") for m in results["models"].values())
                 else "measured in full."), ""]
    if results["tiny"] or results["device"] != "cuda":
        lines += ["> **Smoke run** (tiny model and/or CPU): the figures check the harness, not the acceptance targets.", ""]
    ov = results.get("overrides", {})
    if ov.get("node_inputs") or ov.get("resolution"):
        lines += [f"* Deviations from the node defaults: {ov.get('node_inputs') or 'none'}; resolution input "
                  f"{ov.get('resolution') or 0} (0 = native).", ""]
    lines += ["## Acceptance (issue #7)", "", "| check | target | value | pass |", "|---|---|---|---|"]
    for row in results["acceptance"]:
        value = row["value"]
        if isinstance(value, float) and "vs direct" in row["check"]:
            shown = f"{100 * value:+.1f}%"
        elif isinstance(value, float) and "speed-up" in row["check"]:
            shown = f"{value:.1f}x"
        else:
            shown = _f(value)
        lines.append(f"| {row['check']} | {row['target']} | {shown} | {_f(row['pass'])} |")
    lines.append("")
    for family, m in results["models"].items():
        name = {"sd15": "SD1.5", "sdxl": "SDXL"}.get(family, family)
        load = m.get("load", {})
        ck = m.get("checkpoint", {})
        lines += [f"## {name}", "",
                  f"Checkpoint {ck.get('file')} ({_f(ck.get('gib'))} GiB, written in {_f(ck.get('write_s'), '{:.1f}')} s), "
                  f"detected as **{load.get('detected')}**, UNet {load.get('unet_dtype')} "
                  f"(manual cast {load.get('manual_cast_dtype')}), loaded in {_f(load.get('s'), '{:.1f}')} s; "
                  f"resolution {m.get('resolution')} px. Engine and node sources: sha256 "
                  f"`{(m.get('engine_source_sha256') or 'not recorded')[:12]}` (bench.gpu.run.engine_source_digest).", ""]
        spare = m.get("spare", {})
        if "error" in spare:
            lines += [f"**SPARE failed**: `{spare['error']}`", ""]
        lines += ["| stage | wall s | steps | steps/s | loop steps/s | before 1st step s | peak alloc GiB | peak reserved GiB |",
                  "|---|---|---|---|---|---|---|---|"]
        rows = list(spare.get("stages", {}).items())
        if isinstance(m.get("esd_x"), dict) and "wall_s" in m["esd_x"]:
            rows.append((f"ESD-x ({m['esd_x']['measured_iterations']} of {m['esd_x']['paper_iterations']} it.)", m["esd_x"]))
        for stage, r in rows:
            lines.append(f"| {stage} | {_f(r.get('wall_s'))} | {r.get('steps')} {r.get('unit', '')} | "
                         f"{_f(r.get('steps_per_s'))} | {_f(r.get('loop_steps_per_s'))} | "
                         f"{_f(r.get('before_first_step_s'))} | {_f(r.get('peak_allocated_gib'))} | "
                         f"{_f(r.get('peak_reserved_gib'))} |")
        lines.append("")
        d = spare.get("stages", {}).get("distill", {})
        if "cuda_graphs_used" in d:
            lines += [f"Distill's training step {'replayed as a CUDA graph' if d['cuda_graphs_used'] else 'ran eagerly (no CUDA graph)'}"
                      f"; gradient checkpointing `{d.get('config', {}).get('gradient_checkpointing')}`.", ""]
        if d.get("reserved_growth"):
            lines += ["Distill's peak reserved memory grew at (step: GiB): "
                      + ", ".join(f"{int(step)}: {peak:.2f}" for step, _, peak in d["reserved_growth"])
                      + " (steps 1-3 eager warm-up, 4 the graph's capture when graphed).", ""]
        marked = {stage: r["marks_s"] for stage, r in spare.get("stages", {}).items() if r.get("marks_s")}
        if marked:
            names = {"model_loaded": "model loaded", "prompts_encoded": "prompts encoded",
                     "first_grad_pass": "first pass with gradients"}
            lines += ["Before each stage's first step, seconds from its start: " + "; ".join(
                f"{stage}: " + ", ".join(f"{names[k]} {v:.1f}" for k, v in marks.items())
                for stage, marks in marked.items()) + " (between the prompts and the first gradient pass: the "
                "data-free latents).", ""]
        v = spare.get("distill_checkpointed")
        if v and "wall_s" in v:
            lines += [f"Proposed change, measured here: distill with gradient checkpointing (ResBlocks + transformer "
                      f"blocks; {v['applied_by']}): **{v['wall_s']:.1f} s**, peak allocated "
                      f"**{_f(v.get('peak_allocated_gib'))} GiB** / reserved {_f(v.get('peak_reserved_gib'))} GiB "
                      f"(without: {_f(spare['stages']['distill']['wall_s'], '{:.1f}')} s, "
                      f"{_f(spare['stages']['distill'].get('peak_allocated_gib'))} GiB); LoRA max |diff| "
                      f"{v['lora_up_max_abs_diff']:.2e} of max |up| {v['lora_up_max_abs']:.2e}.", ""]
        elif v and "error" in v:
            lines += [f"Distill with gradient checkpointing failed: `{v['error'][:300]}`", ""]
        ad = spare.get("adapter", {})
        if ad:
            lines += [f"SPARE erase: **{_f(spare.get('erase_s'), '{:.1f}')} s** (3 stages + adapter save "
                      f"{_f(ad.get('save_s'), '{:.2f}')} s), {_f(m.get('direct_with_load_s'), '{:.1f}')} s with the "
                      f"checkpoint load; adapter {ad.get('layers')} layers, rank {ad.get('rank')}, "
                      f"**{_f(ad.get('mib'))} MiB** on disk ({ad.get('dtype', 'fp32')}).", ""]
        e = m.get("esd_x", {})
        if "paper_total_s" in e:
            how = "extrapolated" if e["extrapolated"] else "measured"
            fit = e.get("step_time_linear_fit")
            lines += [f"ESD-x: {e['measured_iterations']} iterations measured ({_f(e['wall_s'], '{:.1f}')} s, mean z_t depth "
                      f"{_f(e.get('mean_stop_measured'), '{:.1f}')}), step {_f(e['step_s'], '{:.3f}')} s at the paper's mean depth "
                      f"{e['mean_stop_paper']} (per UNet evaluation {_f(e.get('step_s_per_unit'), '{:.4f}')} s x (2 x depth + 5)"
                      + (f"; a linear fit gives {fit['step_s_at_paper_mean']:.3f} s" if fit else "") + ")"
                      + f"; {e['paper_iterations']} iterations **{how}: {_f(e['paper_total_s'], '{:.0f}')} s**; "
                      f"{e['trained_layers']} layers, {e['trainable_params']:,} trained weights, "
                      f"{e['stored_bytes'] / 2**20:.1f} MiB stored (fp32 diffs). "
                      f"SPARE is **{_f(m.get('speedup_vs_esd_x'), '{:.1f}')}x** faster.", ""]
        elif "error" in e:
            lines += [f"**ESD-x failed**: `{e['error']}`", ""]
        h = m.get("weights_hash", {})
        lines += [f"Input weights hash before/after: `{str(h.get('before'))[:16]}...` / `{str(h.get('after'))[:16]}...` "
                  f"-> unchanged: **{_f(h.get('unchanged'))}** (hashing took {_f(h.get('hash_s'), '{:.1f}')} s).", ""]
        s = m.get("server", {})
        if "execution_s" in s:
            nodes = ", ".join(f"{k} {v:.1f}s" for k, v in s.get("node_s", {}).items())
            lines += [f"Through a ComfyUI server via /prompt: **{s['execution_s']:.1f} s** (ComfyUI's execution_start -> "
                      f"execution_success; client wall {s['client_wall_s']:.1f} s; per node: {nodes}) vs direct "
                      f"{s['direct_with_load_s']:.1f} s (load + erase): **{100 * s['vs_direct']:+.1f}%**"
                      + (f"; device memory in use peaked at {s['device_used_peak_gib']:.1f} GiB "
                         f"({s['server_peak_gib_approx']:.1f} GiB above the bench process's baseline)"
                         if "device_used_peak_gib" in s else "")
                      + f"; adapter file {_f((s.get('adapter_bytes') or 0) / 2**20)} MiB; server MODEL hash after the erase "
                      f"equals the direct run's before: **{_f(s.get('hash_equals_direct_before'))}**"
                      + (f"; server device `{s['server_device']}`" if s.get("server_device") else "") + ".", ""]
            loops = s.get("node_loop_steps_per_s") or {}
            if loops:
                direct = {stage: r.get("loop_steps_per_s") for stage, r in (m.get("spare", {}).get("stages") or {}).items()}
                lines += ["Loop steps/s (first to last progress message) through the server vs direct: " + ", ".join(
                    f"{node} {_f(rate)} vs {_f(direct.get(STAGE_OF_NODE.get(node)))}" for node, rate in loops.items()) + ".", ""]
        elif "error" in s:
            lines += [f"**Server run failed**: `{s['error'][:500]}`", ""]
        p = m.get("profile")
        if p and "top" in p:
            unit = "self_device_ms" if results["device"] == "cuda" else "self_cpu_ms"
            dev = results["device"] == "cuda"
            if p.get("graph_replays"):
                lines += [f"torch.profiler, distill, {p['recorded_steps']} replays of the graphed training step "
                          f"(full table: {p['file']}); a replay runs no Python, so the table holds its kernels only."]
            else:
                lines += [f"torch.profiler, distill, {p['recorded_steps']} training steps (full table: {p['file']}). "
                          "Teacher / student UNet forward passes (total time inside each; the backward is in the op table):",
                          "", "| pass | calls | CPU total ms | device total ms |", "|---|---|---|---|"]
                for r in p["labels"]:
                    lines.append(f"| {r['name']} | {r['calls']} | {_f(r.get('cpu_total_ms'))} | {_f(r.get('device_total_ms'))} |")
            unit = "self_device_ms" if dev else "self_cpu_ms"
            lines += ["", f"| top ops | calls | {unit.replace('_', ' ')} |", "|---|---|---|"]
            for r in p["top"]:
                lines.append(f"| {r['name'][:80]} | {r['calls']} | {_f(r.get(unit))} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def write_results(results: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    results["acceptance"] = acceptance(results)
    name = f"gpu_{results['card']}"
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    md_path.write_text(markdown(results))
    return json_path, md_path


def merge(paths: list[str], out: Path) -> tuple[Path, Path]:
    """One results file from several runs on one card. Earlier files win; a later file only adds what
    they lack (e.g. an SDXL run with --also-checkpointed --profile adds `distill_checkpointed` and `profile`)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    gpus = {p["gpu"] for p in parts}
    if len(gpus) != 1:
        raise SystemExit(f"cannot merge results from different devices: {sorted(map(str, gpus))}")

    def fill(into: dict, other: dict) -> None:
        for key, value in other.items():
            if key not in into:
                into[key] = value
            elif isinstance(into[key], dict) and isinstance(value, dict):
                fill(into[key], value)

    merged = json.loads(json.dumps(parts[0]))
    merged["command"] = " ; ".join(p["command"] for p in parts)
    for p in parts[1:]:
        fill(merged["models"], p["models"])
    return write_results(merged, out)


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="sd15,sdxl", help="comma-separated: sd15, sdxl")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: the tests' tiny SD1.5 at 16 px, 1 thread")
    parser.add_argument("--out", default=str(RESULTS), help="folder for gpu_<card>.json / .md (and profiles)")
    parser.add_argument("--esd-steps", type=int, default=None,
                        help="ESD-x iterations to measure (default 20 on a GPU, 3 with --tiny; 1000 = no extrapolation)")
    parser.add_argument("--server", default="sd15", help="families also run through a ComfyUI server ('' = none)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler table of distill's training steps")
    parser.add_argument("--also-checkpointed", action="store_true",
                        help="run distill a second time with gradient checkpointing (the proposed engine change)")
    parser.add_argument("--resolution", type=int, default=0, help="override the node resolution input (0: native, "
                        "16 with --tiny)")
    parser.add_argument("--checkpoint-dir", default=None, help="where checkpoints are written (default: a temp dir)")
    parser.add_argument("--reuse-checkpoints", action="store_true", help="keep an existing checkpoint file")
    parser.add_argument("--keep-checkpoints", action="store_true", help="do not delete checkpoints afterwards")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch here and in the server (default: 1 with --tiny, else torch's)")
    parser.add_argument("--merge", nargs="+", default=None, help="merge per-model result JSONs into one file in --out")
    parser.add_argument("--allocator", choices=ALLOCATORS, default=None,
                        help="torch's CUDA allocator here and in the server (default: PYTORCH_CUDA_ALLOC_CONF's, "
                        "else native); a stock ComfyUI uses cudaMallocAsync")
    args = parser.parse_args(argv)
    if args.allocator:
        # Read when CUDA first initialises, which has not happened yet in this process.
        conf = [part for part in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "").split(",")
                if part and not part.startswith("backend:")]
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = ",".join([*conf, f"backend:{args.allocator}"])
    if args.threads is None and args.tiny:
        args.threads = 1  # a shared small CPU: more threads than free cores makes every op wait on the others
    if args.threads:
        torch.set_num_threads(args.threads)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(args.threads)  # inherited by the ComfyUI server
    out = Path(args.out)
    if args.merge:
        for path in merge(args.merge, out):
            print(path)
        return 0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in ("sd15", "sdxl")]
    if unknown or not models:
        parser.error(f"--models: unknown {unknown}; use sd15 and/or sdxl")
    if args.tiny and models != ["sd15"]:
        parser.error("--tiny exists for sd15 only (ComfyUI detects SDXL only at its full depth)")
    args.server_models = [m.strip() for m in args.server.split(",") if m.strip()]
    if args.esd_steps is None:
        args.esd_steps = 3 if args.tiny else 20
    if not cuda() and not args.tiny:
        log("no CUDA device: running full-size models on the CPU (very slow); use --tiny for a smoke test")

    engine_denoiser = setup_host()
    import comfy.model_management
    import comfyui_version

    from comfyui_spare.spare_engine import __version__ as engine_version

    defaults = node_defaults()
    overrides = TINY_OVERRIDES if args.tiny else {}
    for node, values in overrides.items():
        defaults[node]["inputs"].update(values)
    gpu = torch.cuda.get_device_name() if cuda() else None
    results = {
        "schema": 1,
        "gpu": gpu,
        "card": card_slug(gpu) if gpu else "cpu",
        "device": "cuda" if cuda() else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "comfyui": getattr(comfyui_version, "__version__", None),
        "engine_version": engine_version,
        "python": platform.python_version(),
        "host": platform.node(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.gpu.run", *(argv if argv is not None else sys.argv[1:])]),
        "tiny": args.tiny,
        "concept": {"targets": [TARGET], "surrogates": [SURROGATE], "retain": list(RETAIN)},
        "node_defaults": defaults,
        "overrides": {"node_inputs": overrides, "resolution": args.resolution or (TINY_RESOLUTION if args.tiny else 0),
                      "threads": args.threads},
        "measured": ["checkpoint write/load", "SPARE stages", "adapter size", "ESD-x measured iterations",
                     "weights hashes", "server /prompt run"],
        "extrapolated": [f"ESD-x {ESD_PAPER_ITERATIONS}-iteration time (unless --esd-steps {ESD_PAPER_ITERATIONS})"],
        "models": {},
    }
    if cuda():
        props = torch.cuda.get_device_properties(0)
        results["gpu_memory_gib"] = props.total_memory / GiB
        results["vram_state"] = str(comfy.model_management.vram_state)
        results["allocator"] = torch.cuda.get_allocator_backend()
        if args.allocator and results["allocator"] != args.allocator:
            log(f"--allocator {args.allocator} was asked for, but torch runs {results['allocator']}")
    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else scratch_folder("spare-ckpt-")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    def save(family: str, rec: dict) -> None:
        results["models"][family] = rec
        write_results(results, out)

    started = time.perf_counter()
    try:
        for family in models:
            run_model(family, args, engine_denoiser, defaults, ckpt_dir, out, save)
    finally:
        results["total_s"] = time.perf_counter() - started
        json_path, md_path = write_results(results, out)
    log(f"wrote {json_path} and {md_path} in {results['total_s']:.0f}s")
    failed = [f for f, m in results["models"].items()
              if any("error" in (m.get(k) or {}) for k in ("spare", "esd_x", "server"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
