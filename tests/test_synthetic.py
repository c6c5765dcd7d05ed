"""The embedded corpus carries the signal it promises.

Each causal link is proven with a simple probe on a small generated corpus; each structural
promise (layout, splits, determinism, atomic writes, parameter checks) with a direct check.
"""
import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from common.data import synthetic
from common.data.synthetic import AU_NAMES, EXPR_NAMES, CorpusConfig
from common.params import ParamsError, load_params

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(**changes) -> CorpusConfig:
    corpus = load_params(ROOT / "params.yaml", "smoke")["corpus"].copy()       # a plain dict to change
    corpus.update(subjects=9, two_person_videos=1, seconds=[20, 24], image_size=32,
                  side_sets={"affectnet": 60, "expw": 40, "afew_va": 40}, workers=2)
    corpus.update(changes)
    return CorpusConfig.from_params(corpus)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "affwild2"
    summary = synthetic.generate(tiny_config(), out, progress=False)
    return out, summary


def latent(root):
    return {p.stem: dict(np.load(p)) for p in sorted((root / "metadata" / "latent").glob("*.npz"))}


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "summary.json":        # summary.json records wall time
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


# ---- structure ------------------------------------------------------------------------------

def test_layout_is_the_official_one(corpus):
    root, summary = corpus
    assert (root / "annotations" / "VA_Estimation_Challenge" / "Train_Set").is_dir()
    assert (root / "annotations" / "MTL_Challenge" / "train.txt").is_file()
    va_file = next((root / "annotations" / "VA_Estimation_Challenge" / "Train_Set").glob("*.txt"))
    lines = va_file.read_text().splitlines()
    assert lines[0] == "valence,arousal"
    frames = sorted((root / "cropped_aligned" / va_file.stem).glob("*.jpg"))
    assert frames[0].name in ("00001.jpg", "00002.jpg", "00003.jpg")     # 1-based, %05d
    assert int(frames[-1].stem) <= len(lines) - 1
    img = Image.open(frames[0])
    assert img.size == (32, 32) and img.mode == "RGB"
    au_header = (root / "annotations" / "MTL_Challenge" / "train.txt").read_text().splitlines()[0]
    assert au_header.endswith(",".join(AU_NAMES))
    assert summary["videos"] == len(list((root / "cropped_aligned").iterdir()))


def test_splits_are_subject_independent_and_cover_every_task(corpus):
    root, _ = corpus
    import csv
    rows = list(csv.DictReader(open(root / "metadata" / "videos.csv")))
    split_of_subject = {}
    for r in rows:
        assert split_of_subject.setdefault(r["subject"], r["split"]) == r["split"], r
    assert {r["split"] for r in rows} == {"train", "validation", "test"}
    for task, folder in synthetic.TASK_DIRS.items():
        for split_dir in synthetic.SPLIT_DIRS.values():
            assert list((root / "annotations" / folder / split_dir).glob("*.txt")), (task, split_dir)


def test_two_person_video_shares_audio_but_not_faces(corpus):
    root, _ = corpus
    lefts = sorted((root / "cropped_aligned").glob("*_left"))
    assert lefts, "the corpus should contain a two-person video"
    base = lefts[0].name[: -len("_left")]
    assert (root / "cropped_aligned" / f"{base}_right").is_dir()
    assert (root / "videos" / f"{base}.wav").is_file()
    assert not (root / "videos" / f"{base}_left.wav").exists()
    a = np.asarray(Image.open(lefts[0] / "00010.jpg"), float) if (lefts[0] / "00010.jpg").exists() else None
    b_path = root / "cropped_aligned" / f"{base}_right" / "00010.jpg"
    if a is not None and b_path.exists():
        assert np.abs(a - np.asarray(Image.open(b_path), float)).mean() > 5


def test_incomplete_labels_and_invalid_markers(corpus):
    root, summary = corpus
    va_lines = [line for p in (root / "annotations" / "VA_Estimation_Challenge").rglob("*.txt")
                for line in p.read_text().splitlines()[1:]]
    invalid = sum(line == "-5,-5" for line in va_lines) / len(va_lines)
    assert 0.005 < invalid < 0.15
    # Not every video is annotated for every task.
    tracks = summary["videos"]
    per_task = [len(list((root / "annotations" / f).rglob("*.txt"))) for f in synthetic.TASK_DIRS.values()]
    assert min(per_task) < tracks
    mtl = (root / "annotations" / "MTL_Challenge" / "train.txt").read_text().splitlines()[1:]
    full = [r for r in mtl if "-5" not in r.split(",")[1:3] and r.split(",")[3] != "-1"
            and "-1" not in r.split(",")[4:]]
    assert 0.3 < len(full) / len(mtl) < 0.95
    assert summary["side_sets"] == {"affectnet": 60, "expw": 40, "afew_va": 40}
    header = (root / "side" / "affectnet" / "labels.csv").read_text().splitlines()[0]
    assert header == "image,expression,valence,arousal"


