"""``hsk train``: distil a student from a cache (teacher-free) or online (teacher at every step).

Stages run in order (TinyBERT's two-stage recipe, Jiao et al. 2020 §3.2):
1. ``hidden``: hidden-state MSE between mapped student layers and teacher layers at the kept
   token positions, through a learned projection W_h when widths differ;
2. ``prediction``: soft cross-entropy against teacher logits at temperature τ, plus an optional
   hard-label cross-entropy weight.
The fine-tuning stage ``labels`` (cross-entropy on gold labels only) serves ``hsk finetune``.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import asdict, dataclass, field

import torch

from hsk_cache import distributed, losses, models, objectives
from hsk_cache import session as session_module
from hsk_cache.cache import DEFAULT_MEMORY_BUDGET, open_cache
from hsk_cache.config import (
    DEFAULT_SAVE_EVERY,
    EVAL_METRICS,
    DataConfig,
    ExtractSpec,
    Interval,
    StageConfig,
    check_device,
    check_precision,
)
from hsk_cache.distill import ATTENTION_LOSSES, INTERMEDIATE_TERMS, WIDTH_TARGETS, DistillationLoss
from hsk_cache.errors import ConfigError
from hsk_cache.evaluate import Evaluator
from hsk_cache.session import Session, StageContext
from hsk_cache.sources import OnlineSource
from hsk_cache.store import layout
from hsk_cache.students import STUDENT_KINDS, StudentConfig, build_student  # noqa: F401 (public here too)
from hsk_cache.teacher import autocast

log = logging.getLogger(__name__)

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


def run(config: TrainConfig, progress=None) -> TrainResult:
    """Build the source and the student, run the stages with checkpoints (resuming from the
    latest one in ``config.out``), save the student (save_pretrained).

    progress: optional factory ``progress(description, total, initial)`` returning a bar with
    ``update(n)``, ``set_postfix(**kw)`` and ``close()`` (a tqdm bar, for instance), in examples.
    Raises: CacheError for a missing, incomplete or damaged cache; ConfigError for a bad layer
    map or stage, or knowledge the stages need and the source lacks; CheckpointError when
    ``config.out`` holds another run. All before anything is written.
    """
    started = time.perf_counter()
    rank = distributed.init(config.device)
    device = rank.device(config.device)
    for stage in config.stages:
        if stage.epochs > 0 and stage.batch_size % rank.world_size:
            raise ConfigError(
                f"{stage.kind} batch size {stage.batch_size} is not a multiple of the {rank.world_size} ranks: "
                "the batch size is the global batch; use a multiple"
            )
    if config.cache is not None:
        source = open_cache(
            config.cache,
            memory_budget_bytes=config.memory_budget_bytes,
            progress=progress,
            storage_options=config.storage_options,
        )
    else:
        source = OnlineSource(config.online_teacher, config.data, config.spec, config.teacher_precision, device)
    session = Session.open(config.out, identity(config, source), config.overwrite, config.resume, writer=rank.is_main)
    if session.finished and not config.overwrite:
        return TrainResult(
            out=config.out,
            stages=[],
            layer_map={},
            attention_map={},
            elapsed_s=0.0,
            checkpoints=session.checkpoints,
            checkpoint_s=session.checkpoint_s,
            best=session.best,
            already_finished=True,
        )
    torch.manual_seed(config.seed)
    trains = [s for s in config.stages if s.epochs > 0]
    _check_knowledge(config, source, trains)
    attention_probs = "attention_probs" in source.knowledge and any(s.kind == "hidden" for s in trains)
    attention = bool(source.stored.attention_layers) or source.stored.value_relation_layer is not None
    student = build_student(
        config.student, source.teacher_config, source.label_names, attention, attention_probs=attention_probs
    ).to(device)
    loss_fn = distillation_loss(config, student, source, trains)
    if loss_fn is not None:
        loss_fn.to(device)
    log.info(
        "layer maps (student:teacher): hidden %s, attention %s",
        loss_fn and loss_fn.hidden_map,
        loss_fn and loss_fn.attention_map,
    )
    evaluator = _evaluator(config, source) if rank.is_main else None  # rank 0 evaluates and keeps the best
    projection = loss_fn.projection if loss_fn is not None else None
    modules = torch.nn.ModuleDict(
        {"student": student, **({"projection": projection} if projection is not None else {})}
    )
    best_stage = max((i for i, s in enumerate(config.stages) if s.epochs > 0), default=-1)
    session.start(modules, evaluator, Interval.parse(config.save_every), best_stage, config.overwrite)
    try:
        results = []
        for i, stage in enumerate(config.stages):
            if session.stage_done(i):
                logged = session.losses.get(i, [])
                results.append(
                    StageResult(kind=stage.kind, steps=len(logged), losses=logged, elapsed_s=0.0, examples_per_s=0.0)
                )
                continue
            step, extra = stage_objective(stage, loss_fn)
            results.append(
                fit(
                    student,
                    source,
                    stage,
                    step,
                    seed=config.seed + i,
                    precision=config.precision,
                    extra_params=extra,
                    progress=progress,
                    num_workers=config.num_workers,
                    device=device,
                    session=session,
                    index=i,
                    rank=rank,
                )
            )
        if rank.is_main:
            models.save(student.to("cpu"), source.tokenizer, config.out)
        result = TrainResult(
            out=config.out,
            stages=results,
            layer_map=loss_fn.hidden_map if loss_fn else {},
            attention_map=loss_fn.attention_map if loss_fn else {},
            elapsed_s=time.perf_counter() - started,
            checkpoints=session.checkpoints,
            checkpoint_s=session.checkpoint_s,
            resumed_from=str(session.resume_from) if session.resume_from else None,
            best=session.best,
        )
        config_fields = {k: v for k, v in asdict(config).items() if k != "storage_options"}  # may hold secrets
        session.finish(
            {"config": config_fields, "result": {**asdict(result), "stages": [_summary(r) for r in results]}}
        )
    finally:
        session.close()
    return result


def stage_objective(stage: StageConfig, loss_fn: DistillationLoss | None):
    """(step function, parameters besides the student's) of one stage: the hidden stage uses the
    loss's intermediate terms and trains W_h; prediction its logits term; labels gold labels."""
    if stage.kind == "labels":
        return objectives.labels, []
    if loss_fn is None:  # a stage with 0 epochs: nothing runs
        return None, []
    terms = ("logits",) if stage.kind == "prediction" else tuple(t for t in INTERMEDIATE_TERMS if t in loss_fn.terms)
    extra = list(loss_fn.parameters()) if stage.kind == "hidden" else []
    return objectives.distillation(loss_fn, terms), extra


def _summary(stage: StageResult) -> dict:
    first, last = (stage.losses[0], stage.losses[-1]) if stage.losses else (None, None)
    return {
        "kind": stage.kind,
        "steps": stage.steps,
        "first_loss": first,
        "last_loss": last,
        "elapsed_s": stage.elapsed_s,
        "examples_per_s": stage.examples_per_s,
    }


def identity(config: TrainConfig, source) -> dict:
    """What must match for a run in ``config.out`` to be resumed: every option that changes the
    trained numbers. The cache counts by its identity (teacher, data, spec), not its path; the
    device, worker count, checkpoint interval and evaluation frequency may change."""
    fields = asdict(config)
    for key in (
        "out",
        "cache",
        "device",
        "num_workers",
        "memory_budget_bytes",
        "save_every",
        "overwrite",
        "resume",
        "storage_options",
    ):
        fields.pop(key)
    if config.eval is not None:
        fields["eval"] = {k: v for k, v in fields["eval"].items() if k not in ("every", "batch_size")}
    fields["cache"] = layout.identity(source.manifest) if config.cache is not None else None
    fields["shard_window_from_memory_budget"] = getattr(source, "window", None)  # the epoch order depends on it
    return fields


def _check_knowledge(config: TrainConfig, source, stages) -> None:
    """Raises ConfigError, before any training, when a stage needs knowledge the source lacks."""
    if any(s.kind == "prediction" for s in stages) and "logits" not in source.knowledge:
        where = f"the cache {config.cache!r}" if config.cache else "--knowledge"
        raise ConfigError(
            f"{where} holds no logits (knowledge: {','.join(source.knowledge)}) but the prediction stage needs "
            "them: pass --pred-epochs 0, or extract with --knowledge " + ",".join((*source.knowledge, "logits"))
        )


def _evaluator(config: TrainConfig, source):
    """The dev evaluator of ``config.eval`` (None without it), tokenized like the training data."""
    e = config.eval
    if e is None:
        return None
    if config.cache is not None:
        trained = source.manifest.data
        columns, label, max_length = trained.text_columns, trained.label_column, source.manifest.max_length
    else:
        columns, label, max_length = config.data.text_columns, config.data.label_column, config.data.max_length
    data = DataConfig(
        source=e.data,
        split=e.split,
        text_columns=e.text_columns or (tuple(columns) if columns else None),
        label_column=e.label_column or label,
        max_length=max_length,
    )
    return Evaluator(
        data,
        source.tokenizer,
        source.label_names,
        every=e.every,
        metric=e.metric,
        batch_size=e.batch_size,
        precision=config.precision,
        device=config.device,
    )


def distillation_loss(config: TrainConfig, student, source, stages) -> DistillationLoss | None:
    """The ``DistillationLoss`` of the run's distillation stages (None when none trains): the
    intermediate terms the source holds for the hidden stage, logits for the prediction stage.

    Raises: ConfigError if the hidden stage trains and the source has no intermediate knowledge,
    a map needs an unstored layer, or head counts differ without a usable --head-map.
    """
    kinds = {s.kind for s in stages}
    terms = []
    if "hidden" in kinds:
        terms = [t for t in INTERMEDIATE_TERMS if t in source.knowledge]
        if not terms:
            raise ConfigError(
                "the knowledge source has no hidden states, attention or value relation: "
                "set --hidden-epochs 0 or extract them"
            )
    if "prediction" in kinds:
        terms.append("logits")
    if not terms:
        return None
    return DistillationLoss(
        source.stored,
        student.config,
        terms=terms,
        layer_map=config.layer_map,
        attention_map=config.attention_map,
        keep_top_pairs=config.keep_top_pairs,
        head_map=config.head_map,
        width_target=config.width_target,
        attention_loss=config.attention_loss,
        temperature=config.temperature,
        hard_label_weight=config.hard_label_weight,
    )


def fit(
    model,
    source,
    stage: StageConfig,
    objective,
    *,
    seed: int,
    precision: str = "fp32",
    extra_params=(),
    progress=None,
    num_workers: int = 1,
    device: str = "cpu",
    session: Session | None = None,
    index: int = 0,
    rank: distributed.Rank | None = None,
) -> StageResult:
    """Train ``model`` for one stage: AdamW, linear warmup then decay, gradient norm clipped to 1
    (over the student's and ``extra_params``, e.g. W_h). ``objective(model, batch) -> loss``.

    Batches come from ``source.loader(batch_size, seed)`` (a pure function of (seed, epoch)),
    assembled ``num_workers`` steps ahead in a background thread (0: inline); dropout draws from
    ``torch.manual_seed(seed)``, so a stage is reproducible given the source. With a ``session``
    (stage ``index`` of a run), the stage resumes from its checkpoint, logs every step, evaluates
    and checkpoints when due and at its end; without one nothing is written.

    Data parallel (``rank`` of a torchrun job): each rank trains on its slice of every global
    batch of ``stage.batch_size``; the model and ``extra_params`` are wrapped together in
    ``DistributedDataParallel`` (gradients all-reduced); means are over the global batch
    (``losses.global_means``), so the logged loss (averaged over ranks) and the update equal a
    one-process run's on the same batches, up to float summation order.
    """
    from transformers import get_linear_schedule_with_warmup

    rank = rank or distributed.Rank()
    loader = source.loader(stage.batch_size, seed, prefetch=num_workers, rank=rank.rank, world_size=rank.world_size)
    sampler = loader.sampler
    steps_per_epoch = sampler.steps_per_epoch()
    total = round(stage.epochs * steps_per_epoch)
    if total == 0:
        return StageResult(kind=stage.kind, steps=0, losses=[], elapsed_s=0.0, examples_per_s=0.0)
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_params)
    optimizer = torch.optim.AdamW(params, lr=stage.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(stage.warmup_ratio * total), total)
    ctx = StageContext(index, stage.kind, optimizer, scheduler, sampler)
    done = session.restore(ctx) if session is not None else 0
    history = list(session.losses.get(index, [])) if session is not None else []
    full, rest = divmod(total, steps_per_epoch)
    examples = full * len(source) + min(rest * stage.batch_size, len(source))
    bar = progress(f"train {stage.kind}", examples, min(done * stage.batch_size, examples)) if progress else None
    step_fn = _DataParallelStep(model, objective, extra_params, rank)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=precision == "fp16")  # fp16: loss scaling
    model.train()
    seen, started = 0, time.perf_counter()
    stream = loader.stream(total - done)
    try:
        for step, batch in stream:
            if device != "cpu":
                batch = {key: value.to(device) for key, value in batch.items()}
            with autocast(precision, device.split(":")[0]):
                loss = step_fn(batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(optimizer)
            scaler.update()
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            sampler.advance(step)
            done, seen = done + 1, seen + len(batch["labels"]) * rank.world_size
            history.append(step_fn.global_loss(loss))
            if session is not None:
                session.after_step(ctx, done, total, {"epoch": step.epoch, "loss": history[-1], "lr": lr})
            if bar is not None:
                bar.update(len(batch["labels"]) * rank.world_size)
                bar.set_postfix(loss=f"{history[-1]:.4f}")
    finally:
        stream.close()
        if bar is not None:
            bar.close()
    if session is not None:
        session.end_stage(ctx, total)
    model.eval()
    elapsed = time.perf_counter() - started
    return StageResult(
        kind=stage.kind, steps=total, losses=history, elapsed_s=elapsed, examples_per_s=seen / max(elapsed, 1e-9)
    )


class _Step(torch.nn.Module):
    """One module holding the student and the extra parameters (W_h): what DDP wraps."""

    def __init__(self, model, objective, extra_params) -> None:
        super().__init__()
        self.model, self.objective = model, objective
        self.extra = torch.nn.ParameterList(list(extra_params))

    def forward(self, batch: dict) -> torch.Tensor:
        return self.objective(self.model, batch)


class _DataParallelStep:
    """``objective(model, batch)``; under several ranks the model and the extra parameters run
    inside one ``DistributedDataParallel``, so all their gradients are all-reduced."""

    def __init__(self, model, objective, extra_params, rank: distributed.Rank) -> None:
        self.model, self.objective, self.rank = model, objective, rank
        self.engine = None
        if rank.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device = next(model.parameters()).device
            # a stage leaves some parameters unused (the classifier in the hidden stage, W_h in
            # the prediction stage): DDP looks for them every step
            self.engine = DistributedDataParallel(
                _Step(model, objective, extra_params),
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True,
            )

    def __call__(self, batch: dict) -> torch.Tensor:
        if self.engine is None:
            return self.objective(self.model, batch)
        with losses.global_means(self.rank.world_size):
            return self.engine(batch)

    def global_loss(self, loss: torch.Tensor) -> float:
        """The step's loss over the global batch (the ranks' mean, one all-reduce); a stop
        request (SIGTERM, Ctrl-C) seen by any rank reaches all of them at this same step."""
        if self.engine is None:
            return float(loss.detach())
        signum = session_module.stop_signal()
        both = torch.tensor([float(loss.detach()), float(signum or 0)], dtype=torch.float64)
        both = distributed.all_reduce_sum(both)
        if both[1] > 0 and signum is None:
            session_module.note_stop(signal.SIGTERM)
        return float(both[0]) / self.rank.world_size
