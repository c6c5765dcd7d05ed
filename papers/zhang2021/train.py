"""Zhang et al. 2021, Sec. 4.4: train one (fold, emotion, modality) model with common.train.fit.

Training (paper -> here):
* CCC loss per window along time; invalid (-5) and padded frames are masked out of it under
  method paper. Its divisors (`loss_unbiased`: n - 1 variances, n covariance) are those of the
  released CCCLoss, sucv/ABAW2@71d40fb experiment_regular.py:19-37 (the paper names none; ledger:
  loss_divisors). Under method released the padding of a short trial enters the loss (ledger:
  padding_in_loss).
* Adam (lr, weight decay), ReduceLROnPlateau on the validation CCC (mode max, patience, factor)
  down to a minimal LR, early stopping; the best epoch's weights are kept. The released trainer
  fixes the weight decay at 1e-3 (base/trainer.py:88), the paper says 1e-4 (ledger: weight_decay).
* Progressive release of backbone layer groups (`BackboneRelease`): only meaningful when the
  ResNet50 frame encoder is trained end to end (paper profile, `frame_encoder` given). When the
  counter reaches the patience at the minimal LR, the next group (layer4, then the last three
  blocks of layer3) is unfrozen, the best weights are reloaded and the counter reset; with no
  group left, training stops. In the default and smoke profiles the visual features are cached
  from a frozen encoder, the model has no backbone and the hook does nothing: training is then
  plain TCN training with plateau LR decay and early stopping. The released trainer instead
  rebuilds the optimiser and the scheduler at the initial LR at each release (ledger:
  release_schedule), which is not done here.
* Paper and released code both reload the best weights at the end of every epoch (Sec. 4.4;
  base/trainer.py:258-259 with main.py:110 `load_best_at_each_epoch` default 1; ledger:
  reload_best). Method paper follows the profile's `reload_best_each_epoch` (paper profile: on,
  default and smoke: off); method released always reloads.
* End-to-end training needs face-crop windows (B, T, 3, 40, 40); the models and the hook accept
  a `frame_encoder`, but the window loader for crops is not built: every profile currently
  trains on cached 512-d embeddings.

Methods: `method_of(z)` turns `zhang2021.method` into one `Method` that every step below reads;
the released twins (normalisation, padding, weight decay, reload, split CCC, fold merge) sit next
to the paper's in this folder, and papers/zhang2021/ledger.yaml lists each with its source line.

Learning rate. The paper's 1e-5 is the fine-tuning rate of a pretrained CNN. On frozen cached
features a from-scratch TCN at 1e-5 reaches validation CCC 0.18 after 10 epochs where 1e-3
converges in 3-4 epochs and 1e-4 in about 6 (fold 0, valence, a label-driven proxy for the
visual embedding + the corpus's real MFCCs); the default profile uses 1e-3, the paper profile 1e-5.

CPU budget: the default profile's visual TCN (32 x 4 instead of the paper's 128 x 4), its 6 epochs
and early stopping at 3 keep the stage's 28 runs within a laptop CPU's minutes;
`scripts/benchmark_zhang.py` times them.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from dataclasses import dataclass
from typing import Callable

from common.data.sequences import EMOTIONS, split_ccc
from common.ensemble import merge_predictions
from common.files import atomic_write_json
from common.losses import ccc_loss
from common.train import TrainConfig, fit
from papers.zhang2021.data import NORMALIZATION, Trial, WindowDataset, make_folds, predict
from papers.zhang2021.model import MODALITIES, build_model


class BackboneRelease:
    """on_epoch_end hook: Sec. 4.4 progressive release of the frame encoder's layer groups."""

    def __init__(self, model, patience: int, min_lr: float, n_groups: int = 2):
        encoder = getattr(model, "frame_encoder", None)
        self.patience, self.min_lr = patience, min_lr
        self.pending = [] if encoder is None else release_order(encoder)[:n_groups]
        self.active = encoder is not None
        if self.active:       # "initially fixed except the output layer"
            for p in encoder.parameters():
                p.requires_grad_(False)
            for p in encoder.layer_groups()[-1].parameters():
                p.requires_grad_(True)

    def __call__(self, model, optimizer, state, best_weights, cfg):
        if not self.active or state.bad_epochs < self.patience:
            return
        lr = optimizer.param_groups[0]["lr"]
        if lr > self.min_lr * (1 + 1e-6):
            return                          # the plateau scheduler lowers the LR first
        if not self.pending:
            state.stop = True               # "no remaining backbone layer group to release"
            return
        params = [p for p in self.pending.pop(0).parameters() if not p.requires_grad]
        for p in params:
            p.requires_grad_(True)
        optimizer.add_param_group({"params": params, "lr": lr})
        model.load_state_dict(best_weights)
        state.bad_epochs = 0


