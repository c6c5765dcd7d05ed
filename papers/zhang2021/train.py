"""Zhang et al. 2021, Sec. 4.4: train one (fold, emotion, modality) model with common.train.fit.

Training (paper -> here):
* CCC loss per window along time (official code: unbiased variance in the denominator, the mean
  of products in the numerator = `ccc_loss(..., per_sequence=True, unbiased="variance_only")`);
  invalid (-5) and padded frames are masked out of it.
* Adam (lr, weight decay), ReduceLROnPlateau on the validation CCC (mode max, patience, factor)
  down to a minimal LR, early stopping; the best epoch's weights are kept.
* Progressive release of backbone layer groups (`BackboneRelease`): only meaningful when the
  ResNet50 frame encoder is trained end to end (paper profile, `frame_encoder` given). When the
  counter reaches the patience at the minimal LR, the next group (layer4, then the last three
  blocks of layer3) is unfrozen, the best weights are reloaded and the counter reset; with no
  group left, training stops. In the default and smoke profiles the visual features are cached
  from a frozen encoder, the model has no backbone and the hook does nothing: training is then
  plain TCN training with plateau LR decay and early stopping.
* The paper also reloads the best weights at the end of every epoch (`reload_best_each_epoch`,
  paper profile); the official code does it only at a release.
* End-to-end training needs face-crop windows (B, T, 3, 40, 40); the models and the hook accept
  a `frame_encoder`, but the window loader for crops is not built: every profile currently
  trains on cached 512-d embeddings.

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

from common.data.sequences import Normalizer, split_ccc
from common.ensemble import merge_predictions
from common.files import atomic_write_json
from common.losses import ccc_loss
from common.train import TrainConfig, fit
from papers.zhang2021.data import Trial, WindowDataset, make_folds, predict
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


def train_config(z: dict, seed: int) -> TrainConfig:
    return TrainConfig(epochs=z["epochs"], batch_size=z["batch_size"], lr=z["lr"],
                       weight_decay=z["weight_decay"], seed=seed, monitor="ccc", mode="max",
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
    window, hop = window or z["window"], hop or z["hop"]
    seed = z["seeds"][0] if seed is None else seed
    mods = MODALITIES[modality]
    split = make_folds(features, z["folds"])[fold]
    by_video = {t.video: t for t in features}
    train = [by_video[v] for v in split["train"]]
    val = [by_video[v] for v in split["validation"]]
    test = [t for t in features if t.split == "test"]
    norm = Normalizer(train, mods)                 # statistics of this fold's training partition

    torch.manual_seed(seed)
    model = build_model(z, modality, frame_encoder)
    data = WindowDataset(train, mods, window, hop, norm, emotion)

    loss_fn = window_ccc_loss(z["loss_unbiased"])

    def evaluate(net):
        return {"ccc": split_ccc(val, predict(net, val, mods, window, hop, norm), emotion)}

    hooks = [min_lr_floor(z["min_lr"]),
             BackboneRelease(model, z["plateau_patience"], z["min_lr"], z["release_groups"])]
    if z["reload_best_each_epoch"]:
        hooks.append(reload_best)
    started = time.perf_counter()
    cfg = train_config(z, seed)
    cfg.batch_size = batch_size or cfg.batch_size
    result = fit(model, data, loss_fn, evaluate, cfg, out_dir,
                 on_epoch_end=hooks, progress=progress)
    seconds = time.perf_counter() - started

    predictions = {"validation": predict(model, val, mods, window, hop, norm),
                   "test": predict(model, test, mods, window, hop, norm) if test else {}}
    metrics = {"fold": fold, "emotion": emotion, "modality": modality, "window": window, "hop": hop,
               "batch_size": cfg.batch_size, "seed": seed, "validation_ccc": result["best"]["ccc"],
               "best_epoch": result["best"]["epoch"], "epochs_run": len(result["history"]),
               "train_windows": len(data), "seconds": round(seconds, 2)}
    if test:
        metrics["test_ccc"] = split_ccc(test, predictions["test"], emotion)
    out_dir = Path(out_dir)
    np.savez_compressed(out_dir / "predictions.npz",
                        **{f"{s}/{v}": p for s, preds in predictions.items() for v, p in preds.items()})
    atomic_write_json(out_dir / "result.json", metrics)
    return {"predictions": predictions, "metrics": metrics, "history": result["history"]}


def merge_folds(fold_predictions: list[dict], clip: str = "late", fusion: str = "weighted") -> dict:
    """Sec. 4.5: the fold models' predictions of one split merged per video by CCC centering
    (each trial centred on its own, as the official code does), with early or late clipping."""
    videos = fold_predictions[0].keys()
    return {v: merge_predictions([p[v] for p in fold_predictions], clip, fusion) for v in videos}
