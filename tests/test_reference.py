"""reference.cross_entropy (exact path) against independent oracles.

The oracle here is deliberately the naive formula log(sum_j exp(x_j)) - x_t evaluated in
mpmath at 400+ significant digits (enough to resolve losses down to 1e-320 next to logits of
size 1e3), rounded once with formats.round_to; the reference computes (m - x_t) +
log1p(S') with its own error bounds, so the two share no code beyond round_to.
"""

from __future__ import annotations

import ml_dtypes
import mpmath
import numpy as np
import pytest
from oracles import exact_loss

from precision_lab.numerics import reference as R
from precision_lab.numerics.formats import FORMAT_NAMES, get_format, round_to

DT = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32,
      "float64": np.float64}




def oracle(row, t, fmt, dps: int = 420):
    return round_to(exact_loss(row, t, dps), fmt)


def same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_seed_example():
    out = R.cross_entropy(np.array([[0, 0, 0, 1]], np.float32), np.array([3]), "float32")
    assert out.dtype == np.float32 and out.shape == (1,)
    # exact: log(3 + e) - 1 = 0.74366838062867915...; float32 neighbours 0.743668377399...
    # (3.2e-9 away) and 0.743668437004... (5.6e-8 away, what torch's float32 CE returns)
    assert out[0] == np.float32(0.743668377399444580078125)
    assert out[0] != np.float32(0.74366844)
    assert same_bits(out, np.array([oracle([0, 0, 0, 1], 3, "float32")]))


@pytest.mark.parametrize("method", ["exact", "auto"])
def test_confident_prediction_far_below_the_ulp(method):
    x = np.array([[700.0, 0.0, 0.0]])
    got = R.cross_entropy_detailed(x, np.array([0]), "float64", method=method)
    with mpmath.workdps(60):
        hand = mpmath.log1p(2 * mpmath.exp(-700))  # derived: log(1 + 2 e^-700)
    assert got.values[0] == round_to(hand, "float64")
    assert abs(got.values[0] - 1.9719353e-304) < 1e-310
    with mpmath.workdps(50):  # the trap: a fixed 50-digit naive evaluation returns 0
        naive = mpmath.log(mpmath.exp(700) + 2) - 700
    assert naive == 0


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_cancellation_regime_margins(fmt):
    margins = [1, 2, 3, 5, 8, 13, 17, 30, 45, 60, 90, 120, 200, 350, 500, 700, 708, 745, 800]
    dt = DT[fmt]
    rows = np.array([[m, 0.0, -1.5, 0.25] for m in margins]).astype(dt)
    t = np.zeros(len(margins), int)
    got = R.cross_entropy(rows, t, fmt)
    want = np.array([oracle(r, 0, fmt) for r in rows], dtype=got.dtype)
    assert same_bits(got, want)


def test_overflow_float16_to_inf():
    x = np.array([[65504, -65504]], np.float16)
    assert np.isposinf(R.cross_entropy(x, np.array([1]), "float16")[0])
    # the same logits, float32 result: 131008 exactly representable? no: log-sum adds ~0
    got = R.cross_entropy(x, np.array([1]), "float32")
    assert got[0] == oracle(x[0], 1, "float32") == np.float32(131008)


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_logits_near_the_largest_finite_value(fmt):
    f = get_format(fmt)
    big = f.max_finite
    x = np.array([[big, -big, -big], [big, -big, -big], [big, big, -big],
                  [big, big * 0.5, -big]]).astype(DT[fmt])
    t = np.array([0, 1, 0, 1])
    got = R.cross_entropy(x, t, fmt)
    assert got[0] == 0 and not np.signbit(got[0])  # log1p(e^-2max) underflows to +0
    assert np.isposinf(got[1])  # 2 * max > max
    assert got[2] == oracle(x[2], 0, fmt)  # log 2
    assert got[3] == oracle(x[3], 1, fmt)  # max/2 (no overflow inside mpmath)
    # a wider result format holds 2*max: float16 and float32 logits into float64
    if fmt != "float64":
        wide = R.cross_entropy(x, t, "float64")
        assert wide[1] == oracle(x[1], 1, "float64")


