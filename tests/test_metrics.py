"""Tests of common/metrics.py against independent computations (numpy formulas, scikit-learn)."""
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from common.bootstrap import bootstrap_ci
from common.metrics import (NoValidFramesError, abaw2_au_criterion, abaw2_expr_criterion, au_metrics, batch_averaged,
                            ccc, expr_metrics, mtl_metrics, va_metrics)
from papers.jeong2022.evaluation import (ABAW3_VALIDATION_FRAMES, jeong_batch_scores, jeong_batch_sizes,
                                         jeong_code_metric, jeong_valid_rows)


# --------------------------------------------------------------------------- reference helpers

def ref_ccc_cov(t, p):
    """CCC written out with np.cov (population covariance)."""
    cov = np.cov(t, p, ddof=0)[0, 1]
    return 2 * cov / (np.var(t) + np.var(p) + (np.mean(t) - np.mean(p)) ** 2)


def ref_ccc_corr(t, p):
    """The same CCC through Pearson's r: 2 r s_t s_p / (s_t^2 + s_p^2 + (m_t - m_p)^2)."""
    r = np.corrcoef(t, p)[0, 1]
    st, sp = np.std(t), np.std(p)
    return 2 * r * st * sp / (st ** 2 + sp ** 2 + (np.mean(t) - np.mean(p)) ** 2)


def assert_same(a: dict, b: dict, tol=1e-12):
    """Two metric dicts with equal keys and values (arrays included)."""
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=tol, rtol=0, err_msg=key)


def make_va(rng, n, invalid_every=0):
    t = rng.uniform(-1, 1, (n, 2))
    p = np.clip(0.6 * t + rng.normal(0.1, 0.4, (n, 2)), -1, 1)
    if invalid_every:
        t[::invalid_every] = -5
    return t, p


def make_expr(rng, n, num_classes=8, prior=None, p_correct=0.6):
    prior = np.full(num_classes, 1 / num_classes) if prior is None else np.asarray(prior)
    t = rng.choice(num_classes, n, p=prior)
    p = np.where(rng.random(n) < p_correct, t, rng.choice(num_classes, n, p=prior))
    return t, p


def make_au(rng, n, k=12):
    t = (rng.random((n, k)) < rng.uniform(0.05, 0.5, k)).astype(float)
    prob = np.clip(0.35 * t + rng.uniform(0, 0.7, (n, k)), 0, 1)
    return t, prob


# --------------------------------------------------------------------------- CCC

@pytest.mark.parametrize("seed", range(5))
def test_ccc_matches_numpy_formulas(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 3000))
    t = rng.normal(rng.normal(), rng.uniform(0.1, 2), n)
    p = 0.7 * t + rng.normal(rng.normal(), rng.uniform(0.1, 2), n)
    assert ccc(t, p) == pytest.approx(ref_ccc_cov(t, p), abs=1e-6)
    assert ccc(t, p) == pytest.approx(ref_ccc_corr(t, p), abs=1e-6)
    assert isinstance(ccc(t, p), float)


def test_ccc_uses_population_variance():
    t = np.array([-0.8, -0.3, 0.0, 0.2, 0.5, 0.9])
    p = 0.8 * t + np.array([0.6, 0.3, 0.5, 0.4, 0.7, 0.5])  # correlated, with a mean offset
    biased = ref_ccc_cov(t, p)
    unbiased = 2 * np.cov(t, p, ddof=1)[0, 1] / (np.var(t, ddof=1) + np.var(p, ddof=1)
                                                + (t.mean() - p.mean()) ** 2)
    assert abs(biased - unbiased) > 1e-3  # the two conventions really differ at this n
    assert ccc(t, p) == pytest.approx(biased, abs=1e-12)


def test_ccc_penalises_bias_and_scale_unlike_pearson():
    t = np.linspace(-1, 1, 101)
    assert ccc(t, t) == pytest.approx(1.0)
    assert ccc(t, t + 0.5) < 0.9
    assert ccc(t, 0.3 * t) < 0.9
    assert ccc(t, -t) == pytest.approx(-1.0)


@pytest.mark.parametrize("const", [0.0, 0.1, -0.37])
def test_ccc_constant_prediction_is_exactly_zero(const):
    t = np.random.default_rng(0).uniform(-1, 1, 1001)
    assert ccc(t, np.full_like(t, const)) == 0.0
    assert ccc(np.full_like(t, const), t) == 0.0


def test_ccc_both_constant():
    assert ccc(np.full(10, 0.3), np.full(10, 0.3)) == 1.0
    assert ccc(np.full(10, 0.3), np.full(10, -0.2)) == 0.0
    assert ccc([0.5], [0.5]) == 1.0


