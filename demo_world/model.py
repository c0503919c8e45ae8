"""The demo text-to-image model as stock ComfyUI objects (MODEL, CLIP, VAE).

Built from ComfyUI's own classes -- `UNetModel` inside a `BaseModel`, the SD1
tokenizer and `SDClipModel`, TAESD -- so KSampler, CLIPTextEncode, VAEDecode
and LoraLoader work on it unchanged.
"""
from .comfy_host import ensure_comfy

ensure_comfy()

import torch  # noqa: E402

import comfy.latent_formats  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.sd1_clip  # noqa: E402
import comfy.supported_models_base  # noqa: E402
import comfy.utils  # noqa: E402

from . import config  # noqa: E402


class DemoTokenizer(comfy.sd1_clip.SDTokenizer):
    """SD1's CLIP tokenizer; only the embedding width (for textual inversions) differs."""

    def __init__(self, embedding_directory=None, tokenizer_data={}):
        super().__init__(embedding_directory=embedding_directory, embedding_size=config.TEXT_WIDTH,
                         embedding_key="clip_l", tokenizer_data=tokenizer_data)


class DemoSD1Tokenizer(comfy.sd1_clip.SD1Tokenizer):
    def __init__(self, embedding_directory=None, tokenizer_data={}):
        super().__init__(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data,
                         tokenizer=DemoTokenizer)


class DemoTextEncoder(comfy.sd1_clip.SDClipModel):
    """SDClipModel with the small CLIP_CONFIG; the last layer's hidden states are the conditioning."""

    def __init__(self, device="cpu", dtype=None, model_options={}):
        super().__init__(device=device, dtype=dtype, textmodel_json_config=dict(config.CLIP_CONFIG),
                         return_projected_pooled=False, model_options=model_options)


class DemoClipModel(comfy.sd1_clip.SD1ClipModel):
    def __init__(self, device="cpu", dtype=None, model_options={}):
        super().__init__(device=device, dtype=dtype, model_options=model_options, clip_model=DemoTextEncoder)


class DemoLatentFormat(comfy.latent_formats.LatentFormat):
    """The VAE standardises its latents itself (TAESD vae_scale/vae_shift); see config.LATENT_SCALE."""
    scale_factor = config.LATENT_SCALE
    latent_channels = config.LATENT_CHANNELS


class DemoModelConfig(comfy.supported_models_base.BASE):
    """SD1.x-like: eps prediction on the default 1000-step scaled-linear schedule."""
    unet_config = config.UNET_CONFIG
    unet_extra_config = config.UNET_HEADS
    latent_format = DemoLatentFormat
    memory_usage_factor = 1.0

    def clip_target(self, state_dict={}):
        return comfy.supported_models_base.ClipTarget(DemoSD1Tokenizer, DemoClipModel)


def new_base_model(dtype=None, manual_cast_dtype=None):
    """An (uninitialised) BaseModel holding the demo UNet."""
    model_config = DemoModelConfig(config.UNET_CONFIG)
    model_config.set_inference_dtype(dtype, manual_cast_dtype)
    return model_config.get_model({})


def _load_strict(module, state_dict, what):
    missing, unexpected = module.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{what} weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")


def load_unet():
    mm = comfy.model_management
    sd = comfy.utils.load_torch_file(str(config.UNET_FILE), safe_load=True)
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    supported = DemoModelConfig.supported_inference_dtypes
    dtype = mm.unet_dtype(model_params=sum(v.numel() for v in sd.values()), supported_dtypes=supported)
    model = new_base_model(dtype, mm.unet_manual_cast(dtype, load_device, supported))
    _load_strict(model.diffusion_model, sd, "UNet")
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def load_clip(embedding_directory=None):
    sd = comfy.utils.load_torch_file(str(config.TEXT_ENCODER_FILE), safe_load=True)
    target = DemoModelConfig(config.UNET_CONFIG).clip_target()
    clip = comfy.sd.CLIP(target, embedding_directory=embedding_directory,
                         parameters=sum(v.numel() for v in sd.values()))
    _load_strict(clip.cond_stage_model, sd, "text encoder")
    return clip


def _skip_disabled_blocks(taesd):
    """Let the switched-off TAESD blocks (all-zero convolutions, see config) skip their convolutions.

    Such a block computes ReLU(0 + x) exactly, so calling ReLU directly gives
    bit-identical images at well under half the decode cost. The weights stay
    in the module, so saving the VAE still writes a complete TAESD file.
    """
    relu = torch.nn.functional.relu
    for part, indices in config.VAE_DISABLED_BLOCKS.items():
        for i in indices:
            block = getattr(taesd, part)[i]
            if all(not p.any() for p in block.parameters()):
                block.forward = relu


def load_vae():
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(config.VAE_FILE), safe_load=True))
    _skip_disabled_blocks(vae.first_stage_model)
    return vae


def load_demo_model(embedding_directory=None):
    """(MODEL, CLIP, VAE) of the demo world, from the weights shipped in demo_world/weights/."""
    return load_unet(), load_clip(embedding_directory), load_vae()
