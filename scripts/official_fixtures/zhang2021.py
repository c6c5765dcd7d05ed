"""Regenerate tests/fixtures/official/zhang2021/*.npz by running Zhang et al.'s released code.

    .venv/bin/python scripts/official_fixtures/zhang2021.py --official /path/to/ABAW2 [--out DIR]

The checkout must be sucv/ABAW2 at 71d40fb (e.g. `git --git-dir=<mirror> archive 71d40fb | tar -x
-C /tmp/zhang/official`). Its modules are imported from that path at run time (model/, base/,
calculate_mean_and_std.py, experiment_regular.py, script/generate_test_result.py's merge lines
are the logger's ConcordanceCorrelationCoefficient); nothing of them is copied into this project,
and this script imports nothing of this project either. The official code is PyTorch, so the
project's virtual environment runs it (torch, torchvision, scipy, pandas, tqdm).

What is replaced around the official code, and why:
* the ResNet-50 frame encoder (`spatial`): the models here take cached 512-d embeddings, so the
  fixture feeds (B, T, D, 1, 1) "frames" through an nn.Flatten in its place; `my_res50` and the
  backbone file that `init()` loads are stubbed so that `init()` itself builds the TCNs, the
  fusion and the regressor;
* Dropout2d in train mode: each module's forward is replaced by a fixed channel mask (numpy
  seed), saved in the fixture, so the same masks can be put into this project's model (whose
  branches draw in another order);
* calculate_mean_and_std.py is a script with its data folder hard-coded: its text is executed
  with that one string replaced by a scratch folder of random features.
The outputs are described in tests/fixtures/official/zhang2021/PROVENANCE.md.
"""
from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "official" / "zhang2021"
COMMIT = "71d40fba2d646a2edd77c00983b07b0a10371b8f"


def state(module) -> dict:
    return {f"w/{k}": v.detach().numpy().copy() for k, v in module.state_dict().items()}


def generated_weights(shapes: dict, seed: int) -> dict:
    """Deterministic weights for a state dict of the given {name: shape}: each tensor from its own
    numpy stream (seed, crc32(name)), so a test regenerates them without storing 1 MB of floats.
    Convolution / linear weights U(+-1/sqrt(fan_in)); a weight-norm g is the norm of its v (so the
    effective weight is v); biases U(+-0.1); LayerNorm / GroupNorm affine 1 + 0.1 N and 0.1 N."""
    import zlib
    out = {}
    for name in sorted(shapes):
        shape = tuple(int(d) for d in shapes[name])
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        if name.endswith("weight_g"):
            continue
        if name.startswith(("ln.", "gn")):
            out[name] = (1.0 + 0.1 * rng.standard_normal(shape) if name.endswith("weight")
                         else 0.1 * rng.standard_normal(shape))
        elif len(shape) >= 2:
            bound = 1 / np.sqrt(np.prod(shape[1:]))
            out[name] = rng.uniform(-bound, bound, shape)
        else:
            out[name] = rng.uniform(-0.1, 0.1, shape)
    for name in shapes:
        if name.endswith("weight_g"):
            v = out[name[:-1] + "v"]
            out[name] = np.sqrt((v ** 2).sum(axis=tuple(range(1, v.ndim)), keepdims=True))
    return {k: v.astype(np.float32) for k, v in out.items()}


def load_generated(net, seed: int) -> dict:
    """Put generated_weights into `net`; {"shape/<name>": shape} for the fixture. named_parameters
    names each tensor once: the released TemporalBlock holds conv1 both as .conv1 and in .net, so
    its state dict lists every convolution twice under two names."""
    shapes = {k: tuple(v.shape) for k, v in net.named_parameters()}
    missing, _ = net.load_state_dict({k: torch.from_numpy(v) for k, v in generated_weights(shapes, seed).items()},
                                     strict=False)
    left = {k for k in missing if not k.split(".")[-2].isdigit() or ".net." not in k}
    if left:
        raise SystemExit(f"generated weights do not cover {sorted(left)[:5]}")
    return {f"shape/{k}": np.array(v, np.int64) for k, v in shapes.items()}


class MaskDropout(nn.Module):
    """Stands in for an official Dropout2d in train mode: x * mask / (1 - p), mask (B, C, 1)."""

    def __init__(self, mask: np.ndarray, p: float):
        super().__init__()
        self.mask, self.p = torch.from_numpy(mask), p

    def forward(self, x):
        return x * self.mask / (1 - self.p)


