"""Each baseline's update rule on a tiny real model, checked against hand computations; the host is never touched."""
import copy

import pytest
import torch
import torch.nn.functional as F

from bench.baselines import esd, salun, spare, uce
from bench.baselines.common import DeltaAdapter, build_delta_adapters, ddim_partial, export_diff, merge_into
from spare_engine import adapters_disabled, attached, weights_hash

TARGETS, SURROGATES, RETAIN = ["a photo of cat"], ["a photo of dog"], ["a red car", "a blue house"]


def _x(denoiser, seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *denoiser.latent_shape, generator=g), torch.tensor([50, 700][:n])


# --- the dense delta adapter ----------------------------------------------------------------------

def test_delta_adapter_equals_editing_the_weights(denoiser):
    """Hooked output + layer(x; dW) + db is the network with W + dW, b + db; the export says exactly that."""
    names = list(denoiser.adaptable_modules())
    adapters = build_delta_adapters(denoiser, names)
    g = torch.Generator().manual_seed(1)
    for a in adapters.values():
        a.delta_weight.data = torch.randn(a.delta_weight.shape, generator=g) * 0.05
        if a.delta_bias is not None:  # to_q / to_k / to_v have no bias
            a.delta_bias.data = torch.randn(a.delta_bias.shape, generator=g) * 0.05
    x, t = _x(denoiser)
    cond = denoiser.encode_prompts(["a photo of cat", "a dog"])
    before = weights_hash(denoiser.module)
    with torch.no_grad(), attached(denoiser, adapters):
        hooked = denoiser.predict_eps(x, t, cond)
        with adapters_disabled(adapters):
            plain = denoiser.predict_eps(x, t, cond)
    assert weights_hash(denoiser.module) == before
    edited = copy.deepcopy(denoiser)
    merge_into(edited.module, export_diff(adapters))
    with torch.no_grad():
        assert torch.allclose(hooked, edited.predict_eps(x, t, cond), atol=1e-5)
        assert torch.allclose(plain, denoiser.predict_eps(x, t, cond))


def test_masked_delta_exports_and_counts_only_the_mask(denoiser):
    layer = denoiser.adaptable_modules()["diffusion_model.res"]
    mask = torch.zeros(layer.weight.shape)
    mask[0] = 1
    a = DeltaAdapter(layer, "diffusion_model.res", weight_mask=mask, bias_mask=torch.zeros(layer.out_channels))
    a.delta_weight.data.fill_(1.0)
    a.delta_bias.data.fill_(1.0)
    w, b = a.effective()
    assert torch.equal(w, mask) and not b.any()
    assert a.trainable_count() == int(mask.sum())


# --- ESD -----------------------------------------------------------------------------------------

def test_esd_target_formula_by_hand():
    eps_c, eps_0 = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([0.5, 0.5, 0.0])
    # eps_0 - eta (eps_c - eps_0), eta = 1: (0.5 - 0.5, 0.5 - 1.5, 0 + 1)
    assert torch.allclose(esd.esd_target(eps_c, eps_0, 1.0), torch.tensor([0.0, -1.0, 1.0]))
    assert torch.allclose(esd.esd_target(eps_c, eps_0, 2.0), torch.tensor([-0.5, -2.5, 2.0]))


def test_esd_layer_sets_follow_the_reference():
    names = ["diffusion_model.time_embed.0", "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k",
             "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q",
             "diffusion_model.input_blocks.0.0", "diffusion_model.out.2", "diffusion_model.output_blocks.0.0.out_layers.3"]
    assert esd.esd_layers(names, "x") == [names[1]]
    assert esd.esd_layers(names, "u") == [names[2], names[3], names[5]]


def test_esd_first_loss_matches_a_hand_computed_step(denoiser):
    """Replays ESD's random draws: z_t from partial DDIM, then the MSE to the ESD target (adapters still zero)."""
    config = esd.ESDConfig(method="x", iterations=1, lr=1e-3, ddim_steps=6, sample_cfg=3.0, eta=1.0, seed=3)
    before = weights_hash(denoiser.module)
    state, info = esd.erase(denoiser, TARGETS, None, None, config)
    assert weights_hash(denoiser.module) == before
    g = torch.Generator().manual_seed(3)
    torch.randint(1, (1,), generator=g)  # the concept draw
    stop = int(torch.randint(1, config.ddim_steps - 1, (1,), generator=g))
    noise = torch.randn((1, *denoiser.latent_shape), generator=g)
    cond, uncond = denoiser.encode_prompts(TARGETS), denoiser.encode_prompts([""])
    with torch.no_grad():
        z_t, t = ddim_partial(denoiser, noise, cond, uncond, steps=6, stop=stop, cfg_scale=3.0)
        tt = torch.tensor([t])
        e_c, e_0, student = (denoiser.predict_eps(z_t, tt, c) for c in (cond, uncond, cond))
    expected = F.mse_loss(student, e_0 - 1.0 * (e_c - e_0)).item()
    assert info["losses"][0] == pytest.approx(expected, rel=1e-5)
    assert state and all("attn2" in k and k.endswith((".diff", ".diff_b")) for k in state)
    assert info["trainable_params"] == sum(v.numel() for v in state.values())


