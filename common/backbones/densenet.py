"""DenseNet (Huang et al. 2017) in pure torch: the face CNN of Liu et al. 2023's `densenet` feature.

Input: (B, 3, H, W) faces normalised to [-1, 1]. Architecture as DenseNet-BC (Sec. 3):
  stem conv (stride 2) -> dense blocks, each layer BN-ReLU-Conv1x1 (4k channels, the bottleneck) ->
  BN-ReLU-Conv3x3 (k = growth rate) whose output is concatenated to its input (Eq. 2:
  x_l = H_l([x_0, ..., x_{l-1}])) -> between blocks a transition BN-ReLU-Conv1x1 that halves
  the channels (compression 0.5) + 2x2 average pool -> final BN-ReLU -> global average pool =
  the embedding (`embed_dim`, the penultimate feature an expression head reads).
DenseNet-121 is growth 32, blocks [6, 12, 24, 16], stem 64 (a 7x7 stride-2 conv + max pool,
224 px); the default profile keeps the block, not the depth or width (params.yaml `densenet`).

`imagenet_stem: true` gives DenseNet's own stem (7x7 stride-2 conv - BN - ReLU - 3x3 stride-2 max
pool, as the paper and torchvision), so the paper profile is DenseNet-121 exactly. Published weights:
torchvision's DenseNet-121 (`densenet121-a639ec97.pth` = DenseNet121_Weights.IMAGENET1K_V1) is read as
published, its names (features.conv0, norm0, denseblockB.denselayerL.norm1/conv1/norm2/conv2,
transitionB.norm/conv, norm5) mapped onto this module's `features.N` (`TORCHVISION`); the ImageNet
classifier is dropped. Why this module and not torchvision's class: the default profile's narrow
DenseNet-BC with a 3x3 stem and no max pool (40 px faces) is no torchvision configuration and its
features stay byte-identical; tests/test_published_weights.py runs torchvision's own densenet121
and this module on the same input and holds them equal to 1e-5.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from common.weights import Layout, load_checked


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

    def __init__(self, stem: int, growth: int, blocks: list, imagenet_stem: bool = False):
        super().__init__()
        self.config = {"stem": int(stem), "growth": int(growth), "blocks": [int(b) for b in blocks]}
        if imagenet_stem:
            self.config["imagenet_stem"] = True
            layers = [nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(stem),
                      nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1)]
        else:
            # a 3x3 stride-2 stem: halves the face as DenseNet's 7x7 stride-2 conv does; its 3x3 max
            # pool (another /2) is left out, at 40-112 px it would leave too few pixels to the blocks
            layers = [nn.Conv2d(3, stem, 3, stride=2, padding=1, bias=False)]
        c = int(stem)
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
    return DenseNet(cfg["stem"], cfg["growth"], cfg["blocks"], bool(cfg.get("imagenet_stem", False)))


def densenet_config_width(cfg: dict) -> int:
    """The embedding size a params.yaml section (`stem`, `growth`, `blocks`) builds, without building it."""
    return densenet_width(cfg["stem"], cfg["growth"], cfg["blocks"])


def from_torchvision(state: dict) -> dict:
    """torchvision DenseNet names -> this module's `features.N`, in the order the layers run: the stem
    (conv0, norm0; relu0 and pool0 hold nothing) is 0-3, then each dense layer (norm1, conv1, norm2,
    conv2 = h.0.0, h.0.2, h.1.0, h.1.2), each transition (norm, conv = .0, .2; its pool one index more),
    and norm5."""
    blocks = {}
    for key in state:
        m = re.match(r"features\.denseblock(\d+)\.denselayer(\d+)\.", key)
        if m:
            blocks[int(m[1])] = max(blocks.get(int(m[1]), 0), int(m[2]))
    index, position = {"conv0": 0, "norm0": 1}, 4
    for b in sorted(blocks):
        for layer in range(1, blocks[b] + 1):
            index[f"denseblock{b}.denselayer{layer}"], position = position, position + 1
        if b < max(blocks):
            index[f"transition{b}"], position = position, position + 2
    index["norm5"] = position
    parts = {"norm1": "h.0.0", "conv1": "h.0.2", "norm2": "h.1.0", "conv2": "h.1.2", "norm": "0", "conv": "2"}
    out = {}
    for key, value in state.items():
        if key.startswith("classifier."):
            continue                                                     # the ImageNet head
        m = re.match(r"features\.(denseblock\d+\.denselayer\d+|transition\d+)\.(\w+)\.(\w+)$", key)
        if m:
            out[f"features.{index[m[1]]}.{parts[m[2]]}.{m[3]}"] = value
        else:
            name, _, leaf = key[len("features."):].partition(".")
            out[f"features.{index[name]}.{leaf}"] = value
    return out


TORCHVISION = Layout(
    "torchvision DenseNet", "features.denseblock1.denselayer1.norm1.weight", from_torchvision,
    "densenet121-a639ec97.pth (DenseNet121_Weights.IMAGENET1K_V1) with stem 64, growth 32, "
    "blocks [6, 12, 24, 16], imagenet_stem true (the paper profile)")


def load_densenet_weights(model: DenseNet, path, section: str) -> None:
    """Load a local state dict (torch.load weights_only=True) into `model`, or say what does not fit:
    this module's own names, or torchvision's published DenseNet (TORCHVISION)."""
    load_checked(model, path, DenseNetWeightsError, "DenseNet", section, "stem / growth / blocks / imagenet_stem",
                 (TORCHVISION,))
