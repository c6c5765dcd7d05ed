"""What the exercises' answer cells of an executed notebook printed."""
from pathlib import Path

import nbformat

from common.exercises import is_solution


def exercise_answers(executed: Path) -> list[str]:
    """The text each executed code cell tagged `solution` printed, in order; fails on a cell that raised
    or printed no "Answer"."""
    nb = nbformat.read(executed, 4)
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
