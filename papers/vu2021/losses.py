"""Vu et al. 2021 (ICCVW), Sec. 3.2: every loss of the paper, Eqs. 1-10.

One batch holds N samples of every training set; its outputs come from `train.FORWARD_SETS`.
    supervision  L^(1) = CE (Eq. 1, `common.losses.masked_cross_entropy`); L^(2) = sum over V, A
                 of CE on the bin + w (1 - CCC) of the bins' expectation (Eq. 2, `vu_va_loss`);
                 L^(3) = L^(1) + L^(2) on the EXPR_VA set (Eq. 3)
    distillation H = KL(SF(t, T) || SF(s, T)) per output (Eqs. 4-6, `hinton_kd`, `vu_kd_loss`)
    teacher      F_t = sum of L^(i) over the sets in use (Eq. 7, `teacher_loss`; T in {1, 2} or
                 {1, 2, 3})
    student      G_i = lambda L^(i) + (1 - lambda) H^(i) on each set's own task(s) (Eq. 8), and
                 for the other task j of sets 1 and 2: H^(j) (Eq. 9, no sharing), or, frame by
                 frame, H^(j) where the frame has no label for j and G_j where it has (Eq. 10,
                 `student_loss`).
Sums over the N samples are means here (the same minimiser; the learning rate absorbs N), and
every loss follows the rules of `common.losses` (invalid entries masked with zero gradient, a
graph-connected 0 when nothing is valid, teacher outputs detached).

vu2021.method picks, once per call, between the paper's reading and the released code's
(papers/vu2021/ledger.yaml): the VA bins (`BINS_FLOAT64`), the CCC's variances (`CCC_UNBIASED`)
and the weighting of Eq. 10's labelled and unlabelled rows (`EQ10`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from common.losses import (EXPR_INVALID, VA_INVALID, ccc_loss, distillation_rows, masked_cross_entropy,
                           masked_mean, same_shape, valid_entries, zero_invalid)


# --------------------------------------------------------------------------- VA as bins (Eq. 2)

def va_to_bins(va: torch.Tensor, n_bins: int = 20, low: float = -1.0, high: float = 1.0,
               float64_edges: bool = False) -> torch.Tensor:
    """Bin index of each valence/arousal value: K equal-width bins on [low, high] (Vu Eq. 2).

    Bin k holds [low + k w, low + (k + 1) w), w = (high - low) / K; the right edge `high` goes
    into the last bin, values outside the range are clamped to the first/last bin. The invalid
    marker (-5) and NaN become -1, the ignore index of `masked_cross_entropy`.
    float64_edges=False (method paper): the decimal bins, index floor((y - low) / w) with a 1e-6 bin
        tolerance, so a float32 label on the 0.1 grid (-0.4 is -0.40000001 in float32) falls in the
        bin its decimal value opens.
    float64_edges=True (method released): float64 edges against the float32 label widened to
        float64, as np.digitize(y_float32, np.linspace(-1, 1, K + 1)) (ledger: va_bins): 8 of the 21
        values of the 0.1 grid (-0.8, -0.6, -0.4, -0.3, -0.2, -0.1, 0.7, 0.9) fall one bin lower.
    """
    if float64_edges:
        edges = torch.linspace(low, high, n_bins + 1, dtype=torch.float64, device=va.device)
        # right=True: index i with edges[i-1] <= value < edges[i], like numpy.digitize.
        index = torch.bucketize(va.contiguous().double(), edges, right=True) - 1
    else:
        width = (high - low) / n_bins
        index = torch.floor((va.double() - low) / width + 1e-6).long()
    index = index.clamp(0, n_bins - 1)
    invalid = (va == VA_INVALID) | torch.isnan(va)
    return torch.where(invalid, torch.full_like(index, -1), index)


def bin_values(n_bins: int = 20, low: float = -1.0, high: float = 1.0, support: str = "centres",
               dtype=None, device=None) -> torch.Tensor:
    """The value each bin stands for when a bin distribution is turned back into a number.

    support="centres": the centre of each equal-width bin of `va_to_bins`
        (-0.95, -0.85, ..., 0.95 for 20 bins on [-1, 1]).
    support="linspace": K evenly spaced points from low to high inclusive (-1, ..., 1), what
        the released code (after Deng et al.) uses (ledger: bin_support); its points do not sit at
        the centres of the bins the CE term trains, but they let the expectation reach -1 and 1.
    """
    if support == "centres":
        width = (high - low) / n_bins
        return low + width * (torch.arange(n_bins, dtype=dtype, device=device) + 0.5)
    if support == "linspace":
        return torch.linspace(low, high, n_bins, dtype=dtype, device=device)
    raise ValueError(f"support must be 'centres' or 'linspace', got {support!r}")


def bins_expectation(bin_logits: torch.Tensor, low: float = -1.0, high: float = 1.0,
                     support: str = "centres") -> torch.Tensor:
    """Expected value of the bin values under softmax(bin_logits): Vu's VA prediction.

    bin_logits (..., K) -> (...). E.g. (B, 2, 20) -> (B, 2) valence/arousal.
    """
    values = bin_values(bin_logits.shape[-1], low, high, support,
                        dtype=bin_logits.dtype, device=bin_logits.device)
    return (F.softmax(bin_logits, dim=-1) * values).sum(-1)


def vu_va_loss(bin_logits: torch.Tensor, va_target: torch.Tensor, mask=None,
               ccc_weight="paper", support: str = "centres", unbiased=False,
               low: float = -1.0, high: float = 1.0, float64_edges: bool = False) -> torch.Tensor:
    """Vu Eq. 2: sum over valence, arousal of CE(onehot(bin(y_i)), SF(t_i)) + w (1 - CCC(y_i, E_i)).

    bin_logits (B, 2, K), va_target (B, 2) in [-1, 1] with -5 for a missing label.
    E_i is `bins_expectation` of dimension i; the CE is the mean over valid samples, the CCC is
    taken over the valid samples of the batch.
    ccc_weight: "paper" -> w = 1/B (Eq. 2 as printed; B = bin_logits.shape[0], the batch size,
        counting masked rows too); "code" -> w = 1 (the released code, lambda_ccc = 1; ledger: ccc_weight);
        a number -> that w.
    support, unbiased, float64_edges: see `bin_values`, `ccc` and `va_to_bins` ("linspace", True and
    True are what the released code does (ledger: bin_support, ccc_variance, va_bins)).
    """
    if bin_logits.dim() != 3 or bin_logits.shape[1] != 2:
        raise ValueError(f"bin_logits has shape {tuple(bin_logits.shape)}, expected (B, 2, K)")
    if va_target.shape != bin_logits.shape[:2]:
        raise ValueError(f"va_target has shape {tuple(va_target.shape)} but bin_logits has shape "
                         f"{tuple(bin_logits.shape)}; expected va_target (B, 2)")
    if ccc_weight == "paper":
        weight = 1.0 / bin_logits.shape[0]           # Vu Eq. 2: the 1/B in front of 1 - CCC
    elif ccc_weight == "code":
        weight = 1.0
    elif isinstance(ccc_weight, (int, float)) and not isinstance(ccc_weight, bool):
        weight = float(ccc_weight)
    else:
        raise ValueError(f"ccc_weight must be 'paper', 'code' or a number, got {ccc_weight!r}")

    valid = valid_entries(va_target, mask, VA_INVALID, "va_target")
    # Both terms read the logits: clear the invalid rows once, before either uses them.
    bin_logits = zero_invalid(bin_logits, valid.unsqueeze(-1))
    n_bins = bin_logits.shape[-1]
    bins = va_to_bins(zero_invalid(va_target, valid), n_bins, low, high, float64_edges)
    bins = torch.where(valid, bins, torch.full_like(bins, -1))
    expectation = bins_expectation(bin_logits, low, high, support)

    total = bin_logits.new_zeros(())
    for dim in range(2):                             # Vu Eq. 2: sum over i = valence, arousal
        classification = masked_cross_entropy(bin_logits[:, dim], bins[:, dim], ignore=-1)
        regression = ccc_loss(expectation[:, dim], va_target[:, dim], mask=valid[:, dim],
                              unbiased=unbiased)
        total = total + classification + weight * regression            # Vu Eq. 2
    return total


# --------------------------------------------------------------------------- distillation (Eqs. 4-6)

def hinton_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
              scale_t2: bool = True, mask=None) -> torch.Tensor:
    """Hinton et al.'s distillation: KL(softmax(t / T) || softmax(s / T)), mean over rows.

    KL(p, q) = sum_i p_i log(p_i / q_i) with p the teacher, q the student (Vu's definition in
    Sec. 3.2.2). scale_t2 multiplies by T^2, as Hinton et al. recommend so that the gradient
    size does not shrink as 1/T^2; the released code does it (ledger: kd_temperature), the paper
    does not say so.
    logits (..., C): one distribution per row; mask: optional, one flag per row.
    """
    student, teacher, valid = distillation_rows(student_logits, teacher_logits, temperature, mask)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)   # Vu Sec. 3.2.2 KL
    loss = masked_mean(kl, valid)
    return loss * temperature ** 2 if scale_t2 else loss


def vu_kd_loss(student_expr: torch.Tensor | None = None, teacher_expr: torch.Tensor | None = None,
               student_va: torch.Tensor | None = None, teacher_va: torch.Tensor | None = None,
               temperature: float = 1.5, scale_t2: bool = True, mask=None) -> torch.Tensor:
    """Vu's distillation losses H (Eqs. 4-6): KL at temperature T, teacher || student.

    EXPR only (student_expr, teacher_expr: (B, C) logits): Eq. 4.
    VA only (student_va, teacher_va: (B, 2, K) bin logits): Eq. 5, the sum of one KL per
        dimension (valence, arousal), each a mean over the batch.
    Both: Eq. 6 = Eq. 4 + Eq. 5.
    temperature: the paper gives no value; the released code uses T = 1.5 (ledger: kd_temperature)
    and multiplies by T^2 (scale_t2). mask: optional (B,), the samples that are distilled.
    """
    if (student_expr is None) != (teacher_expr is None):
        raise ValueError("give both student_expr and teacher_expr, or neither")
    if (student_va is None) != (teacher_va is None):
        raise ValueError("give both student_va and teacher_va, or neither")
    if student_expr is None and student_va is None:
        raise ValueError("nothing to distil: give the EXPR logits, the VA bin logits, or both")
    losses = []
    if student_expr is not None:
        losses.append(hinton_kd(student_expr, teacher_expr, temperature, scale_t2, mask))  # Eq. 4
    if student_va is not None:
        same_shape("student_va", student_va, "teacher_va", teacher_va)
        if student_va.dim() != 3 or student_va.shape[1] != 2:
            raise ValueError(f"student_va has shape {tuple(student_va.shape)}, expected (B, 2, K)")
        for dim in range(2):                                   # Eq. 5: sum over valence, arousal
            losses.append(hinton_kd(student_va[:, dim], teacher_va[:, dim], temperature,
                                    scale_t2, mask))
    return sum(losses)                                                  # Eq. 6 when both


# --------------------------------------------------------------- teacher and student (Eqs. 7-10)

PRIMARY = {"expr": ("expr",), "va": ("va",), "both": ("expr", "va")}     # each set's own task(s)
SECONDARY = {"expr": ("va",), "va": ("expr",), "both": ()}               # the task it lacks


def _flat(expr_logits, va_logits, expr, va):
    """(..., 7), (..., 2, K), (...), (..., 2) -> rows: a GRU's frames become samples."""
    k = va_logits.shape[-1]
    return (expr_logits.reshape(-1, expr_logits.shape[-1]), va_logits.reshape(-1, 2, k),
            expr.reshape(-1), va.reshape(-1, 2))


