"""The losses several papers share, as plain torch functions, and the rules every loss follows.

Each function cites the papers and equations it computes, so the file can be read side by side
with the PDFs. A loss that only one paper uses lives in that paper's folder, beside its other
equations: Jeong's distillation losses and Eq. 12 in `papers/jeong2022/losses.py`, Vu's binned
VA loss (Eq. 2), KL distillation (Eqs. 4-6) and teacher / student losses (Eqs. 7-10) in
`papers/vu2021/losses.py`. Here:

* CCC and 1 - CCC (Jeong Eqs. 1-2, Vu Eq. 2's regression term, Zhang Sec. 4.4 per window along
  time, Liu's (1 - CCC_v) + (1 - CCC_a) = ``2 * ccc_loss``; also the feature extractors'
  pre-training).
* Cross entropy and binary cross entropy with invalid labels masked (Jeong Eqs. 3-6, Vu Eq. 1).
* The building blocks of the papers' own losses: the validity rule, masked means and the
  checks of a logit distillation (Jeong Eq. 9, Vu Eqs. 4-6).

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

import torch
import torch.nn.functional as F

from common.data.affwild2 import AU_INVALID, EXPR_INVALID, VA_INVALID  # the ABAW invalid markers

__all__ = [
    "VA_INVALID", "EXPR_INVALID", "AU_INVALID",
    "ccc", "ccc_loss", "masked_cross_entropy", "masked_bce_with_logits",
    "same_shape", "valid_entries", "zero_invalid", "masked_mean", "distillation_rows",
]


# ------------------------------------------------------------- helpers (the papers' losses use them too)

def same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
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


def valid_entries(target: torch.Tensor, mask, invalid_marker, name: str) -> torch.Tensor:
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


def zero_invalid(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    # torch.where (not x * valid): 0 * NaN would still be NaN, and where() sends exactly zero
    # gradient to the entries it drops.
    return torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over the valid entries; a graph-connected 0 when none is valid."""
    total = zero_invalid(values, valid).sum()
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
    same_shape("pred", pred, "target", target)
    if isinstance(unbiased, str) and unbiased != "variance_only":
        raise ValueError(f"unbiased must be False, True or 'variance_only', got {unbiased!r}")
    divisors = unbiased if isinstance(unbiased, str) else ("sample" if unbiased else "population")
    if mask is None:
        valid = torch.ones_like(pred, dtype=torch.bool)
    else:
        valid = _broadcast_mask(mask, pred.shape, "pred", pred.device)
    weight = valid.to(pred.dtype)
    pred = zero_invalid(pred, valid)
    target = zero_invalid(target, valid)

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
    same_shape("pred", pred, "target", target)
    valid = valid_entries(target, mask, VA_INVALID, "target")
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
    return masked_mean(1.0 - values, has_valid)


# --------------------------------------------------------------------------- CE, BCE, distillation checks

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
    valid = valid_entries(target, mask, ignore, "target")
    out_of_range = valid & ((target < 0) | (target >= n_classes))
    if target.device.type == "cpu":
        if out_of_range.any():
            bad = target[out_of_range][0].item()
            raise ValueError(f"target holds class {bad}, outside 0..{n_classes - 1} and not the "
                             f"ignore value {ignore}")
    else:
        # On an accelerator the check must not wait for the device every step: it is
        # queued there, and a bad class stops the run at the next synchronisation.
        torch._assert_async(~out_of_range.any(), f"target holds a class outside 0..{n_classes - 1} "
                            f"and not the ignore value {ignore}")
    safe_logits = zero_invalid(logits, valid.unsqueeze(-1))
    safe_target = zero_invalid(target, valid).long()
    log_probs = F.log_softmax(safe_logits, dim=-1)
    picked = log_probs.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1)
    return masked_mean(-picked, valid)                                  # Jeong Eq. 3


def masked_bce_with_logits(logits: torch.Tensor, target: torch.Tensor, mask=None,
                           ignore: float = AU_INVALID) -> torch.Tensor:
    """Binary cross entropy on logits, mean over valid entries (Jeong Eqs. 5-6).

    BCE(y, y_hat) = -[y log y_hat + (1 - y) log(1 - y_hat)], y_hat = sigmoid(logits).
    (Jeong's Eq. 5 prints it without the minus sign; the loss minimised is the usual one.)
    target: same shape as logits, 0/1 labels or soft probabilities in [0, 1]; entries equal to
    `ignore` (-1) are missing labels. An entry counts when mask allows it AND it is not `ignore`.
    """
    same_shape("logits", logits, "target", target)
    valid = valid_entries(target, mask, ignore, "target")
    safe_logits = zero_invalid(logits, valid)
    safe_target = zero_invalid(target.to(logits.dtype), valid)
    # The logits form is the numerically stable way to compute log(sigmoid(.)).
    per_entry = F.binary_cross_entropy_with_logits(safe_logits, safe_target, reduction="none")
    return masked_mean(per_entry, valid)                                # Jeong Eq. 5


def distillation_rows(student_logits, teacher_logits, temperature, mask):
    """Shared checks of the logit distillation losses: same shapes, T > 0, one validity flag per
    row; invalid rows zeroed (so they carry no gradient) and the teacher detached."""
    same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    valid = _mask_for_rows(mask, student_logits, "student_logits")
    student = zero_invalid(student_logits, valid.unsqueeze(-1))
    teacher = zero_invalid(teacher_logits.detach(), valid.unsqueeze(-1))
    return student, teacher, valid
