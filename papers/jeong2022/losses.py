"""Jeong et al. 2022 (CVPRW), Sec. 4.2-4.3: the supervision, distillation and student losses, the task weights.

`method: paper` (`TEACHER_LOSS["paper"]`, `STUDENT_LOSS["paper"]`): the supervision losses are the
shared ones of `common.losses`: 1 - CCC for VA (Eqs. 1-2, `ccc_loss`), cross entropy for EXPR
(Eqs. 3-4, `masked_cross_entropy`), binary cross entropy for AU (Eqs. 5-6,
`masked_bce_with_logits`), their sum for the MTL stream (Eq. 7); the distillation losses of the
student against the teacher's soft labels: VA (Eq. 8), EXPR at temperature t (Eq. 9), AU (Eq. 10);
the student combination of one batch of one task stream (Eq. 12); Deng et al.'s dynamic task
weights gamma = exp(0.5 n) (after Eq. 12) and the per-task patience counter that gives n.

`method: released` (`TEACHER_LOSS["released"]`, `STUDENT_LOSS["released"]`): what
EuiseokJeong/2022_ABAW_imlab@bb0513c:utils.py:112-168 (get_loss) computes, term by term:
* Keras losses take (y_true, y_pred), and most calls pass the prediction first: the supervision of
  EXPR and AU (teacher, student and MTL stream) is CE / BCE of the *labels* as prediction, clipped to
  [1e-7, 1 - 1e-7]: 16.1 (1 - p_true) for EXPR, ~15.4 |q - y| for AU (ledger: swapped_supervision);
* the distillation direction is mixed per stream (ledger: distillation_direction);
* the student divides its EXPR logits by T = 2.5 also in its own EXPR supervision and in the MTL
  stream's CE; the teacher uses T = 1 (trainer.py:126) (ledger: student_temperature);
* gamma also weights the three terms of the student's MTL stream (utils.py:131) (ledger: gamma_mtl);
* a task-discriminator loss, CE of the task one-hot with the same swapped arguments, weight
  (epoch + 1) / epochs, on every VA / EXPR / AU batch of teacher and student (ledger: task_discriminator,
  discriminator_weight).
Every loss of the paper method follows the rules of `common.losses` (mean over valid entries,
invalid entries get zero gradient, a graph-connected 0 when nothing is valid, teacher outputs
detached); the released losses see only rows that the released row filter kept (data.py).
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F

from common.losses import (ccc_loss, distillation_rows, masked_bce_with_logits, masked_cross_entropy,
                           masked_mean, same_shape)

__all__ = ["jeong_va_distillation", "jeong_expr_distillation", "jeong_au_distillation",
           "jeong_student_loss", "dynamic_task_weight", "TaskPatience", "paper_supervision",
           "keras_categorical_crossentropy", "keras_binary_crossentropy", "TEACHER_LOSS", "STUDENT_LOSS",
           "DOMAIN_WEIGHT"]

TASKS = ("va", "expr", "au")


# --------------------------------------------------------------------------- distillation (Eqs. 8-10)

def jeong_va_distillation(student_va: torch.Tensor, teacher_va: torch.Tensor,
                          mask=None) -> torch.Tensor:
    """Jeong Eq. 8: 1 - CCC(f_va^stu, f_va^tea), averaged over valence and arousal as in Eq. 2.

    student_va, teacher_va: (B, 2) predictions. Population variance (utils.py:32, ledger: ccc_definition).
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
    The student's logits are divided by t too, as the released code does (ledger: distillation_temperature); there is
    no T^2 factor. Differs from Hinton et al.'s KL without T^2 (Vu's `hinton_kd(scale_t2=False)`)
    only by the teacher's entropy, a constant for the student. The released code makes the student
    the target in the EXPR and AU streams (utils.py:138, 142): `released_student_loss`
    (ledger: distillation_direction). t = 2.5 (Jeong Sec. 5).
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
    inside each loss. Algorithm 2 trains the MTL stream on L_mtl^s alone (`paper_student_loss`); the
    released code weights its three terms by gamma, without alpha (utils.py:131, ledger: gamma_mtl).
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


# --------------------------------------------------------------------------- method: paper (Eqs. 2-12)

