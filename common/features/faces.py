"""The face-pixel cache: every cropped-aligned face JPEG decoded once, for every CNN that trains on frames.

    python -m common.features.faces            # fills data/features/faces (DVC stage face_pixels)

One uint8 array per face track, (n_frames, 3, S, S), rows aligned to the label frames like every
other feature (row i = frame i + 1), memory-mapped on read. Frames without a face image take the
face of the nearest frame that has one (Liu et al. 2023 Sec. 3.1, `face_frames.nearest_face_index`), so
a reader can index any label frame. S = `faces.size` in params.yaml (default 48 = the corpus's
crops; the paper profile's 112 px); JPEGs of another size are resized once, here.

Why a cache of pixels: decoding a 48 px JPEG costs about as much as a narrow CNN's forward pass
on it, and Vu et al. train CNNs for many epochs over the same frames while Liu et al. and Jeong
et al. run several frozen networks over all of them. At 48 px the default corpus is ~220 MB.

Two storage formats (`faces.format`; the format is part of the cache key, so they never mix):
    npy   (default, smoke) the decoded uint8 array: 3 S^2 bytes a frame, ~105 GB for Aff-Wild2's
          2.8 M frames at 112 px. Reads are memory maps: no decoding at all.
    jpeg  (paper profile) one file per track holding the JPEG bytes of its face frames (`JpegFaces`
          below): a JPEG that already has S x S px is stored as it is (decoding it gives exactly
          what decoding the corpus file gives), any other is resized as for npy and re-encoded at
          quality JPEG_QUALITY with 4:4:4 chroma. Frames without a face point at the nearest face's
          image (the same rule). `get` returns a lazy array that decodes only the frames indexed,
          so training decodes in its DataLoader workers (Vu: vu2021.cnn.num_workers).
"""
from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from common.data.affwild2 import SPLITS, AffWild2Error, read_split
from common.device import torch_threads
from common.features.cache import (DamagedCacheError, FeatureCache, FeatureCacheError, file_stamp,
                                   remember_verified, verified, verified_here)
from common.features.extract import run_stage, stage_parser
from common.features.face_frames import TrackFaces, encode_faces, load_face, nearest_face_index, track_features
from common.files import atomic_write_json
from common.parallel import run_parallel
from common.params import ParamsError, load_params

EXTRACTOR = "faces"
VERSION = "1"
FORMATS = ("npy", "jpeg")
# re-encoding of faces resized to faces.size (4:4:4 chroma); same-size JPEGs are kept as they are
JPEG_QUALITY = 95
STAGE = "`python -m common.features.faces` (dvc stage face_pixels)"


class FaceCache(FeatureCache):
    """Per-track uint8 face arrays (n_frames, 3, size, size); FeatureCache's checks, other dtype.

    format "npy" stores the arrays; "jpeg" stores packed JPEG bytes (`put_jpeg`) and `get` returns
    a `JpegFaces` that decodes on indexing. The key of an npy cache is what it was before formats
    existed ({"size": S}), so existing caches stay valid.
    """

    def __init__(self, root: str | Path, size: int, format: str = "npy"):
        if format not in FORMATS:
            raise ValueError(f"faces.format = {format!r}: expected one of {', '.join(FORMATS)}")
        self.size, self.format = int(size), format
        key = {"size": self.size} if format == "npy" else {"size": self.size, "format": format,
                                                             "quality": JPEG_QUALITY}
        super().__init__(root, EXTRACTOR, VERSION, key, 3 * self.size * self.size)

    def put(self, video: str, faces: np.ndarray) -> None:
        if self.format != "npy":
            raise ValueError(f"{self.folder}: a {self.format} face cache stores packed images (put_jpeg), not arrays")
        faces = np.asarray(faces)
        if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[1:] != (3, self.size, self.size):
            raise ValueError(f"{EXTRACTOR}: faces for {video} have shape {faces.shape} ({faces.dtype}), "
                             f"expected (n_frames, 3, {self.size}, {self.size}) uint8")
        self._store(video, faces)

    def put_jpeg(self, video: str, packed: np.ndarray) -> None:
        """Store one track packed by `pack_jpegs` (checked by opening it once)."""
        JpegFaces(self.path(video), packed, self.size)
        self._store(video, packed)

    def get(self, video: str, n_frames: int | None = None) -> np.ndarray:
        if self.format == "jpeg":
            path, packed = self._open(video)                # its sha256 checked (FeatureCache.verify)
            faces = JpegFaces(path, packed, self.size, self.recorded(video)["sha256"])
            if n_frames is not None and len(faces) != n_frames:
                raise FeatureCacheError(f"{path}: {len(faces)} frames, expected {n_frames}; {self.rerun()}.")
            return faces
        path, faces = self._open(video)
        expected = (n_frames or (len(faces) if faces.ndim == 4 else "n_frames"), 3, self.size, self.size)
        if faces.dtype != np.uint8 or faces.shape != expected:
            raise FeatureCacheError(f"{path}: shape {faces.shape} ({faces.dtype}), expected {expected} uint8; "
                                    f"{self.rerun()}.")
        return faces


