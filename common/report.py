"""One report builder for all papers: `python -m common.report`.

Reads, for every paper folder, `papers/<paper>/published.csv` (every number the paper publishes)
and the plain JSON each notebook wrote (`reports/<paper>/<notebook>.json`, format below), and
writes `reports/<paper>/index.html` (published beside reproduced, claim verdicts, what differs
from the paper, the executed notebooks as offline HTML) and `reports/index.html` (links, a
timing table per stage, and a cross-paper leaderboard on the same held-out split), with the
charts of common/report_charts.py embedded as PNG data: URIs.

Each paper's `papers/<paper>/claims.csv` (`id,kind,parameter,note`; id may hold `*`) says what
kind every judged claim is (CLAIM_KINDS). Only findings count as verdicts on the method; claims
built into the embedded corpus by its generator (the parameter named), published absolute numbers
measured on real data, and configuration checks are shown and counted apart.

Notebook JSON (every key optional but `paper`):
    {"paper", "notebook", "title", "profile", "data": "synthetic"|"real", "seconds",
     "results":  [{"table", "row", "column", "value", "low", "high", "spread", "n", "split"}],
     "claims":   [output of judge_claim(...) plus "id", "text", "table", optionally "explanation"
                  (a sentence or two on the mechanism, shown under the claim)],
     "leaderboard": [{"paper", "model", "split", "p_va", "p_expr", "p_au", "p_mtl"}],
     "differences": [{"what", "paper", "here", "why"}]}
Nothing here pulls a script or style sheet from the network: the HTML is self-contained, and
LaTeX in notebook markdown is converted to MathML, which browsers render natively.
"""
from __future__ import annotations

import csv
import html
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

from common import report_charts, report_figures
from common.data.affwild2 import test_labels_released
from common.files import atomic_write_text
from common.power import MAX_RUNS, plan
from common.verdicts import EXPLAINED, VERDICTS, judge_claim, rejudge  # noqa: F401 - judge_claim: the notebooks' import

ROOT = Path(__file__).resolve().parents[1]
PAPERS = {"jeong2022": "Jeong, Oh, Lim (CVPRW 2022)", "zhang2021": "Zhang, Ding, Wei, Guan (ICCVW 2021)",
          "liu2023": "Liu, Sun et al. (CVPRW 2023)", "vu2021": "Vu, Beurton-Aimar, Marchand (ICCVW 2021)"}
# What a judged claim is evidence of (papers/<paper>/claims.csv). Only findings are verdicts on the method.
CLAIM_KINDS = {
    "finding": ("Findings about the method",
                "The verdicts that test the method. Only these count as reproduced, contradicted, absent or inconclusive."),
    "built into the data": ("Built into the data",
                            "The embedded corpus's generator builds these effects in by construction (the parameter is "
                            "named). The computed verdict shows only that the pipeline recovers the effect, so these "
                            "claims are counted apart from the findings."),
    "published absolute number": ("Published absolute numbers",
                                  "These compare with a number measured on the real Aff-Wild2. They are not judgeable on "
                                  "this corpus, whose absolute values are not comparable."),
    "configuration check": ("Configuration checks",
                            "These check this repository's configuration. They are not results."),
}
UNCLASSIFIED = "unclassified"
# papers/<paper>/claims.csv: delta is the smallest effect of interest, declared from the paper's own numbers.
CLAIMS_HEADER = ["id", "kind", "parameter", "note", "delta", "delta_reason"]


# ---- claims ------------------------------------------------------------------------------------

# judge_claim (common/verdicts.py) decides every verdict; claim() below gives it the declared delta.


# ---- reading -----------------------------------------------------------------------------------

def result_row(table: str, row: str, column: str, values, split: str) -> dict:
    """One reproduced cell of a paper's table: the mean over seeds (or folds), the standard deviation
    across them as its spread, and their count. Every notebook's <name>.json lists these."""
    values = np.asarray(values, float)
    return {"table": table, "row": row, "column": column, "value": float(values.mean()),
            "spread": float(values.std(ddof=1)) if len(values) > 1 else None, "n": int(len(values)), "split": split}


def write_summary(out_dir: str | Path, notebook: str, summary: dict) -> Path:
    """<out_dir>/<notebook>.json, what this builder reads: a temp file renamed into place, numpy
    scalars written as numbers."""
    out = Path(out_dir) / f"{notebook}.json"
    atomic_write_text(out, json.dumps(summary, indent=2, default=float) + "\n")
    return out


# ---- what the notebooks share ------------------------------------------------------------------
# Every paper notebook ends the same way: result rows, judged claims, the differences from the paper,
# one summary JSON. These helpers are that code, written once.

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


