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
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    get_linear_schedule_with_warmup,
)

from hsk_cache import DistillationLoss, model_inputs, open_cache, without_attention_dropout
from hsk_cache.models.students import student_from_config


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


def build_student(cache, args):
    if args.student:
        return AutoModelForSequenceClassification.from_pretrained(args.student, attn_implementation="eager")
    # a fresh student of the teacher's family (each family names its options its own way)
    return student_from_config(
        cache.teacher_config,
        len(cache.label_names),
        args.layers,
        args.hidden,
        args.heads,
        4 * args.hidden,
        attention=True,
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="a complete cache made by hsk extract")
    parser.add_argument("--out", required=True, help="where the student (and losses.json) are saved")
    parser.add_argument("--student", default=None, help="a saved classifier to distil into (default: build one)")
    parser.add_argument("--layers", type=int, default=2, help="layers of a built student (default: %(default)s)")
    parser.add_argument("--hidden", type=int, default=128, help="width of a built student (default: %(default)s)")
    parser.add_argument(
        "--heads", type=int, default=4, help="attention heads of a built student (default: %(default)s)"
    )
    parser.add_argument("--epochs", type=float, default=3, help="passes over the cache (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW's peak learning rate (default: %(default)s)")
    parser.add_argument(
        "--warmup-ratio",
        type=float,
        default=0.1,
        help="fraction of the steps of linear warmup, then linear decay (default: %(default)s)",
    )
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="softmax temperature of the logits term (default: %(default)s)"
    )
    parser.add_argument(
        "--terms",
        default=None,
        help="comma list of loss terms (hidden_states, attention_probs, "
        "value_relation, logits; default: every kind the cache holds)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the student, dropout and batch order (default: %(default)s)"
    )
    parser.add_argument(
        "--hsk-order", action="store_true", help="batches in hsk train's order for --seed (default: a shuffle)"
    )
    args = parser.parse_args(argv)

    cache = open_cache(args.cache)
    torch.manual_seed(args.seed)
    student = build_student(cache, args)
    if "attention_probs" in cache.knowledge:
        without_attention_dropout(student)  # compare undropped attention rows
    terms = args.terms.split(",") if args.terms else None
    loss_fn = DistillationLoss(cache.manifest, student.config, terms=terms, temperature=args.temperature)

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
