"""The `fau` feature: penultimate features of a facial-action-unit detector (Liu, Sun et al. 2023 Sec. 3.2.1).

    python -m common.features.fau pretrain [--profile smoke]   # -> <model_dir>/fau.pt
    python -m common.features.fau extract  [--profile smoke]   # -> the feature cache

pretrain: Liu et al. use an IResNet-100 trained for AU detection on a commercial AU data set
  ("IResNet100-based FAU Features", Sec. 3.2.1). The network is the same IResNet as `ires100`
  (common/backbones/iresnet.py; IResNet-100 in the paper profile, a narrow one by default). The
  AU set is not available here, so
  * if `fau.weights` names a local state-dict file of this IResNet it is loaded (weights_only)
    and checked against the configured architecture;
  * otherwise the IResNet is trained in the pipeline for the 12 ABAW AUs (binary cross
    entropy, common.losses.masked_bce_with_logits, unannotated AUs masked) on `pretrain.frames`
    AU-annotated face frames of the Train_Set (frames without a face image left out), random crop
    + flip; `pretrain.val_frames` AU frames of the Validation_Set pick the best epoch by mean ROC
    AUC over the AUs (chance = 0.5).
extract: every face frame of every track through the frozen network (centre crop), the
  `embed_dim` BN-FC-BN embedding before the AU head; frames without a face take the nearest face's
  row (Liu Sec. 3.1). Faces come from the face-pixel cache (common/features/faces.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from common.backbones.iresnet import IResNetWeightsError, build_iresnet, load_iresnet_weights
from common.data.affwild2 import AU_NAMES, AffWild2Error
from common.features.cache import FeatureCache, FeatureCacheError
from common import runs
from common.features import pretraining
from common.features.pretraining import pretrain_or_load
from common.features.face_frames import frozen_for_inference, normalise, random_crop_flip
from common.features.face_networks import centre_crop_outputs
from common.features.faces import extract_face_feature, sample_face_frames
from common.losses import masked_bce_with_logits

NAME = "fau"
VERSION = "2"               # 2: IResNet as the paper (1 was a MobileNetV2)


def model_path(params: dict) -> Path:
    return pretraining.model_path(params, NAME)


def au_frames(params: dict, split: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Up to n face frames of `split` with at least one annotated AU: uint8 faces, labels, label mask."""
    images, picked = sample_face_frames(params, split, n, seed, lambda v: v.au_mask.any(1))
    return (images, torch.from_numpy(np.concatenate([v.au[f] for v, f in picked])).float(),
            torch.from_numpy(np.concatenate([v.au_mask[f] for v, f in picked])))


def mean_auc(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> float:
    """Mean ROC AUC over the AUs that have both classes among their annotated frames (chance 0.5)."""
    from sklearn.metrics import roc_auc_score
    aucs = [roc_auc_score(labels[mask[:, k], k], logits[mask[:, k], k]) for k in range(labels.shape[1])
            if len(np.unique(labels[mask[:, k], k])) == 2]
    return float(np.mean(aucs)) if aucs else 0.5


class AUDetector(nn.Module):
    """IResNet embedding -> linear head over the 12 AUs (logits)."""

    def __init__(self, backbone, n_aus: int = len(AU_NAMES)):
        super().__init__()
        self.backbone, self.head = backbone, nn.Linear(backbone.embed_dim, n_aus)

    def forward(self, images):
        return self.head(self.backbone(images))


def training_loss(net: nn.Module, batch, crop: int) -> torch.Tensor:
    """Masked AU BCE on a random crop + flip of the uint8 faces (augmented on their device)."""
    images, labels, mask = batch
    return masked_bce_with_logits(net(normalise(random_crop_flip(images, crop))), labels, mask)


@torch.no_grad()
def evaluate(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, crop: int) -> dict:
    """Validation loss and mean AU AUC of an AUDetector on uint8 faces (centre crop); the logits
    come back to the CPU, where the labels are."""
    logits = centre_crop_outputs(net, images, crop)
    return {"val_loss": float(masked_bce_with_logits(logits, labels, mask)),
            "val_auc": mean_auc(logits.numpy(), labels.numpy(), mask.numpy())}


def _train_au_detector(params: dict, backbone, out_dir: Path, progress: bool) -> dict:
    from common.train import fit
    cfg, p = params[NAME], params[NAME]["pretrain"]
    crop = cfg["crop"]
    x, y, m = au_frames(params, "train", p["frames"], p["seed"])
    vx, vy, vm = au_frames(params, "validation", p["val_frames"], p["seed"])
    result = fit(AUDetector(backbone), TensorDataset(x, y, m), lambda net, batch: training_loss(net, batch, crop),
                 lambda net: evaluate(net, vx, vy, vm, crop),
                 pretraining.train_config(p, "val_auc", "max", weight_decay=p["weight_decay"]),
                 out_dir / "train", progress=progress, key=runs.feature_key(params))
    return {"source": "pre-trained in pipeline for 12-AU detection (Train_Set AU frames)",
            "frames": len(x), "val_frames": len(vx), "validation": result["best"]}


def pretrain_fau(params: dict, progress: bool = True, threads: int = 1) -> Path:
    """Write <model_dir>/fau.pt (+ .json): loaded from fau.weights, or pre-trained here."""
    return pretrain_or_load(params, NAME, lambda: build_iresnet(params[NAME]),
                            lambda net, path: load_iresnet_weights(net, path, NAME),
                            lambda net, out_dir: _train_au_detector(params, net, out_dir, progress), threads)


# --------------------------------------------------------------------------- extract

def cache_for(params: dict) -> FeatureCache:
    """The `fau` cache of the current weights (new weights or face size, new folder)."""
    cfg = params[NAME]
    return pretraining.network_cache(params, NAME, VERSION, {"crop": cfg["crop"], "faces": params["faces"]["size"]},
                                      cfg["embed_dim"])


def extract_fau(params: dict, progress: bool = True, threads: int = 1) -> dict:
    """Fill the cache for every face track of every split; return (and write) a summary."""
    cfg = params[NAME]
    backbone = build_iresnet(cfg)
    load_iresnet_weights(backbone, model_path(params), NAME)
    encoder = frozen_for_inference(backbone)
    return {**extract_face_feature(params, NAME, encoder, cache_for(params), cfg["crop"],
                                               cfg["extract_batch"], cfg["embed_dim"], threads),
            "version": VERSION}


def main(argv=None) -> int:
    return pretraining.cli(argv, NAME, "AU-detection IResNet: pre-train (or load) it, then embed every face",
                           pretrain_fau, extract_fau, (AffWild2Error, IResNetWeightsError, FeatureCacheError))


if __name__ == "__main__":
    sys.exit(main())
