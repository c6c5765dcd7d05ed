"""Test-set predictions written in the annotation file format, ready for an ABAW challenge submission.

One file per video and task, laid out as the annotations are (common/data/affwild2.py):

    <out_dir>/VA_Estimation_Challenge/<video>.txt          valence,arousal      one row per frame
    <out_dir>/EXPR_Classification_Challenge/<video>.txt    Neutral,...,Other    one class index per row
    <out_dir>/AU_Detection_Challenge/<video>.txt           AU1,...,AU26         12 0/1 values per row

Line 1 is the task's header and line i + 1 belongs to frame i, as in the label files, so the
reader reads them back (common.data.affwild2.read_va_labels and friends). Valence and arousal are
clipped to [-1, 1], the labels' range (a CCC-trained model can overshoot it). The challenge's own
submission bundle (its folder names, zip) changes between editions: these files are its content.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data.affwild2 import AU_NAMES, EXPR_NAMES, HEADERS, TASK_DIRS, TASKS
from common.files import atomic_write_text


class SubmissionError(ValueError):
    """Predictions that cannot be written in the annotation format; names the video and the fix."""


def format_predictions(task: str, values, video: str = "?") -> str:
    """The text of one prediction file: the task's header, then one row per frame."""
    if task not in TASKS:
        raise SubmissionError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    values = np.asarray(values)
    want = {"VA": (2,), "EXPR": (), "AU": (len(AU_NAMES),)}[task]
    if values.ndim != 1 + len(want) or values.shape[1:] != want or len(values) == 0:
        raise SubmissionError(f"{task} predictions of video {video!r} have shape {values.shape}; expected "
                              f"(frames{', ' + str(want[0]) if want else ''}), one row per frame")
    if not np.isfinite(values).all():
        raise SubmissionError(f"{task} predictions of video {video!r} hold NaN or inf at frame "
                              f"{int(np.argmin(np.isfinite(values).reshape(len(values), -1).all(1))) + 1}")
    if task == "VA":
        rows = [f"{v:.6f},{a:.6f}" for v, a in np.clip(values, -1.0, 1.0)]
    elif task == "EXPR":
        if not np.isin(values, np.arange(len(EXPR_NAMES))).all():
            raise SubmissionError(f"EXPR predictions of video {video!r} must be class indices 0..7 "
                                  "(argmax of the logits)")
        rows = [str(int(c)) for c in values]
    else:
        if not np.isin(values, (0, 1)).all():
            raise SubmissionError(f"AU predictions of video {video!r} must be 0/1 (threshold the probabilities first)")
        rows = [",".join(str(int(x)) for x in row) for row in values]
    return ",".join(HEADERS[task]) + "\n" + "\n".join(rows) + "\n"


def write_predictions(out_dir: str | Path, task: str, predictions: dict) -> list[Path]:
    """{video: per-frame predictions} of one task -> <out_dir>/<task folder>/<video>.txt (each written
    temp-then-rename); returns the paths in video order."""
    folder = Path(out_dir) / TASK_DIRS.get(task, task)
    texts = {video: format_predictions(task, values, video) for video, values in sorted(predictions.items())}
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for video, text in texts.items():
        atomic_write_text(folder / f"{video}.txt", text)
        paths.append(folder / f"{video}.txt")
    return paths
