"""Encoder families: where each keeps its transformer layers and value projections, and how a
student of a given family is configured.

Supported (teachers and students, every knowledge kind): BERT, RoBERTa, DistilBERT, MPNet,
ELECTRA, DeBERTa-v2. The layer stack is found generically (the ``nn.ModuleList`` of the base
model with ``num_hidden_layers`` entries, under ``base_model_prefix``); only the value
projection inside a layer differs by family, and only the attention-dropout option name.
"""

from __future__ import annotations

from collections.abc import Mapping

from hsk_cache.errors import ConfigError, ModelError

# where each family's value projection V = x·W_V lives inside one transformer layer
VALUE_PROJECTIONS = {
    "bert": "attention.self.value",
    "roberta": "attention.self.value",
    "electra": "attention.self.value",
    "distilbert": "attention.v_lin",
    "mpnet": "attention.attn.v",
    "deberta-v2": "attention.self.value_proj",
}
# the query and key projections beside it (MiniLMv2's Q-Q and K-K relations)
QUERY_PROJECTIONS = {
    "bert": "attention.self.query",
    "roberta": "attention.self.query",
    "electra": "attention.self.query",
    "distilbert": "attention.q_lin",
    "mpnet": "attention.attn.q",
    "deberta-v2": "attention.self.query_proj",
}
KEY_PROJECTIONS = {
    "bert": "attention.self.key",
    "roberta": "attention.self.key",
    "electra": "attention.self.key",
    "distilbert": "attention.k_lin",
    "mpnet": "attention.attn.k",
    "deberta-v2": "attention.self.key_proj",
}
PROJECTIONS = {"query": QUERY_PROJECTIONS, "key": KEY_PROJECTIONS, "value": VALUE_PROJECTIONS}
FAMILIES = tuple(VALUE_PROJECTIONS)
_ATTENTION_DROPOUT = {"distilbert": "attention_dropout"}  # others: attention_probs_dropout_prob
_FFN = {"distilbert": "hidden_dim"}  # others: intermediate_size


# Families whose learned position ids start at pad_token_id + 1 (transformers'
# ``create_position_ids_from_input_ids``), so only max_position_embeddings − (pad_token_id + 1)
# positions are usable. ESM does this too but ESM-2 uses rotary positions; it is left out.
PADDING_OFFSET_FAMILIES = frozenset(
    {
        "roberta",
        "roberta-prelayernorm",
        "xlm-roberta",
        "xlm-roberta-xl",
        "camembert",
        "longformer",
        "data2vec-text",
        "ibert",
        "mpnet",
        "luke",
        "markuplm",
        "layoutlmv3",
        "lilt",
        "xmod",
    }
)


def _getter(config):
    return config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)


def max_positions(config) -> int:
    """The longest input (in tokens) a teacher's learned position embeddings cover.

    Args:
        config: a transformers config (or its dict form).
    Returns: max_position_embeddings, minus pad_token_id + 1 for the families in
        ``PADDING_OFFSET_FAMILIES`` (RoBERTa-style position ids start after the padding index:
        514 embeddings with pad_token_id 1 leave 512 positions).
    """
    get = _getter(config)
    positions = int(get("max_position_embeddings"))
    if get("model_type") in PADDING_OFFSET_FAMILIES:
        positions -= int(get("pad_token_id") or 0) + 1
    return positions


def family(config) -> str:
    """The model_type of a transformers config (or its dict form)."""
    return config.get("model_type") if isinstance(config, Mapping) else config.model_type


def check_family(config, role: str = "model") -> str:
    """Raises: ModelError naming the family when it is not one hsk-cache supports."""
    name = family(config)
    if name not in VALUE_PROJECTIONS:
        raise ModelError(
            f"the {role} is a {name!r} model, which hsk-cache does not support: use one of {', '.join(FAMILIES)}"
        )
    return name


def layer_stack(model) -> tuple[str, object]:
    """(state-dict name, module) of the model's transformer layers, e.g. ``bert.encoder.layer``.

    Raises: ModelError when the model has no ``nn.ModuleList`` of ``num_hidden_layers`` layers.
    """
    import torch

    depth = model.config.num_hidden_layers
    stacks = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) == depth and name
    ]
    stacks.sort(key=lambda item: item[0].rsplit(".", 1)[-1] not in ("layer", "layers"))  # the usual name first
    if stacks:
        return stacks[0]
    raise ModelError(
        f"{type(model).__name__} has no list of {depth} transformer layers: use a model of one of {', '.join(FAMILIES)}"
    )


def unwrap(model):
    """The transformers model inside DDP / DataParallel / compile wrappers (``.module``)."""
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    return model


def value_module(model, layer: int):
    """The value projection of transformer layer ``layer`` (1-based) of a supported encoder (or
    of the model a DDP wrapper holds).

    Raises: ModelError for an unsupported family or a layer outside 1..L.
    """
    return projection_module(model, "value", layer)


def projection_module(model, projection: str, layer: int):
    """The ``query``, ``key`` or ``value`` projection (x·W_Q, x·W_K, x·W_V; [B, T, D] outputs) of
    transformer layer ``layer`` (1-based) of a supported encoder (or of the model a DDP wrapper holds).

    Raises: ModelError for an unsupported family, an unknown projection or a layer outside 1..L.
    """
    model = unwrap(model)
    name = check_family(model.config)
    if projection not in PROJECTIONS:
        raise ModelError(f"unknown projection {projection!r}: use one of {', '.join(PROJECTIONS)}")
    _, layers = layer_stack(model)
    if not 1 <= layer <= len(layers):
        raise ModelError(
            f"{projection} projection of layer {layer}: {type(model).__name__} has layers 1..{len(layers)}"
        )
    return layers[layer - 1].get_submodule(PROJECTIONS[projection][name])


