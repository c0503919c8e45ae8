import re

from comfy_api.latest import io, ui

from ..spare_engine import rank_surrogates
from . import plots
from .engine_run import StepProgress, engine_denoiser
from .prompts import prompt_lines
from .types import resolution_input


def swapped(prompts: list[str], concept: str, replacement: str) -> list[str]:
    """Each prompt with every occurrence of `concept` (any case) replaced."""
    pattern = re.compile(re.escape(concept), re.IGNORECASE)
    return [pattern.sub(lambda _: replacement, p) for p in prompts]


class SurrogateRanking(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpareSurrogateRanking",
            display_name="Surrogate Ranking",
            category="SPARE",
            description="Ranks candidate surrogates by how close the model already finds each to the target, and "
            "writes the target prompts with the closest one swapped in, for the surrogates inputs of Timestep "
            "Profile and SPARE Distill. A close surrogate asks for a smaller edit (demo model: Watercolor erased "
            "into its closest style kept CRA 92.7, into Neon 89.7).",
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to erase from."),
                io.Clip.Input("clip", tooltip="The model's text encoder."),
                io.String.Input("targets", multiline=True, default="",
                                tooltip="Prompts of the concept to erase, one per line; each must name `concept`."),
                io.String.Input("concept", default="",
                                tooltip="The words in the target prompts that name the concept, e.g. Watercolor."),
                io.String.Input("candidates", multiline=True, default="",
                                tooltip="Possible surrogates, one per line, each written as it replaces `concept`."),
                io.Int.Input("samples", default=2, min=1, max=64, tooltip="Latents generated per target prompt."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="Seed for the generated latents and noise."),
                resolution_input(),
            ],
            outputs=[
                io.String.Output(display_name="surrogates",
                                 tooltip="The target prompts with the closest candidate in place of the concept."),
                io.Image.Output(display_name="ranking", tooltip="Each candidate's divergence from the target."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, targets: str, concept: str, candidates: str, samples: int, seed: int,
                resolution: int) -> io.NodeOutput:
        target_list, candidate_list, concept = prompt_lines(targets), prompt_lines(candidates), concept.strip()
        if not target_list:
            raise ValueError("targets is empty: write prompts of the concept to erase, one per line.")
        if not concept:
            raise ValueError("concept is empty: give the words that name the concept in the target prompts.")
        missing = [t for t in target_list if concept.lower() not in t.lower()]
        if missing:
            raise ValueError(f"concept '{concept}' does not occur in the target prompt '{missing[0]}': every "
                             "target prompt must name it, so that a candidate can take its place.")
        if not candidate_list:
            raise ValueError("candidates is empty: write at least one possible surrogate, one per line.")
        clashes = [c for c in candidate_list if c.lower() == concept.lower()]
        if clashes:
            raise ValueError(f"candidates lists '{clashes[0]}', the concept itself: a surrogate must differ from it.")
        with engine_denoiser(model, clip, resolution or None) as denoiser:
            progress = StepProgress("surrogate ranking")
            try:
                ranking = rank_surrogates(denoiser, target_list,
                                          {c: swapped(target_list, concept, c) for c in candidate_list},
                                          n_latents=samples, seed=seed, callback=progress)
            finally:
                progress.close()
        closest = ranking[0][0]
        surrogates = "\n".join(swapped(target_list, concept, closest))
        chart = plots.bar_heatmap(f"Divergence from '{concept}' (smallest = closest; * = chosen)",
                                  [name for name, _ in ranking], [value for _, value in ranking], {closest})
        report = "\n".join(f"{name}: {value:.4g}" for name, value in ranking)
        return io.NodeOutput(surrogates, chart, ui=ui.PreviewText(f"closest first\n{report}\n\n{surrogates}"))
