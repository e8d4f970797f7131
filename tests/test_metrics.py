"""Tests of precision_lab.numerics.metrics with oracles independent of the code under test.

ulp_distance: exhaustively for float16/bfloat16 against a count made by stepping with
np.nextafter from -max to +max; for float32/float64 with hypothesis against ordinals
computed here from struct-packed bits with Python ints (the scheme of hypothesis's
internal/floats.py count_between_floats: split at zero, +0 and -0 one point).
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from precision_lab.numerics.formats import FORMAT_NAMES, get_format, round_to
from precision_lab.numerics.metrics import (
    CATEGORIES,
    NO_DISTANCE,
    bits_of_error,
    categorize,
    correctly_rounded,
    ordinal,
    relative_error,
    ulp_distance,
    ulp_error,
)

SMALL = ("float16", "bfloat16")


def stepped_values(fmt: str) -> np.ndarray:
    """Every finite value from -max to +max, by repeated np.nextafter (-0 is skipped: the
    step from -smallest_subnormal lands on a zero, the next one on +smallest_subnormal)."""
    f = get_format(fmt)
    t = f.np_dtype.type
    v, top, inf = t(-f.max_finite), t(f.max_finite), t(np.inf)
    out = [v]
    while v != top:
        v = np.nextafter(v, inf)
        out.append(v)
    return np.array(out, dtype=f.np_dtype)


@pytest.fixture(scope="module", params=SMALL)
def stepped(request):
    return request.param, stepped_values(request.param)


# -- exhaustive float16 / bfloat16 -------------------------------------------------------


def test_distance_to_next_is_one_for_every_value(stepped):
    fmt, vals = stepped
    f = get_format(fmt)
    every = np.arange(2**16, dtype=np.uint16).view(f.np_dtype)
    with np.errstate(invalid="ignore"):
        every = every[~np.isnan(every.astype(np.float64))]
    with np.errstate(over="ignore"):
        nxt = np.nextafter(every, f.np_dtype.type(np.inf))
    d = ulp_distance(every, nxt, fmt)
    is_top = every.astype(np.float64) == np.inf  # nextafter(inf, inf) = inf
    assert np.all(d[~is_top] == 1) and np.all(d[is_top] == 0)
    assert np.all(ulp_distance(nxt, every, fmt)[~is_top] == 1)  # symmetric


def test_distance_from_minus_max_counts_the_steps(stepped):
    fmt, vals = stepped
    n = len(vals) - 1
    d = ulp_distance(np.full(len(vals), vals[0]), vals, fmt)
    assert np.array_equal(d, np.arange(n + 1, dtype=np.uint64))
    f = get_format(fmt)
    top = f.np_dtype.type(f.max_finite)
    assert int(ulp_distance(-top, top, fmt)) == n
    assert n == 2 * int(top.view(np.uint16))  # 63486 (float16), 65278 (bfloat16)
    assert int(ulp_distance(f.np_dtype.type(-np.inf), f.np_dtype.type(np.inf), fmt)) == n + 2
    # ordinals are consecutive integers along the stepped sequence
    o = ordinal(vals, fmt)
    assert np.array_equal(np.diff(o), np.ones(n, dtype=np.int64)) and o[n // 2] == 0


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_zero_and_the_sign_boundary(fmt):
    f = get_format(fmt)
    t = f.np_dtype.type
    s = t(f.smallest_subnormal)
    assert int(ulp_distance(t(0.0), t(-0.0), fmt)) == 0
    assert int(ulp_distance(t(-0.0), s, fmt)) == 1 and int(ulp_distance(t(0.0), -s, fmt)) == 1
    assert int(ulp_distance(-s, s, fmt)) == 2
    assert int(ulp_distance(t(-1.0), t(1.0), fmt)) == 2 * int(ulp_distance(t(0.0), t(1.0), fmt))
    assert ordinal(np.array([0.0, -0.0], f.np_dtype), fmt).tolist() == [0, 0]
    assert int(ulp_distance(t(f.max_finite), t(np.inf), fmt)) == 1
    nan = t(np.nan)
    assert ulp_distance(nan, t(1.0), fmt) == NO_DISTANCE
    assert ulp_distance(t(1.0), nan, fmt) == NO_DISTANCE
    assert ulp_distance(np.array([1.0, 2.0], f.np_dtype), np.array([1.0, 2.0], f.np_dtype),
                        fmt).dtype == np.uint64


def test_largest_float64_distance_and_no_wraparound():
    assert int(ulp_distance(-np.inf, np.inf, "float64")) == 2**64 - 2**53
    # numpy.testing.nulp_diff wraps here (~2.07e7); the true count is ~4.27e9
    a, b = np.float32(-3e38), np.float32(3e38)
    assert int(ulp_distance(a, b, "float32")) == 2 * int(b.view(np.uint32))
    assert int(ulp_distance(a, b, "float32")) > 4e9


# -- float32 / float64 with hypothesis ---------------------------------------------------


def py_ordinal(x: float, fmt: str) -> int:
    """Ordinal from the IEEE bits with Python ints, as count_between_floats does."""
    if fmt == "float32":
        bits = struct.unpack("<I", struct.pack("<f", x))[0]
        sign, mag = bits >> 31, bits & 0x7FFFFFFF
    else:
        bits = struct.unpack("<Q", struct.pack("<d", x))[0]
        sign, mag = bits >> 63, bits & 0x7FFFFFFFFFFFFFFF
    return -mag if sign else mag


def floats_of(fmt: str):
    return st.floats(allow_nan=False, width=32 if fmt == "float32" else 64)


@pytest.mark.parametrize("fmt", ["float32", "float64"])
def test_distance_equals_python_int_count(fmt):
    @settings(max_examples=500, deadline=None)
    @given(floats_of(fmt), floats_of(fmt))
    def check(a, b):
        want = abs(py_ordinal(a, fmt) - py_ordinal(b, fmt))
        got = ulp_distance(np.array([a]), np.array([b]), fmt)[0]
        assert int(got) == want

    check()


@pytest.mark.parametrize("fmt", ["float32", "float64"])
def test_distance_triangle_equality(fmt):
    @settings(max_examples=300, deadline=None)
    @given(floats_of(fmt), floats_of(fmt), floats_of(fmt))
    def check(a, b, c):
        a, b, c = sorted((a, b, c))

        def d(x, y):
            return int(ulp_distance(np.array([x]), np.array([y]), fmt)[0])
        assert d(a, c) == d(a, b) + d(b, c)

    check()


# -- ulp_error ---------------------------------------------------------------------------


def mp_array(values) -> np.ndarray:
    return np.array(list(values), dtype=object)


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_correctly_rounded_values_have_at_most_half_an_ulp(fmt):
    f = get_format(fmt)

    @settings(max_examples=200, deadline=None)
    @given(st.integers(1, 2**80), st.integers(f.emin - f.precision - 80, f.emax - 80),
           st.booleans())
    def check(man, exp, negative):
        with mpmath.workprec(200):
            exact = mpmath.ldexp(mpmath.mpf(-man if negative else man), exp)
        r = round_to(exact, fmt)
        assume(np.isfinite(float(r)))
        err = ulp_error(np.array([r], f.np_dtype), mp_array([exact]), fmt)[0]
        assert err <= 0.5
        # the double-double path (hi + lo) agrees to float64 accuracy, where hi + lo can
        # hold the value (not below float64's subnormal range, e.g. 2^-1075)
        with mpmath.workprec(200):
            hi = float(exact)
            lo = float(exact - mpmath.mpf(hi))
            if abs(exact - mpmath.mpf(hi) - mpmath.mpf(lo)) > abs(exact) * mpmath.ldexp(1, -100):
                return
        err2 = ulp_error(np.array([r], f.np_dtype), np.array([hi]), fmt, exact_lo=np.array([lo]))[0]
        assert err2 <= 0.5 * (1 + 2**-50) and abs(err2 - err) <= 2**-50 * max(err, 1)

    check()


@pytest.mark.parametrize("fmt,computed,exact,want", [
    # normal range: the ulp is the one of the exact value's binade
    ("float16", 1.0, Fraction(1) + Fraction(1, 2**11), 0.5),
    ("float16", 1 + 2**-10, Fraction(1), 1.0),
    ("float16", 1.0, Fraction(1) - Fraction(1, 2**12), 0.5),  # exact in [0.5, 1): ulp 2^-11
    ("float16", 65504.0, Fraction(65504 + 16), 0.5),  # top binade, ulp 32
    ("float16", 2.0**-24, Fraction(1, 2**25), 0.5),  # subnormals: ulp 2^-24
    ("float16", 2.0**-24, Fraction(0), 1.0),
    ("float16", 3 * 2.0**-24, Fraction(1, 2**24), 2.0),
    ("bfloat16", 1.0, Fraction(1) + Fraction(1, 2**8), 0.5),
    ("bfloat16", 2.0**-133, Fraction(0), 1.0),  # smallest subnormal 2^-133
    ("bfloat16", 3.0, Fraction(2), 64.0),  # ulp at 2 is 2^-6: |3 - 2| / 2^-6
    ("float32", 1.0, Fraction(1) + Fraction(3, 2**24), 1.5),
    ("float32", 2.0**-149, Fraction(2, 2**149), 1.0),
    ("float64", 5e-324, Fraction(0), 1.0),
    ("float64", 1.0, Fraction(1) - Fraction(1, 2**54), 0.5),
])
def test_ulp_error_hand_cases(fmt, computed, exact, want):
    f = get_format(fmt)
    c = np.array([computed], dtype=f.np_dtype)
    with mpmath.workprec(300):
        ex = mpmath.mpf(exact.numerator) / exact.denominator
        got = ulp_error(c, mp_array([ex]), fmt)[0]
        hi = float(ex)
        lo = float(ex - mpmath.mpf(hi))
    assert got == want
    assert ulp_error(c, np.array([hi]), fmt, exact_lo=np.array([lo]))[0] == want


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_ulp_error_non_finite(fmt):
    f = get_format(fmt)
    c = np.array([np.inf, np.inf, 1.0, np.nan, -np.inf], f.np_dtype)
    hi = np.array([np.inf, 1.0, np.inf, 1.0, -np.inf])
    got = ulp_error(c, hi, fmt)
    assert got[0] == 0 and np.isnan(got[1]) and np.isnan(got[2]) and np.isnan(got[3])
    assert got[4] == 0
    got_mp = ulp_error(c, mp_array([mpmath.inf, mpmath.mpf(1), mpmath.inf, mpmath.mpf(1),
                                    mpmath.ninf]), fmt)
    assert np.array_equal(np.isnan(got_mp), np.isnan(got)) and got_mp[0] == 0
    assert ulp_error(np.zeros((2, 3), f.np_dtype), np.zeros((2, 3)), fmt).shape == (2, 3)


# -- categorize, bits_of_error, relative_error -------------------------------------------


def test_categorize_rule():
    inf, nan = np.inf, np.nan
    pairs = [  # (computed, truth, category)
        (1.0, 2.0, "finite"),
        (0.0, -0.0, "finite"),
        (inf, inf, "inf_match"),
        (-inf, -inf, "inf_match"),
        (inf, 1.0, "overflow"),
        (-inf, 1.0, "overflow"),
        (nan, 1.0, "nan"),
        (nan, inf, "nan"),
        (1.0, inf, "missed_inf"),
        (-inf, inf, "missed_inf"),
        (1.0, nan, "undefined"),
        (nan, nan, "undefined"),
        (inf, nan, "undefined"),
    ]
    c = np.array([p[0] for p in pairs], np.float16)
    t = np.array([p[1] for p in pairs], np.float64)
    got = categorize(c, t)
    assert got.tolist() == [p[2] for p in pairs]
    assert set(got) <= set(CATEGORIES)
    assert categorize(np.zeros((2, 2)), np.zeros((2, 2))).shape == (2, 2)


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_bits_of_error(fmt):
    f = get_format(fmt)
    t = f.np_dtype.type
    one = t(1.0)
    up = np.nextafter(one, t(2))
    up3 = np.nextafter(np.nextafter(up, t(2)), t(2))
    a = np.array([one, t(0.0), one, one, t(np.nan)], f.np_dtype)
    b = np.array([one, t(-0.0), up, up3, one], f.np_dtype)
    got = bits_of_error(a, b, fmt)
    assert got[:4].tolist() == [0.0, 0.0, 1.0, 2.0] and np.isnan(got[4])
    top = t(f.max_finite)
    assert bits_of_error(-top, top, fmt) == pytest.approx(math.log2(1 + 2 * int(ordinal(top, fmt))))


def test_relative_error():
    c = np.array([1.0, 0.0, 1.0, np.inf, np.inf, np.nan, 2.0])
    e = np.array([2.0, 0.0, 0.0, np.inf, 1.0, 1.0, 1.0])
    got = relative_error(c, e)
    assert got[0] == 0.5 and got[1] == 0.0 and got[2] == np.inf and got[3] == 0.0
    assert np.isnan(got[4]) and np.isnan(got[5]) and got[6] == 1.0
    # hi + lo truth and the mpmath path agree
    assert relative_error(np.array([1.0]), np.array([1.0]), exact_lo=np.array([2**-60]))[0] == \
        pytest.approx(2**-60, rel=1e-12)
    mp = relative_error(c, mp_array(mpmath.mpf(v) for v in e))
    assert np.array_equal(np.isnan(mp), np.isnan(got)) and np.allclose(mp[~np.isnan(mp)],
                                                                       got[~np.isnan(got)])


# -- one rounding into the format, every entry point --------------------------------------


def test_float64_values_round_once_into_bfloat16_and_float16():
    """1 + 2**-8 + 2**-40 is nearer 1 + 2**-7 than 1 in bfloat16 (the midpoint is 1 + 2**-8);
    a cast through float32 loses the 2**-40 and ties to 1.  Same trap for float16 (via
    torch) with 1 + 2**-11 + 2**-40."""
    torch = pytest.importorskip("torch")
    for fmt, x, up in (("bfloat16", 1 + 2**-8 + 2**-40, 1 + 2**-7),
                       ("float16", 1 + 2**-11 + 2**-40, 1 + 2**-10)):
        f = get_format(fmt)
        one = np.array([1.0], f.np_dtype)
        want_up = np.array([up], f.np_dtype)
        for value in (np.array([x]), [x], torch.tensor([x], dtype=torch.float64)):
            assert int(ulp_distance(value, one, fmt)[0]) == 1, (fmt, type(value))
            assert int(ulp_distance(one, value, fmt)[0]) == 1
            assert ordinal(value, fmt)[0] == ordinal(want_up, fmt)[0]
            assert bits_of_error(value, one, fmt)[0] == 1.0
            assert bool(correctly_rounded(value, want_up, fmt)[0])
            assert not bool(correctly_rounded(value, one, fmt)[0])
            # ulp_error measures the value rounded once: 1 + 2**-7 against the truth 1
            assert float(ulp_error(value, np.array([1.0]), fmt)[0]) == 1.0


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    a = torch.tensor([1.0, 2.0, float("nan")], dtype=torch.bfloat16)
    b = np.array([1.0, 2.015625, 1.0], dtype=get_format("bfloat16").np_dtype)
    assert ulp_distance(a, b, "bfloat16").tolist() == [0, 1, int(NO_DISTANCE)]
    assert categorize(a, b).tolist() == ["finite", "finite", "nan"]
    assert np.allclose(relative_error(a, np.array([1.0, 2.0, 1.0]))[:2], 0.0)
    assert correctly_rounded(a, b, "bfloat16").tolist() == [True, False, False]


# -- correctly_rounded: the one definition -------------------------------------------------


@pytest.mark.parametrize("fmt", SMALL)
def test_correctly_rounded_exhaustively(fmt):
    f = get_format(fmt)
    every = np.arange(2**16, dtype=np.uint16).view(f.np_dtype)
    with np.errstate(invalid="ignore"):
        nan = np.isnan(every.astype(np.float64))
    t = f.np_dtype.type
    assert correctly_rounded(every, every, fmt)[~nan].all()  # every value is its own rounding
    with np.errstate(over="ignore"):
        nxt = np.nextafter(every[~nan], t(np.inf))
    moved = every[~nan].astype(np.float64) != np.inf
    assert not correctly_rounded(nxt[moved], every[~nan][moved], fmt).any()


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_correctly_rounded_nan_zero_and_inf_rules(fmt):
    t = get_format(fmt).np_dtype.type
    dt = get_format(fmt).np_dtype
    c = np.array([np.nan, np.nan, 1.0, -0.0, 0.0, np.inf, np.inf, -np.inf], dt)
    r = np.array([np.nan, 1.0, np.nan, 0.0, -0.0, np.inf, t(get_format(fmt).max_finite), np.inf],
                 dt)
    got = correctly_rounded(c, r, fmt)
    assert got.dtype == bool
    assert got.tolist() == [True, False, False, True, True, True, False, False]
