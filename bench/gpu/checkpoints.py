"""Random-weight SD1.5 and SDXL checkpoints in the real single-file formats, written at run time.

Erasure speed and memory do not depend on the weights' values, so the GPU benchmark measures
models of exactly the SD1.5 / SDXL architectures with random weights. The key layout is made
by ComfyUI itself: every part is built on the meta device (no memory) from ComfyUI's own
classes, and its keys are renamed with the model config's `process_*_state_dict_for_saving`
(what ComfyUI's CheckpointSave node writes), so:

  SD1.5  model.diffusion_model.* (LDM UNet, SD15 config)  cond_stage_model.transformer.text_model.*
         (CLIP-L)  first_stage_model.* (KL-f8 VAE)
  SDXL   model.diffusion_model.* (SDXL base config, adm 2816)  conditioner.embedders.0.transformer.
         text_model.* (CLIP-L)  conditioner.embedders.1.model.* (OpenCLIP bigG layout: resblocks,
         in_proj_weight, text_projection, ...)  first_stage_model.* (KL-f8 VAE)

Only then are tensors made real: norms' weights 1, biases 0, everything else N(0, 0.02^2),
in fp16, drawn on the GPU when there is one. Files are never committed (SD1.5 is 2.1 GB,
SDXL 6.9 GB). `tiny` is the test suite's SD1.5 checkpoint (tests/tiny_checkpoints.py):
detected as SD15, one UNet level, real CLIP-L, TAESD.

    python -m bench.gpu.checkpoints --verify sd15,sdxl         # detection from meta tensors, no memory
    python -m bench.gpu.checkpoints --write sd15 --dir /tmp/ck  # a real file (2.1 GB) + ComfyUI load check
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = {"sd15": "SD15", "sdxl": "SDXL"}  # our name -> ComfyUI's model config class

# The full UNet configs ComfyUI itself uses for these architectures
# (comfy/model_detection.py, unet_config_from_diffusers_unet: SD15 and SDXL).
UNET_CONFIGS = {
    "sd15": {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
        "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
        "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_temporal_attention": False, "use_temporal_resblock": False,
    },
    "sdxl": {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
        "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
        "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
        "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "use_temporal_attention": False, "use_temporal_resblock": False,
    },
}
# ComfyUI's default SD1.x/SDXL VAE (comfy/sd.py, VAE.__init__, "default SD1.x/SD2.x VAE parameters").
VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def _model_config(family: str):
    import comfy.supported_models

    return getattr(comfy.supported_models, FAMILIES[family])(dict(UNET_CONFIGS[family]))


def meta_state_dict(family: str) -> dict[str, torch.Tensor]:
    """The checkpoint's keys and shapes as meta tensors (integer buffers such as position_ids are real)."""
    import comfy.ops
    import comfy.sd1_clip
    import comfy.sdxl_clip
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    config = _model_config(family)
    with torch.device("meta"):
        unet = UNetModel(**UNET_CONFIGS[family], dtype=torch.float16, device="meta",
                         operations=comfy.ops.disable_weight_init)
        if family == "sd15":
            clip = comfy.sd1_clip.SD1ClipModel(device="meta", dtype=torch.float16)
        else:
            clip = comfy.sdxl_clip.SDXLClipModel(device="meta", dtype=torch.float16)
        vae = AutoencoderKL(ddconfig=dict(VAE_DDCONFIG), embed_dim=4)
    sd = {}
    sd.update(config.process_unet_state_dict_for_saving(unet.state_dict()))
    sd.update(config.process_clip_state_dict_for_saving(clip.state_dict()))
    sd.update(config.process_vae_state_dict_for_saving(vae.state_dict()))
    return sd


def parameter_count(sd: dict[str, torch.Tensor], prefix: str = "") -> int:
    return sum(t.numel() for k, t in sd.items() if k.startswith(prefix))