def declared_delta(id: str) -> float | None:
    """The delta papers/*/claims.csv declares for claim `id` (the first row whose pattern matches, in
    each paper); None when no row declares one. Two papers declaring different deltas is an error."""
    from fnmatch import fnmatchcase
    found = {}
    for paper_dir in sorted((ROOT / "papers").glob("*/")):
        row = next((k for k in read_claim_kinds(paper_dir) if fnmatchcase(id, k["id"])), None)
        if row and row["delta"].strip():
            found[paper_dir.name] = float(row["delta"])
    if len(set(found.values())) > 1:
        raise ValueError(f"claim {id!r}: papers/*/claims.csv declare different deltas {found}; give the ids "
                         f"distinct names")
    return next(iter(found.values()), None)


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
    """The summary JSON of one notebook (the format in this module's docstring): paper, notebook, title,
    the profile and data source of `params`, the seconds since `started` (time.perf_counter()), then
    `fields` in the order given (results, claims, leaderboard, differences, anything else)."""
    import time
    # The real release keeps its test labels back: the report then shows the test rows as not released.
    released = {} if params["data"]["source"] != "real" else {"test_labels": test_labels_released(params["data"]["root"])}
    return {"paper": paper, "notebook": notebook, "title": title, "profile": params["profile"],
            "data": params["data"]["source"], **released, "seconds": round(time.perf_counter() - started, 1), **fields}


def write_notebook_summary(out_dir: str | Path, paper: str, notebook: str, title: str, params, started: float,
                           **fields) -> Path:
    """notebook_summary(...) written to <out_dir>/<notebook>.json by write_summary; prints where."""
    summary = notebook_summary(paper, notebook, title, params, started, **fields)
    path = write_summary(out_dir, notebook, summary)
    print(f"written {path} after {summary['seconds']} s")
    return path


# ---- what differs from the paper: papers/<paper>/differences.yaml -------------------------------
# A list of rows {group, what, paper, here, why, when?}. `group` names the set a notebook asks for
# (e.g. "cnn", "table2"); `what`/`paper`/`here`/`why` may hold {placeholders}: {params.a.b} reads
# params["a"]["b"], {name} (or {name.key}) a value the caller passes. `when` keeps a row only if
# its condition holds: `name`, `not name`, or `name OP literal` with OP one of == != > < >= <=
# (name as in a placeholder; the literal read as YAML: 1, code, true). Rows keep the file's order.

DIFFERENCE_FIELDS = ("what", "paper", "here", "why")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.]*)\}")
_CONDITION = re.compile(r"^\s*(not\s+)?([A-Za-z_][\w.]*)\s*(?:(==|!=|>=|<=|>|<)\s*(.+?))?\s*$")


def differences_path(paper: str) -> Path:
    return ROOT / "papers" / paper / "differences.yaml"


def _lookup(context: dict, dotted: str):
    value = context
    for key in dotted.split("."):
        try:
            value = value[key]
        except (KeyError, TypeError, IndexError):
            if not hasattr(value, key):
                raise KeyError(f"{dotted!r}: no {key!r}") from None
            value = getattr(value, key)
    return value


def fill(template: str, context: dict) -> str:
    """`template` with each {name.key} replaced by str() of its value in `context`."""
    return _PLACEHOLDER.sub(lambda m: str(_lookup(context, m.group(1))), template)


def holds(condition, context: dict) -> bool:
    """Whether a row's `when` holds (None or "" always holds)."""
    if condition in (None, ""):
        return True
    m = _CONDITION.match(str(condition))
    if not m:
        raise ValueError(f"when: {condition!r} is not 'name', 'not name' or 'name OP literal'")
    negate, name, op, literal = m.groups()
    value = _lookup(context, name)
    if op is None:
        result = bool(value)
    else:
        import operator
        import yaml
        other = yaml.safe_load(literal)
        result = {"==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt,
                  ">=": operator.ge, "<=": operator.le}[op](value, other)
    return not result if negate else bool(result)


def read_differences(paper: str) -> list[dict]:
    """Every row of papers/<paper>/differences.yaml, checked: a group, the four fields, nothing else."""
    import yaml
    path = differences_path(paper)
    rows = yaml.safe_load(path.read_text()) or []
    for i, row in enumerate(rows):
        extra = set(row) - {"group", "when", *DIFFERENCE_FIELDS}
        missing = {"group", *DIFFERENCE_FIELDS} - set(row)
        if extra or missing:
            raise ValueError(f"{path}, row {i + 1} ({row.get('what', '?')}): "
                             + (f"unknown key(s) {sorted(extra)} " if extra else "")
                             + (f"missing {sorted(missing)}" if missing else ""))
    return rows


