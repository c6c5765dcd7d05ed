"""ABAW evaluation metrics for Aff-Wild2: VA (CCC), EXPR (macro F1), AU (mean F1) and MTL.

One module serves all four papers. Every task metric follows the same rules:

* Scores are computed over all valid frames of the split at once (videos concatenated), never
  averaged per video, as the ABAW challenges do.
* A frame is valid when the optional boolean ``mask`` says so AND its ground truth does not carry
  the corpus's invalid marker (VA -5, EXPR -1, AU -1). So raw annotation arrays can be passed
  without a mask, and a marker is never averaged in even if a mask forgets it.
* Predictions at invalid frames are ignored entirely (they may even be NaN).
* If no valid frame remains, ``NoValidFramesError`` (a ValueError) names the task: a metric never
  returns NaN.

F1 is computed from confusion counts with numpy. It equals scikit-learn's ``f1_score``, which
the official ABAW evaluation scripts call: F1 = 2 TP / (2 TP + FP + FN), and ``zero_division`` is
used only for a class that is absent from both the ground truth and the predictions. The tests
check this equality against scikit-learn directly.

Three helpers study how a number was obtained rather than what it is: ``jeong_code_metric``
reproduces Jeong et al.'s evaluation code (labelled rows only, each set shuffled with a seed and
cut into proportionally sized batches, F1 with ``zero_division=1``, the plain mean over batches;
EuiseokJeong/2022_ABAW_imlab@bb0513c:trainer.py:165-204, utils.py:52-104), ``batch_averaged`` averages any metric over consecutive mini-batches (a
generic tool, and NOT what the released code does (ledger: evaluation_metric): it never shuffles), and ``bootstrap_ci``
gives percentile confidence intervals by resampling whole videos. Because every metric here is
a function of sums over frames (confusion counts, or the moments behind CCC), the bootstrap sums
each video once and then builds every replicate with one matrix product instead of recomputing
the metric on concatenated frames.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

# The class names and the invalid markers of the ABAW annotation files (VA -5, EXPR -1, AU -1)
# are defined once, by the reader.
from common.data.affwild2 import AU_INVALID, AU_NAMES, EXPR_INVALID, EXPR_NAMES, VA_INVALID  # noqa: F401

__all__ = [
    "NoValidFramesError", "ccc", "va_metrics", "expr_metrics", "au_metrics", "mtl_metrics",
    "abaw2_expr_criterion", "abaw2_au_criterion", "batch_averaged", "bootstrap_ci",
    "jeong_batch_sizes", "jeong_valid_rows", "jeong_batch_scores", "jeong_code_metric",
    "JEONG_SET_TASKS", "ABAW3_VALIDATION_FRAMES",
    "VA_INVALID", "EXPR_INVALID", "AU_INVALID", "EXPR_NAMES", "AU_NAMES",
]


class NoValidFramesError(ValueError):
    """A metric is undefined because no valid frame remains. It is a ValueError, so callers may
    catch either; ``batch_averaged`` and ``bootstrap_ci`` skip the batches or replicates that
    raise it, and only those: any other error still stops them."""


# --------------------------------------------------------------------------- input checks

def _no_valid_frames(task: str, n: int, marker: int) -> NoValidFramesError:
    return NoValidFramesError(f"{task}: no valid frames (all {n} frames are masked out or carry "
                              f"the invalid marker {marker}); the metric is undefined")


def _valid_mask(task: str, mask, shape: tuple, marker_invalid: np.ndarray) -> np.ndarray:
    """Combine the user's mask (per frame or per element) with the marker-derived one."""
    if mask is None:
        return ~marker_invalid
    mask = np.asarray(mask)
    if mask.dtype != bool:
        # An integer array could be a list of indices; guessing would silently score wrong frames.
        raise ValueError(f"{task}: mask must be a boolean array, got dtype {mask.dtype}")
    if len(shape) == 2 and mask.shape == shape[:1]:
        mask = np.repeat(mask[:, None], shape[1], axis=1)
    if mask.shape != shape:
        allowed = f"{shape[:1]} or {shape}" if len(shape) == 2 else f"{shape}"
        raise ValueError(f"{task}: mask has shape {np.shape(mask)}, expected {allowed}")
    return mask & ~marker_invalid


def _class_indices(name: str, x, num_classes: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)) or not np.all(x == np.round(x)):
        raise ValueError(f"{name} must hold integer class indices")
    x = x.astype(np.int64)
    bad = (x < 0) | (x >= num_classes)
    if bad.any():
        raise ValueError(f"{name} holds class {x[bad][0]} outside 0..{num_classes - 1} "
                         f"(num_classes={num_classes})")
    return x


def _argmax_scores(name: str, scores: np.ndarray, scored) -> np.ndarray:
    """Class indices from (..., C) scores; NaN or +inf in a scored row is refused.

    ``np.argmax`` returns the first NaN's position (a row of NaN logits would count as class 0,
    one NaN would beat a logit of 5) and the first +inf's, so such a row has no winning class.
    -inf stays allowed: it is the log-probability of an impossible class. ``scored`` (bool,
    the leading shape of ``scores``) selects the rows that count; the others may hold anything.
    """
    with np.errstate(invalid="ignore"):
        bad = (np.isnan(scores) | (scores == np.inf)).any(axis=-1) & scored
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        at = f"frame {where[0]}" if len(where) == 1 else f"batch {where[0]}, frame {where[1]}"
        raise ValueError(f"{name} holds NaN or +inf class scores at {at} ({int(bad.sum())} scored "
                         f"frame(s) in all); every scored frame needs finite scores: check the "
                         f"model output for a diverged loss or overflow, or mask those frames out")
    return np.argmax(scores, axis=-1)


