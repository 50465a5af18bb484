"""Epoch order and batch delivery that never starve the student.

Random access into Zarr costs a Python round trip per chunk, so the cache is read in contiguous
shard ranges and shuffled in memory:

- if the knowledge fits ``memory_budget_bytes``, the whole cache is read once and each epoch is a
  full permutation ``default_rng([seed, epoch]).permutation(N)``, the same order an online or
  dataset source uses (so cache and online training see identical batches);
- otherwise shards are visited in a seeded random order, ``window`` shards at a time, and the
  examples of each window are permuted together (a shard-window shuffle).

The order is a pure function of (seed, epoch); a loader resumed at step s of an epoch yields
exactly that epoch's batches s, s+1, … without reading the skipped ones. ``prefetch`` moves batch
assembly to a background thread (numpy gathers and zarr reads release the GIL).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np


def full_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of range(n), a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def window_order(n: int, shard_examples: int, window: int, seed: int, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shard-window shuffle: [(shards of the window, permuted example ids of the window), …].

    Shards are visited in a seeded random order, ``window`` at a time; the concatenated example
    ids of all windows are a permutation of range(n).
    """
    rng = np.random.default_rng([seed, epoch, 1])
    shards = rng.permutation(-(-n // shard_examples))
    out = []
    for i in range(0, len(shards), window):
        group = np.sort(shards[i : i + window])
        ids = np.concatenate([np.arange(s * shard_examples, min(n, (s + 1) * shard_examples)) for s in group])
        out.append((group, rng.permutation(ids)))
    return out


def batches_of(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class Sampler:
    """Batches of one epoch as example ids, with the resumable position (epoch, step)."""

    def __init__(self, n: int, batch_size: int, seed: int, shard_examples: int | None = None, window: int | None = None):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shard_examples, self.window = shard_examples, window
        self.epoch, self.step = 0, 0

    @property
    def windowed(self) -> bool:
        return self.window is not None

    def steps_per_epoch(self) -> int:
        if not self.windowed:
            return -(-self.n // self.batch_size)
        return sum(len(batches_of(ids, self.batch_size)) for _, ids in window_order(self.n, self.shard_examples, self.window, self.seed, 0))

    def plan(self, epoch: int) -> list[tuple[np.ndarray | None, np.ndarray]]:
        """[(shards to load or None, batch ids)] for every step of ``epoch``."""
        if not self.windowed:
            return [(None, b) for b in batches_of(full_order(self.n, self.seed, epoch), self.batch_size)]
        return [(shards, b) for shards, ids in window_order(self.n, self.shard_examples, self.window, self.seed, epoch)
                for b in batches_of(ids, self.batch_size)]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed or state["batch_size"] != self.batch_size:
            raise ValueError("sampler state from a different seed or batch size")
        self.epoch, self.step = state["epoch"], state["step"]

    def __iter__(self) -> Iterator[tuple[np.ndarray | None, np.ndarray]]:
        """The remaining batches of the current epoch, advancing (epoch, step) as they are taken."""
        steps = self.plan(self.epoch)
        while self.step < len(steps):
            item = steps[self.step]
            self.step += 1
            yield item
        self.epoch, self.step = self.epoch + 1, 0


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

