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

from hsk_cache.config.specs import DimSpec


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
    Returns: [B, L_k, K, D] bool; per (example, layer) exactly ``kept_elements(P, valid tokens·D)``
        True among valid tokens (ties broken by position), never more than
        ``max_kept_elements(P, K, D)``.
    Source: Liu et al. 2021, §4.3 ("magnitude"), defined per example here.
    """
    b, layers, k, d = hidden_states.shape
    scores = hidden_states.abs().float().masked_fill(~token_valid[..., None], -math.inf).reshape(b, layers, k * d)
    valid_elements = token_valid.sum(-1).long() * d  # [B, L_k], an exact integer
    counts = torch.tensor(
        [kept_elements(fraction, n) for n in valid_elements.flatten().tolist()], dtype=torch.long, device=scores.device
    ).reshape(b, layers)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    keep = torch.arange(k * d, device=scores.device)[None, None, :] < counts[..., None]
    mask = torch.zeros(b, layers, k * d, dtype=torch.bool, device=scores.device)
    mask.scatter_(-1, order, keep)
    return mask.reshape(b, layers, k, d)


def kept_elements(fraction: float, n_elements: int) -> int:
    """Elements magnitude keeps out of ``n_elements`` (an integer, tokens·D): ceil(P·n − 1e-6).

    The one rounding rule for both the per-example counts and the stored slots M, so the two
    always agree. The −1e-6 absorbs float error in P·n (0.017·48000 = 816.0000000000001 → 816).
    """
    return math.ceil(fraction * int(n_elements) - 1e-6)


def max_kept_elements(fraction: float, tokens: int, hidden_size: int) -> int:
    """M, the stored value slots per (example, layer) for magnitude: ``kept_elements(P, K·D)``."""
    return kept_elements(fraction, tokens * hidden_size)
