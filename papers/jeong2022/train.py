"""Jeong et al. 2022 Sec. 4.3-4.4: teacher (Eq. 11, Algorithm 1) and student (Eq. 12, Algorithm 2) training.

Both run in common.train.fit with round-robin sub-steps: every step draws one batch from each
task set in the order T = [va, expr, au, mtl] and takes one Adam step per batch. Batch sizes
follow the official code: proportional to the task sets' sizes, the largest `batch_size` (256).
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
Early stop on the validation P_MTL (official code) after `early_stop` epochs without improvement.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from common.device import module_device
from common.files import atomic_write_json
from common.losses import ccc_loss, masked_bce_with_logits, masked_cross_entropy
from common.metrics import au_metrics, batch_averaged, expr_metrics, va_metrics
from common.train import TrainConfig, fit
from common.weights import load_weights_file
from papers.jeong2022.data import STREAMS, TASKS, Corpus, batch, inputs
from papers.jeong2022.losses import (TaskPatience, jeong_au_distillation, jeong_expr_distillation,
                                     jeong_student_loss, jeong_va_distillation)
from papers.jeong2022.model import JeongNet


def build_model(jp: dict, inputs_kind: str) -> JeongNet:
    return JeongNet(inputs_kind, lstm=jp["lstm"], trunk=tuple(jp["trunk"]), heads=tuple(jp["heads"]),
                    dropout=jp["dropout"])


def batch_sizes(corpus: Corpus, largest: int) -> dict:
    """Per task set: proportional to its training size, the largest set gets `largest` (official code)."""
    n = {s: len(corpus.sets[("train", s)]["rows"]) for s in STREAMS}
    top = max(n.values())
    return {s: max(2, int(round(largest * n[s] / top))) for s in STREAMS}


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


def supervision_loss(out: dict, b: dict, task: str) -> torch.Tensor:
    if task == "va":
        return ccc_loss(out["va"], b["va"])                                   # Eq. 2
    if task == "expr":
        return masked_cross_entropy(out["expr"], b["expr"])                   # Eq. 4
    if task == "au":
        return masked_bce_with_logits(out["au"], b["au"])                     # Eq. 6
    return sum(supervision_loss(out, b, t) for t in TASKS)                    # Eq. 7 (mtl)


def teacher_loss(model, b: dict, stream: str) -> torch.Tensor:
    return supervision_loss(model(b["img"], b["aud"]), b, stream)             # Eq. 11


def make_student_loss(teacher: JeongNet, gamma: dict, jp: dict):
    temperature, alpha, beta = jp["temperature"], jp["alpha"], jp["beta"]

    def loss(model, b: dict, stream: str) -> torch.Tensor:
        out = model(b["img"], b["aud"])
        if stream == "mtl":
            return supervision_loss(out, b, "mtl")                            # Algorithm 2: L_mtl^s
        # fit() moves the student and the batches; the frozen teacher follows them (issue 11)
        if module_device(teacher) != b["img"].device:
            teacher.to(b["img"].device)
        with torch.no_grad():
            soft = teacher(b["img"], b["aud"])
        dist = {"va": jeong_va_distillation(out["va"], soft["va"]),                          # Eq. 8
                "expr": jeong_expr_distillation(out["expr"], soft["expr"], temperature),     # Eq. 9
                "au": jeong_au_distillation(out["au"], soft["au"])}                          # Eq. 10
        sup = {stream: supervision_loss(out, b, stream)}
        return jeong_student_loss(sup, dist, stream, gamma, alpha, beta)                     # Eq. 12
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
    what the authors' code does (it shuffles each set and sizes the batches in proportion to the
    sets: common.metrics.jeong_code_metric, Table 4's notebook); it stays as the reading this
    project used before, which Table 4 shows labelled as such."""
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
                  corpus.offsets)


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


def train_run(params: dict, corpus: Corpus, role: str, inputs_kind: str, seed: int, out_dir: str | Path,
              teacher_dir: str | Path | None = None, progress: bool = False) -> dict:
    """Train one teacher or student; write result.json (metrics on validation and test) and return it."""
    jp = params["jeong2022"]
    out_dir = Path(out_dir)
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model(jp, inputs_kind)
    sizes = batch_sizes(corpus, jp["batch_size"])
    n_steps = jp["steps_per_epoch"] or int(np.ceil(max(
        len(corpus.sets[("train", s)]["rows"]) / sizes[s] for s in STREAMS)))
    gamma = {t: 1.0 for t in TASKS}
    hooks = []
    if role == "teacher":
        loss_fn = teacher_loss
    elif role == "student":
        if teacher_dir is None:
            raise ValueError("a student needs teacher_dir, the folder of its trained teacher")
        teacher = build_model(jp, inputs_kind)
        teacher.load_state_dict(load_weights_file(Path(teacher_dir) / "best.pt"))
        teacher.eval()
        loss_fn = make_student_loss(teacher, gamma, jp)

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

    def evaluate(m) -> dict:
        return evaluate_split(m, monitor_corpus, "validation")["abaw"]

    cfg = TrainConfig(epochs=jp["epochs"], batch_size=1, lr=jp["lr"], seed=seed, monitor="mtl",
                      mode="max", early_stop=jp["early_stop"], substeps=STREAMS)
    fit(model, RoundRobinSteps(corpus, sizes, n_steps), loss_fn, evaluate, cfg, out_dir,
        collate_fn=lambda items: items[0], on_epoch_end=hooks, progress=progress)
    result = {"role": role, "inputs": inputs_kind, "seed": seed, "batch_sizes": sizes, "steps_per_epoch": n_steps,
              "gamma_final": dict(gamma), "seconds": round(time.perf_counter() - started, 2)}
    for split in ("validation", "test"):
        scores = evaluate_split(model, corpus, split, ("abaw", "code"))
        result[split], result[f"{split}_code_metric"] = scores["abaw"], scores["code"]
    atomic_write_json(out_dir / "result.json", result)
    return result
