"""The feature stages: `python -m common.features.extract <extractor> [--profile smoke]`.

Runs one extractor over every face track of every split and fills the feature cache, so
training never decodes audio (or JPEGs) again. Tracks that share an audio file (the
`_left`/`_right` halves of a two-person video) are computed once. Both cores are used, one
audio file per worker. A summary with timings is written to <features.root>/<extractor>.json,
the stage's metrics file.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from collections import defaultdict
from pathlib import Path

from common.data.affwild2 import SPLITS, audio_path, read_split
from common.features import audio as audio_features
from common.features.cache import FeatureCache, align_to_frames
from common.files import atomic_write_json
from common.params import ParamsError, load_params


def _compute(job):
    name, wav = job
    extractor = audio_features.registry()[name]
    return extractor.compute(audio_features.load_mono(wav))


def audio_tracks(root: str | Path) -> dict:
    """audio file -> the face tracks (VideoAnnotations) that share it, over all splits."""
    groups = defaultdict(list)
    for split in SPLITS:
        for video in read_split(root, split):
            wav = video.audio_path or audio_path(root, video.video)
            groups[str(wav)].append(video)
    return dict(sorted(groups.items()))


def open_audio_cache(params: dict, name: str) -> FeatureCache:
    """The cache folder of one audio extractor under features.root (what training reads)."""
    extractors = audio_features.registry()
    if name not in extractors:
        raise ParamsError(f"unknown audio extractor '{name}'; known: {', '.join(extractors)}")
    extractor = extractors[name]
    return FeatureCache(params["features"]["root"], name, extractor.version,
                        {"sample_rate": audio_features.SAMPLE_RATE, "rate": extractor.rate}, extractor.dim,
                        extractor.dtype)


def extract_audio(params: dict, name: str, workers: int = 2, progress: bool = True) -> dict:
    from tqdm import tqdm
    cache = open_audio_cache(params, name)
    extractor = audio_features.registry()[name]
    root, cache_root = params["data"]["root"], params["features"]["root"]
    started = time.perf_counter()
    groups = audio_tracks(root)
    todo = [wav for wav, tracks in groups.items() if not all(cache.has(t.video) for t in tracks)]
    bar = tqdm(total=len(todo), desc=f"features: {name}", unit="audio", disable=not progress, file=sys.stderr)
    with mp.get_context("fork").Pool(workers) if workers > 1 else _Serial() as pool:
        for wav, feats in zip(todo, pool.imap(_compute, [(name, wav) for wav in todo])):
            for track in groups[wav]:
                cache.put(track.video, align_to_frames(feats, extractor.rate, track.n_frames, track.fps))
            bar.update()
    bar.close()
    summary = {"extractor": name, "version": extractor.version, "dim": extractor.dim,
               "audio_files": len(groups), "computed": len(todo),
               "tracks": sum(len(t) for t in groups.values()),
               "seconds": round(time.perf_counter() - started, 2), "folder": str(cache.folder)}
    atomic_write_json(Path(cache_root) / f"{name}.json", summary)
    return summary


class _Serial:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def imap(fn, jobs):
        return map(fn, jobs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="fill the feature cache for one extractor")
    ap.add_argument("extractor")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", choices=("smoke", "default", "paper"))
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params, args.profile)
        summary = extract_audio(params, args.extractor, args.workers)
    except (ParamsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
