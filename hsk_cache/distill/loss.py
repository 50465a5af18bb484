"""``DistillationLoss``: the distillation objective as an ``nn.Module`` for any training loop.

It compares what a transformers student returns (``output_hidden_states`` /
``output_attentions``, plus the value vectors a hook captures) with the teacher knowledge in a
batch (``knowledge`` module's batch format: from ``Cache.collate``, ``Cache.loader`` or an online
teacher). It owns W_h, the projection from the student's width to the teacher's, as a parameter,
so optimizers, DDP wrappers and checkpoints see it. ``hsk train`` uses this same module.

Typical use::

    loss_fn = DistillationLoss(cache.manifest, student.config)
    with loss_fn.capture_values(student) as values:          # no-op without value relation
        outputs = student(**model_inputs(batch, student), **loss_fn.output_flags())
    loss, terms = loss_fn(outputs, batch, values)
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch

from hsk_cache.errors import ConfigError, ModelError
from hsk_cache.knowledge import losses, relations
from hsk_cache.knowledge.batch import StoredKnowledge
from hsk_cache.models import hooks
from hsk_cache.select.depth import layer_map as resolve_layer_map
from hsk_cache.select.length import gather_tokens

log = logging.getLogger(__name__)

TERMS = ("hidden_states", "attention_probs", "value_relation", "logits")
INTERMEDIATE_TERMS = TERMS[:3]
WIDTH_TARGETS = ("zero", "ignore")
ATTENTION_LOSSES = ("kl", "mse")
HEAD_MAPS = ("strict", "mean", "relation")


class DistillationOutput(NamedTuple):
    """loss: the scalar float32 sum of the active terms. terms: each term's scalar value
    (``hidden_states``, ``attention_probs``, ``value_relation``, ``logits``, ``labels``)."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]


def _stored(source) -> StoredKnowledge:
    if isinstance(source, StoredKnowledge):
        return source
    if hasattr(source, "stored"):  # a Cache or a training source
        return source.stored
    return StoredKnowledge.of_manifest(source)


