"""The reference's hi/lo carry the binade of the exact loss, so ulp_error measures in the ulp
of the right binade next to a power of two; and the Ziv loops try MAX_PRECISION itself.

Oracles: rows built so that the exact loss is 2**k (1 +- 2**-60) (greedy float64 expansion,
tests/oracles.py), checked at 400+ digits with mpmath from the definition; the ULP errors are
|c - L| / ulp(L) at 420 digits with ulp(L) from L's binade (oracles.ulp_in_binade); python-
flint's arb balls, where installed, for the case the review found.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from oracles import exact_loss, logits_for_loss, ulp_in_binade

from precision_lab.numerics import reference
from precision_lab.numerics.formats import FORMAT_NAMES, get_format
from precision_lab.numerics.metrics import ulp_error
from precision_lab.numerics.reference import ReferenceError, cross_entropy_detailed

KS = {"float16": (-13, -3, 0, 1, 4, 15), "bfloat16": (-120, -3, 0, 1, 7, 40),
      "float32": (-120, -3, 0, 1, 7, 40), "float64": (-1000, -3, 0, 1, 10, 40)}


def _near_pow2_row(k: int, side: int, rel_bits: int = 60) -> tuple[np.ndarray, mpmath.mpf]:
    with mpmath.workdps(420):
        T = mpmath.ldexp(1, k) * (1 + side * mpmath.ldexp(1, -rel_bits))
    x = logits_for_loss(T, tol_bits=rel_bits + 40)
    L = exact_loss(x, 0)
    with mpmath.workdps(420):
        rel = (L - mpmath.ldexp(1, k)) / mpmath.ldexp(1, k)
        assert mpmath.sign(rel) == side and abs(rel) < mpmath.ldexp(1, -rel_bits + 1)
    return x, L


def _expected_ulp_errors(cands: np.ndarray, L, fmt: str) -> np.ndarray:
    f = get_format(fmt)
    q = ulp_in_binade(L, f.precision, f.emin)
    with mpmath.workdps(420):
        return np.array([float(abs(mpmath.mpf(float(c)) - L) / q) for c in cands])


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@pytest.mark.parametrize("side", [-1, 1])
@pytest.mark.parametrize("method", ["auto", "exact"])
def test_ulp_error_uses_the_binade_of_the_exact_loss(fmt: str, side: int, method: str) -> None:
    f = get_format(fmt)
    t = f.np_dtype.type
    for k in KS[fmt]:
        x, L = _near_pow2_row(k, side)
        ref = cross_entropy_detailed(x[None, :], np.array([0]), fmt, method=method)
        p2 = t(2.0 ** k)
        assert ref.values[0] == p2  # L is within 2**-59 of 2**k: it rounds to 2**k
        cands = np.array([np.nextafter(p2, t(0)), p2, np.nextafter(p2, t(np.inf))], f.np_dtype)
        got = ulp_error(cands, np.repeat(ref.hi, 3), fmt, np.repeat(ref.lo, 3))
        want = _expected_ulp_errors(cands, L, fmt)
        # below 2**k the step down is one ulp of the lower binade: 1 ULP, not 0.5
        assert got == pytest.approx(want, abs=1e-6), (fmt, k, side, got, want)
        # and hi + lo, the reference's unrounded loss, is on L's side of 2**k
        with mpmath.workdps(420):
            dd = mpmath.mpf(float(ref.hi[0])) + mpmath.mpf(float(ref.lo[0]))
            assert mpmath.sign(dd - mpmath.ldexp(1, k)) == side or abs(dd - L) == 0


def test_the_reviewed_float32_row_is_one_ulp_off() -> None:
    """float32 logits [0, 0.54132485, -20.516264, -34.179874], target 0: L is 1 minus less
    than half a float64 ulp; the lse implementation's 0.99999994 is 1.000 ULP from it (arb)."""
    x = np.array([[0, 0.54132485, -20.516264, -34.179874]], dtype=np.float32)
    L = exact_loss(x[0], 0)
    with mpmath.workdps(420):
        assert 0 < 1 - L < mpmath.ldexp(1, -54)
    ref = cross_entropy_detailed(x, np.array([0]), "float32")
    c = np.array([0.99999994], dtype=np.float32)
    want = _expected_ulp_errors(c, L, "float32")[0]
    assert want == pytest.approx(1.0, abs=1e-6)
    assert float(ulp_error(c, ref.hi, "float32", ref.lo)[0]) == pytest.approx(want, abs=1e-9)


