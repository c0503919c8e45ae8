"""Stage 3: the object and style classifiers.

Trained on fresh procedural images, a share of them passed through the shipped
VAE (encode + decode), plus blur / noise / tint augmentations: generated images
look like decoder output, not like the clean renders.
"""
import numpy as np
import torch
import torch.nn.functional as F

from .. import config
from ..classifiers import INPUT_SIZE, WIDTHS, SmallCNN, to_input
from ..dataset import OBJECTS, STYLES, make_batch
from .common import Clock, cosine_lr, save_fp16
from .vae import load_thin, to_unit

CLEAN_IMAGES = 8000
ROUNDTRIP_IMAGES = 4000
HELD_OUT = 1200
HELD_OUT_ROUNDTRIP = 400  # of the held-out images, also judged after a VAE roundtrip
STEPS = {"object": 4000, "style": 1000}  # shapes take longer to learn than palettes
BATCH = 64
LR = 2e-3


def _blur(x, sigma):
    r = 2
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1).float() / sigma) ** 2)
    k = (k / k.sum()).to(x)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)


def augment(x, gen):
    """Imitate a generator's output: softness, grain, small tint and contrast shifts.
    The draws come from `gen` on the CPU whatever device `x` is on."""
    n = len(x)

    def draw(sample, *shape):
        return sample(*shape, generator=gen).to(x.device)

    sigma = 0.3 + 0.9 * torch.rand(1, generator=gen).item()
    blurred = _blur(x, sigma)
    pick = (draw(torch.rand, n, 1, 1, 1) < 0.5).float()
    x = pick * blurred + (1 - pick) * x
    x = x + 0.04 * draw(torch.rand, n, 1, 1, 1) * draw(torch.randn, *x.shape)
    gain = 1 + 0.08 * (draw(torch.rand, n, 1, 1, 1) * 2 - 1)
    tint = 0.03 * (draw(torch.rand, n, 3, 1, 1) * 2 - 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * gain + mean + tint).clamp(0, 1)


@torch.no_grad()
def vae_roundtrip(images_uint8, batch=50):
    vae = load_thin()
    out = []
    for i in range(0, len(images_uint8), batch):
        x = to_unit(images_uint8[i:i + batch]) * 2 - 1
        out.append((vae.decode(vae.encode(x)) * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1))
    return torch.cat(out)


def training_pool(log):
    rng = np.random.default_rng(config.SEED + 20)
    clean, co, cs = make_batch(CLEAN_IMAGES, rng)
    rt_src, ro, rs = make_batch(ROUNDTRIP_IMAGES, rng)
    log(f"classifier data: {CLEAN_IMAGES} clean + {ROUNDTRIP_IMAGES} VAE-roundtrip images")
    x = torch.cat([to_input(clean), to_input(vae_roundtrip(rt_src))])
    return x, torch.from_numpy(np.concatenate([co, ro])), torch.from_numpy(np.concatenate([cs, rs]))


def fit(net, x, y, name, gen, log):
    """Train `net` on images x [N, 3, S, S] and labels y, both on the net's device."""
    steps = STEPS[name]
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=5e-4)
    losses = []
    net.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, LR, warmup=30)
        idx = torch.randint(0, len(x), (BATCH,), generator=gen).to(x.device)
        loss = F.cross_entropy(net(augment(x[idx], gen)), y[idx], label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            log(f"{name} classifier step {step} loss {np.mean(losses[-100:]):.4f}")
    return net.eval(), losses


@torch.no_grad()
def accuracy(net, x, y):
    return (net(x).argmax(-1) == y).float().mean().item()


def train(log, device):
    """The data and its VAE roundtrips are made on the CPU (the same on every machine); the nets train on `device`."""
    clock = Clock()
    torch.manual_seed(config.SEED)
    x, objects, styles = training_pool(log)
    assert x.shape[-1] == INPUT_SIZE
    held_imgs, held_o, held_s = make_batch(HELD_OUT, np.random.default_rng(config.SEED + 30))
    held = to_input(held_imgs).to(device)
    held_rt = to_input(vae_roundtrip(held_imgs[:HELD_OUT_ROUNDTRIP])).to(device)
    x, objects, styles = x.to(device), objects.to(device), styles.to(device)
    result = {"minutes": 0.0}
    state = {}
    for i, (name, labels, held_labels, n) in enumerate((("object", objects, held_o, len(OBJECTS)),
                                                         ("style", styles, held_s, len(STYLES)))):
        gen = torch.Generator().manual_seed(config.SEED + 4 + i)  # one stream per net: recipes stay independent
        net, losses = fit(SmallCNN(n, WIDTHS[name]).to(device), x, labels, name, gen, log)
        held_y = torch.from_numpy(held_labels).to(device)
        result[f"{name}_losses"] = losses
        result[f"{name}_heldout_acc"] = accuracy(net, held, held_y)
        result[f"{name}_heldout_vae_acc"] = accuracy(net, held_rt, held_y[:HELD_OUT_ROUNDTRIP])
        log(f"{name} held-out accuracy {result[f'{name}_heldout_acc']:.4f} clean, "
            f"{result[f'{name}_heldout_vae_acc']:.4f} after VAE roundtrip")
        state.update({f"{name}.{k}": v for k, v in net.state_dict().items() if v.is_floating_point()})
    save_fp16(state, config.CLASSIFIERS_FILE)
    result.update({"minutes": clock.minutes(), "steps": STEPS, "batch": BATCH, "held_out": HELD_OUT})
    result["summary"] = "\n".join([
        "## Classifiers", "",
        f"Held-out procedural images (fresh seed): {HELD_OUT} clean, {HELD_OUT_ROUNDTRIP} of them also after a VAE roundtrip.", "",
        "| classifier | clean | VAE roundtrip |", "|---|---|---|",
        *(f"| {n} | {result[f'{n}_heldout_acc']:.1%} | {result[f'{n}_heldout_vae_acc']:.1%} |" for n in ("object", "style"))])
    return result
