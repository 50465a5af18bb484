"""``open_cache``: a cache as a PyTorch dataset, a collate function and a fast loader.

    cache = open_cache("runs/cache")
    loader = DataLoader(cache.dataset(), batch_size=32, collate_fn=cache.collate, shuffle=True)

Items and batches are dicts of tensors in the ``knowledge`` module's batch format: the student's
inputs, ``labels``, ``example_ids`` and the stored knowledge decoded to float32. The knowledge is
read into memory when it fits ``memory_budget_bytes`` (once, as contiguous chunks); otherwise
whole shards are read as needed. ``cache.loader`` is the loader ``hsk train`` uses: it decodes a
batch at a time and, for a cache larger than the budget, visits shards in windows.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from hsk_cache.data.loader import Loader, Sampler, Step, full_order, window_order
from hsk_cache.knowledge import registry
from hsk_cache.knowledge.batch import Examples, collate
from hsk_cache.knowledge.plan import Plan
from hsk_cache.store import layout
from hsk_cache.store.manifest import Manifest
from hsk_cache.store.reader import CacheReader

DEFAULT_MEMORY_BUDGET = 4 << 30  # bytes of knowledge held in memory before shard windows are used
_PAD = registry.pad_values()  # the kinds' index keys pad with −1; everything else with 0 / False


def open_cache(
    path: str | Path,
    *,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    progress=None,
    storage_options: dict | None = None,
) -> Cache:
    """Open a complete cache made by ``hsk extract``.

    Args:
        path: the cache directory, or an fsspec URL (``s3://bucket/cache``, ``gs://``, ``memory://``).
        memory_budget_bytes: knowledge bytes held in memory at most (default 4 GiB); a larger
            cache is read a window of shards at a time.
        progress: optional factory ``progress(description, total, initial)`` for the up-front
            verification of a cache larger than the budget (a tqdm-like bar, in shards).
        storage_options: fsspec options for a URL (endpoint, credentials; ``store.location``).
    Returns: a ``Cache``.
    Raises: CacheError if the cache is missing, incomplete, of another format version, or has a
        missing or corrupt shard (one line naming the shard and the repair command). Every chunk's
        crc32c is checked as it is read; a cache larger than the budget has every shard file's
        crc32c checked against its commit record first.
    """
    return Cache(path, memory_budget_bytes, progress, storage_options)


class Cache:
    """A complete cache: manifest, examples, tokenizer, and the knowledge as batches.

    Attributes:
        path: the cache directory. manifest: its typed, frozen ``Manifest``.
        plan: the ``Plan`` the cache was extracted with (the kinds, which teacher layers the
        arrays hold, K, D', M); ``stored`` is the same object.
        tokenizer: the teacher's tokenizer (stored in the cache). label_names: class names in
        id order. teacher_config: the teacher's transformers config as a dict.
        window: shards held in memory at a time, or None when the whole cache is in memory.
    """

    def __init__(
        self,
        path: str | Path,
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
        progress=None,
        storage_options: dict | None = None,
    ) -> None:
        self.reader = reader = CacheReader(path, storage_options)
        self.path = reader.path
        reader.require_complete()
        reader.check_shapes()
        m: Manifest = reader.manifest
        self.manifest = m
        self.tokenizer = reader.load_tokenizer()
        self.label_names = tuple(m.label_names)
        self.knowledge = tuple(m.knowledge)
        self.teacher_config = m.teacher.to_dict()["config"]  # a plain dict (a copy)
        self.layers, self.attention_layers = tuple(m.layers), tuple(m.attention_layers)
        self.value_relation_layer = m.value_relation_layer
        dim_index = reader.read("dim_index") if reader.has("dim_index") else None
        self.plan = self.stored = Plan.of_manifest(m, dim_index)  # stored: the name before the plan
        n = m.num_examples
        specs = [s for s in self.plan.arrays(n) if s.per_example]
        self.names = [s.name for s in specs]
        self.shard_examples = m.layout.shard_examples
        shard_bytes = self.shard_examples * sum(s.row_bytes() for s in specs)
        total_bytes = n * sum(s.row_bytes() for s in specs)
        self.window = None if total_bytes <= memory_budget_bytes else max(1, memory_budget_bytes // max(shard_bytes, 1))
        self._shards: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()  # for dataset items, windowed
        fields = ["input_ids", "lengths", "labels", "example_ids"]
        fields += ["token_type_ids"] if reader.has("token_type_ids") else []
        if self.window is None:
            reader.check_files()  # every shard file present with its recorded size
            arrays = reader.read_many(fields + self.names)  # all at once, every chunk's crc32c checked
        else:
            self._verify(progress)
            arrays = reader.read_many(fields)
        self.examples = Examples(
            arrays["input_ids"],
            arrays.get("token_type_ids"),
            arrays["lengths"],
            arrays["labels"],
            arrays["example_ids"],
        )
        self.arrays = {name: arrays[name] for name in self.names} if self.window is None else {}
        self.rows, self.loaded = np.arange(len(self.examples)), None
        self.pad_token_id = self.tokenizer.pad_token_id or 0

    def __len__(self) -> int:
        return len(self.examples)

    def __repr__(self) -> str:
        where = "in memory" if self.window is None else f"windows of {self.window} shards"
        return f"Cache({self.path!r}, {len(self)} examples, knowledge={','.join(self.knowledge)}, {where})"

    def _verify(self, progress) -> None:
        """Shard windows are read during training: check every shard file's crc32c now, so a
        damaged cache is refused before the first step rather than hours into a run."""
        from hsk_cache import distributed
        from hsk_cache.store.verify import check_group

        rank = distributed.current()  # data-parallel ranks each check every world_size-th shard
        problems, _, _ = check_group(self.reader.group, self.manifest, progress, part=(rank.rank, rank.world_size))
        found = int(distributed.all_reduce_sum(torch.tensor([len(problems)]))[0])
        if found and not problems:
            raise self.reader.damaged(f"another rank found {found} damaged shard files")
        if problems:
            more = f", and {len(problems) - 1} more" if len(problems) > 1 else ""
            raise self.reader.damaged(f"{problems[0].where}: {problems[0].problem}{more}")

    # -- the fast loader (hsk train) ------------------------------------------------------------

    def sampler(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> Sampler:
        """Full-permutation epochs when the knowledge is in memory, else shard-window shuffles;
        rank ``rank``'s part of each global batch of ``batch_size`` (``loader`` module)."""
        return Sampler(len(self), batch_size, seed, self.shard_examples, self.window, rank, world_size)

    def loader(
        self,
        batch_size: int,
        seed: int = 0,
        *,
        prefetch: int = 1,
        rank: int = 0,
        world_size: int = 1,
        device: str | None = None,
    ) -> Loader:
        """Batches of ``batch_size`` in the seeded epoch order (``loader`` module), each decoded at
        once, ``prefetch`` batches ahead in a background thread; ``len`` is the steps per epoch.
        With ``world_size`` data-parallel ranks, this rank's slice of each global batch (windowed:
        batches from this rank's own shards). ``device``: batches delivered on that device, from
        pinned host buffers with ``non_blocking`` copies on CUDA (``loader.Loader``)."""
        return Loader(self.fetch, self.sampler(batch_size, seed, rank, world_size), prefetch, device)

    def fetch(self, step: Step) -> dict:
        """One ``loader.Step`` → its batch dict, loading the step's shard window."""
        if step.shards is not None:
            self._load(tuple(int(s) for s in step.shards))
        return self.batch(step.ids)

    def _load(self, shards: tuple[int, ...]) -> None:
        """Hold exactly these shards' knowledge rows in memory (contiguous reads, one per shard)."""
        if shards == self.loaded:
            return
        ranges = [layout.shard_range(s, len(self), self.shard_examples) for s in shards]
        blocks = [self.reader.read_many(self.names, a, b) for a, b in ranges]
        self.arrays = {name: np.concatenate([block[name] for block in blocks]) for name in self.names}
        self.rows = np.full(len(self), -1, dtype=np.int64)
        ids = np.concatenate([np.arange(a, b) for a, b in ranges])
        self.rows[ids] = np.arange(len(ids))
        self.loaded = shards

    def batch(self, index: np.ndarray) -> dict:
        """Examples ``index`` ([B] int, all in the loaded shards) → their batch dict."""
        batch = collate(self.examples, index)
        local = self.rows[index]
        rows = {name: values[local] for name, values in self.arrays.items()}
        return {**batch.as_dict(), **self.plan.decode(rows, batch.input_ids.shape[1])}

    # -- the PyTorch dataset ------------------------------------------------------------------

    def dataset(self) -> CacheDataset:
        """A map-style ``torch.utils.data.Dataset`` of this cache's examples (see ``item``)."""
        return CacheDataset(self)

    def item(self, i: int) -> dict[str, torch.Tensor]:
        """Example ``i`` as a dict of tensors, trimmed to its own length T_i and kept tokens K_i:
        input_ids / attention_mask / token_type_ids [T_i] int64, labels and example_ids [] int64,
        and the knowledge as in a batch without the batch axis (hidden_states [L_k, K_i, D]
        float32, token_index [L_k, K_i] int64, attention_probs [L_a, H, K_i, T_i], value_relation
        [H, K_i, T_i], logits [C] …).

        Raises: IndexError outside 0..N−1; CacheError for a damaged shard.
        """
        if not 0 <= i < len(self):
            raise IndexError(f"example {i} of a cache with {len(self)} examples")
        rows = self._item_rows(i)
        one = np.array([i])
        batch = collate(self.examples, one)
        decoded = self.plan.decode(rows, batch.input_ids.shape[1])
        return {key: value[0] for key, value in {**batch.as_dict(), **decoded}.items()}

    def _item_rows(self, i: int) -> dict[str, np.ndarray]:
        if self.window is None:
            return {name: values[i : i + 1] for name, values in self.arrays.items()}
        shard = i // self.shard_examples
        if shard not in self._shards:
            start, stop = layout.shard_range(shard, len(self), self.shard_examples)
            self._shards[shard] = self.reader.read_many(self.names, start, stop)
            while len(self._shards) > self.window:
                self._shards.popitem(last=False)
        self._shards.move_to_end(shard)
        row = i - shard * self.shard_examples
        return {name: values[row : row + 1] for name, values in self._shards[shard].items()}

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        """Dataset items → one batch dict with dynamic padding: every tensor is padded to the
        largest shape among the items (input_ids with the pad id, token_index / attention_index /
        value_index with −1, everything else with 0) and stacked. The result equals the batch
        ``cache.loader`` makes of the same examples."""
        out = {}
        for key in items[0]:
            tensors = [item[key] for item in items]
            shape = [max(sizes) for sizes in zip(*(t.shape for t in tensors))]
            value = self.pad_token_id if key == "input_ids" else _PAD.get(key, 0)
            stacked = torch.full((len(tensors), *shape), value, dtype=tensors[0].dtype)
            for row, tensor in zip(stacked, tensors):
                row[tuple(slice(0, n) for n in tensor.shape)] = tensor
            out[key] = stacked
        return out

    def epoch_sampler(self, seed: int = 0) -> EpochSampler:
        """A ``torch.utils.data.Sampler`` over example ids in ``hsk train``'s epoch order for
        ``seed`` (with batch size B, a DataLoader over it makes the same batches as
        ``cache.loader(B, seed)`` when the cache is in memory)."""
        return EpochSampler(len(self), seed, self.shard_examples, self.window)


class CacheDataset(torch.utils.data.Dataset):
    """Map-style dataset over a cache: ``dataset[i]`` is ``cache.item(i)``. Random access to a
    cache larger than the memory budget reads a whole shard per miss; use ``cache.loader`` or
    ``cache.epoch_sampler`` (shard-window order) for those."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.cache.item(int(i))


class EpochSampler(torch.utils.data.Sampler):
    """Example ids of epoch ``epoch`` in the seeded order of ``loader`` (full permutation, or
    shard windows); each ``iter`` serves the next epoch unless ``set_epoch`` says which."""

    def __init__(self, n: int, seed: int, shard_examples: int, window: int | None) -> None:
        self.n, self.seed, self.shard_examples, self.window = n, seed, shard_examples, window
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter`` serve epoch ``epoch`` (as ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        if self.window is None:
            order = full_order(self.n, self.seed, epoch)
        else:
            order = np.concatenate(
                [ids for _, ids in window_order(self.n, self.shard_examples, self.window, self.seed, epoch)]
            )
        return iter(order.tolist())
