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
from common import add_options, student_and_loss
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

from hsk_cache import model_inputs, open_cache


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser, loss_options=False)
    parser.add_argument(
        "--mixed-precision",
        default="no",
        choices=("no", "fp16", "bf16"),
        help="accelerate's mixed precision (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    cache = open_cache(args.cache)
    student, loss_fn = student_and_loss(cache, args)
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
