"""Jeong et al. 2022 (CVPRW), Sec. 4.2-4.3: the distillation and student losses, the task weights.

The supervision losses are the shared ones of `common.losses`: 1 - CCC for VA (Eqs. 1-2,
`ccc_loss`), cross entropy for EXPR (Eqs. 3-4, `masked_cross_entropy`), binary cross entropy
for AU (Eqs. 5-6, `masked_bce_with_logits`), their sum for the MTL stream (Eq. 7). Here:

* the distillation losses of the student against the teacher's soft labels: VA (Eq. 8), EXPR at
  temperature t (Eq. 9), AU (Eq. 10);
* the student combination of one batch of one task stream (Eq. 12);
* Deng et al.'s dynamic task weights gamma = exp(0.5 n) (after Eq. 12) and the per-task
  patience counter that gives n.

Every loss follows the rules of `common.losses` (mean over valid entries, invalid entries get
zero gradient, a graph-connected 0 when nothing is valid, teacher outputs detached).
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F

from common.losses import ccc_loss, distillation_rows, masked_bce_with_logits, masked_mean, same_shape

__all__ = ["jeong_va_distillation", "jeong_expr_distillation", "jeong_au_distillation",
           "jeong_student_loss", "dynamic_task_weight", "TaskPatience"]


# --------------------------------------------------------------------------- distillation (Eqs. 8-10)

def jeong_va_distillation(student_va: torch.Tensor, teacher_va: torch.Tensor,
                          mask=None) -> torch.Tensor:
    """Jeong Eq. 8: 1 - CCC(f_va^stu, f_va^tea), averaged over valence and arousal as in Eq. 2.

    student_va, teacher_va: (B, 2) predictions. Population variance (Jeong's code).
    """
    same_shape("student_va", student_va, "teacher_va", teacher_va)
    return ccc_loss(student_va, teacher_va.detach(), mask=mask)         # Jeong Eq. 8


def jeong_expr_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                            temperature: float = 2.5, mask=None) -> torch.Tensor:
    """Jeong Eq. 9: cross entropy of the student against the teacher's soft labels.

    Reading: Eq. 9 prints CE(f_stu, f_tea), and Eq. 3 defines CE(y, y_hat) with y the target;
    read literally that makes the student's output the target. Sec. 4.2 says the teacher's
    output divided by t and passed through softmax is the soft label the student learns from,
    so the teacher is the target here:
        L = -sum_c softmax(teacher / t)_c log softmax(student / t)_c, mean over rows.
    The student's logits are divided by t too, as in Jeong's code (and Hinton et al.); there is
    no T^2 factor. Differs from Hinton et al.'s KL without T^2 (Vu's `hinton_kd(scale_t2=False)`)
    only by the teacher's entropy, a constant for the student. Jeong's code swaps the arguments
    in the EXPR stream; we follow the paper. t = 2.5 (Jeong Sec. 5).
    """
    student, teacher, valid = distillation_rows(student_logits, teacher_logits, temperature, mask)
    soft_labels = F.softmax(teacher / temperature, dim=-1)               # Jeong Sec. 4.2
    cross_entropy = -(soft_labels * F.log_softmax(student / temperature, dim=-1)).sum(-1)
    return masked_mean(cross_entropy, valid)                            # Jeong Eq. 9


def jeong_au_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                          mask=None) -> torch.Tensor:
    """Jeong Eq. 10: BCE of the student against the teacher's sigmoid probabilities.

    As for Eq. 9, the teacher is the target (Sec. 4.2), whatever the printed argument order.
    student_logits, teacher_logits: (B, 12) AU logits (before the sigmoid).
    """
    same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    soft_labels = torch.sigmoid(teacher_logits.detach())
    return masked_bce_with_logits(student_logits, soft_labels, mask=mask)   # Jeong Eq. 10


def jeong_student_loss(sup_losses: Mapping[str, torch.Tensor | None],
                       dist_losses: Mapping[str, torch.Tensor], task: str,
                       gamma: Mapping[str, float], alpha: float = 10.0, beta: float = 0.9
                       ) -> torch.Tensor:
    """Jeong Eq. 12 for one batch of task stream `task` (i):

        gamma_i * (alpha * L_i^s + L_i^d) + sum_{j != i} beta * gamma_j * L_j^d

    sup_losses: task -> supervision loss L^s (Eqs. 2, 4, 6, 7); only the entry of `task` is
        used, and None (or absent) means the batch has no ground truth for it, so the alpha
        term is dropped (Sec. 4.3: supervision loss only "if the batch data have ground truths").
    dist_losses: task -> distillation loss L^d (Eqs. 8-10) on this batch. The entry of `task`,
        if present, is L_i^d; every other entry is a j of the sum. The MTL stream has no
        distillation loss of its own (Sec. 4.3): leave "mtl" out.
    gamma: task -> weight, e.g. from TaskPatience.weights(); needed for `task` and every j.
    alpha = 10, beta = 0.9 (Jeong Table 1). The batch sum of Eq. 12 becomes the batch mean
    inside each loss. Jeong's code trains the MTL stream on the plain sum of the three
    supervision losses (no alpha, no gamma); this function follows the paper.
    """
    own_sup = sup_losses.get(task)
    own_dist = dist_losses.get(task)
    if own_sup is None and own_dist is None and not any(j != task for j in dist_losses):
        raise ValueError(f"nothing to combine for task {task!r}: no supervision or distillation "
                         "loss given")
    needed = {task} | {j for j in dist_losses if j != task}
    missing = sorted(needed - set(gamma))
    if missing:
        raise ValueError(f"gamma has no weight for task(s) {missing}; it has {sorted(gamma)}")

    own = 0.0
    if own_sup is not None:
        own = own + alpha * own_sup
    if own_dist is not None:
        own = own + own_dist
    total = gamma[task] * own                                            # Jeong Eq. 12, task i
    for other, loss in dist_losses.items():
        if other != task:
            total = total + beta * gamma[other] * loss                   # Jeong Eq. 12, j != i
    return total


# --------------------------------------------------------------------------- Deng task weights (Sec. 4.3)

def dynamic_task_weight(n_epochs_without_improvement: int) -> float:
    """Deng et al.'s task weight gamma = exp(0.5 n) (Jeong Sec. 4.3, after Eq. 12).

    n counts the epochs since the task's validation metric last improved: a stalled task gets a
    larger weight so that training pushes on it.
    """
    if n_epochs_without_improvement < 0:
        raise ValueError(f"n_epochs_without_improvement must be >= 0, got "
                         f"{n_epochs_without_improvement}")
    return math.exp(0.5 * n_epochs_without_improvement)


class TaskPatience:
    """Counts, per task, the epochs without a new best validation metric; gives gamma.

    update(task, metric) once per epoch and task; weight(task) = exp(0.5 n). A new best resets n
    to 0. mode "max" (higher is better, e.g. CCC or F1) or "min". A task never updated has
    n = 0, weight 1. A NaN metric counts as no improvement.
    """

    def __init__(self, mode: str = "max"):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.mode = mode
        self.best: dict[str, float] = {}
        self.epochs_without_improvement: dict[str, int] = {}

    def _improves(self, task: str, metric: float) -> bool:
        if math.isnan(metric):
            return False
        if task not in self.best:
            return True
        return metric > self.best[task] if self.mode == "max" else metric < self.best[task]

    def update(self, task: str, metric: float) -> int:
        """Record this epoch's metric for `task`; returns its epochs without improvement."""
        metric = float(metric)
        if self._improves(task, metric):
            self.best[task] = metric
            self.epochs_without_improvement[task] = 0
        else:
            self.epochs_without_improvement[task] = self.epochs_without_improvement.get(task, 0) + 1
        return self.epochs_without_improvement[task]

    def weight(self, task: str) -> float:
        return dynamic_task_weight(self.epochs_without_improvement.get(task, 0))

    def weights(self) -> dict[str, float]:
        return {task: self.weight(task) for task in self.epochs_without_improvement}

    def state_dict(self) -> dict:
        """Plain data for a checkpoint, so a resumed run keeps its counts."""
        return {"mode": self.mode, "best": dict(self.best),
                "epochs_without_improvement": dict(self.epochs_without_improvement)}

    def load_state_dict(self, state: dict) -> None:
        self.mode = state["mode"]
        self.best = dict(state["best"])
        self.epochs_without_improvement = dict(state["epochs_without_improvement"])
