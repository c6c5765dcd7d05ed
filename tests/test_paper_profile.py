"""The `paper` profile builds the networks the papers name, at their published sizes.

No GPU runs the paper profile in CI, so this is its check: every backbone section of
`params/paper.yaml` is built (on the meta device where the module allows it: no memory, no time)
and its parameter count is held against the published network's. A wrong depth, width or
block in the profile moves the count by far more than the tolerance.
"""
from pathlib import Path

import pytest
import torch
import torchaudio

from common.backbones.densenet import build_densenet
from common.backbones.ecapatdnn import build_ecapa
from common.backbones.hubert import build_hubert
from common.backbones.iresnet import build_iresnet
from common.backbones.mobilenet import build_mobilenet
from common.backbones.vggish import build_vggish
from common.backbones.vit_mae import build_mae
from common.backbones.wav2vec import Wav2Vec2Pretrain
from common.params import load_params
from papers.liu2023.model import build_model as build_liu_model
from papers.vu2021.model import build_cnn

PAPER = load_params(Path(__file__).resolve().parents[1] / "params.yaml", "paper")


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def on_meta(build):
    with torch.device("meta"):
        return build()


# (what, the part of the network that is counted, published count, tolerance, where the count is from)
PUBLISHED = [
    ("densenet: DenseNet-121 features", lambda: on_meta(lambda: build_densenet(PAPER["densenet"])),
     6_953_856, 0.0, "torchvision densenet121, 7,978,856 less its 1000-way classifier"),
    ("ires100: IResNet-100, 512-d", lambda: on_meta(lambda: build_iresnet(PAPER["ires100"])),
     65.2e6, 0.01, "insightface arcface_torch r100 (65.2 M)"),
    ("fau: IResNet-100, 512-d (Liu Sec. 3.2.1)", lambda: on_meta(lambda: build_iresnet(PAPER["fau"])),
     65.2e6, 0.01, "insightface arcface_torch r100 (65.2 M)"),
    ("ms_va: MobileNetV2 1.0 features", lambda: on_meta(lambda: build_mobilenet(PAPER["ms_va"])),
     2_223_872, 0.0, "torchvision mobilenet_v2, 3,504,872 less its classifier"),
    ("mae: ViT-B/16 encoder", lambda: (lambda m: torch.nn.ModuleList([m.patch_embed, m.encoder, m.norm]))(
        on_meta(lambda: build_mae(PAPER["mae"]))), 85.8e6, 0.005, "ViT-B/16, 85.8 M (He et al. 2022)"),
    ("vggish: VGGish", lambda: on_meta(lambda: build_vggish(PAPER["vggish"])),
     72_141_184, 0.0, "the released VGGish (Hershey et al. 2017)"),
    ("ecapatdnn: ECAPA-TDNN, C = 512", lambda: on_meta(lambda: build_ecapa(PAPER["ecapatdnn"])),
     6.2e6, 0.01, "Desplanques et al. 2020, Table 1 (6.2 M)"),
    ("vu2021.cnn: ResNet-50 stages", lambda: on_meta(lambda: build_cnn(PAPER["vu2021"]["cnn"])).backbone.stages,
     23_498_496, 0.0, "torchvision resnet50 layer1-layer4 (Vu Sec. 4.2: ResNet 50)"),
]


@pytest.mark.parametrize("what, build, published, tolerance, source", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_paper_profile_networks_have_the_published_size(what, build, published, tolerance, source):
    n = count(build())
    assert abs(n - published) <= tolerance * published, (
        f"{what}: {n:,} parameters, published {published:,.0f} ({source})")


@pytest.mark.parametrize("name, published", [("hubert", torchaudio.models.hubert_base),
                                             ("wav2vec", torchaudio.models.wav2vec2_base)])
def test_paper_profile_speech_encoders_are_the_base_models(name, published):
    """HuBERT Base and wav2vec 2.0 Base: the encoder under the pre-training heads is torchaudio's own."""
    built = build_hubert(PAPER[name]) if name == "hubert" else Wav2Vec2Pretrain(PAPER[name])
    encoder = built.wav2vec2 if name == "hubert" else built.model
    reference = published()
    assert count(encoder) == count(reference)
    assert [p.shape for p in encoder.parameters()] == [p.shape for p in reference.parameters()]


def test_paper_profile_liu_model_runs_a_segment_of_150_frames():
    """Sec. 4.2: affine 1024, 4 layers, 4 heads, segment 150; Table 1's main row is 2048-d in."""
    cfg = PAPER["liu2023"]
    assert (cfg["segment"], cfg["dim"], cfg["layers"], cfg["heads"]) == (150, 1024, 4, 4)
    for encoder in ("transformer", "lstm", "gru", "transformer_lstm"):
        model = build_liu_model(cfg, 1024, 1024, encoder, "early").eval()
        x = {"visual": torch.randn(1, 2 * 150, 1024), "audio": torch.randn(1, 2 * 150, 1024)}
        with torch.no_grad():
            out = model(x)
        assert out.shape == (1, 300, 2) and torch.isfinite(out).all(), encoder
