"""The plan and the driver: subjects, splits and videos, the jobs run on worker processes, the
tables, and the command line (`python -m common.data.synthetic`)."""
from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from pathlib import Path

from common.data.affwild2 import MTL_DIR, MTL_FILES, SPLIT_DIRS, TASK_DIRS
from common.data.synthetic.config import LAYOUTS, CorpusConfig, job_rng
from common.data.synthetic.jobs import VideoPlan, run_job
from common.data.synthetic.labels import write_mtl
from common.data.synthetic.latent import make_subject
from common.params import ParamsError, load_params


def plan_corpus(cfg: CorpusConfig) -> tuple[dict, list[VideoPlan]]:
    """Subjects, their subject-independent split, and every video with its annotated tasks."""
    rng = job_rng(cfg, 0, 0)
    sids = [f"S{i:03d}" for i in range(cfg.subjects)]
    subjects = {sid: make_subject(job_rng(cfg, 5, i), sid) for i, sid in enumerate(sids)}
    order = rng.permutation(cfg.subjects)
    n_train = max(1, int(round(cfg.split_fractions[0] * cfg.subjects)))
    n_val = max(1, int(round(cfg.split_fractions[1] * cfg.subjects)))
    n_train = min(n_train, cfg.subjects - n_val - 1)
    split_of = {}
    for rank, i in enumerate(order):
        split_of[sids[i]] = "train" if rank < n_train else "validation" if rank < n_train + n_val else "test"

    plans, idx = [], 0
    for sid in sids:
        for _ in range(cfg.videos_per_subject):
            base = f"syn{idx:03d}-{cfg.fps}-640x360"
            plans.append(VideoPlan(idx, base, [base], [sid], split_of[sid], 0.0, []))
            idx += 1
    for k in range(cfg.two_person_videos):
        split = ("train", "validation", "test")[k % 3]
        pool = [sid for sid in sids if split_of[sid] == split]
        if len(pool) < 2:
            continue
        pair = list(rng.choice(pool, 2, replace=False))
        base = f"syn{idx:03d}-{cfg.fps}-1280x720"
        plans.append(VideoPlan(idx, base, [base + "_left", base + "_right"], pair, split, 0.0, []))
        idx += 1

    for p in plans:
        p.seconds = float(rng.uniform(*cfg.seconds))
        for _ in p.names:
            tasks = [t for t in TASK_DIRS if rng.random() < cfg.coverage[t]]
            p.tasks.append(tuple(tasks or [list(TASK_DIRS)[int(rng.integers(0, 3))]]))
    # Every split needs every task annotated somewhere, or its tables cannot be computed.
    for split in SPLIT_DIRS:
        tracks = [(p, k) for p in plans if p.split == split for k in range(len(p.names))]
        for task in TASK_DIRS:
            if tracks and not any(task in p.tasks[k] for p, k in tracks):
                p, k = tracks[0]
                p.tasks[k] = tuple(t for t in TASK_DIRS if t in p.tasks[k] or t == task)
    return subjects, plans


