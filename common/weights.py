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


def read_state_dict(path: str | Path) -> dict:
    """A file's state dict of tensors ("module." prefixes of DDP models dropped), else UnreadableWeights."""
    state = load_weights_file(path)
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UnreadableWeights(f"holds a {type(state).__name__}, not a state dict of tensors "
                                "(save it with torch.save(model.state_dict(), path))")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def state_dict_problems(model: torch.nn.Module, state: dict) -> str:
    """'' when `state` fits `model` key for key and shape for shape; else what does not, briefly."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and state[k].shape != own[k].shape]

    def few(what, keys):
        return f"{what} {keys[0]}" + (f" (+{len(keys) - 1} more)" if len(keys) > 1 else "") if keys else ""
    parts = [few("missing key", missing), few("unexpected key", unexpected),
             few("shape mismatch (file vs model)", wrong)]
    return "; ".join(p for p in parts if p)


def load_checked(model: torch.nn.Module, path, error: type, what: str, section: str, arch_keys: str) -> None:
    """Load a local state dict into `model`, or raise `error` naming the file and the params keys to fix:
    `<section>.weights` for an unreadable file, `<section>.<arch_keys>` for one that does not fit."""
    try:
        state = read_state_dict(path)
    except (UnreadableWeights, FileNotFoundError) as e:
        raise error(f"{path}: not a usable {what} state dict ({e}); fix {section}.weights "
                    "or set it to \"\" to pre-train in the pipeline") from None
    problems = state_dict_problems(model, state)
    if problems:
        raise error(f"{path}: does not fit the configured {what} {getattr(model, 'config', '')}: {problems}; "
                    f"set {section}.{arch_keys} to the file's architecture")
    model.load_state_dict(state)


def read_numpy_weights(path: str | Path):
    """A .npy of a pickled dict of arrays (TensorFlow ports' `np.save(dict)`, e.g. SoundNet's sound8.npy),
    read without np.load(allow_pickle=True): the pickle may build numpy arrays and dtypes and nothing
    else (the counterpart of weights_only=True), Python 2 pickles decoded as latin-1. Plain numeric
    .npy files are returned as arrays. UnreadableWeights otherwise."""
    import pickle

    import numpy as np
    from numpy.lib import format as npy_format

    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = np._core.multiarray._reconstruct
        allowed[(module, "scalar")] = np._core.multiarray.scalar

    class Restricted(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) in allowed:
                return allowed[(module, name)]
            raise pickle.UnpicklingError(f"the pickle asks for {module}.{name}, which a weights file never needs")

    try:
        with open(path, "rb") as f:
            version = npy_format.read_magic(f)
            read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            _, _, dtype = read_header(f)
            if not dtype.hasobject:
                f.seek(0)
                return np.load(f, allow_pickle=False)
            obj = Restricted(f, encoding="latin1").load()
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - not a .npy, or a pickle that wants more than arrays
        raise UnreadableWeights(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
    return obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
