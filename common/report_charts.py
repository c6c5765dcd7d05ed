"""The report's pictures: seaborn/matplotlib charts embedded in the HTML as PNG data: URIs.

Every chart is drawn on its own `matplotlib.figure.Figure` (no pyplot, so the backend a notebook
kernel chose is left alone) and returned as an `<img>` tag whose source is the PNG itself, so the
pages stay one self-contained file each, offline. Used by common/report.py:
  claims_chart          per paper: each judged claim's effect and 95% CI (raw sign), its claimed side
                        shaded and its +-delta band drawn, coloured by verdict
  verdict_counts_chart  index: findings by verdict per paper, next to the claims counted apart
  leaderboard_chart     index: every paper's final model on the same metrics
  timings_chart         index: seconds per stage
"""
from __future__ import annotations

import base64
import html
import io
import math
from contextlib import contextmanager

VERDICT_COLOURS = {"reproduced": "#0a7d32", "contradicted": "#b3261e", "absent": "#1f5fa8", "inconclusive": "#c9a227"}
KIND_COLOURS = {"built into the data": "#8c8c8c", "published absolute number": "#6a8caf",
                "configuration check": "#b39ddb", "unclassified": "#444444"}


@contextmanager
def _style():
    import seaborn as sns
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.8):
        yield sns


