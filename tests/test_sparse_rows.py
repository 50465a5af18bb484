"""Sparse distribution rows (``--key-topk``): attention, value-relation and MiniLMv2 relation rows
kept as their top-k keys and the remaining mass.

The loss of a sparse row is checked against the dense KL through the exact identity stated in
``knowledge.sparse_rows`` (dense − sparse = r · KL of the normalized tails), computed here in
float64 numpy from the dense rows; the cached rows are checked against a dense cache of the same
teacher and examples.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hsk_cache import ConfigError, DistillationLoss, model_inputs, open_cache
from hsk_cache.config.run import DataConfig, StageConfig
from hsk_cache.data.sources import OnlineSource
from hsk_cache.extraction import extract
from hsk_cache.knowledge import losses, sparse_rows
from hsk_cache.knowledge.plan import Plan
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import hub, students
from hsk_cache.training import configs, train
from tests.conftest import fails

MAX_LENGTH, LIMIT, K = 24, 16, 4
KNOWLEDGE = "attention_probs,value_relation,attention_relations"
ROWS = ("attention_probs", "value_relation", "attention_relations")
INDEX = {"attention_probs": "attention_index", "value_relation": "value_index", "attention_relations": "relation_index"}


def random_rows(rng, b=3, h=2, q=4, t=12, zeros=True) -> tuple[np.ndarray, np.ndarray]:
    """Probability rows [b, h, q, t] float64 with padded keys (0) and one invalid query (all 0)."""
    logits = rng.normal(scale=2.0, size=(b, h, q, t))
    lengths = rng.integers(5, t + 1, size=b) if zeros else np.full(b, t)
    mask = np.arange(t)[None, :] < lengths[:, None]
    logits = np.where(mask[:, None, None, :], logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    valid = np.ones((b, q), dtype=bool)
    valid[0, -1] = False
    probs[0, :, -1] = 0.0
    return probs, valid


def reference_gap(p: np.ndarray, q: np.ndarray, k: int, valid: np.ndarray) -> float:
    """mean over valid rows and heads of r · KL(p_tail / r ‖ q_tail / r_q), the tails outside p's top k."""
    gaps = []
    for index in np.ndindex(p.shape[:-1]):
        b, _, row = index
        if not valid[b, row]:
            continue
        pr, qr = p[index], q[index]
        top = np.argsort(-pr, kind="stable")[:k]
        tail = np.ones(len(pr), dtype=bool)
        tail[top] = False
        tail &= pr > 0
        r, rq = pr[tail].sum(), qr[~np.isin(np.arange(len(pr)), top)].sum()
        gaps.append(0.0 if r == 0 else r * np.sum(pr[tail] / r * np.log((pr[tail] / r) / (qr[tail] / rq))))
    return float(np.mean(gaps))


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_the_sparse_loss_is_the_dense_loss_less_the_tails_divergence(k):
    rng = np.random.default_rng(k)
    p, valid = random_rows(rng)
    q, _ = random_rows(np.random.default_rng(100 + k), zeros=False)
    q = np.where(p.sum(-1, keepdims=True) > 0, q, 0.0)
    tensor = lambda x: torch.tensor(x, dtype=torch.float32)
    dense = float(losses.distribution_kl(tensor(q), tensor(p), torch.tensor(valid)))
    sparse = float(losses.sparse_distribution_kl(tensor(q), sparse_rows.sparsify(tensor(p), k), torch.tensor(valid)))
    gap = reference_gap(p, q, k, valid)
    assert sparse <= dense + 1e-6
    assert dense - sparse == pytest.approx(gap, rel=1e-4, abs=1e-5)


