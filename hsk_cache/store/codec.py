"""Knowledge ↔ stored arrays. Pure numpy/torch, no zarr.

``encode`` turns one batch's ``Knowledge`` into the rows of the cache arrays (padded to the
stored K and T, width-selected, quantized); ``decode`` turns rows read back into ``Knowledge``
(dense float32, trimmed to the batch's width), so training code never sees the storage format.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hsk_cache.errors import CacheError
from hsk_cache.knowledge import quantize
from hsk_cache.knowledge.batch import Knowledge
from hsk_cache.store.layout import Dims


@dataclass(frozen=True)
class Decoding:
    """What decoding needs besides the rows: the manifest's layer numbers and sizes."""

    dims: Dims
    layers: tuple[int, ...]
    attention_layers: tuple[int, ...]
    value_relation_layer: int | None
    dim_index: np.ndarray | None


def _pad(x, axis: int, size: int, value) -> np.ndarray:
    """Pad a tensor or array along ``axis`` to ``size`` with ``value``; returns numpy."""
    x = x.numpy() if isinstance(x, torch.Tensor) else x
    if x.shape[axis] == size:
        return x
    shape = list(x.shape)
    shape[axis] = size - x.shape[axis]
    return np.concatenate([x, np.full(shape, value, dtype=x.dtype)], axis=axis)


def _quantized(out: dict, name: str, values: np.ndarray, dtype: str) -> None:
    out[name], scale = quantize.encode(values, dtype)
    if scale is not None:
        out[f"{name}_scale"] = scale


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


def encode(knowledge: Knowledge, dims: Dims, dim_index: np.ndarray | None) -> dict[str, np.ndarray]:
    """One batch's knowledge → rows of every knowledge array (token axis padded to K, key axis to T).

    Raises: CacheError if a magnitude mask keeps more elements than the stored slots M.
    """
    out = {}
    if knowledge.hidden_states is not None:
        out["token_index"] = _pad(knowledge.token_index, 2, dims.k, -1).astype(np.int16)
        hidden = _pad(knowledge.hidden_states, 2, dims.k, 0.0)
        if dims.width == "magnitude":
            mask = _pad(knowledge.hidden_mask, 2, dims.k, False)
            kept = int(mask.reshape(*mask.shape[:2], -1).sum(-1).max(initial=0))
            if kept > dims.slots:  # pack_values would drop values whose mask bits stay set
                raise CacheError(
                    f"a magnitude mask keeps {kept} elements but the cache has {dims.slots} slots: "
                    "the mask and the slot count disagree (a bug; please report it)"
                )
            _quantized(out, "hidden_values", pack_values(hidden, mask, dims.slots), dims.dtype)
            out["hidden_mask"] = np.packbits(mask, axis=-1)
        else:
            _quantized(out, "hidden_states", hidden if dim_index is None else hidden[..., dim_index], dims.dtype)
    if knowledge.attention_probs is not None:
        out["attention_index"] = _pad(knowledge.attention_index, 2, dims.k, -1).astype(np.int16)
        probs = _pad(_pad(knowledge.attention_probs, 3, dims.k, 0.0), 4, dims.t, 0.0)
        _quantized(out, "attention_probs", probs, dims.dtype)
    if knowledge.value_relation is not None:
        out["value_index"] = _pad(knowledge.value_index, 1, dims.k, -1).astype(np.int16)
        relation = _pad(_pad(knowledge.value_relation, 2, dims.k, 0.0), 3, dims.t, 0.0)
        _quantized(out, "value_relation", relation, dims.dtype)
    if knowledge.logits is not None:
        out["logits"] = knowledge.logits.numpy().astype(np.float32)
    return out


def _dequantized(rows: dict, name: str, dtype: str) -> np.ndarray:
    return quantize.decode(rows[name], rows.get(f"{name}_scale"), dtype)


def _trim(index: np.ndarray) -> int:
    """Kept-token width of a batch: −1 entries trail, so the widest valid prefix suffices."""
    return max(1, int((index >= 0).sum(axis=-1).max()))


def decode(rows: dict[str, np.ndarray], info: Decoding, width: int) -> Knowledge:
    """Rows of the knowledge arrays for one batch → Knowledge, keys trimmed to ``width`` (T_b)."""
    dims = info.dims
    knowledge = Knowledge()
    if "token_index" in rows:
        index = rows["token_index"].astype(np.int64)
        k = _trim(index)
        valid = index[..., :k] >= 0
        if dims.width == "magnitude":
            mask = np.unpackbits(rows["hidden_mask"], axis=-1, count=dims.d).astype(bool)
            hidden, mask = (
                unpack_values(_dequantized(rows, "hidden_values", dims.dtype), mask)[:, :, :k],
                mask[:, :, :k],
            )
        elif info.dim_index is not None:
            kept = _dequantized(rows, "hidden_states", dims.dtype)[:, :, :k]
            hidden = np.zeros(kept.shape[:-1] + (dims.d,), dtype=np.float32)
            hidden[..., info.dim_index] = kept
            mask = np.zeros(hidden.shape, dtype=bool)
            mask[..., info.dim_index] = valid[..., None]
        else:
            hidden, mask = _dequantized(rows, "hidden_states", dims.dtype)[:, :, :k], None
        knowledge.layers, knowledge.token_index = info.layers, torch.from_numpy(index[..., :k])
        knowledge.hidden_states = torch.from_numpy(np.ascontiguousarray(hidden))
        knowledge.hidden_mask = None if mask is None else torch.from_numpy(mask)
    if "attention_index" in rows:
        index = rows["attention_index"].astype(np.int64)
        k = _trim(index)
        knowledge.attention_layers, knowledge.attention_index = info.attention_layers, torch.from_numpy(index[..., :k])
        probs = _dequantized(rows, "attention_probs", dims.dtype)[:, :, :, :k, :width]
        knowledge.attention_probs = torch.from_numpy(np.ascontiguousarray(probs))
    if "value_index" in rows:
        index = rows["value_index"].astype(np.int64)
        k = _trim(index)
        knowledge.value_relation_layer, knowledge.value_index = (
            info.value_relation_layer,
            torch.from_numpy(index[:, :k]),
        )
        relation = _dequantized(rows, "value_relation", dims.dtype)[:, :, :k, :width]
        knowledge.value_relation = torch.from_numpy(np.ascontiguousarray(relation))
    if "logits" in rows:
        knowledge.logits = torch.from_numpy(rows["logits"].astype(np.float32))
    return knowledge
