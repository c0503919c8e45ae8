"""Smoke test of the real-scale GPU benchmark (bench/gpu/, issue #7) on the CPU.

`python -m bench.gpu.run --tiny --models sd15 --profile --also-checkpointed` runs the whole harness - a ComfyUI-detectable
checkpoint, ComfyUI's loader, the three SPARE stages through the nodes' code path, ESD-x's
measured iterations, the weights hashes and the same erase through a real ComfyUI server via
/prompt - on the test suite's tiny SD1.5 at 16 px; the results file must have every field.
The real-size SD1.5 / SDXL checkpoint layouts are checked against ComfyUI's detector from
meta tensors (no memory). Nothing is skipped: without a ComfyUI host these tests fail.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

STAGE_FIELDS = {"unit", "wall_s", "steps", "steps_total", "steps_per_s", "loop_steps_per_s", "before_first_step_s",
                "peak_allocated_gib", "peak_reserved_gib", "allocated_before_gib"}
TOP_FIELDS = {"schema", "gpu", "card", "device", "torch", "cuda", "comfyui", "engine_version", "created", "command",
              "tiny", "concept", "node_defaults", "overrides", "measured", "extrapolated", "models", "acceptance",
              "total_s"}
MODEL_FIELDS = {"family", "checkpoint", "load", "resolution", "weights_hash", "spare", "esd_x", "speedup_vs_esd_x",
                "server", "direct_with_load_s"}
ESD_FIELDS = STAGE_FIELDS | {"paper_iterations", "measured_iterations", "extrapolated", "stops", "step_s",
                             "step_s_per_unit", "paper_total_s", "trained_layers", "trainable_params", "stored_bytes",
                             "config"}
SERVER_FIELDS = {"server_start_s", "execution_s", "client_wall_s", "node_s", "vs_direct", "direct_with_load_s",
                 "adapter_bytes", "hash_after", "hash_equals_direct_before", "prompt"}


def missing(record: dict, fields: set) -> set:
    return fields - set(record)


@pytest.fixture
def scratch(tmp_path):
    """An empty TMPDIR of the test's own for a subprocess, so the test can check what the run leaves in it."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    return folder


