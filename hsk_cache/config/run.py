"""Run settings shared by the commands: data, training stages, devices and precisions, the
checkpoint interval and storage options. Frozen, validated at construction."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

from hsk_cache.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")  # fp16 autocast (with loss scaling when training) on CUDA only


EVAL_METRICS = (
    "accuracy",
    "mcc",
    "pearson",
    "spearman",
    "f1",
    "micro_f1",
    "macro_f1",
    "exact_match",
    "loss",
)  # loss: general distillation's dev loss
DATA_FORMATS = ("csv", "tsv", "json", "parquet", "conll", "squad", "text")  # text: an unlabeled corpus
TASK_TYPES = (
    "classification",
    "regression",
    "token_classification",
    "multi_label_classification",
    "question_answering",
)  # tasks.types.TASK_TYPES' names


DEFAULT_SAVE_EVERY = "5min"


_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where examples come from and how they are tokenized.

    source: ``bbc-news``, a GLUE task directory, a CSV/TSV/JSONL/Parquet file or a directory of
    ``<split>.<ext>`` files, or a Hugging Face hub dataset name. text_columns: one column, or two for
    sentence pairs; None picks the source's default. limit: keep only the first N examples.
    corpus: unlabeled text packed into sequences of ``max_length`` tokens (general distillation,
    ``data.corpus``); set by itself for ``wikitext-2`` and ``.txt`` / ``.txt.gz`` sources unless
    ``format`` says otherwise. task_type: ``classification``, ``regression``,
    ``token_classification`` or ``multi_label_classification`` (``tasks.types``); None infers it
    from the data (float scores: regression; tokens with tags: token classification; a list of
    labels per text: multi-label; a SQuAD JSON file: question answering). doc_stride: question
    answering's tokens shared by consecutive windows of a long context (None: max_length // 4).
    format: how to read a file whatever its
    extension (``DATA_FORMATS``; ``tsv`` reads the VADER ``*_GroundTruth.txt`` files, ``conll``
    ``token<TAB>tag`` files). holdout: a fraction in (0, 1) of a source without a dev split held
    out as its ``dev`` split (seeded, ``splits.HOLDOUT_SEED``); ``train`` is then the rest.
    """

    source: str = "bbc-news"
    split: str = "train"
    text_columns: tuple[str, ...] | None = None
    label_column: str | None = None
    max_length: int = 128
    limit: int | None = None
    corpus: bool = False
    task_type: str | None = None
    format: str | None = None
    holdout: float | None = None
    doc_stride: int | None = None

    def __post_init__(self) -> None:
        if self.task_type is not None and self.task_type not in TASK_TYPES:
            raise ConfigError(
                f"unknown {{task}} {self.task_type!r}: use one of {', '.join(TASK_TYPES)}",
                field="task",
                value=self.task_type,
            )
        if self.format is not None and self.format not in DATA_FORMATS:
            raise ConfigError(
                f"unknown {{data_format}} {self.format!r}: use one of {', '.join(DATA_FORMATS)}",
                field="data_format",
                value=self.format,
            )
        text = self.format == "text" or (
            self.format is None and (self.source == "wikitext-2" or self.source.lower().endswith((".txt", ".txt.gz")))
        )
        if text:
            object.__setattr__(self, "corpus", True)
        if self.holdout is not None and not (isinstance(self.holdout, float | int) and 0 < self.holdout < 1):
            raise ConfigError(
                f"{{holdout}} {self.holdout!r}: give the fraction held out as the dev split, in (0, 1), e.g. 0.2",
                field="holdout",
                value=self.holdout,
            )
        if self.max_length < 2:
            raise ConfigError(
                f"{{max_length}} {self.max_length} is too small: use at least 2 ([CLS] and [SEP])",
                field="max_length",
                value=self.max_length,
            )
        if self.text_columns is not None and not 1 <= len(self.text_columns) <= 2:
            raise ConfigError(
                f"{{text_columns}} {self.text_columns}: give one column, or two for sentence pairs",
                field="text_columns",
                value=self.text_columns,
            )
        if self.limit is not None and self.limit < 1:
            raise ConfigError(
                f"{{limit}} {self.limit}: use a positive number of examples", field="limit", value=self.limit
            )

    def describe(self) -> dict:
        """The fields as a JSON-ready dict (stored in a cache's manifest ``data`` section;
        ``corpus`` only when true)."""
        out = asdict(self)
        if not self.corpus:
            out.pop("corpus")
        for key in ("task_type", "format", "holdout", "doc_stride"):  # absent when unset: older manifests stay equal
            if out[key] is None:
                out.pop(key)
        return out


