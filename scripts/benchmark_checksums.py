"""Measure what the feature caches' checksums cost (common/features/cache.py): writing with and
without the sha256, the first read of every file in a process (the check) and the reads after it.

The caches are filled with random arrays of the default profile's sizes: 28 face tracks of
1,152 frames (the default corpus's 32,268 frames) as 48 px uint8 faces (223 MB), and the same
tracks in 16 feature folders of the default profile's widths (float16 but ComParE's float32).
Writes reports/benchmarks/checksums.json and prints it; docs/benchmarks.md quotes its figures.

    .venv/bin/python scripts/benchmark_checksums.py [--frames-per-track 1152] [--tracks 28]
"""
import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from common.features import cache as cache_module
from common.features.cache import FeatureCache
from common.features.faces import FaceCache
from common.files import atomic_save_npy

ROOT = Path(__file__).resolve().parents[1]
# name: (dim, dtype) of the default profile's feature caches
WIDTHS = {"mfcc": (39, "float16"), "egemaps": (25, "float16"), "compare": (65, "float32"), "fbank": (80, "float16"),
          "frame_encoder": (512, "float16"), "vggish": (128, "float16"), "ecapatdnn": (64, "float16"),
          "hubert": (64, "float16"), "wav2vec": (64, "float16"), "densenet": (100, "float16"),
          "ires100": (128, "float16"), "ms_va": (128, "float16"), "fau": (128, "float16"), "mae": (64, "float16"),
          "fer": (512, "float16"), "soundnet": (1024, "float16")}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(caches: list, arrays: dict) -> dict:
    """Seconds to write every array without / with checksums, check them once, and read them again."""
    plain = timed(lambda: [atomic_save_npy(c.folder / "plain" / f"{v}.npy", a)
                           for c in caches for v, a in arrays[c].items()])
    put = timed(lambda: [c.put(v, a) for c in caches for v, a in arrays[c].items()])
    cache_module._VERIFIED.clear()                                 # as a new process (page cache warm)
    first = timed(lambda: [c.get(v) for c in caches for v in arrays[c]])
    again = timed(lambda: [c.get(v) for c in caches for v in arrays[c]])
    size = sum(c.path(v).stat().st_size for c in caches for v in arrays[c])
    files = sum(len(arrays[c]) for c in caches)
    return {"files": files, "mebibytes": round(size / 2 ** 20, 1), "write_s": round(plain, 2),
            "write_with_checksum_s": round(put, 2), "first_read_s": round(first, 2),
            "first_read_mib_per_s": round(size / 2 ** 20 / first),
            "later_read_us_per_file": round(again / files * 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracks", type=int, default=28)
    ap.add_argument("--frames-per-track", type=int, default=1152)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp())
    try:
        faces = FaceCache(root, 48)
        face_arrays = {faces: {f"t{i}": rng.integers(0, 255, (args.frames_per_track, 3, 48, 48), dtype=np.uint8)
                               for i in range(args.tracks)}}
        features = [FeatureCache(root, name, "1", {}, dim, dtype) for name, (dim, dtype) in WIDTHS.items()]
        feature_arrays = {c: {f"t{i}": rng.normal(size=(args.frames_per_track, c.dim)).astype(c.dtype)
                              for i in range(args.tracks)} for c in features}
        result = {"tracks": args.tracks, "frames_per_track": args.frames_per_track,
                  "faces": measure([faces], face_arrays), "features": measure(features, feature_arrays)}
    finally:
        shutil.rmtree(root)
    out = ROOT / "reports" / "benchmarks" / "checksums.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
