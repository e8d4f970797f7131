"""The libraries stay within the error model the bounds state (conditioning.LIBRARY_ULP), on
the machine that runs the tests (numpy's SIMD kernels differ by CPU).

float16/bfloat16: every input, against mpmath at 120 bits (exhaustive).  float32: 2**18
random bit patterns per function plus the worst inputs found by the exhaustive run, against
numpy's float64 function (its error is under 2**-27 float32 ULP) and, for those worst inputs,
mpmath.  float64: a random sample against mpmath.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from precision_lab.numerics.conditioning import LIBRARY_ULP, library_ulp
from precision_lab.numerics.formats import get_format

_MP = {"exp": mpmath.exp, "log": mpmath.log, "log1p": mpmath.log1p}
#: the worst float32 inputs of the exhaustive run (benchmarks/measure_library_ulp.py)
_F32_WORST = {"exp": -62.02950668334961, "log": 0.782856285572052, "log1p": 0.333614319562912}


def _domain(fn: str, x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        x = x.astype(np.float64)
    ok = np.isfinite(x)
    return ok & (x > 0) if fn == "log" else ok & (x > -1) if fn == "log1p" else ok


def _mp_worst(fn: str, x: np.ndarray, c: np.ndarray, fmt: str) -> float:
    """Worst |c - f(x)| / ulp(f(x)); the binade is read off the 120-bit value's exponent
    (f(x) is irrational here, and no 16/32/64-bit input puts it within 2**-120 of a power
    of two, so that is the exact value's binade)."""
    f = get_format(fmt)
    worst = 0.0
    with mpmath.workprec(120):
        for xi, ci in zip(x.tolist(), c.tolist()):
            v = _MP[fn](mpmath.mpf(xi))
            if v == 0:
                continue
            _, man, exp, bc = v._mpf_
            q = max(exp + bc - 1, f.emin) - f.precision + 1
            worst = max(worst, float(mpmath.ldexp(abs(mpmath.mpf(ci) - v), -q)))
    return worst


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
@pytest.mark.parametrize("fn", ["exp", "log", "log1p"])
def test_sixteen_bit_functions_exhaustively(fmt: str, fn: str) -> None:
    f = get_format(fmt)
    x = np.arange(2**16, dtype=np.uint16).view(f.np_dtype)
    x = x[_domain(fn, x)]
    with np.errstate(all="ignore"):
        c = getattr(np, fn)(x).astype(np.float64)
    keep = np.isfinite(c)
    worst = _mp_worst(fn, x[keep].astype(np.float64), c[keep], fmt)
    assert worst <= library_ulp(fmt, fn), (fmt, fn, worst)
    assert worst > 0.49  # the comparison ran on rounded values


@pytest.mark.parametrize("fn", ["exp", "log", "log1p"])
def test_float32_functions_on_a_sample(fn: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 2**32, size=2**18, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([x, np.array([_F32_WORST[fn]], np.float32)])
    x = x[_domain(fn, x)]
    with np.errstate(all="ignore"):
        c = getattr(np, fn)(x).astype(np.float64)
        r = getattr(np, fn)(x.astype(np.float64))
    keep = np.isfinite(c) & np.isfinite(r) & (r != 0)
    x, c, r = x[keep], c[keep], r[keep]
    _, e = np.frexp(np.abs(r) * (1 - 2.0**-40))  # the lower binade next to a power of two
    err = np.ldexp(np.abs(c - r), -(np.maximum(e - 1, -126) - 23))
    assert err.max() + 2.0**-27 <= library_ulp("float32", fn), (fn, err.max())
    # the worst input, against mpmath
    w = np.array([_F32_WORST[fn]], np.float32)
    with np.errstate(all="ignore"):
        cw = getattr(np, fn)(w).astype(np.float64)
    assert _mp_worst(fn, w.astype(np.float64), cw, "float32") <= library_ulp("float32", fn)


@pytest.mark.parametrize("fn", ["exp", "log", "log1p"])
def test_float64_functions_on_a_sample(fn: str) -> None:
    rng = np.random.default_rng(4)
    n = 4000
    bits = rng.integers(0, 2**62, size=n, dtype=np.uint64).view(np.float64)
    lo, hi = {"exp": (-745.0, 709.0), "log": (0.0, 1e4), "log1p": (-1.0, 1e4)}[fn]
    x = np.concatenate([bits, -bits, rng.uniform(lo, hi, size=n),
                        rng.uniform(-1, 1, size=n) * 10.0 ** rng.uniform(-20, 0, size=n)])
    x = x[_domain(fn, x)]
    if fn == "exp":
        x = x[(x > -745.0) & (x < 709.0)]
    c = getattr(np, fn)(x)
    assert _mp_worst(fn, x, c, "float64") <= library_ulp("float64", fn)


def test_table_is_complete_and_bad_names_are_refused() -> None:
    assert {(f, fn) for f in ("float16", "bfloat16", "float32", "float64")
            for fn in ("exp", "log", "log1p")} == set(LIBRARY_ULP)
    assert all(v >= 0.5 for v in LIBRARY_ULP.values())
    with pytest.raises(ValueError, match="allowed functions: exp, log, log1p"):
        library_ulp("float32", "tanh")
