"""Vu et al. 2021 under `method: released` against numbers from the released code itself.

The fixtures (tests/fixtures/official/vu2021/, PROVENANCE.md there) were written by
scripts/official_fixtures/vu2021.py running glmanhtu/multitask-abaw-2021@aa346d5. Each test maps
the official weights or inputs onto this project's modules, asserts `released` reproduces the
official numbers within a stated tolerance, and where papers/vu2021/ledger.yaml says the paper
method differs, that `paper` does not.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from common.losses import ccc_loss, masked_cross_entropy
from papers.vu2021 import data as vd
from papers.vu2021 import losses as vl
from papers.vu2021 import train as vt
from papers.vu2021.model import MultitaskCNN, MultitaskGRU

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "official" / "vu2021"
NET_TOL = 1e-5        # float32 networks, the same arithmetic in another order
LOSS_TOL = 1e-5       # relative, float32 losses
K = 20


def load(name: str) -> dict:
    with np.load(FIXTURES / name) as f:
        return {k: f[k] for k in f.files}


def vp(method: str) -> dict:
    return {"ccc_weight": "code", "bin_support": "linspace", "lam": 0.6, "temperature": 1.5, "method": method}


def heads_model(weights: dict, prefix: str) -> MultitaskCNN:
    """Our CNN on an identity backbone with the released Model's two Heads' weights."""
    d, hidden = weights[f"{prefix}classifier.0.fc_0.weight"].shape[::-1]
    model = MultitaskCNN("basic", (1, 1, 1, 1), 4, embed_dim=int(d), feature_dim=int(hidden), n_bins=K)
    model.backbone = nn.Flatten()           # the fixtures' backbone is the identity over (B, D, 1, 1)
    names = {"bn0": "bn0", "fc_0": "fc0", "bn1": "bn1", "fc_1": "fc1"}
    state = {}
    for k, v in weights.items():
        if k.startswith(prefix + "classifier."):
            _, i, layer, param = k[len(prefix):].split(".")
            state[f"{('expr_head', 'va_head')[int(i)]}.{names[layer]}.{param}"] = torch.from_numpy(v)
    model.load_state_dict(state)
    return model


def test_cnn_matches_official_with_mapped_weights():
    """Model + one Head per task (eval mode): outputs and each head's 128-d-style feature."""
    f = load("cnn_heads.npz")
    model = heads_model(f, "w.").eval()
    x = torch.from_numpy(f["x"])
    with torch.no_grad():
        e, v = model(x)
        feats = model.features(x)
    assert np.abs(e.numpy() - f["expr"]).max() < NET_TOL
    assert np.abs(v.flatten(1).numpy() - f["va"]).max() < NET_TOL
    assert np.abs(feats.numpy() - np.concatenate([f["f_expr"], f["f_va"]], 1)).max() < NET_TOL


def test_per_set_batchnorm_matches_official():
    """Training mode, the same dropout seed: one pass per set (released) gives the released outputs;
    one pass over the three sets (paper) gives other BatchNorm statistics, so other outputs."""
    f = load("losses.npz")
    model = heads_model(f, "student.").train()
    sets = (("expr", "EXPR"), ("va", "VA"), ("both", "EXPR_VA"))
    batch = {name: {"image": torch.from_numpy(f[f"x_{t}"])} for name, t in sets}
    torch.manual_seed(1)
    out = vt.FORWARD_SETS["released"](model, batch)
    for name, t in sets:
        assert np.abs(out[name][0].detach().numpy() - f[f"train_expr_{t}"]).max() < NET_TOL
        assert np.abs(out[name][1].detach().flatten(1).numpy() - f[f"train_va_{t}"]).max() < NET_TOL
    torch.manual_seed(1)
    joint = vt.FORWARD_SETS["paper"](model, batch)
    assert np.abs(joint["va"][0].detach().numpy() - f["train_expr_VA"]).max() > 0.1


def test_gru_matches_official_with_mapped_weights():
    f = load("gru.npz")
    hidden = f["w.0.GRU_layer.weight_hh_l0"].shape[1]
    model = MultitaskGRU(f["f_expr"].shape[-1], hidden, K).eval()
    state = {}
    for k, v in f.items():
        if k.startswith("w."):
            _, i, layer, *param = k.split(".")
            task = ("expr_gru", "va_gru")[int(i)]
            state[f"{task}.{'gru' if layer == 'GRU_layer' else 'fc'}.{'.'.join(param)}"] = torch.from_numpy(v)
    model.load_state_dict(state)
    x = torch.from_numpy(np.concatenate([f["f_expr"], f["f_va"]], -1))
    with torch.no_grad():
        e, v = model(x)
    assert np.abs(e.numpy() - f["expr"]).max() < NET_TOL
    assert np.abs(v.flatten(2).numpy() - f["va"]).max() < NET_TOL


