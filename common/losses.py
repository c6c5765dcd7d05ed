"""The papers' training losses, as plain torch functions.

One module serves all four papers. Each function cites the paper and equation it computes, so
the file can be read side by side with the PDFs:

* Jeong et al. 2022 (CVPRW), Sec. 4.3: CCC supervision (Eqs. 1-2), CE / BCE (Eqs. 3-6), the
  distillation losses (Eqs. 8-10), the student combination (Eq. 12) with Deng et al.'s dynamic
  task weights gamma = exp(0.5 n).
* Vu et al. 2021 (ICCVW), Sec. 3.2: valence/arousal as 20 bins (CE on the bin + 1 - CCC of the
  expectation, Eq. 2) and KL distillation at temperature T (Eqs. 4-6).
* Zhang et al. 2021 (ICCVW), Sec. 4.4: the CCC loss, computed per window along time.
* Liu et al. 2023: (1 - CCC_v) + (1 - CCC_a) over the flattened batch, i.e. ``2 * ccc_loss``.

Rules shared by every function:

* Reduction. The papers write sums over the samples of a batch (Jeong Eqs. 11-12, Vu Eqs. 7-10);
  the official code of both uses the frameworks' mean reductions. Every loss here returns a mean
  over the valid entries, so a loss does not grow with the batch size.
* Validity. An entry counts when the optional boolean ``mask`` says so (True = valid) AND its
  ground truth does not carry the corpus's invalid marker (VA -5, EXPR -1, AU -1), the same
  rule as ``common.metrics``. A mask may have the target's shape or only its leading dimensions
  (e.g. one flag per sample for a (B, 2) VA target).
* Invalid entries are replaced by zeros before any arithmetic, so whatever they hold (even NaN)
  changes neither the loss nor any gradient, and they receive exactly zero gradient.
* A batch with no valid entry returns a zero that is still part of the autograd graph: a task
  stream without labels in this step contributes 0 and ``loss.backward()`` still works.
* Teacher outputs are targets, not parameters: distillation losses detach them.
* Mismatched shapes raise ``ValueError`` naming both arguments and their shapes.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F

from common.data.affwild2 import AU_INVALID, EXPR_INVALID, VA_INVALID  # the ABAW invalid markers

__all__ = [
    "VA_INVALID", "EXPR_INVALID", "AU_INVALID",
    "ccc", "ccc_loss", "masked_cross_entropy", "masked_bce_with_logits", "hinton_kd",
    "va_to_bins", "bin_values", "bins_expectation", "vu_va_loss", "vu_kd_loss",
    "jeong_va_distillation", "jeong_expr_distillation", "jeong_au_distillation",
    "jeong_student_loss", "dynamic_task_weight", "TaskPatience",
]


# --------------------------------------------------------------------------- small helpers

def _same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape "
                         f"{tuple(b.shape)}; they must match")


def _broadcast_mask(mask, shape: torch.Size, name: str, device) -> torch.Tensor:
    """A boolean mask of exactly `shape`, from a mask of that shape or of its leading dims."""
    mask = torch.as_tensor(mask, device=device)
    if mask.dim() > len(shape) or mask.shape != shape[:mask.dim()]:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, which is neither {name}'s shape "
                         f"{tuple(shape)} nor its leading part")
    mask = mask.bool()
    # Append singleton dims so one flag per sample covers all of that sample's entries.
    return mask.reshape(mask.shape + (1,) * (len(shape) - mask.dim())).expand(shape)


def _valid_entries(target: torch.Tensor, mask, invalid_marker, name: str) -> torch.Tensor:
    """True where the target is usable: not the invalid marker, not NaN, and allowed by `mask`."""
    valid = target != invalid_marker
    if target.is_floating_point():
        valid = valid & ~torch.isnan(target)
    if mask is not None:
        valid = valid & _broadcast_mask(mask, target.shape, name, target.device)
    return valid


def _mask_for_rows(mask, logits: torch.Tensor, name: str) -> torch.Tensor:
    """Validity of each row of `logits` (all dims but the last, the classes)."""
    rows = logits.shape[:-1]
    if mask is None:
        return torch.ones(rows, dtype=torch.bool, device=logits.device)
    return _broadcast_mask(mask, rows, name, logits.device)


def _zero_invalid(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    # torch.where (not x * valid): 0 * NaN would still be NaN, and where() sends exactly zero
    # gradient to the entries it drops.
    return torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over the valid entries; a graph-connected 0 when none is valid."""
    total = _zero_invalid(values, valid).sum()
    return total / valid.sum().clamp(min=1)


