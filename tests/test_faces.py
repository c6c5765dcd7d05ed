"""The face-pixel cache: decoded once, aligned to label frames, face-less frames borrow the nearest face."""
import numpy as np
import pytest

from common.data.affwild2 import SPLITS, read_split
from common.features import faces
from common.features.cache import FeatureCacheError
from common.features.visual import load_face


@pytest.fixture(scope="module")
def filled(tiny_params, tmp_path_factory):
    params = {**tiny_params, "features": {"root": str(tmp_path_factory.mktemp("faces"))}, "faces": {"size": 24}}
    summary = faces.extract_faces(params, workers=0, progress=False)
    return params, summary


def test_every_track_cached_at_the_asked_size(filled):
    params, summary = filled
    cache = faces.face_cache(params)
    tracks = [t for s in SPLITS for t in read_split(params["data"]["root"], s)]
    assert summary["tracks"] == len(tracks) == summary["computed"]
    for t in tracks:
        array = cache.get(t.video, t.n_frames)
        assert array.dtype == np.uint8 and array.shape == (t.n_frames, 3, 24, 24)


def test_face_frames_hold_their_own_jpeg_and_the_others_the_nearest_face(filled):
    params, _ = filled
    cache = faces.face_cache(params)
    track = next(t for s in SPLITS for t in read_split(params["data"]["root"], s)
                 if t.has_image.any() and not t.has_image.all())
    array = cache.get(track.video)
    i = int(np.flatnonzero(track.has_image)[0])
    assert np.array_equal(array[i], load_face(track.image_paths[i], 24))
    missing = int(np.flatnonzero(~track.has_image)[0])
    faces_at = np.flatnonzero(track.has_image)
    nearest = faces_at[np.argmin(np.abs(faces_at - missing))]
    assert np.array_equal(array[missing], array[nearest])


def test_a_second_run_decodes_nothing(filled):
    params, _ = filled
    assert faces.extract_faces(params, workers=0, progress=False)["computed"] == 0


def test_a_wrong_array_is_refused_with_the_file_named(filled, tmp_path):
    cache = faces.FaceCache(tmp_path, 24)
    with pytest.raises(ValueError, match="expected .n_frames, 3, 24, 24. uint8"):
        cache.put("v", np.zeros((5, 3, 24, 24), np.float32))
    cache.folder.mkdir(parents=True)
    np.save(cache.path("v"), np.zeros((5, 3, 20, 20), np.uint8))
    with pytest.raises(FeatureCacheError, match=r"v\.npy.*re-run the face_pixels stage"):
        cache.get("v")
