"""The reference's fast path: bit-identical to the exact path on hard inputs, its error
bounds hold against high-precision truths, and rows near a rounding boundary fall back."""

from __future__ import annotations

import math

import ml_dtypes
import mpmath
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracles import exact_loss

from precision_lab.numerics import _fastref as F
from precision_lab.numerics import reference as R
from precision_lab.numerics.formats import FORMAT_NAMES, get_format, round_to

DT = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32,
      "float64": np.float64}




def agree(x, t, fmt, reduction="none"):
    """Fast and exact results of the same input; asserts bit identity, returns both."""
    fast = R.cross_entropy_detailed(x, t, fmt, reduction, method="fast")
    exact = R.cross_entropy_detailed(x, t, fmt, reduction, method="exact")
    assert fast.values.dtype == exact.values.dtype
    assert fast.values.tobytes() == exact.values.tobytes(), (fmt, fast.values, exact.values)
    return fast, exact


def hard_rows(fmt: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Confident rows across the cancellation regime, huge magnitudes, masked logits,
    ties, subnormal results, in the logits format ``fmt``."""
    f = get_format(fmt)
    rows, ts = [], []
    V = 12
    for margin in [1, 2, 4, 7, 11, 16, 23, 35, 50, 80, 120, 200, 330, 500, 620, 700, 720, 800]:
        r = rng.standard_normal(V)
        r[3] = margin + r.max()
        rows.append(r)
        ts.append(3)
        rows.append(r.copy())
        ts.append(int(rng.integers(0, V)))  # the same row, a wrong target
    big = f.max_finite
    rows.append(np.r_[big, -big, rng.standard_normal(V - 2)])
    ts.append(0)
    rows.append(np.r_[big, big * 0.75, np.full(V - 2, -big)])
    ts.append(1)
    rows.append(np.r_[big * 0.5, big * 0.5 * (1 - 2.0 ** -6), np.zeros(V - 2)])
    ts.append(0)
    r = rng.standard_normal(V)
    r[[1, 4, 9]] = -np.inf  # masked classes
    rows.append(r)
    ts.append(2)
    r = np.full(V, -np.inf)
    r[[0, 5]] = [3.0, -40.0]
    rows.append(r)
    ts.append(0)
    rows.append(np.r_[np.full(4, 2.5), rng.standard_normal(V - 4) - 3])  # ties at the max
    ts.append(2)
    rows.append(np.r_[np.full(4, 2.5), rng.standard_normal(V - 4) - 3])
    ts.append(7)
    for tiny in [12.0, 16.0, 88.0, 100.0, 713.0, 740.0]:  # subnormal results somewhere
        rows.append(np.r_[tiny, np.zeros(V - 1) - np.arange(V - 1)])
        ts.append(0)
    x = np.array(rows)
    with np.errstate(over="ignore"):
        x = x.astype(DT[fmt])
    return x, np.array(ts)


@pytest.mark.parametrize("logits_fmt", FORMAT_NAMES)
@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_fast_equals_exact_on_hard_rows(logits_fmt, fmt):
    rng = np.random.default_rng(hash((logits_fmt, fmt)) % 2**32)
    x, t = hard_rows(logits_fmt, rng)
    fast, exact = agree(x, t, fmt)
    assert exact.slow_rows + exact.special_rows == len(t)
    assert fast.slow_rows < len(t)  # the fast path decides most of them
    for reduction in ("sum", "mean"):
        agree(x, t, fmt, reduction)


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_fast_error_bounds_hold(fmt):
    """|hi + lo - L| <= err on the rows the fast path decided, against 420-digit truths."""
    rng = np.random.default_rng(99)
    x, t = hard_rows("float64", rng)
    r = R.cross_entropy_detailed(x, t, fmt, method="fast")
    decided = 0
    for i in range(len(t)):
        L = exact_loss(x[i], t[i])
        if not (mpmath.isfinite(L) and math.isfinite(r.hi[i])):
            continue
        with mpmath.workdps(420):
            e = abs(mpmath.mpf(r.hi[i]) + mpmath.mpf(r.lo[i]) - L)
            assert e <= mpmath.mpf(r.err[i]), (i, e, r.err[i])
        assert r.values[i] == round_to(L, fmt)
        decided += 1
    assert decided > len(t) // 2


def near_midpoint_rows(fmt: str, n: int, rng: np.random.Generator):
    """float64 rows [a, b, 0], target 2, whose loss log(1 + e^a + e^b) lies within a tiny
    fraction of an ulp of a midpoint between two neighbouring values of ``fmt``: the
    midpoint is the first one above log(1 + e^a), and b is solved for in mpmath so that
    e^b fills the gap; b's rounding to float64 moves the loss by ~2**-52 of e^b only."""
    f = get_format(fmt)
    rows, dists = [], []
    with mpmath.workdps(80):
        for _ in range(n):
            a = float(rng.uniform(-1.0, 3.0))
            L0 = mpmath.log(1 + mpmath.exp(a))
            q = mpmath.ldexp(1, int(mpmath.floor(mpmath.log(L0, 2))) - f.precision + 1)
            mid = (mpmath.floor(L0 / q) + mpmath.mpf(0.5)) * q  # a midpoint of fmt's grid
            if mid <= L0:
                mid += q
            b = float(mpmath.log(mpmath.exp(mid) - 1 - mpmath.exp(a)))
            rows.append([a, b, 0.0])
            L = mpmath.log(1 + mpmath.exp(a) + mpmath.exp(b))
            dists.append(float(abs(L - mid) / q))
    return np.array(rows), np.full(n, 2), dists


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_rows_next_to_a_rounding_boundary_fall_back_and_agree(fmt):
    rng = np.random.default_rng(2024)
    x, t, dists = near_midpoint_rows(fmt, 6, rng)
    assert max(dists) < 2.0 ** -25  # within a tiny fraction of an ulp of a midpoint
    fast, exact = agree(x, t, fmt)
    assert fast.slow_rows == len(t)  # every one of them needed the exact path
    for i in range(len(t)):
        assert fast.values[i] == round_to(exact_loss(x[i], t[i], 120), fmt)
    # mixed with easy rows: only the hard ones fall back, in place
    easy = rng.standard_normal((5, 3))
    xx = np.concatenate([easy[:2], x, easy[2:]])
    tt = np.r_[[0, 1], t, [2, 0, 1]]
    mixed, _ = agree(xx, tt, fmt)
    assert mixed.slow_rows == len(t)


def test_reduction_next_to_a_boundary_falls_back():
    """A two-row batch whose exact sum is within ~2**-60 ulp of a float32 midpoint."""
    fmt = "float32"
    first = np.array([0.3, -1.25, 2.0])
    with mpmath.workdps(80):
        L1 = exact_loss(first, 0, 80)
        target_sum = mpmath.mpf(4) + 3 * mpmath.ldexp(1, -22)  # a float32 midpoint (ulp 2**-21)
        mid_L2 = target_sum - L1
        a = 1.0
        b = float(mpmath.log(mpmath.exp(mid_L2) - 1 - mpmath.exp(a)))
    x = np.array([first, [a, b, 0.0]])
    t = np.array([0, 2])
    fast, _ = agree(x, t, fmt, "sum")
    assert fast.slow_rows >= 1
    with mpmath.workdps(120):
        total = exact_loss(x[0], 0, 120) + exact_loss(x[1], 2, 120)
    assert fast.values == round_to(total, fmt)


def _rows_strategy(fmt: str):
    f = get_format(fmt)
    finite = st.floats(min_value=-f.max_finite, max_value=f.max_finite, allow_nan=False,
                       width=64 if fmt in ("float64",) else 32)
    moderate = st.floats(min_value=-60, max_value=60, allow_nan=False)
    value = st.one_of(moderate, moderate, moderate, finite, st.just(-math.inf), st.just(0.0))
    return st.integers(min_value=2, max_value=24).flatmap(
        lambda V: st.tuples(st.lists(st.lists(value, min_size=V, max_size=V), min_size=1,
                                     max_size=4),
                            st.lists(st.integers(0, V - 1), min_size=4, max_size=4)))


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_random_rows_fast_equals_exact(fmt):
    @settings(max_examples=75, deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=True)
    @given(_rows_strategy(fmt), st.sampled_from(FORMAT_NAMES))
    def check(data, target_fmt):
        rows, ts = data
        with np.errstate(over="ignore"):
            x = np.array(rows).astype(DT[fmt])
        t = np.array(ts[: len(rows)])
        agree(x, t, target_fmt)

    check()


def test_large_vocabulary_fast_path():
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((2, 32768)) * 3).astype(np.float32)
    t = np.array([5, 77])
    for fmt in ("float32", "float64"):
        fast, exact = agree(x, t, fmt)
        assert fast.slow_rows == 0


