"""The one definition of the demo model's architecture, shared by training and loading.

Pure data: importing this never imports ComfyUI.
"""
from pathlib import Path

SHIPPED_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def use_weights_dir(folder):
    """Read and write the demo world's weights in `folder`: a retrain into a folder of its own leaves the
    shipped weights alone. Everything that loads or saves them reads these names when it runs."""
    global WEIGHTS_DIR, VAE_FILE, TEXT_ENCODER_FILE, UNET_FILE, CLASSIFIERS_FILE
    WEIGHTS_DIR = Path(folder)
    VAE_FILE = WEIGHTS_DIR / "vae.safetensors"
    TEXT_ENCODER_FILE = WEIGHTS_DIR / "text_encoder.safetensors"
    UNET_FILE = WEIGHTS_DIR / "unet.safetensors"
    CLASSIFIERS_FILE = WEIGHTS_DIR / "classifiers.safetensors"


use_weights_dir(SHIPPED_WEIGHTS_DIR)

SEED = 0

# Text encoder: ComfyUI's CLIP text transformer, narrow and shallow. The
# 49408-token embedding table is most of its size, hence the small width.
TEXT_WIDTH = 128
CLIP_CONFIG = {
    "hidden_act": "quick_gelu",
    "hidden_size": TEXT_WIDTH,
    "intermediate_size": 4 * TEXT_WIDTH,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "max_position_embeddings": 77,
    "eos_token_id": 49407,
    "vocab_size": 49408,
}

# UNet: SD1.x layout (eps prediction, cross-attention on the text tokens)
# shrunk to three levels of 32/64/128 channels over 16x16 latents. As in SDXL,
# the full-resolution level has no attention: cross-attention sits at 8x8, 4x4
# and the middle, where a few tokens decide the whole layout, and skipping it at
# 16x16 keeps a training step at about 0.3 s (batch 32) on a 2-core CPU.
UNET_CONFIG = {
    "image_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "channel_mult": [1, 2, 4],
    "num_res_blocks": [1, 1, 1],
    "transformer_depth": [0, 1, 1],
    "transformer_depth_output": [0, 0, 1, 1, 1, 1],
    "transformer_depth_middle": 1,
    "context_dim": TEXT_WIDTH,
    "use_linear_in_transformer": False,
    "use_spatial_transformer": True,
    "legacy": False,
    "use_checkpoint": False,
    "num_classes": None,
    "adm_in_channels": None,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}
UNET_HEADS = {"num_heads": -1, "num_head_channels": 32}

# VAE: ComfyUI's TAESD layout (8x down, 4 latent channels), so `comfy.sd.VAE`
# detects and loads it unchanged. To train on this CPU some of its residual
# blocks are switched off: stored with all-zero convolutions, such a block is
# exactly ReLU(x), which is what the trainer puts in its place. Indices are
# positions in TAESD's encoder/decoder nn.Sequential.
VAE_DISABLED_BLOCKS = {
    "taesd_encoder": (1, 3, 4, 5, 9),
    "taesd_decoder": (10, 14, 15, 18),
}
LATENT_CHANNELS = 4
DOWNSCALE = 8
# The VAE's latents have unit variance; the diffusion model sees them times this.
# Not more: on 16x16 latents the average of the 256 pixels keeps a quarter of
# its signal-to-noise ratio even at SD's sigma_max, so at a larger scale the
# sampler's initial noise, not the prompt, fixes colour and layout (a first
# attempt at 3.0 drew the same picture whatever the prompt; cf. Chen 2023, "On
# the importance of noise scheduling": small images need more noise, not less).
LATENT_SCALE = 1.0

# The sampler settings every evaluation uses (KSampler node equivalents).
SAMPLER = {"sampler_name": "euler", "scheduler": "normal", "steps": 20, "cfg": 6.0}
