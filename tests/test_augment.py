"""hsk augment: TinyBERT's Algorithm 1 sampling, both candidate paths against independent
references, determinism, resume, pairs, and the output as a data source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from hsk_cache.config.run import DataConfig
from hsk_cache.data import augment
from hsk_cache.data import splits as data
from hsk_cache.data.candidates import STOP_WORDS, Neighbours, Words, replaceable
from hsk_cache.errors import DataError
from hsk_cache.models import hub as models
from tests.conftest import fails, write_rows

SENTENCES = [
    ("a gorgeous , witty , seductive movie .", "positive"),
    ("the plot is nothing but boilerplate clichés from start to finish", "negative"),
    ("an utterly charming and hilarious film that reminded me of my childhood", "positive"),
    ("it 's a bore and a waste of two talented actors", "negative"),
    ("remarkable performances lift this otherwise predictable thriller", "positive"),
    ("the screenplay never rises above its premise", "negative"),
    ("uncompromisingly honest storytelling", "positive"),
]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("aug_source")
    write_rows(out / "train.csv", [{"text": t, "label": y} for t, y in SENTENCES])
    write_rows(out / "dev.csv", [{"text": t, "label": y} for t, y in SENTENCES[:2]])
    return str(out)


def config(source: str, out: Path, **options) -> augment.AugmentConfig:
    return augment.AugmentConfig(data=DataConfig(source=source), out=str(out), **options)


def table(out: Path) -> list[dict]:
    """The augmented rows as written, with original_id and variant."""
    return pq.read_table(sorted((out / "train").glob("part-*.parquet"))).to_pylist()


def test_sampling_follows_algorithm_1():
    words = ["the", "film", "is", "great"]
    options = {1: ("movie", "picture"), 3: ("superb",)}
    side = ("The film is great", words, options)
    always = augment.sample_variants([side], copies=10, p=1.0, rng=np.random.default_rng(0))
    # p = 1 replaces every word that has candidates; "great" has one, so at most 2 distinct variants
    assert {v[0] for v in always} <= {"the movie is superb", "the picture is superb"} and len(always) == 2
    some = augment.sample_variants([side], copies=200, p=0.4, rng=np.random.default_rng(1))
    assert len(some) == len(set(some)) and ("The film is great",) not in some  # distinct, never the original
    for (text,) in some:
        new = text.split()
        assert new[0] == "the" and new[2] == "is"  # words without candidates never change
        assert new[1] in ("film", "movie", "picture") and new[3] in ("great", "superb")
    assert len(some) == 5  # all 2·3 − 1 combinations show up in 200 tries
    again = augment.sample_variants([side], copies=200, p=0.4, rng=np.random.default_rng(1))
    assert again == some
    pair = augment.sample_variants([side, "kept verbatim"], copies=20, p=0.5, rng=np.random.default_rng(2))
    assert pair and all(v[1] == "kept verbatim" for v in pair)


def test_neighbour_path_with_teacher_embeddings(source, tokenizer, tmp_path):
    out = tmp_path / "aug"
    result = augment.run(config(source, out, copies=8, shard_examples=3))
    assert result.word_paths["mlm"] == 0 and result.word_paths["neighbours"] > 0
    assert result.neighbours_from.startswith("input embeddings")
    got = table(out)
    assert result.rows == len(got) and result.examples == len(SENTENCES)
    # independent reference for the neighbours: cosine similarity over the embedding matrix by torch
    from transformers import AutoModel

    weight = AutoModel.from_pretrained(models.bundled_teacher_path()).get_input_embeddings().weight.detach()
    vocab = tokenizer.convert_ids_to_tokens(list(range(weight.shape[0])))
    keep = [i for i, t in enumerate(vocab) if t.isalpha() and t not in STOP_WORDS]
    unit = torch.nn.functional.normalize(weight[keep], dim=-1)

    def nearest(word):
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        sims = unit @ torch.nn.functional.normalize(weight[ids].mean(0), dim=0)
        ranked = [vocab[keep[i]] for i in sims.argsort(descending=True)[:16].tolist()]
        return [w for w in ranked if w != word][:15]

    split = Words(tokenizer)
    by_id = {}
    for row in got:
        by_id.setdefault(row["original_id"], []).append(row)
    for original_id, variants in by_id.items():
        text, label = SENTENCES[original_id]
        assert variants[0]["variant"] == 0 and variants[0]["text"] == text  # the original, verbatim, first
        assert all(r["label"] == variants[0]["label"] for r in variants)  # labels copied
        texts = [r["text"] for r in variants]
        assert len(set(texts)) == len(texts) and 2 <= len(texts) <= 9  # duplicates dropped
        original = split(text)
        for row in variants[1:]:
            new = row["text"].split()
            assert len(new) == len(original)
            for old, word in zip(original, new):
                assert word == old or (replaceable(old) and word in nearest(old)), (old, word)
    loaded = data.load_split(DataConfig(source=str(out)))  # the output as a data source
    names = loaded.label_names
    assert names == ("negative", "positive") and loaded.dataset["text"] == [r["text"] for r in got]
    assert [r["label"] for r in got if r["variant"] == 0] == [names.index(y) for _, y in SENTENCES]
    dev = data.load_split(DataConfig(source=str(out), split="dev")).dataset.to_list()
    assert [r["text"] for r in dev] == [t for t, _ in SENTENCES[:2]]


def test_deterministic_resumable_and_shard_independent(source, tmp_path):
    whole = tmp_path / "whole"
    augment.run(config(source, whole, copies=6, shard_examples=100, seed=3))

    class Kill:
        def __init__(self, *_):
            self.updates = 0

        def update(self, n):
            self.updates += 1
            if self.updates == 2:
                raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        augment.run(config(source, cut, copies=6, shard_examples=2, seed=3), progress=Kill)
    with pytest.raises(DataError, match="unfinished augmentation"):
        data.load_split(DataConfig(source=str(cut)))
    assert len(list((cut / "train").glob("part-*"))) == 2
    resumed = augment.run(config(source, cut, copies=6, shard_examples=2, seed=3))
    assert (resumed.shards_skipped, resumed.shards_written) == (2, 2)
    assert table(cut) == table(whole)  # same rows whatever the shard size and interruptions
    (cut / "train" / "part-00001.parquet").write_bytes(b"PAR1 damaged")
    again = augment.run(config(source, cut, copies=6, shard_examples=2, seed=3))
    assert again.shards_written == 1 and table(cut) == table(whole)
    other = tmp_path / "other"
    augment.run(config(source, other, copies=6, shard_examples=100, seed=4))
    assert table(other) != table(whole)


def test_sentence_pairs(tmp_path):
    pairs = [
        {"sentence1": f"the {a} cat sat on the {b} mat", "sentence2": f"a {b} dog slept near the {a} door", "label": y}
        for a, b, y in [("black", "red", "yes"), ("small", "green", "no"), ("happy", "old", "yes")]
    ]
    file = write_rows(tmp_path / "pairs.csv", pairs)
    for side, changes in (("first", (True, False)), ("second", (False, True)), ("both", (True, True))):
        out = tmp_path / side
        augment.run(config(str(file), out, copies=10, pair_side=side))
        got = table(out)
        for column, may_change in zip(("text", "text_pair"), changes):
            source_column = "sentence1" if column == "text" else "sentence2"
            changed = any(r[column] != pairs[r["original_id"]][source_column] for r in got)
            assert changed == may_change, (side, column)
        assert all(r["label"] == ["no", "yes"].index(pairs[r["original_id"]]["label"]) for r in got)
        assert not (out / "dev.parquet").exists()  # a single file has no dev split to copy


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory, tokenizer) -> str:
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    out = tmp_path_factory.mktemp("tiny_mlm")
    models.save(BertForMaskedLM(config).eval(), tokenizer, out)
    return str(out)


def test_mlm_path_with_a_tiny_random_masked_lm(source, tiny_mlm, tokenizer, tmp_path):
    out = tmp_path / "mlm"
    result = augment.run(config(source, out, copies=10, mlm=tiny_mlm, candidates=5, batch_size=7))
    assert result.word_paths["mlm"] > 0 and result.word_paths["neighbours"] > 0  # "clichés" etc. are several pieces
    from transformers import AutoModelForMaskedLM

    mlm = AutoModelForMaskedLM.from_pretrained(tiny_mlm).eval()
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    split = Words(tokenizer)
    special = set(tokenizer.all_special_ids)
    allowed = torch.tensor([replaceable(t) and i not in special for i, t in enumerate(vocab)])
    checked = 0
    for row in table(out):
        if row["variant"] == 0:
            continue
        original = split(SENTENCES[row["original_id"]][0])
        for position, (old, word) in enumerate(zip(original, row["text"].split())):
            pieces = tokenizer.tokenize(old)
            if word == old or len(pieces) != 1:
                continue
            # reference: mask the word in the original sentence, one sentence per forward pass
            ids = tokenizer(original, is_split_into_words=True)
            masked = torch.tensor([ids["input_ids"]])
            at = ids.word_ids().index(position)
            masked[0, at] = tokenizer.mask_token_id
            with torch.no_grad():
                scores = mlm(input_ids=masked).logits[0, at]
            scores[~allowed] = -torch.inf
            scores[tokenizer.convert_tokens_to_ids(old)] = -torch.inf  # never the word itself
            assert word in [vocab[i] for i in scores.topk(5).indices.tolist()], (old, word)
            checked += 1
    assert checked > 10


def test_vectors_file_and_errors(source, tiny_teacher, tmp_path, capsys):
    vectors = tmp_path / "glove.txt"
    vectors.write_text("3 2\nmovie 1 0\nfilm 0.9 0.1\npicture 0.8 0.3\n")
    space = Neighbours.from_vectors_file(str(vectors), k=2)
    assert space.nearest("movie") == ("film", "picture") and space.nearest("unknown") == ()
    out = tmp_path / "out"
    fails(capsys, ["augment", "--data", source, "--out", str(out), "--p", "0"], "--p 0.0")
    fails(capsys, ["augment", "--data", source, "--out", str(out), "--vectors", "nope.txt"], "nope.txt")
    # a sequence classifier has no masked-LM head: transformers would initialise a random one
    fails(capsys, ["augment", "--data", source, "--out", str(out), "--mlm", tiny_teacher], "has no masked-LM head",
          "--mlm", "drop --mlm")  # fmt: skip
    bad = tmp_path / "bad.txt"
    bad.write_text("movie 1 0\nfilm x y\n")
    fails(capsys, ["augment", "--data", source, "--out", str(out), "--vectors", str(bad)], "line 2")
    assert not out.exists()  # nothing written by a refused run
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    fails(capsys, ["augment", "--data", source, "--out", str(busy)], "not empty")
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    argv = ["augment", "--data", source, "--out", str(out), "--copies", "2", "--vectors", str(vectors)]
    from hsk_cache.cli import main

    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "no --mlm: every word took the nearest-neighbour path" in printed
    manifest = json.loads((out / data.AUGMENT_MANIFEST).read_text())
    assert manifest["complete"] and manifest["rows"] == len(table(out))
    cache = tmp_path / "cache"  # the output is a data source for extract (and train --online, finetune)
    assert main(["extract", "--teacher", tiny_teacher, "--data", str(out), "--out", str(cache)]) == 0
    from hsk_cache.store.reader import CacheReader

    assert CacheReader(str(cache)).manifest.num_examples == manifest["rows"]
    fails(capsys, [*argv[:-4], "--copies", "3"], "different settings", "--overwrite")
    assert main([*argv[:-4], "--copies", "3", "--overwrite"]) == 0
    fails(capsys, ["augment", "--data", source, "--out", str(tmp_path / "x"), "--pair-side", "first"], "one text")
