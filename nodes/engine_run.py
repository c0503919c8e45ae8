"""Running an engine stage inside ComfyUI: model management, progress, cancel, clean-up."""
from __future__ import annotations

import contextlib
import re
from typing import Iterator

import psutil  # a ComfyUI requirement
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

import comfy.model_management
import comfy.utils

from .comfy_denoiser import ComfyDenoiser

# Attention backends while the engine runs: all but cuDNN's, which torch tries first on recent
# NVIDIA cards and which plans each new attention shape on first use, and the stages use many
# shapes (sampling, per-sample saliency, training batches). On an H200 this took SD1.5 saliency's
# first gradient sample from 17.8 s into the stage to 4.8 s. CPUs keep the backend they had.
ENGINE_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@contextlib.contextmanager
def engine_denoiser(model, clip, resolution: int | None = None) -> Iterator[ComfyDenoiser]:
    """The loaded model as the engine's Denoiser, with autograd allowed, released afterwards.

    ComfyUI runs nodes under torch.inference_mode(); training needs it off (as its own
    TrainLoraNode does). The user's MODEL is only cloned, never changed.
    """
    denoiser = ComfyDenoiser(model, clip, resolution)
    device = denoiser.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode(False), sdpa_kernel(ENGINE_ATTENTION):
        denoiser.load()
        try:
            yield denoiser
        except torch.OutOfMemoryError as e:
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            free, total = torch.cuda.mem_get_info(device) if device.type == "cuda" else (0, 0)
            asked = re.search(r"Tried to allocate ([\d.]+) (GiB|MiB|KiB)", str(e))
            more = float(asked.group(1)) / {"GiB": 1, "MiB": 2**10, "KiB": 2**20}[asked.group(2)] if asked else 0.0
            raise RuntimeError(
                f"not enough GPU memory for SPARE on {device}: it needed at least {peak + more:.1f} GiB "
                f"({peak:.1f} GiB allocated at the peak, then {more:.2f} GiB more were asked for) and the card has "
                f"{total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free now). Lower batch_size, resolution or "
                "samples, close other models, or start ComfyUI with --cpu (slow but works)."
            ) from e
        except RuntimeError as e:
            asked = re.search(r"DefaultCPUAllocator: can't allocate memory: you tried to allocate (\d+) bytes", str(e))
            if asked is None:
                raise
            memory = psutil.virtual_memory()
            raise RuntimeError(
                f"not enough RAM for SPARE on the CPU: one more allocation of {int(asked.group(1)) / 2**30:.1f} GiB "
                f"failed with {memory.available / 2**30:.1f} GiB of {memory.total / 2**30:.1f} GiB available. "
                "Lower batch_size, resolution or samples, close other programs, or train on a GPU."
            ) from e
        finally:
            denoiser.release()
            comfy.model_management.soft_empty_cache()


class StepProgress:
    """Engine callback: one tick per step in the UI and on the console; Cancel stops within a step."""

    def __init__(self, label: str):
        self.ui = comfy.utils.ProgressBar(1)
        self.console = tqdm(desc=f"[SPARE] {label}", leave=False, mininterval=1.0)
        self.losses: list[float] = []

    def __call__(self, step: int, total: int, loss: float | None = None) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if loss is not None:
            self.losses.append(loss)
            self.console.set_postfix(loss=f"{loss:.3g}", refresh=False)
        if self.console.total != total:
            self.console.total = total
        self.ui.update_absolute(step, total)
        self.console.update(step - self.console.n)

    def close(self) -> None:
        self.console.close()
