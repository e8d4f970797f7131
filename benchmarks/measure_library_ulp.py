"""Worst ULP error of the libraries' exp, log and log1p in each format, on this machine.

    python benchmarks/measure_library_ulp.py                 # all (~15 min: float32 is exhaustive)
    python benchmarks/measure_library_ulp.py --skip-float32  # 16-bit exhaustive + float64 sample

These are the numbers behind ``precision_lab.numerics.conditioning.LIBRARY_ULP`` (the error
model of the derived bounds).  The functions measured are the ones the numpy implementations
call: ``np.exp``/``np.log``/``np.log1p`` on float16, float32 and float64 arrays and the
ml_dtypes ufuncs on bfloat16 arrays.  The error of a result c at input x is |c - f(x)| /
ulp(f(x)) in ULPs of the format at the exact value (subnormal spacing below the normal range).

* float16, bfloat16: every finite input whose result is finite (exhaustive), against mpmath
  at 120 bits.
* float32: every finite input whose result is finite (exhaustive, 2**32 bit patterns),
  against numpy's float64 function of the same (exact) input; its error, under 4 float64
  ulps, is at most 2**-27 float32 ULP, and near a power of two the smaller (lower) binade's
  ulp is used, so the figure never understates the error by more than 2**-27.
* float64: a sample (random bit patterns over the domain, plus uniform values over the
  ranges the implementations use), against mpmath at 120 bits; a sample cannot prove a
  maximum.

Prints one line per (format, function): worst error, where, and how many inputs were checked.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import mpmath
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from precision_lab.numerics.formats import get_format, ulp_exponent  # noqa: E402

FUNCS = ("exp", "log", "log1p")
_MP = {"exp": mpmath.exp, "log": mpmath.log, "log1p": mpmath.log1p}


def _in_domain(fn: str, x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    ok = np.isfinite(x)
    if fn == "log":
        ok &= x > 0
    elif fn == "log1p":
        ok &= x > -1
    return ok


def mp_errors(fn: str, x: np.ndarray, c: np.ndarray, fmt: str) -> np.ndarray:
    """ULP errors of results c (float64 values of the format) at inputs x, against mpmath."""
    out = np.zeros(len(x))
    with mpmath.workprec(120):
        for i, (xi, ci) in enumerate(zip(x.tolist(), c.tolist())):
            v = _MP[fn](mpmath.mpf(xi))
            if v == 0:
                out[i] = abs(ci) / 2.0 ** ulp_exponent(0.0, fmt)
                continue
            q = ulp_exponent(v, fmt)
            out[i] = float(abs(mpmath.mpf(ci) - v) / mpmath.ldexp(1, q))
    return out


def library(fn: str, x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return getattr(np, fn)(x)


def sixteen_bit(fmt: str, fn: str) -> tuple[float, float, int]:
    f = get_format(fmt)
    x = np.arange(2**16, dtype=np.uint16).view(f.np_dtype)
    x = x[_in_domain(fn, x)]
    c = library(fn, x).astype(np.float64)
    keep = np.isfinite(c)
    x, c = x[keep].astype(np.float64), c[keep]
    err = mp_errors(fn, x, c, fmt)
    i = int(np.argmax(err))
    return float(err[i]), float(x[i]), len(x)


def float32_exhaustive(fn: str) -> tuple[float, float, int]:
    worst, where, n = 0.0, float("nan"), 0
    chunk = 1 << 24
    for c0 in range(0, 1 << 32, chunk):
        x = np.arange(c0, c0 + chunk, dtype=np.uint64).astype(np.uint32).view(np.float32)
        x = x[_in_domain(fn, x)]
        if not x.size:
            continue
        c = library(fn, x).astype(np.float64)
        r = library(fn, x.astype(np.float64))
        keep = np.isfinite(c) & np.isfinite(r)
        x, c, r = x[keep], c[keep], r[keep]
        _, e = np.frexp(np.abs(r) * (1 - 2.0**-40))  # lower binade next to a power of two
        q = np.maximum(e - 1, -126) - 23
        err = np.ldexp(np.abs(c - r), -q)
        i = int(np.argmax(err))
        if err[i] > worst:
            worst, where = float(err[i]), float(x[i])
        n += x.size
    return worst, where, n


def float64_sample(fn: str, n: int, seed: int = 0) -> tuple[float, float, int]:
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**63, size=n, dtype=np.uint64)
    x = bits.view(np.float64) * rng.choice([-1.0, 1.0], size=n)
    lo, hi = {"exp": (-745.2, 709.8), "log": (0.0, 1e6), "log1p": (-1.0, 1e6)}[fn]
    u = rng.uniform(lo, hi, size=n)
    near = rng.uniform(-1, 1, size=n) * 10.0 ** rng.uniform(-20, 0, size=n)  # near 0 / 1
    x = np.concatenate([x, u, near, 1.0 + near if fn == "log" else near])
    x = x[_in_domain(fn, x)]
    c = library(fn, x)
    keep = np.isfinite(c)
    if fn == "exp":
        keep &= (x > -745.2) & (x < 709.8)
    x, c = x[keep], c[keep]
    err = mp_errors(fn, x, c, "float64")
    i = int(np.argmax(err))
    return float(err[i]), float(x[i]), len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-float32", action="store_true", help="skip the exhaustive float32 run")
    ap.add_argument("--float64-samples", type=int, default=100_000)
    args = ap.parse_args()
    print(f"# numpy {np.__version__}, {platform.machine()}, python {platform.python_version()}")
    print(f"{'format':9} {'function':8} {'worst ULP':>12} {'at x':>24} {'inputs':>12} {'s':>6}")
    for fmt in ("float16", "bfloat16", "float32", "float64"):
        for fn in FUNCS:
            if fmt == "float32" and args.skip_float32:
                continue
            t0 = time.perf_counter()
            if fmt in ("float16", "bfloat16"):
                w, at, n = sixteen_bit(fmt, fn)
            elif fmt == "float32":
                w, at, n = float32_exhaustive(fn)
            else:
                w, at, n = float64_sample(fn, args.float64_samples)
            print(f"{fmt:9} {fn:8} {w:12.6f} {at:24.17g} {n:12d} {time.perf_counter() - t0:6.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
