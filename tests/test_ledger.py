"""The four fidelity ledgers (papers/<paper>/ledger.yaml, common/ledger.py): every row well formed
and cited at a commit line, every named function, params key and test real, and no text in the
repository claiming the official code's behaviour for a detail without naming its ledger row."""
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from common import ledger

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ("zhang2021", "jeong2022", "vu2021", "liu2023")
# The authors' repositories at the commits this project was read against (docs/sources.md).
OFFICIAL = {"zhang2021": "sucv/ABAW2@71d40fb", "jeong2022": "EuiseokJeong/2022_ABAW_imlab@bb0513c",
            "vu2021": "glmanhtu/multitask-abaw-2021@aa346d5", "liu2023": "situAI/ABAW2023_VA-EXPR_Situ-RUCAIM3@574c2e6"}
CLAIM = re.compile(r"(as|like) (in )?the (official|released|authors'?) code|official code's|"
                   r"the (official|released|authors'?) code (does|did|uses|computes)|as the authors' code", re.I)
TAG = re.compile(r"\(ledger: ([\w, ]+)\)")


@pytest.fixture(scope="module")
def params():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("paper", PAPERS)
def test_every_row_is_well_formed_and_cites_a_commit_line(paper):
    rows = ledger.read_ledger(paper)
    assert rows, f"{paper}: an empty ledger"
    assert not (ROOT / "papers" / paper / "differences.yaml").exists(), "one way, not two: the ledger replaces it"
    repo, commit = OFFICIAL[paper].split("@")
    for row in rows:
        for cite in ledger.citations(row["released_at"]):
            if cite.startswith(repo + "@"):
                assert cite.split("@")[1].startswith(commit), f"{paper}/{row['id']}: {cite} is not at {commit}"
    assert any(row["kind"] == "method" for row in rows) and any(row["id"] == "method_default" for row in rows)


@pytest.mark.parametrize("paper", PAPERS)
def test_named_code_keys_and_tests_exist(paper, params):
    for row in ledger.read_ledger(paper):
        where = f"{paper}/{row['id']}"
        path, _, symbol = row["code"].partition(":")
        source = (ROOT / path).read_text() if (ROOT / path).is_file() else None
        assert source is not None, f"{where}: code {row['code']}: no file {path}"
        for name in [n for n in re.split(r"[.,\s]+", symbol) if n][:1]:
            assert re.search(rf"^\s*(def|class) {name}\b|^\s*{name}\s*[:=]", source, re.M), \
                f"{where}: {path} defines no {name}"
        if row["key"]:
            node = params
            for part in row["key"].split("."):
                assert isinstance(node, dict) and part in node, f"{where}: params.yaml has no {row['key']}"
                node = node[part]
        if row["test"]:
            file, _, name = row["test"].partition("::")
            assert (ROOT / file).is_file(), f"{where}: no test file {file}"
            assert re.search(rf"^def {name.split('[')[0]}\b", (ROOT / file).read_text(), re.M), \
                f"{where}: {file} has no {name}"


def tracked_text():
    files = subprocess.run(["git", "ls-files", "papers", "common", "README.md", "docs"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if f.endswith((".py", ".md", ".ipynb", ".yaml", ".csv")) and (ROOT / f).is_file():
            yield f, (ROOT / f).read_text().splitlines()


def test_claims_of_official_behaviour_name_their_ledger_row():
    """A sentence that says "as the official code" names its row: `(ledger: <id>)` on the same or
    the next line; where the row says `method: paper` departs from the code, the sentence must
    be about the released method (it says "released")."""
    rows = {r["id"]: r for paper in PAPERS for r in ledger.read_ledger(paper)}
    bad = []
    for f, lines in tracked_text():
        if f.endswith("ledger.yaml"):
            continue                                   # the ledger itself states both sides
        for i, line in enumerate(lines):
            if not CLAIM.search(line):
                continue
            tags = TAG.findall(" ".join(lines[i:i + 2]))
            ids = [t.strip() for tag in tags for t in tag.split(",") if t.strip()]
            if not ids:
                bad.append(f"{f}:{i + 1}: claims official behaviour without (ledger: <id>)")
            for rid in ids:
                if rid not in rows:
                    bad.append(f"{f}:{i + 1}: (ledger: {rid}) names no row")
                elif rows[rid]["follows"] in ("paper", "neither") and "released" not in line.lower():
                    bad.append(f"{f}:{i + 1}: row {rid} says this project differs from the code under method: paper")
    assert not bad, "\n".join(bad)


def test_a_malformed_row_is_named():
    row = {"id": "x", "kind": "method", "group": "g", "item": "i", "paper": "p", "released": "r",
           "released_at": "owner/repo:file.py:3", "here": "h", "key": "", "code": "c.py:f", "follows": "paper",
           "released_method": "released", "why": "w", "changes_results": True, "size": "", "test": ""}
    problems = ledger.check_row(row, "here")
    assert any("released_at" in p for p in problems) and any("needs the test" in p for p in problems)
    assert not ledger.check_row({**row, "released_at": "owner/repo@abcdef1:file.py:3", "test": "t.py::t"}, "here")


def test_placeholders_and_conditions_fill_the_rows():
    """{params.a.b} and {name} placeholders, `when` conditions, and every row's condition parses."""
    ctx = {"params": {"a": {"n": 3, "mode": "code"}}, "flag": False, "label": "x"}
    assert ledger.fill("n={params.a.n}, {label}; {1, 2} kept", ctx) == "n=3, x; {1, 2} kept"
    assert ledger.holds("params.a.n > 1", ctx) and ledger.holds("not flag", ctx)
    assert ledger.holds("params.a.mode == code", ctx) and not ledger.holds("params.a.mode != code", ctx)
    assert ledger.holds(None, ctx) and not ledger.holds("flag", ctx)
    with pytest.raises(ValueError, match="is not 'name'"):
        ledger.holds("a b c", ctx)
    for paper in PAPERS:
        for row in ledger.read_ledger(paper):
            if row.get("when"):
                assert ledger._CONDITION.match(row["when"]), (paper, row["id"])
    with pytest.raises(ledger.LedgerError, match="no rows in group"):
        ledger.differences("vu2021", "no such group")
