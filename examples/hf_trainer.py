"""Distil a student from an hsk-cache with Hugging Face ``transformers.Trainer``.

    python examples/hf_trainer.py --cache runs/cache --out runs/trainer-student --epochs 3

The teacher is never loaded: the knowledge comes from the cache. Three things differ from a
plain Trainer run, each marked below:

1. the data: ``cache.dataset()`` with ``collate_fn=cache.collate`` (and ``remove_unused_columns``
   off, so the knowledge reaches ``compute_loss``); ``--hsk-order`` draws batches in the order
   ``hsk train`` uses for the same seed (``cache.epoch_sampler``) instead of Trainer's shuffle;
2. the loss: ``compute_loss`` runs the student with the outputs ``DistillationLoss`` needs;
3. W_h: the loss module owns the width projection, so the optimizer is built over the student's
   and the loss's parameters, and a callback clips gradients over both and zeroes W_h's
   (Trainer's own clipping and ``model.zero_grad`` see only the model's).

The student is ``--student DIR`` (any saved sequence classifier with the cache's classes), or a
fresh one of the teacher's family built from the cache's teacher config with ``--layers``,
``--hidden``, ``--heads``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import add_options, student_and_loss
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from transformers import (
    Trainer,
    TrainerCallback,
    TrainingArguments,
    get_linear_schedule_with_warmup,
)

from hsk_cache import DistillationLoss, model_inputs, open_cache


class DistillationTrainer(Trainer):
    """A Trainer whose loss is ``DistillationLoss`` on the cache's knowledge."""

    def __init__(self, *args, distillation_loss: DistillationLoss, train_loader=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.distillation_loss = distillation_loss.to(self.args.device)
        self.train_loader = train_loader
        self.step_terms: list[dict[str, float]] = []  # every training step's loss terms

    def get_train_dataloader(self):
        if self.train_loader is None:
            return super().get_train_dataloader()
        return self.accelerator.prepare(self.train_loader)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss_fn = self.distillation_loss
        with loss_fn.capture_values(model) as values:  # value vectors, when value relation is distilled
            outputs = model(**model_inputs(inputs, model), **loss_fn.output_flags())
        loss, terms = loss_fn(outputs, inputs, values)
        if model.training:
            self.step_terms.append({"loss": loss.item(), **{k: v.item() for k, v in terms.items()}})
        return (loss, outputs) if return_outputs else loss


class LossParameters(TrainerCallback):
    """Trainer clips and zeroes the gradients of the model only: clip the global norm over the
    student and W_h together before each optimizer step, and zero W_h's gradients after it."""

    def __init__(self, parameters, loss_fn: torch.nn.Module, max_norm: float = 1.0):
        self.parameters, self.loss_fn, self.max_norm = list(parameters), loss_fn, max_norm

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        torch.nn.utils.clip_grad_norm_(self.parameters, self.max_norm)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.loss_fn.zero_grad(set_to_none=True)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser, epochs_type=float)
    args = parser.parse_args(argv)

    cache = open_cache(args.cache)
    student, loss_fn = student_and_loss(cache, args)

    # 1. data: the cache as a dataset (in hsk train's order with --hsk-order)
    dataset = cache.dataset()
    loader = None
    if args.hsk_order:
        loader = DataLoader(
            dataset,
            batch_size=args.batch_size,
            sampler=cache.epoch_sampler(args.seed),
            collate_fn=cache.collate,
            generator=torch.Generator().manual_seed(args.seed),
        )
    steps = round(args.epochs * -(-len(dataset) // args.batch_size))
    # 3. W_h trains with the student: one optimizer over both, clipped together
    parameters = [p for p in student.parameters() if p.requires_grad] + list(loss_fn.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=args.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * steps), steps)
    training_args = TrainingArguments(
        output_dir=args.out,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        seed=args.seed,
        max_grad_norm=0.0,
        remove_unused_columns=False,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = DistillationTrainer(
        model=student,
        args=training_args,
        train_dataset=dataset,
        data_collator=cache.collate,
        optimizers=(optimizer, scheduler),
        callbacks=[LossParameters(parameters, loss_fn)],
        distillation_loss=loss_fn,
        train_loader=loader,
    )
    trainer.train()
    trainer.save_model(args.out)
    cache.tokenizer.save_pretrained(args.out)
    if loss_fn.projection is not None:  # W_h, for a later stage that continues from this one
        save_file(loss_fn.state_dict(), str(Path(args.out) / "distillation_loss.safetensors"))
    result = {
        "steps": len(trainer.step_terms),
        "losses": [t["loss"] for t in trainer.step_terms],
        "terms": trainer.step_terms,
    }
    (Path(args.out) / "losses.json").write_text(json.dumps(result))
    first, last = result["losses"][:1], result["losses"][-1:]
    print(f"trained {result['steps']} steps, loss {first[0]:.4f} → {last[0]:.4f}; student in {args.out}")
    return result


if __name__ == "__main__":
    main()
