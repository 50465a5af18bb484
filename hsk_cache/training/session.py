"""A training run's directory (``hsk train --out``): identity and resume, the metrics log,
checkpoints, dev evaluation and the best model.

    <out>/hsk_run.json     the run's identity (every option that changes the numbers), written first
    <out>/metrics.jsonl    one JSON line per step (event "train"), dev evaluation ("eval") and checkpoint
    <out>/checkpoints/     the latest checkpoint (``checkpoint``), every ``--save-every`` and at stage ends
    <out>/best/            the best model by dev metric (save_pretrained) and best.json
    <out>/...              the final student (save_pretrained) and hsk_train.json, written last

Rerunning the same command resumes from the latest checkpoint: the metrics log is cut back to it
and training replays exactly what was lost. Another config at the same ``--out`` is refused, and
so is a second ``hsk train`` while one holds the directory's lock (``filelock``). With the CLI's
signal handlers, SIGTERM (a preempted machine) or Ctrl-C checkpoints after the current step and
stops; a second signal stops at once.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from hsk_cache import outputs
from hsk_cache.config.run import DEFAULT_SAVE_EVERY, Interval
from hsk_cache.errors import CheckpointError, first_line
from hsk_cache.training import checkpoint
from hsk_cache.training.stop import Stopped, StopRequest

log = logging.getLogger(__name__)

RUN_FILE = "hsk_run.json"
LOCK_FILE = ".hsk_train.lock"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "hsk_train.json"
BEST_DIR = "best"
BEST_FILE = "best.json"  # in best/: the evaluation it won and each file's size and crc32c
_OWN = (RUN_FILE, METRICS_FILE, SUMMARY_FILE, BEST_DIR, checkpoint.CHECKPOINTS)
RUN_OUTPUT = outputs.OutputKind(
    run="a run",
    error=CheckpointError,
    foreign="exists and holds no hsk train run (a saved model, say): choose another {out}",
    fix="rerun the original command to resume it, pass {overwrite} to start over, or choose another {out}",
    foreign_overwrite="holds no hsk train run, and {overwrite} replaces only hsk train's own runs (this may be a "
    "saved model): choose another {out}, or remove it yourself",
)


@dataclass
class StageContext:
    """What a checkpoint of a stage in progress needs: its index, kind, optimizer, scheduler, sampler."""

    index: int
    kind: str
    optimizer: torch.optim.Optimizer
    scheduler: object
    sampler: object


class Session:
    """Owns ``--out`` while ``hsk train`` runs. Create with ``Session.open``."""

    def __init__(
        self,
        out: Path,
        identity: dict,
        resume_from: Path | None,
        state: dict | None,
        writer: bool = True,
        stop: StopRequest | None = None,
    ) -> None:
        self.out, self.identity, self.writer = out, identity, writer
        self.stop = stop if stop is not None else StopRequest()  # armed from start to close
        self.resume_from, self.state = resume_from, state  # the checkpoint resumed from, and its state.json
        self.damaged: list[Path] = []  # newer checkpoints that failed their check (removed by ``start``)
        self.modules: torch.nn.ModuleDict | None = None
        self.evaluator = None
        self.save_every = Interval.parse(DEFAULT_SAVE_EVERY)
        self.best_stage = -1  # evaluations of this stage compete for the best model
        self.best = state.get("best") if state else None
        self.checkpoints, self.checkpoint_s = (
            (state.get("checkpoints", 0), state.get("checkpoint_s", 0.0)) if state else (0, 0.0)
        )
        self.losses: dict[int, list[float]] = {}  # logged losses per stage index, up to the checkpoint
        self._log = None
        self._lock: FileLock | None = None
        self._last_save = (0, time.perf_counter())

    @classmethod
    def open(
        cls,
        out: str | Path,
        identity: dict,
        overwrite: bool = False,
        require_checkpoint: bool = False,
        writer: bool = True,
        stop: StopRequest | None = None,
    ) -> Session:
        """Check ``out`` against ``identity`` and find the checkpoint to resume from. Writes nothing.
        ``writer=False`` (ranks > 0 of a data-parallel job): the session resumes from the same
        checkpoint but never writes; rank 0's session writes the log, checkpoints and hub.
        ``stop``: the stop request the caller's signal handlers fill (None: a fresh one).

        Raises: CheckpointError when ``out`` holds a run of another config, or something that is
        not a run, and ``overwrite`` is False; or ``require_checkpoint`` and there is none.
        """
        out = Path(out)
        identity = json.loads(json.dumps(identity, default=str))
        state = outputs.check_output_dir(
            out,
            RUN_OUTPUT,
            marker=RUN_FILE,
            identity=identity,
            read=lambda path: _read_json(path).get("identity", {}),
            overwrite=overwrite,
            ignore=(LOCK_FILE, ".tmp-*"),
        )
        if state is not outputs.OutputState.SAME:
            if require_checkpoint:
                raise CheckpointError(
                    f"{{resume}}: {str(out)!r} holds no checkpoint to resume from: drop {{resume}} to start",
                    field="resume",
                )
            return cls(out, identity, None, None, writer, stop)
        if _finished(out):  # nothing to resume: no checkpoint is read
            return cls(out, identity, checkpoint.latest(out), None, writer, stop)
        found = checkpoint.resumable(out)  # the newest intact checkpoint; damaged newer ones are logged
        if found is None and require_checkpoint:
            raise CheckpointError(
                f"{{resume}}: {str(out)!r} holds no checkpoint yet: drop {{resume}} to start over", field="resume"
            )
        check_best(out)
        session = cls(out, identity, found and found.path, found and found.state, writer, stop)
        session.damaged = [path for path, _ in found.damaged] if found else []
        return session

    @property
    def finished(self) -> bool:
        """The run already completed (its final student and summary were written)."""
        return _finished(self.out)

    def start(
        self, modules: torch.nn.ModuleDict, evaluator, save_every: Interval, best_stage: int, overwrite: bool
    ) -> None:
        """Begin writing: clear an overwritten run, record the identity, cut the log back to the
        checkpoint, and load the checkpoint's weights into ``modules``."""
        self.modules, self.evaluator, self.save_every, self.best_stage = modules, evaluator, save_every, best_stage
        if not self.writer:
            self.stop.arm()
            if self.resume_from is not None and not overwrite:
                self._read_losses(self._kept_lines())
                checkpoint.load_weights(self.resume_from, modules)
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(self.out / LOCK_FILE)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise CheckpointError(
                f"another hsk train is running on {{out}} {str(self.out)!r}: wait for it to finish, "
                "or choose another {out}",
                field="out",
                value=str(self.out),
            ) from None
        newest = checkpoint.checkpoints(self.out)[: len(self.damaged) + (self.resume_from is not None)]
        if newest != [*self.damaged, *([self.resume_from] if self.resume_from else [])] and not overwrite:
            self.close()
            raise CheckpointError(
                f"the run in {{out}} {str(self.out)!r} changed while this one started: rerun the command",
                field="out",
                value=str(self.out),
            )
        for bad in self.damaged:  # the steps after resume_from are run again and checkpointed anew
            shutil.rmtree(bad, ignore_errors=True)
            log.info("removed the damaged checkpoint %s", bad)
        for stale in self.out.glob(".tmp-*"):  # a write cut short by a kill
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        self.stop.arm()
        if overwrite:
            for own in _OWN:
                target = self.out / own
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            self.losses = {}
        if not (self.out / RUN_FILE).exists():
            outputs.write_text(self.out / RUN_FILE, json.dumps({"identity": self.identity}, indent=1))
        kept = self._cut_log()
        self._log = open(self.out / METRICS_FILE, "a")
        if self.resume_from is not None:
            checkpoint.load_weights(self.resume_from, modules)
            log.info("resuming from %s (%d log lines kept)", self.resume_from, kept)

    def stage_done(self, index: int) -> bool:
        """Stage ``index`` was finished before the checkpoint resumed from (that checkpoint is of a
        later stage, or of this stage's end); False without a checkpoint."""
        s = self.state
        return s is not None and (index < s["stage"] or (index == s["stage"] and s["stage_done"]))

    def restore(self, ctx: StageContext) -> int:
        """Load a mid-stage checkpoint of this stage into the optimizer, scheduler, sampler and
        RNG. Returns the optimizer steps already done in the stage (0 when starting it)."""
        s = self.state
        if s is None or s["stage"] != ctx.index or s["stage_done"]:
            return 0
        try:
            ctx.sampler.load_state_dict(s["sampler"])
        except ValueError as err:
            raise CheckpointError(
                f"cannot resume {str(self.out)!r}: {err}; rerun with the original "
                "{memory_budget_bytes}, or pass {overwrite} to start over",
                field="memory_budget_bytes",
            ) from None
        try:
            checkpoint.load_training(self.resume_from, s, ctx.optimizer, ctx.scheduler)
        except CheckpointError:
            raise
        except Exception as err:  # intact files (checked at open) that do not fit this optimizer
            raise CheckpointError(
                f"cannot resume from checkpoint {str(self.resume_from)!r}: its optimizer or RNG state does not fit "
                f"this run ({first_line(err)}): pass {{overwrite}} to start over",
                field="overwrite",
            ) from None
        self._last_save = (s["step"], time.perf_counter())
        return s["step"]

    def after_step(self, ctx: StageContext, step: int, total: int, record: dict) -> None:
        """Log one step; evaluate and checkpoint when due (a stage's last step is ``end_stage``'s)."""
        self.losses.setdefault(ctx.index, []).append(record["loss"])
        self._write({"event": "train", "stage": ctx.kind, "stage_index": ctx.index, "step": step, **record})
        if self.stop.signal is not None and step < total:  # at a stage's end, end_stage checkpoints first
            self.save(ctx, step)
            signum = int(self.stop.signal)
            raise Stopped(
                f"stopped by signal {signum} after step {step} of stage {ctx.index}; a checkpoint was written", signum
            )
        if step == total:
            return
        if self.evaluator is not None and self.evaluator.every and step % self.evaluator.every == 0:
            self.evaluate(ctx.index, ctx.kind, step)
        if self.save_every.due(step - self._last_save[0], time.perf_counter() - self._last_save[1]):
            self.save(ctx, step)

    def end_stage(self, ctx: StageContext, total: int) -> None:
        """Evaluate and checkpoint the finished stage; then honour a pending stop request."""
        if self.evaluator is not None:
            self.evaluate(ctx.index, ctx.kind, total)
        self.save(ctx, total, stage_done=True)
        self._last_save = (0, time.perf_counter())
        if self.stop.signal is not None:
            signum = int(self.stop.signal)
            raise Stopped(
                f"stopped by signal {signum} at the end of stage {ctx.index}; a checkpoint was written", signum
            )

    def save(self, ctx: StageContext, step: int, stage_done: bool = False) -> None:
        """Write a checkpoint of stage ``ctx`` after optimizer step ``step`` and log it; ranks that
        do not write only restart the ``save_every`` interval.

        Args:
            ctx: the stage in progress.
            step: optimizer steps done in the stage.
            stage_done: the stage has ended: the checkpoint holds no optimizer or scheduler
                state, and a run resumed from it starts the next stage.
        """
        if not self.writer:
            self._last_save = (step, time.perf_counter())
            return
        started = time.perf_counter()
        state = {
            "stage_done": stage_done,
            "sampler": ctx.sampler.state_dict(),
            "best": self.best,
            "checkpoints": self.checkpoints + 1,
            "checkpoint_s": self.checkpoint_s,
        }
        training = (None, None) if stage_done else (ctx.optimizer, ctx.scheduler)
        path = checkpoint.save(self.out, ctx.index, step, self.modules, state, *training)
        self.checkpoints += 1
        self.checkpoint_s += time.perf_counter() - started
        self._last_save = (step, time.perf_counter())
        self._write(
            {
                "event": "checkpoint",
                "stage": ctx.kind,
                "stage_index": ctx.index,
                "step": step,
                "path": str(path.relative_to(self.out)),
                "elapsed_s": round(time.perf_counter() - started, 4),
            }
        )

    def evaluate(self, index: int, kind: str, step: int) -> dict:
        """Dev metrics of the student now (accuracy and MCC, or the dev distillation loss of a
        general run); saves it to ``best/`` when it is the best evaluation so far of the
        best-model stage, by the evaluator's ``metric`` (the highest, or the lowest when its
        ``higher_is_better`` is False) (rank 0 only: other ranks return {})."""
        if not self.writer:
            return {}
        student = self.modules["student"]
        metrics = self.evaluator(student)
        student.train()
        value = metrics[self.evaluator.metric]
        better = (lambda a, b: a > b) if getattr(self.evaluator, "higher_is_better", True) else (lambda a, b: a < b)
        is_best = index == self.best_stage and (self.best is None or better(value, self.best["value"]))
        if is_best:
            self.best = {"metric": self.evaluator.metric, "value": value, "stage": index, "step": step}
            self._save_best(student)
        self._write({"event": "eval", "stage": kind, "stage_index": index, "step": step, **metrics, "best": is_best})
        return metrics

    def _save_best(self, student) -> None:
        from hsk_cache.models import hub

        def write(tmp: Path) -> None:
            hub.save(student, self.evaluator.tokenizer, tmp)
            files = {p.name: checkpoint.file_record(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            (tmp / BEST_FILE).write_text(json.dumps({**self.best, "files": files}, indent=1))

        outputs.write_dir(self.out / BEST_DIR, write)

    def finish(self, summary: dict) -> None:
        """Write the run summary last: a rerun of a finished run has nothing to do."""
        if self.writer:
            outputs.write_text(
                self.out / SUMMARY_FILE, json.dumps({**summary, "finished": True}, indent=2, default=str)
            )
        self.close()

    def close(self) -> None:
        """Close the metrics log, release the directory's lock and disarm the stop request; safe
        to call more than once."""
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self.stop.disarm()

    def _write(self, line: dict) -> None:
        if self._log is None:  # not the writer
            return
        self._log.write(json.dumps(line) + "\n")
        self._log.flush()

    def _cut_log(self) -> int:
        """Keep the log lines up to the checkpoint resumed from (all of them go when there is none)."""
        path = self.out / METRICS_FILE
        if not path.exists():
            return 0
        kept = self._kept_lines()
        outputs.write_text(path, "".join(json.dumps(line) + "\n" for line in kept))
        self._read_losses(kept)
        return len(kept)

    def _kept_lines(self) -> list[dict]:
        path = self.out / METRICS_FILE
        if not path.exists():
            return []
        limit = (self.state["stage"], self.state["step"]) if self.state else (-1, -1)
        return [line for line in _read_lines(path) if (line.get("stage_index", -1), line.get("step", -1)) <= limit]

    def _read_losses(self, lines: list[dict]) -> None:
        self.losses = {}
        for line in lines:
            if line.get("event") == "train":
                self.losses.setdefault(line["stage_index"], []).append(line["loss"])


def _finished(out: Path) -> bool:
    """``out`` holds a run whose summary says it finished."""
    summary = out / SUMMARY_FILE
    return (out / RUN_FILE).exists() and summary.exists() and bool(_read_json(summary).get("finished"))


def check_best(out: Path) -> None:
    """``out/best`` (when there) holds every file its best.json recorded, with its size and crc32c.

    Raises: CheckpointError naming the damaged file, and the fix (remove best/ to go on without
    it, the next best evaluation writes a new one; or start over).
    """
    best = Path(out) / BEST_DIR
    if not best.is_dir():
        return
    problem = None
    try:
        files = json.loads((best / BEST_FILE).read_text())["files"]
        for file_name, record in files.items():
            if not (best / file_name).is_file():
                problem = f"{file_name} is missing"
            elif (found := checkpoint.file_record(best / file_name)) != record:
                problem = (
                    f"{file_name} has {found['bytes']} bytes and crc32c {found['crc32c']}, "
                    f"{record.get('bytes')} bytes and {record.get('crc32c')} were written"
                )
            if problem:
                break
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        problem = f"{BEST_FILE} is unreadable or lacks its file records ({first_line(err)})"
    if problem:
        raise CheckpointError(
            f"the best model {str(best)!r} is damaged: {problem}; remove it to resume without it "
            "(the next best evaluation writes a new one), or pass {overwrite} to start over",
            field="overwrite",
        )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"{str(path)!r} is unreadable ({err}): pass {{overwrite}} to start over", field="overwrite"
        ) from None


def _read_lines(path: Path) -> list[dict]:
    """Parsed JSON lines; a line cut short by a kill is dropped."""
    out = []
    for text in path.read_text().splitlines():
        try:
            out.append(json.loads(text))
        except ValueError:
            log.warning("dropping an unreadable line of %s", path)
    return out
