"""Exercises for coursework (issue 15 item 4): each paper's last notebook ends with 2-3 of them.

An exercise is a markdown cell: one parameter change and a question (predict, run, compare). Its
instructor's answer is the code cell (and the markdown explanation) right after it, tagged
`solution`: the answer cell runs the changed parameter on a small run, one seed, and compares it
with the notebook's own run of the same seed through `answer`, which prints the comparison and
writes it to `<out_dir>/exercises/<name>/answer.json` (the tests read it). The notebook's own
summary JSON never depends on an exercise.

`python -m common.exercises OUT_DIR [NOTEBOOK ...]` writes the students' copies: every paper
notebook (or the ones named) without its `solution` cells, to OUT_DIR/<paper>/<notebook>.ipynb.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from common.files import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
SOLUTION_TAG = "solution"


def is_solution(cell) -> bool:
    return SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def strip_solutions(nb):
    """A copy of the notebook `nb` (nbformat) without the cells tagged `solution`."""
    import copy
    out = copy.deepcopy(nb)
    out.cells = [c for c in nb.cells if not is_solution(c)]
    return out


def answer(out_dir, name: str, change: str, before: dict, after: dict, metrics=None) -> dict:
    """Compare a run with `change` (after) to the notebook's own run (before), metric by metric (the
    `metrics` named, or every key of `before`); print one line per metric and write
    <out_dir>/exercises/<name>/answer.json."""
    rows = {m: {"before": float(before[m]), "after": float(after[m]), "change": float(after[m]) - float(before[m])}
            for m in (metrics or before)}
    print(f"Answer ({name}): {change}")
    for m, r in rows.items():
        print(f"{m:<16} {r['before']:+.3f} -> {r['after']:+.3f}  ({r['change']:+.3f})")
    result = {"exercise": name, "change": change, "metrics": rows,
              "finite": all(math.isfinite(v) for r in rows.values() for v in r.values())}
    atomic_write_json(Path(out_dir) / "exercises" / name / "answer.json", result)
    return result


def main(argv=None) -> int:
    import nbformat
    ap = argparse.ArgumentParser(description="write the notebooks without their `solution` cells")
    ap.add_argument("out_dir")
    ap.add_argument("notebooks", nargs="*", help="papers/<paper>/<notebook>.ipynb (default: every paper notebook)")
    args = ap.parse_args(argv)
    paths = [Path(p) for p in args.notebooks] or sorted((ROOT / "papers").glob("*/*.ipynb"))
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        dest = Path(args.out_dir) / path.parent.name / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        stripped = strip_solutions(nb)
        nbformat.write(stripped, dest)
        print(f"{dest}: {len(nb.cells) - len(stripped.cells)} solution cell(s) left out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