def test_tiny_gpu_benchmark_runs_on_cpu_and_writes_every_field(tmp_path, scratch):
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu.run", "--tiny", "--models", "sd15", "--out", str(tmp_path),
         "--profile", "--also-checkpointed"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(scratch)},
    )
    elapsed = time.monotonic() - started
    log = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"bench.gpu.run --tiny failed ({proc.returncode}) after {elapsed:.0f}s:\n{log}"
    # the checkpoint's and the adapters' scratch folders go when the run ends
    assert [p.name for p in scratch.glob("spare-*")] == []
    print(f"bench.gpu.run --tiny --models sd15: {elapsed:.1f}s")

    results = json.loads(next(tmp_path.glob("gpu_*.json")).read_text())
    md = next(tmp_path.glob("gpu_*.md")).read_text()
    assert not missing(results, TOP_FIELDS), missing(results, TOP_FIELDS)
    assert results["tiny"] is True and results["models"].keys() == {"sd15"}
    # The node defaults are read from the nodes' schemas; --tiny changes only distill's steps and the size.
    defaults = results["node_defaults"]
    assert defaults["distill"]["node_id"] == "SpareDistill" and defaults["distill"]["inputs"]["steps"] == 20
    assert results["overrides"]["node_inputs"] == {"distill": {"steps": 20}}

    m = results["models"]["sd15"]
    assert not missing(m, MODEL_FIELDS), missing(m, MODEL_FIELDS)
    assert m["load"]["detected"] == "SD15" and m["checkpoint"]["bytes"] > 0
    from bench.gpu.run import engine_source_digest
    assert m["engine_source_sha256"] == engine_source_digest()  # the code that ran, as this checkout has it

    spare = m["spare"]
    assert "error" not in spare, spare.get("traceback") or spare["error"]
    assert set(spare["stages"]) == {"saliency", "timestep_profile", "distill"}
    for name, stage in spare["stages"].items():
        assert not missing(stage, STAGE_FIELDS), (name, missing(stage, STAGE_FIELDS))
        assert stage["wall_s"] > 0 and stage["steps"] == stage["steps_total"] > 0, (name, stage)
    localize = defaults["localize"]["inputs"]
    assert spare["stages"]["saliency"]["steps"] == 2 * localize["samples"]  # samples x 2 noise draws each
    assert spare["stages"]["timestep_profile"]["steps"] == 20  # the profile's 20-level grid, one pair
    assert spare["stages"]["distill"]["steps"] == 20
    assert spare["stages"]["distill"]["cuda_graphs_used"] is False  # the CPU never graphs
    for name in ("saliency", "distill"):  # what comes before the first step, in the order it happens
        stage = spare["stages"][name]
        marks = stage["marks_s"]
        assert list(marks) == ["model_loaded", "prompts_encoded", "first_grad_pass"], (name, marks)
        assert 0 < marks["model_loaded"] <= marks["prompts_encoded"] <= marks["first_grad_pass"] \
            <= stage["before_first_step_s"], (name, marks)
    assert spare["adapter"]["bytes"] > 0 and spare["adapter"]["layers"] > 0
    assert spare["erase_s"] >= sum(s["wall_s"] for s in spare["stages"].values())
    for key in ("peak_allocated_gib", "peak_reserved_gib"):
        assert key in spare

    esd = m["esd_x"]
    assert "error" not in esd, esd.get("traceback") or esd["error"]
    assert not missing(esd, ESD_FIELDS), missing(esd, ESD_FIELDS)
    assert esd["paper_iterations"] == 1000 and esd["measured_iterations"] == esd["steps"] == 3
    assert esd["extrapolated"] is True and esd["paper_total_s"] > esd["wall_s"]
    assert esd["config"]["lr"] == 1e-5 and esd["config"]["ddim_steps"] == 50
    assert m["speedup_vs_esd_x"] > 0

    assert m["weights_hash"]["before"] and m["weights_hash"]["unchanged"] is True

    # --also-checkpointed: distill again with gradient checkpointing; same seed, same LoRA.
    variant = spare["distill_checkpointed"]
    assert "error" not in variant, variant["error"]
    assert not missing(variant, STAGE_FIELDS | {"applied_by", "lora_up_max_abs_diff"}), variant
    # Bit-identical on the CPU; bf16 kernels on a GPU may reorder sums.
    tolerance = 0.0 if results["device"] == "cpu" else 0.05 * variant["lora_up_max_abs"]
    assert variant["steps"] == 20 and variant["lora_up_max_abs_diff"] <= tolerance, variant
    # --profile: torch.profiler table of distill's training steps, the student's passes labelled.
    profile_rec = m["profile"]
    assert "error" not in profile_rec, profile_rec["error"]
    assert (tmp_path / profile_rec["file"]).read_text().count("aten::") > 5
    assert profile_rec["graph_replays"] is False  # the CPU runs eager steps, whose passes are labelled
    # Every recorded step runs the teacher's pass and the student's.
    assert {"predict_eps/student (grad)", "predict_eps/teacher (no grad)"} <= {r["name"] for r in profile_rec["labels"]}

    server = m["server"]
    assert "error" not in server, server["error"] + "\n" + server.get("log_tail", "")
    assert not missing(server, SERVER_FIELDS), missing(server, SERVER_FIELDS)
    assert set(server["node_s"]) == {"ckpt", "localize", "profile", "distill"}
    assert server["execution_s"] > 0 and server["adapter_bytes"] > 0
    assert server["hash_equals_direct_before"] is True
    assert server["node_loop_steps_per_s"]["distill"] > 0  # from the server's own progress messages
    assert server["server_device"] == "cpu"  # read from the server's own log

    checks = {row["check"] for row in results["acceptance"]}
    for check in ("SD1.5: SPARE erase (3 stages + save) s", "SD1.5: peak VRAM allocated GiB",
                  "SD1.5: speed-up vs ESD-x (1000 it.)", "SD1.5: adapter MiB", "SD1.5: /prompt time vs direct run",
                  "SD1.5: input weights unchanged (hash)"):
        assert check in checks, check
    assert all(row["counts"] is False for row in results["acceptance"])  # a CPU smoke run proves nothing about them
    assert "Smoke run" in md and "extrapolated" in md and "SD15" in md


