"""Length: which token positions of an example to keep.

Every strategy returns ``token_index``: [B, K] int64 positions, −1 where an example keeps fewer
than K tokens (−1 entries always come after the valid ones, and are masked in the loss).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hsk_cache.config.specs import TokenSpec


def all_tokens(lengths: torch.Tensor, k: int) -> torch.Tensor:
    """Every real token, in order. lengths: [B] int. Returns: [B, k] with −1 beyond each length."""
    positions = torch.arange(k, device=lengths.device).expand(len(lengths), k)
    return torch.where(positions < lengths[:, None], positions, torch.full_like(positions, -1))


def cls_token(lengths: torch.Tensor) -> torch.Tensor:
    """The [CLS] position 0. Returns: [B, 1]."""
    return torch.zeros(len(lengths), 1, dtype=torch.int64, device=lengths.device)


def cls_importance(attention_probs: torch.Tensor) -> torch.Tensor:
    """Attention each token receives from the [CLS] query, averaged over heads.

    Args: attention_probs: [B, H, T, T] float, softmax over the last axis.
    Returns: [B, T] float32.
    Source: Liu et al. 2021, §4.2 ("attention"-based length selection).
    """
    return attention_probs[:, :, 0, :].float().mean(dim=1)


def left_scores(eligible: torch.Tensor) -> torch.Tensor:
    """Scores ranking positions left to right (the study's "left" strategy). Returns [B, T] float."""
    return -torch.arange(eligible.shape[1], dtype=torch.float32, device=eligible.device).expand(eligible.shape)


def random_scores(eligible: torch.Tensor, example_ids: torch.Tensor, seed: int) -> torch.Tensor:
    """Uniform random scores, drawn per example from (seed, example id): the same example gets
    the same tokens in any batch (drawn on the host, returned on ``eligible``'s device).
    Returns [B, T] float32."""
    width = eligible.shape[1]
    rows = [np.random.default_rng([seed, int(i)]).random(width, dtype=np.float32) for i in example_ids.tolist()]
    scores = torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, width)
    return scores.to(eligible.device)


def topk_tokens(importance: torch.Tensor, eligible: torch.Tensor, k_per_example: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each example's highest-scoring eligible tokens, in descending score.

    Args:
        importance: [B, T] float. eligible: [B, T] bool (False for padding and excluded tokens).
        k_per_example: [B] int, tokens to keep per example (≤ k). k: the output width K.
    Returns: token_index [B, K] int64; ties broken by position (stable); −1 past
        min(k_per_example, eligible count).
    Source: Liu et al. 2021, §4.2 ("attention w/o [SEP]" when [SEP] is not eligible).
    """
    width = importance.shape[1]
    scores = torch.where(eligible, importance.float(), torch.full_like(importance, -math.inf, dtype=torch.float32))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    if width < k:
        order = torch.cat([order, order.new_zeros(len(order), k - width)], dim=1)
    order = order[:, :k]
    keep = torch.arange(k, device=order.device)[None, :] < torch.minimum(k_per_example, eligible.sum(dim=1))[:, None]
    return torch.where(keep, order, torch.full_like(order, -1))


def tokens_per_example(spec: TokenSpec, lengths: torch.Tensor) -> torch.Tensor:
    """K for each example: the count, or ceil(percent/100 · length) (at least 1). Returns [B] int64."""
    if spec.k is not None:
        return torch.full_like(lengths, spec.k, dtype=torch.int64)
    return torch.clamp(torch.ceil(lengths.double() * spec.percent / 100).long(), min=1)


def gather_tokens(hidden_states: torch.Tensor, token_index: torch.Tensor) -> torch.Tensor:
    """hidden_states [B, T, D], token_index [B, K] (−1 = none) → [B, K, D], zeros where −1."""
    valid = token_index >= 0
    picked = torch.gather(
        hidden_states, 1, token_index.clamp(min=0)[:, :, None].expand(-1, -1, hidden_states.shape[-1])
    )
    return picked * valid[:, :, None].to(picked.dtype)
