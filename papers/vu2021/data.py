"""Vu et al. 2021 Sec. 3.1: the three training sets, their balancing, and the evaluation frames.

Training sets (Sec. 3.1), from the corpus's train split and still-image side sets:
    Mixed EXPR      Aff-Wild2 EXPR frames (classes 0-6; "Other" = 7 is dropped) + the ExpW-like stills
    Mixed VA        Aff-Wild2 VA frames + the AFEW-VA-like stills
    Affect EXPR_VA  the AffectNet-like stills, labelled for both tasks
Every sample carries both labels, the missing one as the invalid marker (EXPR -1, VA -5): the
teacher (Eq. 7) reads only its set's own task; the student with shared annotations (Eq. 10)
also reads the other label where an Aff-Wild2 frame has it.

Balancing (the protocol the paper takes from Deng et al. 2020, not detailed there): every
training sample is drawn with replacement with probability inversely proportional to the size of
its class (Mixed EXPR: the 7 classes of the merged set) or of its cell in a 20 x 20 valence-arousal
histogram (Mixed VA); the Affect EXPR_VA set by its class (method paper) or, as the released
sampler, by 1/cell + 1/class normalised by the maximum (method released; ledger: affectnet_sampler).
An epoch draws `samples_per_epoch` samples per set, redrawn every epoch (seeded), so one epoch
sees a balanced sample of the whole set rather than every (near-duplicate) 30 fps frame.

Pixels: Aff-Wild2 frames come from the face-pixel cache (common/features/faces.py, uint8
(n_frames, 3, S, S), memory-mapped, frames without a face already filled with the nearest face;
with faces.format jpeg a lazy array whose frames are decoded when indexed, i.e. in the training
DataLoader's `vu2021.cnn.num_workers` processes and in as many for evaluation);
stills are decoded once (common.features.face_frames.decode_faces) at the same size S.
Augmentation (Sec. 3.3), `VIEWS[method]`: method paper, random translation (a random `crop` x
`crop` window of the face padded by `pad` px; the centre window at evaluation) and random
horizontal flip; method released, the released transforms (ledger: crop_zoom): the face resized to
int(1.2 crop) px, then a random crop x crop window and a flip (train) or the centre window (eval).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from common.data.affwild2 import read_split
from common.data.sequences import window_starts
from common.data.still_images import read_still_set
from common.features.face_frames import decode_faces, normalise

EXPR_NA = -1
VA_NA = -5.0
N_EXPR = 7
STREAMS = ("expr", "va", "both")      # the training tasks T = 1 (EXPR), 2 (VA), 3 (EXPR_VA)


def face_size(params: dict) -> int:
    return params["faces"]["size"]


def face_cache(params: dict):
    from common.features import faces
    return faces.face_cache(params)


def seven_classes(expr: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """ABAW labels -> the paper's 7 classes: unannotated and Other (7) become -1 (Sec. 1)."""
    out = np.where(mask, expr, EXPR_NA).astype(np.int64)
    out[out >= N_EXPR] = EXPR_NA
    return out


def va_or_na(va: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask[:, None], va, VA_NA).astype(np.float32)


@dataclass
class Stream:
    """One training set: where each sample's pixels are, its two labels and its sampling weight."""
    name: str
    sources: list              # arrays (n, 3, S, S) uint8: one per video, one for the stills
    where: np.ndarray          # (N, 2) int: (source index, row)
    expr: np.ndarray           # (N,) int64, -1 = no EXPR label
    va: np.ndarray             # (N, 2) float32, -5 = no VA label
    weight: np.ndarray         # (N,) float64 balancing weights (sum 1)
    from_video: np.ndarray     # (N,) bool: an Aff-Wild2 frame (not a still)

    def __len__(self) -> int:
        return len(self.where)

    def image(self, i: int) -> torch.Tensor:
        s, row = self.where[i]
        return torch.from_numpy(np.array(self.sources[s][row]))   # a copy: the cache is read-only


def expr_balance_weights(expr: np.ndarray) -> np.ndarray:
    """1 / (size of the sample's class): every class is drawn equally often (Deng et al.)."""
    counts = np.bincount(expr, minlength=N_EXPR).astype(np.float64)
    w = 1.0 / counts[expr]
    return w / w.sum()


def va_cell_weights(va: np.ndarray, bins: int = 20) -> np.ndarray:
    """1 / (count of the sample's cell in a bins x bins valence-arousal histogram over the labels'
    own range), unnormalised."""
    hist, xe, ye = np.histogram2d(va[:, 0], va[:, 1], bins=[bins, bins])
    x = np.clip(np.digitize(va[:, 0], xe) - 1, 0, bins - 1)
    y = np.clip(np.digitize(va[:, 1], ye) - 1, 0, bins - 1)
    return 1.0 / hist[x, y]


