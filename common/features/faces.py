"""The face-pixel cache: every cropped-aligned face JPEG decoded once, for every CNN that trains on frames.

    python -m common.features.faces            # fills data/features/faces (DVC stage face_pixels)

One uint8 array per face track, (n_frames, 3, S, S), rows aligned to the label frames like every
other feature (row i = frame i + 1), memory-mapped on read. Frames without a face image take the
face of the nearest frame that has one (Liu et al. 2023 Sec. 3.1, `visual.nearest_face_index`), so
a reader can index any label frame. S = `faces.size` in params.yaml (default 48 = the corpus's
crops; the paper profile's 112 px); JPEGs of another size are resized once, here.

Why a cache of pixels: decoding a 48 px JPEG costs about as much as a narrow CNN's forward pass
on it, and Vu et al. train CNNs for many epochs over the same frames while Liu et al. and Jeong
et al. run several frozen networks over all of them. At 48 px the default corpus is ~220 MB.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from common.data.affwild2 import SPLITS, AffWild2Error, read_split
from common.features.cache import FeatureCache, FeatureCacheError
from common.features.visual import TrackFaces, nearest_face_index
from common.files import atomic_save_npy, atomic_write_json
from common.params import ParamsError, load_params

EXTRACTOR = "faces"
VERSION = "1"


class FaceCache(FeatureCache):
    """Per-track uint8 face arrays (n_frames, 3, size, size); FeatureCache's checks, other dtype."""

    def __init__(self, root: str | Path, size: int):
        self.size = int(size)
        super().__init__(root, EXTRACTOR, VERSION, {"size": self.size}, 3 * self.size * self.size)

    def put(self, video: str, faces: np.ndarray) -> None:
        faces = np.asarray(faces)
        if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[1:] != (3, self.size, self.size):
            raise ValueError(f"{EXTRACTOR}: faces for {video} have shape {faces.shape} ({faces.dtype}), "
                             f"expected (n_frames, 3, {self.size}, {self.size}) uint8")
        self._manifest()
        atomic_save_npy(self.path(video), faces)

    def get(self, video: str, n_frames: int | None = None) -> np.ndarray:
        path, faces = self._open(video, "`python -m common.features.faces` (dvc stage face_pixels)")
        expected = (n_frames or (len(faces) if faces.ndim == 4 else "n_frames"), 3, self.size, self.size)
        if faces.dtype != np.uint8 or faces.shape != expected:
            raise FeatureCacheError(f"{path}: shape {faces.shape} ({faces.dtype}), expected {expected} uint8; "
                                    "delete it and re-run the face_pixels stage.")
        return faces


def face_cache(params: dict) -> FaceCache:
    """The cache `extract_faces` fills for the current `faces.size`; every reader of faces uses it."""
    return FaceCache(params["features"]["root"], params["faces"]["size"])


def track_faces(decoded: np.ndarray, has_face: np.ndarray, size: int) -> np.ndarray:
    """(n_frames, 3, size, size): face frames keep their pixels, the others the nearest face's.

    A track without a single face is mid-grey (there is nothing to borrow from) and is counted in
    the stage's summary.
    """
    if not has_face.any():
        return np.full((len(has_face), 3, size, size), 128, np.uint8)
    return decoded[nearest_face_index(has_face)]


def extract_faces(params: dict, workers: int = 2, progress: bool = True) -> dict:
    """Decode every face track of every split into the cache (skipping finished tracks); return the summary."""
    from tqdm import tqdm

    size = int(params["faces"]["size"])
    cache = face_cache(params)
    started = time.perf_counter()
    tracks = [video for split in SPLITS for video in read_split(params["data"]["root"], split)]
    todo = [t for t in tracks if not cache.has(t.video)]
    # Worker processes decode the next tracks while this one is written (visual.TrackFaces).
    loader = DataLoader(TrackFaces(todo, size), batch_size=None, num_workers=workers,
                        multiprocessing_context="fork" if workers > 0 else None)
    bar = tqdm(total=sum(t.n_frames for t in todo), desc="features: faces", unit="frame",
               disable=not progress, file=sys.stderr)
    for i, decoded in loader:
        track = todo[i]
        cache.put(track.video, track_faces(decoded.numpy(), track.has_image, size))
        bar.update(track.n_frames)
    bar.close()
    seconds = time.perf_counter() - started
    frames = sum(t.n_frames for t in todo)
    summary = {"extractor": EXTRACTOR, "version": VERSION, "size": size, "tracks": len(tracks),
               "computed": len(todo), "frames": frames, "face_frames": int(sum(t.has_image.sum() for t in todo)),
               "tracks_without_faces": sum(not t.has_image.any() for t in todo),
               "mebibytes": round(sum(cache.path(t.video).stat().st_size for t in tracks) / 2**20, 1),
               "seconds": round(seconds, 2), "frames_per_second": round(frames / max(seconds, 1e-9), 1),
               "workers": workers, "folder": str(cache.folder)}
    atomic_write_json(Path(params["features"]["root"]) / f"{EXTRACTOR}.json", summary)
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="decode every face track once into the face-pixel cache")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", choices=("smoke", "default", "paper"))
    ap.add_argument("--workers", type=int, default=2, help="JPEG-decoding processes")
    args = ap.parse_args(argv)
    try:
        print(json.dumps(extract_faces(load_params(args.params, args.profile), args.workers), indent=2))
    except (ParamsError, AffWild2Error, FeatureCacheError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
