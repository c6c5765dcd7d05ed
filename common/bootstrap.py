"""Percentile bootstrap confidence intervals of a split-level ABAW metric, resampling whole videos.

``bootstrap_ci`` gives the interval of one run's number on one split: frames of a video are
correlated, so each replicate draws videos, not frames. Because every metric of common/metrics.py
is a function of sums over frames (confusion counts, or the moments behind CCC), the bootstrap
sums each video once and then builds every replicate with one matrix product instead of
recomputing the metric on concatenated frames; any other metric is recomputed per replicate.

The claims of the reports judge the spread across runs (common/claims.py), not this interval;
this module serves a single run's number, where no second run exists to compare with.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from common.metrics import (NoValidFramesError, abaw2_au_criterion, abaw2_expr_criterion, au_from_counts,
                            au_metrics, ccc, check_zero_division, expr_from_confusion, expr_metrics,
                            frame_count, mtl_metrics, prepare_au, prepare_expr, prepare_va, va_metrics)

__all__ = ["bootstrap_ci"]


def _ccc_from_moments(n, s_t, s_p, s_tt, s_pp, s_tp) -> np.ndarray:
    """CCC from the sums n, sum t, sum p, sum t^2, sum p^2, sum t*p (any leading shape).

    Equal to ``ccc`` up to rounding (values in [-1, 1], so raw
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
    t, p, valid = prepare_va(va_true, va_pred, mask)
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
    zero_division = check_zero_division(zero_division)
    cell, valid, labels = prepare_expr(expr_true, expr_pred, mask, num_classes, labels)
    confusion = np.bincount(video[valid] * num_classes ** 2 + cell,
                            minlength=n_videos * num_classes ** 2)
    confusion = confusion.reshape(n_videos, num_classes, num_classes).astype(np.float64)
    return ([confusion],
            lambda c: (expr_from_confusion(c, labels, zero_division), c.sum(axis=(1, 2)) > 0))


def _au_per_video(video, n_videos, au_true, au_pred, mask=None, threshold=0.5, zero_division=0):
    zero_division = check_zero_division(zero_division)
    valid, true_on, pred_on = prepare_au(au_true, au_pred, mask, threshold)
    counts = np.stack([valid, true_on, pred_on, true_on & pred_on], axis=1)  # (N, 4, K)

    def scores(c):
        return au_from_counts(*np.moveaxis(c, 1, 0), zero_division), (c[:, 0] > 0).all(axis=1)
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
    n = frame_count(arrays, kw)
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
