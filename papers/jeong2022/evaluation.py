"""Jeong et al.'s validation metric as their released code computes it (ledger: evaluation_metric).

The authors score each validation set in batches: labelled rows only, each set shuffled with a
seed and cut into proportionally sized batches, F1 with ``zero_division=1``, the plain mean over
batches (EuiseokJeong/2022_ABAW_imlab@bb0513c:trainer.py:165-204, utils.py:52-104,
dataloader.py:62-71; docs/sources.md). ``jeong_code_metric`` is that procedure; the ABAW metric
of the same predictions is common.metrics.mtl_metrics, and Table 4's notebook compares the two.
It builds on the public input checks and F1 counts of common/metrics.py, so the two share one
definition of a valid frame, a class index and an F1.
"""
from __future__ import annotations

import numpy as np

from common.metrics import (AU_INVALID, EXPR_INVALID, VA_INVALID, argmax_scores, class_indices,
                            f1_from_counts, no_valid_frames)

__all__ = ["JEONG_SET_TASKS", "ABAW3_VALIDATION_FRAMES", "jeong_batch_sizes", "jeong_valid_rows",
           "jeong_batch_scores", "jeong_code_metric"]

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
            p = argmax_scores("expr_pred", p, np.ones(p.shape[:-1], bool))
        t = class_indices("expr_true", truth, num_classes)
        p = class_indices("expr_pred", p, num_classes)
        n_batches = len(t)
        cell = (np.arange(n_batches)[:, None] * num_classes + t) * num_classes + p
        confusion = np.bincount(cell.ravel(), minlength=n_batches * num_classes ** 2)
        confusion = confusion.reshape(n_batches, num_classes, num_classes)
        tp = np.diagonal(confusion, axis1=1, axis2=2)
        n_true, n_pred = confusion.sum(axis=2), confusion.sum(axis=1)
        present = (n_true + n_pred) > 0                              # labels=None
        f1 = f1_from_counts(tp, n_true, n_pred, 1.0)
        return (f1 * present).sum(axis=1) / present.sum(axis=1)
    if task == "au":
        t = np.asarray(truth, np.float64) == 1
        p = np.asarray(pred, np.float64) >= threshold
        f1 = f1_from_counts((t & p).sum(axis=1), t.sum(axis=1), p.sum(axis=1), 1.0)
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
            raise no_valid_frames(f"jeong_code_metric (set {name})", len(keep), -1)
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