def test_ccc_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(5,\).*\(4,\)"):
        ccc(np.zeros(5), np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        ccc([0.1, np.nan], [0.2, 0.3])
    with pytest.raises(ValueError, match="no frames"):
        ccc([], [])


# --------------------------------------------------------------------------- VA

def test_va_metrics_match_reference_on_valid_frames():
    rng = np.random.default_rng(2)
    t, p = make_va(rng, 4000, invalid_every=7)
    keep = t[:, 0] != -5
    out = va_metrics(t, p)
    assert out["ccc_valence"] == pytest.approx(ref_ccc_cov(t[keep, 0], p[keep, 0]), abs=1e-6)
    assert out["ccc_arousal"] == pytest.approx(ref_ccc_cov(t[keep, 1], p[keep, 1]), abs=1e-6)
    assert out["p_va"] == pytest.approx((out["ccc_valence"] + out["ccc_arousal"]) / 2, abs=1e-12)
    # The -5 markers, if averaged in, would move the result a lot.
    assert abs(out["ccc_valence"] - ref_ccc_cov(t[:, 0], p[:, 0])) > 0.05


def test_va_values_at_invalid_frames_do_not_matter():
    rng = np.random.default_rng(3)
    t, p = make_va(rng, 3000)
    mask = rng.random(3000) < 0.7
    base = va_metrics(t, p, mask)
    t2, p2 = t.copy(), p.copy()
    t2[~mask] = rng.uniform(-1, 1, ((~mask).sum(), 2))
    p2[~mask] = np.nan  # predictions at excluded frames are never looked at
    assert va_metrics(t2, p2, mask) == pytest.approx(base, abs=1e-12)
    assert base["ccc_valence"] == pytest.approx(
        ref_ccc_cov(t[mask, 0], p[mask, 0]), abs=1e-6)


def test_va_per_dimension_mask_and_markers():
    rng = np.random.default_rng(4)
    t, p = make_va(rng, 2000)
    t[:500, 0] = -5  # valence unannotated, arousal annotated on these frames
    out = va_metrics(t, p)
    assert out["ccc_valence"] == pytest.approx(ref_ccc_cov(t[500:, 0], p[500:, 0]), abs=1e-6)
    assert out["ccc_arousal"] == pytest.approx(ref_ccc_cov(t[:, 1], p[:, 1]), abs=1e-6)
    # A mask that wrongly keeps marker frames cannot bring the -5 back in.
    assert va_metrics(t, p, np.ones(2000, bool)) == pytest.approx(out, abs=1e-12)
    # A (N, 2) mask is applied per dimension.
    mask2 = np.ones((2000, 2), bool)
    mask2[1000:, 1] = False
    out2 = va_metrics(t, p, mask2)
    assert out2["ccc_valence"] == pytest.approx(out["ccc_valence"], abs=1e-12)
    assert out2["ccc_arousal"] == pytest.approx(ref_ccc_cov(t[:1000, 1], p[:1000, 1]), abs=1e-6)


def test_va_all_invalid_raises_clear_error():
    t = np.full((50, 2), -5.0)
    with pytest.raises(ValueError, match=r"VA \(valence\): no valid frames"):
        va_metrics(t, np.zeros((50, 2)))
    rng = np.random.default_rng(0)
    t, p = make_va(rng, 50)
    with pytest.raises(NoValidFramesError, match="VA.*no valid frames"):
        va_metrics(t, p, np.zeros(50, bool))


def test_va_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"va_pred has shape \(9, 2\).*va_true .* \(10, 2\)"):
        va_metrics(np.zeros((10, 2)), np.zeros((9, 2)))
    with pytest.raises(ValueError, match=r"va_true has shape \(10, 3\)"):
        va_metrics(np.zeros((10, 3)), np.zeros((10, 3)))
    with pytest.raises(ValueError, match=r"mask has shape \(9,\)"):
        va_metrics(np.zeros((10, 2)), np.zeros((10, 2)), np.ones(9, bool))
    with pytest.raises(ValueError, match="boolean"):
        va_metrics(np.zeros((10, 2)), np.zeros((10, 2)), np.ones(10, int))


# --------------------------------------------------------------------------- EXPR

@pytest.mark.parametrize("zero_division", [0, 1])
def test_expr_metrics_match_sklearn(zero_division):
    rng = np.random.default_rng(5)
    t, p = make_expr(rng, 5000, prior=[.3, .2, .15, .1, .1, .08, .05, .02])
    out = expr_metrics(t, p, zero_division=zero_division)
    per_class = [f1_score(t == c, p == c, zero_division=zero_division) for c in range(8)]
    np.testing.assert_allclose(out["f1_per_class"], per_class, atol=1e-6)
    assert out["f1_macro"] == pytest.approx(
        f1_score(t, p, labels=list(range(8)), average="macro", zero_division=zero_division),
        abs=1e-6)
    assert out["f1_macro"] == pytest.approx(np.mean(per_class), abs=1e-6)
    assert out["accuracy"] == pytest.approx(accuracy_score(t, p), abs=1e-6)
    assert out["p_expr"] == out["f1_macro"]


def test_expr_scores_are_argmaxed():
    rng = np.random.default_rng(6)
    t, _ = make_expr(rng, 1000)
    scores = rng.normal(size=(1000, 8))
    scores[np.arange(1000), t] += rng.normal(1.0, 1.0, 1000)
    out = expr_metrics(t, scores)
    assert_same(out, expr_metrics(t, scores.argmax(axis=1)))
    assert out["f1_macro"] == pytest.approx(
        f1_score(t, scores.argmax(1), average="macro", labels=list(range(8))), abs=1e-6)


def test_expr_class_absent_from_ground_truth():
    rng = np.random.default_rng(7)
    t, p = make_expr(rng, 2000, num_classes=6)  # classes 6, 7 never occur in truth
    p[:10] = 6  # class 6 predicted a few times: F1 = 0 whatever zero_division says
    for zd in (0, 1):
        out = expr_metrics(t, p, zero_division=zd)
        assert out["f1_per_class"][6] == 0.0
        assert out["f1_per_class"][7] == zd  # absent from truth and prediction
        assert out["f1_macro"] == pytest.approx(
            f1_score(t, p, labels=list(range(8)), average="macro", zero_division=zd), abs=1e-6)
    # labels= restricts the average, as in sklearn.
    out = expr_metrics(t, p, labels=range(6))
    assert len(out["f1_per_class"]) == 6
    assert out["f1_macro"] == pytest.approx(
        f1_score(t, p, labels=list(range(6)), average="macro"), abs=1e-6)


