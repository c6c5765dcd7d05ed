"""The four verdicts (common/claims.py), the deltas every claim declares (papers/*/claims.csv),
and how the report shows them."""
import csv
import json
import re

import pytest

from common import claims, report
from common.claims import VERDICTS, judge_claim
from common.params import load_params

JUDGED_KINDS = ("finding", "built into the data", "configuration check")


def test_four_verdicts_from_the_interval_and_delta():
    up = judge_claim([0.30, 0.32, 0.31, 0.29], None, ">", delta=0.1)          # well beyond delta
    assert up["verdict"] == "reproduced" and not up["negligible"]
    down = judge_claim([-0.30, -0.32, -0.31, -0.29], None, ">", delta=0.1)
    assert down["verdict"] == "contradicted"
    nothing = judge_claim([0.01, -0.02, 0.00, 0.015], None, ">", delta=0.1)   # inside +-0.1
    assert nothing["verdict"] == "absent" and not nothing["negligible"] and nothing["low"] < 0 < nothing["high"]
    small = judge_claim([0.051, 0.049, 0.050, 0.052], None, ">", delta=0.1)   # real, but under delta
    assert small["verdict"] == "absent" and small["negligible"] and small["low"] > 0
    wide = judge_claim([0.5, -0.4, 0.3, -0.2], None, ">", delta=0.1)
    assert wide["verdict"] == "inconclusive"
    assert judge_claim([0.01, -0.02, 0.00, 0.015], None, ">")["verdict"] == "inconclusive"   # no delta: no absent
    mirrored = judge_claim([-0.30, -0.32, -0.31, -0.29], None, "<", delta=0.1)
    assert mirrored["verdict"] == "reproduced"
    assert judge_claim([0.01, -0.02, 0.00, 0.015], None, "<", delta=0.1)["verdict"] == "absent"


def test_about_the_same_claims_take_delta_as_their_tolerance():
    same = judge_claim([0.500, 0.502, 0.499], [0.501, 0.500, 0.500], "~", delta=0.02)
    assert same["verdict"] == "reproduced" and same["tolerance"] == same["delta"] == 0.02
    assert judge_claim([0.6, 0.61, 0.62], [0.5, 0.5, 0.51], "~", tolerance=0.02)["delta"] == 0.02
    with pytest.raises(ValueError, match="tolerance is its delta"):
        judge_claim([0.5, 0.6], [0.5, 0.6], "~", tolerance=0.02, delta=0.05)


def test_a_claim_that_includes_zero_is_never_absent():
    """'At least as good, within 0.01' (a threshold below zero): a zero effect is what it claims."""
    c = judge_claim([0.001, -0.002, 0.0, 0.001], None, ">", margin=-0.01, delta=0.01)
    assert c["verdict"] == "reproduced" and not c["negligible"]


def test_rejudge_follows_the_declared_delta():
    c = {**judge_claim([0.051, 0.049, 0.050, 0.052], None, ">"), "id": "x", "kind": "finding"}
    assert c["verdict"] == "reproduced"
    assert claims.rejudge(c, 0.1)["verdict"] == "absent"
    assert claims.rejudge(c, 0.01)["verdict"] == "reproduced"
    check = {**c, "kind": "configuration check", "verdict": "contradicted"}
    assert claims.rejudge(check, 0.1)["verdict"] == "contradicted"    # a check sets its own verdict


def _claims_rows(paper_dir):
    with open(paper_dir / "claims.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("paper", list(report.PAPERS))
def test_every_judged_claim_declares_its_delta_from_the_paper(paper):
    rows = _claims_rows(report.ROOT / "papers" / paper)
    assert rows
    for row in rows:
        if row["kind"] not in JUDGED_KINDS:
            continue
        assert row["delta"].strip(), f"papers/{paper}/claims.csv: {row['id']} has no delta"
        assert float(row["delta"]) > 0, f"papers/{paper}/claims.csv: {row['id']} delta must be > 0"
        reason = row["delta_reason"]
        # the reason names where the number comes from: a table / section / equation, a tolerance, or the resolution
        assert re.search(r"Table|Sec\.|Eq\.|tolerance|resolution", reason), (paper, row["id"], reason)


def test_notebook_claims_take_the_declared_delta():
    c = claims.claim("ec_vs_lc_valence", "2", "same", [0.46, 0.462, 0.461], [0.461, 0.462, 0.46], direction="~",
                     tolerance=0.01)
    assert c["delta"] == 0.01 and c["verdict"] == "reproduced"
    assert claims.declared_delta("no_such_claim") is None
    assert claims.declared_delta("window_300_beats_36") == 0.01          # a pattern row (window_*_beats_*)


def test_the_report_shows_delta_power_and_the_verdict_legend(tmp_path):
    reports = tmp_path / "reports"
    (reports / "vu2021").mkdir(parents=True)
    claims = [{**judge_claim([0.05, 0.15, 0.0, 0.2], [0.0, 0.0, 0.0, 0.0], ">"), "id": "t123_vs_t12_expr", "text": "E"},
              {**judge_claim([0.001, -0.002, 0.0, 0.001], None, ">"), "id": "sharing_expr", "text": "S"}]
    (reports / "vu2021" / "table1.json").write_text(json.dumps({"paper": "vu2021", "title": "T1", "claims": claims}))
    (reports / "controls.json").write_text(json.dumps({"claims": [
        {"claim": "sharing_expr", "paper": "vu2021", "link": "voice follows arousal", "verdict": "absent",
         "negligible": False, "effect": 0.0, "low": -0.01, "high": 0.01, "n": 4, "delta": 0.012,
         "intact": {"verdict": "reproduced", "effect": 0.09, "low": 0.05, "high": 0.13}}]}))
    index = report.build(reports).read_text()
    page = (reports / "vu2021" / "index.html").read_text()
    assert "<td class=num title=\"Table 1: EXPR criterion 0.513" in page and ">0.0150<" in page
    assert "<td class=absent>absent</td>" in page                       # sharing_expr: inside +-0.012
    assert "<td class=inconclusive>inconclusive</td>" in page
    budget = len(load_params(report.ROOT / "params.yaml")["vu2021"]["seeds"])     # the runs budget: Vu's seeds
    assert re.search(rf"4 / \d+<br><span class=muted>budget {budget}: \d+ seeds would decide", page)
    assert "voice follows arousal cut" in page
    assert "Negative controls: can the harness say no?" in index and "sharing_expr" in index
    for v in VERDICTS:
        assert f"<li><span class={v}>{v}</span>: " in page and f"<li><span class={v}>{v}</span>: " in index
    assert "decided: 1 (50 %)" in page and "Runs: what the budget decides" in index


def test_no_verdict_is_called_not_reproduced():
    """The three-verdict name is gone from the code, notebooks and docs that state verdicts."""
    roots = [report.ROOT / d for d in ("papers", "common", "tests")] + [report.ROOT / "README.md"]
    hits = []
    for root in roots:
        files = [root] if root.is_file() else [p for p in root.rglob("*")
                                               if p.suffix in (".py", ".ipynb", ".md", ".csv")]
        for path in files:
            if path.name == "test_verdicts.py":
                continue
            for i, line in enumerate(path.read_text(errors="ignore").splitlines(), 1):
                if re.search(r"[\"'*]not reproduced[\"'*]", line):
                    hits.append(f"{path.relative_to(report.ROOT)}:{i}")
    assert not hits, hits
