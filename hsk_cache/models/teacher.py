"""Run the teacher on a batch and select its knowledge. No files here.

``select_knowledge`` is the single definition of what a spec keeps: extraction stores its output,
online distillation feeds it straight to the loss, so both train on the same numbers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from hsk_cache.config.specs import ExtractSpec
from hsk_cache.errors import ConfigError, ModelError
from hsk_cache.knowledge import relations
from hsk_cache.knowledge.batch import Batch, Knowledge
from hsk_cache.models import hooks
from hsk_cache.models.inputs import model_inputs
from hsk_cache.select import length, width


@dataclass
class TeacherOutputs:
    """hidden_states: L+1 entries [B, T, D] (0 = embedding output). attentions: L entries
    [B, H, T, T] (softmax over keys), or None when no attention is needed. Entries selection does
    not read are None. values: [B, T, D] value projection of the value-relation layer, or None.
    logits: [B, C]. All on the CPU, float32."""

    hidden_states: tuple[torch.Tensor, ...]
    attentions: tuple[torch.Tensor, ...] | None
    values: torch.Tensor | None
    logits: torch.Tensor


@dataclass(frozen=True)
class Plan:
    """A spec resolved against one teacher: layer numbers, dimension index, excluded token ids."""

    spec: ExtractSpec
    layers: tuple[int, ...]
    attention_layers: tuple[int, ...]
    value_relation_layer: int | None
    heads: int
    dim_index: torch.Tensor | None
    excluded_ids: tuple[int, ...]

    def attention_layers_needed(self) -> set[int]:
        """Attention layers (1-based) whose probabilities selection reads: rank sources and stored rows."""
        needed = set(self.attention_layers)
        if self.spec.tokens.kind == "topk":
            ranked = [max(l, 1) for l in self.layers] + list(self.attention_layers)
            ranked += [self.value_relation_layer] if self.value_relation_layer else []
            needed |= {self.spec.importance_layer} if self.spec.importance_layer else set(ranked)
        return needed

    @classmethod
    def make(cls, spec: ExtractSpec, config, tokenizer) -> Plan:
        """Raises: ConfigError for layers beyond the teacher's depth."""
        depth = config.num_hidden_layers
        layers = spec.layers.resolve(depth) if "hidden_states" in spec.knowledge else ()
        attention = spec.attention_layers.resolve(depth, first=1) if "attention_probs" in spec.knowledge else ()
        value_layer = None
        if "value_relation" in spec.knowledge:
            value_layer = _check_layer(spec.value_relation_layer or depth, depth, "--value-relation-layer")
        if spec.importance_layer is not None:
            _check_layer(spec.importance_layer, depth, "--importance-layer")
        index = width.dim_index(spec.dims, config.hidden_size, spec.seed)
        return cls(
            spec,
            layers,
            attention,
            value_layer,
            config.num_attention_heads,
            None if index is None else torch.from_numpy(index),
            excluded_token_ids(tokenizer),
        )


def _check_layer(layer: int, depth: int, option: str) -> int:
    if not 1 <= layer <= depth:
        raise ConfigError(f"{option} {layer}: the teacher has attention layers 1..{depth}")
    return layer


