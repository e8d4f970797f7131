"""Error metrics between computed floats and a correctly rounded or exact truth, vectorized.

Non-finite rule (one rule, used everywhere): every (computed, truth) pair gets a category
from :data:`CATEGORIES`.  Only pairs in the "finite" category (both finite) and "inf_match"
(both the same infinity, an exact match) carry ULP statistics; the others are counted per
category and never averaged into means.  Numeric metrics of non-"finite" pairs are NaN
(``ulp_error``, ``relative_error``, ``bits_of_error``) or :data:`NO_DISTANCE`
(``ulp_distance`` where a NaN is involved).
"""

from __future__ import annotations

import mpmath
import numpy as np

from precision_lab.numerics.formats import Format, get_format, ulp_exponent

__all__ = [
    "CATEGORIES",
    "NO_DISTANCE",
    "ordinal",
    "ulp_distance",
    "ulp_error",
    "bits_of_error",
    "relative_error",
    "categorize",
]

#: Category names, in report order.
CATEGORIES: tuple[str, ...] = (
    "finite",          # both finite: ULP metrics are meaningful
    "inf_match",       # both the same infinity: an exact match
    "overflow",        # computed +-inf, truth finite (spurious overflow)
    "nan",             # computed NaN, truth not NaN
    "missed_inf",      # computed finite (or the wrong infinity), truth +-inf
    "undefined",       # truth itself is NaN (e.g. +inf - +inf in the input)
)

#: ulp_distance's value where either side is NaN (the largest uint64).
NO_DISTANCE = np.uint64(np.iinfo(np.uint64).max)


def _bits(a: np.ndarray, f: Format) -> np.ndarray:
    a = np.asarray(a, dtype=f.np_dtype)
    # ascontiguousarray makes 0-d arrays 1-d: restore the shape so scalars stay scalars
    return np.ascontiguousarray(a).view(f.uint_dtype).reshape(a.shape)


def ordinal(a: np.ndarray, fmt: "str | Format") -> np.ndarray:
    """Signed ordinal of each float of ``fmt``: consecutive floats differ by 1, +0 and -0 are 0.

    +inf is one past the largest finite value.  NaNs get meaningless ordinals; mask them.
    Returned as int64 (every format here fits: float64 ordinals are below 2**63).
    """
    f = get_format(fmt)
    bits = _bits(a, f).astype(np.uint64)
    sign = np.uint64(1) << np.uint64(f.bits - 1)
    mag = (bits & (sign - np.uint64(1))).astype(np.int64)
    return np.where(bits & sign, -mag, mag)


def ulp_distance(a: np.ndarray, b: np.ndarray, fmt: "str | Format") -> np.ndarray:
    """Exact number of representable steps of ``fmt`` between ``a`` and ``b`` (uint64).

    Values are first converted to ``fmt`` (pass arrays already in that format).  Correct
    across the sign boundary (+0 and -0 are the same point) and for values far apart: the
    largest distance, -inf to +inf in float64, is 2**64 - 2**53, which fits in uint64.
    Pairs involving NaN give :data:`NO_DISTANCE`.
    """
    f = get_format(fmt)
    a = np.asarray(a, dtype=f.np_dtype)
    b = np.asarray(b, dtype=f.np_dtype)
    oa = ordinal(a, f).view(np.uint64)
    ob = ordinal(b, f).view(np.uint64)
    ia, ib = ordinal(a, f), ordinal(b, f)
    with np.errstate(over="ignore"):
        d = np.where(ia >= ib, oa - ob, ob - oa)  # modular uint64 arithmetic: exact here
    nan = np.isnan(a.astype(np.float64)) | np.isnan(b.astype(np.float64))
    return np.where(nan, NO_DISTANCE, d).astype(np.uint64)


