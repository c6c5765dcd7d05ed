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

Every array's sha256 goes into the manifest when it is written (manifest["files"][<video>.npy]) and
is checked when it is read, by every reader (notebooks run by hand, `dvc repro -s --force`,
training, the feature stages), not only where DVC compares hashes: a damaged file stops the run
with its name and the stage to re-run, so no stage records results (or a dvc.lock hash) made from
it. The check reads each file once per process (memoised by path, size and mtime): ~1 s per GB
(docs/benchmarks.md). A file without a recorded checksum (a cache written before checksums were
recorded) is refused by readers and recomputed by its extractor, which also writes its checksum.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from common.files import atomic_save_npy, atomic_write_json, file_sha256

try:
    import fcntl                                  # manifest updates from several processes (POSIX)
except ImportError:                               # pragma: no cover  (Windows: one writer at a time)
    fcntl = None


class FeatureCacheError(RuntimeError):
    """The cache does not match what the caller expects; the message says how to fix it."""


class DamagedCacheError(FeatureCacheError):
    """A cache file or manifest changed since it was written, or carries no checksum: never a
    reason to treat the feature as absent (common.features.bank.available re-raises it)."""


# The dvc.yaml stage that writes each extractor's folder: what a damaged or missing file names.
STAGES = {**{name: f"audio_features@{name}" for name in ("mfcc", "egemaps", "compare", "fbank")},
          "faces": "face_pixels",
          **{name: f"network@{name}" for name in ("frame_encoder", "vggish", "ecapatdnn", "hubert", "wav2vec")},
          **{name: f"face_network@{name}" for name in ("densenet", "ires100", "ms_va", "fau", "mae")},
          "fer": "fer", "fer_posteriors": "fer", "soundnet": "soundnet"}

# (path, size, mtime_ns) -> sha256 of the files this process has checked: each is read once.
_VERIFIED: dict[tuple, str] = {}


def file_stamp(path: Path) -> tuple:
    st = os.stat(path)
    return str(path), st.st_size, st.st_mtime_ns


def remember_verified(stamp: tuple, digest: str) -> None:
    """Mark a file as checked (e.g. by the parent of a spawned DataLoader worker, for an unchanged stamp)."""
    _VERIFIED[tuple(stamp)] = digest


def verified_here(stamp: tuple) -> str | None:
    """The sha256 this process checked the file of `stamp` against, if it did."""
    return _VERIFIED.get(tuple(stamp))


