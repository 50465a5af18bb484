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
from hsk_cache.distill.loss import ATTENTION_LOSSES, WIDTH_TARGETS
from hsk_cache.errors import ConfigError
from hsk_cache.knowledge.spec import ExtractSpec
from hsk_cache.models.students import StudentConfig

DEFAULT_STAGES = (
    StageConfig(kind="hidden", epochs=3, lr=1e-4, batch_size=32),
    StageConfig(kind="prediction", epochs=3, lr=5e-5, batch_size=32),
)


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Dev evaluation during training: ``data`` (a source as in DataConfig) and ``split``;
    ``every`` optimizer steps (0: at stage ends only); ``metric`` (accuracy or mcc) picks the best
    model, among the evaluations of the last stage that trains. Text and label columns default to
    the training data's; the max length is the training data's (the cache's)."""

    data: str
    split: str = "dev"
    text_columns: tuple[str, ...] | None = None
    label_column: str | None = None
    every: int = 0
    metric: str = "accuracy"
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.every < 0 or self.batch_size < 1:
            raise ConfigError(f"--eval-every {self.every}: use 0 (stage ends only) or a positive step count")
        if self.metric not in EVAL_METRICS:
            raise ConfigError(f"unknown --eval-metric {self.metric!r}: use one of {', '.join(EVAL_METRICS)}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything ``hsk train`` does. ``save_every``: checkpoint interval (``session.Interval``:
    steps like ``500``, a duration like ``5min``, or ``0`` for stage ends only). ``overwrite``:
    discard a run already in ``out``; ``resume``: require a checkpoint to resume from."""

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
            raise ConfigError(f"--num-workers {self.num_workers}: use 0 (inline) or more")
        if self.width_target not in WIDTH_TARGETS:
            raise ConfigError(f"unknown --width-target {self.width_target!r}: use zero or ignore")
        if self.attention_loss not in ATTENTION_LOSSES:
            raise ConfigError(f"unknown --attention-loss {self.attention_loss!r}: use kl or mse")
        if (self.cache is None) == (self.online_teacher is None):
            raise ConfigError("give exactly one of --from-cache CACHE or --online TEACHER")
        if self.online_teacher is not None and self.data is None:
            raise ConfigError("--online needs --data")
        if not self.temperature > 0 or self.hard_label_weight < 0:
            raise ConfigError(
                f"--temperature {self.temperature} / --hard-label-weight {self.hard_label_weight}: "
                "use a temperature > 0 and a weight ≥ 0"
            )
        if self.overwrite and self.resume:
            raise ConfigError("give at most one of --overwrite (start over) and --resume (continue)")
        check_precision(self.precision, self.device)
        check_precision(self.teacher_precision, self.device, "--teacher-precision")
        Interval.parse(self.save_every)


@dataclass(frozen=True, kw_only=True)
class StageResult:
    kind: str
    steps: int
    losses: list[float]  # every step's loss, resumed runs included
    elapsed_s: float  # this process's share
    examples_per_s: float


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    out: str
    stages: list[StageResult]
    layer_map: dict[int, int]
    attention_map: dict[int, int]
    elapsed_s: float
    checkpoints: int = 0  # written over the whole run (resumed ones included)
    checkpoint_s: float = 0.0  # seconds spent writing them
    resumed_from: str | None = None  # the checkpoint this process continued from
    best: dict | None = None  # {metric, value, stage, step} of the model in <out>/best
    already_finished: bool = False  # the run was complete before this call: nothing was done
