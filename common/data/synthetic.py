"""The embedded corpus: a synthetic Aff-Wild2 written in the official ABAW layout.

The real Aff-Wild2 needs a signed licence, so it never ships. This generator writes a corpus with
the same structure (cropped-aligned JPEG faces, per-task annotation files, the ABAW3 MTL file,
two-person `_left`/`_right` videos sharing one audio track) and, more importantly, with the causal
links the four papers' claims rest on:

* valence and arousal are slow latent processes (so temporal context helps: Zhang Sec. 1,
  Vu Sec. 3.4, Liu Sec. 3.3);
* expressions are drawn from the current VA state, and 12 AUs follow the expression through FACS
  prototypes plus independent activations (so multi-task learning has shared structure to use:
  Jeong Sec. 3, Vu Sec. 3.1);
* the rendered face moves with the AUs: brows (AU1, AU2, AU4), lids (AU6, AU7), cheeks (AU6),
  nose/upper lip (AU10), lip corners (AU12, AU15), lips (AU23, AU24, AU25) and jaw (AU26), under
  pose, lighting, blur and occlusion;
* the voice's pitch, loudness, syllable rate and spectral tilt follow arousal strongly and
  valence weakly; the subject speaks only part of the time, over background noise and an
  unrelated second voice (the "noisy aural modality" Zhang's leader-follower fusion is built for);
* labels are incomplete as in the real corpus: per-task coverage, unannotated runs (-5 / -1),
  annotator lag and noise, a partially labelled MTL subset, and still-image side sets standing in
  for AffectNet (EXPR + VA), ExpW (EXPR) and AFEW-VA (VA).

Absolute scores on this corpus are not comparable with published ones; the reports say so.
Same seed, same bytes: every job draws from its own generator seeded by (seed, job), so the
output does not depend on the number of worker processes.

Run: `python -m common.data.synthetic [--profile smoke] [--out DIR]`.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image
from scipy.signal import lfilter

from common.data.affwild2 import AU_NAMES, EXPR_NAMES, MTL_DIR, MTL_FILES, SPLIT_DIRS, TASK_DIRS
from common.params import ParamsError, load_params

# Where each expression sits in the valence-arousal plane (Russell's circumplex, roughly as
# AffectNet's per-class VA means) and how common it is a priori (Neutral dominates real video).
EXPR_VA = np.array([(0.00, -0.10), (-0.55, 0.55), (-0.65, 0.15), (-0.35, 0.75),
                    (0.65, 0.35), (-0.55, -0.45), (0.25, 0.75), (0.20, -0.35)], np.float32)
EXPR_PRIOR = np.array([3.0, 1.0, 0.7, 0.7, 2.0, 1.0, 0.8, 1.2], np.float32)
EXPR_VA_WIDTH = 0.35

# FACS prototypes restricted to the 12 ABAW AUs (Ekman & Friesen; e.g. happiness = AU6+12+25).
_AU = {name: i for i, name in enumerate(AU_NAMES)}
EXPR_AUS = {
    "Neutral": (), "Anger": ("AU4", "AU7", "AU23", "AU24"), "Disgust": ("AU4", "AU10", "AU15"),
    "Fear": ("AU1", "AU2", "AU4", "AU7", "AU26"), "Happiness": ("AU6", "AU12", "AU25"),
    "Sadness": ("AU1", "AU4", "AU15"), "Surprise": ("AU1", "AU2", "AU25", "AU26"), "Other": (),
}
PROTOTYPES = np.zeros((len(EXPR_NAMES), len(AU_NAMES)), np.float32)
for _e, _name in enumerate(EXPR_NAMES):
    for _a in EXPR_AUS[_name]:
        PROTOTYPES[_e, _AU[_a]] = 1.0


# embedded: the official layout plus test labels, metadata/ (videos.csv, latent truth, audio events).
# real_release: only what the real Aff-Wild2 ships (as_real_release), to run `data.source: real` on.
LAYOUTS = ("embedded", "real_release")


@dataclass(frozen=True)
class CorpusConfig:
    """The `corpus` section of params.yaml, checked for ranges."""
    layout: str = "embedded"
    seed: int = 2022
    subjects: int = 24
    videos_per_subject: int = 1
    two_person_videos: int = 2
    seconds: tuple = (30, 50)
    fps: int = 30
    image_size: int = 48
    jpeg_quality: int = 90
    split_fractions: tuple = (0.6, 0.2, 0.2)
    no_face_fraction: float = 0.03
    occlusion_fraction: float = 0.05
    blur_fraction: float = 0.05
    va_timescale_s: float = 4.0
    expr_hold_s: tuple = (1.0, 4.0)
    audio_rate: int = 16000
    audio_channels: int = 1
    speech_fraction: float = 0.6
    snr_db: float = 10.0
    second_voice_db: float = -8.0
    second_voice_fraction: float = 0.3
    coverage: dict = None
    invalid_fraction: float = 0.04
    label_noise: dict = None
    mtl: dict = None
    side_sets: dict = None
    workers: int = 2

    @classmethod
    def from_params(cls, corpus: dict) -> "CorpusConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(corpus) - known)
        if unknown:
            raise ParamsError(f"params.yaml: unknown key corpus.{unknown[0]}; known: {sorted(known)}")
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


# --------------------------------------------------------------------------------------------
# Latent processes
# --------------------------------------------------------------------------------------------

def smooth_process(rng, n: int, timescale: float, rate: float) -> np.ndarray:
    """Unit-variance Gaussian process made by two cascaded Ornstein-Uhlenbeck filters.

    Two stages make the trace smooth like an annotator's joystick trace: its autocorrelation is
    (1 + |lag|/tau) exp(-|lag|/tau), 0.96 at a 1 s lag for tau = 4 s.
    """
    rho = np.exp(-1.0 / (timescale * rate))
    burn = int(3 * timescale * rate)
    x = rng.standard_normal(n + burn)
    gain = np.sqrt(1 - rho ** 2)
    x = lfilter([gain], [1, -rho], x)
    x = lfilter([gain], [1, -rho], x)
    # Var of the second stage for a unit-variance AR(1) input is (1 + rho^2) / (1 - rho^2).
    return (x[burn:] * np.sqrt((1 - rho ** 2) / (1 + rho ** 2))).astype(np.float32)


def markov_runs(rng, n: int, on_fraction: float, mean_on: float) -> np.ndarray:
    """A 0/1 sequence with the given share of ones in runs of mean length `mean_on` samples."""
    if on_fraction <= 0:
        return np.zeros(n, bool)
    mean_off = mean_on * (1 - on_fraction) / on_fraction
    out = np.zeros(n, bool)
    t, state = 0, rng.random() < on_fraction
    while t < n:
        length = max(1, int(rng.exponential(mean_on if state else mean_off)))
        out[t:t + length] = state
        t += length
        state = not state
    return out


def expression_probs(va: np.ndarray, classes: int = 8) -> np.ndarray:
    """p(expression | valence, arousal): prior times a Gaussian around each class's VA centre."""
    d2 = ((va[:, None, :] - EXPR_VA[None, :classes]) ** 2).sum(-1)
    logits = np.log(EXPR_PRIOR[:classes]) - d2 / (2 * EXPR_VA_WIDTH ** 2)
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


