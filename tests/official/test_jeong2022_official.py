"""Jeong 2022 `method: released` against numbers of the authors' own code.

The fixtures in tests/fixtures/official/jeong2022/ were written by running
EuiseokJeong/2022_ABAW_imlab@bb0513c under TensorFlow (scripts/official_fixtures/jeong2022.py; versions and
command in PROVENANCE.md). Each test feeds the same inputs and mapped weights to this project's PyTorch
code and states its tolerance; where the ledger says `method: paper` differs, a test shows that too.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from common.train import TrainConfig, fit
from papers.jeong2022.data import STREAM_ORDER, keep_all, released_rows
from papers.jeong2022.evaluation import jeong_batch_sizes, jeong_code_metric
from papers.jeong2022.losses import DOMAIN_WEIGHT, STUDENT_LOSS, TEACHER_LOSS, TaskPatience
from papers.jeong2022.model import ARCHITECTURE, JeongNet

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "jeong2022"
TASKS = ("VA", "EXPR", "AU", "MTL")
# The small released-architecture model the fixtures use (scripts/official_fixtures/jeong2022.py SMALL)
SMALL = dict(lstm=4, trunk=(16, 8), heads=(8, 4))
DOMAIN_LAYERS = (8, 4)
FLOAT32 = dict(rtol=2e-5, atol=2e-6)            # float32 arithmetic on both sides, different kernels


def load(name: str) -> dict:
    with np.load(FIXTURES / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def small_net(method: str, dropout: float) -> JeongNet:
    arch = dict(ARCHITECTURE[method])
    if arch["discriminator"]:
        arch["discriminator"] = DOMAIN_LAYERS
    return JeongNet("I+A", dropout=dropout, **SMALL, **arch)


def layers(net: JeongNet) -> dict:
    """Keras layer name (as the fixture script writes it) -> this model's Linear / BatchNorm1d."""
    out = {"FE_16": net.trunk[0], "FE_8": net.trunk[1]}
    for task, name in (("va", "VA"), ("expr", "EXPR"), ("au", "AU")):
        out[f"{name}_8"], out[f"{name}_4"] = net.heads[task][0], net.heads[task][1]
        out[f"head_{task}"] = net.heads[task][2]
    if net.domain is not None:
        out["DC_8"], out["DC_4"], out["head_domain"] = net.domain[1], net.domain[2], net.domain[3]
    return out


def map_weights(net: JeongNet, weights: dict) -> None:
    """Keras variables {name: array} into `net`: kernels transposed, the LSTM's one bias into bias_ih."""
    with torch.no_grad():
        def t(a):
            return torch.from_numpy(np.ascontiguousarray(a))
        net.lstm.weight_ih_l0.copy_(t(weights["img_lstm_4/lstm_cell/kernel"].T))
        net.lstm.weight_hh_l0.copy_(t(weights["img_lstm_4/lstm_cell/recurrent_kernel"].T))
        net.lstm.bias_ih_l0.copy_(t(weights["img_lstm_4/lstm_cell/bias"]))
        net.lstm.bias_hh_l0.zero_()
        for name, block in layers(net).items():
            if name.startswith("head_"):
                block.weight.copy_(t(weights[f"{name}/kernel"].T))
                block.bias.copy_(t(weights[f"{name}/bias"]))
                continue
            lin, bn = block[0], block[1]
            lin.weight.copy_(t(weights[f"{name}_dense/kernel"].T))
            lin.bias.copy_(t(weights[f"{name}_dense/bias"]))
            bn.weight.copy_(t(weights[f"{name}_batch/gamma"]))
            bn.bias.copy_(t(weights[f"{name}_batch/beta"]))
            bn.running_mean.copy_(t(weights[f"{name}_batch/moving_mean"]))
            bn.running_var.copy_(t(weights[f"{name}_batch/moving_variance"]))


def grads_of(net: JeongNet) -> dict:
    """This model's gradients under the Keras variable names (kernels transposed back; zeros where the
    loss does not reach a parameter, as the fixture script stores Keras' None)."""
    def g(p):
        return torch.zeros_like(p) if p.grad is None else p.grad
    out = {"img_lstm_4/lstm_cell/kernel": g(net.lstm.weight_ih_l0).T,
           "img_lstm_4/lstm_cell/recurrent_kernel": g(net.lstm.weight_hh_l0).T,
           "img_lstm_4/lstm_cell/bias": g(net.lstm.bias_ih_l0)}
    for name, block in layers(net).items():
        if name.startswith("head_"):
            out[f"{name}/kernel"], out[f"{name}/bias"] = g(block.weight).T, g(block.bias)
            continue
        out[f"{name}_dense/kernel"], out[f"{name}_dense/bias"] = g(block[0].weight).T, g(block[0].bias)
        out[f"{name}_batch/gamma"], out[f"{name}_batch/beta"] = g(block[1].weight), g(block[1].bias)
    return {k: v.detach().numpy() for k, v in out.items()}


