"""Time Zhang et al. 2021's training runs on random features of the default corpus's size.

    python scripts/benchmark_zhang.py [--profile default] [--threads N] [--out /tmp/zhang2021-benchmark]

Every training run of the Zhang stage (folds x emotions x {UM, MM}, plus the short-window
comparison) through `papers.zhang2021.train.train_fold`, early stopping off, on random features
whose valence / arousal are a slow function of them; prints one JSON line per run (CPU and wall
seconds) and the totals. Prefer one thread per process on a shared machine: OpenMP threads on
oversubscribed cores make a run several times slower.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from common.params import load_params
from papers.zhang2021.data import Trial
from papers.zhang2021.model import MODALITIES
from papers.zhang2021.train import train_fold

ROOT = Path(__file__).resolve().parents[1]


def synthetic_trials(n_train=20, n_val=8, n_test=6, frames=(900, 1000, 1300), seed=0) -> list[Trial]:
    """Random features of the default corpus's size, valence/arousal a slow function of them."""
    rng = np.random.default_rng(seed)
    trials = []
    for split, n, length in (("train", n_train, frames[0]), ("validation", n_val, frames[1]),
                             ("test", n_test, frames[2])):
        for i in range(n):
            feats = {"visual": rng.standard_normal((length, 512), dtype=np.float32),
                     "mfcc": rng.standard_normal((length, 39), dtype=np.float32),
                     "vggish": rng.standard_normal((length, 128), dtype=np.float32)}
            kernel = np.ones(30) / 30
            v = np.convolve(feats["visual"][:, :8].sum(1), kernel, "same")
            a = np.convolve(feats["mfcc"][:, :8].sum(1), kernel, "same")
            label = np.tanh(np.stack([v, a], 1)).astype(np.float32)
            trials.append(Trial(f"{split}{i:03d}", f"{split}{i:03d}", split, label,
                                np.ones(length, bool), feats))
    return trials


def workload(params: dict) -> list[dict]:
    """Every training run of the Zhang stage: folds x emotions x {UM, MM} (Table 1, Table 2) plus
    the short-window comparison (fold 0, multimodal, both emotions, each short window). Short
    windows keep the 33% overlap and the frames per batch (more windows per batch), so the
    window length is what changes, not the number of frames per gradient step."""
    z = params["zhang2021"]
    runs = [{"fold": f, "emotion": e, "modality": m, "window": z["window"], "hop": z["hop"],
             "batch_size": z["batch_size"]}
            for m in MODALITIES for e in ("valence", "arousal") for f in range(z["folds"])]
    runs += [{"fold": 0, "emotion": e, "modality": "multimodal", "window": w, "hop": max(1, 2 * w // 3),
              "batch_size": max(1, round(z["batch_size"] * z["window"] / w))}
             for w in z["short_windows"] for e in ("valence", "arousal")]
    return runs


def benchmark(params: dict, out_root: str, threads: int = 0) -> dict:
    """Time the whole workload on random features of the default corpus's size (no early stop)."""
    if threads:
        torch.set_num_threads(threads)
    params = {**params, "zhang2021": {**params["zhang2021"], "early_stop": 0}}
    trials = synthetic_trials()
    wall, cpu, rows = time.perf_counter(), time.process_time(), []
    for run in workload(params):
        name = "{modality}-{emotion}-fold{fold}-w{window}".format(**run)
        c = time.process_time()
        m = train_fold(params, trials, run["fold"], run["emotion"], run["modality"],
                       Path(out_root) / name, window=run["window"], hop=run["hop"],
                       batch_size=run["batch_size"])["metrics"]
        rows.append({"run": name, "cpu_s": round(time.process_time() - c, 2), "wall_s": m["seconds"]})
        print(json.dumps(rows[-1]), flush=True)
    total = {"runs": len(rows), "wall_s": round(time.perf_counter() - wall, 1),
             "cpu_s": round(time.process_time() - cpu, 1), "threads": torch.get_num_threads()}
    print(json.dumps(total))
    return {"total": total, "runs": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None)
    ap.add_argument("--out", default="/tmp/zhang2021-benchmark")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args(argv)
    params = load_params(ROOT / "params.yaml", args.profile)
    shutil.rmtree(args.out, ignore_errors=True)
    benchmark(params, args.out, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
