"""The corpus stage: `python -m common.data.corpus` (DVC stages `corpus_fingerprint` and `corpus`).

`data.source: synthetic` generates the embedded corpus into `data.root` (common/data/synthetic/).
`data.source: real` generates nothing: it reads every label file of the real Aff-Wild2 at
`data.root` once, so a malformed row stops the pipeline here with its file and line rather than
half-way through feature extraction, and writes `data/affwild2/real_corpus.json`: what was found
(videos, frames, labelled frames per task and split) and the corpus fingerprint.

DVC cannot watch a folder outside the repository, so `--fingerprint FILE` (the stage
`corpus_fingerprint`, `always_changed: true`) runs on every `dvc repro`: it hashes the label files'
bytes and, cheaply, the face folders (names, mtimes) and audio files (names, sizes, mtimes), and rewrites FILE only
when that fingerprint changed. `corpus` depends on FILE, the feature stages on `corpus`'s output,
so they all re-run exactly when the real corpus changed (a JPEG overwritten in place, which
leaves its folder's mtime alone, needs `dvc repro --force`). For the generated corpus the fingerprint is
a constant: its files are `corpus`'s own output, which DVC hashes.

The real corpus must live outside data/affwild2: DVC would otherwise copy it into its cache.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

from common.data import synthetic
from common.data.affwild2 import (AUDIO_SOURCE_EXTS, DEFAULT_AUDIO_CACHE, SPLITS, AffWild2Error, audio_base,
                                  find_annotation_dir, read_split, test_labels_released)
from common.files import atomic_path, atomic_write_json
from common.params import ParamsError, load_params

log = logging.getLogger(__name__)
STAGE_OUT = Path("data/affwild2")
FACELESS = ("warn", "error")        # data.faceless_videos: what a video with no face image does
MISSING_AUDIO = ("error", "silence")  # data.missing_audio: what a video with no audio at all does
SILENCE_DBFS = -90.0                # the stand-in's noise floor: log-energy features stay finite


def _stat_lines(folder: Path, digest) -> int:
    """Feed (name, size, mtime) of every file directly in folder into digest; the file count."""
    with os.scandir(folder) as entries:
        found = sorted((e.name, e.stat()) for e in entries if e.is_file())
    for name, st in found:
        digest.update(f"{name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return len(found)


def corpus_fingerprint(root: str | Path) -> dict:
    """sha256 of the label files' bytes; sha256 of the face folders' names and mtimes and of the audio
    files' names, sizes and mtimes (no JPEG or wav is read: millions of files)."""
    root = Path(root)
    labels, faces, audio = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    ann_dir = find_annotation_dir(root)
    label_files = sorted(p for p in ann_dir.rglob("*.txt") if "cropped_aligned" not in p.parts)
    for path in label_files:
        labels.update(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}\n".encode())
        labels.update(hashlib.sha256(path.read_bytes()).digest())
    # A face folder by its name and mtime, which every added, removed or renamed (atomically
    # replaced) JPEG changes: 0.04 s for 564 folders, where a stat of each of 2.8 M files takes
    # ~90 s (docs/benchmarks.md). A JPEG overwritten in place is not seen: run dvc repro --force.
    face_root = root / "cropped_aligned"
    folders = sorted(p for p in face_root.iterdir() if p.is_dir()) if face_root.is_dir() else []
    for folder in folders:
        faces.update(f"{folder.name}\t{folder.stat().st_mtime_ns}\n".encode())
    n_audio = _stat_lines(root / "videos", audio) if (root / "videos").is_dir() else 0
    return {"labels_sha256": labels.hexdigest(), "label_files": len(label_files),
            "faces_sha256": faces.hexdigest(), "face_folders": len(folders),
            "audio_sha256": audio.hexdigest(), "audio_files": n_audio}


def annotation_fingerprint(root: str | Path) -> str:
    """One sha256 for corpus_fingerprint(root): what identifies a real corpus (common/runs.py)."""
    return hashlib.sha256(json.dumps(corpus_fingerprint(root), sort_keys=True).encode()).hexdigest()


def write_fingerprint(params, out: str | Path) -> bool:
    """Write the corpus fingerprint to out unless it holds that already; True if it was (re)written."""
    out = Path(out)
    if params["data"]["source"] == "real":
        fingerprint = {"source": "real", **corpus_fingerprint(_checked_root(params["data"]["root"]))}
    else:
        fingerprint = {"source": params["data"]["source"]}
    try:
        if json.loads(out.read_text()) == fingerprint:
            return False
    except (OSError, ValueError):
        pass                                    # absent or unreadable: write it
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, fingerprint)
    return True


def _checked_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise AffWild2Error(f"{root}: no such folder; set data.root in params.yaml to the real Aff-Wild2 "
                            "(the folder holding cropped_aligned/ and the annotation folders)")
    return root


