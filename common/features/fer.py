"""The FER feature stage: a frozen ResNeXt-SE face network, 512-d per frame (Jeong et al. 2022 Sec. 4.1).

    python -m common.features.fer pretrain [--profile smoke]   # -> <fer.model_dir>/fer.pt (+ fer.json)
    python -m common.features.fer extract  [--profile smoke]   # -> caches `fer` (512-d) and `fer_posteriors`

Jeong et al. take the FER model of DRER (Oh et al. 2021): ResNeXt + SE pre-trained on AffectNet
to predict valence and arousal, last layer removed, the 512-d penultimate output frozen as the
visual representation. The AffectNet weights cannot be downloaded here, so

pretrain: if `fer.weights` names a local state-dict file of the configured ResNeXtSE it is loaded
  (torch.load weights_only) with its heads (keys `encoder.*`, `expr_head.*`, `va_head.*`);
  otherwise the network is pre-trained in the pipeline on the AffectNet-like still-image side set
  (`side/affectnet`): valence-arousal 1 - CCC (the task DRER's FER model was trained for) plus
  7-class expression cross entropy (AffectNet's other label; the expression head is also what
  SoundNet's pre-training distils from, see common/features/soundnet.py). 10 % held out, as in
  the frame encoder, with the side-set training helpers it shares (common/features/side_sets.py).
extract: every frame of every face track from the face-pixel cache (common/features/faces.py,
  face-less frames already filled with the nearest face) through the frozen network, eval mode,
  centre crop: the 512-d features into cache `fer`, and the teacher outputs (7 expression
  probabilities + valence + arousal) into cache `fer_posteriors`, which SoundNet's pre-training
  uses as the visual teacher's predictions.
"""
from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.backbones.resnext_se import ResNeXtSE
from common.data.affwild2 import SPLITS, read_split
from common.data.still_images import read_still_set
from common.device import module_device
from common.features import face_frames, side_sets
from common.files import atomic_torch_save, atomic_write_json, file_sha256
from common.features.cache import FeatureCache, params_key
from common.params import ParamsError
from common.weights import UnreadableWeights, read_state_dict, state_dict_problems
from common.features.pretraining import cli, train_config

EXTRACTOR = "fer"
POSTERIORS = "fer_posteriors"
VERSION = "1"
N_EXPR = side_sets.N_EXPR          # the AffectNet-like side set's 7 expressions
POSTERIOR_DIM = N_EXPR + 2      # expression probabilities, valence, arousal


class FerWeightsError(ValueError):
    """A weights file cannot serve as the FER network; the message names the file and the fix."""


def fer_config(fp: dict) -> dict:
    return {"layers": list(fp["layers"]), "width": fp["width"], "cardinality": fp["cardinality"],
            "group_width": fp["group_width"], "embed_dim": fp["embed_dim"],
            "input_size": fp["input_size"], "crop": fp["crop"]}


def build_fer(fp: dict) -> side_sets.PretrainNet:
    """The ResNeXt-SE encoder with the expression and VA heads (side_sets.PretrainNet)."""
    c = fer_config(fp)
    if c["crop"] > c["input_size"]:
        raise ParamsError(f"fer.crop = {c['crop']} is larger than fer.input_size = {c['input_size']}")
    encoder = ResNeXtSE(tuple(c["layers"]), c["width"], c["cardinality"], c["group_width"], c["embed_dim"],
                        input_size=c["crop"])
    return side_sets.PretrainNet(encoder)


def fer_path(params: dict) -> Path:
    return Path(params["fer"]["model_dir"]) / "fer.pt"


