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


def run(out, epochs=6, hooks=(), **kw):
    data, xv, yv = problem()
    m = model()
    cfg = TrainConfig(epochs=epochs, batch_size=16, lr=1e-2, seed=3, monitor="mse", mode="min", **kw)
    loss = lambda net, b: torch.nn.functional.mse_loss(net(b[0]), b[1])  # noqa: E731
    evaluate = lambda mm: {"mse": float(torch.nn.functional.mse_loss(mm(xv), yv))}  # noqa: E731
    return m, fit(m, data, loss, evaluate, cfg, out, on_epoch_end=list(hooks), progress=False)


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
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
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
