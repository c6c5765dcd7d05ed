"""Subject-independent k-fold splits over the official training set plus the validation set.

Zhang et al. 2021 Sec. 4.3 and Liu, Sun et al. 2023 Sec. 4.5 both make 6 folds the same way:
the training videos are cut into folds - 1 parts and the official validation set is the last
part, so every part is validated on exactly once.

* The training trials are cut into folds - 1 contiguous chunks of about equal trial count; the
  validation set is the last partition, and fold k rolls the partitions by k, so fold 0 is the
  official split and each training chunk is validated on exactly once.
* Trials that share a subject, or a video (the two tracks of a two-person video share one audio
  track), always land in the same chunk, so no fold has a subject in training and validation.

A trial is anything with `.video`, `.subject` and `.split` attributes.
"""
from __future__ import annotations

import numpy as np

from common.data.affwild2 import audio_base


def _subject_groups(trials: list) -> list[list[str]]:
    """Trials linked by a subject or by a shared video, in order of their first (sorted) name."""
    parent = {}

    def find(a):
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a
    for t in trials:
        for key in (("subject", t.subject), ("video", audio_base(t.video))):
            parent[find(key)] = find(("trial", t.video))
    groups = {}
    for t in sorted(trials, key=lambda t: t.video):
        groups.setdefault(find(("trial", t.video)), []).append(t.video)
    return list(groups.values())


def _contiguous_chunks(groups: list[list[str]], n_chunks: int, knob: str) -> list[list[str]]:
    """Cut the ordered groups into n_chunks contiguous runs of about equal trial count."""
    if len(groups) < n_chunks:
        raise ValueError(f"{len(groups)} independent subject groups in the training set cannot make "
                         f"{n_chunks} training chunks; lower {knob}")
    cum = np.concatenate([[0], np.cumsum([len(g) for g in groups])])
    cuts, prev = [0], 0
    for i in range(1, n_chunks):
        target = i * cum[-1] / n_chunks
        candidates = range(prev + 1, len(groups) - (n_chunks - i) + 1)
        prev = min(candidates, key=lambda c: abs(cum[c] - target))
        cuts.append(prev)
    cuts.append(len(groups))
    return [[v for g in groups[a:b] for v in g] for a, b in zip(cuts[:-1], cuts[1:])]


def make_folds(trials: list, n_folds: int = 6, knob: str = "folds") -> list[dict]:
    """[{"train": [video...], "validation": [video...]}] for folds 0..n_folds-1; fold 0 = official.

    knob: the params.yaml key that sets n_folds, named in the errors."""
    if n_folds < 2:
        raise ValueError(f"{knob} must be >= 2 (fold 0 = official split), got {n_folds}")
    train = [t for t in trials if t.split == "train"]
    partitions = _contiguous_chunks(_subject_groups(train), n_folds - 1, knob)
    partitions.append(sorted(t.video for t in trials if t.split == "validation"))
    folds = []
    for k in range(n_folds):
        rolled = partitions[-k:] + partitions[:-k] if k else partitions   # np.roll by k
        folds.append({"train": [v for p in rolled[:-1] for v in p], "validation": list(rolled[-1])})
    return folds
