"""Liu, Sun et al. 2023, Sec. 3.2.3-3.4: fusion, four temporal encoders, regression heads.

Input: (B, T, D) per-frame features with T a multiple of the segment length l (150); the video
is split into T / l consecutive non-overlapping segments s_1, s_2, ... (Sec. 3.3, stride p = l).

* Transformer (Eq. 5): every segment is encoded on its own, with sinusoidal positions added after
  the input layer (the paper is silent on positions; the team's code adds this table, ledger:
  positions).
* LSTM / GRU (Eqs. 3-4): the segments are fed one after another and the last hidden state
  h_{i-1} of segment s_{i-1} initialises segment s_i; h_0 = 0. Gradients do not flow from s_i
  back into s_{i-1} (the state is detached: truncated back-propagation, which is what a
  segment-at-a-time GPU loop gives; the paper does not say).
  `method: released` builds the code's GRU instead: bidirectional, hidden dim / 2 (512 at the
  code's affine 1024), every segment from a zero state (ledger: gru). The code has no LSTM.
* Transformer-LSTM (Eqs. 6-7): the Transformer output of each segment feeds a stateful LSTM.

Fusion (Sec. 3.2.3): early (Eq. 1) concatenates the visual and audio features and maps them
with one affine layer before one encoder; late (Eq. 2) runs one encoder per modality and
concatenates their outputs. Eq. 1 has a bias b_f; `method: released` drops it in front of a
Transformer, as the code's BERT, and keeps it in front of its GRU (ledger: input_bias).
Heads (Sec. 3.4 + 4.2): one MLP per task, hidden {512, 256}, ReLU, dropout 0.1, tanh output, as
the code's Regressor (ledger: heads); Eq. 8 is its last linear layer.
"""
from __future__ import annotations

import math

import torch
from torch import nn

ENCODERS = ("transformer", "lstm", "gru", "transformer_lstm")
FUSIONS = ("early", "late")
# The input layer's bias b_f (Eq. 1). The code's BERT builds nn.Linear(input_dim, affine_dim, bias=False)
# (core/model/bert_model.py:82), its BiGRUEncoder a Linear with bias (core/model/gru_model.py:24); it has
# no LSTM, so an LSTM keeps Eq. 1's bias under either method (ledger: input_bias).
INPUT_BIAS = {"paper": lambda encoder: True, "released": lambda encoder: encoder != "transformer"}


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table


