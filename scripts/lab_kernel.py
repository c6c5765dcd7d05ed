"""Register the project's Jupyter kernel in the virtual environment: `python scripts/lab_kernel.py`.

`make lab` runs this, then JupyterLab on the project root. Every notebook names the kernel `python3`, and
so does the pipeline's runner (`common.notebooks`, papermill), so the kernel is registered under
that name, inside the environment (`<venv>/share/jupyter/kernels/python3/kernel.json`, ahead of
ipykernel's built-in spec), with the display name "Python 3 (affect-repro)". It differs from the
built-in spec in two ways, both so that a notebook opened in JupyterLab runs as the pipeline
runs it:
* it starts in the project root (JupyterLab starts a kernel in the notebook's own folder, but the
  notebooks read `params.yaml` and write `reports/<paper>/` relative to the root, as papermill
  runs them with cwd = the root);
* it sets PYTHONHASHSEED=0 and DVC_NO_ANALYTICS=1, as the Makefile does for every target, and
  MPLBACKEND to matplotlib's inline backend, so figures show in the notebook.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "python3"
DISPLAY_NAME = "Python 3 (affect-repro)"


def kernel_spec(python: str = sys.executable, root: Path = ROOT) -> dict:
    """The kernel.json of the project's kernel: `python` runs ipykernel, starting in `root`."""
    return {
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 # A profile's workspace (common/workspace.py) runs its notebooks in its own root.
                 f"--IPKernelApp.exec_lines=import os; os.chdir(os.environ.get('AFFECT_REPRO_ROOT', {str(root)!r}))"],
        "display_name": DISPLAY_NAME,
        "language": "python",
        # figures inline, as common.notebooks runs them, whatever MPLBACKEND the shell that started Lab set
        "env": {"PYTHONHASHSEED": "0", "DVC_NO_ANALYTICS": "1",
                "MPLBACKEND": "module://matplotlib_inline.backend_inline"},
        "metadata": {"debugger": True},
    }


def install(kernels_dir: Path, python: str = sys.executable, root: Path = ROOT) -> Path:
    """Write <kernels_dir>/python3/kernel.json (and ipykernel's logos); return the json's path."""
    from ipykernel.kernelspec import RESOURCES            # the logos JupyterLab shows
    target = Path(kernels_dir) / NAME
    target.mkdir(parents=True, exist_ok=True)
    for logo in Path(RESOURCES).glob("logo-*"):
        (target / logo.name).write_bytes(logo.read_bytes())
    path = target / "kernel.json"
    path.write_text(json.dumps(kernel_spec(python, root), indent=1) + "\n")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="register the project's Jupyter kernel (python3) in this environment")
    ap.add_argument("--kernels-dir", default=str(Path(sys.prefix) / "share" / "jupyter" / "kernels"),
                    help="where kernel specs live (default: this Python's environment)")
    args = ap.parse_args(argv)
    path = install(Path(args.kernels_dir))
    print(f"kernel '{NAME}' ({DISPLAY_NAME}): {sys.executable}, starts in {ROOT} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