def test_audio_format(corpus):
    root, _ = corpus
    wav = next((root / "videos").glob("*.wav"))
    info = sf.info(wav)
    assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"


# ---- causal links ---------------------------------------------------------------------------

def _region_pixels(root, truth, rows):
    """Grey pixels of one face region for every face frame, with the frame's AU truth."""
    X, Y, groups = [], [], []
    for video, t in truth.items():
        for i in np.flatnonzero(t["has_face"])[::3]:
            img = np.asarray(Image.open(root / "cropped_aligned" / video / f"{i + 1:05d}.jpg").convert("L"), np.float32)
            X.append(img[rows].ravel() / 255.0)
            Y.append(t["au"][i])
            groups.append(video.split("_")[0])
    return np.array(X), np.array(Y), np.array(groups)


@pytest.mark.parametrize("au,rows", [("AU12", slice(19, 28)), ("AU4", slice(4, 12))])
def test_face_pixels_predict_action_units(corpus, au, rows):
    root, _ = corpus
    truth = latent(root)
    X, Y, groups = _region_pixels(root, truth, rows)
    y = Y[:, AU_NAMES.index(au)]
    videos = np.unique(groups)
    for video in videos:            # per-video centring removes identity, as per-subject normalisation does
        X[groups == video] -= X[groups == video].mean(0)
    test = np.isin(groups, videos[::3])                    # held-out videos (other subjects)
    assert 0.05 < y[test].mean() < 0.95
    probe = LogisticRegression(C=0.5, max_iter=3000, class_weight="balanced").fit(X[~test], y[~test])
    score = balanced_accuracy_score(y[test], probe.predict(X[test]))
    assert score > 0.7, f"{au} probe balanced accuracy {score:.2f}"


def test_audio_energy_follows_arousal_more_than_valence(corpus):
    root, _ = corpus
    truth = latent(root)
    energy, arousal, valence = [], [], []
    for video, t in truth.items():
        if video.endswith(("_left", "_right")):
            continue
        audio, rate = sf.read(root / "videos" / f"{video}.wav")
        bounds = (np.arange(len(t["arousal"])) * rate / 30).astype(int)   # frame i starts at i/fps
        e = np.log(np.add.reduceat(audio ** 2, bounds) / np.diff(bounds, append=len(audio)) + 1e-8)
        # One-second windows: loudness is only defined where speech happens inside the window.
        k = 30
        n = len(e) // k
        # Within-video: each file is peak-normalised, so levels across videos are arbitrary,
        # as they are in real recordings.
        centred = lambda x: x - x.mean()  # noqa: E731
        energy.append(centred(e[: n * k].reshape(n, k).max(1)))
        arousal.append(centred(t["arousal"][: n * k].reshape(n, k).mean(1)))
        valence.append(centred(t["valence"][: n * k].reshape(n, k).mean(1)))
    energy, arousal, valence = map(np.concatenate, (energy, arousal, valence))
    r_a = np.corrcoef(energy, arousal)[0, 1]
    r_v = np.corrcoef(energy, valence)[0, 1]
    assert r_a > 0.3, r_a
    assert abs(r_v) < r_a / 2, (r_a, r_v)


def test_expressions_follow_valence_arousal_and_aus_follow_expressions(corpus):
    root, _ = corpus
    truth = latent(root)
    v = np.concatenate([t["valence"] for t in truth.values()])
    e = np.concatenate([t["expression"] for t in truth.values()])
    au = np.concatenate([t["au"] for t in truth.values()])
    happy, sad = EXPR_NAMES.index("Happiness"), EXPR_NAMES.index("Sadness")
    pos, neg = v > 0.3, v < -0.3
    assert pos.sum() > 100 and neg.sum() > 100
    assert (e[pos] == happy).mean() > 3 * (e[neg] == happy).mean()
    assert (e[neg] == sad).mean() > 3 * (e[pos] == sad).mean()
    au12 = au[:, AU_NAMES.index("AU12")]
    assert au12[e == happy].mean() > 0.5 > 0.25 > au12[e != happy].mean()


def test_valence_arousal_are_slow(corpus):
    root, _ = corpus
    for t in list(latent(root).values())[:4]:
        for x in (t["valence"], t["arousal"]):
            r = np.corrcoef(x[:-30], x[30:])[0, 1]        # 1 s lag at 30 fps
            assert r > 0.85, r


# ---- determinism, atomicity, parameters -----------------------------------------------------

