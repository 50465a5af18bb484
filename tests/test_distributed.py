"""torchrun: two CPU processes (gloo) extract into one cache bitwise equal to a one-process
extraction, resume a killed run with another process count, and train with DDP to the per-step
losses of a one-process run on the same global batches (and resume a killed DDP run on one process)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from hsk_cache.cli import main
from hsk_cache.models import hub as models
from tests.conftest import tiny_bert

ROOT = Path(__file__).resolve().parents[1]
SPEC = ["--max-length", "32", "--layers", "all", "--tokens", "topk:5", "--shard-examples", "8", "--batch-size", "4"]
SPEC += ["--knowledge", "hidden_states,attention_probs,value_relation,logits", "--attention-layers", "all"]

# a rank (or a process) that SIGKILLs itself: at shard KILL_SHARD of an extraction (after its first
# array, before its commit), or right after rank 0 logged training step KILL_STEP of stage KILL_STAGE
KILLER = textwrap.dedent("""
    import os, signal, sys
    from hsk_cache.store import writer
    from hsk_cache.training import session
    shard, step = int(os.environ.get("KILL_SHARD", -1)), int(os.environ.get("KILL_STEP", -1))
    stage = int(os.environ.get("KILL_STAGE", 0))
    write_shard = writer.CacheWriter.write_shard
    def killing_write_shard(self, s, start, block):
        if s == shard:
            name = next(iter(block))
            self.group[name][start:start + len(block[name])] = block[name]
            os.kill(os.getpid(), signal.SIGKILL)
        write_shard(self, s, start, block)
    writer.CacheWriter.write_shard = killing_write_shard
    after_step = session.Session.after_step
    def killing_after_step(self, ctx, done, total, record):
        after_step(self, ctx, done, total, record)
        if ctx.index == stage and done == step and self.writer:
            os.kill(os.getpid(), signal.SIGKILL)
    session.Session.after_step = killing_after_step
    from hsk_cache.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def torchrun(
    args: list[str], nproc: int = 2, killer: str | None = None, launcher: tuple[str, ...] = (), **env
) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N [launcher options]`` on hsk (or the killer
    script), one thread per process."""
    target = [killer] if killer else ["-m", "hsk_cache.cli"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *launcher]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([*command, *target, *args], capture_output=True, text=True, env=environment, timeout=300)


def one_thread(argv: list[str]) -> int:
    """The CLI in this process with one thread, like each torchrun rank (the same kernels run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(argv)
    finally:
        torch.set_num_threads(threads)


def extract_args(teacher, data, out) -> list[str]:
    return ["extract", "--teacher", teacher, "--data", data, "--out", out, *SPEC]


def assert_same_cache(a: str, b: str) -> None:
    """Every array (the commit rows and the tokenizer's files included) bitwise equal; same manifest."""
    ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    names = sorted([k for k, _ in ga.arrays()] + [f"tokenizer/{k}" for k, _ in ga["tokenizer"].arrays()])
    assert names == sorted([k for k, _ in gb.arrays()] + [f"tokenizer/{k}" for k, _ in gb["tokenizer"].arrays()])
    assert {"hidden_states", "logits", "shard_commits"} <= set(names)
    for name in names:
        x, y = ga[name][...], gb[name][...]
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name
    assert ga.attrs["hsk_cache"] == gb.attrs["hsk_cache"]


@pytest.fixture(scope="module")
def reference(tiny_teacher, toy_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("dist") / "reference")
    assert one_thread(extract_args(tiny_teacher, toy_dir, out)) == 0
    return out


def test_two_ranks_extract_the_same_bytes_as_one_process(reference, tiny_teacher, toy_dir, tmp_path):
    out = str(tmp_path / "two")
    run = torchrun(extract_args(tiny_teacher, toy_dir, out))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("extract: 64 examples, 8 shards written") == 1  # rank 0 reports, once
    assert_same_cache(reference, out)
    assert not Path(f"{out}.hsk-writer.json").exists()  # the lease was given back


def test_a_killed_two_rank_extraction_resumes_on_one_process(reference, tiny_teacher, toy_dir, tmp_path, capsys):
    out = str(tmp_path / "killed")
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    run = torchrun(extract_args(tiny_teacher, toy_dir, out), killer=str(script), KILL_SHARD="4")
    assert run.returncode != 0
    written = zarr.open_group(out, mode="r")["shard_commits"][:, :, 0].all(axis=1)
    assert 0 < written.sum() < 8 and not written[4]  # part done, shard 4 cut mid-write
    # the dead rank 0 left its lease: this host sees the process is gone and takes over at once
    assert one_thread(extract_args(tiny_teacher, toy_dir, out)) == 0
    assert f"{8 - written.sum()} shards written" in capsys.readouterr().out
    assert_same_cache(reference, out)


@pytest.fixture(scope="module")
def student(tokenizer, tmp_path_factory) -> str:
    """A 2-layer student without dropout: one process and two ranks then compute the same numbers."""
    model = tiny_bert(tokenizer, seed=3)
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    out = tmp_path_factory.mktemp("student")
    models.save(model, tokenizer, out)
    return str(out)


def train_args(cache, student, out, *extra) -> list[str]:
    return [
        "train", "--from-cache", cache, "--student-pretrained", student, "--out", out,
        "--hidden-epochs", "1", "--pred-epochs", "1", "--hidden-batch-size", "8", "--pred-batch-size", "8",
        "--num-workers", "0", "--save-every", "0", *extra,
    ]  # fmt: skip


def losses(out) -> list[float]:
    lines = [json.loads(line) for line in open(Path(out) / "metrics.jsonl")]
    return [line["loss"] for line in lines if line["event"] == "train"]


@pytest.fixture(scope="module")
def one_process_run(reference, student, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("dist") / "one")
    assert one_thread(train_args(reference, student, out)) == 0
    return out


def test_ddp_training_matches_one_process_and_resumes_on_one_process(reference, student, one_process_run, tmp_path):
    out = str(tmp_path / "ddp")
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    args = train_args(reference, student, out, "--save-every", "2")
    # two ranks train stage 0 (8 steps) and 5 steps of stage 1, then rank 0 dies
    run = torchrun(args, killer=str(script), KILL_STAGE="1", KILL_STEP="5")
    assert run.returncode != 0
    single = losses(one_process_run)
    assert len(single) == 16  # 8 global batches of 8 per stage
    ddp = losses(out)
    assert len(ddp) == 13  # logged once per step (rank 0 alone writes)
    np.testing.assert_allclose(ddp, single[:13], rtol=1e-5)
    assert sorted(p.name for p in (Path(out) / "checkpoints").iterdir()) == [
        "stage1-step000000002",
        "stage1-step000000004",
    ]
    # the in-memory epoch order does not depend on the rank count: one process continues the run
    assert one_thread(args) == 0
    np.testing.assert_allclose(losses(out), single, rtol=1e-5)
    weights = [models.load_classifier(d).state_dict() for d in (one_process_run, out)]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["train-batch", "extract-data"])