def paper_supervision(out: dict, b: dict, task: str) -> torch.Tensor:
    """L_i^s on a batch: Eq. 2 (VA), Eq. 4 (EXPR), Eq. 6 (AU), their sum Eq. 7 (MTL); invalid labels masked."""
    if task == "va":
        return ccc_loss(out["va"], b["va"])                                   # Eq. 2
    if task == "expr":
        return masked_cross_entropy(out["expr"], b["expr"])                   # Eq. 4
    if task == "au":
        return masked_bce_with_logits(out["au"], b["au"])                     # Eq. 6
    return sum(paper_supervision(out, b, t) for t in TASKS)                   # Eq. 7 (mtl)


def paper_teacher_loss(out: dict, b: dict, stream: str, domain_weight: float = 0.0) -> torch.Tensor:
    """Eq. 11: the teacher trains on the supervision loss of the batch's task set alone."""
    return paper_supervision(out, b, stream)


def paper_student_loss(out: dict, soft: dict, b: dict, stream: str, gamma: Mapping[str, float],
                       jp: Mapping, domain_weight: float = 0.0) -> torch.Tensor:
    """Algorithm 2: L_mtl^s on the MTL set; Eq. 12 with the distillation losses Eqs. 8-10 elsewhere."""
    if stream == "mtl":
        return paper_supervision(out, b, "mtl")                               # Algorithm 2: L_mtl^s
    dist = {"va": jeong_va_distillation(out["va"], soft["va"]),                              # Eq. 8
            "expr": jeong_expr_distillation(out["expr"], soft["expr"], jp["temperature"]),  # Eq. 9
            "au": jeong_au_distillation(out["au"], soft["au"])}                              # Eq. 10
    sup = {stream: paper_supervision(out, b, stream)}
    return jeong_student_loss(sup, dist, stream, gamma, jp["alpha"], jp["beta"])            # Eq. 12


# --------------------------------------------------------------------------- method: released (utils.get_loss)

KERAS_EPSILON = 1e-7          # tf.keras.backend.epsilon()


