import torch

from common.backbones.resnet import ResNet
from common.backbones.tcn import TCN


def test_tcn_is_causal_and_keeps_time():
    torch.manual_seed(0)
    tcn = TCN(8, channels=(16, 16, 16, 16), kernel=5).eval()
    x = torch.randn(2, 100, 8)
    y = tcn(x)
    assert y.shape == (2, 100, 16)
    x2 = x.clone()
    x2[:, 60:] += 1.0                        # change only the future
    y2 = tcn(x2)
    assert torch.allclose(y[:, :60], y2[:, :60])
    assert not torch.allclose(y[:, 60:], y2[:, 60:])
    # Zhang's 128x4, kernel 5 TCN sees 1 + 2*4*(1+2+4+8) = 121 frames of history.
    assert TCN(512).receptive_field() == 121


def test_resnet_sizes_and_layer_groups():
    r50 = ResNet("bottleneck", (3, 4, 6, 3), 64, 512)
    assert 23e6 < sum(p.numel() for p in r50.parameters()) < 27e6      # ResNet-50 scale
    small = ResNet("basic", (1, 1, 1, 1), 16, 128).eval()
    for size in (40, 48, 112):
        assert small(torch.randn(2, 3, size, size)).shape == (2, 128)
    groups = small.layer_groups()
    assert len(groups) == 6 and sum(p.numel() for g in groups for p in g.parameters()) == \
        sum(p.numel() for p in small.parameters())
