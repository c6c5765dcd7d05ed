"""Vu et al. 2021: model shapes, the balancing, the teacher / student losses (Eqs. 7-10) checked
by hand, sequence windows, weight loading, published.csv, and one smoke run of the notebooks."""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data.sequences import window_starts
from common.losses import masked_cross_entropy
from papers.vu2021 import data as vd
from tests.helpers.notebooks import exercise_answers
from papers.vu2021 import losses as vl
from papers.vu2021 import train as vt
from papers.vu2021.losses import vu_kd_loss, vu_va_loss
from papers.vu2021.model import MultitaskCNN, MultitaskGRU

ROOT = Path(__file__).resolve().parents[1]
VP = {"ccc_weight": "code", "bin_support": "linspace", "lam": 0.6, "temperature": 1.5, "method": "paper"}


def test_cnn_and_gru_shapes():
    cnn = MultitaskCNN("basic", (1, 1, 1, 1), 4, embed_dim=32, feature_dim=128, n_bins=20).eval()
    expr, va = cnn(torch.randn(3, 3, 20, 20))
    assert expr.shape == (3, 7) and va.shape == (3, 2, 20)
    assert cnn.features(torch.randn(3, 3, 20, 20)).shape == (3, 256)      # EXPR head's 128, VA head's 128
    gru = MultitaskGRU(128, 16, 20)
    expr, va = gru(torch.randn(2, 9, 256))
    assert expr.shape == (2, 9, 7) and va.shape == (2, 9, 2, 20)


def test_each_task_has_its_own_head_and_gru():
    """Fig. 2: the EXPR output reads only the EXPR head / GRU, the VA output only the VA one."""
    cnn = MultitaskCNN("basic", (1, 1, 1, 1), 4, embed_dim=32, feature_dim=8, n_bins=5).eval()
    f = torch.randn(4, 16)
    e, v = cnn.heads(f)
    g = f.clone()
    g[:, 8:] += 1.0                                   # change the VA head's features only
    e2, v2 = cnn.heads(g)
    assert torch.equal(e, e2) and not torch.allclose(v, v2)
    gru = MultitaskGRU(8, 4, 5).eval()
    x = torch.randn(2, 6, 16)
    y = x.clone()
    y[..., :8] += 1.0                                 # change the EXPR GRU's input only
    (e, v), (e2, v2) = gru(x), gru(y)
    assert torch.equal(v, v2) and not torch.allclose(e, e2)


