"""One training step recorded once as a CUDA graph and replayed for every later step.

On a GPU, an eager distill step spends much of its time launching kernels: the H100 ran SD1.5's
checkpointed step (4 + 4 rows, 512 px) in 413 ms eagerly and in 162 ms replayed from a graph, with the
same losses (bench/gpu/graphs_probe.py); the H200 ran SDXL's (1024 px) in 1268 ms and 877 ms. A graph
holds the kernels of the whole step - the teacher's pass, the student's forward and backward, gradient
clipping, the optimizer - and replays them without Python in between; every tensor the step makes lives
in the graph's own memory pool. The step's inputs are copied into the tensors the graph was recorded on
before each replay.

What a captured step must respect (torch.cuda.graphs): no host sync inside it (no .item()), autocast
without its cast cache, an optimizer built with capturable=True, and a few eager warm-up steps on a
side stream first. If capturing fails anyway (a host whose forward does something a graph cannot
hold), the run warns and goes on eagerly: slower, same result.
"""
from __future__ import annotations

import warnings
from typing import Callable, Literal, Union

import torch

GraphChoice = Union[bool, Literal["auto"]]

WARMUP_STEPS = 3  # eager steps before capture: cuDNN / cuBLAS choose their kernels, the allocator settles


def use_cuda_graphs(choice: GraphChoice, device: torch.device | str) -> bool:
    """True / False, or "auto": on for CUDA devices, off elsewhere (DistillConfig has checked the value)."""
    on_cuda = torch.device(device).type == "cuda"
    if choice is True and not on_cuda:
        raise ValueError(f"cuda_graphs=True needs a CUDA device; this model runs on {device}. Use 'auto' or False.")
    return on_cuda and choice is not False


class ReplayedStep:
    """Calls `step(*inputs) -> loss` (forwards, backward and optimizer.step(); returns a detached
    0-dim loss) once per training step: eagerly, or after WARMUP_STEPS eager steps, as a graph.

    Every call gets the same number of tensors with the same shapes, dtypes and devices.
    The loss returned by a replay is the graph's own output tensor, overwritten by the next call.
    """

    def __init__(self, step: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer, graphed: bool) -> None:
        self.step, self.optimizer, self.graphed = step, optimizer, graphed
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_inputs: list[torch.Tensor] = []
        self.static_loss: torch.Tensor | None = None
        # One side stream for every warm-up step: the caching allocator keeps a stream's freed blocks for
        # that stream alone, so a new stream per step would hold a step's memory once per warm-up step.
        self.warmup_stream = torch.cuda.Stream() if graphed else None

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if not self.graphed:
            self.optimizer.zero_grad(set_to_none=True)
            return self.step(*inputs)
        if self.graph is None and self.calls <= WARMUP_STEPS:
            return self._warmup(inputs)
        if self.graph is None and not self._capture(inputs):
            return self(*inputs)  # capture failed: self.graphed is now False
        for static, value in zip(self.static_inputs, inputs):
            static.copy_(value)
        self.graph.replay()
        return self.static_loss

    def _warmup(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        side = self.warmup_stream
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.step(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        return loss

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> bool:
        self.static_inputs = [value.clone() for value in inputs]
        graph = torch.cuda.CUDAGraph()
        # Gradients are created inside the graph, so every replay writes them afresh instead of adding to them.
        self.optimizer.zero_grad(set_to_none=True)
        try:
            # thread_local: CUDA calls from the host application's other threads (a server's) stay legal.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.static_loss = self.step(*self.static_inputs)
        except Exception as error:  # noqa: BLE001 - any failure to record falls back to eager steps
            warnings.warn(f"CUDA graph capture of the training step failed ({type(error).__name__}: {error}); "
                          "training goes on without graphs (slower, same result)", RuntimeWarning, stacklevel=3)
            self.graphed, self.static_inputs, self.static_loss = False, [], None
            torch.cuda.synchronize()
            return False
        self.graph = graph
        return True
