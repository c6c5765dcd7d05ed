"""Zhang et al. 2021, Sec. 3: visual block, aural block, leader-follower attentive fusion.

Shapes: every branch takes (B, T, dim) and the models return one value per frame, (B, T):
Zhang trains separate valence and arousal models, so there is one output per model.

    visual (B,T,512) -> TCN 128x4 -> (B,T,128) ----------------------------- leader ---+
    mfcc   (B,T,39)  -> TCN 32x4  -> (B,T,32)  --+                                    |
    vggish (B,T,128) -> TCN 32x4  -> (B,T,32)  --+- LeaderFollowerFusion (B,T,96) --+  |
    visual 128 ----------------------------------+                                 cat -> 224 -> linear -> 1

Reading of Eq. 1: "(softmax(QK^T / sqrt(d_K)) + 1) V" adds the identity, i.e. a residual
softmax(.) V + V, which is what the released code adds (ledger: fusion_residual). Read literally
as an all-ones matrix, "+ 1" would add the sum of all three values to every row instead.
"Normalized" (Sec. 3.3) is a LayerNorm over the 3 x 32 = 96 attention feature.

Two methods (params `zhang2021.method`, chosen once in `build_model`):
* paper: the TCN of Bai et al. (ReLU, per-entry dropout) and `LeaderFollowerFusion`, three
  independent linear maps Q_i, K_i, V_i of each branch's TCN output (Sec. 3.3);
* released: the TCN variant "zhang_released" of common/backbones/tcn.py and `ReleasedFusion`,
  what sucv/ABAW2@71d40fb model/model.py:my_2d1ddy computes (ledger: fusion_audio_qv).

The visual input is either a cached 512-d frame embedding (default and smoke profiles: the
encoder is frozen, so its output is computed once) or, when a `frame_encoder` is given, face
crops (B, T, 3, H, W) encoded here so the encoder can be fine-tuned (paper profile, Sec. 4.4).
"""
import math

import torch
from torch import nn

from common.backbones.tcn import TCN

BRANCHES = ("visual", "mfcc", "vggish")         # leader first, then the two followers
MODALITIES = {"unimodal": ("visual",), "multimodal": BRANCHES}   # inputs of each Table 1 model


class LeaderFollowerFusion(nn.Module):
    """Sec. 3.3: per-branch Q, K, V maps to d_k, attention across modalities at each time step."""

    def __init__(self, in_dims=(128, 32, 32), d_k: int = 32):
        super().__init__()
        self.q = nn.ModuleList(nn.Linear(d, d_k) for d in in_dims)   # "three independent linear
        self.k = nn.ModuleList(nn.Linear(d, d_k) for d in in_dims)   #  layers" per branch i:
        self.v = nn.ModuleList(nn.Linear(d, d_k) for d in in_dims)   #  Q_i, K_i, V_i
        self.norm = nn.LayerNorm(d_k * len(in_dims))
        self.d_k = d_k

    def forward(self, feats):
        """feats: list of (B, T, in_dims[i]) -> (attention feature (B, T, M*d_k), scores (B, T, M, M))."""
        # Q = [Q_1, Q_2, Q_3], stacked on a modality axis: (B, T, M, d_k)
        q = torch.stack([f(x) for f, x in zip(self.q, feats)], dim=-2)
        k = torch.stack([f(x) for f, x in zip(self.k, feats)], dim=-2)
        v = torch.stack([f(x) for f, x in zip(self.v, feats)], dim=-2)
        scores = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.d_k), dim=-1)  # Eq. 1, (B,T,M,M)
        attention = scores @ v + v                                                    # Eq. 1, (S + I) V
        return self.norm(attention.flatten(-2)), scores                               # Sec. 3.3 "normalized"


class ReleasedFusion(LeaderFollowerFusion):
    """The fusion as the released code computes it (ledger: fusion_audio_qv, fusion_scores).

    sucv/ABAW2@71d40fb model/model.py:222-248: each branch has three linear maps; the visual
    branch's three take its TCN output, but the audio branches' Q and V maps take the output of
    their K map (x1 and x2 are overwritten by the K outputs at :223-224 before :226-232 read them),
    so their Q = W_q (W_k h + b_k) + b_q. The scores are softmax(K Q^T / sqrt(d_k)) over the last
    axis (:242-244), i.e. this class's `k` maps play the paper's queries; the residual adds V and
    a LayerNorm over the (3, d_k) block follows (:246-248). The code stacks (visual, VGGish, MFCC);
    attention over the modality axis is the same under a reordering, so branches keep the order
    of BRANCHES here and the fixture test maps the weights across.
    """

    def __init__(self, in_dims=(128, 32, 32), d_k: int = 32):
        super().__init__(in_dims, d_k)
        for i in range(1, len(in_dims)):          # audio Q_i, V_i read the d_k-wide K_i output
            self.q[i] = nn.Linear(d_k, d_k)
            self.v[i] = nn.Linear(d_k, d_k)

    def forward(self, feats):
        k = [f(x) for f, x in zip(self.k, feats)]
        # visual: Q, V from the TCN output; audio: Q, V from the branch's K output
        src = [feats[0]] + k[1:]
        q = torch.stack([f(x) for f, x in zip(self.q, src)], dim=-2)
        v = torch.stack([f(x) for f, x in zip(self.v, src)], dim=-2)
        k = torch.stack(k, dim=-2)
        scores = torch.softmax(k @ q.transpose(-1, -2) / math.sqrt(self.d_k), dim=-1)
        attention = scores @ v + v
        return self.norm(attention.flatten(-2)), scores


