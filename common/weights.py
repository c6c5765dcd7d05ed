"""Reading .pt files safely: the one place that calls torch.load for weights and checkpoints."""
from __future__ import annotations

from pathlib import Path

import torch


class UnreadableWeights(ValueError):
    """torch.load refused the file; the message is torch's first line, without its long advice."""


def load_weights_file(path: str | Path):
    """torch.load(path, weights_only=True) onto the CPU.

    weights_only=True unpickles only tensors and plain containers, so a file from elsewhere cannot
    run code here. Callers wrap UnreadableWeights in their own error naming the params key to fix.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a usable weights file"
        text = str(e).strip()
        raise UnreadableWeights(f"{type(e).__name__}: {text.splitlines()[0] if text else ''}") from None