# --------------------------------------------------------------------------- CCC

def ccc(pred: torch.Tensor, target: torch.Tensor, dim: int = -1, unbiased=False, mask=None,
        eps: float = 1e-8) -> torch.Tensor:
    """Differentiable concordance correlation coefficient along `dim` (Jeong Eq. 1).

    CCC = 2 cov(y, y_hat) / (var(y) + var(y_hat) + (mean(y) - mean(y_hat))^2).
    Jeong writes the numerator as 2 rho sigma_y sigma_y_hat, which is the same 2 cov.

    unbiased selects the divisors, because the official codes differ:
      False            population: n for the variances and the covariance
                       (the ABAW metric; Jeong's code).
      True             sample: n - 1 for the variances and the covariance
                       (Vu's code, whose torch.std and Pearson rho amount to this).
      "variance_only"  n - 1 for the variances, n for the covariance: what Zhang's official
                       CCCLoss computes (torch.var(unbiased=True) in the denominator, the mean of
                       the products in the numerator). Note that then ccc(x, x) = (n - 1) / n, not 1.
    mask: optional boolean, True = use the entry; same shape as pred (or its leading dims).
    eps keeps the ratio finite when both series are constant and equal (Zhang's code adds 1e-8).
    The result has pred's shape without `dim`.
    """
    _same_shape("pred", pred, "target", target)
    if isinstance(unbiased, str) and unbiased != "variance_only":
        raise ValueError(f"unbiased must be False, True or 'variance_only', got {unbiased!r}")
    divisors = unbiased if isinstance(unbiased, str) else ("sample" if unbiased else "population")
    if mask is None:
        valid = torch.ones_like(pred, dtype=torch.bool)
    else:
        valid = _broadcast_mask(mask, pred.shape, "pred", pred.device)
    weight = valid.to(pred.dtype)
    pred = _zero_invalid(pred, valid)
    target = _zero_invalid(target, valid)

    n = weight.sum(dim, keepdim=True)
    mean_pred = pred.sum(dim, keepdim=True) / n.clamp(min=1)
    mean_target = target.sum(dim, keepdim=True) / n.clamp(min=1)
    # Deviations are multiplied by the weight so that invalid entries add nothing to the sums.
    dev_pred = (pred - mean_pred) * weight
    dev_target = (target - mean_target) * weight

    n = n.squeeze(dim)
    sample_n = (n - 1).clamp(min=1)        # a single valid entry has zero spread, not 0/0
    var_div = n.clamp(min=1) if divisors == "population" else sample_n
    cov_div = sample_n if divisors == "sample" else n.clamp(min=1)

    covariance = (dev_pred * dev_target).sum(dim) / cov_div
    var_pred = (dev_pred ** 2).sum(dim) / var_div
    var_target = (dev_target ** 2).sum(dim) / var_div
    mean_gap = (mean_pred - mean_target).squeeze(dim) ** 2
    return 2.0 * covariance / (var_pred + var_target + mean_gap + eps)   # Jeong Eq. 1


