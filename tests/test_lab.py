"""`make lab`: the project's kernel, and the environment a student opens the notebooks with."""
import importlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import lab_kernel  # noqa: E402


def test_notebooks_name_the_kernel_that_make_lab_registers():
    for nb in sorted((ROOT / "papers").glob("*/*.ipynb")):
        spec = json.loads(nb.read_text())["metadata"]["kernelspec"]
        assert spec["name"] == lab_kernel.NAME, nb
    assert 'kernel_name="python3"' in (ROOT / "common" / "notebooks.py").read_text()


def test_make_lab_registers_the_kernel_and_opens_the_project_root():
    """Lab's file browser starts at the root: params.yaml, papers/ and reports/ are all in reach."""
    make = (ROOT / "Makefile").read_text()
    lab = re.search(r"^lab:.*\n((?:\t.*\n)+)", make, re.M).group(1)
    assert "scripts/lab_kernel.py" in make and "jupyter lab" in lab
    assert '--ServerApp.root_dir="$(CURDIR)"' in lab and "papers/" not in lab


def test_the_environment_installs_jupyterlab_and_seaborn():
    pins = (ROOT / "requirements.txt").read_text()
    for package in ("jupyterlab", "seaborn"):
        assert re.search(rf"^{package}==\S+", pins, re.M), package
        importlib.import_module(package)


def test_the_kernel_starts_in_the_project_root_wherever_lab_starts_it(tmp_path):
    """JupyterLab starts a kernel in the notebook's folder; the notebooks read params.yaml from the root."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    lab_kernel.install(tmp_path / "kernels")
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    assert ksm.get_kernel_spec("python3").display_name == "Python 3 (affect-repro)"
    km = KernelManager(kernel_name="python3", kernel_spec_manager=ksm)
    km.start_kernel(cwd=str(ROOT / "papers" / "zhang2021"))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        seen = []
        kc.execute_interactive("import os; print(os.getcwd(), os.environ['PYTHONHASHSEED'])", timeout=60,
                               output_hook=lambda m: seen.append(m["content"].get("text", "")))
        assert "".join(seen).split() == [str(ROOT), "0"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
