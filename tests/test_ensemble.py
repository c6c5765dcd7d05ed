"""CCC centering and early / late clipping (common/ensemble.py; Zhang Sec. 4.5)."""
import numpy as np
import pytest

from common.ensemble import ccc_centering, centre, merge_predictions
from common.metrics import ccc


def trace(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return np.convolve(rng.standard_normal(n + 29), np.ones(30) / 10, "valid")


def test_identical_predictions_are_unchanged():
    p = trace()
    for fusion in ("weighted", "mean"):
        fused, w = ccc_centering([p, p, p], fusion)
        np.testing.assert_allclose(fused, p, atol=1e-12)
        np.testing.assert_allclose(w, [1 / 3] * 3)


def test_constant_offset_prediction_is_recentred():
    p = trace()
    q, w, agreement = centre(np.stack([p, p, p + 0.5]))
    # every centred trace sits at the same level: the agreement-weighted mean of the means
    np.testing.assert_allclose(q.mean(1), [w @ [p.mean(), p.mean(), p.mean() + 0.5]] * 3)
    np.testing.assert_allclose(q[2], q[0])                       # the offset is gone
    assert agreement[2] < agreement[0] and w[2] < w[0]           # the shifted one agrees less
    # plain mean of centred traces (official code) lies below the plain mean of the raw ones
    fused, _ = ccc_centering([p, p, p + 0.5], "mean")
    assert fused.mean() < np.mean([p, p, p + 0.5]) - 1e-3


def test_weights_favour_the_predictions_that_agree():
    rng = np.random.default_rng(1)
    truth = trace(seed=2)
    good = [truth + 0.05 * rng.standard_normal(truth.size) for _ in range(3)]
    bad = rng.standard_normal(truth.size)
    fused, w = ccc_centering(good + [bad])
    assert w[3] < 0.5 * w[:3].min()
    assert ccc(truth, fused) > ccc(truth, np.mean(good + [bad], axis=0))


def test_weighted_fusion_equals_the_agreement_weighted_average():
    preds = [trace(seed=s) + s * 0.1 for s in range(3)]
    fused, w = ccc_centering(preds, "weighted")
    np.testing.assert_allclose(fused, w @ np.stack(preds), atol=1e-12)


def test_groups_centre_each_video_on_its_own():
    p1, p2 = trace(seed=3), trace(seed=4)
    a = np.concatenate([p1, p2])
    b = np.concatenate([p1 + 0.4, p2])                  # offset only in the first video
    groups = np.repeat([0, 1], [p1.size, p2.size])
    fused, weights = ccc_centering([a, b], "mean", groups=groups)
    np.testing.assert_allclose(fused[p1.size:], p2, atol=1e-12)   # second video untouched
    assert set(weights) == {0, 1}


def test_early_and_late_clipping():
    p = np.array([1.6, 0.2, -0.3, -1.8, 0.9])
    q = p + 0.4
    late = merge_predictions([p, q], clip="late")
    assert late.max() <= 1 and late.min() >= -1
    np.testing.assert_allclose(late, np.clip(ccc_centering([p, q])[0], -1, 1), atol=1e-6)
    early = merge_predictions([p, q], clip="early")
    np.testing.assert_allclose(early, ccc_centering([np.clip(p, -1, 1), np.clip(q, -1, 1)])[0],
                               atol=1e-6)
    assert early.max() <= 1       # weighted: a convex combination of clipped traces
    # the plain mean of centred traces moves to the weighted level of the two agreeing ones,
    # above the clipped peak: EC output can leave the range
    early_mean = merge_predictions([p, p, p - 0.6], clip="early", fusion="mean")
    assert early_mean.max() > 1
    both = merge_predictions([p, q], clip="both")
    assert both.max() <= 1 and not np.allclose(both, late)
    np.testing.assert_allclose(merge_predictions([p, q], clip="none"), ccc_centering([p, q])[0],
                               atol=1e-6)
    with pytest.raises(ValueError, match="clip"):
        merge_predictions([p, q], clip="sometimes")


def test_empty_or_ragged_predictions_get_a_message_naming_them():
    for merge in (ccc_centering, merge_predictions):
        with pytest.raises(ValueError, match="predictions is empty: no predictions to merge"):
            merge([])
        with pytest.raises(ValueError, match=r"predictions differ in length \(predictions\[0\] has "
                                             r"400, predictions\[1\] has 400, predictions\[2\] "
                                             r"has 399 frames\).*same frames"):
            merge([trace(), trace(seed=1), trace()[:-1]])