def _check_zero_division(zero_division) -> float:
    if zero_division not in (0, 1):
        raise ValueError(f"zero_division must be 0 or 1, got {zero_division!r}")
    return float(zero_division)


# --------------------------------------------------------------------------- CCC

def ccc(y_true, y_pred) -> float:
    """Lin's concordance correlation coefficient, the ABAW valence/arousal metric.

    CCC = 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2), with population (ddof=0)
    variance and covariance in float64, as in the ABAW evaluation and in Jeong et al.'s code.

    Degenerate cases are defined so that the result is never NaN:
    * one of the two series constant: the covariance is 0, so CCC = 0;
    * both constant: the formula is 0/0 when they are equal; we return 1.0 if the two series are
      identical (perfect agreement) and 0.0 otherwise (which is also the formula's value).
    """
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.ndim != 1 or t.shape != p.shape:
        raise ValueError(f"ccc expects two 1-D arrays of equal length: y_true {t.shape}, "
                         f"y_pred {p.shape}")
    if t.size == 0:
        raise NoValidFramesError("ccc: no frames (empty arrays)")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(p))):
        raise ValueError("ccc: y_true and y_pred must be finite (NaN or inf found)")

    t_const = t.max() == t.min()
    p_const = p.max() == p.min()
    if t_const and p_const:
        return 1.0 if t[0] == p[0] else 0.0
    if t_const or p_const:
        # Exactly 0: rounding in mean() could otherwise leave a 1e-17 "covariance".
        return 0.0
    dt = t - t.mean()
    dp = p - p.mean()
    n = t.size
    return float(2.0 * (dt @ dp / n) / (dt @ dt / n + dp @ dp / n + (t.mean() - p.mean()) ** 2))


def _ccc_from_moments(n, s_t, s_p, s_tt, s_pp, s_tp) -> np.ndarray:
    """CCC from the sums n, sum t, sum p, sum t^2, sum p^2, sum t*p (any leading shape).

    Used by the bootstrap only. Equal to ``ccc`` up to rounding (values in [-1, 1], so raw
    moments lose nothing that matters); 0/0 (both series constant and equal) gives 1 as there.
    """
    n = np.maximum(n, 1)  # replicates with n == 0 are discarded by the caller
    mean_t, mean_p = s_t / n, s_p / n
    var_t = np.maximum(s_tt / n - mean_t ** 2, 0.0)
    var_p = np.maximum(s_pp / n - mean_p ** 2, 0.0)
    cov = s_tp / n - mean_t * mean_p
    denom = var_t + var_p + (mean_t - mean_p) ** 2
    out = np.ones_like(denom)
    np.divide(2.0 * cov, denom, out=out, where=denom > 0)
    return out


# --------------------------------------------------------------------------- F1 and accuracy

def _f1_from_counts(tp, n_true, n_pred, zero_division: float) -> np.ndarray:
    """Per-class F1 = 2 TP / (n_true + n_pred), as scikit-learn >= 1.3 computes it.

    The denominator is 0 only when the class is absent from truth and prediction alike; that
    case scores ``zero_division`` (0 in the official evaluation, 1 in Jeong et al.'s code).
    Works elementwise on arrays of any shape (one row per bootstrap replicate, for instance).
    """
    tp = np.asarray(tp, dtype=np.float64)
    denom = np.asarray(n_true, dtype=np.float64) + np.asarray(n_pred, dtype=np.float64)
    f1 = np.full(np.broadcast(tp, denom).shape, zero_division, dtype=np.float64)
    np.divide(2.0 * tp, denom, out=f1, where=denom > 0)
    return f1


def _expr_from_confusion(confusion, labels, zero_division: float) -> dict:
    """EXPR scores from confusion matrices (..., C, C), rows = truth, columns = prediction."""
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    f1 = _f1_from_counts(tp, confusion.sum(axis=-1), confusion.sum(axis=-2), zero_division)
    f1 = f1[..., labels]
    accuracy = tp.sum(axis=-1) / np.maximum(confusion.sum(axis=(-2, -1)), 1)
    return {"f1_macro": f1.mean(axis=-1), "accuracy": accuracy, "p_expr": f1.mean(axis=-1),
            "f1_per_class": f1}


def _au_from_counts(n_valid, n_true, n_pred, tp, zero_division: float) -> dict:
    """AU scores from per-AU counts (..., K)."""
    f1 = _f1_from_counts(tp, n_true, n_pred, zero_division)
    correct = n_valid - n_true - n_pred + 2 * tp  # TP + TN
    accuracy = np.mean(correct / np.maximum(n_valid, 1), axis=-1)
    return {"f1_per_au": f1, "f1_mean": f1.mean(axis=-1), "accuracy": accuracy,
            "p_au": f1.mean(axis=-1)}


def _as_python(scores: dict) -> dict:
    """0-d arrays to float for the single-split result; per-class arrays stay arrays."""
    return {k: float(v) if np.ndim(v) == 0 else v for k, v in scores.items()}


# --------------------------------------------------------------------------- task metrics

def _prepare_va(va_true, va_pred, mask):
    t = np.asarray(va_true, dtype=np.float64)
    p = np.asarray(va_pred, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] != 2:
        raise ValueError(f"va_true has shape {t.shape}, expected (N, 2)")
    if p.shape != t.shape:
        raise ValueError(f"va_pred has shape {p.shape} but va_true has shape {t.shape}; "
                         "expected both (N, 2)")
    valid = _valid_mask("VA", mask, t.shape, t == VA_INVALID)
    for col, name in enumerate(("valence", "arousal")):
        if not valid[:, col].any():
            raise _no_valid_frames(f"VA ({name})", len(t), VA_INVALID)
    return t, p, valid


