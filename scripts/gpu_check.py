"""`make gpu-check`: the paper profile on the GPU at hand, bounded to about 8 minutes.

Part 1, networks. Every paper-profile network is built with the project's own builders and
trained for a few steps with its own training loss (the one its pipeline stage uses), batches
already on the GPU. Each is timed four ways:
  * `fit`:      what common.train.fit does: bf16 autocast, channels_last for conv nets with
                cudnn.benchmark, fused Adam, the loss summed on the device (common.train.train_step);
  * `before`:   the loop as it was before these changes (NCHW, unfused Adam, float(loss) every step);
  * `nchw`:     `fit` without channels_last (a bare variant);
  * `compiled`: `fit` under torch.compile (a bare variant; skipped when it does not compile).
The `fit` share of the fastest variant is the issue's ">= 90 % of the fastest bare loop"
target. Each network's extraction (eval mode, no grad, bf16) is timed in frames (or clips) per
second, and a FLOP count of one training step gives the share of the GPU's bf16 peak.

Part 2, papers. scripts/gpu_paper_loops.py generates a small 112 px corpus on this machine,
runs the feature stages and each paper's own training loop for a few steps (Zhang train_fold,
Jeong teacher + student, Vu CNN teacher/student and GRU, Liu train_run with predict).

Part 3, projections. Measured step times x the paper profile's steps on real-size Aff-Wild2
(~2.8 M frames), per paper, and the whole feature bank over those frames.

Writes reports/benchmarks/gpu_<device>.json and prints the tables. Runs on whatever torch the
GPU machine has (tested with 2.11); on a CPU, `--tiny` runs the same code on smoke sizes.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.files import atomic_write_json  # noqa: E402
from common.params import load_params  # noqa: E402
from common.train import has_conv2d, make_optimizer, train_step, TrainConfig  # noqa: E402

# Aff-Wild2 at the ABAW3/5 size: 548 videos, ~2.8 M frames at 30 fps (~26 h of audio).
AFFWILD2_FRAMES = 2_800_000
AFFWILD2_AUDIO_S = AFFWILD2_FRAMES / 30.0
# Dense bf16 tensor-core peaks (NVIDIA data sheets, SXM): used only for the "share of peak" column.
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


@dataclass
class Network:
    """One network as its pipeline stage trains and runs it."""
    name: str
    paper: str
    build: Callable[[], nn.Module]            # the trained module (backbone + the stage's head)
    batch: Callable[[int, torch.device], object]
    loss: Callable                            # loss(net, batch), the stage's own
    embed: Callable                           # embed(net, batch) -> features (extraction)
    batch_size: int
    unit: str = "img"                         # what one sample is
    frames_per_sample: float = 1.0            # Aff-Wild2 label frames one extraction sample covers


def paper_networks(P: dict, tiny: bool) -> list[Network]:
    """The paper-profile networks (or the smoke sizes under --tiny), with their stages' losses."""
    from common.backbones.ecapatdnn import build_ecapa
    from common.backbones.hubert import build_hubert, last_layer
    from common.backbones.iresnet import build_iresnet
    from common.backbones.soundnet import SoundNet8
    from common.backbones.vggish import build_vggish
    from common.backbones.vit_mae import build_mae
    from common.backbones.wav2vec import Wav2Vec2Pretrain
    from common.features import face_frames, face_networks, fau, mae, side_sets, vggish
    from common.features.fer import build_fer
    from common.features.ecapatdnn import SpeakerClassifier
    from papers.liu2023.model import build_model as build_liu
    from papers.vu2021.model import build_cnn
    from papers.zhang2021.model import build_model as build_zhang
    from common.losses import ccc_loss

    size = P["faces"]["size"]
    b = (lambda n: max(2, n // 16)) if tiny else (lambda n: n)
    seconds = 1.0 if tiny else 8.0

    def faces(n, device):                      # uint8 faces, as the face-pixel cache holds them
        return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=device)

    def face_task(key, task):
        cfg = P[key]
        crop = int(cfg["crop"])
        build = face_networks.network(key).build

        def batch(n, d):
            y = torch.randint(0, 7, (n,), device=d) if task == "expression" else torch.rand(n, 2, device=d) * 2 - 1
            return faces(n, d), y
        return Network(key, "Liu 2023", lambda: face_networks.TaskNet(build(cfg), task), batch,
                       lambda net, bt: face_networks.training_loss(task, net, bt, crop),
                       lambda net, bt: net.backbone(face_frames.normalise(face_frames.centre_crop(bt[0], crop))),
                       b(128))

    def wave(n, d, rate=16000, s=seconds):
        return torch.randn(n, int(rate * s), device=d) * 0.1

    vu = P["vu2021"]["cnn"]
    hub, w2v = P["hubert"], P["wav2vec"]
    n_frames = int(seconds * 16000) // 320 - 1
    ecapa_len = int(P["ecapatdnn"]["window_s"] * 100)
    fer_crop = P["fer"]["crop"]
    liu, zh = P["liu2023"], P["zhang2021"]
    liu_dims = (512 + 1024, 768 + 192)         # e.g. fau,ires100 | ecapatdnn,hubert at paper size
    zh_window = int(zh["window"])

    def hubert_loss(net, bt):
        logit_m, _, penalty = net(bt[0], bt[1])
        return F.cross_entropy(logit_m, torch.zeros(len(logit_m), dtype=torch.long, device=logit_m.device)) \
            + 10.0 * penalty

    def vu_loss(net, bt):                      # Vu Eq. 1-2 shape: EXPR CE + VA bin CE
        expr, va = net(face_frames.normalise(bt[0]))
        return F.cross_entropy(expr, bt[1]) + F.cross_entropy(va.flatten(0, 1), bt[2].flatten())

    def liu_loss(net, bt):                     # Liu Eq. 10 with alpha = beta = 0.5
        pred = net({"visual": bt[0], "audio": bt[1]})
        return 0.5 * ccc_loss(pred[..., 0].reshape(-1), bt[2][..., 0].reshape(-1)) \
            + 0.5 * ccc_loss(pred[..., 1].reshape(-1), bt[2][..., 1].reshape(-1))

    def zhang_batch(n, d):
        x = {"visual": torch.randn(n, zh_window, zh["dims"]["visual"], device=d),
             "mfcc": torch.randn(n, zh_window, zh["dims"]["mfcc"], device=d),
             "vggish": torch.randn(n, zh_window, zh["dims"]["vggish"], device=d)}
        return x, torch.rand(n, zh_window, device=d) * 2 - 1

    vggish_weight = torch.ones(2)
    nets = [
        Network("vu_resnet50", "Vu 2021", lambda: build_cnn(vu),
                lambda n, d: (faces(n, d)[..., :int(vu["crop"]), :int(vu["crop"])],
                              torch.randint(0, 7, (n,), device=d), torch.randint(0, 20, (n, 2), device=d)),
                vu_loss, lambda net, bt: net.features(face_frames.normalise(bt[0])), b(192)),
        face_task("ires100", "expression"),
        face_task("densenet", "expression"),
        face_task("ms_va", "va"),
        Network("fau", "Liu 2023", lambda: fau.AUDetector(build_iresnet(P["fau"])),
                lambda n, d: (faces(n, d), torch.randint(0, 2, (n, 12), device=d).float(),
                              torch.ones(n, 12, device=d)),
                lambda net, bt: fau.training_loss(net, bt, P["fau"]["crop"]),
                lambda net, bt: net.backbone(face_frames.normalise(face_frames.centre_crop(bt[0], P["fau"]["crop"]))),
                b(128)),
        Network("mae", "Liu 2023", lambda: build_mae(P["mae"]), lambda n, d: (faces(n, d),),
                lambda net, bt: mae.training_loss(net, bt, P["mae"]["crop"], P["mae"]["mask_ratio"]),
                lambda net, bt: net(face_frames.normalise(face_frames.centre_crop(bt[0], P["mae"]["crop"]))), b(128)),
        Network("fer", "Jeong 2022", lambda: build_fer(P["fer"]),
                lambda n, d: {"image": face_frames.normalise(faces(n, d)[..., :fer_crop, :fer_crop]),
                              "expr": torch.randint(0, 7, (n,), device=d), "va": torch.rand(n, 2, device=d)},
                side_sets.pretrain_loss, lambda net, bt: net.encoder(bt["image"]), b(128)),
        Network("hubert", "Liu 2023", lambda: build_hubert(hub),
                lambda n, d: (wave(n, d), torch.randint(0, int(hub["clusters"]), (n, n_frames), device=d)),
                hubert_loss, lambda net, bt: last_layer(net, bt[0]), b(16), "clip",
                seconds * 30),
        Network("wav2vec", "Liu 2023", lambda: Wav2Vec2Pretrain(w2v), lambda n, d: (wave(n, d),),
                lambda net, bt: net.contrastive_loss(bt[0]), lambda net, bt: net(bt[0]), b(16), "clip",
                seconds * 30),
        Network("vggish", "Zhang 2021", lambda: vggish.EventTagger(build_vggish(P["vggish"])),
                lambda n, d: (torch.randn(n, 1, 96, 64, device=d), torch.randint(0, 2, (n, 2), device=d).float()),
                lambda net, bt: vggish.training_loss(net, bt, vggish_weight),
                lambda net, bt: net.backbone(bt[0]), b(256), "patch"),
        Network("soundnet", "Jeong 2022", lambda: SoundNet8(P["soundnet"]["width"]),
                lambda n, d: (wave(n, d, 22050, 24.0 if not tiny else 4.0),),
                lambda net, bt: net(bt[0]).float().logsumexp(1).mean(),
                lambda net, bt: net(bt[0]), b(8), "clip", (24.0 if not tiny else 4.0) * 30),
        Network("ecapatdnn", "Liu 2023", lambda: SpeakerClassifier(build_ecapa(P["ecapatdnn"]), 120),
                lambda n, d: (torch.randn(n, ecapa_len, 80, device=d), torch.randint(0, 120, (n,), device=d)),
                lambda net, bt: F.cross_entropy(net(bt[0]), bt[1]), lambda net, bt: net.backbone(bt[0]), b(128),
                "window", P["ecapatdnn"]["hop_s"] * 30),
        Network("zhang_tcn", "Zhang 2021", lambda: build_zhang(zh, "multimodal"), zhang_batch,
                lambda net, bt: ccc_loss(net(bt[0]), bt[1], per_sequence=True),
                lambda net, bt: net(bt[0]), int(zh["batch_size"]), "window", float(zh_window)),
        Network("liu_transformer", "Liu 2023",
                lambda: build_liu(liu, liu_dims[0], liu_dims[1], "transformer", "early"),
                lambda n, d: (torch.randn(n, int(liu["segment"]), liu_dims[0], device=d),
                              torch.randn(n, int(liu["segment"]), liu_dims[1], device=d),
                              torch.rand(n, int(liu["segment"]), 2, device=d) * 2 - 1),
                liu_loss, lambda net, bt: net({"visual": bt[0], "audio": bt[1]}), int(liu["batch_size"]),
                "segment", float(liu["segment"])),
    ]
    return nets


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_training(net: nn.Module, spec: Network, device, variant: str, steps: int, warmup: int) -> dict:
    """Samples/s of `steps` training steps after `warmup` (compilation and cuDNN autotuning)."""
    conv = has_conv2d(net)
    net = net.to(device)
    if variant in ("fit", "compiled") and device.type == "cuda" and conv:
        net = net.to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = device.type == "cuda" and variant != "before"
    cfg = TrainConfig(lr=1e-4)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg, device) if variant != "before" else torch.optim.Adam(params, lr=1e-4)
    model = net
    if variant == "compiled":
        import torch._dynamo as dynamo
        dynamo.config.suppress_errors = False            # a failure here is reported, not hidden
        model = torch.compile(net)
    amp = device.type == "cuda"
    batch = spec.batch(spec.batch_size, device)
    net.train()
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            started = time.perf_counter()
        loss = train_step(model, optimizer, spec.loss, batch, (), amp, 0.0, params)
        if variant == "before":
            float(loss)                                  # the old host sync, every step
        else:
            total += loss
    _sync(device)
    seconds = time.perf_counter() - started
    if not math.isfinite(float(total) if variant != "before" else float(loss)):
        raise FloatingPointError(f"{spec.name} {variant}: loss is not finite")
    return {"samples_per_s": spec.batch_size * steps / seconds, "step_ms": 1000 * seconds / steps}


