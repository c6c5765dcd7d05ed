"""Tests for the losses: the shared ones (common/losses.py) and the papers' own
(papers/vu2021/losses.py: bins, Hinton KD, Eqs. 2, 4-6; papers/jeong2022/losses.py: Eqs. 8-10, 12,
Deng's task weights).

Each loss gets (a) a value worked out by hand on a tiny input (the arithmetic is in the test),
(b) a float64 gradcheck, (c) a masking check (invalid entries change neither the loss nor get
gradient, even when they hold NaN), (d) an all-invalid batch that returns 0 and still
backpropagates; plus the properties the papers rely on.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from common.losses import ccc, ccc_loss, masked_bce_with_logits, masked_cross_entropy
from papers.jeong2022.losses import (TaskPatience, dynamic_task_weight, jeong_au_distillation,
                                     jeong_expr_distillation, jeong_student_loss, jeong_va_distillation)
from papers.vu2021.losses import bin_values, bins_expectation, hinton_kd, va_to_bins, vu_kd_loss, vu_va_loss

LN2, LN3 = math.log(2.0), math.log(3.0)
D = torch.float64


def t64(values, grad=False):
    return torch.tensor(values, dtype=D, requires_grad=grad)


def close(actual, expected, tol=1e-7):
    """Equal up to float64 rounding and the CCC's eps = 1e-8 in the denominator."""
    def as_float(x):
        return float(x.detach()) if torch.is_tensor(x) else float(x)
    return abs(as_float(actual) - as_float(expected)) < tol


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def check_all_invalid(loss_fn, *inputs):
    """The loss of a batch with no valid entry is exactly 0 and backward() gives zero grads."""
    for x in inputs:
        x.grad = None
    loss = loss_fn()
    assert loss.requires_grad, "the zero must stay connected to the graph"
    assert float(loss.detach()) == 0.0
    loss.backward()
    for x in inputs:
        assert x.grad is not None and torch.all(x.grad == 0)


# --------------------------------------------------------------------------- CCC

def test_ccc_two_samples_by_hand_in_all_three_variance_modes():
    # pred (0, 1), target (0, 2): means 0.5 and 1; deviations (-0.5, 0.5) and (-1, 1).
    # sum of products = 0.5 + 0.5 = 1; sums of squares 0.5 and 2; mean gap^2 = 0.25.
    pred, target = t64([0.0, 1.0]), t64([0.0, 2.0])
    # population (n = 2): cov 0.5, var 0.25 and 1 -> 2*0.5 / (0.25 + 1 + 0.25) = 2/3
    assert close(ccc(pred, target), 2 / 3)
    # sample (n - 1 = 1): cov 1, var 0.5 and 2 -> 2 / (0.5 + 2 + 0.25) = 8/11
    assert close(ccc(pred, target, unbiased=True), 8 / 11)
    # Zhang's code: cov 0.5 (mean of products), var 0.5 and 2 -> 1 / 2.75 = 4/11
    assert close(ccc(pred, target, unbiased="variance_only"), 4 / 11)


def test_ccc_of_identical_series():
    x = torch.randn(10, dtype=D, generator=gen())
    assert close(ccc(x, x), 1.0)
    assert close(ccc(x, x, unbiased=True), 1.0)
    assert close(ccc(x, x, unbiased="variance_only"), 9 / 10)   # (n - 1) / n, as Zhang's code
    with pytest.raises(ValueError, match="unbiased"):
        ccc(x, x, unbiased="yes")


def test_ccc_loss_va_by_hand_is_one_minus_mean_of_valence_and_arousal():
    # valence: pred (0, 1) vs target (0, 2) -> CCC 2/3 (previous test).
    # arousal: pred (1, 0) vs target (0, 1): means 0.5, 0.5; cov = (0.5*-0.5 + -0.5*0.5)/2 = -0.25,
    #          var 0.25 each, gap 0 -> CCC = -0.5 / 0.5 = -1.
    # Jeong Eq. 2: 1 - (2/3 - 1)/2 = 7/6.
    pred = t64([[0.0, 1.0], [1.0, 0.0]])
    target = t64([[0.0, 0.0], [2.0, 1.0]])
    assert close(ccc_loss(pred, target), 7 / 6)
    # Liu's (1 - CCC_v) + (1 - CCC_a) is twice that.
    assert close(2 * ccc_loss(pred, target), (1 - 2 / 3) + (1 - (-1)))


