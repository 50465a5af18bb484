"""The cache holds exactly what the teacher computed, in a standard Zarr v3 layout."""

import json

import numpy as np
import pytest
import torch
import zarr

from hsk_cache.config.run import DataConfig
from hsk_cache.extraction import extract
from hsk_cache.knowledge.plan import Plan
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import hub as models
from hsk_cache.store import layout
from hsk_cache.store.info import cache_info
from hsk_cache.store.reader import CacheReader


def test_real_teacher_cache_matches_a_direct_forward(tmp_path):
    """Bundled MiniLM on 6 BBC articles: cached states, tokens and logits equal a plain HF forward."""
    teacher = models.bundled_teacher_path()
    spec = ExtractSpec.parse(layers="0,3,6", tokens="topk:7", dtype="float32")
    data = DataConfig(source="bbc-news", split="dev", max_length=48, limit=6)
    with pytest.raises(
        models.ModelError, match="has 2 classes but .bbc-news. has 5"
    ):  # the raw sentence encoder has no 5-class head
        extract.run(extract.ExtractConfig(teacher=teacher, data=data, out=str(tmp_path / "x"), spec=spec))
    finetuned = tmp_path / "teacher"
    models.save(models.load_classifier(teacher, label_names=tuple("abcde")), models.load_tokenizer(teacher), finetuned)
    out = str(tmp_path / "cache")
    extract.run(extract.ExtractConfig(teacher=str(finetuned), data=data, out=out, spec=spec, batch_size=4))

    reader = CacheReader(out)
    ids, lengths = reader.read("input_ids"), reader.read("lengths")
    model = models.load_classifier(str(finetuned), attention=True)
    sep = models.load_tokenizer(teacher).sep_token_id
    for row in range(6):
        n = int(lengths[row])
        with torch.no_grad():
            out_ = model(
                input_ids=torch.tensor(ids[row : row + 1, :n], dtype=torch.long),
                output_hidden_states=True,
                output_attentions=True,
            )
        np.testing.assert_allclose(reader.read("logits")[row], out_.logits[0].numpy(), rtol=1e-4, atol=1e-5)
        for i, layer in enumerate((0, 3, 6)):
            # reference ranking: [CLS] row of layer max(l,1), mean over heads, [SEP] excluded
            importance = out_.attentions[max(layer, 1) - 1][0, :, 0, :].mean(0).numpy()
            importance[ids[row, :n] == sep] = -np.inf
            expected = np.argsort(-importance, kind="stable")[:7]
            kept = reader.read("token_index")[row, i]
            np.testing.assert_array_equal(kept, expected)
            np.testing.assert_allclose(
                reader.read("hidden_states")[row, i],
                out_.hidden_states[layer][0, expected].numpy(),
                rtol=1e-4,
                atol=1e-4,
            )


def test_layout_is_standard_zarr_v3_with_a_json_manifest(tiny_teacher, toy_dir, tmp_path):
    out = tmp_path / "cache"
    spec = ExtractSpec.parse(layers="all", tokens="topk:50%", dtype="float16")
    extract.run(
        extract.ExtractConfig(
            teacher=tiny_teacher,
            data=DataConfig(source=toy_dir, max_length=32),
            out=str(out),
            spec=spec,
            shard_examples=16,
        )
    )
    meta = json.loads((out / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["node_type"] == "group"
    manifest = meta["attributes"]["hsk_cache"]
    assert manifest["complete"] and manifest["format_version"] == layout.FORMAT_VERSION
    assert manifest["spec"] == {
        "layers": "all",
        "tokens": "topk:50%",
        "dims": "all",
        "knowledge": ["hidden_states", "logits"],
        "dtype": "float16",
        "codec": "none",
        "importance_layer": None,
        "seed": 0,
    }
    assert manifest["teacher"]["weights_sha256"] == models.weights_sha256(tiny_teacher)
    group = zarr.open_group(str(out), mode="r")
    hidden = group["hidden_states"]
    assert hidden.shape == (64, 3, 16, 32) and hidden.dtype == np.float16 and hidden.shards[0] == 16
    assert group["token_index"].shape == (64, 3, 16)
    # percentage K: ceil(50% of each real length) tokens, the rest −1
    kept = (group["token_index"][:] >= 0).sum(-1)
    expected = np.minimum(np.ceil(group["lengths"][:] * 0.5), group["lengths"][:] - 1)  # [SEP] never kept
    np.testing.assert_array_equal(kept, np.repeat(expected[:, None], 3, axis=1))
    assert sorted(group["tokenizer"].array_keys())  # the tokenizer travels with the cache
    info = cache_info(str(out))
    assert info["complete"] and info["bytes_per_example"] > 0
    assert info["full_hidden_bytes_per_example"] == 3 * 32 * 32 * 4


def test_chunking_is_shard_aligned():
    plan = Plan(
        spec=ExtractSpec.parse(layers="last", tokens="left:16"),
        max_length=128,
        kept_tokens=16,
        teacher_layers=1,
        hidden_size=768,
        heads=12,
        classes=2,
        layers=(1,),
    )
    specs = layout.arrays(plan, 5000, token_types=True)
    chunks, shard = layout.chunking(specs, 5000)
    assert all(shard % chunk == 0 for chunk in chunks.values())
    assert chunks["hidden_states"] == min(shard, 512) and chunks["lengths"] == min(shard, 512)  # ≤ N/8
    assert layout.chunking(specs, 5000, shard_examples=64)[1] == 64
