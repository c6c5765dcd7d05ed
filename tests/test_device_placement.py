"""Device placement: every tensor a loss, augmentation,
evaluate, predict or extract function creates follows the model's device.

CI has no GPU, so each path runs with the model and the batch on torch's `meta` device: tensors
with shapes and no data, on which an op that mixes in a CPU tensor raises ("Tensor on device cpu
is not on the expected device meta"), as CUDA does. Networks are the smoke profile's (tiny).

What meta cannot run, and the check used instead (named again at each test):
* `.cpu()` of a meta tensor (no data): the `host_copies` fixture makes that copy give zeros of the
  same shape, so predict / extract / evaluate paths run on meta up to their device-to-host copy and
  their numpy / sklearn tail runs on the CPU; a missing `.cpu()` still raises (meta `.numpy()`).
* `float()` / `int()` / `.item()` of a meta tensor: the MAE and SoundNet evaluations are tested on
  their pure-tensor part (`validation_losses`, `teacher_agreement_tensors`); wav2vec's
  masked_accuracy runs its real masked_logits on meta and leaves the counting out.
* data-dependent shapes: torchaudio's HuBERT pre-training forward selects the masked frames by a
  boolean mask; its loss and evaluate run with `HubertStandIn` (checks its inputs are on meta,
  returns meta tensors of HuBERT's output shapes), the real HuBERT runs on meta on its feature path.
  Vu's Eq. 10 reads one boolean from the device: `MetaTruth` answers it.
"""
import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from common.params import load_params

ROOT = Path(__file__).resolve().parents[1]
META = torch.device("meta")
SMOKE = load_params(ROOT / "params.yaml", "smoke")


