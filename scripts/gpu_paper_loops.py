"""Run each paper's own training loop for a few steps on a small generated corpus, on this device.

    python scripts/gpu_paper_loops.py [--work /tmp/gpu_paper_loops] [--out reports/benchmarks]
                                      [--budget-s 300] [--step-s 180] [--tiny] [--keep]

Part of the GPU check (`make gpu-check`): the `paper` profile's networks and loops, shrunk in data
and epochs only, run end to end on whatever device torch sees.

1. Writes <work>/params.yaml: the `paper` profile of the project's params.yaml (`--tiny`: the
   `smoke` profile, for a CPU) resolved, with overrides that make it small and short (a corpus of
   5 subjects of 20-30 s at 112 px, small side sets, one epoch of everything, one seed, two folds,
   one Liu config on features built here). It is written whole, with `profile: paper` and an
   empty params/paper.yaml beside it, so common.params.load_params reads it unchanged.
2. Runs the DVC stage commands the four papers need, as dvc.yaml runs them plus
   `--params <work>/params.yaml`, with <work> as the working directory (params paths are
   relative: data/affwild2, data/features, data/models) and PYTHONPATH = the repository root.
   openSMILE's compare / egemaps are skipped when `import opensmile` fails (no paper loop here
   reads them).
3. Calls each paper's own loop in this process through its Python functions: Zhang train_fold
   (fold 0, valence, multimodal), Jeong teacher then student (I+A), Vu teacher123 and
   student_sharing CNNs then the teacher and student GRUs, Liu train_run (fold0, with its
   predictions on validation and test).
4. Writes <out>/gpu_paper_loops.json (device, torch, per step {name, kind, seconds, ok, error})
   and prints a table.

Every step is timed; a failing step is recorded (rc and the stderr tail of a stage; the
exception's type, message and last traceback frame of a loop) and the next one still runs.
A step is cut after --step-s seconds or when the --budget-s total runs out; after that the
remaining steps are marked "skipped: budget". The work folder is deleted at the end unless --keep.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from common.files import atomic_write_json  # noqa: E402
from common.params import load_params, profile_file, thaw  # noqa: E402

SEED = 0
LIU_CONFIG = "transformer early | affectnet | fbank,vggish"   # features built by the stages below


# --------------------------------------------------------------------------- 1. params

def small_overrides(tiny: bool, cores: int) -> dict:
    """Keys laid over the profile (load_params checks each exists): small data, one seed, two folds."""
    corpus = ({"subjects": 5, "two_person_videos": 1, "seconds": [10, 14],
               "side_sets": {"affectnet": 150, "expw": 100, "afew_va": 100}} if tiny else
              {"subjects": 5, "videos_per_subject": 1, "two_person_videos": 1, "seconds": [20, 30],
               "image_size": 112, "side_sets": {"affectnet": 400, "expw": 300, "afew_va": 300}})
    corpus["workers"] = max(1, min(8, cores))
    return {
        "corpus": corpus,
        "vggish": {"pretrain": {"hop_s": 0.5}},
        "soundnet": {"pretrain": {"crop_s": 8.0 if tiny else 15.0, "crops_per_track": 2}},
        "zhang2021": {"workers": 1, "seeds": [SEED], "folds": 2},
        "jeong2022": {"seeds": [SEED], "steps_per_epoch": 4 if tiny else 8},
        "vu2021": {"seeds": [SEED],
                   "cnn": {"samples_per_epoch": 48 if tiny else 256},
                   "gru": {"samples_per_epoch": 32 if tiny else 128}},
        "liu2023": {"seeds": [SEED], "workers": 1, "folds": 2, "step_lr_epochs": 1, "tvm_epochs": [1, 1],
                    "tvm_members": 1, "grid": [LIU_CONFIG], "ablation": [LIU_CONFIG], "cv_config": LIU_CONFIG,
                    "ensemble1": {"valence": 1, "arousal": 1}, "ensemble2": {"valence": 1, "arousal": 1}},
    }


def shorten(section, limits: dict):
    """Every `epochs` -> 1, `early_stop` -> 0 and pre-training frame counts capped, at any depth."""
    if isinstance(section, dict):
        for key, value in section.items():
            if key == "epochs" and isinstance(value, int):
                section[key] = 1
            elif key == "early_stop" and isinstance(value, int):
                section[key] = 0
            elif key in limits and isinstance(value, int):
                section[key] = min(value, limits[key])
            else:
                shorten(value, limits)
    return section


def write_params(work: Path, tiny: bool) -> dict:
    profile = "smoke" if tiny else "paper"
    params = thaw(load_params(ROOT / "params.yaml", profile, small_overrides(tiny, os.cpu_count() or 1)))
    shorten(params, {"frames": 300 if tiny else 1000, "val_frames": 100 if tiny else 300})
    for section in params.values():   # published weights named relative to the repo (sound8.npy)
        if isinstance(section, dict) and section.get("weights") and not Path(section["weights"]).is_absolute():
            section["weights"] = str(ROOT / section["weights"])
    params["profile"] = "paper"       # the file reads as the paper profile with no overrides left:
    work.mkdir(parents=True, exist_ok=True)
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False, default_flow_style=None))
    overrides = profile_file(path, "paper")
    overrides.parent.mkdir(exist_ok=True)
    overrides.write_text("{}\n")      # ... an empty params/paper.yaml beside it
    loaded = load_params(path)
    assert loaded == params, "params.yaml does not read back unchanged"
    return loaded


# --------------------------------------------------------------------------- 2. stages

BANK_STAGES = ("densenet", "ires100", "ms_va", "fau", "mae", "ecapatdnn", "hubert", "wav2vec")


def stage_commands(params_file: Path, with_opensmile: bool) -> list[tuple[str, list[str]]]:
    """(name, argv) of every stage the four loops need, in dvc.yaml's order of dependencies."""
    p = ["--params", str(params_file)]
    audio = ["mfcc", "fbank"] + (["egemaps", "compare"] if with_opensmile else [])
    return ([("corpus", ["-m", "common.data.corpus", *p])]
            + [(name, ["-m", "common.features.extract", name, *p]) for name in audio]
            + [("faces", ["-m", "common.features.faces", *p])]
            + [(name, ["-m", f"common.features.{module}", "pretrain", "extract", *p])
               for name, module in (("frame_encoder", "visual"), ("vggish", "vggish"),
                                    ("fer", "fer"), ("soundnet", "soundnet"))]
            # Liu's bank networks: their pre-training losses and extraction on this device
            + [(name, ["-m", "common.features.face_networks", name, "pretrain", "extract", *p])
               for name in ("densenet", "ires100", "ms_va")]
            + [(name, ["-m", f"common.features.{name}", "pretrain", "extract", *p])
               for name in ("fau", "mae", "ecapatdnn", "hubert", "wav2vec")])


