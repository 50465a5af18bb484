"""The loader's epoch order and resumability, in memory and with shard windows."""

import numpy as np
import pytest
import torch

from hsk_cache.config.run import DataConfig
from hsk_cache.data.cache import open_cache
from hsk_cache.data.loader import Sampler, prefetch
from hsk_cache.extraction import extract
from hsk_cache.knowledge.spec import ExtractSpec


def _epoch(sampler):
    return [step.ids for step in sampler]


@pytest.mark.parametrize("windowed", [False, True])
def test_order_is_a_seeded_permutation_and_resumes_mid_epoch(windowed):
    make = lambda seed=7: Sampler(103, 8, seed, shard_examples=16, window=2 if windowed else None)
    sampler = make()
    first, second = _epoch(sampler), _epoch(sampler)
    for epoch in (first, second):
        assert sorted(np.concatenate(epoch).tolist()) == list(range(103))
    assert not np.array_equal(np.concatenate(first), np.concatenate(second))
    again = make()
    assert all(np.array_equal(a, b) for a, b in zip(first, _epoch(again)))
    assert not np.array_equal(np.concatenate(first), np.concatenate(_epoch(make(seed=8))))

    # stop after 5 batches of epoch 1, save, resume in a fresh sampler: exactly the remaining batches
    interrupted = make()
    _epoch(interrupted)
    taken = [step.ids for _, step in zip(range(5), iter(interrupted))]
    resumed = make()
    resumed.load_state_dict(interrupted.state_dict())
    rest = _epoch(resumed)
    assert [b.tolist() for b in taken + rest] == [b.tolist() for b in second]
    assert resumed.state_dict()["epoch"] == 2 and resumed.state_dict()["step"] == 0
    with pytest.raises(ValueError, match="seed=7, this one 8"):
        make(seed=8).load_state_dict(interrupted.state_dict())


def test_position_counts_batches_trained_not_batches_prefetched():
    sampler = Sampler(100, 10, 0)
    stream = prefetch(sampler.stream(), depth=4)
    trained = [next(stream) for _ in range(13)]  # the producer thread runs up to 4 batches ahead
    for step in trained:
        sampler.advance(step)
    stream.close()
    assert sampler.state_dict()["epoch"] == 1 and sampler.state_dict()["step"] == 3
    resumed = Sampler(100, 10, 0)
    resumed.load_state_dict(sampler.state_dict())
    following = next(iter(resumed.stream()))
    assert (following.epoch, following.index) == (1, 3)
    assert following.ids.tolist() == Sampler(100, 10, 0).plan(1)[3][1].tolist()


def test_windows_hold_whole_shards():
    sampler = Sampler(100, 10, 0, shard_examples=16, window=2)
    for step in sampler:
        shards, ids = step.shards, step.ids
        allowed = set(np.concatenate([np.arange(s * 16, min(100, s * 16 + 16)) for s in shards]).tolist())
        assert set(ids.tolist()) <= allowed and len(shards) <= 2


def test_windowed_cache_source_reads_the_same_knowledge(tiny_teacher, toy_dir, tmp_path):
    out = str(tmp_path / "cache")
    spec = ExtractSpec.parse("all", "topk:5", "magnitude:0.5", dtype="int8")
    extract.run(
        extract.ExtractConfig(
            teacher=tiny_teacher, data=DataConfig(source=toy_dir, max_length=32), out=out, spec=spec, shard_examples=8
        )
    )
    in_memory, windowed = open_cache(out), open_cache(out, memory_budget_bytes=1)
    assert in_memory.window is None and windowed.window == 1
    seen = []
    for item in windowed.sampler(4, seed=3):
        batch = windowed.fetch(item)
        reference = in_memory.batch(item.ids)
        assert batch.keys() == reference.keys()
        for key in ("input_ids", "hidden_states", "hidden_mask", "token_index"):
            assert torch.equal(batch[key], reference[key]), key
        seen.extend(item.ids.tolist())
    assert sorted(seen) == list(range(64))


def test_prefetch_preserves_order_and_errors():
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def broken():
        yield 1
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        list(prefetch(broken(), depth=2))


def test_rank_slices_make_the_one_process_batches_and_windows_split_the_shards():
    one = Sampler(100, 8, seed=3).plan(1)
    parts = [Sampler(100, 8, seed=3, rank=r, world_size=2).plan(1) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(one) == 13  # the last batch of 4 splits 2 + 2
    for i, (_, ids) in enumerate(one):
        np.testing.assert_array_equal(np.concatenate([parts[0][i][1], parts[1][i][1]]), ids)
    # shard windows: each rank reads only its own shards; together they cover every example once
    windowed = [Sampler(100, 8, seed=3, shard_examples=16, window=2, rank=r, world_size=2) for r in range(2)]
    plans = [s.plan(0) for s in windowed]
    assert len(plans[0]) == len(plans[1]) == windowed[0].steps_per_epoch()
    shards = [{int(x) for shards, _ in plan for x in shards} for plan in plans]
    assert not shards[0] & shards[1] and shards[0] | shards[1] == set(range(7))
    for plan, own in zip(plans, shards):
        ids = np.concatenate([b for _, b in plan])
        assert all(len(b) <= 4 for _, b in plan) and {int(i) // 16 for i in ids} <= own
    seen = np.concatenate([b for plan in plans for _, b in plan])
    assert set(seen.tolist()) == set(range(100))  # padded ranks repeat a few of their own examples
    with pytest.raises(ValueError, match="multiple of the 2 ranks"):
        Sampler(100, 7, seed=0, rank=0, world_size=2)
