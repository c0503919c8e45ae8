"""Small random-weight model files in ComfyUI's own formats, made by the tests themselves.

The SD1.5 checkpoint keeps what ComfyUI's detection looks at (320 model channels,
context_dim 768, no `adm`, the CLIP-L text encoder, a VAE) and shrinks the rest: one
UNet level with one res block, and a TAESD-format VAE.
"""
from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch


def _value(name: str, t: torch.Tensor, g: torch.Generator, std: float) -> torch.Tensor:
    """Deterministic weights: norms at 1, biases at 0, the rest small Gaussian."""
    if not t.is_floating_point():
        return t.clone()
    if "norm" in name and name.endswith(".weight") and t.ndim == 1:
        return torch.ones_like(t, dtype=torch.float32)
    if name.endswith(".bias"):
        return torch.zeros_like(t, dtype=torch.float32)
    return torch.randn(t.shape, generator=g) * std


def _fill(sd: dict[str, torch.Tensor], seed: int, std: float = 0.02) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: _value(name, t, g, std) for name, t in sd.items()}


@torch.no_grad()
def fill_(module: torch.nn.Module, seed: int, std: float = 0.02) -> torch.nn.Module:
    """_fill's weights written into `module` in place: no second copy of a big text encoder."""
    g = torch.Generator().manual_seed(seed)
    for name, t in module.state_dict(keep_vars=True).items():
        if t.is_floating_point():
            t.copy_(_value(name, t, g, std))
    return module


def comfy_model(config_class, unet_config: dict, checkpoint_keys: dict, seed: int = 0):
    """A float32 UNet of a ComfyUI model class (`comfy.supported_models.*`) with random weights, as a
    ModelPatcher, built as ComfyUI builds one from a checkpoint holding `checkpoint_keys` (what some
    classes read their prediction type from)."""
    import comfy.model_management as mm
    import comfy.model_patcher

    config = config_class(dict(unet_config))
    config.set_inference_dtype(torch.float32, None)
    with torch.inference_mode():  # as ComfyUI's executor loads models
        base = config.get_model(checkpoint_keys)
        fill_(base.diffusion_model, seed)  # ComfyUI's layers skip init: they expect a checkpoint
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def tiny_sd15_unet() -> torch.nn.Module:
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return UNetModel(
        image_size=32, in_channels=4, model_channels=320, out_channels=4, num_res_blocks=1,
        channel_mult=(1,), num_heads=8, use_spatial_transformer=True, transformer_depth=[1],
        transformer_depth_middle=1, transformer_depth_output=[1, 1], context_dim=768,
        use_linear_in_transformer=False, legacy=False,
    )


def write_tiny_sd15_checkpoint(path: Path, seed: int = 0) -> Path:
    import comfy.sd1_clip
    import comfy.taesd.taesd

    sd = {}
    for k, v in _fill(tiny_sd15_unet().state_dict(), seed).items():
        sd[f"model.diffusion_model.{k}"] = v.half()
    clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float16)
    for k, v in _fill(clip.transformer.state_dict(), seed + 1).items():
        sd[f"cond_stage_model.transformer.{k}"] = v.half()
    taesd = comfy.taesd.taesd.TAESD()
    for k, v in _fill(taesd.state_dict(), seed + 2, std=0.1).items():
        sd[f"first_stage_model.{k}"] = v.half()
    safetensors.torch.save_file(sd, str(path))
    return path


def attention_lora_keys() -> list[tuple[str, tuple[int, int]]]:
    """Kohya-style LoRA base names and (out, in) shapes for the tiny UNet's attention projections."""
    keys = []
    for name, module in tiny_sd15_unet().named_modules():
        if isinstance(module, torch.nn.Linear) and ".attn" in name:
            keys.append(("lora_unet_" + name.replace(".", "_"), tuple(module.weight.shape)))
    return keys


def write_lora(path: Path, seed: int = 0, rank: int = 4, scale: float = 1.0) -> Path:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for base, (out_f, in_f) in attention_lora_keys():
        sd[f"{base}.lora_down.weight"] = torch.randn(rank, in_f, generator=g) * scale
        sd[f"{base}.lora_up.weight"] = torch.randn(out_f, rank, generator=g) * scale
        sd[f"{base}.alpha"] = torch.tensor(float(rank))
    safetensors.torch.save_file(sd, str(path))
    return path


def write_foreign_lora(path: Path) -> Path:
    """A LoRA for another architecture (Flux-style transformer keys): nothing matches an SD1.5 UNet."""
    sd = {
        "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(4, 64),
        "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(64, 4),
    }
    safetensors.torch.save_file(sd, str(path))
    return path
