"""Vu et al. 2021: the runs behind Tables 1-4; the notebooks call these and explain them.

Run folders (each holds fit's checkpoint, best.pt, metrics.csv and result.json; a finished run
is reused, so a notebook re-executed after a kill, or a later table, picks up earlier runs):
    <out_dir>/teachers/<teacher12|teacher123>-seed<s>              Table 1 (Eq. 7)
    <out_dir>/students/<student_nosharing|student_sharing>-seed<s>  Table 2 (Eqs. 9, 10)
    <out_dir>/gru/<teacher|student>-seed<s>, <out_dir>/gru/features Table 3 (the CNN-GRU)

CPU budget (default profile, one torch thread, measured on the 2-core machine while 3 other agents
kept the load at 3.6-5): the four notebooks from scratch with 3 seeds took 8 m 45 s wall and
4 m 16 s CPU (user + sys; single-threaded, so about the wall time on an idle machine): a CNN run
10-20 s CPU (the student's teacher forward adds ~30 %), features of one student CNN 5-6 s, a GRU
run 7-13 s, plus ~10 s per notebook to start the kernel and decode the stills. The fourth seed
added 1 m 53 s CPU: about 5.5 min for the default 4 seeds. Smoke profile: the four notebooks in
55 s wall / 28 s CPU on the tiny test corpus.
Per-task heads (2026-12-05, seed 0, default profile, CPU seconds of one process, single thread):
Table 2's three CNN runs 27.8 s before, 31.7 s after (+14 %); the finding's released teacher and
student 22.9 s per seed, 69 s for its three seeds (about 1.2 min on an idle machine).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common import ledger
from common.claims import claim, result_rows
from common.data.affwild2 import read_split
from common.files import atomic_write_json
from common.notebooks import notebook_params  # noqa: F401  (the notebooks call experiment.notebook_params)
from common.parallel import RESULT, finished_run, run_parallel
from common.runs import config_key
from common.params import merge_checked
from papers.vu2021 import data as vd
from papers.vu2021 import train as vt

SPLITS = ("train", "validation", "test")


def cnn_dir(out_dir, kind: str, seed: int) -> Path:
    group = "teachers" if kind.startswith("teacher") else "students"
    return Path(out_dir) / group / f"{kind}-seed{seed}"


def cnn_run(params: dict, out_dir, kind: str, seed: int, progress: bool = False) -> dict:
    """result.json of one CNN run, training it (and, for a student, its teacher) if needed."""
    out = cnn_dir(out_dir, kind, seed)

    def train():
        teacher = None
        if vt.CNN_KINDS[kind][1] is not None:
            cnn_run(params, out_dir, "teacher123", seed, progress)
            teacher = cnn_dir(out_dir, "teacher123", seed)
        vt.train_cnn(params, kind, seed, out, teacher, progress)

    return finished_run(out, train, config_key(params, "vu2021", stage="cnn", kind=kind, seed=seed))


def cnn_grid(params: dict, out_dir, kinds, progress: bool = False) -> list[dict]:
    """Every (seed, kind) run's result.json, in that order. The seeds train `vu2021.workers` at a time,
    one per core (common/parallel.py: a run seeds itself, so the numbers do not depend on it); a
    seed's kinds train one after the other, so a teacher two students share trains once."""
    per_seed = run_parallel(lambda seed: [cnn_run(params, out_dir, kind, seed, progress) for kind in kinds],
                            params["vu2021"]["seeds"], params["vu2021"]["workers"])
    return [row for rows in per_seed for row in rows]


def gru_tracks(params: dict, out_dir, seed: int) -> dict:
    """{split: [Track]} of the student (with sharing) CNN's cached features, extracted if needed."""
    source = cnn_dir(out_dir, "student_sharing", seed)
    cnn_run(params, out_dir, "student_sharing", seed)
    videos = {s: read_split(params["data"]["root"], s, tasks=("VA", "EXPR")) for s in SPLITS}
    caches = vt.extract_features(params, source, Path(out_dir) / "gru" / "features",
                                 [v for s in SPLITS for v in videos[s]])
    return {s: [vd.Track(v, caches) for v in videos[s]] for s in SPLITS}


