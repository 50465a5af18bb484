"""Training checkpoints: tensors in safetensors, everything else in JSON; no pickle.

A checkpoint is a directory ``<out>/checkpoints/stage<i>-step<n>``:

    weights.safetensors    the student's parameters and buffers (``student.*``) and W_h (``projection.*``)
    optimizer.safetensors  the optimizer's tensors (AdamW: step, exp_avg, exp_avg_sq per parameter)
    rng.safetensors        torch's CPU generator state (``torch``) and, when CUDA is in use, each
                           visible GPU's (``cuda.<i>``)
    state.json             stage index, step, sampler position, the optimizer's and scheduler's other
                           state (tensors replaced by references into optimizer.safetensors), counters

It is written under a temporary name, each file flushed to disk, then renamed (atomic on POSIX):
a directory with a final name is always complete. The previous checkpoint is removed only after
the new one is in place.

Tensors are stored from the CPU and loaded onto the devices of the run that resumes, which may
differ from the one that saved (a CPU checkpoint resumes on CUDA and back): the weights onto the
model's device, the optimizer's state onto its parameters'. The CPU generator is always restored;
CUDA generators only where CUDA is available (and only for the GPUs present).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from hsk_cache.errors import CheckpointError
from hsk_cache.outputs import write_dir

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
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


def latest(out: str | Path) -> Path | None:
    """The newest complete checkpoint under ``out/checkpoints`` (highest stage, then step), or None."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return None
    found = [(tuple(map(int, m.groups())), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return max(found)[1] if found else None


def save(
    out: str | Path,
    stage: int,
    step: int,
    modules: torch.nn.ModuleDict,
    state: dict,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
) -> Path:
    """Write a checkpoint atomically and remove the older ones. ``optimizer``/``scheduler``: the
    stage's, or None at a stage end (the next stage starts its own). Returns its directory."""
    root = Path(out) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
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
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))

    write_dir(final, write)
    for old in root.iterdir():
        if old != final and (_NAME.match(old.name) or old.name.startswith(".tmp-")):
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(path: Path) -> dict:
    """state.json of a checkpoint. Raises: CheckpointError if it is unreadable."""
    try:
        return json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is unreadable ({err}): remove it to resume from an earlier "
            "one, or pass {overwrite} to start over",
            field="overwrite",
        ) from None


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
