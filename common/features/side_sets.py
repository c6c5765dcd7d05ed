"""Pre-training on the still-image side sets (the AffectNet-like `side/affectnet` faces with an
expression and valence-arousal each), shared by Zhang's frame encoder (visual.py), Jeong's FER
network (fer.py) and Liu's expression networks (face_networks.py).

The encoder gets two small heads, 7 expression logits and (valence, arousal) in [-1, 1], trained
with cross-entropy plus 1 - CCC; a seeded 10% of the images is held out and scored with the ABAW
metrics. This stands in for the FER+ fine-tuning of Zhang's ResNet-50 (Sec. 3.1).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common.device import module_device
from common.features.face_frames import centre_crop, normalise
from common.losses import ccc_loss
from common.metrics import expr_metrics, va_metrics

N_EXPR = 7                # AffectNet-like side set: Neutral ... Surprise, no "Other"
VAL_FRACTION = 0.1        # share of the side set held out to validate the pre-training


class StillFaces(Dataset):
    """Side-set faces (already decoded) with their labels; random crop + flip when training."""

    def __init__(self, images: torch.Tensor, expression: np.ndarray, va: np.ndarray, crop: int,
                 train: bool):
        self.images, self.crop, self.train = images, crop, train
        self.expression = torch.as_tensor(expression, dtype=torch.long)
        self.va = torch.as_tensor(va, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        image = self.images[i]
        if self.train:
            # torch's global generator: fit() seeds it (and checkpoints it), so the augmentation
            # is reproducible and a resumed run replays the same crops.
            room = image.shape[-1] - self.crop
            top, left = (int(v) for v in torch.randint(0, room + 1, (2,)))
            image = image[:, top:top + self.crop, left:left + self.crop]
            if torch.rand(()) < 0.5:
                image = image.flip(-1)
        else:
            image = centre_crop(image, self.crop)
        return {"image": normalise(image), "expr": self.expression[i], "va": self.va[i]}


class PretrainNet(nn.Module):
    """The encoder plus two small heads: 7 expression logits and (valence, arousal) in [-1, 1].

    Only `encoder` is kept afterwards; the heads exist to shape the embedding for affect, as
    the FER+ fine-tuning does for Zhang's ResNet-50.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.expr_head = nn.Linear(encoder.embed_dim, N_EXPR)
        self.va_head = nn.Linear(encoder.embed_dim, 2)

    def forward(self, x):
        z = self.encoder(x)
        return self.expr_head(z), torch.tanh(self.va_head(z))


def _one_minus_ccc(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean CCC of the two columns over the batch (Jeong Eq. 2 / Liu), via common.losses."""
    return ccc_loss(pred, target)


def pretrain_loss(net, batch) -> torch.Tensor:
    logits, va = net(batch["image"])
    return nn.functional.cross_entropy(logits, batch["expr"]) + _one_minus_ccc(va, batch["va"])


@torch.no_grad()
def predict(net: nn.Module, dataset: Dataset, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(expression logits (N, 7), valence-arousal (N, 2)) of a dataset, in order, eval mode."""
    was_training = net.training
    net.eval()
    device = module_device(net)                # fit() moves the model to the GPU when there is one
    logits, va = [], []
    for batch in DataLoader(dataset, batch_size):
        lo, v = net(batch["image"].to(device))
        logits.append(lo.float().cpu())
        va.append(v.float().cpu())
    net.train(was_training)
    return torch.cat(logits).numpy(), torch.cat(va).numpy()


def side_metrics(logits: np.ndarray, va_pred: np.ndarray, expr_true: np.ndarray,
                 va_true: np.ndarray) -> dict:
    """The ABAW metrics on held-out side-set images: expression macro F1 / accuracy, VA CCC."""
    expr = expr_metrics(expr_true, logits, num_classes=N_EXPR)
    va = va_metrics(va_true, va_pred)
    out = {"expr_f1": expr["f1_macro"], "expr_accuracy": expr["accuracy"],
           "ccc_valence": va["ccc_valence"], "ccc_arousal": va["ccc_arousal"], "ccc_mean": va["p_va"]}
    # One number to pick the best epoch by: both tasks count, as in the loss.
    out["score"] = out["expr_f1"] + out["ccc_mean"]
    return out


def split_side_set(n: int, seed: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): a seeded random 10% held out."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(VAL_FRACTION * n)))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    # BatchNorm cannot normalise a batch of one image in training mode, and fit() keeps the
    # last, partial batch: leave one training image out when it would end up alone.
    if len(train) % batch_size == 1 and len(train) > 1:
        train = train[:-1]
    return train, val


def majority_rate(labels: np.ndarray) -> float:
    """The accuracy of always guessing the most frequent expression: the floor a network must beat."""
    return float(np.bincount(labels, minlength=N_EXPR).max() / len(labels))