def torch_inputs(img, aud):
    return torch.from_numpy(img.astype(np.float32)).reshape(len(img), 6, 512), torch.from_numpy(aud.astype(np.float32))


def batch_of(z: dict, task: str) -> dict:
    """The fixture's labels as this project's batch: VA values, EXPR class indices, AU 0/1."""
    b = {}
    if f"{task}/label/va" in z:
        b["va"] = torch.from_numpy(z[f"{task}/label/va"])
    if f"{task}/label/expr" in z:
        b["expr"] = torch.from_numpy(z[f"{task}/label/expr"].argmax(1))
    if f"{task}/label/au" in z:
        b["au"] = torch.from_numpy(z[f"{task}/label/au"])
    return b


# ----------------------------------------------------------------------------------------- the model

def test_forward_with_mapped_weights_eval_and_train_mode():
    """models.get_model: eval mode (dropout 0.5 inactive) within float32 tolerance; train mode with dropout
    0 checks batch norm's batch statistics. The paper's tanh LSTM gives other outputs (ledger: lstm_activation)."""
    z = load("forward")
    weights = {k[len("weights/"):]: v for k, v in z.items() if k.startswith("weights/")}
    img, aud = torch_inputs(z["img"], z["aud"])
    for tag, dropout in (("eval", 0.5), ("train", 0.0)):
        net = small_net("released", dropout)
        map_weights(net, weights)
        net.train(tag == "train")
        with torch.no_grad():
            out = net(img, aud)
        got = {"domain": torch.softmax(out["domain"], -1), "va": out["va"], "expr": out["expr"],
               "au": torch.sigmoid(out["au"])}
        for name, value in got.items():
            np.testing.assert_allclose(value.numpy(), z[f"{tag}/out/{name}"], **FLOAT32, err_msg=f"{tag} {name}")
    paper = small_net("paper", 0.5).eval()
    map_weights(paper, weights)
    with torch.no_grad():
        expr = paper(img, aud)["expr"].numpy()
    assert np.abs(expr - z["eval/out/expr"]).max() > 1e-2        # tanh LSTM: another function


# ----------------------------------------------------------------------------------------- the losses

def outputs(z: dict, who: str) -> dict:
    """Fixture outputs as this model's (logits for domain, EXPR and AU; VA after tanh)."""
    return {"domain": torch.log(torch.from_numpy(z[f"{who}/domain"])), "va": torch.from_numpy(z[f"{who}/va"]),
            "expr": torch.from_numpy(z[f"{who}/expr"]), "au": torch.from_numpy(z[f"{who}/au_logit"])}


@pytest.mark.parametrize("task", TASKS)
def test_every_loss_term_matches_get_loss(task):
    """utils.get_loss of teacher (T = 1) and student (T = 2.5) for each stream, under five settings of
    (alpha, beta, domain weight) that isolate the supervision, own-distillation, cross-task and
    discriminator terms, with gamma = exp(0.5 n) from a fixed non-improvement count. Tolerance: float32."""
    z = load("losses")
    teacher, student = outputs(z, "teacher"), outputs(z, "student")
    gamma = {t: math.exp(float(z["task_weight_exp"]) * n)
             for t, n in zip(("va", "expr", "au", "mtl"), z["non_improve"])}
    b = batch_of(z, task)
    stream = task.lower()
    for k, (alpha, beta, dw) in enumerate(z["settings"]):
        jp = {"temperature": float(z["T"]), "alpha": float(alpha), "beta": float(beta)}
        got_t = TEACHER_LOSS["released"](teacher, b, stream, float(dw))
        got_s = STUDENT_LOSS["released"](student, None if stream == "mtl" else teacher, b, stream, gamma, jp, float(dw))
        want_t, want_s = z[f"{task}/teacher/loss"][k], z[f"{task}/student/loss"][k]
        assert float(got_t) == pytest.approx(want_t, rel=1e-5), (task, "teacher", k)
        assert float(got_s) == pytest.approx(want_s, rel=1e-5), (task, "student", k)


def test_paper_supervision_differs_where_the_ledger_says():
    """The paper's CE (Eq. 4) vs the released swapped, clipped CE: 16.1 (1 - p_true) (ledger: swapped_supervision)."""
    z = load("losses")
    teacher = outputs(z, "teacher")
    b = batch_of(z, "EXPR")
    paper = float(TEACHER_LOSS["paper"](teacher, b, "expr"))
    released = float(TEACHER_LOSS["released"](teacher, b, "expr", 0.0))
    p_true = torch.softmax(teacher["expr"], -1)[torch.arange(len(b["expr"])), b["expr"]]
    assert released == pytest.approx(float((-math.log(1e-7) * (1 - p_true)).mean()), rel=1e-4)
    assert released > 2 * paper