def load_fer_weights(net: nn.Module, path: str | Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise FerWeightsError(f"{path}: fer.weights names a file that does not exist; fix the path, or set "
                              f"weights: \"\" to pre-train the FER network in the pipeline")
    try:
        state = read_state_dict(path)
    except UnreadableWeights as e:
        raise FerWeightsError(f"{path}: cannot be read as a weights-only state dict ({e})") from None
    problems = state_dict_problems(net, state)
    if problems:
        raise FerWeightsError(f"{path}: does not fit the configured FER network: {problems}; set fer "
                              f"layers/width/cardinality/group_width/embed_dim to the file's architecture")
    net.load_state_dict(state)


# --------------------------------------------------------------------------------------------
# Pre-training on the AffectNet-like side set
# --------------------------------------------------------------------------------------------

def pretrain_fer(params: dict, progress: bool = True) -> Path:
    """Load or pre-train the FER network; write <fer.model_dir>/fer.pt (+ fer.json). Returns the .pt path."""
    from common.train import fit

    fp = params["fer"]
    started = time.perf_counter()
    torch.manual_seed(fp["seed"])
    net = build_fer(fp)
    side = read_still_set(params["data"]["root"], "affectnet")
    images = face_frames.decode_faces(side.image_paths, fp["input_size"])
    train_idx, val_idx = side_sets.split_side_set(len(side), fp["seed"], fp["batch_size"])
    crop = fp["crop"]
    val_set = side_sets.StillFaces(images[val_idx], side.expression[val_idx], side.va[val_idx], crop, False)

    def evaluate(model) -> dict:
        logits, va = side_sets.predict(model, val_set)
        return side_sets.side_metrics(logits, va, side.expression[val_idx], side.va[val_idx])

    if fp["weights"]:
        load_fer_weights(net, fp["weights"])
        report = {"source": "loaded", "weights_file": fp["weights"],
                  "weights_file_sha256": file_sha256(fp["weights"])}
        metrics = evaluate(net)
    else:
        train_set = side_sets.StillFaces(images[train_idx], side.expression[train_idx], side.va[train_idx], crop, True)
        cfg = train_config(fp, "score", "max", weight_decay=fp["weight_decay"])
        # fit() resumes from its folder's checkpoint: key the folder by settings and data.
        data = hashlib.sha256(images.numpy().tobytes())
        data.update(side.expression.tobytes())
        data.update(side.va.tobytes())
        run_key = params_key({**fp, "side_set_sha256": data.hexdigest()})
        out_dir = Path(fp["model_dir"]) / "fer_train" / run_key
        result = fit(net, train_set, side_sets.pretrain_loss, evaluate, cfg, out_dir, progress=progress)
        metrics = result["best"]
        report = {"source": "pretrained_in_pipeline", "side_set": "affectnet", "best_epoch": metrics["epoch"],
                  "epochs_run": len(result["history"]), "train_folder": str(out_dir)}
    report["metrics"] = {k: metrics[k] for k in ("expr_f1", "expr_accuracy", "ccc_valence", "ccc_arousal", "ccc_mean")}
    report["majority_accuracy"] = side_sets.majority_rate(side.expression[val_idx])
    out = fer_path(params)
    atomic_torch_save(net.cpu().state_dict(), out)
    report.update({"config": fer_config(fp), "train_images": len(train_idx), "val_images": len(val_idx),
                   "file": str(out), "sha256": file_sha256(out),
                   "seconds": round(time.perf_counter() - started, 2)})
    atomic_write_json(out.with_suffix(".json"), report)
    return out


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

def feature_caches(params: dict, sha: str | None = None) -> tuple[FeatureCache, FeatureCache]:
    """(512-d features, 9-d teacher posteriors) caches for the current weights."""
    fp = params["fer"]
    sha = sha or file_sha256(fer_path(params))
    key = {**fer_config(fp), "faces_size": params["faces"]["size"], "weights_sha256": sha[:16]}
    return (FeatureCache(params["features"]["root"], EXTRACTOR, VERSION, key, fp["embed_dim"]),
            FeatureCache(params["features"]["root"], POSTERIORS, VERSION, key, POSTERIOR_DIM))


class _Teacher(nn.Module):
    """Encoder + heads in one scriptable forward: (features, posteriors) of a face batch."""

    def __init__(self, net: side_sets.PretrainNet):
        super().__init__()
        self.encoder, self.expr_head, self.va_head = net.encoder, net.expr_head, net.va_head

    def forward(self, x):
        z = self.encoder(x)
        post = torch.cat([torch.softmax(self.expr_head(z), -1), torch.tanh(self.va_head(z))], -1)
        return z, post


@torch.no_grad()
def encode_track(model: nn.Module, faces: np.ndarray, input_size: int, crop: int, batch: int):
    feats, posts = [], []
    device = module_device(model)                  # resized and cropped where the model runs
    for start in range(0, len(faces), batch):
        x = torch.from_numpy(np.array(faces[start:start + batch])).to(device)   # a writable copy of the memory map
        if x.shape[-1] != input_size:
            x = nn.functional.interpolate(x.float(), size=(input_size, input_size), mode="bilinear",
                                          align_corners=False).round().clamp(0, 255).to(torch.uint8)
        z, p = model(face_frames.normalise(face_frames.centre_crop(x, crop)))
        feats.append(z.float().cpu())
        posts.append(p.float().cpu())
    return torch.cat(feats).numpy(), torch.cat(posts).numpy()


def extract_fer(params: dict, progress: bool = True) -> dict:
    """Fill the `fer` and `fer_posteriors` caches for every face track; returns the summary."""
    from tqdm import tqdm

    from common.features.faces import face_cache

    fp = params["fer"]
    weights = fer_path(params)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no FER network yet; run `python -m common.features.fer pretrain` first")
    net = build_fer(fp)
    load_fer_weights(net, weights)
    net.eval()
    # TorchScript-frozen for CPU inference (BatchNorm folded into the convolutions): the same
    # function, ~2.5x the frames/s on this project's CPU (face_frames.frozen_for_inference).
    model = face_frames.frozen_for_inference(_Teacher(net).eval())
    sha = file_sha256(weights)
    features, posteriors = feature_caches(params, sha)
    faces = face_cache(params)
    started = time.perf_counter()
    tracks = [video for split in SPLITS for video in read_split(params["data"]["root"], split)]
    todo = [t for t in tracks if not (features.has(t.video) and posteriors.has(t.video))]
    for track in tqdm(todo, desc="features: fer", disable=None if progress else True, file=sys.stderr):
        z, p = encode_track(model, faces.get(track.video, track.n_frames), fp["input_size"],
                            fp["crop"], fp["extract_batch"])
        features.put(track.video, z)
        posteriors.put(track.video, p)
    seconds = time.perf_counter() - started
    frames = sum(t.n_frames for t in todo)
    summary = {"extractor": EXTRACTOR, "version": VERSION, "dim": fp["embed_dim"],
               "posterior_dim": POSTERIOR_DIM, "weights": str(weights), "weights_sha256": sha,
               "tracks": len(tracks), "computed": len(todo), "frames": frames, "seconds": round(seconds, 2),
               "frames_per_second": round(frames / max(seconds, 1e-9), 1), "folder": str(features.folder),
               "posteriors_folder": str(posteriors.folder)}
    atomic_write_json(Path(params["features"]["root"]) / f"{EXTRACTOR}.json", summary)
    return summary


def main(argv=None) -> int:
    return cli(argv, "fer", "pre-train (or load) the FER network, or extract its features", pretrain_fer, extract_fer,
               (FerWeightsError,))


if __name__ == "__main__":
    sys.exit(main())
