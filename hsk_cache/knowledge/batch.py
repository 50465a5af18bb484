"""The batch format every training path shares, and the examples it is gathered from.

No model code and no storage code here. A *batch* is a dict of tensors (B examples, T_b the
longest in the batch): the student-side keys below, plus the keys of each knowledge kind it
holds (each kind's module lists its own: ``knowledge/hidden_states.py`` has ``token_index``,
``hidden_states``, ``hidden_mask``; ``attention_probs.py``, ``value_relation.py`` and
``logits.py`` theirs; ``KnowledgeKind.batch_keys`` lists them).

| key             | shape               | dtype   | content                                        |
|-----------------|---------------------|---------|------------------------------------------------|
| input_ids       | [B, T_b]            | int64   | token ids, the pad id after each example        |
| attention_mask  | [B, T_b]            | int64   | 1 = real token                                  |
| token_type_ids  | [B, T_b]            | int64   | segment ids (when the tokenizer makes them)     |
| labels          | [B]                 | int64   | gold class ids (regression: float32 scores)     |
| labels          | [B, T_b]            | int64   | token classification: tag ids, −100 off words   |
| labels          | [B, C]              | float32 | multi-label: 1 = the label is in the set        |
| labels          | [B, 2]              | int64   | question answering: answer start, end token     |
| example_ids     | [B]                 | int64   | row in the source split                         |

Which teacher layers a knowledge key's layer axis stands for is not in the batch but in the
``Plan`` (from the cache's manifest, or from an online teacher's spec).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from hsk_cache.tasks import types

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
IGNORE_LABEL = -100  # a token without a label (tasks.token_classification.IGNORE)


@dataclass(frozen=True)
class Examples:
    """N tokenized examples padded to the max length T.

    input_ids: [N, T] int32, pad id after each example's length. token_type_ids: [N, T] int8 or
    None. lengths: [N] int32 real tokens per example. labels: [N] int64 (−1: no label, a corpus).
    example_ids: [N] int64. extra: per-example arrays a kind adds before the teacher runs (static
    masking's ``mlm_positions`` / ``mlm_labels``, ``KnowledgeKind.prepare_examples``), N first;
    labels is [N] float32 for regression, [N, T] int64 for token classification (−100 at
    pieces that start no word, and at padding) and [N, C] float32 multi-hot for multi-label;
    collated into the batch under their names.
    """

    input_ids: np.ndarray
    token_type_ids: np.ndarray | None
    lengths: np.ndarray
    labels: np.ndarray
    example_ids: np.ndarray
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.lengths)

    def with_inputs(self, input_ids: np.ndarray, **extra: np.ndarray) -> Examples:
        """A copy with ``input_ids`` replaced and ``extra`` arrays added."""
        return replace(self, input_ids=input_ids, extra={**self.extra, **extra})

    @classmethod
    def from_dataset(cls, tokenized, max_length: int, pad_id: int, task_type: str | None = None) -> Examples:
        """From a tokenized ``datasets.Dataset`` (input_ids lists no longer than max_length);
        ``task_type`` (``tasks.types``) says how to lay out list labels: per-token tags padded to
        T with −100, QA's (start, end), or multi-hot sets; None reads them from the feature."""
        n = len(tokenized)
        input_ids = np.full((n, max_length), pad_id, dtype=np.int32)
        has_types = "token_type_ids" in tokenized.column_names
        token_type_ids = np.zeros((n, max_length), dtype=np.int8) if has_types else None
        lengths = np.zeros(n, dtype=np.int32)
        row = 0
        for rows in tokenized.iter(batch_size=4096):
            for i, ids in enumerate(rows["input_ids"]):
                lengths[row] = len(ids)
                input_ids[row, : len(ids)] = ids
                if has_types:
                    token_type_ids[row, : len(ids)] = rows["token_type_ids"][i]
                row += 1
        feature = tokenized.features["label"]
        form = types.get(task_type).labels if task_type is not None else None
        if form == "span":  # question answering: the answer's first and last token
            labels = np.asarray(tokenized["label"], dtype=np.int64).reshape(n, 2)
        elif hasattr(feature, "feature") and str(feature.feature.dtype).startswith("float"):  # multi-hot label sets
            labels = np.asarray(tokenized["label"], dtype=np.float32).reshape(n, -1)
        elif hasattr(feature, "feature"):  # a list feature, token classification: a tag id per token
            labels = np.full((n, max_length), IGNORE_LABEL, dtype=np.int64)
            for row, tags in enumerate(tokenized["label"]):
                labels[row, : len(tags)] = tags
        else:
            column = tokenized.select_columns(["label"]).with_format("numpy")[:]["label"]  # the whole column at once
            labels = np.asarray(
                column, dtype=np.float32 if str(getattr(feature, "dtype", "")).startswith("float") else np.int64
            )
        example_ids = np.asarray(
            tokenized.select_columns(["example_id"]).with_format("numpy")[:]["example_id"], np.int64
        )
        return cls(input_ids, token_type_ids, lengths, labels, example_ids)


@dataclass
class Batch:
    """Student inputs, dynamically padded to the longest example in the batch (T_b ≤ T).

    input_ids, attention_mask, token_type_ids: [B, T_b] int64. labels, example_ids: [B] int64.
    extra: the examples' ``extra`` rows (as tensors, N axis gathered to B).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    labels: torch.Tensor
    example_ids: torch.Tensor
    extra: dict = field(default_factory=dict)

    def model_inputs(self) -> dict:
        """input_ids, attention_mask and (when present) token_type_ids, [B, T_b] int64."""
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.token_type_ids is not None:
            inputs["token_type_ids"] = self.token_type_ids
        return inputs

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The batch-dict form (``knowledge`` module): inputs, labels, example_ids and extra."""
        return {**self.model_inputs(), "labels": self.labels, "example_ids": self.example_ids, **self.extra}

    def to(self, device) -> Batch:
        """A copy with every tensor on ``device``."""
        move = lambda t: None if t is None else t.to(device)
        return Batch(
            *(
                move(t)
                for t in (self.input_ids, self.attention_mask, self.token_type_ids, self.labels, self.example_ids)
            ),
            {k: move(v) for k, v in self.extra.items()},
        )


def collate(examples: Examples, index: np.ndarray) -> Batch:
    """Gather rows ``index`` ([B] int) and trim padding to the batch's longest example."""
    lengths = examples.lengths[index]
    width = int(lengths.max())
    input_ids = torch.from_numpy(examples.input_ids[index, :width].astype(np.int64))
    attention_mask = (torch.arange(width)[None, :] < torch.from_numpy(lengths.astype(np.int64))[:, None]).long()
    token_type_ids = None
    if examples.token_type_ids is not None:
        token_type_ids = torch.from_numpy(examples.token_type_ids[index, :width].astype(np.int64))
    return Batch(
        input_ids,
        attention_mask,
        token_type_ids,
        torch.from_numpy(examples.labels[index, :width] if _per_token(examples) else examples.labels[index]),
        torch.from_numpy(examples.example_ids[index]),
        {k: torch.from_numpy(np.ascontiguousarray(v[index]).astype(np.int64)) for k, v in examples.extra.items()},
    )


def _per_token(examples: Examples) -> bool:
    """Labels with a token axis: [N, T] integer tag ids (token classification), cut to the batch
    width; [N, C] float multi-hot sets and QA's [N, 2] positions are not (T > 2 always holds a
    question and a context)."""
    labels = examples.labels
    return labels.ndim == 2 and labels.dtype.kind == "i" and labels.shape[1] == examples.input_ids.shape[1] > 2


def sequential_batches(n: int, batch_size: int, start: int = 0) -> list[np.ndarray]:
    """In-order batches of range(start, n)."""
    return batches_of(np.arange(start, n), batch_size)


def length_sorted(lengths: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows ``start..stop`` ([stop - start] int64) longest first, ties in stored order: batched in
    this order, a batch is padded to about its own examples' length instead of the longest of a
    stretch of the file, and the first batch is the widest, so later batches reuse its memory.
    Selection depends only on each example's own tokens, so its knowledge is the same up to
    floating-point rounding (a row's result in a matrix product can depend on its place in it)."""
    return start + np.argsort(-lengths[start:stop].astype(np.int64), kind="stable")


def batches_of(rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``rows`` cut into consecutive batches of ``batch_size`` (the last may be shorter)."""
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