def release_order(encoder) -> list:
    """Sec. 4.4: "the whole layer4 and the last three blocks of layer3" (groups: stem, stages, head)."""
    groups = encoder.layer_groups()
    return [groups[-2], groups[-3][-3:]]


def min_lr_floor(min_lr: float):
    """on_epoch_end hook keeping every LR >= min_lr (fit's ReduceLROnPlateau already stops its
    decay there, for the param groups BackboneRelease adds too; this also holds an LR set lower)."""
    def hook(optimizer, **_):
        for group in optimizer.param_groups:
            group["lr"] = max(group["lr"], min_lr)
    return hook


def reload_best(model, best_weights, **_):
    """on_epoch_end hook: "at the end of each epoch, the current best model state is loaded"."""
    model.load_state_dict(best_weights)


# --------------------------------------------------------------------------- evaluation and merge twins

def released_ccc(x, y) -> float:
    """sucv/ABAW2@71d40fb base/logger.py:191-209: covariance with n, variances with n - 1, + 1e-100."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xm, ym = np.nanmean(x), np.nanmean(y)
    cov = np.nanmean((x - xm) * (y - ym))
    xv = np.nansum((x - xm) ** 2) / (len(x) - 1)
    yv = np.nansum((y - ym) ** 2) / (len(y) - 1)
    return float(2 * cov / (xv + yv + (xm - ym) ** 2 + 1e-100))


def released_split_ccc(items, predictions, emotion: str) -> float:
    """The split CCC of the released trainer: all trials' frames concatenated (base/logger.py:272-278)
    and one `released_ccc` over them (:364); the valid frames only, as the released data holds no
    -5 rows (ledger: split_ccc)."""
    col = EMOTIONS.index(emotion)
    truth = np.concatenate([t.label[t.mask, col] for t in items])
    pred = np.concatenate([predictions[t.video][t.mask] for t in items])
    return released_ccc(truth, pred)


def released_merge(predictions, clip: str = "late") -> np.ndarray:
    """The released fold merge of one trial (ledger: fold_merge): sucv/ABAW2@71d40fb
    script/generate_test_result.py:60-62 with base/logger.py:122-234. Agreement a_i = mean CCC
    (`released_ccc`) of model i with each other model; level mu = sum_i mean_i a_i / sum_k a_k, with
    negative agreements kept; each trace is moved to mu and the traces are averaged with equal
    weight. The late clip to [-1, 1] is unconditional (:86); "early" also clips every model's
    trace first (the commented line :44), i.e. both."""
    if clip not in ("early", "late"):
        raise ValueError(f"the released merge clips 'early' (before and after) or 'late', got {clip!r}")
    x = np.stack([np.asarray(p, np.float64).ravel() for p in predictions])      # (M, N)
    if x.shape[0] > 1 and x.shape[0] > x.shape[1]:
        # logger.py:124-125 would transpose such a matrix and merge the frames instead of the models
        raise ValueError(f"{x.shape[1]} frames from {x.shape[0]} models: "
                         "the released merge needs more frames than models")
    if clip == "early":
        x = np.clip(x, -1, 1)
    m = len(x)
    if m == 1:
        fused = x[0]
    else:
        pair = {(i, j): released_ccc(x[i], x[j]) for i in range(m) for j in range(i + 1, m)}
        agreement = np.array([np.mean([c for (i, j), c in pair.items() if k in (i, j)]) for k in range(m)])
        means = x.mean(1)
        mu = np.sum(means * agreement / np.sum(agreement))           # logger.py:149
        fused = (x - means[:, None] + mu).mean(0)                    # :140, then script :62
    return np.clip(fused, -1, 1).astype(np.float32)


# --------------------------------------------------------------------------- the method switch

@dataclass(frozen=True)
class Method:
    """What `zhang2021.method` changes outside the model (model.METHODS holds the TCN and fusion)."""
    name: str
    normalization: Callable      # (train, validation, test, names) -> {split: normaliser}
    pad_in_loss: bool            # a short trial's padding enters the CCC loss with label 0
    reload_best: bool | None     # None: the profile's reload_best_each_epoch
    weight_decay: float | None   # None: the profile's weight_decay
    batch_size: int | None       # None: the profile's batch_size
    drop_invalid: bool | None    # None: the profile's drop_invalid
    split_ccc: Callable          # (items, predictions, emotion) -> CCC of a split
    merge: Callable              # (fold traces of one trial, clip, params section) -> merged trace


def _paper_merge(predictions, clip, z):
    return merge_predictions(predictions, clip, z["ensemble_fusion"])


METHOD = {
    "paper": Method("paper", NORMALIZATION["paper"], pad_in_loss=False, reload_best=None, weight_decay=None,
                    batch_size=None, drop_invalid=None, split_ccc=split_ccc, merge=_paper_merge),
    # sucv/ABAW2@71d40fb: base/trainer.py:88 (weight decay), main.py:102 (batch 8), main.py:110 +
    # base/trainer.py:258 (reload), preprocessing.py:333 + 109 (-5 rows deleted)
    "released": Method("released", NORMALIZATION["released"], pad_in_loss=True, reload_best=True, weight_decay=1e-3,
                       batch_size=8, drop_invalid=True, split_ccc=released_split_ccc,
                       merge=lambda predictions, clip, z: released_merge(predictions, clip)),
}


def method_of(z: dict) -> Method:
    """The Method of a `zhang2021` params section."""
    if z["method"] not in METHOD:
        raise ValueError(f"zhang2021.method must be one of {sorted(METHOD)}, got {z['method']!r} (params.yaml)")
    return METHOD[z["method"]]


def drop_invalid(z: dict) -> bool:
    """Whether -5 rows are deleted before windowing under this section's method."""
    m = method_of(z)
    return z["drop_invalid"] if m.drop_invalid is None else m.drop_invalid


