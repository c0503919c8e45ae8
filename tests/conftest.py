"""Test setup: the real ComfyUI host on the import path, and a real ComfyUI server fixture."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from comfy_server import ComfyServer, host, new_base_dir, remove_base_dir  # noqa: E402

# ComfyUI goes first: its top-level `nodes` module must win over this pack's `nodes/` package.
sys.path.insert(0, host()["comfyui"])
import torch  # noqa: E402
import comfy.cli_args  # noqa: E402

# In-process ComfyUI (engine-level tests) must pick the CPU before model_management loads.
comfy.cli_args.args.cpu = not torch.cuda.is_available()


@pytest.fixture(scope="session")
def comfy_server():
    """A ComfyUI server with this pack, in a temporary base directory, stopped at the end."""
    base = new_base_dir()
    server = ComfyServer(base)
    try:
        server.start()
        errors = server.pack_import_errors()
        if errors:
            pytest.fail("the pack failed to import in ComfyUI:\n" + "\n".join(errors) + "\n" + server.log()[-4000:])
        yield server
    finally:
        server.stop()
        remove_base_dir(base)


@pytest.fixture(scope="session")
def pack():
    """This pack imported in-process as ComfyUI imports it: a package named after its folder."""
    spec = importlib.util.spec_from_file_location(
        "comfyui_spare", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_spare"] = module
    spec.loader.exec_module(module)
    return module