def test_paper_profile_cnn_is_he_et_al_resnet50_with_the_ferplus_layout(tmp_path):
    """stem caffe: 7x7/2 stem + max pool, 2048-d pooled output; vu2021.cnn.weights loads a
    resnet50_ferplus_dag file key for key (here a random one saved in that layout)."""
    from common.backbones.resnet_dag import FerPlusResNet50
    from papers.vu2021.model import build_cnn
    cfg = {"block": "bottleneck", "layers": [3, 4, 6, 3], "width": 64, "embed_dim": 0, "stem": "caffe",
           "feature_dim": 128, "n_bins": 20, "dropout": 0.5, "weights": ""}
    model = build_cnn(cfg)
    assert model.backbone.embed_dim == 2048 and model.backbone.stem[0].kernel_size == (7, 7)
    torch.manual_seed(1)
    dag = FerPlusResNet50().eval()
    torch.save(dag.state_dict(), tmp_path / "resnet50_ferplus_dag.pth")
    loaded = build_cnn({**cfg, "weights": str(tmp_path / "resnet50_ferplus_dag.pth")}).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1                      # normalised faces in [-1, 1]
    ferplus_input = (x * 0.5 + 0.5) * 255 - torch.tensor([131.0912, 103.8827, 91.4953]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(loaded.backbone(loaded._input(x)), dag(ferplus_input), atol=1e-4)


def test_seven_classes_drops_other_and_unannotated():
    out = vd.seven_classes(np.array([0, 6, 7, 3]), np.array([True, True, True, False]))
    assert out.tolist() == [0, 6, -1, -1]


def test_balancing_gives_every_class_and_cell_the_same_mass():
    w = vd.expr_balance_weights(np.array([0, 0, 0, 2]))
    assert w[:3].sum() == pytest.approx(w[3]) and w.sum() == pytest.approx(1.0)
    va = np.array([[-0.9, -0.9], [-0.9, -0.9], [-0.9, -0.9], [0.9, 0.9]], np.float32)
    w = vd.va_balance_weights(va, bins=4)
    assert w[:3].sum() == pytest.approx(w[3])


def test_augment_translates_flips_and_centres():
    image = torch.arange(3 * 6 * 6, dtype=torch.uint8).reshape(3, 6, 6)
    centre = vd.augment(image, crop=4, pad=0, train=False)
    assert torch.allclose(centre, (image[:, 1:5, 1:5].float() / 255 - 0.5) / 0.5)
    torch.manual_seed(0)
    crops = {tuple(vd.augment(image, 4, 0, True).flatten()[:3].tolist()) for _ in range(30)}
    assert len(crops) > 3                                   # random offsets and flips
    assert vd.augment(image, 4, 1, True, downsample=2).shape == (3, 2, 2)


def _outputs(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 7, generator=g), torch.randn(n, 2, 20, generator=g)


def test_teacher_loss_is_eq7_by_hand():
    e1, v1 = _outputs(4, 0)
    e3, v3 = _outputs(4, 1)
    batch = {"expr": {"expr": torch.tensor([0, 1, 2, -1]), "va": torch.full((4, 2), -5.0)},
             "both": {"expr": torch.tensor([3, 4, 5, 6]), "va": torch.rand(4, 2) * 2 - 1}}
    loss = vl.teacher_loss({"expr": (e1, v1), "both": (e3, v3)}, batch, VP)
    ce1 = -torch.log_softmax(e1[:3], -1)[torch.arange(3), torch.tensor([0, 1, 2])].mean()      # Eq. 1
    ce3 = masked_cross_entropy(e3, batch["both"]["expr"])
    expected = ce1 + ce3 + vu_va_loss(v3, batch["both"]["va"], ccc_weight="code", support="linspace")  # Eqs. 3, 7
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_student_loss_eq9_and_eq10_by_hand():
    s_e, s_v = _outputs(4, 2)
    t_e, t_v = _outputs(4, 3)
    expr = torch.tensor([0, 1, 2, 3])
    lam, T = 0.6, 1.5
    h_expr = vu_kd_loss(s_e, t_e, temperature=T)
    l_expr = masked_cross_entropy(s_e, expr)
    g_expr = lam * l_expr + (1 - lam) * h_expr                                               # Eq. 8
    # No secondary label anywhere: Eq. 10 = Eq. 9 = G_1 + H^(2).
    none = {"expr": {"expr": expr, "va": torch.full((4, 2), -5.0)}}
    h_va = vu_kd_loss(student_va=s_v, teacher_va=t_v, temperature=T)
    eq9 = vl.student_loss({"expr": (s_e, s_v)}, {"expr": (t_e, t_v)}, none, VP, sharing=False)
    eq10 = vl.student_loss({"expr": (s_e, s_v)}, {"expr": (t_e, t_v)}, none, VP, sharing=True)
    assert eq9.item() == pytest.approx((g_expr + h_va).item(), rel=1e-5)
    assert eq10.item() == pytest.approx(eq9.item(), rel=1e-5)
    # Every frame also has VA: Eq. 10 replaces H^(2) by G_2 = lam L^(2) + (1 - lam) H^(2).
    va = torch.rand(4, 2) * 2 - 1
    both = {"expr": {"expr": expr, "va": va}}
    eq10 = vl.student_loss({"expr": (s_e, s_v)}, {"expr": (t_e, t_v)}, both, VP, sharing=True)
    g_va = lam * vu_va_loss(s_v, va, ccc_weight="code", support="linspace") + (1 - lam) * h_va
    assert eq10.item() == pytest.approx((g_expr + g_va).item(), rel=1e-5)
    # Half labelled: the per-frame mix, H^(2) on the unlabelled half, G_2 on the labelled half.
    half = {"expr": {"expr": expr, "va": torch.cat([va[:2], torch.full((2, 2), -5.0)])}}
    eq10 = vl.student_loss({"expr": (s_e, s_v)}, {"expr": (t_e, t_v)}, half, VP, sharing=True)
    rows = torch.tensor([True, True, False, False])
    g_half = lam * vu_va_loss(s_v[:2], va[:2], ccc_weight="code", support="linspace") \
        + (1 - lam) * vu_kd_loss(student_va=s_v, teacher_va=t_v, temperature=T, mask=rows)
    h_half = vu_kd_loss(student_va=s_v, teacher_va=t_v, temperature=T, mask=~rows)
    assert eq10.item() == pytest.approx((g_expr + 0.5 * g_half + 0.5 * h_half).item(), rel=1e-5)


def test_student_equals_teacher_has_no_distillation_loss():
    s_e, s_v = _outputs(3, 4)
    batch = {"va": {"expr": torch.full((3,), -1), "va": torch.zeros(3, 2) - 5.0}}
    loss = vl.student_loss({"va": (s_e, s_v)}, {"va": (s_e, s_v)}, batch, VP, sharing=True)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)      # no labels, identical outputs: KL = 0


