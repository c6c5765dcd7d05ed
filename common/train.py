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
* DistributedDataParallel when launched with `torchrun` (nccl with one GPU per process, else
  gloo), with the per-process batch = batch_size / world size so the optimisation matches one
  process;
* on a GPU: bfloat16 autocast, conv nets in channels_last with cudnn.benchmark, fused Adam, the
  loss summed on the device and read once per epoch (no host sync per step), pinned memory for
  DataLoader workers, and an optional torch.compile that falls back to eager;
* with `deterministic`, deterministic kernels and a fixed cuBLAS workspace, and the CUDA RNG in
  the checkpoint, so a resumed GPU run also equals an uninterrupted one.
Checkpoints are written to a temporary name and renamed, and loaded with weights_only=True.

`compile`, `deterministic` and `channels_last` are how a run executes, not what it learns: left
None they come from params.yaml's `train` section (the profile's), which no stage lists as a
dependency, since on the CPU none of them changes a result.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import json
import math
import os
import random
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from common import runs
from common.files import atomic_torch_save, atomic_write_json, atomic_write_text
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
    num_workers: int = 0             # DataLoader workers (pinned memory on CUDA)
    # How the run executes (None = params.yaml `train.<key>` of the active profile):
    compile: bool | None = None      # torch.compile the model; a graph that fails runs eagerly
    deterministic: bool | None = None  # deterministic kernels: GPU resume == uninterrupted
    channels_last: bool | None = None  # NHWC conv nets on CUDA (tensor cores); no effect on CPU
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


RUNTIME_DEFAULTS = {"compile": False, "deterministic": False, "channels_last": True}


def with_runtime_settings(cfg: TrainConfig, params_path: str | Path = "params.yaml") -> TrainConfig:
    """`cfg` with its None run-time switches taken from params.yaml's `train` section."""
    missing = [k for k in RUNTIME_DEFAULTS if getattr(cfg, k) is None]
    if not missing:
        return cfg
    section = dict(RUNTIME_DEFAULTS)
    if Path(params_path).is_file():
        from common.params import load_params
        section.update(load_params(params_path).get("train", {}))
    return replace(cfg, **{k: bool(section[k]) for k in missing})


def ddp_backend() -> str:
    """nccl when every local process has a GPU of its own, else gloo (AFFECT_DDP_BACKEND overrides):
    nccl cannot run two ranks on one GPU."""
    chosen = os.environ.get("AFFECT_DDP_BACKEND")
    if chosen:
        return chosen
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= local_world else "gloo"


def distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(ddp_backend())
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def training_device(world: int) -> torch.device:
    """This process's device: its own GPU (LOCAL_RANK) when there is one, else the CPU."""
    if not torch.cuda.is_available() or (world > 1 and ddp_backend() != "nccl"):
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())


@contextlib.contextmanager
def determinism(on: bool, device: torch.device):
    """Deterministic kernels for the run (restored after): cuDNN picks fixed algorithms and cuBLAS
    a fixed workspace (set before its first use; PyTorch's "Reproducibility" notes). Off, cuDNN
    benchmarks its kernels once per shape, which is what makes conv nets fast on a GPU. Ops with
    no deterministic kernel warn (warn_only) rather than stop a paper-scale run."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = device.type == "cuda" and not on
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2], before[3]


def has_conv2d(model: torch.nn.Module) -> bool:
    return any(p.dim() == 4 for p in model.parameters())


def compiled(net: torch.nn.Module, on: bool) -> torch.nn.Module:
    """torch.compile(net), where a graph that Dynamo or Inductor cannot compile runs eagerly."""
    if not on:
        return net
    try:
        import torch._dynamo
        torch._dynamo.config.suppress_errors = True
        return torch.compile(net)
    except Exception as e:                            # no compiler tool chain, unsupported platform
        warnings.warn(f"train.compile: torch.compile is unavailable ({e}); training eagerly")
        return net


def make_optimizer(params, cfg: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam; on CUDA the fused kernel (one launch for all parameters instead of several per tensor)."""
    return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                            fused=device.type == "cuda")


def train_step(net, optimizer, loss_fn: Callable, batch, names: tuple = (), amp: bool = False,
               grad_clip: float = 0.0, clip_params=None) -> torch.Tensor:
    """One optimiser step on one (sub-)batch; returns the loss detached and still on the device,
    so the caller can sum it there instead of waiting for the GPU every step."""
    device_type = "cuda" if amp else "cpu"
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
        loss = loss_fn(net, batch, *names)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(clip_params, grad_clip)
    optimizer.step()
    return loss.detach()


