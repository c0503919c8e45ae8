"""Reading and writing the engine's artifacts: safetensors files whose metadata is JSON.

Every file records its `format`, so loading a saliency map where a LoRA is expected fails
with a clear message, and every metadata value is one JSON document under its own key
(safetensors metadata must be a flat str -> str mapping).
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .denoiser import Denoiser, model_fingerprint


def save_artifact(path: str | os.PathLike, kind: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write atomically: a temporary file in the same folder, then os.replace, so no partial file is ever left."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    metadata = {"format": kind, **{key: json.dumps(value) for key, value in meta.items()}}
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_artifact(path: str | os.PathLike, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        found = metadata.get("format")
        if found != kind:
            raise ValueError(f"{os.fspath(path)} is not a {kind} file (its format is {found!r})")
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    meta = {key: json.loads(value) for key, value in metadata.items() if key != "format"}
    return tensors, meta


def check_fingerprint(what: str, recorded: str, denoiser: Denoiser) -> None:
    """Refuse to use an artifact measured on a different network."""
    current = model_fingerprint(denoiser.module)
    if recorded != current:
        raise ValueError(
            f"{what} was computed on model {recorded[:12]}, this is model {current[:12]}; "
            f"recompute the {what} for this model"
        )
