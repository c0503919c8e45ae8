"""A ComfyUI MODEL + CLIP seen as spare_engine's `Denoiser`.

The engine works on a clone of the user's ModelPatcher, loaded through ComfyUI's model
management; the user's MODEL object and its weights are never changed.
"""
from __future__ import annotations

import math

import torch
from torch import nn

import comfy.model_management
import comfy.model_sampling

from ..spare_engine.denoiser import Conditioning

# Pixel resolution each model family was trained at; erasure data is generated there.
NATIVE_RESOLUTION = {"SD15": 512, "SD20": 512, "SDXL": 1024, "DemoModelConfig": 128}
MIN_RESOLUTION = 16  # at 8 px (1x1 latents) a GroupNorm group can hold a single value, which torch refuses
SD2_V_RESOLUTION = 768  # SD2.x's v-prediction checkpoints (768-v) were trained at 768 px, its eps ones at 512


def _frozen_weight(weight: torch.Tensor) -> torch.Tensor:
    # Gradients reach the adapters and activations, never the host's weights: detach them.
    # ComfyUI loads weights inside torch.inference_mode() and autograd cannot save such
    # tensors for backward, so while gradients are on, layers compute with a normal copy.
    weight = weight.detach()
    if torch.is_grad_enabled() and torch.is_inference(weight):
        weight = weight.clone()
    return weight


def model_family(model) -> str:
    return type(model.model.model_config).__name__


def prediction_type(sampling) -> str:
    """What the network outputs, lower-case: the name of the class that gives ComfyUI's sampling
    object its `calculate_denoised` (EPS, V_PREDICTION, X0, EDM, CONST, LCM, ...)."""
    defining = next((c for c in type(sampling).__mro__ if "calculate_denoised" in vars(c)), type(sampling))
    return defining.__name__.lower()


def native_resolution(model) -> int:
    # By the nearest known ancestor of the model's config class: SDXL's distilled kin (SSD-1B, Segmind Vega,
    # KOALA) are SDXL subclasses in ComfyUI and were trained at 1024 px too.
    ancestors = [c.__name__ for c in type(model.model.model_config).__mro__]
    family = next((name for name in ancestors if name in NATIVE_RESOLUTION), None)
    if family == "SD20" and prediction_type(model.get_model_object("model_sampling")) == "v_prediction":
        return SD2_V_RESOLUTION
    return NATIVE_RESOLUTION.get(family, 512)


