"""Disk and decode cost of the face cache's two formats (faces.format npy / jpeg), on a generated corpus.

    python scripts/face_cache_footprint.py [--subjects 3] [--seconds 20 30] [--size 112] [--keep DIR]

Generates a small corpus at `--size` px (the paper profile's corpus settings otherwise) in a
temporary folder, fills the face cache in both formats with one process, and prints one JSON:
bytes a frame of the corpus JPEGs and of each format, the stage's frames/s (one process), one
core's decode rate of the jpeg format (whole tracks, and random single frames as Vu's training
stream reads them), and the projection to Aff-Wild2's 2.8 M frames. The folder is deleted
afterwards unless --keep names one.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.data import synthetic  # noqa: E402
from common.data.affwild2 import SPLITS, read_split  # noqa: E402
from common.features import faces  # noqa: E402
from common.params import load_params  # noqa: E402

AFFWILD2_FRAMES = 2.8e6


def measure(root: Path, subjects: int, seconds: list, size: int) -> dict:
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml", "paper", overrides={
        "data": {"root": str(root / "affwild2")}, "features": {"root": str(root / "features")},
        "corpus": {"subjects": subjects, "two_person_videos": 1, "seconds": seconds, "image_size": size,
                   "side_sets": {"affectnet": 10, "expw": 10, "afew_va": 10}, "workers": 1}})
    synthetic.generate(synthetic.CorpusConfig.from_params(params["corpus"]), params["data"]["root"], progress=False)
    tracks = [t for s in SPLITS for t in read_split(params["data"]["root"], s)]
    frames = sum(t.n_frames for t in tracks)
    images = sorted({p for t in tracks for p in t.image_paths if p is not None})
    out = {"size": size, "tracks": len(tracks), "frames": frames, "face_images": len(images),
           "corpus_jpeg_bytes_per_image": round(sum(Path(p).stat().st_size for p in images) / len(images), 1)}
    torch.set_num_threads(1)
    for format in faces.FORMATS:
        fp = {**params, "faces": {"size": size, "format": format}}
        started = time.perf_counter()
        faces.extract_faces(fp, workers=0, progress=False)
        seconds_taken = time.perf_counter() - started
        cache = faces.face_cache(fp)
        stored = sum(cache.path(t.video).stat().st_size for t in tracks)
        out[format] = {"bytes_per_frame": round(stored / frames, 1),
                       "stage_frames_per_s": round(frames / seconds_taken, 1),
                       "projected_gb": round(stored / frames * AFFWILD2_FRAMES / 1e9, 1)}
    cache = faces.face_cache({**params, "faces": {"size": size, "format": "jpeg"}})
    lazy = [cache.get(t.video, t.n_frames) for t in tracks]
    started = time.perf_counter()
    decoded = sum(len(np.asarray(x[t.has_image])) for x, t in zip(lazy, tracks))
    out["jpeg"]["decode_frames_per_s_per_core"] = round(decoded / (time.perf_counter() - started), 1)
    rng = np.random.default_rng(0)
    picks = [(rng.integers(len(lazy)), None) for _ in range(2000)]
    started = time.perf_counter()
    for k, _ in picks:
        lazy[k][int(rng.integers(len(lazy[k])))]
    out["jpeg"]["random_frame_reads_per_s_per_core"] = round(len(picks) / (time.perf_counter() - started), 1)
    # one worker's share of Vu's training stream: read a random frame, pad, random crop, flip, normalise
    from papers.vu2021.data import augment
    cfg = params["vu2021"]["cnn"]
    started = time.perf_counter()
    for k, _ in picks[:1000]:
        augment(torch.from_numpy(lazy[k][int(rng.integers(len(lazy[k])))]), int(cfg["crop"]), int(cfg["pad"]), True)
    out["jpeg"]["vu_training_samples_per_s_per_core"] = round(1000 / (time.perf_counter() - started), 1)
    out["jpeg_vs_npy"] = round(out["jpeg"]["bytes_per_frame"] / out["npy"]["bytes_per_frame"], 4)
    out["corpus_projected_gb"] = round(out["corpus_jpeg_bytes_per_image"] * AFFWILD2_FRAMES / 1e9, 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--seconds", type=float, nargs=2, default=[20, 30])
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--keep", help="generate into this folder and keep it")
    args = ap.parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="face_footprint_"))
    try:
        print(json.dumps(measure(root, args.subjects, list(args.seconds), args.size), indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
