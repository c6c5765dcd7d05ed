"""Notebooks read as chapters.

The measure of "prose at least equal to code": the non-whitespace characters of a notebook's
markdown cells against those of its code cells (every code cell: the parameters cell, comments
and the exercises' answers count as code). A code cell holds at most MAX_CODE_LINES non-blank
lines, and a markdown cell comes before every code cell, saying what it reproduces and why.
Notebooks are committed without outputs (tests/test_repository.py checks that). Each paper's last
notebook ends with 2-3 exercises whose answers are cells tagged `solution`, which
`python -m common.exercises` removes.
"""
import re
from pathlib import Path

import nbformat
import pytest

from common.exercises import SOLUTION_TAG, main, strip_solutions

ROOT = Path(__file__).resolve().parents[1]
MAX_CODE_LINES = 15
NOTEBOOKS = sorted(ROOT.glob("papers/*/*.ipynb"))
# Liu's notebooks are being rewritten as chapters by another change; until then they are
# expected to fail the style checks (strict=False: they pass as soon as they are rewritten).
PENDING: set = set()
# each chapter's last notebook, with the exercises
LAST = {"zhang2021": "window", "jeong2022": "table4", "vu2021": "table4", "liu2023": "submissions"}


def _param(path: Path):
    marks = [pytest.mark.xfail(reason="notebook not yet rewritten as a chapter", strict=False)] \
        if path.parent.name in PENDING else []
    return pytest.param(path, id=f"{path.parent.name}/{path.stem}", marks=marks)


def prose_and_code(nb) -> tuple[int, int]:
    """(markdown characters, code characters), whitespace not counted."""
    def count(kind):
        return sum(len(re.sub(r"\s", "", c.source)) for c in nb.cells if c.cell_type == kind)
    return count("markdown"), count("code")


def code_lines(cell) -> int:
    return sum(1 for line in cell.source.splitlines() if line.strip())


def tags(cell) -> list:
    return cell.get("metadata", {}).get("tags", [])


@pytest.mark.parametrize("path", [_param(p) for p in NOTEBOOKS])
def test_prose_at_least_equals_code(path):
    prose, code = prose_and_code(nbformat.read(path, 4))
    assert prose >= code, f"{path.name}: {prose} characters of prose, {code} of code"


@pytest.mark.parametrize("path", [_param(p) for p in NOTEBOOKS])
def test_code_cells_are_short_and_each_follows_prose(path):
    nb = nbformat.read(path, 4)
    long = [(i, code_lines(c)) for i, c in enumerate(nb.cells) if c.cell_type == "code"
            and code_lines(c) > MAX_CODE_LINES]
    assert not long, f"{path.name}: code cells over {MAX_CODE_LINES} lines (cell, lines): {long}"
    bare = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "parameters" not in tags(c)
            and (i == 0 or nb.cells[i - 1].cell_type != "markdown")]
    assert not bare, f"{path.name}: code cells with no markdown cell before them: {bare}"


def test_each_chapter_names_its_last_notebook_and_it_holds_two_or_three_exercises():
    for paper, notebook in LAST.items():
        chapter = (ROOT / "papers" / paper / "README.md").read_text()
        reading = re.findall(r"^\d+\. \[`(\w+)\.ipynb`\]", chapter, re.M)
        assert reading[-1] == notebook, (paper, reading)
        nb = nbformat.read(ROOT / "papers" / paper / f"{notebook}.ipynb", 4)
        answers = [c for c in nb.cells if c.cell_type == "code" and SOLUTION_TAG in tags(c)]
        assert 2 <= len(answers) <= 3, (paper, len(answers))
        first = next(i for i, c in enumerate(nb.cells) if SOLUTION_TAG in tags(c))
        # after the summary
        assert all(c.cell_type == "markdown" or "summary" not in c.source for c in nb.cells[first:])


@pytest.mark.parametrize("paper", sorted(LAST))
def test_strip_solutions_removes_exactly_the_tagged_cells(paper, tmp_path):
    src = ROOT / "papers" / paper / f"{LAST[paper]}.ipynb"
    before = nbformat.read(src, 4)
    tagged = [c for c in before.cells if SOLUTION_TAG in tags(c)]
    after = strip_solutions(before)
    assert tagged and len(after.cells) == len(before.cells) - len(tagged)
    assert [c.source for c in after.cells] == [c.source for c in before.cells if SOLUTION_TAG not in tags(c)]
    assert main([str(tmp_path), str(src)]) == 0                 # the command line writes the same copy
    assert [c.source for c in nbformat.read(tmp_path / paper / src.name, 4).cells] == [c.source for c in after.cells]
    assert nbformat.read(src, 4) == before                      # the instructor's notebook is untouched