def materialize(sd: dict[str, torch.Tensor], device: str | torch.device = "cpu", seed: int = 0,
                std: float = 0.02, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Real CPU tensors for a meta state dict: 1-D weights (norms) 1, biases 0, the rest N(0, std^2)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for name, t in sd.items():
        if t.device.type != "meta":
            out[name] = t.detach().contiguous().clone()  # position_ids and the like
            continue
        if name.endswith("logit_scale"):
            value = torch.full(t.shape, math.log(100.0))
        elif name.endswith("bias") or name.endswith("_bias"):
            value = torch.zeros(t.shape)
        elif t.dim() <= 1:
            value = torch.ones(t.shape)  # GroupNorm / LayerNorm scales
        else:
            value = torch.randn(t.shape, generator=generator, device=device, dtype=torch.float32).mul_(std)
        out[name] = value.to(dtype).cpu().contiguous()
    return out


def write_checkpoint(family: str, path: str | Path, device: str | torch.device = "cpu", seed: int = 0) -> Path:
    """Write a full-size random-weight SD1.5 / SDXL checkpoint (.safetensors, fp16)."""
    import safetensors.torch

    path = Path(path)
    sd = materialize(meta_state_dict(family), device=device, seed=seed)
    meta = {"spare_bench": json.dumps({"family": family, "random_weights": True, "seed": seed, "std": 0.02})}
    safetensors.torch.save_file(sd, str(path), metadata=meta)
    return path


def _tiny_module():
    spec = importlib.util.spec_from_file_location("_spare_tiny_checkpoints", ROOT / "tests" / "tiny_checkpoints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tiny_checkpoint(family: str, path: str | Path, seed: int = 0) -> Path:
    """The test suite's tiny SD1.5 (detected as SD15). No tiny SDXL exists: ComfyUI detects SDXL only
    with the full transformer depth pattern [0, 0, 2, 2, 10, 10], which is most of SDXL's size."""
    if family != "sd15":
        raise ValueError(f"--tiny is only available for sd15 (an SDXL is detected only at full depth), got {family}")
    return _tiny_module().write_tiny_sd15_checkpoint(Path(path), seed=seed)


# ------------------------------------------------------------------------------------ detection


def _load_report(module: torch.nn.Module, sd: dict[str, torch.Tensor]) -> dict:
    """Keys/shapes of `sd` against `module` (a meta model as ComfyUI would build it)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shape_mismatch = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    return {"keys": len(own), "missing": missing, "unexpected": unexpected, "shape_mismatch": shape_mismatch}


def check_detection(family: str, sd: dict[str, torch.Tensor] | None = None) -> dict:
    """ComfyUI's own detector on a (meta) state dict, and key/shape matching of UNet, CLIP and VAE.

    Runs the first steps of comfy.sd.load_state_dict_guess_config on the checkpoint's keys:
    unet_prefix_from_state_dict, model_config_from_unet (detection), then builds what the
    loader would build - the UNet from the *detected* config, the model config's clip_target
    text encoder, the VAE - on the meta device and checks every key and shape. No weights are
    allocated, so this works for SDXL on a small machine.
    """
    import comfy.model_detection
    import comfy.ops
    import comfy.utils
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    sd = dict(sd if sd is not None else meta_state_dict(family))
    prefix = comfy.model_detection.unet_prefix_from_state_dict(sd)
    config = comfy.model_detection.model_config_from_unet(sd, prefix)
    detected = type(config).__name__ if config is not None else None
    report = {"family": family, "expected": FAMILIES[family], "detected": detected, "unet_prefix": prefix,
              "unet_params": parameter_count(sd, prefix)}
    if config is None:
        report["ok"] = False
        return report
    unet_cfg = {k: v for k, v in config.unet_config.items() if k not in ("dtype", "device", "operations")}
    with torch.device("meta"):
        unet = UNetModel(**unet_cfg, dtype=torch.float16, device="meta", operations=comfy.ops.disable_weight_init)
    unet_sd = comfy.utils.state_dict_prefix_replace(sd, {prefix: ""}, filter_keys=True)
    report["unet"] = _load_report(unet, unet_sd)
    report["model_type"] = str(config.model_type(sd, prefix))

    target = config.clip_target(state_dict=sd)
    clip_sd = config.process_clip_state_dict(dict(sd))
    with torch.device("meta"):
        clip = target.clip(device="meta", dtype=torch.float16)
    report["clip_class"] = target.clip.__name__
    report["clip"] = _load_report(clip, clip_sd)
    # ComfyUI itself ignores these when missing (comfy/sd.py, load_state_dict_guess_config).
    report["clip"]["missing"] = [k for k in report["clip"]["missing"]
                                 if ".logit_scale" not in k and ".transformer.text_projection.weight" not in k]
    # position_ids are buffers ComfyUI's CLIP does not keep; loading skips them (strict=False).
    report["clip"]["unexpected"] = [k for k in report["clip"]["unexpected"] if not k.endswith("position_ids")]
    report["text_params"] = parameter_count(clip_sd)

    vae_sd = comfy.utils.state_dict_prefix_replace(sd, {k: "" for k in config.vae_key_prefix}, filter_keys=True)
    vae_sd = config.process_vae_state_dict(vae_sd)
    with torch.device("meta"):
        vae = AutoencoderKL(ddconfig=dict(VAE_DDCONFIG), embed_dim=vae_sd["post_quant_conv.weight"].shape[1])
    report["vae"] = _load_report(vae, vae_sd)
    report["vae_params"] = parameter_count(vae_sd)
    clean = all(not report[p][k] for p in ("unet", "clip", "vae") for k in ("missing", "unexpected", "shape_mismatch"))
    report["ok"] = detected == FAMILIES[family] and report["model_type"].endswith("EPS") and clean
    return report


def load_and_check(family: str, path: str | Path) -> dict:
    """Load a written file with ComfyUI's checkpoint loader (what CheckpointLoaderSimple calls)."""
    import comfy.sd

    started = time.perf_counter()
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)
    detected = type(model.model.model_config).__name__
    out = {"detected": detected, "load_s": time.perf_counter() - started, "clip": clip is not None,
           "vae": vae is not None, "unet_dtype": str(model.model.get_dtype()),
           "ok": detected == FAMILIES[family] and clip is not None and vae is not None}
    del model, clip, vae
    return out


def _setup_comfy() -> None:
    """ComfyUI on the path first (its `nodes` module must win), the CPU without CUDA."""
    import os

    if "comfy.model_management" in sys.modules:
        return
    comfy_dir = os.environ.get("SPARE_COMFYUI_DIR")
    if not comfy_dir:
        host = ROOT / ".host" / "host.json"
        if not host.exists():
            raise SystemExit("no ComfyUI: set SPARE_COMFYUI_DIR or run `python3 scripts/setup_host.py`")
        comfy_dir = json.loads(host.read_text())["comfyui"]
    if comfy_dir not in sys.path:
        sys.path.insert(0, comfy_dir)
    import comfy.cli_args

    comfy.cli_args.args.cpu = not torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verify", default="", help="families to check from meta tensors, e.g. sd15,sdxl")
    parser.add_argument("--write", default="", help="families to write as real files into --dir, then load")
    parser.add_argument("--dir", default="/tmp/spare_gpu_checkpoints")
    parser.add_argument("--tiny", action="store_true", help="write the tiny SD1.5 instead")
    args = parser.parse_args(argv)
    _setup_comfy()
    logging.basicConfig(level=logging.WARNING)
    ok = True
    reports = []
    for family in filter(None, args.verify.split(",")):
        report = check_detection(family)
        ok &= report["ok"]
        # Key lists shortened to their first 5 (an empty list is what passes).
        reports.append({k: (v if not isinstance(v, dict) else {kk: (vv[:5] if isinstance(vv, list) else vv)
                                                               for kk, vv in v.items()}) for k, v in report.items()})
    if reports:
        print(json.dumps(reports, indent=1))
    for family in filter(None, args.write.split(",")):
        Path(args.dir).mkdir(parents=True, exist_ok=True)
        path = Path(args.dir) / f"random_{family}{'_tiny' if args.tiny else ''}.safetensors"
        started = time.perf_counter()
        if args.tiny:
            write_tiny_checkpoint(family, path)
        else:
            write_checkpoint(family, path, device="cuda" if torch.cuda.is_available() else "cpu")
        print(f"{path}: {path.stat().st_size / 2**30:.2f} GiB in {time.perf_counter() - started:.1f}s")
        report = load_and_check(family, path)
        ok &= report["ok"]
        print(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
