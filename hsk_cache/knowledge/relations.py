"""Self-attention relations (MiniLM's value relation, MiniLMv2's Q-Q/K-K/V-V relations) and
attention-row gathering, for teachers and students alike."""

from __future__ import annotations

import math

import torch

from hsk_cache.errors import ModelError


def self_attention_relation(x: torch.Tensor, heads: int, attention_mask: torch.Tensor) -> torch.Tensor:
    """R = softmax(X_r·X_rᵀ / √(D/R)) per relation head r, over real key positions.

    ``x`` (the queries, keys or values of one layer) is split along its width into ``heads``
    contiguous relation heads of D/R dimensions each (the concatenated attention heads re-split,
    so R may differ from the model's attention heads).

    Args: x: [B, T, D] float (D = heads · D/R). heads: R ≥ 1. attention_mask: [B, T] (1 = real token).
    Returns: [B, R, T, T] float32; padded keys get probability 0.
    Raises: ModelError if D is not a multiple of ``heads``.
    Source: MiniLMv2 (Wang et al. 2021), §3 (Q-Q, K-K, V-V relations of relation heads);
    MiniLM (Wang et al. 2020), Eq. 5 (the value relation, R = the attention heads).
    """
    b, t, d = x.shape
    if d % heads:
        raise ModelError(f"width {d} is not a multiple of {heads} relation heads: pick a head count dividing it")
    split = x.float().view(b, t, heads, d // heads).transpose(1, 2)  # [B, R, T, D/R]
    scores = split @ split.transpose(-1, -2) / math.sqrt(d // heads)
    scores = scores.masked_fill(~attention_mask.bool()[:, None, None, :], -math.inf)
    return torch.softmax(scores, dim=-1)


def value_relation(values: torch.Tensor, heads: int, attention_mask: torch.Tensor) -> torch.Tensor:
    """VR = softmax(V·Vᵀ / √d_head) per head, over real key positions (``self_attention_relation``
    of the value vectors).

    Args: values: [B, T, D] float (D = heads · d_head). attention_mask: [B, T] (1 = real token).
    Returns: [B, H, T, T] float32; padded keys get probability 0.
    Raises: ModelError if D is not a multiple of ``heads``.
    Source: MiniLM (Wang et al. 2020), Eq. 5 (value-relation transfer).
    """
    return self_attention_relation(values, heads, attention_mask)


def gather_rows(probs: torch.Tensor, token_index: torch.Tensor) -> torch.Tensor:
    """Query rows of [B, H, T, T] probabilities at token_index [B, K] (−1 = none) → [B, H, K, T],
    zero rows where −1."""
    b, h, _, t = probs.shape
    index = token_index.clamp(min=0)[:, None, :, None].expand(b, h, token_index.shape[1], t)
    rows = probs.gather(2, index)
    return rows * (token_index >= 0)[:, None, :, None].to(rows.dtype)


def match_heads(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [B, H_S, K, T] and [B, H_T, K, T] as they are when the head counts agree, else both
    averaged over heads ([B, 1, K, T]: ``head_map="mean"``, checked when the term is built)."""
    if student.shape[1] == teacher.shape[1]:
        return student, teacher
    return student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
