"""Tests of precision_lab.numerics.formats with oracles independent of the code under test.

float16/bfloat16 are checked exhaustively: the positive values of a 16-bit format are the bit
patterns 0 .. ordinal(max) in increasing order, so the grid of consecutive values, their exact
midpoints (Fractions) and the even neighbour (even bit pattern) come from the bit layout, not
from formats.py.  float32/float64 use hypothesis, with numpy's float64 -> float32 cast
(correctly rounded, IEEE 754) and exact Fraction midpoints as oracles.
"""

from __future__ import annotations

import math
from fractions import Fraction

import ml_dtypes
import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from precision_lab.numerics.formats import (
    FORMAT_NAMES,
    FORMATS,
    get_format,
    round_float64_array,
    round_to,
    ulp_exponent,
    ulp_of,
)

SMALL = ("float16", "bfloat16")
TINY = Fraction(1, 2**1200)  # far below half an ulp of anything here, even float64 subnormals


def bits_of(a: np.ndarray, fmt: str) -> np.ndarray:
    f = get_format(fmt)
    return np.asarray(a, dtype=f.np_dtype).view(f.uint_dtype)


def positive_grid(fmt: str) -> np.ndarray:
    """All non-negative finite values of a 16-bit format, increasing, from the bit layout."""
    f = get_format(fmt)
    top = int(np.array(f.max_finite, dtype=np.float64).astype(f.np_dtype).view(np.uint16))
    return np.arange(top + 1, dtype=np.uint16).view(f.np_dtype)


def same_bits(got, want, fmt: str) -> bool:
    return np.array_equal(bits_of(got, fmt), bits_of(want, fmt))


# -- format facts ------------------------------------------------------------------------


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_format_facts_match_finfo(name):
    f = FORMATS[name]
    fi = ml_dtypes.finfo(f.np_dtype) if name == "bfloat16" else np.finfo(f.np_dtype)
    assert f.precision == fi.nmant + 1
    assert f.max_finite == float(fi.max)
    assert f.smallest_normal == float(fi.smallest_normal)
    assert f.smallest_subnormal == float(fi.smallest_subnormal)
    assert f.unit_roundoff == 2.0 ** -f.precision
    assert f.bits == 8 * f.np_dtype.itemsize == 8 * f.uint_dtype.itemsize
    half_top = mpmath.mpf(2) ** (f.emax - f.precision)
    assert f.overflow_threshold == mpmath.mpf(f.max_finite) + half_top
    assert str(f) == name


def test_get_format_names_aliases_dtypes_and_errors():
    assert get_format("fp16") is FORMATS["float16"] and get_format("BF16") is FORMATS["bfloat16"]
    assert get_format("double") is FORMATS["float64"] and get_format("single") is FORMATS["float32"]
    assert get_format(np.float32) is FORMATS["float32"]
    assert get_format(np.dtype(ml_dtypes.bfloat16)) is FORMATS["bfloat16"]
    assert get_format(FORMATS["float16"]) is FORMATS["float16"]
    for bad in ("float8", np.int32):
        with pytest.raises(ValueError, match="allowed: float16, bfloat16, float32, float64"):
            get_format(bad)


# -- exhaustive float16 / bfloat16 -------------------------------------------------------


@pytest.mark.parametrize("fmt", SMALL)
def test_every_finite_value_rounds_to_itself(fmt):
    f = get_format(fmt)
    every = np.arange(2**16, dtype=np.uint16).view(f.np_dtype)
    with np.errstate(invalid="ignore"):
        fin = every[np.isfinite(every.astype(np.float64))]
    assert same_bits(round_float64_array(fin.astype(np.float64), fmt), fin, fmt)  # keeps -0
    got = np.array([round_to(float(v), fmt) for v in fin.astype(np.float64)], dtype=f.np_dtype)
    assert same_bits(got, fin, fmt)


