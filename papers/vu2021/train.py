"""Vu et al. 2021 Sec. 3.2-3.4: CNN and GRU training with common.train.fit, scoring, CNN features.

* The CNN (Sec. 3.2-3.3): teachers on the mixed training sets (Eq. 7) and students distilled from
  the teacher trained with T in {1, 2, 3} with the same seed, run in eval mode on the same
  (augmented) inputs (Eqs. 9, 10). The losses are in `papers/vu2021/losses.py`, the training sets
  in `papers/vu2021/data.py`.
* Scoring (Sec. 4.2): CCC per dimension and the EXPR criterion 0.67 F1 + 0.33 accuracy.
* Features for the GRU stage (Sec. 3.4): every frame through the frozen CNN, as is and mirrored,
  into a feature cache keyed by the CNN's weights: each task head's 128-d feature, EXPR then VA.
* The GRU (Sec. 3.4): teacher (Eq. 7) and student (Eq. 10) over 32-frame sequences of those
  features (`data.Track`, `data.SequenceStreams`).
vu2021.method picks, once per run, the paper's reading or the released code's (ledger.yaml): one
forward pass over the mixed batch or one per training set (`FORWARD_SETS`), and the early stop
(`EARLY_STOP`); the data and loss twins are in data.py and losses.py.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.data.affwild2 import test_labels_released
from common.data.sequences import window_starts
from common.device import module_device
from common.features.cache import FeatureCache
from common.features.face_frames import frozen_for_inference
from common.files import atomic_write_json, file_sha256
from common.metrics import abaw2_expr_criterion, expr_metrics, va_metrics
from common.train import TrainConfig, fit
from common.weights import UnreadableWeights, load_weights_file
from papers.vu2021 import data as vd
from papers.vu2021.losses import bins_expectation, student_loss, teacher_loss
from papers.vu2021.model import MultitaskCNN, MultitaskGRU, build_cnn

CNN_KINDS = {  # run kind -> (training sets, student loss or None for a teacher)
    "teacher12": (("expr", "va"), None),
    "teacher123": (("expr", "va", "both"), None),
    "student_nosharing": (("expr", "va", "both"), "eq9"),
    "student_sharing": (("expr", "va", "both"), "eq10"),
}


class WeightsMismatch(ValueError):
    """A weights file does not fit the configured model; the message names the file and the fix."""


def load_model(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict saved by fit (best.pt) with torch.load(weights_only=True)."""
    try:
        state = load_weights_file(path)
    except (UnreadableWeights, FileNotFoundError) as e:
        raise WeightsMismatch(f"{path}: cannot be read ({e}); delete its run folder to retrain") from None
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        key = sorted(missing or unexpected)[0]
        raise WeightsMismatch(f"{path}: {'missing' if missing else 'unexpected'} key {key!r} "
                              f"({len(missing)} missing, {len(unexpected)} unexpected): it was trained "
                              "with another vu2021.cnn / vu2021.gru config; delete the run folder to retrain")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsMismatch(f"{path}: {str(e).splitlines()[1] if len(str(e).splitlines()) > 1 else e}; "
                              "it was trained with another config; delete the run folder to retrain") from None
    return model


# ------------------------------------------------------------------------------------- training

def forward_sets(model: nn.Module, batch: dict, key: str = "image") -> dict:
    """Every set's outputs from ONE forward pass (BatchNorm sees the whole mixed batch): method paper,
    Sec. 3.2's batch of N instances of every set."""
    names = list(batch)
    sizes = [batch[n][key].shape[0] for n in names]
    expr_logits, va_logits = model(torch.cat([batch[n][key] for n in names]))
    return dict(zip(names, zip(expr_logits.split(sizes), va_logits.split(sizes))))


def forward_each_set(model: nn.Module, batch: dict, key: str = "image") -> dict:
    """One forward pass per training set, so in training mode each set's BatchNorm statistics are
    its own: method released (one self.resnet50(input_image) per task; ledger: per_set_batchnorm)."""
    return {name: model(part[key]) for name, part in batch.items()}


FORWARD_SETS = {"paper": forward_sets, "released": forward_each_set}
# method -> epochs without improvement before stopping; the released default is 6 (ledger: early_stop)
EARLY_STOP = {"paper": lambda section: section["early_stop"],
              "released": lambda section: 6 if section["early_stop"] else 0}