def differences(paper: str, *groups: str, params=None, **context) -> list[dict]:
    """The rows of papers/<paper>/differences.yaml in `groups` (in the groups' order, each in file
    order) whose `when` holds, their placeholders filled from params (as `params`) and `context`:
    [{what, paper, here, why}], what a notebook's summary lists under "differences"."""
    context = {"params": params, **context}
    rows = read_differences(paper)
    out = []
    for group in groups:
        mine = [r for r in rows if r["group"] == group]
        if not mine:
            raise KeyError(f"{differences_path(paper)}: no rows in group {group!r}")
        out += [{k: fill(str(r[k]), context) for k in DIFFERENCE_FIELDS} for r in mine if holds(r.get("when"), context)]
    return out


def read_csv_rows(path: Path, expected: list[str]) -> list[tuple[int, dict]]:
    """(line number, row) of a CSV file whose header must be `expected`; [] when it does not exist."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != expected:
            raise ValueError(f"{path}:1: header {reader.fieldnames}, expected {expected}")
        return list(enumerate(reader, start=2))


def read_published(paper_dir: Path) -> list[dict]:
    path = paper_dir / "published.csv"
    rows = []
    for line, row in read_csv_rows(path, ["table", "row", "column", "value", "split", "note"]):
        try:
            row["value"] = float(row["value"])
        except ValueError:
            raise ValueError(f"{path}:{line}: value {row['value']!r} is not a number") from None
        rows.append(row)
    return rows


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


def classify_claims(claims: list[dict], kinds: list[dict]) -> list[dict]:
    """Each claim with "kind", "parameter", "note", "delta" and "delta_reason" from the first claims.csv
    row whose id pattern matches its id, judged again with that delta (common.verdicts.rejudge);
    no match: the kind the claim carries, else "unclassified"."""
    from fnmatch import fnmatchcase
    out = []
    for c in claims:
        row = next((k for k in kinds if fnmatchcase(str(c.get("id", "")), k["id"])), None)
        if row:
            delta = float(row["delta"]) if row["delta"].strip() else None
            c = {**c, "kind": row["kind"], "parameter": row["parameter"] or None, "note": row["note"] or None,
                 "delta_reason": row["delta_reason"] or None}
            out.append(rejudge(c, delta))         # the verdict follows the delta declared now
        else:
            out.append({**c, "kind": c.get("kind", UNCLASSIFIED)})
    return out


def shown_verdict(claim: dict) -> tuple[str, str]:
    """(label, css class) of a claim as the report states it: the computed verdict for findings,
    the kind for the claims counted apart."""
    kind, verdict = claim.get("kind", UNCLASSIFIED), claim.get("verdict", "inconclusive")
    if claim.get("not_released"):
        return NOT_RELEASED, "not-judgeable"
    label = "absent (negligible: real, but smaller than delta)" if claim.get("negligible") else verdict
    if kind == "finding":
        return label, verdict
    if kind == "built into the data":
        recovered = {"reproduced": "recovered", "contradicted": "contradicted"}.get(verdict, label)
        return f"built into the data (the pipeline: {recovered})", "built-in"
    if kind == "published absolute number":
        return "not judgeable on this corpus", "not-judgeable"
    if kind == "configuration check":
        return ("check passed" if verdict == "reproduced" else "check failed"), "check"
    return f"unclassified ({verdict})", "unclassified"


def claim_counts(claims: list[dict]) -> dict:
    """{kind: {verdict: count}} over every kind, unclassified included (a negligible effect is absent)."""
    counts = {k: {v: 0 for v in VERDICTS} for k in [*CLAIM_KINDS, UNCLASSIFIED]}
    for c in claims:
        kind = c.get("kind", UNCLASSIFIED)
        counts.setdefault(kind, {v: 0 for v in VERDICTS})
        counts[kind][c.get("verdict", "inconclusive")] = counts[kind].get(c.get("verdict", "inconclusive"), 0) + 1
    return counts


def counts_sentence(counts: dict) -> str:
    f = counts["finding"]
    n = sum(f.values())
    apart = [(sum(counts[k].values()), one, many) for k, one, many in (
        ("built into the data", "built into the data", "built into the data"),
        ("published absolute number", "published absolute number (not judgeable here)",
         "published absolute numbers (not judgeable here)"),
        ("configuration check", "configuration check", "configuration checks"),
        (UNCLASSIFIED, "not yet classified", "not yet classified"))]
    apart_text = ", ".join(f"{m} {one if m == 1 else many}" for m, one, many in apart if m) or "none"
    decided = n - f["inconclusive"]
    share = f" ({100 * decided / n:.0f} %)" if n else ""
    return (f"<p class=counts><b>Findings about the method: {n}</b> ({f['reproduced']} reproduced, "
            f"{f['contradicted']} contradicted, {f['absent']} absent, {f['inconclusive']} inconclusive; "
            f"decided: {decided}{share}). Counted apart: {apart_text}.</p>")


def read_results(reports_paper: Path) -> list[dict]:
    out = []
    for path in sorted(reports_paper.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "paper" in data:
            data.setdefault("notebook", path.stem)
            out.append(data)
    return out


# ---- HTML --------------------------------------------------------------------------------------

CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:.8em 0}
th,td{padding:.3em .7em;border-bottom:1px solid #eee;text-align:left;vertical-align:top}th{background:#f6f6f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}.banner{background:#fff6d6;border:1px solid #e8d48a;padding:.7em 1em;border-radius:6px}
.reproduced{color:#0a7d32;font-weight:600}.contradicted{color:#b3261e;font-weight:600}.absent{color:#1f5fa8;font-weight:600}.inconclusive{color:#8a6d00;font-weight:600}
.built-in{color:#555;font-weight:600}.not-judgeable{color:#3c5f86;font-weight:600}.check{color:#5e4a9c;font-weight:600}
.unclassified{color:#b3261e;font-style:italic}img.chart{max-width:100%;height:auto;display:block;margin:.6em 0}
code{background:#f3f3f3;padding:0 .25em;border-radius:3px}.muted{color:#777}
table.papers{font-size:.92em}table.papers th,table.papers td{padding:.3em .45em}table.papers td:first-child{white-space:nowrap}table.papers th{font-size:.88em}
"""


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}{report_figures.CSS}</style></head><body>\n{body}\n</body></html>\n")


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, (int, float)) and x != 0 and abs(x) < 10 ** -digits:
        return f"{x:.2g}"                  # e.g. a learning rate of 1e-4, not 0.000
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else html.escape(str(x))