def train_config(z: dict, seed: int) -> TrainConfig:
    wd, bs = method_of(z).weight_decay, method_of(z).batch_size
    return TrainConfig(epochs=z["epochs"], batch_size=z["batch_size"] if bs is None else bs, lr=z["lr"],
                       weight_decay=z["weight_decay"] if wd is None else wd, seed=seed, monitor="ccc", mode="max",
                       early_stop=z["early_stop"], plateau_patience=z["plateau_patience"],
                       plateau_factor=z["plateau_factor"], min_lr=z["min_lr"])


def window_ccc_loss(unbiased):
    """Sec. 4.4: the CCC loss of a batch of windows, per window along time (the training step)."""
    def loss_fn(net, batch):
        return ccc_loss(net(batch["x"]), batch["y"], mask=batch["mask"], per_sequence=True, unbiased=unbiased)
    return loss_fn


def train_fold(params: dict, features: list[Trial], fold: int, emotion: str, modality: str,
               out_dir, window: int | None = None, hop: int | None = None, seed: int | None = None,
               batch_size: int | None = None, frame_encoder=None, progress: bool = False) -> dict:
    """Train one model of Table 1 and predict its fold's validation trials and the test trials.

    params: the merged params (its `zhang2021` section is used); features: every Trial of the
    corpus (official splits; the fold is built here); emotion: valence | arousal; modality:
    unimodal | multimodal. window / hop / seed / batch_size override params (short windows).
    Returns {"predictions": {"validation": {video: (N,)}, "test": {...}}, "metrics": {...},
    "history": [per-epoch rows]}; out_dir also gets fit's files, predictions.npz and result.json.
    """
    z = params["zhang2021"]
    method = method_of(z)
    if drop_invalid(z) and not all(t.mask.all() for t in features):
        raise ValueError(f"zhang2021.method {method.name!r} deletes the -5 rows before windowing, but these "
                         f"trials hold some: load them with drop_invalid=train.drop_invalid(params['zhang2021'])")
    window, hop = window or z["window"], hop or z["hop"]
    seed = z["seeds"][0] if seed is None else seed
    mods = MODALITIES[modality]
    split = make_folds(features, z["folds"])[fold]
    by_video = {t.video: t for t in features}
    train = [by_video[v] for v in split["train"]]
    val = [by_video[v] for v in split["validation"]]
    test = [t for t in features if t.split == "test"]
    norm = method.normalization(train, val, test, mods)     # {split: normaliser} (data.NORMALIZATION)

    torch.manual_seed(seed)
    model = build_model(z, modality, frame_encoder)
    data = WindowDataset(train, mods, window, hop, norm["train"], emotion, pad_in_loss=method.pad_in_loss)

    loss_fn = window_ccc_loss(z["loss_unbiased"])

    def evaluate(net):
        return {"ccc": method.split_ccc(val, predict(net, val, mods, window, hop, norm["validation"]), emotion)}

    hooks = [min_lr_floor(z["min_lr"]),
             BackboneRelease(model, z["plateau_patience"], z["min_lr"], z["release_groups"])]
    if z["reload_best_each_epoch"] if method.reload_best is None else method.reload_best:
        hooks.append(reload_best)
    started = time.perf_counter()
    cfg = train_config(z, seed)
    cfg.batch_size = batch_size or cfg.batch_size
    result = fit(model, data, loss_fn, evaluate, cfg, out_dir,
                 on_epoch_end=hooks, progress=progress, key={"zhang2021": z, "fold": fold, "emotion": emotion,
                                                             "modality": modality, "window": window, "hop": hop})
    seconds = time.perf_counter() - started

    predictions = {"validation": predict(model, val, mods, window, hop, norm["validation"]),
                   "test": predict(model, test, mods, window, hop, norm["test"]) if test else {}}
    metrics = {"fold": fold, "emotion": emotion, "modality": modality, "window": window, "hop": hop,
               "batch_size": cfg.batch_size, "seed": seed, "method": method.name,
               "validation_ccc": result["best"]["ccc"],
               "best_epoch": result["best"]["epoch"], "epochs_run": len(result["history"]),
               "train_windows": len(data), "seconds": round(seconds, 2)}
    if test:
        metrics["test_ccc"] = method.split_ccc(test, predictions["test"], emotion)
    out_dir = Path(out_dir)
    np.savez_compressed(out_dir / "predictions.npz",
                        **{f"{s}/{v}": p for s, preds in predictions.items() for v, p in preds.items()})
    atomic_write_json(out_dir / "result.json", metrics)
    return {"predictions": predictions, "metrics": metrics, "history": result["history"]}


def merge_folds(z: dict, fold_predictions: list[dict], clip: str = "late") -> dict:
    """Sec. 4.5: the fold models' predictions of one split merged per video by CCC centering, with
    early or late clipping. Each trial is centred on its own, as sucv/ABAW2@71d40fb
    script/generate_test_result.py:27-62 does per test trial (ledger: fold_merge); the merge itself
    is the method's (`Method.merge`)."""
    merge = method_of(z).merge
    videos = fold_predictions[0].keys()
    return {v: merge([p[v] for p in fold_predictions], clip, z) for v in videos}
