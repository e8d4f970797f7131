"""Parameters in registry keys: :class:`Param`, :class:`Family`, parsing a key and writing
its canonical form."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from precision_lab.implementations.base import Implementation

ACC_CHOICES = ("format", "float32", "float64")


# ---------------------------------------------------------------------------------------
# parameters in registry keys

@dataclass(frozen=True)
class Param:
    """One parameter of a parameterized implementation.

    Attributes:
        name: the keyword in the key, ``chunked(chunk_size=...)``.
        default: the value of the bare key.
        kind: ``int`` or ``str``.
        choices: the allowed strings (``kind is str``), or None.
        minimum: the smallest allowed integer (``kind is int``), or None.
        doc: one line.
    """

    name: str
    default: Any
    kind: type = str
    choices: "tuple[str, ...] | None" = None
    minimum: "int | None" = None
    doc: str = ""

    def check(self, family: str, raw: str) -> Any:
        """The value of ``raw`` (text from a key), or ValueError naming it and what is allowed."""
        where = f"implementation {family!r}: parameter {self.name}={raw!r}"
        if self.kind is int:
            try:
                v = int(raw)
            except ValueError:
                raise ValueError(f"{where} is not an integer ({self.doc})") from None
            if self.minimum is not None and v < self.minimum:
                raise ValueError(f"{where}: must be >= {self.minimum} ({self.doc})")
            return v
        if self.choices is not None and raw not in self.choices:
            raise ValueError(f"{where}: allowed {', '.join(self.choices)}")
        return raw


@dataclass(frozen=True)
class Family:
    """A parameterized implementation: its parameters and how to build it."""

    name: str
    params: tuple[Param, ...]
    build: Callable[[str, dict[str, Any]], Implementation]
    description: str

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}


_KEY = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*\Z", re.S)
_ARG = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*([A-Za-z0-9_.+\-]+)\s*\Z")


def parse_key(text: str) -> tuple[str, dict[str, str]]:
    """Split ``"name(a=1, b=x)"`` into ("name", {"a": "1", "b": "x"}); ``"name"`` -> no
    parameters.  Raises ValueError naming the malformed part."""
    m = _KEY.match(text)
    if m is None:
        raise ValueError(f"malformed implementation key {text!r}; expected name or "
                         "name(param=value, ...), e.g. 'chunked(chunk_size=4096)'")
    name, inner = m.group(1), m.group(2)
    args: dict[str, str] = {}
    if inner is not None and inner.strip():
        for part in inner.split(","):
            a = _ARG.match(part)
            if a is None:
                raise ValueError(f"implementation key {text!r}: malformed parameter "
                                 f"{part.strip()!r}; expected param=value")
            if a.group(1) in args:
                raise ValueError(f"implementation key {text!r}: parameter {a.group(1)!r} "
                                 "given twice")
            args[a.group(1)] = a.group(2)
    return name, args


def canonical_key(family: Family, values: dict[str, Any]) -> str:
    """``name`` when every parameter is at its default, else ``name(p=v, ...)`` listing the
    others in declaration order."""
    parts = [f"{p.name}={values[p.name]}" for p in family.params
             if values[p.name] != p.default]
    return family.name + (f"({', '.join(parts)})" if parts else "")


def _values(fam: Family, args: dict[str, str]) -> dict[str, Any]:
    """Every parameter's value: the defaults, overridden by the checked ``args``."""
    values = fam.defaults()
    by_name = {p.name: p for p in fam.params}
    for k, raw in args.items():
        if k not in by_name:
            allowed = ", ".join(p.name for p in fam.params) or "none"
            raise ValueError(f"implementation {fam.name!r} has no parameter {k!r}; its "
                             f"parameters: {allowed}")
        values[k] = by_name[k].check(fam.name, raw)
    return values
