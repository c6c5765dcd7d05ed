"""The visual feature stage: a frozen frame encoder turns every face frame into a 512-d vector.

Zhang et al. (2021) Sec. 3.1 encode each cropped-aligned face with a ResNet-50 that was trained
for face recognition on MS-Celeb-1M and then fine-tuned for expressions on FER+, and feed the
per-frame 512-d encodings to a TCN. This module provides that encoder in two steps:

    python -m common.features.visual pretrain [--profile smoke]   # -> <model_dir>/frame_encoder.pt
    python -m common.features.visual extract  [--profile smoke]   # -> the feature cache

pretrain: those weights cannot be downloaded here, so
  * if `visual_encoder.weights` names a local state-dict file (e.g. the authors' ResNet-50), it is
    loaded (torch.load(weights_only=True)) and checked against the configured architecture;
  * otherwise the ResNet is pre-trained inside the pipeline on the AffectNet-like still-image
    side set (`side/affectnet`): 7-class expression cross-entropy plus 1 - CCC on valence and
    arousal, with two small heads on the embedding, 10% of the images held out for validation.
    This stands in for the FER+ fine-tuning step; there is no face-recognition stage.
  Either way the encoder's weights land in `<visual_encoder.model_dir>/frame_encoder.pt` and the
  held-out metrics in `frame_encoder.json` beside it.

extract: every face frame of every face track of every split goes through the frozen encoder
  (eval mode, centre crop) into the feature cache (extractor `frame_encoder`, float16, one
  (n_frames, embed_dim) array per track), so the temporal models never touch a JPEG again.

Input pipeline, as in Zhang's code (Sec. 4.2 / 4.3): faces resized to `input_size` (48) px, a
random `crop` (40) px crop plus horizontal flip while training, the centre crop otherwise, pixel
values scaled to [0, 1] and normalised with mean = std = 0.5 (so to [-1, 1]). That face-image code
is shared with the other face networks (common/features/face_frames.py), and so is the side-set
pre-training (common/features/side_sets.py).
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from common.backbones.ir50 import PUBLISHED as IR_PUBLISHED
from common.backbones.ir50 import build_ir50
from common.backbones.resnet import ResNet
from common.data.affwild2 import SPLITS, read_split
from common.data.still_images import read_still_set
from common.device import torch_threads
from common.features import pretraining
from common.features.cache import FeatureCache, params_key
from common.features.extract import run_stage, stage_parser
from common.features.face_frames import (TrackFaces, centre_crop, decode_faces, encode_faces, frozen_for_inference,
                                         normalise, track_features)
from common.features.side_sets import (PretrainNet, StillFaces, majority_rate, predict, pretrain_loss, side_metrics,
                                       split_side_set)
from common.files import atomic_write_json, file_sha256
from common.losses import ccc_loss
from common.params import ParamsError, load_params
from common.weights import UnreadableWeights, detect_layout, read_state_dict, state_dict_problems

EXTRACTOR = "frame_encoder"
VERSION = "1"             # bump when the extraction itself changes (not the weights: they are hashed)


class EncoderWeightsError(ValueError):
    """A weights file cannot serve as the frame encoder; the message names the file and the fix."""


# --------------------------------------------------------------------------------------------
# Configuration and files
# --------------------------------------------------------------------------------------------

def encoder_config(vp: dict) -> dict:
    """What determines the features besides the weights: the architecture and the input pipeline."""
    c = {"block": vp["block"], "layers": list(vp["layers"]), "width": vp["width"],
         "embed_dim": vp["embed_dim"], "dropout": vp["dropout"],
         "input_size": vp["input_size"], "crop": vp["crop"]}
    if vp["block"] == "ir":                     # IR-50 (common/backbones/ir50.py): its first stage's stride
        c["first_stride"] = vp["first_stride"]
    return c


def build_encoder(vp: dict) -> nn.Module:
    """The configured frame encoder: a ResNet (block basic / bottleneck) or Zhang's IR-50 (block ir)."""
    c = encoder_config(vp)
    if c["crop"] > c["input_size"]:
        raise ParamsError(f"visual_encoder.crop = {c['crop']} is larger than input_size = "
                          f"{c['input_size']}; the crop is cut out of the resized face")
    if c["block"] == "ir":
        return build_ir50(c)
    return ResNet(c["block"], tuple(c["layers"]), c["width"], c["embed_dim"], c["dropout"])