def va_balance_weights(va: np.ndarray, bins: int = 20) -> np.ndarray:
    """1 / (count of the sample's cell in a bins x bins valence-arousal histogram), summing to 1."""
    w = va_cell_weights(va, bins)
    return w / w.sum()


def cell_and_class_weights(expr: np.ndarray, va: np.ndarray, bins: int = 20) -> np.ndarray:
    """The released Affect EXPR_VA sampler: 1/cell count + 1/class count, divided by the largest
    (ledger: affectnet_sampler), then made to sum to 1 for drawing (the same draws)."""
    counts = np.bincount(expr, minlength=N_EXPR).astype(np.float64)
    w = va_cell_weights(va, bins) + 1.0 / counts[expr]
    w = w / w.max()
    return w / w.sum()


# method -> the Affect EXPR_VA set's sampling weights (expr, va) (ledger: affectnet_sampler)
BOTH_WEIGHTS = {"paper": lambda expr, va: expr_balance_weights(expr), "released": cell_and_class_weights}


def _video_part(videos: list, cache, task: str, frame_step: int):
    """Sources and rows of the Aff-Wild2 frames annotated for `task` (every frame_step-th)."""
    sources, where, expr, va = [], [], [], []
    for v in videos:
        e, a = seven_classes(v.expr, v.expr_mask), va_or_na(v.va, v.va_mask)
        keep = (e != EXPR_NA) if task == "expr" else v.va_mask
        rows = np.flatnonzero(keep)[::frame_step]
        if len(rows) == 0:
            continue
        sources.append(cache.get(v.video))
        where.append(np.stack([np.full(len(rows), len(sources) - 1), rows], 1))
        expr.append(e[rows])
        va.append(a[rows])
    return sources, where, expr, va


def build_streams(params: dict, streams=STREAMS) -> dict[str, Stream]:
    """The training sets of Sec. 3.1 from the train split and the side sets."""
    vp = params["vu2021"]
    root, size = params["data"]["root"], face_size(params)
    videos = read_split(root, "train", tasks=("VA", "EXPR"))
    cache = face_cache(params) if {"expr", "va"} & set(streams) else None
    side = {"expr": "expw", "va": "afew_va", "both": "affectnet"}
    out = {}
    for name in streams:
        sources, where, expr, va = ([], [], [], []) if name == "both" else \
            _video_part(videos, cache, name, vp["frame_step"])
        n_video = sum(len(w) for w in where)
        still = read_still_set(root, side[name])
        sources.append(decode_faces(still.image_paths, size).numpy())
        n = len(still)
        where.append(np.stack([np.full(n, len(sources) - 1), np.arange(n)], 1))
        expr.append(still.expression if still.expression is not None else np.full(n, EXPR_NA, np.int64))
        va.append(still.va if still.va is not None else np.full((n, 2), VA_NA, np.float32))
        expr, va = np.concatenate(expr), np.concatenate(va)
        weight = va_balance_weights(va) if name == "va" else \
            BOTH_WEIGHTS[vp["method"]](expr, va) if name == "both" else expr_balance_weights(expr)
        from_video = np.arange(len(expr)) < n_video
        out[name] = Stream(name, sources, np.concatenate(where), expr, va, weight, from_video)
    return out


def augment(image: torch.Tensor, crop: int, pad: int, train: bool, downsample: int = 1) -> torch.Tensor:
    """Sec. 3.3: random translation + horizontal flip (train); the centre window otherwise.

    The face (3, S, S) is padded by `pad` px (edge pixels repeated), then a crop x crop window
    is cut: at a random offset (a translation of up to +-(S + 2 pad - crop) / 2 px) when
    training, in the centre otherwise.
    """
    if pad:
        image = torch.nn.functional.pad(image[None].float(), (pad,) * 4, mode="replicate")[0]
    room = image.shape[-1] - crop
    if train:
        # torch's global generator: fit() seeds and checkpoints it.
        top, left = (int(v) for v in torch.randint(0, room + 1, (2,)))
    else:
        top = left = room // 2
    image = image[..., top:top + crop, left:left + crop]
    if train and torch.rand(()) < 0.5:
        image = image.flip(-1)
    return _shrink(normalise(image), downsample)


