"""The whole tool on a CUDA GPU: finetune, extract, train (from a cache and online) and eval in
fp32/bf16/fp16; the collectives on a real NCCL group; torchrun; kill and resume (on CUDA, and
across CPU ↔ CUDA); cache-vs-online equivalence. Every test here is marked ``cuda`` and skips
without a GPU (CI has none): ``pytest -m cuda tests/test_cuda.py``, or ``benchmarks/gpu.sh``.

Tolerances, not bitwise equality: CUDA kernels (atomic adds in the embedding backward, cuBLAS
algorithms chosen per shape) are not run-to-run deterministic the way the CPU's are.
"""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from hsk_cache import distributed
from hsk_cache.cli import main
from hsk_cache.models import hub as models
from tests.conftest import tiny_bert
from tests.test_distributed import KILLER as DIST_KILLER
from tests.test_distributed import extract_args, torchrun, train_args
from tests.test_distributed import losses as logged_losses
from tests.test_train_resume import _child, _log, _train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU (torch.cuda.is_available() is False); benchmarks/gpu.sh runs these on one",
    ),
]
DATA = ["--max-length", "32"]
CUDA = ["--device", "cuda"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _finite_train_losses(out) -> list[float]:
    lines = [json.loads(line) for line in open(Path(out) / "metrics.jsonl")]
    values = [line["loss"] for line in lines if line["event"] == "train"]
    assert values and all(math.isfinite(v) for v in values), values
    return values


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cache(tiny_teacher, toy_dir, tmp_path_factory) -> str:
    """A CPU-extracted cache of the toy task (all layers, top-5 tokens, shards of 16)."""
    out = str(tmp_path_factory.mktemp("cuda") / "cache")
    args = ["--data", toy_dir, *DATA, "--layers", "all", "--tokens", "topk:5", "--shard-examples", "16"]
    assert main(["extract", "--teacher", tiny_teacher, "--out", out, *args]) == 0
    return out


@pytest.fixture(scope="module")
def student(tokenizer, tmp_path_factory) -> str:
    """A 2-layer student without dropout (as tests/test_distributed.py's)."""
    model = tiny_bert(tokenizer, seed=3)
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    out = tmp_path_factory.mktemp("cuda_student")
    models.save(model, tokenizer, out)
    return str(out)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_finetune_extract_train_and_eval_on_cuda(precision, tiny_teacher, toy_dir, tmp_path, capsys):
    ft, cache, student, online = (str(tmp_path / n) for n in ("teacher", "cache", "student", "online"))
    data, run = ["--data", toy_dir, *DATA], [*CUDA, "--precision", precision]
    finetune = ["finetune", "--model", tiny_teacher, "--out", ft, "--epochs", "6", "--lr", "3e-3", "--batch-size", "8"]
    assert main([*finetune, *data, *run]) == 0
    assert main(["eval", ft, "--json", *data, *run]) == 0
    metrics = _last_json(capsys)
    assert metrics["examples"] == 16 and math.isfinite(metrics["mcc"])
    if precision == "fp32":
        assert metrics["accuracy"] >= 0.75  # as on the CPU (tests/test_cli.py): the toy task is learnable

    assert (
        main(["extract", "--teacher", ft, "--out", cache, "--layers", "all", "--tokens", "topk:25%", *data, *run]) == 0
    )
    assert "64 examples" in capsys.readouterr().out
    train = ["train", "--from-cache", cache, "--out", student, "--student-from", ft, "--student-layers", "1"]
    train += ["--hidden-epochs", "2", "--pred-epochs", "4", "--pred-lr", "2e-3"]
    train += ["--hidden-batch-size", "8", "--pred-batch-size", "8", "--temperature", "2", "--hard-label-weight", "0.5"]
    assert main([*train, *run]) == 0
    assert len(_finite_train_losses(student)) == 16 + 32
    assert main(["eval", student, "--json", *data, *run]) == 0
    assert _last_json(capsys)["examples"] == 16

    online_args = ["train", "--online", ft, "--out", online, "--layers", "all", "--tokens", "topk:25%"]
    online_args += ["--student-layers", "2", "--student-hidden", "16", "--student-heads", "2", "--student-ffn", "32"]
    online_args += ["--hidden-epochs", "1", "--pred-epochs", "1", *data, *run, "--teacher-precision", precision]
    assert main(online_args) == 0
    _finite_train_losses(online)


def test_a_cuda_fp32_extraction_matches_the_cpus(tiny_teacher, toy_dir, tmp_path):
    args = ["--data", toy_dir, *DATA, "--layers", "all", "--tokens", "all", "--dtype", "float32"]
    args += ["--shard-examples", "16", "--knowledge", "hidden_states,logits"]
    cpu, cuda = str(tmp_path / "cpu"), str(tmp_path / "cuda")
    assert main(["extract", "--teacher", tiny_teacher, "--out", cpu, *args]) == 0
    assert main(["extract", "--teacher", tiny_teacher, "--out", cuda, *args, *CUDA]) == 0
    a, b = zarr.open_group(cpu, mode="r"), zarr.open_group(cuda, mode="r")
    names = sorted(k for k, _ in a.arrays())
    assert names == sorted(k for k, _ in b.arrays()) and {"hidden_states", "logits"} <= set(names)
    for name in names:
        if name == "shard_commits":  # checksums of the bytes: the floats differ in the last bits
            continue
        x, y = a[name][...], b[name][...]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if np.issubdtype(x.dtype, np.floating):
            np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5, err_msg=name)
        else:
            assert (x == y).all(), name


