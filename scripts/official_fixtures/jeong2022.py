"""Regenerate tests/fixtures/official/jeong2022/*.npz by running Jeong et al.'s released code.

    python scripts/official_fixtures/jeong2022.py --official /path/to/2022_ABAW_imlab [--out DIR]

The checkout must be EuiseokJeong/2022_ABAW_imlab at bb0513c (its .py files are enough; e.g.
`git --git-dir=<mirror> archive bb0513c -- '*.py' | tar -x -C /tmp/x`). The official modules are
imported from that path at run time; nothing of them is copied into this project.

This script needs TensorFlow (the authors used TF 2.7 / Keras 2.7), which is NOT a dependency of
this project: run it from a scratch virtual environment, e.g.
    python3 -m venv /tmp/jeong/venv && /tmp/jeong/venv/bin/pip install tensorflow-cpu==2.15.1 scikit-learn
    /tmp/jeong/venv/bin/python scripts/official_fixtures/jeong2022.py --official /tmp/jeong/official
It never imports torch or anything of this project. What it writes (numbers only) and the exact
versions it ran are described in tests/fixtures/official/jeong2022/PROVENANCE.md.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import types
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "official" / "jeong2022"
# A small model with the released architecture (models.get_model): the LSTM and the layer widths
# are shrunk so that the weights and gradients stay a few hundred kB; the inputs keep the
# released shapes (6 x 512 FER vectors, a 1000-d SoundNet vector).
SMALL = {"feature_extractor_layers": [16, 8], "classifier_layers": [8, 4], "domain_layers": [8, 4],
         "lstm_num": 4, "dropout_rate": 0.5, "adaptation_factor": 1}
TASKS = ("VA", "EXPR", "AU", "MTL")


class Softmax27:
    """keras.layers.Softmax as Keras 2.7 computes it: backend.softmax = tf.nn.softmax, with no logits
    cached on the output (keras 2.7.0 layers/advanced_activations.py:350, backend.py softmax). Keras 2.15's
    layer caches them, which would send utils.get_loss's categorical CE down the logits path."""

    def __init__(self, dtype=None, **kwargs):
        pass

    def __call__(self, x):
        import tensorflow as tf
        return tf.nn.softmax(tf.convert_to_tensor(x))


def import_official(path: Path):
    """utils, models, dataloader, trainer of the checkout (trainer's silence_tensorflow is stubbed;
    utils.Softmax behaves as in Keras 2.7, see Softmax27)."""
    sys.modules.setdefault("silence_tensorflow", types.SimpleNamespace(silence_tensorflow=lambda: None))
    sys.path.insert(0, str(path))
    import dataloader
    import models
    import trainer
    import utils
    utils.Softmax = Softmax27
    return utils, models, dataloader, trainer


def official_functions(path: Path, names, namespace: dict) -> dict:
    """Execute only the named top-level functions of a file of the checkout (extract_audio.py imports
    moviepy, cv2, librosa and the FER model at its top; the index arithmetic needs none of them)."""
    tree = ast.parse(path.read_text())
    keep = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    missing = set(names) - {n.name for n in keep}
    if missing:
        raise SystemExit(f"{path}: no function(s) {sorted(missing)}; is this the checkout at bb0513c?")
    exec(compile(ast.Module(keep, []), str(path), "exec"), namespace)
    return namespace


HEADS = {3: "head_domain", 2: "head_va", 8: "head_expr", 12: "head_au"}


def canonical(w) -> str:
    """A variable's name without Keras' instance counters: 'FE_16_dense/kernel', 'img_lstm_4/lstm_cell/kernel',
    and 'head_<task>/kernel' for the unnamed output Dense layers (told apart by their width)."""
    name = w.name.split(":")[0]
    parts = name.split("/")
    if parts[0].startswith("dense_module"):
        return "/".join(parts[1:])
    if parts[0].startswith("dense"):
        return f"{HEADS[int(w.shape[-1])]}/{parts[-1]}"
    return name


