"""Liu, Sun et al. 2023's supervised face networks `densenet`, `ires100` and `ms_va` (Sec. 3.2.1).

    python -m common.features.face_networks densenet pretrain [--profile smoke]   # -> <model_dir>/densenet.pt
    python -m common.features.face_networks densenet extract  [--profile smoke]   # -> the feature cache

Each is a face CNN trained for one image-level task, frozen, whose penultimate output is the
per-frame feature. What the paper used -> what runs here (the published weights and data sets
are not available offline; a local state dict named by `<name>.weights` is loaded instead of
pre-training, weights_only=True, and checked against the configured architecture):

  densenet  DenseNet, facial expression, FER+ and AffectNet
            -> DenseNet-BC (common/backbones/densenet.py), 7-class expression on the
               AffectNet-like stills (`side/affectnet`)
  ires100   IResNet-100, facial expression, FER+ + RAF-DB + AffectNet
            -> narrow IResNet (common/backbones/iresnet.py), 7-class expression on the
               AffectNet-like and ExpW-like stills (ExpW stands in for RAF-DB: both are
               in-the-wild expression stills)
  ms_va     MobileNet, valence-arousal regression on AffectNet
            -> narrow MobileNetV2 (common/backbones/mobilenet.py), valence and arousal
               (1 - CCC, tanh outputs) on the sets of `ms_va.pretrain.sets`

`pretrain.sets` lists the training images: still side sets by name, or `affwild2` for
`pretrain.frames` face frames of the Train_Set annotated for the task. Validation picks the
best epoch: 10 % of the stills held out (seeded), plus `pretrain.val_frames` Validation_Set
frames when `affwild2` is a set. After training, the network's own head is also scored on
`pretrain.val_frames` Validation_Set frames of the task (the `transfer` entry of <name>.json):
how well a network trained on stills reads the video faces.

extract: every face frame of every track (face-pixel cache, centre crop) through the frozen
backbone; frames without a face take the nearest face's row (Liu Sec. 3.1).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from common.backbones.densenet import DenseNetWeightsError, build_densenet, densenet_config_width, load_densenet_weights
from common.backbones.iresnet import IResNetWeightsError, build_iresnet, load_iresnet_weights
from common.backbones.mobilenet import MobileNetWeightsError, build_mobilenet, load_mobilenet_weights
from common.data.affwild2 import AffWild2Error
from common.data.still_images import StillSetError, read_still_set
from common.device import module_device
from common.features import pretraining
from common.features.cache import FeatureCache, FeatureCacheError, params_key
from common.features.face_frames import centre_crop, decode_faces, frozen_for_inference, normalise, random_crop_flip
from common.features.faces import extract_face_feature, sample_face_frames
from common.features.side_sets import N_EXPR, split_side_set
from common.losses import ccc_loss
from common.params import ParamsError

VERSION = "1"             # of the training and extraction code; part of the cache and training keys


@dataclass(frozen=True)
class FaceNetwork:
    task: str                               # "expression" (7 classes) or "va"
    build: Callable[[dict], nn.Module]
    load: Callable[[nn.Module, str, str], None]
    arch_error: type
    width: Callable[[dict], int] = lambda cfg: cfg["embed_dim"]   # the feature size a section builds


NETWORKS = {
    "densenet": FaceNetwork("expression", build_densenet, load_densenet_weights, DenseNetWeightsError,
                            densenet_config_width),
    "ires100": FaceNetwork("expression", build_iresnet, load_iresnet_weights, IResNetWeightsError),
    "ms_va": FaceNetwork("va", build_mobilenet, load_mobilenet_weights, MobileNetWeightsError),
}


def network(name: str) -> FaceNetwork:
    if name not in NETWORKS:
        raise ParamsError(f"unknown face network '{name}'; known: {', '.join(NETWORKS)}")
    return NETWORKS[name]


class TaskNet(nn.Module):
    """Backbone -> linear head: 7 expression logits, or (valence, arousal) through tanh."""

    def __init__(self, backbone: nn.Module, task: str):
        super().__init__()
        self.backbone, self.task = backbone, task
        self.head = nn.Linear(backbone.embed_dim, N_EXPR if task == "expression" else 2)

    def forward(self, images):
        out = self.head(self.backbone(images))
        return out if self.task == "expression" else torch.tanh(out)


def task_loss(task: str, out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if task == "expression":
        return nn.functional.cross_entropy(out, labels)
    return ccc_loss(out, labels)                      # 1 - mean CCC of valence and arousal


def training_loss(task: str, net: nn.Module, batch, crop: int) -> torch.Tensor:
    """The task loss on a random crop + flip of the uint8 faces (augmented on their device)."""
    images, target = batch
    return task_loss(task, net(normalise(random_crop_flip(images, crop))), target)


def task_metrics(task: str, out: np.ndarray, labels: np.ndarray) -> dict:
    """Expression: macro F1 over the 7 classes (ABAW P_EXPR) and accuracy; VA: CCC per dimension."""
    from common.metrics import expr_metrics, va_metrics
    if task == "expression":
        m = expr_metrics(labels, out, num_classes=N_EXPR)
        return {"score": m["f1_macro"], "f1_macro": m["f1_macro"], "accuracy": m["accuracy"]}
    m = va_metrics(labels, out)
    return {"score": m["p_va"], "ccc_valence": m["ccc_valence"], "ccc_arousal": m["ccc_arousal"]}


# --------------------------------------------------------------------------- training images

def still_images(params: dict, set_name: str, task: str) -> tuple[torch.Tensor, np.ndarray]:
    """A side set's faces at the face-cache size (the size extraction sees) and its task labels."""
    side = read_still_set(params["data"]["root"], set_name)
    labels = side.expression if task == "expression" else side.va
    if labels is None:
        raise ParamsError(f"side set '{set_name}' has no {task} labels; fix the network's pretrain.sets")
    return decode_faces(side.image_paths, params["faces"]["size"]), labels


