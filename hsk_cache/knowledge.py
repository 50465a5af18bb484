"""Teacher knowledge as tensors, and the batch format every training path shares.

No model code and no storage code here: ``teacher`` produces ``Knowledge`` (online), ``store``
encodes and decodes it (cache), and the losses read the batch dicts built from it.

A *batch* is a dict of tensors (B examples, T_b the longest in the batch):

| key             | shape               | dtype   | content                                        |
|-----------------|---------------------|---------|------------------------------------------------|
| input_ids       | [B, T_b]            | int64   | token ids, the pad id after each example        |
| attention_mask  | [B, T_b]            | int64   | 1 = real token                                  |
| token_type_ids  | [B, T_b]            | int64   | segment ids (when the tokenizer makes them)     |
| labels          | [B]                 | int64   | gold class ids                                  |
| example_ids     | [B]                 | int64   | row in the source split                         |
| token_index     | [B, L_k, K]         | int64   | kept token positions, −1 = none                 |
| hidden_states   | [B, L_k, K, D]      | float32 | teacher states at kept tokens, 0 where dropped  |
| hidden_mask     | [B, L_k, K, D]      | bool    | kept elements (only when width is selected)     |
| attention_index | [B, L_a, K]         | int64   | kept query positions, −1 = none                 |
| attention_probs | [B, L_a, H, K, T_b] | float32 | teacher attention rows of the kept queries      |
| value_index     | [B, K]              | int64   | kept query positions, −1 = none                 |
| value_relation  | [B, H, K, T_b]      | float32 | softmax(V·Vᵀ/√d_head) rows (MiniLM)             |
| logits          | [B, C]              | float32 | teacher logits                                  |

Which teacher layers L_k and L_a stand for is not in the batch but in ``StoredKnowledge``
(from the cache's manifest, or from an online teacher's plan).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, fields

import torch

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
KNOWLEDGE_KEYS = (
    "token_index",
    "hidden_states",
    "hidden_mask",
    "attention_index",
    "attention_probs",
    "value_index",
    "value_relation",
    "logits",
)


@dataclass
class Knowledge:
    """The selected teacher knowledge of one batch; absent kinds are None.

    layers: teacher hidden-state layers kept (L_k). token_index: [B, L_k, K] int64, −1 = none.
    hidden_states: [B, L_k, K, D] float32, zero at dropped tokens and dimensions. hidden_mask:
    [B, L_k, K, D] bool kept elements, or None when every dimension of a kept token is kept.
    attention_layers: teacher layers (1..L) of attention_probs [B, L_a, H, K, T] float32 (rows of
    the queries attention_index [B, L_a, K]). value_relation_layer: layer of value_relation
    [B, H, K, T] float32 (rows of the queries value_index [B, K]). logits: [B, C] float32.
    """

    layers: tuple[int, ...] = ()
    token_index: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None
    hidden_mask: torch.Tensor | None = None
    attention_layers: tuple[int, ...] = ()
    attention_index: torch.Tensor | None = None
    attention_probs: torch.Tensor | None = None
    value_relation_layer: int | None = None
    value_index: torch.Tensor | None = None
    value_relation: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    def to(self, device) -> Knowledge:
        """A copy with every tensor on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return Knowledge(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in moved.items()})

    def tensors(self) -> dict[str, torch.Tensor]:
        """The present tensors under their batch keys (``KNOWLEDGE_KEYS``)."""
        return {key: getattr(self, key) for key in KNOWLEDGE_KEYS if getattr(self, key) is not None}


@dataclass(frozen=True)
class StoredKnowledge:
    """What a knowledge source provides: the kinds (canonical order of ``config.KNOWLEDGE_KINDS``)
    and the teacher layers behind the batch's layer axes, with the teacher's sizes.

    layers: hidden-state layers (0 = embeddings) of ``hidden_states``' L_k axis.
    attention_layers: layers (1..L) of ``attention_probs``' L_a axis. value_relation_layer: the
    layer of ``value_relation`` or None. teacher_layers L, teacher_hidden_size D,
    teacher_heads H: the teacher's depth, width and attention heads.
    """

    knowledge: tuple[str, ...]
    layers: tuple[int, ...]
    attention_layers: tuple[int, ...]
    value_relation_layer: int | None
    teacher_layers: int
    teacher_hidden_size: int
    teacher_heads: int

    @classmethod
    def of_manifest(cls, manifest) -> StoredKnowledge:
        """From a cache's ``store.manifest.Manifest``."""
        return cls(
            tuple(manifest.knowledge),
            tuple(manifest.layers),
            tuple(manifest.attention_layers),
            manifest.value_relation_layer,
            manifest.teacher.num_layers,
            manifest.teacher.hidden_size,
            manifest.teacher.num_heads,
        )


def model_inputs(batch: dict, model=None) -> dict:
    """The model's inputs from a batch dict: input_ids, attention_mask and token_type_ids, minus
    those ``model.forward`` does not take (DistilBERT and MPNet take no token_type_ids). A
    wrapped model (DDP, DataParallel: ``model.module``) is judged by the model it wraps."""
    while model is not None and not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    accepted = _accepted_inputs(type(model)) if model is not None else INPUT_KEYS
    return {key: batch[key] for key in accepted if key in batch}


@functools.lru_cache(maxsize=64)
def _accepted_inputs(model_class) -> tuple[str, ...]:
    parameters = inspect.signature(model_class.forward).parameters
    return tuple(key for key in INPUT_KEYS if key in parameters)
