"""``ExtractSpec``: what knowledge to take from the teacher and how to store it.

The kinds it may name, and their canonical order, are the registry's (``knowledge.registry``);
depth, length and width strategies parse with ``config.specs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hsk_cache.config.specs import CODECS, DTYPES, DimSpec, LayerSpec, TokenSpec
from hsk_cache.errors import ConfigError
from hsk_cache.knowledge import registry

ROW_KINDS = ("attention_probs", "value_relation", "attention_relations")  # rows over keys: key_topk applies


@dataclass(frozen=True)
class ExtractSpec:
    """What knowledge to take from the teacher and how to store it.

    Attributes:
        layers: depth of the hidden states (``LayerSpec``). tokens: length (``TokenSpec``).
        dims: width (``DimSpec``). knowledge: the kinds, canonical (registry) order.
        dtype: stored precision (``config.specs.DTYPES``). codec: ``none``, ``zstd`` or ``blosc``.
        attention_layers: teacher layers (1..L) whose attention probabilities are stored, for the
            kept query tokens over all keys.
        value_relation_layer: the layer (1..L, None = last) whose value relation
            softmax(V·Vᵀ/√d_head) is stored (MiniLM).
        importance_layer: the layer whose [CLS] attention ranks tokens for top-k (None = the
            stored layer itself).
        seed: random token and dimension choices (and static masks).
        options: the selected kinds' own options (``KnowledgeKind.options``: a relation kind's
            layer and relation heads, the masked-LM kind's top-k …), by name; canonical: every
            option of a selected kind, its default where not given, the others dropped.
        key_topk: 0 stores attention-like rows (attention_probs, value_relation,
            attention_relations) over all T keys; k ≥ 1 stores each row as its k largest
            probabilities, their key positions and the remaining mass (``knowledge.sparse_rows``).
    Raises: ConfigError (field ``dtype``, ``codec``, ``knowledge``, ``key_topk`` or the option's
        name) for an unknown or bad value.
    """

    layers: LayerSpec = field(default_factory=LayerSpec)
    tokens: TokenSpec = field(default_factory=TokenSpec)
    dims: DimSpec = field(default_factory=DimSpec)
    knowledge: tuple[str, ...] = ("hidden_states", "logits")
    dtype: str = "float16"
    codec: str = "none"
    attention_layers: LayerSpec = field(default_factory=LayerSpec)
    value_relation_layer: int | None = None
    importance_layer: int | None = None
    seed: int = 0
    options: dict = field(default_factory=dict)
    key_topk: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown {{dtype}} {self.dtype!r}: use one of {', '.join(DTYPES)}", field="dtype")
        if self.codec not in CODECS:
            raise ConfigError(f"unknown {{codec}} {self.codec!r}: use one of {', '.join(CODECS)}", field="codec")
        names = registry.names()
        unknown = set(self.knowledge) - set(names)
        if unknown or not self.knowledge:
            raise ConfigError(
                f"unknown knowledge kind(s) {sorted(unknown)}: use a comma list of {', '.join(names)}",
                field="knowledge",
            )
        # canonical: deduplicated, in registry order, so describe() ignores the order given
        object.__setattr__(self, "knowledge", tuple(k for k in names if k in self.knowledge))
        known = {name for kind in registry.KINDS for name in kind.options}
        unknown = set(self.options) - known
        if unknown:
            name = sorted(unknown)[0]
            raise ConfigError(
                f"unknown knowledge option {name!r}: the kinds know {', '.join(sorted(known)) or 'none'}", field=name
            )
        options = {}
        for kind in registry.kinds(self.knowledge):
            mine = {name: self.options.get(name, default) for name, default in kind.options.items()}
            kind.check_options(mine)
            options.update(mine)
        object.__setattr__(self, "options", dict(sorted(options.items())))
        self._check_key_topk()

    def _check_key_topk(self) -> None:
        k = self.key_topk
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ConfigError(
                f"{{key_topk}} {k!r}: use 0 (rows over all keys) or a whole number of keys ≥ 1",
                field="key_topk",
                value=k,
            )
        rows = [name for name in ROW_KINDS if name in self.knowledge]
        if k and not rows:
            raise ConfigError(
                f"{{key_topk}} {k} keeps the top keys of attention-like rows, and the knowledge "
                f"{','.join(self.knowledge)} has none: add one of {', '.join(ROW_KINDS)} or drop {{key_topk}}",
                field="key_topk",
                value=k,
            )

    def option(self, name: str):
        """The value of a selected kind's option ``name`` (its default when not given)."""
        return self.options[name]

    @property
    def needs_attention(self) -> bool:
        """The teacher must return attention probabilities (eager attention): some kind asks."""
        return any(kind.needs_attention(self) for kind in registry.kinds(self.knowledge))

    @property
    def needs_mlm_head(self) -> bool:
        """The teacher must run with its masked-LM head: some kind reads its logits."""
        return any(kind.needs_mlm_head for kind in registry.kinds(self.knowledge))

    def describe(self) -> dict:
        """The canonical JSON form stored in the manifest and compared on resume."""
        out = {
            "layers": self.layers.describe(),
            "tokens": self.tokens.describe(),
            "dims": self.dims.describe(),
            "knowledge": list(self.knowledge),
            "dtype": self.dtype,
            "codec": self.codec,
            "importance_layer": self.importance_layer,
            "seed": self.seed,
        }
        if "attention_probs" in self.knowledge:
            out["attention_layers"] = self.attention_layers.describe()
        if "value_relation" in self.knowledge:
            out["value_relation_layer"] = self.value_relation_layer
        if self.options:
            out["options"] = dict(self.options)
        if self.key_topk:
            out["key_topk"] = self.key_topk
        return out

    @classmethod
    def parse(
        cls,
        layers="last",
        tokens="all",
        dims="all",
        knowledge="hidden_states,logits",
        dtype="float16",
        codec="none",
        attention_layers="last",
        value_relation_layer=None,
        importance_layer=None,
        seed=0,
        options=None,
        key_topk=0,
    ) -> ExtractSpec:
        """A spec from its strings (as ``hsk extract`` takes them; ``knowledge`` a comma list or
        a sequence). Raises: ConfigError naming the field and the value."""
        kinds = (
            tuple(k.strip() for k in knowledge.split(",") if k.strip())
            if isinstance(knowledge, str)
            else tuple(knowledge)
        )
        return cls(
            LayerSpec.parse(layers),
            TokenSpec.parse(tokens),
            DimSpec.parse(dims),
            kinds,
            dtype,
            codec,
            LayerSpec.parse(attention_layers, "attention_layers"),
            _layer_number(value_relation_layer, "value_relation_layer"),
            _layer_number(importance_layer, "importance_layer"),
            seed,
            dict(options or {}),
            _key_count(key_topk),
        )


def _key_count(value) -> int:
    """``key_topk`` from a string or number ("all" or None: 0). Raises: ConfigError."""
    if value is None or value == "all":
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{{key_topk}} {value!r}: use a whole number of keys (0: all)", field="key_topk", value=value
        ) from None


def _layer_number(value, name: str) -> int | None:
    if value is None or value == "last" or value == "same":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{{{name}}} {value!r}: use a layer number ≥ 1 or last", field=name) from None
    if number < 1:
        raise ConfigError(f"{{{name}}} {value!r}: attention layers count from 1", field=name)
    return number
