"""What each training stage minimizes, given the student and one batch of teacher knowledge.

Every objective is ``fn(student, batch, knowledge) -> scalar loss``: it runs the student forward
itself, asking only for the outputs it needs (hidden states, attentions, value projections).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hsk_cache import losses, relations
from hsk_cache.errors import ConfigError
from hsk_cache.select.length import gather_tokens

WIDTH_TARGETS = ("zero", "ignore")
ATTENTION_LOSSES = ("kl", "mse")
HEAD_MAPS = ("strict", "mean", "relation")


@dataclass(frozen=True)
class HiddenObjective:
    """The intermediate-layer stage. hidden_map / attention_map: {student layer: teacher layer};
    value_relation: (student layer, teacher layer) or None; projection: W_h [D_S → D_T] or None.

    width_target: ``zero`` compares dropped dimensions of kept tokens with zero (Liu et al. 2021),
    ``ignore`` leaves them out. head_map: how differing head counts meet — ``strict`` (equal
    counts required), ``mean`` (compare head-averaged distributions), ``relation`` (value relation
    only: split the student's values into the teacher's head count, as MiniLMv2's relation heads).
    """

    hidden_map: dict[int, int] = field(default_factory=dict)
    attention_map: dict[int, int] = field(default_factory=dict)
    value_relation: tuple[int, int] | None = None
    projection: torch.nn.Module | None = None
    width_target: str = "zero"
    attention_loss: str = "kl"
    head_map: str = "strict"
    teacher_heads: int = 0

    def __call__(self, model, batch, knowledge) -> torch.Tensor:
        layer = self.value_relation[0] if self.value_relation else None
        with relations.capture_values(model, layer) as values:
            out = model(**batch.model_inputs(), output_hidden_states=bool(self.hidden_map),
                        output_attentions=bool(self.attention_map))
        total = torch.zeros((), dtype=torch.float32)
        for s, t in self.hidden_map.items():
            i = knowledge.layers.index(t)
            index = knowledge.token_index[:, i]
            student = gather_tokens(out.hidden_states[s], index)
            if self.projection is not None:
                student = self.projection(student)
            mask = index >= 0
            if self.width_target == "ignore" and knowledge.hidden_mask is not None:
                mask = knowledge.hidden_mask[:, i]
            total = total + losses.hidden_mse(student, knowledge.hidden_states[:, i], mask)
        attention_fn = losses.distribution_kl if self.attention_loss == "kl" else losses.distribution_mse
        for s, t in self.attention_map.items():
            i = knowledge.attention_layers.index(t)
            index = knowledge.attention_index[:, i]
            student = relations.gather_rows(out.attentions[s - 1], index)
            student, teacher = self._heads(student, knowledge.attention_probs[:, i])
            total = total + attention_fn(student, teacher, index >= 0)
        if self.value_relation is not None:
            heads = self.teacher_heads if self.head_map == "relation" else model.config.num_attention_heads
            relation = relations.value_relation(values[0], heads, batch.attention_mask)
            student = relations.gather_rows(relation, knowledge.value_index)
            student, teacher = self._heads(student, knowledge.value_relation)
            total = total + losses.distribution_kl(student, teacher, knowledge.value_index >= 0)
        return total

    def _heads(self, student: torch.Tensor, teacher: torch.Tensor):
        if student.shape[1] == teacher.shape[1]:
            return student, teacher
        return student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)  # head_map mean (checked up front)


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
            f"--head-map relation: student width {student_config.hidden_size} is not a multiple of {teacher_heads} heads"
        )


def prediction(temperature: float, hard_weight: float):
    """Soft cross-entropy on teacher logits at temperature τ, plus hard_weight × gold-label CE."""

    def objective(model, batch, knowledge):
        logits = model(**batch.model_inputs()).logits
        loss = losses.soft_cross_entropy(logits, knowledge.logits, temperature)
        if hard_weight:
            loss = loss + hard_weight * losses.hard_cross_entropy(logits, batch.labels)
        return loss

    return objective


def labels(model, batch, knowledge):
    """Cross-entropy on gold labels (fine-tuning; the no-distillation baseline)."""
    return losses.hard_cross_entropy(model(**batch.model_inputs()).logits, batch.labels)
