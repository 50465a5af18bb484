"""Frozen, validated configuration: parsed once at the boundary, trusted everywhere after.

Strategy strings (``--layers``, ``--tokens``, ``--dims``) parse into small frozen dataclasses whose
``describe()`` gives the canonical string stored in the cache manifest, so two specs are equal iff
their manifests say the same thing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from hsk_cache.errors import ConfigError

DTYPES = ("float32", "float16")
KNOWLEDGE_KINDS = ("hidden_states", "logits")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class LayerSpec:
    """Depth: which teacher hidden-state layers to keep (0 = embedding output).

    ``kind`` is ``last``, ``all`` or ``list``; ``layers`` holds the list for ``list``.
    """

    kind: str = "last"
    layers: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "LayerSpec":
        text = text.strip().lower()
        if text in ("last", "all"):
            return cls(text)
        try:
            layers = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
        except ValueError:
            raise ConfigError(
                f"unknown --layers value {text!r}: use last, all, or a comma list of layer numbers like 2,4,6"
            ) from None
        if not layers:
            raise ConfigError("--layers is empty: use last, all, or a comma list like 2,4,6")
        if layers[0] < 0:
            raise ConfigError(f"--layers {text!r} has a negative layer: layers count from 0 (embedding output)")
        return cls("list", layers)

    def resolve(self, num_layers: int) -> tuple[int, ...]:
        """Teacher hidden-state layers kept, given the teacher's transformer layer count L.

        Returns: sorted layer numbers in [0, L]. Raises: ConfigError if a listed layer exceeds L.
        """
        if self.kind == "last":
            return (num_layers,)
        if self.kind == "all":
            return tuple(range(num_layers + 1))
        if self.layers[-1] > num_layers:
            raise ConfigError(
                f"--layers asks for layer {self.layers[-1]} but the teacher has layers 0..{num_layers}: "
                f"pick layers from 0 to {num_layers}"
            )
        return self.layers

    def describe(self) -> str:
        return ",".join(map(str, self.layers)) if self.kind == "list" else self.kind


@dataclass(frozen=True)
class TokenSpec:
    """Length: which token positions to keep per example.

    ``all``: every real token; ``cls``: position 0; ``topk``: the K tokens receiving the most
    attention from [CLS] (Liu et al. 2021, §4.2), K a count (``k``) or a percentage of each
    example's real length (``percent``).
    """

    kind: str = "all"
    k: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, text: str) -> "TokenSpec":
        text = text.strip().lower()
        if text in ("all", "cls"):
            return cls(text)
        name, _, arg = text.partition(":")
        if name != "topk" or not arg:
            raise ConfigError(f"unknown --tokens value {text!r}: use all, cls, topk:K or topk:P%")
        try:
            if arg.endswith("%"):
                percent = float(arg[:-1])
                if not 0 < percent <= 100 or not math.isfinite(percent):
                    raise ConfigError(f"--tokens {text!r}: the percentage must be in (0, 100], e.g. topk:10%")
                return cls("topk", percent=percent)
            k = int(arg)
        except ValueError:
            raise ConfigError(f"--tokens {text!r}: K must be an integer count or a percentage like topk:10%") from None
        if k <= 0:
            raise ConfigError(f"--tokens {text!r}: K must be at least 1, e.g. topk:10")
        return cls("topk", k=k)

    def check(self, max_length: int) -> None:
        """Raises ConfigError if a count K exceeds the max length."""
        if self.k is not None and self.k > max_length:
            raise ConfigError(
                f"--tokens topk:{self.k} keeps more tokens than --max-length {max_length}: "
                f"use K ≤ {max_length} or raise --max-length"
            )

    def kept_tokens(self, max_length: int) -> int:
        """K, the stored token axis length (the most any example keeps)."""
        if self.kind == "all":
            return max_length
        if self.kind == "cls":
            return 1
        if self.k is not None:
            return self.k
        return max(1, math.ceil(self.percent / 100 * max_length))

    def describe(self) -> str:
        if self.kind != "topk":
            return self.kind
        return f"topk:{self.k}" if self.k is not None else f"topk:{self.percent:g}%"


@dataclass(frozen=True)
class DimSpec:
    """Width: which hidden dimensions to keep. Only ``all`` exists yet; the cache format stores the
    strategy name so later strategies (uniform, random, magnitude) fit without a format change."""

    kind: str = "all"

    @classmethod
    def parse(cls, text: str) -> "DimSpec":
        text = text.strip().lower()
        if text != "all":
            raise ConfigError(f"unknown --dims value {text!r}: use all")
        return cls(text)

    def describe(self) -> str:
        return self.kind


@dataclass(frozen=True)
class ExtractSpec:
    """What knowledge to take from the teacher and how to store it."""

    layers: LayerSpec = field(default_factory=LayerSpec)
    tokens: TokenSpec = field(default_factory=TokenSpec)
    dims: DimSpec = field(default_factory=DimSpec)
    knowledge: tuple[str, ...] = KNOWLEDGE_KINDS
    dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown --dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        unknown = set(self.knowledge) - set(KNOWLEDGE_KINDS)
        if unknown or not self.knowledge:
            raise ConfigError(
                f"unknown knowledge kind(s) {sorted(unknown)}: use a comma list of {', '.join(KNOWLEDGE_KINDS)}"
            )

    @property
    def needs_attention(self) -> bool:
        return self.tokens.kind == "topk" and "hidden_states" in self.knowledge

    def describe(self) -> dict:
        """The canonical JSON form stored in the manifest and compared on resume."""
        return {
            "layers": self.layers.describe(),
            "tokens": self.tokens.describe(),
            "dims": self.dims.describe(),
            "knowledge": list(self.knowledge),
            "dtype": self.dtype,
        }

    @classmethod
    def parse(cls, layers="last", tokens="all", dims="all", knowledge="hidden_states,logits", dtype="float16"):
        kinds = tuple(k.strip() for k in knowledge.split(",") if k.strip()) if isinstance(knowledge, str) else tuple(knowledge)
        return cls(LayerSpec.parse(layers), TokenSpec.parse(tokens), DimSpec.parse(dims), kinds, dtype)


@dataclass(frozen=True)
class DataConfig:
    """Where examples come from and how they are tokenized.

    source: ``bbc-news``, a GLUE task directory, a CSV/TSV/JSONL/Parquet file or a directory of
    ``<split>.<ext>`` files, or a Hugging Face hub dataset name. text_columns: one column, or two for
    sentence pairs; None picks the source's default. limit: keep only the first N examples.
    """

    source: str = "bbc-news"
    split: str = "train"
    text_columns: tuple[str, ...] | None = None
    label_column: str | None = None
    max_length: int = 128
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ConfigError(f"--max-length {self.max_length} is too small: use at least 2 ([CLS] and [SEP])")
        if self.text_columns is not None and not 1 <= len(self.text_columns) <= 2:
            raise ConfigError(f"--text-columns {self.text_columns}: give one column, or two for sentence pairs")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit {self.limit}: use a positive number of examples")

    def describe(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StageConfig:
    """One training stage: its loss kind (``hidden``, ``prediction`` or ``labels``) and optimizer settings."""

    kind: str
    epochs: float
    lr: float
    batch_size: int
    warmup_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in ("hidden", "prediction", "labels"):
            raise ConfigError(f"unknown stage kind {self.kind!r}: use hidden, prediction or labels")
        if self.epochs < 0 or self.lr <= 0 or self.batch_size < 1 or not 0 <= self.warmup_ratio < 1:
            raise ConfigError(
                f"stage {self.kind}: epochs={self.epochs}, lr={self.lr}, batch_size={self.batch_size}, "
                f"warmup_ratio={self.warmup_ratio}: use epochs ≥ 0, lr > 0, batch size ≥ 1, warmup in [0, 1)"
            )


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown --precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return precision
