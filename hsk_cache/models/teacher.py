"""The teacher's forward pass: once per batch, eval mode, no autograd. No files here.

``run_teacher`` returns only what the plan's selection reads (``Plan.hidden_layers_read``,
``attention_layers_read``, ``value_layer``), on the teacher's device; ``Plan.select`` then keeps
the spec's knowledge there (``teacher_knowledge``), the same numbers for extraction (stored) and
online distillation (fed to the loss). Only the selected tensors ever reach the host
(``HostCopy``): on a GPU the full [B, T, D] states and [B, H, T, T] attentions never leave it.
"""

from __future__ import annotations

import contextlib

import torch

from hsk_cache.errors import ModelError
from hsk_cache.knowledge.batch import Batch
from hsk_cache.knowledge.logits import task_logits
from hsk_cache.knowledge.plan import Plan, TeacherOutputs
from hsk_cache.models.families import returns_attention_probs
from hsk_cache.models.hooks import capture_attentions, capture_projections
from hsk_cache.models.inputs import model_inputs


def autocast(precision: str, device: str = "cpu"):
    """bf16 or fp16 autocast for ``precision`` ``bf16`` / ``fp16`` (fp16 on CUDA), else a no-op
    context (fp32, the reference)."""
    if precision in ("bf16", "fp16"):
        return torch.autocast(device_type=device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def run_teacher(model, batch: Batch, plan: Plan, precision: str = "fp32") -> TeacherOutputs:
    """One teacher forward in eval mode under ``torch.inference_mode``; outputs in float32 on the
    teacher's device (inference tensors: read them, as ``Plan.select`` does, never modify them in
    place or save them for a backward pass; ``teacher_knowledge`` returns normal tensors).

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
    needed, maps = plan.attention_layers_read(), plan.attention_maps_read()
    read = {layer: layer in maps for layer in needed}
    # hooks keep only the attention selection reads (a [CLS] row where ranking is all that reads
    # a layer), so the other [B, H, T, T] maps are freed during the forward; output_attentions
    # keeps every layer's until it ends (measured here: ~10% of an eager BERT forward, in page faults)
    hooked = attention and returns_attention_probs(model)
    with (
        torch.inference_mode(),  # no autograd bookkeeping at all: measured ~5% faster than no_grad here
        autocast(precision, device.type),
        capture_projections(model, wanted) as projections,
        capture_attentions(model, read if hooked else {}) as captured,
    ):
        out = model(
            **model_inputs(batch.to(device).as_dict(), model),
            output_hidden_states=True,
            output_attentions=attention and not hooked,
        )
    if hooked:
        probs = [captured.get(i + 1) for i in range(model.config.num_hidden_layers)]
    else:
        probs = [a if i + 1 in maps else a[:, :, :1] for i, a in enumerate(out.attentions or ())]
    if attention and any(layer > len(probs) or probs[layer - 1] is None for layer in needed):
        raise ModelError(
            f"{type(model).__name__} returned no attention probabilities: it cannot give attention knowledge or "
            "top-k tokens; use {tokens} all|cls|left|random and {knowledge} hidden_states,logits",
            field="tokens",
        )
    # only what selection reads is kept (float32, the reference precision of selection), on the device
    layers = plan.hidden_layers_read()
    hidden = tuple(h.float() if i in layers else None for i, h in enumerate(out.hidden_states))
    attentions = tuple(a.float() if i + 1 in needed else None for i, a in enumerate(probs)) if attention else None
    projections = {key: value.float() for key, value in projections.items()}
    values = projections.get(("value", plan.value_layer)) if plan.value_layer is not None else None
    logits = task_logits(out)  # QA: start and end logits stacked, [B, T, 2]
    return TeacherOutputs(hidden, attentions, values, None if logits is None else logits.float(), projections)


def teacher_knowledge(model, batch: Batch, plan: Plan, precision: str = "fp32") -> dict[str, torch.Tensor]:
    """``run_teacher`` then ``Plan.select``, both on the teacher's device: the batch's selected
    knowledge (the ``knowledge.batch`` format: token_index [B, L_k, K] int64, hidden_states
    [B, L_k, K, D] float32, ...) on that device. Raises: as ``run_teacher``."""
    batch = batch.to(next(model.parameters()).device)
    selected = plan.select(run_teacher(model, batch, plan, precision), batch)
    # a kind may hand on a view of the forward's inference tensors: copy those (small, selected),
    # so online distillation can use every target in autograd
    return {k: v.clone() if isinstance(v, torch.Tensor) and v.is_inference() else v for k, v in selected.items()}


class HostCopy:
    """A device → host copy of one batch's selected knowledge, started without waiting.

    On CUDA every tensor is copied into a fresh pinned host buffer with ``non_blocking=True`` and
    an event is recorded on the current stream: the host does not wait for the copy, goes on to
    queue the next batch's forward, and ``wait()`` (called after that) blocks on the event only.
    Tensors already on the host are taken as they are. ``nbytes``: the bytes that cross from the
    device (0 on the CPU); ``selected_bytes``: the bytes of every tensor handed over.
    """

    def __init__(self, knowledge: dict[str, torch.Tensor]) -> None:
        self.nbytes = 0
        self.selected_bytes = sum(t.numel() * t.element_size() for t in knowledge.values())
        self._event = None
        self._host = {}
        for name, t in knowledge.items():
            if t.device.type == "cpu":
                self._host[name] = t
                continue
            buffer = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)
            buffer.copy_(t, non_blocking=t.is_cuda)
            self._host[name] = buffer
            self.nbytes += t.numel() * t.element_size()
        if self.nbytes and torch.cuda.is_available() and any(t.is_cuda for t in knowledge.values()):
            self._event = torch.cuda.Event()
            self._event.record()

    def wait(self) -> dict[str, torch.Tensor]:
        """The knowledge on the host, once its copies have finished."""
        if self._event is not None:
            self._event.synchronize()
        return self._host
