"""Run the teacher on a batch and select its knowledge. No files here.

``select_knowledge`` is the single definition of what a spec keeps: extraction stores its output,
online distillation feeds it straight to the loss, so both train on the same numbers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from hsk_cache.batching import Batch
from hsk_cache.config import ExtractSpec
from hsk_cache.select import length


@dataclass
class TeacherOutputs:
    """hidden_states: L+1 tensors [B, T, D] (0 = embedding output). attentions: L tensors
    [B, H, T, T] (softmax over keys) or None. logits: [B, C]."""

    hidden_states: tuple[torch.Tensor, ...]
    attentions: tuple[torch.Tensor, ...] | None
    logits: torch.Tensor


@dataclass
class Knowledge:
    """The selected teacher knowledge of one batch.

    layers: teacher hidden-state layer numbers kept (L_k of them).
    token_index: [B, L_k, K] int64 kept positions, −1 = none. hidden_states: [B, L_k, K, D] float
    (zero where token_index is −1). logits: [B, C] float32. Absent kinds are None.
    """

    layers: tuple[int, ...]
    token_index: torch.Tensor | None
    hidden_states: torch.Tensor | None
    logits: torch.Tensor | None


def autocast(precision: str, device: str = "cpu"):
    """bf16 autocast for ``precision == "bf16"``, else a no-op context (fp32 reference)."""
    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_teacher(model, batch: Batch, attention: bool, precision: str = "fp32") -> TeacherOutputs:
    """One teacher forward in eval mode without autograd; outputs in float32.

    Raises: ModelError-free; the caller loads the model with eager attention when ``attention``.
    """
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad(), autocast(precision, device.type):
        out = model(**batch.to(device).model_inputs(), output_hidden_states=True, output_attentions=attention)
    hidden = tuple(h.float() for h in out.hidden_states)
    attentions = tuple(a.float() for a in out.attentions) if attention and out.attentions else None
    return TeacherOutputs(hidden, attentions, out.logits.float())


def excluded_token_ids(tokenizer) -> tuple[int, ...]:
    """Ids top-k never keeps: the tokenizer's separator (and end-of-sequence) tokens."""
    ids = {tokenizer.sep_token_id, tokenizer.eos_token_id} - {None, tokenizer.cls_token_id}
    return tuple(sorted(ids))


def select_knowledge(outputs: TeacherOutputs, batch: Batch, spec: ExtractSpec, layers: tuple[int, ...],
                     excluded_ids: tuple[int, ...]) -> Knowledge:
    """Apply the spec's depth and length selection to one batch of teacher outputs.

    Args:
        layers: teacher hidden-state layers to keep (resolved from spec.layers).
        excluded_ids: token ids top-k never keeps ([SEP]); padding is never kept.
    Returns: Knowledge with K = spec.tokens.kept_tokens(T) for the batch width T; for top-k,
        importance for hidden-state layer l comes from the attention inside layer max(l, 1).
    """
    logits = outputs.logits.cpu() if "logits" in spec.knowledge else None
    if "hidden_states" not in spec.knowledge:
        return Knowledge(layers, None, None, logits)
    mask = batch.attention_mask.bool()
    lengths = mask.sum(dim=1)
    k = spec.tokens.kept_tokens(mask.shape[1])
    per_layer = []
    for layer in layers:
        if spec.tokens.kind == "all":
            index = length.all_tokens(lengths, k)
        elif spec.tokens.kind == "cls":
            index = length.cls_token(lengths)
        else:
            eligible = mask & ~torch.isin(batch.input_ids, torch.tensor(excluded_ids, dtype=batch.input_ids.dtype))
            importance = length.cls_importance(outputs.attentions[max(layer, 1) - 1].cpu())
            index = length.topk_tokens(importance, eligible, length.tokens_per_example(spec.tokens, lengths), k)
        per_layer.append(index)
    token_index = torch.stack(per_layer, dim=1)
    hidden = torch.stack(
        [length.gather_tokens(outputs.hidden_states[layer].cpu(), token_index[:, i]) for i, layer in enumerate(layers)],
        dim=1,
    )
    return Knowledge(layers, token_index, hidden, logits)
