from comfy_api.latest import io

from ..spare_engine import compute_saliency
from . import plots
from .engine_run import StepProgress, engine_denoiser
from .prompts import prompt_lines
from .types import Saliency, resolution_input


class SaliencyLocalize(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpareSaliencyLocalize",
            display_name="Saliency Localize",
            category="SPARE",
            description="SPARE stage 1: gradient saliency of the target concept finds the layers (and rows) "
            "that draw it; SPARE Distill trains its adapter only there.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to erase from: SD1.x, SD2.x or SDXL, eps or v "
                                                "prediction, or the demo model."),
                io.Clip.Input("clip", tooltip="The model's text encoder."),
                io.String.Input("targets", multiline=True, default="",
                                tooltip="The concept(s) to erase, one prompt per line."),
                io.Float.Input("top_modules", default=0.5, min=0.01, max=1.0, step=0.01,
                               tooltip="Share of the candidate layers (best saliency first) that get an adapter."),
                io.Float.Input("row_fraction", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="Share of output rows kept inside the chosen layers (1 = whole layers)."),
                io.Int.Input("samples", default=4, min=1, max=64,
                             tooltip="Latents the model generates per target to measure saliency on."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="Seed for the generated latents, noise and timesteps."),
                resolution_input(),
            ],
            outputs=[
                Saliency.Output(display_name="saliency", tooltip="Saliency map and budget, for SPARE Distill."),
                io.Image.Output(display_name="heatmap", tooltip="Mean saliency per layer; '*' marks chosen layers."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, targets: str, top_modules: float, row_fraction: float, samples: int,
                seed: int, resolution: int) -> io.NodeOutput:
        target_list = prompt_lines(targets)
        if not target_list:
            raise ValueError("targets is empty: write the concept(s) to erase, one prompt per line.")
        with engine_denoiser(model, clip, resolution or None) as denoiser:
            progress = StepProgress("saliency")
            try:
                saliency = compute_saliency(
                    denoiser, target_list, n_latents=samples, top_modules=top_modules,
                    row_fraction=None if row_fraction >= 1.0 else row_fraction, seed=seed, callback=progress,
                )
            finally:
                progress.close()
        scores = saliency.module_scores
        heatmap = plots.bar_heatmap(
            f"Saliency of {', '.join(target_list)[:80]}  ({len(saliency.select())} of {len(scores)} layers chosen)",
            [name.removeprefix("diffusion_model.") for name in scores], list(scores.values()),
            {name.removeprefix("diffusion_model.") for name in saliency.select()},
        )
        return io.NodeOutput(saliency, heatmap)
