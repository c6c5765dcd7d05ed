import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from common.features import cache as cache_module
from common.features.cache import (STAGES, FeatureCache, FeatureCacheError, align_to_frames,
                                   nearest_frame_index)

ROOT = Path(__file__).resolve().parents[1]


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
    with pytest.raises(FeatureCacheError, match="vid.npy: damaged.*header does not read"):
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



# ------------------------------------------------------------ checksums: written with the file, checked on read

def data_offset(path) -> int:
    """Where the array's bytes start in a .npy file (after its header)."""
    return os.path.getsize(path) - np.load(path, mmap_mode="r").nbytes


def damage(path, offset: int, new: bytes) -> None:
    """Overwrite bytes of a file in place, as a disk or a stray write would (a later mtime, same size)."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def flip_sign_bits(path, count: int = 8, step: int = 2) -> None:
    """The sign bit of `count` float16 values (the high byte of each, little-endian)."""
    start = data_offset(path)
    data = bytearray(Path(path).read_bytes())
    for i in range(count):
        data[start + i * step + 1] ^= 0x80
    damage(path, start, bytes(data[start:start + count * step]))


@pytest.fixture
def written(tmp_path):
    cache = FeatureCache(tmp_path, "mfcc", "1", {"n": 13}, dim=3)
    cache.put("vid", np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32))
    return cache


def test_the_manifest_records_each_file_s_sha256(written):
    entry = json.loads(written.manifest_path.read_text())["files"]["vid.npy"]
    assert entry["bytes"] == written.path("vid").stat().st_size
    assert entry["sha256"] == cache_module.file_sha256(written.path("vid"))
    assert written.has("vid") and written.get("vid", 50).shape == (50, 3)


def test_flipped_sign_bits_are_named_with_the_stage_to_rerun(written):
    """The issue's fault: sign bits flipped in a feature .npy used to be read silently (a CCC moved
    from 0.204 to -0.166 with rc 0)."""
    flip_sign_bits(written.path("vid"))
    with pytest.raises(FeatureCacheError, match=r"mfcc/\w+/vid\.npy: damaged.*sha256.*manifest\.json.*"
                                                r"dvc repro -s --force audio_features@mfcc"):
        written.get("vid")
    with pytest.raises(FeatureCacheError, match="damaged"):            # every reader, a new cache object too
        FeatureCache(written.folder.parents[1], "mfcc", "1", {"n": 13}, dim=3).get("vid", 50)


def test_inf_values_are_named_with_their_file(written):
    start = data_offset(written.path("vid"))
    damage(written.path("vid"), start, np.array([np.inf, -np.inf], np.float16).tobytes())
    with pytest.raises(FeatureCacheError, match=r"vid\.npy: damaged.*\(2 non-finite values: inf or NaN\)"):
        written.get("vid")


def test_a_truncated_manifest_is_named(written):
    text = written.manifest_path.read_text()
    written.manifest_path.write_text(text[: len(text) // 2])
    for read in (lambda: written.get("vid"),
                 lambda: FeatureCache(written.folder.parents[1], "mfcc", "1", {"n": 13}, 3)):
        with pytest.raises(FeatureCacheError, match=r"manifest\.json: unreadable \(.*truncated or damaged\).*"
                                                    r"dvc repro -s --force audio_features@mfcc"):
            read()


def test_a_cache_written_before_checksums_is_refused_and_rebuilt(written):
    """A folder from before checksums (its manifest has no `files`) is refused by readers with the
    fix, and an extractor (which asks `has`) computes its files again, recording their checksums."""
    manifest = json.loads(written.manifest_path.read_text())
    del manifest["files"]
    written.manifest_path.write_text(json.dumps(manifest))
    assert not written.has("vid")
    with pytest.raises(FeatureCacheError, match=r"vid\.npy: manifest\.json records no checksum for it.*"
                                                r"delete .* and re-run its stage: "
                                                r"dvc repro -s --force audio_features@mfcc"):
        written.get("vid")
    written.put("vid", np.zeros((50, 3)))
    assert written.has("vid") and float(written.get("vid", 50).max()) == 0.0


def test_a_file_is_hashed_once_per_process_until_it_changes(written, monkeypatch):
    calls = []
    real = cache_module.file_sha256
    monkeypatch.setattr(cache_module, "file_sha256", lambda path: calls.append(path) or real(path))
    monkeypatch.setattr(cache_module, "_VERIFIED", {})                  # as a fresh process
    for _ in range(3):
        written.get("vid", 50)
    assert len(calls) == 1
    flip_sign_bits(written.path("vid"))
    with pytest.raises(FeatureCacheError, match="damaged"):
        written.get("vid")
    assert len(calls) == 2


def test_a_damaged_cache_stops_a_reader_in_another_process(written):
    """What a notebook run by hand or `dvc repro -s --force <stage>` does: open the cache and read
    (no DVC hash check in between). It must stop with the file's name, not train on it."""
    flip_sign_bits(written.path("vid"))
    code = ("import sys; from common.features.cache import FeatureCache; "
            "FeatureCache(sys.argv[1], 'mfcc', '1', {'n': 13}, dim=3).get('vid', 50)")
    out = subprocess.run([sys.executable, "-c", code, str(written.folder.parents[1])], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode != 0 and "vid.npy: damaged" in out.stderr and "audio_features@mfcc" in out.stderr


def test_every_stage_the_caches_name_is_a_stage_of_dvc_yaml():
    stages = set()
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        items = stage.get("foreach")
        stages |= {f"{name}@{item}" for item in items} if items is not None else {name}
    assert set(STAGES.values()) <= stages, set(STAGES.values()) - stages
    assert FeatureCache("/nonexistent", "faces", "1", {}, 3).stage == "face_pixels"


def test_a_damaged_manifest_is_an_error_not_an_absent_bank_feature(tmp_path):
    """Liu's notebooks skip configurations whose features are not built (bank.available): a
    truncated manifest must stop them, not quietly drop the feature."""
    from common.features import bank
    from common.features.cache import DamagedCacheError
    from common.features.extract import open_audio_cache
    from common.params import load_params
    params = load_params(ROOT / "params.yaml", "smoke", overrides={"features": {"root": str(tmp_path)}})
    cache = open_audio_cache(params, "fbank")
    cache.put("vid", np.zeros((4, cache.dim)))
    assert "fbank" in bank.available(params)
    cache.manifest_path.write_text(cache.manifest_path.read_text()[:40])
    with pytest.raises(DamagedCacheError, match=r"fbank/\w+/manifest\.json: unreadable.*audio_features@fbank"):
        bank.available(params)


PRODUCE = """import numpy as np
from common.features.cache import FeatureCache
FeatureCache("feats", "mfcc", "1", {}, 3).put("vid", np.arange(30, dtype=np.float32).reshape(10, 3) / 10)
"""
CONSUME = """from common.features.cache import FeatureCache
x = FeatureCache("feats", "mfcc", "1", {}, 3).get("vid", 10)
open("result.txt", "w").write(str(float(x.sum())))
"""


def test_a_forced_stage_on_a_damaged_cache_fails_and_leaves_dvc_lock_alone(tmp_path):
    """The issue's run: sign bits flipped in a cache file, then `dvc repro -s --force <stage>` of
    a stage reading it. It used to exit 0 with a changed result and write the damaged file's hash
    into dvc.lock; now the stage fails naming the file, and dvc.lock keeps its entry."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(ROOT), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    run = lambda *cmd: subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)  # noqa: E731
    (tmp_path / "produce.py").write_text(PRODUCE)
    (tmp_path / "consume.py").write_text(CONSUME)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "produce": {"cmd": "python produce.py", "deps": ["produce.py"], "outs": ["feats"]},
        "consume": {"cmd": "python consume.py", "deps": ["consume.py", "feats"], "outs": ["result.txt"]}}}))
    assert run("git", "init", "-q").returncode == 0 and run("dvc", "init", "-q").returncode == 0
    done = run("dvc", "repro")
    assert done.returncode == 0, done.stderr[-1000:]
    lock = (tmp_path / "dvc.lock").read_text()
    flip_sign_bits(next((tmp_path / "feats" / "mfcc").glob("*/vid.npy")), count=2)
    forced = run("dvc", "repro", "-s", "--force", "consume")
    assert forced.returncode != 0
    assert "vid.npy: damaged" in forced.stderr and "dvc repro -s --force audio_features@mfcc" in forced.stderr
    assert (tmp_path / "dvc.lock").read_text() == lock and not (tmp_path / "result.txt").exists()