def set_weights(model, rng) -> dict:
    """Every variable of `model` drawn from `rng` (BN variances positive); returns {canonical name: array}."""
    out = {}
    for w in model.weights:
        v = rng.normal(0, 0.3, w.shape).astype(np.float32)
        if "moving_variance" in w.name or "gamma" in w.name:
            v = (0.5 + rng.random(w.shape)).astype(np.float32)
        w.assign(v)
        out[canonical(w)] = v
    return out


def store_grad(out: dict, prefix: str, w, g) -> None:
    """A gradient under its canonical name; for the two input kernels (512 and 1004 rows) only the first
    64 rows and the column sums, which keeps the fixture small and still checks every column."""
    g = np.zeros(w.shape, np.float32) if g is None else np.asarray(g)    # None: the loss does not reach w
    if g.shape[0] > 64:
        out[f"{prefix}/{canonical(w)}:rows64"], out[f"{prefix}/{canonical(w)}:colsum"] = g[:64], g.sum(0)
    else:
        out[f"{prefix}/{canonical(w)}"] = g


def inputs(rng, b: int):
    """FER and SoundNet inputs, rounded to float16 so that they are stored at half the size exactly."""
    img = rng.normal(0, 1, (b, 6, 1, 512)).astype(np.float16).astype(np.float32)
    aud = rng.normal(0, 1, (b, 1000)).astype(np.float16).astype(np.float32)
    return img, aud


def labels_for(task: str, rng, b: int):
    va = rng.uniform(-1, 1, (b, 2)).astype(np.float32)
    expr = np.eye(8, dtype=np.float32)[rng.integers(0, 8, b)]
    au = (rng.random((b, 12)) < 0.4).astype(np.float32)
    if task == "VA":
        return va, {"va": va}
    if task == "EXPR":
        return expr, {"expr": expr}
    if task == "AU":
        return au, {"au": au}
    mtl = np.empty((b, 3), dtype=object)           # as dataloader.get_data builds MTL labels
    for i in range(b):
        mtl[i, 0], mtl[i, 1], mtl[i, 2] = va[i], expr[i], au[i]
    return mtl, {"va": va, "expr": expr, "au": au}


def fixture_forward(models, tf) -> dict:
    """models.get_model with drawn weights: eval-mode outputs (dropout 0.5) and train-mode outputs
    (dropout 0, so BN's batch statistics are the only train-mode difference)."""
    rng = np.random.default_rng(0)
    out = {}
    img, aud = inputs(rng, 16)
    for tag, drop, training in (("eval", 0.5, False), ("train", 0.0, True)):
        model = models.get_model({**SMALL, "dropout_rate": drop})
        weights = set_weights(model, np.random.default_rng(1))
        got = model([img, aud], training=training)
        for name, v in zip(("domain", "va", "expr", "au"), got):
            out[f"{tag}/out/{name}"] = np.asarray(v)
        if tag == "eval":
            for k, v in weights.items():
                out[f"weights/{k}"] = v
    out["img"], out["aud"] = img.astype(np.float16), aud.astype(np.float16)
    return out