def test_expr_masking_and_markers():
    rng = np.random.default_rng(8)
    t, p = make_expr(rng, 3000)
    t_raw = t.copy()
    t_raw[::5] = -1
    keep = t_raw != -1
    out = expr_metrics(t_raw, p)
    assert out["f1_macro"] == pytest.approx(
        f1_score(t[keep], p[keep], labels=list(range(8)), average="macro"), abs=1e-6)
    assert out["accuracy"] == pytest.approx(accuracy_score(t[keep], p[keep]), abs=1e-6)
    # Predictions at marker frames do not matter.
    p2 = p.copy()
    p2[~keep] = (p2[~keep] + 3) % 8
    assert_same(expr_metrics(t_raw, p2), out)
    # An explicit mask excludes frames, and cannot re-admit a marker frame.
    mask = rng.random(3000) < 0.5
    both = mask & keep
    out_m = expr_metrics(t_raw, p, mask)
    assert out_m["accuracy"] == pytest.approx(accuracy_score(t[both], p[both]), abs=1e-6)
    t3 = t_raw.copy()
    t3[~mask & keep] = (t3[~mask & keep] + 1) % 8
    assert_same(expr_metrics(t3, p, mask), out_m)


def test_expr_errors():
    with pytest.raises(ValueError, match="EXPR: no valid frames"):
        expr_metrics(np.full(20, -1), np.zeros(20, int))
    with pytest.raises(ValueError, match="EXPR: no valid frames"):
        expr_metrics(np.zeros(20, int), np.zeros(20, int), np.zeros(20, bool))
    with pytest.raises(ValueError, match=r"expr_pred has shape \(19,\).*\(20,\)"):
        expr_metrics(np.zeros(20, int), np.zeros(19, int))
    with pytest.raises(ValueError, match=r"expr_pred has shape \(20, 7\)"):
        expr_metrics(np.zeros(20, int), np.zeros((20, 7)))
    with pytest.raises(ValueError, match="class 8 outside"):
        expr_metrics(np.full(20, 8), np.zeros(20, int))
    with pytest.raises(ValueError, match="zero_division"):
        expr_metrics(np.zeros(20, int), np.zeros(20, int), zero_division=0.5)


def test_expr_refuses_nan_or_inf_logits_at_scored_frames():
    t = np.array([0, 1, 2, 1, -1])
    logits = np.eye(8)[[0, 1, 2, 1, 3]] * 5.0
    assert expr_metrics(t, logits)["accuracy"] == 1.0
    nan_row = logits.copy()
    nan_row[3] = np.nan                 # argmax would call this row class 0
    with pytest.raises(ValueError, match=r"expr_pred holds NaN or \+inf class scores at frame 3.*"
                                         r"mask those frames out"):
        expr_metrics(t, nan_row)
    one_nan = logits.copy()
    one_nan[1, 6] = np.nan              # argmax would pick class 6 over the logit of 5
    with pytest.raises(ValueError, match="frame 1"):
        expr_metrics(t, one_nan)
    inf = logits.copy()
    inf[2, [0, 2]] = np.inf
    with pytest.raises(ValueError, match="frame 2"):
        expr_metrics(t, inf)
    with pytest.raises(ValueError, match="frame 3"):
        bootstrap_ci(expr_metrics, t, nan_row, groups=np.arange(5), key="f1_macro", n_boot=5)
    with pytest.raises(ValueError, match="batch 0, frame 1"):
        jeong_batch_scores("expr", t[None, :4], one_nan[None, :4])
    # Frames that are not scored may hold anything; -inf (log-probability 0) is a valid score.
    ignored = logits.copy()
    ignored[4] = np.nan                 # truth -1: unannotated
    ignored[0, 5] = -np.inf
    assert expr_metrics(t, ignored)["accuracy"] == 1.0
    assert expr_metrics(t, nan_row, mask=np.arange(5) != 3)["accuracy"] == 1.0


# --------------------------------------------------------------------------- AU

@pytest.mark.parametrize("zero_division", [0, 1])
def test_au_metrics_match_sklearn_per_au(zero_division):
    rng = np.random.default_rng(9)
    t, prob = make_au(rng, 3000)
    t[:, 11] = 0  # one AU never active in the truth
    out = au_metrics(t, prob, zero_division=zero_division)
    pred = prob >= 0.5
    per_au = [f1_score(t[:, k], pred[:, k], zero_division=zero_division) for k in range(12)]
    accs = [accuracy_score(t[:, k], pred[:, k]) for k in range(12)]
    np.testing.assert_allclose(out["f1_per_au"], per_au, atol=1e-6)
    assert out["f1_mean"] == pytest.approx(np.mean(per_au), abs=1e-6)
    assert out["p_au"] == out["f1_mean"]
    assert out["accuracy"] == pytest.approx(np.mean(accs), abs=1e-6)
    # Same valid frames for all AUs: the mean accuracy is ABAW2's accuracy over all elements.
    assert out["accuracy"] == pytest.approx(accuracy_score(t.ravel(), pred.ravel()), abs=1e-6)


def test_au_threshold_and_binary_input():
    rng = np.random.default_rng(10)
    t, prob = make_au(rng, 2000)
    out = au_metrics(t, prob, threshold=0.3)
    assert_same(out, au_metrics(t, (prob >= 0.3).astype(float)))
    assert out["f1_mean"] != pytest.approx(au_metrics(t, prob)["f1_mean"])


def test_au_each_au_scored_on_its_own_valid_frames():
    rng = np.random.default_rng(11)
    t, prob = make_au(rng, 2000)
    t_raw = t.copy()
    t_raw[:300] = -1             # whole frames unannotated
    t_raw[300:700, 2] = -1       # one AU unannotated on more frames
    out = au_metrics(t_raw, prob)
    pred = prob >= 0.5
    for k in range(12):
        keep = t_raw[:, k] != -1
        assert out["f1_per_au"][k] == pytest.approx(f1_score(t[keep, k], pred[keep, k]), abs=1e-6)
    # Changing predictions where the truth is -1 changes nothing.
    prob2 = prob.copy()
    prob2[t_raw == -1] = 1 - prob2[t_raw == -1]
    assert_same(au_metrics(t_raw, prob2), out)
    # A per-frame mask is applied to every AU.
    mask = np.arange(2000) >= 1000
    out_m = au_metrics(t_raw, prob, mask)
    assert out_m["f1_per_au"][0] == pytest.approx(f1_score(t[1000:, 0], pred[1000:, 0]), abs=1e-6)


