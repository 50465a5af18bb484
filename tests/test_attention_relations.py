"""The MiniLMv2 kind (``attention_relations``): Q-Q, K-K and V-V self-attention relations of one
teacher layer in R relation heads, for every encoder family.

The cached rows are checked against a reference computed here from hooks on the module paths each
family's transformers source names for its query, key and value projections (written out below,
not taken from ``hsk_cache.models.families``), with a plain per-head softmax over the real keys.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoConfig, BertConfig

from hsk_cache import ConfigError, DistillationLoss, model_inputs, open_cache
from hsk_cache.config.run import DataConfig, StageConfig
from hsk_cache.extraction import extract
from hsk_cache.knowledge import registry
from hsk_cache.knowledge.plan import Plan
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import hub, students
from hsk_cache.models.families import FAMILIES, student_config
from hsk_cache.training import configs, train

# where each family's transformers source keeps layer {}'s (0-based) query, key and value projections
QKV_PATHS = {
    "bert": (
        "bert.encoder.layer.{}.attention.self.query",
        "bert.encoder.layer.{}.attention.self.key",
        "bert.encoder.layer.{}.attention.self.value",
    ),
    "roberta": (
        "roberta.encoder.layer.{}.attention.self.query",
        "roberta.encoder.layer.{}.attention.self.key",
        "roberta.encoder.layer.{}.attention.self.value",
    ),
    "electra": (
        "electra.encoder.layer.{}.attention.self.query",
        "electra.encoder.layer.{}.attention.self.key",
        "electra.encoder.layer.{}.attention.self.value",
    ),
    "distilbert": (
        "distilbert.transformer.layer.{}.attention.q_lin",
        "distilbert.transformer.layer.{}.attention.k_lin",
        "distilbert.transformer.layer.{}.attention.v_lin",
    ),
    "mpnet": (
        "mpnet.encoder.layer.{}.attention.attn.q",
        "mpnet.encoder.layer.{}.attention.attn.k",
        "mpnet.encoder.layer.{}.attention.attn.v",
    ),
    "deberta-v2": (
        "deberta.encoder.layer.{}.attention.self.query_proj",
        "deberta.encoder.layer.{}.attention.self.key_proj",
        "deberta.encoder.layer.{}.attention.self.value_proj",
    ),
}
BASE = {
    "vocab_size": None,
    "pad_token_id": 0,
    "max_position_embeddings": 64,
    "model_type": "bert",
    "type_vocab_size": 2,
}
MAX_LENGTH, LIMIT = 24, 16


def tiny(family: str, tokenizer, seed: int = 0, layers: int = 2, hidden: int = 32, heads: int = 4):
    from transformers import AutoModelForSequenceClassification

    config = student_config(family, {**BASE, "vocab_size": len(tokenizer)}, layers, hidden, heads, 2 * hidden)
    config.num_labels, config.id2label, config.label2id = 2, {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").eval()


def extract_cache(teacher: str, toy_dir: str, out: str, tokens: str, dtype: str = "float32", **options) -> str:
    spec = ExtractSpec.parse(tokens=tokens, knowledge="attention_relations", dtype=dtype, options=options)
    extract.run(
        extract.ExtractConfig(
            teacher=teacher, data=DataConfig(source=toy_dir, max_length=MAX_LENGTH, limit=LIMIT), out=out, spec=spec
        )
    )
    return out


def reference(x: torch.Tensor, heads: int, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, D] → [B, R, T, T]: softmax(x_r x_rᵀ / √(D/R)) of each contiguous slice r, real keys only."""
    size = x.shape[-1] // heads
    out = []
    for r in range(heads):
        part = x[..., r * size : (r + 1) * size]
        scores = part @ part.transpose(-1, -2) / math.sqrt(size)
        out.append(scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1))
    return torch.stack(out, dim=1)


def teacher_inputs(batch: dict, family: str) -> dict:
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    if "token_type_ids" in batch and family not in ("distilbert", "mpnet"):
        inputs["token_type_ids"] = batch["token_type_ids"]
    return inputs


