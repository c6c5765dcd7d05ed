"""ResNet frame encoders in pure torch (He et al. 2016), sized by configuration.

The `paper` profile builds the papers' ResNet-50 (bottleneck blocks, 3-4-6-3); the default
profile a narrower, shallower one that trains on two CPU cores. The embedding head follows the
IR-50 output layer Zhang's code uses: BatchNorm - Dropout(0.4) - Flatten - Linear -> 512 -
BatchNorm1d, on a spatially pooled map so any input size works (48 px crops of 40, or 112 px).

stem="caffe" builds He et al.'s own ResNet instead, in the Caffe form of the published
resnet50_ferplus_dag conversion (common/backbones/resnet_dag.py): a 7x7 stride-2 stem with a
3x3 stride-2 max pool (ceil mode), stage strides 1-2-2-2 with the stride on a bottleneck's 1x1
reduce conv, and (embed_dim=0) the globally average-pooled map as the output, no embedding layer.
`load_ferplus_weights` copies that published file into it. The default stem="face" is unchanged.
"""
import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in, c, stride, stride_on_reduce: bool = False):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
        self.skip = _shortcut(c_in, c, stride)

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in, c, stride, stride_on_reduce: bool = False):
        super().__init__()
        out = c * 4
        s1, s3 = (stride, 1) if stride_on_reduce else (1, stride)     # Caffe: on the 1x1 reduce
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c, 1, s1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, s3, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, out, 1, bias=False), nn.BatchNorm2d(out))
        self.skip = _shortcut(c_in, out, stride)

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


def _shortcut(c_in, c_out, stride):
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class ResNet(nn.Module):
    """Images (B, 3, H, W) -> embeddings (B, embed_dim).

    `layer_groups()` lists the stem and the four stages, so a training schedule can unfreeze
    them one at a time from the top (Zhang Sec. 4.3, "progressively release").
    """

    def __init__(self, block: str = "bottleneck", layers=(3, 4, 6, 3), width: int = 64,
                 embed_dim: int = 512, dropout: float = 0.4, stem: str = "face"):
        super().__init__()
        Block = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
        if stem not in ("face", "caffe"):
            raise ValueError(f"stem must be 'face' or 'caffe', got {stem!r}")
        caffe = stem == "caffe"
        if caffe:       # He et al.'s stem, as resnet50_ferplus_dag: conv1_7x7_s2 + bn, ReLU, max pool
            self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 0, ceil_mode=True))
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True))
        stages, c_in = [], width
        for i, n in enumerate(layers):
            c = width * 2 ** i
            blocks = []
            for j in range(n):
                # As IR-50 for face crops: a stride-1 stem and a stride-2 start to every stage,
                # so a 112 px face ends as a 7x7 map (and a 40 px crop as 3x3). Caffe: the first
                # stage keeps the max pool's resolution (stride 1), the others halve it.
                stride = (2 if i > 0 else 1) if caffe else 2
                blocks.append(Block(c_in, c, stride if j == 0 else 1, stride_on_reduce=caffe))
                c_in = c * Block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        if caffe and not embed_dim:     # the pooled map itself (He et al.; Vu: "last FC removed")
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            embed_dim = c_in
        else:
            self.head = nn.Sequential(nn.BatchNorm2d(c_in), nn.Dropout(dropout), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten(), nn.Linear(c_in, embed_dim), nn.BatchNorm1d(embed_dim))
        self.embed_dim = embed_dim

    def layer_groups(self) -> list:
        return [self.stem, *self.stages, self.head]

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


def ferplus_state_dict(dag_state: dict) -> dict:
    """The state dict of a resnet50_ferplus_dag conversion (FerPlusResNet50's keys) renamed to
    ResNet("bottleneck", (3, 4, 6, 3), 64, embed_dim=0, stem="caffe")'s keys; its classifier is dropped."""
    out = {}

    def put(src: str, dst: str) -> None:
        for suffix in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            if f"{src}.{suffix}" in dag_state:
                out[f"{dst}.{suffix}"] = dag_state[f"{src}.{suffix}"]

    put("conv1_7x7_s2", "stem.0")
    put("conv1_7x7_s2_bn", "stem.1")
    for i, (stage, n) in enumerate(((2, 3), (3, 4), (4, 6), (5, 3))):
        for b in range(n):
            name, dst = f"conv{stage}_{b + 1}", f"stages.{i}.{b}"
            for conv, k in (("1x1_reduce", 0), ("3x3", 3), ("1x1_increase", 6)):
                put(f"{name}_{conv}", f"{dst}.body.{k}")
                put(f"{name}_{conv}_bn", f"{dst}.body.{k + 1}")
            put(f"{name}_1x1_proj", f"{dst}.skip.0")
            put(f"{name}_1x1_proj_bn", f"{dst}.skip.1")
    return out


def load_ferplus_weights(model: ResNet, path, section: str = "vu2021.cnn") -> ResNet:
    """Load the published `resnet50_ferplus_dag.pth` (checked key for key by
    resnet_dag.load_ferplus_resnet50, torch.load weights_only=True) into a stem="caffe" ResNet-50."""
    from common.backbones.resnet_dag import FerPlusResNet50, load_ferplus_resnet50
    dag = FerPlusResNet50()
    load_ferplus_resnet50(dag, path, section)
    missing, unexpected = model.load_state_dict(ferplus_state_dict(dag.state_dict()), strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise ValueError(f"{path}: the FER+ ResNet-50 does not fit {section} (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}); set {section}: block bottleneck, layers [3, 4, 6, 3], width 64, "
                         "embed_dim 0, stem caffe")
    return model
