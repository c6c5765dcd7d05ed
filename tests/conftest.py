"""Shared fixtures: a tiny generated corpus in the exact Aff-Wild2 layout, made once per session."""
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
