"""Liu, Sun et al. 2023: published numbers, feature bank, encoders, Eq. 10, ensembles, notebooks."""
import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from common import report
from common.backbones.ecapatdnn import EcapaTDNN, EcapaWeightsError, load_ecapa_weights
from common.features import bank, ecapatdnn, face_networks, fau, mae
from common.metrics import ccc
from papers.liu2023 import experiment as ex
from tests.helpers.notebooks import exercise_answers
from common.data.sequences import Normalizer, split_ccc
from papers.liu2023.data import ChunkDataset, Clip, pad_to_segments
from papers.liu2023.model import ENCODERS, LiuModel, TemporalEncoder
from tests.helpers.weights import check_weights_loader

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "papers" / "liu2023" / "published.csv"


def published():
    with open(PUBLISHED) as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- published.csv

def test_published_csv_holds_every_number_of_tables_1_to_7():
    rows = published()
    counts = {t: sum(r["table"] == t for r in rows) for t in "1234567"}
    # T1 5x2, T2 7+1, T3 12+1, T4 7x3, T5 9x2 - 1 empty cell, T6 5x3, T7 11x3
    assert counts == {"1": 10, "2": 8, "3": 13, "4": 21, "5": 17, "6": 15, "7": 33}
    assert all(0 < float(r["value"]) < 1 for r in rows)
    key = {(r["table"], r["row"], r["column"]): float(r["value"]) for r in rows}
    assert len(key) == len(rows)                                    # no duplicate cell
    assert key["6", "5: 6-Fold", "Mean"] == 0.6414 and key["7", "Ours", "Total Score"] == 0.6414
    assert key["2", "Ensemble", "Valence"] == 0.65281 and key["3", "Ensemble", "Arousal"] == 0.76650
    for fold in range(1, 7):                                          # Table 4 mean = (V + A) / 2
        v, a, m = (key["4", f"Fold {fold}", c] for c in ("Valence", "Arousal", "Mean"))
        assert abs((v + a) / 2 - m) < 1e-4
    for team in ("Ours", "CBCR", "baseline"):
        assert {c for (t, r, c) in key if t == "7" and r == team} == {"Total Score", "Valence", "Arousal"}


# --------------------------------------------------------------------------- feature bank

def test_bank_names_every_feature_of_the_paper_and_refuses_unbuilt_ones(monkeypatch):
    assert set(bank.VISUAL) == {"densenet", "ires100", "fau", "ms_va", "mae", "affectnet"}
    assert set(bank.AUDIO) == {"fbank", "egemaps", "compare", "vggish", "wav2vec", "hubert", "ecapatdnn"}
    assert len(bank.table()) == 13 and all(r["paper"] and r["here"] for r in bank.table())
    assert all(f.cache is not None for f in bank.FEATURES.values())      # all 13 are built
    unbuilt = dataclasses.replace(bank.FEATURES["densenet"], cache=None)
    monkeypatch.setitem(bank.FEATURES, "densenet", unbuilt)              # an entry without an extractor is refused
    with pytest.raises(bank.FeatureBankError, match="densenet.*no extractor"):
        bank.open_cache({}, "densenet")
    with pytest.raises(bank.FeatureBankError, match="unknown feature 'resnet'"):
        bank.get("resnet")
    with pytest.raises(bank.FeatureBankError, match="unknown feature 'nosuch'"):
        ex.runnable({}, ["transformer early | affectnet | nosuch"])


def test_configs_parse_from_params_text():
    cfg = ex.parse_config("transformer_lstm late | fau,ires100 | ecapatdnn,hubert")
    assert cfg == {"encoder": "transformer_lstm", "fusion": "late", "visual": ["fau", "ires100"],
                   "audio": ["ecapatdnn", "hubert"]}
    assert ex.parse_config("transformer early | affectnet |")["audio"] == []
    assert ex.row_label(cfg) == "Transformer-LSTM (late fusion) | fau,ires100 | ecapatdnn,hubert"
    with pytest.raises(ValueError, match="encoder fusion"):
        ex.parse_config("transformer affectnet")


# --------------------------------------------------------------------------- ECAPA-TDNN (ecapatdnn)