def count_flops(net: nn.Module, spec: Network, device) -> float:
    """FLOPs of one training step (forward + backward) by torch's FlopCounterMode, bf16 autocast."""
    from torch.utils.flop_counter import FlopCounterMode
    net = net.to(device).train()
    batch = spec.batch(spec.batch_size, device)
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = spec.loss(net, batch)
        loss.backward()
    net.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


@torch.no_grad()
def time_extraction(net: nn.Module, spec: Network, device, steps: int) -> float:
    """Extraction samples/s: eval mode, no grad, bf16, channels_last, the training batch size x 2."""
    net = net.to(device).eval()
    if device.type == "cuda" and has_conv2d(net):
        net = net.to(memory_format=torch.channels_last)
    batch = spec.batch(spec.batch_size * 2, device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for i in range(steps + 2):
            if i == 2:
                _sync(device)
                started = time.perf_counter()
            spec.embed(net, batch)
    _sync(device)
    return spec.batch_size * 2 * steps / (time.perf_counter() - started)


def top_kernels(net: nn.Module, spec: Network, device, n: int = 5) -> list:
    """The n ops with the most device time in two `fit` steps (where the time goes)."""
    from torch.profiler import ProfilerActivity, profile
    net = net.to(device)
    if device.type == "cuda" and has_conv2d(net):
        net = net.to(memory_format=torch.channels_last)       # as fit() runs it
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, TrainConfig(lr=1e-4), device)
    batch = spec.batch(spec.batch_size, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            train_step(net, optimizer, spec.loss, batch, (), device.type == "cuda", 0.0, params)
        _sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)[:n]
    return [{"op": e.key[:60], "ms": round(getattr(e, key, 0) / 2000, 2)} for e in events]