def gru_run(params: dict, out_dir, kind: str, seed: int, progress: bool = False) -> dict:
    """result.json of one GRU run (kind teacher or student) plus the CNN it reads, scored alike."""
    out = Path(out_dir) / "gru" / f"{kind}-seed{seed}"

    def train():
        tracks = gru_tracks(params, out_dir, seed)
        teacher = None
        if kind == "student":
            gru_run(params, out_dir, "teacher", seed, progress)
            teacher = Path(out_dir) / "gru" / f"teacher-seed{seed}"
        vt.train_gru(params, kind, seed, tracks, out, teacher, progress)

    return finished_run(out, train, config_key(params, "vu2021", stage="gru", kind=kind, seed=seed))


def gru_grid(params: dict, out_dir, kinds) -> list[dict]:
    """Every (seed, kind) GRU run's result.json, in that order, the seeds `vu2021.workers` at a time as
    in cnn_grid (each seed extracts its own CNN's features into its own cache folder, then trains)."""
    per_seed = run_parallel(lambda seed: [gru_run(params, out_dir, kind, seed) for kind in kinds],
                            params["vu2021"]["seeds"], params["vu2021"]["workers"])
    return [row for rows in per_seed for row in rows]


def cnn_on_gru_frames(params: dict, out_dir, seed: int) -> dict:
    """The student (with sharing) CNN alone, scored on every annotated frame like the GRU."""
    # Written under gru/ (the Table 3 stage's output), never into students/: a later stage that
    # changed an earlier stage's output folder would make DVC re-run the earlier one every time.
    out = Path(out_dir) / "gru" / f"cnn_student_sharing-seed{seed}-all_frames"

    def score():
        tracks = gru_tracks(params, out_dir, seed)
        model = vt.load_model(vt.build_cnn(params["vu2021"]["cnn"]),
                              cnn_dir(out_dir, "student_sharing", seed) / "best.pt")
        length = params["vu2021"]["gru"]["seq_len"]
        atomic_write_json(out / RESULT, {s: vt.track_score(model, tracks[s], length, params["vu2021"], gru=False)
                                         for s in ("validation", "test")})
    return finished_run(out, score, config_key(params, "vu2021", stage="cnn_on_gru_frames", seed=seed))


def released_run(params: dict, out_dir, kind: str, seed: int) -> dict:
    """One CNN run under vu2021.method released (Table 2's finding released_vs_paper_student_sharing):
    <out_dir>/students/released/<kind>-seed<s>; a student's teacher is the released T in {1,2,3}
    teacher of the same seed, in the same folder (the released method trains its teacher too)."""
    changed = exercise_params(params, method="released")
    root = Path(out_dir) / "students" / "released"
    out = root / f"{kind}-seed{seed}"

    def train():
        teacher = None
        if vt.CNN_KINDS[kind][1] is not None:
            released_run(params, out_dir, "teacher123", seed)
            teacher = root / f"teacher123-seed{seed}"
        vt.train_cnn(changed, kind, seed, out, teacher)

    return finished_run(out, train, config_key(changed, "vu2021", stage="cnn", kind=kind, seed=seed))


def finding_seeds(params: dict) -> list:
    """The seeds of the released-vs-paper finding: the first three (the default pipeline's budget
    for it is 2 minutes: a released teacher and student per seed), or all when fewer."""
    return list(params["vu2021"]["seeds"])[:3]


# The tolerance of the finding: Table 2's own effect on the same sum, criterion + CCC_V + CCC_A, with
# sharing 1.417 vs no sharing 1.397 (the paper's headline effect of this table).
SAME_WITHIN = 0.02


