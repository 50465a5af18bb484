"""Frozen, validated configuration (``ExtractSpec``, which names knowledge kinds, is
``knowledge.spec``'s): parsed once at the boundary, trusted everywhere after.

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
    TOKEN_STRATEGIES,
    DimSpec,
    LayerSpec,
    TokenSpec,
)

__all__ = [
    "CODECS",
    "DEFAULT_SAVE_EVERY",
    "DIM_STRATEGIES",
    "DTYPES",
    "EVAL_METRICS",
    "PRECISIONS",
    "TOKEN_STRATEGIES",
    "DataConfig",
    "DimSpec",
    "Interval",
    "LayerSpec",
    "StageConfig",
    "TokenSpec",
    "check_device",
    "check_precision",
    "parse_storage_options",
]
