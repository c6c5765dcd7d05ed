"""One training loop for all four papers.

Readable top to bottom: for each epoch, train on every batch, evaluate, log a row, step the
LR scheduler on the monitored metric, keep the best weights, checkpoint, maybe stop early.
What differs between papers comes in as functions: `loss_fn(model, batch)` returns the loss of
one batch, `evaluate(model)` returns a dict of validation metrics, and `on_epoch_end` hooks may
change the model or optimiser (Zhang's progressive release of backbone layers).

Properties the tests check:
* seeded and deterministic on the CPU: the same config gives the same weights;
* a run killed after any epoch and started again resumes from its checkpoint and ends with the
  same result as an uninterrupted run (the batch order of epoch e depends only on seed and e);
* DistributedDataParallel when launched with `torchrun` (gloo on CPU, nccl on GPU), with the
  per-process batch = batch_size / world size so the optimisation matches one process;
* AMP (bfloat16 autocast) on a GPU.
Checkpoints are written to a temporary name and renamed, and loaded with weights_only=True.
"""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from common.weights import UnreadableWeights, load_weights_file


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    seed: int = 0
    monitor: str = "loss"            # key of evaluate()'s dict that selects the best epoch
    mode: str = "min"                # "min" or "max"
    early_stop: int = 0              # epochs without improvement before stopping; 0 = never
    plateau_patience: int = 0        # ReduceLROnPlateau patience; 0 = constant LR
    plateau_factor: float = 0.1
    min_lr: float = 0.0
    step_lr_epochs: int = 0          # StepLR step size (Liu); 0 = none
    step_lr_gamma: float = 0.1
    grad_clip: float = 0.0
    amp: bool = True                 # only takes effect on CUDA
    num_workers: int = 0
    # Round-robin sub-steps (Jeong Algorithms 1-2): when set, each batch is a dict with one
    # sub-batch per name, and every sub-batch gets its own optimiser step, in this order, with
    # loss_fn(model, sub_batch, name). Empty = one step per batch with loss_fn(model, batch).
    substeps: tuple = ()
    extra: dict = field(default_factory=dict)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the file and the fix."""


@dataclass
class TrainState:
    epoch: int = 0                   # epochs completed
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list = field(default_factory=list)
    stop: bool = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _improved(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value < best if mode == "min" else value > best


def save_checkpoint(path: Path, model, optimizer, scheduler, state: TrainState, best_weights) -> None:
    payload = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "best_weights": best_weights, "torch_rng": torch.get_rng_state(),
        "state": json.dumps(asdict(state)),
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    try:
        return load_weights_file(path)
    except UnreadableWeights as e:
        raise CheckpointError(f"{path}: cannot be read ({e}). It is corrupt or "
                              "from another version; delete it to train from scratch.") from None


def fit(model: torch.nn.Module, train_set: Dataset, loss_fn: Callable, evaluate: Callable,
        cfg: TrainConfig, out_dir: str | Path, collate_fn=None, params: list | None = None,
        on_epoch_end: list[Callable] = (), progress: bool = True) -> dict:
    """Train `model` and return {"best": metrics of the best epoch, "history": per-epoch rows}.

    `out_dir` receives checkpoint.pt (every epoch, for resuming), best.pt (the best weights),
    metrics.csv (one row per epoch, for `dvc plots`) and summary.json.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world = distributed()
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu")
    seed_everything(cfg.seed)
    model.to(device)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.Adam(params if params is not None else
                                 [p for p in model.parameters() if p.requires_grad],
                                 lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.plateau_patience:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=cfg.mode, factor=cfg.plateau_factor, patience=cfg.plateau_patience,
            min_lr=cfg.min_lr)
    elif cfg.step_lr_epochs:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_lr_epochs, cfg.step_lr_gamma)
    else:
        scheduler = None
    use_amp = cfg.amp and device.type == "cuda"

    state, best_weights = TrainState(), copy.deepcopy(model.state_dict())
    ckpt_path = out_dir / "checkpoint.pt"
    if ckpt_path.exists():                           # resume after a kill
        ckpt = load_checkpoint(ckpt_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt["scheduler"]:
            scheduler.load_state_dict(ckpt["scheduler"])
        best_weights = ckpt["best_weights"]
        torch.set_rng_state(ckpt["torch_rng"])
        state = TrainState(**json.loads(ckpt["state"]))

    per_process_batch = max(1, cfg.batch_size // world)
    while state.epoch < cfg.epochs and not state.stop:
        epoch = state.epoch
        # The batch order depends only on (seed, epoch): resuming replays the same epochs.
        order = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=cfg.seed * 1000 + epoch) \
            if world > 1 else None
        loader = DataLoader(train_set, per_process_batch, shuffle=sampler is None, sampler=sampler,
                            generator=order if sampler is None else None, collate_fn=collate_fn,
                            num_workers=cfg.num_workers, drop_last=False)
        net.train()
        total, count = 0.0, 0
        for batch in tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                          disable=not progress or rank != 0):
            batch = _to(batch, device)
            steps = [(batch[name], (name,)) for name in cfg.substeps] if cfg.substeps else [(batch, ())]
            for sub_batch, name in steps:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    loss = loss_fn(net, sub_batch, *name)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                total, count = total + float(loss.detach()), count + 1

        net.eval()
        with torch.no_grad():
            metrics = dict(evaluate(model))
        metrics = {"epoch": epoch + 1, "train_loss": total / max(count, 1),
                   "lr": optimizer.param_groups[0]["lr"], **metrics}
        if cfg.monitor not in metrics:
            raise KeyError(f"monitor '{cfg.monitor}' is not among the metrics {sorted(metrics)}")
        value = float(metrics[cfg.monitor])
        if not math.isfinite(value):
            raise FloatingPointError(f"epoch {epoch + 1}: {cfg.monitor} = {value}; lower the learning rate")
        if _improved(value, state.best, cfg.mode):
            state.best, state.best_epoch, state.bad_epochs = value, epoch + 1, 0
            best_weights = copy.deepcopy(model.state_dict())
        else:
            state.bad_epochs += 1
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(value)
        elif scheduler is not None:
            scheduler.step()
        state.history.append(metrics)
        state.epoch = epoch + 1
        for hook in on_epoch_end:
            hook(model=model, optimizer=optimizer, state=state, best_weights=best_weights, cfg=cfg)
        if cfg.early_stop and state.bad_epochs >= cfg.early_stop:
            state.stop = True
        if rank == 0:
            save_checkpoint(ckpt_path, model, optimizer, scheduler, state, best_weights)
            _write_history(out_dir / "metrics.csv", state.history)

    model.load_state_dict(best_weights)
    best = next(row for row in state.history if row["epoch"] == state.best_epoch)
    if rank == 0:
        tmp = out_dir / ".best.pt.tmp"
        torch.save(best_weights, tmp)
        os.replace(tmp, out_dir / "best.pt")
        (out_dir / "summary.json").write_text(json.dumps(
            {"best_epoch": state.best_epoch, "best": best, "epochs_run": state.epoch,
             "config": asdict(cfg)}, indent=2, default=str) + "\n")
    return {"best": best, "history": state.history}


def _to(batch, device):
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


def _write_history(path: Path, rows: list) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, keys, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
