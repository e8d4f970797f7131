"""Floats of a format as integers: every value of a 16-bit format, and steps of k ULPs.

A search moves logits over their format's floats: :func:`step` adds k to each value's signed
ordinal (:func:`precision_lab.numerics.metrics.ordinal`: consecutive floats differ by 1, +0
and -0 are both 0) and maps it back, clamped to the finite range, so a move never leaves the
format and never produces inf or NaN.  :func:`values_of_bits` lists the values of a 16-bit
format in bit-pattern order, for exhaustive enumeration.
"""

from __future__ import annotations

import numpy as np

from precision_lab.numerics.formats import Format, get_format, to_format
from precision_lab.numerics.metrics import ordinal

__all__ = ["from_ordinal", "max_ordinal", "step", "values_of_bits", "exact_list"]


def max_ordinal(fmt: "str | Format") -> int:
    """Ordinal of the largest finite value (the smallest is its negative)."""
    f = get_format(fmt)
    return int(ordinal(np.array([f.max_finite]), f)[0])


def from_ordinal(o: np.ndarray, fmt: "str | Format") -> np.ndarray:
    """The values of ``fmt`` with signed ordinals ``o`` (inverse of ``ordinal``; 0 gives +0).

    Ordinals beyond the finite range are clamped to +-max_finite."""
    f = get_format(fmt)
    top = max_ordinal(f)
    o = np.clip(np.asarray(o, dtype=np.int64), -top, top)
    sign = np.uint64(1) << np.uint64(f.bits - 1)
    mag = np.abs(o).astype(np.uint64)
    bits = np.where(o < 0, mag | sign, mag).astype(f.uint_dtype)
    return bits.view(f.np_dtype)


def step(x: np.ndarray, k: np.ndarray, fmt: "str | Format") -> np.ndarray:
    """``x`` (values of ``fmt``) moved by ``k`` ULPs each (k may be negative), clamped to the
    finite range; non-finite entries of ``x`` are not allowed."""
    f = get_format(fmt)
    return from_ordinal(ordinal(to_format(x, f), f) + np.asarray(k, dtype=np.int64), f)


def values_of_bits(fmt: "str | Format", nan: bool = False) -> np.ndarray:
    """Every value of a 16-bit format (float16, bfloat16) in bit-pattern order: 0x0000 first.

    With ``nan=False`` (the default) the NaN patterns are left out (their truth is NaN
    whatever the other logits are); +-inf stay.  Raises ValueError for wider formats."""
    f = get_format(fmt)
    if f.bits != 16:
        raise ValueError(f"format {f.name!r} has 2**{f.bits} values; exhaustive enumeration of "
                         "a whole format is offered for float16 and bfloat16 only")
    v = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(f.np_dtype)
    if nan:
        return v
    with np.errstate(invalid="ignore"):
        return v[~np.isnan(v.astype(np.float64))]


def exact_list(x: np.ndarray) -> list[float]:
    """The values as Python floats (exact: every format here embeds in float64)."""
    with np.errstate(invalid="ignore"):
        return [float(v) for v in np.asarray(x).astype(np.float64).ravel()]
