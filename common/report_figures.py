"""The figures of a paper's executed notebooks, on its report page beside the claims they support.

Each executed notebook (`reports/<paper>/<notebook>.ipynb`, written by common/notebooks.py with
matplotlib's inline backend) carries its figures as image outputs. `figures_section` gathers them
per notebook, each under the markdown that introduces its cell (what the figure shows and what to
look for), below the claims that notebook judged, so a reader sees the evidence next to the verdict.
The PNGs go into the page as data: URIs, as the charts of common/report_charts.py do: the page
needs no other file and no network.
"""
from __future__ import annotations

import html
import re
from pathlib import Path

MAX_CAPTION = 420          # characters of the introducing markdown shown under a figure


def caption(markdown: str) -> str:
    """The introducing markdown cell as a short caption: headings dropped, whitespace joined, cut
    at a sentence end near MAX_CAPTION characters."""
    text = " ".join(line.strip() for line in markdown.splitlines() if line.strip()
                    and not line.lstrip().startswith("#"))
    if len(text) > MAX_CAPTION:
        cut = text.rfind(". ", 0, MAX_CAPTION)
        text = text[:cut + 1] if cut > 0 else text[:MAX_CAPTION] + "…"
    return text


def notebook_figures(ipynb: Path) -> list[dict]:
    """[{"png": base64 text, "caption", "cell"}] for every image output of an executed notebook, in order."""
    import nbformat
    nb = nbformat.read(str(ipynb), as_version=4)
    figures, intro = [], ""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            intro = cell.source
        elif cell.cell_type == "code":
            for out in cell.get("outputs", []):
                png = out.get("data", {}).get("image/png")
                if png:
                    figures.append({"png": "".join(png).replace("\n", ""), "caption": caption(intro), "cell": i})
    return figures


def _inline(text: str) -> str:
    """Escaped text with `code` spans kept as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def figures_section(results: list[dict], out_dir: Path, label) -> str:
    """One block per notebook with figures: its title, the claims it judged (with the verdict as
    `label(claim)` states it) and its figures with captions. Empty when no notebook drew one."""
    blocks = []
    for res in results:
        ipynb = Path(out_dir) / f"{res['notebook']}.ipynb"
        figures = notebook_figures(ipynb) if ipynb.exists() else []
        if not figures:
            continue
        claims = "".join(f"<li>{html.escape(c.get('text', c.get('id', '')))}: <b>{html.escape(label(c))}</b></li>"
                         for c in res.get("claims", []))
        shown = "".join(f"<figure><img class=figure alt=\"figure of {html.escape(res['notebook'])}\" "
                        f"src=\"data:image/png;base64,{f['png']}\"><figcaption>{_inline(f['caption'])}</figcaption></figure>"
                        for f in figures)
        blocks.append(f"<div class=figures data-notebook=\"{html.escape(res['notebook'])}\">"
                      f"<h3>{html.escape(res.get('title', res['notebook']))} "
                      f"<span class=muted>(<a href=\"{html.escape(res['notebook'])}.html\">notebook</a>)</span></h3>"
                      + (f"<p class=muted>The claims this notebook judges:</p><ul>{claims}</ul>" if claims else "")
                      + shown + "</div>")
    return "\n".join(blocks)


CSS = ("figure{margin:.8em 0}img.figure{max-width:100%;height:auto;display:block;border:1px solid #eee}"
       "figcaption{color:#555;font-size:.92em;max-width:900px}")
