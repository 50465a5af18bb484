"""General-distillation recipes: the knowledge, loss terms and weights of each published method.

A recipe presets, as plain mappings that explicit options override: ``spec``
(``ExtractSpec.parse`` keywords: what ``hsk extract --recipe`` stores), ``loss`` (``LossOptions``
keywords: what ``hsk train --recipe`` optimizes), ``stage`` (the general stage's optimizer
settings) and the ``schedule``. The student's head follows the knowledge (a masked-LM model with
``mlm``, else a base encoder); DistilBERT initializes it from teacher layers (``--student-from``).
Learning rates are ours for runs of a few thousand steps; the papers' batch sizes and step counts
(hundreds of thousands of steps over Wikipedia + BookCorpus) are not reproduced.

- ``minilm`` (Wang et al. 2020, Eq. 3–6): last-layer attention_probs and value_relation;
  KL(A_T‖A_S) + KL(VR_T‖VR_S) against the student's last layer.
- ``minilmv2`` (Wang et al. 2021, Eq. 1–4): Q-Q, K-K and V-V relations of the last layer with
  relation heads; Σ KL of the three.
- ``tinybert`` (Jiao et al. 2020, Eq. 6–9): hidden states of every layer (embeddings included) and
  attention of every layer; MSE(h_S W_h, h_T) + MSE(A_S, A_T) over the uniform map g(m) = m·L/M.
- ``distilbert`` (Sanh et al. 2019, §3): masked-LM soft targets over static masks and last-layer
  hidden states; 5·τ²·CE(soft, τ = 2) + 2·MLM + 1·cosine(h_S, h_T).
- ``mobilebert`` (Sun et al. 2020, Eq. 1–2, §3.5): hidden states and attention of every layer;
  feature-map MSE + attention KL, ``schedule="progressive"`` trains one layer at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

from hsk_cache.errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    """One general-distillation preset (module docstring).

    Attributes:
        name: the ``--recipe`` value. source: the paper and equations.
        spec: ``ExtractSpec.parse`` keywords (``knowledge``, ``layers``, ``attention_layers``, ``options`` …).
        loss: ``LossOptions`` keywords (``attention_loss``, ``hidden_loss``, ``term_weights`` …).
        stage: the general stage's ``lr`` and ``warmup_ratio``.
        schedule: ``joint`` (one stage, every term) or ``progressive`` (MobileBERT: one stage per
            student layer, the layers below frozen, then all together).
    """

    name: str
    source: str
    spec: MappingProxyType
    loss: MappingProxyType
    stage: MappingProxyType = field(default_factory=lambda: MappingProxyType({"lr": 5e-4, "warmup_ratio": 0.1}))
    schedule: str = "joint"


def _frozen(**values) -> MappingProxyType:
    return MappingProxyType(values)


RECIPES = {
    r.name: r
    for r in (
        Recipe(
            "minilm",
            "MiniLM (Wang et al. 2020), §3.1–3.2, Eq. 3–6: last-layer self-attention distributions and value relation",
            _frozen(knowledge="attention_probs,value_relation", attention_layers="last", value_relation_layer="last"),
            _frozen(attention_map="uniform", attention_loss="kl", head_map="strict"),
        ),
        Recipe(
            "minilmv2",
            "MiniLMv2 (Wang et al. 2021), §3, Eq. 1–4: Q-Q, K-K and V-V self-attention relations with relation heads",
            _frozen(knowledge="attention_relations"),
            _frozen(),
        ),
        Recipe(
            "tinybert",
            "TinyBERT general distillation (Jiao et al. 2020), §3.1, Eq. 6–9: embedding and layer hidden states "
            "(MSE through W_h) and attention matrices (MSE), uniform layer map g(m) = m·L/M",
            _frozen(knowledge="hidden_states,attention_probs", layers="all", attention_layers="all"),
            _frozen(layer_map="uniform", attention_map="uniform", attention_loss="mse", hidden_loss="mse"),
            stage=_frozen(lr=1e-4, warmup_ratio=0.1),
        ),
        Recipe(
            "distilbert",
            "DistilBERT (Sanh et al. 2019), §3: L = 5·L_ce (masked-LM soft targets, τ = 2) + 2·L_mlm + 1·L_cos, "
            "student initialized from every other teacher layer",
            _frozen(knowledge="hidden_states,mlm", layers="last"),
            _frozen(
                layer_map="uniform",
                hidden_loss="cosine",
                temperature=2.0,
                term_weights=(("mlm_soft", 5.0), ("mlm", 2.0), ("hidden_states", 1.0)),
            ),
            stage=_frozen(lr=5e-4, warmup_ratio=0.05),
        ),
        Recipe(
            "mobilebert",
            "MobileBERT (Sun et al. 2020), §3.1–3.5, Eq. 1–2: layer-wise feature-map MSE and attention KL, one "
            "student layer per teacher layer; progressive knowledge transfer trains one layer at a time",
            _frozen(knowledge="hidden_states,attention_probs", layers="all", attention_layers="all"),
            _frozen(layer_map="uniform", attention_map="uniform", attention_loss="kl", hidden_loss="mse"),
            schedule="progressive",
        ),
    )
}


def recipe(name: str) -> Recipe:
    """The recipe called ``name``. Raises: ConfigError (field ``recipe``) for an unknown one."""
    if name not in RECIPES:
        raise ConfigError(f"unknown {{recipe}} {name!r}: use one of {', '.join(RECIPES)}", field="recipe", value=name)
    return RECIPES[name]