def banner(data_source: str) -> str:
    if data_source == "real":
        return "<p class=banner>Data: the real Aff-Wild2, from the folder named in params.yaml.</p>"
    return ("<p class=banner><b>Data: the embedded synthetic Aff-Wild2</b> (common/data/synthetic.py), generated "
            "in the official layout with the causal structure the papers rely on. Absolute values are "
            "<b>not comparable</b> with the published ones; each claim is judged by the direction and size of "
            "its effect across runs.</p>")


NOT_RELEASED = "test labels not released"


NOT_RELEASED_NOTE = (f"<p class=banner>This corpus has no test labels (the real release keeps them back): "
                     f"every test-set number reads <i>{NOT_RELEASED}</i>, and the test split is empty.</p>")


def test_labels_missing(results: list[dict]) -> bool:
    """Whether some notebook ran on a corpus without test labels (the real release)."""
    return any(r.get("test_labels") is False for r in results)


def results_table(published: list[dict], results: list[dict]) -> str:
    """Published beside reproduced for every published number, plus reproduced-only rows. On a
    corpus without test labels a test-split row says so instead of a number. The difference from the
    published number is shown for runs on the real Aff-Wild2 only: the embedded corpus's absolute
    values are not comparable with the paper's (the banner says so), only its effects are."""
    hidden = test_labels_missing(results)
    real = any(r.get("data") == "real" for r in results)
    reproduced = {(r.get("table"), r.get("row"), r.get("column")): r for res in results for r in res.get("results", [])}
    tables = sorted({p["table"] for p in published} | {k[0] for k in reproduced if k[0]}, key=str)
    parts = []
    for table in tables:
        rows = ["<tr><th>row</th><th>column</th><th>split</th><th>published</th><th>reproduced</th>"
                "<th>95% CI / spread</th>" + ("<th>reproduced − published</th>" if real else "") + "</tr>"]
        keys = [(p["table"], p["row"], p["column"]) for p in published if p["table"] == table]
        keys += [k for k in reproduced if k[0] == table and k not in keys]
        pub = {(p["table"], p["row"], p["column"]): p for p in published}
        for key in keys:
            p, r = pub.get(key), reproduced.get(key)
            if hidden and (p or r or {}).get("split") == "test":
                r = {"split": "test", "value": None, "not_released": True}
            value = r.get("value") if r else None
            ci = (f"[{fmt(r.get('low'))}, {fmt(r.get('high'))}]" if r and r.get("low") is not None
                  else f"± {fmt(r.get('spread'))} (n={r.get('n')})" if r and r.get("spread") is not None else "")
            delta = f"<td class=num>{fmt(value - p['value']) if p and value is not None else ''}</td>" if real else ""
            rows.append(f"<tr><td>{html.escape(key[1])}</td><td>{html.escape(key[2])}</td>"
                        f"<td>{html.escape((p or r or {}).get('split', ''))}</td>"
                        f"<td class=num>{fmt(p['value']) if p else ''}</td><td class=num>{reproduced_cell(r)}</td>"
                        f"<td class=num>{ci}</td>{delta}</tr>")
        parts.append(f"<h3>Table {html.escape(str(table))}</h3><table>{''.join(rows)}</table>")
    return "\n".join(parts)