def check_against_reference(cache, teacher, family: str, layer: int, heads: int, atol=1e-5, rtol=1e-4) -> None:
    """The cached Q-Q, K-K, V-V rows of 8 examples equal the reference from the family's own modules."""
    batch = cache.collate([cache.dataset()[i] for i in range(8)])
    captured = {}
    handles = [
        teacher.get_submodule(path.format(layer - 1)).register_forward_hook(
            lambda m, i, o, n=n: captured.__setitem__(n, o)
        )
        for n, path in enumerate(QKV_PATHS[family])
    ]
    with torch.no_grad():
        teacher(**teacher_inputs(batch, family))
    for handle in handles:
        handle.remove()
    mask = batch["attention_mask"].bool()
    stored = batch["attention_relations"]
    index = batch["relation_index"]
    assert stored.shape[:3] == (8, 3, heads) and stored.shape[-1] == mask.shape[1]
    for n in range(3):
        relation = reference(captured[n].float(), heads, mask)
        for b in range(8):
            kept = index[b][index[b] >= 0]
            assert 0 < len(kept) and int(kept.max()) < int(mask[b].sum())
            torch.testing.assert_close(stored[b, n, :, : len(kept)], relation[b, :, kept], atol=atol, rtol=rtol)
            assert not stored[b, n, :, len(kept) :].any()  # padded query rows
            assert not stored[b, n, :, :, int(mask[b].sum()) :].any()  # padded keys


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, tokenizer) -> dict[str, str]:
    out = {}
    for family in FAMILIES:
        path = tmp_path_factory.mktemp(f"teacher-{family}")
        hub.save(tiny(family, tokenizer), tokenizer, path)
        out[family] = str(path)
    return out


def family_tokens(family: str) -> str:
    return "topk:4" if FAMILIES.index(family) % 2 == 0 else "all"