def test_gru_teacher_loss_learns_a_toy_signal():
    torch.manual_seed(0)
    x = torch.randn(64, 8, 6)
    expr = (x[..., 0] > 0).long() * 3                        # class 0 or 3 from the EXPR features' first
    va = torch.stack([torch.tanh(x[..., 4]), torch.tanh(x[..., 5])], -1)     # VA from the VA features
    model = MultitaskGRU(3, 16, 10)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    batch = {"expr": {"expr": expr, "va": torch.full_like(va, -5.0)},
             "va": {"expr": torch.full_like(expr, -1), "va": va}}
    losses = []
    for _ in range(60):
        loss = vl.teacher_loss(vt.forward_sets(model, {k: {**b, "x": x} for k, b in batch.items()}, "x"), batch, VP)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_windows_cover_every_frame():
    assert window_starts(70, 32, 32) == [0, 32, 38]
    assert window_starts(70, 32, 16) == [0, 16, 32, 38]
    assert window_starts(10, 32, 16) == [0]


def test_weights_load_and_mismatch_names_file_and_key(tmp_path):
    cnn = MultitaskCNN("basic", (1, 1, 1, 1), 4, embed_dim=32)
    path = tmp_path / "best.pt"
    torch.save(cnn.state_dict(), path)
    other = vt.load_model(MultitaskCNN("basic", (1, 1, 1, 1), 4, embed_dim=32), path)
    assert torch.equal(other.expr_head.fc1.weight, cnn.expr_head.fc1.weight)
    with pytest.raises(vt.WeightsMismatch, match="best.pt.*size|best.pt.*key"):
        vt.load_model(MultitaskCNN("basic", (1, 1, 1, 1), 8, embed_dim=32), path)
    with pytest.raises(vt.WeightsMismatch, match="best.pt: missing key"):
        vt.load_model(MultitaskCNN("basic", (1, 1, 1, 1, 1), 4, embed_dim=32), path)


PUBLISHED_COUNTS = {"1": 9, "2": 6, "3": 6, "4-ICCVW": 48, "4-arXiv": 12}
OURS = {("1", "Multitask T in {1,2}"), ("1", "Multitask T in {1,2,3}"), ("2", "No sharing"), ("2", "With sharing"),
        ("3", "Teacher model"), ("3", "Student model"), ("4-ICCVW", "Our model"), ("4-arXiv", "Our model")}


