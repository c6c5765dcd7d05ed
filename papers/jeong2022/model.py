"""Jeong et al. 2022 Fig. 1: frozen FER and SoundNet features -> LSTM / concat -> trunk -> three task heads.

    image: (B, N_img, 512) FER vectors of the past T_img s -> LSTM -> last hidden state
    audio: (B, 1000) SoundNet vector of the audio before the prediction time
    concat -> feature extractor: Dense(1024) - BN - swish - dropout 0.5 - Dense(512) - BN - swish - dropout 0.5
           -> per task: Dense(256) - BN - swish - Dense(128) - BN - swish - output
              VA: 2 with tanh (range [-1, 1]); EXPR: 8 logits; AU: 12 logits (sigmoid in the losses / metrics)
`inputs` picks the Table 2 ablation: "I" (image only), "A" (audio only) or "I+A" (both).

`ARCHITECTURE[method]` holds what `method: paper | released` changes here (papers/jeong2022/ledger.yaml):
  lstm_activation  "tanh", the standard LSTM cell the paper names; "relu", Keras' LSTM(activation='relu')
                   of the released code (ledger: lstm_activation)
  discriminator    () none, as in the paper; (64, 32) the released code's task discriminator behind a
                   gradient reversal layer, output "domain" = 3 logits (VA, EXPR, AU) (ledger: task_discriminator)
Where the paper is silent both methods follow the released code: BatchNorm with Keras' eps 1e-3 and
momentum 0.99 (ledger: batchnorm_constants) and Keras' initialisers (`keras_init`, ledger: initialisation).
"""
from __future__ import annotations

import torch
from torch import nn

INPUTS = ("I", "A", "I+A")
OUTPUTS = {"va": 2, "expr": 8, "au": 12}
DOMAINS = ("va", "expr", "au")                # utils.get_domain_label's one-hot order
ARCHITECTURE = {
    "paper": {"lstm_activation": "tanh", "discriminator": ()},
    "released": {"lstm_activation": "relu", "discriminator": (64, 32)},     # config.py:21
}
# Keras' BatchNormalization defaults (epsilon 1e-3, momentum 0.99 = PyTorch momentum 0.01)
BN_EPS, BN_MOMENTUM = 1e-3, 0.01


class KerasBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d with Keras' constants and its moving-variance update: Keras averages the *biased* batch
    variance into moving_variance (tf.nn.moments; PyTorch averages the unbiased one), n/(n - 1) apart
    (ledger: batchnorm_constants). Normalisation itself is the same: batch statistics in training."""

    def __init__(self, n: int):
        super().__init__(n, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        if x.shape[0] < 2:
            raise ValueError(f"batch norm in training needs at least 2 rows, got {x.shape[0]}")
        with torch.no_grad():
            mean, var = x.mean(0), x.var(0, unbiased=False)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(var.to(self.running_var.dtype), self.momentum)
            self.num_batches_tracked += 1
        return nn.functional.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


def dense(c_in: int, c_out: int, dropout: float = 0.0) -> nn.Sequential:
    """Dense - batch norm - swish (- dropout): one layer of Sec. 5's feature extractor / task networks."""
    layers = [nn.Linear(c_in, c_out), KerasBatchNorm(c_out), nn.SiLU()]          # SiLU = swish
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class GradientReversal(torch.autograd.Function):
    """Identity forward, negated gradient backward (the released models.grad_reverse, factor 1)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


class ReverseGradient(nn.Module):
    def forward(self, x):
        return GradientReversal.apply(x)


def relu_lstm_last(lstm: nn.LSTM, x: torch.Tensor) -> torch.Tensor:
    """Last hidden state of a one-layer LSTM whose cell input and output use ReLU instead of tanh:
    Keras' LSTM(activation='relu') (gates i, f, c, o as PyTorch's i, f, g, o; recurrent activation sigmoid)."""
    h = x.new_zeros(x.shape[0], lstm.hidden_size)
    c = x.new_zeros(x.shape[0], lstm.hidden_size)
    w_ih, w_hh, b = lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0
    for t in range(x.shape[1]):
        i, f, g, o = (x[:, t] @ w_ih.T + h @ w_hh.T + b).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.relu(g)
        h = torch.sigmoid(o) * torch.relu(c)
    return h


class JeongNet(nn.Module):
    def __init__(self, inputs: str = "I+A", img_dim: int = 512, aud_dim: int = 1000, lstm: int = 512,
                 trunk=(1024, 512), heads=(256, 128), dropout: float = 0.5, lstm_activation: str = "tanh",
                 discriminator=()):
        super().__init__()
        if inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {INPUTS}, got {inputs!r}")
        if lstm_activation not in ("tanh", "relu"):
            raise ValueError(f"lstm_activation must be 'tanh' or 'relu', got {lstm_activation!r}")
        self.inputs, self.lstm_activation = inputs, lstm_activation
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
        self.domain = None
        if discriminator:          # models.py:55-59: reversal -> dense modules with dropout -> Dense(3)
            block, w = [ReverseGradient()], width
            for units in discriminator:
                block.append(dense(w, units, dropout))
                w = units
            block.append(nn.Linear(w, len(DOMAINS)))
            self.domain = nn.Sequential(*block)

    def forward(self, img: torch.Tensor, aud: torch.Tensor) -> dict:
        parts = []
        if self.use_image:
            if self.lstm_activation == "relu":
                parts.append(relu_lstm_last(self.lstm, img))
            else:
                _, (h, _) = self.lstm(img)
                parts.append(h[-1])
        if self.use_audio:
            parts.append(aud)
        z = self.trunk(torch.cat(parts, -1))
        out = {"va": torch.tanh(self.heads["va"](z)), "expr": self.heads["expr"](z), "au": self.heads["au"](z)}
        if self.domain is not None:
            out["domain"] = self.domain(z)
        return out


@torch.no_grad()
def keras_init(model: nn.Module) -> nn.Module:
    """Keras' default initialisers, which the released model gets (the paper names none):
    Dense glorot_uniform with zero bias; LSTM kernel glorot_uniform over (input, 4 units), recurrent
    kernel orthogonal, bias zero but 1 for the forget gate (unit_forget_bias)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LSTM):
            units = m.hidden_size
            w = torch.empty(m.weight_ih_l0.shape[1], 4 * units)
            nn.init.xavier_uniform_(w)                     # glorot over Keras' (input, 4 units) kernel
            m.weight_ih_l0.copy_(w.T)
            rec = torch.empty(4 * units, units)            # Keras: orthogonal (units, 4 units), transposed here
            nn.init.orthogonal_(rec)
            m.weight_hh_l0.copy_(rec)
            m.bias_ih_l0.zero_()
            m.bias_hh_l0.zero_()
            m.bias_ih_l0[units:2 * units] = 1.0            # forget gate
    return model
