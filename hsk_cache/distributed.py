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
    """Wait until every rank gets here (nothing to wait for in a single process)."""
    if current().enabled:
        dist.barrier()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_json(value=None, src: int = 0):
    """``value`` (JSON-serializable) of rank ``src``, on every rank (as UTF-8 bytes, no pickle)."""
    if not current().enabled:
        return value
    device = _collective_device()
    payload = json.dumps(value).encode() if current().rank == src else b""
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    dist.broadcast(size, src)
    buffer = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if current().rank == src:
        buffer.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
    dist.broadcast(buffer, src)
    return json.loads(bytes(buffer.cpu().numpy()).decode())


def broadcast_arrays(arrays: dict[str, np.ndarray | None] | None = None, src: int = 0) -> dict[str, np.ndarray | None]:
    """Numpy arrays of rank ``src``, on every rank (shapes and dtypes first, then the data)."""
    if not current().enabled:
        return arrays
    mine = current().rank == src
    header = broadcast_json(
        {k: None if v is None else [list(v.shape), v.dtype.str] for k, v in arrays.items()} if mine else None, src
    )
    device = _collective_device()
    out = {}
    for name, meta in header.items():
        if meta is None:
            out[name] = None
            continue
        shape, dtype = meta
        if mine:
            tensor = torch.from_numpy(np.ascontiguousarray(arrays[name])).to(device)
        else:
            tensor = torch.empty(shape, dtype=torch.from_numpy(np.zeros(0, dtype=dtype)).dtype, device=device)
        dist.broadcast(tensor, src)
        out[name] = arrays[name] if mine else tensor.cpu().numpy()
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks (in place; returned)."""
    if current().enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
