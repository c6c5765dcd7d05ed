"""Zhang et al. 2021 under `method: released` against numbers from the released code itself.

The fixtures (tests/fixtures/official/zhang2021/, PROVENANCE.md there) were written by
scripts/official_fixtures/zhang2021.py running sucv/ABAW2@71d40fb. Each test maps the official
weights or inputs onto this project's modules, asserts `released` reproduces the official numbers
within a stated tolerance, and where papers/zhang2021/ledger.yaml says the paper method differs,
that `paper` does not.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from common.backbones.tcn import TemporalBlock
from common.data.sequences import Normalizer, split_ccc as paper_split_ccc, window_starts
from common.ensemble import merge_predictions
from common.losses import ccc_loss
from papers.zhang2021.data import ScalarNormalizer, Trial, WindowDataset, average_windows
from papers.zhang2021.model import ReleasedFusion, ZhangMultimodal, ZhangUnimodal
from papers.zhang2021.train import released_merge, released_split_ccc

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "official" / "zhang2021"
# float32 networks: the same arithmetic in another order; measured max |diff| <= 2e-6 here
NET_TOL = 1e-5


def fixture(name):
    return np.load(FIXTURES / f"{name}.npz")


def generated_weights(shapes, seed):
    """The fixture script's weights, regenerated from the seed it stored."""
    spec = importlib.util.spec_from_file_location("zhang_fixtures",
                                                  ROOT / "scripts" / "official_fixtures" / "zhang2021.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generated_weights(shapes, seed)


def official_state(z):
    shapes = {k[len("shape/"):]: tuple(z[k]) for k in z.files if k.startswith("shape/")}
    return generated_weights(shapes, int(z["seed"]))


def block_map(official: str, ours: str) -> dict:
    """{our name: official name} of one temporal block (weight_norm g, v -> parametrization 0, 1)."""
    m = {}
    for conv in ("conv1", "conv2"):
        m[f"{ours}{conv}.parametrizations.weight.original0"] = f"{official}{conv}.weight_g"
        m[f"{ours}{conv}.parametrizations.weight.original1"] = f"{official}{conv}.weight_v"
        m[f"{ours}{conv}.bias"] = f"{official}{conv}.bias"
    m[f"{ours}skip.weight"] = f"{official}downsample.weight"
    m[f"{ours}skip.bias"] = f"{official}downsample.bias"
    return m


def load_mapped(model, official: dict, mapping: dict, transform=None):
    transform = transform or {}
    state = model.state_dict()
    for ours, off in mapping.items():
        if ours not in state and ours.endswith(("skip.weight", "skip.bias")):
            continue                                       # identity skip: no downsample either
        value = transform[ours](official[off]) if ours in transform else official[off]
        state[ours] = torch.as_tensor(np.asarray(value), dtype=torch.float32).reshape(state[ours].shape)
    model.load_state_dict(state)
    return model


class FixedMask(nn.Module):
    def __init__(self, mask, p):
        super().__init__()
        self.mask, self.p = torch.as_tensor(mask), p

    def forward(self, x):
        return x * self.mask / (1 - self.p)


def put_masks(model, z, branches: dict, p: float):
    """Official mask/<branch>.network.<i>.dropout<j> -> our <branches[branch]>.blocks.<i>.drop<j>."""
    for key in z.files:
        if not key.startswith("mask/"):
            continue
        branch, _, i, drop = key[len("mask/"):].split(".")
        block = model.get_submodule(f"{branches[branch]}.blocks.{i}")
        setattr(block, f"drop{drop[-1]}", FixedMask(z[key], p))


# --------------------------------------------------------------------------- TCN block

def tcn_block(variant, z):
    block = TemporalBlock(6, 8, int(z["kernel"]), int(z["dilation"]), float(z["dropout"]), variant)
    official = {k[2:]: z[k] for k in z.files if k.startswith("w/")}
    return load_mapped(block, official, block_map("", ""))


def test_tcn_block_released_matches_the_official_block_in_eval_and_train_mode():
    z = fixture("tcn_block")
    x = torch.from_numpy(z["x"])
    block = tcn_block("zhang_released", z).eval()
    with torch.no_grad():
        np.testing.assert_allclose(block(x).numpy(), z["y_eval"], atol=NET_TOL)
        block.train()
        torch.manual_seed(int(z["seed"]))     # Dropout1d draws the same channel masks as Dropout2d
        np.testing.assert_allclose(block(x).numpy(), z["y_train"], atol=NET_TOL)
    # the train-mode pattern is channel-wise: a dropped (sample, channel) is zero at every step
    # of the block's first dropout, so whole rows of the output differ from eval mode together


def test_tcn_block_paper_differs_from_the_released_block():
    z = fixture("tcn_block")
    with torch.no_grad():
        paper = tcn_block("bai", z).eval()(torch.from_numpy(z["x"])).numpy()
    assert np.abs(paper - z["y_eval"]).max() > 1e-3            # ReLU vs LeakyReLU(0.01)


# --------------------------------------------------------------------------- whole models

MM_BRANCHES = {"temporal": "tcn.visual", "temporal2": "tcn.mfcc", "temporal1": "tcn.vggish"}
# ours: fusion index 0 visual, 1 MFCC, 2 VGGish; official encoder1 visual, 2 VGGish, 3 MFCC
ENCODER = {0: "1", 1: "3", 2: "2"}
HEAD_COLUMNS = np.r_[0:128, 128:160, 192:224, 160:192]       # leader, att visual, att MFCC, att VGGish


def multimodal_mapping(model) -> dict:
    m = {}
    for off, ours in MM_BRANCHES.items():
        for i in range(len(model.get_submodule(ours).blocks)):
            m.update(block_map(f"{off}.network.{i}.", f"{ours}.blocks.{i}."))
    for i, e in ENCODER.items():
        for part, name in (("k", "encoder"), ("q", "encoderQ"), ("v", "encoderV")):
            m[f"fusion.{part}.{i}.weight"] = f"{name}{e}.weight"
            m[f"fusion.{part}.{i}.bias"] = f"{name}{e}.bias"
    m.update({"fusion.norm.weight": "ln.weight", "fusion.norm.bias": "ln.bias",
              "head.weight": "regressor.weight", "head.bias": "regressor.bias"})
    return m


MM_TRANSFORM = {"fusion.norm.weight": lambda w: w[[0, 2, 1]].ravel(),
                "fusion.norm.bias": lambda w: w[[0, 2, 1]].ravel(),
                "head.weight": lambda w: w[:, HEAD_COLUMNS]}


def multimodal(method, z):
    model = ZhangMultimodal({"visual": 512, "mfcc": 39, "vggish": 128}, (128,), (32, 32, 32, 32), kernel=3,
                            dropout=0.2, d_k=32, method=method)
    return load_mapped(model, official_state(z), multimodal_mapping(model), MM_TRANSFORM)


def mm_inputs(z):
    return {"visual": torch.from_numpy(z["frames"][..., 0, 0]), "vggish": torch.from_numpy(z["vggish"][:, 0]),
            "mfcc": torch.from_numpy(z["mfcc"][:, 0])}


def test_multimodal_released_matches_the_official_model_in_eval_and_train_mode():
    z = fixture("multimodal")
    model = multimodal("released", z).eval()
    with torch.no_grad():
        np.testing.assert_allclose(model(mm_inputs(z)).numpy(), z["y_eval"][..., 0], atol=NET_TOL)
        model.train()
        put_masks(model, z, MM_BRANCHES, 0.2)
        np.testing.assert_allclose(model(mm_inputs(z)).numpy(), z["y_train"][..., 0], atol=NET_TOL)


def test_fusion_released_matches_the_official_scores_and_attention_feature():
    z = fixture("multimodal")
    model = multimodal("released", z)
    fusion = model.fusion
    assert isinstance(fusion, ReleasedFusion)
    feats = [torch.from_numpy(z[f"eval/in/encoder{ENCODER[i]}"]) for i in range(3)]
    with torch.no_grad():
        out, scores = fusion(feats)
    order = [0, 2, 1]                                          # official (visual, VGGish, MFCC) -> ours
    np.testing.assert_allclose(out.numpy(), z["eval/ln_out"][:, order].reshape(len(out), -1), atol=NET_TOL)
    np.testing.assert_allclose(scores.numpy(), z["eval/scores"][:, order][:, :, order], atol=1e-6)


def test_multimodal_paper_differs_from_the_released_model():
    z = fixture("multimodal")
    with torch.no_grad():
        paper = multimodal("paper", z).eval()(mm_inputs(z)).numpy()
    gap = np.abs(paper - z["y_eval"][..., 0]).max()
    assert gap > 1e-2 * z["y_eval"].std()                      # TCN activation and the fusion's audio Q, V


def unimodal(method, z):
    model = ZhangUnimodal(64, (16, 16, 16, 16), kernel=3, dropout=0.2, method=method)
    m = {}
    for i in range(4):
        m.update(block_map(f"temporal.network.{i}.", f"visual.blocks.{i}."))
    m.update({"head.weight": "regressor.weight", "head.bias": "regressor.bias"})
    return load_mapped(model, official_state(z), m)


def test_unimodal_released_matches_the_official_model_and_paper_differs():
    z = fixture("unimodal")
    x = {"visual": torch.from_numpy(z["frames"][..., 0, 0])}
    model = unimodal("released", z).eval()
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), z["y_eval"][..., 0], atol=NET_TOL)
        model.train()
        put_masks(model, z, {"temporal": "visual"}, 0.2)
        np.testing.assert_allclose(model(x).numpy(), z["y_train"][..., 0], atol=NET_TOL)
        paper = unimodal("paper", z).eval()(x).numpy()
    assert np.abs(paper - z["y_eval"][..., 0]).max() > 1e-3


