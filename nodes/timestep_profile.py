from comfy_api.latest import io

from ..spare_engine import TimestepProfile, compute_timestep_profile
from . import plots
from .engine_run import StepProgress, engine_denoiser
from .prompts import target_surrogate_pairs
from .types import Timesteps, resolution_input


class TimestepProfileNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpareTimestepProfile",
            display_name="Timestep Profile",
            category="SPARE",
            description="Measures at which noise levels the target differs from its surrogate, and turns that into "
            "the distribution SPARE Distill samples training timesteps from.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to erase from."),
                io.Clip.Input("clip", tooltip="The model's text encoder."),
                io.String.Input("targets", multiline=True, default="", tooltip="Concept(s) to erase, one per line."),
                io.String.Input("surrogates", multiline=True, default="",
                                tooltip="What each target becomes, one per line (or one line for all)."),
                io.Combo.Input("scheme", options=["concept", "uniform"], default="concept",
                               tooltip="concept: focus on the measured noise levels; uniform: every level alike "
                               "(the ablation)."),
                io.Float.Input("uniform_mix", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="Share of the sampling mass kept uniform over all noise levels."),
                io.Int.Input("samples", default=2, min=1, max=64, tooltip="Latents generated per target."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="Seed for the generated latents and noise."),
                resolution_input(),
            ],
            outputs=[
                Timesteps.Output(display_name="timesteps", tooltip="Timestep sampling profile for SPARE Distill."),
                io.Image.Output(display_name="profile", tooltip="Measured divergence and the sampling distribution."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, targets: str, surrogates: str, scheme: str, uniform_mix: float, samples: int,
                seed: int, resolution: int) -> io.NodeOutput:
        target_list, surrogate_list = target_surrogate_pairs(targets, surrogates)
        if scheme == "uniform":
            profile = TimestepProfile.uniform(len(model.model.model_sampling.sigmas))
        else:
            with engine_denoiser(model, clip, resolution or None) as denoiser:
                progress = StepProgress("timestep profile")
                try:
                    profile = compute_timestep_profile(
                        denoiser, target_list, surrogate_list, n_latents=samples, uniform_mix=uniform_mix,
                        seed=seed, callback=progress,
                    )
                finally:
                    progress.close()
        probs = profile.probabilities.tolist()
        series = {"sampling probability (scaled)": (list(range(len(probs))), [p / max(probs) for p in probs])}
        if len(profile.grid):
            top = float(profile.divergence.max()) or 1.0
            series["target vs surrogate divergence (scaled)"] = (
                profile.grid.tolist(), [float(d) / top for d in profile.divergence])
        image = plots.line_chart(f"Timestep profile ({profile.scheme})", series, "timestep (0 = clean, 999 = noise)")
        return io.NodeOutput(profile, image)
