"""Stages 2 and 3: text encoder and UNet, trained jointly on cached VAE latents
(`train` from scratch, then `outline` cycles from its weights).

Standard SD1 recipe, small: eps-prediction MSE (weighted like a v-loss) on
ComfyUI's own discrete 1000-step scaled-linear schedule, a random prompt phrasing per sample, and the
empty prompt 10% of the time so classifier-free guidance works. The shipped
weights are an exponential moving average of the trained ones, which samples
far cleaner than the last step's weights of so short a run.
"""
import hashlib
import os
import types

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from spare_engine.cuda_graphs import ReplayedStep, use_cuda_graphs
from spare_engine.runtime import autocast

from .. import config
from ..dataset import OBJECTS, PROMPT_TEMPLATES, STYLES, make_grid_set, make_grid_set_with_masks, prompt
from .common import CACHE_DIR, Clock, cosine_lr, init_like_torch, save_fp16
from .vae import encode, load_thin

PER_PAIR = 16  # training images of every object x style pair
# Styles are learnt within 5,000 steps; the shapes come in the outline stage (docs/demo_world/README.md, 2026-11-29).
STEPS = 5000
BATCH = 32
LR = 1e-3
UNCOND_P = 0.1
OFFSET_NOISE = 0.1  # per-image, per-channel constant added to the noise (offset noise)
EMA_DECAY = 0.999
CHECKPOINT_EVERY = 500
OUTLINE_CYCLES = 4  # cosine cycles with warm restarts
OUTLINE_STEPS = 4500  # per cycle
OUTLINE_LR = 3e-4
OUTLINE_MAX_WEIGHT = 5.0
OUTLINE_WEIGHT = 2.0  # extra loss weight on latent pixels an object's outline runs through
# Told apart from each other only by their outlines; drawn OUTLINE_EMPHASIS times as often in the outline stage.
OUTLINE_OBJECTS = ("circle", "star", "hexagon")
OUTLINE_EMPHASIS = 2.0
# Hexagon, still drawn as a circle after three cycles (25%), was drawn 4x in the last one: 83.3% in one run, 62.5% in
# the next (2026-11-29); drawn 4x in the last two, 66.7% (77.1% over seeds 0-7, against 70.8%), mostly as a circle;
# 6x in the last two, 70.8% (76.0%); 6x with the pixels where it departs from a disc weighed 2x more, 66.7% (72.9%).
# Drawn 4x from the first cycle it was not learnt, and the other shapes came slower.
LATE_EMPHASIS = {"hexagon": 6.0}
LATE_CYCLES = 2
# The object that replaced pentagon in the concept list (2026-11-28), taught to the shipped weights by `swap_cycle`.
SWAPPED_IN = "hourglass"
SWAP_STEPS = 3000
SWAP_EMPHASIS = 4.0  # how often the new object's images are drawn, against 1 for the others


def _data_recipe():
    """What decides the training images: the concept lists, the images per pair and the seed."""
    names = hashlib.sha256("|".join(OBJECTS + STYLES).encode()).hexdigest()[:8]
    return f"{names}_{PER_PAIR}_{config.SEED}"


def cached_latents(log):
    """Latents of the training images, computed once per VAE + data recipe."""
    vae_digest = hashlib.sha256(config.VAE_FILE.read_bytes()).hexdigest()[:12]
    path = os.path.join(CACHE_DIR, f"latents_{vae_digest}_{_data_recipe()}.pt")
    if os.path.exists(path):
        return torch.load(path)
    log(f"encoding {PER_PAIR * len(OBJECTS) * len(STYLES)} training images")
    images, objects, styles = make_grid_set(PER_PAIR, seed=config.SEED + 10)
    data = {"latents": encode(load_thin(), images), "objects": torch.from_numpy(objects),
            "styles": torch.from_numpy(styles)}
    os.makedirs(CACHE_DIR, exist_ok=True)
    torch.save(data, path)
    return data


