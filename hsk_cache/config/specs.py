"""Selection specs: frozen, validated, parsed once at the boundary, trusted everywhere after.

Strategy strings (the ``layers``, ``tokens`` and ``dims`` of an ``ExtractSpec``) parse into small
frozen dataclasses whose ``describe()`` gives the canonical string stored in the cache manifest,
so two specs are equal iff their manifests say the same thing. Storage choices (``DTYPES``,
``CODECS``) are listed here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hsk_cache.errors import ConfigError

DTYPES = ("float32", "float16", "bfloat16", "int8", "float8_e4m3")
CODECS = ("none", "zstd", "blosc")
TOKEN_STRATEGIES = ("all", "cls", "left", "random", "topk")
DIM_STRATEGIES = ("all", "uniform", "random", "magnitude")


def _count(text: str, field: str, value: str) -> int:
    try:
        k = int(value)
    except ValueError:
        raise ConfigError(
            f"{{{field}}} {text!r}: K must be an integer, e.g. {{{field}}} top:2", field=field, value=text
        ) from None
    if k <= 0:
        raise ConfigError(f"{{{field}}} {text!r}: K must be at least 1", field=field, value=text)
    return k


@dataclass(frozen=True)
class LayerSpec:
    """Depth: which teacher hidden-state layers to keep (0 = embedding output).

    ``kind``: ``last``, ``all``, ``list`` (explicit ``layers``), or ``uniform``/``top``/``bottom``
    with a count ``k``: uniform:K keeps round(l·L/K) for l = 1..K (the layers a K-layer student's
    uniform map targets), top:K the K highest layers L−K+1..L, bottom:K layers 1..K.
    """

    kind: str = "last"
    layers: tuple[int, ...] = ()
    k: int | None = None

    @classmethod
    def parse(cls, text: str, field: str = "layers") -> LayerSpec:
        """``last``, ``all``, ``uniform:K``, ``top:K``, ``bottom:K`` or a comma list of layers.

        Raises: ConfigError naming ``field`` and the text.
        """
        text = text.strip().lower()
        if text in ("last", "all"):
            return cls(text)
        name, sep, arg = text.partition(":")
        if sep and name in ("uniform", "top", "bottom"):
            return cls(name, k=_count(text, field, arg))
        try:
            layers = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
        except ValueError:
            raise ConfigError(
                f"unknown {{{field}}} value {text!r}: use last, all, uniform:K, top:K, bottom:K, "
                "or a comma list like 2,4,6",
                field=field,
                value=text,
            ) from None
        if not layers:
            raise ConfigError(
                f"{{{field}}} is empty: use last, all, or a comma list like 2,4,6", field=field, value=text
            )
        if layers[0] < 0:
            raise ConfigError(
                f"{{{field}}} {text!r} has a negative layer: layers count from 0 (embedding output)",
                field=field,
                value=text,
            )
        return cls("list", layers)

    def resolve(self, num_layers: int, first: int = 0) -> tuple[int, ...]:
        """Layers kept, given the teacher's transformer layer count L; ``first`` is the lowest
        valid number (0 for hidden states, 1 for attention layers).

        Raises: ConfigError if a layer or count exceeds the teacher's depth.
        """
        if self.kind == "last":
            return (num_layers,)
        if self.kind == "all":
            return tuple(range(first, num_layers + 1))
        if self.kind == "list":
            if self.layers[-1] > num_layers or self.layers[0] < first:
                raise ConfigError(
                    f"layers {list(self.layers)} are outside the teacher's {first}..{num_layers}: "
                    f"pick layers from {first} to {num_layers}"
                )
            return self.layers
        if self.k > num_layers:
            raise ConfigError(
                f"{self.describe()} asks for {self.k} layers but the teacher has {num_layers}: use K ≤ {num_layers}"
            )
        if self.kind == "top":
            return tuple(range(num_layers - self.k + 1, num_layers + 1))
        if self.kind == "bottom":
            return tuple(range(1, self.k + 1))
        return tuple(sorted({math.floor(l * num_layers / self.k + 0.5) for l in range(1, self.k + 1)}))

    def describe(self) -> str:
        """The canonical string (``2,4,6``, ``top:2``, ``last``) that ``parse`` reads back."""
        if self.kind == "list":
            return ",".join(map(str, self.layers))
        return f"{self.kind}:{self.k}" if self.k is not None else self.kind


@dataclass(frozen=True)
class TokenSpec:
    """Length: which token positions to keep per example (Liu et al. 2021, §4.2).

    ``all``: every real token; ``cls``: position 0; with a count ``k`` or a percentage ``percent``
    of each example's real length: ``left`` the first K, ``random`` K at random (seeded per
    example), ``topk`` the K receiving the most attention from [CLS]. Padding is never kept;
    [SEP] is not kept unless ``with_sep`` (the ``+sep`` suffix: ``topk+sep:10``).
    """

    kind: str = "all"
    k: int | None = None
    percent: float | None = None
    with_sep: bool = False

    @classmethod
    def parse(cls, text: str) -> TokenSpec:
        """``all``, ``cls``, or ``left|random|topk[+sep]:K`` with K a count or ``P%``.

        Raises: ConfigError (field ``tokens``) naming the text.
        """
        text = text.strip().lower()
        if text in ("all", "cls"):
            return cls(text)
        name, _, arg = text.partition(":")
        with_sep = name.endswith("+sep")
        name = name.removesuffix("+sep")
        if name not in ("left", "random", "topk") or not arg:
            raise ConfigError(
                f"unknown {{tokens}} value {text!r}: use all, cls, or left|random|topk[+sep]:K (K a count or P%)",
                field="tokens",
                value=text,
            )
        try:
            value = float(arg[:-1]) if arg.endswith("%") else int(arg)
        except ValueError:
            raise ConfigError(
                f"{{tokens}} {text!r}: K must be an integer count or a percentage like topk:10%",
                field="tokens",
                value=text,
            ) from None
        if arg.endswith("%"):
            if not 0 < value <= 100 or not math.isfinite(value):
                raise ConfigError(
                    f"{{tokens}} {text!r}: the percentage must be in (0, 100], e.g. topk:10%",
                    field="tokens",
                    value=text,
                )
            return cls(name, percent=value, with_sep=with_sep)
        k = value
        if k <= 0:
            raise ConfigError(f"{{tokens}} {text!r}: K must be at least 1, e.g. topk:10", field="tokens", value=text)
        return cls(name, k=k, with_sep=with_sep)

    def check(self, max_length: int) -> None:
        """Raises ConfigError if a count K exceeds the max length."""
        if self.k is not None and self.k > max_length:
            raise ConfigError(
                f"{{tokens}} {self.describe()} keeps more tokens than {{max_length}} {max_length}: "
                f"use K ≤ {max_length} or raise {{max_length}}",
                field="tokens",
                value=self.describe(),
            )

    def kept_tokens(self, max_length: int) -> int:
        """K, the stored token axis length (the most any example keeps)."""
        if self.kind == "all":
            return max_length
        if self.kind == "cls":
            return 1
        if self.k is not None:
            return self.k
        return max(1, math.ceil(self.percent / 100 * max_length))

    def describe(self) -> str:
        """The canonical string (``topk+sep:10``, ``left:25%``, ``all``) that ``parse`` reads back."""
        if self.kind in ("all", "cls"):
            return self.kind
        name = self.kind + ("+sep" if self.with_sep else "")
        return f"{name}:{self.k}" if self.k is not None else f"{name}:{self.percent:g}%"


@dataclass(frozen=True)
class DimSpec:
    """Width: which hidden dimensions to keep (Liu et al. 2021, §4.3), P a fraction of D.

    ``all``; ``uniform:P`` every (1/P)-th dimension; ``random:P`` a seeded random subset (both the
    same for every token; the index is stored once); ``magnitude:P`` the top-P fraction of each
    example-layer's kept elements by |h| (stored sparsely: values plus a bit mask).
    """

    kind: str = "all"
    fraction: float | None = None

    @classmethod
    def parse(cls, text: str) -> DimSpec:
        """``all``, or ``uniform|random|magnitude:P`` with P in (0, 1].

        Raises: ConfigError (field ``dims``) naming the text.
        """
        text = text.strip().lower()
        if text == "all":
            return cls("all")
        name, sep, arg = text.partition(":")
        if name not in DIM_STRATEGIES[1:] or not sep:
            raise ConfigError(
                f"unknown {{dims}} value {text!r}: use all, uniform:P, random:P or magnitude:P (P in (0, 1])",
                field="dims",
                value=text,
            )
        try:
            fraction = float(arg)
        except ValueError:
            raise ConfigError(
                f"{{dims}} {text!r}: P must be a number in (0, 1], e.g. magnitude:0.1", field="dims", value=text
            ) from None
        if not 0 < fraction <= 1:
            raise ConfigError(f"{{dims}} {text!r}: P must be in (0, 1], e.g. magnitude:0.1", field="dims", value=text)
        return cls(name, fraction)

    def kept_dims(self, hidden_size: int) -> int:
        """D', dimensions kept per token for uniform/random (≥ 1); D for all and magnitude."""
        if self.kind in ("uniform", "random"):
            return max(1, round(self.fraction * hidden_size))
        return hidden_size

    def describe(self) -> str:
        """The canonical string (``magnitude:0.1``, ``all``) that ``parse`` reads back."""
        return self.kind if self.kind == "all" else f"{self.kind}:{self.fraction:g}"
