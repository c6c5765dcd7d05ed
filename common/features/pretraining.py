"""The `pretrain` step every network feature shares: load `<section>.weights`, or pre-train in the pipeline.

A network feature (Liu et al. 2023's `ecapatdnn`, `fau`, `mae`, `hubert`, ...) has a params.yaml
section with `weights` ("" = pre-train here), `model_dir` and `pretrain.seed`. This writes
<model_dir>/<name>.pt (the backbone's state dict, what `extract` loads with weights_only=True)
and <model_dir>/<name>.json (the architecture, where the weights came from, the validation
metrics of the in-pipeline pre-training and the seconds it took).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from common.device import torch_threads
from common.features.cache import FeatureCache, FeatureCacheError
from common.features.extract import run_stage, stage_parser
from common.files import atomic_torch_save, atomic_write_json, file_sha256
from common.params import ParamsError, load_params
from common.train import TrainConfig, distributed
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