def autocast(precision: str, device: str = "cpu"):
    """bf16 or fp16 autocast for ``precision`` ``bf16`` / ``fp16`` (fp16 on CUDA), else a no-op
    context (fp32, the reference)."""
    if precision in ("bf16", "fp16"):
        return torch.autocast(device_type=device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def run_teacher(model, batch: Batch, plan: Plan, precision: str = "fp32") -> TeacherOutputs:
    """One teacher forward in eval mode without autograd; outputs in float32.

    Raises: ModelError when attention knowledge is needed and the model returns none.
    """
    model.eval()
    device = next(model.parameters()).device
    attention = plan.spec.needs_attention
    with (
        torch.no_grad(),
        autocast(precision, device.type),
        hooks.capture_values(model, plan.value_relation_layer) as values,
    ):
        out = model(
            **model_inputs(batch.to(device).as_dict(), model), output_hidden_states=True, output_attentions=attention
        )
    if attention and not out.attentions:
        raise ModelError(
            f"{type(model).__name__} returned no attention probabilities: it cannot give attention knowledge or "
            "top-k tokens; use --tokens all|cls|left|random and --knowledge hidden_states,logits"
        )
    # only what selection reads leaves the device (the rest would be wasted copies on a GPU)
    hidden = tuple(h.float().cpu() if i in plan.layers else None for i, h in enumerate(out.hidden_states))
    needed = plan.attention_layers_needed()
    attentions = (
        tuple(a.float().cpu() if i + 1 in needed else None for i, a in enumerate(out.attentions)) if attention else None
    )
    return TeacherOutputs(hidden, attentions, values[0].float().cpu() if values else None, out.logits.float().cpu())


def excluded_token_ids(tokenizer) -> tuple[int, ...]:
    """Ids never kept unless the ``+sep`` variant: the separator (and end-of-sequence) tokens."""
    ids = {tokenizer.sep_token_id, tokenizer.eos_token_id} - {None, tokenizer.cls_token_id}
    return tuple(sorted(ids))


def select_tokens(outputs: TeacherOutputs, batch: Batch, plan: Plan, importance_layer: int) -> torch.Tensor:
    """token_index [B, K] for the spec's length strategy; top-k ranks by the [CLS] attention of
    ``importance_layer`` (1-based)."""
    spec = plan.spec.tokens
    mask = batch.attention_mask.bool()
    lengths = mask.sum(dim=1)
    k = spec.kept_tokens(mask.shape[1])
    if spec.kind == "all":
        return length.all_tokens(lengths, k)
    if spec.kind == "cls":
        return length.cls_token(lengths)
    eligible = mask
    if not spec.with_sep:
        eligible = mask & ~torch.isin(batch.input_ids, torch.tensor(plan.excluded_ids, dtype=batch.input_ids.dtype))
    if spec.kind == "left":
        scores = length.left_scores(eligible)
    elif spec.kind == "random":
        scores = length.random_scores(eligible, batch.example_ids, plan.spec.seed)
    else:
        scores = length.cls_importance(outputs.attentions[importance_layer - 1])
    return length.topk_tokens(scores, eligible, length.tokens_per_example(spec, lengths), k)


def select_knowledge(outputs: TeacherOutputs, batch: Batch, plan: Plan) -> Knowledge:
    """Apply the spec's depth, length and width selection to one batch of teacher outputs.

    Token importance for hidden-state layer l comes from the attention inside layer max(l, 1),
    for attention/value-relation layer l from layer l, unless the spec fixes an importance layer.
    """
    spec, fixed = plan.spec, plan.spec.importance_layer
    knowledge = Knowledge(logits=outputs.logits if "logits" in spec.knowledge else None)
    if plan.layers:
        index = torch.stack([select_tokens(outputs, batch, plan, fixed or max(l, 1)) for l in plan.layers], dim=1)
        hidden = torch.stack(
            [length.gather_tokens(outputs.hidden_states[l], index[:, i]) for i, l in enumerate(plan.layers)], dim=1
        )
        valid = index >= 0
        mask = None
        if spec.dims.kind == "magnitude":
            mask = width.magnitude_mask(hidden, valid, spec.dims.fraction)
        elif plan.dim_index is not None:
            mask = torch.zeros_like(hidden, dtype=torch.bool)
            mask[..., plan.dim_index] = valid[..., None]
        knowledge.layers, knowledge.token_index = plan.layers, index
        knowledge.hidden_states, knowledge.hidden_mask = (hidden if mask is None else hidden * mask), mask
    if plan.attention_layers:
        index = torch.stack([select_tokens(outputs, batch, plan, fixed or l) for l in plan.attention_layers], dim=1)
        rows = [
            relations.gather_rows(outputs.attentions[l - 1], index[:, i]) for i, l in enumerate(plan.attention_layers)
        ]
        knowledge.attention_layers, knowledge.attention_index = plan.attention_layers, index
        knowledge.attention_probs = torch.stack(rows, dim=1)
    if plan.value_relation_layer is not None:
        index = select_tokens(outputs, batch, plan, fixed or plan.value_relation_layer)
        vr = relations.value_relation(outputs.values, plan.heads, batch.attention_mask)
        knowledge.value_relation_layer, knowledge.value_index = plan.value_relation_layer, index
        knowledge.value_relation = relations.gather_rows(vr, index)
    return knowledge
