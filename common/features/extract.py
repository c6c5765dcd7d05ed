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
from typing import Callable

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


def audio_todo(groups: dict, cache: FeatureCache) -> list[str]:
    """The audio files of `groups` (audio_tracks) with a track whose rows `cache` does not hold yet, in order."""
    return [wav for wav, tracks in groups.items() if not all(cache.has(t.video) for t in tracks)]


def put_aligned(cache: FeatureCache, tracks, rows, rate: float) -> None:
    """One audio file's feature `rows` (at `rate` Hz) into `cache` for each of its face `tracks`,
    aligned to the track's label frames by nearest time."""
    for track in tracks:
        cache.put(track.video, align_to_frames(rows, rate, track.n_frames, track.fps))


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
    todo = audio_todo(groups, cache)
    bar = tqdm(total=len(todo), desc=f"features: {name}", unit="audio", disable=None if progress else True,
               file=sys.stderr)
    with mp.get_context("fork").Pool(workers) if workers > 1 else _Serial() as pool:
        for wav, feats in zip(todo, pool.imap(_compute, [(name, wav) for wav in todo])):
            put_aligned(cache, groups[wav], feats, extractor.rate)
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


# --------------------------------------------------------------------------- the feature stages' command line

def stage_parser(description: str, steps: bool = True, workers: str | None = None) -> argparse.ArgumentParser:
    """The arguments every feature stage takes: with `steps`, the steps to run in order (`pretrain`,
    `extract`: a network stage), then --params, --profile and, where `workers` (its help) is given,
    --workers (processes the tracks are shared out to, default 2)."""
    ap = argparse.ArgumentParser(description=description)
    if steps:
        ap.add_argument("steps", nargs="+", choices=("pretrain", "extract"),
                        help="run in order (the DVC stage runs both)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", choices=("smoke", "default", "paper"))
    if workers is not None:
        ap.add_argument("--workers", type=int, default=2, help=workers)
    return ap


def run_stage(run: Callable[[], None], errors: tuple) -> int:
    """run() a stage's command: 0, or 2 after printing `error: <message>` to stderr when it raises one
    of `errors` (a bad file or setting, which the message names)."""
    try:
        run()
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    ap = stage_parser("fill the feature cache for one extractor", steps=False, workers="audio-decoding processes")
    ap.add_argument("extractor")
    args = ap.parse_args(argv)
    return run_stage(lambda: print(json.dumps(extract_audio(load_params(args.params, args.profile), args.extractor,
                                                            args.workers), indent=2)), (ParamsError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
