"""The `wav2vec` feature: last-layer wav2vec 2.0 frames at 50 Hz (Liu, Sun et al. 2023 Sec. 3.2.2).

    python -m common.features.wav2vec pretrain [--profile smoke]   # -> <model_dir>/wav2vec.pt
    python -m common.features.wav2vec extract  [--profile smoke]   # -> the feature cache

pretrain: Liu et al. use a published wav2vec 2.0 pre-trained on large speech corpora. Those
  weights cannot be downloaded here, so
  * if `wav2vec.weights` names a local state-dict file of this configuration it is loaded
    (weights_only) and checked (common/backbones/wav2vec.py);
  * otherwise a tiny wav2vec 2.0 is pre-trained in the pipeline with the paper's self-supervised
    objective: `crop_s`-second crops of the training audio, spans masked, the contrastive task
    over Gumbel-quantised latents (Eq. 3) + the diversity loss (Eq. 4), Gumbel temperature annealed
    from 2 to 0.5 over the epochs. Crops of the validation audio pick the best epoch by the share
    of masked steps whose true quantised latent wins against the distractors (chance recorded).
extract: for every audio file, the last Transformer layer without masking, in chunks of `chunk_s`
  seconds, 50 Hz, aligned to the label frames by nearest time (as common/features/hubert.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from common.backbones.wav2vec import Wav2Vec2Pretrain, Wav2VecWeightsError, load_wav2vec_weights
from common.data.affwild2 import AffWild2Error
from common.device import inference_device, module_device
from common import runs
from common.features import pretraining
from common.features.cache import FeatureCache, FeatureCacheError
from common.features.hubert import RATE, STRIDE, _split_audio, extract_frames

NAME = "wav2vec"
VERSION = "1"


def model_path(params: dict) -> Path:
    return pretraining.model_path(params, NAME)


def wave_crops(waves, crop: int, hop: int) -> torch.Tensor:
    out = [w[s:s + crop] for w in waves for s in range(0, len(w) - crop + 1, hop)]
    if not out:
        raise ValueError(f"no {crop / RATE:.1f} s crops in the audio; lower wav2vec.pretrain.crop_s")
    return torch.stack([torch.from_numpy(c) for c in out])


def contrastive_accuracy(net: Wav2Vec2Pretrain, crops: torch.Tensor, batch: int = 16) -> tuple[int, int, float]:
    """(hits, masked steps, expected hits by chance) summed over the crops, each batch on the network's device."""
    device = module_device(net)
    hits = total = expected = 0
    for i in range(0, len(crops), batch):
        h, t, e = net.masked_accuracy(crops[i:i + batch].to(device))
        hits, total, expected = hits + h, total + t, expected + e
    return hits, total, expected


def _train_wav2vec(params: dict, model: Wav2Vec2Pretrain, out_dir: Path, progress: bool) -> dict:
    from common.train import fit
    p = params[NAME]["pretrain"]
    crop, hop = int(p["crop_s"] * RATE) // STRIDE * STRIDE, int(p["hop_s"] * RATE)
    x = wave_crops(_split_audio(params, "train"), crop, hop)
    vx = wave_crops(_split_audio(params, "validation"), crop, crop)
    epochs = p["epochs"]
    chance = []

    @torch.no_grad()
    def evaluate(net):
        with torch.random.fork_rng():
            torch.manual_seed(0)                          # the same masks and distractors every epoch
            hits, total, expected = contrastive_accuracy(net, vx)
        chance.append(expected / max(total, 1))
        # Gumbel temperature: 2 -> 0.5 geometrically over the epochs (the paper anneals per update)
        net.quantizer.tau = max(0.5, 2.0 * 0.25 ** (len(chance) / max(epochs - 1, 1)))
        return {"val_contrastive_accuracy": hits / max(total, 1), "val_chance_accuracy": expected / max(total, 1)}
    result = fit(model, TensorDataset(x), lambda net, b: net.contrastive_loss(b[0]), evaluate,
                 pretraining.train_config(p, "val_contrastive_accuracy", "max"),
                 out_dir / "train", progress=progress, key=runs.feature_key(params))
    return {"source": "pre-trained in pipeline: wav2vec 2.0 contrastive + diversity objective on the training audio",
            "crops": len(x), "val_crops": len(vx), "validation": result["best"]}


def pretrain_wav2vec(params: dict, progress: bool = True, threads: int = 1) -> Path:
    """Write <model_dir>/wav2vec.pt (+ .json): loaded from wav2vec.weights, or pre-trained here."""
    return pretraining.pretrain_or_load(params, NAME, lambda: Wav2Vec2Pretrain(params[NAME]), load_wav2vec_weights,
                                        lambda net, out_dir: _train_wav2vec(params, net, out_dir, progress), threads)


def cache_for(params: dict) -> FeatureCache:
    """The `wav2vec` cache of the current weights (new weights, new folder)."""
    cfg = params[NAME]
    return pretraining.network_cache(params, NAME, VERSION, {"chunk_s": cfg["chunk_s"]}, cfg["dim"])


def extract_wav2vec(params: dict, progress: bool = True, threads: int = 1) -> dict:
    """Fill the cache for every face track of every split; return (and write) a summary."""
    cfg = params[NAME]
    model = Wav2Vec2Pretrain(cfg)
    load_wav2vec_weights(model, model_path(params))
    model.eval().to(inference_device())
    return extract_frames(params, NAME, VERSION, model, cache_for(params), cfg["dim"], cfg["chunk_s"],
                          threads, module_device(model))


def main(argv=None) -> int:
    return pretraining.cli(argv, NAME, "tiny wav2vec 2.0: pre-train (or load) it, then its last layer for every track",
                           pretrain_wav2vec, extract_wav2vec, (AffWild2Error, Wav2VecWeightsError, FeatureCacheError))


if __name__ == "__main__":
    sys.exit(main())
