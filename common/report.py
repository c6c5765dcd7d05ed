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

import html
import json
import math
import re
import sys
from pathlib import Path

from common import report_charts, report_figures
from common.claims import VERDICTS, read_claim_kinds, read_csv_rows
from common.files import atomic_write_text
from common.power import plan
from common.report_claims import (NOT_RELEASED, budget_section, claim_counts, claims_table, classify_claims,
                                  control_for, controls_section, counts_sentence, fmt, read_controls, shown_verdict,
                                  verdict_legend)

ROOT = Path(__file__).resolve().parents[1]
PAPERS = {"jeong2022": "Jeong, Oh, Lim (CVPRW 2022)", "zhang2021": "Zhang, Ding, Wei, Guan (ICCVW 2021)",
          "liu2023": "Liu, Sun et al. (CVPRW 2023)", "vu2021": "Vu, Beurton-Aimar, Marchand (ICCVW 2021)"}


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
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:.8em 0}
th,td{padding:.3em .7em;border-bottom:1px solid #eee;text-align:left;vertical-align:top}th{background:#f6f6f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.banner{background:#fff6d6;border:1px solid #e8d48a;padding:.7em 1em;border-radius:6px}
.reproduced{color:#0a7d32;font-weight:600}.contradicted{color:#b3261e;font-weight:600}
.absent{color:#1f5fa8;font-weight:600}.inconclusive{color:#8a6d00;font-weight:600}
.built-in{color:#555;font-weight:600}.not-judgeable{color:#3c5f86;font-weight:600}.check{color:#5e4a9c;font-weight:600}
.unclassified{color:#b3261e;font-style:italic}img.chart{max-width:100%;height:auto;display:block;margin:.6em 0}
code{background:#f3f3f3;padding:0 .25em;border-radius:3px}.muted{color:#777}
table.papers{font-size:.92em}table.papers th,table.papers td{padding:.3em .45em}
table.papers td:first-child{white-space:nowrap}table.papers th{font-size:.88em}
"""


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}{report_figures.CSS}</style></head><body>\n{body}\n</body></html>\n")


def banner(data_source: str) -> str:
    if data_source == "real":
        return "<p class=banner>Data: the real Aff-Wild2, from the folder named in params.yaml.</p>"
    return ("<p class=banner><b>Data: the embedded synthetic Aff-Wild2</b> (common/data/synthetic/), generated "
            "in the official layout with the causal structure the papers rely on. Absolute values are "
            "<b>not comparable</b> with the published ones; each claim is judged by the direction and size of "
            "its effect across runs.</p>")


# The smoke profile runs every stage on a corpus of seconds: its pages check that the pipeline works,
# and a verdict computed there is evidence of nothing, so none is counted.
SMOKE_NOTE = ("<p class=banner><b>Smoke profile: these pages check the plumbing, not the papers.</b> The corpus "
              "and the runs are a few seconds' worth, so no verdict here says anything about a method and none is "
              "counted; the claims below show only that each one is computed. The default profile "
              "(<code>make reproduce</code>) judges the papers.</p>")


def counted(profile: str) -> bool:
    """Whether a profile's verdicts are counted (every profile but smoke)."""
    return profile != "smoke"


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


_EXTERNAL = re.compile(r"<script[^>]*\bsrc=[\"']https?://[^>]*>\s*</script>|<link[^>]*\bhref=[\"']https?://[^>]*>",
                       re.I)


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


def paper_report(paper: str, reports: Path, seeds: int | None = None, controls: list[dict] | None = None,
                 target_power: float = 0.8) -> dict:
    """reports/<paper>/index.html; each claim's runs are planned within the budget of `seeds` seeds
    (the paper's params.yaml `seeds`); `controls` are the negative controls (reports/controls.json)."""
    paper_dir, out_dir = ROOT / "papers" / paper, reports / paper
    published = read_published(paper_dir)
    results = read_results(out_dir) if out_dir.exists() else []
    remove_stale_pages(out_dir, results)
    source = next((r.get("data") for r in results if r.get("data")), "synthetic")
    kinds = read_claim_kinds(paper_dir)
    results = [{**r, "claims": mark_not_released(r, classify_claims(r.get("claims", []), kinds))} for r in results]
    for r in results:
        r["claims"] = [{**c, "plan": plan(c, seeds, target_power),
                        "control": control_for(str(c.get("id", "")), controls or [])}
                       for c in r["claims"]]
    claims = [c for r in results for c in r.get("claims", [])]
    profile = next((str(r["profile"]) for r in results if r.get("profile")), "default")
    counts = claim_counts(claims if counted(profile) else [])
    notebooks = []
    for res in results:
        ipynb = out_dir / f"{res['notebook']}.ipynb"
        if ipynb.exists():
            notebook_to_html(ipynb, out_dir / f"{res['notebook']}.html")
            title = html.escape(res.get("title", res["notebook"]))
            notebooks.append(f"<li><a href=\"{res['notebook']}.html\">{title}</a>"
                             f" <span class=muted>({fmt(res.get('seconds'), 1)} s, profile "
                             f"{html.escape(str(res.get('profile', '?')))})</span></li>")
    # the notebooks' own figures, under the claims each notebook judged (common/report_figures.py)
    figures = report_figures.figures_section(results, out_dir, lambda c: shown_verdict(c)[0])
    figures = ["<h2>Figures behind the claims</h2>", figures] if figures else []
    body = [f"<p><a href=\"../index.html\">← all papers</a></p><h1>{html.escape(PAPERS.get(paper, paper))}</h1>",
            banner(source), "" if counted(profile) else SMOKE_NOTE,
            NOT_RELEASED_NOTE if test_labels_missing(results) else "",
            "<h2>Claims</h2>", counts_sentence(counts) if claims and counted(profile) else "",
            verdict_legend() if claims else "",
            report_charts.claims_chart(claims), claims_table(results), *figures,
            "<h2>Published vs reproduced</h2>",
            results_table(published, results) or "<p class=muted>No tables yet.</p>"]
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
            "<th>built into the data</th><th>published absolute number (not judgeable)</th>"
            "<th>configuration checks</th></tr>")
    rows, total = [head], claim_counts([])
    for s in summaries:
        counts = s.get("counts") or claim_counts([])
        for k, by_verdict in counts.items():
            for v, n in by_verdict.items():
                total.setdefault(k, {}).setdefault(v, 0)
                total[k][v] += n
        name = html.escape(PAPERS[s["paper"]])
        link = f"<a href=\"{s['paper']}/index.html\">{name}</a>" if s["ran"] else name
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
            "" if counted(params["profile"]) else SMOKE_NOTE,
            f"<p>Profile: <code>{html.escape(params['profile'])}</code>.</p><h2>Papers</h2>"]
    body += papers_table(summaries)
    if counted(params["profile"]):
        body.append(budget_section(summaries, params["verdicts"]))
    body.append(controls_section(controls))
    board = [row for s in summaries for row in s["leaderboard"]]
    body.append("<h2>Leaderboard: every paper's final model, same metrics code, same held-out split</h2>")
    if board:
        cols = ["p_va", "p_expr", "p_au", "p_mtl"]
        body.append("<table><tr><th>paper</th><th>model</th><th>split</th>"
                    + "".join(f"<th>{c.upper()}</th>" for c in cols) + "</tr>")
        for row in sorted(board, key=lambda r: -(r.get("p_va") or -9)):
            body.append(f"<tr><td>{html.escape(row.get('paper', ''))}</td><td>{html.escape(row.get('model', ''))}</td>"
                        f"<td>{html.escape(row.get('split', ''))}</td>"
                        + "".join(f"<td class=num>{fmt(row.get(c))}</td>" for c in cols) + "</tr>")
        body.append("</table>")
        body.append(report_charts.leaderboard_chart(board))
    else:
        body.append("<p class=muted>Fills in as papers land.</p>")
    body.append("<h2>Time per stage (this machine)</h2><table><tr><th>stage</th><th>seconds</th></tr>")
    body += [f"<tr><td>{html.escape(name)}</td><td class=num>{fmt(sec, 1)}</td></tr>" for name, sec in timings]
    total = sum(sec for _, sec in timings if sec is not None)
    body.append(f"<tr><th>sum of the stages above</th><th class=num>{fmt(total, 1)} ({total / 60:.1f} "
                "min)</th></tr></table>")
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
