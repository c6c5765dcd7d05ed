"""Jeong, Oh, Lim 2022: SoundNet and ResNeXt-SE backbones, their feature stages, the multi-task
teacher/student model, Eqs. 2-12 as wired in papers/jeong2022/train.py, published.csv, and one smoke
run of the four notebooks on the tiny corpus."""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from common.backbones.resnext_se import ResNeXtSE
from common.backbones.soundnet import (LAYERS, SAMPLE_RATE, SoundNet8, SoundNetWeightsError, hop_samples,
                                       load_soundnet_weights, port_key_to_ours)
from common.claims import VERDICTS
from common.features import soundnet as sn_features
from common.train import TrainConfig, fit
from papers.jeong2022.data import Corpus, frame_offsets, inputs
from papers.jeong2022.model import JeongNet
from papers.jeong2022.train import make_student_loss, supervision_loss, train_run

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- SoundNet

def test_soundnet_ten_seconds_give_one_1000d_output_and_hop_is_2_to_the_15():
    net = SoundNet8(width=0.125).eval()
    with torch.no_grad():
        out, scenes = net(torch.zeros(2, 10 * SAMPLE_RATE), scenes=True)
    assert out.shape == (2, 1000, 1) and scenes.shape == (2, 401, 1)
    assert hop_samples() == 2 ** 15          # conv strides 2^7 x pools 8 * 8 * 4


def _port_state_dict() -> dict:
    """A state dict shaped like the published PyTorch port of sound8 (Conv2d (k, 1) kernels)."""
    state, c_in = {}, 1
    for n, (c, k, _, _, _) in enumerate(LAYERS, start=1):
        state[f"conv{n}.0.weight"] = torch.randn(c, c_in, k, 1)
        state[f"conv{n}.0.bias"] = torch.randn(c)
        state[f"conv{n}.1.weight"] = torch.rand(c) + 0.5
        state[f"conv{n}.1.bias"] = torch.randn(c)
        state[f"conv{n}.1.running_mean"] = torch.randn(c)
        state[f"conv{n}.1.running_var"] = torch.rand(c) + 0.5
        state[f"conv{n}.1.num_batches_tracked"] = torch.tensor(7)
        c_in = c
    state["conv8.0.weight"], state["conv8.0.bias"] = torch.randn(1000, 1024, 8, 1), torch.randn(1000)
    state["conv8_2.0.weight"], state["conv8_2.0.bias"] = torch.randn(401, 1024, 8, 1), torch.randn(401)
    return state


def test_published_port_weights_load_with_the_documented_key_mapping(tmp_path):
    state = _port_state_dict()
    path = tmp_path / "sound8.pth"
    torch.save(state, path)
    net = SoundNet8(width=1.0)
    load_soundnet_weights(net, path)          # torch.load(weights_only=True) inside
    assert torch.equal(net.convs[0].conv.weight, state["conv1.0.weight"].squeeze(-1))
    assert torch.equal(net.convs[6].bn.running_var, state["conv7.1.running_var"])
    assert torch.equal(net.objects.weight, state["conv8.0.weight"].squeeze(-1))
    assert torch.equal(net.scenes.bias, state["conv8_2.0.bias"])
    assert port_key_to_ours("conv3.1.running_mean") == "convs.2.bn.running_mean"