def fix_dropout(model, batch: int, seed: int) -> dict:
    """Replace every Dropout2d of `model` by a fixed channel mask; {"mask/<name>": (B, C, 1)}."""
    rng = np.random.default_rng(seed)
    masks = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Dropout2d):
                full = f"{name}.{child_name}" if name else child_name
                conv = getattr(module, "conv1" if child_name == "dropout1" else "conv2")
                mask = (rng.random((batch, conv.out_channels, 1)) > child.p).astype(np.float32)
                masks[f"mask/{full}"] = mask
                setattr(module, child_name, MaskDropout(mask, child.p))
                if hasattr(module, "net"):                       # the block's nn.Sequential holds it too
                    for i, m in enumerate(module.net):
                        if m is child:
                            module.net[i] = getattr(module, child_name)
    return masks


def tcn_block(official) -> dict:
    """One released TemporalBlock (dilation 2, a 1x1 skip): eval output, and train output under
    torch.manual_seed(7), which draws its two channel masks (dropout1, then dropout2)."""
    from model.temporal_convolutional_model import TemporalBlock
    torch.manual_seed(0)
    block = TemporalBlock(6, 8, kernel_size=3, stride=1, dilation=2, padding=4, dropout=0.3)
    x = torch.randn(3, 6, 20)
    block.eval()
    with torch.no_grad():
        y_eval = block(x)
        block.train()
        torch.manual_seed(7)
        y_train = block(x)
    return {"x": x.numpy(), "y_eval": y_eval.numpy(), "y_train": y_train.numpy(), "seed": np.array(7),
            "kernel": np.array(3), "dilation": np.array(2), "dropout": np.array(0.3), **state(block)}


def stub_backbone(official):
    """init() builds my_res50 and loads a .pth; here the 'frames' are embeddings already."""
    import model.model as mm

    class Stub(nn.Module):
        def __init__(self, *a, **k):
            super().__init__()
            self.backbone = nn.Flatten()

        def load_state_dict(self, *a, **k):
            return None

    mm.my_res50 = Stub
    mm.torch.load = lambda *a, **k: {}
    return mm


def multimodal(official) -> dict:
    """my_2d1ddy as the code fixes its sizes (model.py:176-193: encoder1 reads embedding_dim // 4 =
    128 visual channels, the regressor 224 = 128 + 96 inputs, the audio TCNs 32 x 4): a 512-d frame
    embedding, a visual TCN of one 128-channel block (kernel 3), VGGish 128-d, MFCC 39-d; weights
    from generated_weights(seed 11)."""
    mm = stub_backbone(official)
    torch.manual_seed(0)
    net = mm.my_2d1ddy("stub", embedding_dim=512, channels=[128], kernel_size=3, dropout=0.2,
                       input_dim_other=[128, 39])
    net.init()
    shapes = load_generated(net, seed=11)
    b, t = 2, 24
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(b, t, 512, 1, 1, generator=g)
    vggish = torch.randn(b, 1, t, 128, generator=g)      # the dataset's ToTensor adds the 1 (base/dataset.py:153)
    mfcc = torch.randn(b, 1, t, 39, generator=g)
    # record the fusion's inputs (the TCN outputs reaching encoder1/2/3), its scores and output
    seen = {}
    for name in ("encoder1", "encoder2", "encoder3"):
        getattr(net, name).register_forward_hook(lambda m, i, o,
                                                 n=name: seen.__setitem__(f"in/{n}", i[0].detach().numpy().copy()))
    net.ln.register_forward_hook(lambda m, i, o: seen.__setitem__("ln_out", o.detach().numpy().copy()))
    softmax = mm.nn.functional.softmax

    def recording_softmax(x, dim=None, **k):
        out = softmax(x, dim=dim, **k)
        seen["scores"] = out.detach().numpy().copy()
        return out
    mm.nn.functional.softmax = recording_softmax
    out = {"frames": frames.numpy(), "vggish": vggish.numpy(), "mfcc": mfcc.numpy(), "seed": np.array(11), **shapes}
    with torch.no_grad():
        net.eval()
        out["y_eval"] = net(frames, vggish, mfcc).numpy()   # the trainer's call order, base/trainer.py:321
        out.update({f"eval/{k}": v for k, v in seen.items()})
        net.train()
        out.update(fix_dropout(net, b, seed=3))
        out["y_train"] = net(frames, vggish, mfcc).numpy()
    mm.nn.functional.softmax = softmax
    return out


def unimodal(official) -> dict:
    """my_2d1d: a 64-d 'frame embedding', TCN 16 x 4, regressor embedding_dim // 4 = 16 -> 1;
    weights from generated_weights(seed 12)."""
    mm = stub_backbone(official)
    torch.manual_seed(0)
    net = mm.my_2d1d("stub", embedding_dim=64, channels=[16, 16, 16, 16], kernel_size=3, dropout=0.2)
    net.init()
    shapes = load_generated(net, seed=12)
    frames = torch.randn(2, 30, 64, 1, 1, generator=torch.Generator().manual_seed(2))
    out = {"frames": frames.numpy(), "seed": np.array(12), **shapes}
    with torch.no_grad():
        net.eval()
        out["y_eval"] = net(frames).numpy()
        net.train()
        out.update(fix_dropout(net, 2, seed=4))
        out["y_train"] = net(frames).numpy()
    return out


