"""The knowledge menu: width selection, storage codecs, attention and value relation, against
hand-written references and the live teacher."""

import numpy as np
import torch

from hsk_cache.config.run import DataConfig
from hsk_cache.config.specs import DimSpec, LayerSpec
from hsk_cache.extraction import extract
from hsk_cache.knowledge import hidden_states, quantize
from hsk_cache.knowledge.batch import Examples, collate
from hsk_cache.knowledge.plan import Plan
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import hub as models
from hsk_cache.models.teacher import run_teacher
from hsk_cache.select import width
from hsk_cache.select.depth import layer_map
from hsk_cache.store.reader import CacheReader


def test_magnitude_mask_keeps_the_largest_valid_elements_per_example_layer():
    hidden = torch.tensor([[[[0.1, -3.0, 2.0], [5.0, 0.0, -1.0]]]])  # [1, 1, K=2, D=3]
    both = width.magnitude_mask(hidden, torch.tensor([[[True, True]]]), 0.5)  # ceil(0.5·2·3) = 3 elements
    assert both.tolist() == [[[[False, True, True], [True, False, False]]]]
    first_only = width.magnitude_mask(hidden, torch.tensor([[[True, False]]]), 0.5)  # ceil(0.5·1·3) = 2
    assert first_only.tolist() == [[[[False, True, True], [False, False, False]]]]


def test_uniform_and_random_dimension_choices():
    assert width.dim_index(DimSpec.parse("uniform:0.3"), 10).tolist() == [0, 3, 6]
    a = width.dim_index(DimSpec.parse("random:0.25"), 16, seed=1)
    assert len(set(a.tolist())) == 4 and list(a) == sorted(a)
    assert np.array_equal(a, width.dim_index(DimSpec.parse("random:0.25"), 16, seed=1))
    assert not np.array_equal(a, width.dim_index(DimSpec.parse("random:0.25"), 16, seed=2))
    assert width.dim_index(DimSpec.parse("magnitude:0.1"), 16) is None


def test_sparse_values_round_trip():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 2, 4, 5)).astype(np.float32)
    mask = rng.random(hidden.shape) < 0.3
    values = hidden_states.pack_values(hidden, mask, slots=12)
    assert values.shape == (3, 2, 12)
    np.testing.assert_array_equal(hidden_states.unpack_values(values, mask), hidden * mask)


def test_quantize_round_trips():
    x = np.array([[1.0, -2.5, 0.3333], [0.0, 0.0, 0.0]], dtype=np.float32)
    for dtype, tol in (("float32", 0), ("float16", 1e-3), ("bfloat16", 1e-2)):
        stored, scale = quantize.encode(x, dtype)
        assert scale is None and stored.dtype == np.dtype(quantize.STORAGE_DTYPE[dtype])
        np.testing.assert_allclose(quantize.decode(stored, None, dtype), x, atol=tol)
    bf16 = quantize.decode(*quantize.encode(x, "bfloat16"), "bfloat16")
    np.testing.assert_array_equal(bf16, torch.from_numpy(x).to(torch.bfloat16).float().numpy())
    q, scale = quantize.encode(x, "int8")
    assert q.dtype == np.int8 and q[0].tolist() == [51, -127, 17] and scale[1] == 0
    np.testing.assert_allclose(quantize.decode(q, scale, "int8"), x, atol=2.5 / 127 / 2 + 1e-7)


def test_float16_encode_is_numpys_ieee_cast_bit_for_bit():
    """The stored float16 bytes are numpy's ``astype(float16)`` (the caches before torch's faster
    cast) for every finite, infinite and quiet-NaN float32 in a stride over all 2**32 bit patterns
    (normals, subnormals, overflow to inf, ties to even); a signaling NaN stays NaN (comes back quiet)."""
    bits = np.arange(0, 2**32, 4099, dtype=np.uint64).astype(np.uint32)
    edges = np.array([0x477FEFFF, 0x477FF000, 0x33000000, 0x33000001, 0x80000000, 0x7F800000, 0x7FC00000], np.uint32)
    x = np.concatenate([bits, edges]).view(np.float32)
    stored, _ = quantize.encode(x, "float16")
    with np.errstate(over="ignore"):
        reference = x.astype(np.float16)
    signaling = np.isnan(x) & ((x.view(np.uint32) & 0x00400000) == 0)
    np.testing.assert_array_equal(stored.view(np.uint16)[~signaling], reference.view(np.uint16)[~signaling])
    assert np.isnan(stored[signaling]).all() and signaling.any()


