"""The Aff-Wild2 label files: the per-task files and the ABAW3 MTL files, parsed and validated.

Label files: line 1 is a header, line i + 1 belongs to frame i. Unannotated frames carry a
marker: VA -5, EXPR -1, AU -1. The readers return (values, valid_mask) pairs in which masked
entries always hold the marker, so a consumer can rely on the mask alone. Every problem raises
AffWild2Error with the file, the 1-based line and the fix (common/data/affwild2.py reads the
layout around these files).
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

VA_NAMES = ("valence", "arousal")
EXPR_NAMES = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
AU_NAMES = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")
HEADERS = {"VA": VA_NAMES, "EXPR": EXPR_NAMES, "AU": AU_NAMES}

# The "no annotation" markers of the official files.
VA_INVALID = -5.0
EXPR_INVALID = -1
AU_INVALID = -1.0

MTL_IMAGE = re.compile(r"^([^/\\]+)/(\d{5,})\.jpg$")      # <video>/<frame>.jpg in an MTL row
MTL_COLUMNS = VA_NAMES + ("expression",) + AU_NAMES

FIX_CHECK_ROOT = "check data.root in params.yaml (it must point at the Aff-Wild2 folder)"

# What a label value may look like: a plain ASCII decimal (optional sign, fraction, exponent) or a
# nan/inf spelling (parsed, then rejected as not finite), with ASCII blanks (space, tab, \f, \v,
# as pandas takes them) around it. Python's float() also takes 0_1, full-width digits and other
# Unicode digits and spaces; pandas reads a column made only of True/False as 1/0. None is a label.
# (Possessive quantifiers: nothing to backtrack into, which halves the scan of a big file.)
_NUMBER_TEXT = (r"[ \t\f\v]*+[+-]?+(?:(?:\d++\.?+\d*+|\.\d++)(?:[eE][+-]?+\d++)?+"
                r"|(?i:nan|inf(?:inity)?+))[ \t\f\v]*+")
_NUMBER = re.compile(_NUMBER_TEXT, re.ASCII)
# A character that no plain decimal has; only when the body holds one can pandas' table differ
# from a strict reading (words it reads as numbers), so only then is every line scanned.
_NOT_DECIMAL = re.compile(r"[^0-9.,+\-eE \t\f\v\r\n]")
# The same in a field after the first comma (the MTL image names are words).
_NOT_DECIMAL_FIELD = re.compile(r",[0-9.+\-eE \t\f\v\r]*[^0-9.,+\-eE \t\f\v\r\n]")


class AffWild2Error(ValueError):
    """An Aff-Wild2 layout or label problem; the message names the file, the line and the fix."""


# --------------------------------------------------------------------------------------------
# Per-task label files
# --------------------------------------------------------------------------------------------

def read_va_labels(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(values (N, 2) float32, valid (N,) bool); a -5 in either column marks the row unannotated."""
    table = _read_label_table(Path(path), "VA")
    valid = ~(table == VA_INVALID).any(axis=1)
    values = table.astype(np.float32)
    values[~valid] = VA_INVALID
    return values, valid


