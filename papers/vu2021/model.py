"""Vu et al. 2021, Fig. 2: the multitask CNN (a) and the CNN-RNN (b).

(a) A ResNet spatial feature extractor, then one head per task (Sec. 3.3: "two head layers
    corresponding to the two outputs of the model"; Fig. 2a), each BN - FC -> 128 - ReLU - BN -
    dropout 0.5 - FC (`Head`, the released code's `Head` too (ledger: per_task_heads)): EXPR
    (7 logits; the ABAW3 class Other is not used) and VA (valence and arousal, each a
    distribution over `n_bins` bins on [-1, 1], Eq. 2; the prediction is the expectation over
    the bins, `papers/vu2021/losses.py: bins_expectation`). Each head's 128-d BN output is that
    task's feature for the GRU stage; `features` returns both, EXPR then VA (B, 2 x 128).
    The ResNet is `common.backbones.resnet.ResNet`: the default profile a narrow face ResNet
    with its own embedding layer (ledger: cnn_backbone); the paper profile He et al.'s ResNet-50
    (stem "caffe": 7x7/2 + max pool, the 2048-d pooled map), which reads the published
    resnet50_ferplus_dag weights from `vu2021.cnn.weights` (ledger: ferplus_weights).
(b) The per-task 128-d features of the frozen CNN for 32-frame sequences -> one bidirectional
    GRU per task (64 per direction) -> ReLU -> that task's output for every frame (Fig. 2b;
    ledger: per_task_grus).
"""
from __future__ import annotations

import torch
from torch import nn

from common.backbones.resnet import ResNet, load_ferplus_weights
from common.backbones.resnet_dag import MEAN as FERPLUS_MEAN

N_EXPR = 7


class Head(nn.Module):
    """One task's head (Fig. 2a): BN - FC -> hidden - ReLU - BN, then dropout - FC -> n_out."""

    def __init__(self, in_dim: int, hidden: int, n_out: int, dropout: float = 0.5):
        super().__init__()
        self.bn0 = nn.BatchNorm1d(in_dim)
        self.fc0 = nn.Linear(in_dim, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(hidden, n_out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(torch.relu(self.fc0(self.bn0(x))))

    def output(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc1(self.dropout(features))


class MultitaskCNN(nn.Module):
    """Faces (B, 3, H, W), normalised to [-1, 1] -> (EXPR logits (B, 7), VA bin logits (B, 2, n_bins))."""

    def __init__(self, block: str = "basic", layers=(1, 1, 1, 1), width: int = 8,
                 embed_dim: int = 256, feature_dim: int = 128, n_bins: int = 20,
                 dropout: float = 0.5, stem: str = "face"):
        super().__init__()
        self.backbone = ResNet(block, tuple(layers), width, embed_dim, dropout=0.0, stem=stem)
        d = self.backbone.embed_dim
        self.expr_head = Head(d, feature_dim, N_EXPR, dropout)
        self.va_head = Head(d, feature_dim, 2 * n_bins, dropout)
        self.n_bins, self.feature_dim = n_bins, feature_dim
        # The FER+ ResNet-50 was trained on 0-255 RGB minus its mean (resnet_dag.MEAN); the Caffe
        # stem reads that convention (the released code's input, ledger: ferplus_weights).
        self.ferplus_input = stem == "caffe"
        self.ferplus_mean = [float(m) for m in FERPLUS_MEAN]      # a list attribute: TorchScript-able

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if self.ferplus_input:
            mean = torch.tensor(self.ferplus_mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            return (x * 0.5 + 0.5) * 255.0 - mean
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2 * feature_dim): the EXPR head's 128-d feature, then the VA head's."""
        f = self.backbone(self._input(x))
        return torch.cat([self.expr_head.features(f), self.va_head.features(f)], -1)

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two outputs from `features` (also used on cached features at evaluation)."""
        e, v = features.split(self.feature_dim, -1)
        return self.expr_head.output(e), self.va_head.output(v).unflatten(-1, (2, self.n_bins))

    def forward(self, x):
        return self.heads(self.features(x))


class GRUHead(nn.Module):
    """One task's GRU (Fig. 2b): bidirectional GRU -> ReLU -> FC, on every frame."""

    def __init__(self, input_dim: int, hidden: int, n_out: int):
        super().__init__()
        self.gru = nn.GRU(input_dim, hidden, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, n_out)

    def forward(self, x):
        return self.fc(torch.relu(self.gru(x)[0]))


class MultitaskGRU(nn.Module):
    """Feature sequences (B, T, 2 D) -> (EXPR logits (B, T, 7), VA bin logits (B, T, 2, n_bins)).

    The EXPR GRU reads the EXPR head's features (the first D), the VA GRU the VA head's.
    """

    def __init__(self, input_dim: int = 128, hidden: int = 64, n_bins: int = 20, dropout: float = 0.0):
        super().__init__()
        # Dropout on the input features (0 = none, the released code has none: ledger
        # gru_input_dropout): the frozen CNN has seen the training frames, so their features are
        # cleaner than unseen ones and a GRU on them overfits within a few epochs.
        self.dropout = nn.Dropout(dropout)
        self.expr_gru = GRUHead(input_dim, hidden, N_EXPR)
        self.va_gru = GRUHead(input_dim, hidden, 2 * n_bins)
        self.n_bins, self.input_dim = n_bins, input_dim

    def forward(self, x):
        e, v = self.dropout(x).split(self.input_dim, -1)
        return self.expr_gru(e), self.va_gru(v).unflatten(-1, (2, self.n_bins))


def build_cnn(cfg: dict) -> MultitaskCNN:
    """The CNN from the `vu2021.cnn` section of params.yaml; `weights` (a resnet50_ferplus_dag
    file) fills the ResNet-50 with the published FER+ weights, "" leaves it randomly initialised."""
    model = MultitaskCNN(cfg["block"], cfg["layers"], cfg["width"], cfg["embed_dim"],
                         cfg["feature_dim"], cfg["n_bins"], cfg["dropout"], cfg.get("stem", "face"))
    if cfg.get("weights"):
        load_ferplus_weights(model.backbone, cfg["weights"])
    return model
