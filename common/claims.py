"""Claims: what a paper notebook records, and the one place a claim's verdict is decided.

A notebook ends the same way in every paper: result rows (`result_rows`), judged claims (`claim`,
`show_claims`), the differences from the paper (common/ledger.py), and one summary JSON
(`write_notebook_summary`) that the report (common/report.py) reads. This module is what the
notebooks import; the report's pages render its claims (common/report_claims.py).

Each claim declares `delta`, its smallest effect of interest, before the runs
(papers/<paper>/claims.csv: `id,kind,parameter,note,delta,delta_reason`; the paper's reported gain,
a tolerance it states, or the metric's practical resolution); `claim` reads it (`declared_delta`).
A claim compares two sets of runs of the same metric ("a > b", "a < b", or "a is about b"). From the
runs' mean effect and its 95 % t-interval [low, high] `judge_claim` gives one of four verdicts:
  reproduced    the interval lies wholly on the claimed side (of the claim's threshold `margin`);
  contradicted  it lies wholly on the other side;
  absent        it lies inside (-delta, +delta): an equivalence test (two one-sided tests at 2.5 %
                each) says the effect, if any, is smaller than the paper's effect of interest;
  inconclusive  otherwise (including a single run, which leaves no spread to judge by).

An interval both on the claimed side and inside +-delta is a real but negligible effect: its
verdict is "absent" with `negligible` set, and the report labels it so. For "about the same"
claims (direction '~') delta is the tolerance: reproduced inside +-delta, contradicted wholly
outside, inconclusive otherwise. A claim whose threshold is below zero ("at least as good,
within 0.01") already includes a zero effect in what it claims, so "absent" does not apply to it.

The interval and the decision are vectorised (`t_interval`, `decide`) so that tests/test_power.py
can run tens of thousands of simulated claims through this exact code.
"""
from __future__ import annotations

import csv
import json
import math
import time
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np

from common.data.affwild2 import test_labels_released
from common.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]

VERDICTS = ("reproduced", "contradicted", "absent", "inconclusive")
EXPLAINED = {
    "reproduced": "the whole 95 % interval of the effect lies on the side the paper claims, and not all of it "
                  "inside ±delta",
    "contradicted": "the whole 95 % interval lies on the other side: the runs show the opposite of the claim",
    "absent": "the whole 95 % interval lies inside ±delta, the smallest effect the paper's own numbers make "
              "interesting: whatever effect there is, it is too small to matter (\"negligible\" when it is also "
              "wholly on the claimed side)",
    "inconclusive": "the interval is too wide for any of the above: more runs would decide (the power columns "
                    "say how many)",
}


def t_interval(diffs: np.ndarray, n: np.ndarray | int | None = None, confidence: float = 0.95):
    """Mean, standard error and t-interval of each row of `diffs` (runs along the last axis; with `n`,
    only each row's first n[i] entries count). Returns (mean, se, low, high), nan where n < 2."""
    from scipy import stats
    diffs = np.atleast_2d(np.asarray(diffs, float))
    runs = diffs.shape[-1]
    n = np.full(diffs.shape[0], runs) if n is None else np.broadcast_to(np.asarray(n), diffs.shape[:1])
    used = np.arange(runs)[None, :] < n[:, None]
    safe_n = np.maximum(n, 1)
    mean = np.where(used, diffs, 0.0).sum(-1) / safe_n
    var = np.where(used, (diffs - mean[:, None]) ** 2, 0.0).sum(-1) / np.maximum(n - 1, 1)
    se = np.where(n > 1, np.sqrt(var / safe_n), np.nan)
    half = stats.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1)) * se
    return mean, se, mean - half, mean + half


