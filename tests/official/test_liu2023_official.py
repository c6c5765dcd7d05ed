"""Liu 2023 `method: released` held to numbers of the team's own code (situAI/ABAW2023_VA-EXPR_Situ-RUCAIM3
@574c2e6), and `method: paper` shown to differ where papers/liu2023/ledger.yaml says it does.

The fixtures come from scripts/official_fixtures/liu2023.py (tests/fixtures/official/liu2023/PROVENANCE.md).
Tolerances: forward passes 1e-5 absolute (the code builds its position table in float64, this project in
float32: angles up to 149 rad differ by ~1e-6); the loss 1e-6 relative (the code's eps sits in Pearson's
denominator, this project's in the CCC's); the LR exactly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.train import TrainConfig, fit
from papers.liu2023.data import ChunkDataset, Clip, NORMALISERS
from papers.liu2023.model import LiuModel
from papers.liu2023.train import LOSSES, Method, paper_lr, released_lr, schedule

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "liu2023"


def fixture(name: str) -> dict:
    with np.load(FIXTURES / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def official_weights(z: dict, rename: dict) -> dict:
    """The code's state_dict with its names mapped to LiuModel's (prefix by prefix)."""
    out = {}
    for key, value in z.items():
        if not key.startswith("w/") or key == "w/pe.weight":          # the position table is a buffer here
            continue
        name = key[2:]
        for old, new in rename.items():
            if name.startswith(old):
                name = new + name[len(old):]
                break
        out[name] = torch.from_numpy(value)
    return out


HEADS = {"v_head.": "valence.net.", "a_head.": "arousal.net."}


def released_transformer(z, method="released"):
    # visual 8 + audio 4 = the code's 12-d concatenated input (feat_dict order: visual names, then audio)
    model = LiuModel(8, 4, "transformer", "early", dim=16, layers=2, heads=2, dropout=0.3, segment=10,
                     head_hidden=(8, 4), head_dropout=0.1, method=method).eval()
    return model


def as_ours(x: np.ndarray) -> dict:
    """(T, B, 12) of the code -> {"visual": (B, T, 8), "audio": (B, T, 4)}."""
    x = torch.from_numpy(x).transpose(0, 1)
    return {"visual": x[..., :8], "audio": x[..., 8:]}


def test_transformer_forward_matches_the_code_with_mapped_weights():
    z = fixture("transformer")
    model = released_transformer(z)
    weights = official_weights(z, {"transformer_encoder.transformer_encoder.": "encoder.transformer.", **HEADS})
    model.load_state_dict(weights, strict=True)
    with torch.no_grad():
        y = model(as_ours(z["x"])).transpose(0, 1).numpy()
    np.testing.assert_allclose(y, z["y"], atol=1e-5)
    # method paper: Eq. 1's bias b_f is one more parameter the code's weights do not have (ledger: input_bias)
    paper = released_transformer(z, method="paper")
    with pytest.raises(RuntimeError, match="affine.bias"):
        paper.load_state_dict(weights, strict=True)


def test_gru_forward_matches_the_code_segment_by_segment():
    z = fixture("gru")
    model = LiuModel(8, 4, "gru", "early", dim=16, layers=2, dropout=0.3, segment=10, head_hidden=(8, 4),
                     method="released").eval()
    model.load_state_dict(official_weights(z, {"gru_encoder.": "encoder.recurrent.", **HEADS}), strict=True)
    with torch.no_grad():
        y = model(as_ours(z["x"])).transpose(0, 1).numpy()             # 2 segments in one sequence
    np.testing.assert_allclose(y, z["y"], atol=1e-5)
    # method paper (Eq. 4): one direction, hidden = dim, and the state of segment 1 reaches segment 2
    paper = LiuModel(8, 4, "gru", "early", dim=16, layers=2, dropout=0.3, segment=10, head_hidden=(8, 4),
                     method="paper").eval()
    assert not paper.encoder.recurrent.bidirectional and paper.encoder.recurrent.hidden_size == 16
    assert model.encoder.recurrent.bidirectional and model.encoder.recurrent.hidden_size == 8
    x = as_ours(z["x"])
    with torch.no_grad():
        whole = paper(x)[:, 10:]
        alone = paper({k: v[:, 10:] for k, v in x.items()})
        assert (whole - alone).abs().max() > 1e-4                      # carried state
        whole = model(x)[:, 10:]
        alone = model({k: v[:, 10:] for k, v in x.items()})
        torch.testing.assert_close(whole, alone)                       # no carried state


def the_codes_clips(z: dict) -> list[Clip]:
    """The two videos of loss.npz as load_clips gives them with drop_invalid (frames with -5 dropped)."""
    clips = []
    for video in ("vid_a", "vid_b_left"):
        label = z[f"label/{video}"]
        keep = (label != -5).all(1)
        clips.append(Clip(video, video, "train", label[keep].astype(np.float32), np.ones(keep.sum(), bool),
                          {"fau": z[f"fau/{video}"][keep], "ecapatdnn": z[f"ecapatdnn/{video}"][keep]}))
    return clips


def batch_of(z: dict, method: Method):
    clips = the_codes_clips(z)
    norm = NORMALISERS[method.normalise](clips, ["fau", "ecapatdnn"])
    data = ChunkDataset(clips, norm, ["fau"], ["ecapatdnn"], segment=10, chunk_segments=method.segments_per_item,
                        pad_in_loss=method.pad_in_loss)
    items = [data[i] for i in range(len(data))]
    return items


def test_released_segments_and_padding_are_the_codes_sequence_data():
    z = fixture("loss")
    items = batch_of(z, Method.of({"method": "released", "chunk_segments": 2, "batch_size": 8, "step_lr_gamma": 0.1,
                                   "released": {"epochs": 25, "step_lr_epochs": 20}}))
    feat = np.stack([np.concatenate([it["x"]["visual"], it["x"]["audio"]], -1) for it in items], 1)
    label = np.stack([it["y"].numpy() for it in items], 1)
    np.testing.assert_allclose(feat, z["feat"], atol=0)              # no normalisation (ledger: normalisation)
    np.testing.assert_allclose(label, z["label"].astype(np.float32), atol=0)   # last label repeated
    assert all(it["mask"].all() for it in items)                      # padded frames count (ledger: padding_in_loss)


def test_released_loss_is_the_codes_per_gpu_loss_and_paper_differs():
    z = fixture("loss")
    lp = {"chunk_segments": 1, "batch_size": 5, "step_lr_gamma": 0.1, "epochs": 30, "step_lr_epochs": 20,
          "released": {"epochs": 25, "step_lr_epochs": 20}}
    pred = torch.from_numpy(z["pred"]).transpose(0, 1)                # (B, T, 2)
    released = Method.of({**lp, "method": "released"})
    items = batch_of(z, released)
    # rank r of 2 holds items r, r + 2, ...: put rank 0's first, then rank 1's, as consecutive groups
    order = [0, 2, 4, 1, 3]
    y = torch.stack([items[i]["y"] for i in order])
    mask = torch.stack([items[i]["mask"] for i in order])
    ours = LOSSES["released"](1.0, 1.0)(lambda x: pred[order], {"x": None, "y": y, "mask": mask})
    # the code: each GPU's loss on its own batch, DDP averages the gradients of the two
    # groups here: 3 + 2 items, the split torch.chunk makes of 5
    np.testing.assert_allclose(float(ours), z["rank_loss"].mean(), rtol=1e-6)
    # method paper: population variances, padding masked, one CCC over the whole batch (ledger: loss_variances,
    # padding_in_loss, loss_per_gpu_batch)
    paper = Method.of({**lp, "method": "paper"})
    p_items = batch_of(z, paper)
    p_loss = LOSSES["paper"](1.0, 1.0)(lambda x: pred, {"x": None, "y": torch.stack([it["y"] for it in p_items]),
                                                        "mask": torch.stack([it["mask"] for it in p_items])})
    assert abs(float(p_loss) - z["rank_loss"].mean()) > 1e-3


def test_released_lr_is_the_codes_every_epoch_and_paper_drops_one_epoch_earlier(tmp_path):
    z = fixture("lr")
    lr0, step, gamma = float(z["base_lr"]), int(z["step_size"]), float(z["gamma"])
    epochs = len(z["lr"])
    np.testing.assert_allclose(released_lr(lr0, step, gamma, epochs), z["lr"], rtol=1e-12)
    # through common.train.fit with the released hook: the "lr" each epoch trained with
    method = Method.of({"method": "released", "chunk_segments": 1, "batch_size": 2, "step_lr_gamma": gamma,
                        "released": {"epochs": epochs, "step_lr_epochs": step}})
    step_lr_epochs, hooks = schedule(method, lr0)
    data = [{"x": torch.randn(3), "y": torch.randn(())} for _ in range(2)]
    net = torch.nn.Linear(3, 1)
    cfg = TrainConfig(epochs=epochs, batch_size=2, lr=lr0, step_lr_epochs=step_lr_epochs, step_lr_gamma=gamma,
                      monitor="train_loss", amp=False, compile=False, deterministic=False, channels_last=False)
    out = fit(net, data, lambda m, b: ((m(b["x"]).squeeze(-1) - b["y"]) ** 2).mean(), lambda m: {}, cfg,
              tmp_path / "run", on_epoch_end=hooks, progress=False)
    np.testing.assert_allclose([row["lr"] for row in out["history"]], z["lr"], rtol=1e-12)
    # method paper: torch's StepLR stepped once per epoch drops the LR at epoch index 20, the code at 21
    paper = paper_lr(lr0, step, gamma, epochs)
    differ = [e for e in range(epochs) if not np.isclose(paper[e], z["lr"][e])]
    assert differ == [step]


def test_the_code_as_published_does_not_run():
    z = fixture("not_runnable")
    assert "image_collate_fn" in str(z["import_core"])                # ledger: not_runnable
    assert "input_size" in str(z["va_gru_config"])                    # ledger: not_runnable
    assert "StepLR" in str(z["steplr_lookup"])                        # ledger: not_runnable
