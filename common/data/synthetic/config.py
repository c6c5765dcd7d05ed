"""The corpus section of params.yaml, checked, and the random generator of each job."""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from common.data.affwild2 import TASK_DIRS
from common.params import ParamsError

# embedded: the official layout plus test labels, metadata/ (videos.csv, latent truth, audio events).
# real_release: only what the real Aff-Wild2 ships (as_real_release), to run `data.source: real` on.
LAYOUTS = ("embedded", "real_release")


@dataclass(frozen=True)
class CorpusConfig:
    """The `corpus` section of params.yaml, checked for ranges. No field has a default: params.yaml
    is the one place that sets them, and profiles change them (params/*.yaml)."""
    layout: str
    seed: int
    subjects: int
    videos_per_subject: int
    two_person_videos: int
    seconds: tuple
    fps: int
    image_size: int
    jpeg_quality: int
    split_fractions: tuple
    no_face_fraction: float
    occlusion_fraction: float
    blur_fraction: float
    va_timescale_s: float
    expr_hold_s: tuple
    audio_rate: int
    audio_channels: int
    speech_fraction: float
    snr_db: float
    second_voice_db: float
    second_voice_fraction: float
    coverage: dict
    invalid_fraction: float
    label_noise: dict
    mtl: dict
    side_sets: dict
    workers: int

    @classmethod
    def from_params(cls, corpus: dict) -> "CorpusConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(corpus) - known)
        if unknown:
            raise ParamsError(f"params.yaml: unknown key corpus.{unknown[0]}; known: {sorted(known)}")
        missing = sorted(known - set(corpus))
        if missing:
            raise ParamsError(f"params.yaml: corpus.{missing[0]} is missing; build the config from the whole "
                              f"corpus section (load_params(...)['corpus']), which sets every key")
        cfg = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in corpus.items()})
        cfg.check()
        return cfg

    def check(self) -> None:
        def bad(key, why):
            raise ParamsError(f"params.yaml: corpus.{key} = {getattr(self, key)!r}: {why}")
        if self.layout not in LAYOUTS:
            bad("layout", f"use one of {', '.join(LAYOUTS)}")
        if self.subjects < 3:
            bad("subjects", "need at least 3 subjects (one per split)")
        if self.videos_per_subject < 1:
            bad("videos_per_subject", "must be >= 1")
        if self.two_person_videos < 0:
            bad("two_person_videos", "must be >= 0")
        if len(self.seconds) != 2 or not 2 <= self.seconds[0] <= self.seconds[1]:
            bad("seconds", "give [min, max] with 2 <= min <= max")
        if not 5 <= self.fps <= 120:
            bad("fps", "use a video frame rate between 5 and 120")
        if not 16 <= self.image_size <= 256:
            bad("image_size", "use 16..256 px (112 is the ABAW cropped-aligned size)")
        if not 10 <= self.jpeg_quality <= 100:
            bad("jpeg_quality", "use 10..100")
        if len(self.split_fractions) != 3 or min(self.split_fractions) <= 0 \
                or abs(sum(self.split_fractions) - 1) > 1e-6:
            bad("split_fractions", "give three positive train/validation/test shares summing to 1")
        for key in ("no_face_fraction", "occlusion_fraction", "blur_fraction", "invalid_fraction",
                    "speech_fraction", "second_voice_fraction"):
            if not 0 <= getattr(self, key) < 1:
                bad(key, "must be in [0, 1)")
        if self.va_timescale_s <= 0:
            bad("va_timescale_s", "must be > 0 seconds")
        if len(self.expr_hold_s) != 2 or not 0 < self.expr_hold_s[0] <= self.expr_hold_s[1]:
            bad("expr_hold_s", "give [min, max] seconds with 0 < min <= max")
        if self.audio_rate not in (8000, 16000, 22050, 44100, 48000):
            bad("audio_rate", "use 16000 (Zhang, Liu) or another standard rate")
        if self.audio_channels not in (1, 2):
            bad("audio_channels", "use 1 (mono) or 2 (stereo)")
        if set(self.coverage or {}) != set(TASK_DIRS) or not all(0 < v <= 1 for v in self.coverage.values()):
            bad("coverage", "give VA, EXPR and AU shares in (0, 1]")
        if set(self.label_noise or {}) != set(TASK_DIRS) or not all(0 <= v < 0.5 for v in self.label_noise.values()):
            bad("label_noise", "give VA (std), EXPR and AU (flip rates) in [0, 0.5)")
        if set(self.mtl or {}) != {"frame_stride", "full_label_fraction"} or self.mtl["frame_stride"] < 1 \
                or not 0 <= self.mtl["full_label_fraction"] <= 1:
            bad("mtl", "give frame_stride >= 1 and full_label_fraction in [0, 1]")
        if set(self.side_sets or {}) != {"affectnet", "expw", "afew_va"} or min(self.side_sets.values()) < 1:
            bad("side_sets", "give affectnet, expw and afew_va image counts >= 1")
        if self.workers < 1:
            bad("workers", "must be >= 1")


def job_rng(cfg: CorpusConfig, kind: int, index: int):
    """Job `index` of `kind` draws from its own generator: same seed, same bytes, any worker count.

    kind: 0 the plan, 1 a video, 2/3/4 a chunk of AffectNet/ExpW/AFEW-VA stills, 5 a subject, 6 the MTL files.
    """
    return np.random.default_rng([cfg.seed, kind, index])