def va_metrics(va_true, va_pred, mask=None) -> dict:
    """ABAW valence-arousal metric: CCC per dimension and P_VA = (CCC_V + CCC_A) / 2.

    va_true, va_pred: (N, 2) arrays, column 0 valence, column 1 arousal.
    mask: optional boolean (N,) per frame or (N, 2) per dimension. Ground truth equal to -5 is
    always excluded, so each dimension is scored on its own valid frames.
    """
    t, p, valid = _prepare_va(va_true, va_pred, mask)
    out = {f"ccc_{name}": ccc(t[valid[:, col], col], p[valid[:, col], col])
           for col, name in enumerate(("valence", "arousal"))}
    out["p_va"] = (out["ccc_valence"] + out["ccc_arousal"]) / 2.0
    return out


def _prepare_expr(expr_true, expr_pred, mask, num_classes, labels):
    t = np.asarray(expr_true, dtype=np.float64)
    p = np.asarray(expr_pred)
    if t.ndim != 1:
        raise ValueError(f"expr_true has shape {t.shape}, expected (N,)")
    if p.ndim == 2:
        if p.shape != (len(t), num_classes):
            raise ValueError(f"expr_pred has shape {p.shape}, expected (N,) class indices or "
                             f"(N, num_classes) = ({len(t)}, {num_classes}) scores")
    elif p.shape != t.shape:
        raise ValueError(f"expr_pred has shape {p.shape} but expr_true has shape {t.shape}")
    labels = list(range(num_classes)) if labels is None else [int(c) for c in labels]
    if not labels or min(labels) < 0 or max(labels) >= num_classes:
        raise ValueError(f"labels {labels} must be a non-empty subset of 0..{num_classes - 1}")
    valid = _valid_mask("EXPR", mask, t.shape, t == EXPR_INVALID)
    if not valid.any():
        raise _no_valid_frames("EXPR", len(t), EXPR_INVALID)
    if p.ndim == 2:
        p = _argmax_scores("expr_pred", p, valid)   # frames left out may hold NaN scores
    # Confusion cell index of every valid frame: truth * C + prediction.
    cell = (_class_indices("expr_true", t[valid], num_classes) * num_classes
            + _class_indices("expr_pred", p[valid], num_classes))
    return cell, valid, labels


