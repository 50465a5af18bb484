"""What a knowledge kind is: the one interface every kind module implements.

A kind (``hidden_states``, ``attention_probs``, ``value_relation``, ``logits``, …) is one module
under ``hsk_cache/knowledge/`` holding one ``KnowledgeKind`` subclass, registered in
``knowledge.registry``. It declares everything about the kind, and no other module knows it:

- the **teacher outputs** it reads (``hidden_layers_read``, ``attention_layers_read``,
  ``value_layer``) and whether it needs attention probabilities at all (``needs_attention``);
- how **depth/length/width selection** applies to it (``resolve`` into the ``Plan``, ``select``);
- its **cache arrays** (``arrays``: names, shapes, dtypes, codecs; chunking is the store's, by
  row bytes) and **encode/decode** (quantization to the stored dtype and back to float32);
- its **batch keys** and their collate padding (``batch_keys``, ``index_keys`` padded with −1);
- its **size estimate** (each ``ArraySpec.role`` says how its bytes scale with kept tokens);
- its **loss term(s)** with their options (``term``, a ``Term``), used by ``DistillationLoss``.

Shape letters (DESIGN.md): B batch, N examples, T tokens (max length; T_b in a batch), K kept
tokens, L teacher layers, L_k / L_a stored layers, H heads, D hidden width, D' kept width,
M magnitude slots, C classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from hsk_cache.errors import ConfigError
from hsk_cache.knowledge import quantize, sparse_rows

ITEMSIZE = {"int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "float16": 2, "int32": 4, "float32": 4, "int64": 8}
ROLES = ("example", "index", "values", "key_rows", "real_tokens")
WIDTH_TARGETS = ("zero", "ignore")
ATTENTION_LOSSES = ("kl", "mse")
HIDDEN_LOSSES = ("mse", "cosine")
HEAD_MAPS = ("strict", "mean", "relation")


@dataclass(frozen=True)
class ArraySpec:
    """One stored array.

    Attributes:
        name: the array's name in the Zarr group.
        shape: its full shape, N first for per-example arrays.
        dtype: the stored numpy dtype name (``ITEMSIZE``'s keys).
        codec: ``none``, ``zstd`` or ``blosc``.
        per_example: chunked along N (False for small global arrays such as dim_index, one chunk).
        role: how the size estimate treats its bytes: ``example`` (token ids and labels, known
            before the teacher runs), ``index`` (kept positions, −1 padded), ``values`` (float
            knowledge at kept tokens), ``key_rows`` (rows over all T keys: scaled by the mean
            real length too) or ``real_tokens`` (values at every real token, such as per-token
            logits: scaled by the mean real length alone).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    codec: str
    per_example: bool = True
    role: str = "values"

    def __post_init__(self) -> None:
        if self.role not in ROLES or self.dtype not in ITEMSIZE:
            raise ValueError(
                f"array {self.name}: role {self.role!r} / dtype {self.dtype!r}: use {ROLES} / {tuple(ITEMSIZE)}"
            )

    def row_bytes(self) -> int:
        """Bytes of one example's row (the shape without N)."""
        return ITEMSIZE[self.dtype] * math.prod(self.shape[1:])

    def nbytes(self) -> int:
        """Bytes of the whole array, uncompressed."""
        return ITEMSIZE[self.dtype] * math.prod(self.shape)


@dataclass(frozen=True, kw_only=True)
class LossOptions:
    """The options of the loss terms (``DistillationLoss``'s keywords; each kind reads its own).

    Attributes:
        layer_map / attention_map: ``uniform``, ``uniform:L_top`` or ``s:t,…`` pairs (student
            layer: teacher layer), resolved against the stored layers (``select.depth.layer_map``).
        keep_top_pairs: keep only the top N student layers of a map (None: all).
        head_map: ``strict``, ``mean`` or ``relation`` (value relation with the teacher's head count).
        width_target: ``zero`` (dropped dimensions are targets of 0) or ``ignore``.
        attention_loss: ``kl`` (MiniLM Eq. 3) or ``mse`` (TinyBERT Eq. 6).
        temperature: τ > 0 of the logits term. hard_label_weight: ≥ 0, weight of gold labels.
        hidden_loss: ``mse`` (TinyBERT Eq. 7) or ``cosine`` (DistilBERT's cosine embedding loss,
            1 − cos(h_S W_h, h_T) per kept token).
        term_weights: (term, weight ≥ 0) pairs multiplying terms (default 1 each; a recipe's
            weights, e.g. DistilBERT's 5·soft targets + 2·MLM + 1·cosine).
    """

    layer_map: str = "uniform"
    attention_map: str = "uniform"
    keep_top_pairs: int | None = None
    head_map: str = "strict"
    width_target: str = "zero"
    attention_loss: str = "kl"
    temperature: float = 1.0
    hard_label_weight: float = 0.0
    hidden_loss: str = "mse"
    term_weights: tuple[tuple[str, float], ...] = ()

    def weight(self, term: str) -> float:
        """The weight of ``term`` (1 unless ``term_weights`` names it)."""
        return dict(self.term_weights).get(term, 1.0)

    def __post_init__(self) -> None:
        """Raises: ConfigError naming the field and value of an unknown option or a bad number."""
        for name, allowed in (
            ("width_target", WIDTH_TARGETS),
            ("attention_loss", ATTENTION_LOSSES),
            ("head_map", HEAD_MAPS),
            ("hidden_loss", HIDDEN_LOSSES),
        ):
            value = getattr(self, name)
            if value not in allowed:
                choices = " or ".join(allowed) if len(allowed) == 2 else "one of " + ", ".join(allowed)
                raise ConfigError(f"unknown {{{name}}} {value!r}: use {choices}", field=name, value=value)
        if not self.temperature > 0 or self.hard_label_weight < 0:
            raise ConfigError(
                f"{{temperature}} {self.temperature} / {{hard_label_weight}} {self.hard_label_weight}: "
                "use a temperature > 0 and a weight ≥ 0",
                field="temperature",
                value=self.temperature,
            )
        for term, weight in self.term_weights:
            if not weight >= 0:
                raise ConfigError(
                    f"{{term_weights}} {term}={weight}: use a weight ≥ 0", field="term_weights", value=weight
                )


class Term:
    """One kind's loss term against a student, resolved once (layer pairs, heads, W_h).

    ``DistillationLoss`` asks every active term for the student outputs it needs, registers the
    modules it owns (W_h) so optimizers and checkpoints see them, and sums the returned values.
    """

    name: str = ""
    stage: str = "hidden"  # the hsk train stage that trains it: hidden (intermediate) or prediction

    def output_flags(self) -> dict[str, bool]:
        """The ``output_hidden_states`` / ``output_attentions`` flags this term needs."""
        return {}

    @property
    def value_layer(self) -> int | None:
        """The student layer (1-based) whose value vectors this term reads, or None."""
        return None

    @property
    def projections(self) -> set[tuple[str, int]]:
        """The student's ``(projection, layer)`` outputs this term reads (``query``/``key``/
        ``value``, layers 1-based; ``models.hooks.capture_projections``): by default the value
        projection of ``value_layer``."""
        return set() if self.value_layer is None else {("value", self.value_layer)}

    def modules(self) -> dict[str, torch.nn.Module]:
        """Trainable modules the term owns, by attribute name (W_h: ``projection``)."""
        return {}

    def __call__(self, outputs, values, batch: dict, world_size: int = 1) -> dict[str, torch.Tensor]:
        """{term name: scalar float32 loss} for one batch (``world_size``: the global-batch means
        of ``losses``)."""
        raise NotImplementedError


class KnowledgeKind:
    """The interface of one knowledge kind (see the module docstring). Subclasses set ``name``,
    ``batch_keys`` and ``index_keys`` and override what applies to them."""

    name: str = ""
    batch_keys: tuple[str, ...] = ()
    index_keys: tuple[str, ...] = ()  # batch keys padded with −1 when collated (the rest: 0 / False)
    example_keys: tuple[str, ...] = ()  # stored per-example arrays prepare_examples adds: teacher inputs
    stage: str = "hidden"  # hidden (intermediate layers), prediction or general (corpus knowledge)
    options: dict = {}  # the kind's own ExtractSpec options and their defaults (``ExtractSpec.options``)
    needs_mlm_head: bool = False  # the teacher must be loaded with its masked-LM head

    def check_options(self, options: dict) -> None:
        """Raises: ConfigError naming the option when one of this kind's ``options`` values is bad."""

    def prepare_examples(self, examples, spec, tokenizer):
        """The examples the teacher and the student see (static masking rewrites them); unchanged by default."""
        return examples

    def needs_attention(self, spec) -> bool:
        """Whether extraction of this kind needs the teacher's attention probabilities."""
        return False

    def resolve(self, spec, config, max_length: int, selected: bool) -> dict:
        """Fields of the ``Plan`` this kind fixes for a teacher with transformers ``config`` and
        inputs of ``max_length`` tokens (``selected``: the spec asks for this kind).
        Raises: ConfigError for layers outside the teacher."""
        return {}

    def manifest_fields(self, plan) -> dict:
        """This kind's resolved fields for the manifest's ``kinds`` section (JSON values), when
        they are not among the ``Plan``'s named fields (those have their own manifest keys)."""
        return {}

    def from_manifest(self, stored) -> dict:
        """``Plan.extra`` fields from this kind's ``kinds`` section of a manifest (``manifest_fields``' output)."""
        return {}

    def hidden_layers_read(self, plan) -> set[int]:
        """Hidden-state layers (0 = embeddings) whose [B, T, D] outputs selection reads."""
        return set()

    def attention_layers_read(self, plan) -> set[int]:
        """Attention layers (1-based) whose [B, H, T, T] probabilities selection reads."""
        return set()

    def attention_maps_read(self, plan) -> set[int]:
        """Those of ``attention_layers_read`` whose whole map selection reads; of the others only
        the [CLS] query row is read (top-k ranking), and only that row is kept ([B, H, 1, T])."""
        return set()

    def value_layer(self, plan) -> int | None:
        """The teacher layer (1-based) whose value projection must be captured, or None."""
        return None

    def projections_read(self, plan) -> set[tuple[str, int]]:
        """The teacher's ``(projection, layer)`` outputs selection reads besides ``value_layer``
        (``query``/``key``/``value``, 1-based; ``TeacherOutputs.projections``)."""
        return set()

    def select(self, outputs, batch, plan) -> dict[str, torch.Tensor]:
        """One batch's teacher outputs (``plan.TeacherOutputs``) → this kind's batch tensors."""
        raise NotImplementedError

    def arrays(self, plan, n: int) -> list[ArraySpec]:
        """The cache arrays of this kind for N = ``n`` examples."""
        raise NotImplementedError

    def encode(self, knowledge: dict, plan) -> dict[str, np.ndarray]:
        """Batch tensors of this kind → rows of its arrays (token axis padded to K, keys to T)."""
        raise NotImplementedError

    def decode(self, rows: dict[str, np.ndarray], plan, width: int) -> dict[str, torch.Tensor]:
        """Rows of its arrays for one batch → batch tensors (float32), keys trimmed to ``width``."""
        raise NotImplementedError

    def term(self, plan, student_config, options: LossOptions) -> Term:
        """The loss term of this kind for a student with transformers ``student_config``.
        Raises: ConfigError when the options cannot serve this student and knowledge."""
        raise NotImplementedError


def pad(x, axis: int, size: int, value) -> np.ndarray:
    """Pad a tensor or array along ``axis`` to ``size`` with ``value``; returns numpy."""
    x = x.numpy() if isinstance(x, torch.Tensor) else x
    if x.shape[axis] == size:
        return x
    shape = list(x.shape)
    shape[axis] = size - x.shape[axis]
    return np.concatenate([x, np.full(shape, value, dtype=x.dtype)], axis=axis)


def quantized(out: dict, name: str, values: np.ndarray, dtype: str) -> None:
    """``out[name]`` ← values in the stored dtype, and ``out[name + "_scale"]`` for int8."""
    out[name], scale = quantize.encode(values, dtype)
    if scale is not None:
        out[f"{name}_scale"] = scale


def dequantized(rows: dict, name: str, dtype: str) -> np.ndarray:
    """Rows of array ``name`` (and its ``_scale``) back to float32."""
    return quantize.decode(rows[name], rows.get(f"{name}_scale"), dtype)


def value_arrays(name: str, shape: tuple[int, ...], plan, role: str = "values") -> list[ArraySpec]:
    """A float knowledge array in the plan's stored dtype and codec, with its int8 scale."""
    dtype, codec = plan.spec.dtype, plan.spec.codec
    out = [ArraySpec(name, shape, quantize.STORAGE_DTYPE[dtype], codec, role=role)]
    if quantize.needs_scale(dtype):
        scale_role = role if role == "real_tokens" else "values"  # one scale per row of values
        out.append(ArraySpec(f"{name}_scale", shape[:-1], "float32", codec, role=scale_role))
    return out


def index_array(name: str, shape: tuple[int, ...]) -> ArraySpec:
    """Kept positions, int16 with −1 padding, zstd."""
    return ArraySpec(name, shape, "int16", "zstd", role="index")


def check_layer(layer: int, depth: int, name: str) -> int:
    """``layer`` when it is an attention layer 1..depth. Raises: ConfigError naming field ``name``."""
    if not 1 <= layer <= depth:
        raise ConfigError(f"{{{name}}} {layer}: the teacher has attention layers 1..{depth}", field=name, value=layer)
    return layer


def row_arrays(name: str, shape: tuple[int, ...], plan) -> list[ArraySpec]:
    """The arrays of attention-like rows ``shape`` = (N, ..., K, T): over all T keys (role
    ``key_rows``), or with ``spec.key_topk`` = k the top-k values (N, ..., K, k), their int16 key
    positions and the float32 rest mass (N, ..., K) (``knowledge.sparse_rows``)."""
    k = plan.spec.key_topk
    if not k:
        return value_arrays(name, shape, plan, "key_rows")
    keys, rest = sparse_rows.keys_of(name)
    sparse = (*shape[:-1], k)
    return [
        *value_arrays(name, sparse, plan),
        ArraySpec(keys, sparse, "int16", "zstd", role="index"),
        ArraySpec(rest, shape[:-1], "float32", plan.spec.codec),
    ]


def select_rows(name: str, rows: torch.Tensor, plan) -> dict[str, torch.Tensor]:
    """{name: rows [..., K_b, T_b]} as selected, or with ``spec.key_topk`` = k their top-k
    (``sparse_rows.sparsify``): {name: values [..., K_b, k], name_keys, name_rest [..., K_b]}."""
    k = plan.spec.key_topk
    if not k:
        return {name: rows}
    sparse = sparse_rows.sparsify(rows, k)
    keys, rest = sparse_rows.keys_of(name)
    return {name: sparse.values, keys: sparse.keys, rest: sparse.rest}


def encode_rows(knowledge: dict, index_key: str, rows_key: str, plan) -> dict[str, np.ndarray]:
    """Query rows over all keys (attention-like knowledge) → stored rows: the index [..., K_b]
    padded to K with −1 (int16), the rows [..., K_b, T_b] padded to [..., K, T] with 0 and
    quantized to the plan's dtype; sparse rows (``key_topk``) padded along K only (keys with −1)."""
    index, rows = knowledge[index_key], knowledge[rows_key]
    out = {index_key: pad(index, index.ndim - 1, plan.kept_tokens, -1).astype(np.int16)}
    if plan.spec.key_topk:
        keys, rest = sparse_rows.keys_of(rows_key)
        quantized(out, rows_key, pad(rows, rows.ndim - 2, plan.kept_tokens, 0.0), plan.spec.dtype)
        key_rows = knowledge[keys]
        out[keys] = pad(key_rows, key_rows.ndim - 2, plan.kept_tokens, -1).astype(np.int16)
        mass = knowledge[rest]
        out[rest] = pad(mass, mass.ndim - 1, plan.kept_tokens, 0.0).astype(np.float32)
        return out
    padded = pad(pad(rows, rows.ndim - 2, plan.kept_tokens, 0.0), rows.ndim - 1, plan.max_length, 0.0)
    quantized(out, rows_key, padded, plan.spec.dtype)
    return out


def decode_rows(rows: dict[str, np.ndarray], index_key: str, rows_key: str, plan, width: int) -> dict:
    """Inverse of ``encode_rows`` for one batch: the index [..., K_b] int64 and float32 rows
    [..., K_b, T_b], K_b the batch's widest kept prefix and T_b = ``width``; sparse rows as
    float32 values and int64 keys [..., K_b, k] and float32 rest [..., K_b]."""
    index = rows[index_key].astype(np.int64)
    k = trim(index)
    out = {index_key: torch.from_numpy(index[..., :k])}
    if plan.spec.key_topk:
        keys, rest = sparse_rows.keys_of(rows_key)
        values = dequantized(rows, rows_key, plan.spec.dtype)[..., :k, :]
        out[rows_key] = torch.from_numpy(np.ascontiguousarray(values))
        out[keys] = torch.from_numpy(np.ascontiguousarray(rows[keys][..., :k, :].astype(np.int64)))
        out[rest] = torch.from_numpy(np.ascontiguousarray(rows[rest][..., :k].astype(np.float32)))
        return out
    values = dequantized(rows, rows_key, plan.spec.dtype)[..., :k, :width]
    out[rows_key] = torch.from_numpy(np.ascontiguousarray(values))
    return out


def trim(index: np.ndarray) -> int:
    """Kept-token width of a batch: −1 entries trail, so the widest valid prefix suffices."""
    return max(1, int((index >= 0).sum(axis=-1).max()))
