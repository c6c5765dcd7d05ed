"""Merging the per-frame predictions of several models: CCC centering and clipping.

Zhang et al. 2021, Sec. 4.5 merge their 6 fold models on the test set with "CCC centering",
the AVEC gold-standard procedure for fusing several raters' continuous traces (AVEC 2016
`run_gold_standard.m`; Zhang's official code ports it). Here the models play the raters.
For M predictions p_1..p_M of the same frames:

    c_ij  = CCC(p_i, p_j)                          pairwise agreement, i != j
    a_i   = mean_{j != i} c_ij                     how much model i agrees with the others
    w_i   = max(a_i, 0) / sum_k max(a_k, 0)        agreement weights (uniform if all <= 0)
    mu    = sum_i w_i mean(p_i)                    agreement-weighted mean level
    q_i   = p_i - mean(p_i) + mu                   each prediction centred on mu
    fused = sum_i w_i q_i    (fusion="weighted")   the paper's "weighted prediction"
          = mean_i q_i       (fusion="mean")       a plain mean of the q_i, the step Zhang's released
                                                   script takes (its mu keeps negative agreements and
                                                   n - 1 variances: papers/zhang2021/train.py:released_merge)

Notes on the reading:
* The paper names the intra-class correlation (ICC); AVEC's script and Zhang's code use the
  pairwise CCC, as here (population variances; Zhang's port divides variances by n - 1, which
  changes the weights by O(1/n)).
* With fusion="weighted" the centring cancels out: sum_i w_i q_i = sum_i w_i p_i, so the result
  is the agreement-weighted average. Centring matters with fusion="mean", where the plain mean
  of the traces is moved to the weighted level mu: a model whose level is off and that
  disagrees with the others shifts the result less than in a plain average.
* Negative agreements are clipped to weight 0 (the original leaves them negative).
* Zhang's code centres each test trial (video) on its own; pass `groups` (one id per frame) to
  do that. Without `groups` the whole concatenated split is one trace.

Clipping to [-1, 1] (the valence/arousal range), Table 2 rows -CV-EC / -CV-LC:
* "early" (EC, "clipping-then-CCC-centering"): clip every model's prediction, then centre and
  fuse. The fused trace is not clipped again: with fusion="weighted" it is a convex
  combination of clipped traces and stays in [-1, 1]; with fusion="mean" the centring shift
  can take it slightly outside.
* "late" (LC, "CCC-centering-then-clipping"): centre and fuse the raw predictions, clip the result.
* "both": clip before and after (what the official script does when its early-clip line is
  enabled, since its late clip is unconditional). "none": no clipping.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from common.metrics import ccc

CLIP_MODES = ("early", "late", "both", "none")
FUSIONS = ("weighted", "mean")


def _stack(predictions: Sequence) -> np.ndarray:
    rows = [np.asarray(p, dtype=np.float64).ravel() for p in predictions]
    if not rows:
        raise ValueError("predictions is empty: no predictions to merge; pass one trace per model "
                         "(a list of arrays of the same frames)")
    lengths = [len(r) for r in rows]
    if len(set(lengths)) > 1:
        detail = ", ".join(f"predictions[{i}] has {n}" for i, n in enumerate(lengths))
        raise ValueError(f"predictions differ in length ({detail} frames); every model's trace "
                         f"must cover the same frames in the same order: predict each model on "
                         f"the same split, or cut them to the common frames")
    x = np.stack(rows)
    if not np.isfinite(x).all():
        raise ValueError("predictions contain NaN or inf")
    return x


def centre(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One trace per row (M, N) -> (centred rows q_i, weights w_i, agreements a_i)."""
    m = len(x)
    if m == 1:
        return x.copy(), np.ones(1), np.ones(1)
    pair = np.ones((m, m))
    for i in range(m):
        for j in range(i + 1, m):
            pair[i, j] = pair[j, i] = ccc(x[i], x[j])                 # c_ij
    agreement = (pair.sum(1) - 1.0) / (m - 1)                          # a_i, diagonal left out
    w = np.clip(agreement, 0.0, None)
    w = w / w.sum() if w.sum() > 0 else np.full(m, 1.0 / m)            # w_i
    means = x.mean(1)
    mu = w @ means                                                     # weighted mean level
    return x - means[:, None] + mu, w, agreement                       # q_i


def ccc_centering(predictions: Sequence, fusion: str = "weighted", groups=None):
    """Fused trace (N,) and the weights: (M,), or {group: (M,)} when `groups` is given."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    x = _stack(predictions)
    if groups is None:
        q, w, _ = centre(x)
        return (w @ q if fusion == "weighted" else q.mean(0)), w
    groups = np.asarray(groups)
    if groups.shape != (x.shape[1],):
        raise ValueError(f"groups has shape {groups.shape}, expected one id per frame ({x.shape[1]},)")
    fused, weights = np.empty(x.shape[1]), {}
    for g in np.unique(groups):
        sel = groups == g
        q, w, _ = centre(x[:, sel])
        fused[sel] = w @ q if fusion == "weighted" else q.mean(0)
        weights[g.item() if hasattr(g, "item") else g] = w
    return fused, weights


def merge_predictions(predictions: Sequence, clip: str = "late", fusion: str = "weighted",
                      groups=None, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    """CCC centering with early / late clipping (Zhang Sec. 4.5); see the module docstring."""
    if clip not in CLIP_MODES:
        raise ValueError(f"clip must be one of {CLIP_MODES}, got {clip!r}")
    x = _stack(predictions)
    if clip in ("early", "both"):
        x = np.clip(x, low, high)
    fused, _ = ccc_centering(x, fusion, groups)
    if clip in ("late", "both"):
        fused = np.clip(fused, low, high)
    return fused.astype(np.float32)
