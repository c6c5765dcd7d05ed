"""Jeong et al. 2022 Sec. 4.3-4.4: teacher (Eq. 11, Algorithm 1) and student (Eq. 12, Algorithm 2) training.

Both run in common.train.fit with round-robin sub-steps: every step draws one batch from each
task set in the order T = [va, expr, au, mtl] (method: released: [mtl, va, expr, au]) and takes one
Adam step per batch. Batch sizes as Sec. 3 and the released loader (dataloader.py:62-71): max_iter =
ceil(largest set / `batch_size`), each set floor(its size / max_iter) (ledger: batch_sizes).
An epoch is `steps_per_epoch` steps of randomly drawn frames (0 = as many steps as one pass over
the largest set takes); the paper's epoch is a full pass.

Losses (the shared ones in common/losses.py, Jeong's own in papers/jeong2022/losses.py):
  supervision  VA 1 - mean CCC (Eq. 2), EXPR CE (Eq. 4), AU BCE (Eq. 6), MTL their sum (Eq. 7)
  teacher      Loss_i = L_i^s on the batches of task set i (Eq. 11)
  student      Loss_i = gamma_i (alpha L_i^s + L_i^d) + sum_{j != i} beta gamma_j L_j^d (Eq. 12), with the
               distillation losses against the frozen teacher's outputs on the same batch: 1 - CCC
               (Eq. 8), CE against softmax(teacher / t) at t = 2.5 (Eq. 9), BCE against sigmoid(teacher)
               (Eq. 10); the MTL set trains on L_mtl^s (Algorithm 2)
  gamma_i      exp(0.5 n_i), n_i = epochs without a new best validation metric of task i (Deng et al.),
               counted on the STL validation sets; recomputed from fit's history, so resuming keeps it
Early stop on the validation P_MTL after `early_stop` epochs without improvement (trainer.py:108-117).

`jeong2022.method` picks, once, the losses (losses.TEACHER_LOSS / STUDENT_LOSS), the architecture
(model.ARCHITECTURE), the row filter and stream order (data.py) and, under `released`, the task
discriminator's weight (epoch + 1) / epochs (trainer.py:125, ledger: discriminator_weight) and the
per-epoch validation metric that selects the model and counts gamma's epochs: the authors' batch-wise
procedure (evaluation.jeong_code_metric, trainer.py:165-204, ledger: selection_metric).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from common.device import module_device
from common.files import atomic_write_json
from common.metrics import au_metrics, batch_averaged, expr_metrics, va_metrics
from common.train import TrainConfig, fit
from common.weights import load_weights_file
from papers.jeong2022.data import STREAM_ORDER, STREAMS, TASKS, Corpus, batch, inputs
from papers.jeong2022.evaluation import JEONG_SET_TASKS, jeong_code_metric
from papers.jeong2022.losses import DOMAIN_WEIGHT, STUDENT_LOSS, TEACHER_LOSS, TaskPatience, paper_supervision
from papers.jeong2022.model import ARCHITECTURE, JeongNet, keras_init

supervision_loss = paper_supervision          # Eqs. 2, 4, 6, 7 (losses.py)


def method_of(jp: dict) -> str:
    method = jp.get("method", "paper")
    if method not in ARCHITECTURE:
        raise ValueError(f"params jeong2022.method must be one of {sorted(ARCHITECTURE)}, got {method!r}")
    return method


def build_model(jp: dict, inputs_kind: str) -> JeongNet:
    net = JeongNet(inputs_kind, lstm=jp["lstm"], trunk=tuple(jp["trunk"]), heads=tuple(jp["heads"]),
                   dropout=jp["dropout"], **ARCHITECTURE[method_of(jp)])
    return keras_init(net)                     # the paper names no initialiser (ledger: initialisation)


def batch_sizes(corpus: Corpus, largest: int) -> dict:
    """Per task set: max_iter = ceil(largest set / `largest`), batch = floor(set / max_iter) (Sec. 3,
    dataloader.py:62-71); at least 2 frames, which batch norm needs."""
    n = {s: len(corpus.sets[("train", s)]["rows"]) for s in STREAMS}
    max_iter = -(-max(n.values()) // largest)
    return {s: max(2, n[s] // max_iter) for s in STREAMS}


class RoundRobinSteps(Dataset):
    """Item = one step of Algorithms 1-2: {task set: a random batch of its training frames}.

    Frames are drawn with torch's global generator, which fit() seeds per run and checkpoints.
    """

    def __init__(self, corpus: Corpus, sizes: dict, n_steps: int):
        self.corpus, self.sizes, self.n_steps = corpus, sizes, n_steps

    def __len__(self) -> int:
        return self.n_steps

    def __getitem__(self, i):
        out = {}
        for s in STREAMS:
            labelled = self.corpus.sets[("train", s)]
            pick = torch.randint(0, len(labelled["rows"]), (self.sizes[s],)).numpy()
            out[s] = batch(self.corpus, labelled, pick)
        return out


def teacher_loss(model, b: dict, stream: str) -> torch.Tensor:
    return supervision_loss(model(b["img"], b["aud"]), b, stream)             # Eq. 11 (method: paper)


def make_teacher_loss(jp: dict, schedule: dict):
    """loss(model, batch, stream) of the teacher under jeong2022.method (losses.TEACHER_LOSS)."""
    loss_of = TEACHER_LOSS[method_of(jp)]

    def loss(model, b: dict, stream: str) -> torch.Tensor:
        return loss_of(model(b["img"], b["aud"]), b, stream, schedule["domain_weight"])
    return loss


def make_student_loss(teacher: JeongNet, gamma: dict, jp: dict, schedule: dict | None = None):
    """loss(model, batch, stream) of the student against the frozen `teacher` (losses.STUDENT_LOSS)."""
    loss_of = STUDENT_LOSS[method_of(jp)]
    schedule = schedule if schedule is not None else {"domain_weight": 0.0}

    def loss(model, b: dict, stream: str) -> torch.Tensor:
        out = model(b["img"], b["aud"])
        soft = None
        if stream != "mtl":
            # fit() moves the student and the batches; the frozen teacher follows them
            if module_device(teacher) != b["img"].device:
                teacher.to(b["img"].device)
            with torch.no_grad():
                soft = teacher(b["img"], b["aud"])
        return loss_of(out, soft, b, stream, gamma, jp, schedule["domain_weight"])
    return loss


@torch.no_grad()
def predict(model: JeongNet, corpus: Corpus, rows: np.ndarray, chunk: int = 4096) -> dict:
    was = model.training
    model.eval()
    device = module_device(model)              # fit() puts the model on the GPU when there is one
    parts = {t: [] for t in TASKS}
    for start in range(0, len(rows), chunk):
        img, aud = inputs(corpus, rows[start:start + chunk])
        out = model(img.to(device), aud.to(device))
        parts["va"].append(out["va"].float().cpu())
        parts["expr"].append(out["expr"].float().cpu())
        parts["au"].append(torch.sigmoid(out["au"]).float().cpu())
    model.train(was)
    return {t: torch.cat(v).numpy() if v else np.zeros((0,)) for t, v in parts.items()}


def task_scores(labelled: dict, pred: dict, tasks=TASKS, style: str = "abaw") -> dict:
    """P_VA / P_EXPR / P_AU of predictions on one evaluation set.

    style "abaw": over all frames of the set (Sec. 5.1, the ABAW definition);
    style "code": the mean over consecutive batches of 256 with F1 zero_division=1. This is NOT
    what the released code does (ledger: evaluation_metric): it shuffles each set and sizes the
    batches in proportion to the sets (evaluation.jeong_code_metric, Table 4's notebook); it stays
    as the reading this project used before, which Table 4 shows labelled as such."""
    out = {}
    for t in tasks:
        if style == "abaw":
            fn = {"va": lambda a, b: va_metrics(a, b)["p_va"], "expr": lambda a, b: expr_metrics(a, b)["p_expr"],
                  "au": lambda a, b: au_metrics(a, b)["p_au"]}[t]
            out[f"p_{t}"] = float(fn(labelled[t], pred[t]))
        else:
            metric = {"va": (va_metrics, {}), "expr": (expr_metrics, {"zero_division": 1}),
                      "au": (au_metrics, {"zero_division": 1})}[t]
            out[f"p_{t}"] = float(batch_averaged(metric[0], labelled[t], pred[t], batch_size=256,
                                                 **metric[1])[f"p_{t}"])
    return out


def authors_scores(model: JeongNet, corpus: Corpus, split: str, seed: int) -> dict:
    """The released code's validation metric on the split's four sets: shuffled, cut into batches in
    proportion to the sets, scored batch by batch and averaged (trainer.valid, utils.get_metric), as
    evaluation.jeong_code_metric computes it. Keys stl_va, stl_expr, stl_au, stl_total, mtl_*, mtl."""
    truth, guess = evaluation_sets(corpus, predict_split(model, corpus, split), split)
    out = jeong_code_metric(truth, guess, seed=seed)
    return {k: v for k, v in out.items() if isinstance(v, float)}


def evaluation_sets(corpus: Corpus, prediction: tuple, split: str = "validation") -> tuple[dict, dict]:
    """{set: {task: labels}} and {set: {task: predictions}} of one run's predictions (frames, {task: array}),
    the sets of evaluation.JEONG_SET_TASKS, as jeong_code_metric takes them."""
    frames, pred = prediction
    truth, guess = {}, {}
    for name, tasks in JEONG_SET_TASKS.items():
        labelled = corpus.sets[(split, name)]
        at = np.searchsorted(frames, labelled["rows"])
        truth[name] = {t: labelled[t] for t in tasks}
        guess[name] = {t: pred[t][at] for t in tasks}
    return truth, guess


def predict_split(model: JeongNet, corpus: Corpus, split: str) -> tuple[np.ndarray, dict]:
    """Predictions for every row of the split's evaluation sets, each frame once (the sets overlap)."""
    rows = np.unique(np.concatenate([v["rows"] for (sp, _), v in corpus.sets.items() if sp == split]))
    return rows, predict(model, corpus, rows)


def every_kth(corpus: Corpus, split: str, k: int) -> Corpus:
    """The corpus with the split's evaluation sets thinned to every k-th frame (per-epoch validation)."""
    if k <= 1:
        return corpus
    sets = dict(corpus.sets)
    for key, v in corpus.sets.items():
        if key[0] == split:
            sets[key] = {name: a[::k] for name, a in v.items()}
    return Corpus(corpus.img, corpus.aud, corpus.va, corpus.expr, corpus.au, corpus.track_start, sets,
                  corpus.offsets, corpus.face)


def evaluate_split(model: JeongNet, corpus: Corpus, split: str, styles=("abaw",), predicted=None) -> dict:
    """STL (each task on its own annotations; total = their sum) and MTL (all three on the MTL set).

    Returns {style: metrics} for each style of `task_scores`.
    """
    rows, pred = predicted or predict_split(model, corpus, split)
    result = {}
    for style in styles:
        out = {}
        for t in TASKS:
            labelled = corpus.sets[(split, t)]
            at = np.searchsorted(rows, labelled["rows"])
            out[f"stl_{t}"] = task_scores(labelled, {t: pred[t][at]}, (t,), style)[f"p_{t}"]
        out["stl_total"] = sum(out[f"stl_{t}"] for t in TASKS)
        if (split, "mtl") in corpus.sets:
            labelled = corpus.sets[(split, "mtl")]
            at = np.searchsorted(rows, labelled["rows"])
            scores = task_scores(labelled, {t: pred[t][at] for t in TASKS}, TASKS, style)
            out.update({f"mtl_{t}": scores[f"p_{t}"] for t in TASKS})
            out["mtl"] = sum(scores[f"p_{t}"] for t in TASKS)             # P_MTL = P_VA + P_EXPR + P_AU
        result[style] = out
    return result


def has_test_labels(corpus: Corpus) -> bool:
    """Whether the corpus holds labelled test frames (common.data.affwild2.test_labels_released: the
    real release has none, so read_split gives an empty test split)."""
    return any(len(corpus.sets.get(("test", t), {"rows": ()})["rows"]) for t in TASKS)


def train_run(params: dict, corpus: Corpus, role: str, inputs_kind: str, seed: int, out_dir: str | Path,
              teacher_dir: str | Path | None = None, progress: bool = False) -> dict:
    """Train one teacher or student; write result.json (metrics on validation and test) and return it."""
    jp = params["jeong2022"]
    method = method_of(jp)
    out_dir = Path(out_dir)
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model(jp, inputs_kind)
    sizes = batch_sizes(corpus, jp["batch_size"])
    n_steps = jp["steps_per_epoch"] or int(np.ceil(max(
        len(corpus.sets[("train", s)]["rows"]) / sizes[s] for s in STREAMS)))
    gamma = {t: 1.0 for t in TASKS}
    # released: the discriminator's weight (epoch + 1) / epochs, `linear_domain_weight: True`
    # overriding `domain_weight: 0` (config.py:37-39, trainer.py:125) (ledger: discriminator_weight)
    released = method == "released"
    weight_in = DOMAIN_WEIGHT[method]
    schedule = {"domain_weight": weight_in(0, jp["epochs"])}

    def next_domain_weight(state, **_):
        schedule["domain_weight"] = weight_in(state.epoch, jp["epochs"])     # state.epoch: epochs done
    hooks = [next_domain_weight]
    if role == "teacher":
        loss_fn = make_teacher_loss(jp, schedule)
    elif role == "student":
        if teacher_dir is None:
            raise ValueError("a student needs teacher_dir, the folder of its trained teacher")
        teacher = build_model(jp, inputs_kind)
        teacher.load_state_dict(load_weights_file(Path(teacher_dir) / "best.pt"))
        teacher.eval()
        loss_fn = make_student_loss(teacher, gamma, jp, schedule)

        def update_gamma(state, **_):
            # gamma_i = exp(0.5 n_i) from the epochs without improvement so far (Sec. 4.3)
            patience = TaskPatience("max")
            for row in state.history:
                for t in TASKS:
                    patience.update(t, row[f"stl_{t}"])
            gamma.update({t: patience.weight(t) for t in TASKS})
        hooks.append(update_gamma)
    else:
        raise ValueError(f"role must be 'teacher' or 'student', got {role!r}")

    # Model selection, early stop and gamma read the validation sets every `eval_stride`-th frame
    # (neighbouring frames are nearly the same sample); the reported metrics use every frame.
    monitor_corpus = every_kth(corpus, "validation", jp["eval_stride"])
    evaluations = []

    def evaluate(m) -> dict:
        if released:          # trainer.valid: the batch-wise metric, reshuffled at every validation
            evaluations.append(None)
            return authors_scores(m, monitor_corpus, "validation", seed=1000 * seed + len(evaluations))
        return evaluate_split(m, monitor_corpus, "validation")["abaw"]

    cfg = TrainConfig(epochs=jp["epochs"], batch_size=1, lr=jp["lr"], seed=seed, monitor="mtl",
                      mode="max", early_stop=jp["early_stop"], substeps=STREAM_ORDER[method])
    fit(model, RoundRobinSteps(corpus, sizes, n_steps), loss_fn, evaluate, cfg, out_dir,
        collate_fn=lambda items: items[0], on_epoch_end=hooks, progress=progress)
    result = {"role": role, "inputs": inputs_kind, "seed": seed, "method": method, "batch_sizes": sizes,
              "steps_per_epoch": n_steps,
              "gamma_final": dict(gamma), "seconds": round(time.perf_counter() - started, 2)}
    for split in ("validation", "test"):
        if split == "test" and not has_test_labels(corpus):          # the real release keeps them back
            scores = {style: dict.fromkeys(result["validation"], float("nan")) for style in ("abaw", "code")}
        else:
            scores = evaluate_split(model, corpus, split, ("abaw", "code"))
        result[split], result[f"{split}_code_metric"] = scores["abaw"], scores["code"]
    atomic_write_json(out_dir / "result.json", result)
    return result
