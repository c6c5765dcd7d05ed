"""Low-level audio features, computed once per audio track and cached per video frame.

Each extractor maps a mono waveform at 16 kHz to a (T, D) sequence at a fixed frame rate:
* `mfcc`    openSMILE MFCC 1-12 + log energy with deltas and accelerations, 39-d at 100 Hz: the
            AVEC 2019 set Zhang et al. use (Sec. 4.2); config in opensmile/mfcc_e_d_a.conf.
* `egemaps` openSMILE eGeMAPS v02 low-level descriptors, 25-d at 100 Hz (Liu et al. Sec. 3.2).
* `compare` openSMILE ComParE 2016 low-level descriptors, 65-d at 100 Hz (Liu et al. Sec. 3.2).
* `fbank`   Kaldi-style log mel filterbank from torchaudio, 80-d at 100 Hz (Liu et al. Sec. 3.2).
Network embeddings (VGGish, SoundNet, wav2vec-style) live with their backbones.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

OPENSMILE_DIR = Path(__file__).with_name("opensmile")
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class AudioExtractor:
    name: str
    version: str          # bump when the output changes, so old caches are refused
    dim: int
    rate: float           # feature frames per second
    compute: Callable     # (waveform float32 mono at SAMPLE_RATE) -> (T, dim)
    dtype: str = "float16"   # cache dtype; float32 where values pass float16's 65504


def load_mono(path: str | Path, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read a wav with soundfile, mix down to mono and resample to `rate` (polyphase)."""
    audio, source_rate = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if source_rate != rate:
        g = np.gcd(int(source_rate), int(rate))
        audio = resample_poly(audio, rate // g, int(source_rate) // g).astype(np.float32)
    return audio


def _opensmile(feature_set: str) -> Callable:
    """`feature_set`: a config file path, or the name of an opensmile.FeatureSet member. openSMILE
    is imported only when a wave is processed, so fbank works where openSMILE is not installed
    (a GPU machine without the registry)."""
    smile = None

    def compute(wave: np.ndarray) -> np.ndarray:
        nonlocal smile
        if smile is None:          # built lazily: constructing it parses the config
            import opensmile
            if hasattr(opensmile.FeatureSet, feature_set):
                chosen, level = getattr(opensmile.FeatureSet, feature_set), opensmile.FeatureLevel.LowLevelDescriptors
            else:
                chosen, level = feature_set, "lld"
            smile = opensmile.Smile(feature_set=chosen, feature_level=level)
        return smile.process_signal(wave, SAMPLE_RATE).to_numpy(np.float32)
    return compute


def _fbank(wave: np.ndarray) -> np.ndarray:
    import torch
    import torchaudio
    x = torch.from_numpy(wave)[None] * 32768.0          # Kaldi expects 16-bit sample scale
    return torchaudio.compliance.kaldi.fbank(x, num_mel_bins=80, frame_length=25.0, frame_shift=10.0,
                                             sample_frequency=SAMPLE_RATE, dither=0.0).numpy()


def registry() -> dict[str, AudioExtractor]:
    return {
        "mfcc": AudioExtractor("mfcc", "1", 39, 100.0, _opensmile(str(OPENSMILE_DIR / "mfcc_e_d_a.conf"))),
        "egemaps": AudioExtractor("egemaps", "1", 25, 100.0, _opensmile("eGeMAPSv02")),
        # Version 2: float32 cache; spectral variance and some energies pass float16's range.
        "compare": AudioExtractor("compare", "2", 65, 100.0, _opensmile("ComParE_2016"), "float32"),
        "fbank": AudioExtractor("fbank", "1", 80, 100.0, _fbank),
    }