def test_a_refusal_under_torchrun_is_one_line_from_rank_zero(case, reference, student, tiny_teacher, tmp_path):
    # train: a global batch of 3 on 2 ranks, refused on every rank after joining the group; extract:
    # rank 0 refuses the data, the other rank learns it failed (a broadcast) and stops too
    out = tmp_path / "out"
    if case == "train-batch":
        args, needle = train_args(reference, student, str(out), "--hidden-batch-size", "3"), "not a multiple of the 2"
    else:
        args, needle = extract_args(tiny_teacher, str(tmp_path / "no-such-data"), str(out)), "no-such-data"
    # torchrun stops the other ranks once one fails: looking every 2 s lets both exit on their own
    run = torchrun(args, launcher=("--monitor-interval=2",))
    output = run.stdout + run.stderr
    lines = [line for line in output.splitlines() if "hsk: error:" in line]
    assert len(lines) == 1 and lines[0].startswith("hsk: error: ") and needle in lines[0], output[-3000:]
    # what follows is torchrun's own report of a failed child (a ChildFailedError summary, which no
    # torchrun option turns off), not a traceback of hsk's
    assert run.returncode == 1 and "ChildFailedError" in output, output[-3000:]
    assert output.count("Traceback (most recent call last)") == 1 and "hsk_cache/" not in output.split("Traceback")[1]
    # every rank exits 2, unless torchrun stopped it (SIGTERM) first once another had failed: the
    # monitor interval makes that rare, not impossible, on a loaded machine
    codes = re.findall(r"exitcode\s*: (-?\d+)", output)
    assert "2" in codes and set(codes) <= {"2", "-15"}, output[-3000:]
    assert not out.exists()  # nothing written
