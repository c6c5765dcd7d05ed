"""VGGish (Hershey et al. 2017) for Zhang et al. Sec. 3.2 / 4.2.

Network, per-frame patches, pre-training on audio events, the feature cache, published weights.
"""
import copy
import json
import os

import numpy as np
import pytest
import torch

from common.backbones import vggish as vg
from common.data.affwild2 import SPLITS, read_split
from common.features import vggish as fv


def _params(tiny_params, tmp, **vggish):
    """tiny_params with this module's own model folder and feature cache (others share the corpus)."""
    params = copy.deepcopy(tiny_params)
    params["features"]["root"] = str(tmp / "features")
    params["vggish"].update(model_dir=str(tmp / "model"), **vggish)
    return params


@pytest.fixture(scope="module")
def pretrained(tiny_params, tmp_path_factory):
    """VGGish pre-trained in the pipeline on the tiny corpus's audio events (smoke settings)."""
    params = _params(tiny_params, tmp_path_factory.mktemp("vggish"))
    fv.pretrain_vggish(params, progress=False)
    return params


# --------------------------------------------------------------------------------------------
# Network and front end
# --------------------------------------------------------------------------------------------

def test_paper_network_is_the_published_vggish():
    torch.manual_seed(0)
    net = vg.VGGish().eval()                                  # width 1, fc 4096-4096, 128-d
    # 4.50 M conv + 50.3 M (fc1_1: 512*6*4 -> 4096) + 16.8 M + 0.5 M: the published 72.1 M.
    assert vg.n_parameters(net) == 72_141_184
    with torch.no_grad():
        assert net(torch.randn(3, 1, 96, 64)).shape == (3, 128)
    assert net.conv4_2.out_channels == 512 and net.fc1_1.in_features == 512 * 6 * 4
    with pytest.raises(ValueError, match=r"\(B, 1, 96, 64\)"):
        net(torch.randn(3, 1, 64, 96))                       # bands and frames swapped
    small = vg.build_vggish({"width": 0.125, "fc": [128, 128], "embed_dim": 128})
    assert vg.n_parameters(small) < vg.n_parameters(net) / 100


