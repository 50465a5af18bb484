"""Training checkpoints: tensors in safetensors, everything else in JSON; no pickle.

A checkpoint is a directory ``<out>/checkpoints/stage<i>-step<n>``:

    weights.safetensors    the student's parameters and buffers (``student.*``) and W_h (``projection.*``)
    optimizer.safetensors  the optimizer's tensors (AdamW: step, exp_avg, exp_avg_sq per parameter)
    rng.safetensors        torch's CPU generator state (``torch``) and, when CUDA is in use, each
                           visible GPU's (``cuda.<i>``)
    state.json             stage index, step, sampler position, the optimizer's and scheduler's other
                           state (tensors replaced by references into optimizer.safetensors), counters,
                           and ``files``: each other file's size in bytes and crc32c (written last)

It is written under a temporary name, each file flushed to disk, then renamed (atomic on POSIX):
a directory with a final name is complete when written. The two newest checkpoints are kept (an
older one is removed only after the new one is in place): ``resumable`` checks the newest's
files against the sizes and checksums its state.json recorded and falls back to the one before
when it is damaged (a disk error, a truncated copy, an edit), so a run never resumes silently
from damaged weights.

Tensors are stored from the CPU and loaded onto the devices of the run that resumes, which may
differ from the one that saved (a CPU checkpoint resumes on CUDA and back): the weights onto the
model's device, the optimizer's state onto its parameters'. The CPU generator is always restored;
CUDA generators only where CUDA is available (and only for the GPUs present).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from hsk_cache.errors import CheckpointError, first_line
from hsk_cache.outputs import write_dir

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
FILES = ("weights.safetensors", "optimizer.safetensors", "rng.safetensors")  # recorded in state.json
KEEP = 2  # checkpoints kept: the newest and the one a damaged newest falls back to
STATE_KEYS = ("stage", "step", "stage_done", "sampler", "files")
_READ_BYTES = 8 << 20
_NAME = re.compile(r"^stage(\d+)-step(\d+)$")
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


def flatten(tree, tensors: dict[str, torch.Tensor], prefix: str = "t"):
    """A JSON-able copy of ``tree`` (dicts, lists, tuples, numbers, strings, tensors) with every
    tensor moved into ``tensors`` under a new key and replaced by ``{"__tensor__": key}``; dicts
    with non-string keys and tuples are tagged so ``unflatten`` restores them exactly."""
    if isinstance(tree, torch.Tensor):
        key = f"{prefix}.{len(tensors)}"
        tensors[key] = tree.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(tree, dict):
        if all(isinstance(k, str) for k in tree):
            return {k: flatten(v, tensors, prefix) for k, v in tree.items()}
        return {_ITEMS: [[k, flatten(v, tensors, prefix)] for k, v in tree.items()]}
    if isinstance(tree, tuple):
        return {_TUPLE: [flatten(v, tensors, prefix) for v in tree]}
    if isinstance(tree, list):
        return [flatten(v, tensors, prefix) for v in tree]
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"cannot store a {type(tree).__name__} in a checkpoint")


def unflatten(tree, tensors: dict[str, torch.Tensor]):
    """Inverse of ``flatten``."""
    if isinstance(tree, dict):
        if _TENSOR in tree:
            return tensors[tree[_TENSOR]]
        if _TUPLE in tree:
            return tuple(unflatten(v, tensors) for v in tree[_TUPLE])
        if _ITEMS in tree:
            return {k: unflatten(v, tensors) for k, v in tree[_ITEMS]}
        return {k: unflatten(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [unflatten(v, tensors) for v in tree]
    return tree


def name(stage: int, step: int) -> str:
    """The directory name of the checkpoint at optimizer step ``step`` of stage index ``stage``:
    ``stage<stage>-step<step>``, the step zero-padded to 9 digits (``stage1-step000000500``)."""
    return f"stage{stage}-step{step:09d}"


def checkpoints(out: str | Path) -> list[Path]:
    """The checkpoint directories under ``out/checkpoints``, newest first (highest stage, then step)."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(tuple(map(int, m.groups())), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def latest(out: str | Path) -> Path | None:
    """The newest checkpoint under ``out/checkpoints`` (highest stage, then step), or None."""
    found = checkpoints(out)
    return found[0] if found else None


