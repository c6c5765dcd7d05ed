"""Reading .pt files safely: the one place that calls torch.load for weights and checkpoints."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


class UnreadableWeights(ValueError):
    """torch.load refused the file; the message is torch's first line, without its long advice."""


def _first_line(e: Exception) -> str:
    """The first line of an exception's message ('' when it has none): what a loader's error repeats."""
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def load_weights_file(path: str | Path):
    """torch.load(path, weights_only=True) onto the CPU.

    weights_only=True unpickles only tensors and plain containers, so a file from elsewhere cannot
    run code here. Callers wrap UnreadableWeights in their own error naming the params key to fix.
    argparse.Namespace, an inert bag of attributes, is allowed too: fairseq checkpoints of the
    wav2vec 2.0 era store their training arguments as one beside the weights.
    """
    import argparse
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a usable weights file"
        text = str(e).strip()
        raise UnreadableWeights(f"{type(e).__name__}: {text.splitlines()[0] if text else ''}") from None


def read_state_dict(path: str | Path) -> dict:
    """A file's state dict of tensors ("module." prefixes of DDP models dropped), else UnreadableWeights.

    A training checkpoint that wraps the weights under "state_dict" or "model" (MAE's
    mae_pretrain_vit_base.pth: {"model": {...}}) is unwrapped; an .npz holds named arrays
    (e.g. a TF-Slim checkpoint dumped with its variable names) and is read with allow_pickle=False.
    """
    if str(path).endswith(".npz"):
        import numpy as np
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return {k: torch.from_numpy(arrays[k].copy()) for k in arrays.files}
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken or object-holding archive
            raise UnreadableWeights(f"{type(e).__name__}: {_first_line(e)}") from None
    state = load_weights_file(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UnreadableWeights(f"holds a {type(state).__name__}, not a state dict of tensors "
                                "(save it with torch.save(model.state_dict(), path))")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def state_dict_problems(model: torch.nn.Module | dict, state: dict) -> str:
    """'' when `state` fits `model` (or a state dict) key for key and shape for shape; else what does not, briefly."""
    own = model if isinstance(model, dict) else model.state_dict()
    missing = [f"{k} {tuple(own[k].shape)}" for k in own if k not in state]
    unexpected = [f"{k} {tuple(state[k].shape)}" for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and state[k].shape != own[k].shape]

    def few(what, keys):                       # the first three of each kind, and how many more
        more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
        return f"{what} {', '.join(keys[:3])}{more}" if keys else ""
    parts = [few("missing key", missing), few("unexpected key", unexpected),
             few("shape mismatch (file vs model)", wrong)]
    return "; ".join(p for p in parts if p)


@dataclass(frozen=True)
class Layout:
    """A published key layout that one of this suite's networks holds exactly.

    `marker`: a key only files of this layout carry (after read_state_dict's unwrapping).
    `convert`: the published state dict -> this module's names and shapes (no tensor values change
    beyond transposes); keys the published file has and this network has no use for (ImageNet
    classifiers, PCA) are dropped by it. `fits`: the published file and the params settings that
    hold it, quoted in every error. `absent`: prefixes of this network's own keys the published file
    does not carry (e.g. MAE's decoder: only its encoder is published); they keep their seeded
    initialisation and the feature never runs them.
    """
    name: str
    marker: str
    convert: Callable[[dict], dict]
    fits: str
    absent: tuple = ()


def detect_layout(state: dict, layouts=()) -> Layout | None:
    """The first of `layouts` whose marker key the state dict has; None = this module's own names."""
    return next((layout for layout in layouts if layout.marker in state), None)


def load_checked(model: torch.nn.Module, path, error: type, what: str, section: str, arch_keys: str,
                 layouts: tuple = ()) -> None:
    """Load a local state dict into `model`, or raise `error` naming the file and the params keys to fix:
    `<section>.weights` for an unreadable file, `<section>.<arch_keys>` for one that does not fit.

    The file is in this module's own names (a pipeline checkpoint) or in one of the published
    `layouts`, recognised by its marker key and converted, never renamed by hand. Every key and
    shape is checked before anything is copied, so a file that does not fit leaves `model`
    untouched (no half-loaded network ever runs); the message gives the first three mismatches
    and the published files this section reads.
    """
    fits = "; ".join(f"{layout.name}: {layout.fits}" for layout in layouts)
    fits_note = f" (published files this loader reads: {fits})" if fits else ""
    try:
        state = read_state_dict(path)
    except (UnreadableWeights, FileNotFoundError) as e:
        raise error(f"{path}: not a usable {what} state dict ({e}); fix {section}.weights "
                    f"or set it to \"\" to pre-train in the pipeline{fits_note}") from None
    layout = detect_layout(state, layouts)
    if layout is not None:
        try:
            state = layout.convert(state)
        except (KeyError, ValueError, RuntimeError, IndexError) as e:
            raise error(f"{path}: looks like {layout.name} (has {layout.marker}) but cannot be converted "
                        f"({type(e).__name__}: {e}); fix {section}.weights{fits_note}") from None
    own = model.state_dict()
    absent = tuple(layout.absent) if layout is not None else ()
    expected = {k: v for k, v in own.items() if k in state or not (absent and k.startswith(absent))}
    problems = state_dict_problems(expected, state)
    if problems:
        source = f"{layout.name} file" if layout is not None else "file (this module's own key names)"
        raise error(f"{path}: this {source} does not fit the configured {what} {getattr(model, 'config', '')}: "
                    f"{problems}; set {section}.{arch_keys} to the file's architecture{fits_note}")
    model.load_state_dict({**own, **state})
    model.weights_source = layout.name if layout is not None else None     # read by weights_provenance


def weights_provenance(model: torch.nn.Module, path) -> str:
    """What a report says about weights load_checked read from `path`: "published weights (<layout>: <file>)"
    when the file was in a published layout, else "loaded from file" (this suite's own names)."""
    name = getattr(model, "weights_source", None)
    return f"published weights ({name}: {Path(path).name})" if name else "loaded from file"


PIPELINE = "pre-trained in the pipeline"


def recorded_provenance(record: str | Path) -> str:
    """What a report says about a network's weights, read from the record its stage wrote
    (<model_dir>/<name>.json: `source`, `weights_file`), never from params.yaml (which says what the
    next run will do, not what this one did). One of:
      "published weights (<layout>: <file>)[, file <path>][, sha256 <first 12>...]"  a published file;
      "weights loaded from <path> (not recognised as a published file)": e.g. this suite's own names;
      "pre-trained in the pipeline[<what the stage recorded>]";
      "not trained yet (no <record>)".
    The stages word `source` in several ways ("pretrained_in_pipeline", "pre-trained in pipeline
    on ...", "loaded", "loaded from file"); this is the one wording the reports use."""
    import json
    record = Path(record)
    if not record.is_file():
        return f"not trained yet (no {record})"
    info = json.loads(record.read_text())
    source, file = str(info.get("source", "")), info.get("weights_file")
    sha = info.get("weights_file_sha256") or info.get("weights_sha256")
    if source.startswith("published weights"):
        return source + (f", file {file}" if file else "") + (f", sha256 {sha[:12]}..." if sha else "")
    if source == "loaded" or source.startswith("loaded from") or (file and not source):
        return f"weights loaded from {file or 'a file'} (not recognised as a published file)"
    for prefix in ("pretrained_in_pipeline", "pre-trained in pipeline", PIPELINE):
        if source.startswith(prefix):
            rest = source[len(prefix):]
            side = info.get("side_set")
            return PIPELINE + (rest if rest else f" on the {side} side set" if side else "")
    return source or f"unknown source ({record} records none)"



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
        raise UnreadableWeights(f"{type(e).__name__}: {_first_line(e)}") from None
    return obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
