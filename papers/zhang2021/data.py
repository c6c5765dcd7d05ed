"""Zhang et al. 2021, Sec. 4.2-4.4: trials, folds, windows, normalisation, per-frame evaluation.

A trial is one label file (a face track; `_left` / `_right` are two trials). Its features come
from a `loader(video, n_frames) -> {modality: (n_frames, dim) array}`, so the same code runs on
the feature caches (`cache_loader`) or on synthetic arrays in tests (`random_loader`).

* Windows (Sec. 4.4): `window` consecutive frames every `hop` frames (300 / 200: 33% overlap;
  `common.data.sequences.window_starts`); the last window is aligned to the end of the trial so
  every frame is covered; trials shorter than a window are zero-padded. Under method paper the
  padding is masked out of the loss; under released (`pad_in_loss`) it enters the loss with label
  0 and its features are normalised zeros, as sucv/ABAW2@71d40fb base/dataset.py:211-243 pads
  before normalising and base/trainer.py:328 (its CCCLoss has no mask) scores every frame
  (ledger: padding_in_loss).
* Labels: frames marked -5 keep their place in time and are masked out of the loss and the
  metric. The paper (and its code) instead delete the -5 rows before windowing (Sec. 4.2, "the
  length N is determined by the number of rows which does not include -5"), which joins the
  frames on both sides of a gap; `drop_invalid=True` does that (paper profile).
* Normalisation (`NORMALIZATION`, chosen by `zhang2021.method`; ledger: normalisation_scope,
  normalisation_visual):
  - paper: each feature dimension z-scored with the mean and population std of the fold's
    training partition, for every split (`common.data.sequences.Normalizer`). Sec. 4.4 says the
    aural data "is normalized to have 0 mean and unit standard deviation", and names no
    statistics; the cached visual embeddings are z-scored the same way (the paper's "0.5 mean and
    std" applies to face pixels, before the encoder).
  - released: ONE scalar mean and std per feature type (all dimensions of all frames together,
    std with n - 1), computed separately for the fold's training, validation and test partitions,
    and each partition normalised with its own (`ScalarNormalizer`; sucv/ABAW2@71d40fb
    calculate_mean_and_std.py:21-50, base/dataset.py:152-164). The visual embeddings are left
    as the encoder gives them: the released code normalises face pixels before its CNN and never
    the CNN's output.
* Folds (Sec. 4.3): the training trials are cut into folds - 1 contiguous chunks of about equal
  trial count, the validation set is the last partition, and fold k rolls the partitions by k,
  so fold 0 is the official split and each training chunk is validated on exactly once. Trials
  that share a subject, or a video (the two tracks of a two-person video share one audio
  track), always land in the same chunk, so no fold has a subject in training and validation.
* Evaluation (ABAW): overlapping window outputs are averaged per frame, all trials of a split
  are concatenated and one CCC is computed over their valid frames (`common.data.sequences.split_ccc`
  under paper; `train.released_split_ccc`, n - 1 variances, under released).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from common.data import folds
from common.data.affwild2 import SPLITS, read_split
from common.data.sequences import Normalizer, window_starts
from common.device import module_device

EMOTIONS = {"valence": 0, "arousal": 1}


@dataclass
class Trial:
    video: str
    subject: str
    split: str                      # official split: train / validation / test
    label: np.ndarray               # (N, 2) float32 valence, arousal; -5 where unannotated
    mask: np.ndarray                # (N,) bool, True = annotated
    features: dict                  # modality -> (N, dim) array (float16 memmaps are fine)
    frames: np.ndarray = field(default=None)   # (N,) 0-based frame of each row (drop_invalid)

    def __post_init__(self):
        if self.frames is None:
            self.frames = np.arange(len(self.label))
        for name, array in self.features.items():
            if len(array) != len(self.label):
                raise ValueError(f"{self.video}: {name} has {len(array)} rows, labels have {len(self.label)}")

    def __len__(self):
        return len(self.label)


# --------------------------------------------------------------------------- loading

def cache_loader(caches: Mapping) -> Callable:
    """Loader over FeatureCache objects, one per modality: {"visual": FeatureCache(...), ...}."""
    return lambda video, n_frames: {name: cache.get(video, n_frames) for name, cache in caches.items()}


def random_loader(dims: Mapping[str, int], seed: int = 0) -> Callable:
    """Deterministic random features per video (timings and tests before the caches exist)."""
    def load(video, n_frames):
        rng = np.random.default_rng([seed, zlib.crc32(video.encode())])
        return {name: rng.standard_normal((n_frames, dim), dtype=np.float32) for name, dim in dims.items()}
    return load


def load_trials(root, loader: Callable, splits=SPLITS, drop_invalid: bool = False) -> list[Trial]:
    """Every VA-annotated trial of `splits` with its features. The real corpus has no test labels:
    pass splits=("train", "validation") there."""
    trials = []
    for split in splits:
        for v in read_split(root, split, tasks=("VA",)):
            if "VA" not in v.tasks:
                continue
            feats = loader(v.video, v.n_frames)
            keep = np.flatnonzero(v.va_mask) if drop_invalid else np.arange(v.n_frames)
            trials.append(Trial(v.video, v.subject, split, v.va[keep], v.va_mask[keep],
                                {k: a[keep] if drop_invalid else a for k, a in feats.items()}, keep))
    return trials


# --------------------------------------------------------------------------- folds (Sec. 4.3)

def make_folds(trials: list[Trial], n_folds: int = 6) -> list[dict]:
    """[{"train": [video...], "validation": [video...]}] for folds 0..n_folds-1; fold 0 = official
    (common/data/folds.py, shared with Liu et al. 2023 Sec. 4.5)."""
    return folds.make_folds(trials, n_folds, knob="zhang2021.folds")


# --------------------------------------------------------------------------- normalisation (Sec. 4.4)

class ScalarNormalizer:
    """Released normalisation: one mean and one std per feature type over all dimensions of all
    frames of the given trials, the std with n - 1 (sucv/ABAW2@71d40fb calculate_mean_and_std.py:
    27-33 flatten every trial's matrix and sum, :42-50 divide the squared deviations by
    lengths - 1). Names in `skip` pass through unchanged (the visual embeddings)."""

    def __init__(self, items, names, skip=("visual",)):
        self.mean, self.std, self.skip = {}, {}, tuple(skip)
        for name in names:
            if name in self.skip:
                continue
            n, s = 0, 0.0
            for item in items:
                a = np.asarray(item.features[name], dtype=np.float64)
                n, s = n + a.size, s + a.sum()
            mean = s / (n + 1e-10)                                  # :33
            ss = sum(float(((np.asarray(item.features[name], dtype=np.float64) - mean) ** 2).sum())
                     for item in items)
            self.mean[name], self.std[name] = mean, float(np.sqrt(ss / (n - 1)))   # :49-50

    def __call__(self, name: str, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float32)
        if name in self.skip:
            return a.copy()
        return ((a - self.mean[name]) / self.std[name]).astype(np.float32)


def paper_normalization(train, validation, test, names) -> dict:
    """Per-dimension statistics of the fold's training partition, for every split."""
    norm = Normalizer(train, names)
    return {"train": norm, "validation": norm, "test": norm}