def test_esd_u_lowers_its_loss_and_leaves_cross_attention_alone(make_denoiser):
    d = make_denoiser(0)
    before = weights_hash(d.module)
    state, info = esd.erase(d, TARGETS, None, None, esd.ESDConfig(method="u", iterations=30, lr=3e-3, ddim_steps=4))
    assert weights_hash(d.module) == before
    assert not any("attn2" in k for k in state)
    assert sum(info["losses"][-5:]) < sum(info["losses"][:5])


# --- SalUn ---------------------------------------------------------------------------------------

def _reference_code_mask(grads, threshold):
    """The ranking of OPTML-Group/Unlearn-Saliency SD/train-scripts/generate_mask.py, re-typed for the test."""
    flat = torch.cat([g.abs().flatten() for g in grads.values()])
    ranks = torch.argsort(torch.argsort(flat))
    kept = ranks < int(len(flat) * threshold)
    return dict(zip(grads, kept.split([g.numel() for g in grads.values()])))


def test_salun_mask_keeps_the_intended_end():
    grads = {"a": torch.tensor([0.1, -5.0, 0.2]), "b": torch.tensor([3.0, -0.05, 1.0])}
    largest = salun.saliency_mask(grads, 0.5, "largest")
    smallest = salun.saliency_mask(grads, 0.5, "smallest")
    assert largest["a"].tolist() == [False, True, False] and largest["b"].tolist() == [True, False, True]
    assert smallest["a"].tolist() == [True, False, True] and smallest["b"].tolist() == [False, True, False]
    # The reference code keeps the SMALLEST |g|: the opposite of the paper's eq. 4.
    reference = _reference_code_mask(grads, 0.5)
    assert all(torch.equal(reference[k], smallest[k]) for k in grads)


def test_salun_forgetting_loss_by_hand():
    eps_c, eps_0, eps = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.5])
    # (1 + 2) * eps_c - 2 * eps_0 = (3, -2); -mean(((3 - .5)^2, (-2 - .5)^2)) = -6.25
    assert salun.forgetting_loss(eps_c, eps_0, eps, 2.0).item() == pytest.approx(-6.25)


def test_salun_trains_only_inside_its_mask(denoiser):
    config = salun.SalUnConfig(steps=4, batch_size=2, lr=1e-3, mask_batches=1, latents_per_prompt=1, sampling_steps=3,
                               threshold=0.3, keep="largest")
    before = weights_hash(denoiser.module)
    state, info = salun.erase(denoiser, TARGETS, SURROGATES, RETAIN, config)
    assert weights_hash(denoiser.module) == before
    changed = sum(int((v != 0).sum()) for v in state.values())
    assert 0 < changed <= info["mask_kept"] == info["trainable_params"]
    assert info["mask_kept"] == int(info["mask_total"] * 0.3)


# --- UCE -----------------------------------------------------------------------------------------

def test_uce_closed_form_is_the_least_squares_optimum():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 4, generator=g)
    c_e, v_e, c_p = torch.randn(2, 4, generator=g), torch.randn(2, 5, generator=g), torch.randn(1, 4, generator=g)
    cfg = uce.UCEConfig(erase_scale=1.0, preserve_scale=0.7, lamb=0.5)
    w_new = uce.closed_form(w, c_e, v_e, c_p, cfg).float()
    # Gradient of s_e |W'c_e - v|^2 + s_p |W'c_p - W c_p|^2 + lam |W' - W|^2 vanishes at the solution.
    grad = (w_new @ c_e.T - v_e.T) @ c_e + 0.7 * (w_new @ c_p.T - w @ c_p.T) @ c_p + 0.5 * (w_new - w)
    assert grad.abs().max() < 1e-4


