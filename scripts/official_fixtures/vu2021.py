"""Regenerate tests/fixtures/official/vu2021/*.npz from Vu et al.'s released code.

    python scripts/official_fixtures/vu2021.py --official /path/to/multitask-abaw-2021 [--out DIR]

The checkout is glmanhtu/multitask-abaw-2021 at aa346d5 (a `git archive` export); its modules
are imported from that path at run time and never copied here. The released code calls .cuda()
and torch.cuda tensor types, and imports a `path` module the user writes: on a CPU this script
makes .cuda() a no-op, maps torch.cuda.{Float,Long}Tensor to the CPU types, and gives `path` a
stub PATH. Its ResNet-50 definition (resnet50_ferplus_dag.py) ships outside the repository, so the
model fixtures run the released `Model`, `Head` and `GRU_Head` on an identity backbone over given
features (reduced widths, which the classes take as arguments); the losses run the released
`ResNet50.optimize_parameters` / `optimize_parameters_kd_v2` on those heads.
"""
from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
FERPLUS_MEAN = [131.0912, 103.8827, 91.4953]      # the resnet50_ferplus_dag meta (std 1, 0-255 input)
D, HIDDEN, K, B = 32, 16, 20, 8                    # backbone features, head width, bins, rows per set


def cpu_shims(checkout: Path) -> None:
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    torch.cuda.FloatTensor, torch.cuda.LongTensor = torch.FloatTensor, torch.LongTensor
    path = types.ModuleType("path")

    class PATH:                                    # the user-written path/__init__.py
        MODEL_DIR = str(checkout)
    path.PATH = PATH
    sys.modules["path"] = path
    sys.path.insert(0, str(checkout / "multitask_cnn"))


def options(**changes):
    """The released defaults (options/base_options.py, train_options.py) with the README's batch."""
    opt = dict(load_epoch=0, temperature=1.5, EXPR_label_size=7, VA_label_size=2, digitize_num=K,
               EXPR_criterion="CE", VA_criterion="CCC_CE", lambda_EXPR=1.0, lambda_V=1.0, lambda_A=1.0,
               lambda_ccc=1.0, lambda_teacher=0.4, tasks=["EXPR", "VA", "EXPR_VA"], hidden_size=HIDDEN,
               early_stop=6, batch_size=B, image_size=112, gpu_ids=[], is_train=True, name="fixture",
               checkpoints_dir="/tmp", model_name="resnet50", pretrained_resnet50_model="",
               lr_policy="step", lr_decay_epochs=3, lr_F=1e-4, F_adam_b1=0.5, F_adam_b2=0.999,
               optimizer="Adam", disable_shared_annotations=False)
    opt.update(changes)
    return types.SimpleNamespace(**opt)


class IdentityBackbone(nn.Module):
    """Stands in for the FER+ ResNet-50: (B, D, 1, 1) features pass through (Model squeezes them)."""
    output_feature_dim = D

    def __init__(self, opt=None):
        super().__init__()

    def forward(self, x):
        return x


def randomise_bn(module: nn.Module, gen: torch.Generator) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def state(prefix: str, module: nn.Module) -> dict:
    return {f"{prefix}{k}": v.detach().numpy() for k, v in module.state_dict().items()}


