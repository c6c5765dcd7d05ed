"""Jobs: one video (faces, voices, labels, latent truth), or one chunk of still images."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from common.data.affwild2 import AU_NAMES, SPLIT_DIRS, TASK_DIRS
from common.data.synthetic.config import CorpusConfig, job_rng
from common.data.synthetic.faces import encode_jpeg, random_pose, render_faces
from common.data.synthetic.labels import annotate, format_task_file
from common.data.synthetic.latent import (AU_INDEX, PROTOTYPES, affect_trajectory, expression_probs, make_subject,
                                          markov_runs, smooth_process)
from common.data.synthetic.voice import mix_audio, synth_voice


@dataclass
class VideoPlan:
    index: int
    base: str                  # audio/video base name
    names: list                # face-track video names (1, or 2 with _left/_right)
    subjects: list
    split: str
    seconds: float
    tasks: list                # per face track: tuple of annotated tasks


def generate_video(cfg: CorpusConfig, plan: VideoPlan, subjects: dict, out: Path) -> dict:
    """Render one video's faces, voice(s), labels and latent truth; return its summary row."""
    rng = job_rng(cfg, 1, plan.index)
    n = int(round(plan.seconds * cfg.fps))
    n_samples = int(round(plan.seconds * cfg.audio_rate))
    voices, any_speech, rows = [], np.zeros(n, bool), []
    turn = markov_runs(rng, n, 0.5, 3 * cfg.fps)             # who holds the floor (two-person)
    for k, (name, sid, tasks) in enumerate(zip(plan.names, plan.subjects, plan.tasks)):
        s = subjects[sid]
        truth = affect_trajectory(rng, s, n, cfg)
        speaking = markov_runs(rng, n, cfg.speech_fraction, 2.5 * cfg.fps)
        if len(plan.names) == 2:
            speaking &= turn if k == 0 else ~turn
        # Talking opens the lips and drops the jaw: a visible audio-visual link (AU25/26).
        syl = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) * s.syllable_rate / cfg.fps)) * speaking
        truth["au"][:, AU_INDEX["AU25"]] = np.maximum(truth["au"][:, AU_INDEX["AU25"]], 0.8 * syl)
        truth["au"][:, AU_INDEX["AU26"]] = np.maximum(truth["au"][:, AU_INDEX["AU26"]], 0.55 * syl)
        voices.append(synth_voice(rng, s, truth["va"][:, 1], truth["va"][:, 0], speaking,
                                  cfg.audio_rate, n_samples))
        any_speech |= speaking
        labels = annotate(rng, truth, cfg)

        has_face = ~markov_runs(rng, n, cfg.no_face_fraction, 0.5 * cfg.fps)
        pose = random_pose(rng, n, cfg)
        frame_dir = out / "cropped_aligned" / name
        frame_dir.mkdir(parents=True)
        chunk = max(16, 2 ** 21 // (cfg.image_size ** 2 * 3))
        for t0 in range(0, n, chunk):
            t1 = min(n, t0 + chunk)
            frames = render_faces(s, truth["au"][t0:t1], {k_: p[t0:t1] for k_, p in pose.items()},
                                  cfg.image_size, rng)
            for t in range(t0, t1):
                if has_face[t]:
                    (frame_dir / f"{t + 1:05d}.jpg").write_bytes(encode_jpeg(frames[t - t0], cfg.jpeg_quality))
        for task in tasks:
            path = out / "annotations" / TASK_DIRS[task] / SPLIT_DIRS[plan.split] / f"{name}.txt"
            path.write_text(format_task_file(task, labels))
        np.savez_compressed(
            out / "metadata" / "latent" / f"{name}.npz", valence=truth["va"][:, 0], arousal=truth["va"][:, 1],
            expression=truth["expression"].astype(np.int8), au=(truth["au"] > 0.5).astype(np.int8),
            au_intensity=truth["au"].astype(np.float16), speech=speaking, has_face=has_face)
        rows.append({"video": name, "subject": sid, "split": plan.split, "fps": cfg.fps, "n_frames": n,
                     "width": cfg.image_size, "height": cfg.image_size, "audio": f"{plan.base}.wav",
                     "tasks": "+".join(tasks), "face_frames": int(has_face.sum()),
                     "labels": labels, "has_face": has_face, "speech": speaking})

    # One audio track per video; single-person videos get an unrelated second talker (in
    # two-person videos the other person already is one).
    second = None
    if len(plan.names) == 1:
        other = make_subject(rng, "other")
        other_arousal = np.tanh(smooth_process(rng, n, cfg.va_timescale_s, cfg.fps))
        other_talks = markov_runs(rng, n, cfg.second_voice_fraction, 2.0 * cfg.fps)
        second = 10 ** (cfg.second_voice_db / 20) * synth_voice(
            rng, other, other_arousal, np.zeros(n, np.float32), other_talks, cfg.audio_rate, n_samples)
        rows[0]["other_voice"] = other_talks
    audio = mix_audio(rng, np.sum(voices, 0), second, any_speech, cfg, cfg.audio_channels)
    sf.write(out / "videos" / f"{plan.base}.wav", audio, cfg.audio_rate, subtype="PCM_16")
    # Audio-event labels per video frame, for audio-network pre-training (issue: pipeline).
    # In a two-person video the "other voice" of one face track is the other person's speech.
    for k, row in enumerate(rows):
        other = rows[1 - k]["speech"] if len(rows) == 2 else row.pop("other_voice")
        lines = ["frame,speech,other_voice"] + [f"{t + 1},{int(a)},{int(b)}" for t, (a, b) in
                                                 enumerate(zip(row["speech"], other))]
        (out / "metadata" / "audio_events" / f"{row['video']}.csv").write_text("\n".join(lines) + "\n")
    for row in rows:
        del row["speech"]
    return {"rows": rows}


def generate_stills(cfg: CorpusConfig, set_name: str, start: int, count: int, out: Path) -> list:
    """One chunk of a still-image side set: new identities, one random affect state per image."""
    kind = {"affectnet": 2, "expw": 3, "afew_va": 4}[set_name]
    rng = job_rng(cfg, kind, start)
    n_classes = 7          # AffectNet/ExpW basic expressions in ABAW order (no "Other")
    rows = []
    folder = out / "side" / set_name / "images"
    per_subject = 6
    for i0 in range(0, count, per_subject):
        s = make_subject(rng, f"{set_name}-{start + i0}")
        m = min(per_subject, count - i0)
        va = np.clip(rng.normal(0, 0.45, (m, 2)), -1, 1).astype(np.float32)
        expr = np.array([rng.choice(n_classes, p=p) for p in expression_probs(va, n_classes)])
        au = PROTOTYPES[expr] * (rng.random((m, len(AU_NAMES))) < 0.85) * rng.uniform(0.7, 1.0, (m, 1))
        au = np.maximum(au, (rng.random(au.shape) < 0.05) * 0.9).astype(np.float32)
        frames = render_faces(s, au, random_pose(rng, m, cfg, still=True), cfg.image_size, rng)
        for j in range(m):
            name = f"{start + i0 + j + 1:06d}.jpg"
            (folder / name).write_bytes(encode_jpeg(frames[j], cfg.jpeg_quality))
            rows.append((name, int(expr[j]), float(va[j, 0]), float(va[j, 1])))
    return rows


def run_job(job):
    """One worker task: ("video", generate_video's args) or ("stills", generate_stills' args)."""
    kind, args = job
    return kind, (generate_video(*args) if kind == "video" else generate_stills(*args))
