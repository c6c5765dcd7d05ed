"""Still-image side sets: the stand-ins for AffectNet (EXPR + VA), ExpW (EXPR) and AFEW-VA (VA).

Layout (written by common/data/synthetic/; a real copy can be converted to it):
    <root>/side/<name>/images/<file>.jpg
    <root>/side/<name>/labels.csv     header: image[,expression][,valence,arousal]
Expressions use the ABAW class order (0 Neutral ... 6 Surprise; these sets have no "Other").
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COLUMNS = {
    "affectnet": ("image", "expression", "valence", "arousal"),
    "expw": ("image", "expression"),
    "afew_va": ("image", "valence", "arousal"),
}


class StillSetError(ValueError):
    """A side-set problem; the message names the file, the line and the fix."""


@dataclass
class StillSet:
    name: str
    image_paths: list
    expression: np.ndarray | None      # (N,) int64, or None when the set has no expression labels
    va: np.ndarray | None              # (N, 2) float32, or None when the set has no VA labels

    def __len__(self) -> int:
        return len(self.image_paths)


def read_still_set(root: str | Path, name: str) -> StillSet:
    if name not in COLUMNS:
        raise StillSetError(f"unknown side set '{name}'; known: {', '.join(COLUMNS)}")
    folder = Path(root) / "side" / name
    path = folder / "labels.csv"
    if not path.exists():
        raise StillSetError(f"{path}: not found. Generate the corpus (make reproduce) or check data.root.")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = tuple(next(reader, ()))
        if header != COLUMNS[name]:
            raise StillSetError(f"{path}:1: header {','.join(header)!r}, expected {','.join(COLUMNS[name])!r}")
        images, expr, va = [], [], []
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise StillSetError(f"{path}:{line}: {len(row)} fields, expected {len(header)}")
            rec = dict(zip(header, row))
            image = folder / "images" / rec["image"]
            if not image.exists():
                raise StillSetError(f"{path}:{line}: image {image} does not exist")
            try:
                if "expression" in rec:
                    e = int(rec["expression"])
                    if not 0 <= e <= 6:
                        raise ValueError(f"expression {e} outside 0..6")
                    expr.append(e)
                if "valence" in rec:
                    v, a = float(rec["valence"]), float(rec["arousal"])
                    if not (-1 <= v <= 1 and -1 <= a <= 1):
                        raise ValueError(f"valence/arousal ({v}, {a}) outside [-1, 1]")
                    va.append((v, a))
            except ValueError as e:
                raise StillSetError(f"{path}:{line}: {e}") from None
            images.append(str(image))
    if not images:
        raise StillSetError(f"{path}: no rows")
    return StillSet(name, images, np.array(expr, np.int64) if expr else None,
                    np.array(va, np.float32) if va else None)
