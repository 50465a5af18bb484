"""The cache manifest as a typed, frozen object.

A cache's root ``zarr.json`` holds the manifest as JSON (the group attribute ``hsk_cache``; see
``layout``). ``Manifest.from_dict`` parses and checks it once; everything else reads typed
attributes (``manifest.data.num_examples``, ``manifest.layers``, …) instead of dict keys.
``to_dict`` gives the JSON form back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields, replace
from types import MappingProxyType
from typing import Any

from hsk_cache.errors import CacheError


def _freeze(value):
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value):
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _thaw(getattr(value, f.name)) for f in fields(value)}
    return value


class _Section:
    """A frozen dataclass parsed from one JSON object; keys it does not know are ignored. Lists
    and objects given to the constructor are frozen (tuples, read-only mappings)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _freeze(getattr(self, f.name)))

    @classmethod
    def parse(cls, raw, where: str):
        if not isinstance(raw, Mapping):
            raise CacheError(f"the cache manifest's {where!r} is not an object: the cache is damaged; re-extract it")
        values = {}
        for f in fields(cls):
            if f.name in raw:
                values[f.name] = _freeze(raw[f.name])
            elif f.default is MISSING and f.default_factory is MISSING:
                raise CacheError(f"the cache manifest lacks {where}.{f.name}: the cache is damaged; re-extract it")
        return cls(**values)

    def to_dict(self) -> dict:
        return _thaw(self)


@dataclass(frozen=True)
class TeacherInfo(_Section):
    """The teacher the knowledge came from. config: its transformers config (read-only mapping)."""

    path: str
    weights_sha256: str
    num_layers: int
    hidden_size: int
    num_heads: int
    config: Mapping[str, Any]


@dataclass(frozen=True)
class TokenizerInfo(_Section):
    """The teacher tokenizer stored in the cache (its files in the ``group`` subgroup).
    ``files``: each file's ``{"bytes": size, "crc32c": 8 hex digits}`` as written (None in
    caches written before it was recorded)."""

    group: str
    name_or_path: str
    vocab_size: int
    files: Mapping[str, Any] | None = None

    def to_dict(self) -> dict:
        """The JSON form (``files`` only when recorded)."""
        out = _thaw(self)
        if out["files"] is None:
            out.pop("files")
        return out


@dataclass(frozen=True, kw_only=True)
class DataInfo(_Section):
    """The extracted split: its source and how it was tokenized (``DataConfig``'s fields first);
    ``fingerprint`` identifies the tokenized examples; ``label_names`` in class-id order (empty
    for a corpus: ``corpus`` true, stored only then)."""

    source: str
    split: str
    text_columns: tuple[str, ...] | None = None
    label_column: str | None = None
    max_length: int
    limit: int | None = None
    corpus: bool = False
    task_type: str | None = None
    format: str | None = None
    holdout: float | None = None
    doc_stride: int | None = None
    task: str | None = None
    fingerprint: str
    resolved_source: str | None = None
    num_examples: int
    label_names: tuple[str, ...]

    def to_dict(self) -> dict:
        """The JSON form (``corpus`` only when true, as ``DataConfig.describe`` writes it)."""
        out = _thaw(self)
        if not self.corpus:
            out.pop("corpus")
        for key in ("task_type", "format", "holdout", "doc_stride"):  # stored only when set
            if out[key] is None:
                out.pop(key)
        return out


@dataclass(frozen=True, kw_only=True)
class SpecInfo(_Section):
    """The extraction spec in canonical form (``ExtractSpec.describe``): ``attention_layers`` is
    stored only with attention knowledge, ``value_relation_layer`` only with value relation,
    ``options`` only when a stored kind has options of its own, ``key_topk`` only when rows are
    stored sparse."""

    layers: str
    tokens: str
    dims: str
    knowledge: tuple[str, ...]
    dtype: str
    codec: str
    importance_layer: int | None = None
    seed: int
    attention_layers: str | None = None
    value_relation_layer: int | None = None
    options: Mapping[str, Any] | None = None
    key_topk: int = 0

    def to_dict(self) -> dict:
        """The JSON form, keys as ``ExtractSpec.describe`` writes them."""
        out = _thaw(self)
        if not self.options:
            out.pop("options")
        if not self.key_topk:
            out.pop("key_topk")
        if "attention_probs" not in self.knowledge:
            out.pop("attention_layers")
        if "value_relation" not in self.knowledge:
            out.pop("value_relation_layer")
        return out


@dataclass(frozen=True)
class DimsInfo(_Section):
    """Stored sizes: kept_tokens K, hidden_size D, kept_dims D' (uniform/random width), slots M
    (magnitude width), heads H, classes C, and whether token_type_ids are stored."""

    kept_tokens: int
    hidden_size: int
    kept_dims: int
    slots: int
    heads: int
    classes: int
    token_types: bool


