"""Zhang et al. 2021: the runs behind Tables 1 and 2 and the window-length claim.

The notebooks call these functions and explain them; nothing here is specific to one table.
A run is one (fold, emotion, modality, seed[, window]) model trained by `train.train_fold`; its
folder holds fit's checkpoint and metrics.csv, result.json and predictions.npz, so a notebook
re-executed after a kill picks up finished runs instead of training them again.
"""
from __future__ import annotations

import copy
from itertools import product
from pathlib import Path

import numpy as np
import torch

from common import ledger
from common.features import vggish, visual
from common.features.extract import open_audio_cache
from common.parallel import finished_runs
from common.runs import config_key
from common.weights import PIPELINE, load_weights_file, recorded_provenance
from common.notebooks import notebook_params  # noqa: F401  (the notebooks call experiment.notebook_params)
from common.data.sequences import window_starts
from papers.zhang2021.data import EMOTIONS, WindowDataset, cache_loader, load_trials, make_folds
from papers.zhang2021.model import BRANCHES, build_model
from papers.zhang2021.train import drop_invalid, merge_folds, method_of, train_fold


def load_corpus(params: dict) -> list:
    """Every VA-annotated trial with its cached visual (frame encoder), MFCC and VGGish features."""
    caches = {"visual": visual.feature_cache(params), "mfcc": open_audio_cache(params, "mfcc"),
              "vggish": vggish.cache_for(params)}
    return load_trials(params["data"]["root"], cache_loader(caches), drop_invalid=drop_invalid(params["zhang2021"]))


def network_provenance(params: dict) -> dict:
    """{"frame encoder": ..., "VGGish": ...}: where this run's weights of each network came from, read
    from the record its stage wrote (<visual_encoder.model_dir>/frame_encoder.json,
    <vggish.model_dir>/vggish.json; common.weights.recorded_provenance), not from params.yaml:
    "published weights (<layout>: <file>), ..." when a published file was loaded, "pre-trained in the
    pipeline ..." otherwise."""
    texts = {"frame encoder": recorded_provenance(visual.encoder_path(params).with_suffix(".json")),
             "VGGish": recorded_provenance(vggish.model_path(params).with_suffix(".json"))}
    detail = {"frame encoder": " on the AffectNet-like side set (VA + expression)",
              "VGGish": " on the corpus's speech / other-voice audio events"}
    return {k: PIPELINE + detail[k] if t.startswith(PIPELINE) else t for k, t in texts.items()}


def differences(params: dict, group: str) -> list[dict]:
    """Where this run differs from the paper and from the released code, and why (the report's
    table): the rows of group "table1" (the training set-up) or "table2" (the merge, the test set)
    of papers/zhang2021/ledger.yaml, filled in from params and the networks' records."""
    provenance = network_provenance(params)
    return ledger.differences("zhang2021", group, params=params, frame_encoder=provenance["frame encoder"],
                              vggish=provenance["VGGish"],
                              frame_published=provenance["frame encoder"].startswith("published weights"),
                              vggish_published=provenance["VGGish"].startswith("published weights"),
                              tcn_visual=channels_by_layers(params["zhang2021"]["tcn"]["visual"]))


def channels_by_layers(channels: list) -> str:
    """A TCN's size as the paper writes it (Sec. 3.1: "128 x 4", channels x layers): [16, 16] is
    "16 x 2"; layers of different widths are listed, [64, 32] -> "64, 32 (2 layers)"."""
    if len(set(channels)) == 1:
        return f"{channels[0]} x {len(channels)}"
    return f"{', '.join(map(str, channels))} ({len(channels)} layers)"


def with_method(params: dict, method: str) -> dict:
    """A plain copy of params whose zhang2021.method is `method` (train.METHOD: paper | released)."""
    out = copy.deepcopy(params)                  # a thawed, changeable copy (common.params)
    out["zhang2021"]["method"] = method
    method_of(out["zhang2021"])                  # refuses an unknown method here
    return out


def run_name(fold: int, emotion: str, modality: str, seed: int, window: int | None = None,
             method: str = "paper") -> str:
    """The run's folder name; method released runs get their own folders beside the paper's."""
    return (f"{modality}-{emotion}-fold{fold}-seed{seed}" + (f"-w{window}" if window else "")
            + ("" if method == "paper" else f"-{method}"))


