"""Zhang et al. 2021: leader-follower fusion (Eq. 1), causality, windows, folds, training."""
import copy
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from common.backbones.resnet import ResNet
from common.params import load_params
from common.train import TrainState
from common.data.sequences import Normalizer, window_starts
from common.backbones.tcn import TemporalBlock
from papers.zhang2021.data import (NORMALIZATION, Trial, WindowDataset, average_windows, load_trials, make_folds,
                                   predict, random_loader)
from papers.zhang2021.model import LeaderFollowerFusion, ZhangMultimodal, ZhangUnimodal
from papers.zhang2021.train import BackboneRelease, merge_folds, min_lr_floor, released_merge, train_fold

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"visual": 12, "mfcc": 5, "vggish": 7}


def small_model(**kw):
    torch.manual_seed(0)
    return ZhangMultimodal(SMALL, (8, 8), (4, 4), kernel=3, dropout=0.1, d_k=4, **kw)


def inputs(b=2, t=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(b, t, d, generator=g) for m, d in SMALL.items()}


# --------------------------------------------------------------------------- model

def test_fusion_shapes_and_softmax_over_modalities_sums_to_one():
    fusion = LeaderFollowerFusion((128, 32, 32), d_k=32)
    feats = [torch.randn(2, 7, d) for d in (128, 32, 32)]
    out, scores = fusion(feats)
    assert out.shape == (2, 7, 96) and scores.shape == (2, 7, 3, 3)
    torch.testing.assert_close(scores.sum(-1), torch.ones(2, 7, 3))   # over the keys
    assert (scores > 0).all()
    model = ZhangMultimodal()
    pred, att = model({"visual": torch.randn(2, 7, 512), "mfcc": torch.randn(2, 7, 39),
                       "vggish": torch.randn(2, 7, 128)}, return_attention=True)
    assert pred.shape == (2, 7) and att.shape == (2, 7, 3, 3)
    assert model.head.in_features == 224                          # 128 leader + 96 attention


def test_eq1_by_hand_on_a_tiny_input():
    torch.manual_seed(1)
    dims, d = (3, 2, 2), 2
    fusion = LeaderFollowerFusion(dims, d_k=d)
    with torch.no_grad():                                         # a non-trivial LayerNorm affine
        fusion.norm.weight.uniform_(0.5, 1.5)
        fusion.norm.bias.uniform_(-0.5, 0.5)
    feats = [torch.randn(1, 2, n) for n in dims]
    out, scores = fusion(feats)

    lin = lambda layer, x: x @ layer.weight.detach().numpy().T + layer.bias.detach().numpy()  # noqa: E731
    for t in range(2):
        x = [f[0, t].numpy() for f in feats]
        Q = np.stack([lin(fusion.q[i], x[i]) for i in range(3)])   # Q = [Q_1, Q_2, Q_3]
        K = np.stack([lin(fusion.k[i], x[i]) for i in range(3)])
        V = np.stack([lin(fusion.v[i], x[i]) for i in range(3)])
        logits = Q @ K.T / math.sqrt(d)
        S = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        A = ((S + np.eye(3)) @ V).ravel()                         # Eq. 1, "+ 1" read as + I
        ln = (A - A.mean()) / np.sqrt(A.var() + 1e-5)
        ln = ln * fusion.norm.weight.detach().numpy() + fusion.norm.bias.detach().numpy()
        np.testing.assert_allclose(scores[0, t].detach().numpy(), S, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out[0, t].detach().numpy(), ln, rtol=1e-4, atol=1e-5)
        # the literal all-ones reading would give something else
        J = ((S + np.ones((3, 3))) @ V).ravel()
        z = lambda a: (a - a.mean()) / np.sqrt(a.var() + 1e-5)  # noqa: E731
        assert not np.allclose(z(J), z(A))