class ComfyDenoiser:
    """eps-prediction view of a ComfyUI UNet model (SD1.x, SD2.x, SDXL, the demo model).

    Networks that predict v (SD2.x 768-v, v-prediction SDXL checkpoints, a MODEL patched by
    ModelSamplingDiscrete) are seen through eps = sqrt(ab_t) v + sqrt(1 - ab_t) x_t, exact for
    v = sqrt(ab_t) eps - sqrt(1 - ab_t) x_0; the engine's losses and sampling stay in eps.
    """

    def __init__(self, model, clip, resolution: int | None = None):
        family = model_family(model)
        # The sampling object as patched onto this MODEL (e.g. by a ModelSamplingDiscrete node).
        sampling = model.get_model_object("model_sampling")
        prediction = prediction_type(sampling)
        discrete = isinstance(sampling, comfy.model_sampling.ModelSamplingDiscrete) and not isinstance(
            sampling, comfy.model_sampling.ModelSamplingDiscreteEDM) and len(sampling.sigmas) == 1000
        if prediction not in ("eps", "v_prediction") or not discrete:
            levels = len(getattr(sampling, "sigmas", ()))
            raise ValueError(
                f"model: {family} with {type(sampling).__name__} sampling ({prediction} prediction, "
                f"{levels} noise levels) is not supported; SPARE needs a UNet that predicts eps "
                "or v on a discrete 1000-step schedule (SD1.x, SD2.x, SDXL, the SPARE demo model)."
            )
        if not hasattr(model.model, "diffusion_model") or not hasattr(model.model.diffusion_model, "input_blocks"):
            raise ValueError(
                f"model: {family} is not supported; SPARE needs a UNet (SD1.x, SD2.x, SDXL, the demo model).")
        latent_channels = model.model.latent_format.latent_channels
        unet_channels = model.model.diffusion_model.in_channels
        if unet_channels != latent_channels:
            raise ValueError(
                f"model: {family} takes {unet_channels} input channels, its latents have {latent_channels}: an "
                "inpainting or image-conditioned UNet (its extra channels need an image SPARE does not have). "
                "Erase from the text-to-image checkpoint it was made from.")
        if clip is None:
            raise ValueError("clip: this checkpoint has no text encoder; connect a CLIP.")

        self.patcher = model.clone()
        for name, param in self.patcher.model.diffusion_model.named_parameters():
            self.patcher.add_weight_wrapper(f"diffusion_model.{name}", _frozen_weight)
        self.clip = clip
        self.module: nn.Module = self.patcher.model
        resolution = resolution or native_resolution(model)
        if resolution < MIN_RESOLUTION:
            raise ValueError(f"resolution: {resolution} px is below {MIN_RESOLUTION} px (2x2 latents), the least a "
                             "UNet's normalisation layers can train on; 0 = the model's native size.")
        latent_format = self.patcher.model.latent_format
        self.latent_shape = (latent_format.latent_channels, resolution // 8, resolution // 8)
        self.resolution = resolution
        self.alphas_cumprod = (1.0 / (1.0 + sampling.sigmas.float() ** 2)).cpu()
        self.device = comfy.model_management.get_torch_device()
        # Kept on the device once: the v -> eps conversion indexes it inside captured CUDA graphs.
        self._alphas_cumprod_on_device = self.alphas_cumprod.to(self.device) if prediction == "v_prediction" else None
        base = self.patcher.model
        self.dtype = base.manual_cast_dtype or base.get_dtype()

    def load(self) -> None:
        """Put the model (with the wrappers above) on the compute device, all of it."""
        comfy.model_management.load_models_gpu([self.patcher], force_full_load=True)

    def release(self) -> None:
        """Unload this clone, which also takes its weight wrappers off the shared modules."""
        for loaded in list(comfy.model_management.current_loaded_models):
            if loaded.model is self.patcher:
                loaded.model_unload()
                comfy.model_management.current_loaded_models.remove(loaded)

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        extra = {"y": cond.tensors["y"].to(self.dtype)} if "y" in cond.tensors else {}
        t = t.to(self.device)
        out = self.patcher.model.diffusion_model(
            x_t.to(self.dtype), t.float(), context=cond.tensors["context"].to(self.dtype), **extra
        ).float()
        if self._alphas_cumprod_on_device is None:
            return out
        ab = self._alphas_cumprod_on_device[t].view(-1, *[1] * (out.dim() - 1))
        return ab.sqrt() * out + (1 - ab).sqrt() * x_t.float()

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        contexts, ys = [], []
        for prompt in prompts:
            context, pooled = self.clip.encode_from_tokens(self.clip.tokenize(prompt), return_pooled=True)
            contexts.append(context)
            adm = self.patcher.model.encode_adm(
                pooled_output=pooled, width=self.resolution, height=self.resolution,
                target_width=self.resolution, target_height=self.resolution, device=self.device,
            )
            if adm is not None:
                ys.append(adm)
        self._check_text_encoder(contexts[0].shape[-1], ys[0].shape[-1] if ys else None)
        # Prompts over 75 tokens give longer contexts; repeat each to a common length, as ComfyUI does.
        length = math.lcm(*(c.shape[1] for c in contexts))
        context = torch.cat([c.repeat(1, length // c.shape[1], 1) for c in contexts])
        tensors = {"context": context}
        if ys:
            tensors["y"] = torch.cat(ys)
        return Conditioning(tensors).to(self.device, torch.float32)

    def _check_text_encoder(self, context_width: int, adm_width: int | None) -> None:
        """A CLIP of another model family fails deep inside the UNet ("mat1 and mat2 shapes cannot be
        multiplied"); say which input is wrong instead."""
        config = self.patcher.model.model_config.unet_config
        expected = (config.get("context_dim"), config.get("adm_in_channels"))
        if (context_width, adm_width) != expected:
            raise ValueError(
                f"clip: its text embeddings are {context_width} wide (pooled conditioning {adm_width}); the "
                f"model's UNet takes {expected[0]} ({expected[1]}). Connect the CLIP loaded with this model.")

    def checkpoint_modules(self) -> list[nn.Module]:
        """Units of gradient checkpointing: every ResBlock and every transformer block of the UNet."""
        from comfy.ldm.modules.attention import BasicTransformerBlock
        from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

        return [m for m in self.patcher.model.diffusion_model.modules() if isinstance(m, (ResBlock, BasicTransformerBlock))]

    def adaptable_modules(self) -> dict[str, nn.Module]:
        return {
            f"diffusion_model.{name}": m
            for name, m in self.patcher.model.diffusion_model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d))
        }
