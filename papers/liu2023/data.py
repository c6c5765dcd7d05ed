"""Liu, Sun et al. 2023: videos with their bank features, segments, normalisation, evaluation.

* Pre-processing (Sec. 3.1): frames with no face already carry the nearest face frame's
  feature in the cache (common/features/face_frames.py); frames whose VA label is -5 are discarded
  before segmenting (`drop_invalid`, the paper), so a segment joins the frames on both sides
  of an unannotated gap. With drop_invalid false they stay in place and are masked instead.
* Segments (Sec. 3.3): each video is cut into consecutive non-overlapping segments of l = 150
  frames (stride = l); the last one is padded by repeating the last frame, as the team's code
  does (ledger: padding_in_loss). `method: paper` masks the padding out of the loss;
  `method: released` repeats the last label too and keeps the padded frames in the loss, as the
  code's SequenceData (ledger: padding_in_loss). Both remove it before the metric.
* Training items are chunks of `chunk_segments` consecutive segments of one video, so a
  recurrent encoder carries its state across segments inside a chunk (Eqs. 3-4); at inference
  each video is one sequence and the state runs through all its segments. `method: released`
  trains on single segments, as the code's SequenceData (ledger: segments_per_item).
* `method: paper` z-scores the features per dimension with the statistics of the training videos
  of the run (`common.data.sequences.Normalizer`; the paper is silent); `method: released` feeds
  them as they are, as the code (ledger: normalisation).
* Metric (ABAW): one CCC over all valid frames of a split, videos concatenated
  (`common.data.sequences.split_ccc`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from common.data.affwild2 import SPLITS, read_split
from common.data.sequences import EMOTIONS, Normalizer
from common.device import module_device
from common.features import bank

TASKS = EMOTIONS                 # ("valence", "arousal"): the two outputs of every model


@dataclass
class Clip:
    video: str
    subject: str
    split: str                 # official split: train / validation / test
    label: np.ndarray          # (N, 2) valence, arousal; -5 where unannotated (drop_invalid false)
    mask: np.ndarray           # (N,) bool
    features: dict             # bank name -> (N, dim) float32

    def __len__(self):
        return len(self.label)


def load_clips(params: dict, names, drop_invalid: bool = True, splits=SPLITS) -> list[Clip]:
    """Every VA-annotated face track with the bank features `names`, read once into memory."""
    caches = {n: bank.open_cache(params, n) for n in names}
    clips = []
    for split in splits:
        for v in read_split(params["data"]["root"], split, tasks=("VA",)):
            if "VA" not in v.tasks:
                continue
            keep = np.flatnonzero(v.va_mask) if drop_invalid else np.arange(v.n_frames)
            if len(keep) == 0:
                continue
            feats = {n: finite(c.get(v.video, v.n_frames)[keep]) for n, c in caches.items()}
            clips.append(Clip(v.video, v.subject, split, v.va[keep], v.va_mask[keep], feats))
    return clips


def finite(a) -> np.ndarray:
    """float32 copy with float16 overflow (+-inf in the cache: some ComParE energy LLDs exceed
    65504) clipped back to the largest float16, so the z-score stays finite."""
    top = float(np.finfo(np.float16).max)
    return np.nan_to_num(np.asarray(a, np.float32), nan=0.0, posinf=top, neginf=-top)


class Unnormalised:
    """Normalizer's interface without the z-score (method: released; ledger: normalisation)."""

    def __init__(self, items, names):
        pass

    def __call__(self, name: str, a: np.ndarray) -> np.ndarray:
        return np.asarray(a, dtype=np.float32)

    def concat(self, item, names) -> np.ndarray:
        return np.concatenate([self(n, item.features[n]) for n in names], axis=-1)


NORMALISERS = {True: Normalizer, False: Unnormalised}        # Method.normalise -> the class


def inputs(norm: Normalizer, clip: Clip, visual, audio) -> dict:
    """{"visual": (N, Dv), "audio": (N, Da)}: a model config's feature groups, each z-scored feature
    side by side."""
    return {group: norm.concat(clip, names) for group, names in (("visual", visual), ("audio", audio)) if names}


def pad_to_segments(a: np.ndarray, segment: int, fill=None) -> np.ndarray:
    """Pad the frame axis to a multiple of `segment`, repeating the last row (or with `fill`)."""
    n = len(a)
    total = max(1, -(-n // segment)) * segment
    if total == n:
        return a
    tail = np.repeat(a[-1:], total - n, 0) if fill is None else np.full((total - n,) + a.shape[1:], fill, a.dtype)
    return np.concatenate([a, tail], 0)


class ChunkDataset(Dataset):
    """Chunks of `chunk_segments` consecutive segments: {"x": {group: (L, D)}, "y": (L, 2), "mask": (L,)}."""

    def __init__(self, clips, norm: Normalizer, visual, audio, segment: int, chunk_segments: int,
                 pad_in_loss: bool = False):
        self.items = []
        length = segment * chunk_segments
        # paper: the padded frames get label -5 and mask False; released: the last frame's label and
        # mask repeated, as the code pads its frame ids (core/data/SequenceData.py:137-146).
        label_fill, mask_fill = (None, None) if pad_in_loss else (-5.0, False)
        for clip in clips:
            x = {g: pad_to_segments(a, segment) for g, a in inputs(norm, clip, visual, audio).items()}
            y = pad_to_segments(clip.label.astype(np.float32), segment, fill=label_fill)
            mask = pad_to_segments(clip.mask & (clip.label[:, 0] != -5), segment, fill=mask_fill)
            for s in range(0, len(y), length):
                e = s + length
                if e > len(y):                   # the video's last chunk: shorter, pad to full
                    e = len(y)
                self.items.append(({g: a[s:e] for g, a in x.items()}, y[s:e], mask[s:e]))
        self.length = length

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        x, y, mask = self.items[i]
        pad = self.length - len(y)
        if pad:                                  # whole padding segments, masked
            x = {g: np.concatenate([a, np.repeat(a[-1:], pad, 0)]) for g, a in x.items()}
            y = np.concatenate([y, np.full((pad, 2), -5.0, np.float32)])
            mask = np.concatenate([mask, np.zeros(pad, bool)])
        return {"x": {g: torch.from_numpy(np.ascontiguousarray(a)) for g, a in x.items()},
                "y": torch.from_numpy(y), "mask": torch.from_numpy(mask)}


@torch.no_grad()
def predict(model, clips, norm: Normalizer, visual, audio, segment: int) -> dict:
    """{video: (N, 2) prediction}: each video one sequence, recurrent state through all segments."""
    was_training = model.training
    model.eval()
    device = module_device(model)              # fit() puts the model on the GPU when there is one
    out = {}
    for clip in clips:
        x = {g: torch.from_numpy(pad_to_segments(a, segment))[None].to(device)
             for g, a in inputs(norm, clip, visual, audio).items()}
        out[clip.video] = model(x)[0, :len(clip)].float().cpu().numpy()
    model.train(was_training)
    return out