def test_real_size_sd15_and_sdxl_layouts_are_detected_by_comfyui():
    proc = subprocess.run([sys.executable, "-m", "bench.gpu.checkpoints", "--verify", "sd15,sdxl"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    reports = json.loads(proc.stdout)
    by_family = {r["family"]: r for r in reports}
    assert by_family["sd15"]["detected"] == "SD15" and by_family["sdxl"]["detected"] == "SDXL"
    assert by_family["sdxl"]["clip_class"] == "SDXLClipModel"
    # Parameter counts of the real architectures.
    assert by_family["sd15"]["unet_params"] == 859_520_964
    assert by_family["sdxl"]["unet_params"] == 2_567_463_684
    assert by_family["sd15"]["text_params"] == 123_060_480  # CLIP-L
    for report in reports:
        assert report["ok"], report


def test_graphs_probe_runs_its_eager_half_on_the_cpu(tmp_path, scratch):
    """bench/gpu/graphs_probe.py: on the CPU only the eager distill steps run (CUDA graphs need a GPU)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu.graphs_probe", "--tiny", "--steps", "5", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)},
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert list(scratch.iterdir()) == []  # the scratch checkpoint's folder goes with its file
    report = json.loads((tmp_path / "graphs_probe_sd15.json").read_text())
    assert "error" not in report["eager"], report["eager"].get("traceback")
    assert report["eager"]["ms_per_step"] > 0 and len(report["eager"]["last_losses"]) == 3
    assert all(loss > 0 for loss in report["eager"]["first_losses"])
    assert report["eager"]["cuda_graphs_used"] is False
    assert "graphed" not in report and "speedup" not in report


def test_train_probe_runs_its_eager_half_on_the_cpu_and_leaves_the_shipped_weights(tmp_path):
    """bench/gpu/train_probe.py (issue #3's retrain on a GPU): on the CPU only the eager training steps run;
    it trains from the shipped weights and must write its own elsewhere."""
    from demo_world import config
    from file_digests import sha256_by_name

    shipped = [config.UNET_FILE, config.TEXT_ENCODER_FILE]
    before = sha256_by_name(shipped)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu.train_probe", "--steps", "2", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    report = json.loads((tmp_path / "train_probe.json").read_text())
    assert "error" not in report["eager"], report["eager"].get("traceback")
    assert report["eager"]["ms_per_step"] > 0 and len(report["eager"]["first_losses"]) == 2
    assert all(loss > 0 for loss in report["eager"]["first_losses"])
    assert report["eager"]["warnings"] == []
    assert "graphed" not in report and "speedup" not in report
    assert sha256_by_name(shipped) == before


def test_diagnose_runs_its_variants_on_the_cpu(tmp_path, scratch):
    """bench/gpu/diagnose.py, which a GPU session runs in one call: each variant it would run there, on the tiny SD1.5."""
    variants = ["saliency_ckpt_on", "saliency_bf16_compute_ckpt_on", "profile", "distill_ckpt_on_bf16",
                "distill_ckpt_on_bf16_channels_last", "distill_ckpt_on_bf16_compute"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu.diagnose", "--tiny", "--family", "sd15", "--steps", "3", "--no-profiler",
         "--only", ",".join(variants), "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)},
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert list(scratch.iterdir()) == []  # the scratch checkpoint's folder goes with its file
    runs = json.loads((tmp_path / "diagnose_sd15.json").read_text())["runs"]
    assert sorted(runs) == sorted(variants)
    for name, run in runs.items():
        assert "error" not in run, (name, run.get("traceback"))
    for name in variants:
        if name.startswith("distill"):
            assert len(runs[name]["step_s"]) == 2, (name, runs[name])  # 3 steps: 2 intervals after the first
            assert runs[name]["cuda_graphs_used"] is False  # the CPU has none; on a GPU a failed capture says False


def test_unet_flops_are_counted_on_meta_tensors():
    # bench/gpu/flops.py: ComfyUI's SD1.5 UNet at 512 px, counted without memory: 0.80 TFLOP per forward, of which
    # convolutions 55%, linear layers 29%, attention 16%. A counter that missed any one kind of op falls below
    # 0.7; one that also counted the backward in the forward lands above 0.9. The input-gradient backward costs
    # about as much as the forward.
    from bench.gpu.flops import unet_flops
    from bench.host import setup

    setup()
    import comfy.ldm.modules.attention as attention

    chosen = attention.optimized_attention
    forward, backward = unet_flops("sd15")
    assert attention.optimized_attention is chosen  # ComfyUI's own attention is back for what runs next here
    assert 0.7e12 < forward < 0.9e12, forward
    assert 0.8 * forward < backward < 2.0 * forward, (forward, backward)