def test_au_errors():
    t = np.zeros((30, 12))
    t[:, 4] = -1
    with pytest.raises(ValueError, match=r"AU \(AU7\): no valid frames"):
        au_metrics(t, np.zeros((30, 12)))
    with pytest.raises(ValueError, match="AU.*no valid frames"):
        au_metrics(np.zeros((30, 12)), np.zeros((30, 12)), np.zeros(30, bool))
    with pytest.raises(ValueError, match=r"au_pred has shape \(30, 11\).*\(30, 12\)"):
        au_metrics(np.zeros((30, 12)), np.zeros((30, 11)))
    with pytest.raises(ValueError, match="0, 1 or the invalid marker"):
        au_metrics(np.full((30, 12), 2.0), np.zeros((30, 12)))


# --------------------------------------------------------------------------- combined criteria

def test_abaw2_criteria():
    rng = np.random.default_rng(12)
    t, p = make_expr(rng, 3000, num_classes=7)
    expected = (0.67 * f1_score(t, p, labels=list(range(7)), average="macro")
                + 0.33 * accuracy_score(t, p))
    assert abaw2_expr_criterion(t, p) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="class 7 outside"):
        abaw2_expr_criterion(np.full(10, 7), np.zeros(10, int))  # "Other" is not an ABAW2 class

    ta, prob = make_au(rng, 3000)
    pred = prob >= 0.5
    f1s = [f1_score(ta[:, k], pred[:, k]) for k in range(12)]
    accs = [accuracy_score(ta[:, k], pred[:, k]) for k in range(12)]
    assert abaw2_au_criterion(ta, prob) == pytest.approx(
        0.5 * np.mean(f1s) + 0.5 * np.mean(accs), abs=1e-6)


def test_mtl_metrics_sum_the_tasks():
    rng = np.random.default_rng(13)
    va_t, va_p = make_va(rng, 1500, invalid_every=4)
    ex_t, ex_p = make_expr(rng, 1500)
    ex_t[::3] = -1
    au_t, au_p = make_au(rng, 1500)
    au_t[::5] = -1
    out = mtl_metrics(va_t, va_p, ex_t, ex_p, au_t, au_p)
    assert out["p_va"] == pytest.approx(va_metrics(va_t, va_p)["p_va"], abs=1e-12)
    assert out["p_expr"] == pytest.approx(expr_metrics(ex_t, ex_p)["f1_macro"], abs=1e-12)
    assert out["p_au"] == pytest.approx(au_metrics(au_t, au_p)["f1_mean"], abs=1e-12)
    assert out["p_mtl"] == pytest.approx(out["p_va"] + out["p_expr"] + out["p_au"], abs=1e-12)
    with pytest.raises(ValueError, match="EXPR: no valid frames"):
        mtl_metrics(va_t, va_p, np.full(1500, -1), ex_p, au_t, au_p)


# --------------------------------------------------------------------------- batch averaging

def test_batch_averaged_is_the_mean_over_consecutive_batches():
    rng = np.random.default_rng(14)
    t, p = make_va(rng, 1000)
    out = batch_averaged(va_metrics, t, p, batch_size=256)
    parts = [va_metrics(t[s:s + 256], p[s:s + 256]) for s in range(0, 1000, 256)]
    assert len(parts) == 4  # the last, shorter batch (232 frames) counts as one batch
    for key in ("ccc_valence", "ccc_arousal", "p_va"):
        assert out[key] == pytest.approx(np.mean([q[key] for q in parts]), abs=1e-12)
    assert out["p_va"] != pytest.approx(va_metrics(t, p)["p_va"], abs=1e-4)
    # Scalar metrics average to a float.
    assert batch_averaged(ccc, t[:, 0], p[:, 0], batch_size=100) == pytest.approx(
        np.mean([ccc(t[s:s + 100, 0], p[s:s + 100, 0]) for s in range(0, 1000, 100)]))


def test_batch_averaged_skips_batches_without_valid_frames_and_splits_masks():
    rng = np.random.default_rng(15)
    t, p = make_expr(rng, 1024)
    t[:256] = -1
    out = batch_averaged(expr_metrics, t, p, batch_size=256)
    expected = np.mean([expr_metrics(t[s:s + 256], p[s:s + 256])["f1_macro"]
                        for s in (256, 512, 768)])
    assert out["f1_macro"] == pytest.approx(expected, abs=1e-12)
    assert out["f1_per_class"].shape == (8,)
    mask = np.arange(1024) % 2 == 0
    with_mask = batch_averaged(expr_metrics, t, p, mask, batch_size=256)
    assert with_mask["accuracy"] == pytest.approx(np.mean(
        [expr_metrics(t[s:s + 256], p[s:s + 256], mask[s:s + 256])["accuracy"]
         for s in (256, 512, 768)]), abs=1e-12)
    with pytest.raises(ValueError, match="positionally"):
        batch_averaged(expr_metrics, t, p, mask=mask)
    with pytest.raises(ValueError, match="undefined on every batch"):
        batch_averaged(expr_metrics, np.full(600, -1), p[:600])


def segments(rng, n, mean_length, values, prior):
    """Frame-level labels that stay constant over runs of frames, as in continuous videos."""
    lengths = rng.geometric(1 / mean_length, n)
    lengths = lengths[:np.searchsorted(np.cumsum(lengths), n) + 1]
    return np.repeat(rng.choice(values, len(lengths), p=prior), lengths)[:n]