# method -> (TCN variant of common/backbones/tcn.py, fusion class); build_model reads it once
METHODS = {"paper": ("bai", LeaderFollowerFusion), "released": ("zhang_released", ReleasedFusion)}


def _encode_frames(encoder, x):
    """(B, T, 3, H, W) face crops -> (B, T, embed) with a per-frame 2-D CNN (Sec. 3.1)."""
    b, t = x.shape[:2]
    return encoder(x.flatten(0, 1)).view(b, t, -1)


class ZhangUnimodal(nn.Module):
    """Sec. 3.1 and 3.3 last line: visual block only, 128-d spatio-temporal feature -> linear -> 1."""

    def __init__(self, visual_dim=512, channels=(128, 128, 128, 128), kernel=5, dropout=0.1,
                 frame_encoder=None, method="paper"):
        super().__init__()
        self.frame_encoder = frame_encoder
        self.visual = TCN(visual_dim, channels, kernel, dropout, METHODS[method][0])
        self.head = nn.Linear(channels[-1], 1)

    def forward(self, x, return_attention=False):
        v = x["visual"] if self.frame_encoder is None else _encode_frames(self.frame_encoder, x["visual"])
        out = self.head(self.visual(v)).squeeze(-1)
        return (out, None) if return_attention else out


class ZhangMultimodal(nn.Module):
    """Fig. 1: visual TCN (leader) + MFCC and VGGish TCNs (followers), leader-follower fusion."""

    def __init__(self, dims=None, visual_channels=(128, 128, 128, 128), audio_channels=(32, 32, 32, 32),
                 kernel=5, dropout=0.1, d_k=32, frame_encoder=None, method="paper"):
        super().__init__()
        dims = dict(dims or {"visual": 512, "mfcc": 39, "vggish": 128})
        variant, fusion = METHODS[method]
        self.frame_encoder = frame_encoder
        self.tcn = nn.ModuleDict({
            "visual": TCN(dims["visual"], visual_channels, kernel, dropout, variant),     # Sec. 3.1
            "mfcc": TCN(dims["mfcc"], audio_channels, kernel, dropout, variant),          # Sec. 3.2
            "vggish": TCN(dims["vggish"], audio_channels, kernel, dropout, variant)})     # Sec. 3.2
        self.fusion = fusion((visual_channels[-1], audio_channels[-1], audio_channels[-1]), d_k)
        self.head = nn.Linear(visual_channels[-1] + len(BRANCHES) * d_k, 1)    # 128 + 96 = 224 -> 1

    def forward(self, x, return_attention=False):
        x = dict(x)
        if self.frame_encoder is not None:
            x["visual"] = _encode_frames(self.frame_encoder, x["visual"])
        feats = [self.tcn[name](x[name]) for name in BRANCHES]
        follower, scores = self.fusion(feats)
        out = self.head(torch.cat([feats[0], follower], dim=-1)).squeeze(-1)   # leader skip connection
        return (out, scores) if return_attention else out


def build_model(cfg: dict, modality: str, frame_encoder=None) -> nn.Module:
    """The model of one Table 1 row from the `zhang2021` params section (its `method` picks the
    TCN variant and the fusion)."""
    tcn, method = cfg["tcn"], cfg["method"]
    if method not in METHODS:
        raise ValueError(f"zhang2021.method must be one of {sorted(METHODS)}, got {method!r} (params.yaml)")
    if modality == "unimodal":
        return ZhangUnimodal(cfg["dims"]["visual"], tuple(tcn["visual"]), tcn["kernel"], tcn["dropout"],
                             frame_encoder, method)
    if modality == "multimodal":
        return ZhangMultimodal(cfg["dims"], tuple(tcn["visual"]), tuple(tcn["audio"]), tcn["kernel"],
                               tcn["dropout"], cfg["d_k"], frame_encoder, method)
    raise ValueError(f"modality must be 'unimodal' or 'multimodal', got {modality!r}")
