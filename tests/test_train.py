"""The one training loop: determinism, resume after a kill, early stopping, bad checkpoints, DDP."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from common.train import CheckpointError, TrainConfig, fit

HERE = Path(__file__).parent


def problem():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 6, generator=g)
    y = (x[:, :1] * 2 - x[:, 1:2]).tanh() + 0.05 * torch.randn(200, 1, generator=g)
    return TensorDataset(x, y), x[:50], y[:50]


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))


def validation_mse(xv, yv):
    """evaluate(): the MSE on (xv, yv) sent to the model's device (fit() puts it on the GPU when there is one)."""
    def evaluate(mm):
        device = next(mm.parameters()).device
        return {"mse": float(torch.nn.functional.mse_loss(mm(xv.to(device)), yv.to(device)))}
    return evaluate


def run(out, epochs=6, hooks=(), **kw):
    data, xv, yv = problem()
    m = model()
    cfg = TrainConfig(epochs=epochs, batch_size=16, lr=1e-2, seed=3, monitor="mse", mode="min", **kw)
    loss = lambda net, b: torch.nn.functional.mse_loss(net(b[0]), b[1])  # noqa: E731
    return m, fit(m, data, loss, validation_mse(xv, yv), cfg, out, on_epoch_end=list(hooks), progress=False)


def weights(m):
    return torch.cat([p.detach().flatten() for p in m.state_dict().values()])


def test_same_seed_same_weights_and_training_helps(tmp_path):
    m1, r1 = run(tmp_path / "a")
    m2, r2 = run(tmp_path / "b")
    assert torch.equal(weights(m1), weights(m2))
    assert r1["history"][-1]["mse"] < r1["history"][0]["mse"]
    rows = (tmp_path / "a" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,lr,mse") and len(rows) == 7
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["best_epoch"] == r1["best"]["epoch"]


def test_resume_after_kill_gives_the_same_result(tmp_path):
    full, r_full = run(tmp_path / "full")

    def kill(state, **_):
        if state.epoch == 4:
            raise KeyboardInterrupt     # dies before epoch 4's checkpoint is written
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", hooks=[kill])
    resumed, r_resumed = run(tmp_path / "killed")
    assert torch.equal(weights(full), weights(resumed))
    assert r_full["best"] == r_resumed["best"]


def test_early_stop_keeps_the_best_epoch(tmp_path):
    data, xv, yv = problem()
    scores = iter([0.5, 0.4, 0.45, 0.6, 0.7, 0.2])
    m = model()
    cfg = TrainConfig(epochs=6, batch_size=32, lr=1e-3, monitor="ccc", mode="max", early_stop=2)
    r = fit(m, data, lambda net, b: torch.nn.functional.mse_loss(net(b[0]), b[1]),
            lambda mm: {"ccc": next(scores)}, cfg, tmp_path, progress=False)
    assert [row["epoch"] for row in r["history"]] == [1, 2, 3]     # 0.4, 0.45 never beat 0.5
    assert r["best"]["epoch"] == 1 and r["best"]["ccc"] == 0.5


def test_corrupt_checkpoint_is_named(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="checkpoint.pt.*delete it"):
        run(tmp_path)


def test_two_gloo_processes_match_one(tmp_path):
    # 2 gloo ranks with the model on the CPU, also on a machine with one GPU (2 nccl ranks cannot share it)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AFFECT_DDP_BACKEND": "gloo", "CUDA_VISIBLE_DEVICES": "",
           # the helper imports common
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    single = tmp_path / "single"
    single.mkdir()
    subprocess.run([sys.executable, str(HERE / "helpers" / "ddp_fit.py"), str(single)], check=True, env=env)
    double = tmp_path / "double"
    double.mkdir()
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                    str(HERE / "helpers" / "ddp_fit.py"), str(double)], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    one = json.loads((single / "result.json").read_text())["mse"]
    two = json.loads((double / "result.json").read_text())["mse"]
    assert one < 0.05                                   # it learned (noise variance is 0.01)
    assert abs(one - two) < 0.1 * one + 1e-3, (one, two)


def test_resume_restores_every_rng_a_step_draws_from(tmp_path):
    """A loss that draws from numpy's and Python's global RNGs (as dataset augmentations do)
    still resumes exactly: the checkpoint carries those states, and CUDA's where there is one."""
    import random

    import numpy as np

    def noisy(net, b):
        jitter = float(np.random.normal(0, 0.1)) + random.uniform(-0.1, 0.1)
        return torch.nn.functional.mse_loss(net(b[0]) + jitter, b[1])

    def train(out, hooks=()):
        data, xv, yv = problem()
        m = model()
        cfg = TrainConfig(epochs=5, batch_size=16, lr=1e-2, seed=3, monitor="mse")
        fit(m, data, noisy, validation_mse(xv, yv), cfg, out, on_epoch_end=list(hooks), progress=False)
        return m

    full = train(tmp_path / "full")

    def kill(state, **_):
        if state.epoch == 3:
            np.random.seed(99), random.seed(99)       # a fresh process would start elsewhere
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "killed", hooks=[kill])
    assert torch.equal(weights(full), weights(train(tmp_path / "killed")))
    ckpt = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert set(ckpt["rng"]) == {"torch", "cuda", "numpy", "python"}


