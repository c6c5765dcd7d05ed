"""Profiles side by side (common/workspace.py): a profile other than default runs in its own
workspace, so its corpus, caches and reports never replace the default ones, and picking it edits
no file of the project."""
import subprocess
from pathlib import Path

import pytest

from common import workspace


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "project"
    (root / "params").mkdir(parents=True)
    (root / "params.yaml").write_text("# knobs\nprofile: default\ndata:\n  root: data/affwild2\n")
    (root / "params" / "smoke.yaml").write_text("data: {}\n")
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "dvc.lock").write_text("schema: '2.0'\n")
    (root / "code.py").write_text("x = 1\n")
    (root / ".gitignore").write_text("/data/\n/reports/\n/profiles/\n")
    (root / "data" / "weights").mkdir(parents=True)
    (root / "data" / "weights" / "w.npy").write_bytes(b"weights")
    (root / "data" / "affwild2").mkdir()
    (root / "data" / "affwild2" / "default_corpus.txt").write_text("the default profile's corpus")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "."], cwd=root, check=True)
    return root


def test_a_profile_gets_its_own_workspace_and_reports(project):
    ws = workspace.prepare("smoke", project)
    assert ws == project / "profiles" / "smoke"
    assert "profile: smoke" in (ws / "params.yaml").read_text()
    assert "profile: default" in (project / "params.yaml").read_text()       # the user's file is untouched
    assert (ws / "code.py").read_text() == "x = 1\n" and not (ws / "dvc.lock").exists()   # its own lock
    assert not (ws / "data" / "affwild2").exists()                           # never the default's data
    assert (ws / "data" / "weights" / "w.npy").read_bytes() == b"weights"     # published weights shared
    assert (project / "reports" / "smoke").resolve() == (ws / "reports").resolve()
    assert (ws / ".dvc" / "config").read_text().count("no_scm") == 1


def test_a_second_run_copies_what_changed_and_drops_what_is_gone(project, capsys):
    ws = workspace.prepare("smoke", project)
    (project / "code.py").write_text("x = 2\n")
    (project / "new.py").write_text("y = 1\n")
    assert workspace.sync(ws, "smoke", project) == 2
    assert (ws / "code.py").read_text() == "x = 2\n" and (ws / "new.py").is_file()
    (project / "new.py").unlink()
    assert workspace.sync(ws, "smoke", project) == 1 and not (ws / "new.py").exists()
    assert workspace.sync(ws, "smoke", project) == 0


def test_an_unknown_profile_is_refused_with_the_known_ones(project):
    with pytest.raises(SystemExit, match=r"profile 'smokee': unknown; the profiles are default, smoke"):
        workspace.prepare("smokee", project)
    with pytest.raises(SystemExit, match="runs in the project itself"):
        workspace.main(["default"])
