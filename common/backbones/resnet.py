"""ResNet frame encoders in pure torch (He et al. 2016), sized by configuration.

The `paper` profile builds the papers' ResNet-50 (bottleneck blocks, 3-4-6-3); the default
profile a narrower, shallower one that trains on two CPU cores. The embedding head follows the
IR-50 output layer Zhang's code uses: BatchNorm - Dropout(0.4) - Flatten - Linear -> 512 -
BatchNorm1d, on a spatially pooled map so any input size works (48 px crops of 40, or 112 px).
"""
import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in, c, stride):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
        self.skip = _shortcut(c_in, c, stride)

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in, c, stride):
        super().__init__()
        out = c * 4
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, out, 1, bias=False), nn.BatchNorm2d(out))
        self.skip = _shortcut(c_in, out, stride)

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


def _shortcut(c_in, c_out, stride):
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class ResNet(nn.Module):
    """Images (B, 3, H, W) -> embeddings (B, embed_dim).

    `layer_groups()` lists the stem and the four stages, so a training schedule can unfreeze
    them one at a time from the top (Zhang Sec. 4.3, "progressively release").
    """

    def __init__(self, block: str = "bottleneck", layers=(3, 4, 6, 3), width: int = 64,
                 embed_dim: int = 512, dropout: float = 0.4):
        super().__init__()
        Block = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        stages, c_in = [], width
        for i, n in enumerate(layers):
            c = width * 2 ** i
            blocks = []
            for j in range(n):
                # As IR-50 for face crops: a stride-1 stem and a stride-2 start to every stage,
                # so a 112 px face ends as a 7x7 map (and a 40 px crop as 3x3).
                blocks.append(Block(c_in, c, 2 if j == 0 else 1))
                c_in = c * Block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(nn.BatchNorm2d(c_in), nn.Dropout(dropout), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(c_in, embed_dim), nn.BatchNorm1d(embed_dim))
        self.embed_dim = embed_dim

    def layer_groups(self) -> list:
        return [self.stem, *self.stages, self.head]

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)
