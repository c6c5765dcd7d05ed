"""The corpus stage: generate the embedded corpus, or check and index a real one without copying it."""
import json
import shutil
from pathlib import Path

import yaml

from common.data import corpus

ROOT = Path(__file__).resolve().parents[1]


def params_file(tmp_path, source, root):
    text = (ROOT / "params.yaml").read_text()
    data = yaml.safe_load(text)
    data["data"] = {"source": source, "root": str(root)}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_real_corpus_is_indexed_not_generated(tiny_params, tmp_path):
    out = tmp_path / "stage_out"
    rc = corpus.main(["--params", str(params_file(tmp_path, "real", tiny_params["data"]["root"])), "--stage-out", str(out)])
    assert rc == 0
    summary = json.loads((out / "real_corpus.json").read_text())
    assert summary["source"] == "real" and len(summary["annotation_sha256"]) == 64
    assert sum(s["tracks"] for s in summary["splits"].values()) > 0
    assert all(s["labelled_frames"]["VA"] <= s["frames"] for s in summary["splits"].values())
    assert sorted(p.name for p in out.iterdir()) == ["real_corpus.json"]      # nothing generated


def test_a_malformed_label_stops_the_stage_with_file_and_line(tiny_params, tmp_path, capsys):
    root = tmp_path / "real"
    shutil.copytree(tiny_params["data"]["root"], root, ignore=shutil.ignore_patterns("*.jpg", "*.wav"))
    label = sorted(root.rglob("VA_Estimation_Challenge/Train_Set/*.txt"))[0]
    lines = label.read_text().splitlines()
    lines[3] = "0.1,banana"
    label.write_text("\n".join(lines) + "\n")
    out = tmp_path / "stage_out"
    rc = corpus.main(["--params", str(params_file(tmp_path, "real", root)), "--stage-out", str(out)])
    assert rc == 2
    assert f"{label.name}:4" in capsys.readouterr().err
    assert not (out / "real_corpus.json").exists()


def test_a_real_corpus_inside_the_stage_output_is_refused(tiny_params, tmp_path, capsys):
    rc = corpus.main(["--params", str(params_file(tmp_path, "real", tmp_path / "out" / "aw2")), "--stage-out",
                      str(tmp_path / "out")])
    assert rc == 2 and "no such folder" in capsys.readouterr().err
    (tmp_path / "out" / "aw2").mkdir(parents=True)
    rc = corpus.main(["--params", str(params_file(tmp_path, "real", tmp_path / "out" / "aw2")), "--stage-out",
                      str(tmp_path / "out")])
    assert rc == 2 and "Keep the real Aff-Wild2 outside data/" in capsys.readouterr().err
