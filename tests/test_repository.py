"""Repository conventions that a clean-clone CI would otherwise only catch by accident."""
import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tracked(pattern: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", pattern], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines()]


@pytest.mark.parametrize("notebook",
                         tracked("*.ipynb") or [pytest.param(None, marks=pytest.mark.skip("no notebooks yet"))])
def test_committed_notebooks_have_no_outputs_and_a_parameters_cell(notebook):
    nb = json.loads(notebook.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), f"{notebook}: strip outputs"
    assert "parameters" in code[0].get("metadata", {}).get("tags", []), (
        f"{notebook}: first code cell needs the 'parameters' tag")


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^make test\b", readme, re.M)
    assert command, "the README must name `make test`"
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.M)


def test_line_endings_are_pinned_for_dvc():
    assert "eol=lf" in (ROOT / ".gitattributes").read_text()


def test_environment_yml_installs_the_requirements_pins():
    env = (ROOT / "environment.yml").read_text()
    assert "-r requirements.txt" in env
    pins = [line for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert all("==" in p for p in pins), [p for p in pins if "==" not in p]
    assert {"torch==2.9.1", "torchaudio==2.9.1"} <= set(pins)
