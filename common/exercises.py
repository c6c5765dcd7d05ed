"""Exercises for coursework: each paper's last notebook ends with 2-3 of them.

An exercise is four cells:
1. a markdown cell: the question, the profile it needs (`Needs the default profile`: the smoke
   profile's networks barely train, so there it checks the mechanics only), and a line for the
   student's prediction, written before running anything;
2. a code cell tagged `exercise`, kept in the student's copy: it sets the changed parameter, trains
   what the change touches (small runs, one seed, in folders of their own) and compares with the
   notebook's own run through `compare`, which prints "Result (<name>)" and writes
   `<out_dir>/exercises/<name>/answer.json`;
3. the instructor's written answer (markdown, tagged `solution`): the mechanism;
4. the instructor's check (code, tagged `solution`): `check` prints the answer's expectation
   against the run's numbers, metric by metric ("Answer (<name>)"), so the written answer can
   never silently contradict what the run measured.

`python -m common.exercises OUT_DIR [NOTEBOOK ...]` writes the students' copies: every paper
notebook (or the ones named) without its `solution` cells, to OUT_DIR/<paper>/<notebook>.ipynb.
The notebook's own summary JSON never depends on an exercise.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from common.files import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
SOLUTION_TAG = "solution"
EXERCISE_TAG = "exercise"
# A change smaller than this (in CCC / F1 / P units) is "no change" for one seed on these corpora.
NO_CHANGE = 0.01


def is_solution(cell) -> bool:
    return SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def strip_solutions(nb):
    """A copy of the notebook `nb` (nbformat) without the cells tagged `solution`."""
    import copy
    out = copy.deepcopy(nb)
    out.cells = [c for c in nb.cells if not is_solution(c)]
    return out


def compare(out_dir, name: str, change: str, before: dict, after: dict, metrics=None) -> dict:
    """Compare a run with `change` (after) to the notebook's own run (before), metric by metric (the
    `metrics` named, or every key of `before`); print one line per metric and write
    <out_dir>/exercises/<name>/answer.json."""
    rows = {m: {"before": float(before[m]), "after": float(after[m]), "change": float(after[m]) - float(before[m])}
            for m in (metrics or before)}
    print(f"Result ({name}): {change}")
    for m, r in rows.items():
        print(f"{m:<16} {r['before']:+.3f} -> {r['after']:+.3f}  ({r['change']:+.3f})")
    result = {"exercise": name, "change": change, "metrics": rows,
              "finite": all(math.isfinite(v) for r in rows.values() for v in r.values())}
    atomic_write_json(Path(out_dir) / "exercises" / name / "answer.json", result)
    return result


def moved(change: float, tolerance: float = NO_CHANGE) -> str:
    """'up', 'down' or 'same' (|change| < tolerance)."""
    return "same" if abs(change) < tolerance else ("up" if change > 0 else "down")


WORDS = {"up": "rose", "down": "fell", "same": "did not move"}
EXPECTED = {"up": "a rise", "down": "a fall", "same": "no change"}


def check(result: dict, expect: dict, needs: str, profile: str, tolerance: float = NO_CHANGE) -> list[str]:
    """The instructor's answer against the run: for each metric of `expect` ({metric: 'up', 'down',
    'same', or alternatives joined by '|', e.g. 'down|same'}), what the run did and whether it agrees.
    Prints and returns the lines ("Answer (<name>)" first). Under a profile other than `needs` the numbers
    check the mechanics only, and it says so."""
    lines = [f"Answer ({result['exercise']}): {result['change']}"]
    if profile != needs:
        lines.append(f"(this ran under the {profile} profile; the exercise needs the {needs} profile, so these "
                     f"numbers check the mechanics, not the answer)")
    for metric, expected in expect.items():
        r = result["metrics"][metric]
        did = moved(r["change"], tolerance)
        allowed = expected.split("|")
        verdict = ("as the answer expects" if did in allowed
                   else f"but the answer expects {' or '.join(EXPECTED[a] for a in allowed)}: this run disagrees")
        lines.append(f"{metric}: {WORDS[did]} ({r['before']:+.3f} -> {r['after']:+.3f}, {r['change']:+.3f}), {verdict}")
    print("\n".join(lines))
    return lines


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
