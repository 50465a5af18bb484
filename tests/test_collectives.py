"""Every ``torch.distributed`` collective hsk_cache runs gets its tensors on the group's device.

NCCL takes CUDA tensors only: a CPU tensor handed to ``dist.all_reduce`` under ``--device cuda``
fails the first training step. The CPU cannot show that with a real NCCL group, so these tests run
a real one-rank gloo group and pretend its device is ``cuda:0``:

- ``_collective_device`` (which device the group uses) is patched to return ``GROUP`` (cuda:0);
- ``_to_group`` (the one way a tensor gets onto the group's device) is patched to return a CPU
  copy wrapped in ``OnGroup``, a tensor subclass whose ``.device`` reports ``GROUP`` (the data
  stays on the CPU, so the real gloo op still runs; meta tensors cannot stand in: they hold no
  data, and the callers read the results);
- every collective of ``torch.distributed`` is wrapped to record the device of each tensor handed
  to it, then run the real op, then emulate a second rank (an all-reduce adds its contribution; a
  broadcast to "rank 1" replays what "rank 0" sent).

A CPU tensor that reaches a collective without ``_to_group`` reports ``cpu`` and fails the test; a
tensor moved some other way (``.to(_collective_device())``) fails because this torch has no CUDA.
The real callers run: ``all_reduce_sum``, ``broadcast_json``, ``broadcast_arrays``, the losses'
``_mean`` (world size 2), the data-parallel step's ``global_loss`` and the cache's open-time check.
"""

from __future__ import annotations

import ast
import json
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from hsk_cache import distributed
from hsk_cache.errors import CacheError
from hsk_cache.knowledge import losses

GROUP = torch.device("cuda", 0)  # what nccl needs; no CPU tensor is ever there
COLLECTIVES = (
    "all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce", "reduce_scatter",
    "reduce_scatter_tensor", "gather", "scatter", "all_to_all", "all_to_all_single", "send", "recv",
    "isend", "irecv", "barrier", "monitored_barrier", "broadcast_object_list", "all_gather_object",
    "gather_object", "scatter_object_list", "batch_isend_irecv",
)  # fmt: skip
ROOT = Path(__file__).resolve().parents[1] / "hsk_cache"


class OnGroup(torch.Tensor):
    """A CPU tensor standing for a copy on the group's device: ``.device`` reports ``GROUP``."""

    @property
    def device(self):
        return GROUP


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _plain(value):
    """``value`` with every OnGroup tensor unwrapped (same storage), for the real gloo op."""
    if isinstance(value, torch.Tensor):
        return value.as_subclass(torch.Tensor)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


