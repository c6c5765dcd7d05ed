"""VGGish (Hershey et al., ICASSP 2017) in pure torch: log-mel input, the network, weight loading.

Zhang et al. feed 128-d VGGish embeddings to their second aural TCN (Sec. 3.2), "obtained from
the pre-trained VGGish model" (Sec. 4.2), one embedding per video frame: the authors' code slides
the 0.96 s VGGish window with a hop of 1/fps and applies no PCA (sucv/ABAW2@71d40fb:preprocessing.py:419-435,
vggish/inference.py:54-58; ledger: vggish).

Input, exactly as the published model's front end (AudioSet `vggish_input.py` / `mel_features.py`):
16 kHz mono -> STFT magnitude with a 25 ms periodic Hann window, 10 ms hop, 512-point FFT -> 64 mel
bands between 125 and 7500 Hz (HTK mel scale, triangular filters) -> log(mel + 0.01). One example
is a patch of 96 such frames (0.96 s) x 64 bands.

Network (Hershey et al. Sec. 2.2, "configuration A" of VGG with fewer stages): 3x3 convolutions
with ReLU, conv64 - pool - conv128 - pool - conv256 x2 - pool - conv512 x2 - pool (2x2 max pools),
then fully connected 4096 - 4096 - 128. The 128-d embedding layer is linear (no ReLU), as in the
current TensorFlow release. `width` scales every conv channel count and `fc` sets the hidden FC
sizes, so the default profile runs a narrow VGGish on two CPU cores; width 1 and fc (4096, 4096)
is the published network (72,141,184 parameters).

Published weights: this suite never downloads anything. `load_vggish_weights(model, path)` reads a
local state dict with `torch.load(path, weights_only=True)` (so a file cannot run code) and accepts
two key layouts (see TORCHVGGISH_KEYS):
* this module's own names (conv1, conv2, conv3_1, conv3_2, conv4_1, conv4_2, fc1_1, fc1_2, fc2),
  which are the TF-Slim scope names of the released checkpoint (vggish/conv3/conv3_1/weights ...);
* the widely used PyTorch port's names (harritaylor/torchvggish `vggish-10086976.pth`: `features.N`
  and `embeddings.N`). Its PCA post-processor (`pproc.*`) is skipped: Zhang uses no PCA;
* the released TF-Slim checkpoint's variable names (`vggish_model.ckpt`: vggish/conv1/weights,
  vggish/conv3/conv3_1/biases, vggish/fc1/fc1_1/weights, vggish/fc2/weights ...) in TF's shapes
  (conv kernels height x width x in x out, FC weights in x out), e.g. the checkpoint's variables
  dumped to an .npz under their own names; they are transposed to torch's layout (TF_SLIM_KEYS).
All flatten the last feature map in TF's (height, width, channel) order, as `forward` does here,
so the first FC layer's weights need no permutation. Why no library model: VGGish is published as
TF-Slim code and a checkpoint, and the torch port is a repository, not a maintained package.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.weights import Layout, load_checked

SAMPLE_RATE = 16000
WINDOW_S = 0.025              # STFT window (400 samples)
HOP_S = 0.010                 # STFT hop (160 samples): log-mel frames at 100 Hz
FFT_LENGTH = 512              # next power of two above the window, as mel_features.py does
MEL_BANDS = 64
MEL_MIN_HZ, MEL_MAX_HZ = 125.0, 7500.0
LOG_OFFSET = 0.01             # log(mel + 0.01): keeps silence finite
PATCH_FRAMES = 96             # 0.96 s of log-mel frames per example
PATCH_S = PATCH_FRAMES * HOP_S

_WINDOW = int(round(WINDOW_S * SAMPLE_RATE))
_HOP = int(round(HOP_S * SAMPLE_RATE))

# Published layout (torchvggish) -> this module. Conv layers sit at these indices of its
# `features` Sequential (ReLU / MaxPool in between carry no weights), the FC layers in `embeddings`.
TORCHVGGISH_KEYS = {
    "features.0": "conv1", "features.3": "conv2", "features.6": "conv3_1", "features.8": "conv3_2",
    "features.11": "conv4_1", "features.13": "conv4_2",
    "embeddings.0": "fc1_1", "embeddings.2": "fc1_2", "embeddings.4": "fc2",
}
IGNORED_PREFIXES = ("pproc.",)   # torchvggish's PCA/quantisation post-processor; Zhang uses no PCA
# The released TF-Slim checkpoint's variable scopes -> this module's layers.
TF_SLIM_KEYS = {
    "vggish/conv1": "conv1", "vggish/conv2": "conv2", "vggish/conv3/conv3_1": "conv3_1",
    "vggish/conv3/conv3_2": "conv3_2", "vggish/conv4/conv4_1": "conv4_1", "vggish/conv4/conv4_2": "conv4_2",
    "vggish/fc1/fc1_1": "fc1_1", "vggish/fc1/fc1_2": "fc1_2", "vggish/fc2": "fc2",
}


class VGGishWeightsError(ValueError):
    """A weights file does not fit the network; the message names the file and the first bad key."""


# --------------------------------------------------------------------------------------------
# Front end: log-mel spectrogram and per-frame patches
# --------------------------------------------------------------------------------------------

def _hz_to_mel(hz):
    return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)     # HTK formula


def mel_matrix() -> np.ndarray:
    """(257 FFT bins, 64 bands) triangular filters, spaced evenly on the HTK mel scale."""
    n_bins = FFT_LENGTH // 2 + 1
    bins_mel = _hz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, n_bins))
    edges = np.linspace(_hz_to_mel(MEL_MIN_HZ), _hz_to_mel(MEL_MAX_HZ), MEL_BANDS + 2)
    weights = np.empty((n_bins, MEL_BANDS))
    for i in range(MEL_BANDS):
        lower, centre, upper = edges[i:i + 3]
        rising = (bins_mel - lower) / (centre - lower)
        falling = (upper - bins_mel) / (upper - centre)
        weights[:, i] = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0                       # the DC bin never contributes (as mel_features.py)
    return weights


_MEL = mel_matrix()
_HANN = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(_WINDOW) / _WINDOW)   # periodic Hann


def log_mel_spectrogram(wave: np.ndarray) -> np.ndarray:
    """(n, 64) float32 log-mel frames at 100 Hz; frame k covers samples [160 k, 160 k + 400).

    Computed once per audio file; patches are slices of it (a patch per video frame would
    otherwise repeat each STFT ~100 times).
    """
    wave = np.asarray(wave, np.float64).reshape(-1)
    if len(wave) < _WINDOW:                   # shorter than one window: zero-pad to one frame
        wave = np.pad(wave, (0, _WINDOW - len(wave)))
    n = 1 + (len(wave) - _WINDOW) // _HOP
    frames = np.lib.stride_tricks.as_strided(
        wave, (n, _WINDOW), (wave.strides[0] * _HOP, wave.strides[0]), writeable=False)
    magnitude = np.abs(np.fft.rfft(frames * _HANN, FFT_LENGTH))
    return np.log(magnitude @ _MEL + LOG_OFFSET).astype(np.float32)


def patch_starts(times, n_spec_frames: int | None = None) -> np.ndarray:
    """First log-mel frame of the 96-frame patch centred on each time (seconds).

    Log-mel frame k is centred at 0.01 k + 0.0125 s, so a patch starting at s is centred at
    0.01 (s + 47.5) + 0.0125 s. The result may fall outside [0, n - 96]: `patches_at` edge-pads.
    """
    times = np.asarray(times, np.float64)
    centre_frame = (times - WINDOW_S / 2) / HOP_S          # fractional frame index at each time
    return np.floor(centre_frame - (PATCH_FRAMES - 1) / 2 + 0.5).astype(np.int64)


def patches_at(spectrogram: np.ndarray, times) -> np.ndarray:
    """(len(times), 1, 96, 64) float32 patches of a log-mel spectrogram centred on `times`.

    Patches reaching past either end repeat the first / last log-mel frame (edge padding), so
    the first and last video frames get a full-size patch like every other frame.
    """
    starts = patch_starts(times)
    n = len(spectrogram)
    rows = np.clip(starts[:, None] + np.arange(PATCH_FRAMES)[None, :], 0, n - 1)
    return spectrogram[rows][:, None]


def log_mel_patches(wave: np.ndarray, frame_times) -> np.ndarray:
    """One 0.96 s log-mel patch per requested time (e.g. video frame i at i / fps): (N, 1, 96, 64).

    With frame_times = arange(n_frames) / fps this is Zhang's hop = 1/fps: one VGGish example,
    hence one embedding, per video frame.
    """
    return patches_at(log_mel_spectrogram(wave), frame_times)


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------

class VGGish(nn.Module):
    """Log-mel patches (B, 1, 96, 64) -> embeddings (B, embed_dim).

    `width` multiplies the conv channels (64, 128, 256, 256, 512, 512); `fc` are the two hidden
    FC sizes. Paper / published: width 1.0, fc (4096, 4096), embed_dim 128.
    """

    CONV_NAMES = ("conv1", "conv2", "conv3_1", "conv3_2", "conv4_1", "conv4_2")
    POOL_AFTER = ("conv1", "conv2", "conv3_2", "conv4_2")

    def __init__(self, width: float = 1.0, fc=(4096, 4096), embed_dim: int = 128):
        super().__init__()
        self.config = {"width": float(width), "fc": [int(f) for f in fc], "embed_dim": int(embed_dim)}
        channels = [max(1, int(round(c * width))) for c in (64, 128, 256, 256, 512, 512)]
        c_in = 1
        for name, c in zip(self.CONV_NAMES, channels):
            setattr(self, name, nn.Conv2d(c_in, c, 3, padding=1))
            c_in = c
        # Four 2x2 pools: 96 x 64 -> 6 x 4.
        flat = c_in * (PATCH_FRAMES // 16) * (MEL_BANDS // 16)
        self.fc1_1 = nn.Linear(flat, int(fc[0]))
        self.fc1_2 = nn.Linear(int(fc[0]), int(fc[1]))
        self.fc2 = nn.Linear(int(fc[1]), int(embed_dim))
        self.embed_dim = int(embed_dim)
        # He et al. (2015) initialisation for the ReLU layers: the network has no normalisation,
        # and with torch's default init the signal shrinks through the 8 ReLU layers, so training
        # from scratch on a small corpus stalls at a constant output. (Published weights overwrite it.)
        for name in self.CONV_NAMES + ("fc1_1", "fc1_2"):
            layer = getattr(self, name)
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1:] != (1, PATCH_FRAMES, MEL_BANDS):
            raise ValueError(f"VGGish expects log-mel patches (B, 1, {PATCH_FRAMES}, {MEL_BANDS}), "
                             f"got {tuple(x.shape)}")
        for name in self.CONV_NAMES:
            x = torch.relu(getattr(self, name)(x))
            if name in self.POOL_AFTER:
                x = nn.functional.max_pool2d(x, 2)
        # Flatten in TF's NHWC order so the released fc1 weights apply unchanged.
        x = x.permute(0, 2, 3, 1).flatten(1)
        x = torch.relu(self.fc1_1(x))
        x = torch.relu(self.fc1_2(x))
        return self.fc2(x)


def architecture(cfg: dict) -> dict:
    """The architecture keys of params.yaml's `vggish` section, as VGGish.config holds them."""
    return {"width": cfg["width"], "fc": [int(f) for f in cfg["fc"]], "embed_dim": cfg["embed_dim"]}


