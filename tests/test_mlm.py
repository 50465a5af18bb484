"""The masked-LM kind (DistilBERT's knowledge): static masks, the teacher's masked-LM distribution as
top-k + rest mass, its loss terms, and a Plan → teacher → select → encode → decode round trip.

No pretrained masked-LM head ships offline: the teachers here are tiny random ``BertForMaskedLM``s
with the bundled tokenizer (and one with a 40-token vocabulary, where k = V is cheap)."""

from __future__ import annotations

import copy
import json
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hsk_cache.distill.loss import DistillationLoss
from hsk_cache.errors import ConfigError, ModelError
from hsk_cache.knowledge import losses, masking, registry
from hsk_cache.knowledge.batch import Examples, collate, sequential_batches
from hsk_cache.knowledge.mlm import MaskedLM
from hsk_cache.knowledge.plan import Plan
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import hub
from hsk_cache.models.teacher import run_teacher
from hsk_cache.store.manifest import SpecInfo
from tests.conftest import tiny_config

T = 32


def masked_lm(vocab: int, seed: int = 0):
    from transformers import BertForMaskedLM

    config = tiny_config(vocab)
    torch.manual_seed(seed)
    return BertForMaskedLM(config).eval()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tokenizer):
    """A saved-and-reloaded 2 × 32 random BertForMaskedLM over the bundled tokenizer's vocabulary."""
    from transformers import AutoModelForMaskedLM

    out = tmp_path_factory.mktemp("mlm_teacher")
    model = masked_lm(len(tokenizer))
    with torch.no_grad():  # tied to the decoder: logits of std ≈ 3 instead of 0.1, a peaked distribution
        model.bert.embeddings.word_embeddings.weight.mul_(30)
    hub.save(model, tokenizer, out)
    return AutoModelForMaskedLM.from_pretrained(out).eval()


def random_examples(n, tokens: masking.MaskTokens, seed=0, t=T, ids=None, specials=(), frame=(101, 102, 0)):
    """n sequences [CLS] w … w [SEP] [PAD]… of random non-special ids (lengths 3..t), with
    ``specials`` sprinkled inside; example ids ``ids`` (default 0..n−1); ``frame``: the cls, sep
    and pad ids."""
    rng = np.random.default_rng(seed)
    cls, sep, pad = frame
    input_ids = np.full((n, t), pad, dtype=np.int32)
    lengths = rng.integers(3, t + 1, n).astype(np.int32)
    words = np.setdiff1d(np.arange(tokens.vocab_size), tokens.special_ids)
    for i, length in enumerate(lengths):
        input_ids[i, 1 : length - 1] = rng.choice(words, length - 2)
        for s in specials:
            input_ids[i, rng.integers(1, length - 1)] = s
        input_ids[i, 0], input_ids[i, length - 1] = cls, sep
    example_ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    return Examples(input_ids, None, lengths, np.zeros(n, dtype=np.int64), example_ids)


def subset(examples: Examples, rows) -> Examples:
    rows = np.asarray(rows)
    return Examples(
        examples.input_ids[rows], None, examples.lengths[rows], examples.labels[rows], examples.example_ids[rows]
    )


def test_masks_depend_only_on_the_seed_and_the_example(tokenizer):
    tokens = masking.MaskTokens.of(tokenizer)
    assert tokens.mask_id == 103 and tokens.vocab_size == 30522 and tokens.special_ids == (0, 100, 101, 102, 103)
    examples = random_examples(40, tokens, ids=np.arange(1000, 1040))
    full = masking.mask_examples(examples, tokens, 0.15, seed=7)
    rows = [31, 2, 17, 5]  # another corpus: a few of the examples, shuffled
    part = masking.mask_examples(subset(examples, rows), tokens, 0.15, seed=7)
    for mine, everything in zip(part, full, strict=True):
        np.testing.assert_array_equal(mine, everything[rows])
    again = masking.mask_examples(examples, tokens, 0.15, seed=7)
    for a, b in zip(again, full, strict=True):
        np.testing.assert_array_equal(a, b)
    other = masking.mask_examples(examples, tokens, 0.15, seed=8)
    assert not np.array_equal(other[1], full[1])
    assert full[0].dtype == np.int32 and full[1].dtype == np.int16 and full[2].dtype == np.int32
    assert full[1].shape == (40, masking.slots(0.15, T)) == (40, 5)  # round(0.15 · 32)


