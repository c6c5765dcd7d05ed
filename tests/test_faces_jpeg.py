"""faces.format jpeg: the face cache as packed JPEG bytes, decoded lazily, equal to the npy format."""
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from common.data.affwild2 import SPLITS, read_split
from common.features import faces
from common.features.cache import FeatureCacheError
from common.features.face_frames import load_face


def _params(tiny_params, root, size, format):
    return {**tiny_params, "features": {"root": str(root)}, "faces": {"size": size, "format": format}}


@pytest.fixture(scope="module")
def both(tiny_params, tmp_path_factory):
    """The tiny corpus (32 px JPEGs) cached at 32 px in both formats under one feature root."""
    root = tmp_path_factory.mktemp("faces_jpeg")
    size = int(tiny_params["corpus"]["image_size"])
    out = {}
    for format in faces.FORMATS:
        params = _params(tiny_params, root, size, format)
        out[format] = (params, faces.extract_faces(params, workers=2 if format == "jpeg" else 0, progress=False))
    tracks = [t for s in SPLITS for t in read_split(tiny_params["data"]["root"], s)]
    return out, tracks


def test_the_cache_key_holds_the_format(tmp_path):
    npy, jpeg = faces.FaceCache(tmp_path, 112), faces.FaceCache(tmp_path, 112, "jpeg")
    assert npy.folder != jpeg.folder and npy.folder.parent == jpeg.folder.parent
    assert npy.params == {"size": 112}                   # as before formats existed: old caches stay valid
    assert jpeg.params["format"] == "jpeg"
    with pytest.raises(ValueError, match="faces.format"):
        faces.FaceCache(tmp_path, 112, "png")
    assert faces.face_cache({"features": {"root": str(tmp_path)}, "faces": {"size": 112}}).format == "npy"


def test_jpeg_round_trip_decodes_exactly_the_source_jpegs(both):
    out, tracks = both
    params, summary = out["jpeg"]
    assert summary["format"] == "jpeg" and summary["computed"] == len(tracks)
    cache = faces.face_cache(params)
    size = cache.size
    for t in tracks[:4]:
        lazy = cache.get(t.video, t.n_frames)
        assert isinstance(lazy, faces.JpegFaces) and lazy.shape == (t.n_frames, 3, size, size)
        assert lazy.dtype == np.uint8 and len(lazy) == t.n_frames and lazy.ndim == 4
        for i in np.flatnonzero(t.has_image)[:20]:
            assert np.array_equal(lazy[int(i)], load_face(t.image_paths[i], size))
        # same-size faces are stored as the corpus's own bytes
        first = int(np.flatnonzero(t.has_image)[0])
        k = int(lazy.frame_image[first])
        stored = lazy.data[lazy.offsets[k]:lazy.offsets[k + 1]].tobytes()
        assert stored == open(t.image_paths[first], "rb").read()


def test_every_index_form_agrees_with_the_npy_format(both):
    out, tracks = both
    npy_cache, jpeg_cache = faces.face_cache(out["npy"][0]), faces.face_cache(out["jpeg"][0])
    assert npy_cache.folder != jpeg_cache.folder
    track = next(t for t in tracks if t.has_image.any() and not t.has_image.all())
    a, lazy = npy_cache.get(track.video, track.n_frames), jpeg_cache.get(track.video, track.n_frames)
    n = track.n_frames
    rows = np.array([0, n - 1, 3, 3, -2])
    for key in (0, -1, np.int64(5), slice(None), slice(2, 9), slice(None, None, 7), slice(5, 2),
                track.has_image, ~track.has_image, rows, rows.tolist(), np.array([], np.int64),
                (slice(1, 4), 0), (2, slice(None), 3)):
        got = lazy[key]
        assert isinstance(got, np.ndarray) and got.dtype == np.uint8
        assert np.array_equal(got, a[key]), key
    assert np.array_equal(np.asarray(lazy), a) and np.array_equal(np.array(lazy), a)
    assert np.asarray(lazy, np.float32).dtype == np.float32
    copy = lazy[2]
    copy[:] = 0                                            # a fresh writable array
    assert not np.array_equal(lazy[2], copy) or not a[2].any()
    for bad in (n, -n - 1, np.array([n]), np.ones(n + 1, bool)):
        with pytest.raises(IndexError):
            lazy[bad]
    again = pickle.loads(pickle.dumps(lazy))               # spawned workers: the path travels, not the bytes
    assert len(pickle.dumps(lazy)) < 1000 and np.array_equal(again[track.has_image], a[track.has_image])
    missing = int(np.flatnonzero(~track.has_image)[0])    # face-less frames point at the nearest face
    faces_at = np.flatnonzero(track.has_image)
    assert np.array_equal(lazy[missing], a[faces_at[np.argmin(np.abs(faces_at - missing))]])


def test_resized_faces_are_reencoded_close_to_the_npy_pixels(tiny_params, tmp_path):
    t = next(t for s in SPLITS for t in read_split(tiny_params["data"]["root"], s) if t.has_image.any())
    packed = faces.pack_track(t, 24)
    lazy = faces.JpegFaces(tmp_path / "x.npy", packed, 24)
    i = int(np.flatnonzero(t.has_image)[0])
    want = load_face(t.image_paths[i], 24).astype(int)
    assert np.abs(lazy[i].astype(int) - want).mean() < 3           # quality 95, 4:4:4