def ccc_loss(pred: torch.Tensor, target: torch.Tensor, mask=None, per_sequence: bool = False,
             unbiased=False) -> torch.Tensor:
    """1 - CCC, averaged over output dimensions (and over sequences when per_sequence).

    per_sequence=False (Jeong Eq. 2, Vu, Liu): CCC over the batch, one per output dimension.
        pred/target (N,) one dimension, or (N, D) with D dimensions (VA: D = 2, column 0
        valence, column 1 arousal), or (B, T, D), which is flattened to (B*T, D) (Liu's "over the
        flattened batch"). Returns mean_d (1 - CCC_d); for VA that is
        1 - (CCC_v + CCC_a) / 2, Jeong Eq. 2.
    per_sequence=True (Zhang Sec. 4.4, official code): one CCC per window along time, then the
        mean of 1 - CCC over windows (and dimensions). pred/target (B, T) or (B, T, D).
        Note: a (B, T) input means B windows only here; with per_sequence=False a 2-D input is
        (samples, dimensions). Zhang's code does not mask its zero padding; pass no mask to
        match it, or a mask to leave the padding out.
    Ground truth equal to VA_INVALID (-5) is always excluded. A dimension (or window) with no
    valid entry is left out of the mean; if none has any, the result is a graph-connected 0.
    unbiased: see `ccc` (Zhang's code: "variance_only").
    """
    _same_shape("pred", pred, "target", target)
    valid = _valid_entries(target, mask, VA_INVALID, "target")
    if per_sequence:
        if pred.dim() not in (2, 3):
            raise ValueError(f"per_sequence=True expects pred of shape (B, T) or (B, T, D), got "
                             f"{tuple(pred.shape)}")
        if pred.dim() == 2:
            pred, target, valid = pred.unsqueeze(-1), target.unsqueeze(-1), valid.unsqueeze(-1)
        reduce_dim = 1                      # CCC along time: one value per (window, dimension)
    else:
        if pred.dim() == 1:
            pred, target, valid = pred.unsqueeze(-1), target.unsqueeze(-1), valid.unsqueeze(-1)
        elif pred.dim() > 2:
            last = pred.shape[-1]
            pred, target, valid = (pred.reshape(-1, last), target.reshape(-1, last),
                                   valid.reshape(-1, last))
        reduce_dim = 0                      # CCC along the batch: one value per dimension
    values = ccc(pred, target, dim=reduce_dim, unbiased=unbiased, mask=valid)
    has_valid = valid.any(dim=reduce_dim)
    return _masked_mean(1.0 - values, has_valid)


# --------------------------------------------------------------------------- CE, BCE, KD

def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore: int = EXPR_INVALID,
                         mask=None) -> torch.Tensor:
    """Cross entropy with class-index targets, mean over valid rows (Jeong Eqs. 3-4, Vu Eq. 1).

    CE(y, y_hat) = -sum_c y_c log y_hat_c with one-hot y is -log softmax(logits)[class].
    logits (..., C); target (...) integer class indices, `ignore` (-1) marks a missing label.
    """
    if logits.shape[:-1] != target.shape:
        raise ValueError(f"logits has shape {tuple(logits.shape)} and target has shape "
                         f"{tuple(target.shape)}; expected target = logits without the last "
                         "(class) dim")
    n_classes = logits.shape[-1]
    valid = _valid_entries(target, mask, ignore, "target")
    out_of_range = valid & ((target < 0) | (target >= n_classes))
    if target.device.type == "cpu":
        if out_of_range.any():
            bad = target[out_of_range][0].item()
            raise ValueError(f"target holds class {bad}, outside 0..{n_classes - 1} and not the "
                             f"ignore value {ignore}")
    else:
        # On an accelerator the check must not wait for the device every step (issue 11): it is
        # queued there, and a bad class stops the run at the next synchronisation.
        torch._assert_async(~out_of_range.any(), f"target holds a class outside 0..{n_classes - 1} "
                            f"and not the ignore value {ignore}")
    safe_logits = _zero_invalid(logits, valid.unsqueeze(-1))
    safe_target = _zero_invalid(target, valid).long()
    log_probs = F.log_softmax(safe_logits, dim=-1)
    picked = log_probs.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1)
    return _masked_mean(-picked, valid)                                  # Jeong Eq. 3


