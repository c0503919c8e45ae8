"""Stage 1: the autoencoder, in ComfyUI's TAESD format.

Trained as a "thin" TAESD whose disabled blocks (config.VAE_DISABLED_BLOCKS)
are plain ReLUs, saved as a full TAESD whose disabled blocks have all-zero
convolutions, i.e. compute the same ReLU. Latents are standardised through
TAESD's own `vae_scale`/`vae_shift`, so the diffusion model sees unit-variance
latents with a latent scale factor of 1.
"""
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from .. import config
from ..dataset import make_batch
from .common import Clock, cosine_lr, init_like_torch, save_fp16

SCHEDULE_STEPS = 2000  # length of the cosine learning-rate schedule
STEPS = 1253  # where training stops: the CPU budget ran out before the schedule's end
BATCH = 12
CROP = 64  # fully convolutional, so crops teach it at a quarter of the cost
LR = 2e-3
LATENT_NOISE = 0.1  # the decoder must tolerate the imprecise latents a sampler produces


def thin_taesd():
    from comfy.taesd.taesd import TAESD
    vae = TAESD(latent_channels=config.LATENT_CHANNELS)
    init_like_torch(vae)
    for part, indices in config.VAE_DISABLED_BLOCKS.items():
        for i in indices:
            getattr(vae, part)[i] = torch.nn.ReLU()
    return vae


def full_state_dict(thin):
    """The thin model's weights in the full TAESD layout (zeros for disabled blocks)."""
    from comfy.taesd.taesd import TAESD
    thin_sd = thin.state_dict()
    full_sd = TAESD(latent_channels=config.LATENT_CHANNELS).state_dict()
    assert set(thin_sd) <= set(full_sd)
    return {k: thin_sd[k] if k in thin_sd else torch.zeros_like(full_sd[k]) for k in full_sd}


def load_thin():
    """The VAE on disk (config.VAE_FILE) as a (fast) thin TAESD in fp32, for encoding training data."""
    vae = thin_taesd()
    sd = {k: v.float() for k, v in load_file(str(config.VAE_FILE)).items()}
    vae.load_state_dict({k: v for k, v in sd.items() if k in vae.state_dict()})
    return vae.eval()


def to_unit(images_uint8):
    """uint8 [N,H,W,3] -> float [N,3,H,W] in [0, 1], TAESD's pixel range."""
    return torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def encode(vae, images_uint8, batch=64):
    """Standardised latents (what `comfy.sd.VAE.encode` returns) for uint8 images."""
    return torch.cat([vae.encode(to_unit(images_uint8[i:i + batch]) * 2 - 1)
                      for i in range(0, len(images_uint8), batch)])


def train(log, device):
    clock = Clock()
    torch.manual_seed(config.SEED)
    rng = np.random.default_rng(config.SEED + 1)
    vae = thin_taesd().to(device)
    params = list(vae.taesd_encoder.parameters()) + list(vae.taesd_decoder.parameters())
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    losses = []
    for step in range(STEPS):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, SCHEDULE_STEPS, LR, warmup=50)
        images, _, _ = make_batch(BATCH, rng)
        y0, x0 = rng.integers(0, images.shape[1] - CROP + 1, 2) // config.DOWNSCALE * config.DOWNSCALE
        x = to_unit(np.ascontiguousarray(images[:, y0:y0 + CROP, x0:x0 + CROP])).to(device)
        z = vae.taesd_encoder(x)
        recon = vae.taesd_decoder(z + LATENT_NOISE * torch.randn_like(z))
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-4 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == STEPS - 1:
            log(f"vae step {step} loss {np.mean(losses[-50:]):.4f} ({clock.minutes():.1f} min)")
    return finish(vae, losses, clock, log)


def finish(vae, losses, clock, log):
    """Standardise the latents with TAESD's own scale/shift parameters, measure, save."""
    vae.eval()
    with torch.no_grad():
        images, _, _ = make_batch(128, np.random.default_rng(config.SEED + 2))
        x = to_unit(images).to(vae.vae_scale.device)
        raw = vae.taesd_encoder(x)
        mean, std = raw.mean().item(), raw.std().item()
        vae.vae_scale.fill_(std)
        vae.vae_shift.fill_(-mean / std)
        recon = vae.decode(vae.encode(x * 2 - 1)) * 0.5 + 0.5
        psnr = (-10 * torch.log10(F.mse_loss(recon.clamp(0, 1), x))).item()
    save_fp16(full_state_dict(vae), config.VAE_FILE)
    log(f"vae done: PSNR {psnr:.2f} dB on 128 fresh images, raw latent mean {mean:.3f} std {std:.3f}")
    return {"minutes": clock.minutes(), "steps": STEPS, "schedule_steps": SCHEDULE_STEPS, "batch": BATCH,
            "crop": CROP, "losses": losses, "psnr": psnr}
