"""``hsk verify --against-teacher``: recompute a seeded sample of a cache's examples with the live
teacher and compare every stored kind with what the teacher gives now.

A checksum proves the bytes are the ones written; it cannot tell that they were wrong when
written (a teacher loaded with the wrong head, another tokenizer, a precision bug). This check
reruns extraction's own path on the sample: the cached input_ids (what a student trains on) go
through the teacher (``run_teacher`` at the cache's precision), the cache's selection
(``Plan.make`` from the stored spec, with the stored tokenizer, as extraction built it) and the
stored dtype's encoding (``Plan.encode``). Both sides are then decoded as training decodes them
(``Plan.decode``), one example at a time, and compared key by key:

- integer keys (token_index, attention_index, mlm positions and ids, masks): equal. An example
  whose selection differs (a near-tie that recomputation noise flips, or another teacher) is not
  compared further; more than ``SELECTION_SLACK`` of the sample is a mismatch;
- float keys: |stored − recomputed| ≤ one step of the stored dtype at the value (int8:
  max|row| / 127; float16: 2^-10 |x|; bfloat16: 2^-7 |x|; float8_e4m3: 2^-3 |x| + max|row| ·
  2^-8 / 448: the encode of the recomputed values can round to the neighbouring step) plus the
  recomputation noise (1e-4 of the row's largest magnitude in fp32; 2^-6 under bf16/fp16
  autocast, whose rounding depends on the batch's padding). float32 caches therefore match to
  the noise of recomputing in other batches (bitwise only in the very batches extraction ran).

The stored tokenizer's files are compared with the teacher's; when they differ, the sampled
input_ids are decoded with the stored tokenizer and encoded again with the teacher's, and any
difference is a mismatch ("input_ids"). A teacher whose shape differs from the cache's (layers,
width, heads, classes) is a mismatch without running it.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from hsk_cache.errors import ConfigError, HskError
from hsk_cache.knowledge.batch import Examples, collate
from hsk_cache.knowledge.plan import Plan
from hsk_cache.models import hub
from hsk_cache.models.teacher import run_teacher
from hsk_cache.store import layout
from hsk_cache.store.reader import CacheReader
from hsk_cache.store.writer import tokenizer_files

SELECTION_SLACK = 0.02  # fraction of the sample whose selection may differ (near-ties flipped by noise)
STEP = {"float32": 0.0, "float16": 2.0**-10, "bfloat16": 2.0**-7, "float8_e4m3": 2.0**-3}  # relative step
NOISE = {"fp32": 1e-4, "bf16": 2.0**-6, "fp16": 2.0**-6}  # of the row's max |x|


@dataclass
class KeyResult:
    """One compared key: ``examples`` compared, ``max_abs`` the largest |stored − recomputed|,
    ``worst`` that difference over its bound (≤ 1 passes; integer keys are equal in every
    compared example), and ``worst_example`` the example id where it is."""

    kind: str
    key: str
    examples: int = 0
    max_abs: float = 0.0
    worst: float = 0.0
    worst_example: int | None = None

    @property
    def ok(self) -> bool:
        """Every compared difference within its bound."""
        return self.worst <= 1.0


def _kind_of(kinds: dict[str, str], key: str) -> str:
    return kinds.get(key, key)


@dataclass
class TeacherCheck:
    """What ``against_teacher`` found. ``mismatches``: one line per failed kind (empty: all
    match); ``keys``: every compared key; ``selection_differs``: per kind, the example ids whose
    integer keys (its selection) differ, so its values there were not compared; ``notes``: what
    was not compared and why; ``same_weights``: the teacher's weights sha256 equals the one the
    cache recorded."""

    path: str
    teacher: str
    sample: int
    same_weights: bool
    keys: list[KeyResult] = field(default_factory=list)
    selection_differs: dict[str, list[int]] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        """No mismatch: every kind the teacher recomputed agrees with the cache."""
        return not self.mismatches

    def to_dict(self) -> dict:
        """The JSON form (``hsk verify --json``'s ``against_teacher``), with ``ok``."""
        return {**asdict(self), "ok": self.ok}


def against_teacher(
    path: str,
    teacher: str,
    sample: int = 64,
    seed: int = 0,
    batch_size: int = 16,
    device: str = "cpu",
    storage_options: dict | None = None,
) -> TeacherCheck:
    """Recompute ``sample`` examples of the cache at ``path`` (a seeded random choice, sorted)
    with ``teacher`` (a saved model directory or name) and compare (module docstring).

    Raises: ConfigError for a sample or batch size < 1; CacheError for a missing, incomplete or damaged cache
    (as ``hsk verify`` reports it); ModelError when the teacher cannot be loaded.
    """
    if sample < 1:
        raise ConfigError(f"{{sample}} {sample}: recompute at least 1 example", field="sample", value=sample)
    if batch_size < 1:
        raise ConfigError(f"{{batch_size}} {batch_size}: use at least 1", field="batch_size", value=batch_size)
    started = time.perf_counter()
    reader = CacheReader(path, storage_options)
    reader.require_complete()
    m = reader.manifest
    n = m.num_examples
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    spec = Plan.of_manifest(m).spec
    if m.data.corpus:  # as extraction loads it (data.sources.load_teacher)
        model = hub.load_encoder(teacher, mlm=spec.needs_mlm_head, attention=spec.needs_attention)
    else:
        model = hub.load_classifier(teacher, attention=spec.needs_attention)
    model = model.to(device).eval()
    check = TeacherCheck(
        reader.path, teacher, len(rows), hub.weights_sha256(hub.resolve(teacher)) == m.teacher.weights_sha256
    )
    shape = _shape_mismatch(m, model.config)
    if shape:
        check.mismatches.append(f"teacher: {shape}")
        check.elapsed_s = time.perf_counter() - started
        return check
    files, problem = reader.tokenizer_problem()
    if problem:
        raise reader.damaged(problem)
    tokenizer = reader.load_tokenizer(files)
    stored = _read_rows(reader, rows)
    _compare_tokenizer(check, files, tokenizer, teacher, stored)
    if check.mismatches:  # other input_ids: the teacher would be run on what it never saw
        check.elapsed_s = time.perf_counter() - started
        return check
    try:
        plan = Plan.make(spec, model.config, tokenizer, m.max_length)
    except HskError as err:
        check.mismatches.append(f"teacher: the cache's selection does not apply to it ({err})")
        check.elapsed_s = time.perf_counter() - started
        return check
    extra = {key: stored[key] for kind in plan.kinds for key in kind.example_keys}
    examples = Examples(
        stored["input_ids"],
        stored.get("token_type_ids"),
        stored["lengths"],
        stored["labels"],
        stored["example_ids"],
        extra,
    )
    kinds = {key: kind.name for kind in plan.kinds for key in kind.batch_keys}  # batch key → its kind
    dtypes = _value_dtypes(plan, n)
    results: dict[str, KeyResult] = {}
    noise = NOISE.get(m.precision, NOISE["fp32"])
    for start in range(0, len(rows), batch_size):
        index = np.arange(start, min(start + batch_size, len(rows)))
        batch = collate(examples, index)
        fresh = plan.encode(plan.select(run_teacher(model, batch, plan, m.precision), batch.to(device)))
        for j, i in enumerate(index):
            width = int(examples.lengths[i])
            ours = plan.decode({k: v[j : j + 1] for k, v in fresh.items()}, width)
            theirs = plan.decode({k: stored[k][i : i + 1] for k in fresh}, width)
            _compare_example(results, kinds, ours, theirs, int(examples.example_ids[i]), dtypes, noise, check)
    check.keys = list(results.values())
    failed = sorted({r.kind for r in check.keys if not r.ok})
    for kind in failed:
        worst = max((r for r in check.keys if r.kind == kind), key=lambda r: r.worst)
        check.mismatches.append(
            f"{kind}: {worst.key} differs by up to {worst.max_abs:.3g} ({worst.worst:.3g}× its bound), "
            f"worst at example {worst.worst_example}"
        )
    allowed = math.floor(SELECTION_SLACK * len(rows))
    for kind, differs in sorted(check.selection_differs.items()):
        if len(differs) > allowed:
            check.mismatches.append(
                f"{kind}: its selection differs in {len(differs)} of {len(rows)} examples (other tokens or "
                f"entries kept; at most {allowed} may differ by near-ties), e.g. example {differs[0]}"
            )
    check.elapsed_s = time.perf_counter() - started
    return check


def _shape_mismatch(m, config) -> str | None:
    """How the teacher's shape differs from the one the cache was extracted with, or None."""
    ours = (config.num_hidden_layers, config.hidden_size, config.num_attention_heads)
    theirs = (m.teacher.num_layers, m.teacher.hidden_size, m.teacher.num_heads)
    if ours != theirs:
        return (
            f"it has {ours[0]} layers × {ours[1]} dims × {ours[2]} heads, the cache's teacher had "
            f"{theirs[0]} × {theirs[1]} × {theirs[2]}"
        )
    classes = len(m.teacher.config.get("id2label") or {}) or None
    if not m.data.corpus and classes is not None and config.num_labels != classes:
        return f"its head has {config.num_labels} outputs, the cache's teacher had {classes}"
    return None


def _read_rows(reader: CacheReader, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Every per-example array at ``rows`` (zarr reads only the shards holding them, each chunk's
    crc32c checked)."""
    out = {}
    for spec in layout.manifest_arrays(reader.manifest):
        if spec.per_example and reader.has(spec.name):
            array = reader.group[spec.name]
            out[spec.name] = array.get_orthogonal_selection((rows,) + (slice(None),) * (array.ndim - 1))
    return out


def _compare_tokenizer(check: TeacherCheck, stored_files: dict, stored_tokenizer, teacher: str, stored: dict) -> None:
    """The teacher's tokenizer against the stored one: the same files (``stored_files``, as
    extraction wrote them with ``tokenizer_files``), or the same input_ids for the sample (decoded
    with the stored tokenizer, encoded again with the teacher's)."""
    live = hub.load_tokenizer(teacher)
    if tokenizer_files(live) == stored_files:
        return
    differs = []
    for ids, length, example in zip(stored["input_ids"], stored["lengths"], stored["example_ids"]):
        piece = ids[: int(length)].tolist()
        text = stored_tokenizer.decode(piece, skip_special_tokens=True)
        again = live(text, truncation=True, max_length=len(ids))["input_ids"]
        if again != piece:
            differs.append(int(example))
    if differs:
        check.mismatches.append(
            f"input_ids: the teacher's tokenizer encodes {len(differs)} of {len(stored['input_ids'])} sampled "
            f"examples differently from the cache's (e.g. example {differs[0]}): another tokenizer"
        )
    else:
        check.notes.append("the teacher's tokenizer files differ from the cache's, but encode the sample alike")


def _value_dtypes(plan: Plan, n: int) -> dict[str, str]:
    """The stored precision of each value array (``quantize.STORAGE_DTYPE``'s keys): float32 for
    float32 arrays (sequence logits, rest masses), the spec's dtype for the rest; a decoded key
    that is no array (dense states of magnitude width) takes the spec's dtype."""
    stored = {
        spec.name: "float32" if spec.dtype == "float32" else plan.spec.dtype
        for spec in plan.arrays(n)
        if spec.role in ("values", "key_rows", "real_tokens")
    }
    return defaultdict(lambda: plan.spec.dtype, stored)


def _compare_example(results, kinds, ours, theirs, example, dtypes, noise, check) -> None:
    """Compare one example's decoded keys (``ours`` recomputed, ``theirs`` stored), kind by kind:
    a kind whose integer keys differ has its selection counted as differing, its values skipped."""
    integer = {k for k, v in theirs.items() if not torch.is_floating_point(v)}
    differs = {
        _kind_of(kinds, k) for k in integer if ours[k].shape != theirs[k].shape or not torch.equal(ours[k], theirs[k])
    }
    for kind in differs:
        check.selection_differs.setdefault(kind, []).append(example)
    for key, stored in theirs.items():
        if _kind_of(kinds, key) in differs:
            continue
        result = results.setdefault(key, KeyResult(_kind_of(kinds, key), key))
        result.examples += 1
        if key in integer:
            continue
        if ours[key].shape != stored.shape:
            result.worst, result.worst_example, result.max_abs = math.inf, example, math.inf
            continue
        fresh = ours[key].double()
        diff = (stored.double() - fresh).abs()
        if not diff.numel():
            continue
        dtype = dtypes[key]
        top = fresh.abs().amax(dim=-1, keepdim=True) if fresh.ndim else fresh.abs()
        bound = STEP.get(dtype, 0.0) * fresh.abs() + noise * top
        if dtype == "int8":
            bound = bound + top / 127.0
        if dtype == "float8_e4m3":
            bound = bound + top * 2.0**-8 / 448.0
        ratio = (diff / bound.clamp_min(1e-30)).where(diff > 0, torch.zeros_like(diff))
        worst = float(ratio.max())
        if worst > result.worst:
            result.worst, result.worst_example = worst, example
        result.max_abs = max(result.max_abs, float(diff.max()))


def table(check: TeacherCheck) -> str:
    """The compared keys as a Markdown table: kind, key, examples, max |diff|, worst / bound, verdict."""
    lines = ["| kind | key | examples | max abs diff | worst / bound | |", "|---|---|---|---|---|---|"]
    for r in sorted(check.keys, key=lambda r: (r.kind, r.key)):
        verdict = "ok" if r.ok else f"MISMATCH (example {r.worst_example})"
        lines.append(f"| {r.kind} | {r.key} | {r.examples} | {r.max_abs:.3g} | {r.worst:.3g} | {verdict} |")
    return "\n".join(lines)