def released_normalization(train, validation, test, names) -> dict:
    """A scalar mean / std per feature type and per partition, each split normalised with its own
    (sucv/ABAW2@71d40fb base/dataset.py:155-163 read mean_std_info[feature][fold][partition] with
    the dataset's own partition)."""
    return {split: ScalarNormalizer(items, names) if items else None
            for split, items in (("train", train), ("validation", validation), ("test", test))}


# method -> normalisation (ledger: normalisation_scope, normalisation_visual)
NORMALIZATION = {"paper": paper_normalization, "released": released_normalization}


# --------------------------------------------------------------------------- windows (Sec. 4.4)

class WindowDataset(Dataset):
    """Windows of all trials: {"x": {modality: (W, dim)}, "y": (W,), "mask": (W,)}, zero-padded.

    pad_in_loss False (method paper): padding is zeros after normalisation, label -5, masked.
    pad_in_loss True (method released): the raw features are zero-padded and then normalised, the
    padding's label is 0 and the mask keeps it (ledger: padding_in_loss)."""

    def __init__(self, trials, modalities, window, hop, normalize, emotion="valence", pad_in_loss=False):
        self.trials, self.modalities, self.window = trials, tuple(modalities), window
        self.normalize, self.column, self.pad_in_loss = normalize, EMOTIONS[emotion], pad_in_loss
        self.index = [(i, s) for i, t in enumerate(trials) for s in window_starts(len(t), window, hop)]

    def __len__(self):
        return len(self.index)

    def __getitem__(self, j):
        i, start = self.index[j]
        t = self.trials[i]
        n = min(self.window, len(t) - start)
        x = {}
        for m in self.modalities:
            a = np.zeros((self.window, t.features[m].shape[1]), np.float32)
            if self.pad_in_loss:
                a[:n] = t.features[m][start:start + n]
                a = self.normalize(m, a)
            else:
                a[:n] = self.normalize(m, t.features[m][start:start + n])
            x[m] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        y = np.full(self.window, 0.0 if self.pad_in_loss else -5.0, np.float32)
        mask = np.full(self.window, self.pad_in_loss, bool)
        y[:n], mask[:n] = t.label[start:start + n, self.column], t.mask[start:start + n]
        return {"x": x, "y": torch.from_numpy(y), "mask": torch.from_numpy(mask & (y != -5.0))}


# --------------------------------------------------------------------------- evaluation

def average_windows(n: int, starts, outputs) -> np.ndarray:
    """Per-frame mean of overlapping window outputs; outputs[i] covers frames starts[i]...(n)."""
    total, count = np.zeros(n, np.float64), np.zeros(n, np.int64)
    for s, out in zip(starts, outputs):
        length = min(len(out), n - s)
        total[s:s + length] += out[:length]
        count[s:s + length] += 1
    if (count == 0).any():
        raise ValueError(f"frames {np.flatnonzero(count == 0)[:5]}... are covered by no window")
    return (total / count).astype(np.float32)


@torch.no_grad()
def predict(model, trials, modalities, window, hop, normalize: Normalizer, batch_size=16) -> dict:
    """{video: (N,) per-frame prediction}, overlapping windows averaged per frame."""
    was_training = model.training
    model.eval()
    device = module_device(model)
    ds = WindowDataset(trials, modalities, window, hop, normalize)
    outputs = [[] for _ in trials]
    for lo in range(0, len(ds), batch_size):
        items = [ds[j] for j in range(lo, min(lo + batch_size, len(ds)))]
        x = {m: torch.stack([it["x"][m] for it in items]).to(device) for m in ds.modalities}
        out = model(x).float().cpu().numpy()
        for j, o in zip(range(lo, lo + len(items)), out):
            outputs[ds.index[j][0]].append(o)
    model.train(was_training)
    return {t.video: average_windows(len(t), window_starts(len(t), window, hop), outs)
            for t, outs in zip(trials, outputs)}

