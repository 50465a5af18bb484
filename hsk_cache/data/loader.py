"""Epoch order and batch delivery that never starve the student.

Random access into Zarr costs a Python round trip per chunk, so the cache is read in contiguous
shard ranges and shuffled in memory:

- if the knowledge fits ``memory_budget_bytes``, the whole cache is read once and each epoch is a
  full permutation ``default_rng([seed, epoch]).permutation(N)``, the same order an online or
  dataset source uses (so cache and online training see identical batches);
- otherwise shards are visited in a seeded random order, ``window`` shards at a time, and the
  examples of each window are permuted together (a shard-window shuffle).

With ``world_size`` data-parallel ranks (``hsk train`` under torchrun) every rank takes its part
of each step, and all ranks take the same number of steps:

- in memory, the global batches of the full permutation are split into ``world_size`` nearly
  equal slices (rank r takes slice r), so the ranks together train on exactly the batches one
  process would; a last batch smaller than ``world_size`` is dropped;
- with shard windows, the seeded shard order is dealt round-robin to the ranks, so each rank
  reads only its own shards; each rank permutes its windows' examples into batches of
  ``batch_size / world_size``, and ranks with fewer batches in an epoch repeat their first ones
  (as ``DistributedSampler`` pads) so that every rank takes as many steps as the busiest.

The order is a pure function of (seed, epoch); a loader resumed at step s of an epoch yields
exactly that epoch's batches s, s+1, … without reading the skipped ones. The sampler's position
counts batches *trained* (``Sampler.advance``), not batches a prefetch thread produced. ``prefetch`` moves batch
assembly to a background thread (numpy gathers and zarr reads release the GIL).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch


def full_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of range(n), a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def window_order(
    n: int, shard_examples: int, window: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shard-window shuffle: [(shards of the window, permuted example ids of the window), …].

    Shards are visited in a seeded random order, ``window`` at a time; the concatenated example
    ids of all windows are a permutation of range(n). With ``world_size`` ranks, rank ``rank``
    gets every ``world_size``-th shard of that order (and its own seeded example permutation).
    """
    rng = np.random.default_rng([seed, epoch, 1])
    shards = rng.permutation(-(-n // shard_examples))
    if world_size > 1:
        shards = shards[rank::world_size]
        rng = np.random.default_rng([seed, epoch, 1, rank])
    out = []
    for i in range(0, len(shards), window):
        group = np.sort(shards[i : i + window])
        ids = np.concatenate([np.arange(s * shard_examples, min(n, (s + 1) * shard_examples)) for s in group])
        out.append((group, rng.permutation(ids)))
    return out


def batches_of(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Cut ``order`` into consecutive batches.

    Args:
        order: [N] example ids in epoch order.
        batch_size: ids per batch, ≥ 1.
    Returns:
        [B] id arrays of ``batch_size`` ids each, in order; the last one holds the rest (it may be
        smaller).
    """
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass(frozen=True)
class Step:
    """One batch of the epoch order: its position (``epoch``, ``index`` within the epoch), the
    shards to hold in memory (None when the whole cache is in memory) and the example ids [B]."""

    epoch: int
    index: int
    shards: np.ndarray | None
    ids: np.ndarray


class Sampler:
    """Batches of each epoch as example ids, and the position of the next batch to *train*.

    The position moves only through ``advance`` (called by whoever trains on a batch), never
    because a background thread produced batches ahead, so ``state_dict`` is exactly where a
    resumed run must continue.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        shard_examples: int | None = None,
        window: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        """``batch_size``: the global batch (over all ``world_size`` ranks).

        Raises: ValueError if ``batch_size`` is not a multiple of ``world_size``.
        """
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not a multiple of the {world_size} ranks")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shard_examples, self.window = shard_examples, window
        self.rank, self.world_size = rank, world_size
        self.epoch, self.step = 0, 0
        self._plan: tuple[int, list] | None = None  # the last epoch planned (producer and consumer share it)

    @property
    def windowed(self) -> bool:
        """True when epochs are shard-window shuffles (``window`` set), False for full permutations
        of an in-memory source."""
        return self.window is not None

    def steps_per_epoch(self) -> int:
        """Steps this rank takes in an epoch (the same count on every rank), from epoch 0's order.

        In memory: the global batches of at least ``world_size`` examples. With shard windows and
        several ranks: the busiest rank's batch count (the others repeat batches to match it).
        """
        return len(self.plan(0)) if self.windowed and self.world_size > 1 else self._steps(0)

    def _steps(self, epoch: int) -> int:
        if not self.windowed:
            return sum(len(b) >= self.world_size for b in batches_of(np.arange(self.n), self.batch_size))
        return sum(
            len(batches_of(ids, self.batch_size))
            for _, ids in window_order(self.n, self.shard_examples, self.window, self.seed, epoch)
        )

    def plan(self, epoch: int) -> list[tuple[np.ndarray | None, np.ndarray]]:
        """[(shards to load or None, this rank's batch ids)] for every step of ``epoch``."""
        cached = self._plan
        if cached is not None and cached[0] == epoch:
            return cached[1]
        world = self.world_size
        if not self.windowed:
            batches = batches_of(full_order(self.n, self.seed, epoch), self.batch_size)
            steps = [(None, np.array_split(b, world)[self.rank]) for b in batches if len(b) >= world]
        else:
            local = self.batch_size // world
            per_rank = [
                [
                    (shards, b)
                    for shards, ids in window_order(
                        self.n, self.shard_examples, self.window, self.seed, epoch, r, world
                    )
                    for b in batches_of(ids, local)
                ]
                if r == self.rank
                else sum(
                    -(-len(ids) // local)
                    for _, ids in window_order(self.n, self.shard_examples, self.window, self.seed, epoch, r, world)
                )
                for r in range(world)
            ]
            steps = per_rank[self.rank]
            longest = max(len(p) if isinstance(p, list) else p for p in per_rank)
            steps = [steps[i % len(steps)] for i in range(longest)] if steps else []
        self._plan = (epoch, steps)
        return steps

    def stream(self) -> Iterator[Step]:
        """Every batch from the current position on, epoch after epoch, endlessly; the position
        does not move (the consumer calls ``advance`` for each batch it trains on)."""
        epoch, index = self.epoch, self.step
        while True:
            steps = self.plan(epoch)
            for i in range(index, len(steps)):
                yield Step(epoch, i, *steps[i])
            epoch, index = epoch + 1, 0

    def advance(self, step: Step) -> None:
        """Record that ``step`` was trained on: the position moves just past it."""
        self.epoch, self.step = step.epoch, step.index + 1
        if self.step >= len(self.plan(self.epoch)):
            self.epoch, self.step = self.epoch + 1, 0

    def state_dict(self) -> dict:
        """The position of the next batch to train, with what the order depends on (JSON)."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "n": self.n,
            "shard_examples": self.shard_examples if self.windowed else None,
            "window": self.window,
            # the windowed order depends on the rank count; the in-memory one does not
            "world_size": self.world_size if self.windowed and self.world_size > 1 else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Raises: ValueError naming the field when ``state`` comes from another order (seed,
        batch size, example count, or shard window)."""
        for key, value in self.state_dict().items():
            if key not in ("epoch", "step") and state.get(key) != value:
                raise ValueError(f"the saved epoch order has {key}={state.get(key)!r}, this one {value!r}")
        self.epoch, self.step = state["epoch"], state["step"]

    def __iter__(self) -> Iterator[Step]:
        """The remaining batches of the current epoch, each counted as trained when it is taken
        (for inline use; a trainer with prefetch uses ``stream`` and ``advance``)."""
        epoch = self.epoch
        for step in self.stream():
            if step.epoch != epoch:
                return
            self.advance(step)
            yield step


def prefetch(items: Iterator, depth: int) -> Iterator:
    """Produce ``items`` in a background thread, up to ``depth`` ahead (0: in the caller's thread).

    Exceptions in the producer are re-raised in the consumer.
    """
    if depth <= 0:
        yield from items
        return
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                slots.put(item)
            slots.put(done)
        except BaseException as err:  # handed to the consumer
            slots.put(err)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                slots.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.01)


class Loader:
    """Batches of a source in its epoch order: ``len`` steps per epoch, ``set_epoch``, and
    iteration over one epoch of batch dicts (``knowledge`` module's format), assembled
    ``prefetch`` batches ahead in a background thread (0: inline).

    ``fetch(step) -> batch`` turns a ``Step`` into its batch (``Cache.fetch`` for a cache). The
    position (``sampler.state_dict()``) moves as batches are taken, so a loader can be resumed
    with ``sampler.load_state_dict``; ``stream`` serves trainers that count trained batches.
    """

    def __init__(self, fetch, sampler: Sampler, prefetch: int = 1, device: str | torch.device | None = None) -> None:
        """``device``: deliver every batch there (``to_device``): on CUDA the background thread
        pins each batch's host tensors and the copies run ``non_blocking``; None keeps batches
        where ``fetch`` made them."""
        self.fetch, self.sampler, self.prefetch = fetch, sampler, prefetch
        self.device = None if device is None else torch.device(device)

    def _produce(self, step: Step) -> dict:
        batch = self.fetch(step)
        return pinned(batch) if self.device is not None and self.device.type == "cuda" else batch

    def _deliver(self, batch: dict) -> dict:
        return batch if self.device is None else to_device(batch, self.device)

    def __len__(self) -> int:
        return self.sampler.steps_per_epoch()

    def set_epoch(self, epoch: int) -> None:
        """Start at the first batch of ``epoch`` (the order is a pure function of seed and epoch)."""
        self.sampler.epoch, self.sampler.step = epoch, 0

    def __iter__(self) -> Iterator[dict]:
        """The rest of the current epoch; the position moves past each batch as it is taken."""
        epoch = self.sampler.epoch
        steps = [s for s in _until_epoch_end(self.sampler.stream(), epoch)]
        for step, batch in prefetch(((s, self._produce(s)) for s in steps), self.prefetch):
            self.sampler.advance(step)
            yield self._deliver(batch)

    def stream(self, count: int) -> Iterator[tuple[Step, dict]]:
        """The next ``count`` (step, batch) pairs from the current position, across epochs,
        without moving it (the trainer calls ``sampler.advance`` for each batch it trains on)."""
        steps = (step for _, step in zip(range(count), self.sampler.stream()))
        produced = prefetch(((step, self._produce(step)) for step in steps), self.prefetch)
        return ((step, self._deliver(batch)) for step, batch in produced)


def pinned(batch: dict) -> dict:
    """The batch's CPU tensors copied into page-locked memory (for ``non_blocking`` host → CUDA
    copies); other values as they are. Runs in the loader's background thread."""
    on_host = lambda v: isinstance(v, torch.Tensor) and v.device.type == "cpu"
    return {k: v.pin_memory() if on_host(v) else v for k, v in batch.items()}


def to_device(batch: dict, device: torch.device) -> dict:
    """Every tensor of ``batch`` on ``device``. Copies from pinned memory are issued
    ``non_blocking``: they are ordered on the current CUDA stream before any kernel that reads
    them, and the host goes on at once (the pinned source stays referenced until then by the
    caching allocator's event). Tensors already there are returned as they are."""
    return {
        k: v.to(device, non_blocking=v.is_pinned()) if isinstance(v, torch.Tensor) and v.device != device else v
        for k, v in batch.items()
    }


def _until_epoch_end(steps: Iterator[Step], epoch: int) -> Iterator[Step]:
    for step in steps:
        if step.epoch != epoch:
            return
        yield step
