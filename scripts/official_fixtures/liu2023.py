"""Regenerate tests/fixtures/official/liu2023/*.npz from the team's own code.

    python scripts/official_fixtures/liu2023.py --official /path/to/ABAW2023_VA-EXPR_Situ-RUCAIM3

The checkout must be situAI/ABAW2023_VA-EXPR_Situ-RUCAIM3 at 574c2e6 (`git archive 574c2e6`); its
code is imported from there at run time and never copied into this project. It needs torch, numpy,
PyYAML, h5py, loguru and timm (core/optimizer/builder.py imports timm); run it from a scratch
environment, not the project's (see tests/fixtures/official/liu2023/PROVENANCE.md).

The published package cannot be imported as it is: core/__init__.py imports the solver, whose
core/data/builder.py:8 imports `image_collate_fn`, which core/data/collate_fn.py never defines
(ImportError). So `core` and `core.data` are registered here as bare packages pointing at the
checkout's folders, which skips those two __init__ files and nothing else; every module used below
is the checkout's own file. The script records that ImportError, and the GRU config's TypeError, in
not_runnable.npz.

Fixtures (small sizes; every array float32 or float64 as the code produced it):
  transformer.npz  core/model/bert_model.py BERT in eval mode: its state_dict, an input (T, B, D)
                   and its output (T, B, 2).
  gru.npz          core/model/gru_model.py BiGRUEncoder in eval mode: state_dict, one input of one
                   segment and one of two segments, each segment run on its own as the solver does.
  loss.npz         core/data/SequenceData.py on two tiny videos written as the code reads them (one
                   h5 file per feature, label txt files with -5 rows), collated by base_collate_fn,
                   and core/loss/loss.py VALoss on each of two "GPU" batches of those segments.
  lr.npz           core/optimizer/builder.py Adam + StepLR from config/va.yaml, stepped as
                   core/solver/base_solver.py:186 does: the LR in force during each of the 25 epochs.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "official" / "liu2023"
SEED = 3407                                   # config/va.yaml:1


def import_official(checkout: Path):
    """The checkout's modules, with `core` and `core.data` as bare packages (see the module doc)."""
    sys.path.insert(0, str(checkout))
    for name in ("core", "core.data"):
        package = types.ModuleType(name)
        package.__path__ = [str(checkout / name.replace(".", "/"))]
        sys.modules[name] = package
    names = ("core.model.bert_model", "core.model.gru_model", "core.loss.loss", "core.optimizer.builder",
             "core.data.SequenceData", "core.data.collate_fn")
    return {n.rsplit(".", 1)[1]: importlib.import_module(n) for n in names}


def state(model) -> dict:
    return {f"w/{k}": v.detach().numpy() for k, v in model.state_dict().items()}


def transformer(mods) -> dict:
    torch.manual_seed(SEED)
    args = dict(input_dim=12, feedforward_dim=16, affine_dim=16, nheads=2, nlayers=2, dropout=0.3, use_pe=True,
                seq_len=10, head_dropout=0.1, head_dims=[8, 4], out_dim=1, task="va")
    model = mods["bert_model"].BERT(**args).eval()
    x = torch.randn(10, 3, 12)                                          # (T, B, D) as base_collate_fn gives
    with torch.no_grad():
        y = model(x)
    return {**state(model), "x": x.numpy(), "y": y.numpy(), "args": np.array(repr(args))}


def gru(mods) -> dict:
    torch.manual_seed(SEED)
    args = dict(input_dim=12, affine_dim=16, hidden_size=8, num_layers=2, bias=True, batch_first=False,
                dropout=0.3, bidirectional=True, task="va", out_dim=1, head_dropout=0.1, head_dims=[8, 4])
    model = mods["gru_model"].BiGRUEncoder(**args).eval()
    x = torch.randn(20, 3, 12)                                          # two 10-frame segments of 3 videos
    with torch.no_grad():
        # base_solver.py:80 calls model(feat): each dataset item (one segment) starts from hp=None
        y = torch.cat([model(x[:10]), model(x[10:])], 0)
    return {**state(model), "x": x.numpy(), "y": y.numpy(), "args": np.array(repr(args))}


def write_videos(root: Path, rng) -> dict:
    """Two videos in the code's layout: <feat>.h5 with one dataset per "video/00001" frame, and
    label txt files (a header, then "valence,arousal" rows; -5 marks an unannotated frame)."""
    import h5py
    lengths = {"vid_a": 27, "vid_b_left": 14}           # 27 - 2 invalid = 25 frames -> 3 segments of 10
    invalid = {"vid_a": [4, 17], "vid_b_left": [0]}
    feats = {"fau": 3, "ecapatdnn": 2}                  # a visual and an audio name of SequenceData.py:193
    labels_dir = root / "labels"
    labels_dir.mkdir()
    raw = {}
    files = {name: h5py.File(root / f"{name}.h5", "w") for name in feats}
    for video, n in lengths.items():
        va = rng.uniform(-1, 1, (n, 2)).round(3)
        va[invalid[video]] = -5
        raw[f"label/{video}"] = va
        lines = ["valence,arousal"] + [f"{v},{a}" for v, a in va]
        (labels_dir / f"{video}.txt").write_text("\n".join(lines) + "\n")
        for name, dim in feats.items():
            key = video.replace("_left", "") if name == "ecapatdnn" else video   # audio is per video
            values = rng.normal(size=(n, dim)).astype(np.float32)
            raw[f"{name}/{video}"] = values
            if key in files[name]:
                continue
            for i in range(n):
                files[name][f"{key}/{i + 1:05d}"] = values[i]
    for f in files.values():
        f.close()
    return raw