def expr_metrics(expr_true, expr_pred, mask=None, num_classes: int = 8, labels=None,
                 zero_division=0) -> dict:
    """ABAW expression metric: macro F1 over the classes (P_EXPR from ABAW3 on), plus accuracy.

    expr_true: (N,) class indices, -1 marks an unannotated frame (always excluded).
    expr_pred: (N,) class indices, or (N, num_classes) scores/logits/probabilities (argmax taken).
    mask: optional boolean (N,).
    labels: the classes averaged in the macro F1 (default ``range(num_classes)``), as
        scikit-learn's ``f1_score(labels=..., average='macro')``. Every listed class counts,
        so a class absent from both truth and prediction contributes ``zero_division`` to the
        mean: 0 by default (the official evaluation), 1 in Jeong et al.'s code.
    Returns f1_macro, accuracy (over all valid frames), p_expr (= f1_macro) and f1_per_class
    (an array in the order of ``labels``).
    """
    zero_division = _check_zero_division(zero_division)
    cell, _, labels = _prepare_expr(expr_true, expr_pred, mask, num_classes, labels)
    confusion = np.bincount(cell, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    return _as_python(_expr_from_confusion(confusion, labels, zero_division))


def _prepare_au(au_true, au_pred, mask, threshold):
    t = np.asarray(au_true, dtype=np.float64)
    p = np.asarray(au_pred, dtype=np.float64)
    if t.ndim != 2:
        raise ValueError(f"au_true has shape {t.shape}, expected (N, num_aus)")
    if p.shape != t.shape:
        raise ValueError(f"au_pred has shape {p.shape} but au_true has shape {t.shape}")
    valid = _valid_mask("AU", mask, t.shape, t == AU_INVALID)
    n_valid = valid.sum(axis=0)
    if (n_valid == 0).any():
        col = int(np.argmin(n_valid))
        name = AU_NAMES[col] if t.shape[1] == len(AU_NAMES) else f"column {col}"
        raise _no_valid_frames(f"AU ({name})", len(t), AU_INVALID)
    if not np.all((t == 0) | (t == 1) | ~valid):
        raise ValueError("au_true must hold 0, 1 or the invalid marker -1")
    if not np.all(np.isfinite(p) | ~valid):
        raise ValueError("au_pred must be finite at valid frames (NaN or inf found)")
    true_on = valid & (t == 1)
    pred_on = valid & (p >= threshold)
    return valid, true_on, pred_on


def au_metrics(au_true, au_pred, mask=None, threshold: float = 0.5, zero_division=0) -> dict:
    """ABAW action-unit metric: binary F1 per AU, P_AU = mean F1 over the AUs (ABAW3 on).

    au_true: (N, K) 0/1, -1 marks an unannotated element (always excluded); K = 12 in ABAW.
    au_pred: (N, K) probabilities (binarised as ``pred >= threshold``) or 0/1 decisions.
    mask: optional boolean (N,) or (N, K). Each AU is scored on its own valid frames.
    Returns f1_per_au (array), f1_mean (= p_au) and accuracy, the mean over AUs of each AU's
    accuracy (equal to the ABAW2 "total accuracy" over all elements when every AU has the same
    valid frames).
    """
    zero_division = _check_zero_division(zero_division)
    valid, true_on, pred_on = _prepare_au(au_true, au_pred, mask, threshold)
    return _as_python(_au_from_counts(valid.sum(axis=0), true_on.sum(axis=0), pred_on.sum(axis=0),
                                      (true_on & pred_on).sum(axis=0), zero_division))


def mtl_metrics(va_true, va_pred, expr_true, expr_pred, au_true, au_pred, va_mask=None,
                expr_mask=None, au_mask=None, num_classes: int = 8, threshold: float = 0.5,
                zero_division=0) -> dict:
    """ABAW3 multi-task metric: P_MTL = P_VA + P_EXPR + P_AU, each on its own valid frames.

    Arguments are those of ``va_metrics``, ``expr_metrics`` and ``au_metrics``; the masks come
    after the six arrays so that they can be passed positionally (``batch_averaged`` and
    ``bootstrap_ci`` split or resample positional arrays only).
    Returns ccc_valence, ccc_arousal, p_va, p_expr, p_au and p_mtl.
    """
    va = va_metrics(va_true, va_pred, va_mask)
    expr = expr_metrics(expr_true, expr_pred, expr_mask, num_classes=num_classes,
                        zero_division=zero_division)
    au = au_metrics(au_true, au_pred, au_mask, threshold=threshold, zero_division=zero_division)
    return {"ccc_valence": va["ccc_valence"], "ccc_arousal": va["ccc_arousal"],
            "p_va": va["p_va"], "p_expr": expr["p_expr"], "p_au": au["p_au"],
            "p_mtl": va["p_va"] + expr["p_expr"] + au["p_au"]}


def abaw2_expr_criterion(expr_true, expr_pred, mask=None, num_classes: int = 7,
                         zero_division=0) -> float:
    """ABAW1/2 expression criterion: 0.67 * macro F1 + 0.33 * accuracy over 7 classes.

    This is the number Vu et al. (2021) report and select models on. Arguments as in
    ``expr_metrics``; ground truth must not contain class 7 ("Other", added in ABAW3).
    """
    m = expr_metrics(expr_true, expr_pred, mask, num_classes=num_classes,
                     zero_division=zero_division)
    return 0.67 * m["f1_macro"] + 0.33 * m["accuracy"]


def abaw2_au_criterion(au_true, au_pred, mask=None, threshold: float = 0.5,
                       zero_division=0) -> float:
    """ABAW1/2 action-unit criterion: 0.5 * mean F1 + 0.5 * accuracy (see ``au_metrics``)."""
    m = au_metrics(au_true, au_pred, mask, threshold=threshold, zero_division=zero_division)
    return 0.5 * m["f1_mean"] + 0.5 * m["accuracy"]


# --------------------------------------------------------------------------- batch averaging

def _frame_count(arrays, kw: dict) -> int:
    """Common length of the non-None positional arrays (None, e.g. mask=None, is passed on)."""
    shapes = [np.shape(a) for a in arrays if a is not None]
    if not shapes:
        raise ValueError("at least one array is required")
    if any(len(s) == 0 for s in shapes) or len({s[0] for s in shapes}) != 1:
        listed = ", ".join(f"arrays[{i}] {np.shape(a)}" for i, a in enumerate(arrays))
        raise ValueError(f"arrays must have the same number of frames: got {listed}")
    n = shapes[0][0]
    for name, value in kw.items():
        # A per-frame mask given by keyword would not be split or resampled with the frames.
        if isinstance(value, np.ndarray) and value.ndim > 0 and len(value) == n:
            raise ValueError(f"keyword argument {name} has one entry per frame {value.shape}; "
                             "pass per-frame arrays positionally so that they follow the frames")
    return n


def batch_averaged(metric_fn: Callable, *arrays, batch_size: int = 256, **kw):
    """A metric averaged over consecutive mini-batches (not Jeong et al.'s procedure: see below).

    The positional ``arrays`` (None entries are passed through) are cut into consecutive
    batches of ``batch_size`` frames, the last one possibly shorter; ``metric_fn(*batch, **kw)``
    is evaluated on each and every returned key is averaged with equal weight per batch
    (arrays such as ``f1_per_class`` elementwise). A scalar-returning metric gives a float.
    Batches where the metric is undefined (``NoValidFramesError``: no valid frame in the batch)
    are skipped. Per-frame arrays such as masks must be passed positionally, so that they are
    split too; keyword arguments go unchanged to every batch.

    This is not an ABAW metric: CCC and F1 are not averages over frames, so the result differs
    from the split-level number. With ``zero_division=1`` every batch in which a rare class is
    absent from truth and prediction scores F1 = 1 for that class, which inflates P_EXPR and
    P_AU; compare ``batch_averaged(expr_metrics, t, p, zero_division=1)`` with
    ``expr_metrics(t, p)`` on the same predictions to measure the effect.

    Jeong et al.'s code does not batch this way: it shuffles each set first, sizes each set's
    batch in proportion to the set, and keeps labels=None in the expression F1. That procedure is
    ``jeong_code_metric``. Over consecutive frames of a video the VA labels barely vary, so CCC
    collapses here in a way it never does over the authors' shuffled batches.
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = _frame_count(arrays, kw)
    results = []
    for start in range(0, n, batch_size):
        batch = [None if a is None else a[start:start + batch_size] for a in arrays]
        try:
            results.append(metric_fn(*batch, **kw))
        except NoValidFramesError:
            # Jeong's evaluation streams hold labelled frames only, so such batches never occur
            # there; here they carry no information about the metric.
            continue
    if not results:
        raise NoValidFramesError(f"batch_averaged: the metric was undefined on every batch of "
                                 f"the {n} frames")
    if isinstance(results[0], dict):
        return {key: _mean_of([r[key] for r in results]) for key in results[0]}
    return _mean_of(results)


def _mean_of(values):
    mean = np.mean(np.stack([np.asarray(v, dtype=np.float64) for v in values]), axis=0)
    return float(mean) if np.ndim(mean) == 0 else mean


# --------------------------------------------------------------------------- Jeong et al.'s code

# The evaluation sets of Jeong et al.'s validation pass and the tasks each one scores: the three
# single-task sets (each on its own annotation) and the MTL set (all three tasks on its rows).
JEONG_SET_TASKS = {"va": ("va",), "expr": ("expr",), "au": ("au",), "mtl": ("va", "expr", "au")}

# The ABAW3 validation sets in frames, the sizes the authors' batch-size formula met (option
# ``set_sizes=ABAW3_VALIDATION_FRAMES`` of ``jeong_code_metric``). Sources and derivation:
# * mtl 26,876: the s-Aff-Wild2 validation partition of the ABAW3 MTL challenge (Kollias, CVPRW
#   2022).
# * va / expr / au: no frame count per partition is printed in the four papers, so each is
#   estimated as the annotated frames of Jeong et al. Sec. 5.1 (VA 2,816,832, EXPR 2,603,921,
#   AU 2,603,921) times the task's share of validation videos in ABAW3 (VA 71 of 564, EXPR 70
#   of 546, AU 105 of 541): 354,601 / 333,836 / 505,382, a few hundred thousand each.
# With these, max_iter = ceil(505,382 / 256) = 1,975 and the batches hold VA 179, EXPR 169, AU 255
# and MTL 13 frames (an MTL batch of ~15 corresponds to a largest set of 430-460 k frames);
# any largest set between 400 k and 520 k gives MTL batches of 13 to 17 frames, so the conclusion
# does not hinge on the estimate (Table 4's notebook plots every term against the batch size).
# The code drops unlabelled MTL rows before batching, so the real MTL batches were at most this big.
ABAW3_VALIDATION_FRAMES = {"va": 354_601, "expr": 333_836, "au": 505_382, "mtl": 26_876}


def jeong_batch_sizes(set_sizes: dict, largest: int = 256) -> tuple[dict, int]:
    """The authors' batch sizes: (batch size per set, max_iter).

    max_iter = ceil(largest set's frame count / ``largest``); each set's batch size is
    floor(its frame count / max_iter). Only the largest set gets about ``largest`` frames; the
    others get proportionally fewer (the MTL set of ABAW3: 13, see ``ABAW3_VALIDATION_FRAMES``).
    """
    if int(largest) != largest or largest < 1:
        raise ValueError(f"largest must be a positive integer, got {largest!r}")
    counts = {name: int(n) for name, n in set_sizes.items()}
    if not counts or min(counts.values()) < 1:
        raise ValueError(f"set_sizes must give every set at least one frame, got {set_sizes}")
    max_iter = -(-max(counts.values()) // int(largest))            # ceil
    sizes = {name: n // max_iter for name, n in counts.items()}
    empty = [name for name, b in sizes.items() if b == 0]
    if empty:
        raise ValueError(f"sets {empty} have fewer frames than max_iter = {max_iter}: their batches "
                         f"would be empty (set_sizes {counts})")
    return sizes, max_iter


def jeong_valid_rows(labels: dict, tasks, substring: bool = False) -> np.ndarray:
    """Rows the authors' loader keeps: no -5 (VA) or -1 (EXPR, AU) anywhere in the label row.

    ``labels`` maps task -> (N, ...) annotations; a row of the MTL set is dropped if any of its
    three tasks carries a marker (the whole 22-value row), an AU row if any of its 12 AUs does.
    ``substring``: the per-task files are tested as text ('-1' in line, EuiseokJeong/2022_ABAW_imlab@bb0513c:
    dataloader.py:123), so a VA row with a value of -1 (written -1.000) is dropped too; the MTL file's
    fields are compared whole (dataloader.py:106) (ledger: row_filter).
    """
    markers = {"va": VA_INVALID, "expr": EXPR_INVALID, "au": AU_INVALID}
    keep = None
    for task in tasks:
        a = np.asarray(labels[task], dtype=np.float64)
        bad = (a <= -1) if substring and task == "va" else a == markers[task]
        bad = bad.reshape(len(a), -1).any(axis=1)
        keep = ~bad if keep is None else keep & ~bad
    return keep


def _batched_ccc(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """CCC of every row of (B, b) arrays, population variances, degenerate cases as ``ccc``."""
    mt, mp = t.mean(axis=1, keepdims=True), p.mean(axis=1, keepdims=True)
    dt, dp = t - mt, p - mp
    var_t, var_p, cov = (dt * dt).mean(axis=1), (dp * dp).mean(axis=1), (dt * dp).mean(axis=1)
    denom = var_t + var_p + (mt[:, 0] - mp[:, 0]) ** 2
    out = np.zeros(len(t))
    np.divide(2.0 * cov, denom, out=out, where=denom > 0)
    t_const, p_const = t.max(axis=1) == t.min(axis=1), p.max(axis=1) == p.min(axis=1)
    out[t_const ^ p_const] = 0.0
    both = t_const & p_const
    out[both] = (t[both, 0] == p[both, 0]).astype(np.float64)
    return out


def jeong_batch_scores(task: str, truth: np.ndarray, pred: np.ndarray, threshold: float = 0.5,
                       num_classes: int = 8) -> np.ndarray:
    """One score per batch, as the authors' ``utils.get_metric`` computes it.

    truth / pred hold B batches of b labelled frames: (B, b, 2) VA, (B, b) EXPR classes (pred may
    be (B, b, C) scores, argmaxed), (B, b, 12) AU (pred: probabilities, ``>= threshold``).
    * va: (CCC_V + CCC_A) / 2, each CCC with population variances (tf.math.reduce_variance);
    * expr: ``f1_score(true, pred, average='macro', zero_division=1)`` with labels=None, i.e. the
      mean over the classes present in the batch's truth or prediction only; a class present in
      one of them and never matched scores 0, a class absent from both is left out, not scored;
    * au: per AU ``f1_score(..., zero_division=1)`` (an AU absent from the batch's truth and
      prediction scores 1), then the mean over the AUs.
    """
    if task == "va":
        t, p = np.asarray(truth, np.float64), np.asarray(pred, np.float64)
        return (_batched_ccc(t[..., 0], p[..., 0]) + _batched_ccc(t[..., 1], p[..., 1])) / 2.0
    if task == "expr":
        p = np.asarray(pred)
        if p.ndim == 3:
            p = _argmax_scores("expr_pred", p, np.ones(p.shape[:-1], bool))
        t = _class_indices("expr_true", truth, num_classes)
        p = _class_indices("expr_pred", p, num_classes)
        n_batches = len(t)
        cell = (np.arange(n_batches)[:, None] * num_classes + t) * num_classes + p
        confusion = np.bincount(cell.ravel(), minlength=n_batches * num_classes ** 2)
        confusion = confusion.reshape(n_batches, num_classes, num_classes)
        tp = np.diagonal(confusion, axis1=1, axis2=2)
        n_true, n_pred = confusion.sum(axis=2), confusion.sum(axis=1)
        present = (n_true + n_pred) > 0                              # labels=None
        f1 = _f1_from_counts(tp, n_true, n_pred, 1.0)
        return (f1 * present).sum(axis=1) / present.sum(axis=1)
    if task == "au":
        t = np.asarray(truth, np.float64) == 1
        p = np.asarray(pred, np.float64) >= threshold
        f1 = _f1_from_counts((t & p).sum(axis=1), t.sum(axis=1), p.sum(axis=1), 1.0)
        return f1.mean(axis=1)
    raise ValueError(f"task must be 'va', 'expr' or 'au', got {task!r}")


def jeong_code_metric(truth: dict, pred: dict, seed: int = 0, set_sizes: dict | None = None,
                      batch_sizes: dict | None = None, largest: int = 256, shuffle: bool = True,
                      threshold: float = 0.5, num_classes: int = 8) -> dict:
    """Jeong et al.'s validation metric, as their released code computes it (ledger: evaluation_metric):
    EuiseokJeong/2022_ABAW_imlab@bb0513c:trainer.py:165-204 with utils.py:52-104 and dataloader.py:62-71.

    truth, pred: {set name: {task: (N, ...) array}} for the evaluation sets of one split, the set
    names and their tasks as in ``JEONG_SET_TASKS`` ("va", "expr", "au": one task each on its own
    annotation; "mtl": all three). Any subset of the sets may be given. The procedure:

    1. label filtering: rows whose label row holds a -5 or -1 are dropped (``jeong_valid_rows``; in
       the single-task sets also a VA of -1, which the loader's text test catches);
    2. batch sizes (``jeong_batch_sizes``): max_iter = ceil(largest set / ``largest``), each set's
       batch = floor(its frames / max_iter), from ``set_sizes`` (default: the frame counts of the
       given sets after filtering, i.e. the formula applied to these sets; pass
       ``ABAW3_VALIDATION_FRAMES`` for the sizes the authors' sets had: every set listed there
       counts towards max_iter, scored here or not) or given directly as
       ``batch_sizes`` (a sweep);
    3. each set's frames are shuffled (``np.random.default_rng`` seeded with ``seed`` and the
       set's position in ``JEONG_SET_TASKS``) and cut into batches of its size; the code's loop runs
       max_iter steps, so a set yields min(max_iter, frames // batch) batches and the remaining
       frames are not scored (``batch_sizes`` given: frames // batch batches);
    4. every batch is scored by ``jeong_batch_scores`` and each score is the plain mean over the
       set's batches; P_MTL = mean CCC + EXPR F1 + AU F1 of the MTL set (the mean of the per-batch
       sums, which is the same number).

    ``shuffle=False`` cuts the filtered frames in their given order instead: NOT the authors'
    procedure, for comparison only.

    Returns stl_<task> for each single-task set, stl_total when all three are given, mtl_<task>
    and mtl for the MTL set, and the procedure's numbers: batch_sizes, n_batches, frames (after
    filtering) and max_iter (None when ``batch_sizes`` was given).
    """
    unknown = sorted(set(truth) - set(JEONG_SET_TASKS))
    if unknown or set(pred) != set(truth):
        raise ValueError(f"truth and pred must hold the same sets among {list(JEONG_SET_TASKS)}; "
                         f"got {sorted(truth)} and {sorted(pred)}")
    kept = {}
    for name in truth:
        tasks = JEONG_SET_TASKS[name]
        lengths = {len(truth[name][t]) for t in tasks} | {len(pred[name][t]) for t in tasks}
        if len(lengths) != 1:
            raise ValueError(f"set {name}: the label and prediction arrays differ in length {sorted(lengths)}")
        keep = jeong_valid_rows(truth[name], tasks, substring=name != "mtl")
        if not keep.any():
            raise _no_valid_frames(f"jeong_code_metric (set {name})", len(keep), -1)
        kept[name] = keep
    frames = {name: int(k.sum()) for name, k in kept.items()}
    if batch_sizes is not None:
        sizes, max_iter = {name: int(batch_sizes[name]) for name in truth}, None
        if min(sizes.values()) < 1:
            raise ValueError(f"batch_sizes must be positive, got {batch_sizes}")
    else:
        # Every set of set_sizes counts towards max_iter, also those not scored here.
        sizes, max_iter = jeong_batch_sizes(frames if set_sizes is None else set_sizes, largest)
        sizes = {name: sizes[name] for name in truth}
    out = {"batch_sizes": sizes, "frames": frames, "max_iter": max_iter, "n_batches": {}}
    for name in truth:
        b, n = sizes[name], frames[name]
        n_batches = n // b if max_iter is None else min(max_iter, n // b)
        if n_batches == 0:
            raise ValueError(f"set {name}: {n} labelled frames, fewer than one batch of {b}")
        order = np.flatnonzero(kept[name])
        if shuffle:
            order = np.random.default_rng([seed, list(JEONG_SET_TASKS).index(name)]).permutation(order)
        take = order[:n_batches * b].reshape(n_batches, b)
        out["n_batches"][name] = n_batches
        for task in JEONG_SET_TASKS[name]:
            t, p = np.asarray(truth[name][task]), np.asarray(pred[name][task])
            score = float(jeong_batch_scores(task, t[take], p[take], threshold, num_classes).mean())
            out[f"mtl_{task}" if name == "mtl" else f"stl_{task}"] = score
    if all(f"stl_{t}" in out for t in ("va", "expr", "au")):
        out["stl_total"] = out["stl_va"] + out["stl_expr"] + out["stl_au"]
    if "mtl" in truth:
        out["mtl"] = out["mtl_va"] + out["mtl_expr"] + out["mtl_au"]
    return out


# --------------------------------------------------------------------------- bootstrap

def _sum_per_video(values: np.ndarray, video: np.ndarray, n_videos: int) -> np.ndarray:
    """Sum the rows of ``values`` (N, ...) that belong to each video -> (n_videos, ...)."""
    out = np.zeros((n_videos,) + values.shape[1:])
    np.add.at(out, video, values)
    return out


# Each function below returns (per-video sums, scores): ``sums`` is a list of arrays with one row
# per video; ``scores(*replicate_sums)`` takes the same arrays with one row per bootstrap
# replicate and returns (dict or array of metric values, bool array: replicate is defined).
# They accept exactly the arguments of the metric they stand for.

def _ccc_per_video(video, n_videos, y_true, y_pred):
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    moments = np.stack([np.ones_like(t), t, p, t * t, p * p, t * p], axis=-1)
    return ([_sum_per_video(moments, video, n_videos)],
            lambda s: (_ccc_from_moments(*np.moveaxis(s, -1, 0)), s[:, 0] > 0))


def _va_per_video(video, n_videos, va_true, va_pred, mask=None):
    t, p, valid = _prepare_va(va_true, va_pred, mask)
    t = np.where(valid, t, 0.0)  # invalid frames add nothing (and NaN predictions no NaN)
    p = np.where(valid, p, 0.0)
    moments = np.stack([valid, t, p, t * t, p * p, t * p], axis=-1)  # (N, 2, 6)

    def scores(s):
        c = _ccc_from_moments(*np.moveaxis(s, -1, 0))  # (B, 2)
        return ({"ccc_valence": c[:, 0], "ccc_arousal": c[:, 1], "p_va": c.mean(axis=1)},
                (s[:, :, 0] > 0).all(axis=1))
    return [_sum_per_video(moments, video, n_videos)], scores


def _expr_per_video(video, n_videos, expr_true, expr_pred, mask=None, num_classes=8,
                    labels=None, zero_division=0):
    zero_division = _check_zero_division(zero_division)
    cell, valid, labels = _prepare_expr(expr_true, expr_pred, mask, num_classes, labels)
    confusion = np.bincount(video[valid] * num_classes ** 2 + cell,
                            minlength=n_videos * num_classes ** 2)
    confusion = confusion.reshape(n_videos, num_classes, num_classes).astype(np.float64)
    return ([confusion],
            lambda c: (_expr_from_confusion(c, labels, zero_division), c.sum(axis=(1, 2)) > 0))


def _au_per_video(video, n_videos, au_true, au_pred, mask=None, threshold=0.5, zero_division=0):
    zero_division = _check_zero_division(zero_division)
    valid, true_on, pred_on = _prepare_au(au_true, au_pred, mask, threshold)
    counts = np.stack([valid, true_on, pred_on, true_on & pred_on], axis=1)  # (N, 4, K)

    def scores(c):
        return _au_from_counts(*np.moveaxis(c, 1, 0), zero_division), (c[:, 0] > 0).all(axis=1)
    return [_sum_per_video(counts, video, n_videos)], scores


def _mtl_per_video(video, n_videos, va_true, va_pred, expr_true, expr_pred, au_true, au_pred,
                   va_mask=None, expr_mask=None, au_mask=None, num_classes=8, threshold=0.5,
                   zero_division=0):
    (va_sums,), va_scores = _va_per_video(video, n_videos, va_true, va_pred, va_mask)
    (ex_sums,), ex_scores = _expr_per_video(video, n_videos, expr_true, expr_pred, expr_mask,
                                            num_classes, None, zero_division)
    (au_sums,), au_scores = _au_per_video(video, n_videos, au_true, au_pred, au_mask, threshold,
                                          zero_division)

    def scores(va_s, ex_s, au_s):
        (va, ok_va), (ex, ok_ex), (au, ok_au) = va_scores(va_s), ex_scores(ex_s), au_scores(au_s)
        return ({"ccc_valence": va["ccc_valence"], "ccc_arousal": va["ccc_arousal"],
                 "p_va": va["p_va"], "p_expr": ex["p_expr"], "p_au": au["p_au"],
                 "p_mtl": va["p_va"] + ex["p_expr"] + au["p_au"]}, ok_va & ok_ex & ok_au)
    return [va_sums, ex_sums, au_sums], scores


def _abaw2_expr_per_video(video, n_videos, expr_true, expr_pred, mask=None, num_classes=7,
                          zero_division=0):
    sums, ex_scores = _expr_per_video(video, n_videos, expr_true, expr_pred, mask, num_classes,
                                      None, zero_division)

    def scores(c):
        m, ok = ex_scores(c)
        return 0.67 * m["f1_macro"] + 0.33 * m["accuracy"], ok
    return sums, scores


def _abaw2_au_per_video(video, n_videos, au_true, au_pred, mask=None, threshold=0.5,
                        zero_division=0):
    sums, au_scores = _au_per_video(video, n_videos, au_true, au_pred, mask, threshold,
                                    zero_division)

    def scores(c):
        m, ok = au_scores(c)
        return 0.5 * m["f1_mean"] + 0.5 * m["accuracy"], ok
    return sums, scores


_PER_VIDEO = {ccc: _ccc_per_video, va_metrics: _va_per_video, expr_metrics: _expr_per_video,
              au_metrics: _au_per_video, mtl_metrics: _mtl_per_video,
              abaw2_expr_criterion: _abaw2_expr_per_video,
              abaw2_au_criterion: _abaw2_au_per_video}


def bootstrap_ci(metric_fn: Callable, *arrays, groups, n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0, key=None, **kw) -> dict:
    """Percentile bootstrap confidence interval of a split-level metric, resampling videos.

    Frames of one video are correlated, so they are not independent draws: each bootstrap
    replicate draws as many videos as there are, with replacement, concatenates all frames of
    the drawn videos (a video drawn twice counts twice) and recomputes
    ``metric_fn(*arrays, **kw)`` on them. ``groups`` gives the video id of every frame. ``key``
    selects one entry when the metric returns a dict (e.g. ``key="p_va"``). None entries in
    ``arrays`` are passed through; per-frame arrays such as masks must be positional.

    For the metrics of this module, the replicates are built from per-video sums (see the
    module docstring), which gives the same numbers as concatenating frames, thousands of times
    faster; any other ``metric_fn`` is recomputed on the concatenated frames of each replicate.

    Returns value (the metric on all frames), low and high (the alpha/2 and 1 - alpha/2
    quantiles of the replicates) and n_boot, the number of replicates used: a replicate on
    which the metric is undefined (no valid frame among the drawn videos) is dropped.
    The same seed gives the same interval.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    n = _frame_count(arrays, kw)
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups has shape {groups.shape}, expected one video id per frame "
                         f"({n},)")

    def pick(result):
        if isinstance(result, dict):
            if key is None:
                raise ValueError(f"metric returns a dict; pass key= one of {sorted(result)}")
            return result[key]
        return result

    # The point estimate first: it also validates the inputs with the metric's own messages.
    value = float(pick(metric_fn(*arrays, **kw)))

    video = np.unique(groups, return_inverse=True)[1].ravel()  # video index 0..V-1 per frame
    n_videos = int(video.max()) + 1
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_videos, size=(n_boot, n_videos))

    if metric_fn in _PER_VIDEO:
        # times[b, v] = how often replicate b drew video v; a replicate's sums are then
        # times @ per-video sums, for all replicates in one product.
        times = np.zeros((n_boot, n_videos))
        np.add.at(times, (np.arange(n_boot)[:, None], draws), 1.0)
        sums, scores = _PER_VIDEO[metric_fn](video, n_videos, *arrays, **kw)
        values, defined = scores(*[np.tensordot(times, s, axes=1) for s in sums])
        replicates = np.asarray(pick(values), dtype=np.float64)[defined]
    else:
        replicates = _bootstrap_by_concatenation(metric_fn, arrays, kw, video, draws, pick)

    if replicates.size == 0:
        raise NoValidFramesError("bootstrap_ci: the metric was undefined on every replicate")
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    return {"value": value, "low": float(low), "high": float(high),
            "n_boot": int(replicates.size)}


def _bootstrap_by_concatenation(metric_fn, arrays, kw, video, draws, pick) -> np.ndarray:
    """The plain bootstrap: recompute the metric on the concatenated frames of each replicate."""
    # Sort frames by video once, so that every video is a contiguous run [start, start + length).
    order = np.argsort(video, kind="stable")
    sorted_arrays = [None if a is None else np.asarray(a)[order] for a in arrays]
    lengths = np.bincount(video)
    starts = np.cumsum(lengths) - lengths
    replicates = []
    for drawn in draws:
        # Frame j of the replicate is frame start(v) + (j - offset of v in the replicate) of the
        # sorted arrays, for the drawn video v that covers position j.
        run_lengths = lengths[drawn]
        run_offsets = np.cumsum(run_lengths) - run_lengths
        index = np.repeat(starts[drawn] - run_offsets, run_lengths) + np.arange(run_lengths.sum())
        try:
            replicates.append(float(pick(metric_fn(
                *[None if a is None else a[index] for a in sorted_arrays], **kw))))
        except NoValidFramesError:
            continue
    return np.asarray(replicates, dtype=np.float64)