# --------------------------------------------------------------------------- loss, windows, normalisation

def test_window_ccc_loss_matches_the_released_ccc_loss_and_masking_the_padding_differs():
    z = fixture("window_loss")
    out, lab = torch.from_numpy(z["outputs"][..., 0]), torch.from_numpy(z["labels"][..., 0])
    ours = ccc_loss(out, lab, per_sequence=True, unbiased="variance_only").item()
    assert ours == pytest.approx(float(z["loss_trainer_order"]), abs=1e-6)
    assert float(z["loss_trainer_order"]) == pytest.approx(float(z["loss_named_order"]), abs=1e-7)  # symmetric
    mask = torch.ones_like(lab, dtype=torch.bool)
    mask[3, 22:] = False                                       # method paper: the padding is masked
    masked = ccc_loss(out, lab, mask=mask, per_sequence=True, unbiased="variance_only").item()
    assert abs(masked - ours) > 1e-3


def trials_of(z, part, split):
    names = sorted({k.split("/")[2] for k in z.files if k.startswith(f"raw/{part}/")},
                   key=lambda n: [k for k in z.files if k.startswith(f"raw/{part}/")].index(f"raw/{part}/{n}/mfcc"))
    out = []
    for n in names:
        label = z[f"raw/{part}/{n}/label"]
        out.append(Trial(n, n, split, label, np.ones(len(label), bool),
                         {m: z[f"raw/{part}/{n}/{m}"] for m in ("mfcc", "vggish")}))
    return out