def test_wrong_soundnet_weights_name_the_file_and_the_key(tmp_path):
    state = _port_state_dict()
    del state["conv5.0.bias"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(SoundNetWeightsError, match=r"broken\.pth.*convs\.4\.conv\.bias"):
        load_soundnet_weights(SoundNet8(1.0), path)
    with pytest.raises(SoundNetWeightsError, match="does not exist"):
        load_soundnet_weights(SoundNet8(1.0), tmp_path / "missing.pth")
    torch.save(SoundNet8(0.25).state_dict(), tmp_path / "narrow.pt")
    with pytest.raises(SoundNetWeightsError, match="width"):
        load_soundnet_weights(SoundNet8(1.0), tmp_path / "narrow.pt")


def test_each_frame_takes_the_latest_window_that_ends_before_it():
    fps, n_frames = 30.0, 900
    pad = sn_features.window_samples()
    idx = sn_features.frame_windows(n_frames, fps, 100, pad)
    h = hop_samples()
    frame_samples = np.arange(n_frames) / fps * SAMPLE_RATE
    window_end = (idx + 8) * h - pad                         # in track samples
    assert (window_end <= frame_samples + 1e-6).all()        # causal: the window ends before the frame
    assert (frame_samples - window_end < h).all()            # ... and it is the latest such window
    assert np.all(np.diff(idx) >= 0)


def test_stereo_with_identical_channels_equals_mono():
    net = SoundNet8(width=0.125).eval()
    wave = torch.randn(1, 6 * SAMPLE_RATE) * 0.1
    mono = sn_features.track_features(net, wave, 150, 30.0)
    stereo = sn_features.track_features(net, wave.repeat(2, 1), 150, 30.0)
    assert mono.shape == (150, 1000)
    np.testing.assert_allclose(stereo, mono, atol=1e-4)


# ------------------------------------------------------------------------------------- ResNeXt-SE

def test_resnext_se_gives_512d_features_and_se_gates_in_0_1():
    net = ResNeXtSE((1, 1), width=8, cardinality=2, group_width=2, embed_dim=512, input_size=32).eval()
    x = torch.randn(3, 3, 32, 32)
    assert net(x).shape == (3, 512)
    se = net.stages[0][0].se
    h = torch.randn(2, 8, 5, 5).abs() + 1.0
    ratio = se(h) / h
    assert ((ratio > 0) & (ratio < 1)).all()
    assert torch.allclose(ratio[:, :, 0, 0:1].expand(-1, -1, 5), ratio[:, :, 0, :])   # one gate per channel


# ------------------------------------------------------------------------------------- samples

def test_past_frames_are_six_at_stride_ten_and_clamped_to_the_track_start():
    offsets = frame_offsets(2, 30, 10, 6)
    assert offsets.tolist() == [-50, -40, -30, -20, -10, 0]
    with pytest.raises(ValueError, match="n_img"):
        frame_offsets(2, 30, 10, 8)
    n = 120
    img = np.arange(n, dtype=np.float32)[:, None].repeat(4, 1)        # feature = row number
    starts = np.r_[np.zeros(60, np.int64), np.full(60, 60, np.int64)]  # two tracks of 60 frames
    corpus = Corpus(img, np.zeros((n, 3), np.float32), None, None, None, starts, {}, offsets)
    x_img, _ = inputs(corpus, np.array([55, 75]))
    assert x_img[0, :, 0].tolist() == [5, 15, 25, 35, 45, 55]
    assert x_img[1, :, 0].tolist() == [60, 60, 60, 60, 65, 75]        # never reaches into the previous track


def test_ablation_models_use_only_their_inputs():
    torch.manual_seed(0)
    img, aud = torch.randn(4, 6, 512), torch.randn(4, 1000)
    for kind in ("I", "A", "I+A"):
        net = JeongNet(kind, lstm=16, trunk=(32, 16), heads=(8, 4)).eval()
        out = net(img, aud)
        assert out["va"].shape == (4, 2) and out["expr"].shape == (4, 8) and out["au"].shape == (4, 12)
        assert out["va"].abs().max() <= 1.0
        changed_img = net(img + 1.0, aud)["expr"]
        changed_aud = net(img, aud + 1.0)["expr"]
        assert torch.allclose(changed_img, out["expr"]) == (kind == "A")
        assert torch.allclose(changed_aud, out["expr"]) == (kind == "I")


# ------------------------------------------------------------------------------------- losses

def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    va = torch.rand(n, 2, generator=g) * 2 - 1
    expr = torch.randint(0, 8, (n,), generator=g)
    au = (torch.rand(n, 12, generator=g) > 0.5).float()
    return {"img": torch.randn(n, 6, 512, generator=g), "aud": torch.randn(n, 1000, generator=g),
            "va": va, "expr": expr, "au": au}


def test_invalid_labels_do_not_reach_the_supervision_losses():
    net = JeongNet("I+A", lstm=8, trunk=(16, 8), heads=(8, 4)).eval()
    b = _batch()
    out = net(b["img"], b["aud"])
    marked = {**b, "va": b["va"].clone(), "expr": b["expr"].clone(), "au": b["au"].clone()}
    marked["va"][:4] = -5.0
    marked["expr"][:4] = -1
    marked["au"][:4] = -1.0
    changed = {k: v.clone() for k, v in out.items()}
    for k in changed:
        changed[k][:4] = changed[k][:4] * 0 + 0.3        # any prediction on those rows
    for task in ("va", "expr", "au", "mtl"):
        a = supervision_loss(out, marked, task)
        c = supervision_loss(changed, marked, task)
        assert torch.allclose(a, c), task
        sliced = supervision_loss({k: v[4:] for k, v in out.items()}, {k: v[4:] for k, v in b.items()}, task)
        assert torch.allclose(a, sliced, atol=1e-6), task


def test_student_loss_is_eq12_by_hand():
    torch.manual_seed(1)
    teacher = JeongNet("I+A", lstm=8, trunk=(16, 8), heads=(8, 4)).eval()
    student = JeongNet("I+A", lstm=8, trunk=(16, 8), heads=(8, 4)).eval()
    gamma = {"va": 1.0, "expr": math.exp(0.5), "au": math.exp(1.0)}
    jp = {"temperature": 2.5, "alpha": 10.0, "beta": 0.9}
    b = _batch()
    got = make_student_loss(teacher, gamma, jp)(student, b, "expr")
    s, t = student(b["img"], b["aud"]), teacher(b["img"], b["aud"])

    def ccc(x, y):
        mx, my = x.mean(), y.mean()
        return 2 * ((x - mx) * (y - my)).mean() / (x.var(unbiased=False) + y.var(unbiased=False) + (mx - my) ** 2)
    d_va = 1 - (ccc(s["va"][:, 0], t["va"][:, 0]) + ccc(s["va"][:, 1], t["va"][:, 1])) / 2                # Eq. 8
    d_expr = -(torch.softmax(t["expr"] / 2.5, -1) * torch.log_softmax(s["expr"] / 2.5, -1)).sum(-1).mean()  # Eq. 9
    p = torch.sigmoid(t["au"])
    q = torch.sigmoid(s["au"])
    d_au = -(p * q.log() + (1 - p) * (1 - q).log()).mean()                                             # Eq. 10
    sup_expr = torch.nn.functional.cross_entropy(s["expr"], b["expr"])                                   # Eq. 4
    want = gamma["expr"] * (10 * sup_expr + d_expr) + 0.9 * (gamma["va"] * d_va + gamma["au"] * d_au)   # Eq. 12
    assert torch.allclose(got, want, atol=1e-5)
    # the MTL stream trains on the plain supervision sum (Algorithm 2)
    mtl = make_student_loss(teacher, gamma, jp)(student, b, "mtl")
    assert torch.allclose(mtl, supervision_loss(s, b, "va") + supervision_loss(s, b, "expr")
                          + supervision_loss(s, b, "au"))


def test_fit_takes_one_step_per_task_batch_in_round_robin_order(tmp_path):
    seen = []

    class Steps(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {s: torch.ones(3, 1) for s in ("va", "expr", "au", "mtl")}

    model = torch.nn.Linear(1, 1)

    def loss_fn(m, b, stream):
        seen.append((stream, m.weight.item()))
        return m(b).pow(2).mean()
    cfg = TrainConfig(epochs=1, batch_size=1, lr=0.1, substeps=("va", "expr", "au", "mtl"))
    fit(model, Steps(), loss_fn, lambda m: {"loss": 0.0}, cfg, tmp_path, collate_fn=lambda x: x[0], progress=False)
    assert [s for s, _ in seen] == ["va", "expr", "au", "mtl"] * 2
    weights = [w for _, w in seen]
    assert all(a != b for a, b in zip(weights, weights[1:]))       # every sub-batch moved the weights


def _toy_corpus(n_per_split=600, seed=0) -> Corpus:
    """Frames whose VA, expression and AUs are functions of the audio features (a learnable toy)."""
    rng = np.random.default_rng(seed)
    n = 3 * n_per_split
    aud = rng.standard_normal((n, 1000)).astype(np.float32)
    aud[:, 22:] *= 0.1                     # the 22 informative dimensions stand out from the rest
    img = rng.standard_normal((n, 512)).astype(np.float32)
    va = np.tanh(aud[:, :2]).astype(np.float32)
    expr = np.argmax(aud[:, 2:10], 1)
    au = (aud[:, 10:22] > 0).astype(np.float32)
    starts = np.repeat(np.arange(3) * n_per_split, n_per_split)
    sets = {}
    for s, split in enumerate(("train", "validation", "test")):
        rows = np.arange(s * n_per_split, (s + 1) * n_per_split)
        for name in ("va", "expr", "au", "mtl"):
            pick = rows if name != "mtl" else rows[::5]
            sets[(split, name)] = {"rows": pick, "va": va[pick], "expr": expr[pick], "au": au[pick]}
    return Corpus(img, aud, va, expr, au, starts, sets, frame_offsets(2, 30, 10, 6))


def test_teacher_then_student_learn_a_toy_signal(tmp_path, monkeypatch):
    params = {"jeong2022": {"lstm": 8, "trunk": [64, 32], "heads": [32, 16], "dropout": 0.1, "epochs": 6,
                            "early_stop": 0, "batch_size": 64, "lr": 3e-3, "temperature": 2.5, "alpha": 10.0,
                            "beta": 0.9, "steps_per_epoch": 15, "eval_stride": 2}}
    corpus = _toy_corpus()
    teacher = train_run(params, corpus, "teacher", "A", 0, tmp_path / "t")
    assert teacher["validation"]["stl_va"] > 0.5
    assert teacher["validation"]["mtl"] > 1.0
    student = train_run(params, corpus, "student", "A", 0, tmp_path / "s", teacher_dir=tmp_path / "t")
    assert student["validation"]["mtl"] > 1.0
    assert json.loads((tmp_path / "s" / "result.json").read_text())["role"] == "student"
    assert set(student["gamma_final"]) == {"va", "expr", "au"}
    assert all(g >= 1.0 for g in student["gamma_final"].values())


# ------------------------------------------------------------------------------------- published

def test_published_numbers_are_complete():
    rows = list(csv.DictReader(open(ROOT / "papers/jeong2022/published.csv")))
    by_table = {}
    for r in rows:
        float(r["value"])
        by_table.setdefault(r["table"], []).append(r)
    assert len(by_table["1"]) == 17                 # Table 1's numeric hyperparameters
    cols = ["STL AU", "STL EXPR", "STL VA", "STL Total", "MTL"]
    for table, names in (("2", ["I", "A", "I+A"]), ("3", ["Teacher", "Student"])):
        got = {(r["row"], r["column"]) for r in by_table[table]}
        assert got == {(n, c) for n in names for c in cols}
    t2 = {(r["row"], r["column"]): float(r["value"]) for r in by_table["2"]}
    for n in ("I", "A", "I+A"):     # the published totals are the sums of the three tasks
        assert abs(sum(t2[(n, c)] for c in cols[:3]) - t2[(n, "STL Total")]) < 0.011
    assert len(by_table["4"]) == 12
    t4 = {(r["row"], r["column"]): float(r["value"]) for r in by_table["4"]}
    assert t4[("ours", "MTL Validation")] == 2.40 and t4[("ours", "MTL Test")] == 0.95
    assert t4[("baseline", "MTL Test")] == 0.28 and ("HSE-NN", "MTL Validation") not in t4


# ------------------------------------------------------------------------------------- notebooks

def test_notebooks_smoke(tiny_features, tmp_path):
    from common.features import faces, fer
    from common.notebooks import run_notebook

    params, params_path = tiny_features
    faces.extract_faces(params, workers=0, progress=False)
    fer.pretrain_fer(params, progress=False)
    fer.extract_fer(params, progress=False)
    sn_features.pretrain_soundnet(params, progress=False)
    sn_features.extract_soundnet(params, progress=False)
    published = list(csv.DictReader(open(ROOT / "papers/jeong2022/published.csv")))
    reports = tmp_path / "reports"
    results = []
    for nb in ("table1", "table2", "table3", "table4"):
        run_notebook("jeong2022", nb, {"params_path": str(params_path)}, reports)
        out = json.loads((reports / "jeong2022" / f"{nb}.json").read_text())
        assert out["paper"] == "jeong2022" and out["profile"] == "smoke" and out["seconds"] > 0
        assert out["differences"] and all({"what", "paper", "here", "why"} <= set(d) for d in out["differences"])
        for c in out["claims"]:
            assert c["verdict"] in VERDICTS
        for r in out["results"]:
            assert math.isfinite(r["value"])
            if r["table"] in ("2", "3"):
                total = "Total" in r["column"] or r["column"].split(",")[0] == "MTL"
                assert (0 <= r["value"] <= 3) if total else (-1 <= r["value"] <= 1)
        results += out["results"]
    claims23 = {c["id"]: c for nb in ("table2", "table3") for c in
                json.loads((reports / "jeong2022" / f"{nb}.json").read_text())["claims"]}
    assert len(claims23) == 7
    for role in ("teacher", "student"):                 # method paper vs released, paired by seed
        found = claims23[f"released_vs_paper_{role}"]
        assert found["n"] == len(params["jeong2022"]["seeds"]) and found["direction"] == "~"
    columns = {r["column"] for r in results if r["row"].endswith("released vs paper")}
    assert {"MTL, method paper", "MTL, method released"} <= columns
    for c in json.loads((reports / "jeong2022" / "table2.json").read_text())["claims"]:
        assert c["n"] == len(params["jeong2022"]["seeds"]) >= 3
    table4 = json.loads((reports / "jeong2022" / "table4.json").read_text())
    lb = table4["leaderboard"][0]
    assert lb["split"] == "test" and abs(lb["p_va"] + lb["p_expr"] + lb["p_au"] - lb["p_mtl"]) < 1e-9
    # Table 4: the same validation predictions four ways, the claim judged with the authors' procedure
    rows4 = {r["row"] for r in table4["results"] if r["column"] == "MTL Validation"}
    assert rows4 == {"ours", "ours (authors' code, corpus batch sizes)", "ours (authors' code, ABAW3 batch sizes)",
                     "ours (256 consecutive frames, not the authors' code)"}
    am = table4["authors_metric"]
    assert am["mtl_batch"]["abaw3"] == 13 and am["abaw3_set_sizes"]["mtl"] == 26876
    assert len(am["variants"]) == 4 and (reports / "jeong2022" / "table4_metric.png").stat().st_size > 0
    inflates = {c["id"]: c for c in table4["claims"]}["code_metric_inflates_validation"]
    assert inflates["n"] == len(params["jeong2022"]["seeds"])   # paired across the training seeds
    assert np.mean(inflates["a"]) == pytest.approx(am["variants"]["authors', ABAW3 batch sizes"]["mtl"])
    assert np.mean(inflates["b"]) == pytest.approx(am["variants"]["ABAW metric"]["mtl"])
    assert inflates["explanation"].count(". ") + 1 == 2         # the mechanism in two sentences
    table1 = json.loads((reports / "jeong2022" / "table1.json").read_text())
    assert table1["claims"][0]["verdict"] == "reproduced"       # the paper profile equals Table 1
    have = {(r["table"], r["row"], r["column"]) for r in results}
    ours = [p for p in published if p["table"] in ("1", "2", "3") or p["row"] == "ours"]
    missing = [(p["table"], p["row"], p["column"]) for p in ours if (p["table"], p["row"], p["column"]) not in have]
    assert not missing, missing
    # Table 4, the chapter's last notebook, ran its two exercises under the smoke profile
    from tests.helpers.notebooks import exercise_answers
    answers = exercise_answers(reports / "jeong2022" / "table4.ipynb")
    assert len(answers) == 2 and "t = 1.0" in answers[0] and "MTL batch" in answers[1]
    # the student's copy (python -m common.exercises: no solution cells) runs on the same runs
    from tests.helpers.notebooks import run_student_copy
    printed = run_student_copy("jeong2022", "table4",
                               {"params_path": str(params_path), "out_dir": str(reports / "jeong2022")},
                               tmp_path)
    assert len(printed) == 2


def test_fer_weights_round_trip_and_a_wrong_file_is_named(tmp_path):
    from common.features.fer import FerWeightsError, build_fer, load_fer_weights
    fp = {"layers": [1, 1], "width": 8, "cardinality": 2, "group_width": 2, "embed_dim": 512,
          "input_size": 32, "crop": 28}
    net = build_fer(fp)
    torch.save(net.state_dict(), tmp_path / "fer.pt")
    other = build_fer(fp)
    load_fer_weights(other, tmp_path / "fer.pt")
    assert torch.equal(other.encoder.embed.weight, net.encoder.embed.weight)
    state = net.state_dict()
    state.pop("va_head.bias")
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(FerWeightsError, match=r"bad\.pt.*va_head\.bias"):
        load_fer_weights(other, tmp_path / "bad.pt")


def test_keras_init_sets_the_forget_bias_and_glorot_bounds():
    """model.keras_init: Keras' defaults (ledger: initialisation): zero Dense biases, Dense weights within
    the glorot_uniform bound sqrt(6 / (fan_in + fan_out)), LSTM forget-gate bias 1, other biases 0,
    an orthogonal recurrent kernel."""
    from papers.jeong2022.model import keras_init
    net = keras_init(JeongNet("I+A", lstm=8, trunk=(16, 8), heads=(8, 4)))
    lin = net.trunk[0][0].requires_grad_(False)
    assert float(lin.bias.abs().max()) == 0.0
    bound = (6 / (lin.in_features + lin.out_features)) ** 0.5
    assert float(lin.weight.abs().max()) <= bound and float(lin.weight.abs().max()) > 0.8 * bound
    b = (net.lstm.bias_ih_l0 + net.lstm.bias_hh_l0).detach()
    assert torch.equal(b[8:16], torch.ones(8)) and float(b[:8].abs().sum() + b[16:].abs().sum()) == 0.0
    rec = net.lstm.weight_hh_l0.detach()                           # (4 units, units): orthonormal columns
    assert torch.allclose(rec.T @ rec, torch.eye(8), atol=1e-5)


def test_batch_sizes_follow_the_released_loader():
    """train.batch_sizes: max_iter = ceil(largest / 256), floor(set / max_iter) for every set, as
    papers.jeong2022.evaluation.jeong_batch_sizes (the loader's formula, held to the official loader in
    tests/official) (ledger: batch_sizes)."""
    from papers.jeong2022.evaluation import jeong_batch_sizes
    from papers.jeong2022.train import batch_sizes
    n = {"va": 1000, "expr": 700, "au": 520, "mtl": 90}
    corpus = Corpus(None, None, None, None, None, None,
                    {("train", s): {"rows": np.arange(k)} for s, k in n.items()}, None)
    want, _ = jeong_batch_sizes(n, 256)
    assert batch_sizes(corpus, 256) == want == {"va": 250, "expr": 175, "au": 130, "mtl": 22}
