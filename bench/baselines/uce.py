"""UCE: Unified Concept Editing (Gandikota et al., WACV 2024), on the Denoiser protocol.

A closed-form edit of every cross-attention key and value projection W (layers named
`*attn2.to_k`, `*attn2.to_v`). With c_i the text-embedding keys of the erased prompts, v*_i
the *original* projection of their guide (surrogate) prompts' keys, and c_j the keys of the
preserved prompts (reference code rohitgandikota/unified-concept-editing,
`trainscripts/uce_sd_erase.py`; read, not copied):

    W_new = (lam W + s_e sum_i v*_i c_i^T + s_p sum_j W c_j c_j^T) (lam I + s_e sum_i c_i c_i^T + s_p sum_j c_j c_j^T)^-1

the minimiser of  s_e sum_i |W' c_i - v*_i|^2 + s_p sum_j |W' c_j - W c_j|^2 + lam |W' - W|_F^2.

Which tokens are keys (`tokens`):
  * "last": the prompt's last content token (current reference: `attention_mask.sum() - 2`);
  * "last_to_end": from the last content token to the end of the padded sequence, the erased
    and the guide prompt aligned from their last tokens (the original `train_erase.py`).
The content-token count comes from the host's tokenizer when the denoiser has a ComfyUI
`clip` (SD1 layout: BOS, words, EOS, EOS padding), else from the number of words (tests).
Reference defaults: erase_scale 1, preserve_scale 1, lamb 0.5. No training: time is the solve.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .common import Callback


@dataclass
class UCEConfig:
    erase_scale: float = 1.0
    preserve_scale: float = 1.0
    lamb: float = 0.5
    tokens: str = "last"  # "last" or "last_to_end"

    @classmethod
    def paper(cls) -> UCEConfig:
        return cls()

    @classmethod
    def demo(cls) -> UCEConfig:
        return cls()


def uce_layers(names: list[str]) -> list[str]:
    return [n for n in names if "attn2" in n and (n.endswith(".to_k") or n.endswith(".to_v"))]


def last_content_index(denoiser, prompt: str) -> int:
    """Index of the prompt's last word token in the encoded sequence."""
    clip = getattr(denoiser, "clip", None)
    if clip is not None:
        tokens = next(iter(clip.tokenize(prompt).values()))[0]
        ids = [int(tok[0]) for tok in tokens]
        end = ids.index(ids[-1], 1) if ids[-1] in ids[1:] else len(ids)  # first EOS after BOS
        return max(1, end - 1)
    return max(0, len(prompt.split()) - 1)


def token_keys(denoiser, context: torch.Tensor, prompt: str, other_start: int | None, tokens: str) -> torch.Tensor:
    """Key vectors [K, D] of one prompt's context [L, D] (see module doc)."""
    start = last_content_index(denoiser, prompt)
    if tokens == "last":
        return context[start:start + 1]
    if tokens == "last_to_end":
        # Both prompts start at their last token and keep the same length (the reference's alignment).
        length = len(context) - max(start, other_start if other_start is not None else start)
        return context[start:start + length]
    raise ValueError(f"tokens must be 'last' or 'last_to_end', got {tokens!r}")


def closed_form(w_old: torch.Tensor, erase_keys: torch.Tensor, erase_values: torch.Tensor,
                keep_keys: torch.Tensor, config: UCEConfig) -> torch.Tensor:
    """UCE's W_new for one projection; keys [N, D], values [N, out]; computed in float64."""
    w = w_old.double()
    c_e, v_e, c_p = erase_keys.double(), erase_values.double(), keep_keys.double()
    eye = torch.eye(w.shape[1], dtype=torch.float64, device=w.device)
    lhs = config.lamb * w + config.erase_scale * v_e.T @ c_e + config.preserve_scale * (w @ c_p.T) @ c_p
    rhs = config.lamb * eye + config.erase_scale * c_e.T @ c_e + config.preserve_scale * c_p.T @ c_p
    # W_new = lhs @ rhs^-1, rhs symmetric positive definite: solve instead of inverting.
    return torch.linalg.solve(rhs, lhs.T).T


@torch.no_grad()
def erase(denoiser, targets: list[str], surrogates: list[str], retain: list[str],
          config: UCEConfig | None = None, callback: Callback | None = None):
    config = config or UCEConfig()
    if not targets or len(targets) != len(surrogates):
        raise ValueError("UCE needs targets and one guide (surrogate) per target")
    layers = denoiser.adaptable_modules()
    names = uce_layers(list(layers))
    if not names:
        raise ValueError("UCE: this model has no cross-attention key/value projections (*attn2.to_k / to_v)")
    prompts = list(dict.fromkeys([*targets, *surrogates, *retain]))
    context = denoiser.encode_prompts(prompts).tensors["context"].float()
    row = {p: i for i, p in enumerate(prompts)}
    erase_keys, guide_keys = [], []
    for target, guide in zip(targets, surrogates):
        s_t, s_g = last_content_index(denoiser, target), last_content_index(denoiser, guide)
        erase_keys.append(token_keys(denoiser, context[row[target]], target, s_g, config.tokens))
        guide_keys.append(token_keys(denoiser, context[row[guide]], guide, s_t, config.tokens))
    keep = [token_keys(denoiser, context[row[p]], p, None, config.tokens) for p in retain]
    c_e, c_g = torch.cat(erase_keys), torch.cat(guide_keys)
    c_p = torch.cat(keep) if keep else c_e[:0]
    state = {}
    for i, name in enumerate(names, 1):
        weight = layers[name].weight.detach().float().clone()  # read only; the host is never written
        v_star = c_g.to(weight.device) @ weight.T  # original projections of the guide keys
        w_new = closed_form(weight, c_e.to(weight.device), v_star, c_p.to(weight.device), config)
        state[f"{name}.diff"] = (w_new.float() - weight).cpu()
        if callback is not None:
            callback(i, len(names), 0.0)
    trainable = sum(layers[n].weight.numel() for n in names)
    info = {"method": "UCE", "config": asdict(config), "layers": len(names), "trainable_params": trainable,
            "erase_keys": len(c_e), "preserve_keys": len(c_p)}
    return state, info
