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
"""
from __future__ import annotations

import torch
from torch import nn

from common.weights import load_checked


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
        blocks, c, size = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.PReLU(width)], width, input_size
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
    return IResNet(cfg["layers"], int(cfg["width"]), int(cfg["embed_dim"]), int(cfg["crop"]), float(cfg["dropout"]))


def load_iresnet_weights(model: IResNet, path, section: str) -> None:
    """Load a local state dict (torch.load weights_only=True) into `model`, or say what does not fit."""
    load_checked(model, path, IResNetWeightsError, "IResNet", section, "layers / width / embed_dim / crop")
