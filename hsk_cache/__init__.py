"""hsk-cache: extract a fine-tuned teacher's knowledge once into a Zarr v3 cache, then train
students from the cache without the teacher (Liu et al., ACL 2021, "Marginal Utility
Diminishes: Exploring the Minimum Knowledge for BERT Knowledge Distillation").

The public API (docs/api.md)::

    from hsk_cache import open_cache, DistillationLoss

- ``open_cache(path) -> Cache``: manifest, tokenizer, ``cache.dataset()``, ``cache.collate``,
  ``cache.loader(batch_size, seed)``;
- ``DistillationLoss(cache.manifest, student.config, ...)``: the loss as an ``nn.Module`` that
  owns W_h; ``model_inputs`` and ``capture_values`` help run the student for it.

Names are imported on first use, so ``import hsk_cache`` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "open_cache": "hsk_cache.cache",
    "Cache": "hsk_cache.cache",
    "CacheDataset": "hsk_cache.cache",
    "EpochSampler": "hsk_cache.cache",
    "DistillationLoss": "hsk_cache.distill",
    "DistillationOutput": "hsk_cache.distill",
    "model_inputs": "hsk_cache.knowledge",
    "capture_values": "hsk_cache.relations",
    "without_attention_dropout": "hsk_cache.families",
    "Manifest": "hsk_cache.store.manifest",
    "StoredKnowledge": "hsk_cache.knowledge",
    "CacheError": "hsk_cache.errors",
    "ConfigError": "hsk_cache.errors",
    "ModelError": "hsk_cache.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hsk_cache' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
