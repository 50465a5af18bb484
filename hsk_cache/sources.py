"""Where a training step gets its examples and teacher knowledge.

- ``CacheSource``: a complete cache; never loads the teacher.
- ``OnlineSource``: the live teacher run at every step (the online-distillation baseline), with
  the same selection as extraction (``teacher.select_knowledge``).
- ``DatasetSource``: examples only (fine-tuning, evaluation, no-distillation baselines).

All three hold their examples as ``batching.Examples`` and collate them the same way.
"""

from __future__ import annotations

import numpy as np

from hsk_cache import data, models
from hsk_cache.batching import Batch, Examples, collate
from hsk_cache.loader import Sampler, Step
from hsk_cache.config import DataConfig, ExtractSpec
from hsk_cache.store import codec, layout
from hsk_cache.store.reader import CacheReader
from hsk_cache.teacher import Knowledge, Plan, run_teacher, select_knowledge


DEFAULT_MEMORY_BUDGET = 4 << 30  # bytes of knowledge held in memory before shard windows are used


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

    def sampler(self, batch_size: int, seed: int) -> Sampler:
        """Full-permutation epochs (the order a cache that fits in memory uses too)."""
        return Sampler(len(self), batch_size, seed)

    def fetch(self, step: Step) -> tuple[Batch, Knowledge | None]:
        """One ``loader.Step`` of the sampler → the batch and its knowledge."""
        return self.batch(step.ids)

    def batch(self, index: np.ndarray) -> tuple[Batch, Knowledge | None]:
        return collate(self.examples, index), None


class OnlineSource(DatasetSource):
    """Runs the teacher on every batch and selects knowledge with ``spec``."""

    def __init__(self, teacher_path: str, data_config: DataConfig, spec: ExtractSpec, precision: str = "fp32",
                 device: str = "cpu") -> None:
        spec.tokens.check(data_config.max_length)
        self.teacher = models.load_classifier(teacher_path, attention=spec.needs_attention).to(device)
        models.check_max_length(self.teacher.config, data_config.max_length)
        names = models.task_label_names(self.teacher)
        super().__init__(data_config, models.load_tokenizer(teacher_path), names)
        self.precision = precision
        self.teacher_config = self.teacher.config.to_dict()
        self.plan = Plan.make(spec, self.teacher.config, self.tokenizer)
        self.layers, self.attention_layers = self.plan.layers, self.plan.attention_layers
        self.knowledge = spec.knowledge
        self.value_relation_layer = self.plan.value_relation_layer

    def batch(self, index: np.ndarray) -> tuple[Batch, Knowledge]:
        batch = collate(self.examples, index)
        outputs = run_teacher(self.teacher, batch, self.plan, self.precision)
        return batch, select_knowledge(outputs, batch, self.plan)



class CacheSource:
    """A complete cache; no teacher, no dataset. The examples' token ids live in memory; the
    knowledge arrays too when they fit ``memory_budget_bytes`` (read once, as contiguous chunks),
    otherwise a window of shards at a time (see ``loader``).

    Raises: CacheError if the cache is missing, incomplete, of an unknown format version, or has
    a missing or corrupt shard (one line naming the shard and the repair command). In memory,
    reading checks every chunk's crc32c; with shard windows, every shard file's crc32c is checked
    against its commit record first (one read pass), and chunks again as they are read.
    """

    def __init__(self, path: str, memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET, progress=None) -> None:
        self.reader = reader = CacheReader(path)
        reader.require_complete()
        m = self.manifest = reader.manifest
        self.tokenizer = reader.load_tokenizer()
        self.label_names = tuple(m["data"]["label_names"])
        self.knowledge = tuple(m["spec"]["knowledge"])
        self.teacher_config = m["teacher"]["config"]
        self.layers = tuple(m["layers"])
        self.attention_layers = tuple(m["attention_layers"])
        self.value_relation_layer = m["value_relation_layer"]
        types = reader.read("token_type_ids") if reader.has("token_type_ids") else None
        self.examples = Examples(
            reader.read("input_ids"), types, reader.read("lengths"), reader.read("labels"), reader.read("example_ids")
        )
        dims = layout.dims_from_manifest(m)
        specs = [s for s in layout.arrays(dims) if s.per_example and s.name not in _EXAMPLE_ARRAYS]
        self.names = [s.name for s in specs]
        self.shard_examples = m["layout"]["shard_examples"]
        shard_bytes = self.shard_examples * sum(s.row_bytes() for s in specs)
        total_bytes = dims.n * sum(s.row_bytes() for s in specs)
        self.window = None if total_bytes <= memory_budget_bytes else max(1, memory_budget_bytes // max(shard_bytes, 1))
        self.arrays, self.rows, self.loaded = {}, np.arange(dims.n), None
        if self.window is None:
            reader.check_files()  # every shard file present with its recorded size
            self.arrays = {name: reader.read(name) for name in self.names}  # and every chunk's crc32c
        else:
            self._verify(progress)
        dim_index = reader.read("dim_index").astype(np.int64) if reader.has("dim_index") else None
        self.decoding = codec.Decoding(dims, self.layers, self.attention_layers, self.value_relation_layer, dim_index)

    def __len__(self) -> int:
        return len(self.examples)

    def _verify(self, progress) -> None:
        """Shard windows are read during training: check every shard file's crc32c now, so a
        damaged cache is refused before the first step rather than hours into a run."""
        from hsk_cache.store.verify import check_group

        problems, _, _ = check_group(self.reader.group, self.manifest, progress)
        if problems:
            more = f", and {len(problems) - 1} more" if len(problems) > 1 else ""
            raise self.reader.damaged(f"{problems[0].where}: {problems[0].problem}{more}")

    def sampler(self, batch_size: int, seed: int) -> Sampler:
        """Full-permutation epochs when the knowledge is in memory, else shard-window shuffles."""
        return Sampler(len(self), batch_size, seed, self.shard_examples, self.window)

    def fetch(self, step: Step) -> tuple[Batch, Knowledge]:
        """One ``loader.Step`` → its batch and decoded knowledge, loading the step's shard window."""
        if step.shards is not None:
            self._load(tuple(int(s) for s in step.shards))
        return self.batch(step.ids)

    def _load(self, shards: tuple[int, ...]) -> None:
        """Hold exactly these shards' knowledge rows in memory (contiguous reads, one per shard)."""
        if shards == self.loaded:
            return
        ranges = [layout.shard_range(s, len(self), self.shard_examples) for s in shards]
        self.arrays = {name: np.concatenate([self.reader.read(name, a, b) for a, b in ranges]) for name in self.names}
        self.rows = np.full(len(self), -1, dtype=np.int64)
        ids = np.concatenate([np.arange(a, b) for a, b in ranges])
        self.rows[ids] = np.arange(len(ids))
        self.loaded = shards

    def batch(self, index: np.ndarray) -> tuple[Batch, Knowledge]:
        """Examples ``index`` (all in the loaded shards) → their batch and decoded knowledge."""
        batch = collate(self.examples, index)
        local = self.rows[index]
        rows = {name: values[local] for name, values in self.arrays.items()}
        return batch, codec.decode(rows, self.decoding, batch.input_ids.shape[1])


_EXAMPLE_ARRAYS = {"input_ids", "token_type_ids", "lengths", "labels", "example_ids"}
