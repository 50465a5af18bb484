"""What one training step minimizes: ``fn(model, batch, world_size=1) -> scalar loss``, batch a batch dict.

- ``distillation(loss_fn, terms)``: the student's forward with the outputs ``loss_fn`` needs,
  then ``DistillationLoss`` on the chosen terms (``hsk train``'s hidden and prediction stages);
- ``labels``: the task type's loss on gold labels (fine-tuning; the no-distillation baseline).
"""

from __future__ import annotations

import torch

from hsk_cache.distill.loss import DistillationLoss
from hsk_cache.knowledge.logits import gold_loss, task_logits
from hsk_cache.models.inputs import model_inputs
from hsk_cache.tasks import types


def distillation(loss_fn: DistillationLoss, terms=None, student_layers=None):
    """A step function computing ``loss_fn`` on ``terms`` (default: all it was built with), on
    the layer pairs of ``student_layers`` only when given (a progressive stage,
    ``DistillationLoss.only_layers``)."""

    def step(model, batch: dict, world_size: int = 1) -> torch.Tensor:
        with loss_fn.only_layers(student_layers), loss_fn.capture_values(model, terms) as values:
            outputs = model(**model_inputs(batch, model), **loss_fn.output_flags(terms))
        return loss_fn(outputs, batch, values, terms, world_size=world_size).loss

    return step


def labels(model, batch: dict, world_size: int = 1) -> torch.Tensor:
    """The gold-label loss of the model's task type (``knowledge.logits.gold_loss``:
    cross-entropy, MSE for regression, per-token cross-entropy for token classification) on
    gold labels (fine-tuning; the no-distillation baseline); ``world_size``: the mean over the
    global batch of that many data-parallel ranks."""
    task_type = types.of_model(model).name
    logits = task_logits(model(**model_inputs(batch, model)))
    return gold_loss(task_type, logits, batch["labels"], world_size, batch["attention_mask"])
