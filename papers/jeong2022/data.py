"""Jeong et al. 2022 Sec. 3: samples built from the cached FER and SoundNet features.

A sample is one label frame t of one face track:
    X_img: the FER vectors of N_img = 6 frames taken with stride S = 10 from the past T_img = 2 s,
           i.e. frames t - 50, t - 40, ..., t (frames before the first one repeat the first)
    X_aud: the SoundNet vector of the audio before t (common/features/soundnet.py)
Every track's rows are concatenated into one table (row = frame), so a batch is a fancy index.

Task sets (Sec. 3 / Algorithms 1-2): the training frames annotated for VA, for EXPR, for AU
(each from its own annotation files) and the rows of the MTL annotation file. Evaluation "STL"
uses each task's own annotations of a split, "MTL" the MTL file of that split (Sec. 5.1).
The features enter as the backbones give them, as in the paper; `zscore: true` standardises them with
the training frames' statistics instead (on the embedded corpus that let the 1000 audio dimensions
swamp the 64-unit LSTM output: I+A MTL 1.14 vs 1.32 raw).

`method: released` adds the released code's row filter (`RELEASED_ROWS`, ledger: row_filter) to the
training and validation sets (the test split keeps every frame, as the released submission predicts
every one) and its stream order (`STREAM_ORDER`, ledger: stream_order).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.data.affwild2 import SPLITS, read_mtl, read_split
from common.features import fer, soundnet

TASKS = ("va", "expr", "au")
STREAMS = ("va", "expr", "au", "mtl")      # Algorithm 1-2 order: T = [va, expr, au, mtl]
# The released loader yields (MTL, VA, EXPR, AU) and the trainer steps in that order
# (EuiseokJeong/2022_ABAW_imlab@bb0513c:dataloader.py:52, trainer.py:136) (ledger: stream_order).
STREAM_ORDER = {"paper": STREAMS, "released": ("mtl", "va", "expr", "au")}
AUDIO_SR, AUDIO_SECONDS = 22050, 10        # extract_audio.py:24 audio_crop(sec=10, sample_rate=22050)


@dataclass
class Corpus:
    img: np.ndarray                 # (N, 512) float32, every frame of every track
    aud: np.ndarray                 # (N, 1000) float32
    va: np.ndarray                  # (N, 2) task annotations, -5 invalid
    expr: np.ndarray                # (N,) -1 invalid
    au: np.ndarray                  # (N, 12) -1 invalid
    track_start: np.ndarray         # (N,) first row of each row's track
    sets: dict                      # (split, set name) -> {"rows", "va", "expr", "au"}
    offsets: np.ndarray             # (N_img,) frame offsets, e.g. [-50, -40, ..., 0]
    face: np.ndarray | None = None  # (N,) bool: a face was found in the frame


def frame_offsets(t_img: float, fps: float, stride: int, n_img: int) -> np.ndarray:
    """Offsets of the N_img past frames: N_img frames at stride S ending at t, within T_img s."""
    if (n_img - 1) * stride > t_img * fps:
        raise ValueError(f"jeong2022: n_img = {n_img} frames at stride {stride} span more than "
                         f"t_img = {t_img} s at {fps} fps; lower n_img or stride")
    return -stride * np.arange(n_img - 1, -1, -1)


def _mtl_set(params: dict, split: str, index: dict) -> dict | None:
    try:
        mtl = read_mtl(params["data"]["root"], split, allow_missing_images=True)
    except Exception:                       # the real corpus has no test MTL labels
        return None
    keep = np.array([v in index for v in mtl["video"]], bool)
    rows = np.array([index[v] + f - 1 for v, f in zip(mtl["video"][keep], mtl["frame"][keep])], np.int64)
    return {"rows": rows, "va": mtl["va"][keep], "expr": mtl["expr"][keep], "au": mtl["au"][keep]}


def keep_all(task: str, labels: dict, frame: np.ndarray, n_frames: np.ndarray, face_at, audio_samples: np.ndarray,
             seconds: float = AUDIO_SECONDS) -> np.ndarray:
    """method: paper: every labelled frame is a sample (frames before a track's start or without a face
    take the nearest earlier frame's features, data.inputs); the paper states no row filter."""
    return np.ones(len(frame), bool)


def released_rows(task: str, labels: dict, frame: np.ndarray, n_frames: np.ndarray, face_at, audio_samples: np.ndarray,
                  seconds: float = AUDIO_SECONDS) -> np.ndarray:
    """The rows the released pipeline keeps (ledger: row_filter), from its index arithmetic:

    task "va" / "expr" / "au": label line k of a per-task file (k = 0-based frame `frame`) is kept when
      * its text holds no "-1" or "-5" (dataloader.py:123, a substring test: a VA value of -1.000 counts
        too, as does any AU of -1);
      * the merged image feature k exists: 1-based frames k-50, k-40, ..., k all have a face
        (extract_audio.py:119-124 with minus_num=0, extract_audio.py:204), i.e. 0-based k-51, ..., k-1;
      * the audio feature k exists: the track's audio lasts >= 10 s (extract_audio.py:37) and
        k * floor(samples / frames) >= 10 s * 22050 (extract_audio.py:40-42);
    task "mtl": the MTL row of 1-based image n = frame + 1 is kept when no label field equals "-1" or "-5"
      (dataloader.py:106, list membership: -1.000 stays), 1-based frames n-50, ..., n all have a face,
      and audio file n exists: n * floor(samples / frames) >= 10 s * 22050 and n <= frames - 1.
    labels: {task: values} of the rows; frame, n_frames, audio_samples: per row; face_at(offsets) ->
    (rows, len(offsets)) bool, faces at frame + offset (False before the track's start). seconds: the
    audio history a row needs, audio_crop's sec = T_aud = 10 (load_corpus passes jeong2022.t_aud, which
    the smoke profile shortens for its 12-18 s videos).
    """
    need = int(seconds * AUDIO_SR)
    per_frame = audio_samples // np.maximum(n_frames, 1)
    if task == "mtl":
        marked = ((labels["va"] == -5).any(1) | (labels["expr"] == -1) | (labels["au"] == -1).any(1))
        idx, window = frame + 1, np.arange(-50, 1, 10)
        audio = (audio_samples >= need) & (idx * per_frame >= need) & (idx <= n_frames - 1)
    else:
        marked = {"va": lambda y: (y <= -1).any(1), "expr": lambda y: y == -1,
                  "au": lambda y: (y == -1).any(1)}[task](labels[task])
        idx, window = frame, np.arange(-51, 0, 10)
        audio = (audio_samples >= need) & (idx * per_frame >= need)
    return ~marked & face_at(window).all(1) & audio


RELEASED_ROWS = {"paper": keep_all, "released": released_rows}


def load_corpus(params: dict) -> Corpus:
    jp = params["jeong2022"]
    img_cache, _ = fer.feature_caches(params)
    aud_cache = soundnet.feature_cache(params)
    imgs, auds, vas, exprs, aus, starts, splits, faces, audio = [], [], [], [], [], [], [], [], []
    index, n = {}, 0
    for split in SPLITS:
        for t in read_split(params["data"]["root"], split):
            index[t.video] = n
            imgs.append(np.asarray(img_cache.get(t.video, t.n_frames), np.float32))
            auds.append(np.asarray(aud_cache.get(t.video, t.n_frames), np.float32))
            vas.append(np.where(t.va_mask[:, None], t.va, -5.0).astype(np.float32))
            exprs.append(np.where(t.expr_mask, t.expr, -1))
            aus.append(np.where(t.au_mask, t.au, -1.0).astype(np.float32))
            starts.append(np.full(t.n_frames, n, np.int64))
            faces.append(t.has_image)
            fps = float(t.fps or jp["fps"])      # the audio lasts as long as the video (its length in samples)
            audio.append(np.full(t.n_frames, int(round(t.n_frames / fps * AUDIO_SR)), np.int64))
            splits.append(np.full(t.n_frames, SPLITS.index(split)))
            n += t.n_frames
    img, aud = np.concatenate(imgs), np.concatenate(auds)
    va, expr, au = np.concatenate(vas), np.concatenate(exprs), np.concatenate(aus)
    split_of = np.concatenate(splits)
    face, audio_samples, track_start = np.concatenate(faces), np.concatenate(audio), np.concatenate(starts)
    track_len = np.bincount(track_start, minlength=len(track_start))[track_start]
    keep_rows = RELEASED_ROWS[jp.get("method", "paper")]

    def filtered(split: str, task: str, labelled: dict) -> dict:
        if split == "test":
            # The released submission predicts every test frame: one without features takes the
            # nearest frame that has both, a video without any gets zeros (submit.py:43-52); every
            # test frame stays, with the paper method's inputs (ledger: test_predictions).
            return labelled
        rows = labelled["rows"]
        frame = rows - track_start[rows]

        def face_at(offsets):
            at = frame[:, None] + offsets[None, :]
            return (at >= 0) & face[np.clip(rows[:, None] + offsets[None, :], 0, len(face) - 1)]
        keep = keep_rows(task, labelled, frame, track_len[rows], face_at, audio_samples[rows], jp["t_aud"])
        return {k: v[keep] for k, v in labelled.items()}
    train = split_of == 0
    if params["jeong2022"]["zscore"]:
        for x in (img, aud):                                # z-score with training statistics
            mean, std = x[train].mean(0), x[train].std(0) + 1e-6
            x -= mean
            x /= std
    sets = {}
    for s, split in enumerate(SPLITS):
        in_split = split_of == s
        for task, valid in (("va", (va != -5).all(1)), ("expr", expr != -1), ("au", (au != -1).any(1))):
            rows = np.flatnonzero(in_split & valid)
            sets[(split, task)] = filtered(split, task,
                                           {"rows": rows, "va": va[rows], "expr": expr[rows], "au": au[rows]})
        mtl = _mtl_set(params, split, index)
        if mtl is not None:
            sets[(split, "mtl")] = filtered(split, "mtl", mtl)
    fps = float(params["corpus"]["fps"]) if params["data"]["source"] == "synthetic" else float(jp["fps"])
    offsets = frame_offsets(float(jp["t_img"]), fps, jp["stride"], jp["n_img"])
    return Corpus(img, aud, va, expr, au, track_start, sets, offsets, face)


def inputs(corpus: Corpus, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N_img, 512) past FER vectors and (B, 1000) SoundNet vectors of the given rows."""
    past = rows[:, None] + corpus.offsets[None, :]
    past = np.maximum(past, corpus.track_start[rows][:, None])     # before the track: its first frame
    return torch.from_numpy(corpus.img[past]), torch.from_numpy(corpus.aud[rows])


def batch(corpus: Corpus, labelled: dict, pick: np.ndarray) -> dict:
    """A training batch of a task set: inputs and labels of its entries `pick`."""
    img, aud = inputs(corpus, labelled["rows"][pick])
    return {"img": img, "aud": aud, "va": torch.from_numpy(labelled["va"][pick]),
            "expr": torch.from_numpy(labelled["expr"][pick]), "au": torch.from_numpy(labelled["au"][pick])}
