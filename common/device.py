"""Which device a module lives on, and where inference runs (DESIGN.md, "GPU conventions").

Rule: anything a loss, augmentation, evaluate, predict or extract function creates takes its
device from its inputs, or from the model: `module_device(model)`. Predict / extract paths move
each batch there and bring results back with `.float().cpu()` before numpy.
"""
from __future__ import annotations

import torch
from torch import nn


def module_device(module: nn.Module) -> torch.device:
    """The device of the module's first parameter (or buffer). A TorchScript-frozen module has
    inlined both as constants: it has neither, and runs where it was frozen, the CPU
    (common/features/visual.frozen_for_inference freezes only for the CPU)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def inference_device() -> torch.device:
    """Where a feature extractor runs: the GPU when there is one (issue 11), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