def video_frames(params: dict, split: str, n: int, seed: int, task: str) -> tuple[torch.Tensor, np.ndarray]:
    """Up to n face frames of an Aff-Wild2 split annotated for the task, with their labels
    (expression: the 7 classes the stills share; "Other" and unannotated frames left out)."""
    if task == "expression":
        where = lambda v: v.expr_mask & (v.expr < N_EXPR)                         # noqa: E731
        images, picked = sample_face_frames(params, split, n, seed, where)
        return images, np.concatenate([v.expr[f] for v, f in picked]).astype(np.int64)
    images, picked = sample_face_frames(params, split, n, seed, lambda v: v.va_mask)
    return images, np.concatenate([v.va[f] for v, f in picked]).astype(np.float32)


def training_sets(params: dict, name: str) -> tuple[tuple, tuple]:
    """((train images, labels), (validation images, labels)) from `<name>.pretrain.sets`."""
    p, task = params[name]["pretrain"], network(name).task
    seed, train, val = p["seed"], [], []
    for set_name in p["sets"]:
        if set_name == "affwild2":
            train.append(video_frames(params, "train", p["frames"], seed, task))
            val.append(video_frames(params, "validation", p["val_frames"], seed, task))
        else:
            images, labels = still_images(params, set_name, task)
            tr, va = split_side_set(len(images), seed, p["batch_size"])
            train.append((images[tr], labels[tr]))
            val.append((images[va], labels[va]))
    if not train:
        raise ParamsError(f"{name}.pretrain.sets is empty; name still sets (affectnet, expw, afew_va) or affwild2")
    join = lambda parts: (torch.cat([x for x, _ in parts]), np.concatenate([y for _, y in parts]))  # noqa: E731
    return join(train), join(val)


@torch.no_grad()
def predict(net: nn.Module, images: torch.Tensor, crop: int, batch: int = 256) -> np.ndarray:
    """The network's outputs on uint8 faces (centre crop), each batch sent to the network's device."""
    return centre_crop_outputs(net, images, crop, batch).numpy()


