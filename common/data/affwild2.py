"""Reader for the official ABAW (Aff-Wild2) release layout.

One reader serves the real corpus and the embedded synthetic one (common/data/synthetic/
writes exactly this layout):

    <root>/cropped_aligned/<video>/00001.jpg ...      1-based frame numbers; no file = no face found
    <root>/annotations/<task folder>/<split folder>/<video>.txt
    <root>/annotations/MTL_Challenge/{train,validation,test}.txt
    <root>/videos/<base>.wav | .mp4 | .avi            base = video name without _left / _right
    <root>/metadata/videos.csv                        optional (only the generated corpus has it)

Some real releases put the task folders directly under <root> (no `annotations/`); both work.

Label files: line 1 is a header, line i + 1 belongs to frame i. Unannotated frames carry a
marker: VA -5, EXPR -1, AU -1. The readers return (values, valid_mask) pairs in which masked
entries always hold the marker, so a consumer can rely on the mask alone. The parsers of the
label files live in common/data/label_files.py; this module reads the layout around them.

Every problem raises AffWild2Error with the file, the 1-based line where there is one, and
what to do about it: the real corpus has ~3 M label rows, and "could not convert string to
float" without a location is useless there.
"""
from __future__ import annotations

import csv
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.data.label_files import (AU_INVALID, AU_NAMES, EXPR_INVALID, FIX_CHECK_ROOT, MTL_IMAGE, TASK_READERS,
                                     VA_INVALID, AffWild2Error, read_mtl_table)
# Callers import the label vocabulary and the per-task readers from here too.
from common.data.label_files import EXPR_NAMES, HEADERS, VA_NAMES  # noqa: F401
from common.data.label_files import read_au_labels, read_expr_labels, read_va_labels  # noqa: F401
from common.files import atomic_path

log = logging.getLogger(__name__)

TASKS = ("VA", "EXPR", "AU")
TASK_DIRS = {"VA": "VA_Estimation_Challenge", "EXPR": "EXPR_Classification_Challenge",
             "AU": "AU_Detection_Challenge"}
SPLITS = ("train", "validation", "test")
SPLIT_DIRS = {"train": "Train_Set", "validation": "Validation_Set", "test": "Test_Set"}
MTL_DIR = "MTL_Challenge"
MTL_FILES = {"train": "train.txt", "validation": "validation.txt", "test": "test.txt"}

AUDIO_SOURCE_EXTS = (".mp4", ".avi")
DEFAULT_AUDIO_CACHE = "audio_wav"       # under <root> when audio_path() gets no cache_dir

_FRAME_FILE = re.compile(r"^(\d{5,})\.jpg$")
# <id>-<fps>-<W>x<H>, e.g. 12-24-1920x1080 or 118-30-640x480_left.
_FPS_IN_NAME = re.compile(r"^[^-]+-(\d+(?:\.\d+)?)-\d+x\d+$")
_TWO_PERSON_SUFFIX = re.compile(r"_(left|right)$")


# --------------------------------------------------------------------------------------------
# Frames, names, metadata
# --------------------------------------------------------------------------------------------

def frame_images(root: str | Path, video: str) -> dict[int, str]:
    """{1-based frame index: path} of the face JPEGs of one video, in frame order.

    Files not named like 00001.jpg are ignored (thumbnails, .DS_Store and the like).
    """
    folder = Path(root) / "cropped_aligned" / video
    if not folder.is_dir():
        raise AffWild2Error(f"{folder}: no such face-image folder for video {video!r}; {FIX_CHECK_ROOT}")
    found = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            match = _FRAME_FILE.match(entry.name)
            if match:
                found[int(match.group(1))] = entry.path
    if 0 in found:
        # A 0-based folder would silently pair every label with the wrong frame.
        raise AffWild2Error(f"{found[0]}: frame numbers in cropped_aligned are 1-based (00001.jpg is "
                            f"the first frame, matching label line 2); renumber this folder from 00001")
    return dict(sorted(found.items()))


def audio_base(video: str) -> str:
    """The audio/video file name of a face track: `_left` / `_right` tracks share one file."""
    return _TWO_PERSON_SUFFIX.sub("", video)


