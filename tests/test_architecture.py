"""One room per concern: the import graph of common/ and papers/ has no circle and common/ never
imports a paper; no module outgrows a sitting's reading; the four paper folders hold the same
files for the same jobs; and nothing tracked cites a path outside the repository or an issue
number that a reader of a fresh clone cannot follow."""
import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ("zhang2021", "jeong2022", "vu2021", "liu2023")
MAX_LINES = {"common": 600, "common/metrics.py": 450}
PAPER_FILES = {"__init__.py", "README.md", "model.py", "data.py", "train.py", "experiment.py", "ledger.yaml",
               "claims.csv", "published.csv"}


def modules() -> dict[str, Path]:
    found = {}
    for top in ("common", "papers"):
        for f in (ROOT / top).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = f
    return found


def imports(name: str, path: Path, known: dict) -> set[str]:
    """The project modules `name` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):
                out.add(t)
    return out


def cycles(graph: dict[str, set]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_and_common_never_imports_a_paper():
    known = modules()
    graph = {m: imports(m, f, known) for m, f in known.items()}
    assert not cycles(graph), f"import circles: {cycles(graph)}"
    upward = sorted(f"{m} -> {t}" for m, ts in graph.items() if m.startswith("common") for t in ts
                    if t.startswith("papers"))
    assert not upward, f"common/ imports a paper: {upward}"


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_outgrows_a_sitting():
    too_long = []
    for f in sorted((ROOT / "common").rglob("*.py")):
        rel = f.relative_to(ROOT).as_posix()
        limit = MAX_LINES.get(rel, MAX_LINES["common"])
        n = len(f.read_text().splitlines())
        if n > limit:
            too_long.append(f"{rel}: {n} lines (at most {limit})")
    assert not too_long, "\n".join(too_long)


@pytest.mark.parametrize("paper", PAPERS)
def test_every_paper_folder_has_the_same_files_for_the_same_jobs(paper):
    have = {p.name for p in (ROOT / "papers" / paper).iterdir() if p.is_file()}
    assert PAPER_FILES <= have, f"papers/{paper} lacks {sorted(PAPER_FILES - have)}"


def test_no_tracked_file_cites_outside_the_repository_or_an_issue():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    outside = re.compile(r"\.\./shared|REFERENCE_FACTS|DEVELOPERS\.md|/work/")
    issue = re.compile(r"\bissues? \d+\b|\(#\d+\)", re.I)
    bad = []
    for f in files:
        path = ROOT / f
        if f.startswith("tests/test_architecture.py") or not path.is_file() or path.suffix in {".npz", ".npy", ".png"}:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if outside.search(line) or issue.search(line):
                bad.append(f"{f}:{i}: {line.strip()[:100]}")
    assert not bad, f"{len(bad)} line(s) cite what a fresh clone lacks:\n" + "\n".join(bad[:40])
