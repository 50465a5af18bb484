"""Selection runs where the teacher ran: only the selected knowledge is handed to the host.

``extract`` hands every batch's selected tensors to ``models.teacher.HostCopy`` (the one
device → host path) and nothing else; the full [B, T, D] hidden states and [B, H, T, T]
attentions stay on the teacher's device. On the CPU the cache is bitwise the one the golden hashes
hold (tests/test_golden.py); tests/test_cuda.py counts the bytes a GPU actually copies.
"""

from __future__ import annotations

import numpy as np
import torch
import zarr

from hsk_cache.cli import main
from hsk_cache.extraction import extract
from hsk_cache.models import teacher as teacher_module


def test_the_host_receives_only_the_selected_knowledge(tiny_teacher, toy_dir, tmp_path, monkeypatch):
    handed = []

    class Recorder(teacher_module.HostCopy):
        def __init__(self, knowledge):
            handed.append({name: (tuple(t.shape), t.dtype, t.device.type) for name, t in knowledge.items()})
            super().__init__(knowledge)
            handed[-1]["selected_bytes"] = self.selected_bytes

    monkeypatch.setattr(extract, "HostCopy", Recorder)
    out = str(tmp_path / "cache")
    args = ["--data", toy_dir, "--max-length", "32", "--layers", "all", "--tokens", "topk:5"]
    args += ["--knowledge", "hidden_states,logits", "--dtype", "float32", "--batch-size", "8"]
    assert main(["extract", "--teacher", tiny_teacher, "--out", out, *args]) == 0

    stored = zarr.open_group(out, mode="r")
    n, layers, k = stored["token_index"].shape  # the reference: what the cache holds
    d = stored["hidden_states"].shape[-1]
    classes = stored["logits"].shape[-1]
    assert (n, layers, k, d, classes) == (64, 3, 5, 32, 2)
    assert len(handed) == n // 8  # one hand-over per batch, every batch
    for record in handed:
        assert set(record) == {"token_index", "hidden_states", "logits", "selected_bytes"}
        b = record["logits"][0][0]
        assert record["token_index"][:2] == ((b, layers, k), torch.int64)
        assert record["hidden_states"][:2] == ((b, layers, k, d), torch.float32)
        assert record["logits"][:2] == ((b, classes), torch.float32)
        assert record["selected_bytes"] == b * layers * k * (8 + 4 * d) + b * classes * 4
    # what the host received before selection moved to the device: every layer's [B, T_b, D] states
    # and the ranking layers' [B, H, T_b, T_b] attention, per batch at least T_b = K + 1 tokens wide
    lengths = stored["lengths"][...]
    full = sum(
        int(lengths[i : i + 8].max()) * 8 * (layers * d + 2 * 4 * int(lengths[i : i + 8].max())) * 4
        for i in range(0, n, 8)
    )
    assert sum(r["selected_bytes"] for r in handed) < full / 3


def test_host_copy_takes_host_tensors_as_they_are_and_counts_no_crossing():
    knowledge = {"token_index": torch.arange(6).reshape(2, 3), "hidden_states": torch.ones(2, 3, 4)}
    copy = teacher_module.HostCopy(knowledge)
    got = copy.wait()
    assert copy.nbytes == 0 and copy.selected_bytes == 6 * 8 + 24 * 4
    assert all(got[name] is knowledge[name] for name in knowledge)  # no copy on the CPU


def test_online_knowledge_stays_on_the_teachers_device(tiny_teacher, toy_dir):
    from hsk_cache.config.run import DataConfig
    from hsk_cache.data.sources import OnlineSource
    from hsk_cache.knowledge.spec import ExtractSpec

    spec = ExtractSpec.parse(layers="all", tokens="topk:5", knowledge="hidden_states,logits")
    source = OnlineSource(tiny_teacher, DataConfig(source=toy_dir, split="train", max_length=32), spec)
    batch = source.batch(np.arange(4))
    device = next(source.teacher.parameters()).device
    assert batch["hidden_states"].device == device and batch["hidden_states"].shape[:3] == (4, 3, 5)


def _arrays(path) -> dict:
    group = zarr.open_group(path, mode="r")
    return {name: array[...] for name, array in group.arrays()}


def test_a_writer_thread_writes_the_same_cache_and_raises_its_error(tiny_teacher, toy_dir, tmp_path, monkeypatch):
    args = ["--data", toy_dir, "--max-length", "32", "--tokens", "topk:5", "--shard-examples", "16"]
    inline, threaded = str(tmp_path / "inline"), str(tmp_path / "threaded")
    monkeypatch.setattr(extract, "OVERLAP_WRITES", False)
    assert main(["extract", "--teacher", tiny_teacher, "--out", inline, *args]) == 0
    monkeypatch.setattr(extract, "OVERLAP_WRITES", True)
    threads = []
    original = extract.CacheWriter.write_shard

    def recorded(self, *a):
        import threading

        threads.append(threading.current_thread().name)
        return original(self, *a)

    monkeypatch.setattr(extract.CacheWriter, "write_shard", recorded)
    assert main(["extract", "--teacher", tiny_teacher, "--out", threaded, *args]) == 0
    assert len(threads) == 4 and all(name.startswith("hsk-shard-writer") for name in threads)
    a, b = _arrays(inline), _arrays(threaded)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    def full_disk(self, shard, *a):
        if shard == 2:
            raise OSError(28, "No space left on device")
        return original(self, shard, *a)

    monkeypatch.setattr(extract.CacheWriter, "write_shard", full_disk)
    assert main(["extract", "--teacher", tiny_teacher, "--out", str(tmp_path / "full"), *args]) != 0
