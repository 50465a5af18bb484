"""Hidden states: the teacher's layer outputs at kept tokens, optionally width-selected.

Source: TinyBERT (Jiao et al. 2020, Eq. 7, hidden-state MSE through W_h); the minimum-knowledge
study (Liu et al. 2021: depth §4.1, length §4.2, width §4.3); MobileBERT's feature maps.

Teacher outputs: ``hidden_states[l]`` [B, T, D] of each stored layer l (0 = embeddings); with
top-k tokens, the [CLS] attention row of layer max(l, 1) (or the importance layer).

| batch key     | shape          | dtype   | content                                            |
|---------------|----------------|---------|----------------------------------------------------|
| token_index   | [B, L_k, K]    | int64   | kept positions, −1 = none                          |
| hidden_states | [B, L_k, K, D] | float32 | states at kept tokens, 0 at dropped tokens/dims    |
| hidden_mask   | [B, L_k, K, D] | bool    | kept elements (only when width is selected)        |

| array         | shape            | dtype | content                                          |
|---------------|------------------|-------|--------------------------------------------------|
| token_index   | [N, L_k, K]      | int16 | kept positions, −1 = none                        |
| hidden_states | [N, L_k, K, D']  | q     | states at kept tokens (D' = D, or kept dims)     |
| dim_index     | [D']             | int16 | kept dimensions (uniform/random width), global   |
| hidden_values | [N, L_k, M]      | q     | magnitude width: kept values, row-major          |
| hidden_mask   | [N, L_k, K, D/8] | uint8 | magnitude width: packed bit mask                 |
| *_scale       | leading axes     | f32   | int8, float8_e4m3: per-row absmax / 127, / 448   |
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hsk_cache.errors import CacheError, ModelError
from hsk_cache.knowledge import losses
from hsk_cache.knowledge.kind import (
    ArraySpec,
    KnowledgeKind,
    LossOptions,
    Term,
    dequantized,
    index_array,
    pad,
    quantized,
    trim,
    value_arrays,
)
from hsk_cache.knowledge.quantize import STORAGE_DTYPE, needs_scale
from hsk_cache.select import depth, length, width


class HiddenStates(KnowledgeKind):
    """Hidden states of the layers of ``spec.layers`` at the kept tokens (see the module docstring)."""

    name = "hidden_states"
    batch_keys = ("token_index", "hidden_states", "hidden_mask")
    index_keys = ("token_index",)
    stage = "hidden"

    def needs_attention(self, spec) -> bool:
        """Top-k tokens rank by attention."""
        return spec.tokens.kind == "topk"

    def resolve(self, spec, config, max_length: int, selected: bool) -> dict:
        """Stored layers (when selected), and the width the manifest always records: D', M and
        the dimension index of uniform/random width."""
        d = config.hidden_size
        index = width.dim_index(spec.dims, d, spec.seed)
        k = spec.tokens.kept_tokens(max_length)
        return {
            "layers": spec.layers.resolve(config.num_hidden_layers) if selected else (),
            "kept_dims": spec.dims.kept_dims(d),
            "slots": width.max_kept_elements(spec.dims.fraction, k, d) if spec.dims.kind == "magnitude" else 0,
            "dim_index": index,
        }

    def hidden_layers_read(self, plan) -> set[int]:
        """The stored layers."""
        return set(plan.layers)

    def attention_layers_read(self, plan) -> set[int]:
        """With top-k tokens: the ranking layer of each stored layer."""
        if plan.spec.tokens.kind != "topk":
            return set()
        return {plan.ranking_layer(max(l, 1)) for l in plan.layers}

    def select(self, outputs, batch, plan) -> dict[str, torch.Tensor]:
        """token_index [B, L_k, K], hidden_states [B, L_k, K, D] (masked), hidden_mask when width is selected."""
        index = torch.stack([plan.select_tokens(outputs, batch, max(l, 1)) for l in plan.layers], dim=1)
        hidden = torch.stack(
            [length.gather_tokens(outputs.hidden_states[l], index[:, i]) for i, l in enumerate(plan.layers)], dim=1
        )
        valid = index >= 0
        mask = None
        if plan.spec.dims.kind == "magnitude":
            mask = width.magnitude_mask(hidden, valid, plan.spec.dims.fraction)
        elif plan.dim_index is not None:
            mask = torch.zeros_like(hidden, dtype=torch.bool)
            mask[..., torch.from_numpy(plan.dim_index).to(mask.device)] = valid[..., None]
        out = {"token_index": index, "hidden_states": hidden if mask is None else hidden * mask}
        if mask is not None:
            out["hidden_mask"] = mask
        return out

    def arrays(self, plan, n: int) -> list[ArraySpec]:
        """token_index, then hidden_values + hidden_mask (magnitude) or hidden_states (+ dim_index)."""
        layers, k, d, dtype = len(plan.layers), plan.kept_tokens, plan.hidden_size, plan.spec.dtype
        out = [index_array("token_index", (n, layers, k))]
        kind = plan.spec.dims.kind
        if kind == "magnitude":  # the scale follows the mask (the order of format version 2)
            out.append(ArraySpec("hidden_values", (n, layers, plan.slots), STORAGE_DTYPE[dtype], plan.spec.codec))
            out.append(ArraySpec("hidden_mask", (n, layers, k, math.ceil(d / 8)), "uint8", plan.spec.codec))
            if needs_scale(dtype):
                out.append(ArraySpec("hidden_values_scale", (n, layers), "float32", plan.spec.codec))
            return out
        kept = plan.kept_dims if kind in ("uniform", "random") else d
        out += value_arrays("hidden_states", (n, layers, k, kept), plan)
        if kind in ("uniform", "random"):
            out.append(ArraySpec("dim_index", (kept,), "int16", "zstd", per_example=False))
        return out

    def encode(self, knowledge: dict, plan) -> dict[str, np.ndarray]:
        """Pad to K; pack magnitude values into M slots, or keep the D' dimensions; quantize.

        Raises: CacheError if a magnitude mask keeps more elements than the M slots (a bug).
        """
        out = {"token_index": pad(knowledge["token_index"], 2, plan.kept_tokens, -1).astype(np.int16)}
        hidden = pad(knowledge["hidden_states"], 2, plan.kept_tokens, 0.0)
        if plan.spec.dims.kind == "magnitude":
            mask = pad(knowledge["hidden_mask"], 2, plan.kept_tokens, False)
            kept = int(mask.reshape(*mask.shape[:2], -1).sum(-1).max(initial=0))
            if kept > plan.slots:  # pack_values would drop values whose mask bits stay set
                raise CacheError(
                    f"a magnitude mask keeps {kept} elements but the cache has {plan.slots} slots: "
                    "the mask and the slot count disagree (a bug; please report it)"
                )
            quantized(out, "hidden_values", pack_values(hidden, mask, plan.slots), plan.spec.dtype)
            out["hidden_mask"] = np.packbits(mask, axis=-1)
        else:
            kept = hidden if plan.dim_index is None else hidden[..., plan.dim_index]
            quantized(out, "hidden_states", kept, plan.spec.dtype)
        return out

    def decode(self, rows: dict[str, np.ndarray], plan, width: int) -> dict[str, torch.Tensor]:
        """Dense float32 [B, L_k, K_b, D] states (K_b: the batch's widest kept prefix) and masks."""
        index = rows["token_index"].astype(np.int64)
        k = trim(index)
        valid = index[..., :k] >= 0
        dtype = plan.spec.dtype
        if plan.spec.dims.kind == "magnitude":
            mask = np.unpackbits(rows["hidden_mask"], axis=-1, count=plan.hidden_size).astype(bool)
            hidden = unpack_values(dequantized(rows, "hidden_values", dtype), mask)[:, :, :k]
            mask = mask[:, :, :k]
        elif plan.dim_index is not None:
            kept = dequantized(rows, "hidden_states", dtype)[:, :, :k]
            hidden = np.zeros(kept.shape[:-1] + (plan.hidden_size,), dtype=np.float32)
            hidden[..., plan.dim_index] = kept
            mask = np.zeros(hidden.shape, dtype=bool)
            mask[..., plan.dim_index] = valid[..., None]
        else:
            hidden, mask = dequantized(rows, "hidden_states", dtype)[:, :, :k], None
        out = {
            "token_index": torch.from_numpy(index[..., :k]),
            "hidden_states": torch.from_numpy(np.ascontiguousarray(hidden)),
        }
        if mask is not None:
            out["hidden_mask"] = torch.from_numpy(mask)
        return out

    def term(self, plan, student_config, options: LossOptions) -> HiddenStatesTerm:
        """Σ over the layer map of MSE(h_S W_h, h_T) at kept tokens. Raises: ConfigError for a bad map."""
        return HiddenStatesTerm(plan, student_config, options)


class HiddenStatesTerm(Term):
    """Σ_{(s,t) ∈ layer_map} MSE(h_S^s W_h, h_T^t) over the kept tokens (and, with
    ``width_target="ignore"``, only the kept dimensions): TinyBERT Eq. 7 restricted to the kept
    knowledge, Liu et al. 2021 §4 (``losses.hidden_mse``), or with ``hidden_loss="cosine"``
    DistilBERT's cosine loss (``losses.hidden_cosine``). Owns W_h (``projection``, a Linear
    [D_S → D_T]) when the widths differ."""

    name = "hidden_states"
    stage = "hidden"

    def __init__(self, plan, student_config, options: LossOptions) -> None:
        self.layers = plan.layers
        self.layer_map = depth.layer_map(
            options.layer_map,
            student_config.num_hidden_layers,
            plan.teacher_layers,
            plan.layers,
            options.keep_top_pairs,
        )
        self.width_target = options.width_target
        self.loss = losses.hidden_cosine if options.hidden_loss == "cosine" else losses.hidden_mse
        widths_differ = student_config.hidden_size != plan.teacher_hidden_size
        self.projection = (
            torch.nn.Linear(student_config.hidden_size, plan.teacher_hidden_size) if widths_differ else None
        )

    def output_flags(self) -> dict[str, bool]:
        """Needs the student's hidden states."""
        return {"output_hidden_states": True}

    def modules(self) -> dict[str, torch.nn.Module]:
        """W_h, when the widths differ."""
        return {"projection": self.projection} if self.projection is not None else {}

    def __call__(self, outputs, values, batch: dict, world_size: int = 1, training: bool = False) -> dict:
        """{"hidden_states": loss}. Raises: ModelError when the outputs hold no hidden states."""
        hidden_states = getattr(outputs, "hidden_states", None)
        if not hidden_states:
            raise ModelError(
                "the student's output has no hidden_states: call the student with output_hidden_states=True "
                "(loss_fn.output_flags())"
            )
        total = 0
        for s, t in self.layer_map.items():
            i = self.layers.index(t)
            index = batch["token_index"][:, i]
            student = length.gather_tokens(hidden_states[s], index)
            if self.projection is not None:
                student = self.projection(student)
            mask = index >= 0
            if self.width_target == "ignore" and batch.get("hidden_mask") is not None:
                mask = batch["hidden_mask"][:, i]
            total = total + self.loss(student, batch["hidden_states"][:, i], mask, world_size)
        return {self.name: total}


def pack_values(hidden: np.ndarray, mask: np.ndarray, slots: int) -> np.ndarray:
    """[B, L, K, D] values and bool mask → [B, L, M] kept values in row-major mask order, 0-padded."""
    b, layers = hidden.shape[:2]
    flat_h, flat_m = hidden.reshape(b, layers, -1), mask.reshape(b, layers, -1)
    order = np.argsort(~flat_m, axis=-1, kind="stable")[..., :slots]
    values = np.take_along_axis(flat_h, order, axis=-1)
    return values * np.take_along_axis(flat_m, order, axis=-1)


def unpack_values(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Inverse of ``pack_values``: [B, L, M] values and [B, L, K, D] mask → dense [B, L, K, D]."""
    b, layers = mask.shape[:2]
    flat_m = mask.reshape(b, layers, -1)
    order = np.argsort(~flat_m, axis=-1, kind="stable")[..., : values.shape[-1]]
    dense = np.zeros(flat_m.shape, dtype=np.float32)
    np.put_along_axis(dense, order, values * np.take_along_axis(flat_m, order, axis=-1), axis=-1)
    return dense.reshape(mask.shape)
