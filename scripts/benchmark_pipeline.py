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

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ("zhang2021", "jeong2022", "vu2021", "liu2023")


def group_of(stage: str) -> str:
    for paper in PAPERS:
        if stage.startswith(paper):
            return paper
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
    stages = [(name, round((marks[i + 1][1] if i + 1 < len(marks) else end) - t, 1)) for i, (name, t) in enumerate(marks)]
    return stages, round(end - started, 1), code


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="", help="profile to run (default: the one params.yaml names)")
    ap.add_argument("--force", action="store_true", help="re-run every stage, not only changed ones")
    args = ap.parse_args(argv)
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
    groups: dict[str, float] = {}
    for name, seconds in stages:
        groups[group_of(name)] = round(groups.get(group_of(name), 0.0) + seconds, 1)
    load = os.getloadavg()
    result = {"profile": profile, "exit_code": code, "total_s": total, "stages": dict(stages), "groups": groups,
              "cpus": os.cpu_count(), "load_after": [round(x, 2) for x in load],
              "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = ROOT / "reports" / "benchmarks" / f"pipeline_{profile}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print("\n| stage | seconds |\n|---|---:|")
    for name, seconds in stages:
        print(f"| {name} | {seconds:.0f} |")
    for name, seconds in groups.items():
        print(f"| **{name}** | **{seconds:.0f}** |")
    print(f"| **total ({profile}, exit {code})** | **{total:.0f}** |")
    return code


if __name__ == "__main__":
    sys.exit(main())