class TemporalEncoder(nn.Module):
    """(B, T, d) -> (B, T, d) over consecutive segments of `segment` frames."""

    def __init__(self, kind: str, dim: int, layers: int, heads: int, dropout: float, segment: int,
                 method: str = "paper"):
        super().__init__()
        if kind not in ENCODERS:
            raise ValueError(f"liu2023 encoder must be one of {ENCODERS}, got {kind!r}")
        self.kind, self.segment = kind, segment
        # Eq. 4 carries the GRU state across segments; the code's BiGRUEncoder.forward(x, hp=None) is
        # called without a state (core/solver/base_solver.py:80), so every segment starts at zero.
        self.carry_state = not (kind == "gru" and method == "released")
        self.transformer = self.recurrent = None
        if kind in ("transformer", "transformer_lstm"):
            layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim, dropout=dropout,
                                               batch_first=True)
            self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.register_buffer("positions", sinusoidal_positions(segment, dim), persistent=False)
        if kind == "gru" and method == "released":
            # The code's GRU (core/model/gru_model.py:29-35, config/va_gru.yaml:44-49; ledger: gru):
            # bidirectional, hidden 512 beside an affine 1024, so both directions together give dim.
            self.recurrent = nn.GRU(dim, dim // 2, layers, batch_first=True, bidirectional=True,
                                    dropout=0.0 if layers == 1 else dropout)
        elif kind in ("lstm", "gru", "transformer_lstm"):
            rnn = nn.GRU if kind == "gru" else nn.LSTM
            # the paired recurrent encoder of Transformer-LSTM is one layer on top of the 4 TRM layers
            self.recurrent = rnn(dim, dim, 1 if kind == "transformer_lstm" else layers, batch_first=True,
                                 dropout=0.0 if kind == "transformer_lstm" or layers == 1 else dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        if t % self.segment:
            raise ValueError(f"sequence length {t} is not a multiple of the segment length {self.segment}")
        if self.transformer is not None:                              # Eq. 5 / Eq. 6, per segment
            seg = x.reshape(b * (t // self.segment), self.segment, d) + self.positions
            x = self.transformer(seg).reshape(b, t, d)
        if self.recurrent is None:
            return x
        if not self.carry_state:                                      # each segment from h_0 = 0
            return self.recurrent(x.reshape(b * (t // self.segment), self.segment, d))[0].reshape(b, t, -1)
        outputs, state = [], None                                     # h_0 = 0
        for s in range(0, t, self.segment):
            g, state = self.recurrent(x[:, s:s + self.segment], state)  # Eqs. 3, 4, 7
            outputs.append(g)
            state = tuple(h.detach() for h in state) if isinstance(state, tuple) else state.detach()
        return torch.cat(outputs, 1)


class Head(nn.Module):
    """d -> 512 -> 256 -> 1, ReLU, dropout, tanh (Sec. 4.2 heads; Eq. 8 the last layer; the code's
    Regressor, core/model/bert_model.py:38-55, ledger: heads)."""

    def __init__(self, dim: int, hidden=(512, 256), dropout: float = 0.1):
        super().__init__()
        layers, last = [], dim
        for h in hidden:
            layers += [nn.Linear(last, h), nn.ReLU(), nn.Dropout(dropout)]
            last = h
        layers.append(nn.Linear(last, 1))                             # Eq. 8: W_p g_i + b_p
        self.net = nn.Sequential(*layers)

    def forward(self, g):
        return torch.tanh(self.net(g)).squeeze(-1)


class LiuModel(nn.Module):
    """features {"visual": (B, T, Dv), "audio": (B, T, Da)} -> (B, T, 2) valence, arousal."""

    def __init__(self, visual_dim: int, audio_dim: int, encoder: str = "transformer", fusion: str = "early",
                 dim: int = 1024, layers: int = 4, heads: int = 4, dropout: float = 0.3, segment: int = 150,
                 head_hidden=(512, 256), head_dropout: float = 0.1, method: str = "paper"):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"liu2023 fusion must be one of {FUSIONS}, got {fusion!r}")
        if fusion == "late" and not (visual_dim and audio_dim):
            raise ValueError("late fusion (Eq. 2) needs both visual and audio features")
        self.fusion, self.visual_dim, self.audio_dim = fusion, visual_dim, audio_dim

        def encoder_():
            return TemporalEncoder(encoder, dim, layers, heads, dropout, segment, method)
        bias = INPUT_BIAS[method](encoder)
        if fusion == "early":
            self.affine = nn.Linear(visual_dim + audio_dim, dim, bias=bias)     # Eq. 1: W_f [f^v; f^a] + b_f
            self.encoder = encoder_()
            out = dim
        else:
            self.affine_v, self.affine_a = nn.Linear(visual_dim, dim, bias=bias), nn.Linear(audio_dim, dim, bias=bias)
            self.encoder_v, self.encoder_a = encoder_(), encoder_()    # E_v, E_a of Eq. 2
            out = 2 * dim
        self.valence = Head(out, head_hidden, head_dropout)
        self.arousal = Head(out, head_hidden, head_dropout)

    def forward(self, x: dict) -> torch.Tensor:
        parts = [x[m] for m, d in (("visual", self.visual_dim), ("audio", self.audio_dim)) if d]
        if self.fusion == "early":
            g = self.encoder(self.affine(torch.cat(parts, -1)))        # Eq. 1, then Eqs. 3-7
        else:
            g = torch.cat([self.encoder_v(self.affine_v(x["visual"])),  # Eq. 2
                           self.encoder_a(self.affine_a(x["audio"]))], -1)
        return torch.stack([self.valence(g), self.arousal(g)], -1)


def build_model(cfg: dict, visual_dim: int, audio_dim: int, encoder: str, fusion: str) -> LiuModel:
    """From the params.yaml `liu2023` section."""
    return LiuModel(visual_dim, audio_dim, encoder, fusion, dim=cfg["dim"], layers=cfg["layers"],
                    heads=cfg["heads"], dropout=cfg["dropout"], segment=cfg["segment"],
                    head_hidden=tuple(cfg["head_hidden"]), head_dropout=cfg["head_dropout"],
                    method=cfg.get("method", "paper"))
