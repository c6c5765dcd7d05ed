"""Annotations: the annotators' traces, the per-task label files and the ABAW3 MTL files."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data.affwild2 import AU_NAMES, EXPR_NAMES, MTL_DIR, MTL_FILES, SPLIT_DIRS, TASK_DIRS
from common.data.synthetic.config import CorpusConfig, job_rng
from common.data.synthetic.latent import markov_runs, smooth_process


def annotate(rng, truth: dict, cfg: CorpusConfig) -> dict:
    """Annotator traces: lagged, noisy, with unannotated runs; plus binary AU labels."""
    n = len(truth["expression"])
    lag = int(rng.integers(0, max(1, cfg.fps // 5)))       # annotators react 0-0.2 s late
    shift = lambda x: np.concatenate([x[:1].repeat(lag, 0), x[:n - lag]]) if lag else x.copy()  # noqa: E731
    va = shift(truth["va"]) + cfg.label_noise["VA"] * np.stack(
        [smooth_process(rng, n, 0.3, cfg.fps) for _ in range(2)], 1)
    va = np.round(np.clip(va, -1, 1), 3)
    expr = shift(truth["expression"])
    flips = markov_runs(rng, n, cfg.label_noise["EXPR"], 0.4 * cfg.fps)
    expr[flips] = rng.integers(0, len(EXPR_NAMES), n)[flips]
    au = (shift(truth["au"]) > 0.5).astype(np.int64)
    au_flip = rng.random(au.shape) < cfg.label_noise["AU"]
    au[au_flip] = 1 - au[au_flip]
    # Unannotated stretches (the annotation tool lost the face, the annotator skipped a part).
    masks = {task: ~markov_runs(rng, n, cfg.invalid_fraction, 1.5 * cfg.fps) for task in TASK_DIRS}
    return {"va": va, "expr": expr, "au": au, "valid": masks}


def format_task_file(task: str, labels: dict) -> str:
    valid = labels["valid"][task]
    if task == "VA":
        header, rows = "valence,arousal", [f"{a:.3f},{b:.3f}" for a, b in labels["va"]]
        marker = "-5,-5"
    elif task == "EXPR":
        header, rows, marker = ",".join(EXPR_NAMES), [str(int(e)) for e in labels["expr"]], "-1"
    else:
        header, rows = ",".join(AU_NAMES), [",".join(map(str, r)) for r in labels["au"]]
        marker = ",".join(["-1"] * len(AU_NAMES))
    return header + "\n" + "\n".join(r if ok else marker for r, ok in zip(rows, valid)) + "\n"


def write_mtl(cfg: CorpusConfig, rows: list, out: Path) -> dict:
    """The ABAW3 MTL (static) files: every `frame_stride`-th face frame; some rows fully labelled."""
    rng = job_rng(cfg, 6, 0)
    lines = {split: [] for split in SPLIT_DIRS}
    for row in rows:
        lab, face = row["labels"], row["has_face"]
        for t in range(0, row["n_frames"], cfg.mtl["frame_stride"]):
            if not face[t]:
                continue
            full = rng.random() < cfg.mtl["full_label_fraction"]
            keep = np.ones(3, bool) if full else rng.random(3) < 0.5
            if not keep.any():
                keep[rng.integers(0, 3)] = True
            ok = [keep[i] and lab["valid"][task][t] for i, task in enumerate(TASK_DIRS)]
            va = f"{lab['va'][t, 0]:.3f},{lab['va'][t, 1]:.3f}" if ok[0] else "-5,-5"
            ex = str(int(lab["expr"][t])) if ok[1] else "-1"
            au = ",".join(map(str, lab["au"][t])) if ok[2] else ",".join(["-1"] * len(AU_NAMES))
            lines[row["split"]].append(f"{row['video']}/{t + 1:05d}.jpg,{va},{ex},{au}")
    header = "image,valence,arousal,expression," + ",".join(AU_NAMES)
    for split, body in lines.items():
        (out / "annotations" / MTL_DIR / MTL_FILES[split]).write_text(header + "\n" + "\n".join(body) + "\n")
    return {split: len(body) for split, body in lines.items()}
