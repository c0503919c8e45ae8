from comfy_api.latest import io, ui
import comfy.model_management

from ..spare_engine.denoiser import weights_hash


class ModelWeightsHash(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpareModelWeightsHash",
            display_name="Model Weights Hash",
            category="SPARE/debug",
            description="SHA-256 of the diffusion model's weights as ComfyUI runs them (with this model's "
            "own patches). Compare it before and after an erasure to see that the input model is unchanged.",
            is_output_node=True,
            inputs=[io.Model.Input("model", tooltip="The model whose weights are hashed.")],
            outputs=[io.String.Output(display_name="sha256", tooltip="Hex digest of all weights and buffers.")],
        )

    @classmethod
    def fingerprint_inputs(cls, model) -> float:
        # Weights can change in place behind an unchanged input (that is what this node checks), so never cache.
        return float("nan")

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        # Loading puts this patcher's own patches (none, for a loader's output) into the shared module.
        comfy.model_management.load_models_gpu([model])
        digest = weights_hash(model.model)
        return io.NodeOutput(digest, ui=ui.PreviewText(digest))
