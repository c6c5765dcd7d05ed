"""Vu et al. 2021, Fig. 2: the multitask CNN (a) and the CNN-RNN (b).

(a) A ResNet spatial feature extractor, then the official code's head: BN - FC -> 128 - ReLU -
    BN - dropout 0.5 - two outputs, EXPR (7 logits; the ABAW3 class Other is not used) and VA
    (valence and arousal, each a distribution over `n_bins` bins on [-1, 1], Eq. 2; the
    prediction is the expectation over the bins, `papers/vu2021/losses.py: bins_expectation`).
    The ResNet is `common.backbones.resnet.ResNet` (its embedding layer ends in BN, the first BN
    of the head); the paper profile builds ResNet-50 (bottleneck [3, 4, 6, 3], width 64).
(b) The 128-d features of the frozen CNN for 32-frame sequences -> bidirectional GRU (64 per
    direction) -> ReLU -> the same two outputs for every frame.
"""
from __future__ import annotations

import torch
from torch import nn

from common.backbones.resnet import ResNet

N_EXPR = 7


class MultitaskCNN(nn.Module):
    """Faces (B, 3, H, W) -> (EXPR logits (B, 7), VA bin logits (B, 2, n_bins))."""

    def __init__(self, block: str = "basic", layers=(1, 1, 1, 1), width: int = 8,
                 embed_dim: int = 256, feature_dim: int = 128, n_bins: int = 20,
                 dropout: float = 0.5):
        super().__init__()
        self.backbone = ResNet(block, tuple(layers), width, embed_dim, dropout=0.0)
        # Fig. 2a head (official code): the backbone's BN, FC -> 128, ReLU, BN; the 128-d output
        # is what the GRU stage reads (`features`).
        self.neck = nn.Sequential(nn.Linear(embed_dim, feature_dim), nn.ReLU(inplace=True),
                                  nn.BatchNorm1d(feature_dim))
        self.dropout = nn.Dropout(dropout)
        self.expr_head = nn.Linear(feature_dim, N_EXPR)
        self.va_head = nn.Linear(feature_dim, 2 * n_bins)
        self.n_bins, self.feature_dim = n_bins, feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(x))

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two outputs from 128-d features (also used on cached features at evaluation)."""
        f = self.dropout(features)
        return self.expr_head(f), self.va_head(f).unflatten(-1, (2, self.n_bins))

    def forward(self, x):
        return self.heads(self.features(x))


class MultitaskGRU(nn.Module):
    """Feature sequences (B, T, D) -> (EXPR logits (B, T, 7), VA bin logits (B, T, 2, n_bins))."""

    def __init__(self, input_dim: int = 128, hidden: int = 64, n_bins: int = 20, dropout: float = 0.0):
        super().__init__()
        # Dropout on the input features (0 = none, as the official code): the frozen CNN has seen
        # the training frames, so their features are cleaner than unseen ones and a GRU on them
        # overfits within a few epochs.
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(input_dim, hidden, batch_first=True, bidirectional=True)
        self.expr_head = nn.Linear(2 * hidden, N_EXPR)
        self.va_head = nn.Linear(2 * hidden, 2 * n_bins)
        self.n_bins = n_bins

    def forward(self, x):
        h = torch.relu(self.gru(self.dropout(x))[0])     # official code: ReLU on the GRU outputs
        return self.expr_head(h), self.va_head(h).unflatten(-1, (2, self.n_bins))


def build_cnn(cfg: dict) -> MultitaskCNN:
    """The CNN from the `vu2021.cnn` section of params.yaml."""
    return MultitaskCNN(cfg["block"], cfg["layers"], cfg["width"], cfg["embed_dim"],
                        cfg["feature_dim"], cfg["n_bins"], cfg["dropout"])
