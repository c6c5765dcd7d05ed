"""DenseNet (Huang et al. 2017) in pure torch: the face CNN of Liu et al. 2023's `densenet` feature.

Input: (B, 3, H, W) faces normalised to [-1, 1]. Architecture as DenseNet-BC (Sec. 3):
  stem conv (stride 2) -> dense blocks, each layer BN-ReLU-Conv1x1 (4k channels, the bottleneck) ->
  BN-ReLU-Conv3x3 (k = growth rate) whose output is concatenated to its input (Eq. 2:
  x_l = H_l([x_0, ..., x_{l-1}])) -> between blocks a transition BN-ReLU-Conv1x1 that halves
  the channels (compression 0.5) + 2x2 average pool -> final BN-ReLU -> global average pool =
  the embedding (`embed_dim`, the penultimate feature an expression head reads).
DenseNet-121 is growth 32, blocks [6, 12, 24, 16], stem 64 (a 7x7 stride-2 conv + max pool,
224 px); the default profile keeps the block, not the depth or width (params.yaml `densenet`).
"""
from __future__ import annotations

import torch
from torch import nn

from common.weights import load_checked


class DenseNetWeightsError(ValueError):
    """A weights file does not fit the configured DenseNet; the message names the file and the fix."""


def bn_relu_conv(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(inplace=True),
                         nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False))


class DenseLayer(nn.Module):
    """H_l: the bottleneck 1x1 (4k) then the 3x3 (k) conv; its k new maps join the input (Eq. 2)."""

    def __init__(self, c_in: int, growth: int):
        super().__init__()
        self.h = nn.Sequential(bn_relu_conv(c_in, 4 * growth, 1), bn_relu_conv(4 * growth, growth, 3))

    def forward(self, x):
        return torch.cat([x, self.h(x)], 1)


def densenet_width(stem: int, growth: int, blocks: list) -> int:
    """Channels after the last block: each layer adds `growth`, each transition halves (compression 0.5)."""
    c = int(stem)
    for i, n in enumerate(blocks):
        c += int(n) * int(growth)
        if i < len(blocks) - 1:
            c //= 2
    return c


class DenseNet(nn.Module):
    """(B, 3, H, W) -> (B, embed_dim); embed_dim follows from stem, growth and blocks."""

    def __init__(self, stem: int, growth: int, blocks: list):
        super().__init__()
        self.config = {"stem": int(stem), "growth": int(growth), "blocks": [int(b) for b in blocks]}
        # a 3x3 stride-2 stem: halves the face as DenseNet's 7x7 stride-2 conv does; its 3x3 max
        # pool (another /2) is left out, at 40-112 px it would leave too few pixels to the blocks
        layers, c = [nn.Conv2d(3, stem, 3, stride=2, padding=1, bias=False)], int(stem)
        for i, n in enumerate(self.config["blocks"]):
            for _ in range(n):
                layers.append(DenseLayer(c, growth))
                c += growth
            if i < len(blocks) - 1:                        # transition: compression 0.5, pool /2
                layers += [bn_relu_conv(c, c // 2, 1), nn.AvgPool2d(2)]
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.embed_dim = c

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images).mean((2, 3))


def build_densenet(cfg: dict) -> DenseNet:
    """From a params.yaml section with `stem`, `growth` and `blocks` (e.g. `densenet`)."""
    return DenseNet(int(cfg["stem"]), int(cfg["growth"]), cfg["blocks"])


def densenet_config_width(cfg: dict) -> int:
    """The embedding size a params.yaml section (`stem`, `growth`, `blocks`) builds, without building it."""
    return densenet_width(int(cfg["stem"]), int(cfg["growth"]), cfg["blocks"])


def load_densenet_weights(model: DenseNet, path, section: str) -> None:
    """Load a local state dict (torch.load weights_only=True) into `model`, or say what does not fit."""
    load_checked(model, path, DenseNetWeightsError, "DenseNet", section, "stem / growth / blocks")