def test_a_track_without_faces_is_mid_grey(tmp_path):
    class NoFace:
        has_image = np.zeros(5, bool)
        image_paths = [None] * 5
    lazy = faces.JpegFaces(tmp_path / "x.npy", faces.pack_track(NoFace(), 16), 16)
    assert lazy.shape == (5, 3, 16, 16) and (np.asarray(lazy) == 128).all()


def test_a_truncated_or_corrupt_file_names_itself_and_the_fix(both, tmp_path):
    out, tracks = both
    cache = faces.face_cache(out["jpeg"][0])
    packed = np.load(cache.path(tracks[0].video))
    broken = faces.FaceCache(tmp_path, cache.size, "jpeg")
    broken.folder.mkdir(parents=True)
    path = broken.path("v")
    raw = path.with_suffix(".raw")
    np.save(raw, packed)
    data = raw.with_suffix(".raw.npy").read_bytes()
    path.write_bytes(data[:len(data) // 2])                # truncated: the .npy header promises more
    broken.record("v")                                     # as if written so: the checksum holds, the content not
    with pytest.raises(FeatureCacheError, match=r"v\.npy.*re-run .*face_pixels"):
        broken.get("v")
    np.save(path, packed[:len(packed) - 10])                # a well-formed .npy of a cut-short track
    broken.record("v")
    with pytest.raises(FeatureCacheError, match=r"v\.npy.*truncated or corrupt.*re-run .*face_pixels"):
        broken.get("v")
    np.save(path, np.zeros(100, np.uint8))                  # not a packed track at all
    broken.record("v")
    with pytest.raises(FeatureCacheError, match=r"v\.npy.*wrong header.*re-run"):
        broken.get("v")
    lazy = faces.JpegFaces(path, packed, cache.size)
    garbled = packed.copy()
    garbled[len(packed) - int(lazy.offsets[-1]) + int(lazy.offsets[0]) + 2:] = 7   # image bytes overwritten
    np.save(path, garbled)
    broken.record("v")
    with pytest.raises(FeatureCacheError, match=r"v\.npy: image 0 does not decode.*re-run .*face_pixels"):
        broken.get("v")[0]
    with pytest.raises(FeatureCacheError, match=r"v\.npy.*expected 3"):
        np.save(path, packed)
        broken.record("v")
        broken.get("v", 3)


def test_the_readers_of_faces_work_on_the_jpeg_format(both):
    from common.features.faces import sample_face_frames
    out, _ = both
    got = {f: sample_face_frames(out[f][0], "train", 40, 0, lambda v: v.va_mask) for f in faces.FORMATS}
    assert torch.equal(got["npy"][0], got["jpeg"][0])
    from common.features import fer
    from common.features.fer import build_fer
    fp = {**out["jpeg"][0]["fer"]}
    torch.manual_seed(0)
    net = build_fer(fp).eval()
    t = read_split(out["jpeg"][0]["data"]["root"], "validation")[0]
    encoded = {f: fer.encode_track(net, faces.face_cache(out[f][0]).get(t.video, t.n_frames),
                                   int(fp["input_size"]), int(fp["crop"]), 16) for f in faces.FORMATS}
    assert np.array_equal(encoded["npy"][0], encoded["jpeg"][0])


def test_vu_training_reads_jpeg_faces_in_two_dataloader_workers(both, monkeypatch):
    """The Vu CNN's training stream over jpeg faces: decoded in the DataLoader's 2 worker processes
    (decoding in this process raises), the same batches as the npy format, and a training step."""
    from papers.vu2021 import data as vd
    from papers.vu2021 import train as vt
    from papers.vu2021.losses import teacher_loss
    out, _ = both
    batches = {}
    for format in faces.FORMATS:
        params = out[format][0]
        cfg = params["vu2021"]["cnn"]
        streams = vd.build_streams(params, ("expr", "va"))
        assert isinstance(streams["expr"].sources[0], faces.JpegFaces if format == "jpeg" else np.ndarray)
        dataset = vd.TaskStreams(streams, 8, int(cfg["crop"]), int(cfg["pad"]), 0, int(cfg["downsample"]))
        loader = DataLoader(dataset, 4, shuffle=True, generator=torch.Generator().manual_seed(0), num_workers=2)
        it = iter(loader)                                   # the workers are forked here
        with monkeypatch.context() as m:
            m.setattr(faces, "decode_jpeg",
                      lambda data: (_ for _ in ()).throw(AssertionError("decoded in the main process")))
            batches[format] = list(it)
    for a, b in zip(batches["npy"], batches["jpeg"]):
        for k in a:
            assert torch.equal(a[k]["image"], b[k]["image"])
    cfg = {**out["jpeg"][0]["vu2021"]["cnn"], "num_workers": 2}
    assert vt.train_config(cfg, 0).num_workers == 2
    torch.manual_seed(0)
    model = vt.build_cnn(cfg)
    loss = teacher_loss(vt.forward_sets(model, batches["jpeg"][0]), batches["jpeg"][0], out["jpeg"][0]["vu2021"])
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_vu_evaluation_batches_are_the_same_with_workers(both):
    from papers.vu2021 import data as vd
    params = both[0]["jpeg"][0]
    frames = vd.eval_frames(params, "validation", 3)
    plain = list(vd.eval_batches(frames, 28, 0, 16))
    assert all(torch.equal(a, b) for a, b in zip(plain, vd.eval_batches(frames, 28, 0, 16, workers=2)))
    npy = vd.eval_frames(both[0]["npy"][0], "validation", 3)
    assert all(torch.equal(a, b) for a, b in zip(plain, vd.eval_batches(npy, 28, 0, 16)))
