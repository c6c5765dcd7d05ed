"""Jeong et al. 2022 Fig. 1: frozen FER and SoundNet features -> LSTM / concat -> trunk -> three task heads.

    image: (B, N_img, 512) FER vectors of the past T_img s -> LSTM -> last hidden state
    audio: (B, 1000) SoundNet vector of the audio before the prediction time
    concat -> feature extractor: Dense(1024) - BN - swish - dropout 0.5 - Dense(512) - BN - swish - dropout 0.5
           -> per task: Dense(256) - BN - swish - Dense(128) - BN - swish - output
              VA: 2 with tanh (range [-1, 1]); EXPR: 8 logits; AU: 12 logits (sigmoid in the losses / metrics)
`inputs` picks the Table 2 ablation: "I" (image only), "A" (audio only) or "I+A" (both).
"""
from __future__ import annotations

import torch
from torch import nn

INPUTS = ("I", "A", "I+A")
OUTPUTS = {"va": 2, "expr": 8, "au": 12}


def dense(c_in: int, c_out: int, dropout: float = 0.0) -> nn.Sequential:
    """Dense - batch norm - swish (- dropout): one layer of Sec. 5's feature extractor / task networks."""
    layers = [nn.Linear(c_in, c_out), nn.BatchNorm1d(c_out), nn.SiLU()]   # SiLU = swish
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class JeongNet(nn.Module):
    def __init__(self, inputs: str = "I+A", img_dim: int = 512, aud_dim: int = 1000, lstm: int = 512,
                 trunk=(1024, 512), heads=(256, 128), dropout: float = 0.5):
        super().__init__()
        if inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {INPUTS}, got {inputs!r}")
        self.inputs = inputs
        self.use_image, self.use_audio = "I" in inputs, "A" in inputs
        width = 0
        if self.use_image:
            self.lstm = nn.LSTM(img_dim, lstm, batch_first=True)      # temporal features of the N_img frames
            width += lstm
        if self.use_audio:
            width += aud_dim
        layers = []
        for units in trunk:
            layers.append(dense(width, units, dropout))
            width = units
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleDict()
        for task, n_out in OUTPUTS.items():
            head, w = [], width
            for units in heads:
                head.append(dense(w, units))
                w = units
            head.append(nn.Linear(w, n_out))
            self.heads[task] = nn.Sequential(*head)

    def forward(self, img: torch.Tensor, aud: torch.Tensor) -> dict:
        parts = []
        if self.use_image:
            _, (h, _) = self.lstm(img)
            parts.append(h[-1])
        if self.use_audio:
            parts.append(aud)
        z = self.trunk(torch.cat(parts, -1))
        return {"va": torch.tanh(self.heads["va"](z)), "expr": self.heads["expr"](z), "au": self.heads["au"](z)}
