"""The embedded corpus: a synthetic Aff-Wild2 written in the official ABAW layout.

The real Aff-Wild2 needs a signed licence, so it never ships. This generator writes a corpus with
the same structure (cropped-aligned JPEG faces, per-task annotation files, the ABAW3 MTL file,
two-person `_left`/`_right` videos sharing one audio track) and, more importantly, with the causal
links the four papers' claims rest on:

* valence and arousal are slow latent processes (so temporal context helps: Zhang Sec. 1,
  Vu Sec. 3.4, Liu Sec. 3.3);
* expressions are drawn from the current VA state, and 12 AUs follow the expression through FACS
  prototypes plus independent activations (so multi-task learning has shared structure to use:
  Jeong Sec. 3, Vu Sec. 3.1);
* the rendered face moves with the AUs: brows (AU1, AU2, AU4), lids (AU6, AU7), cheeks (AU6),
  nose/upper lip (AU10), lip corners (AU12, AU15), lips (AU23, AU24, AU25) and jaw (AU26), under
  pose, lighting, blur and occlusion;
* the voice's pitch, loudness, syllable rate and spectral tilt follow arousal strongly and
  valence weakly; the subject speaks only part of the time, over background noise and an
  unrelated second voice (the "noisy aural modality" Zhang's leader-follower fusion is built for);
* labels are incomplete as in the real corpus: per-task coverage, unannotated runs (-5 / -1),
  annotator lag and noise, a partially labelled MTL subset, and still-image side sets standing in
  for AffectNet (EXPR + VA), ExpW (EXPR) and AFEW-VA (VA).

Absolute scores on this corpus are not comparable with published ones; the reports say so.
Same seed, same bytes: every job draws from its own generator seeded by (seed, job), so the
output does not depend on the number of worker processes.

The package follows the generator's stages, one module each:
  config.py  the `corpus` section of params.yaml (CorpusConfig), checked; each job's random generator
  latent.py  the slow VA processes, expression episodes, AU intensities, and each subject's looks/voice
  faces.py   the face renderer (render_faces) and per-frame pose and nuisance
  voice.py   the voice synthesiser (synth_voice) and the audio mix
  labels.py  the annotators' traces, the per-task label files and the ABAW3 MTL files
  jobs.py    one video, or one chunk of still images, from latent truth to files
  driver.py  the plan (subjects, splits, videos), the worker pool, the tables, the command line

Every public name stays importable from here (`synthetic.synth_voice`, `synthetic.EXPR_VA`, ...):
the claims.csv files name them so (tests/test_report.py checks that each one resolves).

Run: `python -m common.data.synthetic [--profile smoke] [--out DIR]`.
"""
from common.data.affwild2 import AU_NAMES, EXPR_NAMES, MTL_DIR, MTL_FILES, SPLIT_DIRS, TASK_DIRS
from common.data.synthetic.config import LAYOUTS, CorpusConfig, job_rng
from common.data.synthetic.driver import as_real_release, generate, main, plan_corpus, print_summary, summarise
from common.data.synthetic.faces import encode_jpeg, random_pose, render_faces
from common.data.synthetic.jobs import VideoPlan, generate_stills, generate_video
from common.data.synthetic.labels import annotate, format_task_file, write_mtl
from common.data.synthetic.latent import (AU_INDEX, EXPR_AUS, EXPR_PRIOR, EXPR_VA, EXPR_VA_WIDTH, PROTOTYPES, Subject,
                                          affect_trajectory, expression_probs, make_subject, markov_runs,
                                          smooth_process)
from common.data.synthetic.voice import mix_audio, synth_voice

__all__ = [
    "AU_INDEX", "AU_NAMES", "EXPR_AUS", "EXPR_NAMES", "EXPR_PRIOR", "EXPR_VA", "EXPR_VA_WIDTH", "LAYOUTS", "MTL_DIR",
    "MTL_FILES", "PROTOTYPES", "SPLIT_DIRS", "TASK_DIRS", "CorpusConfig", "Subject", "VideoPlan", "affect_trajectory",
    "annotate", "as_real_release", "encode_jpeg", "expression_probs", "format_task_file", "generate",
    "generate_stills", "generate_video", "job_rng", "main", "make_subject", "markov_runs", "mix_audio",
    "plan_corpus", "print_summary", "random_pose", "render_faces", "smooth_process", "summarise", "synth_voice",
    "write_mtl",
]
