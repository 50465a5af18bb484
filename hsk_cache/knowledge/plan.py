"""One resolved plan: an ``ExtractSpec`` resolved against one teacher, once.

``Plan.make`` fixes every number later steps read: the stored layers of each kind, K kept
tokens, D' kept dimensions and the dimension index, M magnitude slots, H heads, C classes, the
token ids never kept. Extraction, online distillation, the cache layout, encode/decode, the size
estimate and the loss terms all read this one object (``Plan.of_manifest`` rebuilds it from a
cache), so nothing re-derives K, D' or M. ``select`` is the single definition of what a spec keeps:
extraction stores its output and online distillation feeds it straight to the loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from hsk_cache.errors import ConfigError
from hsk_cache.knowledge import registry
from hsk_cache.knowledge.kind import check_layer
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.select import length
from hsk_cache.tasks import types


@dataclass
class TeacherOutputs:
    """What one teacher forward returns for selection, on the teacher's device in float32.

    hidden_states: L+1 entries [B, T, D] (0 = embedding output). attentions: L entries
    [B, H, T, T] (softmax over keys), or [B, H, 1, T] (the [CLS] query row) for a layer only
    ranking reads (not in ``Plan.attention_maps_read``), or None when no attention is needed.
    Entries selection does not read are None (``Plan.hidden_layers_read`` /
    ``attention_layers_read``). values: [B, T, D] value projection of ``Plan.value_layer``, or
    None. logits: [B, C] of a classifier, [B, T, V] of a masked-LM head, or None (a base
    encoder). projections: ``{(projection, layer): [B, T, D]}``
    of ``Plan.projections_read``.
    """

    hidden_states: tuple[torch.Tensor | None, ...]
    attentions: tuple[torch.Tensor | None, ...] | None
    values: torch.Tensor | None
    logits: torch.Tensor | None
    projections: dict = field(default_factory=dict)


@dataclass(frozen=True, eq=False)  # dim_index is an array: plans compare by identity
class Plan:
    """A spec resolved against one teacher (or read back from a cache's manifest).

    Attributes:
        spec: the ``ExtractSpec``. max_length: T. kept_tokens: K, the stored token axis.
        teacher_layers: L. hidden_size: D. heads: H. classes: C (tags for token
            classification, 1 for regression). task_type: the teacher head's ``tasks.types`` name.
        layers: hidden-state layers stored (L_k; 0 = embeddings). attention_layers: attention
            layers stored (L_a, 1..L). value_relation_layer: the value-relation layer or None.
        kept_dims: D' (uniform/random width; D otherwise). slots: M, magnitude values per
            example-layer (0 without magnitude width). dim_index: [D'] int64 kept dimensions
            (uniform/random width) or None.
        excluded_ids: token ids never kept without ``+sep`` (separator and end-of-sequence).
        extra: resolved fields of kinds beyond the ones above, by name (a new kind's own layers
            or sizes: ``KnowledgeKind.resolve`` returns them, the manifest stores them under
            ``kinds``, ``KnowledgeKind.from_manifest`` reads them back).
    """

    spec: ExtractSpec
    max_length: int
    kept_tokens: int
    teacher_layers: int
    hidden_size: int
    heads: int
    classes: int
    layers: tuple[int, ...] = ()
    attention_layers: tuple[int, ...] = ()
    value_relation_layer: int | None = None
    kept_dims: int = 0
    slots: int = 0
    dim_index: np.ndarray | None = None
    excluded_ids: tuple[int, ...] = ()
    extra: Mapping = field(default_factory=dict)  # a plain dict, so plans deep-copy and pickle
    task_type: str = "classification"

    @classmethod
    def make(cls, spec: ExtractSpec, config, tokenizer, max_length: int) -> Plan:
        """Resolve ``spec`` against a teacher's transformers ``config`` and its tokenizer.

        Raises: ConfigError for a layer beyond the teacher's depth, K above ``max_length``, or
        ``key_topk`` not below it (sparse rows that large store more than dense ones).
        """
        spec.tokens.check(max_length)
        if spec.key_topk >= max_length:
            raise ConfigError(
                f"{{key_topk}} {spec.key_topk} keeps as many keys as a row of {max_length} tokens has: use fewer "
                f"(e.g. {max(1, max_length // 8)}) or 0 for dense rows",
                field="key_topk",
                value=spec.key_topk,
            )
        if spec.importance_layer is not None:
            check_layer(spec.importance_layer, config.num_hidden_layers, "importance_layer")
        resolved = {}
        for kind in registry.KINDS:
            resolved.update(kind.resolve(spec, config, max_length, kind.name in spec.knowledge))
        named = {f.name for f in fields(cls)}
        extra = {k: v for k, v in resolved.items() if k not in named}
        return cls(
            spec=spec,
            max_length=max_length,
            kept_tokens=spec.tokens.kept_tokens(max_length),
            teacher_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            heads=config.num_attention_heads,
            classes=config.num_labels,
            excluded_ids=excluded_token_ids(tokenizer),
            extra=extra,
            task_type=types.of_config(config).name,
            **{k: v for k, v in resolved.items() if k in named},
        )

    @classmethod
    def of_manifest(cls, manifest, dim_index: np.ndarray | None = None) -> Plan:
        """The plan a cache was extracted with, from its ``store.manifest.Manifest`` (and its
        stored ``dim_index`` [D'] int, when it has one)."""
        s, d = manifest.spec, manifest.dims
        extra = {}
        for kind in registry.kinds(s.knowledge):
            extra.update(kind.from_manifest((manifest.kinds or {}).get(kind.name, {})))
        spec = ExtractSpec.parse(
            layers=s.layers,
            tokens=s.tokens,
            dims=s.dims,
            knowledge=s.knowledge,
            dtype=s.dtype,
            codec=s.codec,
            attention_layers=s.attention_layers or "last",
            value_relation_layer=s.value_relation_layer,
            importance_layer=s.importance_layer,
            seed=s.seed,
            options=dict(s.options or {}),
            key_topk=s.key_topk,
        )
        return cls(
            spec=spec,
            max_length=manifest.max_length,
            kept_tokens=d.kept_tokens,
            teacher_layers=manifest.teacher.num_layers,
            hidden_size=d.hidden_size,
            heads=d.heads,
            classes=d.classes,
            layers=tuple(manifest.layers),
            attention_layers=tuple(manifest.attention_layers),
            value_relation_layer=manifest.value_relation_layer,
            kept_dims=d.kept_dims,
            slots=d.slots,
            dim_index=None if dim_index is None else np.asarray(dim_index, dtype=np.int64),
            extra=extra,
            task_type=types.of_config(getattr(manifest.teacher, "config", None) or {}).name,
        )

    @property
    def knowledge(self) -> tuple[str, ...]:
        """The kinds stored, in the registry's canonical order."""
        return self.spec.knowledge

    @property
    def kinds(self) -> tuple:
        """The ``KnowledgeKind`` objects of ``knowledge``."""
        return registry.kinds(self.knowledge)

    @property
    def teacher_hidden_size(self) -> int:
        """D (the name ``DistillationLoss`` reads for W_h's output width)."""
        return self.hidden_size

    @property
    def teacher_heads(self) -> int:
        """H."""
        return self.heads

    @property
    def value_layer(self) -> int | None:
        """The teacher layer whose value projection a teacher forward must capture, or None."""
        layers = {kind.value_layer(self) for kind in self.kinds} - {None}
        return max(layers) if layers else None

    def projections_read(self) -> set[tuple[str, int]]:
        """The teacher's ``(projection, layer)`` outputs selection reads (``KnowledgeKind.projections_read``)."""
        return set().union(*(kind.projections_read(self) for kind in self.kinds))

    @property
    def needs_mlm_head(self) -> bool:
        """The teacher runs with its masked-LM head (a kind reads its logits)."""
        return any(kind.needs_mlm_head for kind in self.kinds)

    def prepare_examples(self, examples, tokenizer):
        """The ``knowledge.batch.Examples`` the teacher and the student see: every stored kind's
        ``prepare_examples(examples, self.spec, tokenizer)`` in kind order (static masking rewrites
        ``input_ids`` and adds ``extra`` arrays; apply it once, to the unmasked examples).
        Raises: ConfigError from a kind (a tokenizer without a mask token)."""
        for kind in self.kinds:
            examples = kind.prepare_examples(examples, self.spec, tokenizer)
        return examples

    def hidden_layers_read(self) -> set[int]:
        """Hidden-state layers whose [B, T, D] outputs selection reads."""
        return set().union(*(kind.hidden_layers_read(self) for kind in self.kinds))

    def attention_layers_read(self) -> set[int]:
        """Attention layers (1-based) whose probabilities selection reads: rank sources and stored rows."""
        return set().union(*(kind.attention_layers_read(self) for kind in self.kinds))

    def attention_maps_read(self) -> set[int]:
        """Of ``attention_layers_read``, those whose whole [B, H, T, T] map selection reads; the
        others are read by their [CLS] query row only (``TeacherOutputs.attentions``)."""
        return set().union(*(kind.attention_maps_read(self) for kind in self.kinds))

    def ranking_layer(self, layer: int) -> int:
        """The attention layer whose [CLS] row ranks tokens for knowledge of ``layer`` (1-based):
        the spec's importance layer, else ``layer`` itself."""
        return self.spec.importance_layer or layer

    def select_tokens(self, outputs: TeacherOutputs, batch, layer: int) -> torch.Tensor:
        """token_index [B, K] int64 (−1 = none) for the spec's length strategy; top-k ranks by the
        [CLS] attention of attention layer ``self.ranking_layer(layer)``.

        Source: Liu et al. 2021, §4.2 (left, random and attention-based length selection; the
        ``+sep`` suffix keeps [SEP] eligible, "attention w/o [SEP]" otherwise).
        """
        tokens = self.spec.tokens
        mask = batch.attention_mask.bool()
        lengths = mask.sum(dim=1)
        k = tokens.kept_tokens(mask.shape[1])
        if tokens.kind == "all":
            return length.all_tokens(lengths, k)
        if tokens.kind == "cls":
            return length.cls_token(lengths)
        eligible = mask
        if not tokens.with_sep:
            excluded = torch.tensor(self.excluded_ids, dtype=batch.input_ids.dtype, device=batch.input_ids.device)
            eligible = mask & ~torch.isin(batch.input_ids, excluded)
        if tokens.kind == "left":
            scores = length.left_scores(eligible)
        elif tokens.kind == "random":
            scores = length.random_scores(eligible, batch.example_ids, self.spec.seed)
        else:
            scores = length.cls_importance(outputs.attentions[self.ranking_layer(layer) - 1])
        return length.topk_tokens(scores, eligible, length.tokens_per_example(tokens, lengths), k)

    def select(self, outputs: TeacherOutputs, batch) -> dict[str, torch.Tensor]:
        """Apply the spec's depth, length and width selection to one batch of teacher outputs:
        every kind's batch tensors (the ``knowledge.batch`` format)."""
        out = {}
        for kind in self.kinds:
            out.update(kind.select(outputs, batch, self))
        return out

    def encode(self, knowledge: dict) -> dict[str, np.ndarray]:
        """One batch's selected tensors → rows of every knowledge array (``KnowledgeKind.encode``)."""
        out = {}
        for kind in self.kinds:
            out.update(kind.encode(knowledge, self))
        return out

    def decode(self, rows: dict[str, np.ndarray], width: int) -> dict[str, torch.Tensor]:
        """Rows of the knowledge arrays for one batch → batch tensors, keys trimmed to ``width`` (T_b)."""
        out = {}
        for kind in self.kinds:
            out.update(kind.decode(rows, self, width))
        return out

    def manifest_kinds(self) -> dict | None:
        """The manifest's ``kinds`` section: each kind's ``manifest_fields`` (None when no kind has
        any: the four kinds of format version 2 store theirs at the top level)."""
        out = {kind.name: kind.manifest_fields(self) for kind in self.kinds}
        out = {name: values for name, values in out.items() if values}
        return out or None

    def arrays(self, n: int) -> list:
        """The knowledge arrays (``kind.ArraySpec``) of a cache of ``n`` examples, in kind order."""
        return [spec for kind in self.kinds for spec in kind.arrays(self, n)]


StoredKnowledge = Plan  # the public name of what a knowledge source provides (``hsk_cache.StoredKnowledge``)


def excluded_token_ids(tokenizer) -> tuple[int, ...]:
    """Ids never kept unless the ``+sep`` variant: the separator (and end-of-sequence) tokens."""
    ids = {tokenizer.sep_token_id, tokenizer.eos_token_id} - {None, tokenizer.cls_token_id}
    return tuple(sorted(ids))
