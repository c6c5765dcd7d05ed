"""Shared fixtures: a tiny generated corpus in the exact Aff-Wild2 layout, made once per session."""
import shutil
from pathlib import Path

import pytest
import torch

from common.data import synthetic
from common.params import load_params

ROOT = Path(__file__).resolve().parents[1]

# `make test` runs two pytest workers on two cores: one torch thread each, or they oversubscribe
# the cores and a training test runs several times slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_params(tmp_path_factory):
    """Smoke-profile params pointing at a freshly generated tiny corpus and an empty feature cache."""
    base = tmp_path_factory.mktemp("tiny")
    params = load_params(ROOT / "params.yaml", "smoke", overrides={
        "data": {"root": str(base / "affwild2")}, "features": {"root": str(base / "features")},
        "corpus": {"subjects": 6, "two_person_videos": 1, "seconds": [10, 12], "image_size": 32,
                   "side_sets": {"affectnet": 30, "expw": 30, "afew_va": 30}, "workers": 2}})
    synthetic.generate(synthetic.CorpusConfig.from_params(params["corpus"]), params["data"]["root"], progress=False)
    return params


@pytest.fixture(scope="session")
def tiny_features(tiny_params):
    """The tiny corpus with the shared features extracted (faces, MFCC, frame encoder, VGGish) and a
    params.yaml whose every path points at it: (params, params_path). Paper tests extract what
    else they need into the same feature root, and run their notebooks with this params_path."""
    from tests.helpers.features import build_zhang_features
    base = Path(tiny_params["features"]["root"]).parent
    text = (ROOT / "params.yaml").read_text()
    text = text.replace("profile: default", "profile: smoke", 1)
    text = text.replace("root: data/affwild2", f"root: {tiny_params['data']['root']}", 1)
    text = text.replace("root: data/features", f"root: {tiny_params['features']['root']}", 1)
    # every model folder of params.yaml lives under data/models/<name>
    text = text.replace("model_dir: data/models", f"model_dir: {base}/models")
    path = base / "params.yaml"
    path.write_text(text)
    shutil.copytree(ROOT / "params", base / "params")     # the profile files beside it
    params = load_params(path, overrides={"corpus": tiny_params["corpus"]})
    build_zhang_features(params)
    return params, path