def masked_bce_with_logits(logits: torch.Tensor, target: torch.Tensor, mask=None,
                           ignore: float = AU_INVALID) -> torch.Tensor:
    """Binary cross entropy on logits, mean over valid entries (Jeong Eqs. 5-6).

    BCE(y, y_hat) = -[y log y_hat + (1 - y) log(1 - y_hat)], y_hat = sigmoid(logits).
    (Jeong's Eq. 5 prints it without the minus sign; the loss minimised is the usual one.)
    target: same shape as logits, 0/1 labels or soft probabilities in [0, 1]; entries equal to
    `ignore` (-1) are missing labels. An entry counts when mask allows it AND it is not `ignore`.
    """
    _same_shape("logits", logits, "target", target)
    valid = _valid_entries(target, mask, ignore, "target")
    safe_logits = _zero_invalid(logits, valid)
    safe_target = _zero_invalid(target.to(logits.dtype), valid)
    # The logits form is the numerically stable way to compute log(sigmoid(.)).
    per_entry = F.binary_cross_entropy_with_logits(safe_logits, safe_target, reduction="none")
    return _masked_mean(per_entry, valid)                                # Jeong Eq. 5


def _distillation_rows(student_logits, teacher_logits, temperature, mask):
    """Shared checks of the logit distillation losses: same shapes, T > 0, one validity flag per
    row; invalid rows zeroed (so they carry no gradient) and the teacher detached."""
    _same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    valid = _mask_for_rows(mask, student_logits, "student_logits")
    student = _zero_invalid(student_logits, valid.unsqueeze(-1))
    teacher = _zero_invalid(teacher_logits.detach(), valid.unsqueeze(-1))
    return student, teacher, valid


def hinton_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
              scale_t2: bool = True, mask=None) -> torch.Tensor:
    """Hinton et al.'s distillation: KL(softmax(t / T) || softmax(s / T)), mean over rows.

    KL(p, q) = sum_i p_i log(p_i / q_i) with p the teacher, q the student (Vu's definition in
    Sec. 3.2.2). scale_t2 multiplies by T^2, as Hinton et al. recommend so that the gradient
    size does not shrink as 1/T^2; Vu's official code does it, Vu's paper does not say so.
    logits (..., C): one distribution per row; mask: optional, one flag per row.
    """
    student, teacher, valid = _distillation_rows(student_logits, teacher_logits, temperature, mask)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)   # Vu Sec. 3.2.2 KL
    loss = _masked_mean(kl, valid)
    return loss * temperature ** 2 if scale_t2 else loss


# --------------------------------------------------------------------------- Vu 2021: VA as bins

def va_to_bins(va: torch.Tensor, n_bins: int = 20, low: float = -1.0, high: float = 1.0
               ) -> torch.Tensor:
    """Bin index of each valence/arousal value: K equal-width bins on [low, high] (Vu Eq. 2).

    Bin k holds [low + k w, low + (k + 1) w), w = (high - low) / K; the right edge `high` goes
    into the last bin, values outside the range are clamped to the first/last bin. The invalid
    marker (-5) and NaN become -1, the ignore index of `masked_cross_entropy`.
    """
    edges = torch.linspace(low, high, n_bins + 1, dtype=va.dtype, device=va.device)
    # right=True: index i with edges[i-1] <= value < edges[i], like numpy.digitize.
    index = torch.bucketize(va.contiguous(), edges, right=True) - 1
    index = index.clamp(0, n_bins - 1)
    invalid = (va == VA_INVALID) | torch.isnan(va)
    return torch.where(invalid, torch.full_like(index, -1), index)