def test_trivial_and_special_rows():
    inf, nan = np.inf, np.nan
    x = np.array([[3.0, -inf, -inf],    # only the target finite -> exactly 0
                  [-inf, 1.0, 2.0],     # target masked -> +inf
                  [-inf, -inf, -inf],   # everything masked -> NaN
                  [nan, 1.0, 2.0],      # NaN in the row -> NaN
                  [inf, 1.0, 2.0],      # target the only +inf -> 0 (limit)
                  [inf, inf, 2.0],      # target +inf and another -> NaN
                  [1.0, inf, 2.0]])     # +inf elsewhere -> +inf
    t = np.zeros(7, int)
    r = R.cross_entropy_detailed(x.astype(np.float32), t, "float32")
    v = r.values
    assert v[0] == 0 and v[4] == 0
    assert np.isposinf(v[1]) and np.isposinf(v[6])
    assert np.isnan(v[2]) and np.isnan(v[3]) and np.isnan(v[5])
    assert r.special_rows == 7 and r.slow_rows == 0
    one = R.cross_entropy(np.array([[5.5], [-1e4]], np.float16), np.array([0, 0]), "float16")
    assert same_bits(one, np.zeros(2, np.float16))


def test_targets_out_of_range_name_the_row():
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="row 1"):
        R.cross_entropy(x, np.array([0, 4, 1]), "float32")
    with pytest.raises(ValueError, match="row 2"):
        R.cross_entropy(x, np.array([0, 1, -1]), "float32")
    with pytest.raises(ValueError):
        R.cross_entropy(x.astype(np.int32), np.array([0, 1, 1]), "float32")


def test_ties_and_masked_classes():
    x = np.array([[5, 5, 5, 0, -np.inf], [5, 5, 5, 0, -np.inf], [-2, -np.inf, -2, -2, -30]],
                 np.float64)
    t = np.array([0, 3, 2])
    for fmt in FORMAT_NAMES:
        got = R.cross_entropy(x, t, fmt)
        want = np.array([oracle(x[i], t[i], fmt) for i in range(3)], dtype=got.dtype)
        assert same_bits(got, want), fmt


@pytest.mark.parametrize("fmt,margin", [("float16", 12.0), ("bfloat16", 88.0),
                                        ("float32", 100.0), ("float64", 713.0)])
def test_subnormal_results(fmt, margin):
    f = get_format(fmt)
    x = np.array([[margin, 0.0], [margin + 0.75, 0.5]]).astype(DT[fmt])
    got = R.cross_entropy(x, np.zeros(2, int), fmt)
    for g, row in zip(got, x):
        assert 0 < g < f.smallest_normal
        assert g == oracle(row, 0, fmt)


def test_large_vocabulary_100k():
    rng = np.random.default_rng(7)
    V = 100_003
    x = (rng.standard_normal((1, V)) * 4).astype(np.float32)
    x[0, 17] = 31.0  # a confident row: loss ~ V e^-31..., no cancellation trouble
    for t in (17, 5):
        got = R.cross_entropy_detailed(x, np.array([t]), "float32", method="exact")
        want = oracle(x[0], t, "float32", dps=60)
        assert got.values[0] == want
        assert got.values[0] == oracle(x[0], t, "float32", dps=80)  # oracle is stable


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_hi_lo_carry_100_bits(fmt):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 9)) * 3).astype(DT[fmt])
    x[1, 2] = 40
    t = np.array([0, 2, 5, 8])
    r = R.cross_entropy_detailed(x, t, fmt, method="exact")
    for i in range(4):
        L = exact_loss(x[i], t[i])
        with mpmath.workdps(120):
            e = abs(mpmath.mpf(r.hi[i]) + mpmath.mpf(r.lo[i]) - L)
            assert e <= L * mpmath.mpf(2) ** -100
            assert e <= mpmath.mpf(r.err[i])


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_reductions(fmt):
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((6, 7)) * 2).astype(DT[fmt])
    x[2, 1] = 60  # a tiny loss among large ones
    t = np.array([0, 3, 1, 6, 2, 2])
    with mpmath.workdps(420):
        total = mpmath.fsum(exact_loss(x[i], t[i]) for i in range(6))
        mean = total / 6
    for method in ("exact", "auto"):
        s = R.cross_entropy_detailed(x, t, fmt, "sum", method=method)
        m = R.cross_entropy_detailed(x, t, fmt, "mean", method=method)
        assert s.values.shape == () and s.values.dtype == get_format(fmt).np_dtype
        assert s.values == round_to(total, fmt)
        assert m.values == round_to(mean, fmt)
    bad = x.copy()
    bad[4, t[4]] = -np.inf
    assert np.isposinf(R.cross_entropy(bad, t, fmt, "mean"))
    bad[3, 0] = np.nan
    assert np.isnan(R.cross_entropy(bad, t, fmt, "sum"))


