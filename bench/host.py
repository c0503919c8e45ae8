"""The ComfyUI host for a standalone benchmark process.

ComfyUI goes on the path first (its top-level `nodes` module must win over the pack's
`nodes/`), the CPU is chosen when there is no CUDA, and the pack's ComfyUI adapter
(`nodes/comfy_denoiser.py`, `nodes/engine_run.py`) is imported as ComfyUI would import it,
inside a package named `comfyui_spare`. That package's `spare_engine` is the very module
object the baselines import as `spare_engine`, so there is one Conditioning class, one
adapters module, one engine.
"""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "comfyui_spare"


def setup():
    """Make ComfyUI and the pack importable; return the pack's `engine_denoiser` context manager."""
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))  # after ComfyUI's folder, never before it
    from demo_world.comfy_host import ensure_comfy

    ensure_comfy()
    import spare_engine

    if PACKAGE not in sys.modules:
        # The pack's package without running its __init__ (which registers the nodes with ComfyUI's API).
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(ROOT)]
        sys.modules[PACKAGE] = package
        nodes = types.ModuleType(f"{PACKAGE}.nodes")
        nodes.__path__ = [str(ROOT / "nodes")]
        sys.modules[f"{PACKAGE}.nodes"] = nodes
        sys.modules[f"{PACKAGE}.spare_engine"] = spare_engine
        for name, module in list(sys.modules.items()):
            if name.startswith("spare_engine."):
                sys.modules[f"{PACKAGE}.{name}"] = module
    return importlib.import_module(f"{PACKAGE}.nodes.engine_run").engine_denoiser
