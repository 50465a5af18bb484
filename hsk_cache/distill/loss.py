"""``DistillationLoss``: the distillation objective as an ``nn.Module`` for any training loop.

It compares what a transformers student returns (``output_hidden_states`` /
``output_attentions``, plus the value vectors a hook captures) with the teacher knowledge in a
batch (``knowledge.batch``'s format: from ``Cache.collate``, ``Cache.loader`` or an online
teacher). Each term is its knowledge kind's (``KnowledgeKind.term``, ``knowledge/<kind>.py``);
this module picks the terms, hands them the options, registers the modules they own (W_h, the
projection from the student's width to the teacher's) so optimizers, DDP wrappers and
checkpoints see them, and sums them. ``hsk train`` uses this same module.

Typical use::

    loss_fn = DistillationLoss(cache.manifest, student.config)
    with loss_fn.capture_values(student) as values:          # no-op without value relation
        outputs = student(**model_inputs(batch, student), **loss_fn.output_flags())
    loss, terms = loss_fn(outputs, batch, values)
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from hsk_cache.errors import ConfigError
from hsk_cache.knowledge import registry
from hsk_cache.knowledge.kind import LossOptions
from hsk_cache.knowledge.plan import Plan
from hsk_cache.models import hooks


class DistillationOutput(NamedTuple):
    """loss: the scalar float32 sum of the active terms. terms: each term's scalar value
    (``hidden_states``, ``attention_probs``, ``value_relation``, ``logits``, ``labels``)."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]


def plan_of(source) -> Plan:
    """The ``Plan`` behind a knowledge source: a ``Plan`` (``StoredKnowledge``), a ``Cache`` or a
    training source (``.plan``), or a cache's ``Manifest``."""
    if isinstance(source, Plan):
        return source
    if hasattr(source, "plan"):
        return source.plan
    return Plan.of_manifest(source)