def test_supervision_and_distillation_terms_match_official():
    """Eq. 1 (CE), Eq. 2 per dimension (CE on the digitised bins + 1 - CCC of the linspace
    expectation, n - 1 variances), Eqs. 4-5 (KL at T = 1.5 times T^2). Method paper's population
    CCC differs by about 1/B."""
    f = load("terms.npz")
    logits, y = torch.from_numpy(f["va_logits"]), torch.from_numpy(f["va"])
    bins = logits.unflatten(-1, (2, K))
    for d, name in enumerate("va"):
        target = vl.va_to_bins(y[:, d], K, float64_edges=True)
        ce = masked_cross_entropy(bins[:, d], target, ignore=-1).item()
        assert ce == pytest.approx(float(f[f"ce_{name}"]), rel=LOSS_TOL)
        pred = vl.bins_expectation(bins[:, d], support="linspace")
        released = ccc_loss(pred, y[:, d], unbiased=vl.CCC_UNBIASED["released"]).item()
        assert released == pytest.approx(float(f[f"ccc_{name}"]), rel=LOSS_TOL)
        paper = ccc_loss(pred, y[:, d], unbiased=vl.CCC_UNBIASED["paper"]).item()
        assert abs(paper - released) > 1e-4
    total = vl.supervision("va", None, bins, None, y, vp("released")).item()
    assert total == pytest.approx(float(f["loss_v"] + f["loss_a"]), rel=LOSS_TOL)               # Eq. 2
    e = torch.from_numpy(f["expr_logits"])
    assert vl.supervision("expr", e, None, torch.from_numpy(f["expr"]), None, vp("released")).item() == \
        pytest.approx(float(f["ce_expr"]), rel=LOSS_TOL)                                         # Eq. 1
    assert vl.hinton_kd(e, torch.from_numpy(f["expr_teacher"]), 1.5).item() == \
        pytest.approx(float(f["kd_expr"]), rel=LOSS_TOL)                                         # Eq. 4
    kd_va = vl.vu_kd_loss(student_va=bins, teacher_va=torch.from_numpy(f["va_teacher"]).unflatten(-1, (2, K)))
    assert kd_va.item() == pytest.approx(float(f["kd_v"] + f["kd_a"]), rel=LOSS_TOL)             # Eq. 5


def loss_inputs(f: dict, student: bool = True):
    """The fixture's outputs and labels in this project's layout (NA markers -1 / -5)."""
    sets = (("expr", "EXPR"), ("va", "VA"), ("both", "EXPR_VA"))
    role = "student" if student else "train"
    def pair(who, t):
        return torch.from_numpy(f[f"{who}_expr_{t}"]), torch.from_numpy(f[f"{who}_va_{t}"]).unflatten(-1, (2, K))
    out = {n: pair(role, t) for n, t in sets}
    teacher = {n: pair("teacher", t) for n, t in sets}
    sub_va = torch.from_numpy(f["sub_va_EXPR"])
    sub_expr = torch.from_numpy(f["sub_expr_VA"])
    batch = {"expr": {"expr": torch.from_numpy(f["expr_EXPR"]), "va": torch.where(sub_va == -2, -5.0, sub_va)},
             "va": {"expr": torch.where(sub_expr == -2, -1, sub_expr.long()), "va": torch.from_numpy(f["va_VA"])},
             "both": {"expr": torch.from_numpy(f["expr_EXPR_VA"]), "va": torch.from_numpy(f["va_EXPR_VA"])}}
    return out, teacher, batch


def test_teacher_and_eq9_losses_match_official_up_to_a_factor():
    """Eq. 7 and Eq. 9 as sums over the sets; the released code takes, per task, the mean of the
    terms of the sets that train it: the same loss divided by 2 (teacher) or 3 (student)."""
    f = load("losses.npz")
    out, teacher, batch = loss_inputs(f, student=False)
    teacher_loss = vl.teacher_loss(out, batch, vp("released")).item()
    assert teacher_loss / 2 == pytest.approx(float(f["teacher_loss"]), rel=LOSS_TOL)
    out, teacher, batch = loss_inputs(f)
    none = {**batch, "expr": {**batch["expr"], "va": torch.full_like(batch["expr"]["va"], -5.0)},
            "va": {**batch["va"], "expr": torch.full_like(batch["va"]["expr"], -1)}}
    eq9 = vl.student_loss(out, teacher, none, vp("released"), sharing=True).item()   # Eq. 10, no shared label
    assert eq9 / 3 == pytest.approx(float(f["eq9_loss"]), rel=LOSS_TOL)
    assert vl.student_loss(out, teacher, batch, vp("released"), sharing=False).item() / 3 == \
        pytest.approx(float(f["eq9_loss"]), rel=LOSS_TOL)