def built(spec: Network, device) -> nn.Module:
    """The network initialised directly on `device` (a 65 M-parameter init on the CPU takes seconds)."""
    torch.manual_seed(0)
    with device:
        return spec.build()


def describe(row: dict, what: str) -> str:
    """One measurement of `row` as a few words for the log."""
    value = {"extract": row.get("extract_per_s"), "flops": row.get("flops_per_step"),
             "profile": (row.get("top_ops") or [{}])[0].get("op")}.get(what, row.get(what))
    if isinstance(value, dict) and "samples_per_s" in value:
        return f"{what} {value['samples_per_s']:.0f}/s"
    if isinstance(value, float):
        return f"{what} {value:.3g}"
    return f"{what} {value if value is not None else row.get(what + '_error', '-')}"[:100]


def error_text(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def measure(row: dict, spec: Network, device, what: str, steps: int, warmup: int) -> None:
    """One measurement into `row`: a training variant, `extract`, `flops` or `profile`. A failure
    is recorded (it is a finding), never raised."""
    try:
        if what == "extract":
            row["extract_per_s"] = time_extraction(built(spec, device), spec, device, steps)
        elif what == "flops":
            row["flops_per_step"] = count_flops(built(spec, device), spec, device)
        elif what == "profile":
            row["top_ops"] = top_kernels(built(spec, device), spec, device)
        else:
            row[what] = time_training(built(spec, device), spec, device, what, steps, warmup)
    except Exception as e:
        if what in ("extract", "flops", "profile"):
            row[f"{what}_error"] = error_text(e)
        else:
            row[what] = {"error": error_text(e)}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def shares(row: dict, variants) -> dict:
    """The `fit` rate as a share of the fastest variant, and its TFLOP/s."""
    fit_rate = row.get("fit", {}).get("samples_per_s")
    rates = [row[v]["samples_per_s"] for v in variants if isinstance(row.get(v), dict) and "samples_per_s" in row[v]]
    if fit_rate and rates:
        row["fit_share_of_fastest"] = fit_rate / max(rates)
    if fit_rate and row.get("flops_per_step"):
        row["fit_tflops"] = row["flops_per_step"] * fit_rate / row["batch"] / 1e12
    return row


# ---------------------------------------------------------------------------------------- resume

def resume_check(out_root: Path, deterministic: bool) -> dict:
    """fit() of a small conv net killed after epoch 2 and resumed, against an uninterrupted run:
    the largest weight difference (0.0 = exact; an earlier run measured 8.7e-3 before the CUDA RNG was
    checkpointed and the deterministic switch existed)."""
    from torch.utils.data import TensorDataset

    from common.train import fit
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 3, 32, 32, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    data = TensorDataset(x, y)

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Dropout(0.2),
                             nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(32, 2))

    def loss(net, b):
        return F.cross_entropy(net(b[0]), b[1])

    def evaluate(net):
        return {"loss": 0.0}

    def train(out, hooks=()):
        model = build()
        cfg = TrainConfig(epochs=4, batch_size=64, lr=1e-3, seed=1, deterministic=deterministic)
        fit(model, data, loss, evaluate, cfg, out, on_epoch_end=list(hooks), progress=False)
        return torch.cat([v.detach().float().flatten().cpu() for v in model.state_dict().values()])

    def kill(state, **_):
        if state.epoch == 2:
            raise KeyboardInterrupt
    full = train(out_root / f"full_{deterministic}")
    try:
        train(out_root / f"killed_{deterministic}", [kill])
    except KeyboardInterrupt:
        pass
    resumed = train(out_root / f"killed_{deterministic}")
    return {"deterministic": deterministic, "max_abs_weight_difference": float((full - resumed).abs().max())}