def parse_fps(video: str, default: float | None = None) -> float | None:
    """The frame rate written in names like `12-24-1920x1080` (24.0); `default` otherwise."""
    match = _FPS_IN_NAME.match(audio_base(video))
    if match:
        fps = float(match.group(1))
        if fps > 0:
            return fps
    return default


_INFO_INT_COLUMNS = ("n_frames", "width", "height", "face_frames")
_INFO_FLOAT_COLUMNS = ("fps",)


def read_video_info(root: str | Path) -> dict[str, dict]:
    """video -> row of metadata/videos.csv (numbers converted), or {} when the file is absent."""
    path = Path(root) / "metadata" / "videos.csv"
    if not path.is_file():
        return {}
    info = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "video" not in reader.fieldnames:
            raise AffWild2Error(f"{path}:1: header {reader.fieldnames} has no 'video' column; expected "
                                f"video,subject,split,fps,n_frames,width,height. Regenerate the corpus "
                                f"or delete the file (it is optional).")
        for line_no, row in enumerate(reader, start=2):
            if None in row or None in row.values():
                raise AffWild2Error(f"{path}:{line_no}: {len(reader.fieldnames)} fields expected; "
                                    f"fix the line or regenerate the corpus")
            video = row["video"].strip()
            if not video:
                raise AffWild2Error(f"{path}:{line_no}: empty video name; fix the line")
            if video in info:
                raise AffWild2Error(f"{path}:{line_no}: video {video!r} listed twice; keep one row")
            for columns, kind in ((_INFO_INT_COLUMNS, int), (_INFO_FLOAT_COLUMNS, float)):
                for column in columns:
                    if column not in row:
                        continue
                    text = (row[column] or "").strip()
                    try:
                        row[column] = kind(text) if text else None
                    except ValueError:
                        raise AffWild2Error(f"{path}:{line_no}: {column} = {text!r} is not "
                                            f"{'an integer' if kind is int else 'a number'}; "
                                            f"fix the line or regenerate the corpus") from None
            info[video] = row
    return info


def subject_of(video: str, info: dict | None = None) -> str:
    """Subject id from metadata when known, else the video name itself.

    On the real corpus the only identity information is the video name, and the `_left` and
    `_right` tracks of a two-person video are different people, so they stay distinct.
    """
    row = (info or {}).get(video) or {}
    subject = (row.get("subject") or "").strip()
    return subject or video


