#!/usr/bin/env python3
"""README command (1): erase the Neon style from the demo model through a real ComfyUI, headless.

Starts ComfyUI with the pack (base folder `out/demo/`), runs `workflows/spare_demo_erase_style.json`
through `POST /prompt` exactly as the browser would, and prints where the before/after grid and
the erasure LoRA are.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from comfy_server import ComfyServer  # noqa: E402
from comfy_workflows import to_api  # noqa: E402

WORKFLOW = ROOT / "workflows" / "spare_demo_erase_style.json"
BASE = ROOT / "out" / "demo"


def main() -> None:
    shutil.rmtree(BASE / "output", ignore_errors=True)
    server = ComfyServer(BASE)
    started = time.monotonic()
    try:
        server.start()
        print(f"ComfyUI with the SPARE pack is up at {server.url} ({time.monotonic() - started:.0f} s)", flush=True)
        prompt = to_api(json.loads(WORKFLOW.read_text()), server.get_json("/object_info"))
        ws = server.websocket(timeout=600)
        prompt_id = server.queue(prompt)
        titles = {nid: node["class_type"] for nid, node in prompt.items()}
        erase_started, last = time.monotonic(), None
        while True:
            message = ws.recv()
            if not isinstance(message, str):
                continue
            data = json.loads(message)
            if data["type"] == "progress" and data["data"].get("prompt_id") == prompt_id:
                node = titles.get(data["data"]["node"], data["data"]["node"])
                value, total = data["data"]["value"], data["data"]["max"]
                if (node, value * 10 // max(total, 1)) != last:
                    last = (node, value * 10 // max(total, 1))
                    print(f"  {node}: {value}/{total}", flush=True)
            elif data["type"] == "executing" and data["data"].get("node") is None:
                break
            elif data["type"] == "execution_error":
                raise SystemExit(f"the workflow failed: {data['data'].get('exception_message')}")
        ws.close()
        entry = server.wait(prompt_id)
        if entry["status"]["status_str"] != "success":
            raise SystemExit(f"the workflow failed: {entry['status']}")
        erase_seconds = time.monotonic() - erase_started
    finally:
        server.stop()
    grid = sorted((BASE / "output" / "spare").glob("*_compare_*.png"))[-1]
    lora = BASE / "models" / "loras" / "spare_demo_neon_erased.safetensors"
    print(f"\nErased the Neon style in {erase_seconds:.0f} s (whole run {time.monotonic() - started:.0f} s).")
    print(f"Before/after grid: {grid}")
    print(f"Erasure LoRA:      {lora} ({lora.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
