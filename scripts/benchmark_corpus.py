"""Measure the corpus generator: frames/s, linear scaling in subjects x seconds, 1 vs 2 workers.

Writes reports/benchmarks/corpus.json and prints a table; docs/benchmarks.md quotes its figures.
Budgets are measured here, never asserted in timed tests.
"""
import json
import shutil
import tempfile
import time
from pathlib import Path

from common.data import synthetic
from common.params import load_params

ROOT = Path(__file__).resolve().parents[1]


def run(corpus: dict, **changes) -> dict:
    cfg = synthetic.CorpusConfig.from_params({**corpus, **changes})
    out = Path(tempfile.mkdtemp()) / "affwild2"
    t0 = time.perf_counter()
    summary = synthetic.generate(cfg, out, progress=False)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out.parent)
    return {"subjects": cfg.subjects, "seconds_per_video": list(cfg.seconds), "workers": cfg.workers,
            "image_size": cfg.image_size, "frames": summary["frames"], "wall_s": round(seconds, 2),
            "frames_per_s": round(summary["frames"] / seconds, 1), "mib": round(summary["bytes"] / 2 ** 20, 1)}


def main() -> None:
    default = load_params(ROOT / "params.yaml", "default")["corpus"]
    small_sides = {"affectnet": 100, "expw": 100, "afew_va": 100}
    rows = []
    for subjects, seconds in ((6, 20), (12, 20), (24, 20), (12, 40)):
        rows.append(run(default, subjects=subjects, seconds=[seconds, seconds], two_person_videos=0,
                        side_sets=small_sides))
    rows.append(run(default, subjects=12, seconds=[20, 20], two_person_videos=0, side_sets=small_sides, workers=1))
    rows.append(run(default, subjects=6, seconds=[20, 20], two_person_videos=0, side_sets=small_sides, image_size=112))
    rows.append({**run(default), "note": "the default profile"})
    print(f"{'subjects':>8} {'s/video':>8} {'px':>4} {'workers':>7} {'frames':>7} {'wall s':>7} "
          f"{'frames/s':>9} {'MiB':>6}")
    for r in rows:
        print(f"{r['subjects']:>8} {r['seconds_per_video'][0]:>8} {r['image_size']:>4} {r['workers']:>7} "
              f"{r['frames']:>7} {r['wall_s']:>7} {r['frames_per_s']:>9} {r['mib']:>6}")
    out = ROOT / "reports" / "benchmarks" / "corpus.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