def _published():
    with open(ROOT / "papers" / "vu2021" / "published.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_published_csv_has_every_number():
    rows = _published()
    counts = {}
    for r in rows:
        counts[r["table"]] = counts.get(r["table"], 0) + 1
        assert r["split"] == ("test" if r["table"] == "4-ICCVW" else "validation")
        assert 0 < float(r["value"]) < 1
    assert counts == PUBLISHED_COUNTS
    value = {(r["table"], r["row"], r["column"]): float(r["value"]) for r in rows}
    assert value[("3", "Student model", "Arousal")] == 0.551
    assert value[("4-ICCVW", "Netease Fuxi Virtual Human", "Criterion")] == 0.778
    assert value[("4-arXiv", "Kuhnke et al.", "Arousal")] == 0.613
    assert len(value) == len(rows)                                   # no duplicate cell


def test_smoke_notebooks(tiny_features, tmp_path):
    from common.features.faces import extract_faces
    from common.notebooks import run_notebook
    from common.claims import VERDICTS
    params, path = tiny_features
    extract_faces(params, workers=0, progress=False)
    reports = tmp_path / "reports"
    for nb in ("table1", "table2", "table3", "table4"):
        run_notebook("vu2021", nb, {"params_path": str(path), "out_dir": str(reports / "vu2021")}, reports)
    produced = set()
    for nb in ("table1", "table2", "table3", "table4"):
        summary = json.loads((reports / "vu2021" / f"{nb}.json").read_text())
        assert summary["paper"] == "vu2021" and summary["profile"] == "smoke" and summary["seconds"] > 0
        assert summary["differences"] and summary["claims"]
        for r in summary["results"]:
            assert math.isfinite(r["value"]) and -1 <= r["value"] <= 1, r
            produced.add((r["table"], r["row"], r["column"]))
        for c in summary["claims"]:
            assert c["verdict"] in VERDICTS
    lb = json.loads((reports / "vu2021" / "table4.json").read_text())["leaderboard"][0]
    assert lb["split"] == "test" and -1 <= lb["p_va"] <= 1 and 0 <= lb["p_expr"] <= 1
    for r in _published():
        if (r["table"], r["row"]) in OURS:
            assert (r["table"], r["row"], r["column"]) in produced, r
    # Table 4's exercises: each instructor's answer ran (smoke) and compared finite numbers
    assert len(exercise_answers(reports / "vu2021" / "table4.ipynb")) == len(EXERCISES)
    for name in EXERCISES:
        answer = json.loads((reports / "vu2021" / "exercises" / name / "answer.json").read_text())
        assert answer["exercise"] == name and answer["metrics"] and answer["finite"], answer
    # the student's copy (python -m common.exercises: no solution cells) runs on the same runs
    from tests.helpers.notebooks import run_student_copy
    printed = run_student_copy("vu2021", "table4", {"params_path": str(path), "out_dir": str(reports / "vu2021")},
                               tmp_path)
    assert len(printed) == len(EXERCISES)


EXERCISES = ("temperature_1", "gru_seq_quarter", "lambda_0")


def test_task_streams_draw_balanced_samples_per_epoch(tmp_path):
    faces = np.zeros((10, 3, 8, 8), np.uint8)
    expr = np.array([0] * 9 + [5])
    stream = vd.Stream("expr", [faces], np.stack([np.zeros(10, int), np.arange(10)], 1), expr,
                       np.full((10, 2), -5.0, np.float32), vd.expr_balance_weights(expr), np.ones(10, bool))
    ds = vd.TaskStreams({"expr": stream}, samples_per_epoch=400, crop=6, pad=0, seed=0)
    drawn = expr[ds.draws["expr"]]
    assert 0.4 < (drawn == 5).mean() < 0.6                   # the rare class drawn half the time
    first = ds.draws["expr"].copy()
    ds.set_epoch(1)
    assert not np.array_equal(first, ds.draws["expr"])       # a fresh draw every epoch
    item = ds[0]["expr"]
    assert item["image"].shape == (3, 6, 6) and item["va"].tolist() == [-5.0, -5.0]
    (tmp_path / "metrics.csv").write_text("epoch,score\n1,0.1\n2,0.2\n")
    assert vt.epochs_done(tmp_path) == 2 and vt.epochs_done(tmp_path / "none") == 0
