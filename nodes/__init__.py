"""ComfyUI layer of the pack: thin V3 nodes that turn ComfyUI objects into engine calls."""
from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .apply_lora import ApplyErasureLora
from .model_hash import ModelWeightsHash


class SpareExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [
            ApplyErasureLora,
            ModelWeightsHash,
        ]


async def comfy_entrypoint() -> SpareExtension:
    return SpareExtension()
