"""CenterNet inference at one fixed input shape: `predict` (network, flip-test merge, decoding) recorded once
in a CUDA graph and replayed for every image.

At batch 1 a GPU runs each of the few hundred kernels of the ResNet, its decoder, its heads and the decoding
(max-pool peaks, top-k, gathers) faster than Python and the driver launch them: eager inference is bound by
the host. A CUDA graph records those launches once and replays them in one call, so what the host does per
image is a copy into the graph's input, the replay, and copies of its three outputs.

A hand-made graph rather than `torch.compile(mode="reduce-overhead")`: it replays the very kernels eager
`predict` launches, so its boxes, scores and labels are `predict`'s, not a fused program's close ones;
capturing takes a few forward passes, not minutes of compilation; and the path needs nothing a compiler
would bring, since every shape in it follows from the input's (top-k's k included) and nothing in it waits
for the host.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from frelon.errors import FrelonError
from frelon.tasks.detection.task import predict

WARMUP = 3  # eager passes before the capture, on a side stream, as torch.cuda.graph's documentation does

Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _capture(step: Callable[[torch.Tensor], Outputs], static_input: torch.Tensor) -> tuple[torch.cuda.CUDAGraph,
                                                                                            Outputs]:
    """`step(static_input)` recorded in a CUDA graph, and its outputs (which every replay overwrites).

    The warm-up passes do what may not happen during a capture: cuDNN's and cuBLAS's first calls allocate
    their handles and workspaces, and with `cudnn.benchmark` each convolution's algorithm is timed there.
    They run on a side stream, as torch.cuda.graph's documentation prescribes (the capture runs on one too),
    and the current stream waits for them before the capture."""
    with torch.cuda.device(static_input.device):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                step(static_input)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = step(static_input)
    return graph, outputs


class GraphedStep:
    """A function of one tensor of a fixed shape, recorded once in a CUDA graph (see `_capture`) and replayed:
    each call copies its input into the graph's, replays, and returns copies of the outputs, so that a later
    call does not overwrite what an earlier one returned.

    `static_input` (the graph's input: its shape, dtype, device and memory layout are every call's) is read
    by the graph where it lies, as are the tensors `step` reads (a model's weights): change them in place
    (`load_state_dict`), never by moving or replacing them."""

    def __init__(self, step: Callable[[torch.Tensor], Outputs], static_input: torch.Tensor):
        self.input = static_input
        self.graph, self.outputs = _capture(step, static_input)

    def __call__(self, x: torch.Tensor) -> Outputs:
        self.input.copy_(x)  # from any device: a CPU tensor is uploaded here
        self.graph.replay()
        return tuple(out.clone() for out in self.outputs)


def _step(model: nn.Module, flip_test: bool, top_k: int, autocast: torch.dtype | None):
    def step(images: torch.Tensor) -> Outputs:
        # autocast's cache of cast weights is freed when its region ends; a graph would read that freed memory
        precision = (torch.autocast(images.device.type, dtype=autocast, cache_enabled=False)
                     if autocast is not None else contextlib.nullcontext())
        with precision:
            return predict(model, images, flip_test, top_k)

    return step


class FixedSizePredictor:
    """`predict(model, images, flip_test, top_k)` for images of shape (1, 3, size, size): boxes (XYXY, input
    pixels), scores and labels of the top-k peaks, the same as `predict`'s.

    A model on a CUDA device is recorded in a CUDA graph here, once, and replayed by each call; on the CPU
    each call runs the same step eagerly. `autocast` (e.g. torch.bfloat16) runs the step under autocast to
    that dtype; `channels_last` lays the graph's input out channels-last, as a channels-last model's images
    are. Images may come from any device: they are copied to the model's.
    """

    def __init__(self, model: nn.Module, size: int, flip_test: bool, top_k: int, autocast: torch.dtype | None = None,
                 channels_last: bool = False):
        if any(module.training for module in model.modules()):
            raise FrelonError("the detector is in training mode: its batch norm would normalise each image by its "
                              "own statistics and update the running ones; call model.eval() before predicting")
        self.shape = (1, 3, size, size)
        self.device = next(model.parameters()).device
        self.step = _step(model, flip_test, top_k, autocast)
        self.graphed: GraphedStep | None = None
        if self.device.type == "cuda":
            layout = torch.channels_last if channels_last else torch.contiguous_format
            self.graphed = GraphedStep(self.step, torch.zeros(self.shape, device=self.device).contiguous(
                memory_format=layout))

    def __call__(self, images: torch.Tensor) -> Outputs:
        if tuple(images.shape) != self.shape:
            raise FrelonError(f"images of shape {tuple(images.shape)}, but this predictor takes {self.shape}: "
                              f"one image letterboxed to {self.shape[-1]} px (build a predictor for another size)")
        if self.graphed is None:
            return self.step(images.to(self.device))
        return self.graphed(images)