def test_the_reviewed_float32_row_against_arb() -> None:
    flint = pytest.importorskip("flint")
    flint.ctx.prec = 300
    vals = [flint.arb(float(v)) for v in np.array([0, 0.54132485, -20.516264, -34.179874],
                                                  dtype=np.float32).astype(np.float64)]
    L = sum((v.exp() for v in vals), flint.arb(0)).log() - vals[0]
    err = (flint.arb(float(np.float32(0.99999994))) - L).abs_upper() / flint.arb(2.0 ** -24)
    ref = cross_entropy_detailed(np.array([[0, 0.54132485, -20.516264, -34.179874]],
                                          dtype=np.float32), np.array([0]), "float32")
    got = float(ulp_error(np.array([0.99999994], np.float32), ref.hi, "float32", ref.lo)[0])
    assert abs(got - float(err.mid())) < 1e-9 and float(err.mid()) > 0.999


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("side", [-1, 1])
def test_reductions_carry_the_binade(fmt: str, reduction: str, side: int) -> None:
    """Two rows whose exact sum (or mean) is 2**k (1 +- 2**-60)."""
    f = get_format(fmt)
    t = f.np_dtype.type
    k = 1
    x1 = np.array([0.0, 0.25, -1.5])
    L1 = exact_loss(x1, 0)
    with mpmath.workdps(420):
        total = mpmath.ldexp(1, k) * (1 + side * mpmath.ldexp(1, -60))
        if reduction == "mean":
            total *= 2
        x2 = logits_for_loss(total - L1, tol_bits=110)
    L2 = exact_loss(x2, 0)
    V = max(len(x1), len(x2))
    X = np.full((2, V), -np.inf)
    X[0, :len(x1)], X[1, :len(x2)] = x1, x2
    with mpmath.workdps(420):
        R = (L1 + L2) / (2 if reduction == "mean" else 1)
        assert mpmath.sign(R - mpmath.ldexp(1, k)) == side
    ref = cross_entropy_detailed(X, np.array([0, 0]), fmt, reduction=reduction)
    p2 = t(2.0 ** k)
    cands = np.array([np.nextafter(p2, t(0)), p2, np.nextafter(p2, t(np.inf))], f.np_dtype)
    got = ulp_error(cands, np.repeat(ref.hi, 3), fmt, np.repeat(ref.lo, 3))
    assert got == pytest.approx(_expected_ulp_errors(cands, R, fmt), abs=1e-6)


# -- the Ziv loops try MAX_PRECISION itself ----------------------------------------------


def _row_near_float64_midpoint(side: int, bits: int) -> tuple[np.ndarray, mpmath.mpf]:
    """A row whose loss is the float64 midpoint M = 1 + 2**-53 times (1 + side 2**-bits)."""
    with mpmath.workdps(420):
        M = 1 + mpmath.ldexp(1, -53)
        x = logits_for_loss(M * (1 + side * mpmath.ldexp(1, -bits)), tol_bits=bits + 40)
        L = exact_loss(x, 0)
        assert mpmath.sign(L - M) == side and abs(L / M - 1) < mpmath.ldexp(1, -bits + 1)
    return x, L


@pytest.mark.parametrize("side", [-1, 1])
def test_row_decided_exactly_at_the_cap(monkeypatch, side: int) -> None:
    # 128 bits cannot separate L from the midpoint (2**-160 relative), 200 bits can; the
    # doubling 128 -> 256 passes over a cap of 200, which must be tried itself
    monkeypatch.setattr(reference, "MAX_PRECISION", 200)
    x, L = _row_near_float64_midpoint(side, 160)
    ref = cross_entropy_detailed(x[None, :], np.array([0]), "float64")
    assert ref.slow_rows == 1
    assert float(ref.values[0]) == (1 + 2.0**-52 if side > 0 else 1.0)
    monkeypatch.setattr(reference, "MAX_PRECISION", 150)
    with pytest.raises(ReferenceError, match="row 0: .* 150 bits"):
        cross_entropy_detailed(x[None, :], np.array([0]), "float64")


