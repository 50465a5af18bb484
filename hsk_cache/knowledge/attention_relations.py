"""Self-attention relations (MiniLMv2): Q-Q, K-K and V-V relation rows of the kept query tokens,
of one teacher layer, split into relation heads.

Source: MiniLMv2 (Wang et al. 2021, "Multi-Head Self-Attention Relation Distillation for
Compressing Pretrained Transformers", §3, Eq. 1–4). The queries, keys and values [B, T, D] of a
layer (the outputs of its q/k/v linear projections, the attention heads concatenated) are re-split
into R *relation heads* of D/R dimensions; each relation is R_XX = softmax(X_r·X_rᵀ / √(D/R))
[B, R, T, T] (softmax over the real keys), and the loss is Σ over the three relations of
KL(teacher ‖ student) of the rows. Student and teacher are split into the same R, so their
widths and attention-head counts may differ (D_S % R == 0 and D_T % R == 0).

Kind options (``ExtractSpec.options``, stored in the cache's spec):

- ``relation_layer``: the teacher layer (1..L), None = the last. The paper distils the last
  layer of base-size teachers and an upper-middle layer of large ones (§4, layer selection).
- ``relation_heads``: R, None = the teacher's attention heads. Reference values: 48 relation
  heads for base-size and 64 for large-size teachers (the MiniLMv2 setting, as quoted by
  PaddleNLP's PP-MiniLM ``general_distill.py``, "the number of relation heads is 48 and 64 for
  base and large-size teacher model", and used by Bloomberg's ``minilmv2.bb`` ``run.sh`` for
  BERT-base: ``--L 12 --num_relation_heads 48``). The default stays the teacher's attention heads,
  which divides every teacher's width and equals MiniLM's value relation for V-V; pass 48 / 64
  to follow the paper.

Teacher outputs: the query, key and value projections [B, T, D] of the layer
(``TeacherOutputs.projections``, captured by ``models.hooks.capture_projections``), and with
top-k tokens the [CLS] attention row of the ranking layer.

| batch key           | shape              | dtype   | content                                       |
|---------------------|--------------------|---------|-----------------------------------------------|
| relation_index      | [B, K]             | int64   | kept query positions, −1 = none               |
| attention_relations | [B, 3, R, K, T_b]  | float32 | Q-Q, K-K, V-V relation rows (in that order)   |

| array               | shape              | dtype | content                                   |
|---------------------|--------------------|-------|-------------------------------------------|
| relation_index      | [N, K]             | int16 | kept query positions                      |
| attention_relations | [N, 3, R, K, T]    | q     | Q-Q, K-K, V-V relation rows, all keys     |

With ``key_topk`` = k the rows are sparse (attention_relations [..., K, k],
attention_relations_keys, attention_relations_rest; ``knowledge.sparse_rows``) and the loss is
the KL of the coarsened rows.
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

PROJECTIONS = ("query", "key", "value")  # the order of the relation axis (3) of attention_relations


def _check_count(name: str, value, what: str) -> None:
    """Raises: ConfigError (field ``name``) unless ``value`` is None or an int ≥ 1."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return
    raise ConfigError(f"{{{name}}} {value!r}: use a whole number ≥ 1 ({what})", field=name, value=value)