def run_stage(argv: list[str], work: Path, log: Path, limit: float) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               DVC_NO_ANALYTICS="1")
    env.setdefault("PYTHONHASHSEED", "0")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        proc = subprocess.Popen([sys.executable, *argv], cwd=work, env=env, stdout=out, stderr=err,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)          # the stage and its DataLoader workers
            proc.wait()
            rc = None
    if rc == 0:
        return {"ok": True, "error": None, "rc": 0}
    lines = [x.strip() for x in re.split(r"[\r\n]+", log.with_suffix(".err").read_text(errors="replace"))]
    tail = [x for x in lines if x][-8:]             # tqdm redraws with \r: one line per redraw
    what = f"timeout after {limit:.0f} s" if rc is None else f"rc {rc}"
    return {"ok": False, "error": f"{what}: " + " | ".join(tail)[-1500:], "rc": rc}


# --------------------------------------------------------------------------- 3. the papers' loops

def zhang(params: dict, out: Path):
    from papers.zhang2021 import experiment
    from papers.zhang2021.train import train_fold
    trials = experiment.load_corpus(params)
    train_fold(params, trials, 0, "valence", "multimodal", out / "zhang2021" / "multimodal-valence-fold0")


def jeong_teacher(params: dict, out: Path):
    from papers.jeong2022 import experiment
    experiment.run(params, experiment.load_corpus(params), out / "jeong2022" / "teachers", "teacher", "I+A", SEED)


def jeong_student(params: dict, out: Path):
    from papers.jeong2022 import experiment
    experiment.run(params, experiment.load_corpus(params), out / "jeong2022" / "teachers", "student", "I+A", SEED,
                   students=out / "jeong2022" / "students")


def vu_cnn(kind: str):
    def step(params: dict, out: Path):
        from papers.vu2021 import experiment
        experiment.cnn_run(params, out / "vu2021", kind, SEED)
    return step


def vu_gru(kind: str):
    def step(params: dict, out: Path):
        from papers.vu2021 import experiment
        experiment.gru_run(params, out / "vu2021", kind, SEED)
    return step


def liu(params: dict, out: Path):
    from papers.liu2023 import experiment
    cfg = experiment.parse_config(params["liu2023"]["grid"][0])
    clips = experiment.load_corpus(params, [cfg])
    experiment.train_run(params, clips, cfg, "fold0", SEED, experiment.run_dir(out / "liu2023", cfg, "fold0", SEED))


LOOPS = [("zhang_train_fold", zhang), ("jeong_teacher", jeong_teacher), ("jeong_student", jeong_student),
         ("vu_cnn_teacher123", vu_cnn("teacher123")), ("vu_cnn_student_sharing", vu_cnn("student_sharing")),
         ("vu_gru_teacher", vu_gru("teacher")), ("vu_gru_student", vu_gru("student")), ("liu_train_run", liu)]


class StepTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise StepTimeout("step time limit reached")