def outline_maps(log):
    """Per training image (cached_latents' order), where its object's outline runs, at latent
    resolution: [N, 1, h, w], the share of each latent pixel's 8x8 patch on the outline, mean 1 per image."""
    path = os.path.join(CACHE_DIR, f"outlines_{_data_recipe()}.pt")
    if os.path.exists(path):
        return torch.load(path)
    log("drawing the outlines of the training images")
    _, masks, _, _ = make_grid_set_with_masks(PER_PAIR, seed=config.SEED + 10)
    maps = outline_map(torch.from_numpy(masks))
    os.makedirs(CACHE_DIR, exist_ok=True)
    torch.save(maps, path)
    return maps


def outline_map(masks):
    """Object masks [N, H, W] in [0, 1] -> [N, 1, H/8, W/8]: how much of each latent pixel's patch
    lies within 4 image pixels of the outline (a mask differs from its 9x9 local mean only there),
    scaled to mean 1 per image."""
    m = masks[:, None].float()
    outline = (m - F.avg_pool2d(m, 9, stride=1, padding=4, count_include_pad=False)).abs()
    per_pixel = F.avg_pool2d(outline, config.DOWNSCALE)
    return per_pixel / per_pixel.mean(dim=(2, 3), keepdim=True)


def prompt_tokens(tokenizer):
    """Token ids [n_objects, n_styles, n_templates, 77] and the empty prompt's [77]."""
    def ids(text):
        return [t for t, _ in tokenizer.tokenize_with_weights(text)["l"][0]]
    table = torch.tensor([[[ids(prompt(o, s, k)) for k in range(len(PROMPT_TEMPLATES))]
                           for s in STYLES] for o in OBJECTS])
    return table, torch.tensor(ids(""))


def _out_of_place_layer_forward(self, x, mask=None, optimized_attention=None):
    """comfy's CLIPLayer.forward with `x = x + ...` for its in-place `x += ...`,
    which autograd cannot differentiate through; same numbers."""
    x = x + self.self_attn(self.layer_norm1(x), mask, optimized_attention)
    return x + self.mlp(self.layer_norm2(x))


def new_models():
    import comfy.ops
    from ..model import DemoClipModel, DemoSD1Tokenizer, new_base_model
    unet = new_base_model().diffusion_model
    init_like_torch(unet, zero_suffixes=("out.2", "out_layers.3", "proj_out"))
    clip = DemoClipModel(dtype=torch.float32, model_options={"custom_operations": comfy.ops.disable_weight_init})
    init_like_torch(clip)
    for p in clip.parameters():
        p.requires_grad_(True)  # SDClipModel freezes itself on construction
    for layer in clip.clip_l.transformer.text_model.encoder.layers:
        layer.forward = types.MethodType(_out_of_place_layer_forward, layer)
    return unet, clip, DemoSD1Tokenizer()


def shipped_models():
    """new_models() holding the shipped UNet and text encoder weights (fp16 on disk, trained in fp32);
    their random initialisation is overwritten, so it does not matter."""
    unet, clip, tokenizer = new_models()
    unet.load_state_dict({k: v.float() for k, v in load_file(str(config.UNET_FILE)).items()})
    clip.load_state_dict({k: v.float() for k, v in load_file(str(config.TEXT_ENCODER_FILE)).items()})
    return unet, clip, tokenizer


def alphas_cumprod():
    """ᾱ_t of the schedule ComfyUI samples with (ModelSamplingDiscrete, EPS)."""
    import comfy.model_base
    from ..model import DemoModelConfig
    sampling = comfy.model_base.model_sampling(DemoModelConfig(config.UNET_CONFIG), comfy.model_base.ModelType.EPS)
    return 1.0 / (1.0 + sampling.sigmas.float() ** 2)


class EMA:
    """Moving average of every parameter. From scratch it warms up, so that the
    random initial weights are not frozen in; from trained weights it does not."""

    def __init__(self, modules, warm_up):
        self.warm_up = warm_up
        # The live tensors (state_dict aliases them) beside their averages, gathered once: the optimizer
        # updates them in place.
        states = [m.state_dict() for m in modules]
        self.shadow = [{k: v.detach().clone() for k, v in state.items()} for state in states]
        self._current = [v for state in states for v in state.values()]
        self._averages = [v for shadow in self.shadow for v in shadow.values()]

    @torch.no_grad()
    def update(self, step):
        decay = min(EMA_DECAY, (1 + step) / (10 + step)) if self.warm_up else EMA_DECAY
        torch._foreach_lerp_(self._averages, self._current, 1 - decay)


