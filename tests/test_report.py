"""The report builder: computed verdicts, published-vs-reproduced tables, offline HTML."""
import json

import nbformat
import pytest

from common import report


def test_verdicts_follow_the_interval_not_the_sign_alone():
    clear = report.judge_claim([0.52, 0.55, 0.53], [0.40, 0.41, 0.42], ">")
    assert clear["verdict"] == "reproduced" and clear["effect"] == pytest.approx(0.49 / 3 + 0.0, abs=0.05)
    assert clear["low"] > 0 and clear["n"] == 3 and clear["cohens_d"] > 1
    noisy = report.judge_claim([0.50, 0.30, 0.62], [0.45, 0.44, 0.43], ">")
    assert noisy["verdict"] == "inconclusive" and noisy["low"] < 0 < noisy["high"]
    wrong = report.judge_claim([0.30, 0.31, 0.29], [0.40, 0.41, 0.42], ">")
    assert wrong["verdict"] == "not reproduced" and wrong["high"] < 0
    single = report.judge_claim([0.9], [0.1], ">")
    assert single["verdict"] == "inconclusive"              # one run has no spread to judge by


def test_about_the_same_claims_use_the_tolerance():
    same = report.judge_claim([0.500, 0.502, 0.499], [0.501, 0.500, 0.500], "~", tolerance=0.02)
    assert same["verdict"] == "reproduced"
    apart = report.judge_claim([0.60, 0.61, 0.62], [0.50, 0.50, 0.51], "~", tolerance=0.02)
    assert apart["verdict"] == "not reproduced"
    with pytest.raises(ValueError, match="equal run counts"):
        report.judge_claim([1, 2], [1, 2, 3], ">")


def test_a_claims_explanation_is_shown_under_it():
    claim = {**report.judge_claim([0.52, 0.55, 0.53], [0.40, 0.41, 0.42], ">"), "text": "A beats B",
             "explanation": "Because <small> batches."}
    html_text = report.claims_table([{"claims": [claim, {**claim, "text": "C", "explanation": None}]}])
    assert "A beats B<br><span class=muted>Because &lt;small&gt; batches.</span>" in html_text
    assert "<td>C</td>" in html_text


def test_results_table_puts_published_beside_reproduced():
    published = [{"table": "1", "row": "MM", "column": "arousal", "value": 0.6, "split": "validation", "note": ""},
                 {"table": "1", "row": "UM", "column": "arousal", "value": 0.5, "split": "validation", "note": ""}]
    results = [{"paper": "x", "results": [{"table": "1", "row": "MM", "column": "arousal", "value": 0.45,
                                           "spread": 0.01, "n": 3, "split": "validation"}]}]
    html_text = report.results_table(published, results)
    assert "0.600" in html_text and "0.450" in html_text and "-0.150" in html_text
    assert "not run" in html_text                             # UM was published but not reproduced


def test_published_csv_errors_name_the_line(tmp_path):
    (tmp_path / "published.csv").write_text("table,row,column,value,split,note\n1,a,b,0.5,test,\n1,a,c,oops,test,\n")
    with pytest.raises(ValueError, match=r"published\.csv:3: value 'oops'"):
        report.read_published(tmp_path)


def test_notebook_html_is_offline_and_renders_math(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("Eq. 1: $\\mathrm{CCC} = \\frac{2 s_{xy}}{s_x^2 + s_y^2}$"),
                nbformat.v4.new_code_cell("1 + 1")]
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, str(path))
    report.notebook_to_html(path, tmp_path / "n.html")
    text = (tmp_path / "n.html").read_text()
    assert "<math" in text and "<mfrac" in text
    assert report.external_references(text) == []
    assert report.external_references('<script src="https://cdn.x/y.js"></script>') == ["https://cdn.x/y.js"]


def test_build_writes_an_index_with_leaderboard_and_timings(tmp_path, monkeypatch):
    reports = tmp_path / "reports"
    (reports / "zhang2021").mkdir(parents=True)
    (reports / "zhang2021" / "table2.json").write_text(json.dumps({
        "paper": "zhang2021", "title": "Table 2", "seconds": 12.5, "profile": "smoke", "data": "synthetic",
        "claims": [dict(report.judge_claim([0.5, 0.6, 0.55], [0.3, 0.35, 0.32]), id="mm>um", text="MM beats UM")],
        "leaderboard": [{"paper": "zhang2021", "model": "MM+CV-LC", "split": "test", "p_va": 0.41}]}))
    index = report.build(reports)
    text = index.read_text()
    assert "MM+CV-LC" in text and "0.410" in text and "zhang2021/table2" in text
    paper_page = (reports / "zhang2021" / "index.html").read_text()
    assert "MM beats UM" in paper_page and "reproduced" in paper_page and "not comparable" in paper_page
    for page in (text, paper_page):
        assert report.external_references(page) == []


def test_small_numbers_keep_their_value_in_the_tables():
    assert report.fmt(1e-4) == "0.0001" and report.fmt(0.1234) == "0.123" and report.fmt(0.0) == "0.000"
    assert report.fmt(float("nan")) == "–" and report.fmt(None) == "–"
