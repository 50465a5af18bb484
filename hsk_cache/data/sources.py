"""Where a training step gets its examples and teacher knowledge, as batch dicts (``knowledge``).

- ``cache.Cache``: a complete cache; never loads the teacher.
- ``OnlineSource``: the live teacher run at every step (the online-distillation baseline), with
  the same selection as extraction (``Plan.select``).
- ``DatasetSource``: examples only (fine-tuning, evaluation, no-distillation baselines).

All hold their examples as ``batching.Examples`` and collate them the same way; each gives
``sampler(batch_size, seed)``, ``fetch(step) -> batch`` and ``loader(batch_size, seed)``.
"""

from __future__ import annotations

import numpy as np

from hsk_cache.config.run import DataConfig
from hsk_cache.data import splits
from hsk_cache.data.loader import Loader, Sampler, Step
from hsk_cache.errors import ConfigError, ModelError
from hsk_cache.knowledge.batch import Examples, collate
from hsk_cache.knowledge.plan import Plan
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models import hub
from hsk_cache.models.teacher import teacher_knowledge
from hsk_cache.tasks import types


def read_examples(data_config: DataConfig, tokenizer, label_names: tuple[str, ...] | None = None):
    """Load and tokenize ``data_config``'s examples: a labelled split (``splits``) or, for a corpus
    (``DataConfig.corpus``), unlabeled text packed into sequences (``corpus``, labels −1).

    Returns: (the ``splits.Split``, or None for a corpus; the tokenized ``datasets.Dataset``;
    its ``Examples``). Raises: DataNotFoundError, DataError.
    """
    if data_config.corpus:
        from hsk_cache.data import corpus

        split, tokenized = None, corpus.load_corpus(data_config, tokenizer, data_config.max_length)
    else:
        split = splits.load_split(data_config, label_names=label_names)
        tokenized = splits.tokenize(split, tokenizer, data_config.max_length, data_config.doc_stride)
    task_type = split.task_type if split is not None else None
    return split, tokenized, Examples.from_dataset(tokenized, data_config.max_length, tokenizer.pad_token_id, task_type)