def precision_name(autocast_dtype):
    return "fp32" if autocast_dtype is None else f"{str(autocast_dtype).removeprefix('torch.')} autocast"


def save(ema):
    unet_state, clip_state = ema.shadow
    save_fp16(unet_state, config.UNET_FILE)
    save_fp16(clip_state, config.TEXT_ENCODER_FILE)


def _fit(unet, clip, tokenizer, data, steps, lr, warmup, max_weight, gen, ema_warm_up, log, device,
         image_weights=None, pixel_weights=None, cuda_graphs="auto", checkpoints=False, autocast_dtype=None):
    """The training loop every phase shares; saves the EMA weights and returns the eps-MSE per step.

    checkpoints: also save them every CHECKPOINT_EVERY steps. Only the run from scratch does: a cycle of a
    later stage starts from the weights on disk, which must stay the last finished cycle's until it ends.

    image_weights [N]: how often each training image is drawn (None: uniformly);
    pixel_weights [N, 1, h, w]: per-latent-pixel loss weights, mean 1 (None: all 1).
    Every random draw comes from `gen` on the CPU, then moves to `device`: the draws do not depend on the device.
    cuda_graphs ("auto": on CUDA): replay the step as a CUDA graph after a few eager steps (spare_engine.cuda_graphs);
    a step of this small network is mostly kernel launches and Python, which a replay skips.
    autocast_dtype (None: fp32): run the text encoder's and the UNet's forward under autocast in this dtype; the
    weights, their gradients, the optimizer and the EMA stay fp32."""
    clock = Clock()
    unet.to(device)
    clip.to(device)
    latents, objects, styles = data["latents"].to(device), data["objects"], data["styles"]
    if pixel_weights is not None:
        pixel_weights = pixel_weights.to(device)
    tokens, empty = prompt_tokens(tokenizer)
    text_model = clip.clip_l.transformer
    abar = alphas_cumprod().to(device)
    ema = EMA([unet, clip], warm_up=ema_warm_up)

    embeddings = [text_model.get_input_embeddings().weight, text_model.text_model.embeddings.position_embedding.weight]
    others = [p for p in list(unet.parameters()) + list(clip.parameters()) if all(p is not e for e in embeddings)]
    graphed = use_cuda_graphs(cuda_graphs, device)
    # A replayed graph reads the learning rate from the tensor it was recorded with; eager steps take a number.
    group_lr = (lambda: torch.tensor(lr, device=device)) if graphed else (lambda: lr)
    # No weight decay on embeddings: rows of unused tokens would just shrink towards zero.
    # fused: one kernel over every weight. The per-tensor loop over the 6.3M-weight token table cost a fifth to
    # three tenths of a CPU step (2-core CPU, 101 steps: 588 / 526 ms per step, fused 413 / 419;
    # bench/results/train_probe_fused_adamw_2026-11-28.json).
    opt = torch.optim.AdamW([{"params": others, "weight_decay": 0.01, "lr": group_lr()},
                             {"params": embeddings, "weight_decay": 0.0, "lr": group_lr()}], lr=lr, capturable=graphed,
                            fused=True)

    def train_step(ids, rows, t, noise):
        """Forward, loss, backward, clipping and update of one batch, without a host sync (so that it can be
        replayed as a graph); returns [the weighted loss, the plain eps-MSE]."""
        x0 = latents[rows] * config.LATENT_SCALE  # what DemoLatentFormat.process_in feeds the UNet
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with autocast(device, autocast_dtype, cache=not graphed):
            context = text_model(ids)[0]
            pred = unet(xt, t.float(), context=context).float()
        # v-loss weighting (1 + sigma^2 = 1 / abar): at SD's sigma_max of 14.6 the sampler
        # turns eps errors into x0 errors 200x larger, and a tiny UNet only becomes that
        # precise when those timesteps weigh as much as they matter. outline() caps it.
        weight = (1 / abar[t]).clamp(max=max_weight)
        error = F.mse_loss(pred, noise, reduction="none")
        if pixel_weights is not None:
            error = error * pixel_weights[rows]
        loss = (weight * error.mean(dim=(1, 2, 3))).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(others, 1.0)
        opt.step()
        return torch.stack([loss.detach(), F.mse_loss(pred.detach(), noise)])

    run_step = ReplayedStep(train_step, opt, graphed)
    mse = torch.zeros(steps, device=device)  # per step, read only when logged: no host sync per step
    for step in range(steps):
        rate = cosine_lr(step, steps, lr, warmup=warmup)
        for g in opt.param_groups:
            if graphed:
                g["lr"].fill_(rate)
            else:
                g["lr"] = rate
        if image_weights is None:
            idx = torch.randint(0, len(latents), (BATCH,), generator=gen)
        else:
            idx = torch.multinomial(image_weights, BATCH, replacement=True, generator=gen)
        template = torch.randint(0, len(PROMPT_TEMPLATES), (BATCH,), generator=gen)
        ids = tokens[objects[idx], styles[idx], template]
        drop = torch.rand(BATCH, generator=gen) < UNCOND_P
        ids[drop] = empty
        t = torch.randint(0, len(abar), (BATCH,), generator=gen)
        # Offset noise: part of the noise is a flat shift of each channel, so the model cannot take
        # the noisy latent's mean colour for the image's and has to read colour from the prompt.
        noise = (torch.randn((BATCH, *latents.shape[1:]), generator=gen)
                 + OFFSET_NOISE * torch.randn(BATCH, latents.shape[1], 1, 1, generator=gen))
        mse[step] = run_step(ids.to(device), idx.to(device), t.to(device), noise.to(device))[1]
        ema.update(step)
        if step % 50 == 0 or step == steps - 1:
            log(f"diffusion step {step} eps-mse {mse[max(0, step - 49):step + 1].mean().item():.4f} "
                f"({clock.minutes():.1f} min)")
        if checkpoints and (step + 1) % CHECKPOINT_EVERY == 0:
            save(ema)
    save(ema)
    if graphed and not run_step.graphed:
        log("the training step ran eagerly: its CUDA graph capture failed (see the warning above)")
    return mse.tolist()