def test_dd_exp_and_expm1_accuracy():
    rng = np.random.default_rng(1)
    y = np.r_[-rng.uniform(0, 745, 3000), -rng.uniform(0, 1e-3, 300), -rng.exponential(1e-8, 100),
              0.0, -745.0]
    yl = y * rng.uniform(-2.0 ** -54, 2.0 ** -54, y.size)
    eh, el = F._dd_exp(y, yl)
    z = np.r_[rng.uniform(0, 12, 2000), rng.exponential(1e-6, 300), 0.0, 1e-300]
    mh, ml = F._dd_expm1_nonneg(z)
    worst_exp = worst_m1 = mpmath.mpf(0)
    with mpmath.workdps(60):
        for i in range(y.size):
            true = mpmath.exp(mpmath.mpf(y[i]) + mpmath.mpf(yl[i]))
            err = abs(mpmath.mpf(eh[i]) + mpmath.mpf(el[i]) - true)
            assert err <= F.EPS_EXP * true + mpmath.ldexp(1, -1073)  # the stated bound
            if true >= mpmath.ldexp(1, -960):  # below, the low part is subnormal
                worst_exp = max(worst_exp, err / true)
        for i in range(z.size):
            true = mpmath.expm1(mpmath.mpf(z[i]))
            if true == 0:
                assert mh[i] == 0 and ml[i] == 0
                continue
            worst_m1 = max(worst_m1, abs(mpmath.mpf(mh[i]) + mpmath.mpf(ml[i]) - true) / true)
    assert worst_exp <= F.EPS_EXP / 8, float(worst_exp)  # measured ~2**-88.4
    assert worst_m1 <= F.EPS_EXPM1 / 8, float(worst_m1)


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_many_random_rows_across_scales(fmt):
    """1200 rows, V in 2..40, logit scales from 1e-30 to 1e30 (clipped to the logits
    format), a fifth of the rows confident, some masked: fast == exact, bit for bit."""
    rng = np.random.default_rng(31)
    for logits_fmt in FORMAT_NAMES:
        f = get_format(logits_fmt)
        V = int(rng.integers(2, 41))
        B = 300
        scale = 10.0 ** rng.uniform(-30, 30, (B, 1))
        x = rng.standard_normal((B, V)) * scale
        t = rng.integers(0, V, B)
        conf = rng.random(B) < 0.2
        x[conf, t[conf]] = np.abs(x[conf]).max(axis=1) + rng.exponential(30, conf.sum())
        x[rng.random((B, V)) < 0.05] = -np.inf
        x = np.clip(x, -f.max_finite, f.max_finite).astype(DT[logits_fmt])
        agree(x, t, fmt)


def test_numpy_exp_log1p_within_the_assumed_4_ulps():
    """The fast path's error model assumes numpy's float64 exp and log1p are within 4 ulps
    (its SIMD kernels differ by CPU, so check on the machine that runs the tests): random
    arguments over the ranges the fast path uses, against 60-digit mpmath."""
    rng = np.random.default_rng(11)
    xs = np.concatenate([-rng.random(3000) * 745.0, -rng.random(1000) * 1e-3,
                         -rng.random(500) * 30.0])
    ss = np.concatenate([rng.random(2000) * 131072.0, rng.random(1500) * 1e-6,
                         10.0 ** rng.uniform(-300, 0, 1000)])
    worst = 0.0
    with mpmath.workdps(60):
        for fn, mfn, args in ((np.exp, mpmath.exp, xs), (np.log1p, mpmath.log1p, ss)):
            got = fn(args)
            for a, g in zip(args, got):
                exact = mfn(mpmath.mpf(float(a)))
                spacing = float(np.spacing(abs(g))) if g != 0 else 2.0 ** -1074
                worst = max(worst, float(abs(mpmath.mpf(float(g)) - exact)) / spacing)
    assert 0.0 < worst <= 4.0, worst  # > 0: the comparison ran on inexact values
