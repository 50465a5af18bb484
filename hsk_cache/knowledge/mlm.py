"""Masked-LM knowledge: the teacher's masked-LM distribution at statically masked positions, as top-k.

Source: DistilBERT (Sanh et al. 2019, §3, and its released ``distiller.py``): the student is
trained on L = α_ce·L_ce + α_mlm·L_mlm + α_cos·L_cos, with L_ce the soft-target cross-entropy
against the teacher's masked-LM head at temperature τ = 2 over the masked positions, L_mlm the
student's own masked-LM cross-entropy on the original tokens and L_cos the cosine of hidden states
(``hidden_loss="cosine"`` of the hidden-state kind); weights 5.0, 2.0, 1.0 (``term_weights``
``mlm_soft`` / ``mlm`` / ``hidden_states``). Masking is BERT's (Devlin et al. 2019, §3.1), static
(``knowledge.masking``): ``prepare_examples`` rewrites the examples' ``input_ids`` before the teacher
runs, so teacher and student see the same masked ids (stored as the cache's ``input_ids``).

The V-way distribution is stored as its top k probabilities and ids plus the remaining mass
(``losses.topk_soft_cross_entropy``: the exact cross-entropy of the coarsened (k+1)-bin
distributions, the full one when k = V). The rest mass is only valid at the temperature it was
computed at, so the loss uses the stored ``mlm_temperature``.

Teacher outputs: ``logits`` [B, T_b, V] of the masked-LM head (``needs_mlm_head``).
Options (``ExtractSpec.options``): ``mlm_probability`` (0.15), ``mlm_topk`` k (16),
``mlm_temperature`` τ (2.0). P = ``masking.slots(mlm_probability, T)``, the masked positions'
fixed width.

| batch key      | shape     | dtype   | content                                        |
|----------------|-----------|---------|------------------------------------------------|
| mlm_positions  | [B, P]    | int64   | masked positions, ascending, −1 = none         |
| mlm_labels     | [B, P]    | int64   | original token ids there, 0 at −1              |
| mlm_topk_ids   | [B, P, k] | int64   | the teacher's top-k ids at τ, 0 at −1          |
| mlm_topk_probs | [B, P, k] | float32 | their probabilities softmax(z_T/τ), 0 at −1    |
| mlm_rest_mass  | [B, P]    | float32 | 1 − Σ top-k probabilities, 0 at −1             |

| array          | shape     | dtype   | content                                  |
|----------------|-----------|---------|------------------------------------------|
| mlm_positions  | [N, P]    | int16   | masked positions, −1 = none              |
| mlm_labels     | [N, P]    | int32   | original token ids                       |
| mlm_topk_ids   | [N, P, k] | int32   | the teacher's top-k ids                  |
| mlm_topk_probs | [N, P, k] | q       | their probabilities at τ                 |
| mlm_rest_mass  | [N, P]    | float32 | the remaining probability mass           |
| *_scale        | [N, P]    | float32 | int8, float8_e4m3: absmax / 127, / 448   |
"""

from __future__ import annotations

import numpy as np
import torch

from hsk_cache.errors import ConfigError, ModelError
from hsk_cache.knowledge import losses, masking
from hsk_cache.knowledge.kind import (
    ArraySpec,
    KnowledgeKind,
    LossOptions,
    Term,
    dequantized,
    index_array,
    pad,
    quantized,
    value_arrays,
)

# Plan.extra fields (and the manifest's kinds.mlm section)
SLOTS, TOPK, VOCAB, TEMPERATURE = "mlm_slots", "mlm_topk", "mlm_vocab_size", "mlm_temperature"


