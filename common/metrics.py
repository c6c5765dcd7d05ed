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

``batch_averaged`` averages any metric over consecutive mini-batches: a generic tool that
studies how a number was obtained, and NOT what Jeong et al.'s released code does (it shuffles;
that procedure is papers/jeong2022/evaluation.py, ledger: evaluation_metric). The helpers that
check inputs and count F1 are public because that module and common/bootstrap.py (per-video
bootstrap intervals) build on them.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

# The class names and the invalid markers of the ABAW annotation files (VA -5, EXPR -1, AU -1)
# are defined once, by the reader.
from common.data.affwild2 import AU_INVALID, AU_NAMES, EXPR_INVALID, EXPR_NAMES, VA_INVALID  # noqa: F401

__all__ = [
    "NoValidFramesError", "ccc", "va_metrics", "expr_metrics", "au_metrics", "mtl_metrics",
    "abaw2_expr_criterion", "abaw2_au_criterion", "batch_averaged",
    "no_valid_frames", "class_indices", "argmax_scores", "check_zero_division", "f1_from_counts",
    "expr_from_confusion", "au_from_counts", "prepare_va", "prepare_expr", "prepare_au", "frame_count",
    "VA_INVALID", "EXPR_INVALID", "AU_INVALID", "EXPR_NAMES", "AU_NAMES",
]


class NoValidFramesError(ValueError):
    """A metric is undefined because no valid frame remains. It is a ValueError, so callers may
    catch either; ``batch_averaged`` and ``common.bootstrap.bootstrap_ci`` skip the batches or
    replicates that raise it, and only those: any other error still stops them."""


# --------------------------------------------------------------------------- input checks

def no_valid_frames(task: str, n: int, marker: int) -> NoValidFramesError:
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


def class_indices(name: str, x, num_classes: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)) or not np.all(x == np.round(x)):
        raise ValueError(f"{name} must hold integer class indices")
    x = x.astype(np.int64)
    bad = (x < 0) | (x >= num_classes)
    if bad.any():
        raise ValueError(f"{name} holds class {x[bad][0]} outside 0..{num_classes - 1} "
                         f"(num_classes={num_classes})")
    return x


def argmax_scores(name: str, scores: np.ndarray, scored) -> np.ndarray:
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


def check_zero_division(zero_division) -> float:
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


# --------------------------------------------------------------------------- F1 and accuracy

def f1_from_counts(tp, n_true, n_pred, zero_division: float) -> np.ndarray:
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


def expr_from_confusion(confusion, labels, zero_division: float) -> dict:
    """EXPR scores from confusion matrices (..., C, C), rows = truth, columns = prediction."""
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    f1 = f1_from_counts(tp, confusion.sum(axis=-1), confusion.sum(axis=-2), zero_division)
    f1 = f1[..., labels]
    accuracy = tp.sum(axis=-1) / np.maximum(confusion.sum(axis=(-2, -1)), 1)
    return {"f1_macro": f1.mean(axis=-1), "accuracy": accuracy, "p_expr": f1.mean(axis=-1),
            "f1_per_class": f1}


def au_from_counts(n_valid, n_true, n_pred, tp, zero_division: float) -> dict:
    """AU scores from per-AU counts (..., K)."""
    f1 = f1_from_counts(tp, n_true, n_pred, zero_division)
    correct = n_valid - n_true - n_pred + 2 * tp  # TP + TN
    accuracy = np.mean(correct / np.maximum(n_valid, 1), axis=-1)
    return {"f1_per_au": f1, "f1_mean": f1.mean(axis=-1), "accuracy": accuracy,
            "p_au": f1.mean(axis=-1)}


def _as_python(scores: dict) -> dict:
    """0-d arrays to float for the single-split result; per-class arrays stay arrays."""
    return {k: float(v) if np.ndim(v) == 0 else v for k, v in scores.items()}


# --------------------------------------------------------------------------- task metrics

def prepare_va(va_true, va_pred, mask):
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
            raise no_valid_frames(f"VA ({name})", len(t), VA_INVALID)
    return t, p, valid


def va_metrics(va_true, va_pred, mask=None) -> dict:
    """ABAW valence-arousal metric: CCC per dimension and P_VA = (CCC_V + CCC_A) / 2.

    va_true, va_pred: (N, 2) arrays, column 0 valence, column 1 arousal.
    mask: optional boolean (N,) per frame or (N, 2) per dimension. Ground truth equal to -5 is
    always excluded, so each dimension is scored on its own valid frames.
    """
    t, p, valid = prepare_va(va_true, va_pred, mask)
    out = {f"ccc_{name}": ccc(t[valid[:, col], col], p[valid[:, col], col])
           for col, name in enumerate(("valence", "arousal"))}
    out["p_va"] = (out["ccc_valence"] + out["ccc_arousal"]) / 2.0
    return out


def prepare_expr(expr_true, expr_pred, mask, num_classes, labels):
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
        raise no_valid_frames("EXPR", len(t), EXPR_INVALID)
    if p.ndim == 2:
        p = argmax_scores("expr_pred", p, valid)   # frames left out may hold NaN scores
    # Confusion cell index of every valid frame: truth * C + prediction.
    cell = (class_indices("expr_true", t[valid], num_classes) * num_classes
            + class_indices("expr_pred", p[valid], num_classes))
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
    zero_division = check_zero_division(zero_division)
    cell, _, labels = prepare_expr(expr_true, expr_pred, mask, num_classes, labels)
    confusion = np.bincount(cell, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    return _as_python(expr_from_confusion(confusion, labels, zero_division))


def prepare_au(au_true, au_pred, mask, threshold):
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
        raise no_valid_frames(f"AU ({name})", len(t), AU_INVALID)
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
    zero_division = check_zero_division(zero_division)
    valid, true_on, pred_on = prepare_au(au_true, au_pred, mask, threshold)
    return _as_python(au_from_counts(valid.sum(axis=0), true_on.sum(axis=0), pred_on.sum(axis=0),
                                      (true_on & pred_on).sum(axis=0), zero_division))


def mtl_metrics(va_true, va_pred, expr_true, expr_pred, au_true, au_pred, va_mask=None,
                expr_mask=None, au_mask=None, num_classes: int = 8, threshold: float = 0.5,
                zero_division=0) -> dict:
    """ABAW3 multi-task metric: P_MTL = P_VA + P_EXPR + P_AU, each on its own valid frames.

    Arguments are those of ``va_metrics``, ``expr_metrics`` and ``au_metrics``; the masks come
    after the six arrays so that they can be passed positionally (``batch_averaged`` and
    ``common.bootstrap.bootstrap_ci`` split or resample positional arrays only).
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

def frame_count(arrays, kw: dict) -> int:
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
    ``jeong_code_metric`` (papers/jeong2022/evaluation.py). Over consecutive frames of a video the
    VA labels barely vary, so CCC collapses here in a way it never does over the authors' shuffled batches.
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = frame_count(arrays, kw)
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