def keras_categorical_crossentropy(y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    """tf.keras.losses.CategoricalCrossentropy()(y_true, y_pred) on probabilities, as Keras computes it
    eagerly: y_pred renormalised to sum 1 and clipped to [eps, 1 - eps], -sum y_true log y_pred, batch mean.
    Gradients reach both arguments (the released code puts model outputs in either place)."""
    p = y_pred / y_pred.sum(-1, keepdim=True)
    p = p.clamp(KERAS_EPSILON, 1.0 - KERAS_EPSILON)
    return -(y_true * torch.log(p)).sum(-1).mean()


def keras_binary_crossentropy(y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    """tf.keras.losses.BinaryCrossentropy()(y_true, y_pred) on probabilities: y_pred clipped to
    [eps, 1 - eps], -(y log(p + eps) + (1 - y) log(1 - p + eps)), mean over the last axis, then the batch."""
    p = y_pred.clamp(KERAS_EPSILON, 1.0 - KERAS_EPSILON)
    bce = y_true * torch.log(p + KERAS_EPSILON) + (1.0 - y_true) * torch.log(1.0 - p + KERAS_EPSILON)
    return -bce.mean(-1).mean()


def keras_binary_crossentropy_cached_logits(y_true: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The same loss when y_pred is a model output made by Activation('sigmoid'): Keras 2.7's sigmoid
    caches its logits on the tensor and binary_crossentropy then computes sigmoid_cross_entropy_with_logits
    (no clipping, no epsilon). keras 2.7.0: activations.py:405, backend.py:5147-5151 (ledger: keras_logits_path).
    The Softmax layer that utils.get_loss applies to the EXPR logits does not cache them in 2.7
    (backend.softmax), so every categorical CE takes the clipped path of keras_categorical_crossentropy."""
    return F.binary_cross_entropy_with_logits(logits, y_true, reduction="mean")


def _released_labels(b: dict, task: str) -> torch.Tensor:
    """The labels as the released code feeds them (ledger: swapped_supervision): VA values, EXPR one-hot, AU 0/1.
    Its row filter (data.py) dropped every row with a marker, so one here means the filter was bypassed."""
    y = b[task]
    bad = (y == -5).any(-1) if task == "va" else (y == -1) if task == "expr" else (y == -1).any(-1)
    if bool(bad.any()):
        raise ValueError(f"jeong2022 method: released got {int(bad.sum())} {task} rows with an invalid-label "
                         f"marker; its row filter (data.RELEASED_ROWS) drops them, so build the corpus with "
                         f"method: released")
    if task == "expr":
        return torch.nn.functional.one_hot(y.long(), 8).to(torch.float32)
    return y.to(torch.float32)


def _domain_loss(out: dict, stream: str) -> torch.Tensor:
    """cce_loss(domain output, task one-hot): the arguments swapped like the rest (utils.py:144, 166)."""
    from papers.jeong2022.model import DOMAINS
    target = torch.zeros_like(out["domain"])
    target[:, DOMAINS.index(stream)] = 1.0
    return keras_categorical_crossentropy(F.softmax(out["domain"], -1), target)


def released_teacher_loss(out: dict, b: dict, stream: str, domain_weight: float) -> torch.Tensor:
    """utils.get_loss with s_out=None and T = 1 (utils.py:147-167; trainer.py:126)."""
    cce, bce = keras_categorical_crossentropy, keras_binary_crossentropy
    p_expr, p_au = F.softmax(out["expr"], -1), torch.sigmoid(out["au"])
    if stream == "mtl":                                                        # utils.py:154, no domain term
        return (ccc_loss(out["va"], _released_labels(b, "va")) + cce(p_expr, _released_labels(b, "expr"))
                + bce(p_au, _released_labels(b, "au")))
    task = {"va": lambda: ccc_loss(out["va"], _released_labels(b, "va")),      # utils.py:158
            "expr": lambda: cce(p_expr, _released_labels(b, "expr")),          # utils.py:160, swapped
            "au": lambda: bce(p_au, _released_labels(b, "au"))}[stream]()      # utils.py:162, swapped
    return task + domain_weight * _domain_loss(out, stream)                    # utils.py:165-167


def released_student_loss(out: dict, soft: dict, b: dict, stream: str, gamma: Mapping[str, float],
                          jp: Mapping, domain_weight: float) -> torch.Tensor:
    """utils.get_loss with s_out (utils.py:117-145), T = 2.5 on both students' and teacher's EXPR logits."""
    cce, bce = keras_categorical_crossentropy, keras_binary_crossentropy
    t, alpha, beta = jp["temperature"], jp["alpha"], jp["beta"]
    s_expr, s_au, s_va = F.softmax(out["expr"] / t, -1), torch.sigmoid(out["au"]), out["va"]   # utils.py:120
    g = gamma
    if stream == "mtl":                                                        # utils.py:131: gamma, no alpha
        return (g["va"] * ccc_loss(s_va, _released_labels(b, "va")) + g["expr"]
                * cce(s_expr, _released_labels(b, "expr"))
                + g["au"] * bce(s_au, _released_labels(b, "au")))
    t_expr = F.softmax(soft["expr"].detach() / t, -1)                          # utils.py:119
    t_au, t_va = torch.sigmoid(soft["au"].detach()), soft["va"].detach()
    to_au = keras_binary_crossentropy_cached_logits    # y_pred = a model's sigmoid output: its logits
    if stream == "va":                                                         # utils.py:135-136
        total = (alpha * g["va"] * ccc_loss(s_va, _released_labels(b, "va")) + g["va"] * ccc_loss(s_va, t_va)
                 + beta * (g["expr"] * cce(t_expr, s_expr) + g["au"] * to_au(t_au, out["au"])))
    elif stream == "expr":                                                     # utils.py:138-139
        total = (alpha * g["expr"] * cce(s_expr, _released_labels(b, "expr")) + g["expr"] * cce(s_expr, t_expr)
                 + beta * (g["va"] * ccc_loss(s_va, t_va) + g["au"] * to_au(t_au, out["au"])))
    else:                                                                      # utils.py:141-142
        total = (alpha * g["au"] * bce(s_au, _released_labels(b, "au")) + g["au"] * to_au(s_au, soft["au"].detach())
                 + beta * (g["va"] * ccc_loss(s_va, t_va) + g["expr"] * cce(s_expr, t_expr)))
    return total + domain_weight * _domain_loss(out, stream)                   # utils.py:143-145


# The task discriminator's weight in epoch `epoch` (0-based) of `epochs`: none in the paper; the released
# code's `linear_domain_weight: True` overrides `domain_weight: 0` (config.py:37-39, trainer.py:125).
DOMAIN_WEIGHT = {"paper": lambda epoch, epochs: 0.0, "released": lambda epoch, epochs: (epoch + 1) / epochs}

# Chosen once from params jeong2022.method (train.py).
TEACHER_LOSS = {"paper": paper_teacher_loss, "released": released_teacher_loss}
STUDENT_LOSS = {"paper": paper_student_loss, "released": released_student_loss}
