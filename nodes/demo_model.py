import folder_paths
from comfy_api.latest import io

from ..demo_world.model import load_demo_model


class SpareDemoModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpareDemoModel",
            display_name="SPARE Demo Model",
            category="SPARE",
            description="Loads the pack's tiny built-in text-to-image model (a mini UnlearnCanvas world: "
            "12 objects such as circle, star or arrow drawn in 12 styles such as Neon or Watercolor, 128x128). "
            "Prompt it like \"An star image in Neon style.\" and sample with KSampler (euler, 20 steps, cfg 6). "
            "Needs no downloads, so erasure can be tried and tested anywhere.",
            inputs=[],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The demo diffusion model (an SD1-style UNet, eps prediction)."),
                io.Clip.Output(display_name="CLIP", tooltip="The demo text encoder (a small CLIP with SD1's tokenizer)."),
                io.Vae.Output(display_name="VAE", tooltip="The demo VAE (TAESD format, 8x down, 4 latent channels)."),
            ],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        model, clip, vae = load_demo_model(embedding_directory=folder_paths.get_folder_paths("embeddings"))
        return io.NodeOutput(model, clip, vae)
