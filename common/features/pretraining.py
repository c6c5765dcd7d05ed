"""The `pretrain` step every network feature shares: load `<section>.weights`, or pre-train in the pipeline.

A network feature (Liu et al. 2023's `ecapatdnn`, `fau`, `mae`, `hubert`, ...) has a params.yaml
section with `weights` ("" = pre-train here), `model_dir` and `pretrain.seed`. This writes
<model_dir>/<name>.pt (the backbone's state dict, what `extract` loads with weights_only=True)
and <model_dir>/<name>.json (the architecture, where the weights came from, the validation
metrics of the in-pipeline pre-training and the seconds it took).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from common.device import torch_threads
from common.features.cache import FeatureCache, FeatureCacheError
from common.files import atomic_torch_save, atomic_write_json, file_sha256
from common.weights import weights_provenance


def model_path(params: dict, name: str, section: str | None = None) -> Path:
    """<model_dir of params section `section` (default: `name`)>/<name>.pt."""
    return Path(params[section or name]["model_dir"]) / f"{name}.pt"


def network_cache(params: dict, name: str, version: str, settings: dict, dim: int,
                  command: str | None = None) -> FeatureCache:
    """The feature cache of network `name`'s current weights: keyed by the sha256 of
    <model_dir>/<name>.pt and the extraction `settings`, so new weights or settings open a new
    folder. `command` is what to run when the weights are missing (default: the module's CLI)."""
    path = model_path(params, name)
    if not path.is_file():
        command = command or f"python -m common.features.{name}"
        raise FeatureCacheError(f"{path}: not found; run `{command} pretrain` first")
    return FeatureCache(params["features"]["root"], name, version, {"weights": file_sha256(path), **settings}, dim)


def train_config(p: dict, monitor: str, mode: str, **more):
    """The common.train.TrainConfig of a network's pre-training: epochs, batch_size, lr and seed from
    its params block `p`, the best epoch by evaluate()'s `monitor` (`mode` "min" or "max"), and
    `more` (weight_decay, betas, early_stop where the network uses them)."""
    from common.train import TrainConfig
    return TrainConfig(epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], seed=p["seed"],
                       monitor=monitor, mode=mode, **more)


def _architecture(backbone: nn.Module) -> dict:
    return {"architecture": getattr(backbone, "config", {})}