# method -> the CCC of Eq. 2 with n - 1 variances (torch.std, ledger: ccc_variance)
CCC_UNBIASED = {"paper": False, "released": True}
# method -> float64 bin edges (np.digitize, ledger: va_bins)
BINS_FLOAT64 = {"paper": False, "released": True}


def supervision(task: str, expr_logits, va_logits, expr, va, vp: dict) -> torch.Tensor:
    """L^(1) (Eq. 1) or L^(2) (Eq. 2); rows without a label for `task` are left out."""
    if task == "expr":
        return masked_cross_entropy(expr_logits, expr, ignore=EXPR_INVALID)          # Eq. 1
    method = vp["method"]
    return vu_va_loss(va_logits, va, ccc_weight=vp["ccc_weight"], support=vp["bin_support"],
                      unbiased=CCC_UNBIASED[method], float64_edges=BINS_FLOAT64[method])  # Eq. 2


def distillation(task: str, s_expr, s_va, t_expr, t_va, vp: dict, mask=None) -> torch.Tensor:
    """H^(1) (Eq. 4) or H^(2) (Eq. 5) at temperature T."""
    T = vp["temperature"]
    if task == "expr":
        return vu_kd_loss(s_expr, t_expr, temperature=T, mask=mask)                   # Eq. 4
    return vu_kd_loss(student_va=s_va, teacher_va=t_va, temperature=T, mask=mask)      # Eq. 5