def released_vs_paper(params: dict, out_dir, sharing_runs: list[dict]) -> tuple[list[dict], dict]:
    """Table 2's student with shared annotations trained again under vu2021.method released (its own
    released teacher), the seeds of `finding_seeds`, beside its method-paper runs `sharing_runs`:
    (result rows "Released vs paper: With sharing", a paper and a released column per Table 2 metric; the
    claim released_vs_paper_student_sharing on the score, paired by seed, direction "~")."""
    seeds = finding_seeds(params)
    paper = {r["seed"]: r for r in sharing_runs}
    paper = [paper[s] for s in seeds]
    released = run_parallel(lambda s: released_run(params, out_dir, "student_sharing", s), seeds,
                            params["vu2021"]["workers"])           # as cnn_grid: seeds at once
    label = "Released vs paper: With sharing"
    cells = []
    for column, m in METRICS.items():          # (the judged sum, up to 3, is in the claim, not a cell)
        cells += [(label, f"{column}, method paper", metric(paper, m)),
                  (label, f"{column}, method released", metric(released, m))]
    judged = claim(
        "released_vs_paper_student_sharing", "2",
        "The released code's training (vu2021.method: released) scores the student with shared annotations "
        f"about as the paper's does: criterion + CCC_V + CCC_A within {SAME_WITHIN} (Table 2's sharing effect)",
        metric(released, "score"), metric(paper, "score"), direction="~", tolerance=SAME_WITHIN)
    return result_rows("2", cells, "validation"), judged


def per_seed(rows: list[dict], kind: str, split: str, metric: str) -> np.ndarray:
    return np.array([r[split][metric] for r in rows if r["kind"] == kind])


CNN_PROVENANCE = ("trained in the pipeline from random initialisation (no published weights, and no pre-training: "
                  "the teachers and students start from scratch); vu2021.cnn.weights takes a published FER+ file "
                  "(resnet50_ferplus_dag.pth) for the ResNet-50 of stem caffe (the paper profile's)")


def cnn_provenance(params: dict) -> str:
    """Where the weights of Vu's CNN come from: the FER+ file of vu2021.cnn.weights (the backbone; the
    heads start random), or, when it is empty, random initialisation in every run."""
    path = params["vu2021"]["cnn"]["weights"]
    if path:
        return (f"backbone weights loaded from {path} (the published resnet50_ferplus_dag FER+ ResNet-50), "
                "heads from random initialisation, then trained in the pipeline")
    return CNN_PROVENANCE


def differences(params: dict) -> list[dict]:
    """Where every run of this paper differs from the paper and from the released code, and why (the
    report's table): the "cnn" rows of papers/vu2021/ledger.yaml, filled in from params."""
    return _differences(params, "cnn")


def gru_differences(params: dict) -> list[dict]:
    """The GRU stage's rows (Tables 3-4) of papers/vu2021/ledger.yaml."""
    return _differences(params, "gru")


def table4_differences(params: dict) -> list[dict]:
    """Table 4's own rows (the test set, the comparison rows) of papers/vu2021/ledger.yaml."""
    return _differences(params, "table4")


def _differences(params: dict, *groups: str) -> list[dict]:
    c = params["vu2021"]["cnn"]
    return ledger.differences("vu2021", *groups, params=params, cnn_provenance=cnn_provenance(params),
                              pixels=c["crop"] // c["downsample"], size=params["faces"]["size"],
                              n_seeds=len(params["vu2021"]["seeds"]))


# --------------------------------------------------------------------------- what the notebooks show

METRICS = {"EXPR": "expr_criterion", "Valence": "ccc_valence", "Arousal": "ccc_arousal"}   # Tables 1-3, 4-arXiv
ICCVW_METRICS = {"F1": "expr_f1", "Acc": "expr_accuracy", "Criterion": "expr_criterion",   # Table 4 (ICCVW)
                 "Valence": "ccc_valence", "Arousal": "ccc_arousal", "Mean": "ccc_mean"}


def by_kind(rows: list[dict], kinds) -> dict:
    """{kind: its runs, in seed order}."""
    return {k: [r for r in rows if r["kind"] == k] for k in kinds}


