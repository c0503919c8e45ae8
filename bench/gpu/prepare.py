"""Make `.gpu/` here (CPU side, with network), the one folder the device tool's `run` carries.

    .host/venv/bin/python bench/gpu/prepare.py

.gpu/ComfyUI   the project's ComfyUI (0.3.75) without .git, its tests and the tokenizer data of
               text encoders SD1.5/SDXL do not use (their CLIP tokenizer is comfy/sd1_tokenizer)
.gpu/wheels    the pure-Python packages ComfyUI needs that the GPU image lacks: torchsde,
               trampoline (torchsde's), websocket-client (scripts/comfy_server.py), at the
               versions of the project's host venv
PyAV (36 MB) does not fit; bench/gpu/device.sh puts an import stub (bench/gpu/stubs/av) on the path.
`.gpu/` is listed in .git/info/exclude (this clone only), so it is neither committed nor sent
twice; the tool sends it because `run` names it in `carry`. Checks that the whole transfer stays
under the tool's 64 MiB.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CARRY = ROOT / ".gpu"
WHEELS = {"torchsde": "0.2.6", "trampoline": "0.1.2", "websocket-client": "1.8.0"}
LIMIT = 64 * 2**20
PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
            "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64", "--platform", "any"]


def comfy_source() -> Path:
    own = os.environ.get("SPARE_COMFYUI_DIR")
    if own:
        return Path(own)
    return Path(json.loads((ROOT / ".host" / "host.json").read_text())["comfyui"])


def host_python() -> str:
    own = os.environ.get("SPARE_COMFYUI_PYTHON")
    if own:
        return own
    return json.loads((ROOT / ".host" / "host.json").read_text())["python"]


def ignore(folder: str, names: list[str]) -> set[str]:
    rel = Path(folder).relative_to(comfy_source()).as_posix()
    skip = {n for n in names if n in (".git", "__pycache__", ".github") or n.endswith(".pyc")}
    if rel == ".":
        skip |= {n for n in names if n in ("tests", "tests-unit", "script_examples", "output", "input", "models",
                                             "user", "temp", "custom_nodes")}
    if rel.startswith("comfy/text_encoders"):
        skip |= {n for n in names if (Path(folder) / n).is_file() and not n.endswith(".py")}
        skip |= {n for n in names if (Path(folder) / n).is_dir()}
    return skip


def tree_bytes() -> int:
    """What the tool sends besides carried paths: tracked and untracked-not-ignored files."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.split(b"\0")
    return sum((ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file())


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    exclude = ROOT / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    if "/.gpu/" not in lines:
        exclude.write_text("\n".join([*lines, "/.gpu/"]) + "\n")
    shutil.rmtree(CARRY / "ComfyUI", ignore_errors=True)
    shutil.copytree(comfy_source(), CARRY / "ComfyUI", ignore=ignore, symlinks=True)
    for sub in ("models", "custom_nodes", "input", "output", "user", "temp"):
        (CARRY / "ComfyUI" / sub).mkdir(exist_ok=True)
    wheels = CARRY / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    subprocess.run([host_python(), "-m", "pip", "download", "--no-deps", "-q", *PLATFORM, "-d", str(wheels),
                    *[f"{name}=={version}" for name, version in WHEELS.items()]], check=True)
    carried, tree = folder_bytes(CARRY), tree_bytes()
    print(f".gpu/ComfyUI {folder_bytes(CARRY / 'ComfyUI') / 2**20:.1f} MiB, .gpu/wheels "
          f"{folder_bytes(wheels) / 2**20:.2f} MiB ({', '.join(sorted(p.name for p in wheels.iterdir()))})")
    print(f"working tree {tree / 2**20:.1f} MiB + .gpu {carried / 2**20:.1f} MiB = {(tree + carried) / 2**20:.1f} MiB "
          f"of the tool's 64 MiB")
    if tree + carried > LIMIT:
        print("too large for the device tool: trim the working tree or .gpu", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
