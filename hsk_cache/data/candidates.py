"""Replacement candidates for TinyBERT's data augmentation (Jiao et al., 2020, §3.3, Algorithm 1):
a masked language model's top predictions for words of one word piece, nearest neighbours in a
word-embedding space for the others.

- ``Words``: the words of a text as the tokenizer's own normalizer and pre-tokenizer see them
  (BERT: lowercased for uncased models, split on whitespace and punctuation), and which of them may
  be replaced (alphabetic, not a stop word).
- ``MaskedLM``: the top-k predictions at a masked position, many sentences per forward pass.
- ``Neighbours``: the k most cosine-similar words, from a GloVe/word2vec text file
  (``from_vectors_file``) or from a model's input-embedding matrix (``from_model_embeddings``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hsk_cache.errors import ConfigError, DataError, DataNotFoundError, ModelError
from hsk_cache.models import families, hub

log = logging.getLogger(__name__)

# NLTK's English stop-word list (nltk.corpus.stopwords, 179 words), as TinyBERT's released
# data_augmentation.py uses: these words are never replaced.
STOP_WORDS = frozenset(
    """i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself
    yourselves he him his himself she she's her hers herself it it's its itself they them their theirs
    themselves what which who whom this that that'll these those am is are was were be been being have
    has had having do does did doing a an the and but if or because as until while of at by for with
    about against between into through during before after above below to from up down in out on off
    over under again further then once here there when where why how all any both each few more most
    other some such no nor not only own same so than too very s t can will just don don't should
    should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't
    hasn hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't
    shouldn shouldn't wasn wasn't weren weren't won won't wouldn wouldn't""".split()
)


def replaceable(word: str) -> bool:
    """True for a word augmentation may replace: alphabetic and not in ``STOP_WORDS``."""
    return word.isalpha() and word.lower() not in STOP_WORDS


def whole_word(token: str) -> bool:
    """True for a vocabulary entry offered as a candidate: a replaceable word on its own (not a
    ``##`` continuation, a special token, a number, punctuation or a stop word)."""
    return replaceable(token)


class Words:
    """Splits text into words with a fast tokenizer's normalizer and pre-tokenizer.

    Raises: ConfigError when the tokenizer has no fast (Rust) backend.
    """

    def __init__(self, tokenizer) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ConfigError(
                f"augmentation needs a fast tokenizer; {type(tokenizer).__name__} has none: "
                "use a model with a tokenizer.json"
            )
        self.normalizer, self.pre_tokenizer = backend.normalizer, backend.pre_tokenizer

    def __call__(self, text: str) -> list[str]:
        normalized = self.normalizer.normalize_str(text) if self.normalizer else text
        pieces = self.pre_tokenizer.pre_tokenize_str(normalized) if self.pre_tokenizer else [(normalized, (0, 0))]
        words = [normalized[start:end].strip() if end else piece for piece, (start, end) in pieces]
        return [w for w in words if w]


@dataclass(frozen=True)
class Slot:
    """One replaceable word of one text: ``text`` indexes the batch, ``word`` the text's words."""

    text: int
    word: int