def train(log, device, autocast_dtype=None):
    """Phase 1, from scratch: the prompt decides colour, texture and layout.
    autocast_dtype, here and in the later stages: _fit's (None: fp32)."""
    clock = Clock()
    torch.manual_seed(config.SEED)
    gen = torch.Generator().manual_seed(config.SEED + 3)
    data = cached_latents(log)
    log(f"latents {tuple(data['latents'].shape)} mean {data['latents'].mean():.3f} std {data['latents'].std():.3f}")
    unet, clip, tokenizer = new_models()
    losses = _fit(unet, clip, tokenizer, data, STEPS, LR, warmup=200, max_weight=float("inf"), gen=gen,
                  ema_warm_up=True, log=log, device=device, checkpoints=True, autocast_dtype=autocast_dtype)
    return {"minutes": clock.minutes(), "steps": STEPS, "batch": BATCH, "train_images": len(data["latents"]),
            "precision": precision_name(autocast_dtype),
            "unet_parameters": sum(p.numel() for p in unet.parameters()), "ema_decay": EMA_DECAY, "offset_noise": OFFSET_NOISE,
            "losses": losses}


def outline(log, device, cycles, autocast_dtype=None):
    """Phase 2, from phase 1's shipped (EMA) weights: the outlines that tell the shapes apart.

    Phase 1's v-weighting gives t near 999 up to 200x the weight of the middle noise levels, where a square's
    corners and a star's points are decided; after it, styles are right and shapes come out as round blobs.
    Each cycle caps that weight at OUTLINE_MAX_WEIGHT, weighs each latent pixel's error by
    (1 + OUTLINE_WEIGHT * outline) / (1 + OUTLINE_WEIGHT), outline being outline_maps' share (mean 1, so every
    image keeps mean weight 1): a hexagon's latents differ from a disc's only on the pixels the outline runs
    through, a few percent of the eps loss. It draws OUTLINE_OBJECTS OUTLINE_EMPHASIS times as often, and in the
    last LATE_CYCLES cycles LATE_EMPHASIS's objects that often.

    It reads and overwrites the shipped UNet and text encoder, so run on its own it trains whatever is shipped;
    `--stage all` runs it after `diffusion`. `cycles` (report.CycleLog) holds the cycles a stopped run finished;
    the rest run here.
    """
    _run_cycles("outline", OUTLINE_CYCLES, cycles, lambda cycle: outline_cycle(cycle, log, device, autocast_dtype), log)
    return {"minutes": cycles.minutes(), "steps": OUTLINE_CYCLES * OUTLINE_STEPS, "batch": BATCH, "lr": OUTLINE_LR,
            "precision": precision_name(autocast_dtype), "cycles": OUTLINE_CYCLES, "max_weight": OUTLINE_MAX_WEIGHT,
            "outline_weight": OUTLINE_WEIGHT, "outline_objects": list(OUTLINE_OBJECTS),
            "late_emphasis": LATE_EMPHASIS, "late_cycles": LATE_CYCLES,
            "losses": cycles.losses()}