def zoom_size(crop: int) -> int:
    """The released transforms' resize: int(1.2 x the input size) px, 134 for 112 (ledger: crop_zoom)."""
    return int(crop * 1.2)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8-valued (..., 3, S, S) -> (..., 3, size, size) bilinear with antialiasing, rounded to
    whole levels as PIL's Resize returns an 8-bit image (torchvision's tensor resize does the same)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images.float()
    flat = images.float().reshape(-1, *images.shape[-3:])
    out = torch.nn.functional.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False,
                                          antialias=True)
    return out.round().clamp(0, 255).reshape(*images.shape[:-2], size, size)


def resize_crop(image: torch.Tensor, crop: int, pad: int, train: bool, downsample: int = 1) -> torch.Tensor:
    """The released transforms (method released; ledger: crop_zoom): Resize(int(1.2 crop)), then
    RandomCrop(crop) + RandomHorizontalFlip (train) or CenterCrop(crop) (eval). `pad` is not used.

    The random draws are torchvision's, in its order (crop top, crop left, flip), from torch's global
    generator, so a seeded run cuts the windows the released transforms cut.
    """
    image = _resize(image, zoom_size(crop))
    room = image.shape[-1] - crop
    if train:
        top = int(torch.randint(0, room + 1, size=(1,)).item())
        left = int(torch.randint(0, room + 1, size=(1,)).item())
    else:       # torchvision CenterCrop: int(round((S - crop) / 2))
        top = left = int(round(room / 2.0))
    image = image[..., top:top + crop, left:left + crop]
    if train and torch.rand(1) < 0.5:
        image = image.flip(-1)
    return _shrink(normalise(image), downsample)


def resize_centre_batch(images: torch.Tensor, crop: int, pad: int, downsample: int = 1) -> torch.Tensor:
    """The evaluation input of a batch under method released: resize, centre window, normalise, shrink."""
    return resize_crop(images, crop, pad, False, downsample)


def _shrink(images: torch.Tensor, downsample: int) -> torch.Tensor:
    """Average-pool by `downsample` (1 = as is): the default profile's CPU budget (see params.yaml)."""
    return torch.nn.functional.avg_pool2d(images, downsample) if downsample > 1 else images


class TaskStreams(Dataset):
    """Item i = one balanced draw from each training set: {set: {"image", "expr", "va"}}.

    Sec. 3.2 assumes "an equal number N of instances" of every set in a batch: a batch of B
    items holds B samples of each set. `set_epoch(e)` redraws the samples (seeded by seed, e).
    """

    def __init__(self, streams: dict[str, Stream], samples_per_epoch: int, crop: int, pad: int,
                 seed: int, downsample: int = 1, method: str = "paper"):
        self.streams, self.n, self.crop, self.pad, self.seed = streams, samples_per_epoch, crop, pad, seed
        self.downsample, self.view = downsample, VIEWS[method]
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, epoch])
        self.draws = {k: rng.choice(len(s), self.n, replace=True, p=s.weight)
                      for k, s in self.streams.items()}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        out = {}
        for k, s in self.streams.items():
            j = self.draws[k][i]
            out[k] = {"image": self.view(s.image(j), self.crop, self.pad, True, self.downsample),
                      "expr": torch.tensor(s.expr[j]), "va": torch.from_numpy(s.va[j])}
        return out


@dataclass
class EvalFrames:
    """The annotated frames of one split used for evaluation (every `stride`-th)."""
    split: str
    sources: list
    where: np.ndarray       # (N, 2) (source, row)
    video: np.ndarray       # (N,) video index (for per-video statistics)
    expr: np.ndarray        # (N,) -1 = not scored for EXPR
    va: np.ndarray          # (N, 2) -5 = not scored for VA

    def __len__(self) -> int:
        return len(self.where)


def eval_frames(params: dict, split: str, stride: int, cache=None) -> EvalFrames:
    cache = cache or face_cache(params)
    videos = read_split(params["data"]["root"], split, tasks=("VA", "EXPR"))
    sources, where, vid, expr, va = [], [], [], [], []
    for v in videos:
        e, a = seven_classes(v.expr, v.expr_mask), va_or_na(v.va, v.va_mask)
        rows = np.flatnonzero((e != EXPR_NA) | v.va_mask)[::stride]
        if len(rows) == 0:
            continue
        sources.append(cache.get(v.video))
        where.append(np.stack([np.full(len(rows), len(sources) - 1), rows], 1))
        vid.append(np.full(len(rows), len(sources) - 1))
        expr.append(e[rows])
        va.append(a[rows])
    return EvalFrames(split, sources, np.concatenate(where), np.concatenate(vid),
                      np.concatenate(expr), np.concatenate(va))


