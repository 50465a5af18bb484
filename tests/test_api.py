"""The public API: open_cache / Cache (dataset, collate, loader, epoch order), the typed manifest,
DistillationLoss, the examples (HF Trainer, Accelerate, Lightning) and the snippets of docs/api.md."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import hsk_cache
from hsk_cache import DistillationLoss, Manifest, open_cache
from hsk_cache.config.run import DataConfig, StageConfig
from hsk_cache.extraction import extract
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import hub as models
from hsk_cache.models import students
from hsk_cache.training import configs, train
from tests.conftest import tiny_bert

ROOT = Path(__file__).resolve().parents[1]
KNOWLEDGE = "hidden_states,attention_probs,value_relation,logits"


@pytest.fixture(scope="module")
def full_cache(tiny_teacher, toy_dir, tmp_path_factory) -> str:
    """Every knowledge kind, top-k tokens, magnitude width, int8, 4 shards."""
    out = str(tmp_path_factory.mktemp("api") / "cache")
    spec = ExtractSpec.parse(
        "all", "topk:5", "magnitude:0.5", knowledge=KNOWLEDGE, attention_layers="all", dtype="int8"
    )
    extract.run(
        extract.ExtractConfig(
            teacher=tiny_teacher, data=DataConfig(source=toy_dir, max_length=32), out=out, spec=spec, shard_examples=16
        )
    )
    return out


def test_public_names():
    assert {"open_cache", "DistillationLoss", "Cache", "Manifest", "model_inputs", "capture_values"} <= set(
        hsk_cache.__all__
    )
    for name in hsk_cache.__all__:
        assert getattr(hsk_cache, name) is not None


@pytest.mark.parametrize("budget", [None, 1], ids=["in-memory", "shard-windows"])
def test_collated_items_equal_the_loader_s_batches(full_cache, budget):
    cache = open_cache(full_cache, **({"memory_budget_bytes": budget} if budget else {}))
    assert (cache.window is None) == (budget is None)
    dataset = cache.dataset()
    assert len(dataset) == 64
    for step in cache.sampler(8, seed=1):
        reference = cache.fetch(step)
        batch = cache.collate([dataset[i] for i in step.ids])
        assert batch.keys() == reference.keys() and {"hidden_mask", "attention_probs", "value_relation"} <= batch.keys()
        for key, value in reference.items():
            assert batch[key].dtype == value.dtype and torch.equal(batch[key], value), key


def test_an_item_is_one_example_trimmed_to_its_length(full_cache):
    cache = open_cache(full_cache)
    item = cache.dataset()[3]
    n = int(cache.examples.lengths[3])
    assert item["input_ids"].shape == (n,) and item["attention_mask"].sum() == n
    assert item["labels"].shape == () and int(item["example_ids"]) == 3
    layers, heads = len(cache.manifest.layers), cache.manifest.dims.heads
    k = item["token_index"].shape[-1]
    assert item["hidden_states"].shape == (layers, k, 32) and item["hidden_states"].dtype == torch.float32
    assert item["attention_probs"].shape == (len(cache.manifest.attention_layers), heads, k, n)
    assert item["value_relation"].shape[-1] == n and item["logits"].shape == (2,)
    with pytest.raises(IndexError):
        cache.dataset()[64]


@pytest.mark.parametrize("budget", [None, 1], ids=["in-memory", "shard-windows"])
def test_epoch_sampler_is_the_loader_s_order(full_cache, budget):
    cache = open_cache(full_cache, **({"memory_budget_bytes": budget} if budget else {}))
    sampler = cache.epoch_sampler(seed=4)
    for epoch in range(2):
        loader = cache.loader(8, seed=4)
        loader.set_epoch(epoch)
        expected = np.concatenate([b["example_ids"].numpy() for b in loader])
        assert list(sampler) == expected.tolist()


def test_the_manifest_is_typed_frozen_and_round_trips(full_cache):
    cache = open_cache(full_cache)
    m = cache.manifest
    assert isinstance(m, Manifest) and m.layers == (0, 1, 2) and m.attention_layers == (1, 2)
    assert m.value_relation_layer == 2 and m.knowledge == tuple(KNOWLEDGE.split(","))
    assert m.teacher.hidden_size == 32 and m.data.label_names == ("neg", "pos") and m.dims.heads == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.complete = False
    with pytest.raises(TypeError):
        m.teacher.config["hidden_size"] = 1
    raw = json.loads((Path(full_cache) / "zarr.json").read_text())["attributes"]["hsk_cache"]
    assert m.to_dict() == raw


def test_a_damaged_manifest_is_named(full_cache, tmp_path):
    from hsk_cache.errors import CacheError

    raw = json.loads((Path(full_cache) / "zarr.json").read_text())["attributes"]["hsk_cache"]
    del raw["dims"]["heads"]
    with pytest.raises(CacheError, match="dims.heads"):
        Manifest.from_dict(raw)


def test_distillation_loss_owns_w_h_and_matches_hsk_train_s_terms(full_cache, tokenizer):
    cache = open_cache(full_cache)
    student = tiny_bert(tokenizer, layers=2, hidden=16, heads=4)
    loss_fn = DistillationLoss(cache, student.config)
    assert [name for name, _ in loss_fn.named_parameters()] == ["projection.weight", "projection.bias"]
    assert loss_fn.hidden_map == {1: 1, 2: 2} and loss_fn.attention_map == {1: 1, 2: 2}
    only_logits = DistillationLoss(cache.manifest, student.config, terms=("logits",), hard_label_weight=0.5)
    assert only_logits.projection is None and list(only_logits.parameters()) == []
    batch = cache.batch(np.arange(8))
    outputs = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    loss, terms = only_logits(outputs, batch)
    reference = torch.nn.functional.cross_entropy(outputs.logits, batch["logits"].softmax(-1))
    reference = reference + 0.5 * torch.nn.functional.cross_entropy(outputs.logits, batch["labels"])
    torch.testing.assert_close(loss, reference)
    assert set(terms) == {"logits", "labels"}
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with pytest.raises(hsk_cache.ModelError, match="attn_implementation='eager'"):  # sdpa returns no attentions
        loss_fn(student(**inputs, **loss_fn.output_flags()), batch)
    student.set_attn_implementation("eager")
    with pytest.raises(hsk_cache.ModelError, match="capture_values"):  # value relation without the values
        loss_fn(student(**inputs, **loss_fn.output_flags()), batch)
    with loss_fn.capture_values(student) as values:
        loss, terms = loss_fn(student(**inputs, **loss_fn.output_flags()), batch, values)
    assert set(terms) == {"hidden_states", "attention_probs", "value_relation", "logits"}


def _run(script: str, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = args[args.index("--out") + 1]
    return json.loads((Path(out) / "losses.json").read_text())


def _falls(losses: list[float]) -> bool:
    q = max(1, len(losses) // 4)
    return sum(losses[-q:]) / q < 0.8 * sum(losses[:q]) / q


def test_examples_train_a_student_from_the_cache(full_cache, tmp_path):
    common = ["--cache", full_cache, "--epochs", "4", "--batch-size", "8", "--lr", "1e-3", "--hidden", "16"]
    trainer = _run("hf_trainer.py", *common, "--out", str(tmp_path / "trainer"))
    accelerate = _run("accelerate_loop.py", *common, "--out", str(tmp_path / "accelerate"))
    for result in (trainer, accelerate):
        assert result["steps"] == 32 and _falls(result["losses"]), result["losses"]
        assert set(result["terms"][0]) == {"loss", *KNOWLEDGE.split(",")}
    for out in ("trainer", "accelerate"):
        student = models.load_classifier(str(tmp_path / out))
        assert student.config.num_hidden_layers == 2 and student.config.hidden_size == 16


@pytest.fixture(scope="module")
def hidden_stage(full_cache, tokenizer, tmp_path_factory) -> tuple[str, list[float]]:
    """(a saved student's directory, ``hsk train``'s per-step losses from it): one hidden stage
    over every intermediate term, 3 epochs of batch 8 (24 steps), lr 1e-3, seed 2; W_h trained,
    attention dropout off, hidden dropout on. The examples' equivalence tests start from it."""
    root = tmp_path_factory.mktemp("hidden_stage")
    student_dir = root / "init"
    models.save(tiny_bert(tokenizer, layers=2, hidden=16, heads=4, seed=7), tokenizer, student_dir)
    result = train.run(
        configs.TrainConfig(
            out=str(root / "hsk"),
            cache=full_cache,
            student=students.StudentConfig(kind="pretrained", path=str(student_dir)),
            stages=(StageConfig(kind="hidden", epochs=3, lr=1e-3, batch_size=8),),
            seed=2,
            save_every="0",
            num_workers=0,
        )
    )
    return str(student_dir), result.stages[0].losses