@pytest.mark.parametrize("task", TASKS)
def test_gradients_of_a_training_step_match(task):
    """tape.gradient of get_loss over the model's variables (trainer.py:138-155): the teacher with the
    discriminator behind gradient reversal (domain weight 0.35), the student against a frozen teacher.
    Dropout 0 so both sides are deterministic; batch norm in training mode. Tolerance: float32 sums
    over a few thousand terms (rtol 1e-4, atol the larger of 1e-5 of the array's largest entry and 2e-6:
    a Dense bias before batch norm has a gradient of exactly 0 up to float32 noise of ~1e-7)."""
    z = load("gradients")
    tw = {k[len("teacher_weights/"):]: v for k, v in z.items() if k.startswith("teacher_weights/")}
    sw = {k[len("student_weights/"):]: v for k, v in z.items() if k.startswith("student_weights/")}
    gamma = {t: math.exp(0.5 * n) for t, n in zip(("va", "expr", "au", "mtl"), z["non_improve"])}
    jp = {"temperature": 2.5, "alpha": 10.0, "beta": 0.9}
    img, aud = torch_inputs(z[f"{task}/img"], z[f"{task}/aud"])
    b = batch_of(z, task)
    stream = task.lower()
    teacher, student = small_net("released", 0.0), small_net("released", 0.0)
    map_weights(teacher, tw)
    map_weights(student, sw)
    for role in ("teacher", "student"):
        net = teacher if role == "teacher" else student
        net.train()
        net.zero_grad()
        if role == "teacher":
            loss = TEACHER_LOSS["released"](net(img, aud), b, stream, 0.35)
        else:
            teacher.eval()
            with torch.no_grad():
                soft = teacher(img, aud)
            loss = STUDENT_LOSS["released"](net(img, aud), soft, b, stream, gamma, jp, 0.35)
        loss.backward()
        assert loss.item() == pytest.approx(float(z[f"{task}/{role}/loss"]), rel=1e-5)
        got = grads_of(net)
        prefix = f"{task}/{role}/grad/"
        for key in (k for k in z if k.startswith(prefix)):
            name = key[len(prefix):]
            if name.endswith(":rows64"):
                g = got[name[:-len(":rows64")]][:64]
            elif name.endswith(":colsum"):
                g = got[name[:-len(":colsum")]].sum(0)
            else:
                g = got[name]
            scale = float(np.abs(z[key]).max())
            np.testing.assert_allclose(np.broadcast_to(g, z[key].shape), z[key], rtol=1e-4,
                                       atol=max(1e-5 * scale, 2e-6),
                                       err_msg=f"{task} {role} {name}")
        if role == "teacher":                     # Keras' moving statistics after one training call
            for key in (k for k in z if k.startswith(f"{task}/teacher/after/")):
                name, which = key.split("/")[-2:]
                bn = layers(net)[name[:-len("_batch")]][1]
                value = bn.running_mean if which == "moving_mean" else bn.running_var
                np.testing.assert_allclose(value.numpy(), z[key], **FLOAT32, err_msg=key)
            map_weights(teacher, tw)              # the fixture restores its teacher, too
        if role == "teacher" and stream != "mtl":
            dc = z[prefix + "DC_8_dense/kernel"]
            assert np.abs(dc).max() > 0           # the discriminator trains on this stream


# ----------------------------------------------------------------------------------------- the schedule

def test_stream_order_domain_weight_and_temperature_per_step():
    """trainer.train_epoch over 20 epochs of teacher and student: steps MTL, VA, EXPR, AU; domain weight
    (epoch + 1) / 20; T = 1 for the teacher, 2.5 for the student; the teacher frozen in inference mode."""
    z = load("schedule")
    steps = z["steps"]                                     # gen, epoch, task, domain weight, T, student
    epochs = int(z["config/epochs"])
    order = [TASKS[int(i)].lower() for i in steps[steps[:, 1] == 0][:4, 2]]
    assert tuple(order) == STREAM_ORDER["released"] != STREAM_ORDER["paper"]
    for gen, epoch, _, weight, temperature, _ in steps:
        assert weight == pytest.approx(DOMAIN_WEIGHT["released"](int(epoch), epochs))
        assert DOMAIN_WEIGHT["paper"](int(epoch), epochs) == 0.0
        assert temperature == (1.0 if gen == 0 else float(z["config/temperature"]))
    assert bool(z["training/gen1/teacher"]) is False and bool(z["training/gen1/student"]) is True
    assert float(z["config/domain_weight"]) == 0.0 and bool(z["config/linear_domain_weight"])


