"""ECAPA-TDNN (Desplanques, Thienpondt, Demuynck 2020) in pure torch: a speaker-embedding network.

Input: (B, T, n_mels) log Mel filter banks at 100 frames/s. Architecture as in the paper (Fig. 2):
  Conv1D(k=5) + ReLU + BN -> 3 SE-Res2Blocks (k=3, dilations 2, 3, 4, Res2Net scale s,
  squeeze-excitation bottleneck 128) with residual connections -> multi-layer feature
  aggregation (the three block outputs concatenated, Conv1D k=1) -> attentive statistics pooling
  with global context (weighted mean and std) -> BN -> FC -> the embedding.
The published model: channels 512 (1024 in the large one), MFA 1536, embedding 192. The state
dict keys follow this module's own names; `load_ecapa_weights` checks them and names the file.

Two variants (`ecapatdnn.variant`):
  paper        the network as the paper draws it (above): zero padding, no BatchNorm after the
               multi-layer aggregation, a BatchNorm after the embedding.
  speechbrain  the network of speechbrain's ECAPA_TDNN (speechbrain/lobes/models/ECAPA_TDNN.py),
               whose published VoxCeleb model (speechbrain/spkrec-ecapa-voxceleb,
               `embedding_model.ckpt`: channels 1024, MFA 3072, embedding 192, scale 8, 20.8 M
               parameters) then loads as published: "same" convolutions with reflect padding, the
               aggregation a conv + ReLU + BatchNorm block, the pooling's statistics with a 1e-12
               floor on the variance, BatchNorm on the pooled statistics, then a 1x1 convolution (held
               here as the equivalent Linear) with no BatchNorm after it. SPEECHBRAIN maps its names
               (blocks.0.conv.conv.weight, blocks.N.tdnn1/res2net_block/tdnn2/se_block, mfa, asp,
               asp_bn, fc) onto this module's.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from common.weights import Layout, load_checked

VARIANTS = ("paper", "speechbrain")


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

    def __init__(self, channels: int, kernel: int, dilation: int, scale: int, se_bottleneck: int,
                 padding_mode: str = "zeros"):
        super().__init__()
        if channels % scale:
            raise ValueError(f"ECAPA-TDNN channels {channels} must be divisible by the Res2Net scale {scale}")
        width = channels // scale
        self.scale = scale

        def cbr(i, o, k=1, d=1):
            return _cbr(i, o, k, d, padding_mode)
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


def _cbr(c_in: int, c_out: int, kernel: int = 1, dilation: int = 1, padding_mode: str = "zeros") -> nn.Sequential:
    """Conv1D ("same" length) -> ReLU -> BatchNorm, the TDNN unit of both variants."""
    return nn.Sequential(nn.Conv1d(c_in, c_out, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2,
                                   padding_mode=padding_mode), nn.ReLU(), nn.BatchNorm1d(c_out))


class AttentiveStatsPool(nn.Module):
    """Channel- and context-dependent attention over time -> weighted mean and std (Sec. 2.2).

    variance_floor None: the paper variant (E[x^2] - mu^2, std floored at sqrt(1e-5)); a number:
    speechbrain's statistics, sum of weights * (x - mu)^2 floored at that value before the root."""

    def __init__(self, channels: int, bottleneck: int, variance_floor: float | None = None):
        super().__init__()
        self.variance_floor = variance_floor
        self.attention = nn.Sequential(nn.Conv1d(3 * channels, bottleneck, 1), nn.ReLU(), nn.BatchNorm1d(bottleneck),
                                       nn.Tanh(), nn.Conv1d(bottleneck, channels, 1))

    def _weighted_stats(self, x, w):
        mu = (w * x).sum(2)
        return mu, ((w * (x - mu.unsqueeze(2)) ** 2).sum(2).clamp(min=self.variance_floor)).sqrt()

    def forward(self, x):
        if self.variance_floor is not None:
            t = x.shape[2]
            mean, std = self._weighted_stats(x, torch.full_like(x[:1, :1], 1.0 / t))
            context = torch.cat([x, mean.unsqueeze(2).expand(-1, -1, t), std.unsqueeze(2).expand(-1, -1, t)], 1)
            return torch.cat(self._weighted_stats(x, torch.softmax(self.attention(context), dim=2)), 1)
        t = x.shape[2]
        mean = x.mean(2, keepdim=True).expand(-1, -1, t)
        std = x.var(2, keepdim=True, unbiased=False).clamp(min=1e-5).sqrt().expand(-1, -1, t)
        w = torch.softmax(self.attention(torch.cat([x, mean, std], 1)), dim=2)
        mu = (w * x).sum(2)
        sigma = ((w * x * x).sum(2) - mu * mu).clamp(min=1e-5).sqrt()
        return torch.cat([mu, sigma], 1)