@dataclass
class Subject:
    """What stays fixed for one person: looks and voice."""
    sid: str
    skin: np.ndarray
    hair: np.ndarray
    background: np.ndarray
    lips: np.ndarray
    face_w: float
    face_h: float
    eye_y: float
    eye_dx: float
    brow_y: float
    mouth_y: float
    lip_t: float
    f0: float
    formant_scale: float
    syllable_rate: float
    va_offset: np.ndarray
    expressivity: float


def make_subject(rng, sid: str) -> Subject:
    tone = rng.uniform(0.25, 0.95)
    skin = np.array([0.55 + 0.4 * tone, 0.38 + 0.4 * tone, 0.28 + 0.38 * tone]) * rng.uniform(0.9, 1.1, 3)
    return Subject(
        sid=sid, skin=np.clip(skin, 0, 1), hair=rng.uniform(0.02, 0.45) * rng.uniform(0.7, 1.0, 3),
        background=rng.uniform(0.1, 0.9, 3), lips=np.clip(skin * [0.85, 0.45, 0.45] + 0.05, 0, 1),
        face_w=rng.uniform(0.60, 0.74), face_h=rng.uniform(0.82, 0.94), eye_y=rng.uniform(-0.24, -0.14),
        eye_dx=rng.uniform(0.25, 0.33), brow_y=rng.uniform(-0.41, -0.36), mouth_y=rng.uniform(0.42, 0.52),
        lip_t=rng.uniform(0.035, 0.06), f0=float(np.exp(rng.uniform(np.log(90), np.log(230)))),
        formant_scale=rng.uniform(0.85, 1.2), syllable_rate=rng.uniform(3.5, 5.5),
        va_offset=np.array([rng.normal(0, 0.2), rng.normal(0, 0.15)]), expressivity=rng.uniform(0.75, 1.1),
    )


def affect_trajectory(rng, subject: Subject, n: int, cfg: CorpusConfig) -> dict:
    """Latent valence/arousal, expression episodes and AU intensities for n frames (Sec. header)."""
    fps = cfg.fps
    valence = np.tanh(0.9 * smooth_process(rng, n, cfg.va_timescale_s, fps) + subject.va_offset[0])
    arousal = np.tanh(0.8 * smooth_process(rng, n, cfg.va_timescale_s, fps) + subject.va_offset[1])
    va = np.stack([valence, arousal], 1).astype(np.float32)

    # Expression episodes: the class is drawn from p(expression | VA) at the episode's start.
    expression = np.zeros(n, np.int64)
    target = np.zeros((n, len(AU_NAMES)), np.float32)
    t = 0
    while t < n:
        hold = int(rng.uniform(*cfg.expr_hold_s) * fps)
        c = rng.choice(len(EXPR_NAMES), p=expression_probs(va[t:t + 1])[0])
        proto = PROTOTYPES[c] * (rng.random(len(AU_NAMES)) < 0.85)
        if EXPR_NAMES[c] == "Other":   # "Other" is any other expression: a random AU mix
            proto = (rng.random(len(AU_NAMES)) < 0.2).astype(np.float32)
        expression[t:t + hold] = c
        target[t:t + hold] = proto * min(1.0, rng.uniform(0.7, 1.1) * subject.expressivity)
        t += hold
    # Independent activations (AUs also fire outside any prototype, e.g. a frown while thinking).
    for j in range(len(AU_NAMES)):
        target[:, j] = np.maximum(target[:, j], markov_runs(rng, n, 0.06, 0.6 * fps) * rng.uniform(0.7, 1.0))
    # Muscles do not jump: a first-order lag of ~0.1 s between target and intensity.
    alpha = 1 - np.exp(-1.0 / (0.1 * fps))
    au = lfilter([alpha], [1, alpha - 1], target, axis=0).astype(np.float32)
    return {"va": va, "expression": expression, "au": au}


# --------------------------------------------------------------------------------------------
# Faces
# --------------------------------------------------------------------------------------------

def _ramp(x: np.ndarray, edge: float) -> np.ndarray:
    """A one-pixel-wide soft step: 0 for x < -edge/2, 1 for x > edge/2."""
    return np.clip(0.5 + x / edge, 0.0, 1.0)


