"""SPARE for ComfyUI: erase a concept from a text-to-image model with a small, sparse LoRA.

ComfyUI loads this file from `custom_nodes/`; the nodes live in `nodes/`, the method in
`spare_engine/` (pure torch).
"""
from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
