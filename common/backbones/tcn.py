"""Temporal convolutional network (Bai, Kolter, Koltun 2018), as Zhang et al. use it (Sec. 3.1-3.2).

Causal: each layer pads (kernel - 1) * dilation steps on the left only, so the output at time t
sees inputs up to t. Dilations double per layer (1, 2, 4, 8 for four layers), weight
normalisation on every convolution, dropout 0.1, a residual connection per block.

`variant` picks the block's activation and dropout:
* "bai" (default): ReLU and per-entry dropout, as in Bai et al.'s TCN, which Zhang et al. cite;
* "zhang_released": LeakyReLU(0.01) and channel-wise dropout (one draw per (sample, channel),
  held over all time steps), and a Xavier-uniform (gain sqrt 2) 1x1 skip convolution: what
  Zhang et al.'s released TCN computes (ledger: tcn_activation, tcn_dropout, tcn_skip_init).
  Its nn.Dropout2d on (B, C, T) zeroes whole channels in torch 1.6 and 2.9 alike; nn.Dropout1d
  does the same with the same random draws.
"""
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


VARIANTS = ("bai", "zhang_released")


class TemporalBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int, dropout: float, variant: str = "bai"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"TCN variant must be one of {VARIANTS}, got {variant!r}")
        released = variant == "zhang_released"
        self.left_pad = (kernel - 1) * dilation
        self.conv1 = weight_norm(nn.Conv1d(c_in, c_out, kernel, dilation=dilation))
        self.conv2 = weight_norm(nn.Conv1d(c_out, c_out, kernel, dilation=dilation))
        # two dropout modules, so that a channel-wise mask is drawn per convolution
        self.drop1 = nn.Dropout1d(dropout) if released else nn.Dropout(dropout)
        self.drop2 = nn.Dropout1d(dropout) if released else nn.Dropout(dropout)
        self.act = nn.LeakyReLU(0.01) if released else nn.ReLU()
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        if released and c_in != c_out:
            nn.init.xavier_uniform_(self.skip.weight, gain=2 ** 0.5)

    def forward(self, x):                         # x: (batch, channels, time)
        pad = lambda h: nn.functional.pad(h, (self.left_pad, 0))  # noqa: E731  (causal)
        h = self.drop1(self.act(self.conv1(pad(x))))
        h = self.drop2(self.act(self.conv2(pad(h))))
        return self.act(h + self.skip(x))


class TCN(nn.Module):
    """(batch, time, features) -> (batch, time, channels[-1])."""

    def __init__(self, in_dim: int, channels=(128, 128, 128, 128), kernel: int = 5, dropout: float = 0.1,
                 variant: str = "bai"):
        super().__init__()
        dims = (in_dim, *channels)
        self.blocks = nn.Sequential(*[TemporalBlock(dims[i], dims[i + 1], kernel, 2 ** i, dropout, variant)
                                      for i in range(len(channels))])
        self.out_dim = channels[-1]

    def receptive_field(self) -> int:
        """Frames of history one output sees: two convolutions per block, dilation 2^i."""
        return 1 + sum(2 * block.left_pad for block in self.blocks)

    def forward(self, x):
        return self.blocks(x.transpose(1, 2)).transpose(1, 2)