def test_log_mel_front_end_matches_vggish_settings():
    sr = vg.SAMPLE_RATE
    t = np.arange(2 * sr) / sr
    spec = vg.log_mel_spectrogram(0.5 * np.sin(2 * np.pi * 1000 * t))
    assert spec.shape == (1 + (2 * sr - 400) // 160, 64)    # 25 ms windows every 10 ms, no padding
    # The loudest band is the one whose HTK-mel centre is nearest 1 kHz.
    edges = np.linspace(vg._hz_to_mel(125), vg._hz_to_mel(7500), 66)
    centres_hz = 700 * np.expm1(edges[1:-1] / 1127)
    assert spec.mean(0).argmax() == np.abs(centres_hz - 1000).argmin()
    # Silence is log(0 + 0.01), the offset that keeps it finite.
    np.testing.assert_allclose(vg.log_mel_spectrogram(np.zeros(sr)), np.log(0.01), rtol=1e-6)


def test_patch_for_frame_i_is_centred_on_i_over_fps_and_edge_padded():
    fps, n_frames = 30.0, 90
    sr = vg.SAMPLE_RATE
    times = np.arange(n_frames) / fps
    starts = vg.patch_starts(times)
    # Log-mel frame k is centred at 0.01 k + 0.0125 s; a patch's centre lies between its rows 47, 48.
    centres = 0.01 * (starts + 47.5) + 0.0125
    assert np.abs(centres - times).max() <= 0.005 + 1e-9

    # A click at the time of frame 45 is loudest in the middle rows of frame 45's patch, and
    # 1/fps earlier (about 3 rows) in the next frame's patch.
    wave = np.zeros(int(n_frames / fps * sr))
    wave[int(45 / fps * sr)] = 1.0
    patches = vg.log_mel_patches(wave, times)
    assert patches.shape == (n_frames, 1, 96, 64)
    assert patches[45, 0].sum(1).argmax() in (47, 48)
    assert patches[46, 0].sum(1).argmax() in (44, 45)

    # Edge padding: the first and last frames get full patches that repeat the edge log-mel frames.
    spec = vg.log_mel_spectrogram(wave + 1e-3 * np.random.default_rng(0).standard_normal(len(wave)))
    first, last = vg.patches_at(spec, times[[0, -1]])[:, 0]
    n_before = -vg.patch_starts([0.0])[0]
    assert n_before > 40
    assert (first[:n_before] == spec[0]).all() and (first[n_before:] == spec[:96 - n_before]).all()
    n_after = vg.patch_starts(times[[-1]])[0] + 96 - len(spec)
    assert n_after > 40 and (last[-n_after:] == spec[-1]).all()


# --------------------------------------------------------------------------------------------
# Pre-training on audio events
# --------------------------------------------------------------------------------------------

def test_pretrained_vggish_detects_held_out_speech(pretrained):
    model_dir = pretrained["vggish"]["model_dir"]
    summary = json.loads(open(os.path.join(model_dir, "vggish.json")).read())
    assert summary["source"] == fv.SOURCE_PRETRAINED
    root = pretrained["data"]["root"]
    train = fv._single_person(read_split(root, "train"))
    assert summary["train_videos"] == len(train) > 0          # training split, single-person tracks
    assert set(summary["validation"]) == set(fv.EVENTS)
    # Held out: the test split, seen neither in training nor in model selection.
    test = fv.EventPatches(root, fv._single_person(read_split(root, "test")), 0.1)
    labels = test.labels.numpy()
    assert 0 < labels[:, 0].mean() < 1                       # both classes present: the score means something
    scores = fv.event_scores(fv.predict_logits(fv.load_event_tagger(pretrained), test, 256), labels)
    assert scores["speech"]["balanced_accuracy"] > 0.6, scores


def test_event_scores_are_balanced():
    labels = np.array([[1, 0]] * 8 + [[0, 1]] * 2, np.float32)
    always_yes = np.full((10, 2), 5.0)
    s = fv.event_scores(always_yes, labels)
    assert s["speech"]["accuracy"] == 0.8 and s["speech"]["balanced_accuracy"] == 0.5
    assert s["other_voice"]["f1"] == pytest.approx(2 * 2 / (2 * 2 + 8), abs=1e-4)


# --------------------------------------------------------------------------------------------
# Extraction into the feature cache
# --------------------------------------------------------------------------------------------

def test_extraction_writes_one_finite_embedding_per_frame(pretrained):
    summary = fv.extract_vggish(pretrained, workers=2, progress=False)
    cache = fv.cache_for(pretrained)
    videos = [v for s in SPLITS for v in read_split(pretrained["data"]["root"], s)]
    assert summary["tracks"] == len(videos) and summary["audio_files"] == len(videos) - 1
    assert summary["computed"] == summary["audio_files"]     # the shared wav was embedded once
    for v in videos:
        x = np.asarray(cache.get(v.video, n_frames=v.n_frames), np.float32)
        assert x.shape == (v.n_frames, 128) and np.isfinite(x).all()
        assert x.std(0).mean() > 1e-3                        # embeddings change over the video
    left = next(v.video for v in videos if v.video.endswith("_left"))
    np.testing.assert_array_equal(cache.get(left), cache.get(left.replace("_left", "_right")))
    # hop 0.1 s at 30 fps: each embedding is held for ~3 frames, not for the whole video.
    x = np.asarray(cache.get(videos[0].video), np.float32)
    runs = 1 + np.any(np.diff(x, axis=0) != 0, axis=1).sum()
    assert abs(runs - videos[0].n_frames / 3) <= 2
    assert fv.extract_vggish(pretrained, workers=2, progress=False)["computed"] == 0


# --------------------------------------------------------------------------------------------
# Published-weights path
# --------------------------------------------------------------------------------------------

def _as_torchvggish(state: dict) -> dict:
    """This module's state dict renamed to the published PyTorch port's layout (features.N / embeddings.N)."""
    inverse = {ours: theirs for theirs, ours in vg.TORCHVGGISH_KEYS.items()}
    out = {f"{inverse[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in state.items()}
    out["pproc.pca_means"] = torch.zeros(128, 1)             # PCA post-processor: skipped (no PCA)
    return out


def test_weights_file_round_trip_without_pretraining(tiny_params, tmp_path):
    torch.manual_seed(1)
    cfg = {"width": 0.0625, "fc": [32, 32], "embed_dim": 128}      # narrow: this checks identity, not quality
    source = vg.build_vggish(cfg).eval()
    weights = tmp_path / "published.pt"
    torch.save(_as_torchvggish(source.state_dict()), weights)
    params = _params(tiny_params, tmp_path, weights=str(weights), hop_s=0.0, **cfg)   # one patch per frame

    fv.pretrain_vggish(params, progress=False)
    summary = json.loads((tmp_path / "model" / "vggish.json").read_text())
    assert summary["source"] == "published weights (torchvggish port: published.pt)" and summary["validation"] is None
    assert not (tmp_path / "model" / "train").exists()       # nothing was trained
    loaded = fv.load_model(params)
    x = torch.randn(4, 1, 96, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))             # identical embeddings

    fv.extract_vggish(params, workers=1, progress=False)
    video = read_split(params["data"]["root"], "train")[0]
    from common.features.audio import load_mono
    patches = vg.log_mel_patches(load_mono(video.audio_path), np.arange(video.n_frames) / video.fps)
    with torch.no_grad():
        expected = source(torch.from_numpy(patches)).numpy()
    got = np.asarray(fv.cache_for(params).get(video.video), np.float32)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3)   # float16 cache


def test_wrong_weights_file_raises_naming_file_and_key(tmp_path):
    net = vg.build_vggish({"width": 0.125, "fc": [64, 64], "embed_dim": 128})
    other = tmp_path / "wider.pt"
    torch.save(vg.VGGish(width=0.25, fc=(64, 64)).state_dict(), other)
    with pytest.raises(vg.VGGishWeightsError,
                       match=r"wider\.pt: .*shape mismatch .*conv1\.weight .*set vggish\.width / fc / "
                             r"embed_dim.*vggish-10086976\.pth"):
        vg.load_vggish_weights(net, other)

    foreign = tmp_path / "resnet.pt"
    torch.save({"layer1.0.weight": torch.zeros(3)}, foreign)
    with pytest.raises(vg.VGGishWeightsError, match=r"resnet\.pt: .*unexpected key layer1\.0\.weight"):
        vg.load_vggish_weights(net, foreign)

    # weights_only=True: a pickle that would run code on load is refused, and the code never runs.
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"conv1.weight": _RunsOnLoad(str(marker))}, evil)
    with pytest.raises(vg.VGGishWeightsError, match=r"evil\.pt: not a usable VGGish state dict"):
        vg.load_vggish_weights(net, evil)
    assert not marker.exists()

    with pytest.raises(vg.VGGishWeightsError,
                       match=r"missing\.pt: not a usable VGGish state dict.*fix vggish\.weights"):
        vg.load_vggish_weights(net, tmp_path / "missing.pt")


class _RunsOnLoad:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))