def test_ccc_loss_per_sequence_averages_windows():
    # window 1: pred (0, 1) vs (0, 2) -> 1 - 2/3 = 1/3; window 2: (1, 0) vs (0, 1) -> 1 - (-1) = 2.
    # mean over windows = 7/6. Over the pooled 4 frames the CCC would differ:
    # pred (0,1,1,0) vs target (0,2,0,1): means 0.5, 0.75; cov = (0.375 + 0.625 - 0.375 - 0.125)/4
    # = 0.125; var 0.25 and 0.6875; gap 0.0625 -> CCC = 0.25/1.0 = 0.25, loss 0.75.
    pred = t64([[0.0, 1.0], [1.0, 0.0]])
    target = t64([[0.0, 2.0], [0.0, 1.0]])
    assert close(ccc_loss(pred, target, per_sequence=True), 7 / 6)
    assert close(ccc_loss(pred.reshape(-1), target.reshape(-1)), 0.75)
    # A (B, T, D) input gives one CCC per (window, dimension).
    both = ccc_loss(torch.stack([pred, pred.flip(-1)], -1), torch.stack([target, target], -1),
                    per_sequence=True)
    flipped = ccc_loss(pred.flip(-1), target, per_sequence=True)
    assert close(both, (7 / 6 + float(flipped)) / 2)


def test_ccc_loss_flattens_time_when_not_per_sequence():
    pred = torch.randn(3, 5, 2, dtype=D, generator=gen(1))
    target = torch.randn(3, 5, 2, dtype=D, generator=gen(2))
    assert close(ccc_loss(pred, target), ccc_loss(pred.reshape(15, 2), target.reshape(15, 2)))


@pytest.mark.parametrize("unbiased", [False, True, "variance_only"])
@pytest.mark.parametrize("per_sequence", [False, True])
def test_ccc_loss_gradcheck(unbiased, per_sequence):
    pred = torch.randn(3, 6, dtype=D, generator=gen(3), requires_grad=True)
    target = torch.randn(3, 6, dtype=D, generator=gen(4), requires_grad=True)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, :2] = False
    assert gradcheck(lambda p, t: ccc_loss(p, t, mask=mask, per_sequence=per_sequence,
                                           unbiased=unbiased), (pred, target))


def test_ccc_loss_ignores_invalid_frames_per_dimension():
    pred = torch.randn(6, 2, dtype=D, generator=gen(5))
    target = torch.rand(6, 2, dtype=D, generator=gen(6)) * 2 - 1
    target[1, 0] = -5.0            # valence missing in frame 1
    target[4, 1] = -5.0            # arousal missing in frame 4
    garbage = pred.clone()
    garbage[1, 0] = float("nan")
    garbage[4, 1] = 1e6
    garbage.requires_grad_(True)
    loss = ccc_loss(garbage, target)
    # By hand from the definition: each dimension over its own valid frames.
    keep_v, keep_a = [0, 2, 3, 4, 5], [0, 1, 2, 3, 5]
    expected = ((1 - ccc(pred[keep_v, 0], target[keep_v, 0]))
                + (1 - ccc(pred[keep_a, 1], target[keep_a, 1]))) / 2
    assert close(loss, expected)
    loss.backward()
    assert garbage.grad[1, 0] == 0 and garbage.grad[4, 1] == 0
    assert torch.isfinite(garbage.grad).all() and garbage.grad.abs().sum() > 0
    # An explicit per-frame mask drops both dimensions of that frame.
    frame_mask = torch.tensor([True, True, False, True, True, True])
    plain_target = torch.rand(6, 2, dtype=D, generator=gen(7))
    assert close(ccc_loss(pred, plain_target, mask=frame_mask),
                 ccc_loss(pred[frame_mask], plain_target[frame_mask]))


def test_ccc_loss_per_sequence_mask_excludes_padding():
    pred = torch.randn(2, 8, dtype=D, generator=gen(8))
    target = torch.randn(2, 8, dtype=D, generator=gen(9))
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False            # window 2 is zero-padded after 5 frames
    padded_pred = pred.clone()
    padded_pred[1, 5:] = 0.0
    expected = ((1 - ccc(pred[0], target[0])) + (1 - ccc(pred[1, :5], target[1, :5]))) / 2
    assert close(ccc_loss(padded_pred, target, mask=mask, per_sequence=True), expected)
    # A window with no valid frame is left out of the mean instead of counting as loss 1.
    mask[1] = False
    assert close(ccc_loss(pred, target, mask=mask, per_sequence=True), 1 - ccc(pred[0], target[0]))