def bin_values(n_bins: int = 20, low: float = -1.0, high: float = 1.0, support: str = "centres",
               dtype=None, device=None) -> torch.Tensor:
    """The value each bin stands for when a bin distribution is turned back into a number.

    support="centres": the centre of each equal-width bin of `va_to_bins`
        (-0.95, -0.85, ..., 0.95 for 20 bins on [-1, 1]).
    support="linspace": K evenly spaced points from low to high inclusive (-1, ..., 1), what
        Vu's official code (after Deng et al.) uses; its points do not sit at the centres of the
        bins the CE term trains, but they let the expectation reach -1 and 1.
    """
    if support == "centres":
        width = (high - low) / n_bins
        return low + width * (torch.arange(n_bins, dtype=dtype, device=device) + 0.5)
    if support == "linspace":
        return torch.linspace(low, high, n_bins, dtype=dtype, device=device)
    raise ValueError(f"support must be 'centres' or 'linspace', got {support!r}")


def bins_expectation(bin_logits: torch.Tensor, low: float = -1.0, high: float = 1.0,
                     support: str = "centres") -> torch.Tensor:
    """Expected value of the bin values under softmax(bin_logits): Vu's VA prediction.

    bin_logits (..., K) -> (...). E.g. (B, 2, 20) -> (B, 2) valence/arousal.
    """
    values = bin_values(bin_logits.shape[-1], low, high, support,
                        dtype=bin_logits.dtype, device=bin_logits.device)
    return (F.softmax(bin_logits, dim=-1) * values).sum(-1)


