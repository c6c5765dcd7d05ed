"""Independent training runs on both cores: `run_parallel(train_one, jobs, workers=2)`.

A small model trained on cached features keeps one core busy (a second torch thread makes it
slower, see common/notebooks.py), so a grid of runs goes faster as one run per core, each in a
forked process with one torch thread. Fork shares the parent's in-memory features (copy on
write) and needs no pickling of the job function; a run writes its own folder and returns a
small dict. Results come back in job order and do not depend on the worker count: every run
seeds itself. On a GPU, or with workers <= 1, the jobs run here, one after the other (forked
children cannot share a CUDA context).
"""
from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
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