def test_reference_error_names_the_row(monkeypatch):
    monkeypatch.setattr(R, "START_PRECISION", 8)
    monkeypatch.setattr(R, "MAX_PRECISION", 16)
    x = np.array([[0.0, 0.0], [0.0, 1.0, ]])
    with pytest.raises(R.ReferenceError, match="row 0"):
        R.cross_entropy_detailed(x, np.array([0, 0]), "float64", method="exact")


@pytest.mark.parametrize("logits_fmt", FORMAT_NAMES)
def test_any_logits_format_into_any_target(logits_fmt):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((3, 6)) * 5).astype(DT[logits_fmt])
    t = np.array([0, 5, 2])
    for fmt in FORMAT_NAMES:
        got = R.cross_entropy(x, t, fmt)
        want = np.array([oracle(x[i], t[i], fmt) for i in range(3)], dtype=got.dtype)
        assert same_bits(got, want), (logits_fmt, fmt)


def test_loss_just_above_an_exact_midpoint():
    """L = d + log1p(e^-d) with d = m - x_t exactly a midpoint of the format: L is above it
    by ~e^-2049, far below any fixed working precision, and must round up (ties-to-even
    on d would round down).  Hand-derived: 2049 -> 2050 (float16 spacing 2 there),
    2051 -> 2052, 2**30 + 64 -> 2**30 + 128 (float32 spacing 128)."""
    x = np.array([[0.0, 2049.0], [0.0, 2051.0], [0.0, 2.0**30 + 64], [2049.0, -1e6]])
    t = np.array([0, 0, 0, 1])
    for method in ("exact", "auto"):
        h = R.cross_entropy_detailed(x, t, "float16", method=method).values
        assert h[0] == 2050 and h[1] == 2052 and np.isposinf(h[2]) and np.isposinf(h[3])
        s = R.cross_entropy_detailed(x, t, "float32", method=method).values
        assert s[2] == np.float32(2.0**30 + 128)
        # 2049 + 1e6 = 1002049 is a float32 (20 bits), no tie: exact value stays
        assert s[3] == np.float32(1002049.0)


def test_out_of_range_unsigned_targets_report_the_true_value():
    x = np.zeros((2, 4), np.float32)
    big = np.array([1, 2**64 - 1], dtype=np.uint64)
    with pytest.raises(ValueError, match="row 1: target 18446744073709551615 is out of range"):
        R.cross_entropy(x, big, "float32")
    ok = R.cross_entropy(x, np.array([3, 0], dtype=np.uint64), "float32")
    assert float(ok[0]) == float(round_to(exact_loss([0.0] * 4, 3), "float32"))  # log 4


def test_torch_tensors_and_big_endian_logits_are_accepted():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    x = rng.normal(size=(5, 7)) * 4
    t = rng.integers(0, 7, 5)
    for fmt in FORMAT_NAMES:
        f = get_format(fmt)
        xn = np.array([[float(round_to(v, f)) for v in row] for row in x]).astype(f.np_dtype)
        want = R.cross_entropy(xn, t, fmt)
        xt = torch.from_numpy(xn.astype(np.float64)).to(f.torch_dtype)
        for logits, targets in ((xt, torch.from_numpy(t)), (xt.requires_grad_(False), t)):
            assert same_bits(R.cross_entropy(logits, targets, fmt), want)
        if fmt != "bfloat16":
            be = xn.astype(xn.dtype.newbyteorder(">"))
            assert same_bits(R.cross_entropy(be, t, fmt), want)
    # the values are the exact losses of the tensors' values (oracle at 420 digits)
    xb = torch.tensor([[1.0, -2.5, 0.125]], dtype=torch.bfloat16)
    got = R.cross_entropy(xb, torch.tensor([1]), "float64")
    assert float(got[0]) == float(round_to(exact_loss([1.0, -2.5, 0.125], 1), "float64"))
