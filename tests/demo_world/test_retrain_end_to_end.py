"""`python -m demo_world.train --out DIR` end to end, every stage at a few steps: a retrain (on the CPU or in one
call on a lent GPU) must run through all six stages into its own folder, leave the shipped files alone, and skip
what it finished when resumed."""
import functools
import sys

import pytest
import torch
from safetensors.torch import load_file

from demo_world import config
from demo_world.generate import generate
from demo_world.training import classifiers, diffusion, evaluate, report, vae
from file_digests import sha256_by_name

WEIGHT_FILES = ("vae.safetensors", "unet.safetensors", "text_encoder.safetensors", "classifiers.safetensors")


@pytest.fixture
def tiny_recipe(tmp_path, monkeypatch):
    """Every stage's recipe cut to seconds; the folders train.py rebinds are set back afterwards."""
    for module, name, value in [
        (vae, "STEPS", 2), (vae, "BATCH", 2),
        (diffusion, "PER_PAIR", 1), (diffusion, "STEPS", 2), (diffusion, "BATCH", 4),
        (diffusion, "OUTLINE_STEPS", 2),
        (diffusion, "CACHE_DIR", str(tmp_path / "cache")),
        (classifiers, "CLEAN_IMAGES", 32), (classifiers, "ROUNDTRIP_IMAGES", 16), (classifiers, "HELD_OUT", 32),
        (classifiers, "HELD_OUT_ROUNDTRIP", 16), (classifiers, "STEPS", {"object": 2, "style": 2}),
        (classifiers, "BATCH", 8),
        # The evaluation's every pair at two sampler steps, one seed per set, two phrasings (432 images).
        (evaluate, "generate", functools.partial(generate, sampler={**config.SAMPLER, "steps": 2})),
        (evaluate, "SEEDS", (0,)), (evaluate, "STEADY_SEEDS", (0, 1)),
        (evaluate, "PROMPT_TEMPLATES", evaluate.PROMPT_TEMPLATES[:2]),
    ]:
        monkeypatch.setattr(module, name, value)
    threads = torch.get_num_threads()
    yield tmp_path / "retrain"
    config.use_weights_dir(config.SHIPPED_WEIGHTS_DIR)
    report.use_dir(report.SHIPPED_DOCS)
    torch.set_num_threads(threads)


def test_a_retrain_runs_every_stage_into_its_own_folder_and_resumes_past_them(tiny_recipe, monkeypatch):
    from demo_world import train

    out = tiny_recipe
    shipped = sorted(config.SHIPPED_WEIGHTS_DIR.glob("*.safetensors")) + sorted(report.SHIPPED_DOCS.glob("TRAINING*"))
    shipped_before = sha256_by_name(shipped)

    monkeypatch.setattr(sys, "argv", ["train", "--out", str(out), "--device", "cpu", "--threads", "2"])
    train.main()

    stats = report.load_stats()
    assert list(stats) == train.STAGES
    assert all("machine" in stats[stage] for stage in train.STAGES)
    for name in WEIGHT_FILES:
        assert (out / name).exists(), name
    assert (out / "TRAINING.md").exists() and (out / "samples.png").exists()
    assert not list(out.glob("*_cycles.json")) and not list(out.glob("*.partial"))
    assert sha256_by_name(shipped) == shipped_before, "the retrain wrote over the shipped files"
    retrained, ship = load_file(str(out / "unet.safetensors")), load_file(str(config.SHIPPED_WEIGHTS_DIR / "unet.safetensors"))
    assert any(not torch.equal(retrained[k], ship[k]) for k in ship), "the folder holds the shipped UNet, not a retrain"

    written = {name: (out / name).stat().st_mtime_ns for name in WEIGHT_FILES}
    monkeypatch.setattr(sys, "argv", ["train", "--out", str(out), "--device", "cpu", "--resume"])
    train.main()
    assert {name: (out / name).stat().st_mtime_ns for name in WEIGHT_FILES} == written, \
        "a resumed retrain trained a finished stage again"


@pytest.mark.parametrize("capability, refused", [("AVX2", True), ("AVX512", False)])
def test_bf16_on_a_cpu_without_bf16_arithmetic_is_refused_before_anything_is_written(
        capability, refused, tmp_path, monkeypatch, capsys):
    from demo_world import train

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert (train.precision_problem("bf16", torch.device("cpu")) is not None) == refused
    assert train.precision_problem("fp32", torch.device("cpu")) is None
    assert train.precision_problem("bf16", torch.device("cuda")) is None
    if refused:
        out = tmp_path / "retrain"
        monkeypatch.setattr(sys, "argv", ["train", "--out", str(out), "--device", "cpu", "--precision", "bf16"])
        with pytest.raises(SystemExit) as stop:
            train.main()
        assert stop.value.code == 2
        printed = capsys.readouterr().err
        assert "--precision bf16" in printed and "AVX2" in printed and "fp32" in printed
        assert not out.exists()