def fixture_losses(utils, tf) -> dict:
    """utils.get_loss on fixed outputs: teacher and student, every stream, and the term-isolating
    settings of (alpha, beta, domain weight): the totals and which setting made them."""
    rng = np.random.default_rng(2)
    b = 12
    out = {}

    def outputs(r, saturate: float):
        dom = tf.nn.softmax(r.normal(0, 2, (b, 3)).astype(np.float32)).numpy()
        va = np.tanh(r.normal(0, 1, (b, 2))).astype(np.float32)
        expr = r.normal(0, 3, (b, 8)).astype(np.float32)
        expr[0] = [25, -25, 0, 0, 0, 0, 0, 0]         # saturating rows exercise Keras' clipping
        au_logit = r.normal(0, 3, (b, 12)).astype(np.float32)
        au_logit[1] = saturate          # teacher +30, student -30: Keras' clipped and logits paths differ
        au = tf.sigmoid(au_logit).numpy()
        return [dom, va, expr, au], au_logit

    def as_model_output(out, au_logit):
        """Tensors as the model hands them over: the AU output of Activation('sigmoid') carries its
        logits (activations.sigmoid caches them; Keras' BCE then uses them when it is y_pred)."""
        return [tf.constant(out[0]), tf.constant(out[1]), tf.constant(out[2]),
                tf.keras.activations.sigmoid(tf.constant(au_logit))]
    t_out, t_au_logit = outputs(rng, 30.0)
    s_out, s_au_logit = outputs(rng, -30.0)
    out["teacher/domain"], out["teacher/va"], out["teacher/expr"], out["teacher/au"] = t_out
    out["student/domain"], out["student/va"], out["student/expr"], out["student/au"] = s_out
    out["teacher/au_logit"], out["student/au_logit"] = t_au_logit, s_au_logit
    settings = np.array([[10, 0.9, 0.35], [1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 1]], np.float64)
    out["settings"] = settings                                  # alpha, beta, domain weight
    non_improve = {"VA": 1, "EXPR": 0, "AU": 2, "MTL": 0}
    out["non_improve"] = np.array([non_improve[k] for k in TASKS], np.float64)
    out["T"], out["task_weight_exp"] = np.float64(2.5), np.float64(0.5)
    for task in TASKS:
        labels, parts = labels_for(task, rng, b)
        for k, v in parts.items():
            out[f"{task}/label/{k}"] = v
        for role in ("teacher", "student"):
            vals = []
            for alpha, beta, dw in settings:
                if role == "teacher":       # trainer.py:126: T = 1 for the teacher
                    loss = utils.get_loss(as_model_output(t_out, t_au_logit), labels, task, alpha, beta, dw, 1,
                                          non_improve, True, exp=0.5)
                else:
                    loss = utils.get_loss(as_model_output(t_out, t_au_logit), labels, task, alpha, beta, dw, 2.5,
                                          non_improve, True, exp=0.5, s_out=as_model_output(s_out, s_au_logit))
                vals.append(float(loss))
            out[f"{task}/{role}/loss"] = np.array(vals)
    return out


def fixture_gradients(utils, models, tf) -> dict:
    """Gradients of utils.get_loss with respect to the trained model's variables (the step of
    trainer.train_epoch), dropout 0 so they are deterministic: the teacher (domain weight 0.35)
    and the student against a second model as its teacher, every stream."""
    rng = np.random.default_rng(3)
    b = 8
    teacher = models.get_model({**SMALL, "dropout_rate": 0.0})
    student = models.get_model({**SMALL, "dropout_rate": 0.0})
    out = {}
    for k, v in set_weights(teacher, np.random.default_rng(4)).items():
        out[f"teacher_weights/{k}"] = v
    teacher_start = teacher.get_weights()
    for k, v in set_weights(student, np.random.default_rng(5)).items():
        out[f"student_weights/{k}"] = v
    non_improve = {"VA": 0, "EXPR": 1, "AU": 0, "MTL": 0}
    out["non_improve"] = np.array([non_improve[k] for k in TASKS], np.float64)
    for task in TASKS:
        img, aud = inputs(rng, b)
        labels, parts = labels_for(task, rng, b)
        out[f"{task}/img"], out[f"{task}/aud"] = img.astype(np.float16), aud.astype(np.float16)
        for k, v in parts.items():
            out[f"{task}/label/{k}"] = v
        with tf.GradientTape() as tape:             # trainer.py:138-141, gen 0
            t_out = teacher([img, aud], training=True)
            loss = utils.get_loss(t_out, labels, task, 10, 0.9, 0.35, 1, non_improve, True, exp=0.5)
        grads = tape.gradient(loss, teacher.trainable_variables)
        out[f"{task}/teacher/loss"] = np.float64(loss)
        for w, g in zip(teacher.trainable_variables, grads):
            store_grad(out, f"{task}/teacher/grad", w, g)
        for w in teacher.weights:                   # batch norm's moving statistics after one training call
            if "moving" in w.name:
                out[f"{task}/teacher/after/{canonical(w)}"] = w.numpy()
        teacher.set_weights(teacher_start)          # every task's student step sees the same teacher
        with tf.GradientTape() as tape:             # trainer.py:138-141, gen 1
            s_out = student([img, aud], training=True)
            t_out = teacher([img, aud], training=False)
            loss = utils.get_loss(t_out, labels, task, 10, 0.9, 0.35, 2.5, non_improve, True, exp=0.5, s_out=s_out)
        grads = tape.gradient(loss, student.trainable_variables)
        out[f"{task}/student/loss"] = np.float64(loss)
        for w, g in zip(student.trainable_variables, grads):
            store_grad(out, f"{task}/student/grad", w, g)
    return out


def fixture_schedule(trainer_mod, tf) -> dict:
    """trainer.Trainer.train_epoch and train_gen with stand-ins for the data, the models and
    get_loss: the stream order, domain weight, temperature and `training` flags of every step
    (20 epochs, teacher and student), and the task-weight counters / best epoch / early stop that
    train_gen derives from a scripted series of validation metrics."""
    import config
    calls = []

    class Model:
        def __init__(self, who):
            self.who, self.trainable_variables = who, []

        def __call__(self, x, training):
            calls.append((self.who, bool(training)))
            return None

    def get_loss(t_out, labels, task, alpha, beta, domain_weight, T, non_improve_list, task_weight, exp=None,
                 s_out=None):
        calls.append(("loss", task, float(domain_weight), float(T), s_out is not None))
        return tf.constant(0.0)

    class Loader(list):
        max_iter = 1

        def shuffle(self):
            pass

    batch = tuple(([], [], None, None, np.zeros((2, 1)), task) for task in ("MTL", "VA", "EXPR", "AU"))
    trainer_mod.get_loss = get_loss
    trainer_mod.get_metric = lambda *a, **k: (0.5, None)
    t = trainer_mod.Trainer.__new__(trainer_mod.Trainer)
    t.configs, t.epochs, t.alpha, t.beta, t.T = dict(config.configs), 20, 10, 0.9, 2.5
    t.threshold, t.task_weight_exp, t.task_weight = 0.5, 0.5, True
    t.domain_weight, t.linear_domain_weight = config.configs["domain_weight"], config.configs["linear_domain_weight"]
    t.non_improve_list = {k: 0 for k in TASKS}
    t.optimizer = types.SimpleNamespace(apply_gradients=lambda pairs: list(pairs))
    t.teacher, t.student = Model("teacher"), Model("student")
    rows, training_flags = [], {}
    for gen in (0, 1):
        t.gen_cnt = gen
        for epoch in range(t.epochs):
            del calls[:]
            t.train_epoch(Loader([batch]), epoch)
            for c in calls:
                if c[0] == "loss":
                    rows.append([gen, epoch, TASKS.index(c[1]), c[2], c[3], float(c[4])])
            flags = [c for c in calls if c[0] in ("teacher", "student")]
            if epoch == 0:
                training_flags.update({f"gen{gen}/{who}": tr for who, tr in flags})
    out = {"steps": np.array(rows, np.float64),  # gen, epoch, task index (TASKS), domain weight, T, student
           "config/epochs": np.int64(config.configs["epochs"]),
           "config/domain_weight": np.float64(config.configs["domain_weight"]),
           "config/linear_domain_weight": np.bool_(config.configs["linear_domain_weight"]),
           "config/temperature": np.float64(config.configs["temperature"]),
           "config/alpha": np.float64(config.configs["alpha"]), "config/beta": np.float64(config.configs["beta"]),
           "config/task_weight_exp": np.float64(config.configs["task_weight_exp"]),
           "config/early_stop": np.int64(config.configs["early_stop"]),
           "config/batch_size": np.int64(config.configs["batch_size"]),
           "config/learning_rate": np.float64(config.configs["learning_rate"])}
    for k, v in training_flags.items():
        out[f"training/{k}"] = np.bool_(v)

    # train_gen: scripted validation metrics -> non_improve_list before each epoch, best epoch, epochs run
    rng = np.random.default_rng(6)
    script = {k: rng.random(20).round(2) for k in ("VA", "EXPR", "AU", "MTL")}
    script["MTL"][8:] = 0.0                           # MTL stops improving after epoch 7: early stop at 5
    seen = []

    def train_epoch(loader, epoch):
        seen.append([t.non_improve_list[k] for k in ("VA", "EXPR", "AU")])
        return ({k: [0.0] for k in ("VA", "EXPR", "AU", "MTL")},
                {k: [0.0] for k in ("VA", "EXPR", "AU", "MTL", "domain")})

    def valid(model, loader):
        e = len(seen) - 1
        metrics = {"domain": [0.0], **{k: [float(script[k][e])] for k in ("VA", "EXPR", "AU", "MTL")},
                   "MTL/VA": [0.0], "MTL/EXPR": [0.0], "MTL/AU": [0.0]}
        return {k: [0.0] for k in ("VA", "EXPR", "AU", "MTL")}, metrics
    t.gen_cnt = 1
    t.train_epoch, t.valid = train_epoch, valid
    t.save_result = t.save_weights = lambda *a, **k: None
    t.write_result = lambda *a, **k: None
    t.valid_dataloader = t.train_dataloader = Loader()
    t.train_gen()
    out.update({"gen/script": np.stack([script[k] for k in ("VA", "EXPR", "AU", "MTL")], 1),
                "gen/non_improve_before_epoch": np.array(seen, np.int64),
                "gen/best_epoch": np.int64(t.best_ep), "gen/epochs_run": np.int64(len(seen))})
    return out


def fixture_rows(dataloader_mod, utils, official: Path, scratch: Path) -> dict:
    """The rows the released pipeline trains and validates on, from a tiny Aff-Wild2-like folder:
    extract_audio.audio_crop (10 s audio windows) and merge_image_feature (6 frames at stride 10,
    every one with a face) write the feature files, then dataloader.dataloader reads the label
    files and keeps the rows its filter passes."""
    import shutil
    rng = np.random.default_rng(7)
    if scratch.exists():
        shutil.rmtree(scratch)
    data = scratch / "data"
    videos = {"v1": 420, "v2": 330, "v3_left": 400, "v4": 250}        # frames at 30 fps; v4 < 10 s
    sr, fps = 22050, 30
    ann = {"VA": "VA_Estimation_Challenge", "EXPR": "EXPR_Classification_Challenge",
           "AU": "AU_Detection_Challenge", "MTL": "MTL_Challenge"}
    out = {"video_names": np.array(list(videos)), "n_frames": np.array(list(videos.values()), np.int64)}
    single = scratch / "single"
    for video, n in videos.items():
        face = rng.random(n) > 0.04                         # frames with no face have no feature file
        face[200:207] = False
        out[f"{video}/face"] = face
        (single / video).mkdir(parents=True, exist_ok=True)
        for f in np.flatnonzero(face):
            (single / video / f"{f + 1:05d}.npy").write_bytes(b"")   # 1-based names, as the face crops
    # merge_image_feature only looks at file names; np.load of the merged window is stubbed
    ns = official_functions(official / "extract_audio.py", ["merge_image_feature", "minus_name", "audio_crop"],
                            {"os": os, "time": __import__("time"), "check_dir": utils.check_dir,
                             "np": types.SimpleNamespace(load=lambda p: 0, save=lambda p, x: Path(p).write_bytes(b""),
                                                         array=np.array)})
    merged = data / "features" / "image_t(2)_s(10)"
    merged.mkdir(parents=True)
    ns["merge_image_feature"](str(single), str(merged), time_window=2, stride=10, minus_num=0)   # extract_audio.py:204
    # audio_crop with stand-ins for the video reader, librosa and soundfile: only the frame count
    # and the audio length enter its index arithmetic
    lengths = {}
    for video, n in videos.items():
        base = video.replace("_left", "").replace("_right", "")
        lengths[base] = int(round(n / fps * sr)) + int(rng.integers(0, 50))
        out[f"{video}/audio_samples"] = np.int64(lengths[base])
    frame_counts = {v.replace("_left", "").replace("_right", ""): n for v, n in videos.items()}
    vdir, adir, crop = scratch / "video", scratch / "audio", scratch / "cropped"
    for d in (vdir, adir, crop):
        d.mkdir(exist_ok=True)
    for base in frame_counts:
        (vdir / f"{base}.mp4").write_bytes(b"")

    class Capture:
        def __init__(self, path):
            self.n = frame_counts[Path(path).stem]

        def get(self, what):
            return self.n
    ns["cv2"] = types.SimpleNamespace(VideoCapture=Capture, CAP_PROP_FRAME_COUNT=7)
    ns["librosa"] = types.SimpleNamespace(load=lambda path, sr: (np.zeros(lengths[Path(path).stem], np.float32), sr))
    ns["sf"] = types.SimpleNamespace(write=lambda path, x, samplerate: Path(path).write_bytes(b""))
    ns["print"] = lambda *a, **k: None
    ns["audio_crop"](str(vdir), str(adir), str(crop))
    audio_feat = data / "features" / "audio"
    audio_feat.mkdir(parents=True)
    for base in frame_counts:                       # extract_audio_feature: one .npy per full 10 s chunk
        if (crop / base).is_dir():
            (audio_feat / base).mkdir()
            for wav in (crop / base).glob("*.wav"):
                (audio_feat / base / wav.name.replace(".wav", ".npy")).write_bytes(b"")
    # label files: per task, some videos, with -5 / -1 markers and VA values of exactly -1
    for task in ("VA", "EXPR", "AU"):
        (data / "annotation" / ann[task] / "Train_Set").mkdir(parents=True)
        (data / "annotation" / ann[task] / "Validation_Set").mkdir(parents=True)
    mtl_lines = ["image,valence,arousal,expression," + ",".join(f"AU{i}" for i in range(12))]
    for video, n in videos.items():
        va = rng.uniform(-1, 1, (n, 2)).round(3)
        va[rng.random(n) < 0.05] = -1.0                # a valid extreme that a substring test also drops
        va[50:70] = -5
        expr = rng.integers(0, 8, n)
        expr[rng.random(n) < 0.1] = -1
        au = (rng.random((n, 12)) < 0.3).astype(int)
        au[rng.random(n) < 0.05, rng.integers(0, 12)] = -1
        out[f"{video}/va"], out[f"{video}/expr"], out[f"{video}/au"] = va, expr, au
        (data / "annotation" / ann["VA"] / "Train_Set" / f"{video}.txt").write_text(
            "valence,arousal\n" + "\n".join(f"{a:.3f},{b:.3f}" if a != -5 else "-5,-5" for a, b in va) + "\n")
        (data / "annotation" / ann["EXPR"] / "Train_Set" / f"{video}.txt").write_text(
            "Neutral,...\n" + "\n".join(str(e) for e in expr) + "\n")
        (data / "annotation" / ann["AU"] / "Train_Set" / f"{video}.txt").write_text(
            "AU1,...\n" + "\n".join(",".join(map(str, r)) for r in au) + "\n")
        for t in range(0, n, 3):                        # the MTL file: 1-based image names
            v = "-5,-5" if va[t, 0] == -5 else f"{va[t, 0]:.3f},{va[t, 1]:.3f}"
            mtl_lines.append(f"{video}/{t + 1:05d}.jpg,{v},{expr[t]},{','.join(map(str, au[t]))}")
    (data / "annotation" / ann["MTL"]).mkdir(parents=True)
    (data / "annotation" / ann["MTL"] / "train_set.txt").write_text("\n".join(mtl_lines) + "\n")
    loader = dataloader_mod.dataloader.__new__(dataloader_mod.dataloader)
    loader.batch_size, loader.stride, loader.video_seq_len = 256, 10, 2
    loader.configs, loader.data_path = {"data_path": str(data)}, str(data)
    loader.get_dict()
    loader.get_idx("train", ["MTL", "VA", "EXPR", "AU"])
    for task in TASKS:
        kept = loader.idx_dict[task]
        out[f"kept/{task}/video"] = np.array([x[0] for x in kept])
        out[f"kept/{task}/idx"] = np.array([x[1] for x in kept], np.int64)
    loader.get_batch_size()
    out["batch_sizes"] = np.array([getattr(loader, f"{k.lower()}_batch_size") for k in TASKS], np.int64)
    out["max_iter"] = np.int64(loader.max_iter)
    return out


def fixture_metric(utils, dataloader_mod, tf) -> dict:
    """utils.get_metric batch by batch over sets cut as dataloader.get_batch_size / __getitem__ cut
    them (in order: the shuffle is Python's random module, not reproducible elsewhere), averaged
    as trainer.valid / eval.valid average them."""
    rng = np.random.default_rng(8)
    sizes = {"MTL": 57, "VA": 600, "EXPR": 481, "AU": 700}
    loader = dataloader_mod.dataloader.__new__(dataloader_mod.dataloader)
    loader.batch_size = 256
    loader.idx_dict = {k: list(range(n)) for k, n in sizes.items()}
    loader.get_batch_size()
    b = {"MTL": loader.mtl_batch_size, "VA": loader.va_batch_size, "EXPR": loader.expr_batch_size,
         "AU": loader.au_batch_size}
    out = {"max_iter": np.int64(loader.max_iter), "batch_sizes": np.array([b[k] for k in TASKS], np.int64)}
    for task, n in sizes.items():
        va = np.clip(rng.normal(0, 0.4, (n, 2)), -0.999, 0.999).astype(np.float32)   # rows the loader keeps
        va_p = np.clip(0.6 * va + rng.normal(0, 0.3, (n, 2)), -1, 1).astype(np.float32)
        expr = rng.integers(0, 8, n)
        expr_p = rng.normal(0, 1, (n, 8)).astype(np.float32)
        expr_p[np.arange(n), expr] += rng.normal(1.0, 1.0, n).astype(np.float32)
        au = (rng.random((n, 12)) < rng.uniform(0.02, 0.4, 12)).astype(np.float32)
        au_p = np.clip(0.5 * au + rng.uniform(0, 0.6, (n, 12)), 0, 1).astype(np.float32)
        out.update({f"{task}/va": va, f"{task}/va_pred": va_p, f"{task}/expr": expr, f"{task}/expr_pred": expr_p,
                    f"{task}/au": au, f"{task}/au_pred": au_p})
        scores = []
        for i in range(loader.max_iter):
            s = slice(i * b[task], (i + 1) * b[task])
            onehot = np.eye(8, dtype=np.float32)[expr[s]]
            dom = np.full((b[task], 3), 1 / 3, np.float32)
            pred = (tf.constant(dom), tf.constant(va_p[s]), tf.constant(expr_p[s]), au_p[s])
            if task == "MTL":
                labels = np.empty((b[task], 3), dtype=object)
                for j, (x, y, z) in enumerate(zip(va[s], onehot, au[s])):
                    labels[j, 0], labels[j, 1], labels[j, 2] = x, y, z
                (total, mv, me, ma), _ = utils.get_metric(pred, labels, task, 0.5, get_per_task=True)
                scores.append([total, mv, me, ma])
            else:
                lab = {"VA": va[s], "EXPR": onehot, "AU": au[s]}[task]
                score, _ = utils.get_metric(pred, lab, task, 0.5, get_per_task=True)
                scores.append([float(score)])
        out[f"{task}/batch_scores"] = np.array(scores, np.float64)
        out[f"{task}/mean"] = np.array(scores, np.float64).mean(0)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True, type=Path, help="checkout of EuiseokJeong/2022_ABAW_imlab at bb0513c")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/jeong/fixture_rows"))
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    tf.random.set_seed(0)
    utils, models, dataloader_mod, trainer_mod = import_official(args.official.resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = {"forward": lambda: fixture_forward(models, tf), "losses": lambda: fixture_losses(utils, tf),
            "gradients": lambda: fixture_gradients(utils, models, tf),
            "schedule": lambda: fixture_schedule(trainer_mod, tf),
            "rows": lambda: fixture_rows(dataloader_mod, utils, args.official.resolve(), args.scratch),
            "metric": lambda: fixture_metric(utils, dataloader_mod, tf)}
    import contextlib
    for name, job in jobs.items():
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):   # the official progress lines
            arrays = job()
        tmp = args.out / f".{name}.tmp.npz"
        np.savez_compressed(tmp, **arrays)
        tmp.rename(args.out / f"{name}.npz")
        print(f"{name}.npz: {len(arrays)} arrays, {(args.out / f'{name}.npz').stat().st_size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
