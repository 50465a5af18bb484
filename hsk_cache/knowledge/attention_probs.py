"""Attention probabilities: the teacher's attention rows of the kept query tokens, over all keys.

Source: TinyBERT (Jiao et al. 2020, Eq. 6: MSE of attention), MiniLM (Wang et al. 2020, Eq. 3:
KL of the last layer's attention distributions), MobileBERT (attention transfer).

Teacher outputs: ``attentions[l - 1]`` [B, H, T, T] (softmax over keys) of each stored layer l,
and with top-k tokens the [CLS] row of the ranking layer.

| batch key       | shape               | dtype   | content                              |
|-----------------|---------------------|---------|--------------------------------------|
| attention_index | [B, L_a, K]         | int64   | kept query positions, −1 = none      |
| attention_probs | [B, L_a, H, K, T_b] | float32 | attention rows of the kept queries   |

| array           | shape             | dtype | content                                  |
|-----------------|-------------------|-------|------------------------------------------|
| attention_index | [N, L_a, K]       | int16 | kept query positions per attention layer |
| attention_probs | [N, L_a, H, K, T] | q     | attention rows of kept queries, all keys |

With ``key_topk`` = k the rows are stored and batched sparse: attention_probs [..., K, k] (the
top-k probabilities), attention_probs_keys [..., K, k] and attention_probs_rest [..., K]
(``knowledge.sparse_rows``); the loss is then the KL of the coarsened rows.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from hsk_cache.errors import ConfigError, ModelError
from hsk_cache.knowledge import losses, relations, sparse_rows
from hsk_cache.knowledge.kind import (
    ArraySpec,
    KnowledgeKind,
    LossOptions,
    Term,
    decode_rows,
    encode_rows,
    index_array,
    row_arrays,
    select_rows,
)
from hsk_cache.select import depth

log = logging.getLogger(__name__)


class AttentionProbs(KnowledgeKind):
    """Attention probabilities of the layers of ``spec.attention_layers`` (module docstring)."""

    name = "attention_probs"
    batch_keys = ("attention_index", "attention_probs", "attention_probs_keys", "attention_probs_rest")
    index_keys = ("attention_index", "attention_probs_keys")
    stage = "hidden"

    def needs_attention(self, spec) -> bool:
        """Always: the stored rows are attention probabilities."""
        return True

    def resolve(self, spec, config, max_length: int, selected: bool) -> dict:
        """The stored attention layers (1..L)."""
        return {
            "attention_layers": spec.attention_layers.resolve(config.num_hidden_layers, first=1) if selected else ()
        }

    def attention_layers_read(self, plan) -> set[int]:
        """The stored layers, and with top-k tokens their ranking layers."""
        ranked = {plan.ranking_layer(l) for l in plan.attention_layers} if plan.spec.tokens.kind == "topk" else set()
        return set(plan.attention_layers) | ranked

    def attention_maps_read(self, plan) -> set[int]:
        """The stored layers: their rows of the selected tokens are gathered."""
        return set(plan.attention_layers)

    def select(self, outputs, batch, plan) -> dict[str, torch.Tensor]:
        """attention_index [B, L_a, K] and attention_probs [B, L_a, H, K, T_b]."""
        index = torch.stack([plan.select_tokens(outputs, batch, l) for l in plan.attention_layers], dim=1)
        rows = [
            relations.gather_rows(outputs.attentions[l - 1], index[:, i]) for i, l in enumerate(plan.attention_layers)
        ]
        return {"attention_index": index, **select_rows("attention_probs", torch.stack(rows, dim=1), plan)}

    def arrays(self, plan, n: int) -> list[ArraySpec]:
        """attention_index and attention_probs (rows over all T keys)."""
        layers, k = len(plan.attention_layers), plan.kept_tokens
        shape = (n, layers, plan.heads, k, plan.max_length)
        return [
            index_array("attention_index", (n, layers, k)),
            *row_arrays("attention_probs", shape, plan),
        ]

    def encode(self, knowledge: dict, plan) -> dict[str, np.ndarray]:
        """Pad the query axis to K and the key axis to T; quantize (``kind.encode_rows``)."""
        return encode_rows(knowledge, "attention_index", "attention_probs", plan)

    def decode(self, rows: dict[str, np.ndarray], plan, width: int) -> dict[str, torch.Tensor]:
        """float32 rows [B, L_a, H, K_b, T_b] (``kind.decode_rows``)."""
        return decode_rows(rows, "attention_index", "attention_probs", plan, width)

    def term(self, plan, student_config, options: LossOptions) -> AttentionProbsTerm:
        """Σ over the attention map of KL (or MSE) of the kept rows. Raises: ConfigError."""
        return AttentionProbsTerm(plan, student_config, options)


class AttentionProbsTerm(Term):
    """Σ_{(s,t) ∈ attention_map} KL(A_T ‖ A_S) (MiniLM Eq. 3) or MSE (TinyBERT Eq. 6,
    ``attention_loss="mse"``) of the kept query rows; head-averaged rows with ``head_map="mean"``."""

    name = "attention_probs"
    stage = "hidden"

    def __init__(self, plan, student_config, options: LossOptions) -> None:
        self.layers = plan.attention_layers
        self.layer_map = depth.layer_map(
            options.attention_map,
            student_config.num_hidden_layers,
            plan.teacher_layers,
            plan.attention_layers,
            options.keep_top_pairs,
            field="attention_map",
        )
        self.layer_map.pop(0, None)  # the embedding layer has no attention
        heads = student_config.num_attention_heads
        if self.layer_map and heads != plan.teacher_heads and options.head_map != "mean":
            raise ConfigError(
                f"the student has {heads} attention heads, the cached attention {plan.teacher_heads}: "
                "pass {head_map} mean (compare head-averaged attention) or build a student with matching heads",
                field="head_map",
                value=options.head_map,
            )
        if plan.spec.key_topk and self.layer_map and (options.attention_loss != "kl" or heads != plan.teacher_heads):
            raise ConfigError(
                f"the cache keeps the attention rows' top {plan.spec.key_topk} keys (sparse rows): their loss is "
                "the KL of the kept keys and the rest mass, per teacher head; use {attention_loss} kl and a student "
                f"with the teacher's {plan.teacher_heads} heads, or extract dense rows ({{key_topk}} 0)",
                field="attention_loss" if options.attention_loss != "kl" else "head_map",
                value=options.attention_loss if options.attention_loss != "kl" else options.head_map,
            )
        self.loss = losses.row_kl if options.attention_loss == "kl" else losses.distribution_mse
        self._checked_dropout = False

    def output_flags(self) -> dict[str, bool]:
        """Needs the student's attentions (when the map is not empty)."""
        return {"output_attentions": bool(self.layer_map)}

    def __call__(self, outputs, values, batch: dict, world_size: int = 1, training: bool = False) -> dict:
        """{"attention_probs": loss} (nothing when the map is empty). Raises: ModelError without attentions."""
        if not self.layer_map:
            return {}
        attentions = getattr(outputs, "attentions", None)
        if not attentions:
            raise ModelError(
                "the student's output has no attentions: call the student with output_attentions=True "
                "(loss_fn.output_flags()) and load it with attn_implementation='eager'"
            )
        if training and not self._checked_dropout and attentions[0].requires_grad:
            self._checked_dropout = True  # once: the rows of a student in train mode
            rows = attentions[0].detach().float().sum(-1)
            if not torch.allclose(rows[rows > 0], torch.ones_like(rows[rows > 0]), atol=1e-2):
                log.warning(
                    "the student's attention rows do not sum to 1 (attention dropout?): build the student "
                    "with families.without_attention_dropout(student) for attention distillation"
                )
        total = 0
        for s, t in self.layer_map.items():
            i = self.layers.index(t)
            index = batch["attention_index"][:, i]
            student = relations.gather_rows(attentions[s - 1], index)
            teacher = sparse_rows.rows_of(batch, "attention_probs")[:, i]
            if isinstance(teacher, torch.Tensor):
                student, teacher = relations.match_heads(student, teacher)
            total = total + self.loss(student, teacher, index >= 0, world_size)
        return {self.name: total}
