"""Distillation losses: pure functions of tensors.

Reductions are chosen so the loss scale does not depend on how many tokens a spec keeps: the
hidden-state MSE is a mean over the *kept* elements (masked positions excluded), summed over
layer pairs. Note the minimum-knowledge study's code takes a plain mean including dropped
elements, which shrinks the loss as fewer tokens are kept (Liu et al. 2021, released code).

Data-parallel training (``world_size`` > 1): every mean is a sum over this rank's part of the batch
divided by the element count over *all* ranks (times the world size, because DDP averages the
ranks' gradients). The ranks' mean loss and gradient are then exactly those of the whole global
batch on one process, however unevenly the kept tokens fall on the ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _mean(total: torch.Tensor, count: torch.Tensor, world_size: int = 1) -> torch.Tensor:
    """``total / count`` (count at least 1); with ``world_size`` > 1 data-parallel ranks (a process
    group initialized): ``total · W / Σ_ranks count``, one all-reduce of the count (a float32
    copy, through ``distributed.all_reduce_sum``: it runs on the group's device and the sum comes
    back on ``count``'s). ``total``, ``count``: scalars on one device; returns a scalar there."""
    if world_size <= 1:
        return total / count.clamp(min=1)
    from hsk_cache import distributed

    count = distributed.all_reduce_sum(count.detach().clone().float())
    return total * world_size / count.clamp(min=1)


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, world_size: int = 1) -> torch.Tensor:
    """Masked mean squared error between student and teacher hidden states.

    L_hidn = Σ_{mask} (h_S W_h − h_T)² / |mask|      (TinyBERT, Jiao et al. 2020, Eq. 7, restricted
    to the kept elements; Liu et al. 2021 §4.3 compare dropped elements to zero targets instead,
    which is ``mask`` = all dimensions of the kept tokens with zeros in ``teacher``)

    Args:
        student: [B, K, D] float, already projected to the teacher width D (h_S W_h).
        teacher: [B, K, D] float. mask: [B, K] bool (kept tokens, every dimension) or
            [B, K, D] bool (kept elements).
    Returns: scalar float32; 0 when nothing is kept.
    """
    weight = (mask[:, :, None] if mask.dim() == 2 else mask).expand_as(student).float()
    squared = (student.float() - teacher.float()).pow(2) * weight
    return _mean(squared.sum(), weight.sum(), world_size)


def hidden_cosine(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, world_size: int = 1
) -> torch.Tensor:
    """Masked mean cosine distance between student and teacher hidden states, per kept token.

    L_cos = Σ_{kept tokens} (1 − cos(h_S W_h, h_T)) / |kept|     (DistilBERT, Sanh et al. 2019 §3:
    the cosine embedding loss aligning the directions of student and teacher hidden states)

    Args:
        student: [B, K, D] float, already projected to the teacher width D.
        teacher: [B, K, D] float. mask: [B, K] bool (kept tokens); a [B, K, D] element mask is
            reduced to its tokens (any kept element), the dropped dimensions count as zeros.
    Returns: scalar float32; 0 when nothing is kept.
    """
    tokens = (mask.any(-1) if mask.dim() == 3 else mask).float()
    if mask.dim() == 3:
        student, teacher = student * mask, teacher * mask
    cosine = F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-8)
    return _mean(((1 - cosine) * tokens).sum(), tokens.sum(), world_size)


def distribution_kl(
    student_probs: torch.Tensor, teacher_probs: torch.Tensor, row_valid: torch.Tensor, world_size: int = 1
) -> torch.Tensor:
    """KL(teacher ‖ student) of attention-like rows, averaged over heads and valid rows.

    L = mean_{b,h,q valid} Σ_t A_T[t] (log A_T[t] − log A_S[t])
    (MiniLM, Wang et al. 2020, Eq. 3 for attention and Eq. 5 for value relation; 0·log 0 = 0,
    student probabilities clamped at 1e-12.)

    Args: student_probs, teacher_probs: [B, H, K, T] float, rows summing to 1 (or all-zero rows
        where invalid). row_valid: [B, K] bool.
    Returns: scalar float32.
    """
    t, s = teacher_probs.float(), student_probs.float()
    pointwise = torch.where(
        t > 0, t * (torch.log(t.clamp(min=1e-12)) - torch.log(s.clamp(min=1e-12))), torch.zeros_like(t)
    )
    weight = row_valid[:, None, :].float().expand(t.shape[:3])
    return _mean((pointwise.sum(-1) * weight).sum(), weight.sum(), world_size)


