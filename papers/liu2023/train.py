"""Liu, Sun et al. 2023: how a run trains, as the paper writes it (`method: paper`) and as the
team's released code runs it (`method: released`, situAI/ABAW2023_VA-EXPR_Situ-RUCAIM3@574c2e6).

`Method.of(params["liu2023"])` reads `liu2023.method` once; every choice that differs between the
two is one field here or one entry of a {"paper": ..., "released": ...} dict beside its twin
(model.py: the input layer's bias and the GRU; data.py: normalisation and padding; here: the loss,
the epochs and the LR schedule). Each row of papers/liu2023/ledger.yaml names its twin.

* Loss (Sec. 3.5, Eq. 10): L = alpha (1 - CCC_v) + beta (1 - CCC_a) over the frames of a batch.
  paper: population variances, the padded frames of a video's last segment left out.
  released: n - 1 variances and Pearson's rho (torch.std, core/loss/loss.py:13-25), padded frames
  included (they repeat the last frame and its label, core/data/SequenceData.py:137-146), one CCC
  per GPU batch: run_va.sh launches 2 processes with 16 segments each (config/va.yaml:34) and DDP
  averages their gradients, i.e. the loss is the mean of the 2 per-GPU losses (ledger:
  loss_per_gpu_batch).
* Epochs (Sec. 4.2): 30; released 25 (config/va.yaml:60) (ledger: epochs).
* LR: the paper names Adam and no schedule. paper: torch StepLR stepped after each epoch, so the LR
  drops after `step_lr_epochs` epochs. released: the code calls lr_scheduler.step(t) with the
  0-based epoch t at the end of epoch t (core/solver/base_solver.py:186), which sets the closed form
  lr0 * gamma ** (t // step): the drop comes one epoch later (with step 20, the 22nd epoch, not the
  21st) (ledger: lr_drop_epoch).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from common.losses import ccc_loss

METHODS = ("paper", "released")
RELEASED_GPUS = 2                # run_va.sh: torch.distributed.launch --nproc_per_node=2


@dataclass(frozen=True)
class Method:
    """The choices `liu2023.method` makes, read once from the params section."""
    name: str
    epochs: int                  # paper: liu2023.epochs; released: liu2023.released.epochs
    step_lr_epochs: int
    step_lr_gamma: float
    normalise: bool              # z-score the features (paper: the paper is silent; released: no)
    pad_in_loss: bool            # the repeated last frames count in the loss (released)
    segments_per_item: int       # segments per training item: chunk_segments (paper), 1 (released)
    batch_size: int              # items per optimiser step
    later_ties: bool             # a validation CCC equal to the best so far moves the best epoch (released: >=)
    amp: bool                    # mixed precision on CUDA (fit's default); the code trains in float32

    @staticmethod
    def of(lp: dict) -> "Method":
        name = lp.get("method", "paper")
        if name not in METHODS:
            raise ValueError(f"params.yaml liu2023.method is {name!r}; use one of {METHODS}")
        if name == "paper":
            return Method(name, lp["epochs"], lp["step_lr_epochs"], lp["step_lr_gamma"], normalise=True,
                          pad_in_loss=False, segments_per_item=lp["chunk_segments"], batch_size=lp["batch_size"],
                          later_ties=False, amp=True)
        rel = lp.get("released")
        if not isinstance(rel, dict) or not {"epochs", "step_lr_epochs"} <= set(rel):
            raise ValueError("params.yaml liu2023.released must hold epochs and step_lr_epochs (the code's 25 and "
                             "20, scaled in the smaller profiles) for liu2023.method: released")
        # One segment per item as the code's SequenceData; the same frames per step as the paper method.
        return Method(name, rel["epochs"], rel["step_lr_epochs"], lp["step_lr_gamma"], normalise=False,
                      pad_in_loss=True, segments_per_item=1, batch_size=lp["batch_size"] * lp["chunk_segments"],
                      later_ties=True, amp=False)


# --------------------------------------------------------------------------- Eq. 10, both ways

def eq10_loss(alpha: float, beta: float):
    """paper: Eq. 10 over the valid frames of the flattened batch, population variances."""
    def loss_fn(net, batch):
        pred, y, mask = net(batch["x"]), batch["y"], batch["mask"]
        lv = ccc_loss(pred[..., 0].reshape(-1), y[..., 0].reshape(-1), mask=mask.reshape(-1))
        la = ccc_loss(pred[..., 1].reshape(-1), y[..., 1].reshape(-1), mask=mask.reshape(-1))
        return alpha * lv + beta * la                                   # Eq. 10
    return loss_fn


def released_eq10_loss(alpha: float, beta: float, gpus: int = RELEASED_GPUS):
    """released: Eq. 10 with n - 1 variances per GPU batch, averaged over the GPUs (ledger:
    loss_per_gpu_batch). The batch's items are split into `gpus` consecutive groups, as a
    DistributedSampler deals them out; under our own DDP each rank already holds one share, so it
    splits into gpus / world. The padded frames carry mask True here (data.py, ledger: padding_in_loss)."""
    def loss_fn(net, batch):
        pred, y, mask = net(batch["x"]), batch["y"], batch["mask"]
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        groups = max(1, min(len(pred), gpus // world))
        losses = []
        for p, t, m in zip(pred.chunk(groups), y.chunk(groups), mask.chunk(groups)):
            lv = ccc_loss(p[..., 0].reshape(-1), t[..., 0].reshape(-1), mask=m.reshape(-1), unbiased=True)
            la = ccc_loss(p[..., 1].reshape(-1), t[..., 1].reshape(-1), mask=m.reshape(-1), unbiased=True)
            losses.append(alpha * lv + beta * la)                       # Eq. 10 on one GPU's batch
        return torch.stack(losses).mean()                               # DDP: the mean of the ranks' gradients
    return loss_fn


LOSSES = {"paper": eq10_loss, "released": released_eq10_loss}


# --------------------------------------------------------------------------- the LR schedule, both ways

def released_lr(lr0: float, step: int, gamma: float, epochs: int) -> list[float]:
    """The LR of each epoch (0-based) under the code's StepLR.step(t) after epoch t (ledger: lr_drop_epoch)."""
    return [lr0] + [lr0 * gamma ** (t // step) for t in range(epochs - 1)]


def paper_lr(lr0: float, step: int, gamma: float, epochs: int) -> list[float]:
    """The LR of each epoch (0-based) under torch's StepLR stepped once per epoch (step 0: no schedule)."""
    return [lr0 * gamma ** (e // step) if step else lr0 for e in range(epochs)]


class ReleasedStepLR:
    """fit's on_epoch_end hook that sets the next epoch's LR as the code's `lr_scheduler.step(t)` does
    (core/solver/base_solver.py:186; ledger: lr_drop_epoch). fit runs it with no scheduler of its own;
    the LR lives in the optimiser's state, so a resumed run goes on with it."""

    def __init__(self, lr0: float, step: int, gamma: float):
        self.lr0, self.step, self.gamma = lr0, step, gamma

    def __call__(self, optimizer, state, **_):
        t = state.epoch - 1                                             # the 0-based epoch just finished
        for group in optimizer.param_groups:
            group["lr"] = self.lr0 * self.gamma ** (t // self.step) if self.step else self.lr0


def schedule(method: Method, lr0: float) -> tuple[int, list]:
    """(fit's step_lr_epochs, on_epoch_end hooks) of the method's LR schedule."""
    if method.name == "released":
        return 0, [ReleasedStepLR(lr0, method.step_lr_epochs, method.step_lr_gamma)]
    return method.step_lr_epochs, []