def verified(path: Path, digest: str) -> bool:
    """Whether the file at `path` has the sha256 `digest`: read once per process per (size, mtime)."""
    stamp = file_stamp(path)
    if _VERIFIED.get(stamp) != digest:
        if file_sha256(path) != digest:
            return False
        remember_verified(stamp, digest)
    return True


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
                 dtype: str = "float16", stage: str | None = None):
        # float16 halves the cache; an extractor whose values can pass float16's 65504 (e.g.
        # ComParE's spectral variance, in Hz^2) declares float32 instead.
        self.extractor, self.version, self.params, self.dim = extractor, version, dict(params), int(dim)
        self.dtype = np.dtype(dtype)
        self.folder = Path(root) / extractor / params_key(self.params)
        self.manifest_path = self.folder / "manifest.json"
        self.stage = stage or STAGES.get(extractor)
        self._manifest_read = (None, {})          # (manifest stamp, its content): re-read when it changes
        if self.manifest_path.exists():
            manifest = self.manifest()
            if manifest.get("version") != version or manifest.get("dim") != self.dim:
                raise FeatureCacheError(
                    f"{self.manifest_path}: written by {extractor} version {manifest.get('version')} "
                    f"(dim {manifest.get('dim')}), this code is version {version} (dim {self.dim}). "
                    f"Delete {self.folder} or {self.rerun()} to rebuild it.")

    def rerun(self) -> str:
        """How to rebuild this folder: its dvc stage, forced (a plain `dvc repro` would find its
        recorded hash unchanged when a file was damaged in place of DVC's cache)."""
        if self.stage:
            return f"re-run its stage: dvc repro -s --force {self.stage}"
        return f"re-run the stage whose output holds {self.folder.parent} (dvc repro -s --force <stage>)"

    def manifest(self) -> dict:
        """The manifest, read again only when the file changed; a damaged one names itself."""
        if not self.manifest_path.exists():
            return {}
        stamp = file_stamp(self.manifest_path)
        if self._manifest_read[0] != stamp:
            try:
                content = json.loads(self.manifest_path.read_text())
                if not isinstance(content, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as e:       # json.JSONDecodeError is a ValueError
                raise DamagedCacheError(f"{self.manifest_path}: unreadable ({e}; truncated or damaged); "
                                        f"delete {self.folder} and {self.rerun()}.") from None
            self._manifest_read = (stamp, content)
        return self._manifest_read[1]

    @contextlib.contextmanager
    def _locked(self):
        """The folder locked against other writers while the manifest is read, changed and written."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            yield
            return
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)                                           # releases the lock

    def _store(self, video: str, array: np.ndarray) -> None:
        """Write one video's array (temp then rename), then its sha256 into the manifest. A run killed
        in between leaves a file without a checksum, which `has` reports absent and readers refuse."""
        atomic_save_npy(self.path(video), array)
        self.record(video)

    def record(self, video: str) -> None:
        """Record the sha256 and size of the video's file as it is now in the manifest (what `put`
        does once the file is written)."""
        path = self.path(video)
        digest = file_sha256(path)
        remember_verified(file_stamp(path), digest)
        with self._locked():
            manifest = self.manifest() or {"extractor": self.extractor, "version": self.version,
                                           "params": self.params, "dim": self.dim, "dtype": self.dtype.name}
            files = {**manifest.get("files", {}), path.name: {"sha256": digest, "bytes": path.stat().st_size}}
            atomic_write_json(self.manifest_path, {**manifest, "files": files})

    def recorded(self, video: str) -> dict | None:
        """The manifest's entry (sha256, bytes) of one video's file, None if it has none."""
        return self.manifest().get("files", {}).get(self.path(video).name)

    def verify(self, video: str) -> Path:
        """The video's file, checked against the sha256 its manifest recorded (once per process for
        an unchanged file); a missing, unrecorded or damaged file raises naming it and the stage."""
        path = self.path(video)
        if not path.exists():
            raise FeatureCacheError(f"{path}: missing; {self.rerun()}.")
        entry = self.recorded(video)
        if entry is None:
            raise DamagedCacheError(
                f"{path}: {self.manifest_path.name} records no checksum for it (written before checksums were "
                f"recorded, or by a run stopped before its manifest entry); delete {self.folder} and {self.rerun()}.")
        if path.stat().st_size != entry.get("bytes") or not verified(path, entry["sha256"]):
            raise DamagedCacheError(f"{path}: damaged: its contents differ from the sha256 recorded in "
                                    f"{self.manifest_path} when it was written{self._damage(path)}; {self.rerun()}.")
        return path

    def _damage(self, path: Path) -> str:
        """What is wrong with a damaged float array, when it can still be read: its non-finite values."""
        if self.dtype.kind != "f":
            return ""
        try:
            bad = int(np.count_nonzero(~np.isfinite(np.load(path, mmap_mode="r"))))
        except (ValueError, OSError, TypeError):
            return " (its header does not read either)"
        return f" ({bad} non-finite values: inf or NaN)" if bad else ""

    def path(self, video: str) -> Path:
        return self.folder / f"{video}.npy"

    def has(self, video: str) -> bool:
        """The video's file is there with its checksum recorded (what an extractor skips). A file
        without one, or whose size differs from the recorded one, is computed again."""
        path, entry = self.path(video), self.recorded(video)
        return entry is not None and path.exists() and path.stat().st_size == entry.get("bytes")

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
        self._store(video, stored)

    def _open(self, video: str) -> tuple[Path, np.ndarray]:
        """The memory-mapped array of one video, its checksum checked; a missing, damaged or
        unreadable file names the stage to re-run."""
        path = self.verify(video)
        try:
            return path, np.load(path, mmap_mode="r")
        except (ValueError, OSError) as e:
            raise FeatureCacheError(f"{path}: unreadable ({e}); {self.rerun()}.") from None

    def get(self, video: str, n_frames: int | None = None) -> np.ndarray:
        path, array = self._open(video)
        if array.ndim != 2 or array.shape[1] != self.dim or (n_frames is not None and len(array) != n_frames):
            raise FeatureCacheError(f"{path}: shape {array.shape}, expected ({n_frames or 'n_frames'}, {self.dim}); "
                                    f"{self.rerun()}.")
        return array