def test_ecapa_tdnn_embeds_a_window_and_loads_only_fitting_weights(tmp_path):
    torch.manual_seed(0)
    net = EcapaTDNN(n_mels=20, channels=16, mfa=32, embed_dim=8, scale=4, se_bottleneck=8,
                    attention_bottleneck=8).eval()
    x = torch.randn(3, 50, 20)
    out = net(x)
    assert out.shape == (3, 8) and torch.isfinite(out).all()
    assert torch.allclose(net(x[:1]), out[:1], atol=1e-5)            # eval mode: each window on its own
    other = check_weights_loader(
        load_ecapa_weights, net,
        EcapaTDNN(n_mels=20, channels=16, mfa=32, embed_dim=8, scale=4, se_bottleneck=8, attention_bottleneck=8).eval(),
        EcapaTDNN(n_mels=20, channels=16, mfa=32, embed_dim=12, scale=4, se_bottleneck=8, attention_bottleneck=8),
        EcapaWeightsError, "embed", "ecapatdnn", tmp_path)
    assert torch.allclose(other(x), out)


def test_ecapa_windows_are_centred_edge_padded_and_mean_normalised():
    fb = np.arange(10, dtype=np.float32)[:, None].repeat(2, 1)
    w = ecapatdnn.windows(fb, [0, 5, 9], 4)
    assert w.shape == (3, 4, 2)
    assert np.allclose(w.mean(1), 0)                                 # per-window mean normalisation
    raw = np.pad(fb, ((2, 2), (0, 0)), mode="edge")
    assert np.allclose(w[1] + raw[5:9].mean(0), raw[5:9])            # frames 3..6 around centre 5


# --------------------------------------------------------------------------- model

@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("fusion", ["early", "late"])
def test_models_map_segments_to_valence_arousal(encoder, fusion):
    torch.manual_seed(0)
    model = LiuModel(6, 4, encoder, fusion, dim=8, layers=2, heads=2, dropout=0.0, segment=5, head_hidden=(8, 4))
    out = model({"visual": torch.randn(3, 15, 6), "audio": torch.randn(3, 15, 4)})
    assert out.shape == (3, 15, 2) and out.abs().max() < 1            # tanh heads
    out.sum().backward()
    with pytest.raises(ValueError, match="multiple of the segment"):
        model({"visual": torch.randn(1, 7, 6), "audio": torch.randn(1, 7, 4)})


def test_recurrent_state_crosses_segments_and_transformer_segments_are_independent():
    torch.manual_seed(0)
    x = torch.randn(2, 12, 8)
    for kind in ("lstm", "gru"):                                       # Eqs. 3-4: h_{i-1} starts segment i
        enc = TemporalEncoder(kind, 8, 1, 2, 0.0, segment=4).eval()
        whole, _ = enc.recurrent(x)                                    # one pass over the whole video
        assert torch.allclose(enc(x), whole, atol=1e-6)
        alone, _ = enc.recurrent(x[:, 4:8])                            # segment 2 without its history
        assert not torch.allclose(enc(x)[:, 4:8], alone, atol=1e-4)
    enc = TemporalEncoder("transformer", 8, 1, 2, 0.0, segment=4).eval()   # Eq. 5: per segment
    y = x.clone()
    y[:, :4] += 1.0
    assert torch.allclose(enc(x)[:, 4:], enc(y)[:, 4:], atol=1e-6)
    assert not torch.allclose(enc(x)[:, :4], enc(y)[:, :4], atol=1e-4)


def test_late_fusion_needs_both_modalities():
    with pytest.raises(ValueError, match="late fusion"):
        LiuModel(6, 0, "transformer", "late", dim=8, segment=5)


# --------------------------------------------------------------------------- loss, data

def test_eq10_loss_by_hand_with_invalid_frames_left_out():
    pred = torch.tensor([[[0.1, 0.5], [0.4, -0.2], [0.3, 0.0], [0.9, 0.9]]])
    y = torch.tensor([[[0.0, 0.4], [0.5, -0.1], [0.2, 0.1], [-5.0, -5.0]]])
    mask = torch.tensor([[True, True, True, False]])
    loss = ex.eq10_loss(2.0, 1.0)(lambda x: pred, {"x": None, "y": y, "mask": mask})
    lv = 1 - ccc(np.array([0.0, 0.5, 0.2]), np.array([0.1, 0.4, 0.3]))
    la = 1 - ccc(np.array([0.4, -0.1, 0.1]), np.array([0.5, -0.2, 0.0]))
    assert abs(float(loss) - (2 * lv + la)) < 1e-5


