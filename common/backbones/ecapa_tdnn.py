"""ECAPA-TDNN (Desplanques, Thienpondt, Demuynck 2020) in pure torch: a speaker-embedding network.

Input: (B, T, n_mels) log Mel filter banks at 100 frames/s. Architecture as in the paper (Fig. 2):
  Conv1D(k=5) + ReLU + BN -> 3 SE-Res2Blocks (k=3, dilations 2, 3, 4, Res2Net scale s,
  squeeze-excitation bottleneck 128) with residual connections -> multi-layer feature
  aggregation (the three block outputs concatenated, Conv1D k=1) -> attentive statistics pooling
  with global context (weighted mean and std) -> BN -> FC -> the embedding.
The published model: channels 512 (1024 in the large one), MFA 1536, embedding 192. The state
dict keys follow this module's own names; `load_ecapa_weights` checks them and names the file.
"""
from __future__ import annotations

import torch
from torch import nn

from common.weights import load_checked


class EcapaWeightsError(ValueError):
    """A weights file does not fit the configured ECAPA-TDNN; the message names the file and the fix."""


class SEBlock(nn.Module):
    def __init__(self, channels: int, bottleneck: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(channels, bottleneck, 1), nn.ReLU(),
                                 nn.Conv1d(bottleneck, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.net(x.mean(2, keepdim=True))


class SERes2Block(nn.Module):
    """1x1 conv -> Res2Net dilated convs over `scale` channel groups -> 1x1 conv -> SE, + residual."""

    def __init__(self, channels: int, kernel: int, dilation: int, scale: int, se_bottleneck: int):
        super().__init__()
        if channels % scale:
            raise ValueError(f"ECAPA-TDNN channels {channels} must be divisible by the Res2Net scale {scale}")
        width = channels // scale
        self.scale = scale

        def cbr(i, o, k=1, d=1):
            return nn.Sequential(nn.Conv1d(i, o, k, dilation=d, padding=d * (k - 1) // 2), nn.ReLU(), nn.BatchNorm1d(o))
        self.conv_in = cbr(channels, channels)
        self.res2 = nn.ModuleList([cbr(width, width, kernel, dilation) for _ in range(scale - 1)])
        self.conv_out = cbr(channels, channels)
        self.se = SEBlock(channels, se_bottleneck)

    def forward(self, x):
        parts = torch.chunk(self.conv_in(x), self.scale, 1)
        out, prev = [parts[0]], None
        for conv, part in zip(self.res2, parts[1:]):
            prev = conv(part if prev is None else part + prev)       # Res2Net hierarchy
            out.append(prev)
        return x + self.se(self.conv_out(torch.cat(out, 1)))


class AttentiveStatsPool(nn.Module):
    """Channel- and context-dependent attention over time -> weighted mean and std (Sec. 2.2)."""

    def __init__(self, channels: int, bottleneck: int):
        super().__init__()
        self.attention = nn.Sequential(nn.Conv1d(3 * channels, bottleneck, 1), nn.ReLU(), nn.BatchNorm1d(bottleneck),
                                       nn.Tanh(), nn.Conv1d(bottleneck, channels, 1))

    def forward(self, x):
        t = x.shape[2]
        mean = x.mean(2, keepdim=True).expand(-1, -1, t)
        std = x.var(2, keepdim=True, unbiased=False).clamp(min=1e-5).sqrt().expand(-1, -1, t)
        w = torch.softmax(self.attention(torch.cat([x, mean, std], 1)), dim=2)
        mu = (w * x).sum(2)
        sigma = ((w * x * x).sum(2) - mu * mu).clamp(min=1e-5).sqrt()
        return torch.cat([mu, sigma], 1)


class EcapaTDNN(nn.Module):
    def __init__(self, n_mels: int = 80, channels: int = 512, mfa: int = 1536, embed_dim: int = 192,
                 scale: int = 8, se_bottleneck: int = 128, attention_bottleneck: int = 128):
        super().__init__()
        self.config = {"n_mels": n_mels, "channels": channels, "mfa": mfa, "embed_dim": embed_dim, "scale": scale,
                       "se_bottleneck": se_bottleneck, "attention_bottleneck": attention_bottleneck}
        self.stem = nn.Sequential(nn.Conv1d(n_mels, channels, 5, padding=2), nn.ReLU(), nn.BatchNorm1d(channels))
        self.blocks = nn.ModuleList([SERes2Block(channels, 3, d, scale, se_bottleneck) for d in (2, 3, 4)])
        self.mfa = nn.Sequential(nn.Conv1d(3 * channels, mfa, 1), nn.ReLU())
        self.pool = AttentiveStatsPool(mfa, attention_bottleneck)
        self.pool_bn = nn.BatchNorm1d(2 * mfa)
        self.embed = nn.Linear(2 * mfa, embed_dim)
        self.embed_bn = nn.BatchNorm1d(embed_dim)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        """(B, T, n_mels) -> (B, embed_dim)."""
        x = self.stem(fbank.transpose(1, 2))
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        x = self.mfa(torch.cat(outs, 1))                              # multi-layer feature aggregation
        return self.embed_bn(self.embed(self.pool_bn(self.pool(x))))


def build_ecapa(cfg: dict) -> EcapaTDNN:
    """From the params.yaml `ecapatdnn` section."""
    channels, mfa = int(cfg["channels"]), int(cfg["mfa"])
    # the published bottlenecks are 128; a narrower network keeps them below its width
    return EcapaTDNN(n_mels=int(cfg["n_mels"]), channels=channels, mfa=mfa, embed_dim=int(cfg["embed_dim"]),
                     scale=int(cfg["scale"]), se_bottleneck=min(128, channels // 2),
                     attention_bottleneck=min(128, mfa // 2))


def load_ecapa_weights(model: EcapaTDNN, path) -> None:
    """Load a local state dict (torch.load weights_only=True) into `model`, or say what does not fit."""
    load_checked(model, path, EcapaWeightsError, "ECAPA-TDNN", "ecapatdnn", "channels / mfa / embed_dim / scale")
