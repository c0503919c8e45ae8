"""Socket types the SPARE nodes pass between each other."""
from comfy_api.latest import io

Saliency = io.Custom("SPARE_SALIENCY")  # spare_engine.SaliencyMap
Timesteps = io.Custom("SPARE_TIMESTEPS")  # spare_engine.TimestepProfile
LoraModel = io.Custom("LORA_MODEL")  # ComfyUI's own in-memory LoRA: {key: tensor}, as its training nodes use


def resolution_input() -> io.Int.Input:
    return io.Int.Input(
        "resolution", default=0, min=0, max=4096, step=8,
        tooltip="Image size the engine generates its training latents at; 0 = the model's native size "
        "(512 for SD1.x and SD2.x base, 768 for SD2.x 768-v, 1024 for SDXL, 128 for the demo model).",
    )