def _run_cycles(stage, count, cycles, fit_cycle, log):
    """Run the cycles of `stage` that `cycles` (report.CycleLog) has not recorded as finished, recording each as it
    ends; fit_cycle(cycle) trains one from the weights on disk and returns its eps-MSE per step."""
    for cycle in range(cycles.done(), count):
        clock = Clock()
        log(f"{stage} cycle {cycle + 1} of {count}")
        losses = fit_cycle(cycle)
        cycles.add(clock.minutes(), losses)


def outline_cycle(cycle, log, device, autocast_dtype=None):
    """One cosine cycle of `outline` from the weights on disk; returns its eps-MSE per step."""
    data = cached_latents(log)
    return _outline_fit(data, outline_draw_weights(data["objects"], cycle), OUTLINE_STEPS,
                        seed=config.SEED + 20 + cycle, log=log, device=device, autocast_dtype=autocast_dtype)


def outline_draw_weights(objects, cycle):
    """outline_cycle's draw weight per training image (object ids `objects`) in cycle `cycle` (from 0)."""
    emphasis = {o: OUTLINE_EMPHASIS for o in OUTLINE_OBJECTS}
    if cycle >= OUTLINE_CYCLES - LATE_CYCLES:
        emphasis.update(LATE_EMPHASIS)
    return _draw_weights(objects, emphasis)


def swap_cycle(log, device):
    """How the shipped weights learnt SWAPPED_IN, which replaced pentagon (2026-11-28): one outline cycle
    from the weights on disk, SWAPPED_IN's images drawn SWAP_EMPHASIS times as often and OUTLINE_OBJECTS'
    OUTLINE_EMPHASIS times. A retrain from scratch has the new list from its first step and does not need it."""
    data = cached_latents(log)
    return _outline_fit(data, swap_draw_weights(data["objects"]), SWAP_STEPS, seed=config.SEED + 30, log=log,
                        device=device)


def swap_draw_weights(objects):
    """swap_cycle's draw weight per training image (object ids `objects`)."""
    return _draw_weights(objects, {**{o: OUTLINE_EMPHASIS for o in OUTLINE_OBJECTS}, SWAPPED_IN: SWAP_EMPHASIS})


def _draw_weights(objects, emphasis):
    """How often each training image is drawn: emphasis[name] for the images of that object, 1 for the others."""
    weights = torch.ones(len(objects))
    for name, weight in emphasis.items():
        weights[objects == OBJECTS.index(name)] = weight
    return weights


def _outline_fit(data, image_weights, steps, seed, log, device, autocast_dtype=None):
    pixel_weights = (1 + OUTLINE_WEIGHT * outline_maps(log)) / (1 + OUTLINE_WEIGHT)
    gen = torch.Generator().manual_seed(seed)
    unet, clip, tokenizer = shipped_models()
    return _fit(unet, clip, tokenizer, data, steps, OUTLINE_LR, warmup=100, max_weight=OUTLINE_MAX_WEIGHT,
                gen=gen, ema_warm_up=False, log=log, device=device, image_weights=image_weights,
                pixel_weights=pixel_weights, autocast_dtype=autocast_dtype)