@dataclass(frozen=True)
class LayoutInfo(_Section):
    """Examples per chunk of each array (the unit of reading) and per shard (the unit of writing)."""

    chunk_examples: Mapping[str, int]
    shard_examples: int
    num_shards: int


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """What a cache holds; built once at extraction and stored as its JSON (``to_dict``, in this
    field order, is byte for byte what the group attribute holds).

    Layer numbers follow hidden_states numbering (0 = embeddings, 1..L the transformer layers):
    ``layers`` (L_k) of the stored hidden states, ``attention_layers`` (L_a) of the stored
    attention probabilities, ``value_relation_layer`` of the value relation. ``knowledge``: the
    kinds stored, in canonical order. ``complete``: every shard committed.
    """

    format: str
    format_version: int
    hsk_cache_version: str | None = None
    selection_version: int | None = None
    teacher: TeacherInfo
    tokenizer: TokenizerInfo
    data: DataInfo
    max_length: int
    spec: SpecInfo
    layers: tuple[int, ...]
    attention_layers: tuple[int, ...]
    value_relation_layer: int | None
    dims: DimsInfo
    precision: str
    layout: LayoutInfo
    counts: Mapping[str, Any]
    complete: bool
    kinds: Mapping[str, Any] | None = None  # resolved fields of kinds added after format version 2
    manifest_sha256: str | None = None  # ``digest()`` when written (None in caches written before it was)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, _Section):
                object.__setattr__(self, f.name, _freeze(value))

    @property
    def knowledge(self) -> tuple[str, ...]:
        """The kinds stored, canonical order."""
        return self.spec.knowledge

    @property
    def num_examples(self) -> int:
        """N."""
        return self.data.num_examples

    @property
    def label_names(self) -> tuple[str, ...]:
        """Class names in id order."""
        return self.data.label_names

    @classmethod
    def from_dict(cls, raw: Mapping) -> Manifest:
        """Parse the JSON manifest. Raises: CacheError naming the first missing or malformed field."""
        if not isinstance(raw, Mapping):
            raise CacheError("the cache manifest is not a JSON object: the cache is damaged; re-extract it")
        sections = {
            "teacher": TeacherInfo,
            "tokenizer": TokenizerInfo,
            "spec": SpecInfo,
            "dims": DimsInfo,
            "layout": LayoutInfo,
        }
        values = {}
        for f in fields(cls):
            if f.name not in raw:
                if f.default is MISSING:
                    raise CacheError(f"the cache manifest lacks {f.name!r}: the cache is damaged; re-extract it")
                continue
            value = raw[f.name]
            if f.name in sections:
                value = sections[f.name].parse(value, f.name)
            elif f.name == "data":
                value = DataInfo.parse(value, "data")
            else:
                value = _freeze(value)
            values[f.name] = value
        return cls(**values)

    def to_dict(self) -> dict:
        """The JSON form (as stored in the cache)."""
        out = {f.name: _thaw_section(getattr(self, f.name)) for f in fields(self)}
        if out["kinds"] is None:  # caches of the four original kinds have no such section
            del out["kinds"]
        if out["manifest_sha256"] is None:
            del out["manifest_sha256"]
        return out

    def digest(self) -> str:
        """sha256 (hex) of the canonical JSON (sorted keys, no spaces) of ``to_dict()`` without
        ``manifest_sha256``: what a writer records, so any edit of the stored manifest shows."""
        body = {k: v for k, v in self.to_dict().items() if k != "manifest_sha256"}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def sealed(self) -> Manifest:
        """A copy with ``manifest_sha256`` set to ``digest()`` (what the writers store)."""
        return replace(self, manifest_sha256=self.digest())

    def seal_problem(self) -> str | None:
        """Why the stored manifest is not the one written (its sha256 differs from the recorded
        one), or None: intact, or written before the sha256 was recorded."""
        if self.manifest_sha256 is None:
            return None
        found = self.digest()
        if found == self.manifest_sha256:
            return None
        return f"its manifest was edited or damaged (sha256 {found[:12]}…, {self.manifest_sha256[:12]}… written)"

    def with_state(self, **changes) -> Manifest:
        """A copy with ``complete`` and/or ``counts`` changed (what a writer updates)."""
        unknown = set(changes) - {"complete", "counts"}
        if unknown:
            raise ValueError(f"only complete and counts change after extraction, not {sorted(unknown)}")
        return replace(self, **{k: _freeze(v) for k, v in changes.items()})


def _thaw_section(value):
    return value.to_dict() if isinstance(value, _Section) else _thaw(value)