def _segment_distance(u, v, x0, y0, x1, y1):
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((u - x0) * dx + (v - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(u - x0 - t * dx, v - y0 - t * dy)


def _col(a: np.ndarray) -> np.ndarray:
    """A per-frame scalar (B,) -> (B, 1, 1), broadcastable over the image grid."""
    return a[:, None, None]


class _Canvas:
    """n frames being painted, with the face coordinates of every pixel.

    u, v: the head's frame (rolled, shifted and scaled by the pose); uf: u with the features slid
    sideways as the head turns (yaw); X, Y: the image grid in [-1, 1]; edge: the width of a
    one-pixel soft edge in face units.
    """

    def __init__(self, n: int, pose: dict, size: int, background: np.ndarray):
        g = np.linspace(-1, 1, size, dtype=np.float32)
        self.X, self.Y = g[None, None, :], g[None, :, None]
        c, sn = np.cos(_col(pose["roll"])), np.sin(_col(pose["roll"]))
        scale = _col(pose["scale"])
        Xs, Ys = (self.X - _col(pose["tx"])) / scale, (self.Y - _col(pose["ty"])) / scale
        self.u = c * Xs + sn * Ys
        self.v = -sn * Xs + c * Ys
        self.yaw = _col(pose["yaw"])
        self.uf = self.u - 0.18 * self.yaw           # features slide sideways when the head turns
        self.edge = 2.0 / size * 1.2 / scale
        self.img = np.empty((n, size, size, 3), np.float32)
        self.img[:] = background * (0.85 + 0.15 * self.Y[..., None])
        # Thin strokes (brows, wrinkles, folds) are drawn from segment distances over the image
        # rows they can reach only: a stroke of half-width w around a segment between heights y0
        # and y1 has alpha exactly 0 wherever |v - [y0, y1]| > w + edge / 2, so skipping those
        # rows changes no pixel and saves ~20 full-frame distance passes per frame.
        self.v_lo, self.v_hi = self.v.min(axis=(0, 2)), self.v.max(axis=(0, 2))   # v range of each row
        self.reach_edge = float(np.max(self.edge))

    def paint(self, alpha, colour, rows=slice(None)):
        """Alpha-blend `colour` in place, only over the rows the layer touches: most layers (brows,
        eyes, wrinkles) cover a thin band, and blending whole frames dominated the run time."""
        target = self.img[:, rows]
        alpha = np.broadcast_to(alpha, target.shape[:3])
        touched = np.flatnonzero(alpha.any(axis=(0, 2)))
        if touched.size == 0:
            return
        band = slice(touched[0], touched[-1] + 1)
        region = target[:, band]
        region += alpha[:, band, :, None] * (np.asarray(colour, np.float32) - region)

    def rows_near(self, y0, y1, width) -> slice:
        lo, hi = float(np.min([np.min(y0), np.min(y1)])), float(np.max([np.max(y0), np.max(y1)]))
        hit = np.flatnonzero((self.v_hi >= lo - width - self.reach_edge) & (self.v_lo <= hi + width + self.reach_edge))
        return slice(hit[0], hit[-1] + 1) if hit.size else slice(0, 0)

    def stroke(self, x0, y0, x1, y1, width):
        """(rows, ramp): the rows a stroke reaches and its soft coverage there."""
        rows = self.rows_near(y0, y1, width)
        d = _segment_distance(self.uf[:, rows], self.v[:, rows], x0, y0, x1, y1)
        return rows, _ramp(width - d, self.edge)


def _paint_head(cv: _Canvas, s: Subject, A: dict) -> np.ndarray:
    """Hair, then the skin of the face (the jaw drops with AU26); returns the face's coverage."""
    u, v, edge = cv.u, cv.v, cv.edge
    face_w = s.face_w * (1 - 0.15 * np.abs(cv.yaw))
    face = _ramp(1 - (u / face_w) ** 2 - ((v - 0.03 * A["AU26"]) / s.face_h) ** 2, edge * 2)
    cv.paint(_ramp(1 - (u / (s.face_w * 1.12)) ** 2 - ((v + 0.12) / (s.face_h * 0.98)) ** 2, edge)
             * (v < -0.25), s.hair)                                                   # hair
    cv.paint(face, s.skin)
    return face


def _paint_cheeks(cv: _Canvas, s: Subject, A: dict, face: np.ndarray) -> None:
    """AU6 raises and rounds the cheeks: a brighter, ruddier patch under each eye."""
    for side in (-1, 1):
        blob = np.exp(-(((cv.uf - side * 0.36) / 0.13) ** 2 + ((cv.v - 0.12 + 0.04 * A["AU6"]) / 0.09) ** 2))
        cv.paint(face * blob * 0.8 * A["AU6"], np.clip(s.skin * [1.15, 0.9, 0.85] + 0.08, 0, 1))


def _paint_brows(cv: _Canvas, s: Subject, A: dict, face: np.ndarray) -> None:
    """AU1 raises the inner end, AU2 the outer end, AU4 lowers and draws them together."""
    for side in (-1, 1):
        x_in = side * (0.10 + 0.02 - 0.05 * A["AU4"])
        y_in = s.brow_y - 0.13 * A["AU1"] + 0.12 * A["AU4"]
        y_out = s.brow_y - 0.02 - 0.13 * A["AU2"] + 0.03 * A["AU4"]
        rows, line = cv.stroke(x_in, y_in, side * 0.50, y_out, 0.035)
        cv.paint(face[:, rows] * line, s.hair * 0.8, rows)


def _paint_wrinkles(cv: _Canvas, s: Subject, A: dict, face: np.ndarray) -> None:
    """The wrinkles FACS lists as appearance changes: AU1 furrows the centre of the forehead, AU2
    its sides, AU4 cuts vertical lines between the brows, AU6 adds crow's feet at the eye corners."""
    wrinkle = s.skin * 0.55
    for k in range(2):
        y = s.brow_y - 0.16 - 0.08 * k
        for x0, x1, name in ((-0.18, 0.18, "AU1"), (-0.52, -0.26, "AU2"), (0.26, 0.52, "AU2")):
            rows, line = cv.stroke(x0, y, x1, y, 0.016)
            cv.paint(face[:, rows] * line * 0.9 * A[name], wrinkle, rows)
    for side in (-1, 1):
        rows, line = cv.stroke(side * 0.05, s.brow_y - 0.03, side * 0.04, s.brow_y + 0.10, 0.02)
        cv.paint(face[:, rows] * line * 0.95 * A["AU4"], wrinkle, rows)
        for dy in (-0.05, 0.0, 0.05):
            rows, line = cv.stroke(side * (s.eye_dx + 0.14), s.eye_y + dy, side * (s.eye_dx + 0.24), s.eye_y + 1.6 * dy,
                                   0.014)
            cv.paint(face[:, rows] * line * 0.8 * A["AU6"], wrinkle, rows)


def _paint_eyes(cv: _Canvas, s: Subject, A: dict, face: np.ndarray, blink: np.ndarray) -> None:
    """AU7 tightens the lids, AU6 narrows them from below; `blink` (per frame) closes them."""
    opening = np.clip(0.075 * (1 - 0.55 * A["AU7"] - 0.3 * A["AU6"]) * _col(blink), 0.006, None)
    for side in (-1, 1):
        ex = cv.uf - side * s.eye_dx
        eye = _ramp(1 - (ex / 0.12) ** 2 - ((cv.v - s.eye_y) / opening) ** 2, cv.edge)
        cv.paint(face * eye, (0.92, 0.92, 0.9))
        cv.paint(face * eye * _ramp(0.045 - np.hypot(ex, cv.v - s.eye_y), cv.edge), (0.08, 0.06, 0.05))


def _paint_nose(cv: _Canvas, s: Subject, A: dict, face: np.ndarray) -> None:
    """The nose, and AU10's raised upper lip deepening the nasolabial folds."""
    rows, line = cv.stroke(0.0, -0.08, 0.0, 0.22, 0.02)
    cv.paint(face[:, rows] * line * 0.35, s.skin * 0.6, rows)
    for side in (-1, 1):
        rows, line = cv.stroke(side * 0.12, 0.2, side * 0.27, 0.44, 0.02)
        cv.paint(face[:, rows] * line * (0.15 + 0.75 * A["AU10"]), s.skin * 0.5, rows)


def _paint_mouth(cv: _Canvas, s: Subject, A: dict, face: np.ndarray) -> None:
    """AU12 lifts the corners, AU15 pulls them down, AU23 narrows, AU24 presses the lips thin,
    AU25 parts them, AU26 drops the jaw."""
    v, edge = cv.v, cv.edge
    w = 0.27 * (1 + 0.3 * A["AU12"] - 0.22 * A["AU23"] - 0.08 * A["AU24"])
    rel = np.clip(cv.uf / w, -1.5, 1.5)
    inside = np.clip(1 - rel ** 2, 0, None)
    centre = s.mouth_y + 0.03 * A["AU26"] + (0.16 * A["AU15"] - 0.22 * A["AU12"]) * rel ** 2
    gap = (0.01 + 0.09 * A["AU25"] + 0.14 * A["AU26"]) * (1 - 0.8 * A["AU24"]) * np.sqrt(inside)
    lip = s.lip_t * (1 - 0.6 * A["AU24"]) * np.sqrt(inside) + 0.004
    upper_top = centre - gap / 2 - lip - 0.035 * A["AU10"] * inside
    lower_bot = centre + gap / 2 + lip + 0.05 * A["AU26"] * inside
    mouth_area = face * (inside > 0)
    cv.paint(mouth_area * _ramp(v - upper_top, edge) * _ramp(lower_bot - v, edge), s.lips)
    cv.paint(mouth_area * _ramp(gap / 2 - np.abs(v - centre), edge), (0.12, 0.04, 0.05))


def _add_nuisance(cv: _Canvas, s: Subject, pose: dict, rng) -> None:
    """Directional lighting, occluders, motion blur, sensor noise (in this order: rng draws too)."""
    img, X, Y = cv.img, cv.X, cv.Y
    ang = _col(pose["light_dir"])
    img *= _col(pose["light"])[..., None] * (1 + 0.35 * (np.cos(ang) * X + np.sin(ang) * Y))[..., None]
    for i in np.flatnonzero(pose["occlude"]):
        x0, y0 = rng.uniform(-0.8, 0.3), rng.uniform(-0.4, 0.5)
        box = (X[0] > x0) & (X[0] < x0 + rng.uniform(0.4, 0.8)) & (Y[0] > y0) & (Y[0] < y0 + rng.uniform(0.3, 0.6))
        img[i][box] = s.skin * rng.uniform(0.6, 0.9)
    for i in np.flatnonzero(pose["blur"]):
        k = rng.integers(2, 4)
        axis = int(rng.integers(0, 2))
        img[i] = np.mean([np.roll(img[i], o, axis=axis) for o in range(-k, k + 1)], axis=0)
    img += rng.normal(0, 0.015, img.shape).astype(np.float32)


def render_faces(s: Subject, au: np.ndarray, pose: dict, size: int, rng) -> np.ndarray:
    """Render B faces (B, size, size, 3) uint8 whose features move with the AU intensities (B, 12).

    pose holds per-frame arrays: roll, yaw, tx, ty, scale, light, light_dir, occlude, blur, blink.
    The layers are painted back to front, then the nuisance goes over the whole frame.
    """
    A = {name: au[:, i, None, None] for i, name in enumerate(AU_NAMES)}
    cv = _Canvas(au.shape[0], pose, size, s.background)
    face = _paint_head(cv, s, A)
    _paint_cheeks(cv, s, A, face)
    _paint_brows(cv, s, A, face)
    _paint_wrinkles(cv, s, A, face)
    _paint_eyes(cv, s, A, face, pose["blink"])
    _paint_nose(cv, s, A, face)
    _paint_mouth(cv, s, A, face)
    _add_nuisance(cv, s, pose, rng)
    return (np.clip(cv.img, 0, 1) * 255 + 0.5).astype(np.uint8)


def random_pose(rng, n: int, cfg: CorpusConfig, still: bool = False) -> dict:
    """Per-frame head pose and nuisance; smooth over time for video, independent for stills."""
    if still:
        walk = lambda scale: rng.normal(0, scale, n).astype(np.float32)  # noqa: E731
    else:
        walk = lambda scale: scale * smooth_process(rng, n, 1.5, cfg.fps)  # noqa: E731
    blink = np.ones(n, np.float32)
    if not still:
        starts = np.flatnonzero(rng.random(n) < 0.25 / cfg.fps)   # ~one blink every 4 s
        for t in starts:
            blink[t:t + max(1, cfg.fps // 10)] = 0.1
    return {
        "roll": walk(0.06), "yaw": np.clip(walk(0.25), -0.7, 0.7), "tx": walk(0.025), "ty": walk(0.025),
        "scale": 1 + walk(0.03), "light": np.float32(rng.uniform(0.7, 1.15)) + walk(0.05),
        "light_dir": np.full(n, rng.uniform(0, 2 * np.pi), np.float32), "blink": blink,
        "occlude": (markov_runs(rng, n, cfg.occlusion_fraction, 0.7 * cfg.fps) if not still
                    else rng.random(n) < cfg.occlusion_fraction),
        "blur": rng.random(n) < cfg.blur_fraction,
    }


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Voices
# --------------------------------------------------------------------------------------------

def _upsample(per_frame: np.ndarray, n_samples: int) -> np.ndarray:
    src = (np.arange(len(per_frame)) + 0.5) / len(per_frame)
    dst = (np.arange(n_samples) + 0.5) / n_samples
    return np.interp(dst, src, per_frame).astype(np.float32)


def _resonator(x: np.ndarray, freq: float, bandwidth: float, rate: int) -> np.ndarray:
    r = np.exp(-np.pi * bandwidth / rate)
    theta = 2 * np.pi * freq / rate
    return lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], x)


def synth_voice(rng, s: Subject, arousal: np.ndarray, valence: np.ndarray, speaking: np.ndarray,
                rate: int, n_samples: int) -> np.ndarray:
    """A buzzy vowel-like voice whose prosody follows the per-frame affect.

    Arousal raises pitch (+0.4 octave per unit), loudness (+7 dB), syllable rate (+30 %) and
    brightness (less spectral tilt); valence moves pitch and loudness only slightly (+0.08 octave,
    +1.5 dB), as in the acoustic-correlates literature (e.g. the eGeMAPS paper's review).
    """
    a, v = _upsample(arousal, n_samples), _upsample(valence, n_samples)
    gate = _upsample(speaking.astype(np.float32), n_samples)
    intonation = _upsample(smooth_process(rng, len(arousal), 0.4, len(arousal) / (n_samples / rate)), n_samples)
    f0 = s.f0 * 2.0 ** (0.4 * a + 0.08 * v + 0.06 * intonation)
    phase = np.cumsum(f0 / rate)
    source = 2 * (phase % 1.0) - 1                         # sawtooth: a glottal-pulse-like buzz
    low = lfilter([0.25], [1, -0.75], source)              # one-pole low-pass of the source
    bright = 0.35 + 0.25 * a
    source = low + bright * (source - low)                 # arousal flattens the spectral tilt
    syl_rate = s.syllable_rate * (1 + 0.3 * a)
    envelope = (0.5 - 0.5 * np.cos(2 * np.pi * np.cumsum(syl_rate / rate))) ** 1.5 * gate
    f1, f2 = 600 * s.formant_scale, 1500 * s.formant_scale
    voiced = 0.3 * source + _resonator(source, f1, 120, rate) * 3 + _resonator(source, f2, 180, rate) * 2
    loud = 10 ** ((7 * a + 1.5 * v) / 20)
    return (voiced * envelope * loud).astype(np.float32)


def mix_audio(rng, voice: np.ndarray, second_voice: np.ndarray | None, speaking: np.ndarray,
              cfg: CorpusConfig, channels: int) -> np.ndarray:
    """The subject's voice + an unrelated second talker + background noise at the configured SNR.

    The SNR is set against the voice's level while it speaks, so silent stretches are pure noise.
    A second channel, when asked for, hears the same scene at another gain and noise draw.
    """
    n_samples = len(voice)
    active = _upsample(speaking.astype(np.float32), n_samples) > 0.5
    ref = float(np.sqrt(np.mean(voice[active] ** 2))) if active.any() else 0.05
    out = []
    for ch in range(channels):
        noise = lfilter([1], [1, -0.9], rng.standard_normal(n_samples)).astype(np.float32)
        noise *= ref / 10 ** (cfg.snr_db / 20) / (noise.std() + 1e-9)
        scene = voice * (1.0 if ch == 0 else 0.85) + noise
        if second_voice is not None:
            scene = scene + second_voice
        out.append(scene)
    audio = np.stack(out, 1)
    return audio * (0.9 / (np.abs(audio).max() + 1e-9))


# --------------------------------------------------------------------------------------------
# Annotations
# --------------------------------------------------------------------------------------------

def annotate(rng, truth: dict, cfg: CorpusConfig) -> dict:
    """Annotator traces: lagged, noisy, with unannotated runs; plus binary AU labels."""
    n = len(truth["expression"])
    lag = int(rng.integers(0, max(1, cfg.fps // 5)))       # annotators react 0-0.2 s late
    shift = lambda x: np.concatenate([x[:1].repeat(lag, 0), x[:n - lag]]) if lag else x.copy()  # noqa: E731
    va = shift(truth["va"]) + cfg.label_noise["VA"] * np.stack(
        [smooth_process(rng, n, 0.3, cfg.fps) for _ in range(2)], 1)
    va = np.round(np.clip(va, -1, 1), 3)
    expr = shift(truth["expression"])
    flips = markov_runs(rng, n, cfg.label_noise["EXPR"], 0.4 * cfg.fps)
    expr[flips] = rng.integers(0, len(EXPR_NAMES), n)[flips]
    au = (shift(truth["au"]) > 0.5).astype(np.int64)
    au_flip = rng.random(au.shape) < cfg.label_noise["AU"]
    au[au_flip] = 1 - au[au_flip]
    # Unannotated stretches (the annotation tool lost the face, the annotator skipped a part).
    masks = {task: ~markov_runs(rng, n, cfg.invalid_fraction, 1.5 * cfg.fps) for task in TASK_DIRS}
    return {"va": va, "expr": expr, "au": au, "valid": masks}


def format_task_file(task: str, labels: dict) -> str:
    valid = labels["valid"][task]
    if task == "VA":
        header, rows = "valence,arousal", [f"{a:.3f},{b:.3f}" for a, b in labels["va"]]
        marker = "-5,-5"
    elif task == "EXPR":
        header, rows, marker = ",".join(EXPR_NAMES), [str(int(e)) for e in labels["expr"]], "-1"
    else:
        header, rows = ",".join(AU_NAMES), [",".join(map(str, r)) for r in labels["au"]]
        marker = ",".join(["-1"] * len(AU_NAMES))
    return header + "\n" + "\n".join(r if ok else marker for r, ok in zip(rows, valid)) + "\n"


# --------------------------------------------------------------------------------------------
# Jobs: one video, or one chunk of still images
# --------------------------------------------------------------------------------------------

@dataclass
class VideoPlan:
    index: int
    base: str                  # audio/video base name
    names: list                # face-track video names (1, or 2 with _left/_right)
    subjects: list
    split: str
    seconds: float
    tasks: list                # per face track: tuple of annotated tasks


def _job_rng(cfg: CorpusConfig, kind: int, index: int):
    return np.random.default_rng([cfg.seed, kind, index])


def generate_video(cfg: CorpusConfig, plan: VideoPlan, subjects: dict, out: Path) -> dict:
    """Render one video's faces, voice(s), labels and latent truth; return its summary row."""
    rng = _job_rng(cfg, 1, plan.index)
    n = int(round(plan.seconds * cfg.fps))
    n_samples = int(round(plan.seconds * cfg.audio_rate))
    voices, any_speech, rows = [], np.zeros(n, bool), []
    turn = markov_runs(rng, n, 0.5, 3 * cfg.fps)             # who holds the floor (two-person)
    for k, (name, sid, tasks) in enumerate(zip(plan.names, plan.subjects, plan.tasks)):
        s = subjects[sid]
        truth = affect_trajectory(rng, s, n, cfg)
        speaking = markov_runs(rng, n, cfg.speech_fraction, 2.5 * cfg.fps)
        if len(plan.names) == 2:
            speaking &= turn if k == 0 else ~turn
        # Talking opens the lips and drops the jaw: a visible audio-visual link (AU25/26).
        syl = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) * s.syllable_rate / cfg.fps)) * speaking
        truth["au"][:, _AU["AU25"]] = np.maximum(truth["au"][:, _AU["AU25"]], 0.8 * syl)
        truth["au"][:, _AU["AU26"]] = np.maximum(truth["au"][:, _AU["AU26"]], 0.55 * syl)
        voices.append(synth_voice(rng, s, truth["va"][:, 1], truth["va"][:, 0], speaking,
                                  cfg.audio_rate, n_samples))
        any_speech |= speaking
        labels = annotate(rng, truth, cfg)

        has_face = ~markov_runs(rng, n, cfg.no_face_fraction, 0.5 * cfg.fps)
        pose = random_pose(rng, n, cfg)
        frame_dir = out / "cropped_aligned" / name
        frame_dir.mkdir(parents=True)
        chunk = max(16, 2 ** 21 // (cfg.image_size ** 2 * 3))
        for t0 in range(0, n, chunk):
            t1 = min(n, t0 + chunk)
            frames = render_faces(s, truth["au"][t0:t1], {k_: p[t0:t1] for k_, p in pose.items()},
                                  cfg.image_size, rng)
            for t in range(t0, t1):
                if has_face[t]:
                    (frame_dir / f"{t + 1:05d}.jpg").write_bytes(encode_jpeg(frames[t - t0], cfg.jpeg_quality))
        for task in tasks:
            path = out / "annotations" / TASK_DIRS[task] / SPLIT_DIRS[plan.split] / f"{name}.txt"
            path.write_text(format_task_file(task, labels))
        np.savez_compressed(
            out / "metadata" / "latent" / f"{name}.npz", valence=truth["va"][:, 0], arousal=truth["va"][:, 1],
            expression=truth["expression"].astype(np.int8), au=(truth["au"] > 0.5).astype(np.int8),
            au_intensity=truth["au"].astype(np.float16), speech=speaking, has_face=has_face)
        rows.append({"video": name, "subject": sid, "split": plan.split, "fps": cfg.fps, "n_frames": n,
                     "width": cfg.image_size, "height": cfg.image_size, "audio": f"{plan.base}.wav",
                     "tasks": "+".join(tasks), "face_frames": int(has_face.sum()),
                     "labels": labels, "has_face": has_face, "speech": speaking})

    # One audio track per video; single-person videos get an unrelated second talker (in
    # two-person videos the other person already is one).
    second = None
    if len(plan.names) == 1:
        other = make_subject(rng, "other")
        other_arousal = np.tanh(smooth_process(rng, n, cfg.va_timescale_s, cfg.fps))
        other_talks = markov_runs(rng, n, cfg.second_voice_fraction, 2.0 * cfg.fps)
        second = 10 ** (cfg.second_voice_db / 20) * synth_voice(
            rng, other, other_arousal, np.zeros(n, np.float32), other_talks, cfg.audio_rate, n_samples)
        rows[0]["other_voice"] = other_talks
    audio = mix_audio(rng, np.sum(voices, 0), second, any_speech, cfg, cfg.audio_channels)
    sf.write(out / "videos" / f"{plan.base}.wav", audio, cfg.audio_rate, subtype="PCM_16")
    # Audio-event labels per video frame, for audio-network pre-training (issue: pipeline).
    # In a two-person video the "other voice" of one face track is the other person's speech.
    for k, row in enumerate(rows):
        other = rows[1 - k]["speech"] if len(rows) == 2 else row.pop("other_voice")
        lines = ["frame,speech,other_voice"] + [f"{t + 1},{int(a)},{int(b)}" for t, (a, b) in
                                                 enumerate(zip(row["speech"], other))]
        (out / "metadata" / "audio_events" / f"{row['video']}.csv").write_text("\n".join(lines) + "\n")
    for row in rows:
        del row["speech"]
    return {"rows": rows}


def generate_stills(cfg: CorpusConfig, set_name: str, start: int, count: int, out: Path) -> list:
    """One chunk of a still-image side set: new identities, one random affect state per image."""
    kind = {"affectnet": 2, "expw": 3, "afew_va": 4}[set_name]
    rng = _job_rng(cfg, kind, start)
    n_classes = 7          # AffectNet/ExpW basic expressions in ABAW order (no "Other")
    rows = []
    folder = out / "side" / set_name / "images"
    per_subject = 6
    for i0 in range(0, count, per_subject):
        s = make_subject(rng, f"{set_name}-{start + i0}")
        m = min(per_subject, count - i0)
        va = np.clip(rng.normal(0, 0.45, (m, 2)), -1, 1).astype(np.float32)
        expr = np.array([rng.choice(n_classes, p=p) for p in expression_probs(va, n_classes)])
        au = PROTOTYPES[expr] * (rng.random((m, len(AU_NAMES))) < 0.85) * rng.uniform(0.7, 1.0, (m, 1))
        au = np.maximum(au, (rng.random(au.shape) < 0.05) * 0.9).astype(np.float32)
        frames = render_faces(s, au, random_pose(rng, m, cfg, still=True), cfg.image_size, rng)
        for j in range(m):
            name = f"{start + i0 + j + 1:06d}.jpg"
            (folder / name).write_bytes(encode_jpeg(frames[j], cfg.jpeg_quality))
            rows.append((name, int(expr[j]), float(va[j, 0]), float(va[j, 1])))
    return rows


def _run_job(job):
    kind, args = job
    return kind, (generate_video(*args) if kind == "video" else generate_stills(*args))


# --------------------------------------------------------------------------------------------
# The plan and the driver
# --------------------------------------------------------------------------------------------

def plan_corpus(cfg: CorpusConfig) -> tuple[dict, list[VideoPlan]]:
    """Subjects, their subject-independent split, and every video with its annotated tasks."""
    rng = _job_rng(cfg, 0, 0)
    sids = [f"S{i:03d}" for i in range(cfg.subjects)]
    subjects = {sid: make_subject(_job_rng(cfg, 5, i), sid) for i, sid in enumerate(sids)}
    order = rng.permutation(cfg.subjects)
    n_train = max(1, int(round(cfg.split_fractions[0] * cfg.subjects)))
    n_val = max(1, int(round(cfg.split_fractions[1] * cfg.subjects)))
    n_train = min(n_train, cfg.subjects - n_val - 1)
    split_of = {}
    for rank, i in enumerate(order):
        split_of[sids[i]] = "train" if rank < n_train else "validation" if rank < n_train + n_val else "test"

    plans, idx = [], 0
    for sid in sids:
        for _ in range(cfg.videos_per_subject):
            base = f"syn{idx:03d}-{cfg.fps}-640x360"
            plans.append(VideoPlan(idx, base, [base], [sid], split_of[sid], 0.0, []))
            idx += 1
    for k in range(cfg.two_person_videos):
        split = ("train", "validation", "test")[k % 3]
        pool = [sid for sid in sids if split_of[sid] == split]
        if len(pool) < 2:
            continue
        pair = list(rng.choice(pool, 2, replace=False))
        base = f"syn{idx:03d}-{cfg.fps}-1280x720"
        plans.append(VideoPlan(idx, base, [base + "_left", base + "_right"], pair, split, 0.0, []))
        idx += 1

    for p in plans:
        p.seconds = float(rng.uniform(*cfg.seconds))
        for _ in p.names:
            tasks = [t for t in TASK_DIRS if rng.random() < cfg.coverage[t]]
            p.tasks.append(tuple(tasks or [list(TASK_DIRS)[int(rng.integers(0, 3))]]))
    # Every split needs every task annotated somewhere, or its tables cannot be computed.
    for split in SPLIT_DIRS:
        tracks = [(p, k) for p in plans if p.split == split for k in range(len(p.names))]
        for task in TASK_DIRS:
            if tracks and not any(task in p.tasks[k] for p, k in tracks):
                p, k = tracks[0]
                p.tasks[k] = tuple(t for t in TASK_DIRS if t in p.tasks[k] or t == task)
    return subjects, plans


def write_mtl(cfg: CorpusConfig, rows: list, out: Path) -> dict:
    """The ABAW3 MTL (static) files: every `frame_stride`-th face frame; some rows fully labelled."""
    rng = _job_rng(cfg, 6, 0)
    lines = {split: [] for split in SPLIT_DIRS}
    for row in rows:
        lab, face = row["labels"], row["has_face"]
        for t in range(0, row["n_frames"], cfg.mtl["frame_stride"]):
            if not face[t]:
                continue
            full = rng.random() < cfg.mtl["full_label_fraction"]
            keep = np.ones(3, bool) if full else rng.random(3) < 0.5
            if not keep.any():
                keep[rng.integers(0, 3)] = True
            ok = [keep[i] and lab["valid"][task][t] for i, task in enumerate(TASK_DIRS)]
            va = f"{lab['va'][t, 0]:.3f},{lab['va'][t, 1]:.3f}" if ok[0] else "-5,-5"
            ex = str(int(lab["expr"][t])) if ok[1] else "-1"
            au = ",".join(map(str, lab["au"][t])) if ok[2] else ",".join(["-1"] * len(AU_NAMES))
            lines[row["split"]].append(f"{row['video']}/{t + 1:05d}.jpg,{va},{ex},{au}")
    header = "image,valence,arousal,expression," + ",".join(AU_NAMES)
    for split, body in lines.items():
        (out / "annotations" / MTL_DIR / MTL_FILES[split]).write_text(header + "\n" + "\n".join(body) + "\n")
    return {split: len(body) for split, body in lines.items()}


def generate(cfg: CorpusConfig, out: str | Path, progress: bool = True) -> dict:
    """Write the whole corpus to `out` (atomically: into a temp folder, then renamed)."""
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    started = time.time()
    try:
        for sub in ["cropped_aligned", "videos", "metadata/latent", "metadata/audio_events",
                    f"annotations/{MTL_DIR}"] + [f"side/{s}/images" for s in cfg.side_sets] + \
                   [f"annotations/{t}/{s}" for t in TASK_DIRS.values() for s in SPLIT_DIRS.values()]:
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        subjects, plans = plan_corpus(cfg)
        jobs = [("video", (cfg, p, {sid: subjects[sid] for sid in p.subjects}, tmp)) for p in plans]
        chunk = 250
        for name, count in cfg.side_sets.items():
            jobs += [("stills", (cfg, name, s, min(chunk, count - s), tmp)) for s in range(0, count, chunk)]
        # Longest first keeps both workers busy to the end.
        jobs.sort(key=lambda j: -(j[1][1].seconds * len(j[1][1].names) if j[0] == "video" else 8.0))
        results = _map(jobs, cfg.workers, progress)
        video_rows = sorted((r for kind, res in results if kind == "video" for r in res["rows"]),
                            key=lambda r: r["video"])
        stills = {name: [] for name in cfg.side_sets}
        for (kind, args), (_, res) in zip(jobs, results):
            if kind == "stills":
                stills[args[1]].extend(res)
        mtl_counts = write_mtl(cfg, video_rows, tmp)
        _write_tables(tmp, video_rows, stills, subjects, plans)
        summary = summarise(video_rows, stills, mtl_counts, time.time() - started, tmp)
        (tmp / "metadata" / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if cfg.layout == "real_release":
            as_real_release(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return summary


def as_real_release(root: Path) -> None:
    """Cut a generated corpus down to what the real Aff-Wild2 release holds: no test labels (no
    Test_Set folders, no MTL test.txt: the organisers keep them), no metadata/ (no videos.csv, so
    frame rates come from the names and frame counts from the label files; no latent truth, no
    audio events), and one training video without audio (its wav removed: data.missing_audio). The
    two-person _left/_right tracks and the frames without a face stay as generated; the side/
    still-image sets stand in for the separate sets a user converts."""
    with open(root / "metadata" / "videos.csv", newline="") as f:
        train = [r["audio"] for r in csv.DictReader(f) if r["split"] == "train" and r["video"] + ".wav" == r["audio"]]
    (root / "videos" / train[0]).unlink()
    for task_dir in TASK_DIRS.values():
        shutil.rmtree(root / "annotations" / task_dir / SPLIT_DIRS["test"])
    (root / "annotations" / MTL_DIR / MTL_FILES["test"]).unlink()
    shutil.rmtree(root / "metadata")


def _map(jobs, workers, progress):
    from tqdm import tqdm
    bar = tqdm(total=len(jobs), desc="synthetic Aff-Wild2", unit="job", disable=None if progress else True,
               file=sys.stderr)
    results = [None] * len(jobs)
    if workers == 1:
        for i, job in enumerate(jobs):
            results[i] = _run_job(job)
            bar.update()
    else:
        # fork is cheap and the jobs only read their arguments; results come back in job order.
        with mp.get_context("fork").Pool(workers) as pool:
            for i, res in enumerate(pool.imap(_run_job, jobs, chunksize=1)):
                results[i] = res
                bar.update()
    bar.close()
    return results


def _write_tables(out: Path, rows: list, stills: dict, subjects: dict, plans: list) -> None:
    cols = ["video", "subject", "split", "fps", "n_frames", "width", "height", "audio", "tasks", "face_frames"]
    with open(out / "metadata" / "videos.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        for r in rows:
            w.writerow([r[c] for c in cols])
    split_of = {sid: p.split for p in plans for sid in p.subjects}
    with open(out / "metadata" / "subjects.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["subject", "split", "f0_hz", "va_offset_valence", "va_offset_arousal"])
        for sid, s in subjects.items():
            w.writerow([sid, split_of.get(sid, "unused"), f"{s.f0:.1f}", f"{s.va_offset[0]:.3f}",
                        f"{s.va_offset[1]:.3f}"])
    headers = {"affectnet": ("image", "expression", "valence", "arousal"),
               "expw": ("image", "expression"), "afew_va": ("image", "valence", "arousal")}
    column = {"image": 0, "expression": 1, "valence": 2, "arousal": 3}   # generate_stills' tuples
    for name, items in stills.items():
        with open(out / "side" / name / "labels.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(headers[name])
            for item in sorted(items):
                w.writerow([item[column[h]] if h in ("image", "expression") else f"{item[column[h]]:.3f}"
                            for h in headers[name]])


def summarise(rows: list, stills: dict, mtl_counts: dict, seconds: float, root: Path) -> dict:
    frames = sum(r["n_frames"] for r in rows)
    per_split = {}
    for split in SPLIT_DIRS:
        sel = [r for r in rows if r["split"] == split]
        per_split[split] = {"videos": len(sel), "subjects": len({r["subject"] for r in sel}),
                            "frames": sum(r["n_frames"] for r in sel), "mtl_rows": mtl_counts[split]}
    labelled = {}
    for task in TASK_DIRS:
        labelled[task] = {split: int(sum(r["labels"]["valid"][task].sum() for r in rows
                                         if r["split"] == split and task in r["tasks"].split("+")))
                          for split in SPLIT_DIRS}
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return {"videos": len(rows), "two_person_tracks": sum(r["video"].endswith(("_left", "_right")) for r in rows),
            "frames": frames, "face_frames": sum(r["face_frames"] for r in rows),
            "labelled_frames": labelled, "splits": per_split,
            "side_sets": {k: len(v) for k, v in stills.items()}, "seconds": round(seconds, 1),
            "frames_per_second": round(frames / max(seconds, 1e-9), 1), "bytes": size}


def print_summary(summary: dict, root: Path) -> None:
    mb = summary["bytes"] / 2 ** 20
    print(f"\nSynthetic Aff-Wild2 written to {root} ({mb:.1f} MiB) in {summary['seconds']} s "
          f"({summary['frames_per_second']:.0f} video frames/s)")
    print(f"  videos: {summary['videos']} face tracks ({summary['two_person_tracks']} from two-person videos), "
          f"{summary['frames']} frames, {summary['face_frames']} with a face image")
    print(f"  {'split':<11}{'videos':>7}{'subjects':>9}{'frames':>8}{'VA':>8}{'EXPR':>8}{'AU':>8}{'MTL rows':>9}")
    for split, s in summary["splits"].items():
        lab = summary["labelled_frames"]
        print(f"  {split:<11}{s['videos']:>7}{s['subjects']:>9}{s['frames']:>8}{lab['VA'][split]:>8}"
              f"{lab['EXPR'][split]:>8}{lab['AU'][split]:>8}{s['mtl_rows']:>9}")
    print("  side sets: " + ", ".join(f"{k} {v} images" for k, v in summary["side_sets"].items()))
    print("  (labelled = frames with a valid label in that task's annotation files)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", choices=("smoke", "default", "paper"))
    ap.add_argument("--out", help="output folder (default: data.root from params.yaml)")
    ap.add_argument("--workers", type=int)
    ap.add_argument("--layout", choices=LAYOUTS, help="override corpus.layout (real_release: as the real corpus ships)")
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params, args.profile)
        corpus = dict(params["corpus"])
        if args.workers:
            corpus["workers"] = args.workers
        if args.layout:
            corpus["layout"] = args.layout
        cfg = CorpusConfig.from_params(corpus)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or params["data"]["root"])
    summary = generate(cfg, out)
    print_summary(summary, out)
    if cfg.layout == "real_release":
        print("  layout real_release: then removed, as the real release ships it: the test labels, metadata/ "
              "and one training video's audio (read it with data.source: real)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