class EcapaTDNN(nn.Module):
    def __init__(self, n_mels: int = 80, channels: int = 512, mfa: int = 1536, embed_dim: int = 192,
                 scale: int = 8, se_bottleneck: int = 128, attention_bottleneck: int = 128, variant: str = "paper"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"ecapatdnn.variant {variant!r}: one of {', '.join(VARIANTS)}")
        self.config = {"n_mels": n_mels, "channels": channels, "mfa": mfa, "embed_dim": embed_dim, "scale": scale,
                       "se_bottleneck": se_bottleneck, "attention_bottleneck": attention_bottleneck}
        if variant != "paper":                 # the paper variant's config (and checkpoints' records) unchanged
            self.config["variant"] = variant
        sb = variant == "speechbrain"
        pad = "reflect" if sb else "zeros"
        self.stem = _cbr(n_mels, channels, 5, 1, pad)
        self.blocks = nn.ModuleList([SERes2Block(channels, 3, d, scale, se_bottleneck, pad) for d in (2, 3, 4)])
        self.mfa = _cbr(3 * channels, mfa) if sb else nn.Sequential(nn.Conv1d(3 * channels, mfa, 1), nn.ReLU())
        self.pool = AttentiveStatsPool(mfa, attention_bottleneck, 1e-12 if sb else None)
        self.pool_bn = nn.BatchNorm1d(2 * mfa)
        self.embed = nn.Linear(2 * mfa, embed_dim)
        self.embed_bn = nn.Identity() if sb else nn.BatchNorm1d(embed_dim)

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
    channels, mfa = cfg["channels"], cfg["mfa"]
    # the published bottlenecks are 128; a narrower network keeps them below its width
    return EcapaTDNN(n_mels=cfg["n_mels"], channels=channels, mfa=mfa, embed_dim=cfg["embed_dim"],
                     scale=cfg["scale"], se_bottleneck=min(128, channels // 2),
                     attention_bottleneck=min(128, mfa // 2), variant=str(cfg.get("variant", "paper")))


# speechbrain's TDNNBlock is conv.conv (its Conv1d wraps torch's) -> ReLU -> norm.norm (BatchNorm1d
# wrapper): index 0 and 2 of this module's conv/ReLU/BN Sequentials.
_SB_UNIT = {"conv.conv": "0", "norm.norm": "2"}
_SB_BLOCK = {"tdnn1": "conv_in", "tdnn2": "conv_out"}
_SB_SE = {"conv1.conv": "se.net.0", "conv2.conv": "se.net.2"}


def from_speechbrain(state: dict) -> dict:
    """speechbrain ECAPA_TDNN names -> this module's (speechbrain variant). blocks.0 (the k=5 TDNN)
    is stem; blocks.1-3 (SERes2NetBlocks) are blocks.0-2 with tdnn1/tdnn2 -> conv_in/conv_out,
    res2net_block.blocks.J -> res2.J, se_block.conv1/conv2 -> se.net.0/2; mfa and asp.tdnn are
    conv/ReLU/BN units, asp.conv the attention's last conv (pool.attention.4), asp_bn -> pool_bn,
    fc (a 1x1 conv) -> embed (Linear: its kernel axis of length 1 dropped). Keys it does not know
    (e.g. a shortcut conv, which the published widths never have) pass unchanged and fail the check."""
    unit = r"(conv\.conv|norm\.norm)\.(\w+)$"
    rules = [
        (rf"blocks\.0\.{unit}", lambda m: f"stem.{_SB_UNIT[m[1]]}.{m[2]}"),
        (rf"blocks\.(\d+)\.(tdnn1|tdnn2)\.{unit}",
         lambda m: f"blocks.{int(m[1]) - 1}.{_SB_BLOCK[m[2]]}.{_SB_UNIT[m[3]]}.{m[4]}"),
        (rf"blocks\.(\d+)\.res2net_block\.blocks\.(\d+)\.{unit}",
         lambda m: f"blocks.{int(m[1]) - 1}.res2.{m[2]}.{_SB_UNIT[m[3]]}.{m[4]}"),
        (r"blocks\.(\d+)\.se_block\.(conv1\.conv|conv2\.conv)\.(\w+)$",
         lambda m: f"blocks.{int(m[1]) - 1}.{_SB_SE[m[2]]}.{m[3]}"),
        (rf"mfa\.{unit}", lambda m: f"mfa.{_SB_UNIT[m[1]]}.{m[2]}"),
        (rf"asp\.tdnn\.{unit}", lambda m: f"pool.attention.{_SB_UNIT[m[1]]}.{m[2]}"),
        (r"asp\.conv\.conv\.(\w+)$", lambda m: f"pool.attention.4.{m[1]}"),
        (r"asp_bn\.norm\.(\w+)$", lambda m: f"pool_bn.{m[1]}"),
        (r"fc\.conv\.(\w+)$", lambda m: f"embed.{m[1]}"),
    ]
    out = {}
    for key, value in state.items():
        for pattern, name in rules:
            m = re.fullmatch(pattern, key)
            if m:
                key = name(m)
                break
        if key == "embed.weight" and value.dim() == 3:
            if value.shape[2] != 1:
                raise ValueError(f"fc.conv.weight {tuple(value.shape)}: a 1x1 convolution expected")
            value = value[:, :, 0]
        out[key] = value
    for key in [k for k in out if k.endswith(".running_mean")]:     # a file saved without the BN step counters
        out.setdefault(key[:-len("running_mean")] + "num_batches_tracked", torch.tensor(0))
    return out


SPEECHBRAIN = Layout(
    "speechbrain ECAPA_TDNN", "blocks.0.conv.conv.weight", from_speechbrain,
    "embedding_model.ckpt of speechbrain/spkrec-ecapa-voxceleb with ecapatdnn.variant: speechbrain, n_mels: 80, "
    "channels: 1024, mfa: 3072, embed_dim: 192, scale: 8 (a 512-channel speechbrain model: channels 512, mfa 1536)")


def load_ecapa_weights(model: EcapaTDNN, path) -> None:
    """Load a local state dict (torch.load weights_only=True) into `model`, or say what does not fit:
    this module's own names, or speechbrain's published ECAPA_TDNN (SPEECHBRAIN)."""
    load_checked(model, path, EcapaWeightsError, "ECAPA-TDNN", "ecapatdnn",
                 "variant / channels / mfa / embed_dim / scale", (SPEECHBRAIN,))