def test_keys_covering_the_row_give_the_dense_loss_and_pad_with_minus_one():
    rng = np.random.default_rng(0)
    p, valid = random_rows(rng, t=8)
    q, _ = random_rows(np.random.default_rng(1), t=8, zeros=False)
    p, q, valid = torch.tensor(p, dtype=torch.float32), torch.tensor(q, dtype=torch.float32), torch.tensor(valid)
    sparse = sparse_rows.sparsify(p, 10)  # more keys than the row has: padded
    assert sparse.values.shape[-1] == 10 and (sparse.keys[..., 8:] == -1).all()
    assert (sparse.keys[p.sum(-1) == 0] == -1).all() and (sparse.rest[p.sum(-1) == 0] == 0).all()
    assert torch.allclose(sparse.dense(8), p, atol=1e-7) and float(sparse.rest.max()) < 1e-6
    dense = losses.distribution_kl(q, p, valid)
    assert float(losses.sparse_distribution_kl(q, sparse, valid)) == pytest.approx(float(dense), rel=1e-5)
    # the kept values are the row's largest, largest first, and the rest is what they leave
    top = sparse_rows.sparsify(p, 3)
    assert torch.equal(top.values, p.topk(3, dim=-1).values * (top.keys >= 0))
    assert torch.allclose(top.rest, (p.sum(-1) - top.values.sum(-1)).clamp(min=0), atol=1e-7)


@pytest.fixture(scope="module")
def caches(tiny_teacher, toy_dir, tmp_path_factory) -> dict[str, str]:
    out = {}
    for name, k in (("dense", 0), ("sparse", K)):
        spec = ExtractSpec.parse(
            tokens="topk:6", knowledge=KNOWLEDGE, dtype="float32", attention_layers="all", key_topk=k
        )
        path = str(tmp_path_factory.mktemp(name) / "cache")
        data = DataConfig(source=toy_dir, max_length=MAX_LENGTH, limit=LIMIT)
        extract.run(extract.ExtractConfig(teacher=tiny_teacher, data=data, out=path, spec=spec))
        out[name] = path
    return out


def test_a_sparse_cache_holds_the_dense_rows_top_keys_and_their_rest(caches):
    dense, sparse = open_cache(caches["dense"]), open_cache(caches["sparse"])
    assert sparse.manifest.spec.key_topk == K and dense.manifest.spec.key_topk == 0
    assert "key_topk" not in dense.manifest.spec.to_dict()
    ids = np.arange(LIMIT)
    d, s = dense.batch(ids), sparse.batch(ids)
    for name in ROWS:
        assert torch.equal(d[INDEX[name]], s[INDEX[name]])  # the same kept queries
        rows = d[name]
        values, keys, rest = s[name], s[f"{name}_keys"], s[f"{name}_rest"]
        assert values.shape == (*rows.shape[:-1], K) and keys.dtype == torch.int64
        at_keys = rows.gather(-1, keys.clamp(min=0)) * (keys >= 0)
        assert torch.allclose(values, at_keys, atol=1e-6)  # each value is the dense row's at its key
        assert torch.allclose(values, rows.topk(K, dim=-1).values * (keys >= 0), atol=1e-6)  # the largest
        assert torch.allclose(rest, (rows.sum(-1) - values.sum(-1)).clamp(min=0), atol=1e-5)
    stored = {a.name: a for a in sparse.plan.arrays(LIMIT)}
    dense_stored = {a.name: a for a in dense.plan.arrays(LIMIT)}
    for name in ROWS:  # the sparse arrays are k / T of the dense bytes, plus keys and rest
        assert stored[name].row_bytes() * MAX_LENGTH == dense_stored[name].row_bytes() * K
        assert stored[f"{name}_keys"].dtype == "int16" and stored[f"{name}_rest"].dtype == "float32"
    assert sparse.reader.stored_bytes() < dense.reader.stored_bytes()