def window_loss(official) -> dict:
    """experiment_regular.CCCLoss on (B, T, 1) windows, called as the trainer calls it:
    criterion(outputs, labels, weights) (base/trainer.py:328), and with the arguments in order."""
    from experiment_regular import CCCLoss
    g = torch.Generator().manual_seed(5)
    labels = torch.rand(4, 30, 1, generator=g) * 2 - 1
    outputs = 0.6 * labels + 0.3 * torch.randn(4, 30, 1, generator=g) + 0.1
    labels[3, 22:] = 0.0                                   # a short trial's zero padding (dataset.py:240)
    loss = CCCLoss()
    return {"labels": labels.numpy(), "outputs": outputs.numpy(),
            "loss_trainer_order": loss(outputs, labels, torch.ones_like(labels)).numpy(),
            "loss_named_order": loss(labels, outputs).numpy()}


def fake_dataset(root: Path, rng) -> dict:
    """npy_data/<trial>/{mfcc,vggish,egemaps,label}.npy and dataset_info.pkl in the layout that
    base/dataset.py and calculate_mean_and_std.py read; one trial shorter than the window."""
    lengths = {"Train_Set": {"trainA": 70, "trainB": 45, "trainC": 52},
               "Validation_Set": {"valA": 61, "valB": 18},
               "Target_Set": {"testA": 40}}
    for part, trials in lengths.items():
        scale = {"Train_Set": 1.0, "Validation_Set": 1.7, "Target_Set": 0.6}[part]
        for trial, n in trials.items():
            d = root / "npy_data" / trial
            d.mkdir(parents=True)
            np.save(d / "mfcc.npy",
                    (scale * rng.standard_normal((n, 39)) + rng.standard_normal(39) * 3).astype(np.float32))
            np.save(d / "vggish.npy", (scale * rng.random((n, 128)) * 2 - 0.5).astype(np.float32))
            np.save(d / "egemaps.npy", rng.standard_normal((n, 23)).astype(np.float32))
            np.save(d / "label.npy", rng.uniform(-1, 1, (n, 2)).astype(np.float32))
    with open(root / "dataset_info.pkl", "wb") as f:
        pickle.dump({"partition": lengths}, f)
    return lengths


def normalisation_and_windows(official: Path) -> dict:
    """calculate_mean_and_std.py on a scratch dataset, then base/dataset.py's windows of fold 0
    (window 30, hop 20) for the train and validate partitions, normalised by its transforms."""
    from base.dataset import ABAW2_VA_Arranger, ABAW2_VA_Dataset
    rng = np.random.default_rng(6)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lengths = fake_dataset(root, rng)
        script = (official / "calculate_mean_and_std.py").read_text()
        hard_coded = 'dataset_path = "/home/zhangsu/dataset/affwild2"'
        if hard_coded not in script:
            raise SystemExit("calculate_mean_and_std.py: its dataset_path line changed; is this 71d40fb?")
        exec(compile(script.replace(hard_coded, f"dataset_path = {str(root)!r}"),
                     str(official / "calculate_mean_and_std.py"), "exec"), {"__name__": "__main__"})
        arranger = ABAW2_VA_Arranger(str(root), window_length=30, hop_length=20)
        stats = arranger.mean_std_info
        for feature in ("mfcc", "vggish"):
            for part in ("Train_Set", "Validation_Set", "Target_Set"):
                out[f"stats/{feature}/{part}"] = np.array([stats[feature][0][part]["mean"],
                                                           stats[feature][0][part]["std"]])
        windows = arranger.resample_according_to_window_and_hop_length(0)
        for mode, part in (("train", "Train_Set"), ("validate", "Validation_Set")):
            ds = ABAW2_VA_Dataset(windows[part], emotion="valence", head="single-headed",
                                  modality=["mfcc", "vggish"], window_length=30, mode=mode, fold=0,
                                  mean_std_info=stats)
            for j in range(len(ds)):
                feats, labels, trial, length, indices = ds[j]
                out[f"{mode}/{j}/trial"] = np.array(trial)
                out[f"{mode}/{j}/start"] = np.array(windows[part][j][2][0])
                out[f"{mode}/{j}/mfcc"] = feats["mfcc"].numpy()[0]
                out[f"{mode}/{j}/vggish"] = feats["vggish"].numpy()[0]
                out[f"{mode}/{j}/label"] = np.asarray(labels, np.float32)[:, 0]
        for part, trials in lengths.items():
            for trial in trials:
                for name in ("mfcc", "vggish", "label"):
                    out[f"raw/{part}/{trial}/{name}"] = np.load(root / "npy_data" / trial / f"{name}.npy")
    return out