def face_cache(params: dict) -> FaceCache:
    """The cache `extract_faces` fills for the current `faces.size` and `faces.format`; every reader
    of faces uses it."""
    return FaceCache(params["features"]["root"], params["faces"]["size"], params["faces"].get("format", "npy"))


# ------------------------------------------------------------------- the jpeg format

MAGIC = np.frombuffer(b"FACEJPG1", np.uint8)
_HEADER = 4            # int64 words after the magic: n_frames, n_images, size, quality


def pack_jpegs(images: list, frame_image: np.ndarray, size: int) -> np.ndarray:
    """One track as a flat uint8 array: magic, header, per-frame image index, image offsets, bytes.

    Layout (int64 little-endian words after the 8-byte magic): n_frames, n_images, size, quality,
    frame_image[n_frames] (the image each frame shows), offsets[n_images + 1] (into the bytes
    that follow). Stored as one .npy, memory-mapped on read like the npy format.
    """
    frame_image = np.asarray(frame_image, np.int64)
    lengths = np.array([len(b) for b in images], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype("<i8")
    words = np.concatenate([[len(frame_image), len(images), size, JPEG_QUALITY], frame_image, offsets]).astype("<i8")
    return np.concatenate([MAGIC, words.view(np.uint8), np.frombuffer(b"".join(images), np.uint8)])


def encode_jpeg(face: np.ndarray) -> bytes:
    """(3, S, S) uint8 -> JPEG bytes at JPEG_QUALITY, 4:4:4 chroma."""
    from PIL import Image
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(face.transpose(1, 2, 0))).save(out, "JPEG", quality=JPEG_QUALITY,
                                                                       subsampling=0)
    return out.getvalue()