def test_masking_rate_80_10_10_and_special_tokens_never_masked(tokenizer):
    tokens = masking.MaskTokens.of(tokenizer)
    examples = random_examples(3000, tokens, seed=1, t=64, specials=(100, 101, 102))  # [UNK], [CLS], [SEP] inside
    ids, positions, labels = masking.mask_examples(examples, tokens, 0.15, seed=0)
    original = examples.input_ids
    special = np.isin(original, tokens.special_ids)
    valid = positions >= 0
    rows, slots = np.nonzero(valid)
    at = positions[rows, slots].astype(np.int64)
    assert not special[rows, at].any()  # never a special token
    assert (at < examples.lengths[rows]).all()
    np.testing.assert_array_equal(labels[rows, slots], original[rows, at])
    assert (labels[~valid] == 0).all()
    assert all((np.diff(p[p >= 0]) > 0).all() for p in positions)  # ascending, distinct
    eligible = ((np.arange(64)[None] < examples.lengths[:, None]) & ~special).sum(1)
    np.testing.assert_array_equal(valid.sum(1), [masking.count(0.15, int(e)) for e in eligible])
    assert 0.14 < valid.sum() / eligible.sum() < 0.165  # 15 %, rounded per sequence
    new = ids[rows, at]
    to_mask = (new == tokens.mask_id).mean()
    kept = (new == original[rows, at]).mean()
    to_random = 1 - to_mask - kept
    assert 0.78 < to_mask < 0.82 and 0.08 < to_random < 0.12 and 0.08 < kept < 0.12, (to_mask, to_random, kept)
    assert not np.isin(new[new != tokens.mask_id], tokens.special_ids).any()  # random ids are never special
    untouched = np.ones_like(special)
    untouched[rows, at] = False
    np.testing.assert_array_equal(ids[untouched], original[untouched])  # specials and padding unchanged


def test_masking_errors_name_their_field(tokenizer):
    with pytest.raises(ConfigError) as err:
        masking.MaskTokens.of(SimpleNamespace(mask_token_id=None))
    assert err.value.field == "knowledge" and "{knowledge}" in err.value.template
    tokens = masking.MaskTokens.of(tokenizer)
    for bad in (0, 1, 1.5, -0.1, "x"):
        with pytest.raises(ConfigError) as err:
            masking.mask_examples(random_examples(2, tokens), tokens, bad, seed=0)
        assert err.value.field == "mlm_probability" and "{mlm_probability}" in err.value.template
    for option, bad in (("mlm_probability", 1.0), ("mlm_topk", 0), ("mlm_topk", 2.5), ("mlm_temperature", 0.0)):
        with pytest.raises(ConfigError) as err:
            ExtractSpec.parse(knowledge="mlm", options={option: bad})
        assert err.value.field == option and f"{{{option}}}" in err.value.template
    with pytest.raises(ConfigError) as err:
        Plan.make(ExtractSpec.parse(knowledge="mlm", options={"mlm_topk": 41}), masked_lm(40).config, tokenizer, T)
    assert err.value.field == "mlm_topk"


def test_spec_options_plan_extra_and_manifest_round_trip(tokenizer, teacher):
    spec = ExtractSpec.parse(knowledge="mlm,logits", options={"mlm_topk": 8})
    assert spec.options == {"mlm_probability": 0.15, "mlm_temperature": 2.0, "mlm_topk": 8}
    assert spec.knowledge[-1] == "mlm" and "mlm" in registry.stage_terms("general")
    plan = Plan.make(spec, teacher.config, tokenizer, T)
    assert plan.needs_mlm_head
    assert plan.extra == {"mlm_slots": 5, "mlm_topk": 8, "mlm_vocab_size": 30522, "mlm_temperature": 2.0}
    stored = json.loads(json.dumps(plan.manifest_kinds()))["mlm"]
    assert MaskedLM().from_manifest(stored) == plan.extra
    assert pickle.loads(pickle.dumps(plan)).extra == plan.extra == copy.deepcopy(plan).extra
    names = [a.name for a in plan.arrays(10)]
    assert names == ["logits", "mlm_positions", "mlm_labels", "mlm_topk_ids", "mlm_topk_probs", "mlm_rest_mass"]


def teacher_knowledge(teacher, tokenizer, spec, n=12, batch_size=5, tokens=None):
    """The extraction sequence of ``extraction.extract._extract_shard``, over ``n`` random examples."""
    plan = Plan.make(spec, teacher.config, tokenizer, T)
    tokens = tokens or masking.MaskTokens.of(tokenizer)
    toy = tokens.vocab_size != len(tokenizer)
    examples = random_examples(n, tokens, seed=3, frame=(1, 2, 0) if toy else (101, 102, 0))
    if not toy:
        prepared = plan.prepare_examples(examples, tokenizer)
    else:  # a toy vocabulary: mask with its own ids
        masked = masking.mask_examples(examples, tokens, spec.option("mlm_probability"), spec.seed)
        prepared = examples.with_inputs(masked[0], mlm_positions=masked[1], mlm_labels=masked[2])
    parts = []
    for index in sequential_batches(n, batch_size):
        batch = collate(prepared, index)
        outputs = run_teacher(teacher, batch, plan)
        parts.append((batch, outputs, plan.select(outputs, batch)))
    return plan, prepared, parts