def centre_crop_outputs(net: nn.Module, images: torch.Tensor, crop: int, batch: int = 256) -> torch.Tensor:
    """float32 CPU outputs of `net` on the centre crops of uint8 faces, batch by batch on its device."""
    device = module_device(net)
    return torch.cat([net(normalise(centre_crop(images[i:i + batch].to(device), crop))).float().cpu()
                      for i in range(0, len(images), batch)])


def _train(params: dict, name: str, backbone: nn.Module, out_dir: Path, progress: bool) -> dict:
    from common.train import fit
    cfg, p, task = params[name], params[name]["pretrain"], network(name).task
    crop = cfg["crop"]
    (x, y), (vx, vy) = training_sets(params, name)
    labels = torch.as_tensor(y)

    def loss(net, batch):
        return training_loss(task, net, batch, crop)

    def evaluate(net):
        return {f"val_{k}": v for k, v in task_metrics(task, predict(net, vx, crop), vy).items()}

    net = TaskNet(backbone, task)
    result = fit(net, TensorDataset(x, labels), loss, evaluate,
                 pretraining.train_config(p, "val_score", "max", weight_decay=p["weight_decay"]),
                 # fit() resumes from its folder's checkpoint: one folder per setting, never a stale one
                 out_dir / "train" / params_key({**cfg, "faces": params["faces"]["size"], "version": VERSION}),
                 progress=progress)
    net.eval()
    tx, ty = video_frames(params, "validation", p["val_frames"], p["seed"], task)
    return {"source": f"pre-trained in the pipeline: {task} on {', '.join(p['sets'])}",
            "task": task, "train_images": len(x), "val_images": len(vx), "validation": result["best"],
            "transfer": {"split": "validation", "frames": len(tx), **task_metrics(task, predict(net, tx, crop), ty)}}


def pretrain(params: dict, name: str, progress: bool = True, threads: int = 1) -> Path:
    """Write <model_dir>/<name>.pt (+ .json): loaded from `<name>.weights`, or pre-trained here."""
    spec = network(name)
    return pretraining.pretrain_or_load(params, name, lambda: spec.build(params[name]),
                                        lambda net, path: spec.load(net, path, name),
                                        lambda net, out_dir: _train(params, name, net, out_dir, progress), threads)


# --------------------------------------------------------------------------- extract

def cache_for(params: dict, name: str) -> FeatureCache:
    """The cache of the current weights of network `name` (new weights or face size, new folder)."""
    cfg = params[name]
    return pretraining.network_cache(params, name, VERSION, {"crop": cfg["crop"], "faces": params["faces"]["size"]},
                                     network(name).width(cfg), f"python -m common.features.face_networks {name}")


def extract(params: dict, name: str, progress: bool = True, threads: int = 1, workers: int = 2) -> dict:
    """Fill the cache of network `name` for every face track of every split (tracks shared out to
    `workers` processes); return the summary."""
    cfg, spec = params[name], network(name)
    backbone = spec.build(cfg)
    spec.load(backbone, pretraining.model_path(params, name), name)
    return {**extract_face_feature(params, name, frozen_for_inference(backbone), cache_for(params, name),
                                               cfg["crop"], cfg["extract_batch"], backbone.embed_dim, threads,
                                               workers),
            "version": VERSION}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in NETWORKS:
        print(f"usage: python -m common.features.face_networks {{{','.join(NETWORKS)}}} {{pretrain,extract}} "
              "[--profile P] [--threads N]", file=sys.stderr)
        return 2
    name = argv.pop(0)
    spec = network(name)
    return pretraining.cli(argv, name, f"{name}: pre-train (or load) the {spec.task} network, then embed every face",
                           lambda params: pretrain(params, name), lambda params: extract(params, name),
                           (AffWild2Error, StillSetError, FeatureCacheError, spec.arch_error))


if __name__ == "__main__":
    sys.exit(main())
