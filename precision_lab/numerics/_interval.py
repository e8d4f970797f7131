"""Rigorous interval arithmetic on raw mpmath numbers (private): the exact paths of
:mod:`precision_lab.numerics.semantics` and :mod:`precision_lab.numerics.gradient`.

An :class:`Iv` is a closed interval [lo, hi] of raw mpf tuples (``mpmath.libmp``), every
operation rounded outward at the working precision ``W`` bits.  +, -, *, / and square
roots are directed-rounded by mpmath exactly as asked.  For the elementary functions the
same assumption as :mod:`precision_lab.numerics.reference` is made: ``mpf_exp``,
``mpf_log``, ``mpf_tanh`` and ``mpf_cosh`` return results within 8 ulps of the working
precision (they work with 14 to 20 guard bits and round once), so each result is widened
by a relative 2**-(W-4) before it is used.  Intervals here never contain infinities or
NaN: the callers decide those cases first.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import mpmath
import numpy as np
from mpmath import libmp

from precision_lab.numerics.formats import Format, round_to

FLOOR, CEIL = libmp.round_floor, libmp.round_ceiling
ZERO, ONE, TWO = libmp.fzero, libmp.fone, libmp.from_int(2)

__all__ = ["Iv", "point", "add", "sub", "neg", "mul", "mul_exact", "div", "sqr", "exp",
           "log1p", "tanh", "sech2", "widen", "round_rational", "is_zero", "width_ok",
           "exact_sum", "from_fraction"]


@dataclass(frozen=True)
class Iv:
    """lo <= value <= hi, raw mpf tuples."""

    lo: tuple
    hi: tuple


def point(x: "float | tuple") -> Iv:
    """The exact point interval of a float (or raw mpf)."""
    r = libmp.from_float(float(x)) if not isinstance(x, tuple) else x
    return Iv(r, r)


def is_zero(a: Iv) -> bool:
    return a.lo == ZERO and a.hi == ZERO


def add(a: Iv, b: Iv, W: int) -> Iv:
    return Iv(libmp.mpf_add(a.lo, b.lo, W, FLOOR), libmp.mpf_add(a.hi, b.hi, W, CEIL))


def sub(a: Iv, b: Iv, W: int) -> Iv:
    return Iv(libmp.mpf_sub(a.lo, b.hi, W, FLOOR), libmp.mpf_sub(a.hi, b.lo, W, CEIL))


def neg(a: Iv) -> Iv:
    return Iv(libmp.mpf_neg(a.hi), libmp.mpf_neg(a.lo))


def _min(xs: list) -> tuple:
    out = xs[0]
    for x in xs[1:]:
        if libmp.mpf_lt(x, out):
            out = x
    return out


def _max(xs: list) -> tuple:
    out = xs[0]
    for x in xs[1:]:
        if libmp.mpf_gt(x, out):
            out = x
    return out


def mul(a: Iv, b: Iv, W: int) -> Iv:
    ends = [(a.lo, b.lo), (a.lo, b.hi), (a.hi, b.lo), (a.hi, b.hi)]
    return Iv(_min([libmp.mpf_mul(x, y, W, FLOOR) for x, y in ends]),
              _max([libmp.mpf_mul(x, y, W, CEIL) for x, y in ends]))


def mul_exact(a: Iv, s: tuple, W: int) -> Iv:
    """a * s for an exact raw mpf s."""
    if libmp.mpf_sign(s) >= 0:
        return Iv(libmp.mpf_mul(a.lo, s, W, FLOOR), libmp.mpf_mul(a.hi, s, W, CEIL))
    return Iv(libmp.mpf_mul(a.hi, s, W, FLOOR), libmp.mpf_mul(a.lo, s, W, CEIL))


def div(a: Iv, b: Iv, W: int) -> Iv:
    """a / b for an interval b that does not contain 0."""
    if libmp.mpf_sign(b.lo) <= 0 <= libmp.mpf_sign(b.hi):
        raise ZeroDivisionError("interval divisor contains 0")
    ends = [(a.lo, b.lo), (a.lo, b.hi), (a.hi, b.lo), (a.hi, b.hi)]
    return Iv(_min([libmp.mpf_div(x, y, W, FLOOR) for x, y in ends]),
              _max([libmp.mpf_div(x, y, W, CEIL) for x, y in ends]))


def sqr(a: Iv, W: int) -> Iv:
    lo2 = libmp.mpf_mul(a.lo, a.lo, W, CEIL)
    hi2 = libmp.mpf_mul(a.hi, a.hi, W, CEIL)
    top = _max([lo2, hi2])
    if libmp.mpf_sign(a.lo) <= 0 <= libmp.mpf_sign(a.hi):
        return Iv(ZERO, top)
    bot = _min([libmp.mpf_mul(a.lo, a.lo, W, FLOOR), libmp.mpf_mul(a.hi, a.hi, W, FLOOR)])
    return Iv(bot, top)


def _down(v: tuple, W: int) -> tuple:
    """v lowered by a relative 2**-(W-4) (the 8-ulp allowance)."""
    return libmp.mpf_sub(v, libmp.mpf_shift(libmp.mpf_abs(v), -(W - 4)), W, FLOOR)


def _up(v: tuple, W: int) -> tuple:
    return libmp.mpf_add(v, libmp.mpf_shift(libmp.mpf_abs(v), -(W - 4)), W, CEIL)


def widen(a: Iv, W: int) -> Iv:
    return Iv(_down(a.lo, W), _up(a.hi, W))


def exp(a: Iv, W: int) -> Iv:
    """exp, increasing."""
    return Iv(_down(libmp.mpf_exp(a.lo, W, FLOOR), W), _up(libmp.mpf_exp(a.hi, W, CEIL), W))


def log1p(a: Iv, W: int) -> Iv:
    """log(1 + a) for a >= 0, increasing; no cancellation for tiny a."""
    return Iv(_log1p_end(a.lo, W, FLOOR), _log1p_end(a.hi, W, CEIL))


def _log1p_end(s: tuple, W: int, rnd: str) -> tuple:
    if s == ZERO:
        return ZERO
    if s[2] + s[3] < -W:  # s < 2**-W: s (1 - s) <= log1p(s) <= s; 1 + s is not formed
        if rnd == FLOOR:
            return libmp.mpf_mul(s, libmp.mpf_sub(ONE, s, W, FLOOR), W, FLOOR)
        return s
    # 1 + s is formed exactly, so the log's own accuracy is relative to log1p(s) itself
    r = libmp.mpf_log(libmp.mpf_add(ONE, s, 0), W, rnd)
    return _down(r, W) if rnd == FLOOR else _up(r, W)


def tanh(a: Iv, W: int) -> Iv:
    """tanh, increasing (mpf_tanh compensates the cancellation near 0)."""
    lo = libmp.mpf_tanh(a.lo, W, FLOOR)
    hi = libmp.mpf_tanh(a.hi, W, CEIL)
    lo, hi = _down(lo, W), _up(hi, W)
    # |tanh| <= 1 and tanh keeps the sign of its argument: clamp the widened ends
    lo = _max([lo, libmp.mpf_neg(ONE)]) if libmp.mpf_sign(a.lo) < 0 else _max([lo, ZERO])
    hi = _min([hi, ONE]) if libmp.mpf_sign(a.hi) > 0 else _min([hi, ZERO])
    return Iv(lo, hi)


def sech2(a: Iv, W: int) -> Iv:
    """1 / cosh(a)**2 (in (0, 1], decreasing in |a|), without the cancellation of
    1 - tanh(a)**2."""
    alo, ahi = libmp.mpf_abs(a.lo), libmp.mpf_abs(a.hi)
    if libmp.mpf_sign(a.lo) <= 0 <= libmp.mpf_sign(a.hi):
        small, big = ZERO, _max([alo, ahi])
    else:
        small, big = _min([alo, ahi]), _max([alo, ahi])
    c_small = _down(libmp.mpf_cosh(small, W, FLOOR), W)
    c_big = _up(libmp.mpf_cosh(big, W, CEIL), W)
    c_small = _max([c_small, ONE])
    hi = libmp.mpf_div(ONE, libmp.mpf_mul(c_small, c_small, W, FLOOR), W, CEIL)
    lo = libmp.mpf_div(ONE, libmp.mpf_mul(c_big, c_big, W, CEIL), W, FLOOR)
    return Iv(lo, _min([hi, ONE]))


def width_ok(a: Iv, bits: int) -> bool:
    """Whether hi - lo <= 2**-bits * min(|lo|, |hi|) (the interval is relatively narrow)."""
    w = libmp.mpf_sub(a.hi, a.lo, 0)
    m = _min([libmp.mpf_abs(a.lo), libmp.mpf_abs(a.hi)])
    if libmp.mpf_sign(a.lo) * libmp.mpf_sign(a.hi) < 0:
        return False
    return libmp.mpf_le(w, libmp.mpf_shift(m, -bits))


def exact_sum(values) -> tuple:
    """The exact sum (a raw mpf) of floats / raw mpfs."""
    acc = ZERO
    for v in values:
        acc = libmp.mpf_add(acc, v if isinstance(v, tuple) else libmp.from_float(float(v)), 0)
    return acc


def from_fraction(q: Fraction, W: int) -> Iv:
    """An enclosure of a rational number."""
    n, d = libmp.from_int(q.numerator), libmp.from_int(q.denominator)
    return Iv(libmp.mpf_div(n, d, W, FLOOR), libmp.mpf_div(n, d, W, CEIL))


def round_rational(q: Fraction, f: Format) -> np.generic:
    """Round an exact rational once, correctly, to format f (ties to even).

    A dyadic rational is rounded exactly by :func:`round_to`.  Any other rational is not a
    rounding midpoint nor a float (those are dyadic), so enclosures of doubling precision
    end up inside one rounding interval."""
    if q.denominator & (q.denominator - 1) == 0:
        return round_to(q, f)
    W = 128
    while True:
        e = from_fraction(q, W)
        a = round_to(mpmath.mp.make_mpf(e.lo), f)
        b = round_to(mpmath.mp.make_mpf(e.hi), f)
        if a == b or (np.isnan(float(a)) and np.isnan(float(b))):
            return a
        W *= 2
