"""What the exercises of an executed notebook printed, and a student's copy run as the pipeline runs it."""
from pathlib import Path

import nbformat

from common.exercises import EXERCISE_TAG, is_solution, main as write_student_copies
from common.notebooks import run_notebook

ROOT = Path(__file__).resolve().parents[2]


def _tagged(cell, tag) -> bool:
    return tag in cell.get("metadata", {}).get("tags", [])


def _errors(executed: Path, nb, tag) -> None:
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and _tagged(cell, tag):
            errors = [o for o in cell.outputs if o.output_type == "error"]
            assert not errors, f"{executed.name}, cell {i}: {errors[0].ename}: {errors[0].evalue}"


def exercise_answers(executed: Path) -> list[str]:
    """The text each executed code cell tagged `solution` printed, in order; fails on an exercise or
    answer cell that raised, or an answer that printed no "Answer" or a NaN."""
    nb = nbformat.read(executed, 4)
    _errors(executed, nb, EXERCISE_TAG)
    answers = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not is_solution(cell):
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"{executed.name}, cell {i}: {errors[0].ename}: {errors[0].evalue}"
        text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        assert "Answer" in text and "nan" not in text, f"{executed.name}, cell {i} printed: {text!r}"
        answers.append(text)
    return answers


def run_student_copy(paper: str, notebook: str, parameters: dict, tmp: Path) -> list[str]:
    """Write the student's copy of papers/<paper>/<notebook>.ipynb (python -m common.exercises),
    execute it with `parameters` (point out_dir at the instructor's run to reuse its runs), and
    return what each kept exercise cell printed; fails if a cell raised or a result is missing."""
    assert write_student_copies([str(tmp / "student"), str(ROOT / "papers" / paper / f"{notebook}.ipynb")]) == 0
    copy = tmp / "student" / paper / f"{notebook}.ipynb"
    assert not [c for c in nbformat.read(copy, 4).cells if is_solution(c)]
    executed = run_notebook(paper, notebook, parameters, tmp / "student-executed", source=copy)
    nb = nbformat.read(executed, 4)
    _errors(executed, nb, EXERCISE_TAG)
    printed = ["".join(o.get("text", "") for o in c.outputs if o.output_type == "stream")
               for c in nb.cells if c.cell_type == "code" and _tagged(c, EXERCISE_TAG)]
    assert printed and all("Result (" in t and "nan" not in t for t in printed), printed
    return printed
