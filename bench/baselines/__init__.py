"""Erasure methods, each `erase(denoiser, targets, surrogates, retain, config, callback) -> (state_dict, info)`.

The state dict is in ComfyUI's LoRA format (`.lora_down/.lora_up/.alpha` for SPARE,
`.diff/.diff_b` full-weight differences for the fine-tuning and closed-form baselines), so
ComfyUI's stock loader applies every result; `info["trainable_params"]` counts what was trained.
"""
from . import esd, salun, spare, uce

METHODS = {
    "SPARE": (spare.erase, spare.SpareConfig),
    "ESD-x": (esd.erase, lambda **kw: esd.ESDConfig(**{"method": "x", **kw})),
    "ESD-u": (esd.erase, lambda **kw: esd.ESDConfig(**{"method": "u", **kw})),
    "SalUn": (salun.erase, salun.SalUnConfig),
    "UCE": (uce.erase, uce.UCEConfig),
}

__all__ = ["METHODS", "esd", "salun", "spare", "uce"]
