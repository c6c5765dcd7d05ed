"""Run one paper notebook with papermill: `python -m common.notebooks <paper> <notebook> [--profile P]`.

The notebook `papers/<paper>/<notebook>.ipynb` is committed without outputs and starts with a
cell tagged `parameters`. This runner passes it the profile and the output folder through
papermill's Python API (so values keep their types), after checking every name against the
notebook's own parameters cell (papermill itself would accept a misspelt name silently). The
executed copy goes to `reports/<paper>/<notebook>.ipynb`; the notebook itself writes the plain
metrics JSON (`reports/<paper>/<notebook>.json`) that downstream stages depend on, because
papermill stamps times into every executed notebook and its hash changes on each run.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from common.files import atomic_path

ROOT = Path(__file__).resolve().parents[1]


class NotebookError(RuntimeError):
    """A notebook could not be run as asked; the message names the notebook and the fix."""


def notebook_path(paper: str, notebook: str) -> Path:
    path = ROOT / "papers" / paper / f"{notebook}.ipynb"
    if not path.exists():
        known = sorted(p.stem for p in (ROOT / "papers" / paper).glob("*.ipynb"))
        raise NotebookError(f"{path}: no such notebook; {paper} has: {', '.join(known) or 'none'}")
    return path


def declared_parameters(path: Path) -> dict:
    import papermill
    params = papermill.inspect_notebook(str(path))
    if not params:
        raise NotebookError(f"{path}: no cell tagged 'parameters'; tag the first code cell so papermill can inject values")
    return params


def notebook_params(profile: str = "", params_path: str = "params.yaml", data_root: str = "",
                    features_root: str = "") -> dict:
    """params.yaml as a notebook's parameters cell asks for it; empty strings keep the file's values.

    Every paper notebook starts with these four papermill parameters, so the tests can point a
    notebook at a tiny corpus (data_root, features_root) and the smoke profile.
    """
    from common.params import load_params
    overrides = {}
    if data_root:
        overrides["data"] = {"root": data_root}
    if features_root:
        overrides["features"] = {"root": features_root}
    return load_params(params_path, profile or None, overrides)


def run_notebook(paper: str, notebook: str, parameters: dict | None = None,
                 reports_dir: str | Path | None = None, timeout: int = 3600, threads: int = 1) -> Path:
    """Execute a notebook; return the executed copy's path. Raises NotebookError on bad names.

    The kernel runs with `threads` CPU threads for torch (OMP_NUM_THREADS). The papers' models are
    narrow, and on this project's 2-core machine a Zhang smoke run took 1.7 s with one thread and
    10.6 s with two (44 s with two while another job ran): intra-op threads only add
    synchronisation to such small operations. 0 keeps torch's default (all cores).
    """
    import papermill

    src = notebook_path(paper, notebook)
    out_dir = Path(reports_dir or ROOT / "reports") / paper
    out_dir.mkdir(parents=True, exist_ok=True)
    parameters = {"out_dir": str(out_dir), **(parameters or {})}
    declared = declared_parameters(src)
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise NotebookError(f"{src}: unknown parameter(s) {', '.join(unknown)}; "
                            f"its parameters cell declares {', '.join(sorted(declared))}")
    final = out_dir / f"{notebook}.ipynb"
    started = time.perf_counter()
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if threads:
        os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))   # the kernel inherits them
    try:
        with atomic_path(final, ".ipynb") as tmp:
            papermill.execute_notebook(str(src), str(tmp), parameters=parameters, kernel_name="python3",
                                       cwd=str(ROOT), progress_bar=False, execution_timeout=timeout,
                                       request_save_on_cell_execute=False)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if tmp.exists():
            tmp.unlink()
    print(f"{paper}/{notebook}: executed in {time.perf_counter() - started:.1f} s -> {final.relative_to(ROOT)}"
          if final.is_relative_to(ROOT) else f"{paper}/{notebook}: executed -> {final}")
    return final


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="run one paper notebook with papermill")
    ap.add_argument("paper")
    ap.add_argument("notebook")
    ap.add_argument("--profile", choices=("smoke", "default", "paper"))
    ap.add_argument("--reports", help="reports folder (default: reports/)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads in the kernel (0 = torch's default)")
    args = ap.parse_args(argv)
    params = {"profile": args.profile} if args.profile else {}
    try:
        run_notebook(args.paper, args.notebook, params, args.reports, threads=args.threads)
    except NotebookError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
