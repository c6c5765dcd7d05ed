"""Independent training runs on both cores: `run_parallel(train_one, jobs, workers=2)`, and the
one way a paper's grid reuses finished runs: `finished_run(out_dir, train, key)` for one run,
`finished_runs(jobs, out_dir, train, key, workers)` for a grid. A run is finished when its folder
holds result.json (written last, through common.files) under the key asked for (common/runs.py:
the configuration it was made from); a run killed before that trains again and common.train.fit
resumes it from its checkpoint, and a folder made under another configuration is cleared first.

A small model trained on cached features keeps one core busy (a second torch thread makes it
slower, see common/notebooks.py), so a grid of runs goes faster as one run per core, each in a
forked process with one torch thread. Fork shares the parent's in-memory features (copy on
write) and needs no pickling of the job function; a run writes its own folder and returns a
small dict. Results come back in job order and do not depend on the worker count: every run
seeds itself. On a GPU, or with workers <= 1, the jobs run here, one after the other (forked
children cannot share a CUDA context).
"""
from __future__ import annotations

import json
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import torch

from common import runs

_TASK: tuple = ()                 # (fn, jobs) for the forked children to read


def _run(i: int):
    fn, jobs = _TASK
    return fn(jobs[i])


def _one_thread():
    torch.set_num_threads(1)


def run_parallel(fn: Callable, jobs: list, workers: int = 2) -> list:
    """[fn(job) for job in jobs], on up to `workers` forked processes when that can help."""
    global _TASK
    jobs = list(jobs)
    if workers <= 1 or len(jobs) <= 1 or torch.cuda.is_available():
        return [fn(job) for job in jobs]
    _TASK = (fn, jobs)
    try:
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("fork"),
                                 initializer=_one_thread) as pool:
            return list(pool.map(_run, range(len(jobs))))
    finally:
        _TASK = ()


RESULT = "result.json"        # what a finished run leaves in its folder


def finished_run(out_dir, train: Callable[[], object], key: dict) -> dict:
    """<out_dir>/result.json of the run of `key` (common.runs.config_key), calling train() first when
    that run has not finished; a folder made under another key is cleared before it trains."""
    done = Path(out_dir) / RESULT
    if not (done.exists() and runs.matches(out_dir, key)):
        runs.prepare(out_dir, key)
        train()
    return _result(done)


def finished_runs(jobs, out_dir: Callable, train: Callable, key: Callable, workers: int = 1) -> list[dict]:
    """Every job's result.json in job order (out_dir(job) is its folder, key(job) its configuration);
    the jobs not finished under their key train first, train(job), `workers` at a time (run_parallel)."""
    jobs = list(jobs)
    todo = []
    for job in jobs:               # each key once: it hashes the params and reads the training code
        folder, job_key = Path(out_dir(job)), key(job)
        if not ((folder / RESULT).exists() and runs.matches(folder, job_key)):
            runs.prepare(folder, job_key)
            todo.append(job)
    run_parallel(train, todo, workers)
    return [_result(Path(out_dir(job)) / RESULT) for job in jobs]


def _result(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the run finished without writing its result; its train function must "
                                f"write {RESULT} last")
    return json.loads(path.read_text())