def test_uce_maps_the_target_to_the_surrogate_and_keeps_preserved(denoiser):
    layers = denoiser.adaptable_modules()
    before = weights_hash(denoiser.module)
    state, info = uce.erase(denoiser, TARGETS, SURROGATES, RETAIN, uce.UCEConfig(lamb=1e-3, tokens="last"))
    assert weights_hash(denoiser.module) == before
    assert sorted(k[: -len(".diff")] for k in state) == ["diffusion_model.attn2.to_k", "diffusion_model.attn2.to_v"]
    ctx = denoiser.encode_prompts([*TARGETS, *SURROGATES, *RETAIN]).tensors["context"]
    last = [len(p.split()) - 1 for p in [*TARGETS, *SURROGATES, *RETAIN]]
    c_t, c_s, c_r = ctx[0, last[0]], ctx[1, last[1]], [ctx[2 + i, last[2 + i]] for i in range(len(RETAIN))]
    for name in ("diffusion_model.attn2.to_k", "diffusion_model.attn2.to_v"):
        w = layers[name].weight.detach()
        w_new = w + state[f"{name}.diff"]
        target_gap = (w_new @ c_t - w @ c_s).norm() / (w @ c_s).norm()
        assert target_gap < 0.02, f"{name}: edited target k/v is {target_gap:.3f} away from the surrogate's"
        assert (w @ c_t - w @ c_s).norm() / (w @ c_s).norm() > 0.2  # they were far apart before
        for c in c_r:
            assert (w_new @ c - w @ c).norm() / (w @ c).norm() < 0.02
    assert info["trainable_params"] == 2 * layers["diffusion_model.attn2.to_k"].weight.numel()


# --- SPARE through the same interface ------------------------------------------------------------

def test_spare_wrapper_and_its_ablation_switches(make_denoiser):
    small = dict(steps=3, lr=1e-3, latents_per_prompt=1, sampling_steps=3, grid_size=3, samples_per_latent=1,
                 cfg_scale=3.0)
    d = make_denoiser(0)
    before = weights_hash(d.module)
    state, info = spare.erase(d, TARGETS, SURROGATES, RETAIN, spare.SpareConfig(**small))
    assert weights_hash(d.module) == before
    assert info["layers"] == round(info["candidate_layers"] * 0.5)
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in state)
    _, every = spare.erase(d, TARGETS, SURROGATES, RETAIN, spare.SpareConfig(**small, top_modules=1.0,
                                                                                 timesteps="uniform", retain_weight=0.0))
    assert every["layers"] == every["candidate_layers"]
    _, rows = spare.erase(d, TARGETS, SURROGATES, RETAIN, spare.SpareConfig(**small, row_fraction=0.25))
    assert rows["trainable_params"] < info["trainable_params"]


def test_spare_reuses_a_stored_latent_draw_and_reports_its_time(make_denoiser):
    small = dict(steps=3, lr=1e-3, latents_per_prompt=1, sampling_steps=3, grid_size=3, samples_per_latent=1,
                 cfg_scale=3.0)
    d = make_denoiser(0)
    fresh, _ = spare.erase(d, TARGETS, SURROGATES, RETAIN, spare.SpareConfig(**small, retain_weight=0.0))
    store = {}
    _, first = spare.erase(d, TARGETS, SURROGATES, RETAIN, spare.SpareConfig(**small), latent_store=store)
    assert first["reused_seconds"] == 0.0 and len(store) == 1
    # An ablation of the same task trains on the stored draw: the LoRA of a fresh draw, to the bit.
    reused, second = spare.erase(d, TARGETS, SURROGATES, RETAIN, spare.SpareConfig(**small, retain_weight=0.0),
                                 latent_store=store)
    assert second["reused_seconds"] == first["stage_seconds"]["latents"] > 0
    assert second["stage_seconds"]["latents"] == first["stage_seconds"]["latents"]
    assert fresh.keys() == reused.keys() and all(torch.equal(fresh[k], reused[k]) for k in fresh)
    # Other latent settings are another draw.
    spare.erase(d, TARGETS, SURROGATES, RETAIN, spare.SpareConfig(**{**small, "latents_per_prompt": 2}),
                latent_store=store)
    assert len(store) == 2


def test_uce_last_token_index_from_a_comfyui_tokenizer():
    class FakeClip:  # ComfyUI's SD1 layout: BOS, words, EOS, EOS padding; (token, weight) pairs
        def tokenize(self, text):
            words = [(100 + i, 1.0) for i, _ in enumerate(text.split())]
            return {"l": [[(49406, 1.0), *words, *[(49407, 1.0)] * (8 - len(words))]]}

    class WithClip:
        clip = FakeClip()

    assert uce.last_content_index(WithClip(), "Watercolor") == 1
    assert uce.last_content_index(WithClip(), "An heart image in Neon style.") == 6
    assert uce.last_content_index(object(), "a photo of cat") == 3  # no tokenizer: words (the tiny test model)
