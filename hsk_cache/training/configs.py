"""What ``hsk train`` is asked to do and what it reports."""

from __future__ import annotations

from dataclasses import dataclass, field

from hsk_cache.config.run import (
    DEFAULT_SAVE_EVERY,
    EVAL_METRICS,
    DataConfig,
    Interval,
    StageConfig,
    check_device,
    check_precision,
)
from hsk_cache.data.cache import DEFAULT_MEMORY_BUDGET
from hsk_cache.errors import ConfigError
from hsk_cache.knowledge.kind import LossOptions
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models.students import StudentConfig
from hsk_cache.tasks import types

DEFAULT_STAGES = (
    StageConfig(kind="hidden", epochs=3, lr=1e-4, batch_size=32),
    StageConfig(kind="prediction", epochs=3, lr=5e-5, batch_size=32),
)


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Dev evaluation during training: ``data`` (a source as in DataConfig) and ``split``;
    ``every`` optimizer steps (0: at stage ends only); ``metric`` picks the best model, among the
    evaluations of the last stage that trains: one of the task type's metrics (``accuracy`` or
    ``mcc``; regression ``pearson`` or ``spearman``; token classification ``f1``), ``loss`` (the
    dev distillation loss, lower is better) for general distillation, where ``data`` is a cache of
    held-out text extracted with the training cache's spec and teacher (or, training online, a
    corpus the online teacher reads); None: ``loss`` for a general run, else the task type's first. Text
    and label columns default to the training data's; the max length is the training data's (the
    cache's)."""

    data: str
    split: str = "dev"
    text_columns: tuple[str, ...] | None = None
    label_column: str | None = None
    every: int = 0
    metric: str | None = None
    batch_size: int = 64

    def resolved_metric(self, general: bool, task_type: str = "classification") -> str:
        """``metric``, or its default for the run: ``loss`` for general distillation, else the
        task type's first metric (accuracy; regression: pearson; token classification: f1)."""
        return self.metric or ("loss" if general else types.get(task_type).metrics[0])

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ConfigError(
                f"{{eval_every}} {self.every}: use 0 (stage ends only) or a positive step count",
                field="eval_every",
                value=self.every,
            )
        if self.batch_size < 1:
            raise ConfigError(
                f"{{eval_batch_size}} {self.batch_size}: use at least 1", field="eval_batch_size", value=self.batch_size
            )
        if self.metric is not None and self.metric not in EVAL_METRICS:
            raise ConfigError(
                f"unknown {{eval_metric}} {self.metric!r}: use one of {', '.join(EVAL_METRICS)}",
                field="eval_metric",
                value=self.metric,
            )


SCHEDULES = ("joint", "progressive")  # general distillation: every layer at once, or MobileBERT's layer by layer


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything ``hsk train`` does. A cache of a corpus (or ``data`` a corpus, online) makes it
    general distillation: one ``general`` stage (the hidden stage's settings unless a general
    stage is given) over every stored term, a student without task head (a masked-LM model when
    the knowledge has ``mlm``), ``schedule`` ``joint`` or ``progressive`` (MobileBERT).

    ``save_every``: checkpoint interval (``session.Interval``: steps like ``500``, a duration like
    ``5min``, or ``0`` for stage ends only). ``overwrite``: discard a run already in ``out``;
    ``resume``: require a checkpoint to resume from."""

    out: str
    student: StudentConfig = field(default_factory=StudentConfig)
    cache: str | None = None
    online_teacher: str | None = None
    data: DataConfig | None = None
    spec: ExtractSpec = field(default_factory=ExtractSpec)
    stages: tuple[StageConfig, ...] = DEFAULT_STAGES
    layer_map: str = "uniform"
    attention_map: str = "uniform"
    keep_top_pairs: int | None = None
    width_target: str = "zero"
    attention_loss: str = "kl"
    head_map: str = "strict"
    temperature: float = 1.0
    hard_label_weight: float = 0.0
    hidden_loss: str = "mse"
    term_weights: tuple[tuple[str, float], ...] = ()
    schedule: str = "joint"
    seed: int = 0
    precision: str = "fp32"
    teacher_precision: str = "fp32"
    device: str = "cpu"
    num_workers: int = 1
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET
    eval: EvalConfig | None = None
    save_every: str = DEFAULT_SAVE_EVERY
    overwrite: bool = False
    resume: bool = False
    storage_options: dict = field(default_factory=dict)  # fsspec options of a cache URL; never written out

    def __post_init__(self) -> None:
        check_device(self.device)
        if self.num_workers < 0:
            raise ConfigError(
                f"{{num_workers}} {self.num_workers}: use 0 (inline) or more",
                field="num_workers",
                value=self.num_workers,
            )
        self.loss_options()  # validates them (one home: knowledge.kind.LossOptions)
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"unknown {{schedule}} {self.schedule!r}: use joint or progressive",
                field="schedule",
                value=self.schedule,
            )
        if self.memory_budget_bytes < 1:
            raise ConfigError(
                f"{{memory_budget_bytes}} {self.memory_budget_bytes / (1 << 30):g} GiB: give a positive budget "
                "(e.g. 4; a cache larger than it is read a window of shards at a time)",
                field="memory_budget_bytes",
                value=self.memory_budget_bytes,
            )
        if (self.cache is None) == (self.online_teacher is None):
            raise ConfigError("give exactly one of {cache} CACHE or {online_teacher} TEACHER", field="cache")
        if self.online_teacher is not None and self.data is None:
            raise ConfigError("{online_teacher} needs {data}", field="data")
        if self.overwrite and self.resume:
            raise ConfigError("give at most one of {overwrite} (start over) and {resume} (continue)", field="overwrite")
        check_precision(self.precision, self.device)
        check_precision(self.teacher_precision, self.device, "teacher_precision")
        Interval.parse(self.save_every)

    def loss_options(self) -> LossOptions:
        """The ``DistillationLoss`` options of this run. Raises: ConfigError for an unknown one."""
        return LossOptions(
            layer_map=self.layer_map,
            attention_map=self.attention_map,
            keep_top_pairs=self.keep_top_pairs,
            head_map=self.head_map,
            width_target=self.width_target,
            attention_loss=self.attention_loss,
            temperature=self.temperature,
            hard_label_weight=self.hard_label_weight,
            hidden_loss=self.hidden_loss,
            term_weights=tuple(self.term_weights),
        )


@dataclass(frozen=True, kw_only=True)
class StageResult:
    """What one training stage did.

    Attributes:
        kind: the stage's loss kind: ``hidden``, ``prediction`` or ``labels``.
        steps: optimizer steps of the stage in all (0 for a stage of 0 epochs).
        losses: every step's loss (averaged over the ranks), in order, including the steps a
            resumed run did before its checkpoint.
        elapsed_s: wall-clock seconds this call spent in the stage (0 for a stage finished before
            the checkpoint resumed from).
        examples_per_s: examples trained per second by this call, over all ranks (0 when it
            trained none).
    """

    kind: str
    steps: int
    losses: list[float]
    elapsed_s: float
    examples_per_s: float


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    """What ``train`` did.

    Attributes:
        out: the run directory, which holds the final student.
        stages: one result per stage, in order (empty when ``already_finished``).
        layer_map: {student layer: teacher layer} of the hidden-state loss term ({} without one).
        attention_map: {student layer: teacher layer} of the attention loss term ({} without one).
        elapsed_s: wall-clock seconds of this call.
        checkpoints: checkpoints written over the whole run, those of earlier (resumed) runs
            included.
        checkpoint_s: seconds spent writing them, over the whole run.
        resumed_from: the checkpoint directory this call continued from, or None.
        best: ``{metric, value, stage, step}`` of the model saved in ``<out>/best``, or None (no
            dev evaluation).
        already_finished: the run was complete before this call, so nothing was done.
    """

    out: str
    stages: list[StageResult]
    layer_map: dict[int, int]
    attention_map: dict[int, int]
    elapsed_s: float
    checkpoints: int = 0
    checkpoint_s: float = 0.0
    resumed_from: str | None = None
    best: dict | None = None
    already_finished: bool = False