def run_grid(params: dict, trials: list, root: str | Path, folds, emotions=tuple(EMOTIONS),
             modalities=("unimodal", "multimodal"), seeds=None, window: int | None = None,
             hop: int | None = None, batch_size: int | None = None, progress: bool = False) -> list[dict]:
    """Train every combination (or reuse a finished run); return their result.json rows.
    The runs left to do train `zhang2021.workers` at a time, one per core (common/parallel.py)."""
    seeds = params["zhang2021"]["seeds"] if seeds is None else seeds
    jobs = [(fold, emotion, modality, seed)
            for modality, emotion, fold, seed in product(modalities, emotions, folds, seeds)]

    def folder(job) -> Path:
        return Path(root) / run_name(*job, window, params["zhang2021"]["method"])

    return finished_runs(jobs, folder,
                         lambda j: train_fold(params, trials, j[0], j[1], j[2], folder(j), window=window, hop=hop,
                                              seed=j[3], batch_size=batch_size, progress=progress),
                         lambda j: config_key(params, "zhang2021", fold=j[0], emotion=j[1], modality=j[2], seed=j[3],
                                              window=window, hop=hop, batch_size=batch_size),
                         params["zhang2021"]["workers"])


def load_predictions(run_dir: str | Path, split: str) -> dict:
    """{video: (N,) prediction} of one run on one split."""
    with np.load(Path(run_dir) / "predictions.npz") as z:
        return {key.split("/", 1)[1]: z[key] for key in z.files if key.startswith(f"{split}/")}


def test_scores(params: dict, trials: list, root: str | Path, emotion: str, modality: str, seed: int,
                folds, clip: str) -> dict:
    """Test CCC of the fold-0 model alone and of the fold models merged by CCC centering (Sec. 4.5),
    and the merged predictions ({video: (N,)})."""
    z = params["zhang2021"]
    method = method_of(z)
    test = [t for t in trials if t.split == "test"]
    if not test:        # the real release keeps its test labels back: no test CCC (the report says so)
        return {"single": {f: float("nan") for f in folds}, "merged": float("nan"), "predictions": {}}
    per_fold = [load_predictions(Path(root) / run_name(f, emotion, modality, seed, method=method.name), "test")
                for f in folds]
    single = {f: method.split_ccc(test, preds, emotion) for f, preds in zip(folds, per_fold)}
    # each test trial is merged on its own (train.merge_folds), by the method's merge
    merged = merge_folds(z, [{t.video: p[t.video] for t in test} for p in per_fold], clip)
    return {"single": single, "merged": method.split_ccc(test, merged, emotion), "predictions": merged}


@torch.no_grad()
def attention_over_time(params: dict, trials: list, root: str | Path, emotion: str, seed: int,
                        video: str) -> np.ndarray:
    """(T, 3, 3) leader-follower attention scores (Eq. 1 softmax) of the fold-0 multimodal model on one trial.

    Row i of a time step holds how branch i's query spreads over the keys of (visual, MFCC, VGGish).
    The trial is fed in the windows the model was trained with and the scores of overlapping
    windows are averaged per frame, as its predictions are.
    """
    z = params["zhang2021"]
    by_video = {t.video: t for t in trials}
    fold0 = make_folds(trials, z["folds"])[0]
    parts = [[by_video[v] for v in fold0[s]] for s in ("train", "validation")]
    norms = method_of(z).normalization(*parts, [t for t in trials if t.split == "test"], BRANCHES)
    norm = norms[by_video[video].split]           # fold 0 is the official split
    model = build_model(z, "multimodal")
    model.load_state_dict(load_weights_file(Path(root) / run_name(0, emotion, "multimodal", seed, method=z["method"])
                                            / "best.pt"))
    model.eval()
    trial = by_video[video]
    data = WindowDataset([trial], BRANCHES, z["window"], z["hop"], norm)
    starts = window_starts(len(trial), z["window"], z["hop"])
    total = np.zeros((len(trial), 3, 3))
    count = np.zeros(len(trial))
    for item, start in zip(data, starts):
        _, scores = model({m: x[None] for m, x in item["x"].items()}, return_attention=True)
        n = min(z["window"], len(trial) - start)
        total[start:start + n] += scores[0, :n].numpy()
        count[start:start + n] += 1
    return total / count[:, None, None]


def validation_ccc(rows: list[dict], emotion: str, fold: int, seed: int, modality: str = "multimodal") -> float:
    """The validation CCC of one run of a grid's result rows."""
    return next(r["validation_ccc"] for r in rows
                if (r["emotion"], r["fold"], r["seed"], r["modality"]) == (emotion, fold, seed, modality))


def method_pairs(paper_rows: list[dict], released_rows: list[dict], folds, seeds) -> tuple[list, list]:
    """(paper, released) multimodal validation CCCs of the same (emotion, fold, seed), in one order:
    the pairs the released-vs-paper finding is judged on."""
    keys = [(e, f, s) for e in EMOTIONS for f in folds for s in seeds]
    return ([validation_ccc(paper_rows, *k) for k in keys], [validation_ccc(released_rows, *k) for k in keys])