def test_a_cuda_extraction_copies_only_the_selected_bytes_to_the_host(tiny_teacher, toy_dir, tmp_path, monkeypatch):
    """The profiler's device → host copies (Kineto ``gpu_memcpy`` DtoH events) against the bytes
    ``HostCopy`` was handed: selection ran on the GPU, so nothing else of size crosses."""
    from torch.profiler import ProfilerActivity, profile

    from hsk_cache.extraction import extract
    from hsk_cache.models import teacher as teacher_module

    crossed = []

    class Recorder(teacher_module.HostCopy):
        def __init__(self, knowledge):
            super().__init__(knowledge)
            crossed.append(self.nbytes)

    monkeypatch.setattr(extract, "HostCopy", Recorder)
    out = str(tmp_path / "cache")
    args = ["--data", toy_dir, *DATA, "--layers", "all", "--tokens", "topk:5", "--dtype", "float32", *CUDA]
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        assert main(["extract", "--teacher", tiny_teacher, "--out", out, *args, "--knowledge", "hidden_states"]) == 0
    trace = tmp_path / "trace.json"
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    dtoh = sum(
        int(e.get("args", {}).get("bytes", 0))
        for e in events
        if e.get("cat") == "gpu_memcpy" and "DtoH" in e.get("name", "")
    )
    selected = sum(crossed)
    stored = zarr.open_group(out, mode="r")
    n, layers, k, d = stored["hidden_states"].shape
    assert selected == n * layers * k * (8 + 4 * d)  # token_index int64 + hidden_states float32
    full = n * layers * 32 * d * 4  # every read layer's [B, T_b, D] at T_b ≤ 32, what used to cross
    assert selected <= dtoh < selected + full // 10, (dtoh, selected, full)


def test_the_cache_loader_delivers_pinned_non_blocking_batches_on_cuda(cache):
    from hsk_cache import open_cache
    from hsk_cache.data.loader import pinned

    assert pinned({"x": torch.ones(3), "n": 1})["x"].is_pinned()
    opened = open_cache(cache)
    host = list(opened.loader(8, seed=1))
    on_gpu = list(opened.loader(8, seed=1, device="cuda", prefetch=2))
    assert len(host) == len(on_gpu) > 1
    for a, b in zip(host, on_gpu):
        assert a.keys() == b.keys()
        for name, value in a.items():
            assert b[name].is_cuda and torch.equal(b[name].cpu(), value), name


@pytest.fixture
def nccl_group(monkeypatch):
    """A real one-rank NCCL group on cuda:0, hsk_cache told it is rank 0 of 2 so that every helper
    runs its collective (a one-rank sum is the rank's own contribution)."""
    assert not torch.distributed.is_initialized()
    torch.cuda.set_device(0)
    torch.distributed.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1, device_id=torch.device("cuda", 0)
    )
    monkeypatch.setattr(distributed, "current", lambda: distributed.Rank(0, 2, 0))
    yield
    torch.distributed.destroy_process_group()


