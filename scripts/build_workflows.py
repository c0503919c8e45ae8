#!/usr/bin/env python3
"""Write the example workflows in `workflows/` (UI format) from the live node definitions.

Starts a ComfyUI server with the pack (from `.host/`), reads `/object_info`, and writes
each workflow below. Run it again after a node's inputs change.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from comfy_server import ComfyServer, new_base_dir, remove_base_dir  # noqa: E402
from comfy_workflows import Node, to_ui  # noqa: E402
from demo_world import demo_erasure  # noqa: E402

WORKFLOWS = ROOT / "workflows"
SD15_CKPT = "v1-5-pruned-emaonly-fp16.safetensors"
SDXL_CKPT = "sd_xl_base_1.0.safetensors"


def erase_graph(loader: Node, targets: list[str], surrogates: list[str], retain: list[str], compare: list[str],
                save_name: str, steps: int, distill: dict | None = None, compare_widgets: dict | None = None) -> list[Node]:
    """Loader -> Saliency Localize -> Timestep Profile -> SPARE Distill -> Apply -> Erasure Compare."""
    m, c, v = (loader.id, 0), (loader.id, 1), (loader.id, 2)
    text = {"targets": "\n".join(targets)}
    return [
        loader,
        Node(2, "SpareSaliencyLocalize", {**text, "samples": 4}, {"model": m, "clip": c}, pos=(420, 0)),
        Node(3, "SpareTimestepProfile", {**text, "surrogates": "\n".join(surrogates)}, {"model": m, "clip": c},
             pos=(420, 420)),
        Node(4, "SpareDistill", {**text, "surrogates": "\n".join(surrogates), "retain": "\n".join(retain),
                                 "steps": steps, "save_name": save_name, **(distill or {})},
             {"model": m, "clip": c, "saliency": (2, 0), "timesteps": (3, 0)}, pos=(840, 0)),
        Node(5, "SpareApplyErasureLora", {"strength": 1.0}, {"model": m, "erasure_lora": (4, 0)}, pos=(1260, 0)),
        Node(6, "SpareErasureCompare", {"prompts": "\n".join(compare), **(compare_widgets or {})},
             {"model": m, "erased_model": (5, 0), "clip": c, "vae": v}, pos=(1260, 240)),
        Node(7, "SaveImage", {"filename_prefix": f"spare/{save_name}_compare"}, {"images": (6, 0)}, pos=(1680, 0)),
        Node(8, "PreviewImage", {}, {"images": (2, 1)}, pos=(420, 840), title="Saliency per layer"),
        Node(9, "PreviewImage", {}, {"images": (3, 1)}, pos=(840, 840), title="Timestep profile"),
        Node(10, "PreviewImage", {}, {"images": (4, 1)}, pos=(1260, 840), title="Distill loss"),
    ]


def apply_saved_graph() -> list[Node]:
    """Checkpoint -> Apply Erasure LoRA (strength slider) -> KSampler -> VAE Decode -> Save."""
    return [
        Node(1, "CheckpointLoaderSimple", {"ckpt_name": SD15_CKPT}),
        Node(2, "SpareApplyErasureLora", {"lora_name": "sd15_erase_van_gogh.safetensors", "strength": 1.0},
             {"model": (1, 0)}, pos=(420, 0)),
        Node(3, "CLIPTextEncode", {"text": "a painting of a starry night over a village, in the style of Van Gogh"},
             {"clip": (1, 1)}, pos=(420, 200)),
        Node(4, "CLIPTextEncode", {"text": ""}, {"clip": (1, 1)}, pos=(420, 420)),
        Node(5, "EmptyLatentImage", {"width": 512, "height": 512}, pos=(420, 620)),
        Node(6, "KSampler", {"seed": 0, "steps": 20, "cfg": 7.5},
             {"model": (2, 0), "positive": (3, 0), "negative": (4, 0), "latent_image": (5, 0)}, pos=(840, 0)),
        Node(7, "VAEDecode", {}, {"samples": (6, 0), "vae": (1, 2)}, pos=(1260, 0)),
        Node(8, "SaveImage", {"filename_prefix": "spare/erased"}, {"images": (7, 0)}, pos=(1500, 0)),
    ]


def workflows() -> dict[str, list[Node]]:
    return {
        "spare_demo_erase_style": erase_graph(
            Node(1, "SpareDemoModel"), demo_erasure.target_prompts(), demo_erasure.surrogate_prompts(),
            demo_erasure.retain_prompts(), demo_erasure.compare_prompts(), "spare_demo_neon_erased", steps=200,
            compare_widgets={"steps": 20, "cfg": 6.0},
        ),
        "spare_sd15_erase_style": erase_graph(
            Node(1, "CheckpointLoaderSimple", {"ckpt_name": SD15_CKPT}),
            ["a painting in the style of Van Gogh", "a starry night by Vincent van Gogh"],
            ["a painting", "a starry night"],
            ["a painting in the style of Claude Monet", "a photo of a city street at night"],
            ["a painting in the style of Van Gogh", "a painting in the style of Claude Monet"],
            "sd15_erase_van_gogh", steps=200,
        ),
        "spare_sdxl_erase_object": erase_graph(
            Node(1, "CheckpointLoaderSimple", {"ckpt_name": SDXL_CKPT}),
            ["a photo of a parachute", "a parachute over the sea"],
            ["a photo of the sky", "the sky over the sea"],
            ["a photo of a church", "a photo of a golf ball", "a photo of a hot air balloon"],
            ["a photo of a parachute", "a photo of a hot air balloon"],
            "sdxl_erase_parachute", steps=200,
        ),
        "spare_apply_saved_erasure": apply_saved_graph(),
    }


def main() -> None:
    base = new_base_dir()
    server = ComfyServer(base)
    try:
        server.start()
        info = server.get_json("/object_info")
    finally:
        server.stop()
        remove_base_dir(base)
    WORKFLOWS.mkdir(exist_ok=True)
    for name, nodes in workflows().items():
        path = WORKFLOWS / f"{name}.json"
        path.write_text(json.dumps(to_ui(nodes, info), indent=1) + "\n")
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
