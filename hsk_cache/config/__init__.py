"""Frozen, validated configuration: parsed once at the boundary, trusted everywhere after.

``specs``: what extraction selects (depth, length, width, kinds, storage); ``run``: data, stages,
devices, precisions, the checkpoint interval and storage options.
"""

from hsk_cache.config.run import (
    DEFAULT_SAVE_EVERY,
    EVAL_METRICS,
    PRECISIONS,
    DataConfig,
    Interval,
    StageConfig,
    check_device,
    check_precision,
    parse_storage_options,
)
from hsk_cache.config.specs import (
    CODECS,
    DIM_STRATEGIES,
    DTYPES,
    KNOWLEDGE_KINDS,
    TOKEN_STRATEGIES,
    DimSpec,
    ExtractSpec,
    LayerSpec,
    TokenSpec,
)

__all__ = [
    "CODECS",
    "DEFAULT_SAVE_EVERY",
    "DIM_STRATEGIES",
    "DTYPES",
    "EVAL_METRICS",
    "KNOWLEDGE_KINDS",
    "PRECISIONS",
    "TOKEN_STRATEGIES",
    "DataConfig",
    "DimSpec",
    "ExtractSpec",
    "Interval",
    "LayerSpec",
    "StageConfig",
    "TokenSpec",
    "check_device",
    "check_precision",
    "parse_storage_options",
]
