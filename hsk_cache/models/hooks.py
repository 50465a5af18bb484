"""Forward hooks on transformers models: the value vectors a value-relation loss reads."""

from __future__ import annotations

import contextlib

import torch

from hsk_cache.models.families import value_module


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
