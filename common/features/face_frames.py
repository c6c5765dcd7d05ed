"""The face-image code every face network shares: decode, normalise and crop faces, and run a frozen
encoder over every face frame of a track.

Zhang's input pipeline (Sec. 4.2 / 4.3), which the other face networks follow: faces resized to the
network's `input_size`, a random `crop` plus a horizontal flip while training (random_crop_flip), the
centre crop otherwise, pixel values scaled to [0, 1] and normalised with mean = std = 0.5 (so to
[-1, 1]). Frames without a face take the nearest face frame's feature (Liu et al. 2023 Sec. 3.1).

Used by the frame encoder (visual.py), the face-pixel cache (faces.py), Jeong's FER network (fer.py),
Liu's face networks (face_networks.py, fau.py, mae.py) and Vu's CNNs; it imports none of them.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from common.data.affwild2 import AffWild2Error
from common.device import module_device


# --------------------------------------------------------------------------------------------
# Images: decode once, crop and normalise as Zhang's code does
# --------------------------------------------------------------------------------------------

def load_face(path: str, size: int) -> np.ndarray:
    """One face JPEG as (3, size, size) uint8, resized (bilinear) when it is not size x size."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im).transpose(2, 0, 1).copy()
    except (OSError, SyntaxError, ValueError) as e:     # PIL's errors for truncated / non-image files
        raise AffWild2Error(f"{path}: cannot decode this face image ({type(e).__name__}: {e}); re-extract "
                            f"or replace it, or delete it (a frame without a JPEG counts as no face)") from e


def decode_faces(paths: list, size: int) -> torch.Tensor:
    """(N, 3, size, size) uint8: all faces decoded once (48 px faces are 7 KB each in memory)."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, path in enumerate(paths):
        out[i] = torch.from_numpy(load_face(path, size))
    return out


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float in [-1, 1]: ToTensor then Normalize(mean=0.5, std=0.5)."""
    return (images.float() / 255.0 - 0.5) / 0.5


def centre_crop(images: torch.Tensor, crop: int) -> torch.Tensor:
    """The evaluation input (Zhang Sec. 4.3: "only the center crop ... for validation")."""
    size = images.shape[-1]
    top = (size - crop) // 2
    return images[..., top:top + crop, top:top + crop]


# --------------------------------------------------------------------------------------------
# A frozen encoder over every face frame of a track
# --------------------------------------------------------------------------------------------

def nearest_face_index(has_face: np.ndarray) -> np.ndarray:
    """For every frame, the index (into the face frames only) of the nearest frame with a face.

    Liu et al. 2023 Sec. 3.1: "for such frames, we simply use their nearest frames with valid
    faces to represent them". A tie (a gap of even length) goes to the earlier frame.
    E.g. has_face [F, T, F, F, T, F] -> face frames 1, 4 -> [0, 0, 0, 1, 1, 1].
    """
    faces = np.flatnonzero(has_face)
    if len(faces) == 0:
        raise ValueError("no frame has a face")
    t = np.arange(len(has_face))
    after = np.clip(np.searchsorted(faces, t), 0, len(faces) - 1)     # first face frame >= t
    before = np.clip(after - 1, 0, len(faces) - 1)                    # the one before it
    take_before = np.abs(t - faces[before]) <= np.abs(faces[after] - t)
    return np.where(take_before, before, after)


class TrackFaces(Dataset):
    """Item i = every face of track i, decoded to (n_faces, 3, size, size) uint8.

    Run through a DataLoader with worker processes, the next tracks are decoded while the
    encoder works on the current one.
    """

    def __init__(self, tracks: list, size: int):
        self.tracks, self.size = tracks, size

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, i):
        paths = [p for p in self.tracks[i].image_paths if p is not None]
        return i, decode_faces(paths, self.size)


def frozen_for_inference(encoder: nn.Module) -> nn.Module:
    """The eval-mode encoder compiled for CPU inference: the same function, ~1.8x the frames/s.

    TorchScript freezing folds every BatchNorm into the convolution before it and lets oneDNN
    fuse convolution + ReLU (+ residual add); outputs match the eager model to ~1e-6, far below
    the float16 rounding of the cache. Measured on this project's 2-core machine (1 thread,
    width-16 ResNet, 40 px): 1190 -> 2180 frames/s.
    """
    encoder.eval()             # frozen: BatchNorm uses its running statistics, dropout is off
    if torch.cuda.is_available():
        return encoder.cuda()  # on a GPU (paper profile, real corpus) the plain model is fast
    with torch.no_grad():
        return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(encoder)))


@torch.no_grad()
def encode_faces(encoder: nn.Module, faces: torch.Tensor, crop: int, batch_size: int,
                 dim: int) -> np.ndarray:
    """(N, 3, S, S) uint8 faces -> (N, dim) float32 embeddings (centre crop, batches of batch_size)."""
    device = module_device(encoder)            # the encoder's own: an unmoved one stays on the CPU
    out = [encoder(normalise(centre_crop(chunk.to(device), crop))).float().cpu()
           for chunk in faces.split(batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, dim), np.float32)


def track_features(face_features: np.ndarray, has_face: np.ndarray, dim: int) -> np.ndarray:
    """(n_frames, dim): face frames keep their feature, the others take the nearest face's one.

    A track without a single face gets zeros (there is nothing to borrow from).
    """
    if not has_face.any():
        return np.zeros((len(has_face), dim), np.float32)
    return face_features[nearest_face_index(has_face)]


def random_crop_flip(images: torch.Tensor, crop: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random crop position and a horizontal flip for half of the batch (the training input).

    Runs on the batch where it is (augmentation on the device): a slice and one
    torch.where over the whole batch. The random numbers come from `generator`, or torch's
    global CPU generator, which fit() seeds and checkpoints: they are drawn on the CPU (the same
    numbers on any device, so a GPU run augments as the CPU run does) and only the flip mask,
    B booleans, travels to the batch's device.
    """
    size = images.shape[-1]
    top, left = (int(v) for v in torch.randint(0, size - crop + 1, (2,), generator=generator))
    out = images[..., top:top + crop, left:left + crop]
    flip = (torch.rand(len(out), generator=generator) < 0.5).to(images.device, non_blocking=True)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)
