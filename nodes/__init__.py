"""ComfyUI layer of the pack: thin V3 nodes that turn ComfyUI objects into engine calls."""
from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .apply_lora import ApplyErasureLora
from .compare import ErasureCompare
from .demo_model import SpareDemoModel
from .distill import SpareDistill
from .localize import SaliencyLocalize
from .model_hash import ModelWeightsHash
from .surrogate_ranking import SurrogateRanking
from .timestep_profile import TimestepProfileNode


class SpareExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [
            SpareDemoModel,
            SaliencyLocalize,
            SurrogateRanking,
            TimestepProfileNode,
            SpareDistill,
            ApplyErasureLora,
            ErasureCompare,
            ModelWeightsHash,
        ]


async def comfy_entrypoint() -> SpareExtension:
    return SpareExtension()