# ---------------------------------------------------------------------------------- metrics

def score(expr_true, expr_logits, va_true, va_pred) -> dict:
    """Sec. 4.2 metrics: CCC per dimension; EXPR criterion 0.67 F1 + 0.33 accuracy (7 classes).

    `score` = criterion + CCC_V + CCC_A selects the best epoch; the released trainer selects and stops
    on the same sum (ledger: model_selection).
    """
    expr = expr_metrics(expr_true, expr_logits, num_classes=vd.N_EXPR)
    va = va_metrics(va_true, va_pred)
    out = {"expr_f1": expr["f1_macro"], "expr_accuracy": expr["accuracy"],
           "expr_criterion": abaw2_expr_criterion(expr_true, expr_logits, num_classes=vd.N_EXPR),
           "ccc_valence": va["ccc_valence"], "ccc_arousal": va["ccc_arousal"], "ccc_mean": va["p_va"]}
    out["score"] = out["expr_criterion"] + out["ccc_valence"] + out["ccc_arousal"]
    return {k: float(v) for k, v in out.items()}


def va_prediction(va_logits: torch.Tensor, vp: dict) -> torch.Tensor:
    """The VA prediction: the expectation over the bins (Eq. 2's regression output)."""
    return bins_expectation(va_logits, support=vp["bin_support"])


@torch.no_grad()
def predict_frames(model: MultitaskCNN, frames: vd.EvalFrames, cfg: dict, vp: dict):
    was = model.training
    model.eval()
    device = module_device(model)      # fit() puts the model on the GPU when there is one
    logits, va = [], []
    for images in vd.eval_batches(frames, cfg["crop"], cfg["pad"], cfg["eval_batch"],
                                    cfg["downsample"], workers=cfg.get("num_workers", 0), method=vp["method"]):
        e, v = model(images.to(device))
        logits.append(e.float().cpu())
        va.append(va_prediction(v.float(), vp).cpu())
    model.train(was)
    return torch.cat(logits).numpy(), torch.cat(va).numpy()


# ---------------------------------------------------------------------------------- the CNN

_STREAMS: dict = {}
_FRAMES: dict = {}


def _cached(store: dict, key, make):
    """Training sets and evaluation frames are built once per process and reused by every run."""
    if key not in store:
        store[key] = make()
    return store[key]


def train_config(section: dict, seed: int, method: str = "paper") -> TrainConfig:
    return TrainConfig(epochs=section["epochs"], batch_size=section["batch_size"],
                       lr=section["lr"], betas=tuple(section["betas"]), seed=seed,
                       monitor="score", mode="max", early_stop=EARLY_STOP[method](section),
                       num_workers=section.get("num_workers", 0))   # CNN: faces decoded in the workers


