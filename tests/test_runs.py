"""Runs keyed by their configuration (common/runs.py): a run, an exercise answer or a checkpoint is
reused only under the configuration it was made from. Each paper's own run function is called
twice with the training replaced by a recorder: the same params reuse the run, one changed param
trains it again and never returns the other configuration's result.json."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

from common import runs
from common.files import atomic_write_json
from common.parallel import RESULT, finished_run, finished_runs
from common.params import load_params, override
from common.train import TrainConfig, fit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke():
    return load_params(ROOT / "params.yaml", "smoke")


def recorder(calls: list, value):
    """A train function that records its call and writes result.json holding `value`."""
    def train(out):
        calls.append(value)
        atomic_write_json(Path(out) / RESULT, {"value": value})
    return train


def test_finished_run_reuses_only_under_the_same_key(tmp_path, capsys):
    calls, out = [], tmp_path / "run"
    key_a, key_b = {"epochs": 2}, {"epochs": 30}
    assert finished_run(out, lambda: recorder(calls, "a")(out), key_a) == {"value": "a"}
    assert finished_run(out, lambda: recorder(calls, "a")(out), key_a) == {"value": "a"}
    assert calls == ["a"]
    (out / "checkpoint.pt").write_bytes(b"stale")            # what an interrupted run of key_a leaves
    assert finished_run(out, lambda: recorder(calls, "b")(out), key_b) == {"value": "b"}
    assert calls == ["a", "b"] and not (out / "checkpoint.pt").exists()
    assert "epochs: 2 -> 30" in capsys.readouterr().out


def test_a_folder_without_a_key_is_not_trusted(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / RESULT).write_text(json.dumps({"value": "written before runs were keyed"}))
    calls = []
    assert finished_run(out, lambda: recorder(calls, "new")(out), {"x": 1}) == {"value": "new"}
    assert calls == ["new"]


def test_prepare_keeps_nested_runs_with_their_own_key(tmp_path):
    parent, child = tmp_path / "teacher", tmp_path / "teacher" / "student"
    runs.prepare(child, {"child": 1})
    (parent / "best.pt").write_bytes(b"old weights")
    runs.prepare(parent, {"parent": 2})
    assert runs.matches(child, {"child": 1}) and not (parent / "best.pt").exists()


def test_finished_runs_trains_only_the_changed_jobs(tmp_path):
    calls = []
    folder = lambda job: tmp_path / f"job{job}"           # noqa: E731
    keys = {0: {"lr": 1.0}, 1: {"lr": 1.0}}
    finished_runs([0, 1], folder, lambda j: recorder(calls, j)(folder(j)), lambda j: keys[j])
    keys[1] = {"lr": 0.1}
    rows = finished_runs([0, 1], folder, lambda j: recorder(calls, j)(folder(j)), lambda j: keys[j])
    assert calls == [0, 1, 1] and [r["value"] for r in rows] == [0, 1]


def test_a_checkpoint_of_another_configuration_is_not_resumed(tmp_path, capsys):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 3), torch.randn(32, 1))
    loss = lambda net, b: ((net(b[0]) - b[1]) ** 2).mean()      # noqa: E731
    evaluate = lambda net: {"loss": float(loss(net, data.tensors))}  # noqa: E731
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, compile=False, deterministic=False, channels_last=False)
    fit(torch.nn.Linear(3, 1), data, loss, evaluate, cfg, tmp_path, progress=False, key={"data": "a"})
    capsys.readouterr()
    more = TrainConfig(**{**cfg.__dict__, "epochs": 3})
    fit(torch.nn.Linear(3, 1), data, loss, evaluate, more, tmp_path, progress=False, key={"data": "a"})
    assert "another configuration" in capsys.readouterr().out       # lr/epochs changed: from the start
    history = json.loads((tmp_path / "summary.json").read_text())
    assert history["epochs_run"] == 3
    fit(torch.nn.Linear(3, 1), data, loss, evaluate, more, tmp_path, progress=False, key={"data": "b"})
    assert "another configuration" in capsys.readouterr().out       # same settings, other data


def test_config_key_holds_the_papers_own_section_and_the_shared_ones(smoke):
    key = runs.config_key(smoke, "zhang2021", seed=0)
    assert "zhang2021" in key["params"] and "corpus" in key["params"] and "jeong2022" not in key["params"]
    other = override(smoke, {"jeong2022": {"lr": smoke["jeong2022"]["lr"] * 2}})
    assert runs.key_hash(runs.config_key(other, "zhang2021", seed=0)) == runs.key_hash(key)
    changed = override(smoke, {"zhang2021": {"epochs": smoke["zhang2021"]["epochs"] + 1}})
    assert runs.key_hash(runs.config_key(changed, "zhang2021", seed=0)) != runs.key_hash(key)


# ---- each paper's own run function: change one param, the run trains again ----------------------

def twice(call, params, changed):
    """(results, calls) of call(params), call(params) again, then call(changed)."""
    return [call(params), call(params), call(changed)]


def test_zhang_runs_are_keyed(smoke, tmp_path, monkeypatch):
    from papers.zhang2021 import experiment
    calls = []

    def train_fold(params, trials, fold, emotion, modality, out, **kw):
        recorder(calls, params["zhang2021"]["lr"])(out)
    monkeypatch.setattr(experiment, "train_fold", train_fold)
    changed = override(smoke, {"zhang2021": {"lr": smoke["zhang2021"]["lr"] * 2}})
    call = lambda p: experiment.run_grid(p, [], tmp_path, [0], ("valence",), ("unimodal",), seeds=[0])  # noqa: E731
    rows = twice(call, smoke, changed)
    assert len(calls) == 2 and rows[2][0]["value"] == changed["zhang2021"]["lr"]


def test_jeong_runs_are_keyed(smoke, tmp_path, monkeypatch):
    from papers.jeong2022 import experiment
    calls = []
    monkeypatch.setattr(experiment, "train_run", lambda params, corpus, role, inputs, seed, out, teacher_dir=None:
                        recorder(calls, params["jeong2022"]["lr"])(out))
    changed = override(smoke, {"jeong2022": {"lr": smoke["jeong2022"]["lr"] * 2}})
    rows = twice(lambda p: experiment.run(p, None, tmp_path, "teacher", "I+A", 0), smoke, changed)
    assert len(calls) == 2 and rows[2]["value"] == changed["jeong2022"]["lr"]


def test_vu_runs_and_exercises_are_keyed(smoke, tmp_path, monkeypatch):
    from papers.vu2021 import experiment
    calls = []
    monkeypatch.setattr(experiment.vt, "train_cnn", lambda params, kind, seed, out, teacher=None, progress=False:
                        recorder(calls, (kind, params["vu2021"]["lam"]))(out))
    changed = override(smoke, {"vu2021": {"lam": smoke["vu2021"]["lam"] / 2}})
    rows = twice(lambda p: experiment.cnn_run(p, tmp_path, "teacher123", 0), smoke, changed)
    assert len(calls) == 2 and rows[2]["value"] == ["teacher123", changed["vu2021"]["lam"]]
    # An exercise's answer is keyed by its changes: another value trains again.
    first = experiment.exercise_student(changed, tmp_path, "lambda", 0, lam=1.0)
    again = experiment.exercise_student(changed, tmp_path, "lambda", 0, lam=1.0)
    other = experiment.exercise_student(changed, tmp_path, "lambda", 0, lam=0.5)
    assert first == again and other["value"][1] == 0.5 and len(calls) == 4


def test_liu_runs_are_keyed(smoke, tmp_path, monkeypatch):
    from papers.liu2023 import experiment
    calls = []
    monkeypatch.setattr(experiment, "train_run", lambda params, clips, cfg, plan, seed, out, progress=False:
                        recorder(calls, params["liu2023"]["lr"])(out))
    changed = override(smoke, {"liu2023": {"lr": smoke["liu2023"]["lr"] * 2}})
    cfg = {"name": "c", "visual": [], "audio": [], "encoder": "lstm", "fusion": "early"}
    monkeypatch.setattr(experiment, "config_name", lambda c: c["name"])
    clips = [SimpleNamespace(video="v1")]
    rows = twice(lambda p: experiment.run_grid(p, clips, tmp_path, [cfg], seeds=[0]), smoke, changed)
    assert len(calls) == 2 and rows[2][0]["value"] == changed["liu2023"]["lr"]