def cnn_and_losses(out: Path) -> None:
    import utils.model_utils as mu
    import models.resnet50 as r50
    r50.BackBone = IdentityBackbone
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    student = r50.ResNet50(options())
    teacher = r50.ResNet50(options())
    for m in (student, teacher):
        randomise_bn(m.resnet50, gen)
    x = {t: torch.randn(B, D, 1, 1, generator=gen) for t in ("EXPR", "VA", "EXPR_VA")}

    # the CNN heads in eval mode (Model + Head)
    teacher.set_eval()
    with torch.no_grad():
        o = teacher.resnet50(x["EXPR"])
    np.savez_compressed(out / "cnn_heads.npz", x=x["EXPR"].numpy(), expr=o["output"]["EXPR"].numpy(),
                        va=o["output"]["VA"].numpy(), f_expr=o["feature"]["EXPR"].numpy(),
                        f_va=o["feature"]["VA"].numpy(), **state("w.", teacher.resnet50))

    # labels: AFEW-VA-like values on the 0.1 grid; -2 marks a missing shared label (the released sub)
    expr = {t: torch.randint(0, 7, (B,), generator=gen) for t in x}
    va = {t: (torch.randint(-10, 11, (B, 2), generator=gen) / 10.0).float() for t in x}
    sub_va = va["EXPR"].clone()
    sub_va[: B * 3 // 4] = -2.0                                   # 1/4 of the EXPR rows carry VA
    sub_expr = expr["VA"].clone().float()
    sub_expr[: B // 2] = -2.0                                     # 1/2 of the VA rows carry EXPR
    batch = {"EXPR": {"image": x["EXPR"], "label": expr["EXPR"], "sub": sub_va},
             "VA": {"image": x["VA"], "label": va["VA"], "sub": sub_expr},
             "EXPR_VA": {"image": x["EXPR_VA"],
                         "label": torch.cat([expr["EXPR_VA"][:, None].float(), va["EXPR_VA"]], 1)}}
    batch["EXPR_VA"]["sub"] = batch["EXPR_VA"]["label"]

    outputs = []
    hook = student.resnet50.register_forward_hook(lambda m, i, o: outputs.append(
        {k: v.detach().clone() for k, v in o["output"].items()}))
    student.set_train()
    torch.manual_seed(1)                                          # the heads' dropout masks
    student.set_input(batch)
    before = {k: v.clone() for k, v in student.resnet50.state_dict().items()}
    student.optimize_parameters()                                 # teacher loss (Eq. 7), per-set passes
    teacher_loss = student.loss_dict["loss"]
    student.resnet50.load_state_dict(before)
    teacher.set_eval()
    torch.manual_seed(1)
    student.optimize_parameters_kd_v2(teacher)                    # student loss (Eq. 10)
    kd_loss = student.loss_dict["loss"]
    student.resnet50.load_state_dict(before)
    torch.manual_seed(1)
    student._opt.disable_shared_annotations = True                # Eq. 9: the data loaders' -2 subs
    nosharing = {**batch, "EXPR": {**batch["EXPR"], "sub": torch.full_like(sub_va, -2.0)},
                 "VA": {**batch["VA"], "sub": torch.full_like(sub_expr, -2.0)}}
    student.set_input(nosharing)
    student.optimize_parameters_kd_v2(teacher)
    eq9_loss = student.loss_dict["loss"]
    student.resnet50.load_state_dict(before)                      # the weights every call started from
    hook.remove()
    with torch.no_grad():
        t_out = {t: teacher.resnet50(x[t])["output"] for t in x}
    names = ("EXPR", "VA", "EXPR_VA")
    arrays = {"teacher_loss": teacher_loss, "eq10_loss": kd_loss, "eq9_loss": eq9_loss}
    for i, t in enumerate(names):
        arrays[f"x_{t}"] = x[t].numpy()
        arrays[f"train_expr_{t}"] = outputs[i]["EXPR"].numpy()    # the first call: optimize_parameters
        arrays[f"train_va_{t}"] = outputs[i]["VA"].numpy()
        arrays[f"student_expr_{t}"] = outputs[3 + i]["EXPR"].numpy()   # optimize_parameters_kd_v2
        arrays[f"student_va_{t}"] = outputs[3 + i]["VA"].numpy()
        arrays[f"teacher_expr_{t}"] = t_out[t]["EXPR"].numpy()
        arrays[f"teacher_va_{t}"] = t_out[t]["VA"].numpy()
        arrays[f"expr_{t}"], arrays[f"va_{t}"] = expr[t].numpy(), va[t].numpy()
    arrays["sub_va_EXPR"], arrays["sub_expr_VA"] = sub_va.numpy(), sub_expr.numpy()
    np.savez_compressed(out / "losses.npz", **arrays, **state("student.", student.resnet50),
                        **state("teacher.", teacher.resnet50))

    # single terms: Eq. 2's CE and CCC per dimension, Eq. 1, Eqs. 4-5 (T = 1.5, x T^2)
    logits = torch.randn(B, 2 * K, generator=gen)
    t_logits = torch.randn(B, 2 * K, generator=gen)
    y = va["VA"]
    e_logits, e_t = torch.randn(B, 7, generator=gen), torch.randn(B, 7, generator=gen)
    opt = options()
    ce = mu.Custom_CrossEntropyLoss(K)
    ccc = mu.CCCLoss(K)
    loss_v, loss_a = mu.VA_Losses(opt).get_task_loss()(logits, y)
    kd_v, kd_a = mu.VA_Losses(opt).get_distillation_loss()(logits, t_logits)
    np.savez_compressed(out / "terms.npz", va_logits=logits.numpy(), va_teacher=t_logits.numpy(), va=y.numpy(),
                        ce_v=ce(logits[:, :K], y[:, :1]).item(), ce_a=ce(logits[:, K:], y[:, 1:]).item(),
                        ccc_v=ccc(logits[:, :K], y[:, :1]).item(), ccc_a=ccc(logits[:, K:], y[:, 1:]).item(),
                        loss_v=loss_v.item(), loss_a=loss_a.item(), kd_v=kd_v.item(), kd_a=kd_a.item(),
                        expr_logits=e_logits.numpy(), expr_teacher=e_t.numpy(), expr=expr["EXPR"].numpy(),
                        ce_expr=mu.EXPR_Losses(opt).get_task_loss()(e_logits, expr["EXPR"]).item(),
                        kd_expr=mu.EXPR_Losses(opt).get_distillation_loss()(e_logits, e_t).item())

    # the bins: np.digitize against float64 edges, captured where Custom_CrossEntropyLoss calls CE
    grid = torch.tensor(np.round(np.arange(-10, 11) / 10.0, 1), dtype=torch.float32)
    seen = []
    real_f = mu.F
    mu.F = types.SimpleNamespace(cross_entropy=lambda x, t: seen.append(t.clone()) or real_f.cross_entropy(x, t))
    ce(torch.zeros(len(grid), K), grid)
    mu.F = real_f
    np.savez_compressed(out / "bins.npz", values=grid.numpy(), bins=seen[0].numpy())

    # early stop: the released EarlyStop on a score sequence (it is fed 3 - score)
    scores = [0.9, 1.0, 1.1, 1.05, 1.08, 1.02, 1.09, 1.1, 1.0, 1.01, 1.05, 1.2]
    stopper = mu.EarlyStop(6)
    stops = [stopper.should_stop(3 - s) for s in scores]
    np.savez_compressed(out / "early_stop.npz", scores=np.array(scores), stops=np.array(stops))


def gru(out: Path, checkout: Path) -> None:
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "vu_rnn_model_utils", checkout / "multitask_cnn_rnn/utils/model_utils.py")   # GRU_Head lives here
    mu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mu)
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    heads = nn.ModuleList([mu.GRU_Head(HIDDEN, HIDDEN // 2, 7), mu.GRU_Head(HIDDEN, HIDDEN // 2, 2 * K)]).eval()
    f = {t: torch.randn(2, 6, HIDDEN, generator=gen) for t in ("EXPR", "VA")}
    with torch.no_grad():
        e, v = heads[0](f["EXPR"])["output"], heads[1](f["VA"])["output"]
    np.savez_compressed(out / "gru.npz", f_expr=f["EXPR"].numpy(), f_va=f["VA"].numpy(), expr=e.numpy(),
                        va=v.numpy(), **state("w.", heads))


def samplers_and_transforms(out: Path) -> None:
    from PIL import Image
    import utils.model_utils as mu
    from torchsampler.imbalanced_EXPR_VA import ImbalancedDatasetSamplerEXPRVA
    from torchsampler.imbalanced_SLML import ImbalancedDatasetSamplerSLML
    from torchsampler.imbalanced_VA import ImbalancedDatasetSamplerVA
    rng = np.random.default_rng(3)
    n = 60
    expr = rng.integers(0, 7, n)
    va = np.clip(rng.normal(0.2, 0.35, (n, 2)), -1, 1).round(2)

    class Labels:
        def __init__(self, labels):
            self.labels = labels

        def get_all_label(self):
            return self.labels

        def __len__(self):
            return n
    both = ImbalancedDatasetSamplerEXPRVA(Labels({"EXPR": list(expr), "VA": [tuple(p) for p in va]}))
    only_va = ImbalancedDatasetSamplerVA(Labels(va))
    only_expr = ImbalancedDatasetSamplerSLML(Labels(list(expr)))
    np.savez_compressed(out / "samplers.npz", expr=expr, va=va, both=both.weights.numpy(),
                        va_weights=only_va.weights.numpy(), expr_weights=only_expr.weights.numpy())

    meta = {"mean": FERPLUS_MEAN, "std": [1, 1, 1], "imageSize": [224, 224, 3]}
    train = mu.augment_transforms(meta, new_imageSize=[112, 112, 3], override_meta_imsize=True)
    evaluate = mu.compose_transforms(meta, new_imageSize=[112, 112, 3], override_meta_imsize=True)
    yy, xx = np.mgrid[0:112, 0:112]
    face = np.stack([(xx * 2 + yy) % 256, (yy * 3) % 256, ((xx - yy) * 5) % 256], -1).astype(np.uint8)
    face[30:60, 20:50] = rng.integers(0, 256, (30, 30, 3))
    image = Image.fromarray(face)
    mean = torch.tensor(FERPLUS_MEAN).view(3, 1, 1)
    torch.manual_seed(5)
    a = train(image)
    torch.manual_seed(6)
    b = train(image)
    e = evaluate(image)

    def level(t):   # back to 0-255 levels
        return (t + mean).round().clamp(0, 255).to(torch.uint8).numpy()
    np.savez_compressed(out / "transforms.npz", face=face.transpose(2, 0, 1), train_seed5=level(a),
                        train_seed6=level(b), eval=level(e))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True, type=Path, help="a checkout of glmanhtu/multitask-abaw-2021@aa346d5")
    ap.add_argument("--out", type=Path, default=ROOT / "tests/fixtures/official/vu2021")
    args = ap.parse_args(argv)
    if not (args.official / "multitask_cnn/utils/model_utils.py").is_file():
        print(f"error: {args.official}: no multitask_cnn/utils/model_utils.py; pass a checkout of "
              "glmanhtu/multitask-abaw-2021", file=sys.stderr)
        return 2
    cpu_shims(args.official.resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    cnn_and_losses(args.out)
    gru(args.out, args.official.resolve())
    samplers_and_transforms(args.out)
    print(f"wrote {sorted(p.name for p in args.out.glob('*.npz'))} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