def _clip(video, split, n, rng, subject=None):
    v = rng.standard_normal((n, 3)).astype(np.float32)
    a = rng.standard_normal((n, 2)).astype(np.float32)
    kernel = np.ones(15) / 15
    label = np.tanh(np.stack([np.convolve(v[:, 0], kernel, "same") * 3, np.convolve(a[:, 0], kernel, "same") * 3], 1))
    return Clip(video, subject or video, split, label.astype(np.float32), np.ones(n, bool),
                {"vis": v, "aud": a})


def test_padding_repeats_the_last_frame_and_is_masked():
    a = np.arange(7, dtype=np.float32)[:, None]
    assert pad_to_segments(a, 5)[:, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 6, 6, 6]
    rng = np.random.default_rng(0)
    clip = _clip("v", "train", 23, rng)
    ds = ChunkDataset([clip], Normalizer([clip], ["vis", "aud"]), ["vis"], ["aud"], segment=5, chunk_segments=2)
    assert len(ds) == 3 and all(item["y"].shape == (10, 2) for item in ds)
    assert int(sum(item["mask"].sum() for item in ds)) == 23             # every real frame once, padding masked


def test_temporal_model_learns_a_toy_signal(tmp_path):
    rng = np.random.default_rng(0)
    clips = ([_clip(f"tr{i}", "train", 200, rng) for i in range(6)]
             + [_clip(f"va{i}", "validation", 200, rng) for i in range(2)]
             + [_clip(f"te{i}", "test", 200, rng) for i in range(2)])
    lp = {"segment": 20, "chunk_segments": 2, "dim": 16, "layers": 1, "heads": 2, "dropout": 0.0,
          "head_hidden": [16, 8],
          "head_dropout": 0.0, "alpha": 1.0, "beta": 1.0, "batch_size": 4, "lr": 0.01, "weight_decay": 0.0,
          "epochs": 10,
          "step_lr_epochs": 0, "step_lr_gamma": 0.1, "tvm_epochs": [9, 10], "folds": 2}
    params = {"liu2023": lp}
    cfg = ex.config("transformer", ["vis"], ["aud"])
    m = ex.train_run(params, clips, cfg, "fold0", 0, tmp_path / "run")
    assert min(m["validation"]["valence"], m["validation"]["arousal"], m["test"]["mean"]) > 0.5, m
    assert (tmp_path / "run" / "result.json").exists()
    tvm = ex.train_run(params, clips, cfg, "tvm", 0, tmp_path / "tvm")
    assert tvm["tvm_models"] == 2 and "validation" not in tvm


def test_epoch_keeper_takes_each_task_from_its_best_epoch():
    """One evaluation per epoch (ledger: mid_epoch_validation); valence and arousal from their own best
    epochs; a tie keeps the earlier epoch under method: paper and moves to the later one under method:
    released (the code's >=, ledger: checkpoint_per_task)."""
    import types
    scores = [{"valence": 0.3, "arousal": 0.6}, {"valence": 0.5, "arousal": 0.4}, {"valence": 0.5, "arousal": 0.6}]
    model = torch.nn.Linear(1, 1)
    for later_ties, expect in ((False, {"valence": 2, "arousal": 1}), (True, {"valence": 3, "arousal": 3})):
        keeper = ex.EpochKeeper(["val"], [], lambda net, part: {}, (0, 0), later_ties=later_ties)
        calls = 0
        for epoch, row in enumerate(scores, 1):
            keeper.evaluate = lambda net, row=row: row
            calls += 1
            keeper(model, types.SimpleNamespace(history=[keeper.evaluate(model)], epoch=epoch))
        assert {t: keeper.best[t][1] for t in ("valence", "arousal")} == expect
        assert calls == len(scores)
    clip = Clip("v", "v", "validation", np.zeros((3, 2), np.float32), np.ones(3, bool), {})
    diverged = ex.EpochKeeper([clip], [], lambda net, part: {"v": np.full((3, 2), np.nan)}, (0, 0), method="released")
    with pytest.raises(FloatingPointError, match="diverged"):
        diverged.evaluate(model)


