"""Independent oracles for the training-semantics loss and its gradient: written here from
the definitions (torch's nn.CrossEntropyLoss, PaLM's z-loss, Gemma 2's soft-capping), in
mpmath at hundreds of digits, with no code shared with the package."""

from __future__ import annotations

import math

import mpmath
import numpy as np


def _mp(v) -> mpmath.mpf:
    return mpmath.mpf(float(v))


def coefficients(V: int, t, w=None, eps: float = 0.0, prob: bool = False) -> list:
    """c_j: (1 - eps) w_t [j = t] + (eps / V) w_j, or w_j ((1 - eps) q_j + eps / V)."""
    ws = [mpmath.mpf(1)] * V if w is None else [_mp(v) for v in w]
    a = 1 - _mp(eps)
    b = _mp(eps) / V
    if prob:
        return [ws[j] * (a * _mp(t[j]) + b) for j in range(V)]
    return [ws[j] * b + (a * ws[j] if j == int(t) else 0) for j in range(V)]


def _y(row, cap):
    xs = [_mp(v) for v in np.asarray(row, dtype=np.float64)]
    if cap is None:
        return xs
    c = _mp(cap)
    return [c * mpmath.tanh(v / c) for v in xs]


def loss_row(row, t, *, w=None, eps=0.0, z=0.0, cap=None, prob=False, dps=420):
    """The exact loss of one non-ignored row with finite logits (-inf allowed where the
    coefficient is 0): sum_j c_j (lse - y_j) + z lse**2."""
    V = len(row)
    with mpmath.workdps(dps):
        c = coefficients(V, t, w, eps, prob)
        y = _y(row, cap)
        lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in y))
        terms = [c[j] * (lse - y[j]) for j in range(V) if c[j] != 0]
        return mpmath.fsum(terms) + _mp(z) * lse ** 2


def grad_row(row, t, *, w=None, eps=0.0, z=0.0, cap=None, prob=False, dps=420) -> list:
    """d(loss)/d(x_j) of one non-ignored row: (C + 2 z lse) p_j - c_j, times
    sech(x_j / cap)**2 with soft-capping."""
    V = len(row)
    with mpmath.workdps(dps):
        c = coefficients(V, t, w, eps, prob)
        y = _y(row, cap)
        lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in y))
        K = mpmath.fsum(c) + 2 * _mp(z) * lse
        out = []
        for j in range(V):
            g = K * mpmath.exp(y[j] - lse) - c[j]
            if cap is not None:
                xj = float(row[j])
                g = g * (0 if math.isinf(xj) else mpmath.sech(_mp(xj) / _mp(cap)) ** 2)
            out.append(g)
        return out


def denominator(t, V, *, w=None, prob=False, ignore_index=-100):
    """torch's mean denominator, exactly (mpmath at the current precision)."""
    if prob:
        return mpmath.mpf(len(t))
    keep = [int(v) for v in t if int(v) != ignore_index]
    if w is None:
        return mpmath.mpf(len(keep))
    return mpmath.fsum(_mp(w[v]) for v in keep)


def random_case(seed: int, fmt: str, B: int, V: int, spread: float, kw: dict):
    """Random logits of ``fmt`` (rows scaled by 1 or ``spread``) as float64, targets (class
    indices, or probability rows when ``kw`` holds ``prob``) and the keywords (``weight="w"``
    becomes random class weights).  Returns (x, t, kw) with ``prob`` removed from kw."""
    from precision_lab.numerics.formats import round_float64_array

    rng = np.random.default_rng(seed)
    kw = dict(kw)
    x = round_float64_array(rng.standard_normal((B, V)) * rng.choice([1.0, spread], (B, 1)), fmt)
    x = x.astype(np.float64)
    t = rng.dirichlet(np.ones(V), B) if kw.pop("prob", False) else rng.integers(0, V, B)
    if kw.get("weight") == "w":
        kw["weight"] = rng.uniform(0.2, 2.0, V)
    return x, t, kw
