import logging

from comfy_api.latest import io

from ..spare_engine import FILE_DTYPES, DistillConfig, distill
from . import plots
from .engine_run import StepProgress, engine_denoiser
from .lora_files import lora_save_path
from .prompts import retain_lines, target_surrogate_pairs
from .types import LoraModel, Saliency, Timesteps, resolution_input

DEFAULT = DistillConfig()  # the engine's defaults are the node's defaults
DEFAULT_SAVE_DTYPE = "fp16"  # the file's precision; a key of FILE_DTYPES


class SpareDistill(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpareDistill",
            display_name="SPARE Distill",
            category="SPARE",
            description="SPARE stage 2: trains a sparse LoRA on the salient layers so that each target is drawn as "
            "its surrogate, while retained concepts keep the frozen model's predictions.",
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to erase from; it is not changed."),
                io.Clip.Input("clip", tooltip="The model's text encoder."),
                Saliency.Input("saliency", tooltip="From Saliency Localize, computed on this model."),
                Timesteps.Input("timesteps", tooltip="From Timestep Profile."),
                io.String.Input("targets", multiline=True, default="", tooltip="Concept(s) to erase, one per line."),
                io.String.Input("surrogates", multiline=True, default="",
                                tooltip="What each target becomes, one per line (or one line for all). The choice "
                                        "matters: on the demo model, Watercolor erased into Pixel Mosaic lost most "
                                        "of its pictures' subjects, into Polka Dots (the closest style) it kept "
                                        "them. Surrogate Ranking finds the closest of your candidates."),
                io.String.Input("retain", multiline=True, default="",
                                tooltip="Concepts that must not change, one per line (the empty prompt is always kept). "
                                        "List what you need unchanged, the concepts nearest the target first, each in "
                                        "a few contexts ('a moon in neon style', 'a moon in watercolor style'): on the "
                                        "demo model, concepts left off this list changed most often, and three prompts "
                                        "per kept object instead of one kept 95.5% of them right instead of 91.7%."),
                io.Int.Input("rank", default=DEFAULT.rank, min=1, max=256,
                             tooltip="LoRA rank of every adapter. Higher fits more and makes a larger file; a layer "
                                     "with fewer outputs or inputs than the rank gets a full-rank adapter."),
                io.Int.Input("steps", default=DEFAULT.steps, min=1, max=100000,
                             tooltip="Optimisation steps; the time grows with them. If erased images still show "
                                     "traces of the target, more steps complete the substitution. Erasing several "
                                     "concepts at once, give each about this many: on the demo model three styles "
                                     "with 600 steps and every other style retained were erased and kept the other "
                                     "styles and the pictures' objects far better than with 200."),
                io.Float.Input("learning_rate", default=DEFAULT.lr, min=1e-7, max=1.0, step=1e-5,
                               tooltip="AdamW learning rate of the adapter weights. The default is tuned on the demo model; "
                                       "if retained concepts drift on a large model, lower it."),
                io.Float.Input("forget_weight", default=DEFAULT.forget_weight, min=0.0, max=100.0, step=0.1,
                               tooltip="Weight of the target -> surrogate term."),
                io.Float.Input("retain_weight", default=DEFAULT.retain_weight, min=0.0, max=100.0, step=0.1,
                               tooltip="Weight of the keep-retained-concepts term. Higher keeps the retained concepts "
                                       "closer to the original model; the default was best on the demo model."),
                io.Int.Input("batch_size", default=DEFAULT.batch_size, min=1, max=64,
                             tooltip="Forget rows per step (as many retain rows ride along, about half of them "
                                     "holding the empty prompt). Larger batches make the "
                                     "result depend less on the seed; lower it if memory runs out."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="Seed for adapter init, latents, noise and timesteps."),
                io.String.Input("save_name", default="",
                                tooltip="If set, the LoRA is also saved as models/loras/<save_name>.safetensors "
                                "(a plain file name; no folders)."),
                resolution_input(),
                io.Combo.Input("save_dtype", options=list(FILE_DTYPES), default=DEFAULT_SAVE_DTYPE, optional=True,
                               tooltip="Precision of the saved file. fp16 halves it: on the demo erasure every "
                                       "test image was judged as with fp32, pixels within 2/255. The LORA_MODEL "
                                       "output keeps float32."),
            ],
            outputs=[
                LoraModel.Output(display_name="erasure_lora",
                                 tooltip="The erasure as a LORA_MODEL: Apply Erasure LoRA, Load LoRA Model and "
                                 "Save LoRA Weights all take it."),
                io.Image.Output(display_name="loss_curve", tooltip="Training loss per step."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, saliency, timesteps, targets: str, surrogates: str, retain: str, rank: int,
                steps: int, learning_rate: float, forget_weight: float, retain_weight: float, batch_size: int,
                seed: int, save_name: str, resolution: int,
                save_dtype: str = DEFAULT_SAVE_DTYPE) -> io.NodeOutput:
        target_list, surrogate_list = target_surrogate_pairs(targets, surrogates)
        retain_list = retain_lines(retain, target_list)
        save_path = lora_save_path(save_name) if save_name.strip() else None  # refuse a bad name before training
        config = DistillConfig(rank=rank, steps=steps, lr=learning_rate, forget_weight=forget_weight,
                               retain_weight=retain_weight, batch_size=batch_size, seed=seed)
        with engine_denoiser(model, clip, resolution or None) as denoiser:
            progress = StepProgress("distill")
            try:
                erasure = distill(denoiser, target_list, surrogate_list, retain_list, saliency, timesteps, config,
                                  callback=progress)
            finally:
                progress.close()
        if save_path:
            erasure.save(save_path, FILE_DTYPES[save_dtype])
            logging.info("[SPARE] erasure LoRA saved to %s", save_path)
        curve = plots.line_chart("SPARE Distill loss", {"loss": (list(range(1, len(progress.losses) + 1)),
                                                                 progress.losses)}, "step")
        return io.NodeOutput(erasure.state_dict(), curve)
