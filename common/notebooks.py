"""Run one paper notebook with papermill: `python -m common.notebooks <paper> <notebook> [--profile P]`.

The notebook `papers/<paper>/<notebook>.ipynb` is committed without outputs and starts with a
cell tagged `parameters`. This runner passes it the profile and the output folder through
papermill's Python API (so values keep their types), after checking every name against the
notebook's own parameters cell (papermill itself would accept a misspelt name silently). The
executed copy goes to `reports/<paper>/<notebook>.ipynb`; the notebook itself writes the plain
metrics JSON (`reports/<paper>/<notebook>.json`) that downstream stages depend on, because
papermill stamps times into every executed notebook and its hash changes on each run.

The kernel draws figures with matplotlib's inline backend, so the executed copy (and the report's
HTML of it) carries every figure as an image output. It is started by `RunnerKernelManager`, which
keeps the `dvc repro` log free of two kernel messages that say nothing about the notebook: the
TCP-without-encryption warning (the kernel runs on this machine: it listens on IPC sockets in the
Jupyter runtime folder instead), and "KeyboardInterrupt caught in kernel": jupyter_client's
shutdown interrupts the kernel (SIGINT to its process group) before asking it to exit, and a
kernel not yet back at rest reports that as an error. nbclient shuts the kernel down only after
the last cell, or after a cell failed, so there is nothing to interrupt.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common.files import atomic_path

ROOT = Path(__file__).resolve().parents[1]
INLINE = "module://matplotlib_inline.backend_inline"     # ipykernel's own default, unless MPLBACKEND says otherwise


def runner_kernel_manager():
    """The kernel manager class the runner gives papermill (see the module docstring)."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum

    class RunnerKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc")

        def _ip_default(self) -> str:
            # The IPC sockets' path prefix. jupyter_client's default, read before the connection file
            # is named, is "kernel-ipc" in the working directory, and it numbers sockets by probing
            # which files exist: two notebooks started at once from the project root (the tests' two
            # workers, two stages) then share sockets and each rejects the other's messages ("Invalid
            # Signature", "Kernel died"). A prefix of its own per kernel cannot collide.
            return os.path.join(tempfile.gettempdir(), f"affect-kernel-{uuid.uuid4().hex}")

        async def _async_interrupt_kernel(self):
            if self.shutting_down:      # jupyter_client.manager._async_shutdown_kernel interrupts first
                return
            await super()._async_interrupt_kernel()

    return RunnerKernelManager


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
        raise NotebookError(f"{path}: no cell tagged 'parameters'; "
                            "tag the first code cell so papermill can inject values")
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
                 reports_dir: str | Path | None = None, timeout: int = 3600, threads: int = 1,
                 source: str | Path | None = None) -> Path:
    """Execute a notebook; return the executed copy's path. Raises NotebookError on bad names.
    `source` runs another file in the notebook's place (a student's copy, common/exercises.py).

    The kernel runs with `threads` CPU threads for torch (OMP_NUM_THREADS). The papers' models are
    narrow, and on this project's 2-core machine a Zhang smoke run took 1.7 s with one thread and
    10.6 s with two (44 s with two while another job ran): intra-op threads only add
    synchronisation to such small operations. 0 keeps torch's default (all cores).
    """
    import papermill

    src = Path(source) if source else notebook_path(paper, notebook)
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
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MPLBACKEND")}
    os.environ["MPLBACKEND"] = INLINE               # figures as image outputs, even if the caller set Agg
    if threads:
        os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))   # the kernel inherits them
    try:
        with atomic_path(final, ".ipynb") as tmp:
            papermill.execute_notebook(str(src), str(tmp), parameters=parameters, kernel_name="python3",
                                       cwd=str(ROOT), progress_bar=False, execution_timeout=timeout,
                                       request_save_on_cell_execute=False,
                                       kernel_manager_class=runner_kernel_manager())
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
