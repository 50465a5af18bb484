"""Sparse distribution rows: an attention-like row kept as its top-k keys and the remaining mass.

The row kinds (``attention_probs``, ``value_relation``, ``attention_relations``) store, for each
kept query, a probability row over all T keys. With ``ExtractSpec.key_topk`` = k ≥ 1 each row is
stored instead as

| array            | shape        | dtype   | content                                          |
|------------------|--------------|---------|--------------------------------------------------|
| ``<name>``       | [..., K, k]  | q       | the k largest probabilities, largest first        |
| ``<name>_keys``  | [..., K, k]  | int16   | their key positions, −1 where a row has < k keys |
| ``<name>_rest``  | [..., K]     | float32 | r = 1 − Σ of the k kept probabilities             |

and the batch holds the same three tensors (float32 / int64 / float32). The loss of a sparse
row (``losses.sparse_distribution_kl``) is the KL divergence of the *coarsened* distributions:
the teacher's k keys are k bins and every other key falls into one "rest" bin, for teacher and
student alike (the student's rest bin is the mass of its own row outside the teacher's keys).
This is how the masked-LM kind keeps the teacher's vocabulary distribution
(``losses.topk_soft_cross_entropy``), applied to key rows.

What it costs, exactly (the log-sum inequality): with p the teacher row, q the student row, K_p
the kept keys, r = p(outside K_p) and r_q = q(outside K_p),

    KL(p ‖ q) − KL_k(p ‖ q) = r · KL(p_tail / r ‖ q_tail / r_q) ≥ 0,

so the sparse loss never exceeds the dense one, the gap is at most r times the divergence of
the tails, and it is 0 when k covers every key with probability > 0 (r = 0) or when the
student's tail is proportional to the teacher's. The stored values are quantized like dense rows
(``quantize``); r is computed in float32 before quantization. docs/general.md gives the measured
rest mass, loss gap and bytes on real teacher rows (``benchmarks/sparse_rows.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SparseRows:
    """Rows [..., K, T] kept as values [..., K, k] float, keys [..., K, k] int64 (−1: none) and
    rest [..., K] float (1 − Σ values over the valid keys; 0 for an all-zero row)."""

    values: torch.Tensor
    keys: torch.Tensor
    rest: torch.Tensor

    def __getitem__(self, item) -> SparseRows:
        """Index the leading axes of all three (``rows[:, i]``: stored layer i)."""
        return SparseRows(self.values[item], self.keys[item], self.rest[item])

    @property
    def heads(self) -> int:
        """The head (or relation-head) axis' size, axis 1 of [B, H, K, k]."""
        return self.values.shape[1]

    def dense(self, width: int) -> torch.Tensor:
        """The rows [..., K, width] with the kept probabilities at their keys and 0 elsewhere (the
        rest mass is not spread: a row sums to 1 − r)."""
        out = torch.zeros((*self.values.shape[:-1], width), dtype=self.values.dtype, device=self.values.device)
        valid = self.keys >= 0
        return out.scatter_add(-1, self.keys.clamp(min=0), self.values * valid)


def sparsify(rows: torch.Tensor, k: int) -> SparseRows:
    """The top-k keys of every row.

    Args: rows: [..., T] float probabilities (0 at padded keys; all-zero rows for no query).
        k: ≥ 1 keys per row; a row with fewer keys of probability > 0 gets −1 keys (value 0).
    Returns: SparseRows of float32 values [..., k] (largest first), int64 keys [..., k] and the
        float32 rest mass [...] (clamped at 0), on ``rows``' device.
    """
    rows = rows.float()
    top = min(k, rows.shape[-1])
    values, keys = torch.topk(rows, top, dim=-1)
    keys = torch.where(values > 0, keys, torch.full_like(keys, -1))
    values = values * (keys >= 0)
    if top < k:
        pad = (*values.shape[:-1], k - top)
        values = torch.cat([values, values.new_zeros(pad)], dim=-1)
        keys = torch.cat([keys, keys.new_full(pad, -1)], dim=-1)
    rest = (rows.sum(-1) - values.sum(-1)).clamp(min=0)
    return SparseRows(values, keys, rest)


def rows_of(batch: dict, name: str):
    """The teacher rows ``name`` of a batch: the dense tensor, or ``SparseRows`` when the batch
    holds ``<name>_keys`` (a sparse cache or an online source with ``key_topk``)."""
    if f"{name}_keys" in batch:
        return SparseRows(batch[name], batch[f"{name}_keys"], batch[f"{name}_rest"])
    return batch[name]


def keys_of(name: str) -> tuple[str, str]:
    """The batch keys beside ``name`` of a sparse row kind: its key positions and rest mass."""
    return f"{name}_keys", f"{name}_rest"