def test_every_collective_helper_runs_on_a_real_nccl_group(nccl_group, cache):
    """tests/test_collectives.py with the real thing: NCCL refuses CPU tensors."""
    from hsk_cache.data.cache import open_cache
    from hsk_cache.knowledge import losses
    from hsk_cache.training.loop import _DataParallelStep

    assert distributed._collective_device() == torch.device("cuda", 0)
    host = torch.tensor([1.0, 2.5], dtype=torch.float64)  # a CPU tensor: the case NCCL rejected
    assert distributed.all_reduce_sum(host) is host and host.tolist() == [1.0, 2.5]
    here = torch.tensor([3], device="cuda")
    assert distributed.all_reduce_sum(here) is here and here.device.type == "cuda"
    value = {"failure": None, "n": [1, 2], "text": "héllo"}
    assert distributed.broadcast_json(value) == value
    arrays = {"ids": np.arange(12, dtype=np.int64).reshape(3, 4), "w": np.ones(2, np.float16), "none": None}
    got = distributed.broadcast_arrays(arrays)
    assert got.keys() == arrays.keys() and (got["ids"] == arrays["ids"]).all()
    total, count = torch.tensor(6.0, device="cuda"), torch.tensor(3.0, device="cuda")
    assert float(losses._mean(total, count, world_size=2)) == pytest.approx(4.0)  # total · 2 / (one rank's 3)

    model = torch.nn.Linear(4, 4).cuda()

    def objective(model, batch, world_size=1):
        return losses.hidden_mse(model(batch["x"])[:, None], batch["y"][:, None], batch["mask"], world_size)

    batch = {
        "x": torch.randn(6, 4, device="cuda"),
        "y": torch.randn(6, 4, device="cuda"),
        "mask": torch.ones(6, 1, dtype=torch.bool, device="cuda"),
    }
    step = _DataParallelStep(model, objective, [], distributed.Rank(0, 2, 0))  # DDP over NCCL
    loss = step(batch)
    loss.backward()
    assert step.global_loss(loss) == pytest.approx(float(loss.detach()) / 2)  # the two "ranks'" mean of one
    assert open_cache(cache, memory_budget_bytes=1).window is not None  # the open-time damage count
    distributed.barrier()


def test_torchrun_one_rank_extracts_and_trains_on_cuda_like_one_process(tiny_teacher, toy_dir, student, tmp_path):
    """One rank under torchrun (no process group: hsk joins one only for two or more) on cuda:0."""
    one, ranked = str(tmp_path / "one"), str(tmp_path / "ranked")
    assert main([*extract_args(tiny_teacher, toy_dir, one), *CUDA]) == 0
    run = torchrun([*extract_args(tiny_teacher, toy_dir, ranked), *CUDA], nproc=1)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("hidden_states", "logits"):
        a, b = zarr.open_group(one, mode="r")[name][...], zarr.open_group(ranked, mode="r")[name][...]
        np.testing.assert_allclose(b.astype(np.float32), a.astype(np.float32), rtol=1e-2, atol=1e-3, err_msg=name)
    trained, ranked_run = str(tmp_path / "trained"), str(tmp_path / "ranked_run")
    assert main([*train_args(one, student, trained), *CUDA]) == 0
    run = torchrun([*train_args(one, student, ranked_run), *CUDA], nproc=1)
    assert run.returncode == 0, run.stderr[-3000:]
    np.testing.assert_allclose(logged_losses(ranked_run), logged_losses(trained), rtol=1e-4)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL data parallelism needs two GPUs (one rank each)")
