"""Token classification (word-level tags such as NER): word-piece label alignment and metrics.

Alignment follows transformers' token-classification examples: the first word piece of each word
carries the word's tag, the other pieces and the special tokens carry ``IGNORE`` (−100, which
``torch.nn.functional.cross_entropy`` skips). Predictions are read back at the same first pieces.

Entity-level precision, recall and F1 are seqeval's (Ramshaw & Marcus chunks; CoNLL-2000's
``conlleval`` definitions):

- ``scheme="conlleval"`` (the default, seqeval's default mode): BIO tags read as conlleval does,
  an ``I-X`` after ``O`` or after another type starts an entity;
- ``scheme="IOB2"``: seqeval's strict mode, an entity is ``B-X`` followed by ``I-X``; a stray
  ``I-X`` is no entity.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hsk_cache.errors import ConfigError, DataError, DataNotFoundError

IGNORE = -100  # the label of word pieces that are not a word's first, and of special tokens
SCHEMES = ("conlleval", "IOB2")


def read_conll(path: str | Path) -> tuple[list[list[str]], list[list[str]]]:
    """Sentences of a CoNLL-style file: one ``token<TAB>tag`` (or ``token tag``, the tag last) per
    line, sentences separated by lines of only whitespace (blank, or a lone tab as in WNUT-16),
    ``-DOCSTART-`` lines skipped.

    Returns: (tokens, tags): per sentence, its tokens and its tags (strings).
    Raises: DataNotFoundError; DataError naming the file and line of a line without a tag.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"no CoNLL file at {str(path)!r}")
    tokens, tags, sentence_tokens, sentence_tags = [], [], [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                if sentence_tokens:
                    tokens.append(sentence_tokens)
                    tags.append(sentence_tags)
                sentence_tokens, sentence_tags = [], []
                continue
            if line.startswith("-DOCSTART-"):
                continue
            parts = line.rstrip("\n").split("\t") if "\t" in line else line.split()
            if len(parts) < 2 or not parts[0] or not parts[-1].strip():
                raise DataError(f"{str(path)!r} line {number}: expected 'token<TAB>tag', got {line.rstrip()!r}")
            sentence_tokens.append(parts[0])
            sentence_tags.append(parts[-1].strip())
    if sentence_tokens:
        tokens.append(sentence_tokens)
        tags.append(sentence_tags)
    if not tokens:
        raise DataError(f"{str(path)!r} holds no tagged sentences")
    return tokens, tags


def tag_names(tags: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """The tag set in a fixed order: ``O`` first, then by entity type and B before I (B-LOC,
    I-LOC, B-PER, ...), so the ids do not depend on the order the sentences come in."""
    names = {t for sentence in tags for t in sentence}
    rest = sorted(names - {"O"}, key=lambda t: (t[2:] if t[1:2] == "-" else t, t[:1]))
    return (("O",) if "O" in names else ()) + tuple(rest)


def align_labels(word_ids: Sequence[int | None], word_labels: Sequence[int]) -> list[int]:
    """Per-token labels from per-word labels.

    Args:
        word_ids: for each token, the index of its word or None (special tokens), as a fast
            tokenizer's ``BatchEncoding.word_ids(i)`` gives them (truncation may cut the last words).
        word_labels: the tag id of every word of the example.
    Returns: [T] int: ``word_labels[w]`` at the first piece of word w, ``IGNORE`` elsewhere.
    Raises: DataError when a token points past the words.
    """
    out, previous = [], None
    for w in word_ids:
        if w is None or w == previous:
            out.append(IGNORE)
        else:
            if not 0 <= w < len(word_labels):
                raise DataError(f"token of word {w} but the example has {len(word_labels)} tagged words")
            out.append(int(word_labels[w]))
        previous = w if w is not None else previous
    return out


def word_predictions(token_predictions: Sequence[int], aligned_labels: Sequence[int]) -> list[int]:
    """The predictions at the labelled (first) pieces: one per word that survived truncation.

    Args: token_predictions: [T] predicted tag ids; aligned_labels: [T] from ``align_labels``.
    Returns: the predicted tag ids in word order.
    """
    return [int(p) for p, label in zip(token_predictions, aligned_labels) if label != IGNORE]


def entity_metrics(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], scheme: str = "conlleval"
) -> dict:
    """Entity-level micro precision, recall and F1 over sentences of tag strings.

    Args: gold, predicted: per sentence, its tags (``"B-PER"``, ``"I-PER"``, ``"O"``), the same
        lengths. scheme: ``conlleval`` or ``IOB2`` (module docstring).
    Returns: {"precision", "recall", "f1"} in [0, 1]; 0 where undefined (no entity predicted or gold).
    Raises: ConfigError for an unknown scheme; DataError when the sentences' lengths differ.
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown tag scheme {scheme!r}: use one of {', '.join(SCHEMES)}", field="scheme")
    if len(gold) != len(predicted) or any(len(g) != len(p) for g, p in zip(gold, predicted)):
        raise DataError("gold and predicted tags differ in their number of sentences or of tags in a sentence")
    gold, predicted = [list(s) for s in gold], [list(s) for s in predicted]
    # imported here: seqeval imports scikit-learn and SciPy, ~1.9 s of every hsk process start
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    options = {"mode": "strict", "scheme": IOB2} if scheme == "IOB2" else {}
    return {
        "precision": float(precision_score(gold, predicted, zero_division=0, **options)),
        "recall": float(recall_score(gold, predicted, zero_division=0, **options)),
        "f1": float(f1_score(gold, predicted, zero_division=0, **options)),
    }