# ----------------------------------------------------------------------------------- projections

def project_papers(P: dict, rows: dict, specs: dict) -> list[dict]:
    """Each paper's full paper-profile training on real-size Aff-Wild2, from the measured steps.

    The step counts follow the paper profile (params/paper.yaml) and these corpus
    sizes: Zhang's 6 folds x 2 emotions x 2 modalities x seeds over windows of `window` frames
    every `hop` (Sec. 4.2) across the VA frames (~2.8 M, ~1.9 M of them in training folds);
    Vu's samples_per_epoch x epochs for 2 teachers + 2 students per seed; Liu's configurations
    x seeds x epochs over 150-frame segments; Jeong's steps are those of its feature-level MLP,
    negligible beside its FER and SoundNet feature extraction. Early stopping makes each an upper
    bound.
    """
    out = []

    def seconds_of(name, samples):
        r = rows.get(name, {}).get("fit", {})
        return samples / r["samples_per_s"] if r.get("samples_per_s") else None

    z = P["zhang2021"]
    windows_per_epoch = 1.9e6 / int(z["hop"])
    zhang_runs = 6 * 2 * 2 * len(z["seeds"])
    s = seconds_of("zhang_tcn", windows_per_epoch * int(z["epochs"]) * zhang_runs)
    out.append({"paper": "Zhang 2021",
                "what": f"{zhang_runs} runs x {z['epochs']} epochs x {windows_per_epoch:,.0f} windows",
                "hours": s / 3600 if s else None})
    v = P["vu2021"]
    vu_runs = 4 * len(v["seeds"])
    s = seconds_of("vu_resnet50", int(v["cnn"]["samples_per_epoch"]) * int(v["cnn"]["epochs"]) * vu_runs)
    out.append({"paper": "Vu 2021", "what": f"{vu_runs} CNN runs x {v['cnn']['epochs']} epochs x "
                f"{int(v['cnn']['samples_per_epoch']):,} images (+ GRU, small)", "hours": s / 3600 if s else None})
    li = P["liu2023"]
    configs = len(li["grid"]) + len(li["ablation"])
    segments = 1.9e6 / int(li["segment"])
    s = seconds_of("liu_transformer", segments * int(li["epochs"]) * configs * len(li["seeds"]))
    out.append({"paper": "Liu 2023", "what": f"{configs} configs x {len(li['seeds'])} seeds x {li['epochs']} epochs x "
                f"{segments:,.0f} segments (Transformer timing for all)", "hours": s / 3600 if s else None})
    jeong = extraction_seconds(rows, specs, ("fer", "soundnet"))
    bank = None if None in jeong.values() else sum(jeong.values())
    out.append({"paper": "Jeong 2022", "what": "FER + SoundNet features over 2.8 M frames (the MLP is negligible)",
                "hours": bank / 3600 if bank else None})
    return out