def sparse_distribution_kl(
    student_probs: torch.Tensor, teacher, row_valid: torch.Tensor, world_size: int = 1
) -> torch.Tensor:
    """KL(teacher ‖ student) of attention-like rows whose teacher side is sparse (its top-k keys
    and the remaining mass, ``sparse_rows.SparseRows``), averaged over heads and valid rows.

    The keys are coarsened to k + 1 bins, the teacher's k keys and "the rest", for both rows:
    with p_j the teacher's kept probabilities, r its rest mass, q_j the student's probabilities
    at the same keys and q_rest its mass at every other key,

        L = mean_{b,h,q valid} [ Σ_j p_j (log p_j − log q_j) + r (log r − log q_rest) ]

    (MiniLM, Wang et al. 2020, Eq. 3 and 5, on the coarsened rows; the gap to the dense KL is
    r · KL of the normalized tails ≥ 0, ``sparse_rows``). q_rest is summed over the student's
    keys outside the teacher's (no 1 − Σ cancellation); probabilities are clamped at 1e-12 and
    0·log 0 = 0. Equal to ``distribution_kl`` when the kept keys hold all the teacher's mass.

    Args: student_probs: [B, H, K, T] float rows. teacher: SparseRows with values / keys
        [B, H, K, k] and rest [B, H, K]. row_valid: [B, K] bool.
    Returns: scalar float32, ≥ 0.
    """
    s = student_probs.float()
    valid = teacher.keys >= 0
    keys = teacher.keys.clamp(min=0)
    p = teacher.values.float() * valid
    q = s.gather(-1, keys)
    kept = torch.zeros_like(s).scatter_add(-1, keys, valid.float()) > 0
    q_rest = s.masked_fill(kept, 0.0).sum(-1)
    r = teacher.rest.float()
    top = torch.where(p > 0, p * (torch.log(p.clamp(min=1e-12)) - torch.log(q.clamp(min=1e-12))), torch.zeros_like(p))
    rest = torch.where(
        r > 0, r * (torch.log(r.clamp(min=1e-12)) - torch.log(q_rest.clamp(min=1e-12))), torch.zeros_like(r)
    )
    weight = row_valid[:, None, :].float().expand(r.shape)
    return _mean(((top.sum(-1) + rest) * weight).sum(), weight.sum(), world_size)


def row_kl(student_probs: torch.Tensor, teacher, row_valid: torch.Tensor, world_size: int = 1) -> torch.Tensor:
    """``distribution_kl`` for dense teacher rows, ``sparse_distribution_kl`` for ``SparseRows``."""
    if isinstance(teacher, torch.Tensor):
        return distribution_kl(student_probs, teacher, row_valid, world_size)
    return sparse_distribution_kl(student_probs, teacher, row_valid, world_size)


def distribution_mse(
    student_probs: torch.Tensor, teacher_probs: torch.Tensor, row_valid: torch.Tensor, world_size: int = 1
) -> torch.Tensor:
    """Squared error of attention rows summed over keys, averaged over heads and valid rows.

    L = mean_{b,h,q valid} Σ_t (A_S[t] − A_T[t])²      (TinyBERT, Jiao et al. 2020, Eq. 6, per row)

    Args: as ``distribution_kl``. Returns: scalar float32.
    """
    squared = (student_probs.float() - teacher_probs.float()).pow(2).sum(-1)
    weight = row_valid[:, None, :].float().expand(squared.shape)
    return _mean((squared * weight).sum(), weight.sum(), world_size)


def soft_cross_entropy(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, world_size: int = 1
) -> torch.Tensor:
    """Prediction-layer distillation: cross-entropy against the teacher's softened distribution.

    L_pred = τ² · mean_b [ −Σ_c softmax(z_T/τ)_c · log softmax(z_S/τ)_c ]
    (Hinton et al. 2015, §2; the τ² factor keeps gradient scale independent of τ; TinyBERT Eq. 10
    is the τ = 1 case.)

    Args: student_logits, teacher_logits: [B, C] float. temperature: τ > 0.
    Returns: scalar float32.
    """
    targets = F.softmax(teacher_logits.float() / temperature, dim=-1)
    log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    rows = torch.tensor(float(len(targets)), device=targets.device)
    return _mean(-(targets * log_probs).sum(), rows, world_size) * temperature**2