class EvalBatches(Dataset):
    """Item k = the k-th centre-window, normalised image batch of the evaluation frames."""

    def __init__(self, frames: EvalFrames, crop: int, pad: int, batch_size: int, downsample: int = 1,
                 method: str = "paper"):
        self.frames, self.crop, self.pad, self.batch_size, self.downsample = frames, crop, pad, batch_size, downsample
        self.view = EVAL_VIEWS[method]

    def __len__(self) -> int:
        return -(-len(self.frames) // self.batch_size)

    def __getitem__(self, k):
        rows = self.frames.where[k * self.batch_size:(k + 1) * self.batch_size]
        images = torch.stack([torch.from_numpy(np.array(self.frames.sources[s][r])) for s, r in rows])
        return self.view(images, self.crop, self.pad, self.downsample)


def eval_batches(frames: EvalFrames, crop: int, pad: int, batch_size: int, downsample: int = 1,
                 workers: int = 0, method: str = "paper"):
    """Centre-window, normalised image batches of the evaluation frames, in order; with `workers`
    > 0 they are decoded (jpeg face cache) and cut in that many DataLoader processes, same batches."""
    batches = EvalBatches(frames, crop, pad, batch_size, downsample, method)
    if workers <= 0:
        yield from (batches[k] for k in range(len(batches)))
        return
    yield from DataLoader(batches, batch_size=None, num_workers=workers, pin_memory=torch.cuda.is_available())


def augment_batch(images: torch.Tensor, crop: int, pad: int, downsample: int = 1) -> torch.Tensor:
    """The evaluation input of a batch: pad, centre window, normalise, shrink."""
    if pad:
        images = torch.nn.functional.pad(images.float(), (pad,) * 4, mode="replicate")
    room = images.shape[-1] - crop
    top = room // 2
    return _shrink(normalise(images[..., top:top + crop, top:top + crop]), downsample)


# method -> the training view of one face and the evaluation view of a batch (ledger: crop_zoom)
VIEWS = {"paper": augment, "released": resize_crop}
EVAL_VIEWS = {"paper": augment_batch, "released": resize_centre_batch}


# ------------------------------------------------------------------------------ the GRU stage (Sec. 3.4)

class Track:
    """One video's cached features (as is, mirrored) and its labels in the paper's 7 classes."""

    def __init__(self, v, caches: dict):
        self.video, self.n = v.video, v.n_frames
        self.features = {flip: c.get(v.video, v.n_frames) for flip, c in caches.items()}
        self.expr = seven_classes(v.expr, v.expr_mask)
        self.va = va_or_na(v.va, v.va_mask)

    def window(self, start: int, length: int, flip: bool = False):
        sl = slice(start, start + length)
        x = torch.from_numpy(np.asarray(self.features[flip][sl], np.float32))
        expr, va = torch.from_numpy(self.expr[sl]), torch.from_numpy(self.va[sl])
        if len(x) < length:                      # a video shorter than one sequence: pad, unlabelled
            pad = length - len(x)
            x = torch.cat([x, x[-1:].expand(pad, -1)])
            expr = torch.cat([expr, torch.full((pad,), EXPR_NA)])
            va = torch.cat([va, torch.full((pad, 2), VA_NA)])
        return x, expr, va


class SequenceStreams(torch.utils.data.Dataset):
    """Item i = one 32-frame sequence from each set: {set: {"x": (T, D), "expr", "va"}}.

    The GRU stage uses the Aff-Wild2 sets only, as the released code (ledger: gru_training_sets), its
    CNN-RNN loaders being Mixed_EXPR and Mixed_VA over Aff-Wild2 videos: stills make no
    sequences. Training windows overlap by half (hop T/2, the released loaders; ledger:
    gru_windows); each epoch draws `samples_per_epoch` windows of each set uniformly (seeded by
    seed, epoch); each sequence is mirrored as a whole with probability 1/2.
    """

    def __init__(self, tracks: list, length: int, seed: int, samples_per_epoch: int):
        self.length, self.seed = length, seed
        self.items = {}
        for name, task in (("expr", "expr"), ("va", "va")):
            labelled = [t for t in tracks if ((t.expr != EXPR_NA) if task == "expr" else (t.va[:, 0] != VA_NA)).any()]
            self.items[name] = [(t, s) for t in labelled for s in window_starts(t.n, length, length // 2)]
        self.n = samples_per_epoch
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, epoch])
        self.draws = {k: rng.integers(0, len(v), self.n) for k, v in self.items.items()}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        out = {}
        for name, items in self.items.items():
            track, start = items[self.draws[name][i]]
            x, expr, va = track.window(start, self.length, flip=bool(torch.rand(()) < 0.5))
            out[name] = {"x": x, "expr": expr, "va": va}
        return out
