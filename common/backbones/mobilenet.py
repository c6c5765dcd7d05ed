"""MobileNetV2 (Sandler et al. 2018) in pure torch, narrow: the face CNN of Liu et al. 2023's `fau` feature.

Input: (B, 3, H, W) faces normalised to [-1, 1]. Architecture as in MobileNetV2 (Table 2):
  Conv3x3 stride 2 + BN + ReLU6 -> inverted residual blocks (1x1 expand x t, depthwise 3x3,
  1x1 linear projection; residual when the stride is 1 and the width is kept) -> Conv1x1 to
  `embed_dim` + BN + ReLU6 -> global average pool = the embedding (the penultimate feature a
  task head reads). The published network: width 1.0, stages [16, 24, 32, 64, 96, 160, 320],
  last conv 1280, 224 px; this pipeline keeps the block but not the depth or width (params.yaml).
The state dict keys follow this module's own names; `load_mobilenet_weights` checks them and
names the file and the params key to fix.

Published weights: torchvision's MobileNetV2 (`mobilenet_v2-b0353104.pth` = MobileNet_V2_Weights.IMAGENET1K_V1,
and IMAGENET1K_V2) is read as published: its `features.N.conv.K` names map onto this module's
`features.N.block.K` (`TORCHVISION`), the ImageNet classifier is dropped (the feature is the pooled
1280-d map, as the paper's penultimate layer). Why this module and not torchvision's class: the
default profile's narrow network (its own stem and stages) stays byte-identical, and torchvision
fixes the stem at 32 x width_mult; the same operations in the same order mean the published
network is this module at the paper profile's settings, which tests/test_published_weights.py
proves by running torchvision's own mobilenet_v2 and this module on the same input (1e-5).
"""
from __future__ import annotations

import re

import torch
from torch import nn

from common.weights import Layout, load_checked


class MobileNetWeightsError(ValueError):
    """A weights file does not fit the configured MobileNet; the message names the file and the fix."""


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.ReLU6()) if relu else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expansion -> depthwise 3x3 -> 1x1 linear bottleneck (no ReLU: MobileNetV2 Sec. 3.2)."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        layers = [conv_bn(c_in, hidden, 1)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, c_out, 1, relu=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNet(nn.Module):
    """(B, 3, H, W) -> (B, embed_dim); `stages` = [(expand t, channels c, repeats n, stride s), ...]."""

    def __init__(self, stem: int, stages: list, embed_dim: int):
        super().__init__()
        self.config = {"stem": int(stem), "stages": [list(map(int, s)) for s in stages], "embed_dim": int(embed_dim)}
        layers, c = [conv_bn(3, stem, 3, 2)], stem
        for t, c_out, n, s in self.config["stages"]:
            for i in range(n):
                layers.append(InvertedResidual(c, c_out, s if i == 0 else 1, t))
                c = c_out
        layers.append(conv_bn(c, embed_dim, 1))
        self.features = nn.Sequential(*layers)
        self.embed_dim = int(embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images).mean((2, 3))


def build_mobilenet(cfg: dict) -> MobileNet:
    """From a params.yaml section with `stem`, `stages` and `embed_dim` (e.g. `fau`)."""
    return MobileNet(cfg["stem"], cfg["stages"], cfg["embed_dim"])


def from_torchvision(state: dict) -> dict:
    """torchvision MobileNetV2 names -> this module's. In block N, torchvision's conv.K (K below the
    projection) is a Conv-BN-ReLU6 group (conv.K.0 conv, conv.K.1 BN), then the projection conv and its
    BN are two separate entries conv.P and conv.P+1; here the projection is one conv-BN group, block.P."""
    last = {}
    for key in state:
        m = re.match(r"features\.(\d+)\.conv\.(\d+)\.[a-z_]+$", key)
        if m:
            last[m[1]] = max(last.get(m[1], 0), int(m[2]))          # the projection's BN
    out = {}
    for key, value in state.items():
        if key.startswith("classifier."):
            continue                                               # the ImageNet head
        m = re.match(r"features\.(\d+)\.conv\.(\d+)\.(.+)$", key)
        if not m:
            out[key] = value                                       # features.0 / the last conv: same names
            continue
        n, k, rest = m[1], int(m[2]), m[3]
        if k < last[n] - 1:
            out[f"features.{n}.block.{k}.{rest}"] = value
        else:
            out[f"features.{n}.block.{last[n] - 1}.{k - (last[n] - 1)}.{rest}"] = value
    return out


TORCHVISION = Layout(
    "torchvision MobileNetV2", "features.1.conv.0.0.weight", from_torchvision,
    "mobilenet_v2-b0353104.pth (MobileNet_V2_Weights.IMAGENET1K_V1 / V2) with stem 32, stages "
    "[[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]], "
    "embed_dim 1280 (the paper profile)")


def load_mobilenet_weights(model: MobileNet, path, section: str) -> None:
    """Load a local state dict (torch.load weights_only=True) into `model`, or say what does not fit:
    this module's own names, or torchvision's published MobileNetV2 (TORCHVISION).

    `section` is the params.yaml section whose `weights` / architecture keys the message names.
    """
    load_checked(model, path, MobileNetWeightsError, "MobileNet", section, "stem / stages / embed_dim",
                 (TORCHVISION,))