def test_gamma_counts_best_epoch_and_early_stop_follow_train_gen(tmp_path):
    """trainer.train_gen on scripted validation metrics: the non-improvement counts before each epoch
    (gamma = exp(0.5 n)), the best epoch and the early stop after 5 epochs without a better P_MTL, against
    TaskPatience and common.train.fit driven by the same script."""
    z = load("schedule")
    script = z["gen/script"]                               # (epoch, VA / EXPR / AU / MTL)
    patience, before = TaskPatience("max"), []
    for e in range(len(z["gen/non_improve_before_epoch"])):
        before.append([patience.epochs_without_improvement.get(t, 0) for t in ("va", "expr", "au")])
        for i, t in enumerate(("va", "expr", "au")):
            patience.update(t, script[e, i])
    np.testing.assert_array_equal(np.array(before), z["gen/non_improve_before_epoch"])

    model = torch.nn.Linear(1, 1)
    evaluations = iter(script[:, 3])
    cfg = TrainConfig(epochs=20, batch_size=1, lr=1e-3, monitor="mtl", mode="max",
                      early_stop=int(z["config/early_stop"]))
    out = fit(model, [torch.zeros(1)], lambda m, x: m(x).sum() ** 2, lambda m: {"mtl": float(next(evaluations))},
              cfg, tmp_path, progress=False)
    assert len(out["history"]) == int(z["gen/epochs_run"])
    assert out["best"]["epoch"] - 1 == int(z["gen/best_epoch"])


# ----------------------------------------------------------------------------------------- the data

def test_row_filter_keeps_the_rows_the_released_loader_keeps():
    """dataloader.get_idx after extract_audio's audio_crop and merge_image_feature on a tiny corpus:
    -1 / -5 labels (and VA -1.000 by the substring test), a frame without a face among the 6 of the
    window, under 10 s of audio before the frame, a video under 10 s. Exact."""
    z = load("rows")
    for task in TASKS:
        want = {(v, int(i)) for v, i in zip(z[f"kept/{task}/video"], z[f"kept/{task}/idx"])}
        got, everything = set(), set()
        for video, n in zip(z["video_names"], z["n_frames"]):
            face = z[f"{video}/face"]
            labels = {"va": z[f"{video}/va"], "expr": z[f"{video}/expr"], "au": z[f"{video}/au"]}
            frame = np.arange(0, n, 3) if task == "MTL" else np.arange(n)
            labels = {k: v[frame] for k, v in labels.items()}
            if task == "MTL":
                labels["va"] = np.where((labels["va"] == -5).any(1, keepdims=True), -5.0, labels["va"])

            def face_at(offsets):
                at = frame[:, None] + offsets[None, :]
                return (at >= 0) & face[np.clip(at, 0, n - 1)]
            args = (task.lower(), labels, frame, np.full(len(frame), n), face_at,
                    np.full(len(frame), int(z[f"{video}/audio_samples"])))
            idx = frame + 1 if task == "MTL" else frame
            got |= {(str(video), int(i)) for i in idx[released_rows(*args)]}
            everything |= {(str(video), int(i)) for i in idx[keep_all(*args)]}
        assert got == want, (task, sorted(got ^ want)[:10])
        assert len(everything) > len(want)                 # method: paper keeps them all (ledger: row_filter)


def test_jeong_code_metric_matches_get_metric_batch_by_batch():
    """utils.get_metric on the batches dataloader.get_batch_size cuts, in order (no shuffle), averaged as
    trainer.valid does, against papers/jeong2022/evaluation.py: jeong_code_metric(shuffle=False). Tolerance 1e-6
    (float32 CCC)."""
    z = load("metric")
    names = {"VA": "va", "EXPR": "expr", "AU": "au", "MTL": "mtl"}
    tasks = {"va": ("va",), "expr": ("expr",), "au": ("au",), "mtl": ("va", "expr", "au")}
    truth, pred = {}, {}
    for task, name in names.items():
        truth[name] = {t: z[f"{task}/{t}"] for t in tasks[name]}
        pred[name] = {t: z[f"{task}/{t}_pred"] for t in tasks[name]}
    sizes, max_iter = jeong_batch_sizes({n: len(truth[n][tasks[n][0]]) for n in truth})
    assert max_iter == int(z["max_iter"])
    assert [sizes[names[t]] for t in TASKS] == list(z["batch_sizes"])
    got = jeong_code_metric(truth, pred, shuffle=False)
    for task, key in (("VA", "stl_va"), ("EXPR", "stl_expr"), ("AU", "stl_au")):
        assert got[key] == pytest.approx(float(z[f"{task}/mean"][0]), abs=1e-6), task
    for i, key in enumerate(("mtl", "mtl_va", "mtl_expr", "mtl_au")):
        assert got[key] == pytest.approx(float(z["MTL/mean"][i]), abs=1e-6), key