def test_student_loss_released_halves_match_official():
    """Eq. 10 with 1/4 of the EXPR rows and 1/2 of the VA rows carrying the other label: the released
    method's halves give optimize_parameters_kd_v2's loss (x 3); the paper's share weighting does not."""
    f = load("losses.npz")
    out, teacher, batch = loss_inputs(f)
    released = vl.student_loss(out, teacher, batch, vp("released"), sharing=True).item()
    assert released / 3 == pytest.approx(float(f["eq10_loss"]), rel=LOSS_TOL)
    paper = vl.student_loss(out, teacher, batch, vp("paper"), sharing=True).item()
    assert abs(paper / 3 - float(f["eq10_loss"])) > 1e-3


def test_va_bins_match_official_digitize():
    f = load("bins.npz")
    values = torch.from_numpy(f["values"])
    released = vl.va_to_bins(values, K, float64_edges=vl.BINS_FLOAT64["released"]).numpy()
    assert (released == f["bins"]).all()
    paper = vl.va_to_bins(values, K, float64_edges=vl.BINS_FLOAT64["paper"]).numpy()
    decimal = np.minimum(np.arange(21), 19)                  # -1.0, -0.9, ..., 1.0: bins 0..19, 1.0 in the last
    assert (paper == decimal).all()
    moved = np.round(f["values"][paper != released].astype(np.float64), 1).tolist()
    assert moved == [-0.8, -0.6, -0.4, -0.3, -0.2, -0.1, 0.7, 0.9]


def test_samplers_match_official():
    """Mixed EXPR (1/class), Mixed VA (1/cell) as released under either method; Affect EXPR_VA by
    1/cell + 1/class over the maximum (released) or 1/class (paper). Same draws up to normalisation."""
    f = load("samplers.npz")
    expr, va = f["expr"], f["va"]
    def norm(w):
        return w / w.sum()
    assert np.allclose(vd.expr_balance_weights(expr), norm(f["expr_weights"]), rtol=1e-12)
    assert np.allclose(vd.va_balance_weights(va), norm(f["va_weights"]), rtol=1e-12)
    released = vd.BOTH_WEIGHTS["released"](expr, va)
    assert np.allclose(released / released.max(), f["both"], rtol=1e-12)
    paper = vd.BOTH_WEIGHTS["paper"](expr, va)
    assert not np.allclose(paper, norm(f["both"]), rtol=1e-3)


def levels(image: torch.Tensor) -> np.ndarray:
    """Our normalised [-1, 1] view back to 0-255 levels."""
    return ((image * 0.5 + 0.5) * 255).round().numpy()


def test_transforms_match_official():
    """Resize(134) + RandomCrop(112) + flip under torch seeds 5 and 6, and Resize(134) + CenterCrop(112):
    the same windows and flips; pixel levels within 1 of PIL's 8-bit bilinear resize (torch's
    antialiased bilinear interpolation, rounded: measured max 1, mean 0.18 levels; a window one pixel
    off differs by 7.8 levels on average on this image). Method paper (pad 0) sees the whole face instead."""
    f = load("transforms.npz")
    face = torch.from_numpy(f["face"])
    for seed in (5, 6):
        torch.manual_seed(seed)
        ours = levels(vd.VIEWS["released"](face, 112, 0, True))
        diff = np.abs(ours - f[f"train_seed{seed}"])
        assert diff.max() <= 1 and diff.mean() < 0.25, (seed, diff.max(), diff.mean())
    ours = levels(vd.EVAL_VIEWS["released"](face[None], 112, 0)[0])
    diff = np.abs(ours - f["eval"])
    assert diff.max() <= 1 and diff.mean() < 0.25
    paper = levels(vd.EVAL_VIEWS["paper"](face[None], 112, 0)[0])
    assert np.abs(paper - f["eval"]).mean() > 5


def test_train_config_follows_the_method():
    """Early stop 6 under released (the released EarlyStop on a score sequence stops where six epochs
    without a higher score have passed), the paper's setting under paper; Adam betas as set."""
    f = load("early_stop.npz")
    section = {"epochs": 40, "batch_size": 64, "lr": 1e-4, "betas": [0.5, 0.999], "early_stop": 5}
    released = vt.train_config(section, 0, "released")
    assert released.early_stop == 6 and vt.train_config(section, 0, "paper").early_stop == 5
    assert vt.train_config({**section, "early_stop": 0}, 0, "released").early_stop == 0
    assert released.betas == (0.5, 0.999) and released.plateau_patience == 0 and released.step_lr_epochs == 0
    best, bad, stops = -np.inf, 0, []                 # common.train.fit's rule: stop once bad >= early_stop
    for s in f["scores"]:
        best, bad = (s, 0) if s > best else (best, bad + 1)
        stops.append(bad >= released.early_stop)
    first = int(np.argmax(f["stops"]))
    assert stops.index(True) == first