def test_same_seed_same_bytes_whatever_the_worker_count(tmp_path):
    cfg1 = tiny_config(subjects=3, two_person_videos=0, seconds=[4, 5], workers=1,
                       side_sets={"affectnet": 8, "expw": 8, "afew_va": 8})
    cfg2 = tiny_config(subjects=3, two_person_videos=0, seconds=[4, 5], workers=2,
                       side_sets={"affectnet": 8, "expw": 8, "afew_va": 8})
    synthetic.generate(cfg1, tmp_path / "a", progress=False)
    synthetic.generate(cfg2, tmp_path / "b", progress=False)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    cfg3 = tiny_config(subjects=3, two_person_videos=0, seconds=[4, 5], seed=7,
                       side_sets={"affectnet": 8, "expw": 8, "afew_va": 8})
    synthetic.generate(cfg3, tmp_path / "c", progress=False)
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def test_failed_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(synthetic.driver, "write_mtl", boom)     # the name generate() calls
    cfg = tiny_config(subjects=3, two_person_videos=0, seconds=[3, 3], workers=1,
                      side_sets={"affectnet": 2, "expw": 2, "afew_va": 2})
    with pytest.raises(RuntimeError):
        synthetic.generate(cfg, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key,value,fragment", [
    ("subjects", 2, "corpus.subjects"),
    ("seconds", [10, 5], "corpus.seconds"),
    ("split_fractions", [0.5, 0.2, 0.2], "corpus.split_fractions"),
    ("coverage", {"VA": 0.5, "EXPR": 0.5}, "corpus.coverage"),
    ("image_size", 4, "corpus.image_size"),
])
def test_out_of_range_corpus_params_name_the_key(key, value, fragment):
    with pytest.raises(ParamsError, match=fragment.replace(".", r"\.")):
        tiny_config(**{key: value})


def test_corpus_config_takes_every_value_from_params():
    # params.yaml's corpus section is the one place that sets a default: CorpusConfig has none, so a
    # key dropped from the section is an error that names it, not a silent fallback.
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               for f in dataclasses.fields(CorpusConfig))
    corpus = load_params(ROOT / "params.yaml", "smoke")["corpus"].copy()
    assert set(corpus) == {f.name for f in dataclasses.fields(CorpusConfig)}
    del corpus["snr_db"]
    with pytest.raises(ParamsError, match=r"corpus\.snr_db is missing"):
        CorpusConfig.from_params(corpus)


def test_unknown_profile_key_names_its_path(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "params").mkdir()
    smoke = (ROOT / "params" / "smoke.yaml").read_text()
    (tmp_path / "params" / "smoke.yaml").write_text(smoke.replace("two_person_videos: 1", "two_persn_videos: 1"))
    with pytest.raises(ParamsError, match=r"params/smoke\.yaml: unknown key 'corpus\.two_persn_videos'"):
        load_params(p, "smoke")
    (tmp_path / "params" / "smoke.yaml").write_text(smoke.replace("subjects: 8", "subjects: eight"))
    with pytest.raises(ParamsError, match=r"params/smoke\.yaml: 'corpus\.subjects' = 'eight' has the wrong type"):
        load_params(p, "smoke")
    with pytest.raises(ParamsError, match="wrong type"):
        load_params(ROOT / "params.yaml", "smoke", overrides={"corpus": {"subjects": "many"}})


def test_side_sets_read_back_with_their_labels(corpus):
    from common.data.still_images import StillSetError, read_still_set
    root, _ = corpus
    affectnet = read_still_set(root, "affectnet")
    assert len(affectnet) == 60 and affectnet.va.shape == (60, 2) and affectnet.expression.shape == (60,)
    assert set(np.unique(affectnet.expression)) <= set(range(7))
    assert read_still_set(root, "expw").va is None and read_still_set(root, "afew_va").expression is None
    # Expressions in the side set follow VA there too: happy images are more positive than sad ones.
    happy, sad = EXPR_NAMES.index("Happiness"), EXPR_NAMES.index("Sadness")
    if (affectnet.expression == happy).any() and (affectnet.expression == sad).any():
        valence = affectnet.va[:, 0]
        assert valence[affectnet.expression == happy].mean() > valence[affectnet.expression == sad].mean()
    with pytest.raises(StillSetError, match="no_such_set|unknown side set"):
        read_still_set(root, "no_such_set")


def test_side_set_bad_row_names_file_and_line(tmp_path):
    from common.data.still_images import StillSetError, read_still_set
    folder = tmp_path / "side" / "expw"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "images" / "a.jpg")
    (folder / "labels.csv").write_text("image,expression\na.jpg,3\na.jpg,9\n")
    with pytest.raises(StillSetError, match=r"labels\.csv:3: expression 9"):
        read_still_set(tmp_path, "expw")