def face_jpeg(path: str, size: int) -> bytes:
    """The bytes to store for one face: the file itself when it is size x size (decoding it then
    gives exactly `load_face`), else `load_face`'s resized pixels re-encoded."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            same = im.size == (size, size)
    except OSError:
        load_face(path, size)               # raises naming the file
        raise
    if same:
        data = Path(path).read_bytes()
        if not data.endswith(b"\xff\xd9"):
            # No end-of-image marker: maybe truncated, which would surface only when the cache is
            # decoded, far from the file. A full decode names the file if it is.
            load_face(path, size)
        return data
    return encode_jpeg(load_face(path, size))


def decode_jpeg(data) -> np.ndarray:
    """JPEG bytes -> (3, S, S) uint8, exactly as `face_frames.load_face` decodes a file of that size."""
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB")).transpose(2, 0, 1).copy()


class JpegFaces:
    """A jpeg-format track that looks like the npy array (n_frames, 3, S, S) uint8 and decodes lazily.

    `faces[i]`, `faces[a:b]`, `faces[mask]`, `faces[rows]` (and a tuple whose first item is one
    of those) decode only the frames asked for and return a fresh writable ndarray;
    `np.asarray(faces)` decodes them all. The packed bytes stay memory-mapped; pickling (spawned
    DataLoader workers) carries the path, and the copy maps the file again. With the `sha256` the
    manifest recorded (FaceCache.get), the copy checks the file again unless it is unchanged since
    this process checked it (same size and mtime), so a worker does not read the whole file again.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, path: str | Path, packed: np.ndarray, size: int, sha256: str | None = None):
        self.path, self.size, self.sha256 = Path(path), int(size), sha256
        self._attach(packed)

    def _bad(self, what: str) -> FeatureCacheError:
        return FeatureCacheError(f"{self.path}: {what}; delete it and re-run {STAGE}.")

    def _attach(self, packed: np.ndarray) -> None:
        if packed.dtype != np.uint8 or packed.ndim != 1 or len(packed) < 8 * (1 + _HEADER) \
                or not np.array_equal(packed[:8], MAGIC):
            raise self._bad("not a packed jpeg face track (wrong header)")
        n_frames, n_images, size, _quality = (int(w) for w in packed[8:8 * (1 + _HEADER)].view("<i8"))
        start = 8 * (1 + _HEADER)
        data_start = start + 8 * (n_frames + n_images + 1)
        if size != self.size or n_frames < 0 or n_images < 1 or data_start > len(packed):
            raise self._bad(f"header says {n_frames} frames, {n_images} images of {size} px in "
                            f"{len(packed)} bytes, expected {self.size} px faces (truncated or corrupt)")
        words = packed[start:data_start].view("<i8")
        self.frame_image, self.offsets = words[:n_frames], words[n_frames:]
        if self.offsets[0] != 0 or self.offsets[-1] != len(packed) - data_start or np.any(np.diff(self.offsets) <= 0) \
                or (n_frames and (self.frame_image.min() < 0 or self.frame_image.max() >= n_images)):
            raise self._bad(f"image offsets or frame indices out of range ({len(packed)} bytes; truncated or corrupt)")
        self.packed, self.data = packed, packed[data_start:]
        self.shape = (n_frames, 3, self.size, self.size)

    def __getstate__(self):
        stamp = file_stamp(self.path) if self.sha256 else None
        checked = stamp if stamp and verified_here(stamp) == self.sha256 else None
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "checked": checked}

    def __setstate__(self, state):
        self.path, self.size, self.sha256 = state["path"], state["size"], state.get("sha256")
        try:
            if self.sha256:
                if state.get("checked") and file_stamp(self.path) == tuple(state["checked"]):
                    remember_verified(state["checked"], self.sha256)   # the sender checked this very file
                if not verified(self.path, self.sha256):
                    raise DamagedCacheError(f"{self.path}: damaged: its contents differ from the sha256 its "
                                            f"manifest recorded; re-run its stage: dvc repro -s --force face_pixels.")
            packed = np.load(self.path, mmap_mode="r")
        except (ValueError, OSError) as e:
            raise self._bad(f"unreadable ({e})") from None
        self._attach(packed)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"JpegFaces({self.path}, shape={self.shape})"

    def image(self, k: int) -> np.ndarray:
        """Stored image k decoded to (3, S, S) uint8."""
        try:
            face = decode_jpeg(self.data[self.offsets[k]:self.offsets[k + 1]].tobytes())
        except (OSError, ValueError, SyntaxError) as e:
            raise self._bad(f"image {k} does not decode ({e})") from None
        if face.shape != (3, self.size, self.size):
            raise self._bad(f"image {k} decodes to {face.shape[1]}x{face.shape[2]} px, expected {self.size}")
        return face

    def _rows(self, key) -> np.ndarray:
        n = len(self)
        if isinstance(key, slice):
            return np.arange(n)[key]
        key = np.asarray(key)
        if key.dtype == bool:
            if key.shape != (n,):
                raise IndexError(f"boolean index of shape {key.shape} for {n} frames")
            return np.flatnonzero(key)
        if not np.issubdtype(key.dtype, np.integer) or key.ndim > 1:
            raise IndexError(f"{self!r}: unsupported index {key!r}")
        if key.size and (key.min() < -n or key.max() >= n):
            raise IndexError(f"index out of range for {n} frames")
        return np.where(key < 0, key + n, key)

    def __getitem__(self, key):
        rest = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            n = len(self)
            if not -n <= key < n:
                raise IndexError(f"index {key} out of range for {n} frames")
            out = self.image(int(self.frame_image[key]))
            return out[rest] if rest else out
        rows = self._rows(key)
        out = np.empty((len(rows), 3, self.size, self.size), np.uint8)
        decoded = {}
        for j, k in enumerate(self.frame_image[rows].tolist()):
            if k not in decoded:
                decoded[k] = self.image(k)
            out[j] = decoded[k]
        return out[(slice(None),) + rest] if rest else out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def pack_track(track, size: int) -> np.ndarray:
    """One face track in the jpeg format: its face images (one per face frame), every frame pointing
    at its own face or the nearest one (a track without a face: one mid-grey image)."""
    has_face = track.has_image
    if not has_face.any():
        return pack_jpegs([encode_jpeg(np.full((3, size, size), 128, np.uint8))],
                          np.zeros(len(has_face), np.int64), size)
    images = [face_jpeg(p, size) for p in track.image_paths if p is not None]
    return pack_jpegs(images, nearest_face_index(has_face), size)


