"""The corpus stage: generate the embedded corpus, or check and index a real one without copying it."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from common.data import corpus

ROOT = Path(__file__).resolve().parents[1]


def params_file(tmp_path, source, root):
    text = (ROOT / "params.yaml").read_text()
    data = yaml.safe_load(text)
    data["data"].update(source=source, root=str(root))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_real_corpus_is_indexed_not_generated(tiny_params, tmp_path):
    out = tmp_path / "stage_out"
    rc = corpus.main(["--params", str(params_file(tmp_path, "real", tiny_params["data"]["root"])), "--stage-out",
                      str(out)])
    assert rc == 0
    summary = json.loads((out / "real_corpus.json").read_text())
    assert summary["source"] == "real" and len(summary["fingerprint"]["labels_sha256"]) == 64
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


def _fingerprint_corpus(tiny_params, tmp_path) -> Path:
    """A copy of the tiny corpus as the real one would sit outside the repository (faces as empty
    files: the fingerprint reads only names, sizes and mtimes of them)."""
    root = tmp_path / "real"
    shutil.copytree(tiny_params["data"]["root"], root, ignore=shutil.ignore_patterns("*.jpg", "side", "metadata"))
    for video in (Path(tiny_params["data"]["root"]) / "cropped_aligned").iterdir():
        for jpg in sorted(video.glob("*.jpg"))[:5]:
            (root / "cropped_aligned" / video.name / jpg.name).write_bytes(b"")
    return root


def test_the_fingerprint_is_rewritten_exactly_when_the_real_corpus_changes(tiny_params, tmp_path):
    root = _fingerprint_corpus(tiny_params, tmp_path)
    params = {"data": {"source": "real", "root": str(root)}}
    out = tmp_path / "data" / "corpus_fingerprint.json"
    assert corpus.write_fingerprint(params, out)
    written = out.stat().st_mtime_ns
    assert not corpus.write_fingerprint(params, out) and out.stat().st_mtime_ns == written   # nothing changed

    label = sorted(root.rglob("VA_Estimation_Challenge/Train_Set/*.txt"))[0]
    stat = label.stat()
    text = label.read_text()
    label.write_text(text[:-2] + ("1" if text[-2] != "1" else "2") + "\n")
    os.utime(label, ns=(stat.st_atime_ns, stat.st_mtime_ns))          # same size, same mtime: content counts
    assert label.stat().st_size == stat.st_size and label.read_text() != text
    assert corpus.write_fingerprint(params, out)
    assert not corpus.write_fingerprint(params, out)
    face = next((root / "cropped_aligned").rglob("*.jpg"))
    face.with_suffix(".tmp").write_bytes(b"x")
    face.with_suffix(".tmp").replace(face)                             # a face crop replaced atomically
    assert corpus.write_fingerprint(params, out)
    other = next(f for f in (root / "cropped_aligned").rglob("*.jpg") if f.parent != face.parent)
    other.unlink()                                                     # a face crop removed
    assert corpus.write_fingerprint(params, out)
    wav = next((root / "videos").glob("*.wav"))
    wav.rename(wav.with_suffix(".wav.bak"))                            # an audio file gone
    assert corpus.write_fingerprint(params, out)
    assert json.loads(out.read_text())["source"] == "real"
    synthetic = tmp_path / "synthetic.json"
    assert corpus.write_fingerprint({"data": {"source": "synthetic", "root": "data/affwild2"}}, synthetic)
    assert json.loads(synthetic.read_text()) == {"source": "synthetic"}


def test_dvc_reruns_the_stages_after_the_fingerprint_exactly_when_a_label_changes(tiny_params, tmp_path):
    """dvc.yaml's corpus_fingerprint stage in a scratch DVC project, with a stage after it that
    counts its runs: an unchanged corpus skips it, an edited label file re-runs it."""
    root = _fingerprint_corpus(tiny_params, tmp_path)
    project = tmp_path / "project"
    project.mkdir()
    text = (ROOT / "params.yaml").read_text().replace("source: synthetic", "source: real", 1)
    (project / "params.yaml").write_text(text.replace("root: data/affwild2", f"root: {root}", 1))
    shutil.copytree(ROOT / "params", project / "params")
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["corpus_fingerprint"]
    assert stage["always_changed"] is True
    stages = {"corpus_fingerprint": {k: v for k, v in stage.items() if k != "deps"},
              "after": {"cmd": "echo run >> runs.txt && cp data/corpus_fingerprint.json after.json",
                        "deps": ["data/corpus_fingerprint.json"], "outs": ["after.json"]}}
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def repro() -> int:
        inits = [["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]]
        for cmd in inits if not (project / ".dvc").exists() else ():
            subprocess.run(cmd, cwd=project, env=env, check=True)
        done = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env, capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        return (project / "runs.txt").read_text().count("run")

    assert repro() == 1
    assert repro() == 1                                   # nothing changed: the stage after it skipped
    label = sorted(root.rglob("EXPR_Classification_Challenge/*/*.txt"))[0]
    label.write_text(label.read_text() + "0\n")
    assert repro() == 2                                   # an edited label file re-runs it
    assert repro() == 2