def read_expr_labels(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(classes (N,) int64 in 0..7, valid (N,) bool); -1 marks an unannotated frame."""
    table = _read_label_table(Path(path), "EXPR")
    values = table[:, 0].astype(np.int64)
    return values, values != EXPR_INVALID


def read_au_labels(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N, 12) float32 of 0/1, valid (N, 12) bool); -1 masks one AU (normally a whole row)."""
    values = _read_label_table(Path(path), "AU").astype(np.float32)
    return values, values != AU_INVALID


TASK_READERS = {"VA": read_va_labels, "EXPR": read_expr_labels, "AU": read_au_labels}


def _rows_ok(task: str, table: np.ndarray) -> np.ndarray:
    """Per row: every value finite and either in the task's range or its invalid marker."""
    finite = np.isfinite(table)
    with np.errstate(invalid="ignore"):
        if task == "VA":
            good = ((table >= -1) & (table <= 1)) | (table == VA_INVALID)
        elif task == "EXPR":
            good = (table == np.round(table)) & (((table >= 0) & (table <= len(EXPR_NAMES) - 1))
                                                 | (table == EXPR_INVALID))
        else:
            good = (table == 0) | (table == 1) | (table == AU_INVALID)
    return (finite & good).all(axis=1)


def _explain_value(task: str, column: str, value: float) -> str:
    """Why one parsed value is not acceptable (called only for values _rows_ok rejected)."""
    if not np.isfinite(value):
        return f"{column} is {value}; labels must be finite numbers"
    if task == "VA":
        return f"{column} = {value:g} is outside [-1, 1] and is not the unannotated marker -5"
    if task == "EXPR":
        return f"expression = {value:g} is not a class index 0..7 nor the unannotated marker -1"
    return f"{column} = {value:g} is not 0, 1 or the unannotated marker -1"


def _fix_hint(task: str) -> str:
    if task == "VA":
        return ("each row must be 'valence,arousal' with values in [-1, 1], or -5,-5 for an "
                "unannotated frame")
    if task == "EXPR":
        return "each row must be one class index 0..7 (Neutral..Other), or -1 for an unannotated frame"
    return ("each row must be 12 comma-separated 0/1 values (AU1..AU26), or -1 for unannotated; "
            "re-export this file or fix the line")


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig: files saved by spreadsheet tools start with a byte-order mark.
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise AffWild2Error(f"{path}: file not found; {FIX_CHECK_ROOT}") from None
    except IsADirectoryError:
        raise AffWild2Error(f"{path}: is a directory, not a label file; a label file is a text "
                            f"file named <video>.txt: move or rename this folder, and "
                            f"{FIX_CHECK_ROOT}") from None
    except PermissionError as e:
        raise AffWild2Error(f"{path}: cannot be read ({e.strerror}); give this user read "
                            f"permission on it") from None
    except UnicodeDecodeError as e:
        raise AffWild2Error(f"{path}: not a UTF-8 text file ({e}); re-download or re-export it") from None


def _split_header(path: Path, text: str, expected_desc: str) -> tuple[str, str]:
    """(header line, body text with trailing blank lines removed); an empty file raises."""
    if not text.strip():
        raise AffWild2Error(f"{path}:1: the file is empty; expected the header {expected_desc} "
                            f"and then one row per video frame. Re-download or regenerate it.")
    header, _, body = text.partition("\n")
    # Trailing blank lines are harmless; blank lines in the middle would shift every later
    # frame, so only the end is trimmed (the row parser rejects the others).
    return header.rstrip("\r"), body.rstrip("\r\n\t ")


def _check_header(path: Path, header: str, expected: tuple, skip_first: bool = False) -> None:
    names = [h.strip().lower() for h in header.split(",")]
    want = [e.lower() for e in expected]
    got = names[1:] if skip_first else names      # the MTL image column may be named anything
    if got != want:
        first = "<image>," if skip_first else ""
        raise AffWild2Error(
            f"{path}:1: header is {header!r}, expected {first + ','.join(expected)!r}. Line 1 must be "
            f"this header (the first label row belongs to frame 00001.jpg on line 2); if the file "
            f"has no header or belongs to another task, put it in the right task folder.")


def _read_label_table(path: Path, task: str) -> np.ndarray:
    """The body of a per-task label file as a float64 (N, columns) table, fully validated."""
    expected = HEADERS[task]
    n_cols = 1 if task == "EXPR" else len(expected)
    text = _read_text(path)
    header, body = _split_header(path, text, repr(",".join(expected)))
    _check_header(path, header, expected)
    if not body:
        raise AffWild2Error(f"{path}:2: no label rows after the header; {_fix_hint(task)}")
    table = _parse_numeric_fast(body, n_cols)
    word = _NOT_DECIMAL.search(body)
    if table is None or word:
        def head_ok(head_text: str, n_lines: int) -> bool:
            head = _parse_numeric_fast(head_text, n_cols) if n_lines else np.empty((0, n_cols))
            if head is not None:
                _explain_rejected_row(path, task, body, head)
            return head is not None
        found = _first_bad_line(body, word, _row_pattern(n_cols), head_ok)
        if found is not None:
            line = body[found[1]:].split("\n", 1)[0].rstrip("\r")
            _parse_row(path, found[0] + 2, line, n_cols, _column_names(task), task)
            table = None
    if table is not None:
        _explain_rejected_row(path, task, body, table)
        return table
    # Slow path: walk the lines to name the first bad one. It returns a table only if pandas
    # rejected well-formed lines.
    return _parse_lines_slow(path, body, n_cols, task, first_line=2)


def _explain_rejected_row(path: Path, task: str, body: str, table: np.ndarray) -> None:
    """Raise for the first row of ``table`` (the first lines of ``body``) that _rows_ok rejects."""
    ok = _rows_ok(task, table)
    if not ok.all():
        # Every line parsed, so the first rejected row is the first problem: explain just it.
        first_bad = int(np.argmin(ok))
        line = body.split("\n", first_bad + 1)[first_bad]
        _parse_row(path, first_bad + 2, line.rstrip("\r"), table.shape[1], _column_names(task), task)


def _row_pattern(n_cols: int, first: str = "") -> str:
    """Regex of one well-formed line: ``first`` then n_cols numbers separated by commas."""
    return first + ",".join([_NUMBER_TEXT] * n_cols)


def _first_bad_line(body: str, word, row: str, head_ok) -> tuple[int, int] | None:
    """(0-based index, start offset) of the line of ``body`` that holds its first problem, found
    without a Python loop over the lines; None when no line is malformed, or when pandas refused
    the lines before it (the caller's line-by-line walk then finds the problem).

    ``word``: the first match of a character that no plain decimal has, or None. Its line is bad
    (a word is malformed, nan/inf are not finite), so that is the place when the lines before it,
    which hold only decimal characters, pass ``head_ok(their text, their count)``: pandas reads
    them as on the valid path, and ``head_ok`` raises at a rejected value there. Otherwise a regex
    scan finds the first malformed line, and the lines before it go through ``head_ok`` likewise.
    """
    for find in (lambda: word and _line_at(body, word.start()),
                 lambda: _first_malformed_line(body, row)):
        found = find()
        if found and head_ok(body[:max(found[1] - 1, 0)], found[0]):
            return found
    return None


def _line_at(body: str, offset: int) -> tuple[int, int]:
    """(0-based index, start offset) of the line of ``body`` that holds ``offset``."""
    start = body.rfind("\n", 0, offset) + 1
    return body.count("\n", 0, start), start


def _first_malformed_line(body: str, row: str) -> tuple[int, int] | None:
    """(0-based index, start offset) of the first line of ``body`` that is not ``row`` (trailing
    carriage returns allowed), or None. One regex match over the well-formed lines, ~0.15 s
    for a million VA lines, instead of a Python loop over them."""
    start = re.compile(rf"(?:{row}\r*\n)*+", re.ASCII).match(body).end()
    rest = body[start:]
    if "\n" not in rest and re.fullmatch(rf"{row}\r*", rest, re.ASCII):
        return None                 # the last line (no newline after it) is well formed too
    return _line_at(body, start)


def _number(where: str, column: str, text: str, fix: str) -> float:
    """One label field as a float, accepting only the plain decimals of _NUMBER."""
    if not _NUMBER.fullmatch(text):
        word = text.strip().lower() in ("true", "false")
        hint = "write 1 or 0, not True/False" if word else \
            "labels are plain ASCII decimals such as 0.25, -1 or 1e-3"
        raise AffWild2Error(f"{where}: {column} = {text.strip()!r} is not a number ({hint}); {fix}")
    return float(text)


def _parse_numeric_fast(body: str, n_cols: int) -> np.ndarray | None:
    """pandas' C parser on the whole body; None if anything is off (the slow path then explains)."""
    try:
        frame = pd.read_csv(io.StringIO(body), header=None, dtype=np.float64, engine="c",
                            skip_blank_lines=False, index_col=False, quoting=csv.QUOTE_NONE)
    except Exception:   # noqa: BLE001 - any parser complaint means "find the line by hand"
        return None
    table = frame.to_numpy(dtype=np.float64)
    # A row count that differs from the line count means pandas skipped or merged something.
    if table.shape != (body.count("\n") + 1, n_cols):
        return None
    return table


def _column_names(task: str) -> tuple:
    return ("expression",) if task == "EXPR" else HEADERS[task]


def _parse_lines_slow(path: Path, body: str, n_cols: int, task: str, first_line: int) -> np.ndarray:
    names = _column_names(task)
    rows = []
    for line_no, line in enumerate(body.split("\n"), start=first_line):
        rows.append(_parse_row(path, line_no, line.rstrip("\r"), n_cols, names, task))
    return np.array(rows, dtype=np.float64).reshape(-1, n_cols)


def _parse_row(path: Path, line_no: int, line: str, n_cols: int, names: tuple, task: str) -> list:
    where = f"{path}:{line_no}"
    if not line.strip():
        raise AffWild2Error(f"{where}: empty line inside the labels (it would shift every later "
                            f"frame by one); remove it or write the unannotated marker. {_fix_hint(task)}")
    fields = line.split(",")
    if len(fields) != n_cols:
        raise AffWild2Error(f"{where}: {len(fields)} field(s) in {line!r}, expected {n_cols} "
                            f"({','.join(names)}); {_fix_hint(task)}")
    values = [_number(where, name, text, _fix_hint(task)) for name, text in zip(names, fields)]
    row = np.array([values], dtype=np.float64)
    if not _rows_ok(task, row)[0]:
        bad = next(i for i in range(n_cols) if not _rows_ok(task, row[:, i:i + 1])[0])
        raise AffWild2Error(f"{where}: {_explain_value(task, names[bad], row[0, bad])}; {_fix_hint(task)}")
    return values


# --------------------------------------------------------------------------------------------
# ABAW3 MTL (static) files
# --------------------------------------------------------------------------------------------

def read_mtl_table(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The rows of one ABAW3 MTL file, validated: (image names (N,) '<video>/<00001>.jpg', values (N, 15)
    float64 in the columns of MTL_COLUMNS). A bad line raises with its number; so does a repeated image."""
    text = _read_text(path)
    header, body = _split_header(path, text, "'image,valence,arousal,expression,AU1,...,AU26'")
    _check_header(path, header, MTL_COLUMNS, skip_first=True)
    if not body:
        raise AffWild2Error(f"{path}:2: no rows after the header; each row is "
                            f"'video/00001.jpg,valence,arousal,expression,AU1,...,AU26'")
    lines = body.split("\n")
    images, table = _parse_mtl_fast(body, len(lines))
    word = _NOT_DECIMAL_FIELD.search(body)
    if images is None or word:
        def head_ok(head_text: str, n_lines: int) -> bool:   # as for the per-task files
            if not n_lines:
                return True
            head_images, head = _parse_mtl_fast(head_text, n_lines)
            if head_images is not None:
                _explain_rejected_mtl_row(path, lines, head_images, head)
            return head_images is not None
        found = _first_bad_line(body, word, _row_pattern(len(MTL_COLUMNS), "[^,\n]*,"), head_ok)
        if found is not None:
            _parse_mtl_slow(path, lines[found[0]:found[0] + 1], first_line=found[0] + 2)
            images = None
    if images is not None:
        _explain_rejected_mtl_row(path, lines, images, table)
    else:
        images, table = _parse_mtl_slow(path, lines)
    _check_mtl_duplicates(path, images)
    return images, table


def _explain_rejected_mtl_row(path: Path, lines: list, images: np.ndarray, table: np.ndarray) -> None:
    """Raise for the first parsed MTL row (of the first lines) that _mtl_rows_ok rejects."""
    ok = _mtl_rows_ok(images, table)
    if not ok.all():
        first_bad = int(np.argmin(ok))          # every line parsed: explain the first rejected one
        _parse_mtl_slow(path, lines[first_bad:first_bad + 1], first_line=first_bad + 2)


def _mtl_rows_ok(images: np.ndarray, table: np.ndarray) -> np.ndarray:
    names_ok = np.array([bool(MTL_IMAGE.match(name)) for name in images], dtype=bool)
    return (names_ok & _rows_ok("VA", table[:, 0:2]) & _rows_ok("EXPR", table[:, 2:3])
            & _rows_ok("AU", table[:, 3:]))


def _parse_mtl_fast(body: str, n_lines: int):
    n_cols = 1 + len(MTL_COLUMNS)
    try:
        frame = pd.read_csv(io.StringIO(body), header=None, engine="c", skip_blank_lines=False,
                            index_col=False, quoting=csv.QUOTE_NONE,
                            dtype={0: str, **{c: np.float64 for c in range(1, n_cols)}})
    except Exception:   # noqa: BLE001 - any parser complaint means "find the line by hand"
        return None, None
    if frame.shape != (n_lines, n_cols) or frame[0].isna().any():
        return None, None
    return frame[0].to_numpy(dtype=str), frame.iloc[:, 1:].to_numpy(dtype=np.float64)


def _parse_mtl_slow(path: Path, lines: list, first_line: int = 2) -> tuple[np.ndarray, np.ndarray]:
    images, rows = [], []
    fix = ("each row must be 'video/00001.jpg,valence,arousal,expression,AU1,...,AU26' with "
           "-5,-5 / -1 / -1 for missing VA / expression / AU labels")
    for line_no, line in enumerate(lines, start=first_line):
        line = line.rstrip("\r")
        where = f"{path}:{line_no}"
        if not line.strip():
            raise AffWild2Error(f"{where}: empty line; remove it. {fix}")
        name, _, rest = line.partition(",")
        if not MTL_IMAGE.match(name.strip()):
            raise AffWild2Error(f"{where}: image {name!r} is not of the form <video>/<00001>.jpg; {fix}")
        fields = rest.split(",") if rest else []
        if len(fields) != len(MTL_COLUMNS):
            raise AffWild2Error(f"{where}: {len(fields) + 1} field(s), expected {len(MTL_COLUMNS) + 1} "
                                f"(image,{','.join(MTL_COLUMNS)}); {fix}")
        values = [_number(where, column, text, fix) for column, text in zip(MTL_COLUMNS, fields)]
        row = np.array([values], dtype=np.float64)
        for task, lo, hi in (("VA", 0, 2), ("EXPR", 2, 3), ("AU", 3, len(MTL_COLUMNS))):
            for i in range(lo, hi):
                if not _rows_ok(task, row[:, i:i + 1])[0]:
                    raise AffWild2Error(f"{where}: {_explain_value(task, MTL_COLUMNS[i], row[0, i])}; {fix}")
        images.append(name.strip())
        rows.append(values)
    return np.array(images, dtype=str), np.array(rows, dtype=np.float64)


def _check_mtl_duplicates(path: Path, images: np.ndarray) -> None:
    # A repeated image would count twice in every metric.
    first_seen = {}
    if len(np.unique(images)) == len(images):
        return
    for line_no, name in enumerate(images, start=2):
        if name in first_seen:
            raise AffWild2Error(f"{path}:{line_no}: image {name} already listed on line "
                                f"{first_seen[name]}; keep one row per image")
        first_seen[name] = line_no
