"""attribution: per-step errors on hand-made cases whose dominant step is known, and the
fused torch kernel against its composites."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

from precision_lab.explain.attribution import attribute, compare_fused, dominant_summary, exact_op
from precision_lab.numerics.formats import round_float64_array


def _step(row, name):
    return next(s for s in row.steps if s.name == name)


def test_naive_float16_overflows_at_the_exp_step() -> None:
    x = np.array([[12.0, 0.0, 1.0, 2.0]], dtype=np.float16)
    (row,) = attribute("naive", x, np.array([1]), "float16")
    assert math.isinf(row.computed)
    e = _step(row, "e")
    assert "overflow" in e.flags and math.isinf(e.contribution_ulp)
    assert row.dominant == "e" and row.decisive == "e"
    # the exact loss is finite: log(e^12 + 1 + e + e^2) - 0
    assert row.exact_float == pytest.approx(12.000068243514264, rel=1e-15)
    # steps before the overflow carry no error; the sum of an inf is exact (inf)
    assert _step(row, "s").local_ulp == 0


def test_cancellation_float32_confident_row() -> None:
    x = np.array([[20.0, 0.0, 1.0, 2.0]], dtype=np.float32)
    t = np.array([0])
    with mpmath.workdps(50):
        truth = mpmath.log(sum(mpmath.exp(v) for v in (20, 0, 1, 2))) - 20
    assert float(truth) == pytest.approx(2.2893929542622447e-08, rel=1e-15)

    (row,) = attribute("lse", x, t, "float32")
    assert row.computed == 0.0
    assert row.exact_float == pytest.approx(float(truth), rel=1e-15)
    # relative error 1: the whole loss (about 1.29e7 ULPs of it) is lost ...
    assert row.total_error_ulp == pytest.approx(-float(truth) / 2.0 ** -49, rel=1e-6)
    # ... in the sum: 1 + 2.29e-8 rounds to 1 (ulp(1)/2 = 5.96e-8); the final subtraction
    # 20 - 20 is exact and only reveals it
    assert row.dominant == "s" and row.decisive == "s"
    loss = _step(row, "loss")
    assert loss.local_ulp == 0 and loss.contribution_ulp == 0
    assert any(f.startswith("cancellation") for f in loss.flags)
    # the contributions add up to the total error
    assert sum(s.contribution_ulp for s in row.steps) == pytest.approx(row.total_error_ulp, rel=1e-9)

    (keep,) = attribute("lse_log1p", x, t, "float32")
    assert abs(keep.total_error_ulp) <= 0.5  # correctly rounded here
    assert keep.computed == pytest.approx(float(truth), rel=1e-7)

    (nll,) = attribute("torch_logsoftmax_nll", x, t, "float32")
    assert nll.computed == 0.0 and nll.dominant == "lp"


def test_cancelling_contributions_are_flagged() -> None:
    # torch_manual rounds exp(20) twice (e_t and e); their effects cancel, and the sum
    # absorbing 1 + e + e^2 into 4.85e8 is what decides the result
    x = np.array([[20.0, 0.0, 1.0, 2.0]], dtype=np.float32)
    (row,) = attribute("torch_manual", x, np.array([0]), "float32")
    assert row.computed == 0.0
    assert row.cancelling and row.decisive == "s"


def test_contributions_sum_to_total_on_random_rows() -> None:
    rng = np.random.default_rng(3)
    x = round_float64_array(rng.normal(size=(20, 6)) * 3, "bfloat16")
    t = rng.integers(0, 6, size=20)
    rows = attribute("lse", x, t, "bfloat16")
    for r in rows:
        assert sum(s.contribution_ulp for s in r.steps) == pytest.approx(r.total_error_ulp, abs=1e-9)
        for s in r.steps:
            if s.kind == "exact":
                assert s.local_ulp == 0
            if s.op in ("exp", "log", "sub", "add"):
                assert s.local_ulp <= 0.5 + 1e-12  # one correctly rounded operation
    summ = dominant_summary(rows)
    assert summ["rows"] == 20 and sum(summ["dominates"].values()) == 20


def test_exact_op_rejects_unknown_ops() -> None:
    with pytest.raises(ValueError, match="unknown op"):
        exact_op("fma", (np.zeros(1),))


def test_not_stepwise_is_refused() -> None:
    with pytest.raises(ValueError, match="not step-wise"):
        attribute("torch", np.zeros((1, 3), np.float32), np.array([0]), "float32")


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
def test_fused_torch_matches_the_cpu_lastdim_model(fmt: str) -> None:
    rng = np.random.default_rng(0)
    x = round_float64_array(rng.normal(size=(300, 10)) * 4, fmt)
    t = rng.integers(0, 10, size=300)
    res = compare_fused(x, t, fmt)
    rates = {c["name"]: c["rate"] for c in res["composites"]}
    assert rates["torch_logsoftmax_nll"] == 1.0
    assert rates["cpu_lastdim_model"] == 1.0
    # rounding log_softmax only once (sum and logsum kept in float32) is NOT what torch does
    assert rates["logsumexp_f32_round_once"] < 0.95
