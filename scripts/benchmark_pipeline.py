"""Time every stage of the whole pipeline: `python scripts/benchmark_pipeline.py [--profile smoke] [--force]`.

Runs `dvc repro` (changed stages only, or every stage with `--force`) in this checkout, stamps
each "Running stage" line DVC prints as it happens, and writes the wall time per stage and per
group (data + shared features, each paper, the report) to
reports/benchmarks/pipeline_<profile>.json, and a Markdown table to stdout for the README.
`--profile` sets `profile:` in params.yaml for the run and restores the file afterwards (dvc.lock
then records that profile's run: use it in a scratch clone for anything but the default).
Budgets are measured here, never asserted in timed tests.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from common.files import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ("zhang2021", "jeong2022", "vu2021", "liu2023")


def owners() -> dict[str, set]:
    """stage -> the papers whose stages need its outputs (directly or through other stages)."""
    from dvc.dvcfile import load_file
    from dvc.repo import Repo
    with Repo(str(ROOT)) as repo:          # as DVC resolves them: a foreach stage is one per item, `name@key`
        resolved = load_file(repo, "dvc.yaml").resolver.resolve()["stages"]

    def paths(xs) -> set:
        return {str(next(iter(x)) if isinstance(x, dict) else x) for x in xs}
    stages = {name: (paths(spec.get("deps", [])), paths(spec.get("outs", [])) | paths(spec.get("metrics", [])))
              for name, spec in resolved.items()}
    needs = {s: {t for t, (_, outs) in stages.items() if t != s and deps & outs} for s, (deps, _) in stages.items()}
    result = {s: set() for s in stages}
    for s in stages:
        todo, seen = [s], set()
        while todo:
            for up in needs[todo.pop()] - seen:
                seen.add(up)
                todo.append(up)
        for up in seen:
            result[up] |= {p for p in PAPERS if s.startswith(p)}
    return result


def group_of(stage: str, owner: dict) -> str:
    """A paper's own stages and the stages only that paper needs count for the paper."""
    for paper in PAPERS:
        if stage.startswith(paper):
            return paper
    papers = owner.get(stage, set())
    if len(papers) == 1:
        return f"{next(iter(papers))} (its feature networks)"
    return "report" if stage == "report" else "data + shared features"


def run_timed(cmd: list[str], env: dict) -> tuple[list[tuple[str, float]], float, int]:
    """Run cmd, echoing its output; return [(stage, seconds)], the total and the exit code."""
    started = time.perf_counter()
    marks: list[tuple[str, float]] = []
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        sys.stdout.write(line)
        m = re.match(r"Running stage '([^']+)'", line.strip())
        if m:
            marks.append((m.group(1), time.perf_counter()))
    code = proc.wait()
    end = time.perf_counter()
    stages = [(name, round((marks[i + 1][1] if i + 1 < len(marks) else end) - t, 1))
              for i, (name, t) in enumerate(marks)]
    return stages, round(end - started, 1), code


def print_table(result: dict) -> None:
    owner = owners()
    groups: dict[str, float] = {}
    for name, seconds in result["stages"].items():
        groups[group_of(name, owner)] = round(groups.get(group_of(name, owner), 0.0) + seconds, 1)
    print("\n| stage | seconds |\n|---|---:|")
    for name, seconds in result["stages"].items():
        print(f"| {name} | {seconds:.0f} |")
    for name, seconds in groups.items():
        print(f"| **{name}** | **{seconds:.0f}** ({seconds / 60:.1f} min) |")
    print(f"| **total ({result['profile']}, exit {result['exit_code']})** | **{result['total_s']:.0f}** "
          f"({result['total_s'] / 60:.1f} min) |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="", help="profile to run (default: the one params.yaml names)")
    ap.add_argument("--force", action="store_true", help="re-run every stage, not only changed ones")
    ap.add_argument("--table", action="store_true", help="only print the table of the last run's JSON")
    args = ap.parse_args(argv)
    if args.table:
        path = ROOT / "reports" / "benchmarks" / f"pipeline_{args.profile or 'default'}.json"
        result = json.loads(path.read_text())
        print_table(result)
        return 0
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    params = ROOT / "params.yaml"
    original = params.read_text()
    profile = args.profile or re.search(r"^profile:\s*(\S+)", original, re.M).group(1)
    if args.profile:
        params.write_text(re.sub(r"^profile:\s*\S+", f"profile: {profile}", original, count=1, flags=re.M))
    try:
        stages, total, code = run_timed(["dvc", "repro"] + (["--force"] if args.force else []), env)
    finally:
        params.write_text(original)
    owner = owners()
    groups: dict[str, float] = {}
    for name, seconds in stages:
        groups[group_of(name, owner)] = round(groups.get(group_of(name, owner), 0.0) + seconds, 1)
    load = os.getloadavg()
    result = {"profile": profile, "exit_code": code, "total_s": total, "stages": dict(stages), "groups": groups,
              "cpus": os.cpu_count(), "load_after": [round(x, 2) for x in load],
              "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_json(ROOT / "reports" / "benchmarks" / f"pipeline_{profile}.json", result)
    print_table(result)
    return code


if __name__ == "__main__":
    sys.exit(main())