def test_jeong_batch_averaging_with_zero_division_1_inflates_scores():
    # Consecutive frames share their expression, so a batch of 256 consecutive frames holds one
    # or two classes: with zero_division=1 every other class scores F1 = 1 in that batch.
    rng = np.random.default_rng(16)
    prior = [.35, .15, .05, .05, .2, .1, .07, .03]
    t = segments(rng, 20000, 150, np.arange(8), prior)
    # A temporal model's errors come in runs too.
    correct = segments(rng, 20000, 80, [True, False], [0.6, 0.4])
    p = np.where(correct, t, segments(rng, 20000, 80, np.arange(8), prior))
    official = expr_metrics(t, p)["p_expr"]
    jeong = batch_averaged(expr_metrics, t, p, batch_size=256, zero_division=1)["p_expr"]
    batch_zd0 = batch_averaged(expr_metrics, t, p, batch_size=256, zero_division=0)["p_expr"]
    assert jeong > official + 0.05
    assert jeong > batch_zd0 + 0.3   # the zero_division=1 rule is what inflates it
    assert batch_zd0 < official      # batch averaging alone, with zero_division=0, deflates

    # AUs: a rare AU that the model mostly misses scores low over the split, but 1 in every
    # batch where it is absent and not predicted.
    base_rate = np.linspace(0.01, 0.3, 12)
    hit_rate = np.linspace(0.1, 0.8, 12)
    au_t = np.stack([segments(rng, 20000, 60, [0.0, 1.0], [1 - r, r]) for r in base_rate], 1)
    hit = np.stack([segments(rng, 20000, 60, [1, 0], [h, 1 - h]) for h in hit_rate], 1)
    false_alarm = np.stack([segments(rng, 20000, 60, [1, 0], [.02, .98]) for _ in range(12)], 1)
    au_p = np.where(au_t == 1, hit, false_alarm) * 0.6 + 0.2  # probabilities 0.2 or 0.8
    official_au = au_metrics(au_t, au_p)["p_au"]
    jeong_au = batch_averaged(au_metrics, au_t, au_p, batch_size=256, zero_division=1)["p_au"]
    assert jeong_au > official_au + 0.1


# --------------------------------------------------------------------------- Jeong et al.'s code metric
# One test per rule of the authors' evaluation (EuiseokJeong/2022_ABAW_imlab@bb0513c:trainer.py:165-204,
# utils.py:52-104; ledger: evaluation_metric), each against
# numbers worked out by hand.

def test_jeong_batch_sizes_are_proportional_with_the_largest_set_near_256():
    # max_iter = ceil(1000 / 256) = 4; batch = floor(n / 4)
    sizes, max_iter = jeong_batch_sizes({"va": 1000, "expr": 700, "au": 520, "mtl": 90})
    assert max_iter == 4
    assert sizes == {"va": 250, "expr": 175, "au": 130, "mtl": 22}
    # The ABAW3 validation sizes: max_iter = ceil(505,382 / 256) = 1975, MTL batches of 13 frames.
    sizes, max_iter = jeong_batch_sizes(ABAW3_VALIDATION_FRAMES)
    assert max_iter == 1975
    assert sizes == {"va": 179, "expr": 169, "au": 255, "mtl": 13}
    with pytest.raises(ValueError, match="fewer frames than max_iter"):
        jeong_batch_sizes({"va": 10_000, "mtl": 3})


def test_jeong_code_metric_runs_max_iter_batches_and_drops_the_remainder():
    # va 1000 frames, mtl 100: max_iter = 4, mtl batch = 25 -> 4 batches of 25, all 100 frames.
    # va 1000, mtl 90: mtl batch = 22 -> 4 batches (88 frames); 2 frames unscored.
    # va 7800, mtl 100: max_iter = 31, mtl batch 3 -> 100 // 3 = 33 batches possible, the loop runs 31.
    rng = np.random.default_rng(30)
    for n_va, n_mtl, want in ((1000, 100, (25, 4)), (1000, 90, (22, 4)), (7800, 100, (3, 31))):
        truth, pred = _jeong_sets(rng, n_va, n_mtl)
        out = jeong_code_metric(truth, pred, seed=0)
        assert (out["batch_sizes"]["mtl"], out["n_batches"]["mtl"]) == want
        assert out["n_batches"]["va"] == out["max_iter"]
    # The ABAW3 sizes applied to a small set: batches of 13, as many as the set holds.
    out = jeong_code_metric(truth, pred, set_sizes=ABAW3_VALIDATION_FRAMES)
    assert out["batch_sizes"] == {"va": 179, "mtl": 13} and out["n_batches"]["mtl"] == 100 // 13


def _jeong_sets(rng, n_va, n_mtl):
    """A VA set and an MTL set, fully labelled, with noisy predictions."""
    va_t, va_p = make_va(rng, n_va)
    m_va_t, m_va_p = make_va(rng, n_mtl)
    ex_t, ex_p = make_expr(rng, n_mtl)
    au_t, au_p = make_au(rng, n_mtl)
    return ({"va": {"va": va_t}, "mtl": {"va": m_va_t, "expr": ex_t, "au": au_t}},
            {"va": {"va": va_p}, "mtl": {"va": m_va_p, "expr": ex_p, "au": au_p}})