def file_record(path: Path) -> dict:
    """``{"bytes": size, "crc32c": "8 hex digits"}`` of one file, read in 8 MiB pieces."""
    checksum, size = google_crc32c.Checksum(), 0
    with open(path, "rb") as handle:
        while piece := handle.read(_READ_BYTES):
            checksum.update(piece)
            size += len(piece)
    return {"bytes": size, "crc32c": checksum.digest().hex()}


def check(path: Path) -> dict:
    """The state.json of checkpoint ``path`` once every file it records is present with the size
    and crc32c recorded at save time.

    Raises: CheckpointError naming the file and what is wrong with it: state.json missing,
    unreadable, not a JSON object, lacking a field, or of another stage or step than the
    directory's name; a recorded file missing, of another size or another crc32c.
    """
    where = path / STATE_FILE
    try:
        state = json.loads(where.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{str(where)!r} is missing") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{str(where)!r} is unreadable ({first_line(err)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{str(where)!r} holds a JSON {type(state).__name__}, not an object")
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{str(where)!r} lacks {', '.join(missing)} (written by another hsk, or edited)")
    stage, step = (int(v) for v in _NAME.match(path.name).groups())
    files = state["files"]
    if (state["stage"], state["step"]) != (stage, step) or not isinstance(files, dict) or set(files) != set(FILES):
        raise CheckpointError(f"{str(where)!r} does not describe checkpoint {path.name} (edited?)")
    for file_name in FILES:
        file, expected = path / file_name, files[file_name]
        if not file.is_file():
            raise CheckpointError(f"{str(file)!r} is missing")
        found = file_record(file)
        if not isinstance(expected, dict) or found["bytes"] != expected.get("bytes"):
            written = expected.get("bytes") if isinstance(expected, dict) else expected
            raise CheckpointError(f"{str(file)!r} has {found['bytes']} bytes, {written} were written")
        if found["crc32c"] != expected.get("crc32c"):
            raise CheckpointError(
                f"{str(file)!r} is corrupt (crc32c {found['crc32c']}, {expected.get('crc32c')} written)"
            )
    return state


@dataclass(frozen=True)
class Resumable:
    """The checkpoint a run resumes from: ``path`` and its checked ``state``; ``damaged``: the
    newer checkpoints that failed ``check``, as (path, problem)."""

    path: Path
    state: dict
    damaged: tuple[tuple[Path, str], ...] = ()


def resumable(out: str | Path) -> Resumable | None:
    """The newest intact checkpoint under ``out`` (``check``), None when there is none at all.
    Each damaged newer one is logged in one line (the run falls back past it).

    Raises: CheckpointError (field ``overwrite``) naming the newest checkpoint's problem when no
    checkpoint is intact.
    """
    damaged = []
    for path in checkpoints(out):
        try:
            state = check(path)
        except CheckpointError as err:
            damaged.append((path, str(err)))
            continue
        for bad, problem in damaged:
            log.warning("checkpoint %s is damaged: %s; resuming from the one before it, %s", bad.name, problem, path)
        return Resumable(path, state, tuple(damaged))
    if not damaged:
        return None
    path, problem = damaged[0]
    earlier = "and no earlier checkpoint is intact" if len(damaged) > 1 else "and there is no earlier checkpoint"
    raise CheckpointError(
        f"cannot resume from checkpoint {path.name}: {problem}, {earlier}: pass {{overwrite}} to start over",
        field="overwrite",
    )