def _figure(width: float, height: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def to_img(fig, alt: str, css_class: str = "chart") -> str:
    """The figure as <img src="data:image/png;base64,..."> (PNG metadata left out: same chart, same bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f"<img class={css_class} alt=\"{html.escape(alt)}\" src=\"data:image/png;base64,{data}\">"


def _label(text: str, width: int = 70) -> str:
    text = text.replace("$", r"\$")                 # no mathtext in claim texts
    return text if len(text) <= width else text[:width - 1] + "…"


def _claimed_side(c: dict) -> tuple[float, float, str]:
    """(from, to, words) of the effect values the claim says: right of its threshold for '>', left
    for '<', inside +-tolerance for '~' (the effect is always a minus b, in its raw sign)."""
    margin = float(c.get("margin") or 0.0)
    if c.get("direction") == "<":
        return -math.inf, -margin, f"claims < {0.0 - margin:g}"
    if c.get("direction") == "~":
        tol = float(c.get("delta") or c.get("tolerance") or 0.0)
        return -tol, tol, f"claims within ±{tol:g}"
    return margin, math.inf, f"claims > {margin:g}"


def claims_chart(claims: list[dict]) -> str:
    """Each claim's effect (a minus b, its raw sign) with its 95% CI; the claimed side of each row is
    shaded green and labelled, its ±delta band (the 'absent' region) drawn in grey; colour = verdict.
    Findings first, then the claims the report counts apart (labelled by kind, hollow markers);
    published absolute numbers are left out (not judgeable on this corpus)."""
    rows = [c for c in claims if c.get("effect") is not None and math.isfinite(float(c["effect"]))
            and c.get("kind") != "published absolute number"]    # a synthetic CCC minus a real-data number
    if not rows:
        return ""
    order = {"finding": 0, "built into the data": 1, "published absolute number": 2, "configuration check": 3}
    rows = sorted(rows, key=lambda c: order.get(c.get("kind"), 4))
    number = lambda c, k: float("nan") if c.get(k) is None else float(c[k])      # noqa: E731
    # the axis spans the intervals; a delta band wider than that runs off both edges
    ends = [abs(number(c, k)) for c in rows for k in ("low", "high", "effect") if math.isfinite(number(c, k))]
    reach = 1.15 * max(ends + [1e-3])
    with _style():
        fig = _figure(11, 1.0 + 0.36 * len(rows))
        ax = fig.subplots()
        for i, c in enumerate(rows):
            effect, low, high = number(c, "effect"), number(c, "low"), number(c, "high")
            kind = c.get("kind", "finding")
            colour = VERDICT_COLOURS.get(c["verdict"], "#444") if kind == "finding" else KIND_COLOURS.get(kind, "#444")
            start, stop, words = _claimed_side(c)
            ax.fill_betweenx([i - 0.4, i + 0.4], max(start, -reach), min(stop, reach), color="#d8efd8", zorder=0)
            delta = number(c, "delta")
            if c.get("direction") != "~" and math.isfinite(delta):
                ax.fill_betweenx([i - 0.18, i + 0.18], max(-delta, -reach), min(delta, reach), color="#c9c9c9",
                                 zorder=1)
            ax.text(0.995 * reach, i - 0.22, words, va="center", ha="right", fontsize=6.5, color="#2d6a2d")
            if math.isfinite(low) and math.isfinite(high):
                ax.plot([low, high], [i, i], color=colour, lw=2.2, zorder=3)
            ax.plot([effect], [i], "o", color=colour, ms=6, zorder=4, mfc=colour if kind == "finding" else "white")
        ax.axvline(0, color="#222", lw=0.8, zorder=2)
        ax.set_xlim(-reach, reach)
        labels = [_label(c.get("text", c.get("id", "")), 80) + ("" if c.get("kind", "finding") == "finding"
                                                            else f"  [{c['kind']}]") for c in rows]
        ax.set_yticks(range(len(rows)), labels)
        ax.invert_yaxis()
        ax.set_xlabel("effect = a − b as the claim states it (raw sign; 0 = no difference)")
        handles = [_marker(VERDICT_COLOURS[v], v + " (finding)") for v in VERDICT_COLOURS]
        handles += [_marker(KIND_COLOURS[k], k, hollow=True) for k in KIND_COLOURS
                    if any(c.get("kind") == k for c in rows)]
        handles += [_patch("#d8efd8", "the side the claim states"),
                    _patch("#c9c9c9", "±delta: absent if the CI lies inside")]
        fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=7, frameon=False)
    return (to_img(fig, "Each claim's effect and 95% confidence interval in its raw sign, claimed side shaded")
            + "<p class=muted>Each claim's mean effect (dot) and 95% confidence interval (bar) in its raw sign, the "
              "first quantity of the claim minus the second. The green band is the side the claim states (named at the "
              "right of each row); the grey band is ±delta, where an interval counts as absent. Filled dots are "
              "findings, coloured by verdict. Hollow dots are the claims counted apart.</p>")


def _patch(colour: str, label: str):
    from matplotlib.patches import Patch
    return Patch(color=colour, label=label)


def _marker(colour: str, label: str, hollow: bool = False):
    from matplotlib.lines import Line2D
    return Line2D([], [], color=colour, marker="o", lw=2, label=label, mfc="white" if hollow else colour)


def verdict_counts_chart(summaries: list[dict]) -> str:
    """Left: findings about the method per paper, stacked by verdict. Right: the claims counted
    apart (built into the data / published absolute number / configuration check)."""
    papers = [s for s in summaries if s.get("counts")]
    if not papers or not any(sum(s["counts"][k].values()) for s in papers for k in s["counts"]):
        return ""
    names = [s["paper"] for s in papers]
    with _style():
        fig = _figure(9, 1.2 + 0.45 * len(papers))
        left, right = fig.subplots(1, 2, sharey=True)
        for ax, parts, colours, title in (
                (left, [("finding", v) for v in VERDICT_COLOURS], list(VERDICT_COLOURS.values()),
                 "findings about the method, by verdict"),
                (right,
                 [(k, None) for k in ("built into the data", "published absolute number", "configuration check")],
                 [KIND_COLOURS[k] for k in ("built into the data", "published absolute number", "configuration check")],
                 "counted apart, by kind")):
            base = [0] * len(papers)
            for (kind, verdict), colour in zip(parts, colours):
                counts = [s["counts"].get(kind, {}).get(verdict, 0) if verdict
                          else sum(s["counts"].get(kind, {}).values())
                          for s in papers]
                ax.barh(names, counts, left=base, color=colour, label=verdict or kind)
                base = [b + n for b, n in zip(base, counts)]
            ax.set_title(title)
            ax.set_xlabel("claims")
            ax.xaxis.get_major_locator().set_params(integer=True)
        left.invert_yaxis()
        handles = [h for ax in (left, right) for h in ax.get_legend_handles_labels()[0]]
        fig.legend(handles=handles, loc="outside lower center", ncols=6, fontsize=7, frameon=False)
    return to_img(fig, "Claims per paper: findings by verdict, and the claims counted apart by kind")


def leaderboard_chart(board: list[dict]) -> str:
    """P_VA, P_EXPR, P_AU of every paper's final model (P_MTL is their sum: left to the table)."""
    import pandas as pd
    cols = {"p_va": "P_VA", "p_expr": "P_EXPR", "p_au": "P_AU"}
    long = [{"model": f"{r.get('paper', '')}: {_label(r.get('model', ''), 40)} ({r.get('split', '')})",
             "metric": name, "value": float(r[c])}
            for r in board for c, name in cols.items() if r.get(c) is not None and math.isfinite(float(r[c]))]
    if not long:
        return ""
    df = pd.DataFrame(long)
    models = df["model"].unique()
    with _style() as sns:
        fig = _figure(9, 1.0 + 0.35 * len(df))
        ax = fig.subplots()
        sns.barplot(data=df, y="model", x="value", hue="metric", ax=ax, orient="h", palette="deep")
        ax.set_xlabel("score on the held-out split (higher is better)")
        ax.set_ylabel("")
        ax.set_yticks(range(len(models)), list(models))
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.0, 1.0), title="", frameon=False)
        for bars in ax.containers:
            ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    return to_img(fig, "Leaderboard: each paper's final model on the same metrics")


def timings_chart(timings: list[tuple[str, float | None]]) -> str:
    """Seconds per stage, longest first."""
    import pandas as pd
    rows = [(name, float(sec)) for name, sec in timings if sec is not None and math.isfinite(float(sec))]
    if not rows:
        return ""
    df = pd.DataFrame(sorted(rows, key=lambda r: -r[1]), columns=["stage", "seconds"])
    with _style() as sns:
        fig = _figure(9, 0.9 + 0.24 * len(df))
        ax = fig.subplots()
        sns.barplot(data=df, y="stage", x="seconds", ax=ax, orient="h", color="#4c72b0")
        ax.set_ylabel("")
        ax.set_xlabel("seconds (measured inside each stage)")
        ax.bar_label(ax.containers[0], fmt="%.1f", fontsize=7, padding=2)
    return to_img(fig, "Seconds per stage, longest first")
