"""The `ecapatdnn` feature: speaker embeddings of an ECAPA-TDNN (Liu, Sun et al. 2023 Sec. 3.2.2).

    python -m common.features.ecapatdnn pretrain [--profile smoke]   # -> <model_dir>/ecapatdnn.pt
    python -m common.features.ecapatdnn extract  [--profile smoke]   # -> the feature cache

pretrain: Liu et al. use a published speaker-verification ECAPA-TDNN (VoxCeleb). Those weights
  cannot be downloaded here, so
  * if `ecapatdnn.weights` names a local state-dict file it is loaded (weights_only) and checked
    against the configured architecture (common/backbones/ecapatdnn.py): this suite's own names,
    or speechbrain's published `embedding_model.ckpt` (spkrec-ecapa-voxceleb) as it is, with
    `variant: speechbrain`, channels 1024, mfa 3072, embed_dim 192, scale 8. The report then says
    "published weights (speechbrain ECAPA_TDNN: embedding_model.ckpt)". Its inputs here are the
    Kaldi-style `fbank` (natural-log Mel energies, per-window mean removed); speechbrain's model saw
    its own Fbank (10·log10 Mel power, sentence mean removed), so the embeddings are the published
    network's on slightly different inputs;
  * otherwise the network is pre-trained in the pipeline on speaker identity: the subjects of
    the single-person training videos are the speakers (two-person videos are left out: their
    audio holds two voices), `window_s` crops every `pretrain.hop_s`, one crop in ten held out
    to validate; cross-entropy over a linear classifier on the embedding (the paper's
    AAM-softmax margin is left out: with a dozen speakers the plain softmax separates them).
extract: for every audio file, an embedding of the `window_s` window centred every `hop_s`
  seconds (log Mel filter banks, 80 bins at 100 Hz, mean-normalised per window), aligned to the
  label frames by nearest time (common/features/cache.align_to_frames); face tracks sharing an
  audio file get the same rows.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from common.backbones.ecapatdnn import EcapaWeightsError, build_ecapa, load_ecapa_weights
from common.data.affwild2 import audio_base, audio_path, read_split
from common.device import inference_device, module_device, torch_threads
from common.features import audio as audio_features
from common import runs
from common.features import pretraining
from common.features.cache import FeatureCache, FeatureCacheError
from common.features.extract import audio_todo, audio_tracks, put_aligned
from common.files import atomic_write_json

NAME = "ecapatdnn"
VERSION = "1"
FBANK_RATE = 100.0                # torchaudio Kaldi fbank frames per second


def model_path(params: dict) -> Path:
    return pretraining.model_path(params, NAME)


def fbank_of(wav) -> np.ndarray:
    """(T, 80) log Mel filter banks at 100 Hz (the `fbank` extractor of common/features/audio.py)."""
    return audio_features.registry()["fbank"].compute(audio_features.load_mono(wav)).astype(np.float32)


def windows(fbank: np.ndarray, centres, length: int) -> np.ndarray:
    """(len(centres), length, n_mels) windows centred on the given fbank frames, edge-padded,
    each mean-normalised over time (cepstral mean normalisation, as speaker models expect)."""
    half = length // 2
    padded = np.pad(fbank, ((half, length - half), (0, 0)), mode="edge")
    out = np.stack([padded[c:c + length] for c in centres])
    return out - out.mean(1, keepdims=True)


# --------------------------------------------------------------------------- pretrain

def _speaker_crops(params: dict):
    cfg = params[NAME]
    root = params["data"]["root"]
    videos = [v for v in read_split(root, "train") if audio_base(v.video) == v.video]
    speakers = sorted({v.subject for v in videos})
    if len(speakers) < 2:
        raise ValueError(f"{root}: {len(speakers)} single-person training speakers; ECAPA-TDNN "
                         "pre-training needs at least 2 (or set ecapatdnn.weights)")
    length, hop = int(cfg["window_s"] * FBANK_RATE), max(1, int(cfg["pretrain"]["hop_s"] * FBANK_RATE))
    xs, ys = [], []
    for v in videos:
        fb = fbank_of(v.audio_path or audio_path(root, v.video))
        centres = np.arange(length // 2, max(len(fb) - length // 2, length // 2 + 1), hop)
        xs.append(windows(fb, centres, length))
        ys.append(np.full(len(centres), speakers.index(v.subject)))
    x, y = torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)).long()
    held = torch.zeros(len(y), dtype=torch.bool)
    held[::10] = True                                    # one crop in ten validates
    return TensorDataset(x[~held], y[~held]), (x[held], y[held]), speakers


class SpeakerClassifier(nn.Module):
    def __init__(self, backbone, n_speakers: int):
        super().__init__()
        self.backbone, self.classifier = backbone, nn.Linear(backbone.config["embed_dim"], n_speakers)

    def forward(self, x):
        return self.classifier(torch.relu(self.backbone(x)))


def training_loss(net: nn.Module, batch) -> torch.Tensor:
    """Cross entropy of the speaker classifier on a batch of (fbank windows, speaker ids)."""
    return nn.functional.cross_entropy(net(batch[0]), batch[1])


@torch.no_grad()
def batch_outputs(net: nn.Module, windows: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """float32 CPU outputs of `net` on fbank windows, each batch on the network's device."""
    device = module_device(net)
    return torch.cat([net(windows[i:i + batch].to(device)).float().cpu() for i in range(0, len(windows), batch)])


