"""The teacher's forward pass: once per batch, eval mode, no autograd. No files here.

``run_teacher`` returns only what the plan's selection reads (``Plan.hidden_layers_read``,
``attention_layers_read``, ``value_layer``); ``Plan.select`` then keeps the spec's knowledge, the
same numbers for extraction (stored) and online distillation (fed to the loss).
"""

from __future__ import annotations

import contextlib

import torch

from hsk_cache.errors import ModelError
from hsk_cache.knowledge.batch import Batch
from hsk_cache.knowledge.plan import Plan, TeacherOutputs
from hsk_cache.models.hooks import capture_projections
from hsk_cache.models.inputs import model_inputs


def autocast(precision: str, device: str = "cpu"):
    """bf16 or fp16 autocast for ``precision`` ``bf16`` / ``fp16`` (fp16 on CUDA), else a no-op
    context (fp32, the reference)."""
    if precision in ("bf16", "fp16"):
        return torch.autocast(device_type=device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def run_teacher(model, batch: Batch, plan: Plan, precision: str = "fp32") -> TeacherOutputs:
    """One teacher forward in eval mode without autograd; outputs in float32 on the CPU.

    Args:
        model: a transformers encoder (eager attention when the plan needs attention).
        batch: the student-side ``Batch`` ([B, T_b] inputs).
        plan: the resolved ``Plan``: which layers, attentions and values selection reads.
        precision: ``fp32`` (the reference), ``bf16`` or ``fp16`` (autocast).
    Returns: ``TeacherOutputs`` with only the entries selection reads (the rest None).
    Raises: ModelError when attention knowledge is needed and the model returns none.
    """
    model.eval()
    device = next(model.parameters()).device
    attention = plan.spec.needs_attention
    wanted = plan.projections_read() | ({("value", plan.value_layer)} if plan.value_layer is not None else set())
    with (
        torch.no_grad(),
        autocast(precision, device.type),
        capture_projections(model, wanted) as projections,
    ):
        out = model(
            **model_inputs(batch.to(device).as_dict(), model), output_hidden_states=True, output_attentions=attention
        )
    if attention and not out.attentions:
        raise ModelError(
            f"{type(model).__name__} returned no attention probabilities: it cannot give attention knowledge or "
            "top-k tokens; use {tokens} all|cls|left|random and {knowledge} hidden_states,logits",
            field="tokens",
        )
    # only what selection reads leaves the device (the rest would be wasted copies on a GPU)
    layers = plan.hidden_layers_read()
    hidden = tuple(h.float().cpu() if i in layers else None for i, h in enumerate(out.hidden_states))
    needed = plan.attention_layers_read()
    attentions = (
        tuple(a.float().cpu() if i + 1 in needed else None for i, a in enumerate(out.attentions)) if attention else None
    )
    projections = {key: value.float().cpu() for key, value in projections.items()}
    values = projections.get(("value", plan.value_layer)) if plan.value_layer is not None else None
    logits = getattr(out, "logits", None)
    return TeacherOutputs(hidden, attentions, values, None if logits is None else logits.float().cpu(), projections)
