"""Latent processes: the slow valence/arousal, expression episodes and AU intensities, and the
subjects' fixed looks and voice."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

from common.data.affwild2 import AU_NAMES, EXPR_NAMES
from common.data.synthetic.config import CorpusConfig

# Where each expression sits in the valence-arousal plane (Russell's circumplex, roughly as
# AffectNet's per-class VA means) and how common it is a priori (Neutral dominates real video).
EXPR_VA = np.array([(0.00, -0.10), (-0.55, 0.55), (-0.65, 0.15), (-0.35, 0.75),
                    (0.65, 0.35), (-0.55, -0.45), (0.25, 0.75), (0.20, -0.35)], np.float32)
EXPR_PRIOR = np.array([3.0, 1.0, 0.7, 0.7, 2.0, 1.0, 0.8, 1.2], np.float32)
EXPR_VA_WIDTH = 0.35

# FACS prototypes restricted to the 12 ABAW AUs (Ekman & Friesen; e.g. happiness = AU6+12+25).
AU_INDEX = {name: i for i, name in enumerate(AU_NAMES)}
EXPR_AUS = {
    "Neutral": (), "Anger": ("AU4", "AU7", "AU23", "AU24"), "Disgust": ("AU4", "AU10", "AU15"),
    "Fear": ("AU1", "AU2", "AU4", "AU7", "AU26"), "Happiness": ("AU6", "AU12", "AU25"),
    "Sadness": ("AU1", "AU4", "AU15"), "Surprise": ("AU1", "AU2", "AU25", "AU26"), "Other": (),
}
PROTOTYPES = np.zeros((len(EXPR_NAMES), len(AU_NAMES)), np.float32)
for _e, _name in enumerate(EXPR_NAMES):
    for _a in EXPR_AUS[_name]:
        PROTOTYPES[_e, AU_INDEX[_a]] = 1.0


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
