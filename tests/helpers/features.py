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


def build_zhang_features(params: dict) -> None:
    """What Zhang's notebooks read, built for a tiny corpus as the pipeline's stages build it: the face
    pixels, MFCC, the frame encoder (pre-trained, then extracted) and VGGish (pre-trained or loaded)."""
    from common.features import faces, vggish, visual
    from common.features.extract import extract_audio
    faces.extract_faces(params, workers=2, progress=False)
    extract_audio(params, "mfcc", workers=2, progress=False)
    visual.pretrain_frame_encoder(params, progress=False)
    visual.extract_visual(params, progress=False)
    vggish.pretrain_vggish(params, progress=False)
    vggish.extract_vggish(params, progress=False)