@pytest.mark.parametrize("fmt", SMALL)
def test_midpoints_go_to_the_even_neighbour_and_perturbations_to_the_nearer(fmt):
    f = get_format(fmt)
    grid = positive_grid(fmt)
    a, b = grid[:-1], grid[1:]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    assert np.all(a64 < b64)
    mid = (a64 + b64) / 2  # exact in float64 (one more bit than the format)
    even = np.where(np.arange(len(a)) % 2 == 0, a, b)  # index == bit pattern here
    up = np.nextafter(mid, np.inf)
    down = np.nextafter(mid, -np.inf)
    for sign in (1.0, -1.0):

        def s(v, sign=sign):  # exact negation
            return (sign * v.astype(np.float64)).astype(f.np_dtype)
        assert same_bits(round_float64_array(sign * mid, fmt), s(even), fmt)
        assert same_bits(round_float64_array(sign * up, fmt), s(b), fmt)  # |.| above mid
        assert same_bits(round_float64_array(sign * down, fmt), s(a), fmt)
    # round_to on the exact Fraction midpoints and on them +- a tiny amount, every midpoint
    fa = [Fraction(v) for v in a64.tolist()]
    fb = [Fraction(v) for v in b64.tolist()]
    fm = [(x + y) / 2 for x, y in zip(fa, fb)]
    assert [float(m) for m in fm] == mid.tolist()
    r_mid = np.array([round_to(m, fmt) for m in fm], dtype=f.np_dtype)
    r_up = np.array([round_to(m + TINY, fmt) for m in fm], dtype=f.np_dtype)
    r_dn = np.array([round_to(-(m - TINY), fmt) for m in fm], dtype=f.np_dtype)
    assert same_bits(r_mid, even, fmt)
    assert same_bits(r_up, b, fmt)
    assert same_bits(r_dn, (-a64).astype(f.np_dtype), fmt)
    # and through mpmath (exact additions), on a stride
    with mpmath.workprec(2000):
        for i in range(0, len(fm), 97):
            m = mpmath.mpf(mid[i])
            assert bits_of(round_to(m, fmt), fmt) == bits_of(even[i], fmt)
            assert bits_of(round_to(mpmath.fsub(m, mpmath.ldexp(1, -1500), exact=True), fmt),
                           fmt) == bits_of(a[i], fmt)


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_overflow_threshold(fmt):
    f = get_format(fmt)
    thr = Fraction(f.max_finite) + Fraction(2) ** (f.emax - f.precision)  # max + ulp/2, a tie
    assert round_to(thr, fmt) == np.inf and round_to(-thr, fmt) == -np.inf
    assert round_to(thr - TINY, fmt) == f.max_finite
    assert round_to(-(thr - TINY), fmt) == -f.max_finite
    assert round_to(mpmath.ldexp(1, 100000), fmt) == np.inf
    assert round_to(-mpmath.ldexp(3, 100000), fmt) == -np.inf
    assert round_to(2 ** (f.emax + 1), fmt) == np.inf
    if fmt != "float64":
        t64 = float(thr)  # exact in float64
        assert round_float64_array(np.array([t64, -t64, np.nextafter(t64, 0), 1e300]), fmt
                                   ).astype(np.float64).tolist() == [
            np.inf, -np.inf, f.max_finite, np.inf]


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_underflow_to_signed_zero_and_the_subnormal_grid(fmt):
    f = get_format(fmt)
    s = Fraction(f.smallest_subnormal)
    assert bits_of(round_to(s / 2, fmt), fmt) == 0  # tie with 0: even is 0
    assert bits_of(round_to(-s / 2, fmt), fmt) == bits_of(-0.0, fmt)  # -0
    assert round_to(s / 2 + TINY, fmt) == f.smallest_subnormal
    assert round_to(-(s / 2 + TINY), fmt) == -f.smallest_subnormal
    assert round_to(3 * s / 2, fmt) == 2 * f.smallest_subnormal  # tie: even is 2s
    assert round_to(5 * s / 2, fmt) == 2 * f.smallest_subnormal
    assert bits_of(round_to(mpmath.ldexp(-1, -100000), fmt), fmt) == bits_of(-0.0, fmt)
    assert bits_of(round_to(mpmath.mpf(0), fmt), fmt) == 0
    assert bits_of(round_to(-0.0, fmt), fmt) == bits_of(-0.0, fmt)
    # largest subnormal + half its spacing is a tie with the smallest normal (even pattern)
    big_sub = Fraction(f.smallest_normal) - s
    assert round_to(big_sub + s / 2, fmt) == f.smallest_normal
    assert round_to(big_sub + s / 2 - TINY, fmt) == float(big_sub)