def save(
    out: str | Path,
    stage: int,
    step: int,
    modules: torch.nn.ModuleDict,
    state: dict,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
) -> Path:
    """Write a checkpoint atomically (state.json, with every other file's size and crc32c, last)
    and remove all but the ``KEEP`` newest. ``optimizer``/``scheduler``: the stage's, or None at a
    stage end (the next stage starts its own). Returns its directory.

    Raises: CheckpointError when the checkpoint cannot be written (a full disk, permissions): the
    partial one is removed, the earlier ones are kept.
    """
    root = Path(out) / CHECKPOINTS
    final = root / name(stage, step)
    state = {**state, "stage": stage, "step": step}

    def write(tmp: Path) -> None:
        save_model(modules, str(tmp / "weights.safetensors"))
        save_file(_rng_state(), str(tmp / "rng.safetensors"))
        tensors: dict[str, torch.Tensor] = {}
        if optimizer is not None:
            state["optimizer"] = flatten(optimizer.state_dict(), tensors, "optimizer")
        if scheduler is not None:
            state["scheduler"] = flatten(scheduler.state_dict(), tensors, "scheduler")
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state["files"] = {file: file_record(tmp / file) for file in FILES}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))

    try:
        root.mkdir(parents=True, exist_ok=True)
        write_dir(final, write)
    except Exception as err:  # OSError, or safetensors' SafetensorError for the same disk errors
        for partial in root.glob(f".tmp-{final.name}-*"):
            shutil.rmtree(partial, ignore_errors=True)
        before = latest(out)
        then = f"rerun the same command to resume from {before.name}" if before else "rerun the same command"
        raise CheckpointError(
            f"cannot write checkpoint {str(final)!r} ({first_line(err)}): free space or fix permissions "
            f"on {{out}}, then {then}",
            field="out",
        ) from None
    for old in checkpoints(out)[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_weights(path: Path, modules: torch.nn.ModuleDict) -> None:
    """Load the student's and W_h's tensors into ``modules`` (strict: every key must match), read
    straight onto the device of ``modules``' first parameter (each tensor is then copied into its
    own parameter or buffer, wherever that lives).

    Raises: CheckpointError when the file is unreadable or its keys differ.
    """
    device = _device_of(modules)
    try:
        missing, unexpected = load_model(modules, str(path / "weights.safetensors"), strict=False, device=device)
    except Exception as err:  # safetensors raises several types for damaged files
        raise CheckpointError(
            f"checkpoint weights {str(path / 'weights.safetensors')!r} are unreadable: {err}"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds another model ({len(missing)} keys missing, "
            f"{len(unexpected)} unexpected, e.g. {(list(missing) + list(unexpected))[0]!r}): "
            "pass {overwrite} to start over",
            field="overwrite",
        )


def load_training(path: Path, state: dict, optimizer, scheduler) -> None:
    """Restore the optimizer, scheduler and RNG states of a mid-stage checkpoint.

    The optimizer's tensors are read on the CPU and ``optimizer.load_state_dict`` moves each
    parameter's state (AdamW's exp_avg, exp_avg_sq) to that parameter's device and dtype; the
    ``step`` counters stay on the CPU (torch's rule for a non-capturable, non-fused optimizer).
    RNG: the CPU generator always; the saved CUDA generators (``cuda.<i>``) only where CUDA is
    available, for the GPUs present (a checkpoint saved without CUDA leaves them as seeded).
    """
    tensors = load_file(str(path / "optimizer.safetensors"), device="cpu")
    optimizer.load_state_dict(unflatten(state["optimizer"], tensors))
    _state_to_param_devices(optimizer)
    scheduler.load_state_dict(unflatten(state["scheduler"], tensors))
    rng = load_file(str(path / "rng.safetensors"), device="cpu")
    torch.set_rng_state(rng["torch"])
    cuda = sorted((int(k.split(".")[1]), v) for k, v in rng.items() if k.startswith("cuda."))
    if cuda and torch.cuda.is_available():
        present = torch.cuda.device_count()
        for index, value in cuda:
            if index < present:
                torch.cuda.set_rng_state(value, index)


def _device_of(modules: torch.nn.Module) -> str:
    """The device of the first parameter (or buffer) of ``modules``, as safetensors takes it."""
    first = next(iter(modules.parameters()), None)
    if first is None:
        first = next(iter(modules.buffers()), None)
    return "cpu" if first is None else str(first.device)


def _state_to_param_devices(optimizer: torch.optim.Optimizer) -> None:
    """Every per-parameter state tensor but ``step`` on its parameter's device (torch's
    ``load_state_dict`` does it already; this keeps it so whatever torch's rule)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if key != "step" and isinstance(value, torch.Tensor) and value.device != param.device:
                    state[key] = value.to(param.device)


def _rng_state() -> dict[str, torch.Tensor]:
    """CPU generator state as ``torch``; each visible GPU's as ``cuda.<i>`` when CUDA is in use."""
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out.update({f"cuda.{i}": s.cpu() for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return out
