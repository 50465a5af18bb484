"""hsk-cache: extract a teacher's knowledge once into a Zarr v3 cache, then train students from the
cache without the teacher (Liu et al., ACL 2021, "Marginal Utility Diminishes: Exploring the
Minimum Knowledge for BERT Knowledge Distillation").

The public API (docs/api.md, docs/architecture.md)::

    from hsk_cache import open_cache, DistillationLoss, extract, train

- ``open_cache(path) -> Cache``: manifest, tokenizer, ``cache.dataset()``, ``cache.collate``,
  ``cache.loader(batch_size, seed)``;
- ``DistillationLoss(cache.manifest, student.config, ...)``: the loss as an ``nn.Module`` that
  owns W_h; ``model_inputs`` and ``capture_values`` help run the student for it;
- ``extract(ExtractConfig(...))`` and ``train(TrainConfig(...))``: the two commands as functions.
"""

from __future__ import annotations

from hsk_cache.allocator import retain_freed_memory
from hsk_cache.config import DataConfig, DimSpec, LayerSpec, StageConfig, TokenSpec
from hsk_cache.data.cache import Cache, CacheDataset, EpochSampler, open_cache
from hsk_cache.distill.loss import DistillationLoss, DistillationOutput
from hsk_cache.errors import (
    CacheError,
    CheckpointError,
    ConfigError,
    DataError,
    DataNotFoundError,
    HskError,
    ModelError,
    StoreAccessError,
)
from hsk_cache.extraction.extract import ExtractConfig, ExtractResult
from hsk_cache.extraction.extract import run as extract
from hsk_cache.knowledge.plan import Plan, StoredKnowledge
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models.families import without_attention_dropout
from hsk_cache.models.hooks import capture_values
from hsk_cache.models.inputs import model_inputs
from hsk_cache.models.students import StudentConfig
from hsk_cache.store.manifest import Manifest
from hsk_cache.training.configs import EvalConfig, StageResult, TrainConfig, TrainResult
from hsk_cache.training.train import run as train
from hsk_cache.version import __version__

__all__ = [
    "Cache",
    "CacheDataset",
    "CacheError",
    "CheckpointError",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DataNotFoundError",
    "DimSpec",
    "DistillationLoss",
    "DistillationOutput",
    "EpochSampler",
    "EvalConfig",
    "ExtractConfig",
    "ExtractResult",
    "ExtractSpec",
    "HskError",
    "LayerSpec",
    "Manifest",
    "Plan",
    "ModelError",
    "StageConfig",
    "StageResult",
    "StoreAccessError",
    "StoredKnowledge",
    "StudentConfig",
    "TokenSpec",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "without_attention_dropout",
    "capture_values",
    "extract",
    "model_inputs",
    "open_cache",
    "retain_freed_memory",
    "train",
]
