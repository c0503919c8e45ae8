"""The timestep profile: a distribution over all T levels that follows the measured divergence."""
import pytest
import torch

from spare_engine import TimestepProfile, compute_timestep_profile

from .tiny_denoiser import TinyDenoiser


def test_profile_follows_the_divergence_with_a_uniform_floor(profile):
    p, T = profile.probabilities, 1000
    assert p.shape == (T,) and p.sum().item() == pytest.approx(1.0)
    assert profile.scheme == "concept" and len(profile.grid) == 8 and (profile.divergence > 0).all()
    assert p.min().item() >= 0.2 / T - 1e-12  # the floor
    # At the measured levels the mass above the floor is proportional to the divergence.
    ratio = (p[profile.grid] - 0.2 / T) / profile.divergence.double()
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-5)
    assert profile.grid[p[profile.grid].argmax()] == profile.grid[profile.divergence.argmax()]


def test_sampling_matches_the_distribution(profile):
    draws = profile.sample(20000, torch.Generator().manual_seed(0))
    assert draws.dtype == torch.long and draws.min() >= 0 and draws.max() < 1000
    mean = (profile.probabilities * torch.arange(1000)).sum().item()
    assert draws.double().mean().item() == pytest.approx(mean, rel=0.03)
    assert torch.equal(draws, profile.sample(20000, torch.Generator().manual_seed(0)))


def test_uniform_profile_fits_any_model_with_the_same_schedule_length():
    uniform = TimestepProfile.uniform(1000)
    assert torch.allclose(uniform.probabilities, torch.full((1000,), 1e-3, dtype=torch.float64))
    uniform.check_model(TinyDenoiser(seed=3))
    with pytest.raises(ValueError, match="1000"):
        TimestepProfile.uniform(500).check_model(TinyDenoiser(seed=3))


def test_identical_prompts_fall_back_to_uniform(denoiser):
    same = compute_timestep_profile(denoiser, ["a cat"], ["a  cat"], grid_size=4, n_latents=1, sampling_steps=3)
    assert torch.allclose(same.probabilities, torch.full((1000,), 1e-3, dtype=torch.float64))


def test_save_load_and_model_check(profile, tmp_path, denoiser):
    profile.save(tmp_path / "profile.safetensors")
    loaded = TimestepProfile.load(tmp_path / "profile.safetensors")
    assert torch.equal(loaded.probabilities, profile.probabilities) and torch.equal(loaded.grid, profile.grid)
    assert (loaded.scheme, loaded.uniform_mix, loaded.targets) == ("concept", 0.2, ["a cat"])
    loaded.check_model(denoiser)
    with pytest.raises(ValueError, match="timestep profile was computed on model"):
        loaded.check_model(TinyDenoiser(seed=1))
    TimestepProfile.uniform().save(tmp_path / "uniform.safetensors")
    assert TimestepProfile.load(tmp_path / "uniform.safetensors").scheme == "uniform"


def test_validation(denoiser):
    with pytest.raises(ValueError, match="uniform_mix"):
        compute_timestep_profile(denoiser, ["a cat"], ["a dog"], uniform_mix=1.5)
    with pytest.raises(ValueError, match="surrogates"):
        compute_timestep_profile(denoiser, ["a cat"], [])


def test_surrogates_ranked_closest_first_on_shared_latents(denoiser):
    from spare_engine import rank_surrogates

    candidates = {"dog": ["a dog"], "car": ["a red car"], "same words": ["a  cat"], "tree": ["a tall tree"]}
    ranking = rank_surrogates(denoiser, ["a cat"], candidates, grid_size=4, n_latents=2, sampling_steps=3)
    names, values = [n for n, _ in ranking], [v for _, v in ranking]
    assert sorted(names) == sorted(candidates) and values == sorted(values)
    assert ranking[0] == ("same words", 0.0) and values[1] > 0  # the target's own words are no edit at all
    # Every candidate is measured on the same latents and noise: its figure does not depend on the others.
    alone = dict(rank_surrogates(denoiser, ["a cat"], {"car": ["a red car"]}, grid_size=4, n_latents=2, sampling_steps=3))
    assert alone["car"] == dict(ranking)["car"]
    # Many latents per prompt: the target's and the candidates' rows no longer fit one pass (tiny model: 32 rows),
    # so they go through in several; each candidate's figure is still the one it gets measured alone.
    many = rank_surrogates(denoiser, ["a cat"], candidates, grid_size=3, n_latents=12, sampling_steps=3)
    for name, value in many:
        one = rank_surrogates(denoiser, ["a cat"], {name: candidates[name]}, grid_size=3, n_latents=12, sampling_steps=3)
        assert value == pytest.approx(one[0][1], rel=1e-5, abs=1e-9)
    with pytest.raises(ValueError, match="'dog' has 2 prompts for 1 targets"):
        rank_surrogates(denoiser, ["a cat"], {"dog": ["a dog", "a puppy"]})
    with pytest.raises(ValueError, match="candidates is empty"):
        rank_surrogates(denoiser, ["a cat"], {})