def stand_in_silence(root: Path, video, policy: str) -> Path | None:
    """For a track whose video has no audio at all (no wav, no video file in videos/): stop
    (policy "error"), or write near-silence of the track's length where audio_path() looks for an
    extracted wav (<root>/audio_wav/<base>.wav), so every audio feature of it is that of silence.
    Returns the path written, or None when the track has audio."""
    base = audio_base(video.video)
    sources = [root / "videos" / f"{base}{ext}" for ext in (".wav",) + AUDIO_SOURCE_EXTS]
    stand_in = root / DEFAULT_AUDIO_CACHE / f"{base}.wav"
    if any(p.is_file() for p in sources):
        return None
    if policy == "error":
        raise AffWild2Error(f"video {video.video!r} has no audio: none of {', '.join(map(str, sources))} exists; "
                            f"put its wav or video file into {root / 'videos'}, or set data.missing_audio: "
                            f"silence to use near-silence for it")
    if not stand_in.is_file() and video.fps:
        import numpy as np
        import soundfile as sf
        rate = 16000
        n = int(round(video.n_frames / video.fps * rate))
        noise = np.random.default_rng(0).standard_normal(n) * 10 ** (SILENCE_DBFS / 20)
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(stand_in, ".wav") as partial:
            sf.write(partial, noise.astype(np.float32), rate, subtype="FLOAT", format="WAV")
    log.warning("video %r has no audio: its audio features are those of near-silence (%s)", video.video, stand_in)
    return stand_in


def index_real_corpus(root: str | Path, stage_out: str | Path = STAGE_OUT, faceless: str = "warn",
                      missing_audio: str = "error") -> dict:
    """Read every split of the real corpus at root (raising AffWild2Error with file and line on bad
    input) and write the stage's summary into stage_out/real_corpus.json. `faceless`: "error" stops
    at a video whose face folder holds no image, "warn" logs it (common.data.affwild2.read_split).
    `missing_audio`: "error" stops at a video with no audio at all, "silence" stands in near-silence."""
    root, stage_out = _checked_root(root), Path(stage_out)
    if root.resolve() == stage_out.resolve() or stage_out.resolve() in root.resolve().parents:
        raise AffWild2Error(f"data.root {root} lies inside the corpus stage's output {stage_out}: DVC would copy "
                            "the whole corpus into its cache. Keep the real Aff-Wild2 outside data/ and point "
                            "data.root at it.")
    if faceless not in FACELESS:
        raise ParamsError(f"params.yaml: data.faceless_videos is {faceless!r}; use warn or error")
    if missing_audio not in MISSING_AUDIO:
        raise ParamsError(f"params.yaml: data.missing_audio is {missing_audio!r}; use error or silence")
    summary = {"source": "real", "root": str(root.resolve()), "test_labels": test_labels_released(root),
               "splits": {}}
    for split in SPLITS:
        videos = read_split(root, split)
        no_face = [v.video for v in videos if not v.has_image.any()]
        if no_face and faceless == "error":
            raise AffWild2Error(f"{root / 'cropped_aligned' / no_face[0]}: video {no_face[0]!r} has no face "
                                f"image ({len(no_face)} such videos in {split}); extract its faces, or set "
                                f"data.faceless_videos: warn to train on blank faces for it")
        silent = [v.video for v in videos if stand_in_silence(root, v, missing_audio)]
        summary["splits"][split] = {
            "tracks": len(videos), "frames": int(sum(v.n_frames for v in videos)),
            "faceless_tracks": no_face, "tracks_without_audio": silent,
            "labelled_frames": {"VA": int(sum(v.va_mask.sum() for v in videos)),
                                "EXPR": int(sum(v.expr_mask.sum() for v in videos)),
                                "AU": int(sum(v.au_mask.any(axis=1).sum() for v in videos))}}
    if not any(s["tracks"] for s in summary["splits"].values()):
        raise AffWild2Error(f"{root}: no annotated video in any split; expected the ABAW layout "
                            "(see README, 'Using the real Aff-Wild2')")
    summary["fingerprint"] = corpus_fingerprint(root)
    stage_out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stage_out / "real_corpus.json", summary)
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="generate the embedded corpus, or check and index the real one")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", choices=("smoke", "default", "paper"))
    ap.add_argument("--stage-out", default=str(STAGE_OUT), help="the stage's output folder for a real corpus")
    ap.add_argument("--fingerprint", metavar="FILE", help="only write the corpus fingerprint to FILE, when it changed")
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params, args.profile)
        if params["data"]["source"] not in ("synthetic", "real"):
            raise ParamsError(f"params.yaml: data.source is {params['data']['source']!r}; use synthetic or real")
        if args.fingerprint:
            changed = write_fingerprint(params, args.fingerprint)
            print(f"corpus fingerprint {'changed: rewrote' if changed else 'unchanged:'} {args.fingerprint}")
            return 0
        if params["data"]["source"] == "real":
            logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
            summary = index_real_corpus(params["data"]["root"], args.stage_out,
                                        params["data"]["faceless_videos"], params["data"]["missing_audio"])
            if not summary["test_labels"]:
                print("      test: test labels not released (no Test_Set folder, no MTL test.txt)")
            for split, s in summary["splits"].items():
                print(f"{split:>10}: {s['tracks']} tracks, {s['frames']} frames, labelled {s['labelled_frames']}")
            return 0
    except (ParamsError, AffWild2Error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return synthetic.main(["--params", args.params] + (["--profile", args.profile] if args.profile else []))


if __name__ == "__main__":
    sys.exit(main())
