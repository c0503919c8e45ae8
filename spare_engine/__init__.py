"""SPARE (Self-distillation for PARameter-Efficient Removal, arXiv 2602.07058) in pure PyTorch.

Erase a concept from a text-to-image diffusion model with a sparse LoRA:

    saliency = compute_saliency(denoiser, targets)                          # stage 1: where the concept lives
    ranking = rank_surrogates(denoiser, targets, candidates)                # optional: the closest surrogate
    profile = compute_timestep_profile(denoiser, targets, surrogates)       # when (noise levels) it lives
    lora = distill(denoiser, targets, surrogates, retain, saliency, profile)  # stage 2: overwrite it
    lora.save("erase.safetensors")                                           # ComfyUI's LoRA format

The host model is reached only through the `Denoiser` protocol; nothing here imports ComfyUI.
"""
from .adapters import LoraAdapter, adapters_disabled, attached, build_adapters
from .denoiser import Conditioning, Denoiser, model_fingerprint, weights_hash
from .distill import DistillConfig, NonFiniteLossError, distill
from .lora import FILE_DTYPES, ErasureLoRA
from .runtime import NonFiniteModelError
from .saliency import SaliencyMap, compute_saliency
from .sampling import add_noise, prompt_latents, sample_ddim
from .surrogates import rank_surrogates
from .timesteps import TimestepProfile, compute_timestep_profile
from .version import __version__

__all__ = [
    "Conditioning",
    "Denoiser",
    "DistillConfig",
    "ErasureLoRA",
    "FILE_DTYPES",
    "LoraAdapter",
    "NonFiniteLossError",
    "NonFiniteModelError",
    "SaliencyMap",
    "TimestepProfile",
    "__version__",
    "adapters_disabled",
    "add_noise",
    "attached",
    "build_adapters",
    "compute_saliency",
    "compute_timestep_profile",
    "distill",
    "model_fingerprint",
    "prompt_latents",
    "rank_surrogates",
    "sample_ddim",
    "weights_hash",
]