def vu_va_loss(bin_logits: torch.Tensor, va_target: torch.Tensor, mask=None,
               ccc_weight="paper", support: str = "centres", unbiased=False,
               low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    """Vu Eq. 2: sum over valence, arousal of CE(onehot(bin(y_i)), SF(t_i)) + w (1 - CCC(y_i, E_i)).

    bin_logits (B, 2, K), va_target (B, 2) in [-1, 1] with -5 for a missing label.
    E_i is `bins_expectation` of dimension i; the CE is the mean over valid samples, the CCC is
    taken over the valid samples of the batch.
    ccc_weight: "paper" -> w = 1/B (Eq. 2 as printed; B = bin_logits.shape[0], the batch size,
        counting masked rows too); "code" -> w = 1 (Vu's official code, lambda_ccc = 1);
        a number -> that w.
    support, unbiased: see `bin_values` and `ccc` ("linspace" and True are what the code does).
    """
    if bin_logits.dim() != 3 or bin_logits.shape[1] != 2:
        raise ValueError(f"bin_logits has shape {tuple(bin_logits.shape)}, expected (B, 2, K)")
    if va_target.shape != bin_logits.shape[:2]:
        raise ValueError(f"va_target has shape {tuple(va_target.shape)} but bin_logits has shape "
                         f"{tuple(bin_logits.shape)}; expected va_target (B, 2)")
    if ccc_weight == "paper":
        weight = 1.0 / bin_logits.shape[0]           # Vu Eq. 2: the 1/B in front of 1 - CCC
    elif ccc_weight == "code":
        weight = 1.0
    elif isinstance(ccc_weight, (int, float)) and not isinstance(ccc_weight, bool):
        weight = float(ccc_weight)
    else:
        raise ValueError(f"ccc_weight must be 'paper', 'code' or a number, got {ccc_weight!r}")

    valid = _valid_entries(va_target, mask, VA_INVALID, "va_target")
    # Both terms read the logits: clear the invalid rows once, before either uses them.
    bin_logits = _zero_invalid(bin_logits, valid.unsqueeze(-1))
    n_bins = bin_logits.shape[-1]
    bins = va_to_bins(_zero_invalid(va_target, valid), n_bins, low, high)
    bins = torch.where(valid, bins, torch.full_like(bins, -1))
    expectation = bins_expectation(bin_logits, low, high, support)

    total = bin_logits.new_zeros(())
    for dim in range(2):                             # Vu Eq. 2: sum over i = valence, arousal
        classification = masked_cross_entropy(bin_logits[:, dim], bins[:, dim], ignore=-1)
        regression = ccc_loss(expectation[:, dim], va_target[:, dim], mask=valid[:, dim],
                              unbiased=unbiased)
        total = total + classification + weight * regression            # Vu Eq. 2
    return total


def vu_kd_loss(student_expr: torch.Tensor | None = None, teacher_expr: torch.Tensor | None = None,
               student_va: torch.Tensor | None = None, teacher_va: torch.Tensor | None = None,
               temperature: float = 1.5, scale_t2: bool = True, mask=None) -> torch.Tensor:
    """Vu's distillation losses H (Eqs. 4-6): KL at temperature T, teacher || student.

    EXPR only (student_expr, teacher_expr: (B, C) logits): Eq. 4.
    VA only (student_va, teacher_va: (B, 2, K) bin logits): Eq. 5, the sum of one KL per
        dimension (valence, arousal), each a mean over the batch.
    Both: Eq. 6 = Eq. 4 + Eq. 5.
    temperature: the paper gives no value; the official code uses T = 1.5 and multiplies by
    T^2 (scale_t2). mask: optional (B,), the samples that are distilled.
    """
    if (student_expr is None) != (teacher_expr is None):
        raise ValueError("give both student_expr and teacher_expr, or neither")
    if (student_va is None) != (teacher_va is None):
        raise ValueError("give both student_va and teacher_va, or neither")
    if student_expr is None and student_va is None:
        raise ValueError("nothing to distil: give the EXPR logits, the VA bin logits, or both")
    losses = []
    if student_expr is not None:
        losses.append(hinton_kd(student_expr, teacher_expr, temperature, scale_t2, mask))  # Eq. 4
    if student_va is not None:
        _same_shape("student_va", student_va, "teacher_va", teacher_va)
        if student_va.dim() != 3 or student_va.shape[1] != 2:
            raise ValueError(f"student_va has shape {tuple(student_va.shape)}, expected (B, 2, K)")
        for dim in range(2):                                   # Eq. 5: sum over valence, arousal
            losses.append(hinton_kd(student_va[:, dim], teacher_va[:, dim], temperature,
                                    scale_t2, mask))
    return sum(losses)                                                  # Eq. 6 when both


# --------------------------------------------------------------------------- Jeong 2022

def jeong_va_distillation(student_va: torch.Tensor, teacher_va: torch.Tensor,
                          mask=None) -> torch.Tensor:
    """Jeong Eq. 8: 1 - CCC(f_va^stu, f_va^tea), averaged over valence and arousal as in Eq. 2.

    student_va, teacher_va: (B, 2) predictions. Population variance (Jeong's code).
    """
    _same_shape("student_va", student_va, "teacher_va", teacher_va)
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
    no T^2 factor. Differs from hinton_kd(scale_t2=False) only by the teacher's entropy, a
    constant for the student. Jeong's code swaps the arguments in the EXPR stream; we follow
    the paper. t = 2.5 (Jeong Sec. 5).
    """
    student, teacher, valid = _distillation_rows(student_logits, teacher_logits, temperature, mask)
    soft_labels = F.softmax(teacher / temperature, dim=-1)               # Jeong Sec. 4.2
    cross_entropy = -(soft_labels * F.log_softmax(student / temperature, dim=-1)).sum(-1)
    return _masked_mean(cross_entropy, valid)                            # Jeong Eq. 9


def jeong_au_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                          mask=None) -> torch.Tensor:
    """Jeong Eq. 10: BCE of the student against the teacher's sigmoid probabilities.

    As for Eq. 9, the teacher is the target (Sec. 4.2), whatever the printed argument order.
    student_logits, teacher_logits: (B, 12) AU logits (before the sigmoid).
    """
    _same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
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


# --------------------------------------------------------------------------- Deng task weights

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
