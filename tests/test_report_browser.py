"""The report pages opened in a real browser (headless Chromium): images load, nothing is fetched
from the network, no script errors, equations render as MathML, the claims tables are there, and a
screenshot is written under the reports folder. The pipeline's own smoke report is opened the same
way in tests/test_pipeline.py (test_report_opens_in_chromium).

Chromium is required, not optional: .ci/run installs Debian's `chromium` before `make test`, so a
missing browser fails these tests with the install command instead of skipping them.
"""
import csv
import json
import time

import nbformat
import pytest

from common import browser, report


@pytest.fixture(scope="module")
def chromium():
    path = browser.find_chromium()
    if not path:
        pytest.fail(browser.INSTALL_HINT, pytrace=False)
    return path


@pytest.fixture(scope="module")
def four_paper_report(tmp_path_factory):
    """A report built from notebook JSONs for all four papers, every claim id of each paper's
    claims.csv judged, a leaderboard row per paper, and one executed-notebook page with equations."""
    reports = tmp_path_factory.mktemp("browser") / "reports"
    for i, paper in enumerate(report.PAPERS):
        (reports / paper).mkdir(parents=True)
        with open(report.ROOT / "papers" / paper / "claims.csv", newline="") as f:
            ids = [row["id"].replace("*", "30") for row in csv.DictReader(f)]
        claims = [{**report.judge_claim([0.5 + 0.01 * k, 0.52, 0.55], [0.45, 0.5, 0.49], ">"), "id": id_,
                   "text": f"{id_}: a claim with <markup> & $dollars$"} for k, id_ in enumerate(ids)]
        (reports / paper / "table1.json").write_text(json.dumps({
            "paper": paper, "notebook": "table1", "title": "Table 1", "seconds": 10.0 * (i + 1), "profile": "smoke",
            "data": "synthetic", "claims": claims,
            "leaderboard": [{"paper": paper, "model": "final", "split": "test", "p_va": 0.3 + 0.05 * i, "p_expr": 0.25}]}))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(r"Eq. 1: $\mathrm{CCC} = \frac{2 s_{xy}}{s_x^2 + s_y^2 + (\bar x - \bar y)^2}$"),
                nbformat.v4.new_code_cell("1 + 1")]
    nbformat.write(nb, str(reports / "zhang2021" / "table1.ipynb"))
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
        page = _check(reports / paper / "index.html", shots / f"{paper}.png", expect_claims=True)
        with open(report.ROOT / "papers" / paper / "claims.csv", newline="") as f:
            assert page["claim_rows"] == sum(1 for _ in csv.DictReader(f)), paper      # every claim, classified
        assert len(page["images"]) == 1 and page["images"][0]["ok"]                    # the claims chart
        assert page["resources"] == []                                                 # nothing fetched at all
    notebook = _check(reports / "zhang2021" / "table1.html", shots / "zhang2021-table1.png", expect_math=True)
    assert notebook["math"] >= 1 and notebook["math_rendered"] == notebook["math"]
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