def test_topk_targets_match_the_teachers_full_softmax(tokenizer, teacher):
    spec = ExtractSpec.parse(knowledge="mlm", dtype="float32", seed=4, options={"mlm_topk": 6})
    plan, prepared, parts = teacher_knowledge(teacher, tokenizer, spec)
    assert not np.array_equal(prepared.input_ids, random_examples(12, masking.MaskTokens.of(tokenizer), 3).input_ids)
    for batch, _, knowledge in parts:
        with torch.no_grad():  # the reference: the model's own forward on the masked ids, full softmax at τ = 2
            logits = teacher(**batch.model_inputs()).logits
        positions = knowledge["mlm_positions"]
        torch.testing.assert_close(positions, batch.extra["mlm_positions"])
        for b, p in zip(*(positions >= 0).nonzero(as_tuple=True), strict=True):
            probs = F.softmax(logits[b, positions[b, p]].double() / 2.0, dim=-1)
            top = probs.sort(descending=True)
            torch.testing.assert_close(knowledge["mlm_topk_ids"][b, p], top.indices[:6])
            torch.testing.assert_close(knowledge["mlm_topk_probs"][b, p].double(), top.values[:6], rtol=1e-5, atol=1e-7)
            rest = knowledge["mlm_rest_mass"][b, p].double()
            torch.testing.assert_close(rest, 1 - top.values[:6].sum(), rtol=1e-5, atol=1e-6)
            assert knowledge["mlm_labels"][b, p] == batch.extra["mlm_labels"][b, p]
        pad = positions < 0
        assert (knowledge["mlm_topk_probs"][pad] == 0).all() and (knowledge["mlm_rest_mass"][pad] == 0).all()
        assert knowledge["mlm_topk_ids"].dtype == torch.int64 and knowledge["mlm_labels"].dtype == torch.int64


def test_soft_topk_cross_entropy_is_the_full_one_at_k_equal_v_and_the_coarsened_one_below():
    torch.manual_seed(0)
    student, teacher = torch.randn(9, 40) * 3, torch.randn(9, 40) * 3
    tau = 2.0
    probs = F.softmax(teacher / tau, -1).sort(-1, descending=True)
    full = losses.topk_soft_cross_entropy(student, probs.indices, probs.values, torch.zeros(9), tau)
    torch.testing.assert_close(full, losses.soft_cross_entropy(student, teacher, tau))
    for k in (1, 5, 39):
        ids, p = probs.indices[:, :k], probs.values[:, :k]
        rest = 1 - p.sum(-1)
        got = losses.topk_soft_cross_entropy(student, ids, p, rest, tau)
        q = F.softmax(student.double() / tau, -1)
        q_top = q.gather(-1, ids)
        expected = -(p.double() * q_top.log()).sum(-1) - rest.double() * (1 - q_top.sum(-1)).log()
        torch.testing.assert_close(got.double(), tau**2 * expected.mean(), rtol=1e-5, atol=1e-6)
        assert got >= 0
    nothing = losses.topk_soft_cross_entropy(student[:0], probs.indices[:0], probs.values[:0], torch.zeros(0), tau)
    assert float(nothing) == 0  # a batch without masked positions
    leaf = student.clone().requires_grad_()
    losses.topk_soft_cross_entropy(leaf, probs.indices, probs.values, torch.zeros(9), tau).backward()
    assert torch.isfinite(leaf.grad).all()  # k = V: no 0 · log 0


def test_tiny_vocabulary_teacher_with_k_equal_v_gives_the_full_soft_cross_entropy(tokenizer):
    toy = masking.MaskTokens(mask_id=3, vocab_size=40, special_ids=(0, 1, 2, 3))
    small = masked_lm(40)
    spec = ExtractSpec.parse(knowledge="mlm", dtype="float32", options={"mlm_topk": 40})
    plan, _, parts = teacher_knowledge(small, tokenizer, spec, tokens=toy)
    batch, outputs, knowledge = parts[0]
    assert (knowledge["mlm_rest_mass"] == 0).all()
    student = masked_lm(40, seed=1)
    loss_fn = DistillationLoss(plan, student.config)
    out = student(**batch.model_inputs())
    terms = loss_fn(out, {**batch.as_dict(), **knowledge}).terms
    valid = knowledge["mlm_positions"] >= 0
    b, p = valid.nonzero(as_tuple=True)
    at = knowledge["mlm_positions"][b, p]
    full = losses.soft_cross_entropy(out.logits[b, at], outputs.logits[b, at], 2.0)
    torch.testing.assert_close(terms["mlm_soft"], full)
    torch.testing.assert_close(terms["mlm"], F.cross_entropy(out.logits[b, at], knowledge["mlm_labels"][b, p]))