def mark_not_released(result: dict, claims: list[dict]) -> list[dict]:
    """On a corpus without test labels a claim that has no effect to judge (its test values are NaN)
    is shown as "test labels not released" rather than as inconclusive."""
    if result.get("test_labels") is not False:
        return claims
    return [{**c, "not_released": True} if not math.isfinite(c.get("effect", float("nan"))) else c for c in claims]


def reproduced_cell(r: dict | None) -> str:
    if r is None:
        return "<span class=muted>not run</span>"
    return f"<span class=muted>{NOT_RELEASED}</span>" if r.get("not_released") else fmt(r.get("value"))


def claims_table(results: list[dict]) -> str:
    """One table per kind of claim (CLAIM_KINDS order, unclassified last): the claim, the verdict as
    the report states it, delta, effect, CI, Cohen's d, runs made / planned and the power at delta
    (common.power.plan), the negative control's verdict where one re-judges it, and what builds it
    in / why it is apart."""
    claims = [c for res in results for c in res.get("claims", [])]
    if not claims:
        return "<p class=muted>No claims judged yet.</p>"
    parts = []
    sections = [*CLAIM_KINDS.items(), (UNCLASSIFIED, ("Not yet classified",
                                                      "Add these claim ids to papers/<paper>/claims.csv."))]
    for kind, (title, intro) in sections:
        mine = [c for c in claims if c.get("kind", UNCLASSIFIED) == kind]
        if not mine:
            continue
        rows = ["<tr><th>claim</th><th>verdict</th><th>delta</th><th>effect</th><th>95% CI</th><th>Cohen's d</th>"
                "<th>runs made / planned</th><th>power at delta</th><th>negative control</th>"
                "<th>generator parameter / note</th></tr>"]
        for c in mine:
            label, cls = shown_verdict(c)
            why = f"<br><span class=muted>{html.escape(c['explanation'])}</span>" if c.get("explanation") else ""
            basis = "<br>".join(x for x in (f"<code>{html.escape(c['parameter'])}</code>" if c.get("parameter") else "",
                                             html.escape(c["note"]) if c.get("note") else "") if x)
            rows.append(f"<tr data-kind=\"{html.escape(kind)}\"><td>{html.escape(c.get('text', c.get('id', '')))}{why}</td>"
                        f"<td class={cls}>{html.escape(label)}</td>"
                        f"<td class=num title=\"{html.escape(c.get('delta_reason') or '')}\">{fmt(c.get('delta'), 4)}</td>"
                        f"<td class=num>{fmt(c.get('effect'))}</td><td class=num>[{fmt(c.get('low'))}, {fmt(c.get('high'))}]</td>"
                        f"<td class=num>{fmt(c.get('cohens_d'), 2)}</td>{power_cells(c)}<td>{control_cell(c)}</td>"
                        f"<td class=muted>{basis}</td></tr>")
        parts.append(f"<h3>{html.escape(title)} ({len(mine)})</h3><p class=muted>{html.escape(intro)}</p>"
                     f"<table class=claims>{''.join(rows)}</table>")
    return "\n".join(parts)


def power_cells(c: dict) -> str:
    """Runs made / planned and the power at delta (c["plan"], from common.power.plan); where the
    budget stops short, how many runs would decide."""
    p = c.get("plan") or {}
    if not p:
        return f"<td class=num>{c.get('n', '')}</td><td class=num>–</td>"
    needed = p.get("runs_needed")
    planned = "–" if p.get("runs_planned") is None else str(p["runs_planned"])
    short = ""
    if p.get("budget_short"):
        more = (f"more than {MAX_RUNS:,} runs" if needed > MAX_RUNS else
                f"{needed} runs ({p['seeds_needed']} seeds)" if p["runs_per_seed"] > 1 else f"{needed} seeds")
        short = f"<br><span class=muted>budget {p['budget']}: {more} would decide</span>"
    power = "–" if p.get("power") is None else f"{100 * p['power']:.0f} %"
    return f"<td class=num>{p['runs_made']} / {planned}{short}</td><td class=num>{power}</td>"


def control_cell(c: dict) -> str:
    """The negative control's verdict on this claim (reports/controls.json, common/controls.py)."""
    ctrl = c.get("control")
    if not ctrl:
        return ""
    label = "negligible" if ctrl.get("negligible") else ctrl["verdict"]
    return (f"<span class={ctrl['verdict']}>{html.escape(label)}</span> "
            f"<span class=muted>{html.escape(ctrl['link'])} cut: {fmt(ctrl.get('effect'))} "
            f"[{fmt(ctrl.get('low'))}, {fmt(ctrl.get('high'))}], n={ctrl.get('n')}</span>")


def verdict_legend() -> str:
    """One line per verdict, what it means (common.verdicts.EXPLAINED)."""
    items = "".join(f"<li><span class={v}>{v}</span>: {html.escape(EXPLAINED[v])}</li>" for v in VERDICTS)
    return f"<ul class=legend>{items}</ul>"