def test_two_nccl_ranks_extract_and_train_like_one_process(tiny_teacher, toy_dir, student, tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    assert main([*extract_args(tiny_teacher, toy_dir, one), *CUDA]) == 0
    run = torchrun([*extract_args(tiny_teacher, toy_dir, two), *CUDA], nproc=2)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("hidden_states", "logits"):
        a, b = zarr.open_group(one, mode="r")[name][...], zarr.open_group(two, mode="r")[name][...]
        np.testing.assert_allclose(b.astype(np.float32), a.astype(np.float32), rtol=1e-2, atol=1e-3, err_msg=name)
    single, ddp = str(tmp_path / "single"), str(tmp_path / "ddp")
    assert main([*train_args(one, student, single), *CUDA]) == 0
    # two ranks, rank 0 killed mid-stage 1; one process on cuda finishes the run
    args = [*train_args(one, student, ddp, "--save-every", "2"), *CUDA]
    script = tmp_path / "killer.py"
    script.write_text(DIST_KILLER)
    run = torchrun(args, nproc=2, killer=str(script), KILL_STAGE="1", KILL_STEP="5")
    assert run.returncode != 0
    np.testing.assert_allclose(logged_losses(ddp), logged_losses(single)[:13], rtol=1e-4)
    assert main(args) == 0
    np.testing.assert_allclose(logged_losses(ddp), logged_losses(single), rtol=1e-4)


@pytest.mark.parametrize("first,second", [("cuda", "cuda"), ("cpu", "cuda"), ("cuda", "cpu")])
def test_killed_training_resumes_on_cuda_and_across_devices(cache, toy_dir, tmp_path, first, second):
    """SIGKILL after step 13 of stage 0 (the checkpoint of step 10 survives), rerun on ``second``.
    On CUDA → CUDA the resumed run follows the uninterrupted one (dropout on: the CUDA generator
    was restored); across devices it completes from the checkpoint (the generators differ)."""
    resumed = str(tmp_path / "resumed")
    killed = _child([*_train(cache, toy_dir, resumed), "--device", first], KILL_STAGE=0, KILL_STEP=13)
    assert killed.returncode == -9, killed.stderr
    assert sorted(os.listdir(os.path.join(resumed, "checkpoints")))[-1] == "stage0-step000000010"  # and the one before
    again = _child([*_train(cache, toy_dir, resumed), "--device", second])
    assert again.returncode == 0, again.stderr
    assert f"resumed from {os.path.join(resumed, 'checkpoints', 'stage0-step000000010')}" in again.stdout
    got = _log(resumed, "train")
    assert [(x["stage_index"], x["step"]) for x in got] == [(s, i) for s in (0, 1) for i in range(1, 33)]
    assert all(math.isfinite(x["loss"]) for x in got)
    if first == second == "cuda":
        reference = str(tmp_path / "reference")
        done = _child([*_train(cache, toy_dir, reference), "--device", "cuda"])
        assert done.returncode == 0, done.stderr
        expected = _log(reference, "train")
        np.testing.assert_allclose([x["loss"] for x in got], [x["loss"] for x in expected], rtol=1e-3)
        assert [x["lr"] for x in got] == [x["lr"] for x in expected]


def test_cache_and_online_training_agree_at_every_step_on_cuda(tiny_teacher, toy_dir, tmp_path):
    """tests/test_equivalence.py on CUDA: a float32 cache of everything gives the online losses."""
    from hsk_cache.config.run import DataConfig, StageConfig
    from hsk_cache.extraction import extract
    from hsk_cache.knowledge.spec import ExtractSpec
    from hsk_cache.models import students
    from hsk_cache.training import configs, train

    lossless = ExtractSpec.parse(layers="all", tokens="all", dims="all", dtype="float32")
    data = DataConfig(source=toy_dir, split="train", max_length=32)
    cache = str(tmp_path / "cache")
    extract.run(extract.ExtractConfig(teacher=tiny_teacher, data=data, out=cache, spec=lossless, device="cuda"))
    student = students.StudentConfig(kind="config", layers=2, hidden=24, heads=4, ffn=48)
    stages = (
        StageConfig(kind="hidden", epochs=2, lr=1e-3, batch_size=8),
        StageConfig(kind="prediction", epochs=2, lr=1e-3, batch_size=8),
    )
    common = dict(student=student, stages=stages, temperature=2.0, hard_label_weight=0.5, seed=3, device="cuda")
    from_cache = train.run(configs.TrainConfig(out=str(tmp_path / "a"), cache=cache, **common))
    online = train.run(
        configs.TrainConfig(out=str(tmp_path / "b"), online_teacher=tiny_teacher, data=data, spec=lossless, **common)
    )
    for a, b in zip(from_cache.stages, online.stages):
        assert a.steps == b.steps == 16
        np.testing.assert_allclose(a.losses, b.losses, rtol=1e-4, atol=1e-6, err_msg=a.kind)
    assert from_cache.stages[0].losses[-1] < from_cache.stages[0].losses[0]


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_a_cpu_cache_verifies_against_its_teacher_on_cuda(tiny_teacher, toy_dir, tmp_path, capsys, dtype):
    """hsk verify --against-teacher --device cuda on a cache extracted on the CPU: the GPU's floats
    differ from the CPU's by rounding only, within the recomputation bound."""
    from hsk_cache.cli import main

    out = str(tmp_path / "cache")
    argv = ["extract", "--teacher", tiny_teacher, "--data", toy_dir, "--out", out, "--max-length", "32",
            "--layers", "all", "--tokens", "topk:5", "--dtype", dtype,
            "--knowledge", "hidden_states,attention_probs,value_relation,logits"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["verify", out, "--against-teacher", tiny_teacher, "--device", "cuda", "--sample", "64"]) == 0, (
        capsys.readouterr().out
    )
