"""Structured families of logit rows where cross-entropy kernels lose accuracy.

Each family draws rows in float64 from a seeded numpy Generator and rounds them once into the
format (values beyond the finite range are clamped to +-max_finite first, so every row is
finite).  The families are the shapes the error analysis of log-sum-exp points at:

* ``margin``: the target wins by a margin, so the loss is tiny and lse(x) - x_t cancels;
* ``scale``: centred rows at every scale from 2**-12 up to overflow;
* ``offset``: a large common offset with small spread, where the absolute precision of the
  logits (their ULP) is coarse compared with the loss;
* ``near_ties``: several logits equal to the maximum or a few ULPs from it;
* ``tail_mass``: one dominant logit and many small ones whose total mass sets the loss, down
  to losses below the format's smallest subnormal.
"""

from __future__ import annotations

import math

import numpy as np

from precision_lab.numerics.formats import Format, get_format, to_format
from precision_lab.search.floats import step

__all__ = ["FAMILIES", "draw"]

FAMILIES: tuple[str, ...] = ("margin", "scale", "offset", "near_ties", "tail_mass")


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    return np.exp2(rng.uniform(lo, hi, n))


def _signed(rng: np.random.Generator, v: np.ndarray) -> np.ndarray:
    return np.where(rng.random(v.shape) < 0.5, -v, v)


def _exp_cap(f: Format) -> float:
    """log2 of the largest magnitude worth drawing: a quarter of the largest binade."""
    return float(f.emax - 2)


def draw(family: str, rng: np.random.Generator, n: int, V: int, fmt: "str | Format"
         ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows of ``V`` logits of one family: (logits of ``fmt``'s dtype (n, V), targets
    int64 (n,)).  Deterministic given the generator's state."""
    f = get_format(fmt)
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; allowed: {', '.join(FAMILIES)}")
    cap = _exp_cap(f)
    t = rng.integers(0, V, n)
    rows = np.arange(n)
    z = rng.standard_normal((n, V))
    if family == "margin":
        base = np.where(rng.random(n) < 0.5, 0.0,
                        _signed(rng, _log_uniform(rng, -4, min(cap, 20.0), n)))
        x = base[:, None] + _log_uniform(rng, -4, 3, n)[:, None] * z
        x[rows, t] = x.max(axis=1) + _log_uniform(rng, -6, 6, n) * rng.random(n)
    elif family == "scale":
        x = _log_uniform(rng, -12, min(cap, 16.0), n)[:, None] * z
    elif family == "offset":
        base = _signed(rng, _log_uniform(rng, 0, cap, n))
        x = base[:, None] + _log_uniform(rng, -6, 4, n)[:, None] * z
    elif family == "near_ties":
        base = np.where(rng.random(n) < 0.5, 0.0,
                        _signed(rng, _log_uniform(rng, -4, min(cap, 20.0), n)))
        x = base[:, None] + _log_uniform(rng, -4, 4, n)[:, None] * z
        xf = to_format(np.clip(x, -f.max_finite, f.max_finite), f)
        m = xf.max(axis=1)
        k = rng.integers(2, V + 1, n) if V > 1 else np.ones(n, np.int64)
        tied = rng.random((n, V)).argsort(axis=1) < k[:, None]
        jitter = np.where(rng.random((n, V)) < 0.5, 0, rng.integers(-2, 3, (n, V)))
        moved = step(np.broadcast_to(m[:, None], (n, V)), jitter, f)
        xf = np.where(tied, moved, xf)
        pick = rng.random(n) < 0.75
        first_tied = tied.argmax(axis=1)
        t = np.where(pick & tied.any(axis=1), first_tied, t)
        return xf, t.astype(np.int64)
    else:  # tail_mass
        base = np.where(rng.random(n) < 0.5, 0.0,
                        _signed(rng, _log_uniform(rng, -4, min(cap, 20.0), n)))
        deepest = -math.log(f.smallest_subnormal) + math.log(max(V, 2)) + 2.0
        gap = rng.uniform(0.0, deepest, n)
        x = (base - gap)[:, None] + _log_uniform(rng, -8, 1, n)[:, None] * z
        x[rows, t] = base
    x = np.clip(x, -f.max_finite, f.max_finite)
    return to_format(x, f), t.astype(np.int64)
