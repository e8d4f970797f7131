"""Ball arithmetic at mpmath's working precision: midpoint and a radius that bounds the error
(assuming mpmath's +, -, *, / correctly rounded and exp/log/log1p within 8 ulps), with IEEE's
specials and an "unresolved" ball where nothing is known."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import mpmath
import numpy as np

from precision_lab.explain.attribution.exact import _frac_mpf, _mpf_frac

# =========================================================================== balls

class _Ball:
    """mid +- rad at the working precision; a special (nan/+-inf, rad 0); or unresolved
    (rad = inf: nothing is known)."""

    __slots__ = ("m", "r")

    def __init__(self, m: Any, r: Any = 0) -> None:
        self.m = mpmath.mpf(m) if not isinstance(m, mpmath.mpf) else m
        self.r = mpmath.mpf(r) if not isinstance(r, mpmath.mpf) else r

    @property
    def unresolved(self) -> bool:
        return self.r == mpmath.inf

    @property
    def finite(self) -> bool:
        return not self.unresolved and mpmath.isfinite(self.m)

    @property
    def point_zero(self) -> bool:
        return self.finite and self.m == 0 and self.r == 0


_INF = mpmath.inf
_NAN = mpmath.nan


def _unres() -> _Ball:
    return _Ball(_NAN, _INF)


def _up(x: "mpmath.mpf") -> "mpmath.mpf":
    """Inflate a radius computed with round-to-nearest so that it stays an upper bound."""
    return x * (1 + mpmath.ldexp(1, 8 - mpmath.mp.prec))


def _rnd(m: "mpmath.mpf", ulps: int = 1) -> "mpmath.mpf":
    return abs(m) * mpmath.ldexp(ulps, -mpmath.mp.prec)


def _ball_of(v: Any) -> _Ball:
    """An exact ball of a float / int / Fraction, or an mpf (rounded to the precision)."""
    if isinstance(v, _Ball):
        return v
    if isinstance(v, Fraction):
        m = _frac_mpf(v)
        return _Ball(m, _rnd(m) if _mpf_frac(m) != v else 0)
    if isinstance(v, (int, np.integer)):
        m = mpmath.mpf(int(v))
        return _Ball(m, 0 if int(m) == int(v) else _rnd(m))
    return _Ball(mpmath.mpf(float(v)))  # floats are exact at >= 53 bits


def _b_add(a: _Ball, b: _Ball, sub: bool = False) -> _Ball:
    if a.unresolved or b.unresolved:
        return _unres()
    bm = -b.m if sub else b.m
    if not (mpmath.isfinite(a.m) and mpmath.isfinite(bm)):
        return _Ball(a.m + bm)
    m = a.m + bm
    return _Ball(m, _up(a.r + b.r + _rnd(m)))


def _b_neg(a: _Ball) -> _Ball:
    return _Ball(-a.m, a.r)


def _b_mul(a: _Ball, b: _Ball) -> _Ball:
    if a.unresolved or b.unresolved:
        return _unres()
    if not (mpmath.isfinite(a.m) and mpmath.isfinite(b.m)):
        if (a.point_zero or b.point_zero) or mpmath.isnan(a.m) or mpmath.isnan(b.m):
            return _Ball(_NAN)
        if (mpmath.isfinite(a.m) and a.r >= abs(a.m)) or (mpmath.isfinite(b.m) and b.r >= abs(b.m)):
            return _unres()  # the sign of the finite factor is unknown
        return _Ball(a.m * b.m)
    m = a.m * b.m
    return _Ball(m, _up(abs(a.m) * b.r + abs(b.m) * a.r + a.r * b.r + _rnd(m)))


def _b_div(a: _Ball, b: _Ball) -> _Ball:
    if a.unresolved or b.unresolved:
        return _unres()
    if mpmath.isnan(a.m) or mpmath.isnan(b.m):
        return _Ball(_NAN)
    if b.point_zero:  # IEEE: x/0 = +-inf (no signed zeros here), 0/0 = NaN
        if a.point_zero or (mpmath.isfinite(a.m) and a.r >= abs(a.m)):
            return _Ball(_NAN) if a.point_zero else _unres()
        return _Ball(_INF if a.m > 0 else -_INF)
    if mpmath.isinf(a.m) and mpmath.isinf(b.m):
        return _Ball(_NAN)
    if mpmath.isinf(a.m):
        if b.r >= abs(b.m):
            return _unres()
        return _Ball(a.m if b.m > 0 else -a.m)
    if mpmath.isinf(b.m):
        return _Ball(0)
    if b.r >= abs(b.m):
        return _unres()
    m = a.m / b.m
    return _Ball(m, _up((a.r + abs(m) * b.r) / (abs(b.m) - b.r) + _rnd(m)))


def _b_exp(a: _Ball) -> _Ball:
    if a.unresolved:
        return _unres()
    if not mpmath.isfinite(a.m):
        return _Ball(_NAN if mpmath.isnan(a.m) else (_INF if a.m > 0 else 0))
    m = mpmath.exp(a.m)
    return _Ball(m, _up(m * mpmath.expm1(a.r) + _rnd(m, 16)))


def _b_log(a: _Ball, one_plus: bool = False) -> _Ball:
    """log(a), or log1p(a) with ``one_plus``."""
    if a.unresolved:
        return _unres()
    lo_lim = -1 if one_plus else 0
    if not mpmath.isfinite(a.m):
        return _Ball(_INF if a.m == _INF else _NAN)
    if a.r == 0 and a.m == lo_lim:
        return _Ball(-_INF)
    if a.m + a.r < lo_lim:
        return _Ball(_NAN)
    base = a.m - lo_lim  # distance to the pole
    if a.r >= base:
        return _unres()
    m = mpmath.log1p(a.m) if one_plus else mpmath.log(a.m)
    return _Ball(m, _up(-mpmath.log1p(-a.r / base) + _rnd(m, 16)))
