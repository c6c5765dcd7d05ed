"""VGGish embeddings per video frame: `python -m common.features.vggish {pretrain,extract} [--profile smoke]`.

Zhang et al. (Sec. 3.2, 4.2) feed 128-d embeddings of the pre-trained VGGish (Hershey et al. 2017)
to one of their two aural TCNs; their code takes one embedding per video frame (0.96 s window,
hop = 1/fps) and no PCA. Two stages:

`pretrain` -> <vggish.model_dir>/vggish.pt (the backbone's state dict) + vggish.json
    * `vggish.weights` names a local file (e.g. the published VGGish converted to torch): it is
      loaded with weights_only=True through the documented key mapping (common/backbones/vggish.py)
      and copied to vggish.pt; nothing is trained. This is the paper's setting.
    * `vggish.weights` is "": the published weights cannot ship, so VGGish is pre-trained here, in
      the spirit of its AudioSet training (audio events, sigmoid outputs, cross-entropy), on the
      corpus's own audio-event labels: per 0.96 s patch, "does the subject speak" and "does
      another voice speak" (metadata/audio_events, the stand-in for AudioSet labels; never the
      latent valence/arousal, which would leak the targets). Training-split videos only, model
      selection on the validation split, scores on validation and test written to vggish.json.
      The 2-output head is kept beside it (events_head.pt) so the scores can be re-checked.
`extract`  -> feature cache `vggish`: (n_frames, 128) float16 per face track; <features.root>/vggish.json
    The log-mel spectrogram is computed once per wav and the patches are slices of it; tracks
    sharing a wav (two-person `_left`/`_right`) are computed once; one wav per worker process.
    `vggish.hop_s` = 0 gives Zhang's one patch per video frame (the paper profile); the default
    profile embeds every hop_s seconds and pairs each frame with the nearest-in-time embedding
    (align_to_frames, Zhang Sec. 4.2's own synchronisation rule), because a patch per frame costs
    3x the CPU time for embeddings that overlap by > 90 % anyway.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from common.backbones import vggish as vg
from common.data.affwild2 import SPLITS, audio_base, audio_path, read_split
from common.device import module_device, torch_threads
from common.features import pretraining
from common.features.audio import SAMPLE_RATE, load_mono
from common.features.cache import FeatureCache, FeatureCacheError
from common.files import atomic_torch_save, atomic_write_json, file_sha256
from common.features.extract import audio_todo, audio_tracks, put_aligned, run_stage, stage_parser
from common.params import ParamsError, load_params

NAME = "vggish"
VERSION = "1"                 # bump when the extraction output changes
EVENTS = ("speech", "other_voice")
SOURCE_PRETRAINED = "pre-trained in pipeline on audio events"
SOURCE_FILE = "loaded from file"


class VGGishStageError(RuntimeError):
    """A VGGish stage cannot run; the message says what to do."""


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

def model_path(params: dict) -> Path:
    return Path(params["vggish"]["model_dir"]) / "vggish.pt"


def load_model(params: dict) -> vg.VGGish:
    """The stage's VGGish (vggish.pt, written by `pretrain`) in eval mode."""
    path = model_path(params)
    if not path.is_file():
        raise VGGishStageError(f"{path}: not found; run `python -m common.features.vggish pretrain` "
                               f"(the vggish stage) first")
    return vg.load_vggish_weights(vg.build_vggish(params["vggish"]), path).eval()


# --------------------------------------------------------------------------------------------
# Pre-training on audio events
# --------------------------------------------------------------------------------------------

def read_audio_events(root: str | Path, video: str, n_frames: int) -> np.ndarray:
    """(n_frames, 2) float32 0/1: speech, other_voice per video frame (metadata/audio_events)."""
    path = Path(root) / "metadata" / "audio_events" / f"{video}.csv"
    if not path.is_file():
        raise VGGishStageError(
            f"{path}: no audio-event labels to pre-train VGGish on (only the generated corpus has "
            f"them); set vggish.weights in params.yaml to a local file of published VGGish weights")
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32, ndmin=2)
    if table.shape != (n_frames, 3) or not np.array_equal(table[:, 0], np.arange(1, n_frames + 1)):
        raise VGGishStageError(f"{path}: expected {n_frames} rows 'frame,speech,other_voice' for frames "
                               f"1..{n_frames}, got shape {table.shape}; regenerate the corpus")
    return table[:, 1:]