def differences_table(results: list[dict]) -> str:
    """The fidelity ledger's rows the notebooks listed (common/ledger.py): the paper, the released
    code with its commit line, this run, which of the two it follows and why; corpus substitutes
    are marked as such."""
    head = ("what", "paper", "released code", "this run", "follows", "why")
    rows, seen = ["<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"], set()
    for res in results:
        for d in res.get("differences", []):
            key = (d.get("what"), d.get("here"))
            if key in seen:
                continue
            seen.add(key)
            released = html.escape(str(d.get("released", "")))
            if d.get("released_at"):
                released += "<br><span class=muted>" + "<br>".join(
                    html.escape(c.strip()) for c in str(d["released_at"]).split(";") if c.strip()) + "</span>"
            follows = d.get("follows", "")
            if d.get("kind") == "substitute":
                follows = f"{follows} (corpus substitute)"
            cells = [html.escape(str(d.get("what", ""))), html.escape(str(d.get("paper", ""))), released,
                     html.escape(str(d.get("here", ""))), html.escape(str(follows)), html.escape(str(d.get("why", "")))]
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table>{''.join(rows)}</table>" if len(rows) > 1 else ""


_MATH = re.compile(r"\$\$(.+?)\$\$|\$(?!\s)([^$\n]+?)\$", re.S)


def latex_to_mathml(markdown: str) -> str:
    """Replace $...$ and $$...$$ with MathML so equations render without MathJax."""
    import latex2mathml.converter

    def convert(m):
        display = m.group(1) is not None
        tex = m.group(1) if display else m.group(2)
        try:
            return latex2mathml.converter.convert(tex.strip(), display="block" if display else "inline")
        except Exception:  # noqa: BLE001 - leave unconvertible TeX visible rather than fail the report
            return m.group(0)
    return _MATH.sub(convert, markdown)


def notebook_to_html(ipynb: Path, out: Path) -> None:
    """Executed notebook -> self-contained HTML with no network references."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(ipynb), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = latex_to_mathml(cell.source)
    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nb)
    body = strip_external(body)
    atomic_write_text(out, body)


_EXTERNAL = re.compile(r"<script[^>]*\bsrc=[\"']https?://[^>]*>\s*</script>|<link[^>]*\bhref=[\"']https?://[^>]*>", re.I)


def strip_external(text: str) -> str:
    """Drop <script src=http...> and <link href=http...>: the report must work offline."""
    return _EXTERNAL.sub("", text)


def external_references(text: str) -> list[str]:
    return re.findall(r"<(?:script|link|img|iframe)[^>]*\b(?:src|href)=[\"'](https?://[^\"']+)", text, re.I)


# ---- pages -------------------------------------------------------------------------------------

def remove_stale_pages(out_dir: Path, results: list[dict]) -> list[Path]:
    """Delete each notebook page (<notebook>.html) of out_dir whose results JSON is gone (a failed
    or removed stage), so no page outlives the results it shows; the paper's index.html is rebuilt."""
    live = {r["notebook"] for r in results}
    stale = [p for p in sorted(out_dir.glob("*.html")) if p.name != "index.html" and p.stem not in live]
    for path in stale:
        path.unlink()
    return stale