class MaskedLM:
    """Top-k masked-LM predictions for words of a single word piece (TinyBERT's first path).

    Each job masks one word of its sentence; jobs are sorted by length and run ``batch_size`` at
    a time, so a batch of texts always runs in the same batches (deterministic for a given input).

    Raises: ModelError when ``path`` holds no masked LM.
    """

    def __init__(self, path: str, k: int, batch_size: int = 64, precision: str = "fp32", device: str = "cpu") -> None:
        self.path, self.k, self.batch_size, self.precision, self.device = path, k, batch_size, precision, device
        self.tokenizer = hub.load_tokenizer(path)
        if self.tokenizer.mask_token_id is None:
            raise ConfigError(
                f"{{mlm}} {path!r}: its tokenizer has no mask token; give a masked language model",
                field="mlm",
                value=path,
            )
        try:  # hub.load_encoder refuses a checkpoint without its masked-LM head (a random one predicts noise)
            self.model = hub.load_encoder(path, mlm=True).to(device)
        except ModelError as err:
            if "has no masked-LM head" not in str(err):
                raise
            raise ConfigError(
                f"{{mlm}} {path!r} has no masked-LM head ({str(err).split('(', 1)[1].split(')')[0]}): its candidates "
                "would come from a random head; give a masked language model, or drop {mlm} for the "
                "nearest-neighbour path",
                field="mlm",
                value=path,
            ) from None
        vocab = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        special = set(self.tokenizer.all_special_ids)
        allowed = [whole_word(t) and i not in special for i, t in enumerate(vocab)]
        size = self.model.get_output_embeddings().weight.shape[0]
        self.vocab = vocab
        self.blocked = ~torch.tensor((allowed + [False] * size)[:size], device=device)  # [V] bool
        self.max_length = min(families.max_positions(self.model.config), 512)

    def candidates(self, texts: list[list[str]], slots: list[Slot]) -> tuple[dict[Slot, tuple[str, ...]], list[Slot]]:
        """Predict candidates for every slot whose word is one word piece.

        Args:
            texts: each text's words (``Words``).
            slots: the replaceable words.
        Returns:
            (slot → up to k candidate words, best first; the slots that are several pieces or
            were cut by the model's length limit, for the neighbour path).
        """
        encoded = [
            self.tokenizer(words, is_split_into_words=True, truncation=True, max_length=self.max_length)
            for words in texts
        ]
        jobs, rest = [], []
        for slot in slots:
            ids = encoded[slot.text]["input_ids"]
            pieces = [j for j, w in enumerate(encoded[slot.text].word_ids()) if w == slot.word]
            (jobs if len(pieces) == 1 else rest).append((slot, ids, pieces[0] if pieces else -1))
        jobs.sort(key=lambda job: (len(job[1]), job[0].text, job[0].word))
        found = {}
        for start in range(0, len(jobs), self.batch_size):
            found.update(self._predict(jobs[start : start + self.batch_size]))
        return found, [slot for slot, _, _ in rest]

    @torch.inference_mode()
    def _predict(self, jobs) -> dict[Slot, tuple[str, ...]]:
        from hsk_cache.models.teacher import autocast

        width = max(len(ids) for _, ids, _ in jobs)
        input_ids = torch.full((len(jobs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, (_, ids, _) in enumerate(jobs):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        rows = torch.arange(len(jobs))
        positions = torch.tensor([position for _, _, position in jobs])
        original = input_ids[rows, positions].clone()
        input_ids[rows, positions] = self.tokenizer.mask_token_id
        with autocast(self.precision, self.device.split(":")[0]):
            logits = self.model(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
            ).logits
        rows, positions, original = rows.to(self.device), positions.to(self.device), original.to(self.device)
        scores = logits[rows, positions].float()  # [n, V]
        scores[:, self.blocked] = -torch.inf
        scores[rows, original] = -torch.inf  # never the word itself
        top = scores.topk(self.k, dim=-1)
        return {
            slot: tuple(self.vocab[i] for i, s in zip(ids, values) if s > -torch.inf)
            for (slot, _, _), ids, values in zip(jobs, top.indices.tolist(), top.values.tolist())
        }


class Neighbours:
    """The k nearest words by cosine similarity (TinyBERT's path for words of several pieces,
    with GloVe there).

    Args:
        words: the candidate vocabulary, W entries.
        vectors: [W, D] float32, row i the vector of ``words[i]``.
        query: word → its [D] vector, or None when the space has no vector for it.
        k: neighbours per word.
    Each word's neighbours are computed alone (one matrix-vector product), so they never depend
    on which other words came in the same batch; they are remembered for the whole run.
    """

    def __init__(self, words: list[str], vectors: np.ndarray, query, k: int, source: str) -> None:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        self.unit = vectors / np.maximum(norms, 1e-12)  # [W, D] rows of length 1
        self.words, self.query, self.k, self.source = words, query, k, source
        self.known: dict[str, tuple[str, ...]] = {}

    def nearest(self, word: str) -> tuple[str, ...]:
        """Up to k words nearest to ``word``, most similar first; () when the space lacks it."""
        if word not in self.known:
            self.known[word] = self._search(word)
        return self.known[word]

    def _search(self, word: str) -> tuple[str, ...]:
        vector = self.query(word)
        if vector is None or not np.any(vector):
            return ()
        similarity = self.unit @ (vector / np.linalg.norm(vector)).astype(np.float32)  # [W]
        take = min(self.k + 1, len(self.words))
        best = np.argpartition(-similarity, take - 1)[:take]
        best = best[np.lexsort((best, -similarity[best]))]  # by similarity, ties by index
        return tuple(self.words[i] for i in best if self.words[i] != word)[: self.k]

    @classmethod
    def from_vectors_file(cls, path: str, k: int) -> Neighbours:
        """Read a GloVe or word2vec text file (``word v1 … vD`` per line; word2vec's ``N D``
        header line is skipped); only alphabetic words are kept.

        Raises: DataNotFoundError (no such file), DataError (a line that is not a word and D numbers).
        """
        file = Path(path).expanduser()
        if not file.is_file():
            raise DataNotFoundError(
                f"{{vectors}} {path!r} does not exist: give a GloVe or word2vec text file, "
                "or leave {vectors} out to use the model's input embeddings",
                field="vectors",
                value=path,
            )
        words, rows, dim = [], [], None
        with open(file, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                parts = line.rstrip("\n").rstrip().split(" ")
                if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    continue  # word2vec header: count and width
                dim = dim or len(parts) - 1
                if dim < 1 or len(parts) < dim + 1:
                    raise DataError(
                        f"{path!r} line {number} is not a word and {dim} numbers: give a GloVe or word2vec "
                        "text file (binary word2vec files are not read)"
                    )
                word = " ".join(parts[:-dim])
                if word.isalpha():
                    try:
                        rows.append(np.asarray(parts[-dim:], dtype=np.float32))
                    except ValueError:
                        raise DataError(
                            f"{path!r} line {number} has a value that is not a number: check the file"
                        ) from None
                    words.append(word)
        if not words:
            raise DataError(f"{path!r} holds no vectors for alphabetic words: check the file")
        index = {w: i for i, w in enumerate(words)}
        matrix = np.stack(rows)

        def query(word: str):
            i = index.get(word, index.get(word.lower()))
            return None if i is None else matrix[i]

        log.info("read %d word vectors of width %d from %s", len(words), matrix.shape[1], path)
        return cls(words, matrix, query, k, f"vectors file {path}")

    @classmethod
    def from_model_embeddings(cls, path: str, tokenizer, k: int) -> Neighbours:
        """Use a model's input-embedding matrix in place of GloVe: the vocabulary is its whole-word
        entries; a word of several pieces is the mean of its pieces' rows; a word the tokenizer
        maps to the unknown token has no neighbours.

        Raises: ModelError when ``path`` holds no model.
        """
        from transformers import AutoModel

        try:
            weight = AutoModel.from_pretrained(hub.resolve(path)).get_input_embeddings().weight
        except Exception as err:
            raise hub.load_error(hub.resolve(path), err, "model") from None
        embeddings = weight.detach().float().numpy()  # [V, D]
        vocab = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), embeddings.shape[0]))))
        special = set(tokenizer.all_special_ids)
        keep = [i for i, token in enumerate(vocab) if whole_word(token) and i not in special]
        unknown = tokenizer.unk_token_id

        def query(word: str):
            ids = tokenizer(word, add_special_tokens=False)["input_ids"]
            if not ids or unknown in ids:
                return None
            return embeddings[ids].mean(axis=0)

        return cls([vocab[i] for i in keep], embeddings[keep], query, k, f"input embeddings of {path}")
