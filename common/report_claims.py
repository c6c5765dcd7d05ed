"""The claims part of the reports (common/report.py): each claim classified by its claims.csv row
(common/claims.py reads it and decides the verdict), how the report states and counts its verdict, its runs
made and planned and power at delta (common/power.py), and its negative control (common/controls.py,
reports/controls.json).
"""
from __future__ import annotations

import html
import json
import math
from fnmatch import fnmatchcase
from pathlib import Path

from common.claims import CLAIM_KINDS, EXPLAINED, UNCLASSIFIED, VERDICTS, rejudge
from common.power import MAX_RUNS

NOT_RELEASED = "test labels not released"


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, (int, float)) and x != 0 and abs(x) < 10 ** -digits:
        return f"{x:.2g}"                  # e.g. a learning rate of 1e-4, not 0.000
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else html.escape(str(x))


def classify_claims(claims: list[dict], kinds: list[dict]) -> list[dict]:
    """Each claim with "kind", "parameter", "note", "delta" and "delta_reason" from the first claims.csv
    row whose id pattern matches its id, judged again with that delta (common.claims.rejudge);
    no match: the kind the claim carries, else "unclassified"."""
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
            text = html.escape(c.get("text", c.get("id", "")))
            rows.append(f"<tr data-kind=\"{html.escape(kind)}\"><td>{text}{why}</td>"
                        f"<td class={cls}>{html.escape(label)}</td>"
                        "<td class=num "
                        f"title=\"{html.escape(c.get('delta_reason') or '')}\">{fmt(c.get('delta'), 4)}</td>"
                        f"<td class=num>{fmt(c.get('effect'))}</td><td class=num>[{fmt(c.get('low'))}, "
                        f"{fmt(c.get('high'))}]</td>"
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
    """One line per verdict, what it means (common.claims.EXPLAINED)."""
    items = "".join(f"<li><span class={v}>{v}</span>: {html.escape(EXPLAINED[v])}</li>" for v in VERDICTS)
    return f"<ul class=legend>{items}</ul>"


def read_controls(reports: Path) -> list[dict]:
    """reports/controls.json (common/controls.py): each control's judged claim; [] if absent."""
    path = reports / "controls.json"
    return json.loads(path.read_text()).get("claims", []) if path.exists() else []


def control_for(claim_id: str, controls: list[dict]) -> dict | None:
    """The control whose claim id (or claims.csv pattern, e.g. window_*_beats_*) matches `claim_id`."""
    return next((c for c in controls if fnmatchcase(claim_id, c["claim"])), None)


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


def controls_section(controls: list[dict]) -> str:
    """The index's table of negative controls: each built-in claim judged with its generator link cut
    (and intact, the positive control), from reports/controls.json."""
    if not controls:
        return ""
    rows = ["<tr><th>claim</th><th>paper</th><th>link cut</th><th>delta</th><th>cut: verdict, effect [95% CI]</th>"
            "<th>intact: verdict, effect</th></tr>"]
    for c in controls:
        cut = "negligible" if c.get("negligible") else c["verdict"]
        rows.append(f"<tr><td>{html.escape(c['claim'])}</td><td>{html.escape(c['paper'])}</td><td>{html.escape(c['link'])}</td>"
                    f"<td class=num>{fmt(c.get('delta'), 4)}</td><td><span class={c['verdict']}>{cut}</span> "
                    f"{fmt(c.get('effect'))} [{fmt(c.get('low'))}, {fmt(c.get('high'))}]</td>"
                    f"<td><span class={c['intact']['verdict']}>{c['intact']['verdict']}</span> "
                    f"{fmt(c['intact'].get('effect'))}</td></tr>")
    return ("<h2>Negative controls: can the harness say no?</h2><p class=muted>Each claim built into the data, "
            "judged again on a tiny corpus with the generator link it rests on cut (common/controls.py says exactly "
            "which probe and corpus). None may come out reproduced. The intact corpus is the positive control: where "
            "its probe shows no effect either, that control cannot tell.</p>"
            f"<table>{''.join(rows)}</table>")
