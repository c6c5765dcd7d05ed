"""Liu et al. 2023's network features built in the pipeline: backbones, weight loading, pre-training, caches."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.backbones.mobilenet import MobileNet, MobileNetWeightsError, load_mobilenet_weights
from common.features import bank, fau

torch.set_num_threads(1)


# --------------------------------------------------------------------------- MobileNet (fau)

def test_mobilenet_embeds_faces_and_loads_only_fitting_weights(tmp_path):
    torch.manual_seed(0)
    stages = [[1, 8, 1, 1], [4, 16, 2, 2]]
    net = MobileNet(8, stages, 24).eval()
    x = torch.randn(3, 3, 28, 28)
    out = net(x)
    assert out.shape == (3, 24) and torch.isfinite(out).all()
    assert torch.allclose(net(x[:1]), out[:1], atol=1e-5)            # eval mode: each face on its own
    assert (out >= 0).all() and (out <= 6).all()                      # pooled ReLU6 activations
    good = tmp_path / "good.pt"
    torch.save(net.state_dict(), good)
    other = MobileNet(8, stages, 24).eval()
    load_mobilenet_weights(other, good, "fau")
    assert torch.allclose(other(x), out)
    wrong = tmp_path / "wrong.pt"
    torch.save(MobileNet(8, stages, 32).state_dict(), wrong)
    with pytest.raises(MobileNetWeightsError, match=r"wrong\.pt.*features\.\d+\.0\.weight.*fau\.stem"):
        load_mobilenet_weights(other, wrong, "fau")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(MobileNetWeightsError, match=r"junk\.pt.*fau\.weights"):
        load_mobilenet_weights(other, junk, "fau")


def test_random_crop_flip_takes_one_window_and_flips_about_half_of_the_faces():
    images = torch.rand(64, 3, 6, 6)
    out = fau.random_crop_flip(images, 4, torch.Generator().manual_seed(0))
    assert out.shape == (64, 3, 4, 4)
    windows = [(t, l) for t in range(3) for l in range(3)
               if all(torch.equal(o, images[i, :, t:t + 4, l:l + 4]) or torch.equal(o, images[i, :, t:t + 4, l:l + 4].flip(-1))
                      for i, o in enumerate(out))]
    assert len(windows) == 1                                          # one crop position for the batch
    t, l = windows[0]
    flipped = sum(not torch.equal(o, images[i, :, t:t + 4, l:l + 4]) for i, o in enumerate(out))
    assert 16 <= flipped <= 48


def test_mean_auc_is_one_for_a_perfect_ranking_and_skips_one_class_aus():
    labels = np.array([[0, 1, 1], [1, 1, 0], [0, 1, 1], [1, 1, 0]], float)
    mask = np.ones_like(labels, bool)
    assert fau.mean_auc(labels * 2 - 1, labels, mask) == 1.0          # AU 2 has one class only: left out
    assert fau.mean_auc(1 - labels, labels, mask) == 0.0
    mask[:, 0] = [True, True, False, False]
    assert fau.mean_auc(np.zeros_like(labels), labels, mask) == 0.5


def test_fau_pretraining_beats_chance_and_fills_the_cache(tiny_features):
    params, _ = tiny_features
    params = copy.deepcopy(params)
    params["fau"]["pretrain"].update(epochs=4, frames=1500)
    fau.pretrain_fau(params, progress=False)
    summary = json.loads((Path(params["fau"]["model_dir"]) / "fau.json").read_text())
    print("fau validation", summary["validation"], summary["seconds"])
    assert summary["validation"]["val_auc"] > 0.55, summary            # 12 AUs, chance 0.5
    assert summary["seconds"] > 0
    out = fau.extract_fau(params, progress=False)
    assert out["face_frames"] > 0 and (Path(params["features"]["root"]) / "fau.json").is_file()
    cache = bank.open_cache(params, "fau")
    from common.data.affwild2 import read_split
    video = read_split(params["data"]["root"], "validation")[0]
    rows = cache.get(video.video, video.n_frames)
    assert rows.shape == (video.n_frames, params["fau"]["embed_dim"]) and np.isfinite(rows).all()
    assert "fau" in bank.available(params)