def metric(rows: list[dict], name: str, split: str = "validation") -> list[float]:
    """One metric of each run (per seed), e.g. metric(students, "ccc_arousal")."""
    return [r[split][name] for r in rows]


def table_cells(rows_by_name: dict, split: str = "validation", metrics: dict = METRICS) -> list[tuple]:
    """(row, column, per-seed values) for each table row and metric column: common.claims.result_rows' cells."""
    return [(name, column, metric(rs, m, split)) for name, rs in rows_by_name.items() for column, m in metrics.items()]


def show_runs(rows: list[dict], split: str = "validation") -> None:
    """One line per run: kind, seed, epochs (best), seconds, and its criterion and CCCs on `split`."""
    for r in rows:
        print(f"{r.get('kind', 'CNN'):<18} seed {r.get('seed', '-')}: {r.get('epochs_run', '-')} epochs "
              f"(best {r.get('best_epoch', '-')}), {r.get('seconds', 0):.0f} s; "
              + ", ".join(f"{k} {r[split][k]:.3f}" for k in METRICS.values()))


def show_results(results: list[dict]) -> None:
    """One line per result row: table, row, column, mean ± spread over seeds (n, split)."""
    for r in results:
        spread = f" ± {r['spread']:.3f}" if r["spread"] is not None else ""
        print(f"{r['table']:>8} | {r['row']:<32} | {r['column']:<9} | "
              f"{r['value']:.3f}{spread} (n={r['n']}, {r['split']})")


def leaderboard(final: list[dict]) -> list[dict]:
    """The cross-paper leaderboard row of the final model on test: p_va = mean CCC, p_expr = macro F1
    over the 7 classes (the ABAW2 expression track has no "Other")."""
    return [{"paper": "vu2021", "model": "CNN + GRU student (Eq. 10)", "split": "test",
             "p_va": float(np.mean(metric(final, "ccc_mean", "test"))),
             "p_expr": float(np.mean(metric(final, "expr_f1", "test"))), "p_au": None, "p_mtl": None}]


# --------------------------------------------------------------------------- exercises (table4.ipynb)

def exercise_params(params: dict, **changes) -> dict:
    """params with the vu2021 keys in `changes` replaced (a nested section as a dict, e.g.
    gru={"seq_len": 8}); a misspelt key or a value of another kind stops with the key's path."""
    return merge_checked(params, {"vu2021": changes}, "vu2021 exercise")


def exercise_student(params: dict, out_dir, name: str, seed: int, **changes) -> dict:
    """The student CNN with sharing (Eq. 10) retrained with `changes`, taught by the notebook's own
    T in {1,2,3} teacher of the same seed: <out_dir>/exercises/<name>/student_sharing-seed<s>."""
    cnn_run(params, out_dir, "teacher123", seed)
    out = Path(out_dir) / "exercises" / name / f"student_sharing-seed{seed}"
    changed = exercise_params(params, **changes)
    teacher = cnn_dir(out_dir, "teacher123", seed)
    return finished_run(out, lambda: vt.train_cnn(changed, "student_sharing", seed, out, teacher),
                        config_key(changed, "vu2021", stage="cnn", kind="student_sharing", seed=seed, exercise=name))


def exercise_gru(params: dict, out_dir, name: str, seed: int, **changes) -> dict:
    """A GRU teacher (Eq. 7) and then its student (Eq. 10) retrained with `changes`, on the cached
    features of the notebook's own student CNN; the student's result.json."""
    changed, root = exercise_params(params, **changes), Path(out_dir) / "exercises" / name

    def run(kind: str) -> dict:
        out, teacher = root / f"gru_{kind}-seed{seed}", root / f"gru_teacher-seed{seed}"

        def train():
            if kind == "student":
                run("teacher")
            vt.train_gru(changed, kind, seed, gru_tracks(params, out_dir, seed), out,
                         teacher if kind == "student" else None)
        return finished_run(out, train, config_key(changed, "vu2021", stage="gru", kind=kind, seed=seed, exercise=name))
    return run("student")
