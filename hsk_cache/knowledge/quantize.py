"""Stored precision: float32, float16, bfloat16, and int8 with a per-row absmax scale.

bfloat16 has no numpy dtype, so it is stored as its raw 16 bits in a uint16 array (the manifest
says "bfloat16"); decoding shifts the bits into the high half of a float32. int8 stores
q = round(x / s) with s = max|x| / 127 per row (the last axis), and the float32 scales beside.
"""

from __future__ import annotations

import numpy as np
import torch

STORAGE_DTYPE = {"float32": "float32", "float16": "float16", "bfloat16": "uint16", "int8": "int8"}
INT8_MAX = 127.0


def needs_scale(dtype: str) -> bool:
    """Whether ``dtype`` stores a float32 scale per row beside the values (int8)."""
    return dtype == "int8"


def encode(x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 [..., R] → (stored [..., R] in STORAGE_DTYPE[dtype], scale [...] float32 or None)."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "float32":
        return x, None
    if dtype == "float16":
        return x.astype(np.float16), None
    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16).view(torch.int16).numpy().view(
            np.uint16
        ), None
    scale = np.abs(x).max(axis=-1) / INT8_MAX if x.shape[-1] else np.zeros(x.shape[:-1], np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(x / safe[..., None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale.astype(np.float32)


def decode(stored: np.ndarray, scale: np.ndarray | None, dtype: str) -> np.ndarray:
    """Inverse of ``encode``: float32 [..., R]."""
    if dtype == "float32":
        return np.asarray(stored, dtype=np.float32)
    if dtype == "float16":
        return stored.astype(np.float32)
    if dtype == "bfloat16":
        return (stored.astype(np.uint32) << 16).view(np.float32)
    return stored.astype(np.float32) * scale[..., None]