def test_jeong_code_metric_shuffles_each_set_with_the_seed():
    # 8 frames, two runs of 4 frames with one valence each: cut in order, every batch of 4 has a
    # constant truth, so its CCC is 0 by definition; shuffled, the batches mix the two runs.
    t = np.array([[0.5, 0.1]] * 4 + [[-0.5, 0.3]] * 4)
    p = t + np.array([0.1, -0.2, 0.05, 0.0, 0.2, -0.1, 0.0, 0.15])[:, None]
    truth, pred = {"va": {"va": t}}, {"va": {"va": p}}
    consecutive = jeong_code_metric(truth, pred, batch_sizes={"va": 4}, shuffle=False)
    assert consecutive["stl_va"] == 0.0
    seen = set()
    for seed in range(5):
        out = jeong_code_metric(truth, pred, seed=seed, batch_sizes={"va": 4})
        assert out == jeong_code_metric(truth, pred, seed=seed, batch_sizes={"va": 4})   # reproducible
        # the documented permutation: numpy's default_rng seeded with (seed, set position)
        order = np.random.default_rng([seed, 0]).permutation(8).reshape(2, 4)
        want = np.mean([np.mean([ccc(t[b, d], p[b, d]) for d in (0, 1)]) for b in order])
        assert out["stl_va"] == pytest.approx(want, abs=1e-12)
        seen.add(round(out["stl_va"], 9))
    assert len(seen) > 1                        # the seed changes the batches
    assert max(seen) > 0.5                      # mixed batches see the valence contrast


def test_jeong_code_metric_drops_rows_with_any_invalid_label():
    va = np.array([[.1, .2], [.3, -5], [.5, .6], [.7, .8], [.2, .1], [-.3, .4]])
    expr = np.array([1, 2, -1, 3, 0, 4])
    au = np.zeros((6, 12))
    au[3, 7] = -1                               # one missing AU drops the row
    labels = {"va": va, "expr": expr, "au": au}
    assert jeong_valid_rows(labels, ("va", "expr", "au")).tolist() == [True, False, False, False, True, True]
    assert jeong_valid_rows(labels, ("va",)).tolist() == [True, False, True, True, True, True]
    assert jeong_valid_rows(labels, ("au",)).tolist() == [True, True, True, False, True, True]
    # MTL set: rows 0, 4, 5 remain, one batch of 3 (batch_sizes); predictions at dropped rows are ignored.
    pred = {"va": va * 0.5, "expr": np.array([1, 0, 0, 0, 0, 4]), "au": np.zeros((6, 12))}
    wild = {k: v.copy() for k, v in pred.items()}
    wild["va"][[1, 2, 3]] = 99.0
    wild["expr"][[1, 2, 3]] = 7
    wild["au"][[1, 2, 3]] = 1.0
    out = jeong_code_metric({"mtl": labels}, {"mtl": pred}, batch_sizes={"mtl": 3})
    assert out["frames"] == {"mtl": 3} and out["n_batches"] == {"mtl": 1}
    assert out == jeong_code_metric({"mtl": labels}, {"mtl": wild}, batch_sizes={"mtl": 3})
    # kept rows: expr truth [1, 0, 4], pred [1, 0, 4] -> F1 1 for each present class
    assert out["mtl_expr"] == 1.0
    assert out["mtl_au"] == 1.0                 # no AU active in truth or prediction: 12 x zero_division 1
    # VA: pred = truth / 2 on rows 0, 4, 5 -> CCC by hand, population variances
    kept = va[[0, 4, 5]]
    assert out["mtl_va"] == pytest.approx(np.mean([ref_ccc_cov(kept[:, d], kept[:, d] / 2) for d in (0, 1)]))
    with pytest.raises(NoValidFramesError, match="set expr"):
        jeong_code_metric({"expr": {"expr": np.full(4, -1)}}, {"expr": {"expr": np.zeros(4)}})


def test_jeong_expr_f1_averages_only_the_classes_present_in_the_batch():
    # truth [0, 0, 1, 2], pred [0, 1, 1, 1]; present classes {0, 1, 2}:
    # class 0: TP 1, 2 true, 1 predicted -> 2/3; class 1: TP 1, 1 true, 3 predicted -> 1/2;
    # class 2: TP 0 -> 0. labels=None: (2/3 + 1/2 + 0) / 3 = 7/18; the absent classes 3-7 are not scored.
    t, p = np.array([[0, 0, 1, 2]]), np.array([[0, 1, 1, 1]])
    got = jeong_batch_scores("expr", t, p)
    assert got.tolist() == pytest.approx([7 / 18])
    assert got[0] == pytest.approx(f1_score(t[0], p[0], average="macro", zero_division=1))
    # scored over the 8 classes with zero_division=1 the five absent ones would each add 1:
    assert expr_metrics(t[0], p[0], zero_division=1)["p_expr"] == pytest.approx((7 / 6 + 5) / 8)
    # a class only predicted counts (as 0) too: truth [3, 3], pred [3, 5] -> (2/3 + 0) / 2
    assert jeong_batch_scores("expr", np.array([[3, 3]]), np.array([[3, 5]]))[0] == pytest.approx(1 / 3)
    # logits are argmaxed; many batches against scikit-learn
    rng = np.random.default_rng(31)
    t, p = make_expr(rng, 40 * 13)
    t, p = t.reshape(40, 13), p.reshape(40, 13)
    np.testing.assert_allclose(jeong_batch_scores("expr", t, np.eye(8)[p]),
                               [f1_score(a, b, average="macro", zero_division=1) for a, b in zip(t, p)])


def test_jeong_au_f1_scores_an_absent_au_as_1():
    # 4 frames, 3 AUs. AU a: truth [1, 0, 1, 0], pred [1, 1, 0, 0] -> TP 1, 2 true, 2 predicted -> 1/2;
    # AU b: never active in truth or prediction -> zero_division = 1; AU c: one true, never
    # predicted -> 0. Mean (1/2 + 1 + 0) / 3 = 1/2.
    t = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 1]])
    p = np.array([[.9, .1, .2], [.7, .4, .3], [.2, .0, .1], [.1, .3, .4]])
    assert jeong_batch_scores("au", t[None], p[None]).tolist() == pytest.approx([0.5])
    assert 0.5 == pytest.approx(np.mean([f1_score(t[:, k], p[:, k] >= 0.5, zero_division=1) for k in range(3)]))
    rng = np.random.default_rng(32)
    au_t, au_p = make_au(rng, 30 * 8)
    au_t, au_p = au_t.reshape(30, 8, 12), au_p.reshape(30, 8, 12)
    np.testing.assert_allclose(jeong_batch_scores("au", au_t, au_p),
                               [np.mean([f1_score(a[:, k], b[:, k] >= 0.5, zero_division=1) for k in range(12)])
                                for a, b in zip(au_t, au_p)])


