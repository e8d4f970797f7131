"""Error metrics between computed floats and a correctly rounded or exact truth, vectorized.

Non-finite rule (one rule, used everywhere): every (computed, truth) pair gets a category
from :data:`CATEGORIES`.  Only pairs in the "finite" category (both finite) and "inf_match"
(both the same infinity, an exact match) carry ULP statistics; the others are counted per
category and never averaged into means.  Numeric metrics of non-"finite" pairs are NaN
(``ulp_error``, ``relative_error``, ``bits_of_error``) or :data:`NO_DISTANCE`
(``ulp_distance`` where a NaN is involved).

Inputs: every function takes numpy/ml_dtypes arrays, torch tensors (bfloat16 included) and
sequences (:func:`~precision_lab.numerics.formats.as_array`); where values must be of the
format ``fmt`` they are rounded once, straight to it
(:func:`~precision_lab.numerics.formats.to_format`): float64 values given for bfloat16 are
never rounded through float32.  Pass arrays already of the format to measure them as they are.

"Correctly rounded" has one definition here, :func:`correctly_rounded`: ulp_distance 0 from
the correctly rounded truth (+0 and -0 are the same point; NaN only where the truth is NaN).
"""

from __future__ import annotations

import mpmath
import numpy as np

from precision_lab.numerics.formats import (
    Format,
    as_array,
    get_format,
    to_format,
    ulp_exponent,
    ulp_exponent_array,
)

__all__ = [
    "CATEGORIES",
    "NO_DISTANCE",
    "ordinal",
    "ulp_distance",
    "correctly_rounded",
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


def _isnan(a: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # ml_dtypes warns when widening a bfloat16 NaN
        return np.isnan(a.astype(np.float64))


def _bits(a: np.ndarray, f: Format) -> np.ndarray:
    a = to_format(a, f)
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

    Values of another dtype are first rounded once to ``fmt`` (pass arrays already in that
    format to measure them as they are).  Correct
    across the sign boundary (+0 and -0 are the same point) and for values far apart: the
    largest distance, -inf to +inf in float64, is 2**64 - 2**53, which fits in uint64.
    Pairs involving NaN give :data:`NO_DISTANCE`.
    """
    f = get_format(fmt)
    a = to_format(a, f)
    b = to_format(b, f)
    ia, ib = ordinal(a, f), ordinal(b, f)
    oa, ob = ia.view(np.uint64), ib.view(np.uint64)
    with np.errstate(over="ignore"):
        d = np.where(ia >= ib, oa - ob, ob - oa)  # modular uint64 arithmetic: exact here
    nan = _isnan(a) | _isnan(b)
    return np.where(nan, NO_DISTANCE, d).astype(np.uint64)


def correctly_rounded(computed, reference, fmt: "str | Format") -> np.ndarray:
    """Whether each computed value IS the correctly rounded truth: the one definition used
    everywhere (bool array, broadcast shape of the two).

    ``reference`` is the correctly rounded truth in ``fmt`` (e.g. ReferenceResult.values);
    values of another dtype are rounded once to ``fmt``, which gives the correctly rounded
    truth only if they are exact.  A pair is correctly rounded where ulp_distance is 0:
    equal values, +0 and -0 counting as the same point, the same infinity.  NaN counts as
    correctly rounded only where the truth is NaN; a NaN truth with a non-NaN computed value
    is not.
    """
    f = get_format(fmt)
    c = to_format(computed, f)
    r = to_format(reference, f)
    cn, rn = _isnan(c), _isnan(r)
    same = ulp_distance(c, r, f) == 0
    return np.asarray(np.where(rn, cn, same & ~cn), dtype=bool)


def categorize(computed: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Category (see :data:`CATEGORIES`) of each pair, as an array of str."""
    with np.errstate(invalid="ignore"):  # exact widening: only NaN/inf/equality are used
        c = as_array(computed).astype(np.float64)
        t = as_array(truth).astype(np.float64)
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

    ``computed`` values of another dtype are first rounded once to ``fmt``.  ``exact`` is
    either an array of mpmath numbers (the unrounded truth; the division is done in mpmath)
    or a float64 array ``hi`` with an optional float64 ``exact_lo`` such that the truth is
    hi + lo (a double-double, as the reference gives).  A correctly rounded result has at
    most 0.5 against the unrounded truth.  With float inputs the figure carries a relative
    error of about 2**-52 (it is a float64 computation), and the binade is that of the
    double-double hi + lo: hi's, or the one beneath where hi is a power of two and lo is
    nonzero with the opposite sign (:func:`~precision_lab.numerics.formats.ulp_exponent_array`).
    The reference's hi/lo are guaranteed to lie in the binade of the exact loss (its
    enclosure contains no power of two), so a loss just below 2**k is measured in the ulp
    of the binade below 2**k.  Pass a bare float64 ``hi`` only if it is the exact value or
    lies in the exact value's binade.  NaN unless both sides are finite; 0 where both are
    the same infinity.
    """
    f = get_format(fmt)
    comp_f = to_format(computed, f)
    shape = comp_f.shape
    with np.errstate(invalid="ignore"):
        comp = comp_f.astype(np.float64).ravel()
    ex = as_array(exact)
    if ex.dtype == object:
        return _ulp_error_mp(comp, ex.ravel(), f).reshape(shape)
    hi = np.asarray(ex, dtype=np.float64).ravel()
    lo = np.zeros_like(hi) if exact_lo is None else as_array(exact_lo).astype(np.float64).ravel()
    with np.errstate(invalid="ignore", over="ignore"):
        q = ulp_exponent_array(hi, f, lo)
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
    comp_a = as_array(computed)
    shape = comp_a.shape
    with np.errstate(invalid="ignore"):
        comp = comp_a.astype(np.float64).ravel()
    ex = as_array(exact)
    if ex.dtype != object:
        hi = ex.astype(np.float64).ravel()
        lo = (np.zeros_like(hi) if exact_lo is None
              else as_array(exact_lo).astype(np.float64).ravel())
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