def test_ccc_loss_all_invalid_returns_connected_zero():
    pred = torch.randn(4, 2, dtype=D, generator=gen(10), requires_grad=True)
    check_all_invalid(lambda: ccc_loss(pred, torch.full((4, 2), -5.0, dtype=D)), pred)
    check_all_invalid(lambda: ccc_loss(pred, torch.zeros(4, 2, dtype=D),
                                       mask=torch.zeros(4, dtype=torch.bool), per_sequence=True),
                      pred)


def test_ccc_shape_errors_name_the_arguments():
    with pytest.raises(ValueError, match=r"pred has shape \(4, 2\) but target has shape \(4,\)"):
        ccc_loss(torch.zeros(4, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="mask has shape"):
        ccc_loss(torch.zeros(4, 2), torch.zeros(4, 2), mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="per_sequence"):
        ccc_loss(torch.zeros(4), torch.zeros(4), per_sequence=True)


# --------------------------------------------------------------------------- cross entropy

def test_masked_cross_entropy_by_hand():
    # row 1: logits (0, 0), class 0 -> -log(1/2) = ln 2
    # row 2: logits (ln 3, 0), class 1 -> softmax = (3/4, 1/4) -> -log(1/4) = 2 ln 2
    # mean = 1.5 ln 2
    logits = t64([[0.0, 0.0], [LN3, 0.0]])
    assert close(masked_cross_entropy(logits, torch.tensor([0, 1])), 1.5 * LN2)


def test_masked_cross_entropy_matches_torch_on_random_input():
    logits = torch.randn(9, 8, dtype=D, generator=gen(11))
    target = torch.randint(0, 8, (9,), generator=gen(12))
    target[[2, 5]] = -1
    assert close(masked_cross_entropy(logits, target),
                 F.cross_entropy(logits, target, ignore_index=-1))


def test_masked_cross_entropy_gradcheck():
    logits = torch.randn(5, 4, dtype=D, generator=gen(13), requires_grad=True)
    target = torch.tensor([0, 3, -1, 2, 1])
    assert gradcheck(lambda x: masked_cross_entropy(x, target), (logits,))


def test_masked_cross_entropy_masking():
    logits = t64([[0.0, 0.0], [LN3, 0.0], [float("nan"), 5.0], [7.0, -7.0]], grad=True)
    target = torch.tensor([0, 1, -1, 0])
    mask = torch.tensor([True, True, True, False])          # row 4 masked, row 3 unlabelled
    loss = masked_cross_entropy(logits, target, mask=mask)
    assert close(loss, 1.5 * LN2)                            # the two valid rows, as by hand
    loss.backward()
    assert torch.all(logits.grad[2:] == 0) and torch.isfinite(logits.grad).all()
    assert logits.grad[:2].abs().sum() > 0


def test_masked_cross_entropy_all_invalid_and_errors():
    logits = torch.randn(3, 4, dtype=D, generator=gen(14), requires_grad=True)
    check_all_invalid(lambda: masked_cross_entropy(logits, torch.full((3,), -1)), logits)
    with pytest.raises(ValueError, match="class 4"):
        masked_cross_entropy(logits, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match=r"logits has shape \(3, 4\) and target has shape \(4,\)"):
        masked_cross_entropy(logits, torch.tensor([0, 1, 2, 3]))


# --------------------------------------------------------------------------- BCE

def test_masked_bce_by_hand():
    # (logit 0, label 1): -log(1/2) = ln 2; (logit ln 3, label 0): sigmoid = 3/4, -log(1/4) = 2 ln 2;
    # (logit 0, soft label 0.3): -(0.3 log 1/2 + 0.7 log 1/2) = ln 2. Mean = 4 ln 2 / 3.
    logits = t64([[0.0, LN3, 0.0]])
    target = t64([[1.0, 0.0, 0.3]])
    assert close(masked_bce_with_logits(logits, target), 4 * LN2 / 3)


def test_masked_bce_gradcheck():
    logits = torch.randn(4, 12, dtype=D, generator=gen(15), requires_grad=True)
    target = (torch.rand(4, 12, dtype=D, generator=gen(16)) > 0.5).to(D)
    target[0, :3] = -1
    assert gradcheck(lambda x: masked_bce_with_logits(x, target), (logits,))


def test_masked_bce_masking_by_ignore_and_by_mask():
    logits = t64([[0.0, LN3, float("nan")], [float("inf"), 2.0, 3.0]], grad=True)
    target = t64([[1.0, 0.0, -1.0], [1.0, 1.0, 0.0]])
    mask = torch.tensor([True, False])                      # the whole second sample is masked
    loss = masked_bce_with_logits(logits, target, mask=mask)
    assert close(loss, 1.5 * LN2)                           # ln 2 and 2 ln 2 from the test above
    loss.backward()
    assert logits.grad[0, 2] == 0 and torch.all(logits.grad[1] == 0)
    assert torch.isfinite(logits.grad).all() and logits.grad[0, :2].abs().sum() > 0


def test_masked_bce_all_invalid():
    logits = torch.randn(2, 12, dtype=D, generator=gen(17), requires_grad=True)
    check_all_invalid(lambda: masked_bce_with_logits(logits, torch.full((2, 12), -1.0, dtype=D)),
                      logits)
    with pytest.raises(ValueError, match="logits has shape"):
        masked_bce_with_logits(logits, torch.zeros(2, 11, dtype=D))


# --------------------------------------------------------------------------- Hinton KD

def test_hinton_kd_two_classes_by_hand():
    # T = 2. teacher (0, 0) -> p = (1/2, 1/2); student (2 ln 3, 0) / 2 -> q = (3/4, 1/4).
    # KL(p || q) = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3).
    student, teacher = t64([[2 * LN3, 0.0]]), t64([[0.0, 0.0]])
    kl = 0.5 * math.log(4 / 3)
    assert close(hinton_kd(student, teacher, 2.0, scale_t2=False), kl)
    assert close(hinton_kd(student, teacher, 2.0), 4 * kl)         # times T^2 = 4


def test_hinton_kd_zero_iff_equal_and_teacher_gets_no_gradient():
    teacher = torch.randn(6, 7, dtype=D, generator=gen(18), requires_grad=True)
    assert close(hinton_kd(teacher.detach().clone(), teacher, 1.5), 0.0, 1e-12)
    student = torch.randn(6, 7, dtype=D, generator=gen(19), requires_grad=True)
    loss = hinton_kd(student, teacher, 1.5)
    assert loss > 0
    loss.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    # Shifting every logit of a row by a constant leaves the softmax, hence the loss, unchanged.
    assert close(hinton_kd(student + 3.0, teacher, 1.5), loss)


def test_hinton_kd_gradcheck():
    student = torch.randn(4, 5, dtype=D, generator=gen(20), requires_grad=True)
    teacher = torch.randn(4, 5, dtype=D, generator=gen(21))
    assert gradcheck(lambda s: hinton_kd(s, teacher, 2.5), (student,))


def test_hinton_kd_masking_and_all_invalid():
    student = torch.cat([t64([[2 * LN3, 0.0]]), t64([[float("nan"), 1.0]])]).requires_grad_(True)
    teacher = t64([[0.0, 0.0], [5.0, -5.0]])
    loss = hinton_kd(student, teacher, 2.0, mask=torch.tensor([True, False]))
    assert close(loss, 4 * 0.5 * math.log(4 / 3))
    loss.backward()
    assert torch.all(student.grad[1] == 0) and torch.isfinite(student.grad).all()
    s = torch.randn(3, 4, dtype=D, generator=gen(22), requires_grad=True)
    check_all_invalid(lambda: hinton_kd(s, torch.zeros(3, 4, dtype=D), 1.5,
                                        mask=torch.zeros(3, dtype=torch.bool)), s)
    with pytest.raises(ValueError, match="student_logits has shape"):
        hinton_kd(s, torch.zeros(3, 5, dtype=D), 1.5)


# --------------------------------------------------------------------------- Vu: bins

def test_va_to_bins_edges_and_markers():
    va = torch.tensor([-1.0, -0.96, 0.0, 0.33, 0.999, 1.0, -5.0, float("nan")])
    # width 0.1: -1 -> bin 0; -0.96 -> 0; 0.0 -> 10; 0.33 -> floor(13.3) = 13; 0.999 -> 19;
    # 1.0 (the right edge) -> last bin 19; the marker and NaN -> -1 (ignored by the CE).
    assert va_to_bins(va).tolist() == [0, 0, 10, 13, 19, 19, -1, -1]
    assert va_to_bins(torch.tensor([-1.0, 1.0]), n_bins=2).tolist() == [0, 1]


def test_bin_values_and_expectation():
    assert torch.allclose(bin_values(4, dtype=D), t64([-0.75, -0.25, 0.25, 0.75]))
    assert torch.allclose(bin_values(3, support="linspace", dtype=D), t64([-1.0, 0.0, 1.0]))
    # Uniform logits: the mean of symmetric values is 0.
    assert close(bins_expectation(torch.zeros(20, dtype=D)), 0.0, 1e-12)
    # logits (ln 3, 0) over 2 bins -> (3/4, 1/4) of centres (-0.5, 0.5) -> -0.375 + 0.125 = -0.25.
    assert close(bins_expectation(t64([LN3, 0.0])), -0.25)
    # An almost one-hot first bin: centre -0.95 vs the code's linspace point -1.
    sharp = torch.full((20,), -100.0, dtype=D)
    sharp[0] = 100.0
    assert close(bins_expectation(sharp), -0.95)
    assert close(bins_expectation(sharp, support="linspace"), -1.0)
    logits = torch.randn(3, 2, 5, dtype=D, generator=gen(23), requires_grad=True)
    assert bins_expectation(logits).shape == (3, 2)
    assert gradcheck(lambda x: bins_expectation(x), (logits,))


def vu_example():
    # B = 2, K = 2 bins on [-1, 1] (edges -1, 0, 1; centres -0.5, 0.5).
    logits = t64([[[LN3, 0.0], [0.0, 0.0]],
                  [[0.0, LN3], [0.0, 0.0]]], grad=True)
    target = t64([[-0.5, 0.5], [0.5, -0.5]])
    return logits, target


def test_vu_va_loss_by_hand():
    # Valence: bins (0, 1); probabilities (3/4, 1/4) and (1/4, 3/4): CE = -log(3/4) each,
    #   mean ln(4/3). Expectations -0.25 and 0.25 vs targets -0.5 and 0.5: means 0;
    #   cov = (0.125 + 0.125)/2 = 0.125; var 0.0625 and 0.25 -> CCC = 0.25/0.3125 = 0.8.
    # Arousal: uniform logits: CE = ln 2; both expectations 0 -> constant -> CCC 0.
    # Eq. 2 with w = 1/B = 1/2: ln(4/3) + 0.2/2 + ln 2 + 1/2; with w = 1 (code): + 0.2 + 1.
    logits, target = vu_example()
    base = math.log(4 / 3) + LN2
    assert close(vu_va_loss(logits, target, ccc_weight="paper"), base + 0.1 + 0.5)
    assert close(vu_va_loss(logits, target, ccc_weight="code"), base + 0.2 + 1.0)
    assert close(vu_va_loss(logits, target, ccc_weight=0.0), base)


def test_vu_paper_and_code_weights_differ_by_one_over_b():
    logits = torch.randn(8, 2, 20, dtype=D, generator=gen(24))
    target = torch.rand(8, 2, dtype=D, generator=gen(25)) * 2 - 1
    ce_only = vu_va_loss(logits, target, ccc_weight=0.0)
    code = vu_va_loss(logits, target, ccc_weight="code")
    paper = vu_va_loss(logits, target, ccc_weight="paper")
    ccc_part = code - ce_only
    assert ccc_part > 0
    assert close(paper - ce_only, ccc_part / 8, 1e-12)      # B = 8


def test_vu_va_loss_gradcheck():
    logits = torch.randn(3, 2, 4, dtype=D, generator=gen(26), requires_grad=True)
    target = torch.rand(3, 2, dtype=D, generator=gen(27)) * 2 - 1
    target[1, 0] = -5.0
    for support in ("centres", "linspace"):
        assert gradcheck(lambda x: vu_va_loss(x, target, ccc_weight="code", support=support),
                         (logits,))


def test_vu_va_loss_masking():
    logits = torch.randn(5, 2, 20, dtype=D, generator=gen(28))
    target = torch.rand(5, 2, dtype=D, generator=gen(29)) * 2 - 1
    target[3, 0] = -5.0                                        # valence missing for sample 3
    base = vu_va_loss(logits, target)
    garbage = logits.clone()
    garbage[3, 0] = float("nan")
    garbage.requires_grad_(True)
    loss = vu_va_loss(garbage, target)
    assert close(loss, base)
    loss.backward()
    assert torch.all(garbage.grad[3, 0] == 0) and garbage.grad[3, 1].abs().sum() > 0
    assert torch.isfinite(garbage.grad).all()
    # A per-sample mask removes both dimensions of that sample: CE over the others only.
    mask = torch.tensor([True, True, True, True, False])
    zero_w = vu_va_loss(logits, target, mask=mask, ccc_weight=0.0)
    expected = (masked_cross_entropy(logits[:4, 0], va_to_bins(target[:4, 0]))
                + masked_cross_entropy(logits[:4, 1], va_to_bins(target[:4, 1])))
    assert close(zero_w, expected)


def test_vu_va_loss_all_invalid_and_shapes():
    logits = torch.randn(3, 2, 20, dtype=D, generator=gen(30), requires_grad=True)
    check_all_invalid(lambda: vu_va_loss(logits, torch.full((3, 2), -5.0, dtype=D)), logits)
    with pytest.raises(ValueError, match=r"va_target has shape \(3,\)"):
        vu_va_loss(logits, torch.zeros(3, dtype=D))
    with pytest.raises(ValueError, match="ccc_weight"):
        vu_va_loss(logits, torch.zeros(3, 2, dtype=D), ccc_weight="both")


def test_vu_kd_loss_eqs_4_to_6_by_hand():
    # Each distilled row below is the 2-class case of test_hinton_kd_two_classes_by_hand:
    # T = 2, teacher uniform, student (2 ln 3, 0): KL * T^2 = 4 * 1/2 ln(4/3) = 2 ln(4/3).
    one = 2 * math.log(4 / 3)
    s_expr, t_expr = t64([[2 * LN3, 0.0]]), t64([[0.0, 0.0]])
    # VA: valence row as above, arousal identical to the teacher (KL 0).
    s_va, t_va = t64([[[2 * LN3, 0.0], [1.0, -1.0]]]), t64([[[0.0, 0.0], [1.0, -1.0]]])
    assert close(vu_kd_loss(s_expr, t_expr, temperature=2.0), one)                    # Eq. 4
    assert close(vu_kd_loss(student_va=s_va, teacher_va=t_va, temperature=2.0), one)  # Eq. 5
    both = vu_kd_loss(s_expr, t_expr, s_va, t_va, temperature=2.0)                    # Eq. 6
    assert close(both, 2 * one)
    # Eq. 5 sums the two dimensions: distilling arousal too doubles the loss.
    s_va2 = t64([[[2 * LN3, 0.0], [2 * LN3, 0.0]]])
    assert close(vu_kd_loss(student_va=s_va2, teacher_va=torch.zeros_like(s_va2),
                            temperature=2.0), 2 * one)


def test_vu_kd_loss_gradcheck_masking_and_errors():
    # Small sizes keep the float64 gradcheck quick (it perturbs every input entry).
    s_expr = torch.randn(4, 3, dtype=D, generator=gen(31), requires_grad=True)
    s_va = torch.randn(4, 2, 4, dtype=D, generator=gen(32), requires_grad=True)
    t_expr = torch.randn(4, 3, dtype=D, generator=gen(33))
    t_va = torch.randn(4, 2, 4, dtype=D, generator=gen(34))
    assert gradcheck(lambda a, b: vu_kd_loss(a, t_expr, b, t_va), (s_expr, s_va))

    mask = torch.tensor([True, False, True, True])
    expected = vu_kd_loss(s_expr[mask], t_expr[mask], s_va[mask], t_va[mask])
    garbage_expr = s_expr.detach().clone()
    garbage_expr[1] = float("nan")
    garbage_expr.requires_grad_(True)
    loss = vu_kd_loss(garbage_expr, t_expr, s_va, t_va, mask=mask)
    assert close(loss, expected)
    loss.backward()
    assert torch.all(garbage_expr.grad[1] == 0) and torch.all(s_va.grad[1] == 0)
    assert torch.isfinite(garbage_expr.grad).all()

    none = torch.zeros(4, dtype=torch.bool)
    check_all_invalid(lambda: vu_kd_loss(s_expr, t_expr, s_va, t_va, mask=none), s_expr, s_va)
    with pytest.raises(ValueError, match="nothing to distil"):
        vu_kd_loss()
    with pytest.raises(ValueError, match="teacher_expr"):
        vu_kd_loss(student_expr=s_expr)
    with pytest.raises(ValueError, match="student_va has shape"):
        vu_kd_loss(student_va=s_va, teacher_va=t_va[:, :, :3])


# --------------------------------------------------------------------------- Jeong distillation

def test_jeong_va_distillation_by_hand_and_teacher_detached():
    # Same numbers as test_ccc_loss_va_by_hand...: 1 - (2/3 + (-1)) / 2 = 7/6 (Eq. 8).
    student = t64([[0.0, 1.0], [1.0, 0.0]], grad=True)
    teacher = t64([[0.0, 0.0], [2.0, 1.0]], grad=True)
    loss = jeong_va_distillation(student, teacher)
    assert close(loss, 7 / 6)
    loss.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    other_teacher = torch.randn(5, 2, dtype=D, generator=gen(44))
    assert gradcheck(lambda s: jeong_va_distillation(s, other_teacher),
                     (torch.randn(5, 2, dtype=D, generator=gen(35), requires_grad=True),))


def test_jeong_va_distillation_masking_and_all_invalid():
    student = torch.randn(5, 2, dtype=D, generator=gen(36))
    teacher = torch.randn(5, 2, dtype=D, generator=gen(37))
    mask = torch.tensor([True, True, False, True, True])
    garbage = student.clone()
    garbage[2] = float("nan")
    garbage.requires_grad_(True)
    loss = jeong_va_distillation(garbage, teacher, mask=mask)
    assert close(loss, jeong_va_distillation(student[mask], teacher[mask]))
    loss.backward()
    assert torch.all(garbage.grad[2] == 0) and torch.isfinite(garbage.grad).all()
    s = torch.randn(3, 2, dtype=D, generator=gen(38), requires_grad=True)
    check_all_invalid(lambda: jeong_va_distillation(s, teacher[:3],
                                                    mask=torch.zeros(3, dtype=torch.bool)), s)
    with pytest.raises(ValueError, match="student_va has shape"):
        jeong_va_distillation(s, teacher)


def test_jeong_expr_distillation_by_hand_teacher_is_the_target():
    # t = 2. Soft labels softmax((0, 0)/2) = (1/2, 1/2); student softmax((2 ln 3, 0)/2) = (3/4, 1/4).
    # CE = -(1/2 log 3/4 + 1/2 log 1/4) = 1/2 ln(4/3) + ln 2 = 1/2 ln(16/3).
    student, teacher = t64([[2 * LN3, 0.0]], grad=True), t64([[0.0, 0.0]], grad=True)
    loss = jeong_expr_distillation(student, teacher, temperature=2.0)
    assert close(loss, 0.5 * math.log(16 / 3))
    # Swapped roles (the literal reading of Eq. 9) would be -(3/4 log 1/2 + 1/4 log 1/2) = ln 2.
    assert not close(loss, LN2, 1e-3)
    # CE = KL + entropy of the soft labels (ln 2 here).
    assert close(loss - hinton_kd(student, teacher, 2.0, scale_t2=False), LN2)
    loss.backward()
    assert teacher.grad is None
    s = torch.randn(4, 8, dtype=D, generator=gen(39), requires_grad=True)
    t = torch.randn(4, 8, dtype=D, generator=gen(40))
    assert gradcheck(lambda x: jeong_expr_distillation(x, t), (s,))      # t = 2.5 by default


def test_jeong_expr_distillation_masking_and_all_invalid():
    student = t64([[2 * LN3, 0.0], [float("nan"), 0.0]], grad=True)
    teacher = t64([[0.0, 0.0], [3.0, 1.0]])
    loss = jeong_expr_distillation(student, teacher, temperature=2.0,
                                   mask=torch.tensor([True, False]))
    assert close(loss, 0.5 * math.log(16 / 3))
    loss.backward()
    assert torch.all(student.grad[1] == 0) and torch.isfinite(student.grad).all()
    s = torch.randn(3, 8, dtype=D, generator=gen(41), requires_grad=True)
    check_all_invalid(lambda: jeong_expr_distillation(s, torch.zeros(3, 8, dtype=D),
                                                      mask=torch.zeros(3, dtype=torch.bool)), s)


def test_jeong_au_distillation_by_hand_masking_all_invalid():
    # entry 1: teacher logit 0 -> soft label 1/2; student ln 3 -> 3/4:
    #   -(1/2 log 3/4 + 1/2 log 1/4) = 1/2 ln(16/3)
    # entry 2: teacher ln 3 -> 3/4; student 0 -> 1/2: -(3/4 + 1/4) log 1/2 = ln 2
    student = t64([[LN3, 0.0]], grad=True)
    teacher = t64([[0.0, LN3]], grad=True)
    loss = jeong_au_distillation(student, teacher)
    assert close(loss, (0.5 * math.log(16 / 3) + LN2) / 2)
    loss.backward()
    assert teacher.grad is None
    s = torch.randn(3, 12, dtype=D, generator=gen(42), requires_grad=True)
    t = torch.randn(3, 12, dtype=D, generator=gen(43))
    assert gradcheck(lambda x: jeong_au_distillation(x, t), (s,))
    garbage = s.detach().clone()
    garbage[0] = float("nan")
    garbage.requires_grad_(True)
    mask = torch.tensor([False, True, True])
    masked = jeong_au_distillation(garbage, t, mask=mask)
    assert close(masked, jeong_au_distillation(s[1:], t[1:]))
    masked.backward()
    assert torch.all(garbage.grad[0] == 0) and torch.isfinite(garbage.grad).all()
    check_all_invalid(lambda: jeong_au_distillation(s, t, mask=torch.zeros(3, dtype=torch.bool)),
                      s)


# --------------------------------------------------------------------------- Jeong Eq. 12

def test_jeong_student_loss_by_hand():
    sup = {"va": t64(0.2, grad=True)}
    dist = {"va": t64(0.3, grad=True), "expr": t64(1.0, grad=True), "au": t64(0.5, grad=True)}
    gamma = {"va": math.exp(0.5), "expr": 1.0, "au": math.exp(1.0), "mtl": 1.0}
    # gamma_va (10 * 0.2 + 0.3) + 0.9 * 1 * 1.0 + 0.9 * e * 0.5
    expected = math.exp(0.5) * 2.3 + 0.9 + 0.45 * math.e
    loss = jeong_student_loss(sup, dist, "va", gamma)
    assert close(loss, expected)
    loss.backward()
    assert close(sup["va"].grad, 10 * math.exp(0.5))           # gamma_i * alpha
    assert close(dist["va"].grad, math.exp(0.5))               # gamma_i
    assert close(dist["au"].grad, 0.9 * math.e)                # beta * gamma_j
    # No ground truth in the batch: the alpha term is dropped.
    no_gt = jeong_student_loss({"va": None}, dist, "va", gamma, alpha=5.0, beta=0.5)
    assert close(no_gt, math.exp(0.5) * 0.3 + 0.5 * 1.0 + 0.5 * math.e * 0.5)
    # The MTL stream: supervision only, no distillation of its own.
    assert close(jeong_student_loss({"mtl": t64(0.7)}, {}, "mtl", gamma), 7.0)


def test_jeong_student_loss_errors():
    with pytest.raises(ValueError, match=r"gamma has no weight for task\(s\) \['au'\]"):
        jeong_student_loss({"va": t64(1.0)}, {"au": t64(1.0)}, "va", {"va": 1.0})
    with pytest.raises(ValueError, match="nothing to combine"):
        jeong_student_loss({}, {}, "va", {"va": 1.0})


# --------------------------------------------------------------------------- Deng task weights

def test_dynamic_task_weight():
    assert dynamic_task_weight(0) == 1.0
    assert close(dynamic_task_weight(2), math.e)
    assert close(dynamic_task_weight(3) / dynamic_task_weight(2), math.exp(0.5))
    with pytest.raises(ValueError):
        dynamic_task_weight(-1)


def test_task_patience_grows_and_resets():
    patience = TaskPatience(mode="max")
    assert patience.weight("va") == 1.0                        # never seen: n = 0
    counts = [patience.update("va", m) for m in (0.5, 0.4, 0.5, 0.3)]
    assert counts == [0, 1, 2, 3]                              # equal to the best is no gain
    assert close(patience.weight("va"), math.exp(1.5))
    assert patience.update("expr", 0.2) == 0                  # tasks are counted separately
    assert patience.weights() == {"va": patience.weight("va"), "expr": 1.0}
    assert patience.update("va", 0.51) == 0                   # a new best resets
    assert patience.weight("va") == 1.0
    assert patience.update("va", float("nan")) == 1           # NaN is not an improvement

    saved = patience.state_dict()
    resumed = TaskPatience()
    resumed.load_state_dict(saved)
    assert resumed.update("va", 0.50) == 2 and resumed.best["va"] == 0.51

    lower = TaskPatience(mode="min")
    assert [lower.update("loss", v) for v in (1.0, 0.9, 0.95)] == [0, 0, 1]
    with pytest.raises(ValueError):
        TaskPatience(mode="up")