@pytest.mark.parametrize("side", [-1, 1])
def test_reduction_decided_exactly_at_the_cap(monkeypatch, side: int) -> None:
    monkeypatch.setattr(reference, "MAX_PRECISION", 200)
    x1 = np.array([0.0, 0.25, -1.5])
    L1 = exact_loss(x1, 0)
    with mpmath.workdps(420):
        M = 1 + mpmath.ldexp(1, -53)
        x2 = logits_for_loss(M * (1 + side * mpmath.ldexp(1, -160)) - L1, tol_bits=200)
        assert mpmath.sign(L1 + exact_loss(x2, 0) - M) == side
    X = np.full((2, max(len(x1), len(x2))), -np.inf)
    X[0, :len(x1)], X[1, :len(x2)] = x1, x2
    ref = cross_entropy_detailed(X, np.array([0, 0]), "float64", reduction="sum")
    assert float(ref.values) == (1 + 2.0**-52 if side > 0 else 1.0)
    monkeypatch.setattr(reference, "MAX_PRECISION", 150)
    with pytest.raises(ReferenceError, match="sum of rows 0..1: not decided at 150 bits"):
        cross_entropy_detailed(X, np.array([0, 0]), "float64", reduction="sum")


def _cap(monkeypatch, bits: int) -> None:
    from precision_lab.numerics import _ziv, gradient, semantics

    for mod in (reference, semantics, gradient, _ziv):
        monkeypatch.setattr(mod, "MAX_PRECISION", bits)


def test_the_precision_sequence_ends_at_the_cap(monkeypatch) -> None:
    from precision_lab.numerics._ziv import next_precision

    _cap(monkeypatch, 200)
    seq = [128]
    while (w := next_precision(seq[-1])) is not None:
        seq.append(w)
    assert seq == [128, 200]


@pytest.mark.parametrize("side", [-1, 1])
def test_training_semantics_row_decided_exactly_at_the_cap(monkeypatch, side: int) -> None:
    """The keyword path (here class weights of 1: the same loss) tries the cap itself too."""
    _cap(monkeypatch, 200)
    x, L = _row_near_float64_midpoint(side, 160)
    w = np.ones(len(x))
    ref = cross_entropy_detailed(x[None, :], np.array([0]), "float64", weight=w)
    assert float(ref.values[0]) == (1 + 2.0**-52 if side > 0 else 1.0)
    _cap(monkeypatch, 150)
    with pytest.raises(ReferenceError, match="row 0: .* 150 bits"):
        cross_entropy_detailed(x[None, :], np.array([0]), "float64", weight=w)


@pytest.mark.parametrize("side", [-1, 1])
def test_training_semantics_sum_decided_exactly_at_the_cap(monkeypatch, side: int) -> None:
    _cap(monkeypatch, 200)
    x1 = np.array([0.0, 0.25, -1.5])
    L1 = exact_loss(x1, 0)
    with mpmath.workdps(420):
        M = 1 + mpmath.ldexp(1, -53)
        x2 = logits_for_loss(M * (1 + side * mpmath.ldexp(1, -160)) - L1, tol_bits=200)
    X = np.full((2, max(len(x1), len(x2))), -np.inf)
    X[0, :len(x1)], X[1, :len(x2)] = x1, x2
    w = np.ones(X.shape[1])
    ref = cross_entropy_detailed(X, np.array([0, 0]), "float64", reduction="sum", weight=w)
    assert float(ref.values) == (1 + 2.0**-52 if side > 0 else 1.0)
    _cap(monkeypatch, 150)
    with pytest.raises(ReferenceError, match="not decided at 150 bits"):
        cross_entropy_detailed(X, np.array([0, 0]), "float64", reduction="sum", weight=w)
