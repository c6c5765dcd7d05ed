"""Per-video sequences of frame features: windows, z-scoring, the split-level CCC.

Zhang et al. 2021 (trials in windows of 300 frames), Liu, Sun et al. 2023 (segments of 150
frames) and Vu et al. 2021 (GRU sequences of 32 frames) all cut videos of cached per-frame
features into windows, z-score the features with the training videos' statistics and score a
split with one CCC over its frames. An item is anything with `.video`, `.label` ((N, 2)
valence, arousal; -5 where unannotated), `.mask` ((N,) bool, True = annotated) and `.features`
({name: (N, dim) array}).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from common.metrics import ccc

EMOTIONS = ("valence", "arousal")           # the columns of an item's label


def window_starts(n: int, window: int, hop: int) -> list[int]:
    """Starts of `window`-frame windows over n frames: every `hop`, plus one ending at the last
    frame so every frame is covered; [0] when the whole sequence fits in one window."""
    if n <= window:
        return [0]
    starts = list(range(0, n - window + 1, hop))
    if starts[-1] + window < n:
        starts.append(n - window)
    return starts


class Normalizer:
    """Per-dimension z-score of each named feature with the statistics of the given (training) items.

    The mean and the population std are accumulated item by item in float64 (an item's features
    may be a float16 memmap, never loaded whole), then stored as float32; a dimension whose std
    is below 1e-6 is divided by 1 instead.
    """

    def __init__(self, items, names):
        self.mean, self.std = {}, {}
        for name in names:
            n, s, ss = 0, 0.0, 0.0
            for item in items:
                a = np.asarray(item.features[name], dtype=np.float64)
                n, s, ss = n + len(a), s + a.sum(0), ss + (a * a).sum(0)
            mean = s / n
            std = np.sqrt(np.maximum(ss / n - mean ** 2, 0.0))
            self.mean[name] = mean.astype(np.float32)
            self.std[name] = np.where(std > 1e-6, std, 1.0).astype(np.float32)

    def __call__(self, name: str, a: np.ndarray) -> np.ndarray:
        """The z-scored float32 copy of `a`, rows of feature `name`."""
        return (np.asarray(a, dtype=np.float32) - self.mean[name]) / self.std[name]

    def concat(self, item, names) -> np.ndarray:
        """(N, sum of dims): the item's features `names`, each z-scored, side by side."""
        return np.concatenate([self(name, item.features[name]) for name in names], 1)


def split_ccc(items, predictions: Mapping[str, np.ndarray], emotion: str | None = None):
    """ABAW: one CCC over the valid frames of all items of a split, videos concatenated.

    emotion None: predictions[video] is (N, 2) valence, arousal; returns {"valence", "arousal",
        "mean"} (Liu et al.).
    emotion "valence" or "arousal": predictions[video] is that emotion's (N,); returns its CCC
        (Zhang et al., one model per emotion).
    An empty split (the test split of the real release, which keeps its labels back:
    common.data.affwild2.test_labels_released) scores NaN: there is nothing to score.
    """
    if not items:
        nan = float("nan")
        return nan if emotion is not None else {"valence": nan, "arousal": nan, "mean": nan}
    if emotion is not None:
        col = EMOTIONS.index(emotion)
        truth = np.concatenate([t.label[t.mask, col] for t in items])
        pred = np.concatenate([predictions[t.video][t.mask] for t in items])
        return ccc(truth, pred)
    truth = np.concatenate([t.label[t.mask] for t in items])
    pred = np.concatenate([predictions[t.video][t.mask] for t in items])
    scores = {e: ccc(truth[:, i], pred[:, i]) for i, e in enumerate(EMOTIONS)}
    scores["mean"] = (scores["valence"] + scores["arousal"]) / 2
    return scores
