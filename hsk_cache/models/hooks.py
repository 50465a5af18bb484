"""Forward hooks on transformers models: the query, key and value vectors relation losses read,
and the teacher's attention probabilities selection reads."""

from __future__ import annotations

import contextlib

import torch

from hsk_cache.models.families import attention_module, projection_module, value_module


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


@contextlib.contextmanager
def capture_projections(model, wanted):
    """Capture the query/key/value projections ``wanted`` (pairs ``(projection, layer)``, e.g.
    ``("query", 6)``; layers 1-based) during a forward pass of ``model``.

    Yields a dict filled by the forward pass: ``{(projection, layer): [B, T, D] float}``, in the
    autograd graph (a module called twice keeps its last output). Empty when ``wanted`` is.
    Hooks are removed on leaving the block.

    Raises: ModelError for an unsupported family, an unknown projection or a layer outside 1..L.
    """
    captured: dict[tuple[str, int], torch.Tensor] = {}
    handles = []
    try:
        for key in sorted(set(wanted)):
            module = projection_module(model, *key)
            handles.append(module.register_forward_hook(lambda _m, _i, out, key=key: captured.__setitem__(key, out)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def capture_attentions(model, layers: dict[int, bool]):
    """Capture the attention probabilities of ``layers`` (1-based layer → whether the whole map is
    read) during a forward pass of ``model``, with forward hooks on the self-attention modules
    (``families.returns_attention_probs`` must hold: the modules return the probabilities as
    output 1, eager attention).

    Yields a dict filled by the forward pass: ``{layer: [B, H, T, T] float}`` for a whole map,
    ``{layer: [B, H, 1, T] float}`` (a copy of the [CLS] query row, ``probs[:, :, :1]``) for a
    layer only ranking reads, so the full maps of the other layers are freed as the forward
    goes on instead of living until it ends (``output_attentions=True`` keeps all L). A module
    returning no probabilities (sdpa) leaves its layer out. Hooks are removed on leaving the block.

    Raises: ModelError for an unsupported family or a layer outside 1..L.
    """
    captured: dict[int, torch.Tensor] = {}

    def hook(out, layer: int, whole: bool) -> None:
        probs = out[1] if isinstance(out, tuple) and len(out) > 1 else None
        if isinstance(probs, torch.Tensor):
            captured[layer] = probs if whole else probs[:, :, :1].clone()

    handles = []
    try:
        for layer, whole in sorted(layers.items()):
            module = attention_module(model, layer)
            handles.append(module.register_forward_hook(lambda _m, _i, out, l=layer, w=whole: hook(out, l, w)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()