def loss(mods) -> dict:
    rng = np.random.default_rng(SEED)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        raw = write_videos(root, rng)
        data = mods["SequenceData"].SequenceData(str(root), str(root / "labels"), {"fau": 3, "ecapatdnn": 2},
                                                 seq_len=10, task="va", pad_mode="repeat_last")
        items = [data[i] for i in range(len(data))]
    batch = mods["collate_fn"].base_collate_fn(items)                   # feat (T, B, D), label (T, B, 2)
    t, b = batch["label"].shape[:2]
    pred = torch.from_numpy(rng.uniform(-1, 1, (t, b, 2)).astype(np.float32))
    criterion = mods["loss"].VALoss(eps=1e-8)
    label = batch["label"]                   # float64 as collated; VALoss promotes the float32 pred, as on the GPU
    # two "GPUs": rank r gets items r, r + 2, ... (DistributedSampler without shuffling); each rank's loss
    # is computed as base_solver.py:82-90 does, on its (T * B_r, 2) flattened batch
    rank_loss = [float(criterion(pred[:, r::2].reshape(-1, 2), label[:, r::2].reshape(-1, 2))) for r in range(2)]
    whole = float(criterion(pred.reshape(-1, 2), label.reshape(-1, 2)))
    return {**raw, "feat": batch["feat"].numpy(), "label": batch["label"].numpy(),
            "seq_list": batch["seq_list"].astype(str), "pred": pred.numpy(),
            "rank_loss": np.array(rank_loss), "one_batch_loss": np.array(whole)}


def lr(mods) -> dict:
    import yaml
    cfg = yaml.safe_load((CHECKOUT / "config" / "va.yaml").read_text())
    model = torch.nn.Linear(2, 2)
    # builder.py:39 registers the classes that subclass torch's _LRScheduler. Since torch 2.0 StepLR
    # subclasses LRScheduler and _LRScheduler is a subclass of that, so with torch >= 2.0 the lookup
    # of 'StepLR' fails (KeyError; not_runnable.npz). Registering torch's StepLR first gives what
    # torch 1.x's registry held; build_lr_scheduler then returns it as the code meant.
    registry = sys.modules["utils.registery"].LR_SCHEDULER_REGISTRY
    if "StepLR" not in registry:
        registry.register(torch.optim.lr_scheduler.StepLR)
    optimizer = mods["builder"].build_optimizer(cfg)(model.parameters(), **cfg["solver"]["optimizer"]["args"])
    scheduler = mods["builder"].build_lr_scheduler(cfg)(optimizer, **cfg["solver"]["lr_scheduler"]["args"])
    lrs = []
    for t in range(cfg["solver"]["args"]["epoch"]):                     # base_solver.py:63
        lrs.append(optimizer.param_groups[0]["lr"])                     # the LR the epoch trains with
        scheduler.step(t)                                               # base_solver.py:186
    return {"lr": np.array(lrs), "base_lr": np.array(5e-5), "step_size": np.array(20), "gamma": np.array(0.1)}


def not_runnable(checkout: Path) -> dict:
    """The two errors of the code as published (import of core; the GRU config's argument names)."""
    import subprocess
    import_error = subprocess.run([sys.executable, "-c", "import core.solver"], cwd=checkout, capture_output=True,
                                  text=True).stderr.strip().splitlines()[-1]
    import yaml
    args = yaml.safe_load((checkout / "config" / "va_gru.yaml").read_text())["model"]["args"]
    try:
        sys.modules["core.model.gru_model"].BiGRUEncoder(**args)
        gru_error = ""
    except TypeError as e:
        gru_error = f"TypeError: {e}"
    lookup = subprocess.run([sys.executable, "-c", "import sys, types; c = types.ModuleType('core'); "
                             "c.__path__ = ['core']; sys.modules['core'] = c; import yaml; "
                             "from core.optimizer.builder import build_lr_scheduler; "
                             "build_lr_scheduler(yaml.safe_load(open('config/va.yaml')))"],
                            cwd=checkout, capture_output=True, text=True).stderr.strip().splitlines()[-1]
    return {"import_core": np.array(import_error), "va_gru_config": np.array(gru_error),
            "steplr_lookup": np.array(lookup), "torch": np.array(torch.__version__)}


CHECKOUT = Path(".")


def main() -> None:
    global CHECKOUT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, type=Path, help="a checkout of the team's repo at 574c2e6")
    parser.add_argument("--out", type=Path, default=OUT)
    a = parser.parse_args()
    CHECKOUT = a.official.resolve()
    if not (CHECKOUT / "core" / "model" / "bert_model.py").is_file():
        sys.exit(f"{CHECKOUT}: not a checkout of situAI/ABAW2023_VA-EXPR_Situ-RUCAIM3 (no core/model/bert_model.py)")
    torch.set_num_threads(1)
    mods = import_official(CHECKOUT)
    a.out.mkdir(parents=True, exist_ok=True)
    for name, make in (("transformer", transformer), ("gru", gru), ("loss", loss), ("lr", lr),
                       ("not_runnable", lambda m: not_runnable(CHECKOUT))):
        arrays = make(mods)
        np.savez_compressed(a.out / f"{name}.npz", **arrays)
        print(f"{name}.npz: {len(arrays)} arrays")


if __name__ == "__main__":
    main()
