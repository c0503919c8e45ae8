"""Fixtures for the engine tests: one CPU thread (the machine is shared), tiny models, small runs."""
import pytest
import torch

from .tiny_denoiser import TinyDenoiser


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    # The tiny model is far faster on one thread than with threads fighting over shared cores.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def denoiser() -> TinyDenoiser:
    return TinyDenoiser(seed=0)


TARGETS, SURROGATES, RETAIN = ["a cat"], ["a dog"], ["a red car"]


def small_config(**overrides):
    """A DistillConfig sized for the tiny model: short runs, few cheap latents."""
    from spare_engine import DistillConfig

    settings = dict(steps=8, lr=3e-3, batch_size=2, latents_per_prompt=2, sampling_steps=6, cfg_scale=3.0)
    settings.update(overrides)
    return DistillConfig(**settings)


@pytest.fixture(scope="module")
def saliency():
    from spare_engine import compute_saliency

    return compute_saliency(TinyDenoiser(seed=0), TARGETS, n_latents=2, samples_per_latent=1, sampling_steps=6)


@pytest.fixture(scope="module")
def profile():
    from spare_engine import compute_timestep_profile

    return compute_timestep_profile(TinyDenoiser(seed=0), TARGETS, SURROGATES, grid_size=8, n_latents=2, sampling_steps=6)
