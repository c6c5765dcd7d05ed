"""The `mae` feature: a masked-autoencoder ViT's encoder tokens per face (Liu, Sun et al. 2023 Sec. 3.2.1).

    python -m common.features.mae pretrain [--profile smoke]   # -> <model_dir>/mae.pt
    python -m common.features.mae extract  [--profile smoke]   # -> the feature cache

pretrain: Liu et al. pre-train a ViT masked autoencoder on DFEW, EmotioNet and FERV39k (then
  fine-tune it for expression and AU). Those sets are not here, so
  * if `mae.weights` names a local state-dict file of this MAE it is loaded (weights_only) and
    checked against the configured architecture (common/backbones/vit_mae.py);
  * otherwise the MAE is pre-trained in the pipeline, self-supervised, on `pretrain.frames` face
    frames of the Train_Set (uniformly subsampled; random crop + flip), `mask_ratio` of the
    patches dropped (MAE's 75 %); `pretrain.val_frames` Validation_Set faces pick the best epoch by
    reconstruction loss (predicting each dropped patch's mean scores ~1.0 on normalised pixels).
    The paper's expression / AU fine-tuning is left out (the `fau` feature covers AUs).
extract: every face frame of every track through the encoder without masking (centre crop);
  the mean patch token is the feature; frames without a face take the nearest face's row.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from common.backbones.vit_mae import MAEWeightsError, build_mae, load_mae_weights
from common.data.affwild2 import AffWild2Error
from common.device import inference_device, module_device
from common import runs
from common.features import pretraining
from common.features.cache import FeatureCache, FeatureCacheError
from common.features.face_frames import centre_crop, normalise, random_crop_flip
from common.features.faces import extract_face_feature, sample_face_frames

NAME = "mae"
VERSION = "1"


def model_path(params: dict) -> Path:
    return pretraining.model_path(params, NAME)


def training_loss(net, batch, crop: int, ratio: float) -> torch.Tensor:
    """The MAE loss on a random crop + flip of the uint8 faces (augmented on their device)."""
    return net.reconstruction_loss(normalise(random_crop_flip(batch[0], crop)), ratio)


def validation_losses(net, images: torch.Tensor, crop: int, ratio: float, batch: int = 256) -> list:
    """[(MAE loss, batch size)] over the centre crops of uint8 faces, each batch on the network's
    device (masks drawn there from the seed the caller set)."""
    device = module_device(net)
    return [(net.reconstruction_loss(normalise(centre_crop(images[i:i + batch].to(device), crop)), ratio),
             len(images[i:i + batch])) for i in range(0, len(images), batch)]


@torch.no_grad()
def validation_loss(net, images: torch.Tensor, crop: int, ratio: float) -> float:
    """Mean reconstruction loss on the validation faces, the same masks every epoch."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return sum(float(loss) * n for loss, n in validation_losses(net, images, crop, ratio)) / len(images)


def _train_mae(params: dict, model, out_dir: Path, progress: bool) -> dict:
    from common.train import fit
    cfg, p = params[NAME], params[NAME]["pretrain"]
    crop, ratio = cfg["crop"], cfg["mask_ratio"]
    every_frame = lambda v: v.has_image  # noqa: E731 - any face frame; no labels needed
    x, _ = sample_face_frames(params, "train", p["frames"], p["seed"], every_frame)
    vx, _ = sample_face_frames(params, "validation", p["val_frames"], p["seed"], every_frame)

    result = fit(model, TensorDataset(x), lambda net, b: training_loss(net, b, crop, ratio),
                 lambda net: {"val_loss": validation_loss(net, vx, crop, ratio)},
                 pretraining.train_config(p, "val_loss", "min", weight_decay=p["weight_decay"], betas=(0.9, 0.95)),
                 out_dir / "train", progress=progress, key=runs.feature_key(params))
    return {"source": "pre-trained in pipeline as a masked autoencoder (Train_Set face frames)",
            "frames": len(x), "val_frames": len(vx), "validation": result["best"]}


def pretrain_mae(params: dict, progress: bool = True, threads: int = 1) -> Path:
    """Write <model_dir>/mae.pt (+ .json): loaded from mae.weights, or pre-trained here."""
    return pretraining.pretrain_or_load(params, NAME, lambda: build_mae(params[NAME]), load_mae_weights,
                                        lambda net, out_dir: _train_mae(params, net, out_dir, progress), threads)


def cache_for(params: dict) -> FeatureCache:
    """The `mae` cache of the current weights (new weights or face size, new folder)."""
    cfg = params[NAME]
    return pretraining.network_cache(params, NAME, VERSION, {"crop": cfg["crop"], "faces": params["faces"]["size"]},
                                      cfg["dim"])


def extract_mae(params: dict, progress: bool = True, threads: int = 1) -> dict:
    """Fill the cache for every face track of every split; return (and write) a summary."""
    cfg = params[NAME]
    model = build_mae(cfg)
    load_mae_weights(model, model_path(params))
    model.eval().to(inference_device())                  # a ViT: no BatchNorm to fold, eager is fine
    return {**extract_face_feature(params, NAME, model, cache_for(params), cfg["crop"],
                                               cfg["extract_batch"], cfg["dim"], threads),
            "version": VERSION}


def main(argv=None) -> int:
    return pretraining.cli(argv, NAME, "masked-autoencoder ViT: pre-train (or load) it, then embed every face",
                           pretrain_mae, extract_mae, (AffWild2Error, MAEWeightsError, FeatureCacheError))


if __name__ == "__main__":
    sys.exit(main())