def generate(cfg: CorpusConfig, out: str | Path, progress: bool = True) -> dict:
    """Write the whole corpus to `out` (atomically: into a temp folder, then renamed)."""
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    started = time.time()
    try:
        for sub in ["cropped_aligned", "videos", "metadata/latent", "metadata/audio_events",
                    f"annotations/{MTL_DIR}"] + [f"side/{s}/images" for s in cfg.side_sets] + \
                   [f"annotations/{t}/{s}" for t in TASK_DIRS.values() for s in SPLIT_DIRS.values()]:
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        subjects, plans = plan_corpus(cfg)
        jobs = [("video", (cfg, p, {sid: subjects[sid] for sid in p.subjects}, tmp)) for p in plans]
        chunk = 250
        for name, count in cfg.side_sets.items():
            jobs += [("stills", (cfg, name, s, min(chunk, count - s), tmp)) for s in range(0, count, chunk)]
        # Longest first keeps both workers busy to the end.
        jobs.sort(key=lambda j: -(j[1][1].seconds * len(j[1][1].names) if j[0] == "video" else 8.0))
        results = _map(jobs, cfg.workers, progress)
        video_rows = sorted((r for kind, res in results if kind == "video" for r in res["rows"]),
                            key=lambda r: r["video"])
        stills = {name: [] for name in cfg.side_sets}
        for (kind, args), (_, res) in zip(jobs, results):
            if kind == "stills":
                stills[args[1]].extend(res)
        mtl_counts = write_mtl(cfg, video_rows, tmp)
        _write_tables(tmp, video_rows, stills, subjects, plans)
        summary = summarise(video_rows, stills, mtl_counts, time.time() - started, tmp)
        (tmp / "metadata" / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if cfg.layout == "real_release":
            as_real_release(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return summary


def as_real_release(root: Path) -> None:
    """Cut a generated corpus down to what the real Aff-Wild2 release holds: no test labels (no
    Test_Set folders, no MTL test.txt: the organisers keep them), no metadata/ (no videos.csv, so
    frame rates come from the names and frame counts from the label files; no latent truth, no
    audio events), and one training video without audio (its wav removed: data.missing_audio). The
    two-person _left/_right tracks and the frames without a face stay as generated; the side/
    still-image sets stand in for the separate sets a user converts."""
    with open(root / "metadata" / "videos.csv", newline="") as f:
        train = [r["audio"] for r in csv.DictReader(f) if r["split"] == "train" and r["video"] + ".wav" == r["audio"]]
    (root / "videos" / train[0]).unlink()
    for task_dir in TASK_DIRS.values():
        shutil.rmtree(root / "annotations" / task_dir / SPLIT_DIRS["test"])
    (root / "annotations" / MTL_DIR / MTL_FILES["test"]).unlink()
    shutil.rmtree(root / "metadata")


def _map(jobs, workers, progress):
    from tqdm import tqdm
    bar = tqdm(total=len(jobs), desc="synthetic Aff-Wild2", unit="job", disable=None if progress else True,
               file=sys.stderr)
    results = [None] * len(jobs)
    if workers == 1:
        for i, job in enumerate(jobs):
            results[i] = run_job(job)
            bar.update()
    else:
        # fork is cheap and the jobs only read their arguments; results come back in job order.
        with mp.get_context("fork").Pool(workers) as pool:
            for i, res in enumerate(pool.imap(run_job, jobs, chunksize=1)):
                results[i] = res
                bar.update()
    bar.close()
    return results


def _write_tables(out: Path, rows: list, stills: dict, subjects: dict, plans: list) -> None:
    cols = ["video", "subject", "split", "fps", "n_frames", "width", "height", "audio", "tasks", "face_frames"]
    with open(out / "metadata" / "videos.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        for r in rows:
            w.writerow([r[c] for c in cols])
    split_of = {sid: p.split for p in plans for sid in p.subjects}
    with open(out / "metadata" / "subjects.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["subject", "split", "f0_hz", "va_offset_valence", "va_offset_arousal"])
        for sid, s in subjects.items():
            w.writerow([sid, split_of.get(sid, "unused"), f"{s.f0:.1f}", f"{s.va_offset[0]:.3f}",
                        f"{s.va_offset[1]:.3f}"])
    headers = {"affectnet": ("image", "expression", "valence", "arousal"),
               "expw": ("image", "expression"), "afew_va": ("image", "valence", "arousal")}
    column = {"image": 0, "expression": 1, "valence": 2, "arousal": 3}   # generate_stills' tuples
    for name, items in stills.items():
        with open(out / "side" / name / "labels.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(headers[name])
            for item in sorted(items):
                w.writerow([item[column[h]] if h in ("image", "expression") else f"{item[column[h]]:.3f}"
                            for h in headers[name]])


def summarise(rows: list, stills: dict, mtl_counts: dict, seconds: float, root: Path) -> dict:
    frames = sum(r["n_frames"] for r in rows)
    per_split = {}
    for split in SPLIT_DIRS:
        sel = [r for r in rows if r["split"] == split]
        per_split[split] = {"videos": len(sel), "subjects": len({r["subject"] for r in sel}),
                            "frames": sum(r["n_frames"] for r in sel), "mtl_rows": mtl_counts[split]}
    labelled = {}
    for task in TASK_DIRS:
        labelled[task] = {split: int(sum(r["labels"]["valid"][task].sum() for r in rows
                                         if r["split"] == split and task in r["tasks"].split("+")))
                          for split in SPLIT_DIRS}
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return {"videos": len(rows), "two_person_tracks": sum(r["video"].endswith(("_left", "_right")) for r in rows),
            "frames": frames, "face_frames": sum(r["face_frames"] for r in rows),
            "labelled_frames": labelled, "splits": per_split,
            "side_sets": {k: len(v) for k, v in stills.items()}, "seconds": round(seconds, 1),
            "frames_per_second": round(frames / max(seconds, 1e-9), 1), "bytes": size}


def print_summary(summary: dict, root: Path) -> None:
    mb = summary["bytes"] / 2 ** 20
    print(f"\nSynthetic Aff-Wild2 written to {root} ({mb:.1f} MiB) in {summary['seconds']} s "
          f"({summary['frames_per_second']:.0f} video frames/s)")
    print(f"  videos: {summary['videos']} face tracks ({summary['two_person_tracks']} from two-person videos), "
          f"{summary['frames']} frames, {summary['face_frames']} with a face image")
    print(f"  {'split':<11}{'videos':>7}{'subjects':>9}{'frames':>8}{'VA':>8}{'EXPR':>8}{'AU':>8}{'MTL rows':>9}")
    for split, s in summary["splits"].items():
        lab = summary["labelled_frames"]
        print(f"  {split:<11}{s['videos']:>7}{s['subjects']:>9}{s['frames']:>8}{lab['VA'][split]:>8}"
              f"{lab['EXPR'][split]:>8}{lab['AU'][split]:>8}{s['mtl_rows']:>9}")
    print("  side sets: " + ", ".join(f"{k} {v} images" for k, v in summary["side_sets"].items()))
    print("  (labelled = frames with a valid label in that task's annotation files)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="The embedded corpus: a synthetic Aff-Wild2 written in the official ABAW layout.")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", choices=("smoke", "default", "paper"))
    ap.add_argument("--out", help="output folder (default: data.root from params.yaml)")
    ap.add_argument("--workers", type=int)
    ap.add_argument("--layout", choices=LAYOUTS, help="override corpus.layout (real_release: as the real corpus ships)")
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params, args.profile)
        corpus = dict(params["corpus"])
        if args.workers:
            corpus["workers"] = args.workers
        if args.layout:
            corpus["layout"] = args.layout
        cfg = CorpusConfig.from_params(corpus)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or params["data"]["root"])
    summary = generate(cfg, out)
    print_summary(summary, out)
    if cfg.layout == "real_release":
        print("  layout real_release: then removed, as the real release ships it: the test labels, metadata/ "
              "and one training video's audio (read it with data.source: real)")
    return 0

