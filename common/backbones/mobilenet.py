"""MobileNetV2 (Sandler et al. 2018) in pure torch, narrow: the face CNN of Liu et al. 2023's `fau` feature.

Input: (B, 3, H, W) faces normalised to [-1, 1]. Architecture as in MobileNetV2 (Table 2):
  Conv3x3 stride 2 + BN + ReLU6 -> inverted residual blocks (1x1 expand x t, depthwise 3x3,
  1x1 linear projection; residual when the stride is 1 and the width is kept) -> Conv1x1 to
  `embed_dim` + BN + ReLU6 -> global average pool = the embedding (the penultimate feature a
  task head reads). The published network: width 1.0, stages [16, 24, 32, 64, 96, 160, 320],
  last conv 1280, 224 px; this pipeline keeps the block but not the depth or width (params.yaml).
The state dict keys follow this module's own names; `load_mobilenet_weights` checks them and
names the file and the params key to fix.
"""
from __future__ import annotations

import torch
from torch import nn

from common.weights import load_checked


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
    return MobileNet(int(cfg["stem"]), cfg["stages"], int(cfg["embed_dim"]))


def load_mobilenet_weights(model: MobileNet, path, section: str) -> None:
    """Load a local state dict (torch.load weights_only=True) into `model`, or say what does not fit.

    `section` is the params.yaml section whose `weights` / architecture keys the message names.
    """
    load_checked(model, path, MobileNetWeightsError, "MobileNet", section, "stem / stages / embed_dim")
