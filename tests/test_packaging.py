"""The pack installs into a ComfyUI that has torch without installing anything torch-related."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH_RELATED = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$", re.I)


def would_install(*args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--disable-pip-version-check", *args],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    line = next((l for l in out.splitlines() if l.startswith("Would install ")), "Would install ")
    return [re.sub(r"-[0-9][^-]*$", "", p) for p in line[len("Would install "):].split()]


def test_pip_install_of_the_pack_installs_nothing_torch_related():
    packages = would_install(".")
    assert "comfyui-spare" in packages or "comfyui_spare" in packages, packages
    assert not [p for p in packages if TORCH_RELATED.match(p)], packages


def test_requirements_file_installs_nothing_torch_related():
    assert not [p for p in would_install("-r", "requirements.txt") if TORCH_RELATED.match(p)]


def test_requirements_txt_matches_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = [l.strip() for l in (ROOT / "requirements.txt").read_text().splitlines()
              if l.strip() and not l.startswith("#")]
    assert sorted(listed) == sorted(project["dependencies"])
    assert not any(TORCH_RELATED.match(re.split(r"[<>=~! ]", d)[0]) for d in project["dependencies"])
