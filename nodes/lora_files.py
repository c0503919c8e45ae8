"""Reading LoRA state dicts and matching their keys to a ComfyUI model.

ComfyUI's own loader logs unmatched keys and carries on; a user applying an erasure
LoRA needs to know when it silently does nothing, so the match is checked here.
"""
from __future__ import annotations

import os
import re

import safetensors
import safetensors.torch
import torch

import comfy.lora
import comfy.lora_convert
import folder_paths

NO_FILE = "[None]"
SAVE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def lora_file_options() -> list[str]:
    return [NO_FILE] + folder_paths.get_filename_list("loras")


def read_lora_file(lora_name: str) -> dict[str, torch.Tensor]:
    """Load a LoRA from ComfyUI's `loras` folder; only `.safetensors` files are read."""
    if not lora_name.lower().endswith(".safetensors"):
        raise ValueError(
            f"lora_name: '{lora_name}' is not a .safetensors file; "
            "only safetensors LoRA files are loaded (pickled .ckpt/.pt/.bin files are refused)."
        )
    path = folder_paths.get_full_path("loras", lora_name)
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(
            f"lora_name: '{lora_name}' was not found in the loras folder(s) "
            f"{folder_paths.get_folder_paths('loras')} (deleted, or a link that points nowhere)."
        )
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"lora_name: '{lora_name}' is not a readable safetensors file ({e}).") from e


def lora_save_path(save_name: str) -> str:
    """Where SPARE Distill writes `save_name`: a plain file name inside the first loras folder."""
    name = save_name.strip()
    if name.lower().endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    if not name or not SAVE_NAME.fullmatch(name) or name.startswith("."):
        raise ValueError(
            f"save_name: '{save_name}' is not allowed; use letters, digits, '-', '_' and '.' only "
            "(no folders, no path separators): the file is always written into models/loras."
        )
    folder = folder_paths.get_folder_paths("loras")[0]
    path = os.path.join(folder, name + ".safetensors")
    if os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) != os.path.realpath(folder):
        raise ValueError(f"save_name: '{save_name}' points outside models/loras.")
    return path


def _model_key(lora_key: str, key_map: dict[str, str]) -> str | None:
    # A LoRA key is a module name plus one to three suffix parts
    # (".alpha", ".lora_up.weight", ".hada_w1_a", ...).
    parts = lora_key.split(".")
    for cut in (1, 2, 3):
        if len(parts) > cut and ".".join(parts[:-cut]) in key_map:
            return ".".join(parts[:-cut])
    return None


def lora_patches(model, lora_sd: dict[str, torch.Tensor], source: str) -> tuple[dict, list[str]]:
    """Return ComfyUI weight patches for `model` and the LoRA keys that match none of its weights.

    Raises ValueError when no key matches at all: applying such a file would do nothing.
    """
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    lora_sd = comfy.lora_convert.convert_lora(lora_sd)
    unmatched = sorted(k for k in lora_sd if _model_key(k, key_map) is None)
    if len(unmatched) == len(lora_sd):
        shown = ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
        raise ValueError(
            f"{source}: none of the {len(lora_sd)} LoRA keys match this model's weights (e.g. {shown}); "
            "the LoRA was made for another model architecture, or it is not a LoRA."
        )
    patches = comfy.lora.load_lora(lora_sd, key_map, log_missing=False)
    return patches, unmatched