def encoder_path(params: dict) -> Path:
    """<visual_encoder.model_dir>/frame_encoder.pt (data/models/ by default, beside data/features/)."""
    return Path(params["visual_encoder"]["model_dir"]) / "frame_encoder.pt"


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a state-dict file into `encoder`, or raise EncoderWeightsError saying what does not fit.

    weights_only=True: a .pt file is a pickle, and only tensors and plain containers are
    unpickled this way, so a file from elsewhere cannot run code on this machine.
    """
    path = Path(path)
    if not path.is_file():
        raise EncoderWeightsError(f"{path}: visual_encoder.weights names a file that does not exist; "
                                  f"fix the path, or set weights: \"\" to pre-train in the pipeline")
    try:
        state = read_state_dict(path)          # weights_only=True; DDP "module." prefixes dropped
    except UnreadableWeights as e:
        raise EncoderWeightsError(f"{path}: cannot be read as a weights-only state dict ({e})") from None
    layout = detect_layout(state, IR_PUBLISHED)      # Zhang's FER+ IR-50 / face.evoLVe's, read as published
    if layout is not None:
        state = layout.convert(state)
    problems = state_dict_problems(encoder, state)
    if problems:
        fits = "; ".join(f"{lo.name}: {lo.fits}" for lo in IR_PUBLISHED)
        raise EncoderWeightsError(f"{path}: does not fit the configured frame encoder {encoder_config_note(encoder)}; "
                                  f"{problems}. Set visual_encoder block/layers/width/embed_dim/crop/first_stride "
                                  f"to the file's architecture (published files this loader reads: {fits}).")
    encoder.load_state_dict(state)
    encoder.weights_source = layout.name if layout is not None else None


def encoder_config_note(encoder: nn.Module) -> str:
    n_params = sum(p.numel() for p in encoder.parameters())
    return f"({type(encoder).__name__}, {n_params:,} parameters, embed_dim {encoder.embed_dim})"


# --------------------------------------------------------------------------------------------
# Pre-training on the AffectNet-like side set
# --------------------------------------------------------------------------------------------

def _load_side_set(params: dict) -> tuple:
    vp = params["visual_encoder"]
    side = read_still_set(params["data"]["root"], "affectnet")
    images = decode_faces(side.image_paths, vp["input_size"])
    return side, images


def _pretrain_in_pipeline(params: dict, encoder: ResNet, progress: bool) -> dict:
    from common.train import fit

    vp = params["visual_encoder"]
    side, images = _load_side_set(params)
    train_idx, val_idx = split_side_set(len(side), vp["seed"], vp["batch_size"])
    crop = vp["crop"]
    train_set = StillFaces(images[train_idx], side.expression[train_idx], side.va[train_idx], crop, True)
    val_set = StillFaces(images[val_idx], side.expression[val_idx], side.va[val_idx], crop, False)
    net = PretrainNet(encoder)

    def evaluate(model) -> dict:
        logits, va = predict(model, val_set)
        return side_metrics(logits, va, side.expression[val_idx], side.va[val_idx])

    cfg = pretraining.train_config(vp, "score", "max", weight_decay=vp["weight_decay"])
    # fit() resumes from a checkpoint in its folder, so the folder is keyed by everything that
    # shapes the run (settings, images, labels): a change starts afresh instead of resuming
    # a different run.
    data = hashlib.sha256(images.numpy().tobytes())
    data.update(side.expression.tobytes())
    data.update(side.va.tobytes())
    run_key = params_key({**vp, "side_set_sha256": data.hexdigest()})
    out_dir = Path(vp["model_dir"]) / "frame_encoder_train" / run_key
    result = fit(net, train_set, pretrain_loss, evaluate, cfg, out_dir, progress=progress)
    net.cpu()                                  # fit() may have moved it to a GPU
    best = result["best"]
    return {"metrics": {k: best[k] for k in ("expr_f1", "expr_accuracy", "ccc_valence",
                                             "ccc_arousal", "ccc_mean")},
            "best_epoch": best["epoch"], "epochs_run": len(result["history"]),
            "train_images": len(train_idx), "val_images": len(val_idx),
            "majority_accuracy": majority_rate(side.expression[val_idx]),
            "train_folder": str(out_dir)}


def _probe_loaded(params: dict, encoder: ResNet) -> dict:
    """Validation metrics for loaded weights: a linear probe on the frozen embedding.

    Loaded weights come without our heads, so the two heads alone are fitted on the embeddings
    of the 90% training split (the encoder stays untouched), then scored on the held-out 10%.
    """
    vp = params["visual_encoder"]
    side, images = _load_side_set(params)
    train_idx, val_idx = split_side_set(len(side), vp["seed"], vp["batch_size"])
    encoder.eval()
    with torch.no_grad():
        z = torch.cat([encoder(normalise(centre_crop(chunk, vp["crop"])))
                       for chunk in images.split(256)])
    torch.manual_seed(vp["seed"])
    heads = PretrainNet(encoder)
    opt = torch.optim.Adam(list(heads.expr_head.parameters()) + list(heads.va_head.parameters()), lr=1e-2)
    expr = torch.as_tensor(side.expression, dtype=torch.long)
    va = torch.as_tensor(side.va)
    zt = z[train_idx]
    for _ in range(300):       # full-batch steps on a convex problem: plenty to converge
        loss = nn.functional.cross_entropy(heads.expr_head(zt), expr[train_idx]) \
            + ccc_loss(torch.tanh(heads.va_head(zt)), va[train_idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        zv = z[val_idx]
        metrics = side_metrics(heads.expr_head(zv).numpy(), torch.tanh(heads.va_head(zv)).numpy(),
                               side.expression[val_idx], side.va[val_idx])
    metrics.pop("score")
    return {"metrics": metrics, "probe": "linear heads on the frozen embedding",
            "train_images": len(train_idx), "val_images": len(val_idx),
            "majority_accuracy": majority_rate(side.expression[val_idx])}


def pretrain_frame_encoder(params: dict, progress: bool = True, threads: int = 1) -> Path:
    """Load or pre-train the frame encoder; write <model_dir>/frame_encoder.pt (+ .json). Returns the .pt path."""
    vp = params["visual_encoder"]
    return pretraining.pretrain_or_load(
        params, EXTRACTOR, lambda: build_encoder(vp), lambda encoder, path: _load_file(params, encoder, path),
        lambda encoder, _: {"source": "pretrained_in_pipeline", "side_set": "affectnet",
                            **_pretrain_in_pipeline(params, encoder, progress)},
        threads, section="visual_encoder", seed=vp["seed"], record=lambda _: {},
        record_file=lambda _, path: {"config": encoder_config(vp), "file": str(path), "sha256": file_sha256(path)})


def _load_file(params: dict, encoder: nn.Module, path: str) -> dict:
    """Fill the encoder from visual_encoder.weights; what to record: the file's hash and a linear probe."""
    load_encoder_weights(encoder, path)
    return {"weights_file_sha256": file_sha256(path), **_probe_loaded(params, encoder)}


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

