"""A real ComfyUI server started from the project's host and driven over HTTP like a browser (tests, demo)."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import websocket
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PACK_LINK_NAME = "comfyui-spare"

# Lines ComfyUI's custom-node loader writes when a pack fails to load.
IMPORT_FAILURE_PATTERNS = (
    "Cannot import",
    "IMPORT FAILED",
    "Error while calling comfy_entrypoint",
    "did not return a ComfyExtension",
)


def host() -> dict:
    """The ComfyUI folder and python recorded by scripts/setup_host.py (or given by the environment)."""
    own = os.environ.get("SPARE_COMFYUI_DIR")
    if own:
        return {"comfyui": own, "python": os.environ.get("SPARE_COMFYUI_PYTHON", "python3")}
    path = ROOT / ".host" / "host.json"
    if not path.exists():
        raise RuntimeError("no ComfyUI host: run `python3 scripts/setup_host.py` first")
    return json.loads(path.read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PromptFailed(AssertionError):
    def __init__(self, entry: dict):
        self.entry = entry
        super().__init__(f"prompt failed: {json.dumps(entry.get('status'), indent=1)[:4000]}")


@dataclass
class ComfyServer:
    """One ComfyUI process with its own base directory (models, output, input, user, custom_nodes)."""

    base_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    cpu: bool = True  # tests and the CPU demo pin ComfyUI to the CPU; the GPU benchmark turns this off
    extra_args: tuple[str, ...] = ()  # more main.py flags

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    def start(self, timeout: float = 180.0) -> None:
        info = host()
        comfy = Path(info["comfyui"])
        for sub in ("custom_nodes", "output", "input", "user", "temp", "models/loras", "models/checkpoints"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        link = self.base_dir / "custom_nodes" / PACK_LINK_NAME
        if not link.exists():
            link.symlink_to(ROOT, target_is_directory=True)
        self.log_path = self.base_dir / "comfyui.log"
        cmd = [
            info["python"], "main.py", "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir), "--disable-auto-launch",
        ]
        if self.cpu:
            cmd.append("--cpu")
        cmd += list(self.extra_args)
        if importlib.util.find_spec("comfyui_frontend_package") is None:
            # A host without the frontend package (the GPU machine) still serves the API.
            web = self.base_dir / "web"
            web.mkdir(exist_ok=True)
            cmd += ["--front-end-root", str(web)]
        with open(self.log_path, "wb") as log:
            # A session of its own, so that stop() ends ComfyUI and nothing else.
            self.process = subprocess.Popen(cmd, cwd=comfy, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get_json("/object_info/SpareApplyErasureLora")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer within {timeout}s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def pack_import_errors(self) -> list[str]:
        lines = self.log().splitlines()
        return [l for l in lines if PACK_LINK_NAME in l and any(p in l for p in IMPORT_FAILURE_PATTERNS)]

    # --- HTTP -------------------------------------------------------------------------------------
    def request(self, path: str, data: dict | None = None, method: str | None = None):
        body = json.dumps(data).encode() if data is not None else None
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"} if body else {})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()

    def get_json(self, path: str):
        return json.loads(self.request(path)[1])

    def post_prompt(self, prompt: dict) -> tuple[int, dict]:
        """POST /prompt; returns (HTTP status, body) so tests can check validation errors too."""
        try:
            status, body = self.request("/prompt", {"prompt": prompt, "client_id": self.client_id})
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        return status, json.loads(body)

    def queue(self, prompt: dict) -> str:
        status, body = self.post_prompt(prompt)
        if status != 200:
            raise AssertionError(f"/prompt refused the workflow ({status}): {json.dumps(body)[:4000]}")
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """Wait for a prompt to finish; returns its /history entry (success or error)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                entry["status"]["completed"] or entry["status"].get("status_str") == "error"
            ):
                return entry
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log()[-4000:]}")
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout}s")

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        """Queue a workflow, wait, and raise PromptFailed unless it succeeded."""
        entry = self.wait(self.queue(prompt), timeout)
        if entry["status"].get("status_str") != "success":
            raise PromptFailed(entry)
        return entry

    def interrupt(self) -> None:
        self.request("/interrupt", {})

    def websocket(self, timeout: float = 60.0) -> websocket.WebSocket:
        ws = websocket.WebSocket()
        ws.connect(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}", timeout=timeout)
        return ws

    def images(self, entry: dict, node_id: str) -> list[Image.Image]:
        """The images an output node wrote, fetched through /view as a browser would."""
        out = []
        for img in entry["outputs"][node_id]["images"]:
            query = urllib.parse.urlencode({k: img[k] for k in ("filename", "subfolder", "type")})
            out.append(Image.open(io.BytesIO(self.request(f"/view?{query}")[1])).convert("RGB"))
        return out


def error_message(entry: dict) -> str:
    """The exception message of a failed prompt, as ComfyUI's UI shows it."""
    for kind, data in entry["status"].get("messages", []):
        if kind == "execution_error":
            return f"{data.get('exception_type')}: {data.get('exception_message')} (node {data.get('node_type')})"
    raise AssertionError(f"no execution_error in {entry['status']}")


def new_base_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="spare-comfy-"))


def remove_base_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
