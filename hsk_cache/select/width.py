"""Width: which hidden dimensions of each kept token to keep (Liu et al. 2021, §4.3).

uniform and random keep the same D' dimensions for every token (``dim_index``); magnitude keeps,
per example and layer, the top-P fraction of the kept elements by absolute value (``element
mask``). The study recomputes magnitude per batch; here it is per example, so a cache does not
depend on batch composition.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hsk_cache.config import DimSpec


def dim_index(spec: DimSpec, hidden_size: int, seed: int = 0) -> np.ndarray | None:
    """Kept dimensions for uniform/random, ascending: [D'] int64; None for all and magnitude.

    uniform: floor(i·D/D') for i = 0..D'−1 (evenly spaced); random: D' distinct dimensions drawn
    with numpy's generator seeded by ``seed``.
    """
    kept = spec.kept_dims(hidden_size)
    if spec.kind == "uniform":
        return (np.arange(kept) * hidden_size) // kept
    if spec.kind == "random":
        return np.sort(np.random.default_rng(seed).choice(hidden_size, size=kept, replace=False))
    return None


def magnitude_mask(hidden_states: torch.Tensor, token_valid: torch.Tensor, fraction: float) -> torch.Tensor:
    """Keep the top ``fraction`` of each (example, layer)'s valid elements by |h|.

    Args:
        hidden_states: [B, L_k, K, D] float. token_valid: [B, L_k, K] bool (False = no token).
        fraction: P in (0, 1].
    Returns: [B, L_k, K, D] bool; per (example, layer) exactly ceil(P · valid tokens · D) True
        among valid tokens (ties broken by position).
    Source: Liu et al. 2021, §4.3 ("magnitude"), defined per example here.
    """
    b, layers, k, d = hidden_states.shape
    scores = hidden_states.abs().float().masked_fill(~token_valid[..., None], -math.inf).reshape(b, layers, k * d)
    counts = torch.ceil(token_valid.sum(-1).double() * d * fraction).long()  # [B, L_k]
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    keep = torch.arange(k * d)[None, None, :] < counts[..., None]
    mask = torch.zeros(b, layers, k * d, dtype=torch.bool)
    mask.scatter_(-1, order, keep)
    return mask.reshape(b, layers, k, d)


def max_kept_elements(fraction: float, tokens: int, hidden_size: int) -> int:
    """M, the stored value slots per (example, layer) for magnitude: ceil(P·K·D)."""
    return math.ceil(fraction * tokens * hidden_size)