def pretrain_or_load(params: dict, name: str, build: Callable[[], nn.Module],
                     load: Callable[[nn.Module, str], dict | None], train: Callable[[nn.Module, Path], dict],
                     threads: int = 1, *, section: str | None = None, seed: int | None = None,
                     record: Callable[[nn.Module], dict] = _architecture,
                     record_file: Callable[[nn.Module, Path], dict] | None = None) -> Path:
    """Write <model_dir>/<name>.pt (the backbone's state dict) and <name>.json (what it is), with
    `threads` torch threads (0 = as they are) and torch seeded first (the initial weights are part
    of the run). build() -> the backbone; load(backbone, file) fills it from `<section>.weights`
    and may return more to record about the file; otherwise train(backbone, out_dir) trains it in
    place and returns what to record (source, validation...).

    section: the params section (default `name`); seed: default <section>.pretrain.seed;
    record(backbone): the record's first entries (default its architecture);
    record_file(backbone, pt_path): entries after the written file's, before `seconds`.
    """
    cfg = params[section or name]
    out_dir = Path(cfg["model_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = model_path(params, name, section)
    started = time.perf_counter()
    with torch_threads(threads):
        torch.manual_seed(int(cfg["pretrain"]["seed"] if seed is None else seed))
        backbone = build()
        summary = record(backbone)
        if cfg["weights"]:
            more = load(backbone, cfg["weights"])
            summary.update(source=weights_provenance(backbone, cfg["weights"]), weights_file=cfg["weights"],
                           **(more or {}))
        else:
            summary.update(train(backbone, out_dir))
        atomic_torch_save(backbone.state_dict(), path)
    if record_file is not None:
        summary.update(record_file(backbone, path))
    summary["seconds"] = round(time.perf_counter() - started, 2)
    atomic_write_json(out_dir / f"{name}.json", summary)
    return path


def cli(argv, name: str, description: str, pretrain: Callable, extract: Callable, errors: tuple) -> int:
    """`python -m common.features.<name> pretrain [extract] [--profile P]`: runs the steps in order
    (the DVC stage runs both in one process: one interpreter start, the network built once), prints
    each step's summary JSON, or prints the error (one of `errors`: a bad file or setting, named by
    the message) and exits 2."""
    import json

    from common.features.extract import run_stage, stage_parser
    from common.params import ParamsError, load_params
    from common.train import distributed
    ap = stage_parser(description)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (0 = torch's default); narrow networks gain nothing from a second one")
    args = ap.parse_args(argv)
    # Under torchrun (one process per GPU) the pre-training is data-parallel: common.train.fit
    # wraps the network in DistributedDataParallel (nccl), every rank ends with the same weights.
    # Extraction is inference over every track, so rank 0 does it alone once all ranks are done.
    rank, world = distributed()

    def run():
        params = load_params(args.params, args.profile)
        with torch_threads(args.threads):
            for step in args.steps:
                if step == "pretrain":
                    pretrain(params)
                    result = json.loads((Path(params[name]["model_dir"]) / f"{name}.json").read_text())
                else:
                    if world > 1:
                        torch.distributed.barrier()
                        if rank != 0:
                            break
                    result = extract(params)
                if rank == 0:
                    print(json.dumps({step: result}, indent=2, default=str), flush=True)
    try:
        return run_stage(run, (ParamsError, ValueError, FileNotFoundError, *errors))
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def random_crop_flip(images: torch.Tensor, crop: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random crop position and a horizontal flip for half of the batch (the training input).

    Runs on the batch where it is (issue 11: augmentation on the device): a slice and one
    torch.where over the whole batch. The random numbers come from `generator`, or torch's
    global CPU generator, which fit() seeds and checkpoints: they are drawn on the CPU (the same
    numbers on any device, so a GPU run augments as the CPU run does) and only the flip mask,
    B booleans, travels to the batch's device.
    """
    size = images.shape[-1]
    top, left = (int(v) for v in torch.randint(0, size - crop + 1, (2,), generator=generator))
    out = images[..., top:top + crop, left:left + crop]
    flip = (torch.rand(len(out), generator=generator) < 0.5).to(images.device, non_blocking=True)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def sample_face_frames(params: dict, split: str, n: int, seed: int, where: Callable) -> tuple:
    """Up to n face frames of `split` (uniformly, fixed by `seed`) among those where `where(video)`
    (a boolean per frame) holds and the frame has a face image: (uint8 faces (n, 3, S, S) from the
    face-pixel cache, [(video annotation, frame indices), ...] in the same order)."""
    import numpy as np

    from common.data.affwild2 import read_split
    from common.features.faces import face_cache
    videos = read_split(params["data"]["root"], split)
    rows = [(i, f) for i, v in enumerate(videos) for f in np.flatnonzero(where(v) & v.has_image)]
    if not rows:
        raise ValueError(f"{params['data']['root']}: no usable face frames in {split} for this pre-training "
                         "(or set the feature's weights)")
    pick = sorted(rows[i] for i in np.random.default_rng(seed).permutation(len(rows))[:n])
    faces, picked = face_cache(params), []
    for i in sorted({i for i, _ in pick}):
        picked.append((videos[i], np.array([f for j, f in pick if j == i])))
    images = np.concatenate([np.asarray(faces.get(v.video, v.n_frames)[frames]) for v, frames in picked])
    return torch.from_numpy(images), picked


def extract_face_feature(params: dict, name: str, encoder: nn.Module, cache, crop: int, batch_size: int,
                         dim: int, threads: int = 1, workers: int = 2) -> dict:
    """Every face frame of every track through the frozen `encoder` (centre crop) into `cache`;
    frames without a face take the nearest face's row (Liu Sec. 3.1). Writes <features root>/<name>.json.
    Tracks are shared out to `workers` forked processes (a narrow network keeps one core busy;
    a second torch thread does not help it, a second process does)."""
    import numpy as np

    from common.data.affwild2 import SPLITS, read_split
    from common.features.faces import face_cache
    from common.features.visual import encode_faces, track_features
    from common.parallel import run_parallel
    faces = face_cache(params)
    started = time.perf_counter()
    tracks = [v for split in SPLITS for v in read_split(params["data"]["root"], split)]

    def encode(t) -> int:
        face_rows = torch.from_numpy(np.asarray(faces.get(t.video, t.n_frames)[t.has_image]))
        cache.put(t.video, track_features(encode_faces(encoder, face_rows, crop, batch_size, dim), t.has_image, dim))
        return len(face_rows)
    with torch_threads(threads):
        # longest tracks first, so neither worker is left with one long track at the end
        todo = sorted((t for t in tracks if not cache.has(t.video)), key=lambda t: -t.n_frames)
        encoded = sum(run_parallel(encode, todo, workers))
    summary = {"extractor": name, "dim": dim, "tracks": len(tracks), "face_frames": encoded, "workers": workers,
               "seconds": round(time.perf_counter() - started, 2), "folder": str(cache.folder)}
    atomic_write_json(Path(params["features"]["root"]) / f"{name}.json", summary)
    return summary