class MaskedLM(KnowledgeKind):
    """The teacher's masked-LM distribution at statically masked positions (module docstring)."""

    name = "mlm"
    batch_keys = ("mlm_positions", "mlm_labels", "mlm_topk_ids", "mlm_topk_probs", "mlm_rest_mass")
    index_keys = ("mlm_positions",)
    example_keys = ("mlm_positions", "mlm_labels")  # static masking's: the teacher's inputs too
    stage = "general"  # corpus caches only: trained by the general stage
    options = {"mlm_probability": 0.15, "mlm_topk": 16, "mlm_temperature": 2.0}
    needs_mlm_head = True

    def check_options(self, options: dict) -> None:
        """Raises: ConfigError naming the option: ``mlm_probability`` outside (0, 1), ``mlm_topk``
        not an integer ≥ 1, ``mlm_temperature`` not > 0."""
        masking.check_probability(options["mlm_probability"])
        topk = options["mlm_topk"]
        if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1:
            raise ConfigError(
                f"{{mlm_topk}} {topk!r}: use a number of teacher probabilities k ≥ 1 per masked position, e.g. 16",
                field="mlm_topk",
                value=topk,
            )
        temperature = options["mlm_temperature"]
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ConfigError(
                f"{{mlm_temperature}} {temperature!r}: use a temperature τ > 0 (DistilBERT: 2)",
                field="mlm_temperature",
                value=temperature,
            )

    def prepare_examples(self, examples, spec, tokenizer):
        """``examples`` statically masked (``masking.mask_examples`` with ``spec.seed``): masked
        ``input_ids`` [N, T] int32 and extra ``mlm_positions`` [N, P] int16, ``mlm_labels`` [N, P]
        int32. Raises: ConfigError for a tokenizer without a mask token."""
        tokens = masking.MaskTokens.of(tokenizer)
        ids, positions, labels = masking.mask_examples(examples, tokens, spec.option("mlm_probability"), spec.seed)
        return examples.with_inputs(ids, mlm_positions=positions, mlm_labels=labels)

    def resolve(self, spec, config, max_length: int, selected: bool) -> dict:
        """``mlm_slots`` P, ``mlm_topk`` k, ``mlm_vocab_size`` V (the teacher config's) and
        ``mlm_temperature`` τ (``Plan.extra``). Raises: ConfigError (field ``mlm_topk``) for k > V."""
        if not selected:
            return {}
        vocab, topk = int(config.vocab_size), int(spec.option("mlm_topk"))
        if topk > vocab:
            raise ConfigError(
                f"{{mlm_topk}} {topk}: the teacher's vocabulary has only {vocab} tokens", field="mlm_topk", value=topk
            )
        return {
            SLOTS: masking.slots(spec.option("mlm_probability"), max_length),
            TOPK: topk,
            VOCAB: vocab,
            TEMPERATURE: float(spec.option("mlm_temperature")),
        }

    def manifest_fields(self, plan) -> dict:
        """P, k, V and τ (the manifest's ``kinds.mlm``)."""
        return {key: plan.extra[key] for key in (SLOTS, TOPK, VOCAB, TEMPERATURE)}

    def from_manifest(self, stored) -> dict:
        """``Plan.extra`` from ``manifest_fields``' output."""
        return {
            SLOTS: int(stored[SLOTS]),
            TOPK: int(stored[TOPK]),
            VOCAB: int(stored[VOCAB]),
            TEMPERATURE: float(stored[TEMPERATURE]),
        }

    def select(self, outputs, batch, plan) -> dict[str, torch.Tensor]:
        """The teacher's distribution softmax(z_T/τ) at each masked position (``batch.extra``'s
        ``mlm_positions`` [B, P], −1 = none): its top-k probabilities and ids, and the rest mass,
        exp(logsumexp(z/τ outside the top k) − logsumexp(z/τ)) (stable, exactly 0 at k = V).
        Raises: ModelError when the teacher's logits are not [B, T_b, V] (no masked-LM head)."""
        logits = outputs.logits
        vocab = plan.extra[VOCAB]
        if logits is None or logits.dim() != 3 or logits.shape[-1] != vocab:
            shape = None if logits is None else list(logits.shape)
            raise ModelError(
                f"the mlm knowledge needs the teacher's masked-LM logits [B, T, {vocab}] but got {shape}: "
                "load the teacher with its masked-LM head (AutoModelForMaskedLM)"
            )
        positions = batch.extra["mlm_positions"].to(logits.device)
        labels = batch.extra["mlm_labels"].to(logits.device)
        valid = positions >= 0
        rows = torch.arange(len(positions), device=logits.device)[:, None]
        scaled = logits[rows, positions.clamp(min=0)].float() / plan.extra[TEMPERATURE]  # [B, P, V]
        log_probs = torch.log_softmax(scaled, dim=-1)
        top, ids = log_probs.topk(plan.extra[TOPK], dim=-1)
        outside = log_probs.scatter(-1, ids, float("-inf"))
        rest = torch.logsumexp(outside, dim=-1).exp()
        zero = torch.zeros((), dtype=torch.float32, device=logits.device)
        return {
            "mlm_positions": torch.where(valid, positions, -1),
            "mlm_labels": torch.where(valid, labels, 0),
            "mlm_topk_ids": torch.where(valid[..., None], ids, 0),
            "mlm_topk_probs": torch.where(valid[..., None], top.exp(), zero),
            "mlm_rest_mass": torch.where(valid, rest, zero),
        }

    def arrays(self, plan, n: int) -> list[ArraySpec]:
        """mlm_positions, mlm_labels, mlm_topk_ids, mlm_topk_probs (stored dtype), mlm_rest_mass."""
        p, k = plan.extra[SLOTS], plan.extra[TOPK]
        codec = plan.spec.codec
        return [
            index_array("mlm_positions", (n, p)),
            ArraySpec("mlm_labels", (n, p), "int32", "zstd", role="index"),
            ArraySpec("mlm_topk_ids", (n, p, k), "int32", "zstd", role="values"),
            *value_arrays("mlm_topk_probs", (n, p, k), plan),
            ArraySpec("mlm_rest_mass", (n, p), "float32", codec, role="values"),
        ]

    def encode(self, knowledge: dict, plan) -> dict[str, np.ndarray]:
        """Pad the position axis to P (−1 / 0), cast the ids, quantize the probabilities."""
        p = plan.extra[SLOTS]
        out = {
            "mlm_positions": pad(knowledge["mlm_positions"], 1, p, -1).astype(np.int16),
            "mlm_labels": pad(knowledge["mlm_labels"], 1, p, 0).astype(np.int32),
            "mlm_topk_ids": pad(knowledge["mlm_topk_ids"], 1, p, 0).astype(np.int32),
            "mlm_rest_mass": pad(knowledge["mlm_rest_mass"], 1, p, 0.0).astype(np.float32),
        }
        quantized(out, "mlm_topk_probs", pad(knowledge["mlm_topk_probs"], 1, p, 0.0), plan.spec.dtype)
        return out

    def decode(self, rows: dict[str, np.ndarray], plan, width: int) -> dict[str, torch.Tensor]:
        """int64 positions, labels and ids; float32 probabilities and rest mass ([B, P], [B, P, k])."""
        as_long = lambda name: torch.from_numpy(rows[name].astype(np.int64))
        return {
            "mlm_positions": as_long("mlm_positions"),
            "mlm_labels": as_long("mlm_labels"),
            "mlm_topk_ids": as_long("mlm_topk_ids"),
            "mlm_topk_probs": torch.from_numpy(dequantized(rows, "mlm_topk_probs", plan.spec.dtype)),
            "mlm_rest_mass": torch.from_numpy(rows["mlm_rest_mass"].astype(np.float32)),
        }

    def term(self, plan, student_config, options: LossOptions) -> MaskedLMTerm:
        """The soft top-k cross-entropy and the student's MLM cross-entropy. Raises: ConfigError
        (field ``temperature``) for a temperature other than 1 (the default) and the stored τ."""
        return MaskedLMTerm(plan, student_config, options)


