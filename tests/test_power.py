"""The verdict procedure's error rates, shown by simulation through the code the report uses:
common.power (pilot -> runs planned at 80 % power within a budget) and common.claims (the
t-interval and the four-way decision that judge_claim applies).

Each simulated claim: a pilot of n0 runs gives the spread; the plan picks n (runs_needed_many,
capped by a budget); n fresh runs are judged. Scenarios cover a spread from half to twice delta,
pilots of 2-4 runs and budgets of 6-24 runs. At the nominal 95 % interval the false "reproduced"
rate of a fixed n is 2.5 % exactly at a zero effect; the "negligible" rule (on the claimed side
but inside +-delta counts as absent) takes some of those, so the rate stays below the bound.
"""
import numpy as np
import pytest

from common import power
from common.claims import decide, judge_claim, t_interval

DELTA = 1.0
SCENARIOS = [(sd, n0, budget) for sd in (0.5, 1.0, 2.0) for n0 in (2, 3, 4) for budget in (6, 12, 24)]
PER_SCENARIO = 400                     # 27 scenarios x 400 = 10,800 claims per true effect


def simulate(effect: float, direction: str, seed: int, margin: float = 0.0) -> np.ndarray:
    """The verdicts of len(SCENARIOS) * PER_SCENARIO simulated claims whose true effect is `effect`."""
    rng = np.random.default_rng(seed)
    verdicts = []
    for sd, n0, budget in SCENARIOS:
        pilot = rng.normal(effect, sd, (PER_SCENARIO, n0))
        n = np.clip(power.runs_needed_many(pilot.std(1, ddof=1), direction, DELTA, margin), 2, budget)
        runs = rng.normal(effect, sd, (PER_SCENARIO, budget))       # the judged runs, apart from the pilot
        _, _, low, high = t_interval(runs, n)
        verdicts.append(decide(low, high, direction, margin, DELTA)[0])
    return np.concatenate(verdicts)


def test_error_rates_hold_for_directional_claims():
    null = simulate(0.0, ">", seed=1)
    at_delta = simulate(DELTA, ">", seed=2)
    assert null.size >= 10_000 and at_delta.size >= 10_000
    false_reproduced = np.mean(null == "reproduced")
    false_absent = np.mean(at_delta == "absent")
    assert false_reproduced <= 0.025, false_reproduced
    assert false_absent <= 0.05, false_absent
    # the procedure decides: most null claims come out absent, most real ones reproduced
    assert np.mean(null == "absent") > 0.25 and np.mean(at_delta == "reproduced") > 0.4
    # '<' claims are the mirror image
    mirrored = simulate(0.0, "<", seed=1)
    assert np.mean(mirrored == "reproduced") == pytest.approx(false_reproduced, abs=0.01)


def test_error_rates_hold_for_about_the_same_claims():
    """An 'about the same' claim is falsely reproduced when the true difference sits at the tolerance."""
    at_tolerance = simulate(DELTA, "~", seed=3)
    assert at_tolerance.size >= 10_000
    assert np.mean(at_tolerance == "reproduced") <= 0.025
    assert np.mean(simulate(0.0, "~", seed=4) == "reproduced") > 0.3     # budgets cap the wide ones


def test_simulated_decision_is_judge_claims():
    """decide + t_interval give what judge_claim gives on the same runs (the simulation's code path)."""
    rng = np.random.default_rng(0)
    for direction, margin in ((">", 0.0), ("<", 0.0), (">", 0.3), (">", -0.2), ("~", 0.0)):
        for _ in range(40):
            runs = rng.normal(rng.uniform(-1.5, 1.5), rng.uniform(0.1, 2), 5)
            judged = judge_claim(runs, None, direction, margin=margin, delta=DELTA)
            _, _, low, high = t_interval(runs[None, :])
            assert judged["verdict"] == decide(low, high, direction, margin, DELTA)[0][0]
            assert judged["low"] == pytest.approx(low[0]) and judged["high"] == pytest.approx(high[0])


def test_power_matches_simulation():
    """The planned n really has about 80 % power at delta when the spread is known."""
    sd = 1.0
    n = power.runs_needed(sd, ">", DELTA)
    assert power.power(sd, n, ">", DELTA) >= 0.8 > power.power(sd, n - 1, ">", DELTA)
    rng = np.random.default_rng(5)
    _, _, low, high = t_interval(rng.normal(DELTA, sd, (20_000, n)))
    hit = np.mean(low > 0)
    assert hit == pytest.approx(float(power.power(sd, n, ">", DELTA)), abs=0.015)
    assert power.runs_needed_many(np.array([sd]), ">", DELTA)[0] == n


def test_plan_reports_the_budget_shortfall():
    claim = judge_claim([0.02, 0.05, -0.01, 0.04], None, ">", delta=0.01)
    planned = power.plan(claim, seeds=2)            # 2 seeds gave these 4 runs: 2 runs a seed, a budget of 4
    assert planned["runs_made"] == 4 and 0 < planned["power"] < 0.8 and planned["runs_per_seed"] == 2
    assert planned["runs_needed"] > 4 and planned["runs_planned"] == 4 and planned["budget_short"]
    assert planned["seeds_needed"] == -(-planned["runs_needed"] // 2)
    assert power.plan({**claim, "delta": None}, 4) == {}
    # a threshold at or beyond delta: no number of runs has the power
    margin_claim = judge_claim([0.05, 0.06, 0.04], None, ">", margin=0.02, delta=0.02)
    assert power.plan(margin_claim, 3)["runs_needed"] > power.MAX_RUNS
