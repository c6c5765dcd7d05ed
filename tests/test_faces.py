"""The face-pixel cache: decoded once, aligned to label frames, face-less frames borrow the nearest face."""
import numpy as np
import pytest

from common.data.affwild2 import SPLITS, read_split
from common.features import faces
from common.features.cache import FeatureCacheError
from common.features.face_frames import load_face


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
    with pytest.raises(FeatureCacheError, match=r"v\.npy: manifest\.json records no checksum"):
        cache.get("v")                                     # not written by put: refused before its shape
    cache.record("v")
    with pytest.raises(FeatureCacheError, match=r"v\.npy: shape .*dvc repro -s --force face_pixels"):
        cache.get("v")


# ------------------------------------------------------------ checksums of the face pixels

def _copy_of(cache, tmp_path) -> "faces.FaceCache":
    """The cache's folder copied under tmp_path (the module's fixture stays whole)."""
    import shutil
    copy = faces.FaceCache(tmp_path, cache.size, cache.format)
    shutil.copytree(cache.folder, copy.folder)
    return copy


def test_flipped_pixel_bits_are_named_with_the_stage_to_rerun(filled, tmp_path):
    """The issue's fault: sign bits flipped in the face pixels were read silently by a notebook run
    by hand or `dvc repro -s --force <stage>`."""
    import os
    params, _ = filled
    track = read_split(params["data"]["root"], "train")[0]
    cache = _copy_of(faces.face_cache(params), tmp_path)
    assert cache.get(track.video, track.n_frames).shape[0] == track.n_frames
    path = cache.path(track.video)
    st = os.stat(path)
    with open(path, "r+b") as f:                              # the last 16 pixel bytes, top bit flipped
        f.seek(st.st_size - 16)
        tail = bytes(b ^ 0x80 for b in f.read(16))
        f.seek(st.st_size - 16)
        f.write(tail)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(FeatureCacheError, match=rf"{track.video}\.npy: damaged.*sha256.*manifest\.json.*"
                                                r"dvc repro -s --force face_pixels"):
        cache.get(track.video, track.n_frames)
    assert not cache.has(track.video) or cache.path(track.video).stat().st_size == st.st_size


def _jpeg_track(tmp_path, n_images=3, size=16):
    rng = np.random.default_rng(0)
    images = [faces.encode_jpeg(rng.integers(0, 255, (3, size, size), dtype=np.uint8)) for _ in range(n_images)]
    cache = faces.FaceCache(tmp_path, size, "jpeg")
    cache.put_jpeg("v", faces.pack_jpegs(images, np.arange(n_images), size))
    return cache


def test_damaged_jpeg_bytes_are_named_and_a_worker_checks_a_changed_file(tmp_path, monkeypatch):
    import os
    import pickle

    from common.features import cache as cache_module
    cache = _jpeg_track(tmp_path)
    lazy = cache.get("v", 3)
    sent = pickle.dumps(lazy)                                  # what a spawned DataLoader worker receives
    calls = []
    real = cache_module.file_sha256
    monkeypatch.setattr(cache_module, "file_sha256", lambda path: calls.append(path) or real(path))
    monkeypatch.setattr(cache_module, "_VERIFIED", {})        # the worker is a fresh process ...
    assert np.array_equal(pickle.loads(sent)[2], lazy[2]) and calls == []   # ... told the file was checked
    path = cache.path("v")
    st = os.stat(path)
    with open(path, "r+b") as f:                              # one byte inside the last JPEG
        f.seek(st.st_size - 40)
        byte = f.read(1)
        f.seek(st.st_size - 40)
        f.write(bytes([byte[0] ^ 0x80]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(FeatureCacheError, match=r"v\.npy: damaged.*face_pixels"):
        pickle.loads(sent)                                     # the file changed since: checked again
    with pytest.raises(FeatureCacheError, match=r"v\.npy: damaged.*dvc repro -s --force face_pixels"):
        cache.get("v", 3)
