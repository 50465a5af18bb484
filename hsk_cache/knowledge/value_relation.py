"""Value relation: softmax(V·Vᵀ/√d_head) rows of the kept query tokens, of one teacher layer.

Source: MiniLM (Wang et al. 2020, Eq. 4–5: value-relation transfer of the last layer); with
``head_map="relation"`` the student's values are split into the teacher's head count, as
MiniLMv2's relation heads do (Wang et al. 2021).

Teacher outputs: the value projection [B, T, D] of the layer (captured by a forward hook,
``models.hooks.capture_values``), and with top-k tokens the [CLS] row of the ranking layer.

| batch key      | shape           | dtype   | content                                 |
|----------------|-----------------|---------|-----------------------------------------|
| value_index    | [B, K]          | int64   | kept query positions, −1 = none         |
| value_relation | [B, H, K, T_b]  | float32 | softmax(V·Vᵀ/√d_head) rows              |

| array          | shape        | dtype | content                               |
|----------------|--------------|-------|---------------------------------------|
| value_index    | [N, K]       | int16 | kept query positions                  |
| value_relation | [N, H, K, T] | q     | value-relation rows, all keys         |

With ``key_topk`` = k the rows are sparse (value_relation [..., K, k], value_relation_keys,
value_relation_rest; ``knowledge.sparse_rows``) and the loss is the KL of the coarsened rows.
"""

from __future__ import annotations

import numpy as np
import torch

from hsk_cache.errors import ConfigError, ModelError
from hsk_cache.knowledge import losses, relations, sparse_rows
from hsk_cache.knowledge.kind import (
    ArraySpec,
    KnowledgeKind,
    LossOptions,
    Term,
    check_layer,
    decode_rows,
    encode_rows,
    index_array,
    row_arrays,
    select_rows,
)


class ValueRelation(KnowledgeKind):
    """The value relation of ``spec.value_relation_layer`` (None: the last layer)."""

    name = "value_relation"
    batch_keys = ("value_index", "value_relation", "value_relation_keys", "value_relation_rest")
    index_keys = ("value_index", "value_relation_keys")
    stage = "hidden"

    def needs_attention(self, spec) -> bool:
        """Top-k tokens rank by attention."""
        return spec.tokens.kind == "topk"

    def resolve(self, spec, config, max_length: int, selected: bool) -> dict:
        """The layer (1..L). Raises: ConfigError (field ``value_relation_layer``) outside the teacher."""
        if not selected:
            return {"value_relation_layer": None}
        depth = config.num_hidden_layers
        return {"value_relation_layer": check_layer(spec.value_relation_layer or depth, depth, "value_relation_layer")}

    def attention_layers_read(self, plan) -> set[int]:
        """With top-k tokens: the ranking layer."""
        return {plan.ranking_layer(plan.value_relation_layer)} if plan.spec.tokens.kind == "topk" else set()

    def value_layer(self, plan) -> int | None:
        """The value-relation layer."""
        return plan.value_relation_layer

    def select(self, outputs, batch, plan) -> dict[str, torch.Tensor]:
        """value_index [B, K] and value_relation [B, H, K, T_b] (H: the teacher's heads)."""
        index = plan.select_tokens(outputs, batch, plan.value_relation_layer)
        relation = relations.value_relation(outputs.values, plan.heads, batch.attention_mask)
        return {"value_index": index, **select_rows("value_relation", relations.gather_rows(relation, index), plan)}

    def arrays(self, plan, n: int) -> list[ArraySpec]:
        """value_index and value_relation (rows over all T keys)."""
        k = plan.kept_tokens
        shape = (n, plan.heads, k, plan.max_length)
        return [index_array("value_index", (n, k)), *row_arrays("value_relation", shape, plan)]

    def encode(self, knowledge: dict, plan) -> dict[str, np.ndarray]:
        """Pad the query axis to K and the key axis to T; quantize (``kind.encode_rows``)."""
        return encode_rows(knowledge, "value_index", "value_relation", plan)

    def decode(self, rows: dict[str, np.ndarray], plan, width: int) -> dict[str, torch.Tensor]:
        """float32 rows [B, H, K_b, T_b] (``kind.decode_rows``)."""
        return decode_rows(rows, "value_index", "value_relation", plan, width)

    def term(self, plan, student_config, options: LossOptions) -> ValueRelationTerm:
        """KL of the student's last-layer value relation. Raises: ConfigError for heads that differ."""
        return ValueRelationTerm(plan, student_config, options)


class ValueRelationTerm(Term):
    """KL(VR_T ‖ VR_S) of the student's last layer at the kept query rows (MiniLM Eq. 5), with
    the student's own heads (``strict``), the teacher's head count (``relation``: MiniLMv2's
    relation heads) or head-averaged rows (``mean``)."""

    name = "value_relation"
    stage = "hidden"

    def __init__(self, plan, student_config, options: LossOptions) -> None:
        heads, teacher_heads, head_map = student_config.num_attention_heads, plan.teacher_heads, options.head_map
        if heads != teacher_heads and head_map == "strict":
            raise ConfigError(
                f"value relation with {heads} student heads vs {teacher_heads} teacher heads: pass {{head_map}} "
                f"relation (split the student's values into {teacher_heads} relation heads) or {{head_map}} mean",
                field="head_map",
                value=head_map,
            )
        if heads != teacher_heads and head_map == "relation" and student_config.hidden_size % teacher_heads:
            raise ConfigError(
                f"{{head_map}} relation: student width {student_config.hidden_size} "
                f"is not a multiple of {teacher_heads} heads",
                field="head_map",
                value=head_map,
            )
        self.student_layer = student_config.num_hidden_layers
        self.teacher_layer = plan.value_relation_layer
        self.heads = teacher_heads if head_map == "relation" else heads
        if plan.spec.key_topk and self.heads != teacher_heads:
            raise ConfigError(
                f"the cache keeps the value-relation rows' top {plan.spec.key_topk} keys (sparse rows), per teacher "
                f"head: pass {{head_map}} relation (the student's values in {teacher_heads} relation heads) or "
                "extract dense rows ({key_topk} 0)",
                field="head_map",
                value=head_map,
            )

    @property
    def value_layer(self) -> int | None:
        """The student's last layer."""
        return self.student_layer

    def __call__(self, outputs, values, batch: dict, world_size: int = 1, training: bool = False) -> dict:
        """{"value_relation": loss}. Raises: ModelError without captured values."""
        if isinstance(values, dict):  # DistillationLoss.capture_values
            values = [values[("value", self.student_layer)]] if ("value", self.student_layer) in values else []
        if not values:
            raise ModelError(
                "the value-relation term needs the student's value vectors: run the forward pass "
                "inside `with loss_fn.capture_values(student) as values:` and pass values"
            )
        relation = relations.value_relation(values[-1], self.heads, batch["attention_mask"])
        student = relations.gather_rows(relation, batch["value_index"])
        teacher = sparse_rows.rows_of(batch, "value_relation")
        if isinstance(teacher, torch.Tensor):
            student, teacher = relations.match_heads(student, teacher)
        return {self.name: losses.row_kl(student, teacher, batch["value_index"] >= 0, world_size)}