# the example options of the hidden_stage fixture's run
HIDDEN_STAGE = (
    *("--epochs", "3", "--batch-size", "8", "--lr", "1e-3", "--seed", "2", "--hsk-order"),
    *("--terms", "hidden_states,attention_probs,value_relation"),
)


def test_hf_trainer_and_hsk_train_take_the_same_steps(full_cache, hidden_stage, tmp_path):
    """Same student weights, seed, batch order (``--hsk-order``), AdamW and schedule, one hidden
    stage over every intermediate term (W_h trained, attention dropout off, hidden dropout on).

    Trainer differs in how it runs a step (accelerate's backward, its own no-op gradient-norm
    call, a DataLoader with its own generator): the losses agree to float32 round-off, not
    bitwise, so the check is 1e-5 relative at every step."""
    student_dir, hsk = hidden_stage
    trainer = _run(
        "hf_trainer.py",
        "--cache",
        full_cache,
        "--student",
        student_dir,
        *HIDDEN_STAGE,
        "--out",
        str(tmp_path / "trainer"),
    )
    assert len(trainer["losses"]) == len(hsk) == 24
    np.testing.assert_allclose(trainer["losses"], hsk, rtol=1e-5)
    assert trainer["losses"][0] == hsk[0]  # the first step (no update yet) is bitwise equal


