"""Train a small regression with common.train.fit; launched by test_train.py under torchrun or alone."""
import json
import sys

import torch
from torch.utils.data import TensorDataset

from common.train import TrainConfig, fit


def main(out_dir: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    w = torch.randn(8, 1, generator=g)
    y = x @ w + 0.1 * torch.randn(512, 1, generator=g)
    xv, yv = x[:128] + 0.0, y[:128] + 0.0
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    cfg = TrainConfig(epochs=30, batch_size=64, lr=0.05, seed=0, monitor="mse", mode="min")
    loss = lambda net, b: torch.nn.functional.mse_loss(net(b[0]), b[1])  # noqa: E731
    # the validation data follow the model to its device (fit() puts it on a GPU when there is one)
    evaluate = lambda m: {"mse": float(torch.nn.functional.mse_loss(m(xv.to(m.weight.device)),  # noqa: E731
                                                                    yv.to(m.weight.device)))}
    result = fit(model, TensorDataset(x, y), loss, evaluate, cfg, out_dir, progress=False)
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        with open(f"{out_dir}/result.json", "w") as f:
            json.dump(result["best"], f)


if __name__ == "__main__":
    main(sys.argv[1])