class EventPatches(Dataset):
    """Log-mel patches centred every `hop_s` seconds of some videos, with their event labels.

    Only the spectrograms are held in memory (100 x 64 floats per second); each patch is sliced
    when asked for, so the set scales to long videos. The label of a patch is the event flag of
    the video frame at its centre: the embedding of frame i is the one centred on it.
    """

    def __init__(self, root: str | Path, videos: list, hop_s: float, gain_db: float = 0.0):
        self.gain_db = float(gain_db)
        self.spectrograms, self.index, labels = [], [], []
        for k, video in enumerate(videos):
            wav = video.audio_path or audio_path(root, video.video)
            self.spectrograms.append(vg.log_mel_spectrogram(load_mono(wav)))
            events = read_audio_events(root, video.video, video.n_frames)
            times = np.arange(0.0, video.n_frames / video.fps, hop_s)
            frames = np.minimum(np.round(times * video.fps).astype(np.int64), video.n_frames - 1)
            self.index += [(k, t) for t in times]
            labels.append(events[frames])
        self.labels = torch.from_numpy(np.concatenate(labels)) if labels else torch.zeros(0, 2)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        k, t = self.index[i]
        patch = torch.from_numpy(vg.patches_at(self.spectrograms[k], [t])[0])
        if self.gain_db:
            # Random gain: every video is peak-normalised at its own level, and with a handful of
            # training videos the net otherwise keys on loudness instead of on voices. A gain g on
            # the waveform scales the mel magnitudes: log(g (exp(x) - 0.01) + 0.01). Drawn from
            # torch's generator, which fit() seeds (and restores on resume).
            g = 10 ** (float(torch.empty(()).uniform_(-self.gain_db, self.gain_db)) / 20)
            patch = torch.log(g * (patch.exp() - vg.LOG_OFFSET).clamp_min(0) + vg.LOG_OFFSET)
        return patch, self.labels[i]

    def patches(self, start: int, stop: int) -> torch.Tensor:
        """Patches start..stop-1 sliced video by video (one fancy-indexing call per video)."""
        items = self.index[start:stop]
        out = []
        for k in dict.fromkeys(k for k, _ in items):
            out.append(vg.patches_at(self.spectrograms[k], [t for k_, t in items if k_ == k]))
        return torch.from_numpy(np.concatenate(out))


class EventTagger(nn.Module):
    """VGGish + a linear layer to the 2 audio events (logits); only the backbone is kept for features."""

    def __init__(self, backbone: vg.VGGish):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dim, len(EVENTS))

    def forward(self, x):
        return self.head(self.backbone(x))


def event_loss(logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """Class-balanced BCE over the events; the per-event positive weights follow the logits to
    their device (they are computed once, on the CPU, from the training labels)."""
    return nn.functional.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight.to(logits.device))


def training_loss(net: nn.Module, batch, pos_weight: torch.Tensor) -> torch.Tensor:
    patches, labels = batch
    return event_loss(net(patches), labels, pos_weight)


def _single_person(videos: list) -> list:
    # Which voice is "the subject" of a two-person video depends on the face track you look at,
    # not on the audio, so those tracks would be contradictory audio labels: left out.
    return [v for v in videos if audio_base(v.video) == v.video]


