"""Fixtures for the benchmark tests: one CPU thread, and the engine's tiny denoiser with SD-like attn2 names."""
import pytest
import torch
from torch import nn

from engine.conftest import one_thread  # noqa: F401  (the engine tests' autouse one-CPU-thread fixture)
from engine.tiny_denoiser import TinyDenoiser, TinyUNet

ATTENTION = ("to_q", "to_k", "to_v", "to_out")


class AttnUNet(TinyUNet):
    """TinyUNet whose cross-attention lives under `attn2`, as in SD (`...attn2.to_k`), so ESD-x / UCE find it."""

    def __init__(self) -> None:
        super().__init__()
        self.attn2 = nn.Module()
        for name in ATTENTION:
            setattr(self.attn2, name, self._modules.pop(name))


for _name in ATTENTION:
    setattr(AttnUNet, _name, property(lambda self, n=_name: getattr(self.attn2, n)))


class AttnDenoiser(TinyDenoiser):
    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        torch.manual_seed(seed)
        self.module.diffusion_model = AttnUNet()


@pytest.fixture
def make_denoiser():
    return AttnDenoiser


@pytest.fixture
def denoiser() -> AttnDenoiser:
    return AttnDenoiser(seed=0)
