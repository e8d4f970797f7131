"""conditioning: the condition number against a high-precision finite difference, and the
error bounds against measured errors of the registry's algorithms."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from precision_lab.numerics.conditioning import (
    bhh_lse_bound,
    bhh_loss_bound,
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
              derived_loss_bound(x, t, "lse"), derived_loss_bound(x, t, "lse_log1p"),
              derived_loss_bound(x, t, "naive"), condition_number(x, t)):
        assert b.shape == (7,) and np.all(b > 0)
    # ULP conversion: a bound of r u at e is between r/2 and r ULPs
    r = np.full(7, 4.0)
    ex = np.abs(x[:, 0]) + 0.1
    ulps = to_ulps(r, ex, "float16")
    assert np.all((ulps >= 2.0) & (ulps < 4.0))
    with pytest.raises(ValueError, match="allowed: lse, lse_log1p, naive"):
        derived_loss_bound(x, t, "torch")


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
def test_shifted_algorithm_stays_under_its_bounds(fmt: str) -> None:
    from precision_lab.implementations import REGISTRY

    cross_entropy_detailed = pytest.importorskip("precision_lab.numerics.reference").cross_entropy_detailed

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