def test_double_rounding_trap_float16():
    exact = Fraction(1) + Fraction(1, 2**11) + Fraction(1, 2**60)
    assert round_to(exact, "float16") == np.float16(1.0009765625)
    with mpmath.workprec(100):
        m = mpmath.mpf(1) + mpmath.ldexp(1, -11) + mpmath.ldexp(1, -60)
    assert round_to(m, "float16") == np.float16(1.0009765625)
    # passing through float64 first loses the 2**-60 and leaves a tie, which goes to even 1.0
    assert float(exact) == 1 + 2**-11
    assert round_to(float(exact), "float16") == np.float16(1.0)
    assert round_float64_array(np.array([float(exact)]), "float16")[0] == np.float16(1.0)


def test_bfloat16_rounding_does_not_pass_through_float32():
    # 1 + 2**-8 + 2**-40 is exact in float64; through float32 it would become the tie
    # 1 + 2**-8 and round to 1.0; rounded once it is 1 + 2**-7.
    x = np.array([1 + 2**-8 + 2**-40, -(1 + 2**-8 + 2**-40)])
    assert round_float64_array(x, "bfloat16").astype(np.float64).tolist() == [
        1 + 2**-7, -(1 + 2**-7)]
    assert round_to(float(x[0]), "bfloat16") == 1 + 2**-7


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_specials(fmt):
    f = get_format(fmt)
    assert np.isnan(round_to(math.nan, fmt)) and np.isnan(round_to(mpmath.nan, fmt))
    assert round_to(math.inf, fmt) == np.inf and round_to(mpmath.ninf, fmt) == -np.inf
    r = round_float64_array(np.array([np.nan, np.inf, -np.inf, -0.0, 0.0]), fmt)
    assert r.dtype == f.np_dtype
    assert np.isnan(float(r[0])) and float(r[1]) == np.inf and float(r[2]) == -np.inf
    assert same_bits(r[3:], np.array([-0.0, 0.0]).astype(f.np_dtype), fmt)
    assert round_to(3, fmt) == 3 and round_to(np.float32(0.5), fmt) == 0.5
    # a non-dyadic rational is rounded exactly: nearer to 1/3 than both neighbours
    r = round_to(Fraction(1, 3), fmt)
    t = f.np_dtype.type
    for nb in (np.nextafter(r, t(0)), np.nextafter(r, t(1))):
        assert abs(Fraction(float(r)) - Fraction(1, 3)) < abs(Fraction(float(nb)) - Fraction(1, 3))


# -- ulp_exponent / ulp_of ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", SMALL)
def test_ulp_of_matches_spacing_exhaustively(fmt):
    grid = positive_grid(fmt)[:-1]  # np.spacing(max) is inf
    spacing = np.spacing(grid).astype(np.float64)
    got = np.array([math.ldexp(1.0, ulp_exponent(float(v), fmt)) for v in grid.astype(np.float64)])
    assert np.array_equal(got, spacing)
    neg = np.array([math.ldexp(1.0, ulp_exponent(-float(v), fmt)) for v in grid.astype(np.float64)])
    assert np.array_equal(neg, spacing)  # the sign does not matter


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_ulp_exponent_hand_cases(fmt):
    f = get_format(fmt)
    p = f.precision
    assert ulp_exponent(1.0, fmt) == 1 - p
    assert ulp_exponent(Fraction(1) - TINY, fmt) == -p  # the binade of the exact value
    assert ulp_exponent(0.0, fmt) == f.emin - p + 1
    assert ulp_exponent(f.smallest_subnormal, fmt) == f.emin - p + 1
    assert ulp_exponent(mpmath.ldexp(1, 10**6), fmt) == f.emax - p + 1
    assert ulp_of(1.0, fmt) == mpmath.ldexp(1, 1 - p)
    for bad in (math.inf, math.nan):
        with pytest.raises(ValueError):
            ulp_exponent(bad, fmt)


# -- float32 / float64 with hypothesis ---------------------------------------------------

finite64 = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=400, deadline=None)
@given(finite64)
def test_float64_to_float32_matches_numpy_cast(x):
    with np.errstate(over="ignore"):
        want = np.float32(x)  # IEEE 754 conversion: correctly rounded, ties to even
    assert same_bits(round_to(x, "float32"), want, "float32")
    assert same_bits(round_float64_array(np.array([x]), "float32")[0], want, "float32")
    assert same_bits(round_to(mpmath.mpf(x), "float32"), want, "float32") or x == 0