class Recorder:
    """Wraps the collectives; ``calls`` holds (name, [device of each tensor argument])."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, list[torch.device]]] = []
        self.sent: list[torch.Tensor] = []  # what broadcasts carried (rank 0's side)
        self.replay: list[torch.Tensor] | None = None  # set: broadcasts deliver these (rank 1's side)
        self.remote = lambda t: t.clone()  # the other rank's contribution to an all-reduce
        for name in COLLECTIVES:
            if hasattr(dist, name):
                monkeypatch.setattr(dist, name, self._wrap(name, getattr(dist, name)))
        monkeypatch.setattr(distributed, "_collective_device", lambda: GROUP)
        # raising=False: code without the seam must fail by its tensors' devices, not here
        monkeypatch.setattr(distributed, "_to_group", lambda t: t.detach().clone().as_subclass(OnGroup), raising=False)

    def _wrap(self, name, real):
        def collective(*args, **kwargs):
            tensors = list(_tensors(args)) + list(_tensors(kwargs))
            self.calls.append((name, [t.device for t in tensors]))
            for t in tensors:
                assert t.device == GROUP, (
                    f"dist.{name} got a tensor on {t.device} {tuple(t.shape)}; the group's device is {GROUP} "
                    "(move it with distributed._to_group)"
                )
            result = real(*_plain(args), **{k: _plain(v) for k, v in kwargs.items()})
            if name == "all_reduce":
                local = tensors[0].as_subclass(torch.Tensor)
                local += self.remote(local)
            elif name == "broadcast":
                local = tensors[0].as_subclass(torch.Tensor)
                if self.replay is not None:
                    local.copy_(self.replay.pop(0))
                else:
                    self.sent.append(local.clone())
            return result

        return collective

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture(scope="module")
def group():
    """A real one-rank gloo process group on 127.0.0.1, destroyed after the module."""
    assert not dist.is_initialized()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def as_rank(monkeypatch, rank: int, world_size: int = 2) -> None:
    """Make hsk_cache see this process as ``rank`` of ``world_size`` (the group itself has one rank)."""
    monkeypatch.setattr(distributed, "current", lambda: distributed.Rank(rank, world_size, 0))


@pytest.fixture
def recorder(group, monkeypatch) -> Recorder:
    as_rank(monkeypatch, 0)
    return Recorder(monkeypatch)


def test_the_group_device_is_cuda_current_under_nccl_and_cpu_under_gloo(group, monkeypatch):
    assert distributed._collective_device() == torch.device("cpu")
    monkeypatch.setattr(dist, "get_backend", lambda *a, **k: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert distributed._collective_device() == torch.device("cuda", 3)


def test_to_group_moves_to_the_group_device_and_leaves_tensors_already_there(group, monkeypatch):
    here = torch.arange(3)
    assert distributed._to_group(here) is here  # gloo: the CPU, no copy
    monkeypatch.setattr(distributed, "_collective_device", lambda: torch.device("meta"))
    moved = distributed._to_group(here)
    assert moved.device == torch.device("meta") and moved.shape == here.shape and moved.dtype == here.dtype


def test_all_reduce_sum_reduces_on_the_group_device_and_returns_on_the_callers(recorder):
    mine = torch.tensor([1.0, 2.5], dtype=torch.float64)
    out = distributed.all_reduce_sum(mine)
    assert recorder.calls == [("all_reduce", [GROUP])]
    assert out is mine and type(out) is torch.Tensor and out.device == torch.device("cpu")
    assert out.tolist() == [2.0, 5.0]  # two ranks holding the same tensor
    distributed.barrier()
    assert recorder.calls[1:] == [("barrier", [])]


def test_all_reduce_sum_is_in_place_on_the_groups_own_device(group, monkeypatch):
    as_rank(monkeypatch, 0)
    mine = torch.tensor([3], dtype=torch.int64)
    seen = []
    real = dist.all_reduce
    monkeypatch.setattr(dist, "all_reduce", lambda t, **kw: (seen.append(t), real(t, **kw))[1])
    assert distributed.all_reduce_sum(mine) is mine and seen[0] is mine  # gloo, a CPU tensor: no copy
    assert mine.tolist() == [3]  # the real one-rank group


def test_broadcast_json_sends_and_receives_on_the_group_device(recorder, monkeypatch):
    value = {"failure": None, "text": "héllo", "n": [1, 2, 3]}
    assert distributed.broadcast_json(value) == value  # rank 0 sends
    assert recorder.names() == ["broadcast", "broadcast"] and recorder.sent[0].tolist() == [
        len(json.dumps(value).encode())
    ]
    as_rank(monkeypatch, 1)  # rank 1 receives what rank 0 sent
    recorder.replay, recorder.calls = list(recorder.sent), []
    assert distributed.broadcast_json() == value
    assert recorder.calls == [("broadcast", [GROUP])] * 2


def test_broadcast_arrays_sends_and_receives_on_the_group_device(recorder, monkeypatch):
    arrays = {
        "input_ids": np.arange(24, dtype=np.int64).reshape(4, 6),
        "lengths": np.array([6, 3, 5, 1], dtype=np.int32),
        "weights": np.linspace(0, 1, 5, dtype=np.float16),
        "missing": None,
    }
    assert distributed.broadcast_arrays(arrays) is not None
    assert recorder.names() == ["broadcast"] * 5  # the header (size, bytes), then three arrays
    as_rank(monkeypatch, 1)
    recorder.replay, recorder.calls = list(recorder.sent), []
    got = distributed.broadcast_arrays()
    assert all(devices == [GROUP] for _, devices in recorder.calls) and len(recorder.calls) == 5
    assert got.keys() == arrays.keys() and got["missing"] is None
    for name in ("input_ids", "lengths", "weights"):
        assert got[name].dtype == arrays[name].dtype and (got[name] == arrays[name]).all(), name


def test_the_losses_mean_all_reduces_its_count_on_the_group_device(recorder):
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    alone = losses.hidden_mse(student, teacher, mask)
    assert recorder.calls == []  # one rank: no collective
    two = losses.hidden_mse(student, teacher, mask, world_size=2)
    assert recorder.calls == [("all_reduce", [GROUP])]
    # two ranks with the same part: total · 2 / (2 · count), the one-process mean
    assert type(two) is torch.Tensor and two.device == torch.device("cpu")
    torch.testing.assert_close(two, alone)


def test_the_data_parallel_step_reduces_the_loss_and_stop_signal_on_the_group_device(group, monkeypatch):
    from hsk_cache.training.loop import _DataParallelStep

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)

    def objective(model, batch, world_size=1):
        return losses.hidden_mse(model(batch["x"])[:, None], batch["y"][:, None], batch["mask"], world_size)

    batch = {"x": torch.randn(6, 4), "y": torch.randn(6, 4), "mask": torch.ones(6, 1, dtype=torch.bool)}
    as_rank(monkeypatch, 0)
    step = _DataParallelStep(model, objective, [], distributed.Rank(0, 2, 0))  # DDP on the real group
    assert step.engine is not None
    recorder = Recorder(monkeypatch)
    loss = step(batch)
    assert recorder.calls == [("all_reduce", [GROUP])]  # _mean's count, inside DDP's forward
    expected = float(objective(model, batch).detach())
    assert step.global_loss(loss) == pytest.approx(expected, rel=1e-6)
    assert recorder.calls[1:] == [("all_reduce", [GROUP])]
    assert step.stop.signal is None
    # the other rank was sent SIGTERM: this one hears of it at the same step
    recorder.remote = lambda t: torch.tensor([float(loss.detach()), float(signal.SIGTERM)], dtype=t.dtype)
    step.global_loss(loss)
    assert step.stop.signal == signal.SIGTERM and len(recorder.calls) == 3
    assert all(devices == [GROUP] for _, devices in recorder.calls)


@pytest.fixture(scope="module")
def tiny_cache(tiny_teacher, toy_dir, tmp_path_factory) -> str:
    from hsk_cache.config.run import DataConfig
    from hsk_cache.extraction import extract
    from hsk_cache.knowledge.spec import ExtractSpec

    out = str(tmp_path_factory.mktemp("collectives") / "cache")
    data = DataConfig(source=toy_dir, split="train", max_length=32)
    spec = ExtractSpec.parse("last", "topk:4")
    extract.run(extract.ExtractConfig(teacher=tiny_teacher, data=data, out=out, spec=spec, shard_examples=16))
    return out


def test_the_cache_open_check_counts_damage_over_ranks_on_the_group_device(tiny_cache, recorder):
    from hsk_cache.data.cache import open_cache

    cache = open_cache(tiny_cache, memory_budget_bytes=1)  # shard windows: crc32c checked at open
    assert cache.window is not None and recorder.calls == [("all_reduce", [GROUP])]
    recorder.remote = lambda t: torch.ones_like(t)  # the other rank found a damaged shard file
    with pytest.raises(CacheError, match="another rank found 1 damaged shard files"):
        open_cache(tiny_cache, memory_budget_bytes=1)
    assert recorder.calls == [("all_reduce", [GROUP])] * 2


def _collective_calls(path: Path) -> list[str]:
    """``torch.distributed`` collectives a module calls by name (``dist.all_reduce``,
    ``torch.distributed.broadcast``, ``from torch.distributed import ...``)."""
    tree = ast.parse(path.read_text())
    aliases, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.name == "torch.distributed" and a.asname}
        elif isinstance(node, ast.ImportFrom):
            if node.module == "torch":
                aliases |= {a.asname or a.name for a in node.names if a.name == "distributed"}
            elif node.module == "torch.distributed":
                found += [
                    f"{path.name}: from torch.distributed import {a.name}" for a in node.names if a.name in COLLECTIVES
                ]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in COLLECTIVES:
            owner = node.value
            named = isinstance(owner, ast.Name) and owner.id in aliases
            dotted = (
                isinstance(owner, ast.Attribute)
                and owner.attr == "distributed"
                and isinstance(owner.value, ast.Name)
                and owner.value.id == "torch"
            )
            if named or dotted:
                found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: {node.attr}")
    return found


def test_every_collective_goes_through_the_distributed_helpers():
    """Outside hsk_cache/distributed.py nothing calls a collective itself (the helpers move the
    tensors to the group's device; the test above checks them)."""
    calls = [c for p in sorted(ROOT.rglob("*.py")) if p != ROOT / "distributed.py" for c in _collective_calls(p)]
    assert calls == []
    assert _collective_calls(ROOT / "distributed.py")  # the scan sees the helpers' own calls
