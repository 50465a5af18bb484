"""Depth: student→teacher layer maps for the hidden-state loss.

Layers are numbered as in ``output_hidden_states``: 0 is the embedding output, l the output of
transformer layer l.
"""

from __future__ import annotations

import math

from hsk_cache.errors import ConfigError


def uniform_layer_map(student_layers: int, top_layer: int) -> dict[int, int]:
    """g(l, L_top) = round(l · L_top / L_S) for l = 1..L_S, rounding halves up.

    Source: Liu et al. 2021, §4.1 (uniform strategy); TinyBERT (Jiao et al. 2020) §3.3.
    """
    return {l: math.floor(l * top_layer / student_layers + 0.5) for l in range(1, student_layers + 1)}


def layer_map(
    text: str,
    student_layers: int,
    teacher_layers: int,
    cached_layers: tuple[int, ...],
    keep_top: int | None = None,
    field: str = "layer_map",
) -> dict[int, int]:
    """Resolve ``--layer-map`` against the student's depth and the teacher layers available.

    Args:
        text: ``uniform`` or ``uniform:L_top`` (g(l, L_top), L_top defaulting to the teacher's
            depth; L_top < L_T maps the student onto lower teacher layers), keeping the pairs
            whose teacher layer is cached; or an explicit ``s:t,s:t`` list (student layer
            s ∈ [0, L_S] learns teacher layer t).
        cached_layers: teacher layers in the cache (or extracted online).
        keep_top: keep only the k pairs with the highest student layers (the study's top-k).
        field: the setting ``text`` came from (``layer_map`` or ``attention_map``), named by errors.
    Returns: {student layer: teacher layer}, never empty.
    Raises: ConfigError on a malformed map, a student layer out of range, or a teacher layer the
        cache lacks.
    """
    pairs = _parse_map(text.strip().lower(), student_layers, teacher_layers, cached_layers, field)
    if keep_top is not None:
        if keep_top < 1:
            raise ConfigError(
                f"{{keep_top_pairs}} {keep_top}: keep at least 1 pair", field="keep_top_pairs", value=keep_top
            )
        pairs = dict(sorted(pairs.items())[-keep_top:])
    return pairs


def _parse_map(text, student_layers, teacher_layers, cached_layers, field) -> dict[int, int]:
    name, _, arg = text.partition(":")
    if name == "uniform":
        top = teacher_layers
        if arg:
            if not arg.isdigit() or not 1 <= int(arg) <= teacher_layers:
                raise ConfigError(
                    f"{{{field}}} {text!r}: L_top must be in 1..{teacher_layers}, e.g. uniform:{teacher_layers}",
                    field=field,
                    value=text,
                )
            top = int(arg)
        full = uniform_layer_map(student_layers, top)
        kept = {s: t for s, t in full.items() if t in cached_layers}
        if not kept:
            raise ConfigError(
                f"the uniform layer map needs teacher layers {sorted(full.values())} but the cache has "
                f"{list(cached_layers)}: pass {{{field}}} s:t pairs over cached layers, or re-extract those layers",
                field=field,
                value=text,
            )
        return kept
    pairs = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        s, sep, t = part.partition(":")
        if not sep or not s.strip().isdigit() or not t.strip().isdigit():
            raise ConfigError(
                f"{{{field}}} {text!r}: use uniform or student:teacher pairs like 1:2,2:4,3:6", field=field, value=text
            )
        pairs[int(s)] = int(t)
    if not pairs:
        raise ConfigError(
            f"{{{field}}} is empty: use uniform or student:teacher pairs like 1:2,2:4,3:6", field=field, value=text
        )
    for s, t in pairs.items():
        if s > student_layers:
            raise ConfigError(
                f"{{{field}}} {s}:{t}: the student has layers 0..{student_layers}", field=field, value=text
            )
        if t not in cached_layers:
            raise ConfigError(
                f"{{{field}}} {s}:{t} needs teacher layer {t} but the cache holds layers {list(cached_layers)}: "
                "map onto cached layers or re-extract with those layers",
                field=field,
                value=text,
            )
    return pairs
