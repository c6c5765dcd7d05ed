"""Voices: the subject's voice, whose prosody follows the affect, mixed with noise and a second talker."""
from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

from common.data.synthetic.config import CorpusConfig
from common.data.synthetic.latent import Subject, smooth_process


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