def teacher_loss(outputs: dict, batch: dict, vp: dict) -> torch.Tensor:
    """Eq. 7: the sum over the training sets of their supervision losses (Eq. 3 = both on set 3)."""
    total = 0.0
    for name, (expr_logits, va_logits) in outputs.items():
        e, v, expr, va = _flat(expr_logits, va_logits, batch[name]["expr"], batch[name]["va"])
        for task in PRIMARY[name]:                       # Eq. 3 on the EXPR_VA set: both tasks
            total = total + supervision(task, e, v, expr, va, vp)                  # Eq. 7
    return total


def eq10_by_share(na: torch.Tensor, g, share: torch.Tensor) -> torch.Tensor:
    """Eq. 10's secondary term, method paper: the sum over the N rows of H^(j) (NA rows) or G_j
    (labelled rows), as a mean over rows: each part weighted by its share of the rows."""
    return (1 - share) * na + (share * g if g is not None else 0.0)


def eq10_halves(na: torch.Tensor, g, share: torch.Tensor) -> torch.Tensor:
    """Eq. 10's secondary term, method released: the mean of the NA part and the labelled part
    whichever their shares (half each when the batch holds both; ledger: eq10_halves)."""
    parts = [p for p, present in ((na, bool(share < 1)), (g, g is not None)) if present]
    return sum(parts) / len(parts)