def extraction_seconds(rows: dict, specs: dict, names) -> dict:
    """name -> seconds to extract network `name`'s feature over Aff-Wild2's frames at its measured
    rate (None where it was not measured): one sample covers the spec's frames_per_sample frames
    (a face: 1; an 8 s speech clip: 240; an ECAPA window every hop_s: hop_s x 30)."""
    return {name: AFFWILD2_FRAMES / (rows[name]["extract_per_s"] * specs[name].frames_per_sample)
            if rows.get(name, {}).get("extract_per_s") else None for name in names}


BANK_NETWORKS = ("fau", "ires100", "densenet", "ms_va", "mae", "hubert", "wav2vec", "ecapatdnn")


def project_bank(rows: dict, specs: dict) -> dict:
    """Liu's network features (Sec. 3.2) over Aff-Wild2's frames."""
    per = extraction_seconds(rows, specs, BANK_NETWORKS)
    known = [v for v in per.values() if v is not None]
    return {"per_network_s": per, "total_min": sum(known) / 60 if known else None,
            "complete": len(known) == len(per),
            "note": "affectnet (the frame encoder), fbank, compare, egemaps and the AffectNet stills are "
                    "not included: the first is a ResNet-50 like vu_resnet50's extraction, the others run on CPU cores"}


# ----------------------------------------------------------------------------------------- main