def decide(low, high, direction: str, margin: float = 0.0, delta: float | None = None):
    """The verdict of each interval [low, high] (arrays): (verdicts, negligible) as arrays of str and
    bool. The rules are the module docstring's; nan bounds give "inconclusive"."""
    low, high = np.asarray(low, float), np.asarray(high, float)
    known = np.isfinite(low) & np.isfinite(high)
    if direction == "~":
        if delta is None:
            raise ValueError("an 'about the same' claim needs its tolerance as delta")
        inside = known & (low >= -delta) & (high <= delta)
        outside = known & ((low > delta) | (high < -delta))
        verdict = np.select([inside, outside], ["reproduced", "contradicted"], "inconclusive")
        return verdict, np.zeros(low.shape, bool)
    if direction == ">":
        on, other = known & (low > margin), known & (high < margin)
    elif direction == "<":
        on, other = known & (high < -margin), known & (low > -margin)
    else:
        raise ValueError(f"direction must be '>', '<' or '~', got {direction!r}")
    if delta is None or margin < 0:          # no declared delta, or a claim that includes a zero effect
        inside = np.zeros(low.shape, bool)
    else:
        inside = known & (low > -delta) & (high < delta)
    negligible = on & inside
    verdict = np.select([on & ~inside, negligible, other, inside], ["reproduced", "absent", "contradicted", "absent"],
                        "inconclusive")
    return verdict, negligible


def judge_claim(a, b=None, direction: str = ">", margin: float = 0.0, tolerance: float | None = None,
                paired: bool = True, confidence: float = 0.95, delta: float | None = None) -> dict:
    """Judge "a > b" (direction '>'), "a < b" ('<') or "a is about b" ('~', within +-delta).

    a and b are per-run values of the same metric (one per seed, or per fold x seed where the
    runs pair up); with b None, a itself is the per-run effect (e.g. differences). The effect is
    mean(a - b) when paired, else the difference of means, with a t-interval from the spread across
    runs. `delta` is the claim's smallest effect of interest (claims.csv); for '~' claims the
    tolerance is delta (give either; both must agree). Without delta no claim can come out absent.
    """
    from scipy import stats
    if direction == "~":
        if delta is not None and tolerance is not None and not math.isclose(delta, tolerance, rel_tol=1e-9, abs_tol=0):
            raise ValueError(f"an 'about the same' claim's tolerance is its delta: got tolerance {tolerance} "
                             f"and delta {delta}; make them one number (papers/<paper>/claims.csv)")
        delta = delta if delta is not None else tolerance if tolerance is not None else 0.02
    a = np.asarray(a, float).ravel()
    if b is None or paired:
        if b is not None and a.size != np.asarray(b).size:
            raise ValueError(f"paired claim needs equal run counts, got {a.size} and {np.asarray(b).size}")
        diffs = a if b is None else a - np.asarray(b, float).ravel()
        n = diffs.size
        effect, se, low, high = (float(x[0]) for x in t_interval(diffs[None, :], confidence=confidence))
        spread = float(diffs.std(ddof=1)) if n > 1 else float("nan")
        df = n - 1
    else:
        b = np.asarray(b, float).ravel()
        n = min(a.size, b.size)
        va = a.var(ddof=1) if a.size > 1 else np.nan
        vb = b.var(ddof=1) if b.size > 1 else np.nan
        spread = math.sqrt((va + vb) / 2)
        se = math.sqrt(va / a.size + vb / b.size)
        effect = float(a.mean() - b.mean())
        df = n - 1            # conservative: the smaller group's degrees of freedom
        half = float(stats.t.ppf(0.5 + confidence / 2, df) * se) if n > 1 and math.isfinite(se) else float("nan")
        low, high = effect - half, effect + half
    verdict, negligible = decide(np.array([low]), np.array([high]), direction, margin, delta)
    d = effect / spread if spread and math.isfinite(spread) and spread > 0 else float("nan")
    fin = lambda x: float(x) if x is not None and math.isfinite(x) else None   # noqa: E731
    return {"verdict": str(verdict[0]), "negligible": bool(negligible[0]), "effect": effect,
            "low": low if math.isfinite(low) else float("nan"), "high": high if math.isfinite(high) else float("nan"),
            "n": int(n), "spread": fin(spread), "se": fin(se), "cohens_d": d if math.isfinite(d) else None,
            "direction": direction, "margin": margin, "delta": delta, "paired": bool(paired or b is None),
            "confidence": confidence, "tolerance": delta if direction == "~" else None,
            "a": a.tolist(), "b": None if b is None else np.asarray(b, float).ravel().tolist()}