class AttentionRelations(KnowledgeKind):
    """MiniLMv2's Q-Q, K-K and V-V self-attention relations of one teacher layer, in R relation
    heads (module docstring: options, batch keys, arrays)."""

    name = "attention_relations"
    batch_keys = ("relation_index", "attention_relations", "attention_relations_keys", "attention_relations_rest")
    index_keys = ("relation_index", "attention_relations_keys")
    stage = "hidden"
    options = {"relation_layer": None, "relation_heads": None}

    def check_options(self, options: dict) -> None:
        """Raises: ConfigError (field ``relation_layer`` / ``relation_heads``) for a value that is
        neither None nor an int ≥ 1 (the teacher's bounds are checked by ``resolve``)."""
        _check_count("relation_layer", options.get("relation_layer"), "a teacher layer 1..L, or unset for the last")
        _check_count("relation_heads", options.get("relation_heads"), "unset: the teacher's attention heads")

    def needs_attention(self, spec) -> bool:
        """Top-k tokens rank by attention."""
        return spec.tokens.kind == "topk"

    def resolve(self, spec, config, max_length: int, selected: bool) -> dict:
        """``relation_layer`` (1..L) and ``relation_heads`` (R) for ``Plan.extra`` ({} when not selected).

        Raises: ConfigError (field ``relation_layer``) for a layer outside the teacher, (field
        ``relation_heads``) for an R that does not divide the teacher's width D_T.
        """
        if not selected:
            return {}
        depth, width = config.num_hidden_layers, config.hidden_size
        layer = check_layer(spec.option("relation_layer") or depth, depth, "relation_layer")
        heads = spec.option("relation_heads") or config.num_attention_heads
        if width % heads:
            raise ConfigError(
                f"{{relation_heads}} {heads}: the teacher's width {width} is not a multiple of it; "
                f"use a divisor of {width} (e.g. its {config.num_attention_heads} attention heads)",
                field="relation_heads",
                value=heads,
            )
        return {"relation_layer": layer, "relation_heads": heads}

    def manifest_fields(self, plan) -> dict:
        """{"relation_layer": l, "relation_heads": R} (the manifest's ``kinds`` section)."""
        return {"relation_layer": plan.extra["relation_layer"], "relation_heads": plan.extra["relation_heads"]}

    def from_manifest(self, stored) -> dict:
        """``Plan.extra``'s ``relation_layer`` and ``relation_heads`` from ``manifest_fields``' output."""
        return {"relation_layer": int(stored["relation_layer"]), "relation_heads": int(stored["relation_heads"])}

    def attention_layers_read(self, plan) -> set[int]:
        """With top-k tokens: the ranking layer of the relation layer."""
        if plan.spec.tokens.kind != "topk":
            return set()
        return {plan.ranking_layer(plan.extra["relation_layer"])}

    def projections_read(self, plan) -> set[tuple[str, int]]:
        """The query, key and value projections of the relation layer."""
        layer = plan.extra["relation_layer"]
        return {(projection, layer) for projection in PROJECTIONS}

    def select(self, outputs, batch, plan) -> dict[str, torch.Tensor]:
        """relation_index [B, K] int64 and attention_relations [B, 3, R, K, T_b] float32 (Q-Q,
        K-K, V-V rows of the kept queries). Raises: ModelError when a projection was not captured."""
        layer, heads = plan.extra["relation_layer"], plan.extra["relation_heads"]
        index = plan.select_tokens(outputs, batch, layer)
        rows = []
        for projection in PROJECTIONS:
            x = outputs.projections.get((projection, layer))
            if x is None:
                raise ModelError(
                    f"the teacher outputs hold no {projection} projection of layer {layer}: run the teacher "
                    "with models.teacher.run_teacher (it captures Plan.projections_read())"
                )
            relation = relations.self_attention_relation(x, heads, batch.attention_mask)
            rows.append(relations.gather_rows(relation, index))
        return {"relation_index": index, **select_rows("attention_relations", torch.stack(rows, dim=1), plan)}

    def arrays(self, plan, n: int) -> list[ArraySpec]:
        """relation_index [N, K] int16 and attention_relations [N, 3, R, K, T] (rows over all T keys)."""
        k = plan.kept_tokens
        shape = (n, len(PROJECTIONS), plan.extra["relation_heads"], k, plan.max_length)
        return [index_array("relation_index", (n, k)), *row_arrays("attention_relations", shape, plan)]

    def encode(self, knowledge: dict, plan) -> dict[str, np.ndarray]:
        """Pad the query axis to K and the key axis to T; quantize (``kind.encode_rows``)."""
        return encode_rows(knowledge, "relation_index", "attention_relations", plan)

    def decode(self, rows: dict[str, np.ndarray], plan, width: int) -> dict[str, torch.Tensor]:
        """float32 rows [B, 3, R, K_b, T_b] and relation_index [B, K_b] (``kind.decode_rows``)."""
        return decode_rows(rows, "relation_index", "attention_relations", plan, width)

    def term(self, plan, student_config, options: LossOptions) -> AttentionRelationsTerm:
        """Σ of the three relations' KL against the student's last layer. Raises: ConfigError
        (field ``relation_heads``) when the student's width is not a multiple of R."""
        return AttentionRelationsTerm(plan, student_config, options)


class AttentionRelationsTerm(Term):
    """Σ_{X ∈ Q, K, V} KL(R_XX^T ‖ R_XX^S) of the kept query rows, averaged over the R relation
    heads and the real rows (MiniLMv2 Eq. 4; its cross-entropy differs by the teacher's entropy,
    a constant). The student's queries, keys and values of its last layer are split into the
    cache's R relation heads, so its width and attention heads may differ from the teacher's."""

    name = "attention_relations"
    stage = "hidden"

    def __init__(self, plan, student_config, options: LossOptions) -> None:
        """Raises: ConfigError (field ``relation_heads``) when the student's width D_S is not a
        multiple of the cache's R."""
        self.heads = plan.extra["relation_heads"]
        self.teacher_layer = plan.extra["relation_layer"]
        self.student_layer = student_config.num_hidden_layers
        width = student_config.hidden_size
        if width % self.heads:
            raise ConfigError(
                f"the cache's {{relation_heads}} {self.heads} does not divide the student's width {width}: "
                f"build a student whose width is a multiple of {self.heads}, or extract with other {{relation_heads}}",
                field="relation_heads",
                value=self.heads,
            )

    @property
    def projections(self) -> set[tuple[str, int]]:
        """The query, key and value projections of the student's last layer."""
        return {(projection, self.student_layer) for projection in PROJECTIONS}

    def __call__(self, outputs, values, batch: dict, world_size: int = 1, training: bool = False) -> dict:
        """{"attention_relations": loss}, a float32 scalar (``values``: ``{(projection, layer):
        [B, T_b, D_S]}`` from ``DistillationLoss.capture_values``). Raises: ModelError when a
        projection was not captured."""
        captured = values if isinstance(values, dict) else {}
        missing = [p for p in PROJECTIONS if (p, self.student_layer) not in captured]
        if missing:
            raise ModelError(
                f"the attention-relation term needs the student's {', '.join(missing)} vectors of layer "
                f"{self.student_layer}: run the forward pass inside `with loss_fn.capture_values(student) as values:` "
                "and pass values"
            )
        index = batch["relation_index"]
        valid = index >= 0
        teacher = sparse_rows.rows_of(batch, "attention_relations")
        total = 0
        for i, projection in enumerate(PROJECTIONS):
            relation = relations.self_attention_relation(
                captured[(projection, self.student_layer)], self.heads, batch["attention_mask"]
            )
            student = relations.gather_rows(relation, index)
            total = total + losses.row_kl(student, teacher[:, i], valid, world_size)
        return {self.name: total}
