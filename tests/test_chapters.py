"""Each paper folder opens with its chapter, papers/<paper>/README.md.

The chapter's table maps the paper's equations and sections to `file.py:function`; these tests
keep it true: every name in it exists, every "Eq. N" the paper's code cites is in it, every
notebook of the folder is in its reading list.
"""
import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAPERS = {"zhang2021": "Zhang", "jeong2022": "Jeong", "vu2021": "Vu", "liu2023": "Liu"}
SECTIONS = ("## Where the paper lives in the code", "## The notebooks, in reading order",
            "## What differs from the paper")
CODE_REF = re.compile(r"`((?:common|papers)/[\w/]+)\.py:([\w.]+)`")
EQS = re.compile(r"Eqs?\.\s*(\d+(?:\s*(?:-|–|,|and)\s*\d+)*)")


def equation_numbers(text: str) -> set[int]:
    """The numbers of every "Eq. N", "Eqs. N-M" and "Eqs. N, M and K" in `text`."""
    found = set()
    for group in EQS.findall(text):
        for part in re.split(r"\s*(?:,|and)\s*", group):
            a, _, b = (x.strip() for x in re.sub(r"\s*[-–]\s*", "-", part).partition("-"))
            found.update(range(int(a), int(b or a) + 1))
    return found


def cited_in_code(paper: str) -> dict[int, list[str]]:
    """Eq. numbers cited by the paper's own modules, and by common/ where the surname comes first."""
    cited: dict[int, list[str]] = {}
    for path in sorted((ROOT / "papers" / paper).rglob("*.py")):
        for n in equation_numbers(path.read_text()):
            cited.setdefault(n, []).append(str(path.relative_to(ROOT)))
    surname = re.compile(rf"\b{PAPERS[paper]}(?:'s)?\s+(Eqs?\.\s*\d+(?:\s*(?:-|–|,)\s*\d+)*)")
    for path in sorted((ROOT / "common").rglob("*.py")):
        for cite in surname.findall(path.read_text()):
            for n in equation_numbers(cite):
                cited.setdefault(n, []).append(str(path.relative_to(ROOT)))
    return cited


def resolve(module_path: str, name: str):
    """The object `file.py:name` names (a dotted name walks attributes), or None."""
    obj = importlib.import_module(module_path.replace("/", "."))
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def chapter(paper: str) -> str:
    return (ROOT / "papers" / paper / "README.md").read_text()


def test_equation_numbers_reads_ranges_and_lists():
    assert equation_numbers("Eq. 1 and Eqs. 3-4, (Eqs. 2, 4, 6, 7); Eqs. 8–10 and Eq. 12, task i") == \
        {1, 2, 3, 4, 6, 7, 8, 9, 10, 12}


@pytest.mark.parametrize("paper", PAPERS)
def test_chapter_has_the_issue_sections(paper):
    text = chapter(paper)
    assert text.startswith("# ") and "**The question.**" in text and "**The method in five sentences.**" in text
    positions = [text.find(s) for s in SECTIONS]
    assert all(p > 0 for p in positions) and positions == sorted(positions), positions
    assert len(text.splitlines()) <= 70, "a chapter is one screen"
    assert f"reports/{paper}/index.html" in text, "link the report's 'what differs' table"


@pytest.mark.parametrize("paper", PAPERS)
def test_every_function_named_in_the_chapter_exists(paper):
    refs = CODE_REF.findall(chapter(paper))
    assert len(refs) >= 10, refs
    missing = [f"{m}.py:{name}" for m, name in refs if resolve(m, name) is None]
    assert not missing, f"{paper}/README.md names what does not exist: {missing}"


@pytest.mark.parametrize("paper", PAPERS)
def test_every_equation_the_code_cites_is_in_the_chapter_table(paper):
    text = chapter(paper)
    table = text[text.index(SECTIONS[0]):text.index(SECTIONS[1])]
    in_table = equation_numbers(table)
    cited = cited_in_code(paper)
    assert cited, paper
    missing = {n: files for n, files in cited.items() if n not in in_table}
    assert not missing, f"{paper}/README.md's table lacks equations its code cites: {missing}"
    rows = [line for line in table.splitlines() if line.startswith("|") and EQS.search(line)]
    assert all(CODE_REF.search(line) for line in rows), "every equation row names file:function"


@pytest.mark.parametrize("paper", PAPERS)
def test_each_equation_row_names_code_that_cites_that_equation(paper):
    """A row "Eq. N | file:function" is right when that function's source (docstring or comments) cites Eq. N."""
    text = chapter(paper)
    table = text[text.index(SECTIONS[0]):text.index(SECTIONS[1])]
    wrong = []
    for line in table.splitlines():
        paper_cell = line.split("|")[1] if line.startswith("|") else ""
        wanted = equation_numbers(paper_cell)
        if not wanted:
            continue
        sources = [inspect.getsource(obj) for obj in (resolve(*ref) for ref in CODE_REF.findall(line))
                   if inspect.isfunction(obj) or inspect.isclass(obj)]
        found = equation_numbers("\n".join(sources))
        if not wanted <= found:
            wrong.append(f"{paper_cell.strip()}: the code named cites Eqs. {sorted(found)}")
    assert not wrong, wrong


@pytest.mark.parametrize("paper", PAPERS)
def test_the_reading_list_names_every_notebook(paper):
    text = chapter(paper)
    listed = re.findall(r"\[`(\w+)\.ipynb`\]", text[text.index(SECTIONS[1]):text.index(SECTIONS[2])])
    on_disk = sorted(p.stem for p in (ROOT / "papers" / paper).glob("*.ipynb"))
    assert sorted(listed) == on_disk


def test_the_readme_is_a_front_door_in_the_issue_order():
    text = (ROOT / "README.md").read_text()
    headings = [h.lower() for h in re.findall(r"^## (.+)$", text, re.M)]
    order = ["the two commands", "smoke run", "how to read a report", "the papers", "real data",
             "gpu and multi-gpu", "the layout"]
    at = [next(i for i, h in enumerate(headings) if key in h) for key in order]
    assert at == sorted(at), headings
    for paper in PAPERS:
        assert f"](papers/{paper}/README.md)" in text


@pytest.mark.parametrize("page", ["README.md", "docs/benchmarks.md", "docs/weights.md", "docs/paper_scale.md",
                                  *[f"papers/{p}/README.md" for p in PAPERS]])
def test_relative_links_resolve(page):
    path = ROOT / page
    for target in re.findall(r"\]\(([^)#:]+)\)", path.read_text()):
        assert (path.parent / target).exists(), f"{page} links {target}, which does not exist"
