"""The feature cache: every extractor runs once per video, training reads arrays only.

One folder per extractor (a DVC output of its feature stage), one subfolder per parameter set:
    <cache_root>/<extractor>/<8 hex of its params>/manifest.json
    <cache_root>/<extractor>/<8 hex of its params>/<video>.npy      (n_frames, dim) float16
Rows are aligned to the video's label frames (row i = frame i + 1), so a feature array and a
label array index the same frames. Reads are memory-mapped, so a training loop over the whole
corpus keeps only what it touches in memory.

A folder written by another version of an extractor is refused with the fix spelled out, and
every file is written to a temporary name and renamed, so a killed run never leaves a
half-written array that a later run would trust.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from common.files import atomic_save_npy, atomic_write_json


class FeatureCacheError(RuntimeError):
    """The cache does not match what the caller expects; the message says how to fix it."""


def params_key(params: dict) -> str:
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def nearest_frame_index(n_frames: int, fps: float, feature_rate: float, n_features: int) -> np.ndarray:
    """Zhang et al. Sec. 4.2: pair label frame i (time i / fps) with the feature nearest in time.

    E.g. 30 Hz labels 0, 1, 2, 3 pair with 100 Hz features 0, 3, 7, 10. Frames past the last
    feature repeat it (the tail is repeat-padded).
    """
    idx = np.floor(np.arange(n_frames) / fps * feature_rate + 0.5).astype(np.int64)
    return np.clip(idx, 0, n_features - 1)


def align_to_frames(features: np.ndarray, feature_rate: float, n_frames: int, fps: float) -> np.ndarray:
    """Resample a (T, D) feature sequence at `feature_rate` Hz onto n_frames label frames."""
    if len(features) == 0:
        raise ValueError("cannot align an empty feature sequence")
    return features[nearest_frame_index(n_frames, fps, feature_rate, len(features))]


class FeatureCache:
    """Per-video float16 feature arrays for one extractor at one parameter set."""

    def __init__(self, root: str | Path, extractor: str, version: str, params: dict, dim: int,
                 dtype: str = "float16"):
        # float16 halves the cache; an extractor whose values can pass float16's 65504 (e.g.
        # ComParE's spectral variance, in Hz^2) declares float32 instead.
        self.extractor, self.version, self.params, self.dim = extractor, version, dict(params), int(dim)
        self.dtype = np.dtype(dtype)
        self.folder = Path(root) / extractor / params_key(self.params)
        self.manifest_path = self.folder / "manifest.json"
        if self.manifest_path.exists():
            manifest = json.loads(self.manifest_path.read_text())
            if manifest.get("version") != version or manifest.get("dim") != self.dim:
                raise FeatureCacheError(
                    f"{self.manifest_path}: written by {extractor} version {manifest.get('version')} "
                    f"(dim {manifest.get('dim')}), this code is version {version} (dim {self.dim}). "
                    f"Delete {self.folder} or re-run its feature stage (dvc repro) to rebuild it.")

    def _manifest(self) -> None:
        if not self.manifest_path.exists():
            atomic_write_json(self.manifest_path, {"extractor": self.extractor, "version": self.version,
                                                   "params": self.params, "dim": self.dim, "dtype": self.dtype.name})

    def path(self, video: str) -> Path:
        return self.folder / f"{video}.npy"

    def has(self, video: str) -> bool:
        return self.path(video).exists()

    def put(self, video: str, features: np.ndarray) -> None:
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"{self.extractor}: features for {video} have shape {features.shape}, "
                             f"expected (n_frames, {self.dim})")
        if not np.isfinite(features).all():
            raise ValueError(f"{self.extractor}: features for {video} contain NaN or inf")
        stored = features.astype(self.dtype)
        if not np.isfinite(stored).all():
            raise ValueError(f"{self.extractor}: features for {video} reach {np.abs(features).max():.4g}, beyond "
                             f"{self.dtype.name}'s range; give the extractor dtype float32 (and bump its version)")
        self._manifest()
        atomic_save_npy(self.path(video), stored)

    def _open(self, video: str, stage: str) -> tuple[Path, np.ndarray]:
        """The memory-mapped array of one video; a missing or unreadable file names `stage` to re-run."""
        path = self.path(video)
        if not path.exists():
            raise FeatureCacheError(f"{path}: missing; run {stage} first.")
        try:
            return path, np.load(path, mmap_mode="r")
        except (ValueError, OSError) as e:
            raise FeatureCacheError(f"{path}: unreadable ({e}); delete it and re-run {stage}.") from None

    def get(self, video: str, n_frames: int | None = None) -> np.ndarray:
        path, array = self._open(video, f"the {self.extractor} feature stage")
        if array.ndim != 2 or array.shape[1] != self.dim or (n_frames is not None and len(array) != n_frames):
            raise FeatureCacheError(f"{path}: shape {array.shape}, expected ({n_frames or 'n_frames'}, {self.dim}); "
                                    "delete it and re-run the feature stage.")
        return array