def rejudge(claim: dict, delta: float | None) -> dict:
    """The claim judged again from the runs it carries ("a", "b") with the delta its claims.csv row
    declares, so the report's verdict always follows the declared delta (a summary JSON may predate
    it). A claim without its runs, or a configuration check that set its own verdict, keeps its own."""
    if claim.get("a") is None or claim.get("kind") == "configuration check":
        return {**claim, "delta": delta if delta is not None else claim.get("delta")}
    judge = {k: claim[k] for k in ("direction", "margin", "paired", "confidence") if claim.get(k) is not None}
    if "paired" not in judge and claim.get("b") is not None and len(claim["a"]) != len(claim["b"]):
        judge["paired"] = False           # a summary from before "paired" was recorded: unequal runs cannot pair
    if judge.get("direction") == "~" and delta is None:
        delta = claim.get("tolerance")
    return {**claim, **judge_claim(claim["a"], claim.get("b"), delta=delta, **judge)}


# ---- claims.csv: each claim's kind and declared delta ----------------------------------------

# What a judged claim is evidence of (papers/<paper>/claims.csv). Only findings are verdicts on the method.
CLAIM_KINDS = {
    "finding": ("Findings about the method",
                "The verdicts that test the method. Only these count as reproduced, contradicted, absent or "
                "inconclusive."),
    "built into the data": ("Built into the data",
                            "The embedded corpus's generator builds these effects in by construction (the parameter is "
                            "named). The computed verdict shows only that the pipeline recovers the effect, so these "
                            "claims are counted apart from the findings."),
    "published absolute number": ("Published absolute numbers",
                                  "These compare with a number measured on the real Aff-Wild2. They are not "
                                  "judgeable on this corpus, whose absolute values are not comparable."),
    "configuration check": ("Configuration checks",
                            "These check this repository's configuration. They are not results."),
}
UNCLASSIFIED = "unclassified"
# papers/<paper>/claims.csv: delta is the smallest effect of interest, declared from the paper's own numbers.
CLAIMS_HEADER = ["id", "kind", "parameter", "note", "delta", "delta_reason"]


def read_csv_rows(path: Path, expected: list[str]) -> list[tuple[int, dict]]:
    """(line number, row) of a CSV file whose header must be `expected`; [] when it does not exist."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != expected:
            raise ValueError(f"{path}:1: header {reader.fieldnames}, expected {expected}")
        return list(enumerate(reader, start=2))


def declared_delta(id: str) -> float | None:
    """The delta papers/*/claims.csv declares for claim `id` (the first row whose pattern matches, in
    each paper); None when no row declares one. Two papers declaring different deltas is an error."""
    found = {}
    for paper_dir in sorted((ROOT / "papers").glob("*/")):
        row = next((k for k in read_claim_kinds(paper_dir) if fnmatchcase(id, k["id"])), None)
        if row and row["delta"].strip():
            found[paper_dir.name] = float(row["delta"])
    if len(set(found.values())) > 1:
        raise ValueError(f"claim {id!r}: papers/*/claims.csv declare different deltas {found}; give the ids "
                         f"distinct names")
    return next(iter(found.values()), None)