def test_ensemble_average_and_selection():
    a, b = {"v": np.array([[0.0, 1.0], [1.0, 0.0]])}, {"v": np.array([[1.0, 0.0], [0.0, 0.0]])}
    assert np.allclose(ex.average([a, b])["v"], [[0.5, 0.5], [0.5, 0.0]])
    rows = [{"validation": {"valence": v, "arousal": 1 - v}} for v in (0.2, 0.9, 0.5)]
    assert [r["validation"]["valence"] for r in ex.select(rows, "valence", 2)] == [0.9, 0.5]
    assert [r["validation"]["valence"] for r in ex.select(rows, "arousal", 1)] == [0.2]
    with pytest.raises(ValueError):
        ex.average([])
    clip = Clip("v", "s", "test", np.array([[0.1, 0.2], [0.3, -0.1], [-0.2, 0.4]], np.float32), np.ones(3, bool), {})
    perfect = split_ccc([clip], {"v": clip.label.copy()})
    assert perfect["valence"] == pytest.approx(1.0) and perfect["mean"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- notebooks (smoke)

def test_notebooks_run_on_the_tiny_corpus(tiny_features, tmp_path):
    from common.features.extract import extract_audio
    from common.notebooks import run_notebook
    params, path = tiny_features
    for name in ("fbank", "egemaps", "compare"):
        extract_audio(params, name, workers=2, progress=False)
    ecapatdnn.pretrain_ecapa(params, progress=False)
    ecapatdnn.extract_ecapa(params, progress=False)
    for feature in (fau, mae):                       # Table 4's fau config, the "mae helps arousal" ablation row
        getattr(feature, f"pretrain_{feature.NAME}")(params, progress=False)
        getattr(feature, f"extract_{feature.NAME}")(params, progress=False)
    for name in ("ms_va", "ires100"):                # Table 4's ms_va, the "ires100 helps arousal" ablation row
        face_networks.pretrain(params, name, progress=False)
        face_networks.extract(params, name, progress=False)
    assert set(bank.available(params)) >= {"affectnet", "fbank", "egemaps", "compare", "vggish", "ecapatdnn", "fau",
                                           "mae", "ms_va", "ires100"}
    for nb in ("validation", "submissions"):
        run_notebook("liu2023", nb, {"params_path": str(path)}, tmp_path)
    out = {nb: json.loads((tmp_path / "liu2023" / f"{nb}.json").read_text()) for nb in ("validation", "submissions")}
    for data in out.values():
        assert data["paper"] == "liu2023" and data["profile"] == "smoke" and data["seconds"] > 0
        assert data["results"] and all(math.isfinite(r["value"]) and -1 <= r["value"] <= 1 for r in data["results"])
        assert data["claims"] and all(c["verdict"] in report.VERDICTS for c in data["claims"])
        assert any(d["what"] == "feature densenet" for d in data["differences"])
        ms_va = next(d["here"] for d in data["differences"] if d["what"] == "feature ms_va")
        assert "this run: pre-trained in the pipeline: va on affectnet; held out: val_ccc_valence" in ms_va
    got = {(r["table"], r["row"], r["column"]) for d in out.values() for r in d["results"]}
    # every published row of this paper's own method that the run reproduces has its twin
    wanted = {(r["table"], r["row"], r["column"]) for r in published()
              if r["table"] in ("4", "6") or (r["table"] == "7" and r["row"] == "Ours")
              or (r["table"] in ("2", "3") and r["row"] == "Ensemble")}
    wanted = {w for w in wanted if not (w[0] == "4" and w[1] not in ("Fold 1", "Fold 2", "Average"))}  # smoke: 2 folds
    assert wanted <= got, wanted - got
    assert {"mae_helps_arousal", "ires100_helps_arousal"} <= {c["id"] for c in out["validation"]["claims"]}
    board = out["submissions"]["leaderboard"][0]
    assert board["split"] == "test" and -1 <= board["p_va"] <= 1
    # the submissions notebook's exercises: each instructor's answer ran (smoke) and compared finite numbers
    assert len(exercise_answers(tmp_path / "liu2023" / "submissions.ipynb")) == len(EXERCISES)
    for name in EXERCISES:
        answer = json.loads((tmp_path / "liu2023" / "exercises" / name / "answer.json").read_text())
        assert answer["exercise"] == name and answer["metrics"] and answer["finite"], answer
    # the student's copy (python -m common.exercises: no solution cells) runs on the same runs
    from tests.helpers.notebooks import run_student_copy
    printed = run_student_copy("liu2023", "submissions",
                               {"params_path": str(path), "out_dir": str(tmp_path / "liu2023")},
                               tmp_path / "student")
    assert len(printed) == len(EXERCISES)
    short = json.loads((tmp_path / "liu2023" / "exercises" / "segment_fifth" / "answer.json").read_text())
    assert {"Transformer arousal", "LSTM arousal"} <= set(short["metrics"])


EXERCISES = ("segment_fifth", "valence_only", "ensemble_of_one")
