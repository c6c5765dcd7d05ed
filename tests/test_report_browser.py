"""The report pages opened in a real browser (headless Chromium): images load, nothing is fetched
from the network, no script errors, equations render as MathML, the claims tables are there, and a
screenshot is written under the reports folder. The pipeline's own smoke report is opened the same
way in tests/test_pipeline.py (test_report_opens_in_chromium).

Chromium is required, not optional: .ci/run installs Debian's `chromium` before `make test`, so a
missing browser fails these tests with the install command instead of skipping them.
"""
import base64
import csv
import io
import json
import time

import nbformat
import pytest

from common import browser, report
from common.claims import judge_claim


@pytest.fixture(scope="module")
def chromium():
    path = browser.find_chromium()
    if not path:
        pytest.fail(browser.INSTALL_HINT, pytrace=False)
    return path


def _png() -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4, 2.5))
    ax.bar(["300", "48", "36"], [0.5, 0.45, 0.4])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _executed_notebook(figure: bool):
    """An executed notebook: an equation, and a cell that draws a figure, with its image output or without."""
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("fig, ax = plt.subplots(); ax.bar(lengths, ccc); plt.show()", execution_count=2)
    if figure:
        cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": _png(), "text/plain": "<Figure>"})]
    nb.cells = [nbformat.v4.new_markdown_cell(r"Eq. 1: $\mathrm{CCC} = "
                                              r"\frac{2 s_{xy}}{s_x^2 + s_y^2 + (\bar x - \bar y)^2}$"),
                nbformat.v4.new_code_cell("1 + 1", execution_count=1),
                nbformat.v4.new_markdown_cell("## Bars\n\nThe next cell draws the bars (`window.png`): look for the "
                                              "longest window on top."),
                cell]
    return nb


@pytest.fixture(scope="module")
def four_paper_report(tmp_path_factory):
    """A report built from notebook JSONs for all four papers, every claim id of each paper's
    claims.csv judged, a leaderboard row per paper, and per paper one executed notebook with an
    equation and a figure."""
    reports = tmp_path_factory.mktemp("browser") / "reports"
    for i, paper in enumerate(report.PAPERS):
        (reports / paper).mkdir(parents=True)
        with open(report.ROOT / "papers" / paper / "claims.csv", newline="") as f:
            ids = [row["id"].replace("*", "30") for row in csv.DictReader(f)]
        claims = [{**judge_claim([0.5 + 0.01 * k, 0.52, 0.55], [0.45, 0.5, 0.49], ">"), "id": id_,
                   "text": f"{id_}: a claim with <markup> & $dollars$"} for k, id_ in enumerate(ids)]
        (reports / paper / "table1.json").write_text(json.dumps({
            "paper": paper, "notebook": "table1", "title": "Table 1", "seconds": 10.0 * (i + 1), "profile": "default",
            "data": "synthetic", "claims": claims,
            "leaderboard": [{"paper": paper, "model": "final", "split": "test", "p_va": 0.3 + 0.05 * i,
                             "p_expr": 0.25}]}))
        nbformat.write(_executed_notebook(figure=True), str(reports / paper / "table1.ipynb"))
    report.build(reports)
    return reports


def _check(path, screenshot, **expect):
    seen = browser.open_page(path, screenshot)
    assert browser.problems(seen, **expect) == [], (path, seen["console"])
    return seen


def test_report_pages_open_in_chromium(chromium, four_paper_report):
    reports = four_paper_report
    shots = reports / "screenshots"
    started = time.perf_counter()
    index = _check(reports / "index.html", shots / "index.png")
    # verdict counts per paper, the leaderboard, stage times: PNGs inside the page, all loaded
    assert len(index["images"]) == 3 and all(i["src"].startswith("data:image/png;base64,") for i in index["images"])
    assert all(i["width"] > 300 and i["height"] > 100 for i in index["images"]), index["images"]
    for paper in report.PAPERS:
        page = _check(reports / paper / "index.html", shots / f"{paper}.png", expect_claims=True, expect_figures=True)
        with open(report.ROOT / "papers" / paper / "claims.csv", newline="") as f:
            assert page["claim_rows"] == sum(1 for _ in csv.DictReader(f)), paper      # every claim, classified
        # the claims chart, the notebook's figure
        assert len(page["images"]) == 2 and page["figures"] == 1
        assert page["resources"] == []                                                 # nothing fetched at all
    notebook = _check(reports / "zhang2021" / "table1.html", shots / "zhang2021-table1.png", expect_math=True)
    assert notebook["math"] >= 1 and notebook["math_rendered"] == notebook["math"]
    assert notebook["figure_cells"] == 1 and notebook["empty_figure_cells"] == []
    for name in ("index", *report.PAPERS, "zhang2021-table1"):
        assert (shots / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    seconds = time.perf_counter() - started
    print(f"6 pages opened in Chromium in {seconds:.1f} s")
    assert seconds < 120


def test_the_browser_check_sees_a_broken_page(chromium, tmp_path):
    """The checks are real: a missing image, a request to the network and a script error are all reported."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><head><title>broken</title></head><body>"
                    "<img src=\"missing.png\"><img src=\"https://example.invalid/x.png\">"
                    "<script>undefinedFunction()</script><script>console.error('boom')</script></body></html>")
    seen = browser.open_page(page)
    found = browser.problems(seen, expect_math=True, expect_claims=True)
    text = "\n".join(found)
    assert "image not loaded: missing.png" in text and "image not loaded: https://example.invalid/x.png" in text
    assert "external request: https://example.invalid/x.png" in text
    assert "undefinedFunction is not defined" in text and "console.error: boom" in text
    assert "no <math> element" in text and "no claims table" in text
    assert not list(tmp_path.glob(".browser-check-*"))        # the probed copy is removed


def test_the_browser_check_sees_a_figure_cell_without_its_figure(chromium, tmp_path):
    """A notebook page whose plotting cell shows no image (a non-interactive backend), and a paper
    page without any notebook figure, are both reported."""
    nbformat.write(_executed_notebook(figure=False), str(tmp_path / "table1.ipynb"))
    report.notebook_to_html(tmp_path / "table1.ipynb", tmp_path / "table1.html")
    seen = browser.open_page(tmp_path / "table1.html")
    assert seen["figure_cells"] == 1 and len(seen["empty_figure_cells"]) == 1
    assert any("draw a figure but show none" in p for p in browser.problems(seen))
    assert "no figure of the notebooks on the page" in browser.problems(seen, expect_figures=True)
