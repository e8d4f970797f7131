"""conditioning: the condition number against a high-precision finite difference, and the
error bounds against measured errors of the registry's algorithms."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from precision_lab.numerics.conditioning import (
    bhh_loss_bound,
    bhh_lse_bound,
    condition_number,
    condition_number_lse,
    derived_loss_bound,
    measured_in_u,
    to_rigorous,
    to_ulps,
)
from precision_lab.numerics.formats import get_format, round_float64_array


def _fd_kappa(x: list[float], t: int | None, eps: str = "1e-30") -> float:
    """max over componentwise relative perturbations |delta_i| <= eps of |f(x~) - f(x)| /
    (eps |f(x)|), at 100 digits; the worst delta_i = eps * sign(x_i * df/dx_i) (f is smooth,
    so the first-order maximiser is within O(eps) of the true one)."""
    with mpmath.workdps(100):
        xs = [mpmath.mpf(v) for v in x]
        e = mpmath.mpf(eps)

        def f(v):
            y = mpmath.log(mpmath.fsum(mpmath.exp(a) for a in v))
            return y - v[t] if t is not None else y

        f0 = f(xs)
        # the sign of each partial derivative, by a one-sided difference
        signs = []
        for i in range(len(xs)):
            v = list(xs)
            v[i] = xs[i] * (1 + e)
            signs.append(mpmath.sign(f(v) - f0) or 1)
        v = [xs[i] * (1 + e * signs[i]) for i in range(len(xs))]
        return float(abs(f(v) - f0) / (e * abs(f0)))


@pytest.mark.parametrize(
    "x,t",
    [
        ([20.0, 0.0, 1.0, 2.0], 0),        # confident, tiny loss: kappa ~ |x_t|
        ([0.0, 0.0, 0.0, 1.0], 3),         # the seed example
        ([0.3, -1.7, 2.5, 0.25, -0.5], 1),  # target not the max
        ([-3.0, -3.5, -2.0], 2),           # negative logits
        ([100.0, 99.0, -50.0, 0.0], 1),
    ],
)
def test_condition_number_matches_finite_difference(x, t) -> None:
    k = condition_number(np.array([x]), np.array([t]))[0]
    fd = _fd_kappa(x, t)
    assert k == pytest.approx(fd, rel=1e-9)


def test_condition_number_lse_matches_finite_difference() -> None:
    x = [0.3, -1.7, 2.5, 0.25, -0.5]
    assert condition_number_lse(np.array([x]))[0] == pytest.approx(_fd_kappa(x, None), rel=1e-9)


def test_confident_prediction_is_well_conditioned() -> None:
    # the loss is tiny (2.29e-8) but its condition number is only about |x_t| + 1.6
    k = condition_number(np.array([[20.0, 0.0, 1.0, 2.0]]), np.array([0]))[0]
    assert 21 < k < 22.5


def test_bounds_are_vectorized_and_shaped() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 12))
    t = rng.integers(0, 12, size=7)
    for b in (bhh_lse_bound(x), bhh_lse_bound(x, shifted=False), bhh_loss_bound(x, t),
              derived_loss_bound(x, t, "lse", "float64"),
              derived_loss_bound(x, t, "lse_log1p", "float64"),
              derived_loss_bound(x, t, "naive", "float64"), condition_number(x, t)):
        assert b.shape == (7,) and np.all(b > 0)
    # ULP conversion: a bound of r u at e is between r/2 and r ULPs
    r = np.full(7, 4.0)
    ex = np.abs(x[:, 0]) + 0.1
    ulps = to_ulps(r, ex, "float16")
    assert np.all((ulps >= 2.0) & (ulps < 4.0))
    with pytest.raises(ValueError, match="allowed: lse, lse_log1p, naive"):
        derived_loss_bound(x, t, "torch", "float64")
    with pytest.raises(ValueError, match="needs fmt"):
        derived_loss_bound(x, t, "lse")


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
def test_shifted_algorithm_stays_under_its_bounds(fmt: str) -> None:
    from precision_lab.implementations import REGISTRY
    from precision_lab.numerics.reference import cross_entropy_detailed

    f = get_format(fmt)
    rng = np.random.default_rng(1)
    B, V = 400, 10
    x64 = rng.normal(size=(B, V)) * rng.choice([0.5, 2.0, 5.0], size=(B, 1))
    x = round_float64_array(x64, f)
    t = rng.integers(0, V, size=B)
    ref = cross_entropy_detailed(x, t, fmt)
    computed = REGISTRY["lse"](x, t, fmt)
    meas = measured_in_u(computed, ref.hi, fmt, ref.lo)
    ok = np.isfinite(meas)
    assert ok.all()
    bhh = to_rigorous(bhh_loss_bound(x, t, shifted=True, loss=ref.hi), fmt)
    ours = to_rigorous(derived_loss_bound(x, t, "lse", fmt, loss=ref.hi), fmt)
    assert np.all(meas <= bhh), np.max(meas / bhh)
    assert np.all(meas <= ours), np.max(meas / ours)
    # the derived bound is the tighter one here (where both are finite)
    both = np.isfinite(ours) & np.isfinite(bhh)
    assert both.sum() > B // 2 and np.median(ours[both] / bhh[both]) < 1
    # lse_log1p and naive stay under their own derived bounds (naive's is void -- inf --
    # where an exp overflows or p = exp(-loss) is subnormal)
    for alg in ("lse_log1p", "naive"):
        m2 = measured_in_u(REGISTRY[alg](x, t, fmt), ref.hi, fmt, ref.lo)
        b2 = to_rigorous(derived_loss_bound(x, t, alg, fmt, loss=ref.hi), fmt)
        fin = np.isfinite(m2)
        assert np.all(m2[fin] <= b2[fin]), (alg, np.max(m2[fin] / b2[fin]))


def test_bhh_shifted_formula_misses_the_final_rounding_for_large_close_logits() -> None:
    """With all logits near 700 (min x > n), |y + n - min x| < |y|: BHH's formula is below the
    rounding of lse itself and the measured error exceeds it; the derived bound holds."""
    from precision_lab.implementations import REGISTRY
    from precision_lab.numerics.reference import cross_entropy_detailed

    rng = np.random.default_rng(4)
    x = 700.0 + rng.normal(size=(200, 10))
    t = rng.integers(0, 10, size=200)
    ref = cross_entropy_detailed(x, t, "float64")
    meas = measured_in_u(REGISTRY["lse"](x, t, "float64"), ref.hi, "float64", ref.lo)
    bhh = bhh_loss_bound(x, t, shifted=True, loss=ref.hi)
    ours = to_rigorous(derived_loss_bound(x, t, "lse", "float64", loss=ref.hi), "float64")
    assert (meas > bhh).mean() > 0.2
    assert np.all(meas <= ours)


# -- the condition number against its definition at 300 digits ---------------------------


def _kappa_mp(x, t: int) -> mpmath.mpf:
    """sum_i |x_i| |p_i - [i = t]| / loss from the definition, at 300 digits; -inf logits
    have p_i = 0 and are left out.  p_i = e^{x_i - m} / Z (m the max, Z = sum e^{x_j - m}),
    loss = -log p_t = (m - x_t) + log Z, 1 - p_t = sum_{i != t} p_i (no cancellation)."""
    with mpmath.workdps(300):
        v = [mpmath.mpf(float(a)) if a != -np.inf else None for a in x]
        m = max(a for a in v if a is not None)
        w = [mpmath.exp(a - m) if a is not None else mpmath.mpf(0) for a in v]
        Z = mpmath.fsum(w)
        p = [wi / Z for wi in w]
        loss = (m - v[t]) + mpmath.log(Z) if Z < 2 else -mpmath.log(p[t])
        if Z < 2:  # log Z = log1p(Z - 1), Z - 1 formed without rounding away the tail
            k = v.index(m)
            loss = (m - v[t]) + mpmath.log1p(mpmath.fsum(w[j] for j in range(len(w)) if j != k))
        one_minus_pt = mpmath.fsum(p[i] for i in range(len(p)) if i != t)
        num = abs(v[t]) * one_minus_pt + mpmath.fsum(
            abs(v[i]) * p[i] for i in range(len(p)) if i != t and v[i] is not None)
        return num / loss


KAPPA_CASES = [
    ([800.0, 0.0, 1.0], 0),                # loss ~1e-348 underflows float64 (arb: 800.7311)
    ([745.0, 0.0, 1.0], 0),                # arb: 745.731
    ([20.0, 0.0, 1.0, 2.0], 0),            # the docstring's example (arb: 21.575)
    ([1e5, 0.0, -3.0], 0),                 # loss e**-1e5
    ([0.0, -1e5, 3.0], 0),                 # target below the max by 3, one term e**-1e5
    ([1e300, -1e300], 0), ([1e300, -1e300], 1), ([1.7e308, -1.7e308, 0.0], 1),
    ([5e-324, 0.0], 0), ([0.0, 5e-324], 0), ([-1e-320, 0.0, -760.0], 1),
    ([0.0, 0.0, -800.0], 0),               # |x_t| = 0: only the tiny term carries weight
    ([3.0, -np.inf, 1.0], 2), ([0.0, -np.inf, -np.inf, 2.0], 0), ([-np.inf, 7.0, 6.5], 1),
    ([0.3, -1.7, 2.5, 0.25, -0.5], 1), ([-3.0, -3.5, -2.0], 2), ([100.0, 99.0, -50.0, 0.0], 1),
]


@pytest.mark.parametrize("x,t", KAPPA_CASES)
def test_condition_number_against_the_definition(x, t) -> None:
    got = condition_number(np.array([x]), np.array([t]))[0]
    want = _kappa_mp(x, t)
    assert got == pytest.approx(float(want), rel=1e-10), (x, t, got, want)


def test_condition_number_random_rows_of_every_scale() -> None:
    """Rows mixing scales from 1e-300 to 1e300, margins to 1e4, masked classes."""
    rng = np.random.default_rng(23)
    for _ in range(200):
        V = int(rng.integers(2, 9))
        x = rng.normal(size=V) * 10.0 ** rng.uniform(-300, 300, size=V) * (rng.random(V) < 0.7)
        x += rng.normal(size=V) * rng.choice([1, 30, 1e4])
        x[rng.random(V) < 0.15] = -np.inf
        t = int(rng.integers(V))
        x[t] = x[t] if np.isfinite(x[t]) else rng.normal() * 50
        if np.isfinite(x).sum() < 2:
            x[(t + 1) % V] = 0.0
        got = condition_number(x[None, :], np.array([t]))[0]
        want = float(_kappa_mp(x.tolist(), t))
        assert got == pytest.approx(want, rel=1e-10), (x.tolist(), t, got, want)


def test_condition_number_reviewed_values() -> None:
    k = condition_number(np.array([[800.0, 0, 1], [745.0, 0, 1]]), np.array([0, 0]))
    assert k[0] == pytest.approx(800.7311, abs=5e-5) and k[1] == pytest.approx(745.731, abs=5e-4)
    k20 = condition_number(np.array([[20.0, 0.0, 1.0, 2.0]]), np.array([0]))[0]
    assert k20 == pytest.approx(21.575, abs=5e-4)  # not 21.7, as the docstring once said


def _kappa_mp_counted(x: np.ndarray, t: int) -> mpmath.mpf:
    """The definition for a long row with few distinct values: equal logits have equal p_i,
    so the sums run over the distinct values times their counts (300 digits)."""
    fin = x[np.isfinite(x)]
    vals, counts = np.unique(fin, return_counts=True)
    with mpmath.workdps(300):
        v = [mpmath.mpf(float(a)) for a in vals]
        m = v[-1]
        w = [mpmath.exp(a - m) for a in v]
        Z = mpmath.fsum(wi * int(c) for wi, c in zip(w, counts))
        xt = mpmath.mpf(float(x[t]))
        pt = mpmath.exp(xt - m) / Z
        others = mpmath.fsum(abs(a) * wi / Z * int(c) for a, wi, c in zip(v, w, counts)) \
            - abs(xt) * pt  # exact at 300 digits: |x_t| p_t is one of the summands
        one_minus_pt = mpmath.fsum(wi * int(c) for wi, c in zip(w, counts)) / Z - pt
        rest = mpmath.fsum(wi * int(c) for wi, c in zip(w, counts)) - 1  # sum over j != k
        loss = (m - xt) + mpmath.log1p(rest)
        return (abs(xt) * one_minus_pt + others) / loss


def test_condition_number_large_vocabulary() -> None:
    """V = 1e5 (logits on a grid of 1/8 so that the oracle can count equal values), with
    masked classes, one row confident (loss ~1e-17), one not."""
    rng = np.random.default_rng(5)
    x = np.round(rng.normal(size=(2, 100_000)) * 3 * 8) / 8
    x[0, rng.random(100_000) < 0.1] = -np.inf
    t = np.array([3, 7])
    x[0, 3] = 0.5
    x[1, 7] = 60.0
    got = condition_number(x, t)
    for i in range(2):
        assert got[i] == pytest.approx(float(_kappa_mp_counted(x[i], int(t[i]))), rel=1e-10)
    # the counted oracle agrees with the plain one on a short row
    y = np.array([1.5, 1.5, -2.0, 0.25, -np.inf, 0.25])
    assert float(_kappa_mp_counted(y, 2)) == pytest.approx(float(_kappa_mp(y.tolist(), 2)),
                                                           rel=1e-30)


def test_condition_number_masked_and_special_rows_are_defined() -> None:
    x = np.array([[5.0, -np.inf, -np.inf],   # the target the only finite logit: loss 0
                  [-np.inf, 1.0, 2.0],       # masked target: loss +inf
                  [np.nan, 1.0, 2.0],        # NaN logit
                  [1.0, np.inf, 0.0]])       # +inf logit
    k = condition_number(x, np.array([0, 0, 1, 0]))
    assert k[0] == 0.0 and np.isnan(k[1:]).all()


def test_log_loss_far_below_float64() -> None:
    from precision_lab.numerics.conditioning import log_loss

    rows = [([800.0, 0.0, 1.0], 0), ([1e5, 0.0], 0), ([0.0, -740.0], 0), ([3.0, 1.0], 1)]
    for x, t in rows:
        with mpmath.workdps(300):
            want = float(mpmath.log(_truth(x, t)))
        got = log_loss(np.array([x]), np.array([t]))[0]
        assert got == pytest.approx(want, rel=1e-13, abs=1e-13)


# -- derived bounds: rigorous under the library model -------------------------------------


def _truth(row, t: int) -> mpmath.mpf:
    """The exact loss at 200 bits: (m - x_t) + log1p(sum_{j != k} e^{x_j - m})."""
    v = [float(a) for a in row]
    fin = [a for a in v if a != -np.inf]
    m = max(fin)
    k = v.index(m)
    with mpmath.workprec(200):
        S = mpmath.fsum(mpmath.exp(mpmath.mpf(a) - m) for i, a in enumerate(v)
                        if i != k and a != -np.inf)
        return (mpmath.mpf(m) - mpmath.mpf(v[t])) + mpmath.log1p(S)


def _measured_u(c: float, L, u: float) -> float:
    if not np.isfinite(c):
        return np.inf
    with mpmath.workprec(200):
        return float(abs(mpmath.mpf(c) - L) / L / u)


@pytest.mark.parametrize("alg,fmt,row,t", [
    ("lse_log1p", "float32", [1.9103710651397705, 0.8855119347572327], 0),   # 5.61 u measured
    ("naive", "float32", [8.687385559082031, 13.191906929016113], 0),        # 2.03 u
    ("lse_log1p", "float64", [0.0, -740.0], 0),     # correctly rounded subnormal, 4.2e-322
    ("naive", "float16", [-9.5] + [-17.0] * 32, 0),  # subnormal non-target terms: 896 u
])
def test_reviewed_rows_stay_under_their_bounds(alg, fmt, row, t) -> None:
    from precision_lab.implementations import REGISTRY

    f = get_format(fmt)
    x = np.array([row], dtype=f.np_dtype)
    c = float(REGISTRY[alg](x, np.array([t]), fmt)[0])
    meas = _measured_u(c, _truth(row, t), f.unit_roundoff)
    b = derived_loss_bound(x, np.array([t]), alg, fmt)[0]
    assert np.isfinite(b) and meas <= b, (meas, b)
    assert meas > 1.0  # the rows are not trivially within the bound


def _sweep_rows(fmt: str, rng, B: int) -> list[tuple[np.ndarray, int]]:
    """Rows of the format: ordinary, confident, gaps near the subnormal threshold (exp of
    the shifted logits subnormal), target logit near log(tau) (naive's e_t), masked classes,
    logits near the overflow threshold."""
    import math

    f = get_format(fmt)
    lt = -math.log(f.smallest_normal)
    out = []
    for i in range(B):
        kind = i % 6
        V = int(rng.choice([2, 3, 5, 16, 33]))
        if kind == 0:
            x = rng.normal(size=V) * rng.choice([0.5, 2, 5, 20])
        elif kind == 1:
            x = rng.normal(size=V) * 2
        elif kind == 2:
            x = -(lt + rng.uniform(-8, 12, size=V))
            x[rng.integers(V)] = 0.0
            x += rng.normal() * 3
        elif kind == 3:
            x = -(lt + rng.uniform(-3, 10, size=V))
        elif kind == 4:
            x = rng.normal(size=V) * 4
            x[rng.random(V) < 0.3] = -np.inf
        else:
            x = rng.normal(size=V) * 3 + rng.choice([1, -1]) * rng.uniform(0.5, 1.2) \
                * math.log(f.max_finite)
        t = int(rng.integers(V))
        if kind == 1:
            x[t] += rng.uniform(3, 40 if fmt != "float64" else 700)
        if np.isneginf(x[t]):
            x[t] = 0.0
        if np.isfinite(x).sum() < 2:
            x[(t + 1) % V] = 0.0
        out.append((round_float64_array(x, f).astype(np.float64), t))
    return out


@pytest.mark.parametrize("fmt", ["float16", "bfloat16", "float32", "float64"])
def test_derived_bounds_hold_on_a_randomized_sweep(fmt: str) -> None:
    from precision_lab.implementations import REGISTRY

    f = get_format(fmt)
    rows = _sweep_rows(fmt, np.random.default_rng(17), 1800)
    truths = [_truth(x, t) for x, t in rows]
    by_v: dict[int, list[int]] = {}
    for i, (x, _) in enumerate(rows):
        by_v.setdefault(len(x), []).append(i)
    checked = {alg: 0 for alg in ("lse", "lse_log1p", "naive")}
    for idx in by_v.values():
        X = np.array([rows[i][0] for i in idx]).astype(f.np_dtype)
        T = np.array([rows[i][1] for i in idx])
        for alg in checked:
            c = REGISTRY[alg](X, T, fmt).astype(np.float64)
            b = derived_loss_bound(X, T, alg, fmt)
            for j, i in enumerate(idx):
                if np.isnan(b[j]) or truths[i] == 0:
                    # no bound only for naive, a zero loss, or logits near the overflow range
                    row = rows[i][0]
                    big = np.abs(row[np.isfinite(row)]).max() > 0.4 * np.log(f.max_finite)
                    assert alg == "naive" or truths[i] == 0 or big, (alg, row)
                    continue
                meas = _measured_u(float(c[j]), truths[i], f.unit_roundoff)
                assert meas <= b[j], (alg, fmt, rows[i], float(c[j]), meas, b[j])
                checked[alg] += 1
    assert min(checked.values()) > 1000, checked


def test_bounds_do_not_apply_outside_the_model() -> None:
    """NaN ("does not apply"): logits not of the format, overflow, a zero or infinite loss."""
    x16 = np.array([[0.1, 0.0]])  # 0.1 is not a float16
    assert np.isnan(derived_loss_bound(x16, np.array([0]), "lse", "float16")).all()
    big = np.array([[12.0, 0.0]], dtype=np.float16)  # exp(12) overflows float16 in naive
    assert np.isnan(derived_loss_bound(big, np.array([0]), "naive", "float16")).all()
    assert np.isfinite(derived_loss_bound(big, np.array([0]), "lse", "float16")).all()
    special = np.array([[1.0, -np.inf], [-np.inf, 1.0], [np.nan, 1.0]])
    for alg in ("lse", "lse_log1p", "naive"):
        assert np.isnan(derived_loss_bound(special, np.array([0, 0, 1]), alg, "float64")).all()