def test_jeong_ccc_uses_population_variances():
    # t = [1, 2, 3, 4], p = [2, 2, 3, 5]: means 2.5 and 3; population var 1.25 and 1.5, cov 1.25:
    # CCC = 2.5 / (1.25 + 1.5 + 0.25) = 5/6 (sample variances would give 0.851).
    t = np.array([[[1, 1], [2, 2], [3, 3], [4, 4]]], float)
    p = np.array([[[2, 2], [2, 2], [3, 3], [5, 5]]], float)
    assert jeong_batch_scores("va", t, p).tolist() == pytest.approx([5 / 6])
    # degenerate batches as ccc(): constant truth -> 0; both constant and equal -> 1
    assert jeong_batch_scores("va", np.ones((1, 3, 2)), p[:, :3]).tolist() == [0.0]
    assert jeong_batch_scores("va", np.ones((1, 3, 2)), np.ones((1, 3, 2))).tolist() == [1.0]
    rng = np.random.default_rng(33)
    va_t, va_p = make_va(rng, 20 * 16)
    np.testing.assert_allclose(jeong_batch_scores("va", va_t.reshape(20, 16, 2), va_p.reshape(20, 16, 2)),
                               [va_metrics(a, b)["p_va"]
                                for a, b in zip(va_t.reshape(20, 16, 2), va_p.reshape(20, 16, 2))])


def test_jeong_metric_is_the_plain_mean_over_batches():
    # 10 frames cut in order into batches of 4: batches [0:4] and [4:8] are scored, frames 8-9 not.
    # batch 1: truth = pred = [0, 0, 0, 0] -> 1; batch 2: truth [2, 2, 2, 3], pred [2, 3, 2, 2]
    # -> class 2: 2 TP, 3 true, 3 predicted = 2/3, class 3: 0 -> 1/3. Mean (1 + 1/3) / 2 = 2/3,
    # not the F1 of the 8 frames pooled ((1 + 2/3 + 0) / 3 = 5/9).
    t = np.array([0, 0, 0, 0, 2, 2, 2, 3, 5, 6])
    p = np.array([0, 0, 0, 0, 2, 3, 2, 2, 0, 0])
    out = jeong_code_metric({"expr": {"expr": t}}, {"expr": {"expr": p}}, batch_sizes={"expr": 4}, shuffle=False)
    assert out["n_batches"] == {"expr": 2}
    assert out["stl_expr"] == pytest.approx(2 / 3)
    assert f1_score(t[:8], p[:8], average="macro", zero_division=1) == pytest.approx(5 / 9)
    # P_MTL of the MTL set = mean CCC + EXPR F1 + AU F1, each the mean over the same batches
    rng = np.random.default_rng(34)
    truth, pred = _jeong_sets(rng, 600, 120)
    out = jeong_code_metric(truth, pred, seed=3)
    assert out["mtl"] == pytest.approx(out["mtl_va"] + out["mtl_expr"] + out["mtl_au"])
    order = np.random.default_rng([3, 3]).permutation(120)[:out["n_batches"]["mtl"] * 40].reshape(-1, 40)
    m = truth["mtl"], pred["mtl"]
    per_batch = [va_metrics(m[0]["va"][b], m[1]["va"][b])["p_va"]
                 + f1_score(m[0]["expr"][b], m[1]["expr"][b], average="macro", zero_division=1)
                 + au_metrics(m[0]["au"][b], m[1]["au"][b], zero_division=1)["p_au"] for b in order]
    assert out["batch_sizes"]["mtl"] == 40 and out["mtl"] == pytest.approx(np.mean(per_batch))


def test_jeong_code_metric_input_errors():
    rng = np.random.default_rng(35)
    truth, pred = _jeong_sets(rng, 300, 60)
    with pytest.raises(ValueError, match="same sets"):
        jeong_code_metric(truth, {"va": pred["va"]})
    with pytest.raises(ValueError, match="differ in length"):
        jeong_code_metric({"va": {"va": truth["va"]["va"][:10]}}, {"va": pred["va"]})
    with pytest.raises(ValueError, match="fewer than one batch"):
        jeong_code_metric(truth, pred, batch_sizes={"va": 10, "mtl": 61})


# --------------------------------------------------------------------------- bootstrap

def make_videos(rng, n_videos, frames_per_video=200):
    """VA data whose prediction quality varies between videos (as it does in Aff-Wild2)."""
    groups = np.repeat(np.arange(n_videos), frames_per_video)
    n = len(groups)
    t = rng.uniform(-1, 1, (n, 2))
    noise = rng.uniform(0.1, 1.0, n_videos)[groups, None]
    bias = rng.normal(0, 0.3, (n_videos, 2))[groups]
    p = 0.7 * t + bias + rng.normal(0, 1, (n, 2)) * noise
    return t, p, groups


def test_bootstrap_ci_contains_estimate_and_is_reproducible():
    rng = np.random.default_rng(17)
    t, p, g = make_videos(rng, 40)
    r1 = bootstrap_ci(va_metrics, t, p, groups=g, key="p_va", seed=3)
    r2 = bootstrap_ci(va_metrics, t, p, groups=g, key="p_va", seed=3)
    r3 = bootstrap_ci(va_metrics, t, p, groups=g, key="p_va", seed=4)
    assert r1 == r2
    assert (r1["low"], r1["high"]) != (r3["low"], r3["high"])
    assert r1["value"] == pytest.approx(va_metrics(t, p)["p_va"])
    assert r1["low"] < r1["value"] < r1["high"]
    assert r1["n_boot"] == 1000
    narrow = bootstrap_ci(va_metrics, t, p, groups=g, key="p_va", seed=3, alpha=0.5)
    assert r1["low"] < narrow["low"] < narrow["high"] < r1["high"]