def attention_module(model, layer: int):
    """The self-attention module of transformer layer ``layer`` (1-based): the parent of its
    value projection (``…layer.N.attention.self`` for BERT). Raises: as ``projection_module``."""
    model = unwrap(model)
    projection_module(model, "value", layer)  # checks the family and the layer
    _, layers = layer_stack(model)
    return layers[layer - 1].get_submodule(VALUE_PROJECTIONS[family(model.config)].rsplit(".", 1)[0])


def returns_attention_probs(model) -> bool:
    """Whether the model's self-attention modules always return their probabilities as output 1
    (transformers 5 records ``attentions`` with hooks on those modules, ``_can_record_outputs``):
    then a hook can capture the layers selection reads without ``output_attentions``, which keeps
    every layer's [B, H, T, T] map alive until the forward ends. False for families and versions
    that return them only when asked (MPNet, DeBERTa-v2)."""
    model = unwrap(model)
    recorded = (getattr(type(model), "_can_record_outputs", None) or {}).get("attentions")
    target = getattr(recorded, "target_class", recorded)
    if not isinstance(target, type) or getattr(recorded, "index", 1) != 1:
        return False
    try:
        return isinstance(attention_module(model, 1), target)
    except ModelError:
        return False


def attention_dropout_key(config) -> str:
    """The name of the config field holding the attention-probability dropout of ``config``'s
    family: ``attention_dropout`` for DistilBERT, ``attention_probs_dropout_prob`` otherwise."""
    return _ATTENTION_DROPOUT.get(family(config), "attention_probs_dropout_prob")


def without_attention_dropout(model) -> None:
    """Turn off the attention-probability dropout of every layer (in place, config included).

    transformers' eager attention returns the probabilities *after* dropout: an attention loss
    against them would compare the teacher's rows with randomly zeroed, rescaled ones (and a KL
    against a zeroed entry is log 1e-12). Students that distil attention probabilities are
    therefore trained without attention dropout, so the distributions compared are the
    softmax outputs themselves (TinyBERT Eq. 3, MiniLM Eq. 3). Other dropout stays.

    Raises: ModelError for an unsupported family.
    """
    import torch

    name = check_family(model.config)
    _, layers = layer_stack(model)
    for layer in layers:
        attention = layer.get_submodule(VALUE_PROJECTIONS[name].rsplit(".", 1)[0])
        if isinstance(getattr(attention, "dropout", None), torch.nn.Dropout):
            attention.dropout.p = 0.0
    setattr(model.config, attention_dropout_key(model.config), 0.0)


def attention_dropout(model) -> float:
    """The attention-probability dropout of the model's first layer (0 when it has none)."""
    import torch

    name = family(model.config)
    if name not in VALUE_PROJECTIONS:
        return float(getattr(model.config, attention_dropout_key(model.config), 0.0) or 0.0)
    _, layers = layer_stack(model)
    dropout = getattr(layers[0].get_submodule(VALUE_PROJECTIONS[name].rsplit(".", 1)[0]), "dropout", None)
    return float(dropout.p) if isinstance(dropout, torch.nn.Dropout) else 0.0


def student_config(family_name: str, teacher_config: dict, layers: int, hidden: int, heads: int, ffn: int):
    """A config of ``family_name`` with the student's shape and the teacher's vocabulary (so the
    teacher's tokenizer serves it): vocab size, pad id, type vocabulary, and enough positions
    for the teacher's inputs (shifted for RoBERTa-style position ids).

    Raises: ConfigError for an unsupported family.
    """
    from transformers import AutoConfig

    if family_name not in VALUE_PROJECTIONS:
        raise ConfigError(
            f"{{student.family}} {family_name!r}: use one of {', '.join(FAMILIES)}",
            field="student.family",
            value=family_name,
        )
    pad = teacher_config.get("pad_token_id") or 0
    positions = max_positions(teacher_config)
    if family_name in PADDING_OFFSET_FAMILIES:
        positions += pad + 1
    config = AutoConfig.for_model(
        family_name, vocab_size=teacher_config["vocab_size"], pad_token_id=pad, max_position_embeddings=positions
    )
    reshape(config, layers, hidden, heads, ffn)
    if hasattr(config, "type_vocab_size") and family_name != "deberta-v2":
        config.type_vocab_size = max(teacher_config.get("type_vocab_size", 2), 1)
    if family_name == "electra":
        config.embedding_size = hidden
    return config


def reshape(config, layers: int, hidden: int, heads: int, ffn: int) -> None:
    """Give a config (in place) the student's depth, width, heads and feed-forward width, under
    each family's option names (DistilBERT's ``hidden_dim``, DeBERTa-v2's pooler width)."""
    config.num_hidden_layers, config.hidden_size, config.num_attention_heads = layers, hidden, heads
    setattr(config, _FFN.get(family(config), "intermediate_size"), ffn)
    if hasattr(config, "pooler_hidden_size"):  # DeBERTa-v2's pooler width defaults to 1536
        config.pooler_hidden_size = hidden
