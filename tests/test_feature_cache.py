import numpy as np
import pytest

from common.features.cache import (FeatureCache, FeatureCacheError, align_to_frames,
                                   nearest_frame_index)


def test_nearest_timestamp_pairing_matches_zhang_example():
    # Zhang et al. Sec. 4.2: 30 Hz labels 0..3 pair with 100 Hz mfcc points 0, 3, 7, 10.
    assert nearest_frame_index(4, 30, 100, 1000).tolist() == [0, 3, 7, 10]


def test_alignment_repeat_pads_the_tail():
    feats = np.arange(10, dtype=np.float32)[:, None]          # 0.1 s of 100 Hz features
    aligned = align_to_frames(feats, 100, 6, 30)               # 0.2 s of 30 Hz frames
    assert aligned[:, 0].tolist() == [0, 3, 7, 9, 9, 9]


def test_round_trip_is_float16_and_memory_mapped(tmp_path):
    cache = FeatureCache(tmp_path, "mfcc", "1", {"n": 13}, dim=3)
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    cache.put("vid", x)
    y = cache.get("vid", n_frames=50)
    assert isinstance(y, np.memmap) and y.dtype == np.float16
    np.testing.assert_allclose(y, x, atol=2e-3)
    assert not list(cache.folder.glob(".*tmp*"))               # nothing half-written left


def test_params_select_the_folder_and_versions_are_checked(tmp_path):
    a = FeatureCache(tmp_path, "mfcc", "1", {"n": 13}, dim=3)
    b = FeatureCache(tmp_path, "mfcc", "1", {"n": 20}, dim=3)
    assert a.folder != b.folder
    a.put("vid", np.zeros((4, 3)))
    with pytest.raises(FeatureCacheError, match="version 1.*version 2.*Delete"):
        FeatureCache(tmp_path, "mfcc", "2", {"n": 13}, dim=3)


def test_bad_arrays_are_refused_with_the_video_named(tmp_path):
    cache = FeatureCache(tmp_path, "mfcc", "1", {}, dim=3)
    with pytest.raises(ValueError, match="vid.*shape"):
        cache.put("vid", np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        cache.put("vid", np.full((4, 3), np.nan))
    with pytest.raises(FeatureCacheError, match="missing"):
        cache.get("other")
    cache.put("vid", np.zeros((4, 3)))
    with pytest.raises(FeatureCacheError, match=r"shape \(4, 3\), expected \(5, 3\)"):
        cache.get("vid", n_frames=5)
    cache.path("vid").write_bytes(b"garbage")
    with pytest.raises(FeatureCacheError, match="unreadable"):
        cache.get("vid")


def test_values_beyond_float16_are_refused_unless_the_cache_is_float32(tmp_path):
    big = np.array([[1e3], [7e4]], np.float32)                   # 7e4 > float16's 65504
    with pytest.raises(ValueError, match="beyond float16's range; give the extractor dtype float32"):
        FeatureCache(tmp_path, "spectral", "1", {}, 1).put("v", big)
    wide = FeatureCache(tmp_path, "spectral32", "1", {}, 1, dtype="float32")
    wide.put("v", big)
    assert wide.get("v").dtype == np.float32 and float(wide.get("v")[1, 0]) == 7e4


def test_compare_is_cached_in_float32():
    from common.features.audio import registry
    assert registry()["compare"].dtype == "float32"
