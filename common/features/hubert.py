"""The `hubert` feature: last-layer HuBERT frames at 50 Hz (Liu, Sun et al. 2023 Sec. 3.2.2).

    python -m common.features.hubert pretrain [--profile smoke]   # -> <model_dir>/hubert.pt
    python -m common.features.hubert extract  [--profile smoke]   # -> the feature cache

pretrain: Liu et al. use a published HuBERT pre-trained on thousands of hours of speech. Those
  weights cannot be downloaded here, so
  * if `hubert.weights` names a local state-dict file of this configuration it is loaded
    (weights_only) and checked (common/backbones/hubert.py);
  * otherwise a tiny HuBERT is pre-trained in the pipeline by HuBERT's first iteration (Hsu et al.
    2021 Sec. II-B, III-C): k-means with `clusters` centres on the MFCC frames (39-d, the `mfcc`
    extractor, every other 100 Hz frame = 50 Hz) of the training audio gives every frame a
    cluster id; the network sees `crop_s`-second crops of the training audio with spans masked
    and predicts the cluster ids of the masked frames (cross entropy over cosine logits, Eq. 3
    with alpha = 1), + 10 x the feature penalty (the published recipe). Crops of the validation
    audio pick the best epoch by masked-frame accuracy (the majority cluster's share is the floor).
    The second iteration (k-means on the model's own layer-6 features) is left out.
extract: for every audio file, the last Transformer layer's output without masking, in chunks of
  `chunk_s` seconds, 50 Hz, aligned to the label frames by nearest time
  (common/features/cache.align_to_frames); face tracks sharing an audio file get the same rows.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from common.backbones.hubert import STRIDE, HubertWeightsError, build_hubert, last_layer, load_hubert_weights
from common.data.affwild2 import AffWild2Error, audio_path, read_split
from common.device import inference_device, module_device, torch_threads
from common.features import audio as audio_features
from common import runs
from common.features import pretraining
from common.features.cache import FeatureCache, FeatureCacheError
from common.features.extract import audio_todo, audio_tracks, put_aligned
from common.files import atomic_write_json

NAME = "hubert"
VERSION = "1"
RATE = audio_features.SAMPLE_RATE
FRAME_RATE = RATE / STRIDE        # 50 Hz


def model_path(params: dict) -> Path:
    return pretraining.model_path(params, NAME)


def _split_audio(params: dict, split: str) -> list[np.ndarray]:
    root = params["data"]["root"]
    wavs = sorted({str(v.audio_path or audio_path(root, v.video)) for v in read_split(root, split)})
    return [audio_features.load_mono(w) for w in wavs]


def mfcc_50hz(wave: np.ndarray) -> np.ndarray:
    """(frames at 50 Hz, 39) MFCCs: the 100 Hz `mfcc` extractor's every other frame."""
    return audio_features.registry()["mfcc"].compute(wave).astype(np.float32)[::2]


def crops(waves, clusters, crop: int, hop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, crop samples) waveform crops and (n, crop / STRIDE - 1) cluster ids of their output frames."""
    xs, ys = [], []
    n_out = crop // STRIDE - 1                            # the conv stack's output length for `crop` samples
    for wave, ids in zip(waves, clusters):
        for start in range(0, len(wave) - crop + 1, hop):
            first = start // STRIDE
            label = ids[first:first + n_out]
            if len(label) == n_out:
                xs.append(wave[start:start + crop])
                ys.append(label)
    if not xs:
        raise ValueError(f"no {crop / RATE:.1f} s crops in the audio; lower hubert.pretrain.crop_s")
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)).long()


def training_loss(net, batch) -> torch.Tensor:
    """HuBERT's masked prediction (cross entropy, target column 0 on the batch's device) + 10 x the feature penalty."""
    logit_m, _, feature_penalty = net(batch[0], batch[1])
    target = torch.zeros(len(logit_m), dtype=torch.long, device=logit_m.device)
    return F.cross_entropy(logit_m, target) + 10.0 * feature_penalty


def masked_hits(net, crops: torch.Tensor, clusters: torch.Tensor, batch: int = 16) -> tuple[int, int]:
    """(masked frames whose own cluster wins, masked frames), each batch on the network's device."""
    device = module_device(net)
    hits = total = 0
    for i in range(0, len(crops), batch):
        logit_m, _, _ = net(crops[i:i + batch].to(device), clusters[i:i + batch].to(device))
        hits, total = hits + int((logit_m.argmax(1) == 0).sum()), total + len(logit_m)
    return hits, total