def paper_report(paper: str, reports: Path, seeds: int | None = None, controls: dict | None = None,
                 target_power: float = 0.8) -> dict:
    """reports/<paper>/index.html; each claim's runs are planned within the budget of `seeds` seeds
    (the paper's params.yaml `seeds`), `controls` maps claim ids to their negative control's verdict."""
    paper_dir, out_dir = ROOT / "papers" / paper, reports / paper
    published = read_published(paper_dir)
    results = read_results(out_dir) if out_dir.exists() else []
    remove_stale_pages(out_dir, results)
    source = next((r.get("data") for r in results if r.get("data")), "synthetic")
    kinds = read_claim_kinds(paper_dir)
    results = [{**r, "claims": mark_not_released(r, classify_claims(r.get("claims", []), kinds))} for r in results]
    for r in results:
        r["claims"] = [{**c, "plan": plan(c, seeds, target_power), **({"control": controls[c["id"]]} if c.get("id") in (controls or {})
                                                       else {})} for c in r["claims"]]
    claims = [c for r in results for c in r.get("claims", [])]
    counts = claim_counts(claims)
    notebooks = []
    for res in results:
        ipynb = out_dir / f"{res['notebook']}.ipynb"
        if ipynb.exists():
            notebook_to_html(ipynb, out_dir / f"{res['notebook']}.html")
            notebooks.append(f"<li><a href=\"{res['notebook']}.html\">{html.escape(res.get('title', res['notebook']))}</a>"
                             f" <span class=muted>({fmt(res.get('seconds'), 1)} s, profile {html.escape(str(res.get('profile', '?')))})</span></li>")
    # the notebooks' own figures, under the claims each notebook judged (common/report_figures.py)
    figures = report_figures.figures_section(results, out_dir, lambda c: shown_verdict(c)[0])
    figures = ["<h2>Figures behind the claims</h2>", figures] if figures else []
    body = [f"<p><a href=\"../index.html\">← all papers</a></p><h1>{html.escape(PAPERS.get(paper, paper))}</h1>",
            banner(source), NOT_RELEASED_NOTE if test_labels_missing(results) else "", "<h2>Claims</h2>", counts_sentence(counts) if claims else "", verdict_legend() if claims else "",
            report_charts.claims_chart(claims), claims_table(results), *figures,
            "<h2>Published vs reproduced</h2>", results_table(published, results) or "<p class=muted>No tables yet.</p>"]
    diff = differences_table(results)
    if diff:
        body += ["<h2>What differs from the paper, and why</h2>", diff]
    if notebooks:
        body += ["<h2>Walkthrough notebooks (executed)</h2><ul>", *notebooks, "</ul>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "index.html").write_text(page(PAPERS.get(paper, paper), "\n".join(body)))
    return {"paper": paper, "claims": len(claims), "counts": counts, "claim_list": claims, "seeds": seeds,
            "findings": sum(counts["finding"].values()), "reproduced": counts["finding"]["reproduced"],
            "published": len(published), "results": sum(len(r.get("results", [])) for r in results),
            "leaderboard": [row for r in results for row in r.get("leaderboard", [])],
            "timings": [(f"{paper}/{r['notebook']}", r.get("seconds")) for r in results], "ran": bool(results)}


def stage_timings(data_root: Path, features_root: Path) -> list[tuple[str, float | None]]:
    rows = []
    summary = data_root / "metadata" / "summary.json"
    if summary.exists():
        rows.append(("corpus (synthetic Aff-Wild2)", json.loads(summary.read_text()).get("seconds")))
    # Each pre-training stage leaves <model_dir>/<name>.json beside its weights (data/models/<name>/).
    models_root = features_root.parent / "models"
    for path in sorted(models_root.glob("*/*.json")) if models_root.exists() else []:
        seconds = json.loads(path.read_text()).get("seconds")
        if seconds is not None:
            rows.append((f"pre-training: {path.stem}", seconds))
    for path in sorted(features_root.glob("*.json")) if features_root.exists() else []:
        rows.append((f"features: {path.stem}", json.loads(path.read_text()).get("seconds")))
    return rows


def papers_table(summaries: list[dict]) -> list[str]:
    """The index's paper table: findings by verdict, the claims counted apart by kind, and a total
    row; then a sentence with both totals and the verdict-count chart."""
    kinds = ("built into the data", "published absolute number", "configuration check")
    head = ("<tr><th rowspan=2>paper</th><th colspan=5>findings about the method</th><th colspan=3>counted apart</th>"
            "<th rowspan=2>published numbers</th><th rowspan=2>reproduced numbers</th></tr>"
            "<tr><th>judged</th>" + "".join(f"<th>{v}</th>" for v in VERDICTS) +
            "<th>built into the data</th><th>published absolute number (not judgeable)</th><th>configuration checks</th></tr>")
    rows, total = [head], claim_counts([])
    for s in summaries:
        counts = s.get("counts") or claim_counts([])
        for k, by_verdict in counts.items():
            for v, n in by_verdict.items():
                total.setdefault(k, {}).setdefault(v, 0)
                total[k][v] += n
        link = f"<a href=\"{s['paper']}/index.html\">{html.escape(PAPERS[s['paper']])}</a>" if s["ran"] else html.escape(PAPERS[s["paper"]])
        f = counts["finding"]
        rows.append(f"<tr><td>{link}</td><td class=num>{sum(f.values())}</td>"
                    + "".join(f"<td class=num>{f[v]}</td>" for v in VERDICTS)
                    + "".join(f"<td class=num>{sum(counts[k].values())}</td>" for k in kinds)
                    + f"<td class=num>{s['published']}</td><td class=num>{s['results']}</td></tr>")
    f = total["finding"]
    rows.append("<tr><th>all papers</th>" + f"<th class=num>{sum(f.values())}</th>"
                + "".join(f"<th class=num>{f[v]}</th>" for v in VERDICTS)
                + "".join(f"<th class=num>{sum(total[k].values())}</th>" for k in kinds)
                + f"<th class=num>{sum(s['published'] for s in summaries)}</th>"
                  f"<th class=num>{sum(s['results'] for s in summaries)}</th></tr>")
    return [f"<table class=papers>{''.join(rows)}</table>", counts_sentence(total), verdict_legend(),
            "<p class=muted>Only findings test the method. Claims built into the data hold on the embedded corpus "
            "because its generator makes them hold (each paper's page names the parameter). Published absolute "
            "numbers come from real data, and configuration checks test no method.</p>",
            report_charts.verdict_counts_chart(summaries)]


def read_controls(reports: Path) -> dict:
    """reports/controls.json (common/controls.py): {claim id: the control's judged claim}; {} if absent."""
    path = reports / "controls.json"
    if not path.exists():
        return {}
    return {c["claim"]: c for c in json.loads(path.read_text()).get("claims", [])}


def budget_section(summaries: list[dict], verdicts) -> str:
    """What the runs budget decides: per paper, the findings the plans say the budget can decide
    (80 % power at delta within it) and those that need more runs (common.power.plan)."""
    rows = ["<tr><th>paper</th><th>runs budget (seeds)</th><th>findings</th><th>powered within the budget</th>"
            "<th>need more: seeds that would decide each</th></tr>"]
    for s in summaries:
        plans = [c["plan"] for c in s.get("claim_list", []) if c.get("kind") == "finding" and c.get("plan")]
        short = sorted((p["seeds_needed"] or MAX_RUNS + 1) for p in plans if p["budget_short"])
        more = ", ".join(f"more than {MAX_RUNS:,} runs" if n > MAX_RUNS else str(n) for n in short)
        rows.append(f"<tr><td>{html.escape(s['paper'])}</td><td class=num>{s.get('seeds', '–')}</td>"
                    f"<td class=num>{len(plans)}</td><td class=num>{len(plans) - len(short)}</td><td>{more}</td></tr>")
    return (f"<h3>Runs: what the budget decides</h3><p class=muted>Each finding's runs needed for "
            f"{100 * verdicts['target_power']:.0f} % power at its delta, from the spread of the runs made "
            "(common/power.py). The budget is each paper's <code>seeds</code> list in params.yaml: a seed gives a "
            "claim one paired run (Zhang's fold claims: one per fold). docs/benchmarks.md gives what more seeds "
            "cost.</p>"
            f"<table>{''.join(rows)}</table>")


def build(reports: Path | None = None, params_path: Path | None = None) -> Path:
    from common.params import load_params
    reports = Path(reports or ROOT / "reports")
    params = load_params(params_path or ROOT / "params.yaml")
    controls = read_controls(reports)
    summaries = [paper_report(p, reports, len(params[p]["seeds"]) if p in params else None, controls,
                              params["verdicts"]["target_power"])
                 for p in PAPERS if (ROOT / "papers" / p).exists() or (reports / p).exists()]
    timings = stage_timings(ROOT / params["data"]["root"], ROOT / params["features"]["root"])
    timings += [t for s in summaries for t in s["timings"]]
    body = ["<h1>affect-repro: four ABAW papers, reproduced</h1>", banner(params["data"]["source"]),
            f"<p>Profile: <code>{html.escape(params['profile'])}</code>.</p><h2>Papers</h2>"]
    body += papers_table(summaries)
    body.append(budget_section(summaries, params["verdicts"]))
    board = [row for s in summaries for row in s["leaderboard"]]
    body.append("<h2>Leaderboard: every paper's final model, same metrics code, same held-out split</h2>")
    if board:
        cols = ["p_va", "p_expr", "p_au", "p_mtl"]
        body.append("<table><tr><th>paper</th><th>model</th><th>split</th>" + "".join(f"<th>{c.upper()}</th>" for c in cols) + "</tr>")
        for row in sorted(board, key=lambda r: -(r.get("p_va") or -9)):
            body.append(f"<tr><td>{html.escape(row.get('paper', ''))}</td><td>{html.escape(row.get('model', ''))}</td>"
                        f"<td>{html.escape(row.get('split', ''))}</td>" + "".join(f"<td class=num>{fmt(row.get(c))}</td>" for c in cols) + "</tr>")
        body.append("</table>")
        body.append(report_charts.leaderboard_chart(board))
    else:
        body.append("<p class=muted>Fills in as papers land.</p>")
    body.append("<h2>Time per stage (this machine)</h2><table><tr><th>stage</th><th>seconds</th></tr>")
    body += [f"<tr><td>{html.escape(name)}</td><td class=num>{fmt(sec, 1)}</td></tr>" for name, sec in timings]
    total = sum(sec for _, sec in timings if sec is not None)
    body.append(f"<tr><th>sum of the stages above</th><th class=num>{fmt(total, 1)} ({total / 60:.1f} min)</th></tr></table>")
    body.append(report_charts.timings_chart(timings))
    body.append("<p class=muted>Seconds measured inside each stage (without DVC and interpreter start-up); "
                "<code>make benchmark-pipeline</code> measures wall time per stage.</p>")
    index = reports / "index.html"
    atomic_write_text(index, page("affect-repro reports", "\n".join(body)))
    return index


def main(argv=None) -> int:
    out = build(Path(argv[0]) if argv else None)
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