def test_bootstrap_ci_narrows_with_more_videos():
    rng = np.random.default_rng(18)
    t, p, g = make_videos(rng, 200)
    few = g < 10
    wide = bootstrap_ci(va_metrics, t[few], p[few], groups=g[few], key="p_va")
    tight = bootstrap_ci(va_metrics, t, p, groups=g, key="p_va")
    assert tight["high"] - tight["low"] < 0.6 * (wide["high"] - wide["low"])


def test_bootstrap_resamples_whole_videos():
    # Every frame of a video has the same (wrong or right) prediction quality: resampling
    # videos gives a much wider interval than pretending frames are independent.
    rng = np.random.default_rng(19)
    t, p, g = make_videos(rng, 30)
    by_video = bootstrap_ci(va_metrics, t, p, groups=g, key="p_va")
    by_frame = bootstrap_ci(va_metrics, t, p, groups=np.arange(len(g)), key="p_va")
    assert by_video["high"] - by_video["low"] > 2 * (by_frame["high"] - by_frame["low"])


@pytest.mark.parametrize("case", ["ccc", "va", "expr", "au", "mtl", "abaw2_expr", "abaw2_au"])
def test_fast_bootstrap_equals_recomputing_on_concatenated_videos(case):
    """The per-video-sums path must give the same replicates as plain concatenation."""
    rng = np.random.default_rng(20)
    n_videos, per = 15, 40
    g = rng.permutation(np.repeat(np.arange(n_videos) * 7 + 3, per))  # ids unsorted, not 0..V-1
    n = len(g)
    va_t, va_p = make_va(rng, n, invalid_every=6)
    ex_t, ex_p = make_expr(rng, n, prior=[.5, .2, .1, .1, .05, .03, .015, .005])
    ex_t[g == 3] = -1  # one video has no EXPR label: replicates without valid frames occur
    au_t, au_p = make_au(rng, n)
    au_t[:, 11] = (g == 10) & (rng.random(n) < 0.5)  # a rare AU: absent from many replicates
    au_p[:, 11] = 0.9 * au_t[:, 11]
    au_t[::9] = -1
    mask = rng.random(n) < 0.8
    fn, arrays, kw = {
        "ccc": (ccc, (va_t[:, 0], va_p[:, 0]), {}),
        "va": (va_metrics, (va_t, va_p, mask), {"key": "p_va"}),
        "expr": (expr_metrics, (ex_t, ex_p, mask), {"key": "f1_macro", "zero_division": 1}),
        "au": (au_metrics, (au_t, au_p, None), {"key": "p_au", "threshold": 0.4,
                                                "zero_division": 1}),
        "mtl": (mtl_metrics, (va_t, va_p, ex_t, ex_p, au_t, au_p), {"key": "p_mtl"}),
        "abaw2_expr": (abaw2_expr_criterion, (np.where(ex_t == 7, 0, ex_t), ex_p % 7), {}),
        "abaw2_au": (abaw2_au_criterion, (au_t, au_p), {}),
    }[case]
    fast = bootstrap_ci(fn, *arrays, groups=g, n_boot=150, seed=5, **kw)
    plain = bootstrap_ci(lambda *a, **k: fn(*a, **k), *arrays, groups=g, n_boot=150, seed=5, **kw)
    assert fast["n_boot"] == plain["n_boot"]
    assert fast == pytest.approx(plain, abs=1e-9)
    assert fast["low"] < fast["high"]


def test_bootstrap_drops_replicates_without_valid_frames():
    rng = np.random.default_rng(21)
    g = np.repeat(np.arange(8), 50)
    t, p = make_expr(rng, 400)
    t[g >= 2] = -1  # only videos 0 and 1 are labelled: (6/8)^8 = 10 % of replicates draw neither
    r = bootstrap_ci(expr_metrics, t, p, groups=g, key="p_expr", n_boot=2000)
    assert 1700 < r["n_boot"] < 1900
    assert r["low"] <= r["value"] <= r["high"]


def test_bootstrap_input_errors():
    t, p = np.zeros((10, 2)), np.zeros((10, 2))
    with pytest.raises(ValueError, match=r"groups has shape \(9,\)"):
        bootstrap_ci(va_metrics, t, p, groups=np.zeros(9), key="p_va")
    with pytest.raises(ValueError, match="pass key="):
        bootstrap_ci(va_metrics, t, p, groups=np.zeros(10))
    with pytest.raises(ValueError, match="same number of frames"):
        bootstrap_ci(va_metrics, t, p[:9], groups=np.zeros(10), key="p_va")
    with pytest.raises(ValueError, match="positionally"):
        bootstrap_ci(va_metrics, t, p, groups=np.zeros(10), key="p_va", mask=np.ones(10, bool))


def test_helpers_skip_only_undefined_metrics():
    """A metric that fails for another reason must not be silently skipped."""
    def picky(t, p):
        if len(t) != 300:
            raise ValueError("boom")
        return ccc(t, p)
    rng = np.random.default_rng(22)
    t, p = rng.normal(size=300), rng.normal(size=300)
    g = np.repeat([0, 1, 2], [50, 100, 150])  # unequal videos: replicates change length
    with pytest.raises(ValueError, match="boom"):
        bootstrap_ci(picky, t, p, groups=g, n_boot=20)
    with pytest.raises(ValueError, match="boom"):
        batch_averaged(lambda a, b: picky(a, b) if len(a) == 256 else ccc(a, b), t, p,
                       batch_size=256)
