import logging

from comfy_api.latest import io

from .lora_files import NO_FILE, lora_file_options, lora_patches, read_lora_file
from .types import LoraModel



class ApplyErasureLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SpareApplyErasureLora",
            display_name="Apply Erasure LoRA",
            category="SPARE",
            description="Applies an erasure LoRA (a file from models/loras, or the output of SPARE Distill) "
            "to a copy of the model. The input model is never changed.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to erase the concept from."),
                io.Combo.Input(
                    "lora_name",
                    options=lora_file_options(),
                    default=NO_FILE,
                    tooltip="A .safetensors LoRA from models/loras. Leave at [None] when an erasure_lora is connected.",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=-100.0,
                    max=100.0,
                    step=0.01,
                    tooltip="How strongly to apply the erasure: 0 leaves the model as it is, 1 applies it as trained.",
                ),
                LoraModel.Input(
                    "erasure_lora",
                    optional=True,
                    tooltip="An erasure held in memory (SPARE Distill's output, or any LORA_MODEL). "
                    "Use this or lora_name, not both.",
                ),
            ],
            outputs=[io.Model.Output(tooltip="A copy of the model with the erasure applied.")],
        )

    @classmethod
    def execute(cls, model, lora_name: str, strength: float, erasure_lora=None) -> io.NodeOutput:
        from_file = lora_name != NO_FILE
        if from_file == (erasure_lora is not None):
            raise ValueError(
                "Apply Erasure LoRA needs exactly one LoRA: pick a file in lora_name "
                f"or connect erasure_lora (got {'both' if from_file else 'neither'})."
            )
        lora_sd = read_lora_file(lora_name) if from_file else erasure_lora
        source = f"lora_name '{lora_name}'" if from_file else "erasure_lora"
        patches, unmatched = lora_patches(model, lora_sd, source)
        if unmatched:
            logging.warning(
                "[SPARE] Apply Erasure LoRA: %d of %d LoRA keys match no weight of this model and are ignored: %s",
                len(unmatched), len(lora_sd), ", ".join(unmatched[:20]),
            )
        patched = model.clone()
        patched.add_patches(patches, strength)
        return io.NodeOutput(patched)