class MaskedLMTerm(Term):
    """DistilBERT's L_ce and L_mlm (Sanh et al. 2019, §3) at the masked positions.

    - ``mlm_soft``: τ² · cross-entropy between the teacher's (k+1)-bin distribution (top-k + rest
      mass) and the student's softmax(z_S/τ) coarsened to the same bins
      (``losses.topk_soft_cross_entropy``), τ the stored ``mlm_temperature``;
    - ``mlm``: the student's cross-entropy against the original tokens (τ = 1).

    Both are means over the masked positions of the (global) batch.
    """

    name = "mlm"
    stage = "general"

    def __init__(self, plan, student_config, options: LossOptions) -> None:
        stored = plan.extra[TEMPERATURE]
        if options.temperature != 1.0 and options.temperature != stored:
            raise ConfigError(
                f"{{temperature}} {options.temperature}: the mlm knowledge was stored at τ = {stored} "
                "(its rest mass holds only there); leave the temperature at 1 or pass the stored one",
                field="temperature",
                value=options.temperature,
            )
        self.temperature, self.vocab_size = stored, plan.extra[VOCAB]

    def __call__(self, outputs, values, batch: dict, world_size: int = 1, training: bool = False) -> dict:
        """{"mlm_soft": loss, "mlm": loss}, scalars float32.

        Args: outputs: the student's output with ``logits`` [B, T_b, V]; batch: the mlm keys.
        Raises: ModelError when the student's logits are not [B, T_b, V] (no masked-LM head).
        """
        logits = getattr(outputs, "logits", None)
        if logits is None or logits.dim() != 3 or logits.shape[-1] != self.vocab_size:
            shape = None if logits is None else list(logits.shape)
            raise ModelError(
                f"the mlm terms need a masked-LM student: logits [B, T, {self.vocab_size}] but got {shape}; "
                "build the student with its masked-LM head (AutoModelForMaskedLM)"
            )
        positions = batch["mlm_positions"].to(logits.device)
        b, p = (positions >= 0).nonzero(as_tuple=True)
        student = logits[b, positions[b, p]]  # [M, V]
        soft = losses.topk_soft_cross_entropy(
            student,
            batch["mlm_topk_ids"].to(logits.device)[b, p],
            batch["mlm_topk_probs"].to(logits.device)[b, p],
            batch["mlm_rest_mass"].to(logits.device)[b, p],
            self.temperature,
            world_size,
        )
        hard = losses.hard_cross_entropy(student, batch["mlm_labels"].to(logits.device)[b, p], world_size)
        return {"mlm_soft": soft, "mlm": hard}