def _improved(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value < best if mode == "min" else value > best


def rng_states() -> dict:
    """Every RNG a training step may draw from, in types that weights_only=True loads."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": random.getstate()}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "numpy" in states:
        name, keys, *rest = states["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "python" in states:
        random.setstate(states["python"])


CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "best_weights", "rng", "state", "sha256")


def payload_sha256(payload: dict) -> str:
    """sha256 over every tensor's bytes and every other value of a checkpoint, in key order: a
    flipped byte inside a weight (which torch.load reads without complaint) changes it."""
    digest = hashlib.sha256()

    def feed(value):
        if torch.is_tensor(value):
            t = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            for k in sorted(value, key=str):
                digest.update(str(k).encode())
                feed(value[k])
        elif isinstance(value, (list, tuple)):
            for v in value:
                feed(v)
        else:
            digest.update(repr(value).encode())
    feed({k: v for k, v in payload.items() if k != "sha256"})
    return digest.hexdigest()


# How a run executes, not what it learns: a checkpoint made under other values of these resumes.
EXECUTION_FIELDS = ("compile", "deterministic", "channels_last", "num_workers")


def run_identity(cfg: TrainConfig, key: dict | None) -> str:
    """The hash of what a run learns from: cfg's training fields and the caller's key (the data,
    the network, the params section it was built from). A checkpoint resumes only under the same."""
    fields = {k: v for k, v in asdict(cfg).items() if k not in EXECUTION_FIELDS}
    return runs.key_hash({"train": fields, "key": key})


def save_checkpoint(path: Path, model, optimizer, scheduler, state: TrainState, best_weights,
                    identity: str = "") -> None:
    payload = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "best_weights": best_weights, "rng": rng_states(),
        "state": json.dumps(asdict(state)), "identity": identity,
    }
    payload["sha256"] = payload_sha256(payload)
    atomic_torch_save(payload, path)


def load_checkpoint(path: Path) -> dict:
    """The checkpoint at `path`, whole and unchanged since it was written, or a CheckpointError
    that names the file, what is wrong, and the fix."""
    fix = "delete it to train from scratch"
    try:
        ckpt = load_weights_file(path)
    except UnreadableWeights as e:
        raise CheckpointError(f"{path}: cannot be read ({e}). It is corrupt or from another version; {fix}.") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: is not a checkpoint of this training loop (missing {', '.join(missing)}); "
                              f"it was written by another version or another program: {fix}.")
    if payload_sha256(ckpt) != ckpt["sha256"]:
        raise CheckpointError(f"{path}: its contents do not match the checksum written with it (the file was "
                              f"damaged after it was saved); {fix}.")
    return ckpt


def restore(ckpt_path: Path, model, optimizer, scheduler, identity: str = "") -> tuple | None:
    """Load a checkpoint into model / optimizer / scheduler and the RNGs; (state, best weights).
    A checkpoint of another network is refused before anything is copied; one written by a run of
    another configuration (run_identity) is not resumed: None, and the run starts from the beginning."""
    ckpt = load_checkpoint(ckpt_path)
    own, saved = model.state_dict(), ckpt["model"]
    problems = ([f"missing {k}" for k in own if k not in saved] + [f"unexpected {k}" for k in saved if k not in own]
                + [f"{k}: {tuple(saved[k].shape)} here {tuple(own[k].shape)}" for k in own
                   if k in saved and saved[k].shape != own[k].shape])
    fix = "delete it, or give this run its own output folder"
    if problems:
        raise CheckpointError(f"{ckpt_path}: holds another network than this run's ({'; '.join(problems[:3])}); {fix}.")
    if ckpt.get("identity", "") != identity:
        print(f"{ckpt_path}: written by a run of another configuration (its settings or data); "
              "training from the first epoch instead of resuming it")
        return None
    try:
        model.load_state_dict(saved)
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{ckpt_path}: does not fit this run's optimiser ({str(e).splitlines()[0][:300]}); "
                              f"{fix}.") from None
    if scheduler is not None and ckpt["scheduler"]:
        scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_states(ckpt["rng"])
    return TrainState(**json.loads(ckpt["state"])), ckpt["best_weights"]


def process_batch(cfg: TrainConfig, world: int) -> int:
    """Each process's batch, batch_size / world, so that DDP optimises as one process would.

    No silent clamping: a batch_size under 1, under the world size or not a multiple of it, and
    epochs under 1, are refused with the fix (max(1, 0 // world) used to train batch_size 0 with
    batch 1, and epochs -1 ended in a bare StopIteration)."""
    if cfg.epochs < 1:
        raise ValueError(f"TrainConfig.epochs = {cfg.epochs}: at least 1 epoch is needed; set the params' epochs >= 1.")
    if cfg.batch_size < 1 or cfg.batch_size % world:
        raise ValueError(f"TrainConfig.batch_size = {cfg.batch_size} cannot be split over {world} process(es): "
                         f"set the params' batch_size to a positive multiple of {world}.")
    return cfg.batch_size // world


def fit(model: torch.nn.Module, train_set: Dataset, loss_fn: Callable, evaluate: Callable,
        cfg: TrainConfig, out_dir: str | Path, collate_fn=None, params: list | None = None,
        on_epoch_end: list[Callable] = (), progress: bool = True, key: dict | None = None) -> dict:
    """Train `model` and return {"best": metrics of the best epoch, "history": per-epoch rows}.

    `out_dir` receives checkpoint.pt (every epoch, for resuming), best.pt (the best weights),
    metrics.csv (one row per epoch, for `dvc plots`) and summary.json. The checkpoint resumes only
    a run of the same cfg and `key` (what else shapes the run: its data, its network's settings).
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = with_runtime_settings(cfg)
    rank, world = distributed()
    device = training_device(world)
    seed_everything(cfg.seed)
    with determinism(cfg.deterministic, device):
        model.to(device)
        if device.type == "cuda" and cfg.channels_last and has_conv2d(model):
            model.to(memory_format=torch.channels_last)
        net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
        net = compiled(net, cfg.compile)
        optimizer = make_optimizer(params if params is not None else
                                   [p for p in model.parameters() if p.requires_grad], cfg, device)
        clipped = list(model.parameters())           # all of them: hooks may release frozen layers
        if cfg.plateau_patience:
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=cfg.mode, factor=cfg.plateau_factor, patience=cfg.plateau_patience,
                min_lr=cfg.min_lr)
        elif cfg.step_lr_epochs:
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_lr_epochs, cfg.step_lr_gamma)
        else:
            scheduler = None
        amp = cfg.amp and device.type == "cuda"

        state, best_weights = TrainState(), copy.deepcopy(model.state_dict())
        ckpt_path, identity = out_dir / "checkpoint.pt", run_identity(cfg, key)
        resumed = restore(ckpt_path, model, optimizer, scheduler, identity) if ckpt_path.exists() else None
        if resumed is not None:                          # resume after a kill
            state, best_weights = resumed

        per_process_batch = process_batch(cfg, world)
        while state.epoch < cfg.epochs and not state.stop:
            epoch = state.epoch
            # The batch order depends only on (seed, epoch): resuming replays the same epochs.
            order = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
            sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=cfg.seed * 1000 + epoch) \
                if world > 1 else None
            # Under DDP a rank's last batch can hold one sample where the single process had
            # `world` of them: BatchNorm cannot train on one, so every rank drops it alike.
            lone_tail = sampler is not None and len(sampler) % per_process_batch == 1
            loader = DataLoader(train_set, per_process_batch, shuffle=sampler is None, sampler=sampler,
                                generator=order if sampler is None else None, collate_fn=collate_fn,
                                num_workers=cfg.num_workers, pin_memory=device.type == "cuda" and cfg.num_workers > 0,
                                drop_last=lone_tail)
            net.train()
            # Summed on the device and read once per epoch: float(loss) each step would make the
            # host wait for the GPU to finish every step before it can queue the next one.
            total, count = torch.zeros((), dtype=torch.float64, device=device), 0
            for batch in tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                              disable=None if progress and rank == 0 else True):    # None: bars only on a terminal
                batch = _to(batch, device)
                steps = [(batch[name], (name,)) for name in cfg.substeps] if cfg.substeps else [(batch, ())]
                for sub_batch, names in steps:
                    total += train_step(net, optimizer, loss_fn, sub_batch, names, amp, cfg.grad_clip, clipped)
                    count += 1

            net.eval()
            with torch.no_grad():
                metrics = dict(evaluate(model))
            metrics = {"epoch": epoch + 1, "train_loss": float(total) / max(count, 1),
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
                save_checkpoint(ckpt_path, model, optimizer, scheduler, state, best_weights, identity)
                _write_history(out_dir / "metrics.csv", state.history)

    model.load_state_dict(best_weights)
    best = next(row for row in state.history if row["epoch"] == state.best_epoch)
    if rank == 0:
        atomic_torch_save(best_weights, out_dir / "best.pt")
        atomic_write_json(out_dir / "summary.json",
                          {"best_epoch": state.best_epoch, "best": best, "epochs_run": state.epoch,
                           "config": asdict(cfg)})
    return {"best": best, "history": state.history}


def _to(batch, device):
    """The batch on `device`. Image batches stay NCHW: with channels_last weights cuDNN returns
    channels_last activations anyway, and a channels_last input would break a loss's .view()."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


def _write_history(path: Path, rows: list) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO()
    w = csv.DictWriter(text, keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, text.getvalue())