class DistillationLoss(torch.nn.Module):
    """The distillation loss of one student against stored (or online) teacher knowledge.

    Terms (each its kind's, summed over its layer pairs; see ``knowledge/<kind>.py``):
    - ``hidden_states``: Σ_{(s,t) ∈ layer_map} MSE(h_S^s W_h, h_T^t) over the kept tokens (and
      dimensions; ``width_target``), TinyBERT Eq. 7 restricted to the kept knowledge as in
      Liu et al. 2021 §4;
    - ``attention_probs``: Σ KL(A_T ‖ A_S) (MiniLM Eq. 3) or MSE (TinyBERT Eq. 6,
      ``attention_loss="mse"``) of the kept query rows;
    - ``value_relation``: KL(VR_T ‖ VR_S) of the student's last layer (MiniLM Eq. 5);
    - ``logits``: τ² · soft cross-entropy at temperature τ (Hinton et al. 2015), plus
      ``hard_label_weight`` × cross-entropy with the gold labels (term ``labels``).

    Args:
        knowledge: a cache's ``Manifest``, a ``Cache``, a training source or a ``Plan``
            (``StoredKnowledge``).
        student_config: the student's transformers config (or the model).
        terms: the terms to use; default every one the knowledge supports. ``forward`` may pick
            a subset per call (``hsk train``'s stages do).
        layer_map / attention_map: ``uniform``, ``uniform:L_top`` or ``s:t,…`` (student layer:
            teacher layer), resolved against the stored layers (``select.depth.layer_map``).
        keep_top_pairs: keep only the top N student layers of the map.
        head_map: ``strict`` (equal head counts), ``mean`` (compare head-averaged rows) or
            ``relation`` (value relation: split the student's values into the teacher's head
            count, MiniLMv2's relation heads).
        width_target: ``zero`` (dropped dimensions of kept tokens are targets of 0, Liu et al.
            2021 §4.3) or ``ignore`` (left out of the MSE).
        temperature: τ > 0 of the logits term. hard_label_weight: ≥ 0.
        hidden_loss: ``mse`` or ``cosine`` (DistilBERT's cosine loss) for hidden states.
        term_weights: (term, weight) pairs; each returned term is multiplied by its weight
            (default 1) before the sum (``terms`` in the output are the weighted values).
    Raises: ConfigError (with the option's ``field`` and value) for unknown options, a term the
        knowledge lacks, a map needing an unstored layer, or head counts the head_map cannot
        reconcile.

    W_h (``projection``, a Linear [D_S → D_T]) exists when the widths differ and hidden states
    are distilled; it trains with the student.
    """

    def __init__(
        self,
        knowledge,
        student_config,
        *,
        terms=None,
        layer_map: str = "uniform",
        attention_map: str = "uniform",
        keep_top_pairs: int | None = None,
        head_map: str = "strict",
        width_target: str = "zero",
        attention_loss: str = "kl",
        temperature: float = 1.0,
        hard_label_weight: float = 0.0,
        hidden_loss: str = "mse",
        term_weights: tuple[tuple[str, float], ...] = (),
    ) -> None:
        super().__init__()
        plan = self.stored = plan_of(knowledge)
        config = getattr(student_config, "config", student_config)
        self.options = LossOptions(
            layer_map=layer_map,
            attention_map=attention_map,
            keep_top_pairs=keep_top_pairs,
            head_map=head_map,
            width_target=width_target,
            attention_loss=attention_loss,
            temperature=temperature,
            hard_label_weight=hard_label_weight,
            hidden_loss=hidden_loss,
            term_weights=tuple(term_weights),
        )
        every = registry.names()  # each kind's term
        available = tuple(t for t in every if t in plan.knowledge)
        self.terms = available if terms is None else tuple(t for t in every if t in terms)
        self._check_terms(terms, available)
        self._term = {name: registry.kind(name).term(plan, config, self.options) for name in self.terms}
        self.projection = None
        for term in self._term.values():
            for attribute, module in term.modules().items():
                setattr(self, attribute, module)  # registered: parameters, state_dict, .to(device)

    @property
    def hidden_map(self) -> dict[int, int]:
        """{student layer: teacher layer} of the hidden-state term ({} without it)."""
        term = self._term.get("hidden_states")
        return term.layer_map if term is not None else {}

    @property
    def attention_map(self) -> dict[int, int]:
        """{student layer: teacher layer} of the attention term ({} without it)."""
        term = self._term.get("attention_probs")
        return term.layer_map if term is not None else {}

    @property
    def value_relation(self) -> tuple[int, int] | None:
        """(student layer, teacher layer) of the value-relation term, or None."""
        term = self._term.get("value_relation")
        return (term.student_layer, term.teacher_layer) if term is not None else None

    def _check_terms(self, asked, available) -> None:
        every = registry.names()  # each kind's term
        unknown = set(asked or ()) - set(every)
        if unknown:
            raise ConfigError(f"unknown distillation term(s) {sorted(unknown)}: use {', '.join(every)}", field="terms")
        missing = [t for t in self.terms if t not in available]
        if missing:
            raise ConfigError(
                f"the knowledge holds no {', '.join(missing)} (it holds {', '.join(self.stored.knowledge)}): "
                f"extract with {{knowledge}} {','.join((*self.stored.knowledge, *missing))} or drop the term",
                field="knowledge",
            )
        if not self.terms:
            raise ConfigError("no distillation term: the knowledge holds none of " + ", ".join(every), field="terms")

    def _active(self, terms) -> tuple[str, ...]:
        if terms is None:
            return self.terms
        extra = set(terms) - set(self.terms)
        if extra:
            raise ConfigError(
                f"term(s) {sorted(extra)} were not set up in this loss (it has {', '.join(self.terms)})", field="terms"
            )
        return tuple(t for t in self.terms if t in terms)

    def output_flags(self, terms=None) -> dict[str, bool]:
        """The ``output_hidden_states`` / ``output_attentions`` flags the student's forward needs."""
        flags = {"output_hidden_states": False, "output_attentions": False}
        for name in self._active(terms):
            for flag, needed in self._term[name].output_flags().items():
                flags[flag] = flags[flag] or needed
        return flags

    @property
    def value_layer(self) -> int | None:
        """The student layer (1-based) whose value vectors the value-relation term reads, or None."""
        layers = [term.value_layer for term in self._term.values() if term.value_layer is not None]
        return layers[0] if layers else None

    def capture_values(self, model, terms=None):
        """Context manager: captures the student's projections the active terms read (the value
        vectors of the value-relation term, the query/key/value vectors of MiniLMv2 relations;
        ``hooks.capture_projections``). Yields ``{(projection, layer): [B, T_b, D_S]}``, empty
        when no term needs any."""
        wanted = set().union(*(self._term[name].projections for name in self._active(terms)))
        return hooks.capture_projections(model, wanted)

    @contextlib.contextmanager
    def only_layers(self, student_layers):
        """Within the block, only the layer pairs of student layers ``student_layers`` count (the
        embedding pair 0 with layer 1; terms of the last layer only with it): a progressive
        stage (MobileBERT, Sun et al. 2020 §3.5). None: every pair."""
        if student_layers is None:
            yield
            return
        keep = set(student_layers) | ({0} if 1 in student_layers else set())
        saved = {}
        for name, term in self._term.items():
            if hasattr(term, "layer_map"):
                saved[name] = ("layer_map", term.layer_map)
                term.layer_map = {s: t for s, t in term.layer_map.items() if s in keep}
            elif term.projections:
                layer = max(layer for _, layer in term.projections)
                if layer not in keep:
                    saved[name] = ("term", term)
        removed = {name: self._term.pop(name) for name, (what, _) in saved.items() if what == "term"}
        terms = self.terms
        self.terms = tuple(t for t in terms if t not in removed)
        try:
            yield
        finally:
            self.terms = terms
            self._term.update(removed)
            for name, (what, value) in saved.items():
                if what == "layer_map":
                    self._term[name].layer_map = value

    def forward(self, student_outputs, batch: dict, values=None, terms=None, world_size: int = 1) -> DistillationOutput:
        """The loss of one batch.

        Args:
            student_outputs: the student's transformers output, with ``hidden_states`` (L_S + 1
                entries [B, T_b, D_S]) and ``attentions`` (L_S entries [B, H, T_b, T_b]) when the
                terms need them (``output_flags``), and ``logits`` [B, C].
            batch: the batch dict (teacher knowledge and attention_mask; labels for the hard term).
            values: what ``capture_values`` captured (``{(projection, layer): [B, T_b, D_S]}``),
                when a relation term is active.
            terms: a subset of the terms set up (default: all of them).
            world_size: data-parallel ranks whose means are global-batch means (one all-reduce
                of each denominator; every rank must compute the same terms). 1: this batch alone.
        Returns: DistillationOutput(loss, terms), float32 scalars.
        Raises: ModelError when the student's output lacks what a term needs.
        """
        parts: dict[str, torch.Tensor] = {}
        for name in self._active(terms):
            out = self._term[name](student_outputs, values, batch, world_size, self.training)
            parts.update({k: v * self.options.weight(k) for k, v in out.items() if isinstance(v, torch.Tensor)})
        total = torch.stack(list(parts.values())).sum() if parts else torch.zeros(())
        return DistillationOutput(total, parts)

    def extra_repr(self) -> str:
        """The terms and maps, for ``print(loss_fn)``."""
        return (
            f"terms={self.terms}, hidden_map={self.hidden_map}, attention_map={self.attention_map}, "
            f"value_relation={self.value_relation}, temperature={self.options.temperature}"
        )
