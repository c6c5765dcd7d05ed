"""Exercises a student can do (common/exercises.py): each exercise of each paper's last notebook keeps
a runnable cell in the student's copy, states the profile it needs and leaves room for a prediction;
the instructor's check words the answer from the run's numbers. The student copies are executed in
the papers' smoke tests (tests/helpers/notebooks.run_student_copy)."""
import re
from pathlib import Path

import nbformat
import pytest

from common import exercises

ROOT = Path(__file__).resolve().parents[1]
LAST = {"zhang2021": "window", "jeong2022": "table4", "vu2021": "table4", "liu2023": "submissions"}


def tags(cell) -> list:
    return cell.get("metadata", {}).get("tags", [])


@pytest.mark.parametrize("paper", sorted(LAST))
def test_each_exercise_keeps_a_runnable_cell_a_profile_and_a_prediction(paper):
    nb = nbformat.read(ROOT / "papers" / paper / f"{LAST[paper]}.ipynb", 4)
    kept = exercises.strip_solutions(nb).cells
    runs = [i for i, c in enumerate(kept) if exercises.EXERCISE_TAG in tags(c)]
    checks = [c for c in nb.cells if c.cell_type == "code" and exercises.is_solution(c)]
    assert 2 <= len(runs) == len(checks) <= 3, (paper, len(runs), len(checks))
    for i in runs:
        cell, before = kept[i], "\n".join(c.source for c in kept[max(0, i - 2):i])
        assert cell.cell_type == "code" and "exercises.compare(" in cell.source, (paper, i)
        assert "your parameter" in cell.source, (paper, i)                    # the line a student changes
        assert "**Your prediction**" in kept[i - 1].source, (paper, i)      # a place to write it down first
        # a bold line names the profile: the exercise's own, or the exercises' introduction for all of them
        said = [m for m in re.findall(r"\*\*([^*]+)\*\*", before) if "profile" in m]
        introduction = "\n".join(c.source for c in kept[:i])
        assert said or "**Every exercise needs the default profile.**" in introduction, (paper, i)
    for c in checks:
        assert "exercises.check(" in c.source and "needs=" in c.source, (paper, c.source)
    text = "\n".join(c.source for c in nb.cells)
    assert "<folder>" not in text, paper


def test_check_words_the_answer_from_the_numbers(capsys):
    result = {"exercise": "x", "change": "a -> b", "metrics": {
        "fell": {"before": 0.40, "after": 0.27, "change": -0.13},
        "flat": {"before": 0.30, "after": 0.301, "change": 0.001},
        "rose": {"before": 0.10, "after": 0.15, "change": 0.05}}}
    lines = exercises.check(result, {"fell": "down", "flat": "down|same", "rose": "down"}, needs="default",
                            profile="default")
    assert lines[0] == "Answer (x): a -> b" and capsys.readouterr().out.splitlines() == lines
    assert lines[1] == "fell: fell (+0.400 -> +0.270, -0.130), as the answer expects"
    assert lines[2].startswith("flat: did not move (") and lines[2].endswith("as the answer expects")
    assert lines[3].startswith("rose: rose (") and "the answer expects a fall: this run disagrees" in lines[3]
    smoke = exercises.check(result, {"fell": "down"}, needs="default", profile="smoke")
    assert "needs the default profile" in smoke[1] and "mechanics" in smoke[1]
