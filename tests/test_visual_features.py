"""The frame encoder stage (common/features/visual.py): pre-training, loading, extraction.

Smoke settings throughout. torch runs one thread here (threads=1): `make test` runs two pytest
workers on the two cores, and two processes with two OpenMP threads each slow down many-fold.
"""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data import synthetic
from common.data.affwild2 import SPLITS, read_split
from common.features import face_frames, side_sets, visual
from common.params import load_params

ROOT = Path(__file__).resolve().parents[1]

# Pre-training side set for these tests: the session corpus has only 30 AffectNet-like images,
# too few to hold out a meaningful 10%, so a corpus with 900 of them (and three 2 s videos) is
# generated here; 90 held-out images give an accuracy with a standard error of about 0.05.
SIDE_IMAGES = 900
PRETRAIN = {"width": 8, "input_size": 32, "crop": 28, "epochs": 4, "batch_size": 32, "lr": 0.003}


@pytest.fixture(scope="module")
def side_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("side") / "affwild2"
    params = load_params(ROOT / "params.yaml", "smoke", overrides={"corpus": {
        "subjects": 3, "two_person_videos": 0, "seconds": [2, 2], "image_size": 32,
        "side_sets": {"affectnet": SIDE_IMAGES, "expw": 1, "afew_va": 1}}})
    synthetic.generate(synthetic.CorpusConfig.from_params(params["corpus"]), root, progress=False)
    return root


def _params(tiny_params, **sections):
    """tiny_params (smoke profile) with sections overridden, checked by load_params as usual."""
    overrides = {"data": tiny_params["data"], "corpus": tiny_params["corpus"], **sections}
    return load_params(ROOT / "params.yaml", "smoke", overrides=overrides)


@pytest.fixture(scope="module")
def pretrained(tiny_params, side_root, tmp_path_factory):
    """(params, report) of an in-pipeline pre-training on the 900-image side set."""
    model_dir = tmp_path_factory.mktemp("models")
    params = _params(tiny_params, data={"root": str(side_root)},
                     visual_encoder={**PRETRAIN, "model_dir": str(model_dir)})
    path = visual.pretrain_frame_encoder(params, progress=False, threads=1)
    return params, json.loads(path.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def extracted(tiny_params, pretrained, tmp_path_factory):
    """(params, summary) of extracting the tiny corpus with the pre-trained encoder."""
    params = _params(tiny_params, features={"root": str(tmp_path_factory.mktemp("features"))},
                     visual_encoder={**PRETRAIN, "model_dir": pretrained[0]["visual_encoder"]["model_dir"]})
    return params, visual.extract_visual(params, workers=2, progress=False, threads=1)


def _tracks(params):
    return [v for split in SPLITS for v in read_split(params["data"]["root"], split)]


# --------------------------------------------------------------------------------------------
# Pre-training
# --------------------------------------------------------------------------------------------

def test_pretraining_beats_chance_on_held_out_images(pretrained, side_root):
    params, report = pretrained
    assert report["source"] == "pretrained_in_pipeline"
    assert (report["train_images"], report["val_images"]) == (810, 90)
    m = report["metrics"]
    # Neutral is ~half of the side set, so "always Neutral" already scores an accuracy of
    # majority_accuracy but a macro F1 of at most 0.67 / 7 = 0.10 and a CCC of 0: the
    # thresholds are out of reach of a constant or untrained predictor.
    assert m["expr_f1"] > 0.2, m
    assert m["expr_accuracy"] >= report["majority_accuracy"], m
    assert m["ccc_mean"] > 0.1, m
    # Held out means held out: the validation images are not among the training images.
    train, val = side_sets.split_side_set(SIDE_IMAGES, params["visual_encoder"]["seed"],
                                       params["visual_encoder"]["batch_size"])
    assert len(val) == 90 and not set(train) & set(val)
    # The saved file is the encoder alone, loadable into the configured architecture.
    state = torch.load(report["file"], weights_only=True)
    visual.build_encoder(params["visual_encoder"]).load_state_dict(state)
    assert not any(k.startswith(("expr_head", "va_head")) for k in state)


def test_split_never_leaves_a_single_image_batch():
    # 12 images: 11 train after 1 held out; with batch 10 the last batch would hold 1 image,
    # which BatchNorm cannot normalise in training mode.
    train, val = side_sets.split_side_set(12, seed=0, batch_size=10)
    assert len(val) == 1 and len(train) == 10
    train, val = side_sets.split_side_set(12, seed=0, batch_size=4)
    assert len(train) == 11


def test_random_crop_and_flip_only_in_training():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8).to(torch.uint8)
    expr, va = np.zeros(2, np.int64), np.zeros((2, 2), np.float32)
    evaluation = side_sets.StillFaces(images, expr, va, crop=6, train=False)
    a, b = evaluation[0]["image"], evaluation[0]["image"]
    assert a.shape == (3, 6, 6) and torch.equal(a, b)
    assert torch.equal(a, face_frames.normalise(images[0, :, 1:7, 1:7]))        # the centre
    assert -1.0 <= float(a.min()) and float(a.max()) <= 1.0                 # mean = std = 0.5
    torch.manual_seed(0)
    training = side_sets.StillFaces(images, expr, va, crop=6, train=True)
    crops = {tuple(training[0]["image"].flatten().tolist()) for _ in range(30)}
    assert len(crops) > 4           # 3 x 3 offsets x 2 flips: many distinct views


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