def hard_cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor, world_size: int = 1) -> torch.Tensor:
    """Cross-entropy against gold labels. student_logits: [B, C]; labels: [B] int64."""
    rows = torch.tensor(float(len(labels)), device=labels.device)
    return _mean(F.cross_entropy(student_logits.float(), labels, reduction="sum"), rows, world_size)


def token_soft_cross_entropy(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    world_size: int = 1,
) -> torch.Tensor:
    """``soft_cross_entropy`` per token (token classification), averaged over the tokens of ``mask``:

    L = τ² · Σ_{b,t} m_bt [ −Σ_c softmax(z_T,bt/τ)_c · log softmax(z_S,bt/τ)_c ] / Σ m_bt

    Args: student_logits, teacher_logits: [B, T, C] float. mask: [B, T], 1 = a token that counts
        (the real tokens). temperature: τ > 0.
    Returns: scalar float32.
    """
    targets = F.softmax(teacher_logits.float() / temperature, dim=-1)
    log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    weight = mask.float()
    return _mean(-((targets * log_probs).sum(-1) * weight).sum(), weight.sum(), world_size) * temperature**2


def prediction_mse(student: torch.Tensor, target: torch.Tensor, world_size: int = 1) -> torch.Tensor:
    """Mean squared error of predictions, mean over examples (regression: TinyBERT's
    prediction-layer MSE for STS-B, and the gold-score loss).

    Args: student: [B, 1] or [B] float. target: the same number of values (teacher outputs or gold scores).
    Returns: scalar float32.
    """
    student, target = student.float().reshape(len(student), -1), target.float().reshape(len(student), -1)
    rows = torch.tensor(float(len(student)), device=student.device)
    return _mean(((student - target) ** 2).mean(-1).sum(), rows, world_size)


def sigmoid_soft_cross_entropy(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, world_size: int = 1
) -> torch.Tensor:
    """Multi-label soft targets: each label's binary cross-entropy against the teacher's
    sigmoid at temperature τ, mean over labels and examples, times τ² (Hinton et al. 2015's soft
    targets with one sigmoid per label in place of one softmax):

    L = τ² · mean_{b,c} [ −p_T log p_S − (1 − p_T) log(1 − p_S) ],  p = σ(z/τ)

    Args: student_logits, teacher_logits: [B, C] float. temperature: τ > 0.
    Returns: scalar float32.
    """
    targets = torch.sigmoid(teacher_logits.float() / temperature)
    losses_ = F.binary_cross_entropy_with_logits(student_logits.float() / temperature, targets, reduction="none")
    rows = torch.tensor(float(len(targets)), device=targets.device)
    return _mean(losses_.mean(-1).sum(), rows, world_size) * temperature**2


def binary_cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor, world_size: int = 1) -> torch.Tensor:
    """Multi-label gold loss: binary cross-entropy with logits, mean over labels and examples
    (transformers' ``multi_label_classification`` loss). student_logits, labels: [B, C]."""
    per_row = F.binary_cross_entropy_with_logits(student_logits.float(), labels.float(), reduction="none").mean(-1)
    rows = torch.tensor(float(len(labels)), device=labels.device)
    return _mean(per_row.sum(), rows, world_size)


def span_soft_cross_entropy(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    world_size: int = 1,
) -> torch.Tensor:
    """Extractive QA: ``soft_cross_entropy`` of the start and of the end distribution over the
    real tokens, averaged (the span version of Hinton et al.'s soft targets, as DistilBERT and
    TinyBERT distil SQuAD):

    L = ½ Σ_{k ∈ start, end} τ² · mean_b [ −Σ_t softmax(z_T,k/τ)_t · log softmax(z_S,k/τ)_t ]

    with padding tokens (``mask`` 0) left out of both softmaxes.
    Args: student_logits, teacher_logits: [B, T, 2] float. mask: [B, T], 1 = a real token.
    Returns: scalar float32.
    """
    padding = ~mask.bool()
    total = 0.0
    for k in (0, 1):
        student = student_logits[..., k].float().masked_fill(padding, -1e4)
        teacher = teacher_logits[..., k].float().masked_fill(padding, -1e4)
        total = total + soft_cross_entropy(student, teacher, temperature, world_size)
    return total / 2