def train_cnn(params: dict, kind: str, seed: int, out: Path, teacher_dir: Path | None = None,
              progress: bool = False) -> dict:
    """One CNN run (teacher or student); writes best.pt, metrics.csv and result.json in `out`."""
    vp, cfg = params["vu2021"], params["vu2021"]["cnn"]
    sets, student = CNN_KINDS[kind]
    started = time.perf_counter()
    root, size = params["data"]["root"], vd.face_size(params)
    streams = _cached(_STREAMS, (root, size, vp["frame_step"], vp["method"]),     # the method's samplers
                      lambda: vd.build_streams(params))
    val = _cached(_FRAMES, (root, size, "validation"),
                  lambda: vd.eval_frames(params, "validation", vp["eval_stride"]))
    dataset = vd.TaskStreams({k: streams[k] for k in sets}, cfg["samples_per_epoch"],
                             cfg["crop"], cfg["pad"], seed, cfg["downsample"], vp["method"])
    torch.manual_seed(seed)                      # the initial weights depend on the seed only
    model = build_cnn(cfg)
    forward = FORWARD_SETS[vp["method"]]

    if student is None:
        def loss_fn(net, batch):
            return teacher_loss(forward(net, batch), batch, vp)                    # Eq. 7
    else:
        teacher = load_model(build_cnn(cfg), Path(teacher_dir) / "best.pt").eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

        def loss_fn(net, batch):
            teacher.to(module_device(net))    # no-op after the first batch
            with torch.no_grad():
                t_out = forward_sets(teacher, batch)
            return student_loss(forward(net, batch), t_out, batch, vp,
                                sharing=student == "eq10")                     # Eq. 9 / 10

    def evaluate(net):
        logits, va = predict_frames(net, val, cfg, vp)
        return score(val.expr, logits, val.va, va)

    def redraw(state, **_):
        dataset.set_epoch(state.epoch)           # a fresh balanced draw for the next epoch

    dataset.set_epoch(epochs_done(out))          # resuming after a kill replays the same draws

    fitted = fit(model, dataset, loss_fn, evaluate, train_config(cfg, seed, vp["method"]), out,
                 on_epoch_end=[redraw], progress=progress)
    result = {"kind": kind, "seed": seed, "epochs_run": len(fitted["history"]),
              "best_epoch": fitted["best"]["epoch"], "train_seconds": round(time.perf_counter() - started, 2)}
    for split in ("validation", "test"):
        if split == "test" and not test_labels_released(root):      # the real release: no test score
            result[split] = no_score()
            continue
        frames = val if split == "validation" else _cached(
            _FRAMES, (root, size, split), lambda: vd.eval_frames(params, split, vp["eval_stride"]))
        logits, va = predict_frames(model, frames, cfg, vp)
        result[split] = score(frames.expr, logits, frames.va, va)
    result["seconds"] = round(time.perf_counter() - started, 2)
    atomic_write_json(out / "result.json", result)
    return result


def epochs_done(out: Path) -> int:
    """Epochs a killed run already finished (fit resumes after them): the next epoch's draw."""
    path = Path(out) / "metrics.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0



# ---------------------------------------------------------------- features for the GRU stage

FEATURE_EXTRACTOR = "vu2021_cnn"
FEATURE_VERSION = "2"          # 2: the two heads' features (EXPR, VA), 2 x feature_dim


class _Features(nn.Module):
    def __init__(self, model: MultitaskCNN):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.features(x)


def feature_caches(root: Path, cnn_dir: Path, cfg: dict, method: str = "paper") -> dict[bool, FeatureCache]:
    """{flipped: cache} of one CNN's per-task 128-d features, keyed by its weights' hash and the
    evaluation view of the method."""
    sha = file_sha256(Path(cnn_dir) / "best.pt")[:16]
    return {flip: FeatureCache(root, FEATURE_EXTRACTOR, FEATURE_VERSION,
                               {"weights_sha256": sha, "flip": flip, "crop": cfg["crop"],
                                "pad": cfg["pad"], "downsample": cfg["downsample"], "view": method},
                               2 * cfg["feature_dim"])
            for flip in (False, True)}


