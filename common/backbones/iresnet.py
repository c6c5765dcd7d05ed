"""IResNet (Duta et al. 2020, as used by ArcFace / insightface) in pure torch: Liu et al. 2023's `ires100`.

Input: (B, 3, H, W) faces normalised to [-1, 1]. The face-recognition variant of ResNet that
Liu et al.'s IResNet-100 follows:
  stem Conv3x3 (stride 1) + BN + PReLU -> four stages of improved basic blocks
  BN - Conv3x3 - BN - PReLU - Conv3x3 (stride 2 on a stage's first block) - BN, plus the
  shortcut (Conv1x1 + BN where the shape changes) -> BN2d - dropout - flatten - FC - BN1d:
  the `embed_dim` embedding. The flatten + FC keeps where on the face a pattern is (no global
  pooling), which is what makes this family good at faces.
IResNet-100 is layers [3, 13, 30, 3], widths [64, 128, 256, 512], 112 px, embedding 512; the
default profile keeps the block, not the depth or width (params.yaml `ires100`).

Published weights: insightface's arcface_torch IResNet-100 (e.g. `ms1mv3_arcface_r100_fp16/backbone.pth`,
`glint360k_cosface_r100_fp16_0.1/backbone.pth`) is this network key for key: its names (conv1, bn1,
prelu, layerS.B.{bn1, conv1, bn2, prelu, conv2, bn3, downsample.0/1}, bn2, fc, features) are mapped
onto this module's (`INSIGHTFACE`), with the same order of operations and BatchNorm eps 1e-5, so
the loader reads that file as published: set layers [3, 13, 30, 3], width 64, embed_dim 512 and a
crop whose last map is 7x7 (97-112 px). Why not a library model: no maintained library defines
IResNet (insightface ships it as a training recipe); tests/test_published_weights.py runs the
published definition's forward written from its key layout against this module.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from common.weights import Layout, load_checked


class IResNetWeightsError(ValueError):
    """A weights file does not fit the configured IResNet; the message names the file and the fix."""


class IBasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
            nn.PReLU(c_out), nn.Conv2d(c_out, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out else
                         nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)))

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


class IResNet(nn.Module):
    """(B, 3, crop, crop) -> (B, embed_dim). `input_size` fixes the flattened FC's width."""

    def __init__(self, layers: list, width: int, embed_dim: int, input_size: int, dropout: float = 0.0):
        super().__init__()
        self.config = {"layers": [int(n) for n in layers], "width": int(width), "embed_dim": int(embed_dim),
                       "input_size": int(input_size), "dropout": float(dropout)}
        blocks = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.PReLU(width)]
        c, size = width, input_size
        for i, n in enumerate(self.config["layers"]):
            c_out = width * 2 ** i
            for j in range(n):
                blocks.append(IBasicBlock(c, c_out, 2 if j == 0 else 1))
                c = c_out
            size = (size + 1) // 2                          # 3x3 conv, stride 2, padding 1
        self.features = nn.Sequential(*blocks, nn.BatchNorm2d(c))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c * size * size, embed_dim)
        self.bn = nn.BatchNorm1d(embed_dim)
        self.embed_dim = int(embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(self.dropout(self.features(images).flatten(1))))


def build_iresnet(cfg: dict) -> IResNet:
    """From a params.yaml section with `layers`, `width`, `embed_dim` and `crop` (e.g. `ires100`)."""
    return IResNet(cfg["layers"], cfg["width"], cfg["embed_dim"], cfg["crop"], cfg["dropout"])


_BLOCK_PARTS = {"bn1": "body.0", "conv1": "body.1", "bn2": "body.2", "prelu": "body.3", "conv2": "body.4",
                "bn3": "body.5", "downsample.0": "shortcut.0", "downsample.1": "shortcut.1"}


def from_insightface(state: dict) -> dict:
    """insightface arcface_torch iresnet names -> this module's: the stem (conv1, bn1, prelu) is
    features.0-2, block B of stage S is features.(3 + blocks before it), bn2 the BN that ends
    `features`, fc and features (BatchNorm1d) are fc and bn."""
    per_stage = {}
    for key in state:
        m = re.match(r"layer(\d+)\.(\d+)\.", key)
        if m:
            per_stage[int(m[1])] = max(per_stage.get(int(m[1]), 0), int(m[2]) + 1)
    first, n_blocks = {}, 0
    for stage in sorted(per_stage):
        first[stage], n_blocks = 3 + n_blocks, n_blocks + per_stage[stage]
    out = {}
    for key, value in state.items():
        m = re.match(r"layer(\d+)\.(\d+)\.(downsample\.\d|\w+)\.(\w+)$", key)
        head, _, leaf = key.partition(".")
        if m:
            out[f"features.{first[int(m[1])] + int(m[2])}.{_BLOCK_PARTS[m[3]]}.{m[4]}"] = value
        elif head in ("conv1", "bn1", "prelu"):
            out[f"features.{('conv1', 'bn1', 'prelu').index(head)}.{leaf}"] = value
        elif head == "bn2":
            out[f"features.{3 + n_blocks}.{leaf}"] = value
        elif head == "features":
            out[f"bn.{leaf}"] = value
        else:                                              # fc
            out[key] = value
    return out


INSIGHTFACE = Layout(
    "insightface arcface_torch IResNet", "layer1.0.bn1.weight", from_insightface,
    "IResNet-100 backbone.pth (ms1mv3_arcface_r100_fp16, glint360k_cosface_r100) with layers [3, 13, 30, 3], "
    "width 64, embed_dim 512, crop 112 (IResNet-50: layers [3, 4, 14, 3])")


def load_iresnet_weights(model: IResNet, path, section: str) -> None:
    """Load a local state dict (torch.load weights_only=True) into `model`, or say what does not fit:
    this module's own names, or insightface's published IResNet (INSIGHTFACE)."""
    load_checked(model, path, IResNetWeightsError, "IResNet", section, "layers / width / embed_dim / crop",
                 (INSIGHTFACE,))