def _train_hubert(params: dict, model, out_dir: Path, progress: bool) -> dict:
    from sklearn.cluster import MiniBatchKMeans

    from common.train import fit
    cfg, p = params[NAME], params[NAME]["pretrain"]
    train_waves, val_waves = _split_audio(params, "train"), _split_audio(params, "validation")
    train_mfcc = [mfcc_50hz(w) for w in train_waves]
    mean = np.concatenate(train_mfcc).mean(0)
    std = np.concatenate(train_mfcc).std(0) + 1e-6
    kmeans = MiniBatchKMeans(cfg["clusters"], random_state=p["seed"], n_init=3, batch_size=4096)
    kmeans.fit(np.concatenate(train_mfcc)[:: p["kmeans_step"]] / std - mean / std)
    ids = [kmeans.predict((m - mean) / std) for m in train_mfcc]
    val_ids = [kmeans.predict((mfcc_50hz(w) - mean) / std) for w in val_waves]
    crop, hop = int(p["crop_s"] * RATE), int(p["hop_s"] * RATE)
    x, y = crops(train_waves, ids, crop, hop)
    vx, vy = crops(val_waves, val_ids, crop, crop)
    majority = float(np.bincount(vy.flatten().numpy()).max() / vy.numel())

    @torch.no_grad()
    def evaluate(net):
        with torch.random.fork_rng():
            torch.manual_seed(0)                          # the same masks every epoch
            hits, total = masked_hits(net, vx, vy)
        return {"val_masked_accuracy": hits / max(total, 1)}
    result = fit(model, TensorDataset(x, y), training_loss, evaluate,
                 pretraining.train_config(p, "val_masked_accuracy", "max"),
                 out_dir / "train", progress=progress, key=runs.feature_key(params))
    return {"source": "pre-trained in pipeline: HuBERT iteration 1 "
                      "(masked prediction of MFCC k-means ids, training audio)",
            "crops": len(x), "val_crops": len(vx), "val_majority_cluster_share": majority, "validation": result["best"]}


def pretrain_hubert(params: dict, progress: bool = True, threads: int = 1) -> Path:
    """Write <model_dir>/hubert.pt (+ .json): loaded from hubert.weights, or pre-trained here."""
    return pretraining.pretrain_or_load(params, NAME, lambda: build_hubert(params[NAME]), load_hubert_weights,
                                        lambda net, out_dir: _train_hubert(params, net, out_dir, progress), threads)


def cache_for(params: dict) -> FeatureCache:
    """The `hubert` cache of the current weights (new weights, new folder)."""
    cfg = params[NAME]
    return pretraining.network_cache(params, NAME, VERSION, {"chunk_s": cfg["chunk_s"]}, cfg["dim"])


@torch.no_grad()
def chunk_frames(frames_of, wave: torch.Tensor, chunk: int, device: torch.device | str = "cpu") -> np.ndarray:
    """(frames, dim) float32 of one 16 kHz waveform: chunks of `chunk` samples (none shorter than two
    output frames) through frames_of on `device`, the frames brought back to the CPU."""
    parts = [frames_of(wave[None, i:i + chunk].to(device))[0].float().cpu() for i in range(0, len(wave), chunk)
             if len(wave[i:i + chunk]) >= 2 * STRIDE]
    return torch.cat(parts).numpy()


@torch.no_grad()
def extract_frames(params: dict, name: str, version: str, frames_of, cache: FeatureCache, dim: int,
                   chunk_s: float, threads: int = 1, device: torch.device | str = "cpu") -> dict:
    """frames_of((1, samples) 16 kHz) -> (1, frames, dim) at 50 Hz, in chunks of chunk_s seconds, for
    every audio file; aligned to each face track's label frames. Writes <features root>/<name>.json.
    `device`: where frames_of's network is; the chunks are sent there."""
    import time
    started = time.perf_counter()
    chunk = int(chunk_s * RATE)
    groups = audio_tracks(params["data"]["root"])
    frames = 0
    with torch_threads(threads):
        for wav in audio_todo(groups, cache):
            out = chunk_frames(frames_of, torch.from_numpy(audio_features.load_mono(wav)), chunk, device)
            frames += len(out)
            put_aligned(cache, groups[wav], out, FRAME_RATE)
    summary = {"extractor": name, "version": version, "dim": dim, "rate_hz": FRAME_RATE,
               "audio_files": len(groups), "frames": frames, "seconds": round(time.perf_counter() - started, 2),
               "folder": str(cache.folder)}
    atomic_write_json(Path(params["features"]["root"]) / f"{name}.json", summary)
    return summary


def extract_hubert(params: dict, progress: bool = True, threads: int = 1) -> dict:
    """Fill the cache for every face track of every split; return (and write) a summary."""
    cfg = params[NAME]
    model = build_hubert(cfg)
    load_hubert_weights(model, model_path(params))
    model.eval().to(inference_device())
    return extract_frames(params, NAME, VERSION, lambda wave: last_layer(model, wave), cache_for(params),
                          cfg["dim"], cfg["chunk_s"], threads, module_device(model))


def main(argv=None) -> int:
    return pretraining.cli(argv, NAME, "tiny HuBERT: pre-train (or load) it, then its last layer for every track",
                           pretrain_hubert, extract_hubert, (AffWild2Error, HubertWeightsError, FeatureCacheError))


if __name__ == "__main__":
    sys.exit(main())