def test_training_reads_sparse_rows_and_each_term_stays_below_the_dense_one(caches, tiny_teacher, tmp_path):
    dense, sparse = open_cache(caches["dense"]), open_cache(caches["sparse"])
    student = students.student_from_config(
        dense.teacher_config, 2, layers=2, hidden=32, heads=4, ffn=64, attention=True
    )
    student.eval()
    ids = np.arange(8)
    parts = {}
    for name, cache in (("dense", dense), ("sparse", sparse)):
        loss_fn = DistillationLoss(cache, student.config)
        batch = cache.batch(ids)
        with torch.no_grad(), loss_fn.capture_values(student) as values:
            outputs = student(**model_inputs(batch, student), **loss_fn.output_flags())
        parts[name] = {t: float(v) for t, v in loss_fn(outputs, batch, values).terms.items()}
    assert set(parts["sparse"]) == set(ROWS)
    for term in ROWS:
        assert 0 < parts["sparse"][term] <= parts["dense"][term] + 1e-6, (term, parts)

    # online selection with key_topk gives the cache's batches (float32: lossless)
    spec = ExtractSpec.parse(tokens="topk:6", knowledge=KNOWLEDGE, dtype="float32", attention_layers="all", key_topk=K)
    online = OnlineSource(
        tiny_teacher, DataConfig(source=sparse.manifest.data.source, max_length=MAX_LENGTH, limit=LIMIT), spec
    )
    live = online.batch(ids)
    cached = sparse.batch(ids)
    for name in ROWS:
        assert torch.equal(live[f"{name}_keys"], cached[f"{name}_keys"])
        assert torch.allclose(live[name], cached[name], atol=1e-6)
        assert torch.allclose(live[f"{name}_rest"], cached[f"{name}_rest"], atol=1e-6)

    # hsk train's hidden stage trains from the sparse cache through the unchanged pipeline
    config = configs.TrainConfig(
        out=str(tmp_path / "student"),
        cache=caches["sparse"],
        student=students.StudentConfig(layers=2, hidden=32, heads=4, ffn=64),
        stages=(StageConfig(kind="hidden", epochs=2, lr=3e-3, batch_size=8),),
        save_every="0",
    )
    history = train.run(config).stages[0].losses
    assert history and all(math.isfinite(x) and x > 0 for x in history)


def test_bad_key_topk_is_named(tiny_teacher, caches, tokenizer, toy_dir, tmp_path, capsys):
    for value in (-1, "x", 2.5, True):
        with pytest.raises(ConfigError) as caught:
            ExtractSpec(key_topk=value) if not isinstance(value, str) else ExtractSpec.parse(key_topk=value)
        assert caught.value.field == "key_topk"
    with pytest.raises(ConfigError) as caught:
        ExtractSpec.parse(knowledge="hidden_states,logits", key_topk=4)
    assert caught.value.field == "key_topk" and "attention_probs" in str(caught.value)
    config = hub.read_config(tiny_teacher)
    with pytest.raises(ConfigError) as caught:
        Plan.make(ExtractSpec.parse(knowledge="attention_probs", key_topk=MAX_LENGTH), config, tokenizer, MAX_LENGTH)
    assert caught.value.field == "key_topk"
    # sparse attention rows compare per teacher head under KL: other heads or MSE are refused
    sparse = open_cache(caches["sparse"])
    other_heads = students.student_from_config(sparse.teacher_config, 2, layers=2, hidden=32, heads=2, ffn=64)
    with pytest.raises(ConfigError) as caught:
        DistillationLoss(sparse, other_heads.config, head_map="mean")
    assert "key_topk" in str(caught.value)
    same = students.student_from_config(sparse.teacher_config, 2, layers=2, hidden=32, heads=4, ffn=64)
    with pytest.raises(ConfigError) as caught:
        DistillationLoss(sparse, same.config, attention_loss="mse")
    assert caught.value.field == "attention_loss"
    out = str(tmp_path / "c")
    argv = ["extract", "--teacher", tiny_teacher, "--data", toy_dir, "--out", out, "--max-length", "24"]
    fails(capsys, [*argv, "--key-topk", "4"], "--key-topk 4", "attention_probs")  # default knowledge has no rows
    fails(capsys, [*argv, "--knowledge", "attention_probs", "--key-topk", "24"], "--key-topk 24", "24 tokens")
    assert not (tmp_path / "c").exists()
