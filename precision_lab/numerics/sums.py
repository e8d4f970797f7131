"""Sums in a format's own arithmetic: the orders the implementations and the runner use.

* :func:`pairwise_sum`: a fixed pairwise tree over the last axis, every addition rounded once
  to the array's format (numpy's own ``np.sum`` is not: for float16 it accumulates in float32);
* :func:`sequential_sum`: left to right from 0, every partial sum rounded to the format -- the
  seed's ``loss = loss + l_i`` loop;
* :func:`kahan_sum`: left to right with Kahan's compensation, every operation in the format;
* :func:`reduce_in_format`: a mean or sum of per-sample losses by one of :data:`REDUCE_METHODS`
  ("sequential", "pairwise", "kahan", "float32": accumulate in float32, round once), the mean
  then divided by the count with one correct rounding.
"""

from __future__ import annotations

import math
from typing import Any

import mpmath
import numpy as np

from precision_lab.numerics.formats import Format, get_format, round_to

__all__ = ["pairwise_sum", "sequential_sum", "kahan_sum", "reduce_in_format", "div_exact_int",
           "REDUCE_METHODS"]

#: How a generic reduction may add the per-sample losses (see :func:`reduce_in_format`).
REDUCE_METHODS = ("sequential", "pairwise", "kahan", "float32")


def pairwise_sum(x: np.ndarray) -> np.ndarray:
    """Sum over the last axis in ``x``'s own arithmetic, in a fixed pairwise order.

    Each pass adds adjacent pairs, (x0 + x1), (x2 + x3), ..., carrying an odd last element
    up unchanged, until one value is left: for V = 5, ((x0 + x1) + (x2 + x3)) + x4.  Every
    addition is one numpy ufunc call on arrays of x's dtype, so it is rounded once to that
    format (see the module docstring for float16/bfloat16).  Error bound about
    ceil(log2 V) * u * sum|x_j|.  V = 0 gives 0.  Returns shape x.shape[:-1].  Overflow gives
    inf and inf - inf NaN, silently, as the hardware would.
    """
    x = np.asarray(x)
    if x.shape[-1] == 0:
        return np.zeros(x.shape[:-1], dtype=x.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        while x.shape[-1] > 1:
            n = x.shape[-1]
            h = n // 2
            s = x[..., 0 : 2 * h : 2] + x[..., 1 : 2 * h : 2]
            if n % 2:
                s = np.concatenate([s, x[..., n - 1 :]], axis=-1)
            x = s
    return x[..., 0]


def sequential_sum(values: np.ndarray, fmt: "str | Format") -> np.generic:
    """Sum ``values`` left to right from 0 in ``fmt``'s arithmetic (every partial sum rounded
    to the format).  Overflow gives inf, an inf - inf gives NaN, as the hardware would."""
    f = get_format(fmt)
    v = np.asarray(values, dtype=f.np_dtype).ravel()
    if not v.size:
        return f.np_dtype.type(0.0)
    with np.errstate(all="ignore"):
        # accumulate stores every partial sum in the output's dtype, so each addition is
        # rounded to the format in order (checked against the scalar loop in the tests)
        return np.add.accumulate(v)[-1] + f.np_dtype.type(0.0)


def kahan_sum(values: np.ndarray, fmt: "str | Format") -> np.generic:
    """Kahan's compensated sum, left to right, every operation in ``fmt``'s arithmetic:
    ``y = x - c; t = s + y; c = (t - s) - y; s = t``.  Error about 2u sum|x| instead of the
    sequential sum's (n - 1) u sum|x| (Higham, Accuracy and Stability, 4.3)."""
    f = get_format(fmt)
    t = f.np_dtype.type
    s = c = t(0.0)
    with np.errstate(all="ignore"):
        for x in np.asarray(values, dtype=f.np_dtype).ravel():
            y = t(x - c)
            nxt = t(s + y)
            c = t(t(nxt - s) - y)
            s = nxt
    return s


def div_exact_int(acc: np.generic, n: int, fmt: "str | Format") -> np.generic:
    """``acc / n`` rounded once, correctly, to ``fmt`` (``n`` an exact positive integer);
    inf and NaN pass through as IEEE division would give them."""
    f = get_format(fmt)
    v = float(acc)
    if not math.isfinite(v):
        return f.np_dtype.type(v / n)
    with mpmath.workprec(256):
        return round_to(mpmath.mpf(v) / n, f)


def reduce_in_format(losses: np.ndarray, reduction: str, fmt: "str | Format",
                     method: str = "sequential") -> np.generic:
    """Sum ``losses`` in ``fmt`` by ``method``, then for "mean" divide by their number with
    one correct rounding.

    "sequential" (the default) is the seed's loop ``loss = 0.; loss = loss + l_i;
    loss = loss / n``.  (The seed adds the log terms and negates at the end; rounding to
    nearest is symmetric, so adding the negated terms gives the negated sum bit for bit.)
    "pairwise" adds in :func:`pairwise_sum`'s tree, "kahan" with :func:`kahan_sum`, "float32"
    accumulates sequentially in float32 (float64 stays float64) and rounds the sum once."""
    f = get_format(fmt)
    acc: Any
    if method == "sequential":
        acc = sequential_sum(losses, f)
    elif method == "pairwise":
        acc = pairwise_sum(np.asarray(losses, dtype=f.np_dtype).ravel())[()]
    elif method == "kahan":
        acc = kahan_sum(losses, f)
    elif method == "float32":
        wide = get_format("float64" if f.name == "float64" else "float32")
        acc = round_to(float(sequential_sum(np.asarray(losses, dtype=f.np_dtype)
                                            .astype(wide.np_dtype), wide)), f)
    else:
        raise ValueError(f"unknown reduction method {method!r}; allowed: "
                         f"{', '.join(REDUCE_METHODS)}")
    if reduction == "sum":
        return acc
    if reduction == "mean":
        return div_exact_int(acc, len(np.asarray(losses).ravel()), fmt)
    raise ValueError(f"unknown reduction {reduction!r}; allowed: none, mean, sum")
