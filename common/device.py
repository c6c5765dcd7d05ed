"""Which device a module lives on, where inference runs, and how
many CPU threads torch uses for a block (`torch_threads`).

Rule: anything a loss, augmentation, evaluate, predict or extract function creates takes its
device from its inputs, or from the model: `module_device(model)`. Predict / extract paths move
each batch there and bring results back with `.float().cpu()` before numpy.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def module_device(module: nn.Module) -> torch.device:
    """The device of the module's first parameter (or buffer). A TorchScript-frozen module has
    inlined both as constants: it has neither, and runs where it was frozen, the CPU
    (common/features/face_frames.frozen_for_inference freezes only for the CPU)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def inference_device() -> torch.device:
    """Where a feature extractor runs: the GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def torch_threads(n: int):
    """Run the block with `n` torch CPU threads (0 = leave the count as it is), then restore it.

    The network stages default to one thread. torch's OpenMP threads meet at a barrier after every
    operation, so when another process holds one of two cores the second thread stalls them all;
    on the shared 2-core machine this project was built on, the frame encoder's pre-training took
    43 s with 1 thread vs 246 s with 2, its extraction 29 s vs 72 s, and a narrow network such as
    VGGish does the same work in twice the CPU time with a second thread (one epoch 6.8 CPU-s vs
    13.6), no faster. On an otherwise idle machine try `--threads 2`.
    """
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
