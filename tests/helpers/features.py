"""What the network-feature tests on the tiny corpus (conftest.tiny_features) each do: pre-train with
a few settings changed, then read one track's rows back from the feature bank."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable

import numpy as np

from common.data.affwild2 import read_split
from common.features import bank


def pretrain_with(tiny_features, name: str, pretrain: Callable, **settings) -> tuple[dict, dict]:
    """A copy of the tiny corpus's params with `<name>.pretrain` updated by `settings`, the network
    pre-trained by pretrain(params, progress=False): (params, its <model_dir>/<name>.json record)."""
    params = copy.deepcopy(tiny_features[0])
    params[name]["pretrain"].update(settings)
    pretrain(params, progress=False)
    summary = json.loads((Path(params[name]["model_dir"]) / f"{name}.json").read_text())
    print(f"{name} validation", summary["validation"], summary["seconds"])
    return params, summary


def first_track_rows(params: dict, name: str, split: str, dim: int) -> np.ndarray:
    """The bank cache `name`'s rows of `split`'s first track, checked: one finite `dim` row per label frame."""
    video = read_split(params["data"]["root"], split)[0]
    rows = bank.open_cache(params, name).get(video.video, video.n_frames)
    assert rows.shape == (video.n_frames, dim) and np.isfinite(rows).all()
    return rows
