"""Stored precision: float32, float16, bfloat16, and int8 or FP8 E4M3 with a per-row absmax scale.

bfloat16 has no numpy dtype, so it is stored as its raw 16 bits in a uint16 array (the manifest
says "bfloat16"); decoding shifts the bits into the high half of a float32. int8 stores
q = round(x / s) with s = max|x| / 127 per row (the last axis), and the float32 scales beside.

float8_e4m3 stores q = fp8(x / s) with s = max|x| / 448 per row (448: E4M3's largest finite value)
as the raw bytes of ``torch.float8_e4m3fn`` in a uint8 array (the manifest says "float8_e4m3"), the
float32 scales beside. Bound, per element, for rows whose scale is a normal float32:

    |x̂ − x| ≤ 2^-4 · |x| + s · 2^-9

(3 mantissa bits: round to nearest is within 2^-4 of |x| in the normal range; below it, x/s is
rounded to a multiple of 2^-9, the smallest subnormal, within s · 2^-10; the slack absorbs the
float32 rounding of x / s and of q · s). A zero row stores s = 0 and decodes to zeros.
Source: Micikevicius et al. 2022, "FP8 Formats for Deep Learning" (E4M3/E5M2; scaled FP8 with
per-tensor scale factors; here one per row, as int8 has).
"""

from __future__ import annotations

import numpy as np
import torch

STORAGE_DTYPE = {
    "float32": "float32",
    "float16": "float16",
    "bfloat16": "uint16",
    "int8": "int8",
    "float8_e4m3": "uint8",
}
INT8_MAX = 127.0
FLOAT8 = {"float8_e4m3": (torch.float8_e4m3fn, 448.0)}  # stored dtype → (torch dtype, max finite)


def needs_scale(dtype: str) -> bool:
    """Whether ``dtype`` stores a float32 scale per row beside the values (int8, float8)."""
    return dtype == "int8" or dtype in FLOAT8


def encode(x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 [..., R] → (stored [..., R] in STORAGE_DTYPE[dtype], scale [...] float32 or None)."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "float32":
        return x, None
    if dtype == "float16":  # torch's cast: numpy's rounding bit for bit (a signaling NaN comes back quiet), ~35× faster
        return torch.from_numpy(np.ascontiguousarray(x)).to(torch.float16).numpy(), None
    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16).view(torch.int16).numpy().view(
            np.uint16
        ), None
    top = FLOAT8[dtype][1] if dtype in FLOAT8 else INT8_MAX
    scale = np.abs(x).max(axis=-1) / np.float32(top) if x.shape[-1] else np.zeros(x.shape[:-1], np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    if dtype in FLOAT8:
        return encode_float8(x / safe[..., None], dtype), scale.astype(np.float32)
    q = np.clip(np.rint(x / safe[..., None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale.astype(np.float32)


def encode_float8(scaled: np.ndarray, dtype: str) -> np.ndarray:
    """Scaled values float32 [...] → the raw bytes of their FP8 ``dtype`` (``FLOAT8``), uint8 [...].

    Clamped to ±max finite first (so nothing becomes NaN), then rounded to nearest even by torch.
    """
    torch_dtype, top = FLOAT8[dtype]
    t = torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32)).clamp(-top, top)
    return t.to(torch_dtype).view(torch.uint8).numpy()


def decode_float8(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Inverse of ``encode_float8``: uint8 [...] bytes → their FP8 ``dtype`` values as float32 [...]."""
    t = torch.from_numpy(np.ascontiguousarray(stored, dtype=np.uint8))
    return t.view(FLOAT8[dtype][0]).float().numpy()


def decode(stored: np.ndarray, scale: np.ndarray | None, dtype: str) -> np.ndarray:
    """Inverse of ``encode``: float32 [..., R]."""
    if dtype == "float32":
        return np.asarray(stored, dtype=np.float32)
    if dtype == "float16":  # torch's cast: the same IEEE conversion, ~17× faster than numpy's astype here
        return torch.from_numpy(np.ascontiguousarray(stored)).float().numpy()
    if dtype == "bfloat16":
        return (stored.astype(np.uint32) << 16).view(np.float32)
    if dtype in FLOAT8:
        return decode_float8(stored, dtype) * scale[..., None]
    return stored.astype(np.float32) * scale[..., None]