def build_vggish(cfg: dict) -> VGGish:
    """A VGGish from params.yaml's `vggish` section (keys width, fc, embed_dim)."""
    return VGGish(**architecture(cfg))


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Weights from a local file
# --------------------------------------------------------------------------------------------

def map_state_dict(state: dict) -> dict:
    """Rename a published (torchvggish-layout) state dict to this module's names; own names pass."""
    mapped = {}
    for key, value in state.items():
        if key.startswith(IGNORED_PREFIXES):
            continue
        layer, _, leaf = key.rpartition(".")
        mapped[f"{TORCHVGGISH_KEYS.get(layer, layer)}.{leaf}" if layer else key] = value
    return mapped


def from_tf_slim(state: dict) -> dict:
    """TF-Slim variable names and shapes -> this module's: conv kernels (kh, kw, in, out) -> (out, in, kh, kw),
    FC weights (in, out) -> (out, in); `weights` / `biases` -> weight / bias."""
    out = {}
    for key, value in state.items():
        scope, _, leaf = key.rpartition("/")
        if scope not in TF_SLIM_KEYS or leaf not in ("weights", "biases"):
            raise ValueError(f"unexpected TF-Slim variable {key}")
        value = torch.as_tensor(value)
        if leaf == "weights":
            value = value.permute(3, 2, 0, 1) if value.dim() == 4 else value.t()
        out[f"{TF_SLIM_KEYS[scope]}.{'weight' if leaf == 'weights' else 'bias'}"] = value.contiguous()
    return out


_FITS = "width 1.0, fc [4096, 4096], embed_dim 128 (the paper profile)"
TORCHVGGISH = Layout("torchvggish port", "features.0.weight", map_state_dict, f"vggish-10086976.pth with {_FITS}")
TF_SLIM = Layout("TF-Slim checkpoint names", "vggish/conv1/weights", from_tf_slim,
                 f"vggish_model.ckpt's variables (dumped to .npz or a torch dict) with {_FITS}")


def load_vggish_weights(model: VGGish, path: str | Path) -> VGGish:
    """Load a local state dict into `model` (weights_only=True; .npz without pickles): this module's
    own names, the torchvggish port's or the TF-Slim checkpoint's. Anything that does not fit raises
    VGGishWeightsError naming the file, the first mismatches and the params keys; `model` is untouched."""
    load_checked(model, path, VGGishWeightsError, "VGGish", "vggish", "width / fc / embed_dim", (TORCHVGGISH, TF_SLIM))
    return model