def find_annotation_dir(root: str | Path) -> Path:
    """`root/annotations` if it holds task folders, else `root` if it does (some releases)."""
    root = Path(root)
    if not root.is_dir():
        raise AffWild2Error(f"{root}: the Aff-Wild2 root folder does not exist; {FIX_CHECK_ROOT}")
    task_folders = list(TASK_DIRS.values()) + [MTL_DIR]
    for candidate in (root / "annotations", root):
        if any((candidate / name).is_dir() for name in task_folders):
            return candidate
    # Neither has them: name the standard place in the errors that follow.
    return root / "annotations"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise AffWild2Error(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


# --------------------------------------------------------------------------------------------
# One split, merged across tasks
# --------------------------------------------------------------------------------------------

@dataclass
class VideoAnnotations:
    """Every per-frame label of one face track, aligned with its frames (index t = frame t + 1).

    Tasks the video is not annotated for have all-False masks and marker values.
    """
    video: str
    split: str
    subject: str
    fps: float | None              # None when neither metadata nor the name gives it
    n_frames: int
    image_paths: list              # str, or None where no face was found
    va: np.ndarray                 # (n_frames, 2) float32
    va_mask: np.ndarray            # (n_frames,) bool
    expr: np.ndarray               # (n_frames,) int64
    expr_mask: np.ndarray          # (n_frames,) bool
    au: np.ndarray                 # (n_frames, 12) float32
    au_mask: np.ndarray            # (n_frames, 12) bool
    tasks: tuple                   # annotated tasks, in TASKS order
    audio_path: Path | None        # videos/<base>.wav if it exists; else use audio_path()
    label_files: dict = field(default_factory=dict)   # task -> Path of its label file

    def __len__(self) -> int:
        return self.n_frames

    @property
    def has_image(self) -> np.ndarray:
        return np.array([p is not None for p in self.image_paths], dtype=bool)


def _empty_labels(n: int) -> dict:
    return {"va": np.full((n, 2), VA_INVALID, np.float32), "va_mask": np.zeros(n, bool),
            "expr": np.full(n, EXPR_INVALID, np.int64), "expr_mask": np.zeros(n, bool),
            "au": np.full((n, len(AU_NAMES)), AU_INVALID, np.float32),
            "au_mask": np.zeros((n, len(AU_NAMES)), bool)}


def test_labels_released(root: str | Path) -> bool:
    """Whether the corpus at root holds test labels: a Test_Set folder of some task or the MTL
    test file. The real release has neither (test labels stay with the ABAW organisers); the
    generated corpus keeps them. Papers and the report ask this before scoring the test split."""
    ann_dir = find_annotation_dir(root)
    return (any((ann_dir / TASK_DIRS[t] / SPLIT_DIRS["test"]).is_dir() for t in TASKS)
            or (ann_dir / MTL_DIR / MTL_FILES["test"]).exists())


def read_split(root: str | Path, split: str, tasks: tuple = TASKS) -> list[VideoAnnotations]:
    """Every annotated video of one split, labels of all requested tasks merged, sorted by name.

    The test split of a corpus without test labels (the real release) is empty: no label file
    says how many frames a test video has, so there is nothing to read (test_labels_released)."""
    _check_split(split)
    root = Path(root)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise AffWild2Error(f"unknown task {unknown[0]!r}; use some of {', '.join(TASKS)}")
    ann_dir = find_annotation_dir(root)
    if split == "test" and not test_labels_released(root):
        log.info("Aff-Wild2 %s: test labels not released (no Test_Set folder, no MTL %s): the test "
                 "split is empty", root, MTL_FILES["test"])
        return []
    info = read_video_info(root)

    # video -> task -> (path, values, mask)
    labels: dict[str, dict] = {}
    for task in TASKS:
        if task not in tasks:
            continue
        folder = ann_dir / TASK_DIRS[task] / SPLIT_DIRS[split]
        if not folder.is_dir():
            hidden = " (the real corpus does not release test labels)" if split == "test" else ""
            raise AffWild2Error(f"{folder}: split folder not found{hidden}; {FIX_CHECK_ROOT}, "
                                f"or leave {task} out of the requested tasks")
        for path in sorted(folder.glob("*.txt")):
            video = path.stem
            if not (root / "cropped_aligned" / video).is_dir():
                raise AffWild2Error(
                    f"{path}: unknown video {video!r}: there is no face folder "
                    f"{root / 'cropped_aligned' / video}; the label file name must equal the "
                    f"cropped_aligned folder name (check the name, or that data.root is the right corpus)")
            values, mask = TASK_READERS[task](path)
            labels.setdefault(video, {})[task] = (path, values, mask)

    videos, missing_faces, total_frames, faceless = [], 0, 0, []
    for video in sorted(labels):
        by_task = labels[video]
        n_rows = _agree_on_rows(video, by_task)
        some_file = next(iter(by_task.values()))[0]
        row = info.get(video)
        n_frames = n_rows
        if row is not None and row.get("n_frames") is not None and row["n_frames"] != n_rows:
            raise AffWild2Error(
                f"{some_file}: {n_rows} label rows, but metadata/videos.csv says video {video!r} has "
                f"{row['n_frames']} frames; the file must have exactly one row per frame (regenerate "
                f"the corpus or fix the file)")
        images = frame_images(root, video)
        if images:
            last = next(reversed(images))
            if last > n_rows:
                raise AffWild2Error(
                    f"{some_file}: {n_rows} label rows but face images go up to frame {last:05d}.jpg; "
                    f"labels and frames are mis-aligned (line i + 1 labels frame i). Check that this "
                    f"label file belongs to this video and has every row.")
        else:
            faceless.append(video)
        fps = row.get("fps") if row else None
        fps = fps if fps else parse_fps(video)
        wav = root / "videos" / f"{audio_base(video)}.wav"
        if (row is None or row.get("n_frames") is None) and fps and wav.is_file():
            # Without metadata (the real release) the audio is the other witness of the video's
            # length: the face images alone cannot show label rows past the last face.
            _check_audio_length(some_file, wav, n_rows, fps)
        image_paths = [images.get(t + 1) for t in range(n_frames)]
        missing = sum(p is None for p in image_paths)
        missing_faces += missing
        total_frames += n_frames

        merged = _empty_labels(n_frames)
        for task, (_, values, mask) in by_task.items():
            key = task.lower()
            merged[key], merged[key + "_mask"] = values, mask
        videos.append(VideoAnnotations(
            video=video, split=split, subject=subject_of(video, info),
            fps=fps, n_frames=n_frames, image_paths=image_paths,
            tasks=tuple(t for t in TASKS if t in by_task),
            audio_path=wav if wav.is_file() else None,
            label_files={t: p for t, (p, _, _) in by_task.items()}, **merged))

    share = 100.0 * missing_faces / total_frames if total_frames else 0.0
    # Frames without a face are normal on the real corpus; a large share hints at a wrong root.
    log.info("Aff-Wild2 %s (%s): %d videos, %d frames, %d without a face image (%.1f%%)",
             split, "+".join(tasks), len(videos), total_frames, missing_faces, share)
    for video in faceless:
        # Its frames would all be grey faces: a wrong folder name or a failed face extraction.
        log.warning("Aff-Wild2 %s: video %r has no face image in %s; it trains on blank faces "
                    "(set data.faceless_videos: error to stop instead)", split, video,
                    root / "cropped_aligned" / video)
    no_fps = [v.video for v in videos if v.fps is None]
    if no_fps:
        log.warning("Aff-Wild2 %s: frame rate unknown for %d videos (e.g. %s): not in metadata nor "
                    "in the name; fps is None for them", split, len(no_fps), no_fps[0])
    return videos


AUDIO_SLACK_S = 1.0     # how far the audio may end from the last label row's time


def _check_audio_length(label_file: Path, wav: Path, n_rows: int, fps: float) -> None:
    """Label rows / fps must match the audio's duration within AUDIO_SLACK_S (a header read)."""
    import soundfile as sf
    try:
        seconds = sf.info(str(wav)).duration
    except RuntimeError as e:
        raise AffWild2Error(f"{wav}: cannot read this wav ({e}); re-extract it from the video") from None
    if abs(n_rows / fps - seconds) > AUDIO_SLACK_S:
        raise AffWild2Error(
            f"{label_file}: {n_rows} label rows at {fps:g} fps last {n_rows / fps:.1f} s, but its audio "
            f"{wav} lasts {seconds:.1f} s; one row per video frame is expected (line i + 1 labels frame "
            f"i). Check that the file belongs to this video, has no extra rows, and the fps in the name.")


def _agree_on_rows(video: str, by_task: dict) -> int:
    counts = {task: len(values) for task, (_, values, _) in by_task.items()}
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{by_task[t][0]} has {n}" for t, n in counts.items())
        raise AffWild2Error(f"video {video!r}: its label files disagree on the number of frames "
                            f"({detail} rows); every task's file must have one row per frame. "
                            f"Re-download the annotations.")
    return next(iter(counts.values()))


# --------------------------------------------------------------------------------------------
# ABAW3 MTL (static) files
# --------------------------------------------------------------------------------------------

def read_mtl(root: str | Path, split: str, allow_missing_images: bool = False) -> dict[str, np.ndarray]:
    """The ABAW3 MTL file of one split as aligned arrays, one entry per row.

    Keys: video, frame (1-based), image_path, has_image, va, va_mask, expr, expr_mask, au, au_mask.
    A row whose image is missing raises unless `allow_missing_images` (has_image tells which).
    """
    _check_split(split)
    root = Path(root)
    path = find_annotation_dir(root) / MTL_DIR / MTL_FILES[split]
    if split == "test" and not test_labels_released(root):
        log.info("Aff-Wild2 %s: test labels not released: the MTL test set is empty", root)
        return _empty_mtl()
    if not path.exists():   # a directory there gets read_mtl_table's message
        hidden = " (the real corpus does not release test labels)" if split == "test" else ""
        raise AffWild2Error(f"{path}: MTL file not found{hidden}; {FIX_CHECK_ROOT}")
    images, table = read_mtl_table(path)
    parts = [MTL_IMAGE.match(name).groups() for name in images]
    videos = np.array([video for video, _ in parts], dtype=str)
    frames = np.array([int(number) for _, number in parts], dtype=np.int64)
    image_paths = np.array([str(root / "cropped_aligned" / name) for name in images], dtype=str)
    has_image = _mtl_images_exist(root, path, videos, frames, allow_missing_images)

    va = table[:, 0:2].astype(np.float32)
    va_mask = ~(va == VA_INVALID).any(axis=1)
    va[~va_mask] = VA_INVALID
    expr = table[:, 2].astype(np.int64)
    au = table[:, 3:].astype(np.float32)
    return {"video": videos, "frame": frames, "image_path": image_paths, "has_image": has_image,
            "va": va, "va_mask": va_mask, "expr": expr, "expr_mask": expr != EXPR_INVALID,
            "au": au, "au_mask": au != AU_INVALID}


def _empty_mtl() -> dict[str, np.ndarray]:
    """read_mtl's arrays with no row (the test split of a corpus without test labels)."""
    return {"video": np.array([], dtype=str), "frame": np.zeros(0, np.int64),
            "image_path": np.array([], dtype=str), "has_image": np.zeros(0, bool),
            **{k: v for k, v in _empty_labels(0).items()}}


def _mtl_images_exist(root: Path, path: Path, videos: np.ndarray, frames: np.ndarray,
                      allow_missing: bool) -> np.ndarray:
    known: dict[str, dict] = {}
    for video in np.unique(videos):
        folder = root / "cropped_aligned" / video
        known[video] = frame_images(root, video) if folder.is_dir() else {}
    has_image = np.array([f in known[v] for v, f in zip(videos, frames)], dtype=bool)
    if not allow_missing and not has_image.all():
        i = int(np.argmin(has_image))
        image = root / "cropped_aligned" / videos[i] / f"{frames[i]:05d}.jpg"
        raise AffWild2Error(f"{path}:{i + 2}: image {image} does not exist; {FIX_CHECK_ROOT}, or "
                            f"pass allow_missing_images=True to keep such rows (has_image marks them)")
    return has_image


# --------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------

def audio_path(root: str | Path, video: str, cache_dir: str | Path | None = None) -> Path:
    """A wav with the video's audio track: videos/<base>.wav, or extracted once with ffmpeg.

    Extraction keeps the source's channels and sample rate (each feature extractor resamples
    to what its paper uses) and lands in `cache_dir` (default <root>/audio_wav) under a
    temporary name first, so an interrupted run never leaves a truncated wav to be reused.
    """
    root = Path(root)
    base = audio_base(video)
    ready = root / "videos" / f"{base}.wav"
    if ready.is_file():
        return ready
    cache = Path(cache_dir) if cache_dir is not None else root / DEFAULT_AUDIO_CACHE
    cached = cache / f"{base}.wav"
    if cached.is_file():
        return cached
    sources = [root / "videos" / f"{base}{ext}" for ext in AUDIO_SOURCE_EXTS]
    source = next((s for s in sources if s.is_file()), None)
    if source is None:
        looked = ", ".join(str(p) for p in [ready, cached] + sources)
        raise AffWild2Error(f"no audio for video {video!r}: looked for {looked}; put the video or "
                            f"its wav into {root / 'videos'} ({FIX_CHECK_ROOT})")
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AffWild2Error(f"{source}: ffmpeg is needed to extract its audio but is not on PATH; "
                            f"install it (conda install ffmpeg, or apt-get install ffmpeg) or put "
                            f"{base}.wav into {root / 'videos'}")
    with atomic_path(cached, ".wav") as partial:
        command = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(source),
                   "-vn", "-acodec", "pcm_s16le", "-f", "wav", str(partial)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not partial.is_file():
            raise AffWild2Error(f"{source}: ffmpeg could not extract the audio (exit {done.returncode}): "
                                f"{done.stderr.strip()[-500:]}; check that the file plays and has an "
                                f"audio track, or put {base}.wav into {root / 'videos'}")
    return cached
