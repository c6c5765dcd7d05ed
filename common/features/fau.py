"""The `fau` feature: penultimate features of a facial-action-unit detector (Liu, Sun et al. 2023 Sec. 3.2.1).

    python -m common.features.fau pretrain [--profile smoke]   # -> <model_dir>/fau.pt
    python -m common.features.fau extract  [--profile smoke]   # -> the feature cache

pretrain: Liu et al. use an IResNet-100 trained for AU detection on a commercial AU data set.
  Neither is available here, so
  * if `fau.weights` names a local state-dict file of this MobileNet it is loaded (weights_only)
    and checked against the configured architecture (common/backbones/mobilenet.py);
  * otherwise a narrow MobileNetV2 is trained in the pipeline for the 12 ABAW AUs (binary cross
    entropy, common.losses.masked_bce_with_logits, unannotated AUs masked) on `pretrain.frames`
    AU-annotated face frames of the Train_Set (frames without a face image left out), random crop
    + flip; `pretrain.val_frames` AU frames of the Validation_Set pick the best epoch by mean ROC
    AUC over the AUs (chance = 0.5).
extract: every face frame of every track through the frozen network (centre crop), the
  `embed_dim` pooled feature before the AU head; frames without a face take the nearest face's
  row (Liu Sec. 3.1). Faces come from the face-pixel cache (common/features/faces.py).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from common.backbones.mobilenet import MobileNetWeightsError, build_mobilenet, load_mobilenet_weights
from common.data.affwild2 import AU_NAMES, SPLITS, AffWild2Error, read_split
from common.features.cache import FeatureCache, FeatureCacheError
from common.features import pretraining
from common.features.faces import face_cache
from common.features.pretraining import pretrain_or_load
from common.features.visual import centre_crop, encode_faces, frozen_for_inference, normalise, track_features
from common.files import atomic_write_json, file_sha256
from common.losses import masked_bce_with_logits

NAME = "fau"
VERSION = "1"


def model_path(params: dict) -> Path:
    return pretraining.model_path(params, NAME)


def random_crop_flip(images: torch.Tensor, crop: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random crop position and a horizontal flip for half of the batch (the training input)."""
    size = images.shape[-1]
    top, left = (int(v) for v in torch.randint(0, size - crop + 1, (2,), generator=generator))
    out = images[..., top:top + crop, left:left + crop]
    flip = torch.rand(len(out), generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def au_frames(params: dict, split: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Up to n face frames of `split` with at least one annotated AU: uint8 faces, labels, label mask."""
    faces = face_cache(params)
    rows = []
    for v in read_split(params["data"]["root"], split):
        frames = np.flatnonzero(v.au_mask.any(1) & v.has_image)
        rows += [(v, f) for f in frames]
    if not rows:
        raise ValueError(f"{params['data']['root']}: no AU-annotated face frames in {split}; the fau "
                         "pre-training needs some (or set fau.weights)")
    pick = np.sort(np.random.default_rng(seed).permutation(len(rows))[:n])
    by_video: dict = {}
    for i in pick:
        v, f = rows[i]
        by_video.setdefault(v.video, (v, []))[1].append(f)
    x, y, m = [], [], []
    for v, frames in by_video.values():
        frames = np.asarray(frames)
        x.append(np.asarray(faces.get(v.video, v.n_frames)[frames]))
        y.append(v.au[frames])
        m.append(v.au_mask[frames])
    return (torch.from_numpy(np.concatenate(x)), torch.from_numpy(np.concatenate(y)).float(),
            torch.from_numpy(np.concatenate(m)))


def mean_auc(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> float:
    """Mean ROC AUC over the AUs that have both classes among their annotated frames (chance 0.5)."""
    from sklearn.metrics import roc_auc_score
    aucs = [roc_auc_score(labels[mask[:, k], k], logits[mask[:, k], k]) for k in range(labels.shape[1])
            if len(np.unique(labels[mask[:, k], k])) == 2]
    return float(np.mean(aucs)) if aucs else 0.5


class AUDetector(nn.Module):
    """MobileNet embedding -> linear head over the 12 AUs (logits)."""

    def __init__(self, backbone, n_aus: int = len(AU_NAMES)):
        super().__init__()
        self.backbone, self.head = backbone, nn.Linear(backbone.embed_dim, n_aus)

    def forward(self, images):
        return self.head(self.backbone(images))


def _train_au_detector(params: dict, backbone, out_dir: Path, progress: bool) -> dict:
    from common.train import TrainConfig, fit
    cfg, p = params[NAME], params[NAME]["pretrain"]
    crop = int(cfg["crop"])
    x, y, m = au_frames(params, "train", int(p["frames"]), int(p["seed"]))
    vx, vy, vm = au_frames(params, "validation", int(p["val_frames"]), int(p["seed"]))

    def loss(net, batch):
        images, labels, mask = batch
        return masked_bce_with_logits(net(normalise(random_crop_flip(images, crop))), labels, mask)

    @torch.no_grad()
    def evaluate(net):
        logits = torch.cat([net(normalise(centre_crop(vx[i:i + 256], crop))) for i in range(0, len(vx), 256)])
        return {"val_loss": float(masked_bce_with_logits(logits, vy, vm)),
                "val_auc": mean_auc(logits.numpy(), vy.numpy(), vm.numpy())}
    result = fit(AUDetector(backbone), TensorDataset(x, y, m), loss, evaluate,
                 TrainConfig(epochs=int(p["epochs"]), batch_size=int(p["batch_size"]), lr=float(p["lr"]),
                             weight_decay=float(p["weight_decay"]), seed=int(p["seed"]), monitor="val_auc", mode="max"),
                 out_dir / "train", progress=progress)
    return {"source": "pre-trained in pipeline for 12-AU detection (Train_Set AU frames)",
            "frames": len(x), "val_frames": len(vx), "validation": result["best"]}


def pretrain_fau(params: dict, progress: bool = True, threads: int = 1) -> Path:
    """Write <model_dir>/fau.pt (+ .json): loaded from fau.weights, or pre-trained here."""
    return pretrain_or_load(params, NAME, lambda: build_mobilenet(params[NAME]),
                            lambda net, path: load_mobilenet_weights(net, path, NAME),
                            lambda net, out_dir: _train_au_detector(params, net, out_dir, progress), threads)


# --------------------------------------------------------------------------- extract

def cache_for(params: dict) -> FeatureCache:
    """The `fau` cache of the current weights (new weights or face size, new folder)."""
    cfg, path = params[NAME], model_path(params)
    if not path.is_file():
        raise FeatureCacheError(f"{path}: not found; run `python -m common.features.fau pretrain` first")
    key = {"weights": file_sha256(path), "crop": int(cfg["crop"]), "faces": int(params["faces"]["size"])}
    return FeatureCache(params["features"]["root"], NAME, VERSION, key, int(cfg["embed_dim"]))


def extract_fau(params: dict, progress: bool = True, threads: int = 1) -> dict:
    """Fill the cache for every face track of every split; return (and write) a summary."""
    cfg = params[NAME]
    cache, faces = cache_for(params), face_cache(params)
    started, before = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(threads)
    backbone = build_mobilenet(cfg)
    load_mobilenet_weights(backbone, model_path(params), NAME)
    encoder, dim = frozen_for_inference(backbone), int(cfg["embed_dim"])
    tracks = [v for split in SPLITS for v in read_split(params["data"]["root"], split)]
    encoded = 0
    try:
        for t in tracks:
            if cache.has(t.video):
                continue
            face_rows = torch.from_numpy(np.asarray(faces.get(t.video, t.n_frames)[t.has_image]))
            cache.put(t.video, track_features(encode_faces(encoder, face_rows, int(cfg["crop"]),
                                                           int(cfg["extract_batch"]), dim), t.has_image, dim))
            encoded += len(face_rows)
    finally:
        torch.set_num_threads(before)
    summary = {"extractor": NAME, "version": VERSION, "dim": dim, "tracks": len(tracks), "face_frames": encoded,
               "seconds": round(time.perf_counter() - started, 2), "folder": str(cache.folder)}
    atomic_write_json(Path(params["features"]["root"]) / f"{NAME}.json", summary)
    return summary


def main(argv=None) -> int:
    return pretraining.cli(argv, NAME, "AU-detection MobileNet: pre-train (or load) it, then embed every face",
                           pretrain_fau, extract_fau, (AffWild2Error, MobileNetWeightsError, FeatureCacheError))


if __name__ == "__main__":
    sys.exit(main())
