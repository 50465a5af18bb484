"""The student's and teacher's inputs from a batch dict."""

from __future__ import annotations

import functools
import inspect

from hsk_cache.knowledge.batch import INPUT_KEYS


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
