"""ESD: Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023), on the Denoiser protocol.

Per iteration (paper Alg. 1; reference code rohitgandikota/erasing, CompVis `train-esd.py`
and `esd_diffusers.py`, read, not copied):

  1. pick a concept c (uniformly, when several are erased at once) and a DDIM step i;
  2. z_t: DDIM-sample from pure noise down to step i with the model *being trained*
     (classifier-free guidance 3, as the reference code), t = that step's timestep;
  3. frozen model: e_c = eps*(z_t, t, c), e_0 = eps*(z_t, t, "");
  4. loss = || eps_theta'(z_t, t, c) - (e_0 - eta * (e_c - e_0)) ||^2, one Adam step.

ESD-x trains the cross-attention layers (names containing "attn2"); ESD-u everything else,
excluding - as the reference `noxattn` does - the time embedding and the output head
(`time_embed`, `out.`). Both are full fine-tuning, simulated by dense weight deltas
(common.DeltaAdapter) on the denoiser's Linear/Conv2d layers, weights and biases; normalisation
layers' affine parameters (<1% of a UNet) are not adaptable modules and stay frozen here.

ESD needs no surrogate and no retain set: it erases towards the unconditional prediction.
(The newer `esd_sd.py` samples z_t with the frozen model; the paper and the original code
sample with the model being trained, which is what is done here.)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from spare_engine import Conditioning, adapters_disabled, attached
from spare_engine.runtime import autograd_enabled, gradients_only_for

from .common import (Callback, PromptRows, build_delta_adapters, ddim_partial, export_diff, optimizer_step,
                     trainable_parameters)


@dataclass
class ESDConfig:
    method: str = "x"  # "x": cross-attention only (ESD-x); "u": everything but cross-attention (ESD-u)
    iterations: int = 1000
    lr: float = 1e-5
    eta: float = 1.0  # negative guidance
    ddim_steps: int = 50  # the reference samples z_t on a 50-step DDIM grid
    sample_cfg: float = 3.0  # guidance while sampling z_t (reference: 3)
    seed: int = 0

    @classmethod
    def paper(cls, method: str = "x") -> ESDConfig:
        """The paper's settings for SD1.4: 1000 iterations of Adam at lr 1e-5, eta = 1, batch 1."""
        return cls(method=method)

    @classmethod
    def demo(cls, method: str = "x") -> ESDConfig:
        """Scaled to the 2M-parameter demo UNet on a 2-core CPU (a full ESD run is ~6 CPU-minutes).

        5x fewer iterations at 5x the learning rate: Adam moves each weight by at most ~lr per
        step, so the largest possible total change per weight (iterations * lr = 1e-2) is the
        paper's. z_t on a 20-step DDIM grid instead of 50 (the sampling is most of ESD's cost).
        """
        return cls(method=method, iterations=200, lr=5e-5, ddim_steps=20)


def esd_layers(names: list[str], method: str) -> list[str]:
    """The layers ESD-x / ESD-u train, from the denoiser's adaptable-module names."""
    if method == "x":
        return [n for n in names if "attn2" in n]
    if method == "u":
        def excluded(n: str) -> bool:
            local = n.split("diffusion_model.", 1)[-1]
            return "attn2" in n or "time_embed" in n or local.startswith("out.")
        return [n for n in names if not excluded(n)]
    raise ValueError(f"ESD method must be 'x' or 'u', got {method!r}")


def esd_target(eps_c: torch.Tensor, eps_0: torch.Tensor, eta: float) -> torch.Tensor:
    """The ESD regression target: eps*(z,t,"") - eta * (eps*(z,t,c) - eps*(z,t,""))."""
    return eps_0 - eta * (eps_c - eps_0)


@autograd_enabled()
def erase(denoiser, targets: list[str], surrogates: list[str] | None = None, retain: list[str] | None = None,
          config: ESDConfig | None = None, callback: Callback | None = None):
    """ESD-x / ESD-u. `surrogates` and `retain` are accepted for a uniform interface and unused."""
    config = config or ESDConfig()
    if not targets:
        raise ValueError("ESD needs at least one target")
    generator = torch.Generator().manual_seed(config.seed)
    names = esd_layers(list(denoiser.adaptable_modules()), config.method)
    if not names:
        raise ValueError(f"ESD-{config.method}: this model has no layers to train")
    adapters = build_delta_adapters(denoiser, names)
    params = [p for a in adapters.values() for p in a.parameters()]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    prompts = PromptRows.encode(denoiser, [*targets, ""])
    uncond = prompts.select([""])
    losses = []
    with gradients_only_for(denoiser.module, params), attached(denoiser, adapters):
        for step in range(1, config.iterations + 1):
            concept = targets[int(torch.randint(len(targets), (1,), generator=generator))]
            cond = prompts.select([concept])
            # Reference: a step index in [1, steps - 2]; z_t never pure noise and never clean.
            stop = int(torch.randint(1, config.ddim_steps - 1, (1,), generator=generator))
            noise = torch.randn((1, *denoiser.latent_shape), generator=generator).to(denoiser.device)
            z_t, t = ddim_partial(denoiser, noise, cond, uncond, steps=config.ddim_steps, stop=stop,
                                  cfg_scale=config.sample_cfg)  # adapters on: the model being trained
            t_batch = torch.full((2,), t, dtype=torch.long, device=denoiser.device)
            with torch.no_grad(), adapters_disabled(adapters):
                e_c, e_0 = denoiser.predict_eps(torch.cat([z_t, z_t]), t_batch,
                                                Conditioning.cat([cond, uncond])).float().chunk(2)
            student = denoiser.predict_eps(z_t, t_batch[:1], cond).float()
            loss = F.mse_loss(student, esd_target(e_c, e_0, config.eta))
            optimizer_step(optimizer, loss, step, config.iterations, "ESD", losses, callback)
    state = export_diff(adapters)
    info = {"method": f"ESD-{config.method}", "config": asdict(config), "layers": len(names),
            "trainable_params": trainable_parameters(adapters), "losses": losses}
    return state, info
