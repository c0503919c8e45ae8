"""The three SPARE nodes called in-process, as ComfyUI's executor calls them, at test-sized settings."""
import torch


def erase_with_nodes(model, clip, target: str, surrogate: str, retain: str, *, resolution: int,
                     scheme: str = "concept", steps: int = 3):
    """Saliency Localize -> Timestep Profile -> SPARE Distill (rank 2, batch 1); returns (saliency, lora)."""
    from comfyui_spare.nodes.distill import SpareDistill
    from comfyui_spare.nodes.localize import SaliencyLocalize
    from comfyui_spare.nodes.timestep_profile import TimestepProfileNode

    with torch.inference_mode():  # nodes run under inference mode in ComfyUI's executor
        saliency = SaliencyLocalize.execute(model, clip, target, top_modules=0.5, row_fraction=1.0, samples=1,
                                            seed=0, resolution=resolution).result[0]
        timesteps = TimestepProfileNode.execute(model, clip, target, surrogate, scheme=scheme, uniform_mix=0.2,
                                                samples=1, seed=0, resolution=resolution).result[0]
        lora = SpareDistill.execute(model, clip, saliency, timesteps, target, surrogate, retain, rank=2, steps=steps,
                                    learning_rate=1e-2, forget_weight=1.0, retain_weight=1.0, batch_size=1, seed=0,
                                    save_name="", resolution=resolution).result[0]
    return saliency, lora
