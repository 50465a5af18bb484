"""Logits: the teacher's prediction-layer outputs, for soft targets.

Source: Hinton et al. 2015 (soft targets at a temperature τ, the τ² factor); TinyBERT Eq. 10
(prediction-layer distillation, τ = 1); DistilBERT's soft-target loss.

| batch key | shape  | dtype   | content        |
|-----------|--------|---------|----------------|
| logits    | [B, C] | float32 | teacher logits |

| array  | shape  | dtype   | content                                    |
|--------|--------|---------|--------------------------------------------|
| logits | [N, C] | float32 | teacher logits (never quantized: C is small) |
"""

from __future__ import annotations

import numpy as np
import torch

from hsk_cache.knowledge import losses
from hsk_cache.knowledge.kind import ArraySpec, KnowledgeKind, LossOptions, Term


class Logits(KnowledgeKind):
    """The teacher's classification logits (module docstring)."""

    name = "logits"
    batch_keys = ("logits",)
    stage = "prediction"

    def select(self, outputs, batch, plan) -> dict[str, torch.Tensor]:
        """logits [B, C]."""
        return {"logits": outputs.logits}

    def arrays(self, plan, n: int) -> list[ArraySpec]:
        """logits [N, C] float32."""
        return [ArraySpec("logits", (n, plan.classes), "float32", plan.spec.codec)]

    def encode(self, knowledge: dict, plan) -> dict[str, np.ndarray]:
        """float32 rows."""
        return {"logits": knowledge["logits"].numpy().astype(np.float32)}

    def decode(self, rows: dict[str, np.ndarray], plan, width: int) -> dict[str, torch.Tensor]:
        """float32 [B, C]."""
        return {"logits": torch.from_numpy(rows["logits"].astype(np.float32))}

    def term(self, plan, student_config, options: LossOptions) -> LogitsTerm:
        """τ² · soft cross-entropy, plus the weighted gold-label cross-entropy."""
        return LogitsTerm(options)


class LogitsTerm(Term):
    """τ² · soft cross-entropy at temperature τ (Hinton et al. 2015), plus
    ``hard_label_weight`` × cross-entropy with the gold labels (reported as term ``labels``)."""

    name = "logits"
    stage = "prediction"

    def __init__(self, options: LossOptions) -> None:
        self.temperature, self.hard_label_weight = options.temperature, options.hard_label_weight

    def __call__(self, outputs, values, batch: dict, world_size: int = 1, training: bool = False) -> dict:
        """{"logits": loss} and {"labels": weighted gold-label loss} when the weight is > 0."""
        logits = outputs.logits
        out = {self.name: losses.soft_cross_entropy(logits, batch["logits"], self.temperature, world_size)}
        if self.hard_label_weight:
            out["labels"] = self.hard_label_weight * losses.hard_cross_entropy(logits, batch["labels"], world_size)
        return out