def run_loop(fn, params: dict, out: Path, limit: float) -> dict:
    """fn(params, out) under a SIGALRM limit; the exception's type, message and last frame if it fails."""
    before = {p: p.stat().st_mtime for p in out.rglob("summary.json")}
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(max(1, int(limit)))
    try:
        fn(params, out)
        result = {"ok": True, "error": None}
    except BaseException as e:                      # a crash is a finding: record it and go on
        if isinstance(e, KeyboardInterrupt):
            raise
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.name != "_alarm"]
        frame = frames[-1] if frames else None        # for a timeout: where the step was cut
        where = f" at {_short(frame.filename)}:{frame.lineno} in {frame.name}" if frame else ""
        msg = " ".join(str(e).split())[:400]
        result = {"ok": False, "error": f"{type(e).__name__}: {msg}{where}"}
    finally:
        signal.alarm(0)
    result["runs"] = fit_runs(out, before)
    return result


def _short(filename: str) -> str:
    try:
        return str(Path(filename).resolve().relative_to(ROOT))
    except ValueError:
        return filename


def fit_runs(out: Path, before: dict) -> list[dict]:
    """The fit() runs this step finished: epochs from summary.json, seconds from result.json."""
    runs = []
    for path in sorted(out.rglob("summary.json")):
        if before.get(path) == path.stat().st_mtime:
            continue
        summary = json.loads(path.read_text())
        row = {"run": str(path.parent.relative_to(out)), "epochs_run": summary.get("epochs_run")}
        result = path.parent / "result.json"
        if result.exists():
            r = json.loads(result.read_text())
            row["seconds"] = r.get("seconds")
        runs.append(row)
    return runs


# --------------------------------------------------------------------------- 4. report

def device_info() -> dict:
    import torch
    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
            "cuda": torch.version.cuda if cuda else None, "python": platform.python_version()}


def table(steps: list[dict]) -> str:
    lines = [f"{'step':<24} {'kind':<6} {'seconds':>8}  result"]
    for s in steps:
        state = "ok" if s["ok"] else (s["error"] or "failed")
        lines.append(f"{s['name']:<24} {s['kind']:<6} {s['seconds']:>8.1f}  {state[:160]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/gpu_paper_loops", help="scratch folder (cwd of every step)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"), help="folder of gpu_paper_loops.json")
    ap.add_argument("--budget-s", type=float, default=300.0, help="total seconds; later steps are skipped")
    ap.add_argument("--step-s", type=float, default=180.0, help="seconds one step may take")
    ap.add_argument("--tiny", action="store_true", help="start from the smoke profile (a CPU test)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args(argv)

    started = time.perf_counter()
    work = Path(args.work).resolve()
    out_json = Path(args.out).resolve() / "gpu_paper_loops.json"
    if work == ROOT or ROOT in work.parents:
        ap.error("--work must be outside the repository")
    if work.exists():
        shutil.rmtree(work)
    params = write_params(work, args.tiny)
    try:
        import opensmile  # noqa: F401
        with_opensmile = True
    except Exception:
        with_opensmile = False
        print("openSMILE not importable: the compare / egemaps stages are skipped (no loop here reads them)")

    info = device_info()
    print(f"device {info['device']}, torch {info['torch']}; work folder {work}; "
          f"{'smoke' if args.tiny else 'paper'} profile, small; budget {args.budget_s:.0f} s")
    stages = [(name, "stage", argv) for name, argv in stage_commands(work / "params.yaml", with_opensmile)]
    # the loops right after the stages they read; Liu's bank networks last, where a budget cut falls
    plan = [s for s in stages if s[0] not in BANK_STAGES] + [(name, "loop", fn) for name, fn in LOOPS] \
        + [s for s in stages if s[0] in BANK_STAGES]

    setup_seconds = round(time.perf_counter() - started, 2)   # imports (torch, opensmile) and params
    steps = []
    os.chdir(work)                                   # the loops read params' relative data paths
    for name, kind, what in plan:
        left = args.budget_s - (time.perf_counter() - started)
        if left < 1:
            steps.append({"name": name, "kind": kind, "seconds": 0.0, "ok": False, "error": "skipped: budget"})
            print(f"  {name}: skipped (budget)", flush=True)
            continue
        t0 = time.perf_counter()
        limit = min(args.step_s, left)
        if kind == "stage":
            result = run_stage(what, work, work / "logs" / name, limit)
            result["cmd"] = "python " + " ".join(what)
        else:
            result = run_loop(what, params, work / "reports", limit)
        step = {"name": name, "kind": kind, "seconds": round(time.perf_counter() - t0, 2), **result}
        steps.append(step)
        print(f"  {name}: {step['seconds']:.1f} s {'ok' if step['ok'] else 'FAILED: ' + step['error'][:300]}",
              flush=True)
    os.chdir(ROOT)

    report = {**info, "profile": "smoke" if args.tiny else "paper", "tiny": args.tiny, "opensmile": with_opensmile,
              "budget_s": args.budget_s, "step_s": args.step_s,
              "corpus": {k: params["corpus"][k] for k in ("subjects", "seconds", "image_size")},
              "liu_config": LIU_CONFIG, "setup_seconds": setup_seconds,
              "total_seconds": round(time.perf_counter() - started, 2), "steps": steps}
    atomic_write_json(out_json, report)
    print(table(steps))
    print(f"{sum(s['ok'] for s in steps)}/{len(steps)} steps ok in {report['total_seconds']:.0f} s -> {out_json}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(s["ok"] for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