class TrackJpegs(TrackFaces):
    """Item i = track i packed in the jpeg format (read, and re-encoded where resized, in a worker)."""

    def __getitem__(self, i):
        return i, pack_track(self.tracks[i], self.size)


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

    size = params["faces"]["size"]
    cache = face_cache(params)
    started = time.perf_counter()
    tracks = [video for split in SPLITS for video in read_split(params["data"]["root"], split)]
    todo = [t for t in tracks if not cache.has(t.video)]
    # Worker processes decode the next tracks while this one is written (face_frames.TrackFaces).
    jpeg = cache.format == "jpeg"
    loader = DataLoader((TrackJpegs if jpeg else TrackFaces)(todo, size), batch_size=None, num_workers=workers,
                        multiprocessing_context="fork" if workers > 0 else None)
    bar = tqdm(total=sum(t.n_frames for t in todo), desc="features: faces", unit="frame",
               disable=None if progress else True, file=sys.stderr)
    for i, decoded in loader:
        track = todo[i]
        if jpeg:
            cache.put_jpeg(track.video, np.asarray(decoded))
        else:
            cache.put(track.video, track_faces(decoded.numpy(), track.has_image, size))
        bar.update(track.n_frames)
    bar.close()
    seconds = time.perf_counter() - started
    frames = sum(t.n_frames for t in todo)
    summary = {"extractor": EXTRACTOR, "version": VERSION, "size": size, "format": cache.format, "tracks": len(tracks),
               "computed": len(todo), "frames": frames, "face_frames": int(sum(t.has_image.sum() for t in todo)),
               "tracks_without_faces": sum(not t.has_image.any() for t in todo),
               "mebibytes": round(sum(cache.path(t.video).stat().st_size for t in tracks) / 2**20, 1),
               "seconds": round(seconds, 2), "frames_per_second": round(frames / max(seconds, 1e-9), 1),
               "workers": workers, "folder": str(cache.folder)}
    atomic_write_json(Path(params["features"]["root"]) / f"{EXTRACTOR}.json", summary)
    return summary


# --------------------------------------------------------------------------------------------
# The face networks' side of the cache: frames to pre-train on, and a frozen encoder over every face
# --------------------------------------------------------------------------------------------

def sample_face_frames(params: dict, split: str, n: int, seed: int, where: Callable) -> tuple:
    """Up to n face frames of `split` (uniformly, fixed by `seed`) among those where `where(video)`
    (a boolean per frame) holds and the frame has a face image: (uint8 faces (n, 3, S, S) from the
    face-pixel cache, [(video annotation, frame indices), ...] in the same order)."""
    videos = read_split(params["data"]["root"], split)
    rows = [(i, f) for i, v in enumerate(videos) for f in np.flatnonzero(where(v) & v.has_image)]
    if not rows:
        raise ValueError(f"{params['data']['root']}: no usable face frames in {split} for this pre-training "
                         "(or set the feature's weights)")
    pick = sorted(rows[i] for i in np.random.default_rng(seed).permutation(len(rows))[:n])
    faces, picked = face_cache(params), []
    for i in sorted({i for i, _ in pick}):
        picked.append((videos[i], np.array([f for j, f in pick if j == i])))
    images = np.concatenate([np.asarray(faces.get(v.video, v.n_frames)[frames]) for v, frames in picked])
    return torch.from_numpy(images), picked


def extract_face_feature(params: dict, name: str, encoder: nn.Module, cache, crop: int, batch_size: int,
                         dim: int, threads: int = 1, workers: int = 2) -> dict:
    """Every face frame of every track through the frozen `encoder` (centre crop) into `cache`;
    frames without a face take the nearest face's row (Liu Sec. 3.1). Writes <features root>/<name>.json.
    Tracks are shared out to `workers` forked processes (a narrow network keeps one core busy;
    a second torch thread does not help it, a second process does)."""
    faces = face_cache(params)
    started = time.perf_counter()
    tracks = [v for split in SPLITS for v in read_split(params["data"]["root"], split)]

    def encode(t) -> int:
        face_rows = torch.from_numpy(np.asarray(faces.get(t.video, t.n_frames)[t.has_image]))
        cache.put(t.video, track_features(encode_faces(encoder, face_rows, crop, batch_size, dim), t.has_image, dim))
        return len(face_rows)
    with torch_threads(threads):
        # longest tracks first, so neither worker is left with one long track at the end
        todo = sorted((t for t in tracks if not cache.has(t.video)), key=lambda t: -t.n_frames)
        encoded = sum(run_parallel(encode, todo, workers))
    summary = {"extractor": name, "dim": dim, "tracks": len(tracks), "face_frames": encoded, "workers": workers,
               "seconds": round(time.perf_counter() - started, 2), "folder": str(cache.folder)}
    atomic_write_json(Path(params["features"]["root"]) / f"{name}.json", summary)
    return summary


def main(argv=None) -> int:
    args = stage_parser("decode every face track once into the face-pixel cache", steps=False,
                        workers="JPEG-decoding processes").parse_args(argv)
    return run_stage(lambda: print(json.dumps(extract_faces(load_params(args.params, args.profile), args.workers),
                                              indent=2)),
                     (ParamsError, AffWild2Error, FeatureCacheError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
