"""Checkpoints resume across devices: CUDA RNG states restore only where CUDA is (and only for the
GPUs present), optimizer state follows its parameters' device. The CPU halves of what
tests/test_cuda.py checks on a GPU (a CUDA-saved checkpoint resuming on the CPU and back)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file

from hsk_cache.training import checkpoint


def _saved(tmp_path):
    """A mid-stage checkpoint of a tiny model after two AdamW steps, with CUDA RNG entries added
    as a two-GPU run would have saved them."""
    torch.manual_seed(0)
    modules = torch.nn.ModuleDict({"student": torch.nn.Linear(3, 2)})
    optimizer = torch.optim.AdamW(modules.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    for _ in range(2):
        modules["student"](torch.randn(4, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
    path = checkpoint.save(tmp_path, 0, 2, modules, {"stage_done": False}, optimizer, scheduler)
    rng = load_file(str(path / "rng.safetensors"))
    fake = torch.Generator().manual_seed(7).get_state()  # a ByteTensor state, standing for a GPU's
    save_file({**rng, "cuda.0": fake, "cuda.1": fake.clone()}, str(path / "rng.safetensors"))
    return path, modules, optimizer, rng["torch"]


def _state(path):
    """state.json as saved (``checkpoint.check`` would refuse it: _saved rewrote rng.safetensors)."""
    return json.loads((path / checkpoint.STATE_FILE).read_text())


def _fresh():
    modules = torch.nn.ModuleDict({"student": torch.nn.Linear(3, 2)})
    optimizer = torch.optim.AdamW(modules.parameters(), lr=1e-2)
    return modules, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))


def test_a_checkpoint_with_cuda_rng_states_resumes_on_the_cpu(tmp_path, monkeypatch):
    path, saved_modules, saved_optimizer, cpu_state = _saved(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    called = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda *a: called.append(a))
    modules, optimizer, scheduler = _fresh()
    checkpoint.load_weights(path, modules)
    torch.manual_seed(123)  # moved on: the restore must bring it back
    checkpoint.load_training(path, _state(path), optimizer, scheduler)
    assert called == []  # no CUDA here: its generators are left alone
    assert torch.equal(torch.get_rng_state(), cpu_state)
    for a, b in zip(modules.parameters(), saved_modules.parameters()):
        assert torch.equal(a, b)
    assert scheduler.last_epoch == 2
    for param, saved in zip(optimizer.param_groups[0]["params"], saved_optimizer.param_groups[0]["params"]):
        mine, theirs = optimizer.state[param], saved_optimizer.state[saved]
        assert mine["exp_avg"].device == param.device and torch.equal(mine["exp_avg"], theirs["exp_avg"])
        assert float(mine["step"]) == 2.0


def test_cuda_rng_states_restore_only_for_the_gpus_present(tmp_path, monkeypatch):
    path, *_ = _saved(tmp_path)  # saved with two GPUs' states
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append(device))
    modules, optimizer, scheduler = _fresh()
    checkpoint.load_training(path, _state(path), optimizer, scheduler)
    assert restored == [0]  # cuda.1 has no GPU here (set_rng_state_all would fail on it)


def test_optimizer_state_follows_its_parameters_device():
    param = torch.nn.Parameter(torch.empty(3, device="meta"))  # a device the CPU state is not on
    optimizer = torch.optim.AdamW([param])
    optimizer.state[param] = {"step": torch.tensor(4.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}
    checkpoint._state_to_param_devices(optimizer)
    state = optimizer.state[param]
    assert state["exp_avg"].device == state["exp_avg_sq"].device == torch.device("meta")
    assert state["step"].device == torch.device("cpu")  # AdamW's step counter stays on the CPU
