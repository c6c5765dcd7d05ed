"""common/parallel.py: runs on both cores give the results of the serial loop, in job order."""
import os

import torch

from common.parallel import run_parallel


def _seeded_run(job):
    seed, n = job
    torch.manual_seed(seed)
    return {"seed": seed, "value": float(torch.randn(n).sum()), "pid": os.getpid(),
            "threads": torch.get_num_threads()}


def test_parallel_runs_match_the_serial_loop_in_order():
    jobs = [(s, 100) for s in range(5)]
    serial = run_parallel(_seeded_run, jobs, workers=1)
    forked = run_parallel(_seeded_run, jobs, workers=2)
    assert [r["value"] for r in forked] == [r["value"] for r in serial]
    assert [r["seed"] for r in forked] == list(range(5))
    assert all(r["pid"] != os.getpid() and r["threads"] == 1 for r in forked)     # worker processes, 1 thread each
    assert all(r["pid"] == os.getpid() for r in serial)


def test_a_closure_over_local_data_runs_in_the_workers():
    table = {i: i * i for i in range(4)}                  # not picklable as a lambda; fork shares it
    assert run_parallel(lambda i: table[i] + 1, list(range(4)), workers=2) == [1, 2, 5, 10]
