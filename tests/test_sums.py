"""Sums in a format's arithmetic: orders checked against scalar loops, errors against exact sums."""

from __future__ import annotations

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

from precision_lab.numerics.formats import get_format, round_to
from precision_lab.numerics.sums import kahan_sum, reduce_in_format, sequential_sum

FMTS = ("float16", "bfloat16", "float32", "float64")


def _loop(values, f):
    """The seed's loop, written out with numpy scalars: every partial sum rounded."""
    t = f.np_dtype.type
    acc = t(0.0)
    for v in values:
        acc = t(acc + v)
    return acc


@pytest.mark.parametrize("fmt", FMTS)
def test_sequential_sum_is_the_scalar_loop(fmt):
    f = get_format(fmt)
    rng = np.random.default_rng(1)
    for n in (1, 2, 7, 1000, 5000):
        v = (rng.random(n) * 4 - 1).astype(f.np_dtype)
        assert _loop(v, f).tobytes() == np.asarray(sequential_sum(v, f)).tobytes()
    big = np.full(3000, 60.0, dtype=f.np_dtype)  # float16 overflows: inf, as the loop gives
    with np.errstate(over="ignore"):
        assert _loop(big, f).tobytes() == np.asarray(sequential_sum(big, f)).tobytes()


@pytest.mark.parametrize("fmt", ("float16", "bfloat16", "float32"))
def test_kahan_beats_the_sequential_sum_against_the_exact_sum(fmt):
    f = get_format(fmt)
    rng = np.random.default_rng(2)
    v = (rng.random(20000) * 2.5).astype(f.np_dtype)
    exact = sum(Fraction(float(x)) for x in v)  # oracle: exact rational sum
    u = f.unit_roundoff
    total_abs = float(sum(abs(Fraction(float(x))) for x in v))
    k = Fraction(float(kahan_sum(v, f)))
    s = Fraction(float(sequential_sum(v, f)))
    # Kahan: |error| <= (2u + O(n u^2)) sum|x|  (Higham 4.3); the sequential sum is far worse
    bound = (2 * u + 20000 * u * u) * total_abs + float(f.smallest_subnormal)
    assert abs(float(k - exact)) <= bound
    assert abs(float(k - exact)) < abs(float(s - exact))


@pytest.mark.parametrize("method", ["sequential", "pairwise", "kahan", "float32"])
def test_means_are_one_correct_rounding_of_their_sum(method):
    v = np.array([1.0, 2.0**-11, 2.0**-11, 3.0], dtype=np.float16)
    m = reduce_in_format(v, "mean", "float16", method)
    s = reduce_in_format(v, "sum", "float16", method)
    assert m == round_to(Fraction(float(s)) / 4, "float16")
    if method == "sequential":  # 1 + 2^-11 ties to 1 twice in float16
        assert s == np.float16(4.0)
    if method in ("kahan", "float32"):  # the two halves survive
        assert s == round_to(Fraction(4) + Fraction(2, 2**11), "float16")
    with pytest.raises(ValueError, match="allowed: sequential, pairwise, kahan, float32"):
        reduce_in_format(v, "mean", "float16", "magic")


def test_float32_accumulation_rounds_once_for_bfloat16():
    v = np.full(1000, 1.0 + 2.0**-7, dtype=ml_dtypes.bfloat16)  # bf16 sum stalls at 512:
    # there half an ulp (2) exceeds each term (1.0078); a float32 accumulator does not stall
    seq = float(reduce_in_format(v, "sum", "bfloat16"))
    wide = float(reduce_in_format(v, "sum", "bfloat16", "float32"))
    assert seq == 512.0 and wide == float(round_to(Fraction(1000) * (1 + Fraction(1, 128)),
                                                   "bfloat16"))
    assert not math.isnan(wide)


def test_error_free_transformations_are_exact():
    """s + e equals a + b (a * b) exactly, checked in rational arithmetic."""
    from fractions import Fraction

    from precision_lab.numerics.eft import fast_two_sum, two_prod, two_sum

    rng = np.random.default_rng(5)
    a = rng.standard_normal(2000) * 2.0 ** rng.integers(-300, 300, 2000)
    b = rng.standard_normal(2000) * 2.0 ** rng.integers(-300, 300, 2000)
    for f, op in ((two_sum, lambda x, y: x + y), (two_prod, lambda x, y: x * y)):
        s, e = f(a, b)
        assert np.array_equal(s, op(a, b))
        assert all(Fraction(float(si)) + Fraction(float(ei))
                   == op(Fraction(float(ai)), Fraction(float(bi)))
                   for si, ei, ai, bi in zip(s, e, a, b))
    big, small = np.where(np.abs(a) >= np.abs(b), a, b), np.where(np.abs(a) >= np.abs(b), b, a)
    s, e = fast_two_sum(big, small)
    assert all(Fraction(float(si)) + Fraction(float(ei)) == Fraction(float(x)) + Fraction(float(y))
               for si, ei, x, y in zip(s, e, big, small))