def meta(x):
    """A batch (tensor, or dict / list / tuple of them) moved to the meta device, as fit() moves it."""
    if torch.is_tensor(x):
        return x.to(META)
    if isinstance(x, dict):
        return {k: meta(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(meta(v) for v in x)
    return x


def on_meta(module: nn.Module) -> nn.Module:
    return module.to(META)


def assert_meta_loss(loss):
    assert torch.is_tensor(loss) and loss.device == META and loss.dim() == 0, loss


# ------------------------------------------------------- the device-to-host copy of predict paths

def _to_cpu(args, kwargs) -> bool:
    target = kwargs.get("device", args[0] if args else None)
    return isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu"


@pytest.fixture
def host_copies(monkeypatch):
    """A meta tensor has no data to copy: within this fixture `.cpu()` / `.to("cpu")` of one gives
    zeros of its shape and dtype on the CPU, so a predict / extract path runs on meta up to its
    device-to-host copy and its numpy / metric tail runs on real (zero) numbers. Everything else
    stays as on CUDA: a meta tensor mixed with a CPU one raises, `.numpy()` or `float()` of a meta
    tensor (a missing `.cpu()`) raises."""
    cpu, to = torch.Tensor.cpu, torch.Tensor.to

    def meta_cpu(self, *args, **kwargs):
        return torch.zeros(self.shape, dtype=self.dtype) if self.device == META else cpu(self, *args, **kwargs)

    def meta_to(self, *args, **kwargs):
        if self.device == META and _to_cpu(args, kwargs):
            return torch.zeros(self.shape, dtype=kwargs.get("dtype", self.dtype))
        return to(self, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "cpu", meta_cpu)
    monkeypatch.setattr(torch.Tensor, "to", meta_to)


def evaluated(module: nn.Module) -> nn.Module:
    """The module on meta in eval mode, as fit() hands it to evaluate."""
    return on_meta(module).eval()


def face_batch(n=4, size=32):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)


# ----------------------------------------------------------- pre-training losses of the networks

def _face_network(name):
    from common.features import face_networks as fn
    spec = fn.network(name)
    net = fn.TaskNet(spec.build(SMOKE[name]), spec.task)
    labels = torch.randint(0, 7, (4,)) if spec.task == "expression" else torch.rand(4, 2) * 2 - 1
    return lambda: fn.training_loss(spec.task, on_meta(net), meta((face_batch(), labels)), int(SMOKE[name]["crop"]))


def _fau():
    from common.backbones.iresnet import build_iresnet
    from common.features import fau
    net = fau.AUDetector(build_iresnet(SMOKE["fau"]))
    batch = (face_batch(), torch.randint(0, 2, (4, 12)).float(), torch.rand(4, 12) < 0.8)
    return lambda: fau.training_loss(on_meta(net), meta(batch), SMOKE["fau"]["crop"])


def _mae():
    from common.backbones.vit_mae import build_mae
    from common.features import mae
    cfg = SMOKE["mae"]
    return lambda: mae.training_loss(on_meta(build_mae(cfg)), meta((face_batch(size=28),)), int(cfg["crop"]),
                                     float(cfg["mask_ratio"]))


def _vggish():
    from common.backbones import vggish as vg
    from common.features import vggish
    net = vggish.EventTagger(vg.build_vggish(SMOKE["vggish"]))
    batch = (torch.randn(4, 1, vg.PATCH_FRAMES, vg.MEL_BANDS), torch.randint(0, 2, (4, 2)).float())
    pos_weight = torch.tensor([2.0, 3.0])                 # computed on the CPU from the training labels
    return lambda: vggish.training_loss(on_meta(net), meta(batch), pos_weight)


def _soundnet():
    from common.backbones.soundnet import CONV8_KERNEL, SoundNet8, hop_samples
    from common.features import fer, soundnet
    net = soundnet.TeacherHead(SoundNet8(SMOKE["soundnet"]["width"]))
    batch = {"wave": torch.randn(2, CONV8_KERNEL * hop_samples()), "target": torch.rand(2, 1, fer.POSTERIOR_DIM)}
    return lambda: soundnet.distillation_loss(on_meta(net), meta(batch))


def _still_batch():
    return {"image": torch.randn(4, 3, 28, 28), "expr": torch.randint(0, 7, (4,)), "va": torch.rand(4, 2) * 2 - 1}


def _fer():
    from common.features import fer, side_sets
    return lambda: side_sets.pretrain_loss(on_meta(fer.build_fer(SMOKE["fer"])), meta(_still_batch()))


def _frame_encoder():
    from common.features import side_sets, visual
    net = side_sets.PretrainNet(visual.build_encoder(SMOKE["visual_encoder"]))
    return lambda: side_sets.pretrain_loss(on_meta(net), meta(_still_batch()))


def _ecapatdnn():
    from common.backbones.ecapatdnn import build_ecapa
    from common.features import ecapatdnn
    net = ecapatdnn.SpeakerClassifier(build_ecapa(SMOKE["ecapatdnn"]), 3)
    return lambda: ecapatdnn.training_loss(on_meta(net), meta((torch.randn(4, 200, 80), torch.tensor([0, 1, 2, 0]))))


class HubertStandIn(nn.Module):
    """torchaudio's HuBERT pre-training forward indexes the masked frames by a boolean mask (a
    data-dependent shape: no meta kernel). This stand-in checks that the waveforms and cluster ids
    reach the network on its device, and returns meta tensors of HuBERT's output shapes
    (masked-frame logits with the target in column 0, no unmasked logits, the feature penalty)."""

    def __init__(self, clusters: int = 20, to_host: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros((), device=META))
        self.clusters, self.to_host = clusters, to_host

    def forward(self, waves, labels):
        assert waves.device == labels.device == self.weight.device, (waves.device, labels.device)
        masked = labels.shape[0] * labels.shape[1] // 2
        logits = torch.zeros(masked, self.clusters, device=META) + self.weight
        # to_host: evaluate counts hits with int() of device values (a sync on CUDA; meta has no
        # values), so the evaluate test takes the logits through the host_copies fixture's copy
        return (logits.cpu() if self.to_host else logits), None, (waves ** 2).mean() * self.weight


def _hubert():
    from common.features import hubert
    return lambda: hubert.training_loss(HubertStandIn(), meta((torch.randn(2, 16000), torch.randint(0, 20, (2, 49)))))


def _wav2vec():
    from common.backbones.wav2vec import Wav2Vec2Pretrain
    return lambda: on_meta(Wav2Vec2Pretrain(SMOKE["wav2vec"])).contrastive_loss(meta(torch.randn(2, 16000)))


PRETRAINING = {"densenet": lambda: _face_network("densenet"), "ires100": lambda: _face_network("ires100"),
               "ms_va": lambda: _face_network("ms_va"), "fau": _fau, "mae": _mae, "vggish": _vggish,
               "soundnet": _soundnet, "fer": _fer, "frame_encoder": _frame_encoder, "ecapatdnn": _ecapatdnn,
               "hubert": _hubert, "wav2vec": _wav2vec}


@pytest.mark.parametrize("name", PRETRAINING)
def test_pretraining_loss_runs_on_the_model_device(name):
    torch.manual_seed(0)
    assert_meta_loss(PRETRAINING[name]()())


def test_random_crop_flip_runs_on_the_batch_device_and_keeps_its_draws():
    from common.features.face_frames import random_crop_flip
    images = face_batch(8)
    out = random_crop_flip(meta(images), 28, torch.Generator().manual_seed(3))
    assert out.device == META and out.shape == (8, 3, 28, 28)
    # on the CPU: one crop offset for the batch, and the flip of half the batch, both from the generator
    g = torch.Generator().manual_seed(3)
    top, left = (int(v) for v in torch.randint(0, 5, (2,), generator=g))
    flip = torch.rand(8, generator=g) < 0.5
    crop = images[..., top:top + 28, left:left + 28]
    expected = torch.stack([c.flip(-1) if f else c for c, f in zip(crop, flip)])
    assert torch.equal(random_crop_flip(images, 28, torch.Generator().manual_seed(3)), expected)


# ------------------------------------------------------------------- the papers' training steps

def _liu(encoder, fusion):
    from papers.liu2023.experiment import eq10_loss
    from papers.liu2023.model import LiuModel
    model = LiuModel(6, 4, encoder, fusion, dim=8, layers=1, heads=2, segment=5, head_hidden=(8,))
    batch = {"x": {"visual": torch.randn(2, 10, 6), "audio": torch.randn(2, 10, 4)},
             "y": torch.rand(2, 10, 2), "mask": torch.rand(2, 10) < 0.9}
    return lambda: eq10_loss(1.0, 1.0)(on_meta(model), meta(batch))


def _jeong_model():
    from papers.jeong2022.train import build_model
    return build_model(SMOKE["jeong2022"], "I+A")


def _jeong_batch():
    return {"img": torch.randn(4, 6, 512), "aud": torch.randn(4, 1000), "va": torch.rand(4, 2) * 2 - 1,
            "expr": torch.tensor([0, 3, -1, 6]), "au": torch.randint(0, 2, (4, 12)).float()}


def _jeong(role, stream):
    from papers.jeong2022 import train
    if role == "teacher":
        return lambda: train.teacher_loss(on_meta(_jeong_model()), meta(_jeong_batch()), stream)
    # the teacher is built (and loaded) on the CPU, as train_run does; it must follow the batch
    teacher = _jeong_model().eval()
    loss = train.make_student_loss(teacher, {t: 1.0 for t in train.TASKS}, SMOKE["jeong2022"])
    return lambda: loss(on_meta(_jeong_model()), meta(_jeong_batch()), stream)


def _zhang(modality):
    from papers.zhang2021.model import build_model
    from papers.zhang2021.train import window_ccc_loss
    z = SMOKE["zhang2021"]
    dims = z["dims"]
    x = {m: torch.randn(2, 12, dims[m]) for m in (("visual",) if modality == "unimodal"
                                                  else ("visual", "mfcc", "vggish"))}
    batch = {"x": x, "y": torch.rand(2, 12) * 2 - 1, "mask": torch.rand(2, 12) < 0.9}
    return lambda: window_ccc_loss(z["loss_unbiased"])(on_meta(build_model(z, modality)), meta(batch))


def _vu_batch(key, shape, frames=()):
    """3 samples of each training set (a GRU's carry `frames` per sample): one without EXPR, one without VA."""
    from papers.vu2021.losses import PRIMARY
    expr = torch.tensor([0, 6, -1]).reshape(3, *(1,) * len(frames)).expand(3, *frames)
    va = torch.tensor([[0.1, -0.2], [-5.0, -5.0], [0.5, 0.3]]).reshape(3, *(1,) * len(frames), 2).expand(3, *frames, 2)
    return {name: {key: torch.randn(3, *frames, *shape), "expr": expr.clone(), "va": va.clone()} for name in PRIMARY}


def _vu(stage, role):
    from papers.vu2021 import losses, train
    vp = SMOKE["vu2021"]
    if stage == "cnn":
        build, batch = (lambda: train.build_cnn(vp["cnn"])), meta(_vu_batch("image", (3, 28, 28)))
    else:
        # the GRUs read both heads' cached features, EXPR then VA: 2 x feature_dim
        build, batch = ((lambda: train.build_gru(SMOKE)),
                        meta(_vu_batch("x", (2 * int(vp["cnn"]["feature_dim"]),), (5,))))
    key = "image" if stage == "cnn" else "x"
    if role == "teacher":
        return lambda: losses.teacher_loss(train.forward_sets(on_meta(build()), batch, key), batch, vp)
    teacher = on_meta(build().eval())
    return lambda: losses.student_loss(train.forward_sets(on_meta(build()), batch, key),
                                       train.forward_sets(teacher, batch, key), batch, vp, sharing=role == "eq10")


class MetaTruth:
    """Eq. 10 reads one boolean from the device (does the batch hold a labelled row of the secondary
    task), which meta cannot answer: within this context a meta tensor's truth is "yes" (the batch
    does hold one) and everything else of the step still runs on meta."""

    def __enter__(self):
        self.before = torch.Tensor.__bool__
        torch.Tensor.__bool__ = lambda t: True if t.device == META else self.before(t)

    def __exit__(self, *exc):
        torch.Tensor.__bool__ = self.before


PAPER_STEPS = {
    **{f"liu2023-{e}-early": (lambda e=e: _liu(e, "early"))
       for e in ("transformer", "lstm", "gru", "transformer_lstm")},
    "liu2023-transformer-late": lambda: _liu("transformer", "late"),
    **{f"jeong2022-{role}-{s}": (lambda role=role, s=s: _jeong(role, s))
       for role in ("teacher", "student") for s in ("va", "expr", "au", "mtl")},
    "zhang2021-unimodal": lambda: _zhang("unimodal"), "zhang2021-multimodal": lambda: _zhang("multimodal"),
    # Vu's CNN student trains by Eq. 9 or Eq. 10, the GRU student by Eq. 10
    **{f"vu2021-{stage}-{role}": (lambda stage=stage, role=role: _vu(stage, role))
       for stage, role in (("cnn", "teacher"), ("cnn", "eq9"), ("cnn", "eq10"), ("gru", "teacher"), ("gru", "eq10"))},
}


@pytest.mark.parametrize("name", PAPER_STEPS)
def test_paper_training_step_runs_on_the_model_device(name):
    torch.manual_seed(0)
    step = PAPER_STEPS[name]()
    with MetaTruth() if name.endswith("eq10") else contextlib.nullcontext():
        assert_meta_loss(step())


# ------------------------------------------------------------------ predict and extract paths

def _face_predict(name):
    from common.features import face_networks as fn
    spec = fn.network(name)
    net = evaluated(fn.TaskNet(spec.build(SMOKE[name]), spec.task))
    out = fn.predict(net, face_batch(5), int(SMOKE[name]["crop"]), batch=2)
    assert out.shape == (5, 7 if spec.task == "expression" else 2)


def _fau_evaluate():
    from common.backbones.iresnet import build_iresnet
    from common.features import fau
    net = evaluated(fau.AUDetector(build_iresnet(SMOKE["fau"])))
    scores = fau.evaluate(net, face_batch(5), torch.randint(0, 2, (5, 12)).float(), torch.ones(5, 12, dtype=torch.bool),
                          SMOKE["fau"]["crop"])
    assert set(scores) == {"val_loss", "val_auc"}


def _mae_evaluate():
    # the pure-tensor part on meta: each validation batch's loss; the float() tail needs data
    from common.backbones.vit_mae import build_mae
    from common.features import mae
    cfg = SMOKE["mae"]
    losses = mae.validation_losses(on_meta(build_mae(cfg)), face_batch(5, 28), int(cfg["crop"]), 0.75, batch=2)
    assert [n for _, n in losses] == [2, 2, 1] and all(loss.device == META for loss, _ in losses)


def _face_encoders():
    # fau, mae and the face networks extract through encode_faces (common/features/face_frames.py)
    from common.backbones.vit_mae import build_mae
    from common.features import face_frames, visual
    for net, crop, dim in ((visual.build_encoder(SMOKE["visual_encoder"]), 28, 512), (build_mae(SMOKE["mae"]), 24, 32)):
        assert face_frames.encode_faces(evaluated(net), face_batch(5), crop, 2, dim).shape == (5, dim)


def _frame_encoder_predict():
    from common.features import side_sets, visual
    net = evaluated(side_sets.PretrainNet(visual.build_encoder(SMOKE["visual_encoder"])))
    data = side_sets.StillFaces(face_batch(5), np.zeros(5, np.int64), np.zeros((5, 2), np.float32), 28, False)
    logits, va = side_sets.predict(net, data, batch_size=2)
    assert logits.shape == (5, 7) and va.shape == (5, 2)


def _fer_extract():
    from common.features import fer
    model = evaluated(fer._Teacher(fer.build_fer(SMOKE["fer"])))
    z, p = fer.encode_track(model, face_batch(5, 24).numpy(), 32, 28, 2)       # 24 px faces resized to 32
    assert z.shape == (5, 512) and p.shape == (5, fer.POSTERIOR_DIM)


class _Patches:
    """EventPatches' interface (patches start..stop-1, on the CPU) without a corpus."""

    def __len__(self):
        return 5

    def patches(self, start, stop):
        from common.backbones import vggish as vg
        return torch.randn(len(range(start, min(stop, 5))), 1, vg.PATCH_FRAMES, vg.MEL_BANDS)


def _vggish_predict():
    from common.backbones import vggish as vg
    from common.features import vggish
    tagger = evaluated(vggish.EventTagger(vg.build_vggish(SMOKE["vggish"])))
    assert vggish.predict_logits(tagger, _Patches(), 2).shape == (5, 2)
    backbone = evaluated(vg.build_vggish(SMOKE["vggish"]))
    spectrogram = np.random.default_rng(0).standard_normal((300, vg.MEL_BANDS)).astype(np.float32)
    assert vggish.embed(backbone, spectrogram, [0.5, 1.0, 1.5], 2).shape == (3, backbone.embed_dim)


def _soundnet_extract(monkeypatch):
    from common.backbones.soundnet import SoundNet8
    from common.features import soundnet
    model = evaluated(SoundNet8(SMOKE["soundnet"]["width"]))
    assert soundnet.track_features(model, torch.randn(1, 22050 * 3), 40, 10.0).shape == (40, soundnet.DIM)


def _soundnet_evaluate():
    # the pure-tensor part on meta (KL and CCC); the float() tail needs data
    from common.backbones.soundnet import CONV8_KERNEL, SoundNet8, hop_samples
    from common.features import fer, soundnet
    rng = np.random.default_rng(0)
    waves = [torch.randn(1, (CONV8_KERNEL + 1) * hop_samples())]
    val = soundnet.AudioWindows(waves, [rng.random((40, fer.POSTERIOR_DIM)).astype(np.float32)], [3.0],
                                CONV8_KERNEL, 2, False)
    net = on_meta(soundnet.TeacherHead(SoundNet8(SMOKE["soundnet"]["width"])))
    kl, va_ccc = soundnet.teacher_agreement_tensors(net, val)
    assert kl.device == va_ccc.device == META and va_ccc.shape == (2,)


def _ecapatdnn_extract():
    from common.backbones.ecapatdnn import build_ecapa
    from common.features import ecapatdnn
    model = evaluated(build_ecapa(SMOKE["ecapatdnn"]))
    fbank = np.random.default_rng(0).standard_normal((300, 80)).astype(np.float32)
    assert ecapatdnn.embed_windows(model, fbank, np.arange(0, 300, 50), 200, batch=4).shape == (6, 16)
    net = evaluated(ecapatdnn.SpeakerClassifier(build_ecapa(SMOKE["ecapatdnn"]), 3))
    assert ecapatdnn.batch_outputs(net, torch.randn(5, 200, 80), batch=2).shape == (5, 3)


class _Frames(nn.Module):
    """A (1, samples) -> (1, frames, dim) feature function as a module, so that through_meta applies."""

    def __init__(self, frames_of, network):
        super().__init__()
        self.frames_of, self.network = frames_of, network

    def forward(self, wave):
        return self.frames_of(self.network, wave)


def _hubert_extract_and_evaluate():
    # extraction: the real HuBERT on meta (its unmasked path); evaluate: the loss test's stand-in
    from common.backbones.hubert import build_hubert, last_layer
    from common.features import hubert
    frames = evaluated(_Frames(last_layer, build_hubert(SMOKE["hubert"])))
    assert hubert.chunk_frames(frames, torch.randn(20000), 8000, META).shape == (60, 32)
    hits, total = hubert.masked_hits(HubertStandIn(to_host=True), torch.randn(3, 16000),
                                     torch.randint(0, 20, (3, 49)), batch=2)
    assert total == 24 + 49 and hits == total          # the stand-in's logits are all zero: argmax 0


def _wav2vec_extract_and_evaluate(monkeypatch):
    # evaluate: masked_accuracy counts hits with int()/float() (needs data); the real masked_logits
    # runs on meta on what reaches the network, the counts are left out
    from common.backbones.wav2vec import Wav2Vec2Pretrain
    from common.features import wav2vec
    from common.features.hubert import chunk_frames
    model = on_meta(Wav2Vec2Pretrain(SMOKE["wav2vec"]))
    seen = []
    monkeypatch.setattr(model, "masked_accuracy",
                        lambda w: (seen.append(model.masked_logits(w)[1].device), (0, 0, 0.0))[1])
    assert wav2vec.contrastive_accuracy(model, torch.randn(3, 16000), batch=2) == (0, 0, 0.0)
    assert seen == [META, META]
    frames = evaluated(_Frames(lambda net, wave: net(wave), Wav2Vec2Pretrain(SMOKE["wav2vec"])))
    assert chunk_frames(frames, torch.randn(20000), 8000, META).shape == (60, 32)


def _liu_predict():
    from common.data.sequences import Normalizer
    from papers.liu2023 import data
    from papers.liu2023.model import LiuModel
    rng = np.random.default_rng(0)
    clips = [data.Clip(f"v{i}", "s", "validation", rng.random((n, 2), np.float32), np.ones(n, bool),
                       {"a": rng.random((n, 6), np.float32), "b": rng.random((n, 4), np.float32)})
             for i, n in enumerate((7, 12))]
    norm = Normalizer(clips, ["a", "b"])
    model = evaluated(LiuModel(6, 4, "transformer_lstm", "early", dim=8, layers=1, heads=2, segment=5,
                               head_hidden=(8,)))
    out = data.predict(model, clips, norm, ["a"], ["b"], 5)
    assert {v: p.shape for v, p in out.items()} == {"v0": (7, 2), "v1": (12, 2)}


def _jeong_predict():
    from papers.jeong2022.data import Corpus
    from papers.jeong2022.train import predict
    n = 20
    corpus = Corpus(np.zeros((n, 512), np.float32), np.zeros((n, 1000), np.float32), np.zeros((n, 2), np.float32),
                    np.zeros(n, np.int64), np.zeros((n, 12), np.float32), np.zeros(n, np.int64), {},
                    np.arange(-5, 1))
    out = predict(evaluated(_jeong_model()), corpus, np.arange(n), chunk=8)
    assert out["va"].shape == (n, 2) and out["expr"].shape == (n, 8) and out["au"].shape == (n, 12)


def _zhang_predict():
    from common.data.sequences import Normalizer
    from papers.zhang2021 import data
    from papers.zhang2021.model import build_model
    z = SMOKE["zhang2021"]
    rng = np.random.default_rng(0)
    mods = ("visual", "mfcc", "vggish")
    trials = [data.Trial(f"v{i}", "s", "validation", rng.random((n, 2), np.float32), np.ones(n, bool),
                         {m: rng.random((n, z["dims"][m]), np.float32) for m in mods}) for i, n in enumerate((30, 45))]
    norm = Normalizer(trials, mods)
    out = data.predict(evaluated(build_model(z, "multimodal")), trials, mods, 20, 10, norm, batch_size=3)
    assert {v: p.shape for v, p in out.items()} == {"v0": (30,), "v1": (45,)}


def _vu_predict():
    from papers.vu2021 import data as vd
    from papers.vu2021 import train
    vp = SMOKE["vu2021"]
    frames = vd.EvalFrames("validation", [face_batch(6, 28).numpy()], np.stack([np.zeros(6, int), np.arange(6)], 1),
                           np.zeros(6, int), np.zeros(6, np.int64), np.zeros((6, 2), np.float32))
    logits, va = train.predict_frames(evaluated(train.build_cnn(vp["cnn"])), frames, {**vp["cnn"], "eval_batch": 4}, vp)
    assert logits.shape == (6, 7) and va.shape == (6, 2)

    @dataclass
    class Track:                     # what predict_tracks reads of papers.vu2021.data.Track
        n: int

        def window(self, start, length):
            return torch.randn(length, 2 * int(vp["cnn"]["feature_dim"])), None, None   # both heads' features
    logits, va = train.predict_tracks(evaluated(train.build_gru(SMOKE)), [Track(20), Track(9)], 8, vp)
    assert logits.shape == (29, 7) and va.shape == (29, 2)


PREDICT = {
    **{f"face_networks-{n}": (lambda mp, n=n: _face_predict(n)) for n in ("densenet", "ires100", "ms_va")},
    "fau-evaluate": lambda mp: _fau_evaluate(), "mae-evaluate": lambda mp: _mae_evaluate(),
    "encode_faces": lambda mp: _face_encoders(), "frame_encoder-predict": lambda mp: _frame_encoder_predict(),
    "fer-extract": lambda mp: _fer_extract(), "vggish-predict-extract": lambda mp: _vggish_predict(),
    "soundnet-extract": _soundnet_extract, "soundnet-evaluate": lambda mp: _soundnet_evaluate(),
    "ecapatdnn-evaluate-extract": lambda mp: _ecapatdnn_extract(),
    "hubert-evaluate-extract": lambda mp: _hubert_extract_and_evaluate(),
    "wav2vec-evaluate-extract": _wav2vec_extract_and_evaluate,
    "liu2023-predict": lambda mp: _liu_predict(), "jeong2022-predict": lambda mp: _jeong_predict(),
    "zhang2021-predict": lambda mp: _zhang_predict(), "vu2021-predict": lambda mp: _vu_predict(),
}


@pytest.mark.parametrize("name", PREDICT)
def test_predict_and_extract_run_on_the_model_device(name, monkeypatch, host_copies):
    torch.manual_seed(0)
    PREDICT[name](monkeypatch)


def test_host_copies_keep_what_cuda_raises(host_copies):
    # the predict tests trust the fixture's copy: it must not hide a missing .cpu() or a mixed batch
    out = torch.ones(3, 2, device=META)
    assert out.cpu().device.type == "cpu" and out.to("cpu").shape == (3, 2) and out.to(torch.float16).device == META
    with pytest.raises(TypeError, match="numpy"):
        out.float().numpy()
    with pytest.raises(RuntimeError, match="device"):
        out + torch.ones(3, 2)
