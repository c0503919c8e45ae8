import torch

import comfy.sample
from comfy_api.latest import io

from . import plots
from .comfy_denoiser import native_resolution
from .prompts import prompt_lines


def _condition(clip, text: str) -> list:
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


def _sample(model, vae, positive: list, negative: list, seed: int, steps: int, cfg: float, size: int) -> torch.Tensor:
    """One image, as KSampler (euler, normal) + VAE Decode would make it."""
    channels = model.model.latent_format.latent_channels
    latent = torch.zeros(1, channels, size // 8, size // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    samples = comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative,
                                  latent, denoise=1.0, seed=seed, disable_pbar=True)
    return vae.decode(samples)[0]


class ErasureCompare(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpareErasureCompare",
            display_name="Erasure Compare",
            category="SPARE",
            description="The same prompts and seeds with and without the erasure, side by side.",
            inputs=[
                io.Model.Input("model", tooltip="The original model."),
                io.Model.Input("erased_model", tooltip="The model with the erasure applied (Apply Erasure LoRA)."),
                io.Clip.Input("clip", tooltip="The text encoder."),
                io.Vae.Input("vae", tooltip="The VAE that decodes the latents."),
                io.String.Input("prompts", multiline=True, default="",
                                tooltip="One prompt per line: the erased concept and concepts that should stay."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed used for every prompt."),
                io.Int.Input("steps", default=20, min=1, max=200, tooltip="Sampling steps (euler)."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=30.0, step=0.1, tooltip="Classifier-free guidance."),
                io.Int.Input("size", default=0, min=0, max=4096, step=8,
                             tooltip="Image size; 0 = the model's native size."),
            ],
            outputs=[
                io.Image.Output(display_name="grid", tooltip="Rows: prompts; columns: before, after."),
                io.Image.Output(display_name="before", tooltip="The original model's images, one per prompt."),
                io.Image.Output(display_name="after", tooltip="The erased model's images, one per prompt."),
            ],
        )

    @classmethod
    def execute(cls, model, erased_model, clip, vae, prompts: str, seed: int, steps: int, cfg: float,
                size: int) -> io.NodeOutput:
        prompt_list = prompt_lines(prompts)
        if not prompt_list:
            raise ValueError("prompts is empty: write at least one prompt, one per line.")
        size = size or native_resolution(model)
        # Each prompt is encoded once and serves both models.
        positives = [_condition(clip, p) for p in prompt_list]
        negative = _condition(clip, "")
        before = [_sample(model, vae, pos, negative, seed, steps, cfg, size) for pos in positives]
        after = [_sample(erased_model, vae, pos, negative, seed, steps, cfg, size) for pos in positives]
        grid = plots.image_grid([[b, a] for b, a in zip(before, after)], prompt_list, ["before", "after"])
        return io.NodeOutput(grid, torch.stack(before), torch.stack(after))