def read_claim_kinds(paper_dir: Path) -> list[dict]:
    """papers/<paper>/claims.csv: one row per claim id (fnmatch pattern), its kind, the generator
    parameter that builds it in (for kind "built into the data"), and a note."""
    path = paper_dir / "claims.csv"
    rows = []
    for line, row in read_csv_rows(path, CLAIMS_HEADER):
        if row["kind"] not in CLAIM_KINDS:
            raise ValueError(f"{path}:{line}: kind {row['kind']!r}; known: {sorted(CLAIM_KINDS)}")
        if row["kind"] == "built into the data" and not row["parameter"].strip():
            raise ValueError(f"{path}:{line}: a claim built into the data must name the generator parameter")
        rows.append(row)
    return rows


# ---- what the notebooks record --------------------------------------------------------------

def result_row(table: str, row: str, column: str, values, split: str) -> dict:
    """One reproduced cell of a paper's table: the mean over seeds (or folds), the standard deviation
    across them as its spread, and their count. Every notebook's <name>.json lists these."""
    values = np.asarray(values, float)
    return {"table": table, "row": row, "column": column, "value": float(values.mean()),
            "spread": float(values.std(ddof=1)) if len(values) > 1 else None, "n": int(len(values)), "split": split}


def write_summary(out_dir: str | Path, notebook: str, summary: dict) -> Path:
    """<out_dir>/<notebook>.json, what the report reads (format: common/report.py): a temp file renamed into
    place, numpy scalars written as numbers."""
    out = Path(out_dir) / f"{notebook}.json"
    atomic_write_text(out, json.dumps(summary, indent=2, default=float) + "\n")
    return out


def result_rows(table: str, cells, split: str) -> list[dict]:
    """result_row for each (row, column, values) of `cells`, in order."""
    return [result_row(table, row, column, values, split) for row, column, values in cells]


def claim(id: str, table: str, text: str, a, b=None, explanation: str | None = None, **judge) -> dict:
    """A judged claim as the summary JSON holds it: judge_claim(a, b, delta=<its claims.csv delta>,
    **judge) plus its id, table and text (and the explanation shown under it, when given)."""
    judge.setdefault("delta", declared_delta(id))
    out = {**judge_claim(a, b, **judge), "id": id, "table": table, "text": text}
    if explanation is not None:
        out["explanation"] = explanation
    return out


def show_claims(claims: list[dict]) -> None:
    """One line per claim: verdict, effect with its 95 % interval, delta, number of runs, the claim."""
    for c in claims:
        verdict = "negligible" if c.get("negligible") else c["verdict"]
        print(f"{verdict:>13}  effect {c['effect']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]  "
              f"delta {c['delta'] if c.get('delta') is not None else '-'}  n={c['n']}  {c['text']}")


def show_differences(differences: list[dict]) -> None:
    """One line per difference from the paper: what, the paper's choice, this run's."""
    for d in differences:
        print(f"- {d['what']}: paper {d['paper']}; here {d['here']}")


def notebook_summary(paper: str, notebook: str, title: str, params, started: float, **fields) -> dict:
    """The summary JSON of one notebook (the format in common/report.py's docstring): paper, notebook, title,
    the profile and data source of `params`, the seconds since `started` (time.perf_counter()), then
    `fields` in the order given (results, claims, leaderboard, differences, anything else)."""
    # The real release keeps its test labels back: the report then shows the test rows as not released.
    released = ({} if params["data"]["source"] != "real"
                else {"test_labels": test_labels_released(params["data"]["root"])})
    return {"paper": paper, "notebook": notebook, "title": title, "profile": params["profile"],
            "data": params["data"]["source"], **released, "seconds": round(time.perf_counter() - started, 1), **fields}


def write_notebook_summary(out_dir: str | Path, paper: str, notebook: str, title: str, params, started: float,
                           **fields) -> Path:
    """notebook_summary(...) written to <out_dir>/<notebook>.json by write_summary; prints where."""
    summary = notebook_summary(paper, notebook, title, params, started, **fields)
    path = write_summary(out_dir, notebook, summary)
    print(f"written {path} after {summary['seconds']} s")
    return path
