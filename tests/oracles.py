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
