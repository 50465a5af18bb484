"""The registered knowledge kinds, in canonical order: the one list of what a kind is.

The order is the order of ``ExtractSpec.knowledge``, of the manifest's ``spec.knowledge``, of a
cache's arrays and of a batch's keys. Adding a kind: write its module (a ``KnowledgeKind``
subclass, see ``knowledge.kind``) and add an instance here; docs/architecture.md lists the steps.
"""

from __future__ import annotations

from hsk_cache.errors import ConfigError
from hsk_cache.knowledge.attention_probs import AttentionProbs
from hsk_cache.knowledge.attention_relations import AttentionRelations
from hsk_cache.knowledge.hidden_states import HiddenStates
from hsk_cache.knowledge.kind import KnowledgeKind
from hsk_cache.knowledge.logits import Logits
from hsk_cache.knowledge.mlm import MaskedLM
from hsk_cache.knowledge.value_relation import ValueRelation

KINDS: tuple[KnowledgeKind, ...] = (
    HiddenStates(),
    AttentionProbs(),
    ValueRelation(),
    AttentionRelations(),
    Logits(),
    MaskedLM(),
)


def names() -> tuple[str, ...]:
    """The kinds' names, canonical order."""
    return tuple(k.name for k in KINDS)


def kind(name: str) -> KnowledgeKind:
    """The kind called ``name``. Raises: ConfigError (field ``knowledge``) for an unknown one."""
    for k in KINDS:
        if k.name == name:
            return k
    raise ConfigError(f"unknown knowledge kind {name!r}: use one of {', '.join(names())}", field="knowledge")


def kinds(selected) -> tuple[KnowledgeKind, ...]:
    """The kinds named in ``selected``, canonical order."""
    return tuple(k for k in KINDS if k.name in selected)


def pad_values() -> dict[str, int]:
    """Collate padding of the knowledge keys that are not 0 / False: −1 for kept-position indexes."""
    return {key: -1 for k in KINDS for key in k.index_keys}


def stage_terms(stage: str) -> tuple[str, ...]:
    """The terms ``hsk train``'s ``stage`` trains: ``hidden`` (intermediate layers) or ``prediction``."""
    return tuple(k.name for k in KINDS if k.stage == stage)