def extract_visual(params: dict, workers: int = 2, progress: bool = True, threads: int = 1) -> dict:
    """Fill the feature cache with frame-encoder features of every face track; returns the summary.

    Frames with no face image take the feature of the nearest frame that has one (Liu et al.
    2023 Sec. 3.1). Zhang's code instead feeds a black (all-zero) image for such frames (Sec.
    4.2: the frame matrix B starts as zeros); with ~3% face-less frames the difference is small,
    and the nearest face is the better guess of the expression at that moment.
    `workers` processes decode JPEGs (PIL, once per frame) while `threads` torch threads run
    the encoder on batches of `extract_batch` frames.
    """
    with torch_threads(threads):
        return _extract_visual(params, workers, progress)


def _extract_visual(params: dict, workers: int, progress: bool) -> dict:
    from tqdm import tqdm

    vp = params["visual_encoder"]
    weights = encoder_path(params)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no frame encoder yet; run `python -m common.features.visual "
                                f"pretrain` first (or dvc repro)")
    encoder = build_encoder(vp)
    load_encoder_weights(encoder, weights)
    encoder = frozen_for_inference(encoder)
    sha = file_sha256(weights)
    dim, crop, size = vp["embed_dim"], vp["crop"], vp["input_size"]
    cache = feature_cache(params, sha)

    started = time.perf_counter()
    tracks = [video for split in SPLITS for video in read_split(params["data"]["root"], split)]
    todo = [t for t in tracks if not cache.has(t.video)]
    loader = DataLoader(TrackFaces(todo, size), batch_size=None, num_workers=workers,
                        multiprocessing_context="fork" if workers > 0 else None)
    bar = tqdm(total=sum(t.n_frames for t in todo), desc=f"features: {EXTRACTOR}", unit="frame",
               disable=None if progress else True, file=sys.stderr)
    encoded_faces = 0
    for i, faces in loader:
        track = todo[i]
        features = track_features(encode_faces(encoder, faces, crop, vp["extract_batch"], dim),
                                  track.has_image, dim)
        cache.put(track.video, features)
        encoded_faces += len(faces)
        bar.update(track.n_frames)
    bar.close()
    seconds = time.perf_counter() - started
    frames = sum(t.n_frames for t in todo)
    summary = {"extractor": EXTRACTOR, "version": VERSION, "dim": dim, "weights": str(weights),
               "weights_sha256": sha, "tracks": len(tracks), "computed": len(todo),
               "frames": frames, "face_frames": encoded_faces,
               "tracks_without_faces": sum(not t.has_image.any() for t in todo),
               "seconds": round(seconds, 2), "frames_per_second": round(frames / max(seconds, 1e-9), 1),
               "workers": workers, "folder": str(cache.folder)}
    atomic_write_json(Path(params["features"]["root"]) / f"{EXTRACTOR}.json", summary)
    return summary


def feature_cache(params: dict, sha: str | None = None) -> FeatureCache:
    """The cache extract_visual fills for the current weights: readers of the features use it too.

    Its folder is keyed by the encoder config and the weights' hash: new weights, new folder.
    """
    vp = params["visual_encoder"]
    sha = sha or file_sha256(encoder_path(params))
    return FeatureCache(params["features"]["root"], EXTRACTOR, VERSION,
                        {**encoder_config(vp), "weights_sha256": sha[:16]}, vp["embed_dim"])


def main(argv=None) -> int:
    ap = stage_parser("pre-train (or load) the frame encoder, then extract its features",
                      workers="JPEG-decoding processes for extract")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads; 2 only helps on an otherwise idle machine (see "
                         "common.device.torch_threads)")
    args = ap.parse_args(argv)

    def run():
        params = load_params(args.params, args.profile)
        for step in args.steps:
            if step == "pretrain":
                path = pretrain_frame_encoder(params, threads=args.threads)
                print(path.with_suffix(".json").read_text(), end="", flush=True)
            else:
                print(json.dumps(extract_visual(params, args.workers, threads=args.threads), indent=2), flush=True)
    return run_stage(run, (ParamsError, EncoderWeightsError, FileNotFoundError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