@pytest.mark.parametrize("kind", ["multimodal", "unimodal"])
def test_output_at_t_ignores_inputs_after_t(kind):
    model = small_model() if kind == "multimodal" else ZhangUnimodal(12, (8, 8), 3, 0.1)
    model.eval()
    x = inputs()
    y = {m: v.clone() for m, v in x.items()}
    for v in y.values():
        v[:, 12:] += 5 * torch.randn_like(v[:, 12:])
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert (a[:, 12:] - b[:, 12:]).abs().min() > 0                # later outputs do see them


# --------------------------------------------------------------------------- windows

@pytest.mark.parametrize("n", [1, 120, 299, 300, 301, 500, 501, 1234])
def test_windows_cover_every_frame_with_the_hop(n):
    starts = window_starts(n, 300, 200)
    covered = np.zeros(n, int)
    for s in starts:
        covered[s:s + 300] += 1
    assert (covered >= 1).all() and starts[0] == 0
    assert all(0 <= s and (s + 300 <= n or n < 300) for s in starts)
    gaps = np.diff(starts)
    assert (gaps[:-1] == 200).all() and (gaps <= 200).all()      # 100 shared frames = 33%
    if n >= 500 and (n - 300) % 200 == 0:
        assert starts[-1] == n - 300 and (gaps == 200).all()


def trial(name, n, split="train", subject=None, seed=0, invalid=()):
    rng = np.random.default_rng(seed)
    feats = {m: rng.standard_normal((n, d)).astype(np.float32) for m, d in SMALL.items()}
    label = np.tanh(feats["visual"][:, :2]).astype(np.float32)
    mask = np.ones(n, bool)
    mask[list(invalid)] = False
    label[~mask] = -5
    return Trial(name, subject or name, split, label, mask, feats)


def test_padding_and_invalid_frames_are_masked():
    t = trial("a", 25, invalid=[3, 4])
    norm = Normalizer([t], SMALL)
    ds = WindowDataset([t], SMALL, window=30, hop=20, normalize=norm)
    assert len(ds) == 1
    item = ds[0]
    assert item["mask"][:25].sum() == 23 and not item["mask"][25:].any()
    assert not item["mask"][3] and not item["mask"][4]
    assert (item["x"]["visual"][25:] == 0).all() and (item["x"]["visual"][:25] != 0).any()
    assert (item["y"][25:] == -5).all()


def test_overlapping_windows_are_averaged_per_frame():
    out = average_windows(7, [0, 2, 3], [np.array([1.0, 1, 1, 1]), np.array([3.0, 3, 3, 3]),
                                         np.array([5.0, 5, 5, 5, 9])])   # last one padded past 7
    np.testing.assert_allclose(out, [1, 1, 2, 3, 4, 4, 5])

    class FirstFeature(torch.nn.Module):          # output(t) = normalised visual feature 0 at t
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x["visual"][..., 0] + 0 * self.w
    t = trial("a", 523)
    norm = Normalizer([t], ("visual",))
    pred = predict(FirstFeature(), [t], ("visual",), 300, 200, norm)["a"]
    np.testing.assert_allclose(pred, norm("visual", t.features["visual"])[:, 0], rtol=1e-5, atol=1e-6)


