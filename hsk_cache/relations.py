"""Value relations (MiniLM) and attention-row gathering, for teachers and students alike."""

from __future__ import annotations

import contextlib
import math

import torch

from hsk_cache.errors import ModelError
from hsk_cache.families import value_module


@contextlib.contextmanager
def capture_values(model, layer: int | None):
    """Capture the value vectors a value-relation loss needs, with a forward hook.

    Within the block, after a forward pass of ``model``, ``captured[0]`` is the output
    [B, T, D] float of transformer layer ``layer``'s (1-based) value projection, in the autograd
    graph (for BERT ``…layer.N.attention.self.value``; per family in ``families``). Yields an
    empty list when ``layer`` is None. The hook is removed on leaving the block.

    Raises: ModelError for an unsupported family or a layer outside 1..L.
    """
    captured: list[torch.Tensor] = []
    if layer is None:
        yield captured
        return
    handle = value_module(model, layer).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        yield captured
    finally:
        handle.remove()


def value_relation(values: torch.Tensor, heads: int, attention_mask: torch.Tensor) -> torch.Tensor:
    """VR = softmax(V·Vᵀ / √d_head) per head, over real key positions.

    Args: values: [B, T, D] float (D = heads · d_head). attention_mask: [B, T] (1 = real token).
    Returns: [B, H, T, T] float32; padded keys get probability 0.
    Raises: ModelError if D is not a multiple of ``heads``.
    Source: MiniLM (Wang et al. 2020), Eq. 5 (value-relation transfer).
    """
    b, t, d = values.shape
    if d % heads:
        raise ModelError(f"width {d} is not a multiple of {heads} relation heads: pick a head count dividing it")
    v = values.float().view(b, t, heads, d // heads).transpose(1, 2)  # [B, H, T, d_head]
    scores = v @ v.transpose(-1, -2) / math.sqrt(d // heads)
    scores = scores.masked_fill(~attention_mask.bool()[:, None, None, :], -math.inf)
    return torch.softmax(scores, dim=-1)


def gather_rows(probs: torch.Tensor, token_index: torch.Tensor) -> torch.Tensor:
    """Query rows of [B, H, T, T] probabilities at token_index [B, K] (−1 = none) → [B, H, K, T],
    zero rows where −1."""
    b, h, _, t = probs.shape
    index = token_index.clamp(min=0)[:, None, :, None].expand(b, h, token_index.shape[1], t)
    rows = probs.gather(2, index)
    return rows * (token_index >= 0)[:, None, :, None].to(rows.dtype)
