"""The check every network's weights loader gets (common.weights.load_checked behind each one)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch


def check_weights_loader(load: Callable, net: torch.nn.Module, fresh: torch.nn.Module, other: torch.nn.Module,
                         error: type, mismatch: str, section: str, tmp_path: Path) -> torch.nn.Module:
    """`load(model, path)` fills `fresh` (built like `net`) from `net`'s saved state dict; a file of
    `other` (the network with another architecture) raises `error` naming the file and matching
    `mismatch` (a regex: the key and the params keys to fix); a file that is not torch's raises
    `error` naming the file and `<section>.weights`. Returns `fresh`, now holding `net`'s weights
    (a refused file leaves it untouched)."""
    good = tmp_path / "good.pt"
    torch.save(net.state_dict(), good)
    load(fresh, good)
    wrong = tmp_path / "wrong.pt"
    torch.save(other.state_dict(), wrong)
    with pytest.raises(error, match=rf"wrong\.pt.*{mismatch}"):
        load(fresh, wrong)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(error, match=rf"junk\.pt.*{section}\.weights"):
        load(fresh, junk)
    return fresh
