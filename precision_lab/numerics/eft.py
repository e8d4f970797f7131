"""Error-free transformations of float64 arrays (Knuth's TwoSum, Dekker's FastTwoSum and
TwoProduct): the exact rounding error of one addition or multiplication, as a second float.

Each function works elementwise on numpy arrays or scalars and is exact as long as nothing
overflows (``two_prod`` also needs |a|, |b| below about 2**996, where Dekker's split cannot
overflow, and products above the underflow range)."""

from __future__ import annotations

from typing import Any

__all__ = ["two_sum", "fast_two_sum", "two_prod", "SPLIT"]

#: Dekker's splitting constant 2**27 + 1 for float64.
SPLIT = 134217729.0


def two_sum(a: Any, b: Any) -> tuple[Any, Any]:
    """(s, e) with s = fl(a + b) and s + e = a + b exactly (any magnitudes)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def fast_two_sum(a: Any, b: Any) -> tuple[Any, Any]:
    """(s, e) with s = fl(a + b) and s + e = a + b exactly; needs |a| >= |b| (or a = 0)."""
    s = a + b
    return s, b - (s - a)


def two_prod(a: Any, b: Any) -> tuple[Any, Any]:
    """(p, e) with p = fl(a b) and p + e = a b exactly (Dekker's split, no FMA)."""
    p = a * b
    c = SPLIT * a
    ah = c - (c - a)
    al = a - ah
    c = SPLIT * b
    bh = c - (c - b)
    bl = b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl
