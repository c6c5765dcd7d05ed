"""Negative controls: can the harness say no? `python -m common.controls [--profile P]`.

Three claims of the papers hold on the embedded corpus because its generator builds a link in
(papers/<paper>/claims.csv, kind "built into the data"): the voice follows arousal, valence and
arousal move slowly (common/data/synthetic/latent.py: va_timescale_s), and an expression is held for
seconds (expr_hold_s). For each link this module generates tiny corpora in memory with the
generator's own functions, once intact and once with the link cut, and re-judges every built-in
claim that rests on the link (common.claims.judge_claim, the claim's delta from claims.csv) on a
probe of that corpus. A harness that can say no gives "absent", "inconclusive" (or
"contradicted") on the cut corpus, never "reproduced"; the intact corpus is the positive control
(the same probe sees the link when it is there).

What is re-judged, exactly (per run: one corpus seed; train and validation subjects apart):
  voice follows arousal   arousal CCC of a ridge probe on face + voice features minus the same probe on
                          face features alone (cut: the voice follows an independent arousal trace of
                          the same time scale); audio_helps_arousal_more: that gain minus the valence gain;
                          audio_visual_beats_visual: the mean-CCC gain
  slow VA time scale      mean VA CCC of the face probe's predictions averaged over the last `window`
                          frames (the least a temporal model does) minus the frame-wise predictions
                          (cut: va_timescale_s one frame)
  expression held         EXPR criterion (0.67 F1 + 0.33 accuracy, Vu Sec. 4.1) of the face probe's class
                          scores averaged the same way minus the frame-wise ones (cut: each expression
                          held one frame)
Features: the face downsampled to 8 x 8 grey levels (64); the voice's log energy in 16 bands up
to 4 kHz per video frame, standardised per video and averaged over the last `voice_window` frames
(16). Labels: the generator's latent valence, arousal and expression. Probes are ridge regressions
(one-hot targets for EXPR), so the stage costs the rendering of the tiny corpora and little else.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from common.data import synthetic
from common.files import atomic_write_text
from common.metrics import ccc
from common.claims import judge_claim

ROOT = Path(__file__).resolve().parents[1]
LINKS = {"voice": "voice follows arousal", "timescale": "slow VA time scale", "hold": "expression held for seconds"}
# (paper, claim id or pattern, link, probe effect, direction, margin): the built-in claims each link carries
CLAIMS = [("zhang2021", "mm_vs_um_arousal", "voice", "arousal_gain", ">", 0.0),
          ("zhang2021", "mm_beats_um_test_arousal", "voice", "arousal_gain", ">", 0.0),
          ("jeong2022", "ia_beats_i_mtl", "voice", "arousal_gain", ">", 0.0),
          ("liu2023", "audio_visual_beats_visual", "voice", "mean_gain", ">", 0.0),
          ("liu2023", "audio_helps_arousal_more", "voice", "arousal_minus_valence_gain", ">", 0.0),
          ("liu2023", "hubert_helps_arousal", "voice", "arousal_gain", ">", 0.0),
          ("zhang2021", "window_*_beats_*", "timescale", "temporal_va_gain", ">", 0.0),
          ("vu2021", "gru_vs_cnn_ccc_mean", "timescale", "temporal_va_gain", ">", 0.02),
          ("vu2021", "final_vs_multitask_ccc_mean", "timescale", "temporal_va_gain", ">", 0.0),
          ("vu2021", "gru_vs_cnn_expr_criterion", "hold", "temporal_expr_gain", ">", 0.02),
          ("vu2021", "final_vs_multitask_expr_criterion", "hold", "temporal_expr_gain", ">", 0.0)]


def declared(paper: str, claim_id: str) -> dict:
    """The claims.csv row of `claim_id` in `paper` (its kind must be "built into the data")."""
    with open(ROOT / "papers" / paper / "claims.csv", newline="") as f:
        row = next((r for r in csv.DictReader(f) if r["id"] == claim_id), None)
    if row is None or row["kind"] != "built into the data":
        raise ValueError(f"papers/{paper}/claims.csv: no built-in claim {claim_id!r} (common/controls.py CLAIMS)")
    return row


# ---- a tiny corpus, in memory -------------------------------------------------------------------

def video(cfg, seed: int, index: int, seconds: float, size: int, cut: str | None) -> dict:
    """One subject's video: face features, voice features and latent labels (the generator's own
    functions, as common.data.synthetic.generate_video calls them, without writing files)."""
    rng = np.random.default_rng([seed, index])
    subject = synthetic.make_subject(rng, f"s{index}")
    n = int(round(seconds * cfg.fps))
    truth = synthetic.affect_trajectory(rng, subject, n, cfg)
    speaking = synthetic.markov_runs(rng, n, cfg.speech_fraction, 2.5 * cfg.fps)
    arousal = truth["va"][:, 1]
    if cut == "voice":          # the voice follows another arousal trace of the same time scale (its own
        other = np.random.default_rng([seed, index, 1])      # generator: the face stays the intact one)
        arousal = np.tanh(0.8 * synthetic.smooth_process(other, n, cfg.va_timescale_s, cfg.fps))
    n_samples = int(round(seconds * cfg.audio_rate))
    voice = synthetic.synth_voice(rng, subject, arousal, truth["va"][:, 0], speaking, cfg.audio_rate, n_samples)
    audio = synthetic.mix_audio(rng, voice, None, speaking, cfg, 1)[:, 0]
    faces = synthetic.render_faces(subject, truth["au"], synthetic.random_pose(rng, n, cfg), size, rng)
    return {"face": face_features(faces), "voice": voice_features(audio, n), "va": truth["va"],
            "expression": truth["expression"]}


def face_features(faces: np.ndarray) -> np.ndarray:
    """(n, 64): the grey face block-averaged to 8 x 8."""
    grey = faces.astype(np.float32).mean(-1) / 255
    n, size = grey.shape[:2]
    k = size // 8
    return grey[:, :8 * k, :8 * k].reshape(n, 8, k, 8, k).mean((2, 4)).reshape(n, 64)


def voice_features(audio: np.ndarray, n: int) -> np.ndarray:
    """(n, 16): log energy in 16 equal bands up to 4 kHz of each video frame's stretch of audio."""
    hop = len(audio) // n
    frames = audio[:hop * n].reshape(n, hop)
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(hop), axis=1)) ** 2
    top = spectrum.shape[1] // 2                         # Nyquist is 8 kHz at 16 kHz: keep up to 4 kHz
    bands = spectrum[:, :16 * (top // 16)].reshape(n, 16, -1).sum(-1)
    return np.log(bands + 1e-8)


def with_context(x: np.ndarray, window: int) -> np.ndarray:
    """[x, the mean of x over the last `window` frames] (a causal running mean, as a temporal model sees)."""
    c = np.cumsum(np.vstack([np.zeros((1, x.shape[1])), x]), 0)
    t = np.arange(1, len(x) + 1)
    start = np.maximum(t - window, 0)
    return np.hstack([x, (c[t] - c[start]) / (t - start)[:, None]])


# ---- probes -------------------------------------------------------------------------------------

def ridge(train_x, train_y, test_x, lam: float = 10.0) -> np.ndarray:
    """Closed-form ridge regression on standardised features."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mu) / sd, (test_x - mu) / sd
    a, b = np.hstack([a, np.ones((len(a), 1))]), np.hstack([b, np.ones((len(b), 1))])
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ train_y)
    return b @ w


def expr_criterion(true: np.ndarray, pred: np.ndarray, classes: int) -> float:
    """0.67 macro F1 + 0.33 accuracy (Vu Sec. 4.1, the ABAW2 EXPR criterion)."""
    f1 = []
    for c in range(classes):
        tp = np.sum((pred == c) & (true == c))
        denom = np.sum(pred == c) + np.sum(true == c)
        f1.append(2 * tp / denom if denom else 0.0)
    return 0.67 * float(np.mean(f1)) + 0.33 * float(np.mean(pred == true))


def probe_effects(videos: list[dict], train: int, window: int, voice_window: int) -> dict:
    """Every probe effect of one corpus (the module docstring): ridge probes fitted on the first
    `train` videos, scored on the rest."""
    tr, te = videos[:train], videos[train:]

    def stack(vids, key):
        return np.concatenate([v[key] for v in vids])

    def voice(v):        # per video standardised (the mix is peak-normalised per video), averaged over time
        x = (v["voice"] - v["voice"].mean(0)) / (v["voice"].std(0) + 1e-6)
        return with_context(x, voice_window)[:, x.shape[1]:]

    def smoothed(pred, vids):          # each test video's predictions averaged over the last `window` frames
        out, start = [], 0
        for v in vids:
            n = len(v["va"])
            out.append(with_context(pred[start:start + n], window)[:, pred.shape[1]:])
            start += n
        return np.concatenate(out)
    va_te = stack(te, "va")
    face = ridge(stack(tr, "face"), stack(tr, "va"), stack(te, "face"))
    both = ridge(np.hstack([stack(tr, "face"), np.concatenate([voice(v) for v in tr])]), stack(tr, "va"),
                 np.hstack([stack(te, "face"), np.concatenate([voice(v) for v in te])]))
    (v0, a0), (v1, a1), (vt, at) = ([float(ccc(va_te[:, k], p[:, k])) for k in (0, 1)]
                                    for p in (face, both, smoothed(face, te)))
    classes = len(synthetic.EXPR_NAMES)
    ex_te = stack(te, "expression")
    scores = ridge(stack(tr, "face"), np.eye(classes)[stack(tr, "expression")], stack(te, "face"))
    frame_expr = expr_criterion(ex_te, scores.argmax(1), classes)
    temporal_expr = expr_criterion(ex_te, smoothed(scores, te).argmax(1), classes)
    return {"arousal_gain": a1 - a0, "mean_gain": (v1 + a1 - v0 - a0) / 2,
            "arousal_minus_valence_gain": (a1 - a0) - (v1 - v0), "temporal_va_gain": (vt + at - v0 - a0) / 2,
            "temporal_expr_gain": temporal_expr - frame_expr}


def corpus_config(params, cut: str | None, fps: int):
    """The corpus section of params at `fps`, with the link `cut` cut ('timescale', 'hold'; the voice
    link is cut in `video`)."""
    cfg = synthetic.CorpusConfig.from_params(dict(params["corpus"]))
    cfg = replace(cfg, fps=fps)
    if cut == "timescale":
        cfg = replace(cfg, va_timescale_s=1.0 / fps)
    if cut == "hold":
        cfg = replace(cfg, expr_hold_s=(1.0 / fps, 1.0 / fps))
    return cfg


def run_controls(params) -> dict:
    """Every control of CLAIMS, intact and cut, over params.verdicts.controls.runs corpus seeds."""
    c = params["verdicts"]["controls"]
    effects = {(corpus, link): [] for link in LINKS for corpus in ("intact", "cut")}
    for r in range(c["runs"]):
        seed = params["corpus"]["seed"] + 1000 + r
        intact = [video(corpus_config(params, None, c["fps"]), seed, i, c["seconds"], c["image_size"], None)
                  for i in range(c["subjects"])]
        base = probe_effects(intact, c["train_subjects"], c["window"], c["voice_window"])
        for link in LINKS:
            cut = [video(corpus_config(params, link, c["fps"]), seed, i, c["seconds"], c["image_size"], link)
                   for i in range(c["subjects"])]
            effects["intact", link].append(base)
            effects["cut", link].append(probe_effects(cut, c["train_subjects"], c["window"], c["voice_window"]))
    out = []
    for paper, claim_id, link, what, direction, margin in CLAIMS:
        row = declared(paper, claim_id)
        judged = {corpus: judge_claim([e[what] for e in effects[corpus, link]], None, direction, margin=margin,
                                      delta=float(row["delta"])) for corpus in ("intact", "cut")}
        out.append({"claim": claim_id, "paper": paper, "link": LINKS[link], "probe": what,
                    **{k: judged["cut"][k] for k in ("verdict", "negligible", "effect", "low", "high", "n", "delta")},
                    "intact": {k: judged["intact"][k] for k in ("verdict", "effect", "low", "high")}})
    return {"profile": params["profile"], "settings": dict(c), "claims": out}


def main(argv=None) -> int:
    from common.params import load_params
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None)
    ap.add_argument("--out", default=str(ROOT / "reports" / "controls.json"))
    args = ap.parse_args(argv)
    params = (load_params(ROOT / "params.yaml", profile=args.profile) if args.profile
              else load_params(ROOT / "params.yaml"))
    result = run_controls(params)
    atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    for c in result["claims"]:
        print(f"{c['paper']:>10} {c['claim']:<36} {c['link']:<28} cut: {c['verdict']:<12} {c['effect']:+.3f} "
              f"[{c['low']:+.3f}, {c['high']:+.3f}]   "
              f"intact: {c['intact']['verdict']:<12} {c['intact']['effect']:+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
