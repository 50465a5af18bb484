"""Distil a student from an hsk-cache in a plain training loop under Hugging Face Accelerate.

    python examples/accelerate_loop.py --cache runs/cache --out runs/accelerate-student
    accelerate launch examples/accelerate_loop.py --cache runs/cache --out runs/accelerate-student

The student and the ``DistillationLoss`` module (which owns W_h) are prepared together, so
mixed precision, devices and DDP cover both; the loop is otherwise an ordinary PyTorch loop
over ``DataLoader(cache.dataset(), collate_fn=cache.collate)``. The teacher is never loaded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

from hsk_cache import DistillationLoss, model_inputs, open_cache, without_attention_dropout
from hsk_cache.models.students import student_from_config


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
    parser.add_argument("--epochs", type=int, default=3, help="passes over the cache (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW's peak learning rate (default: %(default)s)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the student, dropout and batch order (default: %(default)s)"
    )
    parser.add_argument(
        "--mixed-precision",
        default="no",
        choices=("no", "fp16", "bf16"),
        help="accelerate's mixed precision (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    cache = open_cache(args.cache)
    torch.manual_seed(args.seed)
    student = build_student(cache, args)
    if "attention_probs" in cache.knowledge:
        without_attention_dropout(student)  # compare undropped attention rows
    loss_fn = DistillationLoss(cache.manifest, student.config)
    loader = DataLoader(
        cache.dataset(),
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=cache.collate,
        generator=torch.Generator().manual_seed(args.seed),
    )
    parameters = [*student.parameters(), *loss_fn.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr)
    steps = args.epochs * len(loader)
    scheduler = get_linear_schedule_with_warmup(optimizer, steps // 10, steps)
    student, loss_fn, optimizer, loader, scheduler = accelerator.prepare(student, loss_fn, optimizer, loader, scheduler)
    inner = accelerator.unwrap_model(loss_fn)  # its helpers (capture_values, output_flags) live on the module

    history = []
    student.train()
    for _ in range(args.epochs):
        for batch in loader:
            with inner.capture_values(accelerator.unwrap_model(student)) as values:
                outputs = student(**model_inputs(batch, accelerator.unwrap_model(student)), **inner.output_flags())
            loss, terms = loss_fn(outputs, batch, values)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            history.append({"loss": loss.item(), **{k: v.item() for k, v in terms.items()}})

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(student).save_pretrained(args.out)
        cache.tokenizer.save_pretrained(args.out)
        result = {"steps": len(history), "losses": [h["loss"] for h in history], "terms": history}
        (Path(args.out) / "losses.json").write_text(json.dumps(result))
        print(
            f"trained {len(history)} steps, loss {history[0]['loss']:.4f} → {history[-1]['loss']:.4f}; "
            f"student in {args.out}"
        )
        return result
    return {}


if __name__ == "__main__":
    main()
