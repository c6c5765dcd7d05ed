"""The FER+ ResNet-50 that Vu et al. 2021 start from, in the layout of its published PyTorch conversion.

Vu et al.'s official code loads `resnet50_ferplus_dag.pth`, Samuel Albanie's conversion of the
MatConvNet/Caffe ResNet-50 trained on VGGFace2 then FER+ (8 expressions). The conversion is a flat
module whose attribute names are the Caffe layer names, which this module reproduces so that file
loads as published, key for key:
  conv1_7x7_s2 (7x7, stride 2, pad 3, no bias) + conv1_7x7_s2_bn, ReLU, 3x3 stride-2 max pool (ceil mode)
  conv{S}_{B}_1x1_reduce / _3x3 / _1x1_increase, each + `_bn`, for stages S = 2..5 of B = 3, 4, 6, 3
  blocks (widths 64, 128, 256, 512, expansion 4); a stage's first block also has conv{S}_1_1x1_proj
  (+ _bn) on its shortcut. Caffe-style: the stride-2 of stages 3-5 sits on the 1x1 reduce conv (and on
  the projection), not on the 3x3 as in torchvision's ResNet-50 v1.5, so torchvision's model cannot
  hold these weights; ReLU after the sum.
  classifier: a 1x1 conv 2048 -> 8 with bias (the FER+ logits) after the global average pool.
`forward` returns the pooled 2048-d feature (Vu: "last FC removed"); `logits` adds the classifier.
The conversion pools with a fixed 7x7 average (224 px input); this module averages the whole map,
the same at 224 px and defined for Vu's 112 px faces. BatchNorm eps 1e-5 as the conversion.
Input: the conversion's RGB in 0-255 minus its mean (131.0912, 103.8827, 91.4953), std 1 (`MEAN`).
"""
from __future__ import annotations

import torch
from torch import nn

from common.weights import Layout, load_checked

MEAN = (131.0912, 103.8827, 91.4953)
STAGES = ((2, 3, 64), (3, 4, 128), (4, 6, 256), (5, 3, 512))      # (stage, blocks, width)


class FerPlusWeightsError(ValueError):
    """A file does not fit the FER+ ResNet-50; the message names the file and the fix."""


def _conv_bn(owner: nn.Module, name: str, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
    setattr(owner, name, nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False))
    setattr(owner, f"{name}_bn", nn.BatchNorm2d(c_out, eps=1e-5))


class FerPlusResNet50(nn.Module):
    """(B, 3, H, W) mean-subtracted 0-255 RGB -> (B, 2048)."""

    def __init__(self, n_classes: int = 8):
        super().__init__()
        self.config = {"network": "resnet50_ferplus_dag", "classes": int(n_classes)}
        _conv_bn(self, "conv1_7x7_s2", 3, 64, 7, 2)
        self.pool = nn.MaxPool2d(3, 2, 0, ceil_mode=True)
        self.blocks, c = [], 64
        for stage, n, width in STAGES:
            for b in range(1, n + 1):
                name, stride = f"conv{stage}_{b}", (2 if b == 1 and stage > 2 else 1)
                _conv_bn(self, f"{name}_1x1_reduce", c, width, 1, stride)
                _conv_bn(self, f"{name}_3x3", width, width, 3)
                _conv_bn(self, f"{name}_1x1_increase", width, 4 * width, 1)
                if b == 1:
                    _conv_bn(self, f"{name}_1x1_proj", c, 4 * width, 1, stride)
                self.blocks.append(name)
                c = 4 * width
        self.classifier = nn.Conv2d(c, n_classes, 1)
        self.embed_dim = c

    def _cbr(self, name: str, x, relu: bool = True):
        x = getattr(self, f"{name}_bn")(getattr(self, name)(x))
        return torch.relu(x) if relu else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self._cbr("conv1_7x7_s2", x))
        for name in self.blocks:
            y = self._cbr(f"{name}_1x1_increase", self._cbr(f"{name}_3x3", self._cbr(f"{name}_1x1_reduce", x)),
                          relu=False)
            skip = self._cbr(f"{name}_1x1_proj", x, relu=False) if hasattr(self, f"{name}_1x1_proj") else x
            x = torch.relu(y + skip)
        return x.mean((2, 3))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 8) FER+ expression logits (the conversion's classifier on the pooled feature)."""
        return self.classifier(self(x)[:, :, None, None]).flatten(1)


FERPLUS_DAG = Layout("resnet50_ferplus_dag conversion", "conv1_7x7_s2.weight", dict,
                     "resnet50_ferplus_dag.pth (Albanie's VGGFace2 + FER+ ResNet-50; Vu et al.'s official code)")


def load_ferplus_resnet50(model: FerPlusResNet50, path, section: str = "vu2021.cnn") -> None:
    """Load `resnet50_ferplus_dag.pth` (torch.load weights_only=True) into `model`, or raise
    FerPlusWeightsError naming the file, the first mismatches and the published file that fits."""
    load_checked(model, path, FerPlusWeightsError, "FER+ ResNet-50", section, "weights (a resnet50_ferplus_dag file)",
                 (FERPLUS_DAG,))
