"""Prefix tokenization (data.truncation) gives exactly the ids of tokenizing the whole text."""

from __future__ import annotations

import random

import pytest

from hsk_cache.config.run import DataConfig
from hsk_cache.data import splits, truncation
from hsk_cache.models import hub

PIECES = [
    "word",
    "Zürich",
    "naïve",
    "e\u0301t\u00e9",
    "日本語テキスト",
    "don't",
    "U.S.",
    "£3.5bn",
    "[MASK]",
    "[SEP]",
    "x" * 120,
    "\t",
    "\n",
    "  ",
    "---",
    "🙂🙂",
    "ＡＢＣ",
    "a\u00a0b",
    "\u200bz",
    "ﬁne",
    "İstanbul",
    "ß",
]


def full(tokenizer, texts, max_length):
    return dict(tokenizer(texts, truncation=True, max_length=max_length, return_attention_mask=False))


@pytest.fixture(scope="module")
def tokenizer():
    return hub.load_tokenizer(hub.BUNDLED_TEACHER)


def test_the_bundled_wordpiece_tokenizer_is_prefix_exact(tokenizer):
    assert truncation.prefix_exact(tokenizer)


@pytest.mark.parametrize("max_length", [16, 128, 512])
def test_bbc_news_ids_are_those_of_the_whole_texts(tokenizer, max_length):
    texts = list(splits.load_split(DataConfig(source="bbc-news", split="dev")).dataset["text"])
    limit = truncation.CHARS_PER_TOKEN * max_length
    assert sum(len(t) > limit for t in texts) > 50  # the prefix path is taken
    got = truncation.encode_truncated(tokenizer, texts, max_length, return_attention_mask=False)
    assert got == full(tokenizer, texts, max_length)


def test_generated_texts_around_the_cut(tokenizer):
    rng = random.Random(0)
    max_length = 12
    limit = truncation.CHARS_PER_TOKEN * max_length
    texts = []
    for _ in range(400):
        parts = [rng.choice(PIECES) for _ in range(rng.randint(1, 60))]
        text = "".join(p + rng.choice([" ", "", " ", ",", "  "]) for p in parts)
        texts.append(text)
    # spaces exactly at, before and after the limit; no space at all; only spaces after the cut
    texts += ["a" * (limit - 1) + " b c", "a" * limit + " b", " " * limit + "word " * 20, "w" * (3 * limit)]
    texts += ["ab " * (limit // 3) + "\u0301tail " * 30, "word " * (limit // 5) + " " * 200 + "end"]
    texts += ["x " * 5 + " " * (2 * limit) + "late words " * 10]  # the prefix holds too few tokens
    got = truncation.encode_truncated(tokenizer, texts, max_length, return_attention_mask=False)
    assert got == full(tokenizer, texts, max_length)


def test_other_tokenizers_tokenize_the_whole_text(tokenizer):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, " ": 2, "<unk>": 3}, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel()
    bpe = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    assert not truncation.prefix_exact(bpe)
    texts = ["ab " * 300, "b"]
    assert truncation.encode_truncated(bpe, texts, 8) == dict(bpe(texts, truncation=True, max_length=8))
    left = hub.load_tokenizer(hub.BUNDLED_TEACHER)
    left.truncation_side = "left"
    assert not truncation.prefix_exact(left)
    texts = ["first words " * 100 + "last words"]
    assert truncation.encode_truncated(left, texts, 8) == dict(left(texts, truncation=True, max_length=8))
