"""Logits: the teacher's prediction-layer outputs, for soft targets.

Source: Hinton et al. 2015 (soft targets at a temperature τ, the τ² factor); TinyBERT Eq. 10
(prediction-layer distillation, τ = 1; MSE of the outputs for the regression task STS-B);
DistilBERT's soft-target loss.

| batch key | shape  | dtype   | content        |
|-----------|--------|---------|----------------|
| logits    | [B, C] | float32 | teacher logits (regression: C = 1, the teacher's score) |
| logits    | [B, T_b, C] | float32 | token classification: per-token logits, 0 after each example's length |
| logits    | [B, T_b, 2] | float32 | question answering: start and end logits per token, 0 after the length |

| array  | shape  | dtype   | content                                    |
|--------|--------|---------|--------------------------------------------|
| logits | [N, C] | float32 | teacher logits (never quantized: C is small) |
| logits | [N, T, C] | stored dtype | per token (token classification; QA, C = 2): every real   |
|        |           |         | token, 0 at padding, in the spec's dtype as hidden states are |
| logits_scale | [N, T] | float32 | the per-row absmax scale of int8 / float8 per-token logits |

The loss follows the plan's task type (``Plan.task_type``): soft cross-entropy at τ for
classification, the MSE to the teacher's score for regression, per-token soft cross-entropy over
the real tokens for token classification, per-label sigmoid cross-entropy at τ for multi-label
classification, and for question answering the soft cross-entropy of the start and of the end
distribution over the real tokens, averaged; each plus ``hard_label_weight`` × its gold-label loss
(``gold_loss``).
"""

from __future__ import annotations

import numpy as np
import torch

from hsk_cache.knowledge import losses
from hsk_cache.knowledge.kind import (
    ArraySpec,
    KnowledgeKind,
    LossOptions,
    Term,
    dequantized,
    pad,
    quantized,
    value_arrays,
)
from hsk_cache.tasks import types


class Logits(KnowledgeKind):
    """The teacher's classification logits (module docstring)."""

    name = "logits"
    batch_keys = ("logits",)
    stage = "prediction"

    def select(self, outputs, batch, plan) -> dict[str, torch.Tensor]:
        """logits [B, C], or [B, T_b, C] with 0 after each length (token classification; QA's
        start and end logits as C = 2)."""
        logits = task_logits(outputs)
        if types.get(plan.task_type).per_token:
            logits = logits * batch.attention_mask.to(logits.device, logits.dtype)[..., None]
        return {"logits": logits}

    def arrays(self, plan, n: int) -> list[ArraySpec]:
        """logits [N, C] float32; per token (token classification, QA) [N, T, C] in the spec's
        stored dtype, with its per-row scale for int8 / float8 (``kind.value_arrays``)."""
        if types.get(plan.task_type).per_token:
            return value_arrays("logits", (n, plan.max_length, plan.classes), plan, role="real_tokens")
        return [ArraySpec("logits", (n, plan.classes), "float32", plan.spec.codec)]

    def encode(self, knowledge: dict, plan) -> dict[str, np.ndarray]:
        """float32 rows; per token padded with 0 to T and quantized to the spec's dtype."""
        logits = knowledge["logits"].float().numpy()
        if not types.get(plan.task_type).per_token:
            return {"logits": logits.astype(np.float32)}
        out: dict[str, np.ndarray] = {}
        quantized(out, "logits", pad(logits, 1, plan.max_length, 0.0).astype(np.float32), plan.spec.dtype)
        return out

    def decode(self, rows: dict[str, np.ndarray], plan, width: int) -> dict[str, torch.Tensor]:
        """float32 [B, C], or [B, T_b, C] cut to the batch's width ``width`` (dequantized)."""
        if not types.get(plan.task_type).per_token:
            return {"logits": torch.from_numpy(rows["logits"].astype(np.float32))}
        cut = {name: values[:, :width] for name, values in rows.items() if name.startswith("logits")}
        return {"logits": torch.from_numpy(np.ascontiguousarray(dequantized(cut, "logits", plan.spec.dtype)))}

    def term(self, plan, student_config, options: LossOptions) -> LogitsTerm:
        """The task type's prediction-layer loss (module docstring), plus the weighted gold-label loss."""
        return LogitsTerm(options, plan.task_type)


def task_logits(outputs) -> torch.Tensor:
    """A task model's outputs as one tensor: ``logits``, or for question answering its
    ``start_logits`` and ``end_logits`` [B, T] stacked to [B, T, 2]."""
    logits = getattr(outputs, "logits", None)
    if logits is None and getattr(outputs, "start_logits", None) is not None:
        return torch.stack([outputs.start_logits, outputs.end_logits], dim=-1)
    return logits


def gold_loss(
    task_type: str, logits: torch.Tensor, labels: torch.Tensor, world_size: int = 1, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The gold-label loss of a task type's outputs (fine-tuning and the ``labels`` term):
    cross-entropy ([B, C] logits, [B] ids), MSE (regression: [B, 1] outputs, [B] scores),
    binary cross-entropy (multi-label: [B, C], [B, C] multi-hot), per-token cross-entropy at
    the labelled tokens ([B, T, C], [B, T] with −100 elsewhere), or QA's mean of the start and end
    cross-entropies over the real tokens ``mask`` [B, T] ([B, T, 2] logits, [B, 2] positions)."""
    task = types.get(task_type)
    if task.name == "regression":
        return losses.prediction_mse(logits, labels, world_size)
    if task == types.MULTI_LABEL:
        return losses.binary_cross_entropy(logits, labels, world_size)
    if task == types.QUESTION_ANSWERING:
        return losses.span_hard_cross_entropy(logits, labels, mask, world_size)
    if task.per_token:
        return losses.token_hard_cross_entropy(logits, labels, world_size)
    return losses.hard_cross_entropy(logits, labels, world_size)


class LogitsTerm(Term):
    """The prediction-layer loss of ``task_type`` (module docstring): τ² · soft cross-entropy at
    temperature τ (Hinton et al. 2015), per token for token classification, or the MSE to the
    teacher's score for regression (TinyBERT, STS-B); plus ``hard_label_weight`` × the gold-label
    loss (``gold_loss``, reported as term ``labels``)."""

    name = "logits"
    stage = "prediction"

    def __init__(self, options: LossOptions, task_type: str = "classification") -> None:
        self.temperature, self.hard_label_weight = options.temperature, options.hard_label_weight
        self.task_type = task_type

    def __call__(self, outputs, values, batch: dict, world_size: int = 1, training: bool = False) -> dict:
        """{"logits": loss} and {"labels": weighted gold-label loss} when the weight is > 0."""
        logits, teacher = task_logits(outputs), batch["logits"]
        task = types.get(self.task_type)
        if task.name == "regression":
            loss = losses.prediction_mse(logits, teacher, world_size)
        elif task == types.MULTI_LABEL:
            loss = losses.sigmoid_soft_cross_entropy(logits, teacher, self.temperature, world_size)
        elif task == types.QUESTION_ANSWERING:
            mask = batch["attention_mask"]
            loss = losses.span_soft_cross_entropy(logits, teacher, mask, self.temperature, world_size)
        elif task.per_token:
            loss = losses.token_soft_cross_entropy(
                logits, teacher, batch["attention_mask"], self.temperature, world_size
            )
        else:
            loss = losses.soft_cross_entropy(logits, teacher, self.temperature, world_size)
        out = {self.name: loss}
        if self.hard_label_weight:
            out["labels"] = self.hard_label_weight * gold_loss(
                self.task_type, logits, batch["labels"], world_size, batch["attention_mask"]
            )
        return out
