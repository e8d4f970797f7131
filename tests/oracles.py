"""Independent oracles shared by the tests: written from the definition, at high precision."""

from __future__ import annotations

import math

import mpmath
import numpy as np


def exact_loss(row, t: int, dps: int = 420) -> mpmath.mpf:
    """log(sum_j exp(x_j)) - x_t of the exact values of ``row`` (the naive formula, which is
    fine at ``dps`` digits), skipping -inf entries."""
    vals = [float(v) for v in np.asarray(row).astype(np.float64)]
    with mpmath.workdps(dps):
        s = mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v in vals if v != -math.inf)
        return mpmath.log(s) - mpmath.mpf(vals[t])


def logits_for_loss(T, tol_bits: int = 120, max_terms: int = 16, dps: int = 400) -> np.ndarray:
    """float64 logits, target 0 (logit 0.0), whose exact loss log(1 + sum_i e^{z_i}) lies
    below the real ``T`` > 0 by less than T * 2**-tol_bits: each z_i is the largest float64
    with e^{z_i} <= the remainder e^T - 1 - sum(previous), a greedy expansion that gains
    ~50 bits per logit (fewer for T far above 1: each term's float64 grid is coarser).
    Check the loss with :func:`exact_loss` before relying on it."""
    with mpmath.workdps(dps):
        T = mpmath.mpf(T)
        eT = mpmath.exp(T)
        R = eT - 1
        xs = [0.0]
        for _ in range(max_terms):
            if R <= 0 or R / eT / T < mpmath.ldexp(1, -tol_bits):
                break
            z = float(mpmath.log(R))
            while mpmath.exp(mpmath.mpf(z)) > R:
                z = float(np.nextafter(z, -np.inf))
            xs.append(z)
            R -= mpmath.exp(mpmath.mpf(z))
        else:
            raise AssertionError(f"no {tol_bits}-bit expansion of {T} in {max_terms} logits")
    return np.array(xs)


def ulp_in_binade(v, precision: int, emin: int) -> mpmath.mpf:
    """ulp of a format (precision p, smallest normal 2**emin) at the exact value v > 0: the
    spacing 2**(max(floor(log2 v), emin) - p + 1), from the definition."""
    with mpmath.workdps(420):
        e = int(mpmath.floor(mpmath.log(mpmath.mpf(v), 2)))
        # floor(log2) of a value within 2**-400 of a power of two: settle it exactly
        while mpmath.ldexp(1, e) > v:
            e -= 1
        while mpmath.ldexp(1, e + 1) <= v:
            e += 1
        return mpmath.ldexp(1, max(e, emin) - precision + 1)