def test_normalisation_uses_the_training_partition_only():
    a, b = trial("a", 400, seed=1), trial("b", 400, "validation", seed=2)
    b.features["visual"] = b.features["visual"] * 3 + 7
    norm = Normalizer([a], ("visual",))
    za, zb = norm("visual", a.features["visual"]), norm("visual", b.features["visual"])
    np.testing.assert_allclose(za.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(za.std(0), 1, atol=1e-3)
    assert zb.mean() > 5                          # not re-standardised with its own statistics


# --------------------------------------------------------------------------- folds

def fold_corpus():
    trials = [trial(f"v{i:02d}", 50, subject=f"S{i:02d}") for i in range(9)]
    trials += [trial("v09", 50, subject="S03"),                  # S03 has two videos
               trial("v10_left", 50, subject="S10"), trial("v10_right", 50, subject="S11")]
    trials += [trial(f"w{i}", 50, "validation", subject=f"V{i}") for i in range(3)]
    return trials


def test_six_folds_subject_independent_and_rolling():
    trials = fold_corpus()
    folds = make_folds(trials, 6)
    assert len(folds) == 6
    official_train = sorted(t.video for t in trials if t.split == "train")
    assert sorted(folds[0]["train"]) == official_train
    assert folds[0]["validation"] == ["w0", "w1", "w2"]
    subject = {t.video: t.subject for t in trials}
    for f in folds:
        assert not {subject[v] for v in f["train"]} & {subject[v] for v in f["validation"]}
        assert sorted(f["train"] + f["validation"]) == sorted(subject)
        for pair in (("v03", "v09"), ("v10_left", "v10_right")):     # same subject / same video
            assert (pair[0] in f["validation"]) == (pair[1] in f["validation"])
    held_out = [v for f in folds[1:] for v in f["validation"]]
    assert sorted(held_out) == official_train                         # each chunk exactly once
    assert all(2 <= len(f["validation"]) <= 3 for f in folds[1:])      # about equal chunks
    with pytest.raises(ValueError, match="folds"):
        make_folds(trials[:3] + trials[-3:], 6)


def test_trials_load_from_the_corpus_through_a_loader(tiny_params):
    trials = load_trials(tiny_params["data"]["root"], random_loader({"visual": 6, "mfcc": 3}))
    assert trials and {t.split for t in trials} <= {"train", "validation", "test"}
    for t in trials:
        assert t.features["visual"].shape == (len(t), 6) and t.features["mfcc"].shape == (len(t), 3)
        assert ((t.label[:, 0] == -5) == ~t.mask).all()
    folds = make_folds(trials, 2)
    assert sorted(folds[1]["train"]) == sorted(t.video for t in trials if t.split == "validation")
    dropped = load_trials(tiny_params["data"]["root"], random_loader({"visual": 6}), drop_invalid=True)
    assert all(t.mask.all() for t in dropped)
    assert sum(map(len, dropped)) == sum(int(t.mask.sum()) for t in trials)


# --------------------------------------------------------------------------- training

def linear_corpus(n_train=6, n_val=2, n_test=2, frames=240):
    """Valence (and arousal) = a fixed linear function of the visual features, plus noise."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(SMALL["visual"]) / math.sqrt(SMALL["visual"])
    trials = []
    for split, n in (("train", n_train), ("validation", n_val), ("test", n_test)):
        for i in range(n):
            feats = {m: rng.standard_normal((frames, d)).astype(np.float32) for m, d in SMALL.items()}
            v = 0.5 * feats["visual"] @ w + 0.05 * rng.standard_normal(frames)
            label = np.stack([v, v], 1).clip(-1, 1).astype(np.float32)
            mask = rng.random(frames) > 0.05
            label[~mask] = -5
            trials.append(Trial(f"{split}{i}", f"{split}{i}", split, label, mask, feats))
    return trials


def smoke_params(**zhang):
    params = copy.deepcopy(load_params(ROOT / "params.yaml", "smoke"))       # a plain, changeable copy
    params["zhang2021"].update(dims=dict(SMALL), **zhang)
    return params


@pytest.fixture
def one_thread():
    """Tiny convolutions gain nothing from a second thread, and under `pytest -n 2` two OpenMP
    threads per worker on two cores spin against each other (measured: 6x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_train_fold_learns_a_linear_valence(tmp_path, one_thread):
    params = smoke_params(epochs=4, folds=2, lr=3e-3)
    trials = linear_corpus()
    r = train_fold(params, trials, 0, "valence", "multimodal", tmp_path)
    assert r["metrics"]["validation_ccc"] > 0.5 and r["metrics"]["test_ccc"] > 0.5
    assert set(r["predictions"]["validation"]) == {"validation0", "validation1"}
    assert r["predictions"]["test"]["test0"].shape == (240,)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["validation_ccc"] == pytest.approx(r["metrics"]["validation_ccc"])
    uni = train_fold(params, trials, 0, "valence", "unimodal", tmp_path / "um")
    assert uni["metrics"]["validation_ccc"] > 0.5
    z = params["zhang2021"]
    merged = merge_folds(z, [r["predictions"]["test"], uni["predictions"]["test"]], clip="late")
    assert set(merged) == {"test0", "test1"} and np.abs(merged["test0"]).max() <= 1
    same = merge_folds(z, [r["predictions"]["test"]] * 3, clip="none")
    np.testing.assert_allclose(same["test1"], r["predictions"]["test"]["test1"], atol=1e-6)


def test_train_fold_under_the_released_method_learns_and_keys_its_choices(tmp_path, one_thread):
    params = smoke_params(epochs=4, folds=2, lr=3e-3)
    params["zhang2021"]["method"] = "released"
    with pytest.raises(ValueError, match="deletes the -5 rows"):      # released data hold no -5 rows
        train_fold(params, linear_corpus(), 0, "valence", "multimodal", tmp_path / "refused")
    trials = [Trial(t.video, t.subject, t.split, t.label[t.mask], t.mask[t.mask],
                    {m: a[t.mask] for m, a in t.features.items()}) for t in linear_corpus()]
    r = train_fold(params, trials, 0, "valence", "multimodal", tmp_path)
    assert r["metrics"]["method"] == "released"
    assert r["metrics"]["validation_ccc"] > 0.5 and r["metrics"]["test_ccc"] > 0.5
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["weight_decay"] == 1e-3            # base/trainer.py:88
    assert summary["config"]["batch_size"] == 8                 # main.py:102
    merged = merge_folds(params["zhang2021"], [r["predictions"]["test"]] * 2, clip="late")
    np.testing.assert_allclose(merged["test0"], np.clip(r["predictions"]["test"]["test0"], -1, 1), atol=1e-6)


def test_released_grid_has_its_own_runs_and_merges_test_trials_its_way(tmp_path, one_thread):
    from papers.zhang2021 import experiment
    params = experiment.with_method(smoke_params(epochs=2, folds=2, lr=3e-3), "released")
    trials = [Trial(t.video, t.subject, t.split, t.label[t.mask], t.mask[t.mask],
                    {m: a[t.mask] for m, a in t.features.items()}) for t in linear_corpus()]
    rows = experiment.run_grid(params, trials, tmp_path, [0, 1], emotions=("valence",), modalities=("multimodal",))
    assert [r["method"] for r in rows] == ["released", "released"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"multimodal-valence-fold{f}-seed0-released" for f in (0, 1)]
    scores = experiment.test_scores(params, trials, tmp_path, "valence", "multimodal", 0, [0, 1], "early")
    assert set(scores["single"]) == {0, 1} and -1 <= scores["merged"] <= 1


def test_released_tcn_skip_convolution_has_the_xavier_init():
    torch.manual_seed(0)
    released = TemporalBlock(256, 128, 5, 1, 0.1, "zhang_released").skip.weight
    paper = TemporalBlock(256, 128, 5, 1, 0.1).skip.weight
    xavier = math.sqrt(2) * math.sqrt(2 / (256 + 128))          # std of xavier_uniform(gain sqrt 2)
    assert released.std().item() == pytest.approx(xavier, rel=0.05)
    assert paper.std().item() == pytest.approx(1 / math.sqrt(256) / math.sqrt(3), rel=0.05)   # PyTorch default


def test_released_normalisation_leaves_visual_embeddings_and_scales_audio_per_partition():
    rng = np.random.default_rng(0)
    def trial(name, split, shift):
        feats = {"visual": rng.standard_normal((50, 6)).astype(np.float32) * 3 + 1,
                 "mfcc": (rng.standard_normal((50, 4)) + shift).astype(np.float32)}
        return Trial(name, name, split, np.zeros((50, 2), np.float32), np.ones(50, bool), feats)
    train, val, test = [trial("t", "train", 0.0)], [trial("v", "validation", 5.0)], [trial("x", "test", -2.0)]
    norms = NORMALIZATION["released"](train, val, test, ("visual", "mfcc"))
    np.testing.assert_array_equal(norms["train"]("visual", train[0].features["visual"]), train[0].features["visual"])
    for split, items in (("train", train), ("validation", val), ("test", test)):
        z = norms[split]("mfcc", items[0].features["mfcc"])
        assert abs(z.mean()) < 1e-5 and z.std(ddof=1) == pytest.approx(1.0, abs=1e-5)   # one scalar, n - 1
    paper = NORMALIZATION["paper"](train, val, test, ("visual", "mfcc"))
    assert paper["validation"] is paper["train"]
    assert abs(paper["validation"]("mfcc", val[0].features["mfcc"]).mean()) > 3


def test_released_merge_refuses_fewer_frames_than_models():
    with pytest.raises(ValueError, match="more frames than models"):
        released_merge([np.zeros(3)] * 6, "late")


def test_backbone_release_is_a_noop_without_a_backbone():
    model = small_model()
    hook = BackboneRelease(model, patience=2, min_lr=1e-6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)
    state = TrainState(bad_epochs=5)
    hook(model=model, optimizer=opt, state=state, best_weights=model.state_dict(), cfg=None)
    assert len(opt.param_groups) == 1 and state.bad_epochs == 5 and not state.stop


def test_backbone_release_frees_layer4_then_layer3_then_stops():
    encoder = ResNet("basic", (1, 1, 4, 1), width=4, embed_dim=12)
    model = small_model(frame_encoder=encoder)
    hook = BackboneRelease(model, patience=2, min_lr=1e-6, n_groups=2)
    assert not any(p.requires_grad for p in encoder.stages.parameters())
    assert all(p.requires_grad for p in encoder.head.parameters())   # only the output layer
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    best = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        model.head.weight.add_(1.0)                                   # drift away from the best
    state = TrainState(bad_epochs=2)
    call = lambda: hook(model=model, optimizer=opt, state=state, best_weights=best, cfg=None)  # noqa: E731
    call()
    assert len(opt.param_groups) == 1                    # LR not yet at its minimum: wait
    min_lr_floor(1e-6)(optimizer=opt)
    opt.param_groups[0]["lr"] = 1e-9
    min_lr_floor(1e-6)(optimizer=opt)
    assert opt.param_groups[0]["lr"] == 1e-6
    call()
    assert all(p.requires_grad for p in encoder.stages[3].parameters())        # layer4
    assert not any(p.requires_grad for p in encoder.stages[2].parameters())
    assert len(opt.param_groups) == 2 and state.bad_epochs == 0
    torch.testing.assert_close(model.head.weight, best["head.weight"])         # best reloaded
    state.bad_epochs = 2
    call()
    assert all(p.requires_grad for p in encoder.stages[2][-3:].parameters())   # last 3 of layer3
    assert not any(p.requires_grad for p in encoder.stages[2][0].parameters())
    state.bad_epochs = 2
    call()
    assert state.stop


# --------------------------------------------------------------------------- published numbers

def test_published_numbers_are_complete_and_consistent():
    with open(ROOT / "papers/zhang2021/published.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["table", "row", "column", "value", "split", "note"]
    t1 = [r for r in rows if r["table"] == "1"]
    t2 = [r for r in rows if r["table"] == "2"]
    assert len(t1) == 2 + 4 * 7 and len(t2) == 13 * 3
    assert {r["split"] for r in t1} == {"validation"} and {r["split"] for r in t2} == {"test"}
    value = {(r["table"], r["row"], r["column"]): float(r["value"]) for r in rows}
    for dim in ("Valence", "Arousal"):
        for method in ("Ours-unimodal", "Ours-multimodal"):
            folds = [value["1", f"{dim} / {method}", f"Fold {k}"] for k in range(6)]
            assert abs(np.mean(folds) - value["1", f"{dim} / {method}", "Mean"]) <= 0.0006
    for name in {r["row"] for r in t2}:
        v, a, m = (value["2", name, c] for c in ("Valence", "Arousal", "Mean"))
        assert abs((v + a) / 2 - m) <= 0.0006, name
    assert value["2", "MM-CV-LC", "Valence"] == 0.463
    assert value["1", "Arousal / Ours-multimodal", "Fold 0"] == 0.649
