"""The report builder: computed verdicts, published-vs-reproduced tables, offline HTML."""
import json

import nbformat
import pytest

from common import claims, report


def test_verdicts_follow_the_interval_not_the_sign_alone():
    clear = claims.judge_claim([0.52, 0.55, 0.53], [0.40, 0.41, 0.42], ">")
    assert clear["verdict"] == "reproduced" and clear["effect"] == pytest.approx(0.49 / 3 + 0.0, abs=0.05)
    assert clear["low"] > 0 and clear["n"] == 3 and clear["cohens_d"] > 1
    noisy = claims.judge_claim([0.50, 0.30, 0.62], [0.45, 0.44, 0.43], ">")
    assert noisy["verdict"] == "inconclusive" and noisy["low"] < 0 < noisy["high"]
    wrong = claims.judge_claim([0.30, 0.31, 0.29], [0.40, 0.41, 0.42], ">")
    assert wrong["verdict"] == "contradicted" and wrong["high"] < 0
    single = claims.judge_claim([0.9], [0.1], ">")
    assert single["verdict"] == "inconclusive"              # one run has no spread to judge by


def test_about_the_same_claims_use_the_tolerance():
    same = claims.judge_claim([0.500, 0.502, 0.499], [0.501, 0.500, 0.500], "~", tolerance=0.02)
    assert same["verdict"] == "reproduced"
    apart = claims.judge_claim([0.60, 0.61, 0.62], [0.50, 0.50, 0.51], "~", tolerance=0.02)
    assert apart["verdict"] == "contradicted"
    with pytest.raises(ValueError, match="equal run counts"):
        claims.judge_claim([1, 2], [1, 2, 3], ">")