def span_hard_cross_entropy(
    student_logits: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None = None, world_size: int = 1
) -> torch.Tensor:
    """Extractive QA's gold loss (transformers' ``*ForQuestionAnswering``): the mean of the start
    and end cross-entropies. student_logits: [B, T, 2]; positions: [B, 2] int64 (start, end token;
    0, 0 for no answer in the feature); mask: [B, T] real tokens (padding left out) or None."""
    total = 0.0
    for k in (0, 1):
        logits = student_logits[..., k].float()
        if mask is not None:
            logits = logits.masked_fill(~mask.bool(), -1e4)
        total = total + hard_cross_entropy(logits, positions[:, k], world_size)
    return total / 2


def token_hard_cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor, world_size: int = 1) -> torch.Tensor:
    """Cross-entropy against gold tags at the labelled tokens (labels ≠ −100), mean over them.
    student_logits: [B, T, C]; labels: [B, T] int64."""
    labelled = (labels != -100).sum().float()
    total = F.cross_entropy(student_logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    return _mean(total, labelled, world_size)


def topk_soft_cross_entropy(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_probs: torch.Tensor,
    rest_mass: torch.Tensor,
    temperature: float = 1.0,
    world_size: int = 1,
) -> torch.Tensor:
    """Soft cross-entropy against a teacher distribution stored as its top-k plus the remaining mass.

    The vocabulary is coarsened to k + 1 bins: the teacher's top-k ids, and "the rest". With
    p_T the teacher's bins at τ (``topk_probs``, ``rest_mass``) and q the student's softmax(z_S/τ)
    coarsened to the same bins (q_j at the teacher's ids, q_rest = 1 − Σ_j q_j):

        L = τ² · mean_m [ −Σ_j p_T,j · log q_j − r_T · log q_rest ]

    (Hinton et al. 2015, §2: soft targets and the τ² factor; DistilBERT's L_ce, Sanh et al. 2019
    §3, uses the teacher's full distribution. Storing only the teacher's top-K probabilities is
    the usual offline-KD truncation, e.g. Tan et al. 2019, "Multilingual NMT with Knowledge
    Distillation", which renormalizes them; keeping the remaining mass as a (k+1)-th bin instead
    is this package's choice, so nothing is renormalized.) It is exactly the cross-entropy between
    the coarsened distributions, i.e. the exact KL(p_T ‖ q) on the k + 1 bins plus the teacher's
    (constant) coarsened entropy, and it equals the full-vocabulary soft cross-entropy
    (``soft_cross_entropy``) when k = V (``rest_mass`` = 0). log q_rest is computed stably as the
    log-sum-exp of the student's log-probabilities outside the teacher's ids (not as
    log(1 − Σ q_j), which cancels catastrophically when q_rest is small), with a floor of 1e-30
    added to the sum so k = V stays finite (0 · log 0 = 0, finite gradients).

    Args:
        student_logits: [M, V] float, the student's logits at M masked positions.
        topk_ids: [M, k] int64 vocabulary ids (distinct per row). topk_probs: [M, k] float, the
            teacher's probabilities at τ. rest_mass: [M] float, 1 − Σ topk_probs.
        temperature: τ > 0, the one the teacher's bins were computed at.
        world_size: data-parallel ranks (``_mean``).
    Returns: scalar float32 (0 when M = 0), ≥ 0.
    """
    log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    top = log_probs.gather(-1, topk_ids)
    is_top = torch.zeros_like(log_probs, dtype=torch.bool).scatter(-1, topk_ids, True)
    outside = log_probs.masked_fill(is_top, torch.finfo(log_probs.dtype).min)  # finite: no nan gradients at k = V
    log_rest = torch.logaddexp(torch.logsumexp(outside, dim=-1), torch.tensor(_REST_FLOOR_LOG, device=outside.device))
    cross = -(topk_probs.float() * top).sum(-1) - rest_mass.float() * log_rest
    rows = torch.tensor(float(len(cross)), device=cross.device)
    return _mean(cross.sum(), rows, world_size) * temperature**2


_REST_FLOOR_LOG = -69.07755278982137  # log(1e-30), the floor of the student's rest mass (topk_soft_cross_entropy)
