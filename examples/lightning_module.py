"""Distil a student from an hsk-cache with a Lightning ``LightningModule`` and ``lightning``'s Trainer.

    python examples/lightning_module.py --cache runs/cache --out runs/lightning-student --epochs 3

The teacher is never loaded: the knowledge comes from the cache. The module holds the student
and the ``DistillationLoss`` (which owns W_h) as attributes, so W_h is one of the module's
parameters: ``configure_optimizers`` builds AdamW over the student and W_h, and the Trainer's
gradient clipping (``gradient_clip_val``) and zeroing cover both. ``training_step`` runs the
student with the outputs the loss needs and returns the loss. The data is
``DataLoader(cache.dataset(), collate_fn=cache.collate)``; ``--hsk-order`` draws batches in the
order ``hsk train`` uses for the same seed (``cache.epoch_sampler``, whose ``set_epoch`` the
Trainer calls every epoch) instead of a shuffle.

The student is ``--student DIR`` (any saved sequence classifier with the cache's classes), or a
fresh one of the teacher's family built from the cache's teacher config with ``--layers``,
``--hidden``, ``--heads``. Like the other examples it trains on one CPU device and saves the
student, the tokenizer, W_h (``distillation_loss.safetensors``) and ``losses.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from common import add_options, student_and_loss
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

from hsk_cache import DistillationLoss, model_inputs, open_cache


class DistillationModule(pl.LightningModule):
    """A student trained on a cache's knowledge by ``DistillationLoss``.

    Args:
        student: a sequence classifier (eager attention when attention or value relation is
            distilled: ``sdpa`` returns no attention probabilities).
        distillation_loss: built from the cache's manifest and ``student.config``; an attribute,
            so its parameters (W_h: [D_teacher, D_student] weight and [D_teacher] bias, when
            hidden states are distilled) are the module's and train with the student's.
        lr: AdamW's peak learning rate.
        warmup_ratio: linear warmup over this fraction of the steps, then linear decay to 0
            (``hsk train``'s schedule).
    """

    def __init__(
        self, student: torch.nn.Module, distillation_loss: DistillationLoss, lr: float = 1e-4, warmup_ratio: float = 0.1
    ) -> None:
        super().__init__()
        self.student = student
        self.distillation_loss = distillation_loss
        self.lr, self.warmup_ratio = lr, warmup_ratio
        self.step_terms: list[dict[str, float]] = []  # every training step's loss and terms

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The loss (a scalar tensor) of one collated batch of ``cache.collate``: the student's
        inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` [B, T_b], ``labels`` [B] and
        the knowledge, e.g. ``hidden_states`` [B, L_k, K, D], ``attention_probs``
        [B, L_a, H, K, T_b], ``value_relation`` [B, H, K, T_b], ``logits`` [B, C] with their
        indices (the table in docs/api.md)."""
        loss_fn = self.distillation_loss
        with loss_fn.capture_values(self.student) as values:  # value vectors, when value relation is distilled
            outputs = self.student(**model_inputs(batch, self.student), **loss_fn.output_flags())
        loss, terms = loss_fn(outputs, batch, values)
        self.step_terms.append({"loss": loss.item(), **{k: v.item() for k, v in terms.items()}})
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=len(batch["labels"]))
        return loss

    def configure_optimizers(self):
        """AdamW over the student's trainable parameters and W_h (in that order, as ``hsk train``
        builds it), with the linear warmup-then-decay schedule stepped every optimizer step."""
        parameters = [p for p in self.parameters() if p.requires_grad]  # student's, then the loss's
        optimizer = torch.optim.AdamW(parameters, lr=self.lr)
        total = self.trainer.estimated_stepping_batches
        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser)
    args = parser.parse_args(argv)

    cache = open_cache(args.cache)
    student, loss_fn = student_and_loss(cache, args)
    module = DistillationModule(student, loss_fn, lr=args.lr, warmup_ratio=args.warmup_ratio)
    module.train()  # from_pretrained returns eval mode, and the Trainer keeps each module's: dropout on, as hsk train

    order = {"sampler": cache.epoch_sampler(args.seed)} if args.hsk_order else {"shuffle": True}
    loader = DataLoader(
        cache.dataset(),
        batch_size=args.batch_size,
        collate_fn=cache.collate,
        generator=torch.Generator().manual_seed(args.seed),  # its own: the iterator's seed draw leaves dropout's alone
        **order,
    )
    # items are collated in this process, as in the other examples (a cache larger than memory: --hsk-order
    # reads it a shard window at a time)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=args.epochs,
        gradient_clip_val=1.0,  # the global norm over every parameter in the optimizer: the student's and W_h
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=sys.stdout.isatty(),
        default_root_dir=args.out,
    )
    pl.seed_everything(args.seed, verbose=False)  # dropout draws from the seed from the first step on, as in hsk train
    trainer.fit(module, train_dataloaders=loader)

    student.save_pretrained(args.out)
    cache.tokenizer.save_pretrained(args.out)
    if loss_fn.projection is not None:  # W_h, for a later stage that continues from this one
        save_file(loss_fn.state_dict(), str(Path(args.out) / "distillation_loss.safetensors"))
    result = {
        "steps": len(module.step_terms),
        "losses": [t["loss"] for t in module.step_terms],
        "terms": module.step_terms,
    }
    (Path(args.out) / "losses.json").write_text(json.dumps(result))
    first, last = result["losses"][:1], result["losses"][-1:]
    print(f"trained {result['steps']} steps, loss {first[0]:.4f} → {last[0]:.4f}; student in {args.out}")
    return result


if __name__ == "__main__":
    main()