def manifest_of(plan) -> SimpleNamespace:
    """What ``Plan.of_manifest`` reads of a ``store.manifest.Manifest``, from the plan's JSON forms."""
    s = plan.spec.describe()
    return SimpleNamespace(
        spec=SpecInfo.parse(s, "spec"),
        dims=SimpleNamespace(
            kept_tokens=plan.kept_tokens,
            hidden_size=plan.hidden_size,
            heads=plan.heads,
            classes=plan.classes,
            kept_dims=plan.kept_dims,
            slots=plan.slots,
        ),
        max_length=plan.max_length,
        teacher=SimpleNamespace(num_layers=plan.teacher_layers),
        layers=plan.layers,
        attention_layers=plan.attention_layers,
        value_relation_layer=plan.value_relation_layer,
        kinds=json.loads(json.dumps(plan.manifest_kinds())),
    )


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int8"])
def test_encode_decode_round_trip_and_training_on_it(tokenizer, teacher, dtype):
    spec = ExtractSpec.parse(knowledge="mlm", dtype=dtype, options={"mlm_topk": 8})
    plan, prepared, parts = teacher_knowledge(teacher, tokenizer, spec)
    rows = {}
    for _, _, knowledge in parts:
        for name, value in plan.encode(knowledge).items():
            rows.setdefault(name, []).append(value)
    rows = {name: np.concatenate(values) for name, values in rows.items()}
    specs = {a.name: a for a in plan.arrays(len(prepared))}
    assert set(rows) == set(specs)
    for name, array in rows.items():
        assert array.shape == specs[name].shape and array.dtype == np.dtype(specs[name].dtype), name
    np.testing.assert_array_equal(rows["mlm_positions"], prepared.extra["mlm_positions"])
    np.testing.assert_array_equal(rows["mlm_labels"], prepared.extra["mlm_labels"])

    stored = Plan.of_manifest(manifest_of(plan))  # the plan training rebuilds from the cache
    assert stored.extra == plan.extra and stored.spec.options == plan.spec.options
    start = 0
    for batch, _, knowledge in parts:
        index = np.arange(start, start + len(batch.example_ids))
        start += len(index)
        decoded = stored.decode({name: value[index] for name, value in rows.items()}, batch.input_ids.shape[1])
        assert set(decoded) == set(knowledge)
        for name in ("mlm_positions", "mlm_labels", "mlm_topk_ids", "mlm_rest_mass"):
            torch.testing.assert_close(decoded[name], knowledge[name], rtol=0, atol=0)
        # probabilities ≤ 1: fp16 within half an ulp (2⁻¹²), bf16 within 2⁻⁹, int8 within absmax/254
        tol = {"float32": 0, "float16": 2**-12, "bfloat16": 2**-9, "int8": 1 / 254 + 1e-7}[dtype]
        torch.testing.assert_close(decoded["mlm_topk_probs"], knowledge["mlm_topk_probs"], rtol=0, atol=tol)

    # the coarsened soft CE is ≥ 0 and falls under a few SGD steps on the decoded batch
    batch, _, _ = parts[0]
    decoded = stored.decode({name: value[: len(batch.example_ids)] for name, value in rows.items()}, T)
    student = masked_lm(len(tokenizer), seed=2)  # eval: no dropout noise in the comparison
    loss_fn = DistillationLoss(stored, student.config, terms=("mlm",))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    seen = []
    for _ in range(4):
        terms = loss_fn(student(**batch.model_inputs()), {**batch.as_dict(), **decoded}).terms
        assert terms["mlm_soft"] >= 0 and terms["mlm"] >= 0
        seen.append(float(terms["mlm_soft"].detach()))
        optimizer.zero_grad()
        terms["mlm_soft"].backward()
        optimizer.step()
    assert all(later < earlier for earlier, later in zip(seen, seen[1:])), seen


def test_term_errors(tokenizer, teacher, tiny_teacher):
    plan = Plan.make(ExtractSpec.parse(knowledge="mlm"), teacher.config, tokenizer, T)
    DistillationLoss(plan, teacher.config, temperature=2.0)  # the stored τ, or the default 1: fine
    with pytest.raises(ConfigError) as err:
        DistillationLoss(plan, teacher.config, temperature=3.0)
    assert err.value.field == "temperature" and "{temperature}" in err.value.template
    loss_fn = DistillationLoss(plan, teacher.config)
    classifier = hub.load_classifier(tiny_teacher)
    examples = plan.prepare_examples(random_examples(3, masking.MaskTokens.of(tokenizer)), tokenizer)
    batch = collate(examples, np.arange(3))
    with pytest.raises(ModelError, match="masked-LM student"):
        loss_fn(classifier(**batch.model_inputs()), batch.as_dict())
    with pytest.raises(ModelError, match="masked-LM logits"):
        plan.select(run_teacher(classifier, batch, plan), batch)
