"""Several processes through ``torch.distributed``, launched by ``torchrun`` (or ``accelerate launch``).

hsk-cache never spawns processes: a launcher starts one process per rank with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous in the environment, and ``init`` joins the
default process group (nccl for ``--device cuda``, gloo on CPU). Each rank then uses its own
device: ``cuda:LOCAL_RANK`` for ``--device cuda``, else the CPU.

Collectives wait for every rank; a rank that fails makes the launcher stop the others, so the
timeout only bounds a rank waiting for slower ones (default 6 h, ``HSK_DIST_TIMEOUT_MIN``):
rank 0 verifies or finishes a cache while the others wait at a barrier.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from hsk_cache.errors import ConfigError


@dataclass(frozen=True)
class Rank:
    """This process's place in the job: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """More than one process: collectives are needed."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that creates, finishes and writes shared files."""
        return self.rank == 0

    def device(self, device: str) -> str:
        """This rank's device for ``--device``: ``cuda`` → ``cuda:LOCAL_RANK`` under a launcher."""
        return f"cuda:{self.local_rank}" if device == "cuda" and self.enabled else device


def launched() -> bool:
    """Started by a launcher with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "cpu") -> Rank:
    """Join the default process group when launched with several processes (once per process);
    a single process gets ``Rank()`` and no group.

    Raises: ConfigError when the launcher's environment is incomplete.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    if not launched():
        return Rank()
    try:
        rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except KeyError as err:
        raise ConfigError(f"WORLD_SIZE is set but {err.args[0]} is not: launch with torchrun") from None
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    minutes = float(os.environ.get("HSK_DIST_TIMEOUT_MIN", "360"))
    dist.init_process_group(backend, timeout=timedelta(minutes=minutes))
    return Rank(rank, world, local)


def current() -> Rank:
    """The rank of this process (``Rank()`` without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Rank()
    return Rank(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown() -> None:
    """Leave the process group (at the end of a command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for in a single process); under nccl on
    this rank's GPU (``cuda:<current>``, named so torch need not guess it)."""
    if current().enabled:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def _collective_device() -> torch.device:
    """The device the default group's backend communicates from: ``cuda:<current device>`` for
    nccl (``init`` sets it to ``LOCAL_RANK``), the CPU for gloo. Needs an initialized group."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _to_group(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on the group's device (``_collective_device``): itself when it is there already,
    else a copy. Every tensor handed to a ``torch.distributed`` collective goes through here
    (nccl rejects CPU tensors, gloo's reductions want CPU ones); ``tests/test_collectives.py``
    checks it."""
    device = _collective_device()
    return tensor if tensor.device == device else tensor.to(device)


def broadcast_json(value=None, src: int = 0):
    """``value`` (JSON-serializable) of rank ``src``, on every rank (as UTF-8 bytes, no pickle).

    Two broadcasts on the group's device: the byte count (int64 [1]), then the bytes (uint8 [n]).
    Without a process group (or with one rank) ``value`` itself. Every rank must call it.
    """
    if not current().enabled:
        return value
    mine = current().rank == src
    payload = json.dumps(value).encode() if mine else b""
    size = _to_group(torch.tensor([len(payload)], dtype=torch.int64))
    dist.broadcast(size, src)
    n = int(size.item())
    data = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if mine else torch.empty(n, dtype=torch.uint8)
    buffer = _to_group(data)
    dist.broadcast(buffer, src)
    return json.loads(bytes(buffer.cpu().numpy()).decode())


def broadcast_arrays(arrays: dict[str, np.ndarray | None] | None = None, src: int = 0) -> dict[str, np.ndarray | None]:
    """Numpy arrays of rank ``src``, on every rank (shapes and dtypes first, as JSON, then each
    array's data in one broadcast on the group's device). Other ranks get host (numpy) copies of
    the same shapes and dtypes; ``src`` gets its own arrays back. Without a process group (or with
    one rank) ``arrays`` itself. Every rank must call it (``arrays`` is read on ``src`` only)."""
    if not current().enabled:
        return arrays
    mine = current().rank == src
    header = broadcast_json(
        {k: None if v is None else [list(v.shape), v.dtype.str] for k, v in arrays.items()} if mine else None, src
    )
    out = {}
    for name, meta in header.items():
        if meta is None:
            out[name] = None
            continue
        shape, dtype = meta
        if mine:
            tensor = _to_group(torch.from_numpy(np.ascontiguousarray(arrays[name])))
        else:
            tensor = _to_group(torch.empty(shape, dtype=torch.from_numpy(np.zeros(0, dtype=dtype)).dtype))
        dist.broadcast(tensor, src)
        out[name] = arrays[name] if mine else tensor.cpu().numpy()
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks, in place: the sum is written into ``tensor`` (on its own
    device, whatever the backend's) and ``tensor`` is returned.

    The reduction runs on the group's device (``_collective_device``: a CPU tensor under nccl is
    copied to ``cuda:<current>`` and the sum copied back). Without a process group (or with one
    rank) ``tensor`` is returned unchanged. Every rank must call it with the same shape and dtype.
    """
    if current().enabled:
        on_group = _to_group(tensor)
        dist.all_reduce(on_group, op=dist.ReduceOp.SUM)
        if on_group is not tensor:
            tensor.copy_(on_group)
    return tensor