class DistillationLoss(torch.nn.Module):
    """The distillation loss of one student against stored (or online) teacher knowledge.

    Terms, each summed over its layer pairs:
    - ``hidden_states``: Σ_{(s,t) ∈ layer_map} MSE(h_S^s W_h, h_T^t) over the kept tokens (and
      dimensions; ``width_target``), TinyBERT Eq. 7 restricted to the kept knowledge as in
      Liu et al. 2021 §4 (``losses.hidden_mse``);
    - ``attention_probs``: Σ KL(A_T ‖ A_S) (MiniLM Eq. 3) or MSE (TinyBERT Eq. 6,
      ``attention_loss="mse"``) of the kept query rows;
    - ``value_relation``: KL(VR_T ‖ VR_S) of the student's last layer (MiniLM Eq. 5);
    - ``logits``: τ² · soft cross-entropy at temperature τ (Hinton et al. 2015), plus
      ``hard_label_weight`` × cross-entropy with the gold labels (term ``labels``).

    Args:
        knowledge: a cache's ``Manifest``, a ``Cache``, or a ``StoredKnowledge``.
        student_config: the student's transformers config (or the model).
        terms: the terms to use; default every one the knowledge supports. ``forward`` may pick
            a subset per call (``hsk train``'s stages do).
        layer_map / attention_map: ``uniform``, ``last``, ``first`` or ``s:t,…`` (student layer:
            teacher layer), resolved against the stored layers (``select.depth.layer_map``).
        keep_top_pairs: keep only the top N student layers of the map.
        head_map: ``strict`` (equal head counts), ``mean`` (compare head-averaged rows) or
            ``relation`` (value relation: split the student's values into the teacher's head
            count, MiniLMv2's relation heads).
        width_target: ``zero`` (dropped dimensions of kept tokens are targets of 0, Liu et al.
            2021 §4.3) or ``ignore`` (left out of the MSE).
        temperature: τ > 0 of the logits term. hard_label_weight: ≥ 0.
    Raises: ConfigError for unknown options, a term the knowledge lacks, a map needing an
        unstored layer, or head counts the head_map cannot reconcile.

    W_h (``projection``, a Linear [D_S → D_T]) exists when the widths differ and hidden states
    are distilled; it trains with the student.
    """

    def __init__(
        self,
        knowledge,
        student_config,
        *,
        terms=None,
        layer_map: str = "uniform",
        attention_map: str = "uniform",
        keep_top_pairs: int | None = None,
        head_map: str = "strict",
        width_target: str = "zero",
        attention_loss: str = "kl",
        temperature: float = 1.0,
        hard_label_weight: float = 0.0,
    ) -> None:
        super().__init__()
        stored = self.stored = _stored(knowledge)
        config = getattr(student_config, "config", student_config)
        if width_target not in WIDTH_TARGETS:
            raise ConfigError(f"unknown --width-target {width_target!r}: use zero or ignore")
        if attention_loss not in ATTENTION_LOSSES:
            raise ConfigError(f"unknown --attention-loss {attention_loss!r}: use kl or mse")
        if not temperature > 0 or hard_label_weight < 0:
            raise ConfigError(
                f"--temperature {temperature} / --hard-label-weight {hard_label_weight}: "
                "use a temperature > 0 and a weight ≥ 0"
            )
        available = tuple(t for t in TERMS if t in stored.knowledge)
        self.terms = available if terms is None else tuple(t for t in TERMS if t in terms)
        self._check_terms(terms, available)
        s_layers = config.num_hidden_layers
        self.hidden_map: dict[int, int] = {}
        self.attention_map: dict[int, int] = {}
        self.value_relation: tuple[int, int] | None = None
        if "hidden_states" in self.terms:
            self.hidden_map = resolve_layer_map(
                layer_map, s_layers, stored.teacher_layers, stored.layers, keep_top_pairs
            )
        if "attention_probs" in self.terms:
            self.attention_map = resolve_layer_map(
                attention_map, s_layers, stored.teacher_layers, stored.attention_layers, keep_top_pairs
            )
            self.attention_map.pop(0, None)  # the embedding layer has no attention
        if "value_relation" in self.terms:
            self.value_relation = (s_layers, stored.value_relation_layer)
        check_heads(config, stored.teacher_heads, head_map, bool(self.attention_map), bool(self.value_relation))
        self.student_heads = config.num_attention_heads
        self.head_map, self.width_target, self.attention_loss = head_map, width_target, attention_loss
        self.temperature, self.hard_label_weight = temperature, hard_label_weight
        widths_differ = config.hidden_size != stored.teacher_hidden_size
        self.projection = (
            torch.nn.Linear(config.hidden_size, stored.teacher_hidden_size)
            if self.hidden_map and widths_differ
            else None
        )
        self._checked_dropout = False

    def _check_terms(self, asked, available) -> None:
        unknown = set(asked or ()) - set(TERMS)
        if unknown:
            raise ConfigError(f"unknown distillation term(s) {sorted(unknown)}: use {', '.join(TERMS)}")
        missing = [t for t in self.terms if t not in available]
        if missing:
            raise ConfigError(
                f"the knowledge holds no {', '.join(missing)} (it holds {', '.join(self.stored.knowledge)}): "
                f"extract with --knowledge {','.join((*self.stored.knowledge, *missing))} or drop the term"
            )
        if not self.terms:
            raise ConfigError("no distillation term: the knowledge holds none of " + ", ".join(TERMS))

    def _active(self, terms) -> tuple[str, ...]:
        if terms is None:
            return self.terms
        extra = set(terms) - set(self.terms)
        if extra:
            raise ConfigError(f"term(s) {sorted(extra)} were not set up in this loss (it has {', '.join(self.terms)})")
        return tuple(t for t in self.terms if t in terms)

    def output_flags(self, terms=None) -> dict[str, bool]:
        """The ``output_hidden_states`` / ``output_attentions`` flags the student's forward needs."""
        active = self._active(terms)
        return {
            "output_hidden_states": "hidden_states" in active and bool(self.hidden_map),
            "output_attentions": "attention_probs" in active and bool(self.attention_map),
        }

    @property
    def value_layer(self) -> int | None:
        """The student layer (1-based) whose value vectors the value-relation term reads, or None."""
        return self.value_relation[0] if self.value_relation else None

    def capture_values(self, model, terms=None):
        """Context manager: captures the student's value vectors for the value-relation term
        (``hooks.capture_values`` on ``value_layer``); yields an empty list when not needed."""
        needed = "value_relation" in self._active(terms)
        return hooks.capture_values(model, self.value_layer if needed else None)

    def forward(self, student_outputs, batch: dict, values=None, terms=None) -> DistillationOutput:
        """The loss of one batch.

        Args:
            student_outputs: the student's transformers output, with ``hidden_states`` (L_S + 1
                entries [B, T_b, D_S]) and ``attentions`` (L_S entries [B, H, T_b, T_b]) when the
                terms need them (``output_flags``), and ``logits`` [B, C].
            batch: the batch dict (teacher knowledge and attention_mask; labels for the hard term).
            values: what ``capture_values`` captured ([B, T_b, D_S] value vectors), when
                the value-relation term is active.
            terms: a subset of the terms set up (default: all of them).
        Returns: DistillationOutput(loss, terms), float32 scalars.
        Raises: ModelError when the student's output lacks what a term needs.
        """
        active = self._active(terms)
        parts: dict[str, torch.Tensor] = {}
        if "hidden_states" in active and self.hidden_map:
            parts["hidden_states"] = self._hidden(self._need(student_outputs, "hidden_states"), batch)
        if "attention_probs" in active and self.attention_map:
            parts["attention_probs"] = self._attention(self._need(student_outputs, "attentions"), batch)
        if "value_relation" in active and self.value_relation:
            if not values:
                raise ModelError(
                    "the value-relation term needs the student's value vectors: run the forward pass "
                    "inside `with loss_fn.capture_values(student) as values:` and pass values"
                )
            parts["value_relation"] = self._value_relation(values[-1], batch)
        if "logits" in active:
            logits = student_outputs.logits
            parts["logits"] = losses.soft_cross_entropy(logits, batch["logits"], self.temperature)
            if self.hard_label_weight:
                parts["labels"] = self.hard_label_weight * losses.hard_cross_entropy(logits, batch["labels"])
        total = torch.stack(list(parts.values())).sum() if parts else torch.zeros(())
        return DistillationOutput(total, parts)

    def _need(self, outputs, name: str):
        found = getattr(outputs, name, None)
        if not found:
            flag = "output_hidden_states" if name == "hidden_states" else "output_attentions"
            fix = f"call the student with {flag}=True (loss_fn.output_flags())"
            if name == "attentions":
                fix += " and load it with attn_implementation='eager'"
            raise ModelError(f"the student's output has no {name}: {fix}")
        return found

    def _hidden(self, hidden_states, batch) -> torch.Tensor:
        total = 0
        for s, t in self.hidden_map.items():
            i = self.stored.layers.index(t)
            index = batch["token_index"][:, i]
            student = gather_tokens(hidden_states[s], index)
            if self.projection is not None:
                student = self.projection(student)
            mask = index >= 0
            if self.width_target == "ignore" and batch.get("hidden_mask") is not None:
                mask = batch["hidden_mask"][:, i]
            total = total + losses.hidden_mse(student, batch["hidden_states"][:, i], mask)
        return total

    def _attention(self, attentions, batch) -> torch.Tensor:
        if self.training and not self._checked_dropout and attentions[0].requires_grad:
            self._checked_dropout = True  # once: the rows of a student in train mode
            rows = attentions[0].detach().float().sum(-1)
            if not torch.allclose(rows[rows > 0], torch.ones_like(rows[rows > 0]), atol=1e-2):
                log.warning(
                    "the student's attention rows do not sum to 1 (attention dropout?): build the student "
                    "with families.without_attention_dropout(student) for attention distillation"
                )
        loss_fn = losses.distribution_kl if self.attention_loss == "kl" else losses.distribution_mse
        total = 0
        for s, t in self.attention_map.items():
            i = self.stored.attention_layers.index(t)
            index = batch["attention_index"][:, i]
            student = relations.gather_rows(attentions[s - 1], index)
            student, teacher = self._heads(student, batch["attention_probs"][:, i])
            total = total + loss_fn(student, teacher, index >= 0)
        return total

    def _value_relation(self, values, batch) -> torch.Tensor:
        heads = self.stored.teacher_heads if self.head_map == "relation" else self.student_heads
        relation = relations.value_relation(values, heads, batch["attention_mask"])
        student = relations.gather_rows(relation, batch["value_index"])
        student, teacher = self._heads(student, batch["value_relation"])
        return losses.distribution_kl(student, teacher, batch["value_index"] >= 0)

    @staticmethod
    def _heads(student: torch.Tensor, teacher: torch.Tensor):
        if student.shape[1] == teacher.shape[1]:
            return student, teacher
        return student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)  # head_map mean (checked up front)

    def extra_repr(self) -> str:
        return (
            f"terms={self.terms}, hidden_map={self.hidden_map}, attention_map={self.attention_map}, "
            f"value_relation={self.value_relation}, temperature={self.temperature}"
        )


def check_heads(student_config, teacher_heads: int, head_map: str, attention: bool, value_relation: bool) -> None:
    """Raises ConfigError when head counts differ and ``head_map`` cannot reconcile them."""
    if head_map not in HEAD_MAPS:
        raise ConfigError(f"unknown --head-map {head_map!r}: use one of {', '.join(HEAD_MAPS)}")
    heads = student_config.num_attention_heads
    if heads == teacher_heads:
        return
    if attention and head_map != "mean":
        raise ConfigError(
            f"the student has {heads} attention heads, the cached attention {teacher_heads}: "
            "pass --head-map mean (compare head-averaged attention) or build a student with matching heads"
        )
    if value_relation and head_map == "strict":
        raise ConfigError(
            f"value relation with {heads} student heads vs {teacher_heads} teacher heads: pass --head-map relation "
            f"(split the student's values into {teacher_heads} relation heads) or --head-map mean"
        )
    if value_relation and head_map == "relation" and student_config.hidden_size % teacher_heads:
        raise ConfigError(
            f"--head-map relation: student width {student_config.hidden_size} "
            f"is not a multiple of {teacher_heads} heads"
        )