def categorize(computed: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Category (see :data:`CATEGORIES`) of each pair, as an array of str."""
    c = np.asarray(computed).astype(np.float64)
    t = np.asarray(truth).astype(np.float64)
    out = np.full(np.broadcast(c, t).shape, "finite", dtype=object)
    tn, ti, cn, ci = np.isnan(t), np.isinf(t), np.isnan(c), np.isinf(c)
    out[ci & ~ti & ~tn] = "overflow"
    out[cn & ~tn] = "nan"
    out[ti & ~cn & (c != t)] = "missed_inf"
    out[ti & (c == t)] = "inf_match"
    out[tn] = "undefined"
    return out.astype(str)


def ulp_error(computed: np.ndarray, exact, fmt: "str | Format", exact_lo=None) -> np.ndarray:
    """|computed - exact| / ulp(exact), float64, where ulp(exact) is ``fmt``'s spacing in the
    binade of the exact value (the subnormal spacing below the smallest normal).

    ``exact`` is either an array of mpmath numbers (the unrounded truth; the division is done
    in mpmath) or a float64 array ``hi`` with an optional float64 ``exact_lo`` such that the
    truth is hi + lo (a double-double, as the reference's fast path gives).  A correctly
    rounded result has at most 0.5 against the unrounded truth.  With float inputs the figure
    carries a relative error of about 2**-52 (it is a float64 computation), and the binade is
    taken from hi, corrected by the sign of lo where hi is a power of two.  NaN unless both
    sides are finite; 0 where both are the same infinity.
    """
    f = get_format(fmt)
    shape = np.shape(computed)
    comp = np.asarray(computed, dtype=f.np_dtype).astype(np.float64).ravel()
    ex = np.asarray(exact)
    if ex.dtype == object:
        return _ulp_error_mp(comp, ex.ravel(), f).reshape(shape)
    hi = np.asarray(ex, dtype=np.float64).ravel()
    lo = np.zeros_like(hi) if exact_lo is None else np.asarray(exact_lo, np.float64).ravel()
    with np.errstate(invalid="ignore", over="ignore"):
        m, e = np.frexp(hi)
        top = e - 1 - ((np.abs(m) == 0.5) & (np.sign(lo) == -np.sign(hi)) & (lo != 0))
        q = np.minimum(np.maximum(top, f.emin), f.emax) - (f.precision - 1)
        q = np.where(hi == 0, f.emin - f.precision + 1, q)
        diff = np.abs((comp - hi) - lo)
        err = np.ldexp(diff, -q)
        finite = np.isfinite(comp) & np.isfinite(hi)
        same_inf = np.isinf(comp) & np.isinf(hi) & (comp == hi)
        err = np.where(finite, err, np.where(same_inf, 0.0, np.nan))
    return err.reshape(shape)


def _ulp_error_mp(comp: np.ndarray, ex: np.ndarray, f: Format) -> np.ndarray:
    out = np.full(comp.shape, np.nan)
    with mpmath.workprec(max(2 * f.precision + 20, 140)):
        for i, (c, e) in enumerate(zip(comp, ex)):
            em = e if isinstance(e, mpmath.mpf) else mpmath.mpf(float(e))
            if mpmath.isnan(em) or np.isnan(c):
                continue
            if mpmath.isinf(em) or np.isinf(c):
                same = mpmath.isinf(em) and np.isinf(c) and (em > 0) == (c > 0)
                out[i] = 0.0 if same else np.nan
                continue
            out[i] = float(abs(mpmath.mpf(c) - em) / mpmath.ldexp(1, ulp_exponent(em, f)))
    return out


def bits_of_error(a: np.ndarray, b: np.ndarray, fmt: "str | Format") -> np.ndarray:
    """log2(1 + ulp_distance(a, b)), as Herbie reports it; 0 for identical values, NaN where a
    NaN is involved.  Computed from the exact integer distance, float64 result."""
    d = ulp_distance(a, b, fmt)
    out = np.log2(1.0 + d.astype(np.float64))
    return np.where(d == NO_DISTANCE, np.nan, out)


def relative_error(computed: np.ndarray, exact, exact_lo=None) -> np.ndarray:
    """|computed - exact| / |exact| in float64.

    ``exact``: an array of mpmath numbers, or float64 ``hi`` with optional ``exact_lo`` (the
    truth is hi + lo).  0 where both are 0 or the same infinity; inf where exact is 0 and
    computed is not; NaN where either side is NaN or only one side is infinite.
    """
    shape = np.shape(computed)
    comp = np.asarray(computed).astype(np.float64).ravel()
    ex = np.asarray(exact)
    if ex.dtype != object:
        hi = ex.astype(np.float64).ravel()
        lo = np.zeros_like(hi) if exact_lo is None else np.asarray(exact_lo, np.float64).ravel()
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            rel = np.abs((comp - hi) - lo) / np.abs(hi)
            rel = np.where((hi == 0) & (comp == 0), 0.0, rel)
            finite = np.isfinite(comp) & np.isfinite(hi)
            same_inf = np.isinf(comp) & np.isinf(hi) & (comp == hi)
            rel = np.where(finite, rel, np.where(same_inf, 0.0, np.nan))
        return rel.reshape(shape)
    ex = ex.ravel()
    out = np.full(comp.shape, np.nan)
    with mpmath.workprec(120):
        for i, (c, e) in enumerate(zip(comp, ex)):
            em = e if isinstance(e, mpmath.mpf) else mpmath.mpf(float(e))
            if mpmath.isnan(em) or np.isnan(c):
                continue
            if mpmath.isinf(em) or np.isinf(c):
                if mpmath.isinf(em) and np.isinf(c) and (em > 0) == (c > 0):
                    out[i] = 0.0
                continue
            if em == 0:
                out[i] = 0.0 if c == 0 else np.inf
                continue
            out[i] = float(abs(mpmath.mpf(c) - em) / abs(em))
    return out.reshape(shape)