def pretrain_ecapa(params: dict, progress: bool = True, threads: int = 1) -> Path:
    """Write <model_dir>/ecapatdnn.pt (+ .json): loaded from ecapatdnn.weights, or pre-trained here."""
    return pretraining.pretrain_or_load(params, NAME, lambda: build_ecapa(params[NAME]), load_ecapa_weights,
                                        lambda net, out_dir: _train_speakers(params, net, out_dir, progress), threads)


def _train_speakers(params: dict, backbone: nn.Module, out_dir: Path, progress: bool) -> dict:
    from common.train import fit
    p = params[NAME]["pretrain"]
    train, (vx, vy), speakers = _speaker_crops(params)
    model = SpeakerClassifier(backbone, len(speakers))
    ce = nn.CrossEntropyLoss()

    def evaluate(net):
        logits = batch_outputs(net, vx)                 # on the CPU, where vy is
        return {"val_loss": float(ce(logits, vy)), "val_accuracy": float((logits.argmax(1) == vy).float().mean())}
    result = fit(model, train, training_loss, evaluate,
                 pretraining.train_config(p, "val_accuracy", "max", weight_decay=p["weight_decay"]),
                 out_dir / "train", progress=progress, key=runs.feature_key(params))
    return {"source": "pre-trained in pipeline on speaker identity (training subjects)",
            "speakers": len(speakers), "crops": len(train), "validation": result["best"]}


# --------------------------------------------------------------------------- extract

def cache_for(params: dict) -> FeatureCache:
    """The `ecapatdnn` cache of the current weights (new weights, new folder)."""
    cfg = params[NAME]
    return pretraining.network_cache(params, NAME, VERSION, {"window_s": cfg["window_s"], "hop_s": cfg["hop_s"]},
                                      cfg["embed_dim"])


@torch.no_grad()
def embed_windows(model: nn.Module, fbank: np.ndarray, centres: np.ndarray, length: int, batch: int = 64) -> np.ndarray:
    """(len(centres), embed_dim) float32: the windows centred on `centres`, cut and embedded `batch`
    at a time (on the model's device)."""
    return np.concatenate([batch_outputs(model, torch.from_numpy(windows(fbank, centres[i:i + batch], length))).numpy()
                           for i in range(0, len(centres), batch)])


@torch.no_grad()
def extract_ecapa(params: dict, progress: bool = True, threads: int = 1) -> dict:
    """Fill the cache for every face track of every split; return (and write) a summary."""
    cfg = params[NAME]
    cache = cache_for(params)
    model = build_ecapa(cfg)
    load_ecapa_weights(model, model_path(params))
    model.eval().to(inference_device())
    started = time.perf_counter()
    length, hop = int(cfg["window_s"] * FBANK_RATE), cfg["hop_s"]
    groups = audio_tracks(params["data"]["root"])
    embedded = 0
    with torch_threads(threads):
        for wav in audio_todo(groups, cache):
            fb = fbank_of(wav)
            centres = np.arange(0, len(fb), hop * FBANK_RATE).round().astype(int)
            emb = embed_windows(model, fb, centres, length)
            embedded += len(emb)
            put_aligned(cache, groups[wav], emb, 1.0 / hop)
    summary = {"extractor": NAME, "version": VERSION, "dim": cfg["embed_dim"], "hop_s": hop,
               "audio_files": len(groups), "windows": embedded, "seconds": round(time.perf_counter() - started, 2),
               "folder": str(cache.folder)}
    atomic_write_json(Path(params["features"]["root"]) / f"{NAME}.json", summary)
    return summary


def main(argv=None) -> int:
    return pretraining.cli(argv, NAME, "ECAPA-TDNN: pre-train (or load) the network, then embed every track",
                           pretrain_ecapa, extract_ecapa, (EcapaWeightsError, FeatureCacheError))


if __name__ == "__main__":
    sys.exit(main())