@pytest.fixture(scope="module")
def caches(teachers, toy_dir, tmp_path_factory) -> dict[str, str]:
    return {
        family: extract_cache(
            teacher,
            toy_dir,
            str(tmp_path_factory.mktemp(f"cache-{family}") / "c"),
            family_tokens(family),
            relation_heads=2,
        )
        for family, teacher in teachers.items()
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_relations_match_the_family_s_own_projections(family, teachers, caches):
    cache = open_cache(caches[family])
    assert cache.manifest.teacher.config["model_type"] == family
    assert cache.manifest.to_dict()["kinds"] == {"attention_relations": {"relation_layer": 2, "relation_heads": 2}}
    assert cache.manifest.spec.options == {"relation_heads": 2, "relation_layer": None}
    assert cache.plan.extra == {"relation_layer": 2, "relation_heads": 2}
    assert cache.arrays["attention_relations"].shape[1:] == (3, 2, cache.plan.kept_tokens, MAX_LENGTH)
    teacher = hub.load_classifier(teachers[family], attention=True)
    check_against_reference(cache, teacher, family, layer=2, heads=2)

    # the teacher as its own student: the three KLs vanish (its last layer is the relation layer)
    loss_fn = DistillationLoss(cache, teacher.config)
    assert loss_fn.terms == ("attention_relations",)
    batch = next(iter(cache.loader(8)))
    with loss_fn.capture_values(teacher) as values, torch.no_grad():
        outputs = teacher(**model_inputs(batch, teacher), **loss_fn.output_flags())
    loss, terms = loss_fn(outputs, batch, values)
    assert set(terms) == {"attention_relations"} and abs(float(loss)) < 1e-5


@pytest.mark.parametrize(("heads", "dtype"), [(2, "float32"), (8, "float32"), (8, "int8")])
def test_relation_heads_differ_from_attention_heads(heads, dtype, teachers, toy_dir, tmp_path):
    teacher = hub.load_classifier(teachers["bert"], attention=True)
    assert teacher.config.num_attention_heads == 4
    out = extract_cache(
        teachers["bert"], toy_dir, str(tmp_path / "c"), "topk:4", dtype, relation_heads=heads, relation_layer=1
    )
    cache = open_cache(out)
    assert cache.plan.extra == {"relation_layer": 1, "relation_heads": heads}
    assert cache.arrays["attention_relations"].shape == (LIMIT, 3, heads, 4, MAX_LENGTH)
    # int8: per-row absmax scale ≤ 1/127, so rounding errs by at most half of it
    atol = 1e-5 if dtype == "float32" else 0.5 / 127 + 1e-6
    check_against_reference(
        cache, teacher, "bert", layer=1, heads=heads, atol=atol, rtol=0 if dtype == "int8" else 1e-4
    )


def test_default_relation_heads_are_the_teacher_s_heads(teachers, tokenizer):
    config = AutoConfig.from_pretrained(teachers["bert"])
    plan = Plan.make(ExtractSpec.parse(knowledge="attention_relations"), config, tokenizer, MAX_LENGTH)
    assert plan.extra == {"relation_layer": 2, "relation_heads": 4}
    assert plan.projections_read() == {("query", 2), ("key", 2), ("value", 2)}
    assert plan.attention_layers_read() == set() and not plan.spec.needs_attention
    ranked = Plan.make(
        ExtractSpec.parse(tokens="topk:4", knowledge="attention_relations", options={"relation_layer": 1}),
        config,
        tokenizer,
        MAX_LENGTH,
    )
    assert ranked.attention_layers_read() == {1} and ranked.spec.needs_attention
    assert "attention_relations" in registry.stage_terms("hidden")
    assert registry.pad_values()["relation_index"] == -1


def test_a_student_with_other_heads_and_width_trains_against_the_relations(caches, tmp_path):
    cache = open_cache(caches["bert"])  # R = 2; the teacher: 32 wide, 4 heads
    student = students.student_from_config(cache.teacher_config, 2, layers=1, hidden=24, heads=3, ffn=48)
    loss_fn = DistillationLoss(cache, student.config)
    term = loss_fn._term["attention_relations"]
    assert term.projections == {("query", 1), ("key", 1), ("value", 1)} and term.heads == 2
    batch = cache.batch(np.arange(8))
    with loss_fn.capture_values(student) as values:
        outputs = student(**model_inputs(batch, student), **loss_fn.output_flags())
    loss, terms = loss_fn(outputs, batch, values)
    assert set(terms) == {"attention_relations"} and math.isfinite(float(loss.detach())) and float(loss.detach()) > 0
    loss.backward()
    attention = student.bert.encoder.layer[0].attention.self
    for module in (attention.query, attention.key, attention.value):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0

    # hsk train's hidden stage trains the term through the unchanged pipeline
    config = configs.TrainConfig(
        out=str(tmp_path / "student"),
        cache=caches["bert"],
        student=students.StudentConfig(layers=1, hidden=24, heads=3, ffn=48),
        stages=(StageConfig(kind="hidden", epochs=2, lr=3e-3, batch_size=8),),
        save_every="0",
    )
    losses = train.run(config).stages[0].losses
    assert losses and all(math.isfinite(x) and x > 0 for x in losses)


def raises_naming(field: str, fn) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        fn()
    assert caught.value.field == field and f"{{{field}}}" in caught.value.template, caught.value.template
    return caught.value


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"relation_heads": 0}, "relation_heads"),
        ({"relation_heads": -2}, "relation_heads"),
        ({"relation_heads": "2"}, "relation_heads"),
        ({"relation_heads": True}, "relation_heads"),
        ({"relation_layer": 0}, "relation_layer"),
        ({"relation_layer": 1.5}, "relation_layer"),
    ],
)
def test_bad_options_are_named(options, field):
    raises_naming(field, lambda: ExtractSpec.parse(knowledge="attention_relations", options=options))


def test_options_beyond_the_teacher_are_named(teachers, tokenizer):
    config = AutoConfig.from_pretrained(teachers["bert"])  # 2 layers, 32 wide, 4 heads

    def plan(**options):
        return Plan.make(ExtractSpec.parse(knowledge="attention_relations", options=options), config, tokenizer, 24)

    raises_naming("relation_layer", lambda: plan(relation_layer=3))
    raises_naming("relation_heads", lambda: plan(relation_heads=3))  # 32 % 3
    raises_naming("relation_heads", lambda: plan(relation_heads=64))  # 32 % 64
    # a student width that R does not divide: named when the term is built
    eight = plan(relation_heads=8)
    student = BertConfig(hidden_size=20, num_attention_heads=4, num_hidden_layers=1, intermediate_size=40)
    error = raises_naming("relation_heads", lambda: DistillationLoss(eight, student))
    assert error.value == 8 and "20" in str(error)