def test_a_claims_explanation_is_shown_under_it():
    claim = {**claims.judge_claim([0.52, 0.55, 0.53], [0.40, 0.41, 0.42], ">"), "text": "A beats B",
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
    assert "0.600" in html_text and "0.450" in html_text
    assert "not run" in html_text                             # UM was published but not reproduced
    # the embedded corpus: absolute values are not comparable, so no difference from the paper's number
    assert "-0.150" not in html_text and "published</th></tr>" not in html_text
    results[0]["data"] = "real"
    assert "-0.150" in report.results_table(published, results)


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


def test_test_rows_say_test_labels_not_released_on_the_real_release():
    published = [{"table": "1", "row": "MM", "column": "test", "value": 0.6, "split": "test", "note": ""},
                 {"table": "1", "row": "MM", "column": "validation", "value": 0.5, "split": "validation", "note": ""}]
    def row(split, value):
        return {"table": "1", "row": "MM", "column": split, "value": value, "split": split}
    results = [{"paper": "x", "data": "real", "results": [row("test", float("nan")), row("validation", 0.45)]}]
    assert "not released" not in report.results_table(published, results)     # a corpus with test labels
    results[0]["test_labels"] = False
    html_text = report.results_table(published, results)
    assert html_text.count(report.NOT_RELEASED) == 1 and "0.450" in html_text and "not run" not in html_text


def test_a_page_whose_results_are_gone_is_removed(tmp_path):
    """A failed or removed stage leaves no page behind: table2.html without table2.json goes."""
    out = tmp_path / "reports" / "zhang2021"
    out.mkdir(parents=True)
    (out / "table1.json").write_text(json.dumps({"paper": "zhang2021", "title": "Table 1", "seconds": 1.0}))
    for name in ("table1.html", "table2.html"):
        (out / name).write_text("<html>old</html>")
    report.build(tmp_path / "reports")
    assert (out / "table1.html").exists() and not (out / "table2.html").exists()
    assert "table2" not in (out / "index.html").read_text()


def test_build_writes_an_index_with_leaderboard_and_timings(tmp_path, monkeypatch):
    reports = tmp_path / "reports"
    (reports / "zhang2021").mkdir(parents=True)
    (reports / "zhang2021" / "table2.json").write_text(json.dumps({
        "paper": "zhang2021", "title": "Table 2", "seconds": 12.5, "profile": "smoke", "data": "synthetic",
        "claims": [dict(claims.judge_claim([0.5, 0.6, 0.55], [0.3, 0.35, 0.32]), id="mm>um", text="MM beats UM")],
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


# ---- the kind of each claim (papers/<paper>/claims.csv) ------------------------------------------

def _notebook_claim_ids(paper_dir):
    """The claim ids the paper's notebooks and modules define ("id": ... in a dict, or claim(id, ...)),
    as regexes ({placeholders} of f-strings -> a word)."""
    import re
    sources = [(path.name, cell.source) for path in sorted(paper_dir.glob("*.ipynb"))
               for cell in nbformat.read(str(path), as_version=4).cells if cell.cell_type == "code"]
    sources += [(path.name, path.read_text()) for path in sorted(paper_dir.glob("*.py"))]
    found = {}
    for name, source in sources:
        for m in re.finditer(r'(?:"id":\s*|\bclaim\(\s*)f?"([^"]+)"', source):     # a dict or common.claims.claim
            parts = re.split(r"\{[^}]*\}", m.group(1))
            found[m.group(1)] = (re.compile("[A-Za-z0-9_]+".join(map(re.escape, parts))), name)
    return found


@pytest.mark.parametrize("paper", sorted(report.PAPERS))
def test_every_claim_of_every_notebook_has_a_kind(paper):
    paper_dir = report.ROOT / "papers" / paper
    kinds = report.read_claim_kinds(paper_dir)
    templates = _notebook_claim_ids(paper_dir)
    assert templates, f"no claims found in {paper}'s notebooks"
    for template, (rx, notebook) in templates.items():
        assert any(rx.fullmatch(k["id"].replace("*", "x")) for k in kinds), \
            f"{paper}/{notebook}: claim id {template!r} has no row in papers/{paper}/claims.csv"
    for k in kinds:
        assert any(rx.fullmatch(k["id"].replace("*", "x")) for rx, _ in templates.values()), \
            f"papers/{paper}/claims.csv: {k['id']!r} matches no claim of the notebooks"
        if k["kind"] == "built into the data":
            assert "synthetic." in k["parameter"] or "corpus." in k["parameter"], k


def test_the_named_generator_parameters_exist():
    """A claim 'built into the data' names a corpus.<key> of params.yaml or a synthetic.<name>.

    synthetic.<name> must resolve, from the package, to an object the generator defines (not a name it
    merely imports), and every number the claim quotes after the name ("pitch +0.4 octave") must
    appear in that function's source, so a moved or retuned generator cannot leave a stale claim."""
    import inspect
    import re
    from common.data import synthetic
    from common.params import load_params
    corpus = load_params(report.ROOT / "params.yaml")["corpus"]
    named = 0
    for paper in report.PAPERS:
        for k in report.read_claim_kinds(report.ROOT / "papers" / paper):
            parts = re.split(r"synthetic\.(\w+)", k["parameter"])    # [text, name, text after it, name, ...]
            for name, said in zip(parts[1::2], parts[2::2]):
                assert name in synthetic.__all__, (paper, k["id"], name)
                obj = getattr(synthetic, name)
                if inspect.isfunction(obj) or inspect.isclass(obj):
                    assert obj.__module__.startswith("common.data.synthetic."), (paper, k["id"], name)
                    source = inspect.getsource(obj)
                    for number in re.findall(r"\d+(?:\.\d+)?", said):
                        assert re.search(rf"(?<![\d.]){re.escape(number)}(?![\d.])", source), \
                            f"papers/{paper}/claims.csv {k['id']}: {number} is not in synthetic.{name}"
                named += 1
            for key in re.findall(r"corpus\.([\w.]+)", k["parameter"]):
                node = corpus
                for part in key.split("."):
                    assert part in node, (paper, k["id"], key)
                    node = node[part]
    assert named >= 3, "the claims name generator functions; the pattern above found too few"


def test_claims_csv_errors_name_the_line(tmp_path):
    (tmp_path / "claims.csv").write_text("id,kind,parameter,note,delta,delta_reason\na,finding,,,,\nb,obvious,,,,\n")
    with pytest.raises(ValueError, match=r"claims\.csv:3: kind 'obvious'"):
        report.read_claim_kinds(tmp_path)
    (tmp_path / "claims.csv").write_text("id,kind,parameter,note,delta,delta_reason\na,built into the data,,,,\n")
    with pytest.raises(ValueError,
                       match=r"claims\.csv:2: a claim built into the data must name the generator parameter"):
        report.read_claim_kinds(tmp_path)


def _claim(id_, a=(0.52, 0.55, 0.53), b=(0.40, 0.41, 0.42)):
    return {**claims.judge_claim(list(a), list(b), ">"), "id": id_, "text": f"claim {id_}"}


def test_built_in_absolute_and_configuration_claims_are_counted_apart(tmp_path):
    reports = tmp_path / "reports"
    (reports / "zhang2021").mkdir(parents=True)
    (reports / "jeong2022").mkdir(parents=True)
    (reports / "zhang2021" / "table1.json").write_text(json.dumps({
        "paper": "zhang2021", "title": "Table 1", "seconds": 3.0, "claims": [
            _claim("cv_beats_single_valence"), _claim("ec_vs_lc_arousal", (0.3, 0.31, 0.29)),
            _claim("mm_vs_um_arousal"), _claim("window_30_beats_6"), _claim("beats_baseline_valence"),
            _claim("made_up_claim")]}))
    (reports / "jeong2022" / "table1.json").write_text(json.dumps({
        "paper": "jeong2022", "title": "Table 1", "seconds": 1.0, "claims": [_claim("paper_profile_is_table1")]}))
    index = report.build(reports).read_text()
    page = (reports / "zhang2021" / "index.html").read_text()
    assert "built into the data (the pipeline: recovered)" in page
    assert "synthetic.synth_voice: pitch +0.4 octave" in page and "corpus.va_timescale_s" in page
    assert "not judgeable on this corpus" in page and "Not yet classified" in page
    assert ("Findings about the method: 2</b> (1 reproduced, 1 contradicted, 0 absent, 0 inconclusive; "
            "decided: 2 (100 %))") in page
    assert ("Counted apart: 2 built into the data, 1 published absolute number (not judgeable here), "
            "1 not yet classified") in page
    jeong = (reports / "jeong2022" / "index.html").read_text()
    assert "check passed" in jeong and "<td class=reproduced>" not in jeong
    # the index: findings by verdict, and the kinds counted apart, per paper and in total
    assert "Findings about the method: 2</b> (1 reproduced" in index
    assert "2 built into the data" in index and "1 configuration check" in index
    zhang_row = next(line for line in index.split("<tr>") if "Zhang" in line)
    cells = [c.split("<")[0] for c in zhang_row.split("<td class=num>")[1:]]
    assert cells[:8] == ["2", "1", "1", "0", "0", "2", "1", "0"], cells
    assert index.count("data:image/png;base64,") == 2          # verdict counts and stage times (no leaderboard)
    assert page.count("data:image/png;base64,") == 1           # the claims chart
    assert report.external_references(index) == [] and report.external_references(page) == []


def test_smoke_pages_say_they_check_the_plumbing_and_count_no_verdict(tmp_path):
    """The same claims counted under the default profile, and not under smoke."""
    def page_for(profile):
        reports = tmp_path / profile / "reports"
        (reports / "zhang2021").mkdir(parents=True)
        (reports / "zhang2021" / "table1.json").write_text(json.dumps({
            "paper": "zhang2021", "title": "Table 1", "seconds": 3.0, "profile": profile,
            "claims": [_claim("cv_beats_single_valence")]}))
        report.build(reports)
        return (reports / "zhang2021" / "index.html").read_text()
    smoke, default = page_for("smoke"), page_for("default")
    assert "checks the plumbing, not the papers" not in default and "Findings about the method: 1</b>" in default
    assert "check the plumbing, not the papers" in smoke and "Findings about the method:" not in smoke
    assert "MM beats" not in smoke and "cv_beats_single_valence" in smoke          # the claim is still shown


# ---- the notebooks' shared helpers -------------------------------------------------------------

def test_notebook_summary_keeps_the_field_order_and_claims_carry_their_ids(tmp_path, capsys):
    import time
    params = {"profile": "smoke", "data": {"source": "synthetic"}}
    rows = claims.result_rows("1", [("A", "Valence", [0.1, 0.3]), ("A", "Arousal", [0.5])], "validation")
    assert rows[0]["value"] == pytest.approx(0.2) and rows[1]["spread"] is None and rows[1]["n"] == 1
    c = claims.claim("x_beats_y", "1", "x beats y", [0.5, 0.6, 0.7], [0.1, 0.2, 0.2], explanation="why")
    assert c["verdict"] == "reproduced" and (c["id"], c["table"], c["explanation"]) == ("x_beats_y", "1", "why")
    claims.show_claims([c])
    assert "reproduced" in capsys.readouterr().out
    path = claims.write_notebook_summary(tmp_path, "zhang2021", "table9", "T", params, time.perf_counter(),
                                         results=rows, claims=[c], extra={"k": 1})
    data = json.loads(path.read_text())
    assert list(data) == ["paper", "notebook", "title", "profile", "data", "seconds", "results", "claims", "extra"]
    assert data["profile"] == "smoke" and data["data"] == "synthetic" and data["extra"] == {"k": 1}
