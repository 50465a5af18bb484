"""General (task-agnostic) distillation end to end: a corpus cache, a general student trained from
it (equal per step to online distillation with a lossless cache, killed and resumed, under DDP),
recipes, the progressive schedule, and the student fine-tuned on a task."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from hsk_cache.cli import main
from hsk_cache.config.run import DataConfig, StageConfig
from hsk_cache.errors import ConfigError, ModelError
from hsk_cache.extraction import extract
from hsk_cache.knowledge.recipes import recipe
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import hub, students
from hsk_cache.store.reader import CacheReader
from hsk_cache.training import configs, train
from tests.conftest import SHARED_GLUE, tiny_config
from tests.test_distributed import one_thread, torchrun
from tests.test_train_resume import _child, _log

WORDS = "the river city north old music film king war game team song album church road species".split()


def tiny_encoder(tokenizer, mlm: bool = False, seed: int = 0):
    from transformers import BertForMaskedLM, BertModel

    config = tiny_config(len(tokenizer), max_positions=64)
    torch.manual_seed(seed)
    return (BertForMaskedLM if mlm else BertModel)(config).eval()


@pytest.fixture(scope="module")
def base_teacher(tmp_path_factory, tokenizer) -> str:
    out = tmp_path_factory.mktemp("base_teacher")
    hub.save(tiny_encoder(tokenizer), tokenizer, out)
    return str(out)


@pytest.fixture(scope="module")
def mlm_teacher(tmp_path_factory, tokenizer) -> str:
    out = tmp_path_factory.mktemp("mlm_teacher")
    hub.save(tiny_encoder(tokenizer, mlm=True), tokenizer, out)
    return str(out)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> str:
    rng = random.Random(0)
    documents = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) for _ in range(24)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(documents) + "\n")
    return str(path)


def corpus(path: str) -> DataConfig:
    return DataConfig(source=path, max_length=32)


STUDENT = students.StudentConfig(kind="config", layers=2, hidden=24, heads=4, ffn=48)


def general(epochs: float = 2, batch_size: int = 8) -> tuple[StageConfig, ...]:
    return (StageConfig(kind="general", epochs=epochs, lr=1e-3, batch_size=batch_size),)


def test_the_issue_flow_runs_small_with_the_real_teacher_and_wikitext(tmp_path, toy_dir):
    """hsk extract --recipe minilm over wikitext-2, hsk train --recipe minilm, hsk finetune on SST-2
    (on the toy task where ../shared is absent)."""
    cache, student, tuned = (str(tmp_path / name) for name in ("wiki-minilm", "general", "sst2"))
    small = ["--limit", "8", "--max-length", "32"]
    wiki = ["--teacher", "minilm-l6", "--data", "wikitext-2", "--recipe", "minilm", "--out", cache]
    assert main(["extract", *wiki, *small]) == 0
    manifest = CacheReader(cache).manifest
    assert (
        manifest.data.corpus
        and manifest.label_names == ()
        and manifest.knowledge
        == (
            "attention_probs",
            "value_relation",
        )
    )
    assert manifest.attention_layers == (6,) and manifest.value_relation_layer == 6
    assert (
        main(
            [
                "train",
                "--from-cache",
                cache,
                "--recipe",
                "minilm",
                "--student-layers",
                "2",
                "--student-hidden",
                "48",
                "--student-ffn",
                "96",
                "--hidden-epochs",
                "1",
                "--hidden-batch-size",
                "4",
                "--out",
                student,
            ]
        )  # fmt: skip
        == 0
    )
    from transformers import AutoModel

    model = AutoModel.from_pretrained(student)  # a base encoder, loadable without hsk
    assert type(model).__name__ == "BertModel" and model.config.num_hidden_layers == 2
    log = [json.loads(line) for line in open(os.path.join(student, "metrics.jsonl"))]
    assert [line["stage"] for line in log if line["event"] == "train"] == ["general", "general"]
    sst2 = str(SHARED_GLUE / "SST-2") if SHARED_GLUE.exists() else toy_dir  # a fresh clone may lack ../shared
    assert main(["finetune", "--model", student, "--data", sst2, "--limit", "16", "--epochs", "1", "--out", tuned]) == 0
    assert main(["eval", tuned, "--data", sst2, "--split", "dev", "--limit", "16"]) == 0


@pytest.mark.parametrize("name", ["minilm", "minilmv2", "tinybert", "distilbert"])
def test_cache_and_online_general_distillation_are_equal_per_step(
    name, base_teacher, mlm_teacher, corpus_file, tmp_path
):
    teacher = mlm_teacher if name == "distilbert" else base_teacher
    r = recipe(name)
    spec = ExtractSpec.parse(**{**r.spec, "tokens": "all", "dtype": "float32", "seed": 5})
    if name == "distilbert":
        spec = ExtractSpec.parse(
            **{**r.spec, "tokens": "all", "dtype": "float32", "seed": 5, "options": {"mlm_topk": 8}}
        )
    cache = str(tmp_path / "cache")
    extract.run(extract.ExtractConfig(teacher=teacher, data=corpus(corpus_file), out=cache, spec=spec, batch_size=8))
    common = dict(student=STUDENT, stages=general(), seed=3, **r.loss)
    from_cache = train.run(configs.TrainConfig(out=str(tmp_path / "a"), cache=cache, **common))
    online = train.run(
        configs.TrainConfig(
            out=str(tmp_path / "b"), online_teacher=teacher, data=corpus(corpus_file), spec=spec, **common
        )
    )
    (a,), (b,) = from_cache.stages, online.stages
    assert a.kind == b.kind == "general" and a.steps == b.steps > 2
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-5, atol=1e-8)
    assert a.losses[-1] < a.losses[0]  # real training, not constants
    if name == "distilbert":  # a masked-LM student (its own MLM loss needs the head)
        assert json.loads(Path(tmp_path / "a" / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]


def test_static_masks_are_stored_as_the_inputs_both_models_see(mlm_teacher, corpus_file, tmp_path):
    spec = ExtractSpec.parse(**{**recipe("distilbert").spec, "seed": 1})
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for out in (a, b):
        extract.run(extract.ExtractConfig(teacher=mlm_teacher, data=corpus(corpus_file), out=out, spec=spec))
    ra, rb = CacheReader(a), CacheReader(b)
    assert (ra.read("input_ids") == rb.read("input_ids")).all()
    positions, labels, ids = ra.read("mlm_positions"), ra.read("mlm_labels"), ra.read("input_ids")
    mask_id = hub.load_tokenizer(mlm_teacher).mask_token_id
    kept = positions >= 0
    assert kept.sum(axis=1).min() >= 1
    rows = np.nonzero(kept)[0]
    masked = ids[rows, positions[kept]]
    assert 0.6 < (masked == mask_id).mean() <= 1.0  # 80% [MASK] (10% random, 10% kept)
    assert (labels[kept] != mask_id).all()  # the labels are the original tokens


def test_kill_and_resume_a_general_run(base_teacher, corpus_file, tmp_path):
    cache = str(tmp_path / "cache")
    spec = ExtractSpec.parse(**{**recipe("tinybert").spec, "tokens": "topk:5"})
    extract.run(extract.ExtractConfig(teacher=base_teacher, data=corpus(corpus_file), out=cache, spec=spec))
    argv = lambda out: ["train", "--from-cache", cache, "--out", out, "--recipe", "tinybert", "--student-layers", "2",
                        "--student-hidden", "16", "--student-heads", "4", "--student-ffn", "32", "--hidden-epochs",
                        "3", "--hidden-batch-size", "4", "--save-every", "3", "--seed", "2"]  # fmt: skip
    reference, resumed = str(tmp_path / "reference"), str(tmp_path / "resumed")
    assert _child(argv(reference)).returncode == 0
    killed = _child(argv(resumed), KILL_STAGE=0, KILL_STEP=7)
    assert killed.returncode == -9, killed.stderr
    again = _child(argv(resumed))
    assert again.returncode == 0 and "resumed from" in again.stdout, again.stderr
    assert _log(resumed, "train") == _log(reference, "train")
    from safetensors.numpy import load_file

    x, y = (
        load_file(os.path.join(reference, "model.safetensors")),
        load_file(os.path.join(resumed, "model.safetensors")),
    )
    assert x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x)


def test_two_rank_ddp_general_training_equals_one_process(base_teacher, corpus_file, tmp_path):
    cache = str(tmp_path / "cache")
    spec = ExtractSpec.parse(**{**recipe("minilmv2").spec, "tokens": "topk:5"})
    data = DataConfig(source=corpus_file, max_length=32, limit=16)  # whole global batches of 8 on 1 or 2 ranks
    extract.run(extract.ExtractConfig(teacher=base_teacher, data=data, out=cache, spec=spec))
    # a student without dropout (one process and two ranks then draw no different masks)
    model = tiny_encoder(hub.load_tokenizer(base_teacher), seed=4)
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    hub.save(model, hub.load_tokenizer(base_teacher), tmp_path / "student")
    argv = lambda out: ["train", "--from-cache", cache, "--out", out, "--recipe", "minilmv2", "--student-pretrained",
                        str(tmp_path / "student"), "--hidden-epochs", "2", "--hidden-batch-size", "8",
                        "--num-workers", "0", "--save-every", "0"]  # fmt: skip
    single, ddp = str(tmp_path / "single"), str(tmp_path / "ddp")
    assert one_thread(argv(single)) == 0
    run = torchrun(argv(ddp))
    assert run.returncode == 0, run.stderr[-3000:]
    a = [x["loss"] for x in _log(single, "train")]
    b = [x["loss"] for x in _log(ddp, "train")]
    assert len(a) == len(b) > 2
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-8)


def test_progressive_schedule_trains_one_layer_per_stage(base_teacher, corpus_file, tmp_path):
    cache = str(tmp_path / "cache")
    spec = ExtractSpec.parse(**{**recipe("mobilebert").spec, "tokens": "topk:5"})
    extract.run(extract.ExtractConfig(teacher=base_teacher, data=corpus(corpus_file), out=cache, spec=spec))
    student = students.StudentConfig(kind="config", layers=2, hidden=32, heads=4, ffn=64)
    r = train.run(
        configs.TrainConfig(
            out=str(tmp_path / "run"), cache=cache, student=student, stages=general(2), schedule="progressive",
            **recipe("mobilebert").loss,
        )
    )  # fmt: skip
    assert [s.kind for s in r.stages] == ["general", "general"] and all(s.steps > 0 for s in r.stages)
    # layer by layer: a stage for layer 2 leaves the embeddings and layer 1 unchanged
    model = students.build_student(student, hub.read_config(base_teacher), (), head="base")
    stage = StageConfig(kind="general", epochs=1, lr=1e-3, batch_size=8, layers=(2,))
    frozen = train.freeze_for(model, stage)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".layer.1." in name for name in trainable), trainable
    for parameter in frozen:
        parameter.requires_grad_(True)
    assert train.progressive_stages(general(4), 2) == tuple(
        StageConfig(kind="general", epochs=2.0, lr=1e-3, batch_size=8, layers=(layer,)) for layer in (1, 2)
    )


def test_recipe_presets_are_overridden_by_explicit_options(base_teacher, corpus_file, tmp_path):
    out = str(tmp_path / "cache")
    args = ["extract", "--teacher", base_teacher, "--data", corpus_file, "--recipe", "tinybert", "--max-length", "32"]
    assert main([*args, "--attention-layers", "2", "--tokens", "topk:4", "--out", out]) == 0
    m = CacheReader(out).manifest
    assert m.knowledge == ("hidden_states", "attention_probs") and m.layers == (0, 1, 2) and m.attention_layers == (2,)


def test_corpus_refusals_are_one_line_errors(base_teacher, corpus_file, tmp_path, capsys):
    with pytest.raises(ConfigError, match="unlabeled corpus"):  # no task head, so no logits
        extract.run(extract.ExtractConfig(teacher=base_teacher, data=corpus(corpus_file), out=str(tmp_path / "x")))
    with pytest.raises(ModelError, match="no masked-LM head"):  # a random head would predict noise
        spec = ExtractSpec.parse(**recipe("distilbert").spec)
        extract.run(
            extract.ExtractConfig(teacher=base_teacher, data=corpus(corpus_file), out=str(tmp_path / "y"), spec=spec)
        )
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")
    with pytest.raises(SystemExit):  # argparse: an unknown --recipe is a usage error (exit 2)
        main(["extract", "--teacher", base_teacher, "--data", corpus_file, "--recipe", "nope", "--out", "z"])


def test_docs_general_tables_match_the_committed_results():
    from pipelines import general as proof

    rows = proof.Rows(proof.DOC.parent / "general" / "results.jsonl").rows
    assert any(key.startswith("finetune/") for key in rows) and any(key.startswith("extract/") for key in rows)
    tables = proof.DOC.read_text().split("<!-- results -->\n")[1].split("<!-- /results -->")[0]
    assert tables == proof.report(rows)  # python -m pipelines.general --report rewrites them


def reference_dev_loss(student_dir: str, cache: str) -> float:
    """The MiniLM recipe's loss (last-layer attention KL + value-relation KL) of a saved student on
    every example of a float32 cache of all tokens, one global mean per term, in float64 numpy."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(student_dir, attn_implementation="eager").eval()
    reader = CacheReader(cache)
    ids = reader.read("input_ids").astype(np.int64)
    mask = np.arange(ids.shape[1])[None, :] < reader.read("lengths")[:, None]
    teacher_attention, teacher_relation = reader.read("attention_probs")[:, -1], reader.read("value_relation")
    captured = {}
    layer = model.encoder.layer[-1].attention.self
    handle = layer.value.register_forward_hook(lambda _m, _i, out: captured.__setitem__("v", out))
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)), output_attentions=True
        )
    handle.remove()
    student_attention = out.attentions[-1].double().numpy()
    v = captured["v"].double().numpy()
    n, t, d = v.shape
    heads = model.config.num_attention_heads
    v = v.reshape(n, t, heads, d // heads).transpose(0, 2, 1, 3)
    scores = v @ v.transpose(0, 1, 3, 2) / np.sqrt(d // heads)
    scores = np.where(mask[:, None, None, :], scores, -np.inf)
    student_relation = np.exp(scores - scores.max(-1, keepdims=True))
    student_relation /= student_relation.sum(-1, keepdims=True)

    def kl(student: np.ndarray, teacher: np.ndarray) -> float:
        k = teacher.shape[-2]  # the stored query rows: every real token, in order
        s, p = student[:, :, :k, : teacher.shape[-1]], teacher.astype(np.float64)
        terms = np.where(p > 0, p * (np.log(np.maximum(p, 1e-12)) - np.log(np.maximum(s, 1e-12))), 0.0).sum(-1)
        rows = np.broadcast_to(mask[:, None, :k], terms.shape)
        return float(terms[rows].mean())

    return kl(student_attention, teacher_attention) + kl(student_relation, teacher_relation)


def test_dev_loss_is_evaluated_during_general_training_and_keeps_the_lowest(base_teacher, corpus_file, tmp_path):
    rng = random.Random(7)
    held_out = tmp_path / "valid.txt"
    held_out.write_text("\n\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) for _ in range(6)))
    r = recipe("minilm")
    spec = ExtractSpec.parse(**{**r.spec, "tokens": "all", "dtype": "float32"})
    train_cache, dev_cache = str(tmp_path / "train-cache"), str(tmp_path / "dev-cache")
    for path, out in ((corpus_file, train_cache), (str(held_out), dev_cache)):
        extract.run(extract.ExtractConfig(teacher=base_teacher, data=corpus(path), out=out, spec=spec, batch_size=8))
    common = dict(student=STUDENT, stages=general(3), seed=3, save_every="0", **r.loss)
    evaluation = configs.EvalConfig(data=dev_cache, every=2, batch_size=64)  # one dev batch: a global mean
    run = train.run(configs.TrainConfig(out=str(tmp_path / "a"), cache=train_cache, eval=evaluation, **common))
    evals = _log(str(tmp_path / "a"), "eval")
    assert len(evals) >= 3 and all({"loss", "loss.attention_probs", "loss.value_relation"} <= set(e) for e in evals)
    assert all(e["examples"] == CacheReader(dev_cache).manifest.counts["examples"] for e in evals)
    # the last evaluation (at the stage's end) is the saved student's loss, computed independently
    assert evals[-1]["loss"] == pytest.approx(reference_dev_loss(str(tmp_path / "a"), dev_cache), rel=1e-4)
    lowest = min(evals, key=lambda e: e["loss"])
    assert run.best == {"metric": "loss", "value": lowest["loss"], "stage": 0, "step": lowest["step"]}
    assert [e["best"] for e in evals].count(True) >= 1 and lowest["best"]
    best = json.loads((tmp_path / "a" / "best" / "best.json").read_text())
    assert best["metric"] == "loss" and best["value"] == lowest["loss"]

    # online, the same teacher reads the held-out text: the same dev losses (a lossless cache)
    online = configs.EvalConfig(data=str(held_out), every=2, batch_size=64)
    train.run(
        configs.TrainConfig(
            out=str(tmp_path / "b"), online_teacher=base_teacher, data=corpus(corpus_file), spec=spec, eval=online,
            **common,
        )
    )  # fmt: skip
    np.testing.assert_allclose(
        [e["loss"] for e in _log(str(tmp_path / "b"), "eval")], [e["loss"] for e in evals], rtol=1e-5
    )

    # refusals, before any training: not a cache, another spec, a task metric
    other = str(tmp_path / "other-cache")
    other_spec = ExtractSpec.parse(**{**r.spec, "tokens": "topk:4"})
    extract.run(extract.ExtractConfig(teacher=base_teacher, data=corpus(str(held_out)), out=other, spec=other_spec))
    for data, metric, field, needle in (
        (str(held_out), None, "eval_data", "is not a cache"),
        (other, None, "eval_data", "another spec"),
        (dev_cache, "accuracy", "eval_metric", "no labels"),
    ):
        bad = configs.EvalConfig(data=data, metric=metric)
        with pytest.raises(ConfigError) as caught:
            train.run(configs.TrainConfig(out=str(tmp_path / "c"), cache=train_cache, eval=bad, **common))
        assert caught.value.field == field and needle in str(caught.value), str(caught.value)
    assert not (tmp_path / "c" / "model.safetensors").exists()