def split_ccc(official) -> dict:
    """The released validation score: base/dataset.py's windows (30 every 20 frames) of fold 0's
    validation trials, window outputs averaged per frame per trial and one CCC over the
    concatenated trials (base/logger.py ContinuousOutputHandlerNPYTrial, ContinuousMetricsCalculatorTrial)."""
    from base.dataset import ABAW2_VA_Arranger
    from base.logger import ContinuousMetricsCalculatorTrial, ContinuousOutputHandlerNPYTrial
    rng = np.random.default_rng(8)
    lengths, window, hop = {"a": 75, "b": 18, "c": 50}, 30, 20
    labels = {k: rng.uniform(-1, 1, n).astype(np.float32) for k, n in lengths.items()}
    with tempfile.TemporaryDirectory() as tmp:
        for name, obj in (("dataset_info",
                           {"partition": {"Train_Set": {}, "Validation_Set": lengths, "Target_Set": {}}}),
                          ("mean_std_dict", {})):
            with open(Path(tmp) / f"{name}.pkl", "wb") as f:
                pickle.dump(obj, f)
        arranger = ABAW2_VA_Arranger(tmp, window_length=window, hop_length=hop)
        windows = arranger.resample_according_to_window_and_hop_length(0)
    outputs_h, labels_h = ContinuousOutputHandlerNPYTrial(["Valence"]), ContinuousOutputHandlerNPYTrial(["Valence"])
    out = {}
    for _, trial, idx, n in windows["Validation_Set"]:
        padded = np.zeros(window, np.float32)                      # dataset.py:239-241 zero-pads a short trial
        padded[:len(idx)] = labels[trial][idx]
        pred = (0.5 * padded + 0.4 * rng.standard_normal(window)).astype(np.float32)
        full = idx if len(idx) == window else np.arange(window)    # dataset.py:259-260
        outputs_h.update_output_for_seen_trials(pred[None, :, None], [trial], [full], [n])
        labels_h.update_output_for_seen_trials(padded[None, :, None], [trial], [full], [n])
        out[f"window/{trial}/{idx[0]}"] = pred
    for h in (outputs_h, labels_h):
        h.average_trial_wise_records()
        h.concat_records()
    calc = ContinuousMetricsCalculatorTrial(["rmse", "pcc", "ccc"], ["Valence"], outputs_h, labels_h)
    calc.calculate_metrics()
    out.update({f"label/{k}": v for k, v in labels.items()})
    out.update({f"averaged/{k}": np.asarray(v["Valence"]) for k, v in outputs_h.trialwise_records.items()})
    out["ccc"] = np.array(calc.metric_record_dict["overall"]["Valence"]["ccc"][0][0])
    out["window"], out["hop"] = np.array(window), np.array(hop)
    return out


def fold_merge(official) -> dict:
    """script/generate_test_result.py:60-62 and :86 on six fold traces of one trial: the logger's
    ConcordanceCorrelationCoefficient, then the plain mean of its centred data, then the late clip;
    with the commented early clip (:44) switched on too. Fold 5 disagrees (negative agreement)."""
    from base.logger import ConcordanceCorrelationCoefficient
    rng = np.random.default_rng(9)
    n = 120
    truth = np.cumsum(rng.standard_normal(n)) / 6
    traces = np.stack([truth * (0.8 + 0.1 * i) + 0.15 * rng.standard_normal(n) + 0.1 * (i - 2) for i in range(5)]
                      + [-0.9 * truth + 0.3])
    traces[1, :5] = 1.4                                              # out of range: clipping matters
    out = {"traces": traces}
    for name, x in (("late", traces), ("early", np.clip(traces, -1, 1))):
        handler = ConcordanceCorrelationCoefficient(x)
        out[f"{name}/agreement"] = handler.agreement
        out[f"{name}/merged"] = np.clip(np.mean(handler.centered_data, axis=0), -1, 1)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", type=Path, required=True, help="a checkout of sucv/ABAW2 at 71d40fb")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    official = args.official.resolve()
    if not (official / "model" / "model.py").is_file():
        raise SystemExit(f"{official}: no model/model.py; pass a checkout of sucv/ABAW2 at {COMMIT[:7]}")
    sys.path.insert(0, str(official))
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, make in (("tcn_block", tcn_block), ("multimodal", multimodal), ("unimodal", unimodal),
                       ("window_loss", window_loss), ("normalisation", normalisation_and_windows),
                       ("split_ccc", split_ccc), ("fold_merge", fold_merge)):
        arrays = make(official)
        np.savez_compressed(args.out / f"{name}.npz", **arrays)
        print(f"{name}.npz: {len(arrays)} arrays")


if __name__ == "__main__":
    main()