@dataclass(frozen=True, kw_only=True)
class StageConfig:
    """One training stage: its loss kind (``hidden``, ``prediction``, ``labels``, or ``general``:
    every term of a corpus cache at once) and optimizer settings. ``layers``: for a progressive
    general stage (MobileBERT), the student layers whose terms it trains, the layers below frozen
    (None: every layer, nothing frozen)."""

    kind: str
    epochs: float
    lr: float
    batch_size: int
    warmup_ratio: float = 0.1
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("hidden", "prediction", "labels", "general"):
            raise ConfigError(f"unknown stage kind {self.kind!r}: use hidden, prediction, labels or general")
        if self.epochs < 0 or self.lr <= 0 or self.batch_size < 1 or not 0 <= self.warmup_ratio < 1:
            raise ConfigError(
                f"stage {self.kind}: epochs={self.epochs}, lr={self.lr}, batch_size={self.batch_size}, "
                f"warmup_ratio={self.warmup_ratio}: use epochs ≥ 0, lr > 0, batch size ≥ 1, warmup in [0, 1)"
            )


def check_device(device: str) -> str:
    """Raises ConfigError for a device other than cpu, cuda or cuda:N, or cuda without a GPU."""
    import torch

    if device != "cpu" and not (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f"unknown {{device}} {device!r}: use cpu, cuda or cuda:N", field="device", value=device)
    if device != "cpu" and not torch.cuda.is_available():
        raise ConfigError(
            f"{{device}} {device}: no CUDA GPU is available here; use {{device}} cpu", field="device", value=device
        )
    return device


def check_precision(precision: str, device: str = "cpu", field: str = "precision") -> str:
    """``precision`` when it is fp32, bf16 or fp16 (fp16 on CUDA only: bf16 is the CPU's).

    Args: precision; device: where it runs; field: the setting named in errors (``precision``,
        ``teacher_precision``).
    Raises: ConfigError naming ``field`` and the value.
    """
    if precision not in PRECISIONS:
        raise ConfigError(
            f"unknown {{{field}}} {precision!r}: use one of {', '.join(PRECISIONS)}", field=field, value=precision
        )
    if precision == "fp16" and not device.startswith("cuda"):
        raise ConfigError(f"{{{field}}} fp16 needs {{device}} cuda: use bf16 on the CPU", field=field, value=precision)
    return precision


@dataclass(frozen=True)
class Interval:
    """How often to checkpoint: every ``steps`` optimizer steps, or every ``seconds`` of training;
    neither means at stage ends only."""

    steps: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str | int) -> Interval:
        """``500`` (steps), ``90s``, ``5min``, ``2h``, or ``0`` (stage ends only).

        Raises: ConfigError for anything else.
        """
        text = str(text).strip().lower()
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?", text)
        if match is None:
            raise ConfigError(
                f"{{save_every}} {text!r}: use a step count like 500, a duration like 90s, 5min or 2h, or 0",
                field="save_every",
                value=text,
            )
        value, unit = float(match.group(1)), match.group(2)
        if value == 0:
            return cls()
        if unit is None:
            if value != int(value):
                raise ConfigError(
                    f"{{save_every}} {text!r}: a step count must be a whole number", field="save_every", value=text
                )
            return cls(steps=int(value))
        return cls(seconds=value * _UNITS[unit])

    def due(self, steps_since: int, seconds_since: float) -> bool:
        """Whether a checkpoint is due ``steps_since`` steps and ``seconds_since`` seconds after the last."""
        if self.steps is not None:
            return steps_since >= self.steps
        return self.seconds is not None and seconds_since >= self.seconds

    def describe(self) -> str:
        """``every N steps``, ``every S s`` or ``at stage ends``."""
        if self.steps is not None:
            return f"every {self.steps} steps"
        return f"every {self.seconds:g} s" if self.seconds is not None else "at stage ends"


def parse_storage_options(text: str | None) -> dict:
    """Storage options as JSON text → dict. Raises: ConfigError (field ``storage_options``) when the
    text is not a JSON object."""
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as err:
        raise ConfigError(
            f"{{storage_options}} {text!r} is not JSON ({err}): pass a JSON object", field="storage_options", value=text
        ) from None
    if not isinstance(options, dict):
        raise ConfigError(
            f"{{storage_options}} {text!r}: pass a JSON object such as '{{\"anon\": false}}'",
            field="storage_options",
            value=text,
        )
    return options