def device_tag(device) -> str:
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device)
    for short in ("H200", "H100", "A100", "L40S", "A10"):
        if short in name:
            return short.lower()
    return name.split()[-1].lower()


def print_table(result: dict) -> None:
    print(f"\n{result['device']} | torch {result['torch']} | {result['seconds']:.0f} s")
    print(f"{'network':16} {'batch':>5} {'fit/s':>9} {'before/s':>9} {'compiled/s':>10} {'fit/fastest':>11} "
          f"{'TFLOP/s':>8} {'%peak':>6} {'extract/s':>10}")
    for r in result["networks"]:
        def rate(v):
            x = r.get(v, {})
            return f"{x['samples_per_s']:9.0f}" if "samples_per_s" in x else f"{'x':>9}"
        share = r.get("fit_share_of_fastest")
        tf = r.get("fit_tflops")
        peak = result.get("bf16_peak_tflops")
        extract = f"{r['extract_per_s']:.0f}" if r.get("extract_per_s") else r.get("extract_error", "-")[:40]
        print(f"{r['network']:16} {r['batch']:5d} {rate('fit')} {rate('before')} {rate('compiled'):>10} "
              f"{(f'{share:.0%}' if share else '-'):>11} {(f'{tf:.0f}' if tf else '-'):>8} "
              f"{(f'{100 * tf / peak:.1f}' if tf and peak else '-'):>6} "
              f"{extract:>10}")
    print("\nprojections on real-size Aff-Wild2:")
    for p in result["projections"]:
        hours = f"{p['hours']:.1f} h" if p["hours"] is not None else "-"
        print(f"  {p['paper']:11} {hours:>9}  {p['what']}")
    bank = result["bank"]
    total = f"{bank['total_min']:.1f} min" if bank["total_min"] else "-"
    print(f"  feature bank ({len(BANK_NETWORKS)} networks) over {AFFWILD2_FRAMES:,} frames: {total}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="smoke-profile sizes (a CPU check of this script)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="whole run, both parts")
    ap.add_argument("--loops-budget-s", type=float, default=200.0, help="the papers' loops' share (they run first)")
    ap.add_argument("--networks", default="", help="comma-separated subset of part 1")
    ap.add_argument("--steps", type=int, default=0, help="timed steps per variant (default 10 GPU / 2 CPU)")
    ap.add_argument("--no-loops", action="store_true", help="skip part 2")
    ap.add_argument("--resume-check", choices=("on", "off"), help="only the resume check (run in its own "
                    "process: the cuBLAS workspace must be set before CUDA starts)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    args = ap.parse_args(argv)

    if args.resume_check:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(resume_check(Path(tmp), args.resume_check == "on")))
        return 0

    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resume = []
    for switch in ("off", "on"):                       # fresh processes: CUDA starts after the switch
        proc = subprocess.run([sys.executable, __file__, "--resume-check", switch], capture_output=True, text=True)
        resume.append(json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0
                      else {"deterministic": switch == "on", "error": proc.stderr.strip().splitlines()[-1:]})
        print(f"resume check: {resume[-1]}", flush=True)
    P = load_params(ROOT / "params.yaml", "smoke" if args.tiny else "paper")
    steps = args.steps or (10 if device.type == "cuda" else 2)
    warmup = 3 if device.type == "cuda" else 1
    variants = ("fit", "before", "nchw", "compiled") if device.type == "cuda" else ("fit", "before")
    specs = paper_networks(P, args.tiny)
    if args.networks:
        wanted = set(args.networks.split(","))
        specs = [s for s in specs if s.name in wanted]
    by_name = {s.name: s for s in specs}
    name = device_tag(device)
    out = Path(args.out) / f"gpu_{name}{'_tiny' if args.tiny else ''}.json"
    loops_share = 0.0 if args.no_loops else args.loops_budget_s
    rows, loops = {}, None

    def write() -> dict:
        """The result so far, rewritten after every network: a run cut short keeps what it measured."""
        result = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "profile": "smoke" if args.tiny else "paper",
            "bf16_peak_tflops": next((v for k, v in BF16_PEAK_TFLOPS.items() if k.lower() == name), None),
            "steps": steps, "warmup": warmup, "networks": list(rows.values()),
            "projections": project_papers(P, rows, by_name), "bank": project_bank(rows, by_name),
            "paper_loops": loops, "resume": resume, "seconds": time.perf_counter() - started,
        }
        atomic_write_json(out, result)
        return result

    # What a GPU holder needs most comes first, each part inside its share of the budget: the
    # papers' loops (no crash), then each network as fit() trains it and its extraction rate,
    # then the variants that the fit share and the speed-up are measured against, then compile.
    if not args.no_loops:
        t0 = time.perf_counter()
        cmd = [sys.executable, str(ROOT / "scripts" / "gpu_paper_loops.py"), "--budget-s", str(int(loops_share)),
               "--out", args.out] + (["--tiny"] if args.tiny else [])
        proc = subprocess.run(cmd, cwd=ROOT, timeout=loops_share + 60)
        loops_file = Path(args.out) / "gpu_paper_loops.json"
        loops = json.loads(loops_file.read_text()) if loops_file.is_file() else {"error": f"rc {proc.returncode}"}
        loops["seconds"] = round(time.perf_counter() - t0, 1)
        write()
    deadline = started + args.budget_s
    passes = [("fit", "extract"), tuple(v for v in variants if v not in ("fit", "compiled")) + ("flops", "profile"),
              ("compiled",) if "compiled" in variants else ()]
    for number, whats in enumerate(passes, 1):
        for spec in specs:
            row = rows.setdefault(spec.name, {"network": spec.name, "paper": spec.paper, "batch": spec.batch_size,
                                              "unit": spec.unit})
            for what in whats:
                if time.perf_counter() > deadline - 15:
                    row.setdefault(what, {"skipped": "budget"})
                    continue
                t0 = time.perf_counter()
                measure(row, spec, device, what, steps, warmup)
                row["seconds"] = round(row.get("seconds", 0.0) + time.perf_counter() - t0, 1)
            shares(row, variants)
            print(f"pass {number} {spec.name}: " + ", ".join(describe(row, w) for w in whats), flush=True)
            write()
    result = write()
    print_table(result)
    print(f"\n-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