def test_extraction_writes_finite_float16_per_track(extracted):
    params, summary = extracted
    tracks = _tracks(params)
    cache = visual.feature_cache(params)
    assert summary["tracks"] == summary["computed"] == len(tracks)
    assert summary["frames"] == sum(t.n_frames for t in tracks) and summary["frames_per_second"] > 0
    assert summary["face_frames"] == sum(int(t.has_image.sum()) for t in tracks)
    written = json.loads((Path(params["features"]["root"]) / "frame_encoder.json").read_text())
    assert written == summary
    for track in tracks:
        features = cache.get(track.video, track.n_frames)
        assert features.shape == (track.n_frames, 512) and features.dtype == np.float16
        assert np.isfinite(features).all()
        # The features follow the face: frames differ from one another.
        assert np.asarray(features, np.float32).std(axis=0).mean() > 1e-3
    # A second run finds everything cached.
    again = visual.extract_visual(params, workers=0, progress=False, threads=1)
    assert again["computed"] == 0


def test_rows_are_the_frames_encoded_one_by_one(extracted, pretrained):
    params, _ = extracted
    track = _tracks(params)[0]
    features = visual.feature_cache(params).get(track.video, track.n_frames)
    encoder = visual.build_encoder(params["visual_encoder"])
    visual.load_encoder_weights(encoder, visual.encoder_path(params))
    encoder.eval()
    vp = params["visual_encoder"]
    frames = [t for t, p in enumerate(track.image_paths) if p is not None][:5]
    faces = face_frames.decode_faces([track.image_paths[t] for t in frames], vp["input_size"])
    with torch.no_grad():
        expected = encoder(face_frames.normalise(face_frames.centre_crop(faces, vp["crop"]))).numpy()
    # Row t is frame t + 1 (file 0000{t+1}.jpg), within float16 rounding.
    np.testing.assert_allclose(features[frames].astype(np.float32), expected, rtol=2e-3, atol=2e-3)


def test_missing_face_frames_take_the_nearest_face(extracted):
    params, _ = extracted
    cache = visual.feature_cache(params)
    checked = 0
    for track in _tracks(params):
        has = track.has_image
        if has.all() or not has.any():
            continue
        features = cache.get(track.video, track.n_frames)
        faces = np.flatnonzero(has)
        for t in np.flatnonzero(~has):
            distance = np.abs(faces - t)
            nearest = faces[np.argmin(distance)]          # argmin: the earlier one on a tie
            np.testing.assert_array_equal(features[t], features[nearest])
            checked += 1
    assert checked > 0, "the tiny corpus should have frames without a face"


