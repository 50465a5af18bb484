"""One training stage: the optimizer loop, and the data-parallel step under torchrun."""

from __future__ import annotations

import signal
import time

import torch

from hsk_cache import distributed
from hsk_cache.config.run import StageConfig
from hsk_cache.models.teacher import autocast
from hsk_cache.training.configs import StageResult
from hsk_cache.training.session import Session, StageContext
from hsk_cache.training.stop import StopRequest


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
    (over the student's and ``extra_params``, e.g. W_h). ``objective(model, batch, world_size) -> loss``.

    Batches come from ``source.loader(batch_size, seed)`` (a pure function of (seed, epoch)),
    assembled ``num_workers`` steps ahead in a background thread (0: inline); dropout draws from
    ``torch.manual_seed(seed)``, so a stage is reproducible given the source. With a ``session``
    (stage ``index`` of a run), the stage resumes from its checkpoint, logs every step, evaluates
    and checkpoints when due and at its end; without one nothing is written.

    Data parallel (``rank`` of a torchrun job): each rank trains on its slice of every global
    batch of ``stage.batch_size``; the model and ``extra_params`` are wrapped together in
    ``DistributedDataParallel`` (gradients all-reduced); means are over the global batch
    (``objective(..., world_size)``), so the logged loss (averaged over ranks) and the update equal a
    one-process run's on the same batches, up to float summation order.
    """
    from transformers import get_linear_schedule_with_warmup

    rank = rank or distributed.Rank()
    loader = source.loader(
        stage.batch_size,
        seed,
        prefetch=num_workers,
        rank=rank.rank,
        world_size=rank.world_size,
        device=None if device == "cpu" else device,  # pinned, non_blocking copies on CUDA
    )
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
    step_fn = _DataParallelStep(model, objective, extra_params, rank, session.stop if session is not None else None)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=precision == "fp16")  # fp16: loss scaling
    model.train()
    seen, started = 0, time.perf_counter()
    stream = loader.stream(total - done)
    try:
        for step, batch in stream:
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

    def __init__(self, model, objective, extra_params, world_size: int = 1) -> None:
        super().__init__()
        self.model, self.objective, self.world_size = model, objective, world_size
        self.extra = torch.nn.ParameterList(list(extra_params))

    def forward(self, batch: dict) -> torch.Tensor:
        return self.objective(self.model, batch, self.world_size)


class _DataParallelStep:
    """``objective(model, batch)``; under several ranks the model and the extra parameters run
    inside one ``DistributedDataParallel``, so all their gradients are all-reduced."""

    def __init__(self, model, objective, extra_params, rank: distributed.Rank, stop: StopRequest | None = None) -> None:
        self.model, self.objective, self.rank = model, objective, rank
        self.stop = stop if stop is not None else StopRequest()  # the session's (none without one)
        self.engine = None
        if rank.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device = next(model.parameters()).device
            # a stage leaves some parameters unused (the classifier in the hidden stage, W_h in
            # the prediction stage): DDP looks for them every step
            self.engine = DistributedDataParallel(
                _Step(model, objective, extra_params, rank.world_size),
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True,
            )

    def __call__(self, batch: dict) -> torch.Tensor:
        if self.engine is None:
            return self.objective(self.model, batch)
        return self.engine(batch)  # the objective's means are over the global batch (world_size)

    def global_loss(self, loss: torch.Tensor) -> float:
        """The step's loss over the global batch (the ranks' mean, one all-reduce); a stop
        request (SIGTERM, Ctrl-C) seen by any rank reaches all of them at this same step.

        ``loss``: this rank's scalar loss, on any device. The all-reduce of (loss, signal) runs on
        the process group's device (``distributed.all_reduce_sum``: cuda under nccl).
        """
        if self.engine is None:
            return float(loss.detach())
        signum = self.stop.signal
        both = torch.stack(
            [loss.detach().double().reshape(()), loss.new_tensor(float(signum or 0), dtype=torch.float64)]
        )
        both = distributed.all_reduce_sum(both).cpu()
        if both[1] > 0 and signum is None:
            self.stop.note(signal.SIGTERM)
        return float(both[0]) / self.rank.world_size
