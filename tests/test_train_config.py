"""common.train.fit refuses what it used to clamp or crash on: batch_size 0, a batch smaller than (or
not a multiple of) the processes, epochs under 1 (the params-level ranges are in tests/test_params.py)."""
import pytest
import torch
from torch.utils.data import TensorDataset

from common.train import TrainConfig, fit, process_batch


def _fit(tmp_path, **cfg):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 3), torch.randn(32, 1))
    model = torch.nn.Linear(3, 1)
    loss = lambda net, b: torch.nn.functional.mse_loss(net(b[0]), b[1])  # noqa: E731
    config = TrainConfig(**{"epochs": 1, "batch_size": 8, "lr": 1e-2, "monitor": "loss", **cfg})
    return fit(model, data, loss, lambda m: {"loss": 0.0}, config, tmp_path, progress=False)


@pytest.mark.parametrize("cfg, message", [
    ({"batch_size": 0},
     r"batch_size = 0 cannot be split over 1 process\(es\): set the params' batch_size to a positive"),
    ({"epochs": -1}, r"epochs = -1: at least 1 epoch is needed"),       # was a bare StopIteration
    ({"epochs": 0}, r"epochs = 0: at least 1 epoch is needed"),
])
def test_fit_refuses_instead_of_clamping(tmp_path, cfg, message):
    with pytest.raises(ValueError, match=message):
        _fit(tmp_path, **cfg)
    assert not (tmp_path / "summary.json").exists()               # nothing that looks like a result
    assert _fit(tmp_path / "ok")["best"]["epoch"] == 1


def test_the_batch_is_split_over_processes_without_rounding():
    assert process_batch(TrainConfig(batch_size=16), 2) == 8
    for size, world in [(1, 2), (3, 2), (0, 4)]:                 # max(1, 1 // 2) used to give 1 per process
        with pytest.raises(ValueError, match=f"batch_size = {size} cannot be split over {world}.*multiple of {world}"):
            process_batch(TrainConfig(batch_size=size), world)