@torch.no_grad()
def extract_features(params: dict, cnn_dir: Path, root: Path, videos: list) -> dict[bool, FeatureCache]:
    """Every frame of `videos` through the frozen CNN, as is and mirrored (Sec. 3.4).

    The mirrored copy lets the GRU stage apply the paper's sequence-level flip (Sec. 3.4: "the
    same augmentation ... in sequence level") to cached features: a flipped sequence reads it.
    """
    cfg, method = params["vu2021"]["cnn"], params["vu2021"]["method"]
    caches = feature_caches(root, cnn_dir, cfg, method)
    todo = [v for v in videos if not all(c.has(v.video) for c in caches.values())]
    if not todo:
        return caches
    model = load_model(build_cnn(cfg), Path(cnn_dir) / "best.pt")
    net = frozen_for_inference(_Features(model))
    faces = vd.face_cache(params)
    crop, pad, batch = cfg["crop"], cfg["pad"], cfg["eval_batch"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for v in todo:
        pixels = torch.from_numpy(np.array(faces.get(v.video, v.n_frames)))
        for flip, cache in caches.items():
            out = []
            for chunk in pixels.split(batch):
                images = vd.EVAL_VIEWS[method](chunk.flip(-1) if flip else chunk, crop, pad, cfg["downsample"])
                out.append(net(images.to(device)).float().cpu())
            cache.put(v.video, torch.cat(out).numpy())
    return caches


# ------------------------------------------------------------------------------ the GRU stage

@torch.no_grad()
def predict_tracks(model: nn.Module, tracks: list, length: int, vp: dict, gru: bool = True):
    """Per-frame (EXPR logits, VA) of every track: non-overlapping windows, the last end-aligned
    (its frames already predicted by the window before keep the later, end-aligned prediction).

    gru=False: `model` is a MultitaskCNN and its heads are applied to the cached features frame
    by frame (the CNN alone, on exactly the frames the GRU is scored on).
    """
    was = model.training
    model.eval()
    device = module_device(model)
    logits, va = [], []
    for t in tracks:
        starts = window_starts(t.n, length, length)
        x = torch.stack([t.window(s, length)[0] for s in starts]).to(device)   # (W, T, D)
        e, v = model(x) if gru else model.heads(x)
        e, v = e.float().cpu(), va_prediction(v.float(), vp).cpu()
        e_out, v_out = torch.zeros(t.n, e.shape[-1]), torch.zeros(t.n, 2)
        for i, s in enumerate(starts):
            n = min(length, t.n - s)
            e_out[s:s + n], v_out[s:s + n] = e[i, :n], v[i, :n]
        logits.append(e_out)
        va.append(v_out)
    model.train(was)
    return torch.cat(logits).numpy(), torch.cat(va).numpy()


def no_score() -> dict:
    """score()'s keys, all NaN: a split with no labelled track (the real release's test split)."""
    return dict.fromkeys(("expr_f1", "expr_accuracy", "expr_criterion", "ccc_valence", "ccc_arousal",
                          "ccc_mean", "score"), float("nan"))


def track_score(model, tracks: list, length: int, vp: dict, gru: bool = True) -> dict:
    if not tracks:
        return no_score()
    logits, va = predict_tracks(model, tracks, length, vp, gru)
    return score(np.concatenate([t.expr for t in tracks]), logits,
                 np.concatenate([t.va for t in tracks]), va)


def build_gru(params: dict) -> MultitaskGRU:
    g = params["vu2021"]["gru"]
    return MultitaskGRU(params["vu2021"]["cnn"]["feature_dim"], g["hidden"],
                        params["vu2021"]["cnn"]["n_bins"], g["dropout"])


def train_gru(params: dict, kind: str, seed: int, tracks: dict, out: Path,
              teacher_dir: Path | None = None, progress: bool = False) -> dict:
    """GRU teacher (Eq. 7 over the EXPR and VA sets) or student (Eq. 10); writes result.json."""
    vp, g = params["vu2021"], params["vu2021"]["gru"]
    started = time.perf_counter()
    length = g["seq_len"]
    dataset = vd.SequenceStreams(tracks["train"], length, seed, g["samples_per_epoch"])
    torch.manual_seed(seed)
    model = build_gru(params)
    forward = FORWARD_SETS[vp["method"]]        # the GRUs have no BatchNorm: the same outputs either way
    if kind == "teacher":
        def loss_fn(net, batch):
            return teacher_loss(forward(net, batch, "x"), batch, vp)                   # Eq. 7
    else:
        teacher = load_model(build_gru(params), Path(teacher_dir) / "best.pt").eval()

        def loss_fn(net, batch):
            teacher.to(module_device(net))
            with torch.no_grad():
                t_out = forward_sets(teacher, batch, "x")
            return student_loss(forward(net, batch, "x"), t_out, batch, vp, sharing=True)  # Eq. 10

    def redraw(state, **_):
        dataset.set_epoch(state.epoch)

    dataset.set_epoch(epochs_done(out))
    fitted = fit(model, dataset, loss_fn, lambda net: track_score(net, tracks["validation"], length, vp),
                 train_config(g, seed, vp["method"]), out, on_epoch_end=[redraw], progress=progress)
    result = {"kind": kind, "seed": seed, "epochs_run": len(fitted["history"]),
              "best_epoch": fitted["best"]["epoch"]}
    for split in ("validation", "test"):
        result[split] = track_score(model, tracks[split], length, vp)
    result["seconds"] = round(time.perf_counter() - started, 2)
    atomic_write_json(out / "result.json", result)
    return result
