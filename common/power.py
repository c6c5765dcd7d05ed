"""How many runs a claim needs: power at its delta, and the runs to plan within a budget.

The procedure (its error rates are simulated in tests/test_power.py through this code and
common.claims.judge_claim):
1. A pilot: the runs a claim has so far give the spread sd of its per-run effect.
2. The plan: the smallest n whose power reaches 80 % at the claim's delta, under sd (`runs_needed`),
   capped by the paper's budget (params.yaml `verdicts.runs_budget`).
3. The test: judge_claim on the n runs of the judged pipeline, a fixed-n t-interval. Its error
   rates are those of a fixed n, because the test does not use the pilot's runs to choose when to
   stop; the simulation draws the judged runs apart from the pilot.

Power is the chance that the interval lands wholly on the claimed side ("reproduced") when the true
effect equals delta (for '<' claims, -delta); for "about the same" claims, the chance that it lands
inside +-delta when the true effect is 0. Both from the noncentral t distribution.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

TARGET_POWER = 0.8
MAX_RUNS = 10_000          # "more than this" is reported as such


def power(sd, n, direction: str, delta: float, margin: float = 0.0, confidence: float = 0.95):
    """Power of a claim judged on n runs whose per-run effect has standard deviation sd (arrays
    broadcast). nan where n < 2 or sd is not a positive number."""
    from scipy import stats
    sd, n = np.asarray(sd, float), np.asarray(n, float)
    ok = (n >= 2) & np.isfinite(sd) & (sd > 0)
    n_, sd_ = np.where(ok, n, 2.0), np.where(ok, sd, 1.0)
    df = n_ - 1
    crit = stats.t.ppf(0.5 + confidence / 2, df)
    root_n = np.sqrt(n_)
    if direction == "~":
        # each one-sided bound inside +-delta at effect 0; both: at least 2 p - 1 (Bonferroni)
        one_side = stats.nct.cdf(-crit, df, -delta * root_n / sd_)
        p = np.clip(2 * one_side - 1, 0.0, 1.0)
    elif direction in (">", "<"):
        # reproduced: (mean - margin) / se > crit, with the mean at delta ('<': mirrored)
        p = stats.nct.sf(crit, df, (delta - margin) * root_n / sd_)
    else:
        raise ValueError(f"direction must be '>', '<' or '~', got {direction!r}")
    return np.where(ok, p, np.nan)


def runs_needed(sd: float, direction: str, delta: float, margin: float = 0.0, confidence: float = 0.95,
                target: float = TARGET_POWER, max_runs: int = MAX_RUNS) -> int | None:
    """The smallest n >= 2 with power >= target; None when sd is unknown, max_runs + 1 when even
    max_runs is not enough (e.g. a threshold at or beyond delta)."""
    if sd is None or not math.isfinite(sd) or sd <= 0:
        return None
    lo, hi = 2, 2
    while power(sd, hi, direction, delta, margin, confidence) < target:      # power grows with n: double, then bisect
        if hi > max_runs:
            return max_runs + 1
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if power(sd, mid, direction, delta, margin, confidence) >= target:
            hi = mid
        else:
            lo = mid + 1
    return int(hi)


@lru_cache(maxsize=256)
def sd_limits(direction: str, delta: float, margin: float = 0.0, confidence: float = 0.95,
              target: float = TARGET_POWER, max_runs: int = 200) -> np.ndarray:
    """For n = 2 .. max_runs (index n - 2), the largest per-run sd at which n runs reach `target`
    power: power falls as sd grows, so a claim needs the first n whose limit is at least its sd.
    Found by bisection on the noncentral t's noncentrality, all n at once."""
    from scipy import stats
    ns = np.arange(2, max_runs + 1, dtype=float)
    df = ns - 1
    crit = stats.t.ppf(0.5 + confidence / 2, df)
    # '>' / '<': sf(crit; nc) = target with nc = (delta - margin) sqrt(n) / sd;
    # '~': each side's sf = (1 + target) / 2 with nc = delta sqrt(n) / sd (see `power`)
    size, side = (delta, (1 + target) / 2) if direction == "~" else (delta - margin, target)
    if size <= 0:
        return np.zeros_like(ns)                   # no n reaches the target: a threshold at or beyond delta
    lo, hi = np.zeros_like(ns), np.full_like(ns, 60.0)
    for _ in range(50):
        mid = (lo + hi) / 2
        below = stats.nct.sf(crit, df, mid) < side
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return size * np.sqrt(ns) / hi


def runs_needed_many(sd, direction: str, delta: float, margin: float = 0.0, confidence: float = 0.95,
                     target: float = TARGET_POWER, max_runs: int = 200):
    """runs_needed for an array of sd at once (the simulation's many pilots): n up to max_runs,
    max_runs where even that is not enough."""
    limits = sd_limits(direction, delta, margin, confidence, target, max_runs)
    enough = np.asarray(sd, float)[:, None] <= limits[None, :]
    return np.where(enough.any(1), 2 + enough.argmax(1), max_runs)


def effect_sd(claim: dict) -> float | None:
    """The spread of one run's effect: the standard error times the square root of the runs
    (for a paired claim, the standard deviation of the per-run differences)."""
    se, n = claim.get("se"), claim.get("n") or 0
    if se is None or n < 2 or not math.isfinite(se) or se <= 0:
        return None
    return se * math.sqrt(n)


def plan(claim: dict, seeds: int | None, target: float = TARGET_POWER) -> dict:
    """The claim's power at its delta with the runs made, the runs it needs for `target` power (from the
    spread of those runs: the pilot), the runs planned within the budget of `seeds` seeds (a seed
    gives the claim n_made / seeds paired runs: one, or one per fold), and the seeds that would decide
    it where the budget stops short. Empty for a claim without delta."""
    delta = claim.get("delta")
    if delta is None or claim.get("direction") not in (">", "<", "~"):
        return {}
    sd, n = effect_sd(claim), claim.get("n") or 0
    margin = float(claim.get("margin") or 0.0)
    confidence = claim.get("confidence") or 0.95
    now = power(sd if sd is not None else np.nan, n, claim["direction"], delta, margin, confidence)
    needed = runs_needed(sd, claim["direction"], delta, margin, confidence, target)
    per_seed = max(1, round(n / seeds)) if seeds else 1
    budget = None if not seeds else seeds * per_seed
    planned = None if needed is None else (needed if budget is None else min(needed, budget))
    short = bool(needed is not None and budget is not None and needed > budget)
    return {"runs_made": int(n), "power": None if not np.isfinite(now) else float(now), "runs_needed": needed,
            "runs_planned": planned, "budget": budget, "runs_per_seed": per_seed, "budget_short": short,
            "seeds_needed": None if needed is None or needed > MAX_RUNS else math.ceil(needed / per_seed)}