class DatasetSource:
    """Tokenized examples of one split (or packed sequences of a corpus), no teacher knowledge."""

    stored = plan = None  # no teacher knowledge

    def __init__(self, data_config: DataConfig, tokenizer, label_names: tuple[str, ...] | None = None) -> None:
        self.tokenizer = tokenizer
        self.split, self.tokenized, self.examples = read_examples(data_config, tokenizer, label_names)
        self.label_names = self.split.label_names if self.split is not None else ()

    def __len__(self) -> int:
        return len(self.examples)

    def sampler(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> Sampler:
        """Full-permutation epochs (the order a cache that fits in memory uses too); rank
        ``rank``'s slice of each global batch."""
        return Sampler(len(self), batch_size, seed, rank=rank, world_size=world_size)

    def loader(
        self,
        batch_size: int,
        seed: int = 0,
        *,
        prefetch: int = 1,
        rank: int = 0,
        world_size: int = 1,
        device: str | None = None,
    ) -> Loader:
        """Batches in the full-permutation epoch order of ``sampler``, assembled ``prefetch``
        batches ahead in a background thread (0: inline).

        Args:
            batch_size: the global batch over all ``world_size`` ranks; a multiple of it.
            seed: seeds the epoch order.
            rank, world_size: this process's data-parallel rank and the rank count.
            device: deliver batches on this device (``loader.Loader``: pinned host buffers and
                ``non_blocking`` copies on CUDA); None: where they were made.
        """
        return Loader(self.fetch, self.sampler(batch_size, seed, rank, world_size), prefetch, device)

    def fetch(self, step: Step) -> dict:
        """One ``loader.Step`` of the sampler → its batch dict."""
        return self.batch(step.ids)

    def batch(self, index: np.ndarray) -> dict:
        """Examples ``index`` ([B] int) as a batch dict: input_ids, attention_mask (and
        token_type_ids when the tokenizer makes them) [B, T] int64 trimmed to the longest example,
        labels [B] and example_ids [B]."""
        return collate(self.examples, index).as_dict()


def load_teacher(path: str, data_config: DataConfig, spec: ExtractSpec):
    """The teacher for ``spec`` over ``data_config``: a sequence classifier for a labelled split;
    for a corpus its base encoder, with the masked-LM head when a kind reads it.

    Raises: ModelError (no model, no masked-LM head); ConfigError for logits knowledge over a
    corpus (a corpus has no task: distil ``mlm`` soft targets instead).
    """
    if not data_config.corpus:
        return hub.load_classifier(path, attention=spec.needs_attention)  # its own head (types.of_config)
    check_corpus_knowledge(data_config, spec)
    return hub.load_encoder(path, mlm=spec.needs_mlm_head, attention=spec.needs_attention)


def check_corpus_knowledge(data_config: DataConfig, spec: ExtractSpec) -> None:
    """Raises ConfigError for logits knowledge over a corpus (no task head to give logits)."""
    if data_config.corpus and "logits" in spec.knowledge:
        raise ConfigError(
            f"{data_config.source!r} is an unlabeled corpus: it has no task for logits knowledge; drop logits "
            "from {knowledge} (general distillation distils mlm soft targets, relations, hidden states, attention)",
            field="knowledge",
        )


def check_task(split: splits.Split, teacher_config, what: str = "the teacher") -> None:
    """The teacher's head fits the data: the same task type (``tasks.types.of_config``) and, but
    for regression, as many classes or tags.

    Raises: ModelError naming both and the fix.
    """
    task = types.of_config(teacher_config)
    if task.name != split.task_type:
        raise ModelError(
            f"{what} is a {task.noun} but {split.source!r} holds {split.task_type} data: "
            f"fine-tune a teacher on it first (hsk finetune --task {split.task_type}), or set {{task}} {task.name} "
            "if the data was read as the wrong task",
            field="task",
        )
    if task.labels not in ("score", "span") and len(split.label_names) != teacher_config.num_labels:
        kind = "tags" if task.labels == "tags" else "classes"
        raise ModelError(
            f"{what} has {teacher_config.num_labels} {kind} but {split.source!r} has {len(split.label_names)}: "
            "fine-tune a model on this task first (hsk finetune)"
        )


class OnlineSource(DatasetSource):
    """Runs the teacher on every batch and selects knowledge with ``spec``."""

    def __init__(
        self,
        teacher_path: str,
        data_config: DataConfig,
        spec: ExtractSpec,
        precision: str = "fp32",
        device: str = "cpu",
        teacher=None,
    ) -> None:
        """``teacher``: an already loaded teacher of ``teacher_path`` to share (another source
        over other data, e.g. the dev split of an online run), else it is loaded."""
        spec.tokens.check(data_config.max_length)
        self.teacher = teacher if teacher is not None else load_teacher(teacher_path, data_config, spec).to(device)
        hub.check_max_length(self.teacher.config, data_config.max_length)
        names = None if data_config.corpus else hub.task_label_names(self.teacher)
        super().__init__(data_config, hub.load_tokenizer(teacher_path), names)
        if self.split is not None:
            check_task(self.split, self.teacher.config)
        self.precision = precision
        self.teacher_config = self.teacher.config.to_dict()
        self.plan = self.stored = Plan.make(spec, self.teacher.config, self.tokenizer, data_config.max_length)
        self.examples = self.plan.prepare_examples(self.examples, self.tokenizer)  # static masks
        self.knowledge = spec.knowledge

    def batch(self, index: np.ndarray) -> dict:
        """Examples ``index`` ([B] int) as a batch dict (see ``DatasetSource.batch``) with the
        teacher's knowledge, run now in ``precision`` and selected as extraction would
        (``Plan.select``), on the teacher's device."""
        batch = collate(self.examples, index)
        return {**batch.as_dict(), **teacher_knowledge(self.teacher, batch, self.plan, self.precision)}