def test_lightning_module_trains_and_takes_hsk_train_s_steps(full_cache, hidden_stage, tmp_path):
    """examples/lightning_module.py from the hidden_stage fixture's student with its seed, batch
    order (``--hsk-order``), AdamW, schedule and clipping: the loss falls, every step's loss
    equals ``hsk train``'s, and the student, tokenizer, W_h and losses.json are saved."""
    student_dir, hsk = hidden_stage
    out = tmp_path / "lightning"
    result = _run(
        "lightning_module.py", "--cache", full_cache, "--student", student_dir, *HIDDEN_STAGE, "--out", str(out)
    )
    assert result["steps"] == len(result["losses"]) == len(hsk) == 24
    assert _falls(result["losses"]), result["losses"]
    assert set(result["terms"][0]) == {"loss", "hidden_states", "attention_probs", "value_relation"}
    assert result["losses"] == hsk
    student = models.load_classifier(str(out))
    assert student.config.num_hidden_layers == 2 and student.config.hidden_size == 16
    assert (out / "distillation_loss.safetensors").is_file() and (out / "tokenizer_config.json").is_file()


def test_docs_api_snippets_run(full_cache, tmp_path, monkeypatch):
    text = (ROOT / "docs" / "api.md").read_text()
    snippets = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(snippets) >= 4
    (tmp_path / "runs").mkdir()
    os.symlink(full_cache, tmp_path / "runs" / "cache")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for snippet in snippets:
        exec(compile(snippet, "docs/api.md", "exec"), namespace)
    assert namespace["loss"].item() > 0 and "hidden_states" in namespace["terms"]


def test_the_store_does_not_import_the_model_running_code():
    """The store's own imports (transitively, ast) reach no model, data, distillation or training
    module, and importing it (with the package's public API) does not load transformers."""
    from tests.test_architecture import graph

    edges, seen, todo = graph(), set(), [m for m in graph() if m.startswith("hsk_cache.store")]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += [t for t in edges.get(module, ()) if t in edges]
    reached = sorted(m for m in seen if m.split(".")[1] in ("models", "data", "distill", "extraction", "training"))
    assert reached == [], reached
    code = (
        "import sys, hsk_cache.store.reader, hsk_cache.store.writer, hsk_cache.store.layout, hsk_cache.store.verify;"
        "print(sorted(m for m in ('transformers',) if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_the_hsk_command_does_not_import_the_metric_libraries():
    """seqeval, scikit-learn and SciPy (entity, multi-label and correlation metrics) are imported
    by the metric that uses them: at import they cost ~1.9 s of every hsk process's start."""
    code = "import sys, hsk_cache.cli; print(sorted(m for m in ('seqeval', 'sklearn', 'scipy') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_helpers_see_through_a_wrapped_model(tokenizer):
    from hsk_cache import capture_values, model_inputs
    from tests.test_families import tiny

    student = tiny("distilbert", tokenizer)
    wrapped = torch.nn.DataParallel(student)  # like DDP: the model is wrapped.module
    batch = {
        "input_ids": torch.tensor([[101, 2204, 102]]),
        "attention_mask": torch.ones(1, 3, dtype=torch.long),
        "token_type_ids": torch.zeros(1, 3, dtype=torch.long),
    }
    inputs = model_inputs(batch, wrapped)
    assert set(inputs) == {"input_ids", "attention_mask"}  # DistilBERT takes no token_type_ids
    with capture_values(wrapped, 2) as values:
        wrapped(**inputs)
    expected = student.distilbert.transformer.layer[1].attention.v_lin(
        student(**inputs, output_hidden_states=True).hidden_states[1]
    )
    torch.testing.assert_close(values[0], expected)


@pytest.mark.parametrize("example", ["common.py", "hf_trainer.py", "accelerate_loop.py", "lightning_module.py"])
def test_every_example_option_has_help_and_shows_its_default(example):
    import ast

    tree = ast.parse((Path(__file__).parents[1] / "examples" / example).read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "add_argument"]
    assert calls or "add_options(parser" in ast.unparse(tree)  # the shared options are common.py's
    for call in calls:
        keywords = {k.arg: k.value for k in call.keywords}
        name = call.args[0].value
        assert "help" in keywords, f"{example} {name} has no help text"
        if "default" in keywords and not (
            isinstance(keywords["default"], ast.Constant) and keywords["default"].value is None
        ):
            assert "default" in ast.unparse(keywords["help"]), f"{example} {name} does not show its default"