def test_runtime_switches_come_from_the_train_section(tmp_path):
    from common.train import with_runtime_settings
    import yaml
    raw = yaml.safe_load((HERE.parent / "params.yaml").read_text())     # a whole base: every key is checked
    raw.update(profile="default", train={"compile": True, "deterministic": True, "channels_last": False})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    cfg = with_runtime_settings(TrainConfig(deterministic=False), tmp_path / "params.yaml")
    assert (cfg.compile, cfg.deterministic, cfg.channels_last) == (True, False, False)   # explicit wins
    cfg = with_runtime_settings(TrainConfig(), tmp_path / "absent.yaml")
    assert (cfg.compile, cfg.deterministic, cfg.channels_last) == (False, False, True)   # built-in defaults


def test_determinism_switch_is_scoped_to_the_run():
    from common.train import determinism
    before = torch.are_deterministic_algorithms_enabled()
    with determinism(True, torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
        assert not torch.backends.cudnn.benchmark
    assert torch.are_deterministic_algorithms_enabled() == before


def test_nccl_only_with_a_gpu_per_local_rank(monkeypatch):
    """Two ranks on one GPU cannot share nccl (the issue-11 failure): they fall back to gloo on the CPU."""
    from common.train import ddp_backend, training_device
    monkeypatch.delenv("AFFECT_DDP_BACKEND", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert ddp_backend() == "gloo" and training_device(2).type == "cpu"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert ddp_backend() == "nccl" and training_device(1) == torch.device("cuda", 0)
    monkeypatch.setenv("AFFECT_DDP_BACKEND", "gloo")
    assert ddp_backend() == "gloo"


def test_compile_falls_back_to_eager(monkeypatch):
    from common.train import compiled
    net = torch.nn.Linear(2, 1)
    assert compiled(net, False) is net

    def broken(*_, **__):
        raise RuntimeError("no C++ compiler")
    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(UserWarning, match="training eagerly"):
        assert compiled(net, True) is net


def test_network_stage_under_torchrun_pretrains_data_parallel_and_extracts_once(tiny_params, tmp_path):
    """`torchrun --nproc_per_node 2 -m common.features.ecapatdnn pretrain extract`: both ranks
    pre-train through DDP (gloo here, nccl on GPUs), rank 0 alone extracts and prints."""
    import yaml

    from common.data.affwild2 import SPLITS, read_split
    params = json.loads(json.dumps(tiny_params))
    params["features"]["root"] = str(tmp_path / "features")
    params["ecapatdnn"]["model_dir"] = str(tmp_path / "models")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({**params, "profile": "default"}))    # resolved: no profile file
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AFFECT_DDP_BACKEND": "gloo", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(HERE.parent)}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29534", "-m", "common.features.ecapatdnn", "pretrain", "extract",
                          "--params", str(params_file)], env=env, capture_output=True, text=True, cwd=HERE.parent)
    assert out.returncode == 0, out.stderr[-600:] + out.stdout[-1500:]
    assert out.stdout.count('"extract"') == 1 and out.stdout.count('"pretrain"') == 1   # rank 0 speaks
    summary = json.loads((tmp_path / "features" / "ecapatdnn.json").read_text())
    videos = [v for s in SPLITS for v in read_split(params["data"]["root"], s)]
    assert summary["audio_files"] == len(videos) - 1 and summary["windows"] > 0      # one shared wav
    assert all((Path(summary["folder"]) / f"{v.video}.npy").is_file() for v in videos)
    assert (tmp_path / "models" / "ecapatdnn.pt").is_file()
    assert json.loads((tmp_path / "models" / "ecapatdnn.json").read_text())["source"].startswith("pre-trained")


def kill_at_epoch_2(state, **_):
    if state.epoch == 2:
        raise KeyboardInterrupt          # after epoch 1's checkpoint, before epoch 2's


def test_a_damaged_checkpoint_is_refused_not_resumed(tmp_path):
    """16 zeroed bytes inside one weight tensor load without complaint from torch.load: the
    checksum written with the checkpoint catches them."""
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, hooks=[kill_at_epoch_2])
    path = tmp_path / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"]["0.weight"].view(-1)[:4] = 0.0             # 16 bytes of float32
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: its contents do not match the checksum.*delete it"):
        run(tmp_path)


def test_a_checkpoint_of_another_network_names_the_file_and_the_keys(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, hooks=[kill_at_epoch_2])
    data, xv, yv = problem()
    other = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    before = [p.clone() for p in other.parameters()]
    cfg = TrainConfig(epochs=3, batch_size=16, lr=1e-2, seed=3, monitor="mse")
    loss = lambda net, b: torch.nn.functional.mse_loss(net(b[0]), b[1])  # noqa: E731
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: holds another network than this run's "
                                              r"\(missing 2.weight; missing 2.bias; unexpected 3.weight\)"):
        fit(other, data, loss, validation_mse(xv, yv), cfg, tmp_path, progress=False)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(before, other.parameters()))   # nothing copied


def test_a_checkpoint_missing_a_key_is_named(tmp_path):
    torch.save({"model": {}, "state": "{}"}, tmp_path / "checkpoint.pt")       # e.g. another program's file
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: is not a checkpoint of this training loop "
                                              r"\(missing optimizer, scheduler, best_weights, rng, sha256\)"):
        run(tmp_path)
