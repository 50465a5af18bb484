"""Where a training step gets its examples and teacher knowledge.

- ``CacheSource``: a complete cache; never loads the teacher.
- ``OnlineSource``: the live teacher run at every step (the online-distillation baseline), with
  the same selection as extraction (``teacher.select_knowledge``).
- ``DatasetSource``: examples only (fine-tuning, evaluation, no-distillation baselines).

All three hold their examples as ``batching.Examples`` and collate them the same way.
"""

from __future__ import annotations

import numpy as np
import torch

from hsk_cache import data, models
from hsk_cache.batching import Batch, Examples, collate
from hsk_cache.config import DataConfig, ExtractSpec
from hsk_cache.store.reader import CacheReader
from hsk_cache.teacher import Knowledge, excluded_token_ids, run_teacher, select_knowledge


class DatasetSource:
    """Tokenized examples of one split, no teacher knowledge."""

    def __init__(self, data_config: DataConfig, tokenizer, label_names: tuple[str, ...] | None = None) -> None:
        self.tokenizer = tokenizer
        self.split = data.load_split(data_config, label_names=label_names)
        self.label_names = self.split.label_names
        tokenized = data.tokenize(self.split, tokenizer, data_config.max_length)
        self.examples = Examples.from_dataset(tokenized, data_config.max_length, tokenizer.pad_token_id)
        self.tokenized = tokenized

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, index: np.ndarray) -> tuple[Batch, Knowledge | None]:
        return collate(self.examples, index), None


class OnlineSource(DatasetSource):
    """Runs the teacher on every batch and selects knowledge with ``spec``."""

    def __init__(self, teacher_path: str, data_config: DataConfig, spec: ExtractSpec, precision: str = "fp32") -> None:
        spec.tokens.check(data_config.max_length)
        self.teacher = models.load_classifier(teacher_path, attention=spec.needs_attention)
        names = models.task_label_names(self.teacher)
        super().__init__(data_config, models.load_tokenizer(teacher_path), names)
        self.spec, self.precision = spec, precision
        self.teacher_config = self.teacher.config.to_dict()
        self.layers = spec.layers.resolve(self.teacher.config.num_hidden_layers)
        self.excluded = excluded_token_ids(self.tokenizer)

    def batch(self, index: np.ndarray) -> tuple[Batch, Knowledge]:
        batch = collate(self.examples, index)
        outputs = run_teacher(self.teacher, batch, self.spec.needs_attention, self.precision)
        return batch, select_knowledge(outputs, batch, self.spec, self.layers, self.excluded)

    @property
    def has_hidden_states(self) -> bool:
        return "hidden_states" in self.spec.knowledge


class CacheSource:
    """A complete cache held in memory (read as contiguous chunks); no teacher, no dataset.

    Raises: CacheError if the cache is missing, incomplete or of an unknown format version.
    """

    def __init__(self, path: str) -> None:
        reader = CacheReader(path)
        reader.require_complete()
        self.manifest = reader.manifest
        self.tokenizer = reader.load_tokenizer()
        self.label_names = tuple(self.manifest["data"]["label_names"])
        self.teacher_config = self.manifest["teacher"]["config"]
        self.layers = tuple(self.manifest["layers"])
        types = reader.read("token_type_ids") if reader.has("token_type_ids") else None
        self.examples = Examples(
            reader.read("input_ids"), types, reader.read("lengths"), reader.read("labels"), reader.read("example_ids")
        )
        self.token_index = reader.read("token_index") if reader.has("token_index") else None
        self.hidden_states = reader.read("hidden_states") if reader.has("hidden_states") else None
        self.logits = reader.read("logits") if reader.has("logits") else None

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def has_hidden_states(self) -> bool:
        return self.hidden_states is not None

    def batch(self, index: np.ndarray) -> tuple[Batch, Knowledge]:
        batch = collate(self.examples, index)
        token_index = hidden = logits = None
        if self.hidden_states is not None:
            token_index = torch.from_numpy(self.token_index[index].astype(np.int64))
            width = max(1, int((token_index >= 0).sum(dim=-1).max()))  # −1 entries trail: trim them
            token_index = token_index[..., :width]
            hidden = torch.from_numpy(self.hidden_states[index][:, :, :width].astype(np.float32))
        if self.logits is not None:
            logits = torch.from_numpy(self.logits[index])
        return batch, Knowledge(self.layers, token_index, hidden, logits)
