"""Independent training runs on both cores: `run_parallel(train_one, jobs, workers=2)`, and the
one way a paper's grid reuses finished runs: `finished_run(out_dir, train)` for one run,
`finished_runs(jobs, out_dir, train, workers)` for a grid. A run is finished when its folder holds
result.json (written last, through common.files); a run killed before that trains again and
common.train.fit resumes it from its checkpoint.

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


def finished_run(out_dir, train: Callable[[], object]) -> dict:
    """<out_dir>/result.json, calling train() first when the run has not finished."""
    done = Path(out_dir) / RESULT
    if not done.exists():
        train()
    return json.loads(done.read_text())


def finished_runs(jobs, out_dir: Callable, train: Callable, workers: int = 1) -> list[dict]:
    """Every job's result.json in job order (out_dir(job) is its folder); the jobs not finished
    yet train first, train(job), `workers` at a time (run_parallel)."""
    jobs = list(jobs)
    run_parallel(train, [job for job in jobs if not (Path(out_dir(job)) / RESULT).exists()], workers)
    return [json.loads((Path(out_dir(job)) / RESULT).read_text()) for job in jobs]