@torch.no_grad()
def predict_logits(model: nn.Module, data: EventPatches, batch_size: int) -> torch.Tensor:
    """(len(data), 2) event logits of an EventTagger, in eval mode."""
    model.eval()
    device = module_device(model)
    out = [model(data.patches(s, s + batch_size).to(device)).float().cpu()
           for s in range(0, len(data), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, len(EVENTS))


def event_scores(logits, labels) -> dict:
    """Per event at probability 0.5: F1, accuracy and balanced accuracy (mean of TPR and TNR)."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    scores = {}
    for j, name in enumerate(EVENTS):
        y, p = labels[:, j] > 0.5, logits[:, j] > 0
        tp, fp, fn, tn = (y & p).sum(), (~y & p).sum(), (y & ~p).sum(), (~y & ~p).sum()
        f1 = 2 * tp / max(2 * tp + fp + fn, 1)
        tpr, tnr = tp / max(tp + fn, 1), tn / max(tn + fp, 1)
        scores[name] = {"f1": round(float(f1), 4), "accuracy": round(float((tp + tn) / max(len(y), 1)), 4),
                        "balanced_accuracy": round(float((tpr + tnr) / 2), 4),
                        "positive_rate": round(float(y.mean()), 4)}
    return scores


def _train_config(params: dict):
    p = params["vggish"]["pretrain"]
    # The best epoch by mean balanced accuracy, not by loss: on a few videos the loss grows with a
    # handful of confident errors while the detections keep improving.
    return pretraining.train_config(p, "val_balanced_accuracy", "max", weight_decay=p["weight_decay"],
                                    early_stop=p["early_stop"])


def pretrain_vggish(params: dict, progress: bool = True) -> Path:
    """Write <vggish.model_dir>/vggish.pt (+ vggish.json): loaded from vggish.weights, or pre-trained
    here with `vggish.threads` torch threads (a narrow network gains nothing from a second one)."""
    cfg = params[NAME]
    return pretraining.pretrain_or_load(
        params, NAME, lambda: vg.build_vggish(cfg), lambda net, path: _load_file(net, path, Path(cfg["model_dir"])),
        lambda net, out_dir: {"source": SOURCE_PRETRAINED, **_pretrain(params, net, out_dir, progress)},
        cfg["threads"], record=lambda net: {"architecture": net.config, "parameters": vg.n_parameters(net)})


def _load_file(backbone: vg.VGGish, path: str, out_dir: Path) -> dict:
    vg.load_vggish_weights(backbone, path)
    # An events head left by an earlier in-pipeline run belongs to other weights.
    (out_dir / "events_head.pt").unlink(missing_ok=True)
    return {"weights_sha256": file_sha256(Path(path)), "validation": None, "test": None}


def _pretrain(params: dict, backbone: vg.VGGish, out_dir: Path, progress: bool) -> dict:
    from common.train import fit
    root, p = params["data"]["root"], params["vggish"]["pretrain"]
    sets = {}
    for split in SPLITS:
        videos = _single_person(read_split(root, split))
        gain = p["gain_db"] if split == "train" else 0.0      # augment training patches only
        sets[split] = EventPatches(root, videos, p["hop_s"], gain)
        if split != "test" and len(sets[split]) == 0:
            raise VGGishStageError(f"{root}: no single-person {split} videos to pre-train VGGish on")
    train, val = sets["train"], sets["validation"]
    model = EventTagger(backbone)
    # Class-balanced BCE: the second voice talks ~30 % of the time and 8 dB below the subject, so
    # an unweighted loss settles on "never" for it; weighting positives by neg/pos prevents that.
    positives = train.labels.mean(0).clamp(0.02, 0.98)
    pos_weight = (1 - positives) / positives
    batch = params["vggish"]["batch_size"]

    def loss_fn(net, b):
        return training_loss(net, b, pos_weight)

    def evaluate(net):
        logits = predict_logits(net, val, batch)
        loss = float(event_loss(logits, val.labels, pos_weight))
        s = event_scores(logits, val.labels)
        mean_balanced = float(np.mean([s[e]["balanced_accuracy"] for e in EVENTS]))
        return {"val_loss": loss, "val_balanced_accuracy": mean_balanced,
                **{f"val_{k}_{e}": v for e in EVENTS for k, v in s[e].items() if k != "positive_rate"}}

    # fit() resumes from train/checkpoint.pt after a kill; a checkpoint of other settings must
    # not be resumed, so the folder remembers the settings it was written with.
    cfg = _train_config(params)
    train_dir = out_dir / "train"
    stamp = {"vggish": {k: params["vggish"][k] for k in ("width", "fc", "embed_dim", "pretrain")},
             "data_root": str(Path(root).resolve())}
    stamp_path = train_dir / "settings.json"
    if train_dir.exists() and (not stamp_path.is_file() or json.loads(stamp_path.read_text()) != stamp):
        shutil.rmtree(train_dir)
    train_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stamp_path, stamp)
    result = fit(model, train, loss_fn, evaluate, cfg, train_dir, progress=progress)
    model.cpu()                                # fit() may have moved it to a GPU

    atomic_torch_save(model.head.state_dict(), out_dir / "events_head.pt")
    return {"trained_on": "training split, single-person tracks; best epoch on the validation split",
            "train_videos": len(train.spectrograms), "train_patches": len(train), "val_patches": len(val),
            "best_epoch": result["best"]["epoch"], "epochs_run": len(result["history"]),
            "validation": event_scores(predict_logits(model, val, batch), val.labels),
            "test": event_scores(predict_logits(model, sets["test"], batch), sets["test"].labels)
            if len(sets["test"]) else None}


def load_event_tagger(params: dict) -> EventTagger:
    """VGGish + its audio-event head as pre-trained in the pipeline (for checks and notebooks)."""
    model = EventTagger(load_model(params))
    head = Path(params["vggish"]["model_dir"]) / "events_head.pt"
    model.head.load_state_dict(torch.load(head, map_location="cpu", weights_only=True))
    return model.eval()


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def embed(model: vg.VGGish, spectrogram: np.ndarray, times, batch_size: int) -> np.ndarray:
    """(len(times), embed_dim) float32 embeddings of the patches centred on `times`, batch by batch
    (patches are sliced per batch, so a long video never holds all of them at once)."""
    times = np.asarray(times, np.float64)
    device = module_device(model)
    out = []
    for s in range(0, len(times), batch_size):
        patches = torch.from_numpy(vg.patches_at(spectrogram, times[s:s + batch_size])).to(device)
        out.append(model(patches).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.embed_dim), np.float32)


def embedding_times(n_frames: int, fps: float, hop_s: float) -> tuple[np.ndarray, float]:
    """(times in s, rate in Hz) of the embeddings of one track: every video frame (hop_s = 0,
    Zhang's hop = 1/fps) or every hop_s seconds up to the last frame."""
    if hop_s <= 0:
        return np.arange(n_frames) / fps, float(fps)
    last = (n_frames - 1) / fps
    return np.arange(int(np.floor(last / hop_s + 0.5)) + 1) * hop_s, 1.0 / hop_s


_WORKER = {}


def _init_worker(params: dict, threads: int, device: str = "cpu") -> None:
    # One wav per process and one thread per process: the log-mel numpy code is single-threaded,
    # so processes use both cores better than torch's intra-op threads do.
    if threads > 0:
        torch.set_num_threads(threads)
    _WORKER["model"] = load_model(params).to(device)
    _WORKER["params"] = params


def _embed_wav(job):
    wav, n_frames, fps = job
    params = _WORKER["params"]
    times, rate = embedding_times(n_frames, fps, params["vggish"]["hop_s"])
    spectrogram = vg.log_mel_spectrogram(load_mono(wav))
    return embed(_WORKER["model"], spectrogram, times, params["vggish"]["batch_size"]), rate


def cache_for(params: dict) -> FeatureCache:
    """The `vggish` feature cache of the current model (its folder changes with the weights)."""
    cfg = params["vggish"]
    path = model_path(params)
    if not path.is_file():
        raise VGGishStageError(f"{path}: not found; run `python -m common.features.vggish pretrain` first")
    key = {"sample_rate": SAMPLE_RATE, "hop_s": cfg["hop_s"],
           "architecture": vg.architecture(cfg), "model_sha256": file_sha256(path)[:16]}
    return FeatureCache(params["features"]["root"], NAME, VERSION, key, cfg["embed_dim"])


def extract_vggish(params: dict, workers: int = 2, progress: bool = True) -> dict:
    """Fill the `vggish` cache for every face track of every split; return (and write) a summary."""
    from tqdm import tqdm
    cfg = params["vggish"]
    root, cache_root = params["data"]["root"], params["features"]["root"]
    cache = cache_for(params)
    started = time.perf_counter()
    groups = audio_tracks(root)
    todo = audio_todo(groups, cache)
    # Tracks sharing a wav share its length; the longest one sets how far embeddings go.
    jobs = [(wav, max(t.n_frames for t in groups[wav]), groups[wav][0].fps) for wav in todo]
    patches = 0
    bar = tqdm(total=len(todo), desc="features: vggish", unit="audio", disable=None if progress else True,
               file=sys.stderr)
    threads = cfg["threads"]
    # On a GPU (the paper profile: the published network, a patch per frame) one process feeds it;
    # forked workers cannot share CUDA. On the CPU, one wav per worker process.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if workers > 1 and len(jobs) > 1 and device == "cpu":
        pool = mp.get_context("fork").Pool(workers, _init_worker, (params, threads or 1))
        results = pool.imap(_embed_wav, jobs)
    else:
        pool = None
        _init_worker(params, 0, device)      # in this process, `torch_threads` below sets the threads
        results = map(_embed_wav, jobs)
    try:
        with torch_threads(threads):
            for wav, (emb, rate) in zip(todo, results):
                patches += len(emb)
                put_aligned(cache, groups[wav], emb, rate)
                bar.update()
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        _WORKER.clear()
    bar.close()
    seconds = time.perf_counter() - started
    summary = {"extractor": NAME, "version": VERSION, "dim": cfg["embed_dim"],
               "hop_s": cfg["hop_s"] or "1/fps", "audio_files": len(groups), "computed": len(todo),
               "tracks": sum(len(t) for t in groups.values()), "patches": patches,
               "patches_per_s": round(patches / seconds, 1) if patches else None,
               "model": str(model_path(params)), "seconds": round(seconds, 2), "folder": str(cache.folder)}
    atomic_write_json(Path(cache_root) / f"{NAME}.json", summary)
    return summary


def main(argv=None) -> int:
    args = stage_parser("VGGish: pre-train (or load) the network, then embed every track",
                        workers="audio-decoding processes for extract").parse_args(argv)

    def run():
        params = load_params(args.params, args.profile)
        for step in args.steps:
            if step == "pretrain":
                pretrain_vggish(params)
                result = json.loads((model_path(params).with_suffix(".json")).read_text())
            else:
                result = extract_vggish(params, args.workers)
            print(json.dumps({step: result}, indent=2), flush=True)
    return run_stage(run, (ParamsError, ValueError, VGGishStageError, FeatureCacheError))


if __name__ == "__main__":
    sys.exit(main())