EQ10 = {"paper": eq10_by_share, "released": eq10_halves}


def student_loss(outputs: dict, teacher_outputs: dict, batch: dict, vp: dict, sharing: bool) -> torch.Tensor:
    """Eq. 9 (sharing=False) or Eq. 10 (sharing=True)."""
    lam = vp["lam"]
    eq10 = EQ10[vp["method"]]
    total = 0.0
    for name, (s_e, s_v) in outputs.items():
        t_e, t_v = teacher_outputs[name]
        s_e, s_v, expr, va = _flat(s_e, s_v, batch[name]["expr"], batch[name]["va"])
        t_e, t_v = t_e.reshape(s_e.shape), t_v.reshape(s_v.shape)
        for task in PRIMARY[name]:                                            # Eq. 8: G_i
            total = total + lam * supervision(task, s_e, s_v, expr, va, vp) \
                + (1 - lam) * distillation(task, s_e, s_v, t_e, t_v, vp)
        for task in SECONDARY[name]:
            if not sharing:                                                   # Eq. 9: H^(j)
                total = total + distillation(task, s_e, s_v, t_e, t_v, vp)
                continue
            # Eq. 10, frame by frame: H^(j) if y^(j) is NA, G_j otherwise (the CCC term of G_j is
            # a statistic over the labelled rows); EQ10 weighs the two parts.
            labelled = (expr != EXPR_INVALID) if task == "expr" else (va[:, 0] != VA_INVALID)
            share = labelled.float().mean()
            na = distillation(task, s_e, s_v, t_e, t_v, vp, mask=~labelled)
            g = lam * supervision(task, s_e, s_v, expr, va, vp) \
                + (1 - lam) * distillation(task, s_e, s_v, t_e, t_v, vp, mask=labelled) \
                if bool(labelled.any()) else None
            total = total + eq10(na, g, share)                                     # Eq. 10
    return total
