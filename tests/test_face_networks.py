"""Liu et al. 2023's supervised face networks: DenseNet, IResNet, and the densenet / ires100 / ms_va features."""
from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from common.backbones.densenet import DenseLayer, DenseNet, DenseNetWeightsError, densenet_width, load_densenet_weights
from common.backbones.iresnet import IResNet, IResNetWeightsError, load_iresnet_weights
from common.features import bank, face_networks
from common.params import ParamsError


def test_dense_layer_keeps_its_input_and_adds_growth_maps():
    torch.manual_seed(0)
    layer = DenseLayer(10, 4).eval()
    x = torch.randn(2, 10, 6, 6)
    out = layer(x)
    assert out.shape == (2, 14, 6, 6)
    assert torch.equal(out[:, :10], x)                         # Eq. 2: [x_0, ..., x_{l-1}] passed on unchanged


def test_densenet_width_follows_stem_growth_and_compression(tmp_path):
    torch.manual_seed(0)
    net = DenseNet(16, 12, [2, 2, 2]).eval()
    # 16 + 2*12 = 40 -> /2 = 20 -> +24 = 44 -> /2 = 22 -> +24 = 46 (no transition after the last block)
    assert net.embed_dim == 46 == densenet_width(16, 12, [2, 2, 2])
    # DenseNet-121
    assert DenseNet(64, 32, [6, 12, 24, 16]).embed_dim == densenet_width(64, 32, [6, 12, 24, 16]) == 1024
    x = torch.randn(3, 3, 40, 40)
    out = net(x)
    assert out.shape == (3, 46) and (out >= 0).all()            # pooled after the final BN-ReLU
    good = tmp_path / "good.pt"
    torch.save(net.state_dict(), good)
    other = DenseNet(16, 12, [2, 2, 2]).eval()
    load_densenet_weights(other, good, "densenet")
    assert torch.allclose(other(x), out)
    with pytest.raises(DenseNetWeightsError, match=r"good\.pt.*densenet\.stem / growth / blocks"):
        load_densenet_weights(DenseNet(16, 8, [2, 2, 2]), good, "densenet")


def test_iresnet_embeds_through_a_flattened_fc_sized_by_the_crop(tmp_path):
    torch.manual_seed(0)
    for crop, cells in ((40, 3 * 3), (28, 2 * 2), (112, 7 * 7)):     # four stride-2 stages: 112 -> 7 as IResNet-100
        net = IResNet([1, 1, 1, 1], 4, 16, crop).eval()
        assert net.fc.in_features == 4 * 8 * cells
        assert net(torch.randn(2, 3, crop, crop)).shape == (2, 16)
    good = tmp_path / "ires.pt"
    torch.save(net.state_dict(), good)
    with pytest.raises(IResNetWeightsError, match=r"ires\.pt.*fc\.weight.*ires100\.layers / width / embed_dim / crop"):
        load_iresnet_weights(IResNet([1, 1, 1, 1], 4, 16, 40), good, "ires100")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(IResNetWeightsError, match=r"junk\.pt.*ires100\.weights"):
        load_iresnet_weights(net, junk, "ires100")


def test_task_metrics_score_a_perfect_prediction_as_one():
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 0])
    assert face_networks.task_metrics("expression", np.eye(7)[labels], labels)["score"] == pytest.approx(1.0)
    va = np.random.default_rng(0).uniform(-1, 1, (50, 2)).astype(np.float32)
    assert face_networks.task_metrics("va", va, va)["score"] == pytest.approx(1.0)
    loss = face_networks.task_loss("va", torch.from_numpy(va), torch.from_numpy(va))
    assert loss.item() == pytest.approx(0, abs=1e-5)


def test_a_still_set_without_the_task_labels_is_refused_by_key(tiny_features):
    params = copy.deepcopy(tiny_features[0])
    params["ms_va"]["pretrain"]["sets"] = ["expw"]                    # ExpW-like stills carry expressions only
    with pytest.raises(ParamsError, match="expw.*va labels.*pretrain.sets"):
        face_networks.training_sets(params, "ms_va")
    params["ms_va"]["pretrain"]["sets"] = []
    with pytest.raises(ParamsError, match="ms_va.pretrain.sets is empty"):
        face_networks.training_sets(params, "ms_va")


def test_video_frames_take_only_the_seven_shared_expressions(tiny_features):
    params = tiny_features[0]
    images, labels = face_networks.video_frames(params, "train", 400, 0, "expression")
    assert len(images) == len(labels) > 0 and images.dtype == torch.uint8
    assert labels.min() >= 0 and labels.max() < 7                   # "Other" (7) and -1 left out


def test_pretraining_learns_its_task_and_a_loaded_copy_gives_the_same_features(tiny_features, tmp_path):
    params = copy.deepcopy(tiny_features[0])
    params["ires100"]["pretrain"].update(epochs=5)
    face_networks.pretrain(params, "ires100", progress=False)
    model_dir = Path(params["ires100"]["model_dir"])
    summary = json.loads((model_dir / "ires100.json").read_text())
    assert summary["task"] == "expression" and summary["train_images"] > 0
    assert 0 <= summary["transfer"]["f1_macro"] <= 1 and summary["transfer"]["frames"] > 0
    history = list(csv.DictReader(next((model_dir / "train").rglob("metrics.csv")).open()))
    assert float(history[-1]["train_loss"]) < float(history[0]["train_loss"])      # it learns
    out = face_networks.extract(params, "ires100", progress=False)
    assert out["workers"] == 2 and out["dim"] == params["ires100"]["embed_dim"] and out["face_frames"] > 0
    assert "ires100" in bank.available(params)
    from common.data.affwild2 import read_split
    video = read_split(params["data"]["root"], "validation")[0]
    rows = np.array(bank.open_cache(params, "ires100").get(video.video, video.n_frames))   # a copy, not the memory map
    assert rows.shape == (video.n_frames, params["ires100"]["embed_dim"]) and np.isfinite(rows).all()

    # the same weights given as a local file: loaded (not trained), the same features once re-extracted
    # (in this process: the first extraction shared the tracks out to two forked workers)
    weights = tmp_path / "ires100_weights.pt"
    weights.write_bytes((model_dir / "ires100.pt").read_bytes())
    loaded = copy.deepcopy(params)
    loaded["ires100"].update(weights=str(weights), model_dir=str(tmp_path / "loaded"))
    face_networks.pretrain(loaded, "ires100", progress=False)
    assert json.loads((tmp_path / "loaded" / "ires100.json").read_text())["source"] == "loaded from file"
    shutil.rmtree(bank.open_cache(loaded, "ires100").folder)        # same weights, same cache folder: empty it
    assert face_networks.extract(loaded, "ires100", progress=False, workers=1)["workers"] == 1
    again = np.asarray(bank.open_cache(loaded, "ires100").get(video.video, video.n_frames))
    assert np.array_equal(again, rows)


def test_cli_names_the_networks_when_given_another(capsys):
    assert face_networks.main(["resnet", "pretrain"]) == 2
    assert "densenet,ires100,ms_va" in capsys.readouterr().err
