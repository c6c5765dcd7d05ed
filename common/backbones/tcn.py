"""Temporal convolutional network (Bai, Kolter, Koltun 2018), as Zhang et al. use it (Sec. 3.1-3.2).

Causal: each layer pads (kernel - 1) * dilation steps on the left only, so the output at time t
sees inputs up to t. Dilations double per layer (1, 2, 4, 8 for four layers), weight
normalisation on every convolution, dropout 0.1, a residual connection per block.
"""
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class TemporalBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.left_pad = (kernel - 1) * dilation
        self.conv1 = weight_norm(nn.Conv1d(c_in, c_out, kernel, dilation=dilation))
        self.conv2 = weight_norm(nn.Conv1d(c_out, c_out, kernel, dilation=dilation))
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):                         # x: (batch, channels, time)
        pad = lambda h: nn.functional.pad(h, (self.left_pad, 0))  # noqa: E731  (causal)
        h = self.drop(torch.relu(self.conv1(pad(x))))
        h = self.drop(torch.relu(self.conv2(pad(h))))
        return torch.relu(h + self.skip(x))


class TCN(nn.Module):
    """(batch, time, features) -> (batch, time, channels[-1])."""

    def __init__(self, in_dim: int, channels=(128, 128, 128, 128), kernel: int = 5, dropout: float = 0.1):
        super().__init__()
        dims = (in_dim, *channels)
        self.blocks = nn.Sequential(*[TemporalBlock(dims[i], dims[i + 1], kernel, 2 ** i, dropout)
                                      for i in range(len(channels))])
        self.out_dim = channels[-1]

    def receptive_field(self) -> int:
        """Frames of history one output sees: two convolutions per block, dilation 2^i."""
        return 1 + sum(2 * block.left_pad for block in self.blocks)

    def forward(self, x):
        return self.blocks(x.transpose(1, 2)).transpose(1, 2)
