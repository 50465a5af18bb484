"""Tokenizing texts that truncation cuts short: only a prefix of a long text is tokenized where
that gives the ids the whole text would.

A 2,000-character article truncated to 128 tokens needs ~600 of its characters; the tokenizer
reads all of them (truncation comes after encoding), so most of the time spent tokenizing long
documents is thrown away (BBC News at ``max_length`` 128: the prefix is under half the text).

Exactness: with BERT's normalizer (per-character cleaning, lowercasing, accent stripping, spaces
around CJK characters), BERT's pre-tokenizer (splits at whitespace and punctuation) and a
WordPiece model, the tokens of the characters before an ASCII space do not depend on anything
after it, so the tokens of ``text[:cut]`` (``text[cut] == " "``) are the first tokens of
``text``. When the prefix fills ``max_length`` (specials included) its truncated ids are the
text's; when it does not, the whole text is tokenized. Other tokenizers (byte-level BPE,
SentencePiece) always tokenize the whole text.
"""

from __future__ import annotations

import json

CHARS_PER_TOKEN = 6  # prefix characters per token of max_length: BBC News needs at most ~5 (34% of its text)


def prefix_exact(tokenizer) -> bool:
    """Whether ``tokenizer``'s first tokens depend only on the text before a space (module
    docstring): BERT normalizer (or none), BERT pre-tokenizer, WordPiece, right truncation, no
    added token containing whitespace."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "truncation_side", "right") != "right":
        return False
    state = json.loads(backend.to_str())
    normalizer = (state.get("normalizer") or {}).get("type")
    pre_tokenizer = (state.get("pre_tokenizer") or {}).get("type")
    added = [token.get("content", "") for token in state.get("added_tokens") or ()]
    return (
        (state.get("model") or {}).get("type") == "WordPiece"
        and normalizer in (None, "BertNormalizer")
        and pre_tokenizer == "BertPreTokenizer"
        and not any(any(c.isspace() for c in content) for content in added)
    )


def encode_truncated(tokenizer, texts: list[str], max_length: int, exact: bool | None = None, **kwargs) -> dict:
    """``dict(tokenizer(texts, truncation=True, max_length=max_length, **kwargs))``, the same
    lists, tokenizing only a prefix of each text longer than ``CHARS_PER_TOKEN * max_length``
    characters when ``prefix_exact(tokenizer)`` holds (module docstring; ``exact``: its value,
    computed once by a caller encoding many batches, ~14 ms per call). Single texts only (a
    pair's truncation depends on both lengths): call the tokenizer for pairs."""
    call = dict(truncation=True, max_length=max_length, **kwargs)
    if not (prefix_exact(tokenizer) if exact is None else exact):
        return dict(tokenizer(texts, **call))
    limit = CHARS_PER_TOKEN * max_length
    cuts = [_cut(text, limit) for text in texts]
    encoded = dict(tokenizer([text[:cut] for text, cut in zip(texts, cuts)], **call))
    ids = encoded["input_ids"]
    short = [i for i, (text, cut) in enumerate(zip(texts, cuts)) if cut < len(text) and len(ids[i]) < max_length]
    if short:  # the prefix did not fill max_length: the rest of the text is needed
        whole = tokenizer([texts[i] for i in short], **call)
        for name, rows in encoded.items():
            for i, row in zip(short, whole[name]):
                rows[i] = row
    return encoded


def _cut(text: str, limit: int) -> int:
    """The last ASCII space at or before ``limit`` in a text longer than it, else len(text)."""
    if len(text) <= limit:
        return len(text)
    cut = text.rfind(" ", 0, limit + 1)
    return cut if cut > 0 else len(text)
