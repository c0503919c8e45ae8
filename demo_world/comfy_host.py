"""Make ComfyUI importable for scripts that run outside a ComfyUI process.

Inside ComfyUI (the node, the server) `comfy` is already imported and this does
nothing. Standalone (training, evaluation) it puts the host recorded by
`scripts/setup_host.py` on the path and, without CUDA, selects the CPU before
`comfy.model_management` probes for a GPU.
"""
import json
import os
import sys
from pathlib import Path

HOST_JSON = Path(__file__).resolve().parent.parent / ".host" / "host.json"


def ensure_comfy():
    if "comfy.model_management" in sys.modules:
        return
    try:
        import comfy.cli_args
    except ImportError:
        # ComfyUI first: its top-level `nodes` module must win over the pack's `nodes/`.
        sys.path.insert(0, os.environ.get("SPARE_COMFYUI_DIR") or json.loads(HOST_JSON.read_text())["comfyui"])
        import comfy.cli_args
    import torch
    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True