def test_nearest_face_index_by_hand():
    has = np.array([0, 1, 0, 0, 1, 0, 0, 0, 1, 0], bool)     # faces at frames 1, 4, 8
    #                frame:  0  1  2  3  4  5  6  7  8  9
    np.testing.assert_array_equal(face_frames.nearest_face_index(has), [0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    # Frame 6 is 2 from frame 4 and 2 from frame 8: the tie goes to the earlier face.
    no_face = face_frames.track_features(np.ones((0, 4), np.float32), np.zeros(3, bool), 4)
    assert no_face.shape == (3, 4) and not no_face.any()


# --------------------------------------------------------------------------------------------
# Loading weights instead of pre-training
# --------------------------------------------------------------------------------------------

def test_named_weights_are_loaded_not_pretrained(tiny_params, side_root, pretrained, extracted,
                                                 tmp_path, monkeypatch):
    source_params, _ = pretrained
    external = tmp_path / "ms_celeb_ferplus_stand_in.pt"
    torch.save(torch.load(visual.encoder_path(source_params), weights_only=True), external)

    loads = []
    real_load = torch.load

    def spy_load(*args, **kwargs):
        loads.append((str(args[0]), kwargs.get("weights_only")))
        return real_load(*args, **kwargs)

    def no_training(*args, **kwargs):
        raise AssertionError("pre-training ran although visual_encoder.weights names a file")

    monkeypatch.setattr(torch, "load", spy_load)
    monkeypatch.setattr("common.train.fit", no_training)
    params = _params(tiny_params, data={"root": str(side_root)},
                     visual_encoder={**PRETRAIN, "weights": str(external),
                                     "model_dir": str(tmp_path / "models")})
    threads_before = torch.get_num_threads()
    out = visual.pretrain_frame_encoder(params, progress=False, threads=1 if threads_before != 1 else 2)
    assert torch.get_num_threads() == threads_before          # restored for the caller
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["source"] == "loaded from file" and report["weights_file"] == str(external)
    assert (str(external), True) in loads
    assert all(weights_only is True for _, weights_only in loads)
    # The linear probe on the frozen embedding still finds affect in it.
    assert report["metrics"]["ccc_mean"] > 0.05

    # Same weights, same features, bit for bit.
    extract_params = _params(tiny_params, features={"root": str(tmp_path / "features")},
                             visual_encoder={**PRETRAIN, "model_dir": str(tmp_path / "models")})
    visual.extract_visual(extract_params, workers=0, progress=False, threads=1)
    first, second = visual.feature_cache(extracted[0]), visual.feature_cache(extract_params)
    for track in _tracks(extract_params):
        np.testing.assert_array_equal(first.get(track.video), second.get(track.video))


def test_mismatched_weights_file_names_file_and_keys(tiny_params, tmp_path):
    wider = visual.build_encoder({**tiny_params["visual_encoder"], "width": 12})
    path = tmp_path / "wrong_width.pt"
    torch.save(wider.state_dict(), path)
    encoder = visual.build_encoder(tiny_params["visual_encoder"])
    with pytest.raises(visual.EncoderWeightsError, match="wrong_width.pt") as err:
        visual.load_encoder_weights(encoder, path)
    assert "shape mismatch" in str(err.value) and "stem.0.weight" in str(err.value)

    deeper = visual.build_encoder({**tiny_params["visual_encoder"], "layers": [2, 1, 1, 1]})
    torch.save(deeper.state_dict(), path)
    with pytest.raises(visual.EncoderWeightsError, match="unexpected key.*stages.0.1"):
        visual.load_encoder_weights(encoder, path)

    with pytest.raises(visual.EncoderWeightsError, match="does not exist"):
        visual.load_encoder_weights(encoder, tmp_path / "absent.pt")


class _NotATensor:
    """Anything a plain pickle would rebuild (and so could run code while doing it)."""


def test_weights_file_with_arbitrary_objects_is_refused(tiny_params, tmp_path):
    path = tmp_path / "pickled_object.pt"
    torch.save({"stem.0.weight": _NotATensor()}, path, pickle_module=pickle)
    encoder = visual.build_encoder(tiny_params["visual_encoder"])
    with pytest.raises(visual.EncoderWeightsError, match="pickled_object.pt.*weights-only"):
        visual.load_encoder_weights(encoder, path)


def test_cli_reports_a_missing_encoder(tmp_path, capsys):
    import shutil

    import yaml
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["visual_encoder"]["model_dir"] = str(tmp_path / "empty")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    shutil.copytree(ROOT / "params", tmp_path / "params")          # the profile files beside it
    assert visual.main(["extract", "--params", str(params_file), "--profile", "smoke"]) == 2
    assert "frame_encoder.pt" in capsys.readouterr().err
