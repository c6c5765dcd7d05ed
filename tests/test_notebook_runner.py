"""The papermill runner (common/notebooks.py) as a student and the `make reproduce` log see it: the
executed copy carries the figures as image outputs, even when the caller chose a non-interactive
backend, and the kernel adds nothing to the log but what the notebook prints."""
import os

import nbformat

from common import notebooks


def _toy_paper(tmp_path, monkeypatch, *cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell('out_dir = ""', metadata={"tags": ["parameters"]}),
                *(nbformat.v4.new_code_cell(c) for c in cells)]
    paper = tmp_path / "papers" / "toy"
    paper.mkdir(parents=True)
    nbformat.write(nb, paper / "probe.ipynb")
    monkeypatch.setattr(notebooks, "ROOT", tmp_path)


def test_figures_are_image_outputs_and_the_kernel_is_quiet(tmp_path, monkeypatch, capfd):
    _toy_paper(tmp_path, monkeypatch,
               "import matplotlib.pyplot as plt\nfig, ax = plt.subplots(); ax.plot([0, 1, 0]); plt.show()",
               "fig, ax = plt.subplots(); ax.bar([1, 2], [3, 4])       # shown at the end of the cell, no plt.show()",
               "print('hello from the notebook')")
    monkeypatch.setenv("MPLBACKEND", "Agg")          # as a script or a test session may have set it
    executed = notebooks.run_notebook("toy", "probe", reports_dir=tmp_path / "reports")
    cells = nbformat.read(executed, 4).cells
    images = [sum("image/png" in o.get("data", {}) for o in c.outputs) for c in cells if "fig, ax" in c.source]
    assert images == [1, 1], [c.outputs for c in cells]
    assert os.environ["MPLBACKEND"] == "Agg"          # the caller's environment is restored
    log = "".join(capfd.readouterr())
    assert "without encryption" not in log and "KeyboardInterrupt" not in log, log
    assert not list(tmp_path.glob("kernel-ipc*")) and not list((tmp_path / "reports" / "toy").glob("kernel-*"))


def test_no_notebook_picks_a_backend_that_hides_its_figures():
    """A notebook (or the paper code it calls) that sets matplotlib.use("Agg") shows no figure in Lab
    or in the executed copy: the kernel's inline backend must stay."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    sources = [*root.glob("papers/*/*.ipynb"), *root.glob("papers/*/*.py")]
    assert len(sources) > 20
    assert [p.name for p in sources if "matplotlib.use(" in p.read_text()] == []


def test_notebooks_started_at_once_each_get_their_own_kernel_sockets(tmp_path, monkeypatch):
    """Two notebooks run at the same moment from the same folder (the tests' two workers, two stages):
    each kernel listens on sockets of its own, so neither sees the other's messages (with a shared
    "kernel-ipc" prefix they failed with "Invalid Signature" or "Kernel died")."""
    from concurrent.futures import ThreadPoolExecutor

    manager = notebooks.runner_kernel_manager()
    assert manager(kernel_name="python3").ip != manager(kernel_name="python3").ip
    _toy_paper(tmp_path, monkeypatch, "import time\nfor i in range(20):\n    print(i)\n    time.sleep(0.05)")
    monkeypatch.chdir(tmp_path)
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(notebooks.run_notebook, "toy", "probe", reports_dir=tmp_path / f"reports{i}")
                for i in range(2)]
        executed = [r.result() for r in runs]
    for path in executed:
        printed = "".join(o.get("text", "") for c in nbformat.read(path, 4).cells for o in c.outputs)
        assert printed.split() == [str(i) for i in range(20)]
