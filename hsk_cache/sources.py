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
from hsk_cache.store import codec, layout
from hsk_cache.store.reader import CacheReader
from hsk_cache.teacher import Knowledge, Plan, run_teacher, select_knowledge


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
        self.precision = precision
        self.teacher_config = self.teacher.config.to_dict()
        self.plan = Plan.make(spec, self.teacher.config, self.tokenizer)
        self.layers, self.attention_layers = self.plan.layers, self.plan.attention_layers
        self.value_relation_layer = self.plan.value_relation_layer

    def batch(self, index: np.ndarray) -> tuple[Batch, Knowledge]:
        batch = collate(self.examples, index)
        outputs = run_teacher(self.teacher, batch, self.plan, self.precision)
        return batch, select_knowledge(outputs, batch, self.plan)

    @property
    def has_hidden_states(self) -> bool:
        return bool(self.plan.layers)


class CacheSource:
    """A complete cache held in memory (read as contiguous chunks); no teacher, no dataset.

    Raises: CacheError if the cache is missing, incomplete or of an unknown format version.
    """

    def __init__(self, path: str) -> None:
        reader = CacheReader(path)
        reader.require_complete()
        m = self.manifest = reader.manifest
        self.tokenizer = reader.load_tokenizer()
        self.label_names = tuple(m["data"]["label_names"])
        self.teacher_config = m["teacher"]["config"]
        self.layers = tuple(m["layers"])
        self.attention_layers = tuple(m["attention_layers"])
        self.value_relation_layer = m["value_relation_layer"]
        types = reader.read("token_type_ids") if reader.has("token_type_ids") else None
        self.examples = Examples(
            reader.read("input_ids"), types, reader.read("lengths"), reader.read("labels"), reader.read("example_ids")
        )
        dims = layout.dims_from_manifest(m)
        specs = [s for s in layout.arrays(dims) if s.name not in _EXAMPLE_ARRAYS]
        self.arrays = {s.name: reader.read(s.name) for s in specs if s.per_example}
        dim_index = reader.read("dim_index").astype(np.int64) if reader.has("dim_index") else None
        self.decoding = codec.Decoding(dims, self.layers, self.attention_layers, self.value_relation_layer, dim_index)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def has_hidden_states(self) -> bool:
        return "token_index" in self.arrays

    def batch(self, index: np.ndarray) -> tuple[Batch, Knowledge]:
        batch = collate(self.examples, index)
        rows = {name: values[index] for name, values in self.arrays.items()}
        return batch, codec.decode(rows, self.decoding, batch.input_ids.shape[1])


_EXAMPLE_ARRAYS = {"input_ids", "token_type_ids", "lengths", "labels", "example_ids"}
