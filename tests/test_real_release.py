"""The real-data path end to end: a generated corpus laid out exactly as the real Aff-Wild2 ships
(`corpus.layout: real_release`: no test labels, no MTL test file, no metadata/, so no latent truth,
no audio events and no videos.csv; fps from the names; _left/_right tracks; frames without a face),
read with `data.source: real` through the corpus stage, the shared features, Zhang's Tables 1
and 2 and the report, as tests/test_pipeline.py runs the embedded corpus.

What a user of the real corpus must bring, as README "Using the real Aff-Wild2" says: published
VGGish weights (no audio-event labels to pre-train on: a saved state dict stands in for them here)
and the still-image sets under side/.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch

from common import report
from common.data import affwild2, corpus, synthetic
from common.params import load_params

ROOT = Path(__file__).resolve().parents[1]
CORPUS = {"layout": "real_release", "subjects": 6, "two_person_videos": 1, "seconds": [10, 12],
          "image_size": 32, "no_face_fraction": 0.1, "side_sets": {"affectnet": 30, "expw": 30, "afew_va": 30},
          "workers": 2}


def _real_params_file(base: Path, release: Path, weights: Path) -> Path:
    """params.yaml of the repository, smoke profile, `data.source: real` at the release, every
    output under base, VGGish loaded from `weights`."""
    text = (ROOT / "params.yaml").read_text()
    for old, new in (("profile: default", "profile: smoke"), ("source: synthetic", "source: real"),
                     ("root: data/affwild2", f"root: {release}"), ("root: data/features", f"root: {base}/features"),
                     ('  weights: ""                # local published VGGish',
                      f'  weights: {weights}  # local published VGGish'),
                     ("missing_audio: error", "missing_audio: silence")):
        assert text.count(old) >= 1, old
        text = text.replace(old, new, 1)
    text = text.replace("model_dir: data/models", f"model_dir: {base}/models")
    path = base / "params.yaml"
    path.write_text(text)
    shutil.copytree(ROOT / "params", base / "params")
    return path


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    base = tmp_path_factory.mktemp("real_release")
    params = load_params(ROOT / "params.yaml", "smoke", overrides={"corpus": CORPUS})
    root = base / "aff-wild2"
    synthetic.generate(synthetic.CorpusConfig.from_params(params["corpus"]), root, progress=False)
    return base, root


def test_the_release_layout_holds_only_what_the_real_corpus_ships(release):
    _, root = release
    assert not (root / "metadata").exists() and not affwild2.test_labels_released(root)
    ann = root / "annotations"
    assert not list(ann.rglob("Test_Set")) and not (ann / "MTL_Challenge" / "test.txt").exists()
    assert (ann / "MTL_Challenge" / "train.txt").is_file()
    faces = {p.name for p in (root / "cropped_aligned").iterdir()}
    labelled = {p.stem for p in ann.rglob("*_Set/*.txt")}
    assert faces - labelled                                 # the test videos' faces ship, their labels do not
    assert any(v.endswith("_left") for v in faces) and any(v.endswith("_right") for v in faces)
    tracks = [v for split in ("train", "validation") for v in affwild2.read_split(root, split)]
    assert all(v.fps == affwild2.parse_fps(v.video) == 30.0 for v in tracks)      # from the name
    assert any(not v.has_image.all() for v in tracks)       # frames without a face
    no_audio = [v.video for v in tracks if v.audio_path is None]
    assert len(no_audio) == 1 and not list((root / "videos").glob(no_audio[0] + ".*"))   # a video without audio


def test_a_video_without_audio_stops_the_corpus_stage_unless_silence_stands_in(release, tmp_path, capsys):
    base, root = release
    text = (ROOT / "params.yaml").read_text().replace("source: synthetic", "source: real", 1)
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("root: data/affwild2", f"root: {root}", 1))
    shutil.copytree(ROOT / "params", tmp_path / "params")
    assert corpus.main(["--params", str(path), "--stage-out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "has no audio" in err and "data.missing_audio: silence" in err and not (root / "audio_wav").exists()


@pytest.fixture(scope="module")
def real_pipeline(release):
    """The smoke pipeline on the release with `source: real`: corpus stage, features, Zhang Tables 1-2, report."""
    from common.features import vggish
    from common.notebooks import run_notebook
    from tests.helpers.features import build_zhang_features
    base, root = release
    smoke = load_params(ROOT / "params.yaml", "smoke")
    torch.manual_seed(0)
    weights = base / "vggish_published.pt"              # stands in for the published VGGish weights
    torch.save(vggish.vg.build_vggish(smoke["vggish"]).state_dict(), weights)
    path = _real_params_file(base, root, weights)
    stage_out = base / "data" / "affwild2"
    assert corpus.main(["--params", str(path), "--stage-out", str(stage_out)]) == 0
    params = load_params(path)
    build_zhang_features(params)
    reports = base / "reports"
    for notebook in ("table1", "table2"):                # Table 2 is scored on the test split
        run_notebook("zhang2021", notebook, {"params_path": str(path)}, reports)
    index = report.build(reports, params_path=path)
    return params, stage_out, reports, index


def test_the_corpus_stage_indexes_the_release(real_pipeline):
    _, stage_out, _, _ = real_pipeline
    summary = json.loads((stage_out / "real_corpus.json").read_text())
    assert summary["test_labels"] is False and summary["splits"]["test"]["tracks"] == 0
    assert summary["splits"]["train"]["tracks"] > 0 and summary["splits"]["validation"]["tracks"] > 0
    (silent,) = summary["splits"]["train"]["tracks_without_audio"]
    stand_in = Path(summary["root"]) / "audio_wav" / f"{silent}.wav"
    import soundfile as sf
    assert abs(sf.info(str(stand_in)).duration - 10) <= 2.1 and abs(sf.read(str(stand_in))[0]).max() < 1e-3


def test_the_report_is_built_and_says_test_labels_are_not_released(real_pipeline):
    _, _, reports, index = real_pipeline
    assert index == reports / "index.html" and index.is_file()
    table1 = json.loads((reports / "zhang2021" / "table1.json").read_text())
    assert table1["data"] == "real" and table1["results"]
    assert table1["test_labels"] is False
    table2 = json.loads((reports / "zhang2021" / "table2.json").read_text())
    test_rows = [r for r in table2["results"] if r["split"] == "test"]
    assert table2["test_labels"] is False and test_rows
    assert not list((reports / "zhang2021" / "test_predictions").rglob("*.txt"))     # no test video to predict
    page = (reports / "zhang2021" / "index.html").read_text()
    assert "test labels not released" in page
    claims = page.split("<h2>Claims</h2>", 1)[1].split("<h2>", 1)[0]
    assert f"{report.NOT_RELEASED}</td>" in claims or f">{report.NOT_RELEASED}<" in claims   # Table 2's test claims
    results = page.split("<h2>Published vs reproduced</h2>", 1)[1]
    table2_rows = results.split("<h3>Table 2</h3>", 1)[1].split("</table>", 1)[0]
    assert table2_rows.count(report.NOT_RELEASED) >= len(test_rows) and "nan" not in table2_rows.lower()
    assert "real Aff-Wild2" in index.read_text()


def test_an_unknown_layout_names_the_key():
    from common.params import ParamsError
    corpus_params = dict(load_params(ROOT / "params.yaml", "smoke")["corpus"], layout="real")
    with pytest.raises(ParamsError, match=r"corpus\.layout = 'real'.*embedded, real_release"):
        synthetic.CorpusConfig.from_params(corpus_params)


def test_an_empty_split_scores_nan_not_an_error():
    """The real release's test split is empty: its CCC is NaN (shown as 'test labels not released')."""
    import math
    from common.data.sequences import split_ccc
    assert math.isnan(split_ccc([], {}, "valence"))
    assert all(math.isnan(v) for v in split_ccc([], {}).values())