def test_int8_round_trip_on_real_teacher_states():
    """Relative MSE of int8 (per-row absmax) on the bundled MiniLM's hidden states of BBC text."""
    path = models.bundled_teacher_path()
    tokenizer, model = models.load_tokenizer(path), models.load_classifier(path)
    from hsk_cache.data import splits as data

    split = data.load_split(DataConfig(source="bbc-news", split="dev", limit=8))
    examples = Examples.from_dataset(data.tokenize(split, tokenizer, 128), 128, tokenizer.pad_token_id)
    batch = collate(examples, np.arange(8))
    with torch.no_grad():
        states = model(**batch.model_inputs(), output_hidden_states=True).hidden_states
    real = torch.stack(states, 1)[batch.attention_mask.bool()[:, None, :].expand(-1, len(states), -1)].numpy()
    restored = quantize.decode(*quantize.encode(real, "int8"), "int8")
    relative_mse = float(((restored - real) ** 2).mean() / (real**2).mean())
    assert relative_mse <= 1e-3, relative_mse
    assert relative_mse > 0  # it is lossy: the test measures something


def _teacher_batch(tiny_teacher, toy_dir, spec, rows=8):
    tokenizer = models.load_tokenizer(tiny_teacher)
    teacher = models.load_classifier(tiny_teacher, attention=True)
    from hsk_cache.data import splits as data

    split = data.load_split(DataConfig(source=toy_dir, limit=rows))
    examples = Examples.from_dataset(data.tokenize(split, tokenizer, 32), 32, tokenizer.pad_token_id)
    plan = Plan.make(spec, teacher.config, tokenizer, 32)
    return teacher, tokenizer, examples, plan


def test_left_and_random_tokens(tiny_teacher, toy_dir):
    spec = ExtractSpec.parse("last", "left:4")
    teacher, tokenizer, examples, plan = _teacher_batch(tiny_teacher, toy_dir, spec)
    batch = collate(examples, np.arange(8))
    left = plan.select(run_teacher(teacher, batch, plan), batch)["token_index"][:, 0]
    assert left.tolist() == [[0, 1, 2, 3]] * 8
    random_plan = Plan.make(ExtractSpec.parse("last", "random:3", seed=5), teacher.config, tokenizer, 32)
    pick = lambda rows: random_plan.select(
        run_teacher(teacher, collate(examples, rows), random_plan),
        collate(examples, rows),
    )["token_index"][:, 0]
    alone, together = pick(np.array([3])), pick(np.array([7, 3, 1]))
    assert alone.tolist() == together[1:2].tolist()  # per example, not per batch
    sep = tokenizer.sep_token_id
    for row, picked in zip((7, 3, 1), together.tolist()):
        ids = examples.input_ids[row]
        assert len(set(picked)) == 3 and all(0 <= p < examples.lengths[row] and ids[p] != sep for p in picked)


def test_attention_rows_and_value_relation_match_the_live_teacher(tiny_teacher, toy_dir, tmp_path):
    spec = ExtractSpec.parse(
        "last",
        "topk:4",
        knowledge="attention_probs,value_relation,logits",
        dtype="float32",
        attention_layers="1,2",
        value_relation_layer="2",
    )
    out = str(tmp_path / "cache")
    extract.run(
        extract.ExtractConfig(
            teacher=tiny_teacher,
            data=DataConfig(source=toy_dir, max_length=32, limit=8),
            out=out,
            spec=spec,
            batch_size=3,
        )
    )
    reader = CacheReader(out)
    ids, lengths = reader.read("input_ids"), reader.read("lengths")
    model = models.load_classifier(tiny_teacher, attention=True)
    heads = model.config.num_attention_heads
    for row in range(8):
        n = int(lengths[row])
        with torch.no_grad():
            live = model(
                input_ids=torch.tensor(ids[row : row + 1, :n], dtype=torch.long),
                output_hidden_states=True,
                output_attentions=True,
            )
        for i, layer in enumerate((1, 2)):
            query = reader.read("attention_index")[row, i]
            assert (query >= 0).all()
            np.testing.assert_allclose(
                reader.read("attention_probs")[row, i][:, :, :n],
                live.attentions[layer - 1][0][:, query].numpy(),
                rtol=1e-5,
                atol=1e-6,
            )
        # value relation, recomputed by hand from layer 2's value projection of its input states
        values = model.bert.encoder.layer[1].attention.self.value(live.hidden_states[1][0])  # [T, D]
        v = values.view(n, heads, -1).transpose(0, 1)
        expected = torch.softmax(v @ v.transpose(1, 2) / (v.shape[-1] ** 0.5), dim=-1)
        query = reader.read("value_index")[row]
        np.testing.assert_allclose(
            reader.read("value_relation")[row][:, :, :n], expected[:, query].detach().numpy(), rtol=1e-4, atol=1e-6
        )


def test_layer_spec_strategies_and_study_maps():
    assert LayerSpec.parse("uniform:3").resolve(12) == (4, 8, 12)
    assert LayerSpec.parse("top:2").resolve(6) == (5, 6) and LayerSpec.parse("bottom:2").resolve(6) == (1, 2)
    assert layer_map("uniform:3", 3, 6, tuple(range(7))) == {1: 1, 2: 2, 3: 3}  # L_top < L_T: lower layers
    assert layer_map("uniform", 4, 12, tuple(range(13)), keep_top=2) == {3: 9, 4: 12}