def _neighbours(fmt: str):
    f = get_format(fmt)
    return st.floats(min_value=0.0, max_value=float(np.nextafter(f.np_dtype.type(f.max_finite),
                                                                 f.np_dtype.type(0))),
                     width=f.bits, allow_subnormal=True)


@pytest.mark.parametrize("fmt", ["float32", "float64"])
def test_midpoints_and_perturbations_hypothesis(fmt):
    f = get_format(fmt)

    @settings(max_examples=300, deadline=None)
    @given(_neighbours(fmt), st.booleans())
    def check(a, negative):
        a = f.np_dtype.type(a)
        b = np.nextafter(a, f.np_dtype.type(np.inf))
        fa, fb = Fraction(float(a)), Fraction(float(b))
        mid = (fa + fb) / 2
        even = a if int(bits_of(a, fmt)) % 2 == 0 else b
        sg = -1 if negative else 1
        neg = (lambda v: -v) if negative else (lambda v: v)
        assert same_bits(round_to(sg * mid, fmt), neg(even), fmt)
        assert same_bits(round_to(sg * (mid + TINY), fmt), neg(b), fmt)
        assert same_bits(round_to(sg * (mid - TINY), fmt), neg(a), fmt)
        assert same_bits(round_to(sg * (fa + TINY), fmt), neg(a), fmt)

    check()


# -- round_to: every exact input, rounded once ---------------------------------------------


_GRIDS: dict[str, tuple[np.ndarray, list[Fraction]]] = {}


def _nearest_by_grid(q: Fraction, fmt: str):
    """Round a positive rational by the bit-layout grid (no formats.py): the two grid values
    around q, the nearer one, ties to the even bit pattern; beyond max: max or inf by the
    overflow threshold (max + half the top spacing)."""
    import bisect

    if fmt not in _GRIDS:
        g = positive_grid(fmt)
        _GRIDS[fmt] = (g, [Fraction(float(v)) for v in g.astype(np.float64)])
    grid, vals = _GRIDS[fmt]
    i = bisect.bisect_left(vals, q)
    if i == len(vals):
        top = vals[-1]
        half = (top - vals[-2]) / 2
        return np.inf if q >= top + half else float(top)
    if vals[i] == q or i == 0:
        return float(vals[i])
    a, b = vals[i - 1], vals[i]
    if q - a < b - q:
        return float(a)
    if b - q < q - a:
        return float(b)
    return float(a) if int(grid[i - 1].view(np.uint16)) % 2 == 0 else float(b)


@pytest.mark.parametrize("fmt", SMALL)
@settings(max_examples=300, deadline=None)
@given(p=st.integers(1, 2**80), q=st.integers(1, 2**80), e=st.integers(-40, 40))
def test_non_dyadic_fractions_round_once(fmt, p, q, e):
    x = Fraction(p, q) * Fraction(2) ** e
    want = _nearest_by_grid(x, fmt)
    got = round_to(x, fmt)
    assert float(got) == want and float(round_to(-x, fmt)) == -want