def test_scalar_normalisation_per_partition_matches_calculate_mean_and_std():
    z = fixture("normalisation")
    for part, split in (("Train_Set", "train"), ("Validation_Set", "validation"), ("Target_Set", "test")):
        norm = ScalarNormalizer(trials_of(z, part, split), ("mfcc", "vggish"))
        for m in ("mfcc", "vggish"):
            mean, std = z[f"stats/{m}/{part}"]
            # the released script sums float32 arrays (calculate_mean_and_std.py:32), here float64
            assert norm.mean[m] == pytest.approx(mean, rel=1e-6) and norm.std[m] == pytest.approx(std, rel=1e-6)


@pytest.mark.parametrize("mode,part,split",
                         [("train", "Train_Set", "train"), ("validate", "Validation_Set", "validation")])
def test_released_windows_match_the_official_dataset_items(mode, part, split):
    z = fixture("normalisation")
    trials = trials_of(z, part, split)
    data = WindowDataset(trials, ("mfcc", "vggish"), 30, 20, ScalarNormalizer(trials, ("mfcc", "vggish")),
                         "valence", pad_in_loss=True)
    count = len({k.split("/")[1] for k in z.files if k.startswith(f"{mode}/")})
    assert len(data) == count
    for j in range(count):
        i, start = data.index[j]
        assert trials[i].video == str(z[f"{mode}/{j}/trial"]) and start == int(z[f"{mode}/{j}/start"])
        item = data[j]
        for m in ("mfcc", "vggish"):
            np.testing.assert_allclose(item["x"][m].numpy(), z[f"{mode}/{j}/{m}"], atol=1e-5)
        np.testing.assert_allclose(item["y"].numpy(), z[f"{mode}/{j}/label"], atol=0)
        assert item["mask"].all()                              # the short trial's padding is scored too
    paper = WindowDataset(trials, ("mfcc",), 30, 20, Normalizer(trials, ("mfcc",)), "valence")[0]["x"]["mfcc"]
    assert np.abs(paper.numpy() - z[f"{mode}/0/mfcc"]).max() > 0.1     # per-dimension statistics differ


def test_split_ccc_and_window_averaging_match_the_released_evaluation():
    z = fixture("split_ccc")
    window, hop = int(z["window"]), int(z["hop"])
    trials, preds = [], {}
    for name in ("a", "b", "c"):
        label = z[f"label/{name}"]
        n = len(label)
        starts = window_starts(n, window, hop)
        outs = [z[f"window/{name}/{s}"] for s in starts]
        preds[name] = average_windows(n, starts, outs)
        np.testing.assert_allclose(preds[name], z[f"averaged/{name}"], atol=1e-6)
        trials.append(Trial(name, name, "validation", np.stack([label, label], 1), np.ones(n, bool),
                            {"visual": np.zeros((n, 1), np.float32)}))
    ours = released_split_ccc(trials, preds, "valence")
    assert ours == pytest.approx(float(z["ccc"]), abs=1e-6)
    paper = paper_split_ccc(trials, preds, "valence")          # population variances (ABAW)
    assert 1e-6 < abs(paper - ours) < 1e-2


def test_fold_merge_matches_the_released_ccc_centring_and_paper_differs():
    z = fixture("fold_merge")
    traces = z["traces"]
    assert z["late/agreement"][-1] < 0                         # the disagreeing fold keeps its weight
    np.testing.assert_allclose(released_merge(list(traces), "late"), z["late/merged"], atol=1e-6)
    np.testing.assert_allclose(released_merge(list(traces), "early"), z["early/merged"], atol=1e-6)
    paper = merge_predictions(list(traces), "late", "weighted")
    assert np.abs(paper - z["late/merged"]).max() > 1e-2
