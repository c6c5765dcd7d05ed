"""Audio feature stages: real openSMILE / torchaudio features, cached per face track and aligned."""
import json

import numpy as np
import pytest

from common.data.affwild2 import SPLITS, read_split
from common.features import audio as audio_features
from common.features.extract import extract_audio, open_audio_cache


@pytest.mark.parametrize("name", ["mfcc", "fbank"])
def test_extraction_fills_the_cache_aligned_to_frames(tiny_params, name):
    summary = extract_audio(tiny_params, name, workers=1, progress=False)
    cache = open_audio_cache(tiny_params, name)
    videos = [v for s in SPLITS for v in read_split(tiny_params["data"]["root"], s)]
    assert summary["tracks"] == len(videos) and summary["audio_files"] == len(videos) - 1  # one shared wav
    for v in videos:
        x = cache.get(v.video, n_frames=v.n_frames)
        assert np.isfinite(x).all() and x.std(0).mean() > 0
    left = next(v.video for v in videos if v.video.endswith("_left"))
    np.testing.assert_array_equal(cache.get(left), cache.get(left.replace("_left", "_right")))
    again = extract_audio(tiny_params, name, workers=1, progress=False)
    assert again["computed"] == 0                                   # cached: nothing recomputed
    assert json.loads((cache.folder.parent.parent / f"{name}.json").read_text())["computed"] == 0


def test_mfcc_log_energy_tracks_arousal(tiny_params):
    extract_audio(tiny_params, "mfcc", workers=1, progress=False)
    cache = open_audio_cache(tiny_params, "mfcc")
    root = tiny_params["data"]["root"]
    rs = []
    for v in read_split(root, "train"):
        if v.video.endswith(("_left", "_right")):
            continue
        energy = np.asarray(cache.get(v.video)[:, 12], np.float32)      # the log-energy column
        arousal = np.load(f"{root}/metadata/latent/{v.video}.npz")["arousal"]
        k = 30                                                           # one-second maxima
        n = len(energy) // k
        rs.append(np.corrcoef(energy[: n * k].reshape(n, k).max(1), arousal[: n * k].reshape(n, k).mean(1))[0, 1])
    assert np.mean(rs) > 0.2, rs


def test_resampling_and_mixdown(tmp_path):
    import soundfile as sf
    t = np.arange(22050) / 22050
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.zeros_like(t)], 1)
    sf.write(tmp_path / "a.wav", stereo, 22050)
    mono = audio_features.load_mono(tmp_path / "a.wav")
    assert len(mono) == 16000 and abs(np.abs(mono).max() - 0.5) < 0.02


def test_fbank_needs_no_opensmile(monkeypatch):
    """A GPU machine without openSMILE still builds the registry and computes fbank (Liu, ECAPA);
    only the openSMILE features ask for it, and only when they run."""
    import sys

    import numpy as np

    from common.features.audio import registry
    monkeypatch.setitem(sys.modules, "opensmile", None)          # `import opensmile` now fails
    extractors = registry()
    wave = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    assert extractors["fbank"].compute(wave).shape[1] == 80
    with pytest.raises(ImportError):
        extractors["egemaps"].compute(wave)