def test_fraction_decimal_string_and_int_inputs_round_from_the_exact_value():
    # 1 + 2**-24 is the float32 midpoint between 1 and 1 + 2**-23; anything above it rounds up
    above = 1 + Fraction(1, 2**24) + Fraction("1e-100")
    assert float(round_to(above, "float32")) == 1 + 2**-23  # not 1.0 (float64 first: a tie)
    assert Fraction("1.0000000596046448") > 1 + Fraction(1, 2**24)
    assert float(round_to("1.0000000596046448", "float32")) == 1 + 2**-23
    assert float(round_to("1.0000000596046447", "float32")) == 1.0
    assert float(round_to("1e-100", "float64")) == 1e-100  # Python's parse is correctly rounded
    # half the smallest float64 subnormal is 2.4703282292062327208...e-324
    assert float(round_to(-Fraction(1, 2**1075), "float64")) == 0.0  # a tie: to even, -0
    assert math.copysign(1.0, float(round_to(-Fraction(1, 2**1075), "float64"))) < 0
    assert float(round_to("2.4703282292062328e-324", "float64")) == 5e-324
    assert float(round_to("2.4703282292062327e-324", "float64")) == 0.0
    assert float(round_to("1e-1000000000", "float32")) == 0.0  # decided without 10**1e9
    assert float(round_to("-1e1000000000", "float16")) == -np.inf
    assert np.isnan(round_to("nan", "bfloat16")) and round_to("-inf", "float16") == -np.inf
    from decimal import Decimal

    assert float(round_to(Decimal("1.0000000596046448"), "float32")) == 1 + 2**-23
    # Python ints of any size: 2**54 + 2**30 + 1 is above the float32 midpoint 2**54 + 2**30
    n = 2**54 + 2**30 + 1
    assert int(round_to(n, "float32")) == 2**54 + 2**31  # float64 first would tie to 2**54
    assert int(round_to(n, "float64")) == 2**54 + 2**30  # spacing 4 at 2**54: nearest
    assert round_to(3**700, "float64") == np.inf and round_to(-(3**700), "float32") == -np.inf
    with pytest.raises(ValueError, match="not a decimal number"):
        round_to("1.2.3", "float32")
    with pytest.raises(TypeError, match="allowed: mpmath.mpf"):
        round_to([1.0], "float32")
    with pytest.raises(TypeError):
        round_to(True, "float32")


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_numpy_and_ml_dtypes_scalars(fmt):
    for scalar in (ml_dtypes.bfloat16(1.5), np.float16(-0.25), np.float32(3.0),
                   np.float64(0.5), np.int64(-7), np.uint64(2**64 - 1), np.longdouble(2.0),
                   np.array(ml_dtypes.bfloat16(2.0))):
        want = float(Fraction(int(scalar)) if isinstance(scalar, np.integer)
                     else Fraction(float(scalar)))
        got = round_to(scalar, fmt)
        assert got.dtype == get_format(fmt).np_dtype
        assert float(got) == float(round_to(Fraction(want) if not isinstance(scalar, np.uint64)
                                            else 2**64 - 1, fmt))
    # a longdouble wider than float64 is taken exactly, not through float64
    if np.finfo(np.longdouble).nmant > 52:
        v = np.longdouble(1) + np.longdouble(2.0) ** -53 + np.longdouble(2.0) ** -60
        assert float(round_to(v, "float64")) == 1 + 2**-52  # float64(v) would tie to 1


# -- as_array / to_format ------------------------------------------------------------------


def test_as_array_accepts_torch_big_endian_and_sequences():
    from precision_lab.numerics.formats import as_array, to_format

    torch = pytest.importorskip("torch")
    bf = torch.tensor([1.0, -2.5, float("inf")], dtype=torch.bfloat16, requires_grad=True)
    a = as_array(bf)
    assert a.dtype == get_format("bfloat16").np_dtype
    assert a.astype(np.float64).tolist() == [1.0, -2.5, np.inf]
    t16 = torch.tensor([[0.5, 1.5]], dtype=torch.float16).flip(1).t().t()  # non-contiguous ok
    assert as_array(t16).dtype == np.float16 and as_array(t16).tolist() == [[1.5, 0.5]]
    be = np.array([1.0, 2.0**-149, -3.5], dtype=">f4")
    assert as_array(be).dtype == np.dtype(np.float32) and as_array(be).dtype.isnative
    assert as_array(be).tolist() == [1.0, 2.0**-149, -3.5]
    assert to_format(be, "float32").dtype == np.float32
    assert to_format([1, 2], "float16").dtype == np.float16
    x = np.array([1 + 2**-8 + 2**-40, -(1 + 2**-8 + 2**-40)])
    assert to_format(x, "bfloat16").astype(np.float64).tolist() == [1 + 2**-7, -(1 + 2**-7)]
    # a float64 array already holds 2**54 + 2**30 (a float32 midpoint): it ties to even
    assert float(to_format(np.array([float(2**54 + 2**30 + 1)]), "float32")[0]) == 2**54
    assert float(to_format(np.array([2**54 + 2**30 + 1], dtype=np.int64), "float32")[0]) \
        == 2**54 + 2**31  # integers round once from their exact value
    assert to_format(np.array([Fraction(1, 3)], dtype=object), "float64")[0] == 1 / 3
    with pytest.raises(TypeError, match="cannot take bool values"):
        to_format(np.array([True]), "float32")
