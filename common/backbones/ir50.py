"""IR-50: the ArcFace-style "improved residual" ResNet-50 of face.evoLVe, Zhang et al.'s frame encoder.

Zhang et al. 2021 (Sec. 3.1) encode each 40 px face crop with an IR-50 pre-trained on MS-Celeb-1M and
fine-tuned on FER+. Their code (sucv/ABAW2, model/arcface_model.py + model/model.py) uses face.evoLVe's
definition, which this module follows name for name, so the published state dicts load as they are:
  input_layer   Conv3x3 (stride 1, no bias) - BN - PReLU
  body.N        one unit per block, stages of [3, 4, 14, 3] units at widths 64, 128, 256, 512; a unit is
                res_layer = BN - Conv3x3 - PReLU - Conv3x3 (the stage's stride on a stage's first unit) - BN
                plus shortcut_layer = a 1x1 max pool with that stride when the width is kept (no weights),
                else Conv1x1 (stride) - BN; the sum is the unit's output (no activation after it)
  output_layer  BN2d - Dropout - Flatten - Linear(512 * s * s, 512) - BN1d, s the last map's side
Strides: face.evoLVe's IR-50 starts every stage with stride 2 (112 px faces -> 7x7); Zhang's code sets
the first stage's stride to 1 (`first_stride`), so a 40 px crop ends as a 5x5 map and the FER+ network's
output layer is Linear(512 * 5 * 5, 512). The forward here returns the BN1d embedding (512-d, Zhang's
frame feature); face.evoLVe's Backbone also L2-normalises it for face verification, which Zhang's
FER+ model (`my_res50`: backbone, then `logits`) does not use.

Published files read (`PUBLISHED`): Zhang's FER+ checkpoint (my_res50's state dict: `backbone.` +
these names, `logits.*` = the 8 FER+ classes, dropped) and face.evoLVe's IR-50 backbone state dicts
(these names, e.g. `backbone_ir50_ms1m_epoch120.pth`). Why no library: no maintained package defines
IR-50; tests/test_published_weights.py holds the key names and shapes against face.evoLVe's
definition and runs a forward written from it.
"""
from __future__ import annotations

from torch import nn

from common.weights import Layout


class IRUnit(nn.Module):
    """face.evoLVe's bottleneck_IR (despite the name, two 3x3 convolutions)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.shortcut_layer = (nn.MaxPool2d(1, stride) if c_in == c_out else
                               nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.PReLU(c_out),
            nn.Conv2d(c_out, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class IRNet(nn.Module):
    """(B, 3, crop, crop) -> (B, embed_dim). IR-50: layers (3, 4, 14, 3), width 64, embed_dim 512.

    `layer_groups()` lists the input layer, the four stages and the output layer, so Zhang's
    schedule can release them one at a time from the top, as for common/backbones/resnet.ResNet.
    """

    def __init__(self, layers=(3, 4, 14, 3), width: int = 64, embed_dim: int = 512, dropout: float = 0.4,
                 crop: int = 40, first_stride: int = 1):
        super().__init__()
        self.config = {"block": "ir", "layers": [int(n) for n in layers], "width": int(width),
                       "embed_dim": int(embed_dim), "crop": int(crop), "first_stride": int(first_stride)}
        self.input_layer = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                         nn.PReLU(width))
        units, self._stage_ends, c, size = [], [], int(width), int(crop)
        for i, n in enumerate(self.config["layers"]):
            c_out, stride = int(width) * 2 ** i, (int(first_stride) if i == 0 else 2)
            for j in range(n):
                units.append(IRUnit(c, c_out, stride if j == 0 else 1))
                c = c_out
            size = (size - 1) // stride + 1                  # 3x3 conv, padding 1
            self._stage_ends.append(len(units))
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(c), nn.Dropout(dropout), nn.Flatten(),
                                          nn.Linear(c * size * size, embed_dim), nn.BatchNorm1d(embed_dim))
        self.embed_dim = int(embed_dim)

    def layer_groups(self) -> list:
        starts = [0] + self._stage_ends[:-1]
        stages = [nn.Sequential(*self.body[a:b]) for a, b in zip(starts, self._stage_ends)]
        return [self.input_layer, *stages, self.output_layer]

    def forward(self, x):
        return self.output_layer(self.body(self.input_layer(x)))


def from_abaw2_fer(state: dict) -> dict:
    """Zhang's FER+ checkpoint (sucv/ABAW2 my_res50): `backbone.<face.evoLVe name>` and the FER+ logits."""
    return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}


_FITS = "block ir, layers [3, 4, 14, 3], width 64, embed_dim 512"
PUBLISHED = (
    Layout("Zhang et al.'s IR-50 FER+ checkpoint (sucv/ABAW2 my_res50)", "backbone.input_layer.0.weight",
           from_abaw2_fer,
           f"the ABAW2 FER+ backbone .pth with {_FITS}, crop 40, first_stride 1 "
           "(its output layer is Linear(512 * 5 * 5))"),
    Layout("face.evoLVe IR-50 backbone", "input_layer.0.weight", dict,
           f"backbone_ir50_ms1m_epoch120.pth / backbone_ir50_asia.pth with {_FITS}, crop 112, "
           "first_stride 2 (7x7 map)"),
)


def build_ir50(cfg: dict) -> IRNet:
    """From the params.yaml `visual_encoder` section
    (block ir: layers, width, embed_dim, dropout, crop, first_stride)."""
    return IRNet(cfg["layers"], cfg["width"], cfg["embed_dim"], cfg["dropout"], cfg["crop"],
                 int(cfg.get("first_stride", 2)))

