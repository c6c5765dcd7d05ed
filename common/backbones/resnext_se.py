"""ResNeXt (Xie et al. 2017) with squeeze-and-excitation (Hu et al. 2018): the FER backbone of DRER.

Jeong et al. 2022 Sec. 4.1 take the visual representation from the FER model of DRER (Oh et al.
2021) / CAPNet: a ResNeXt with SE blocks pre-trained on AffectNet for valence and arousal, whose
last layer is removed so that its 512-d penultimate output is the per-frame feature. The
official code uses a ResNet-34-style network: basic-depth stages [3, 4, 6, 3] whose blocks are
grouped 3x3 convolutions (cardinality 32) followed by SE.

Block (ResNeXt "C" form, bottleneck width = planes * base_width / 64 * cardinality):
    1x1 conv -> BN -> ReLU -> 3x3 grouped conv (cardinality) -> BN -> ReLU -> 1x1 conv -> BN
    -> SE (global pool -> FC r -> ReLU -> FC -> sigmoid, channel-wise scale) -> + shortcut -> ReLU
Network: stem conv (3x3 stride 2 at <= 64 px, else 7x7 stride 2 + max-pool) then four stages of
`layers` blocks with `width`, 2x, 4x, 8x channels (stride 2 from stage 2), global average pool,
linear to `embed_dim` (512) + BN: the penultimate feature.
"""
from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(4, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x):
        s = x.mean((2, 3))                                           # squeeze: global average
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))         # excitation
        return x * s[:, :, None, None]


class ResNeXtSEBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, cardinality: int, group_width: int,
                 reduction: int):
        super().__init__()
        inner = cardinality * group_width
        self.conv1 = nn.Conv2d(c_in, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.se = SqueezeExcite(c_out, reduction)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        h = self.se(self.bn3(self.conv3(h)))
        return torch.relu(h + self.shortcut(x))


class ResNeXtSE(nn.Module):
    """(B, 3, H, W) faces in [-1, 1] -> (B, embed_dim) penultimate features."""

    def __init__(self, layers=(3, 4, 6, 3), width: int = 64, cardinality: int = 32,
                 group_width: int = 4, embed_dim: int = 512, reduction: int = 16,
                 input_size: int = 112):
        super().__init__()
        self.embed_dim = int(embed_dim)
        if input_size <= 64:       # small faces: one stride-2 3x3 stem, no pool (48 px -> 24)
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages, c_in = [], width
        for i, n in enumerate(layers):
            c_out = width * 2 ** i
            blocks = []
            for b in range(n):
                # group width doubles with the stage, as the channels do (ResNeXt Table 1)
                blocks.append(ResNeXtSEBlock(c_in, c_out, 2 if (b == 0 and i > 0) else 1, cardinality,
                                             group_width * 2 ** i, reduction))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.embed = nn.Linear(c_in, self.embed_dim)
        self.embed_bn = nn.BatchNorm1d(self.embed_dim)

    def forward(self, x):
        h = self.stages(self.stem(x)).mean((2, 3))
        return self.embed_bn(self.embed(h))
