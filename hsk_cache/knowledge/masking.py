"""Static masking for masked-LM knowledge: BERT's 15 % / 80-10-10 corruption, fixed per sequence.

Source: BERT (Devlin et al. 2019, §3.1 "Task #1: Masked LM" and Appendix A.1): 15 % of the
tokens are chosen; of those, 80 % become [MASK], 10 % a random token and 10 % stay unchanged.
DistilBERT (Sanh et al. 2019, §3) distils the teacher's masked-LM distribution at those
positions. The masks here are *static* (fixed once, as in the original BERT data pipeline,
RoBERTa §4.1's "static masking"), so the teacher's distribution can be cached: each sequence's
masks depend only on (``seed``, its ``example_id``) and its own tokens, never on its batch, its
order, the rank or the corpus size.

Choices, per sequence of n_eligible real non-special tokens:

- n = max(1, ⌊probability · n_eligible + ½⌋) positions (0 when nothing is eligible), chosen
  uniformly without replacement and sorted. (DistilBERT's ``distiller.py`` draws
  ⌈0.15 · Σ lengths⌉ positions per *batch*, weighted by token frequency with ``mlm_smoothing``;
  a per-sequence count is what makes the masks independent of the batch.)
- Never masked: every special token of the tokenizer ([CLS], [SEP], [PAD], [MASK], [UNK], BOS,
  EOS, ``all_special_ids``). [UNK] is excluded as DistilBERT's ``train.py`` does (it zeroes the
  masking probability of every special token, UNK included): predicting [UNK] teaches nothing.
- A random replacement is uniform over the vocabulary *without* the special ids (BERT's and
  DistilBERT's draw over the whole vocabulary; excluding specials keeps [CLS]/[SEP]/[PAD] out of
  the text). It may equal the original token, as in BERT.
- P = ``slots(probability, T)``: the largest n any sequence of T tokens can get; every
  sequence's positions are padded to P with −1, so the arrays have a fixed width.

| array         | shape  | dtype | content                                            |
|---------------|--------|-------|----------------------------------------------------|
| input_ids     | [N, T] | int32 | the masked token ids (what teacher and student see) |
| mlm_positions | [N, P] | int16 | masked positions, ascending, −1 = none              |
| mlm_labels    | [N, P] | int32 | the original ids at those positions, 0 at −1        |
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hsk_cache.errors import ConfigError

MASK_FRACTION = 0.8  # of the chosen positions: → [MASK]
RANDOM_FRACTION = 0.1  # → a random token; the remaining 0.1 keep their token
_SEED_MODULUS = 2**64  # np.random.SeedSequence takes non-negative entropy words


@dataclass(frozen=True)
class MaskTokens:
    """The token ids static masking needs.

    Attributes:
        mask_id: the [MASK] id. vocab_size: V, ids are 0..V−1.
        special_ids: ids never chosen for masking and never drawn as random replacements
            (sorted, the mask id among them).
    """

    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]

    @classmethod
    def of(cls, tokenizer) -> MaskTokens:
        """From a transformers tokenizer: its mask id, ``len(tokenizer)`` and its special ids
        (cls, sep, pad, mask, unk, bos, eos and ``all_special_ids``).

        Raises: ConfigError (field ``knowledge``) for a tokenizer without a mask token.
        """
        mask_id = getattr(tokenizer, "mask_token_id", None)
        if mask_id is None:
            raise ConfigError(
                f"{type(tokenizer).__name__} has no mask token: {{knowledge}} mlm needs a masked-LM teacher "
                "and its tokenizer (BERT, RoBERTa, DistilBERT, …)",
                field="knowledge",
                value="mlm",
            )
        named = (
            getattr(tokenizer, f"{name}_token_id", None) for name in ("cls", "sep", "pad", "mask", "unk", "bos", "eos")
        )
        special = {int(i) for i in (*named, *getattr(tokenizer, "all_special_ids", ())) if i is not None}
        return cls(int(mask_id), len(tokenizer), tuple(sorted(special)))


def check_probability(probability: float) -> float:
    """``probability`` when it is in (0, 1). Raises: ConfigError (field ``mlm_probability``)."""
    try:
        value = float(probability)
    except (TypeError, ValueError):
        value = math.nan
    if not 0 < value < 1:
        raise ConfigError(
            f"{{mlm_probability}} {probability!r}: use a masking probability in (0, 1), e.g. 0.15",
            field="mlm_probability",
            value=probability,
        )
    return value


def count(probability: float, eligible: int) -> int:
    """Positions masked in a sequence of ``eligible`` maskable tokens: max(1, ⌊p·n + ½⌋), at most
    ``eligible`` (0 when nothing is eligible)."""
    if eligible <= 0:
        return 0
    return min(eligible, max(1, math.floor(probability * eligible + 0.5)))


def slots(probability: float, max_length: int) -> int:
    """P: the most positions any sequence of ``max_length`` tokens can get (``count`` is
    non-decreasing in the eligible tokens, and at most all T are eligible)."""
    return max(1, count(probability, max_length))


def mask_examples(
    examples, tokens: MaskTokens, probability: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Statically mask every sequence of ``examples`` (module docstring).

    Args:
        examples: ``knowledge.batch.Examples`` (input_ids [N, T] int, lengths [N], example_ids [N]).
        tokens: the ``MaskTokens`` of the tokenizer. probability: the masking rate, in (0, 1).
        seed: the spec's seed; sequence i draws from ``np.random.default_rng([seed, example_ids[i]])``.
    Returns: (input_ids [N, T] int32 masked, mlm_positions [N, P] int16 ascending with −1
        padding, mlm_labels [N, P] int32 the original ids, 0 at −1), P = ``slots(probability, T)``.
    Raises: ConfigError (field ``mlm_probability``) for a probability outside (0, 1); (field
        ``knowledge``) when the vocabulary has no non-special token to draw.
    """
    probability = check_probability(probability)
    input_ids = np.asarray(examples.input_ids)
    n, t = input_ids.shape
    width = slots(probability, t)
    special = np.asarray(tokens.special_ids, dtype=np.int64)
    candidates = np.setdiff1d(np.arange(tokens.vocab_size, dtype=np.int64), special)
    if len(candidates) == 0:
        raise ConfigError(
            f"the vocabulary of {tokens.vocab_size} ids is all special tokens: {{knowledge}} mlm has no random "
            "replacement to draw",
            field="knowledge",
            value="mlm",
        )
    lengths = np.asarray(examples.lengths, dtype=np.int64)
    maskable = (np.arange(t)[None, :] < lengths[:, None]) & ~np.isin(input_ids, special)
    masked = input_ids.astype(np.int32, copy=True)
    positions = np.full((n, width), -1, dtype=np.int16)
    labels = np.zeros((n, width), dtype=np.int32)
    for i in range(n):
        eligible = np.flatnonzero(maskable[i])
        chosen_count = count(probability, len(eligible))
        if chosen_count == 0:
            continue
        rng = np.random.default_rng([int(seed) % _SEED_MODULUS, int(examples.example_ids[i]) % _SEED_MODULUS])
        chosen = np.sort(rng.choice(eligible, chosen_count, replace=False))
        action = rng.random(chosen_count)
        replacement = candidates[rng.integers(0, len(candidates), chosen_count)]
        original = input_ids[i, chosen]
        new = np.where(
            action < MASK_FRACTION,
            tokens.mask_id,
            np.where(action < MASK_FRACTION + RANDOM_FRACTION, replacement, original),
        )
        masked[i, chosen] = new
        positions[i, :chosen_count] = chosen
        labels[i, :chosen_count] = original
    return masked, positions, labels
