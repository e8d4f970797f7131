"""Certified gradients of the training loss with respect to the logits, each element
correctly rounded to the format.

The loss is :mod:`precision_lab.numerics.semantics`' (weights, ignore_index, label
smoothing, probability targets, z-loss, softcap); the gradient is that of the reduced loss:
reduction "none" differentiates the sum of the per-sample losses (an upstream gradient of 1
per sample, as torch's ``loss.sum().backward()`` on a reduction="none" loss), "sum" the
same, "mean" the sum divided by torch's denominator D (so every element is divided by D).

For a row with coefficients c_j (C = sum_j c_j), z-loss z and lse = log sum_j exp(y_j):

    dl/dy_j = K p_j - c_j,   K = C + 2 z lse,   p_j = softmax(y)_j
    dl/dx_j = dl/dy_j * sech(x_j / c)**2   with softcap c (y = c tanh(x / c)), else dl/dy_j

(plain cross-entropy: p_j - [j = t]).  The element of the largest logit k is evaluated as
(K - c_k) - K S' / (1 + S'), S' = sum_{j != k} exp(y_j - y_k), so p_k - 1 near a confident
prediction keeps its accuracy (1 - p_k is the sum of the other probabilities); sech**2 is
1 / cosh**2, not 1 - tanh**2; tiny p_j are computed as such and round to the right
subnormal or 0.

Rules (decided exactly first):

* ignored rows: 0 everywhere;
* a NaN logit: NaN for the whole row;
* every coefficient 0 and z = 0: 0 everywhere;
* a +inf logit (no softcap): NaN for the whole row (the loss is a limit there, its
  derivative is not defined; torch's is NaN too); every logit -inf: NaN;
* a -inf logit j (no softcap): p_j = 0, so the element is -c_j exactly (the row's other
  elements are finite even when c_j != 0 makes the loss +inf);
* softcap and x_j = +-inf: sech**2 = 0, the element is 0 exactly;
* "mean" with D = 0: g / 0 with IEEE signs (0 / 0 = NaN; an exact 0 is NaN, a value that
  rounds to zero keeps its sign and becomes +-inf).

Exact values where they are rational (p uniform over the finite logits with z = 0: all
finite logits equal; C = 0 and z = 0; a lone finite logit) are rounded from fractions.
Elsewhere, with z = 0 and no softcap, p_j is irrational by Lindemann-Weierstrass (unless all
finite logits are equal) and so is C p_j - c_j; with z > 0 or softcap no rational value is
expected and Ziv's loop, capped at MAX_PRECISION bits, raises ReferenceError naming the row
and class if it ever met one.  Fast path: :mod:`precision_lab.numerics._fastsem` (float64,
then double-double, with rigorous bounds); undecided elements go to the interval path, one
row's shared quantities (lse, 1 + S', K) computed once for all its undecided elements.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import mpmath
import numpy as np
from mpmath import libmp

from precision_lab.numerics import _fastsem
from precision_lab.numerics import _interval as I
from precision_lab.numerics._ziv import (
    MAX_PRECISION,
    START_PRECISION,
    ReferenceError,
    _hilo,
    _round_open,
    next_precision,
)
from precision_lab.numerics.formats import Format, get_format
from precision_lab.numerics.semantics import (
    ExactRow,
    LossSpec,
    _rational_raw,
    _zero_rows,
    exact_coefficient,
    exact_coefficients,
    reduction_denominator,
    validate,
    zero_coefficients,
)

__all__ = ["GradResult", "cross_entropy_grad", "cross_entropy_grad_detailed"]

_HILO_BITS = 102


@dataclass
class GradResult:
    """The certified gradient of a batch, with the unrounded truth next to it.

    Attributes:
        values: (B, V) correctly rounded elements, fmt's dtype.
        hi, lo: (B, V) float64, a double-double of the exact element (|hi + lo - g| <= err).
        err: (B, V) float64 bound (0 where the element is known exactly).
        slow_elements: elements evaluated on the interval (mpmath) path.
        special_rows: rows decided by the rules (ignored, NaN, zero coefficients, +inf).
        rows: B.
        method: "fast" or "exact".
    """

    values: np.ndarray
    hi: np.ndarray
    lo: np.ndarray
    err: np.ndarray
    slow_elements: int
    special_rows: int
    rows: int
    method: str


def cross_entropy_grad(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
                       weight=None, ignore_index: int = -100, label_smoothing: float = 0.0,
                       reduction: str = "none", z_loss: float = 0.0,
                       softcap: "float | None" = None) -> np.ndarray:
    """Correctly rounded d(loss)/d(logits), shape (B, V), fmt's dtype; see the module
    docstring for the definition (reduction "none": of the sum of the per-sample losses)."""
    return cross_entropy_grad_detailed(logits, targets, fmt, weight=weight,
                                       ignore_index=ignore_index,
                                       label_smoothing=label_smoothing, reduction=reduction,
                                       z_loss=z_loss, softcap=softcap).values


def cross_entropy_grad_detailed(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format",
                                *, weight=None, ignore_index: int = -100,
                                label_smoothing: float = 0.0, reduction: str = "none",
                                z_loss: float = 0.0, softcap: "float | None" = None,
                                method: str = "auto") -> GradResult:
    """:func:`cross_entropy_grad` with hi/lo/err per element.

    Raises:
        the argument errors of :func:`precision_lab.numerics.semantics.validate`;
        ReferenceError: an element undecided at MAX_PRECISION bits (names row and class).
    """
    f = get_format(fmt)
    if method not in ("auto", "exact", "fast"):
        raise ValueError(f"method must be 'auto', 'exact' or 'fast', not {method!r}")
    x, T, spec = validate(logits, targets, weight=weight, ignore_index=ignore_index,
                          label_smoothing=label_smoothing, reduction=reduction, z_loss=z_loss,
                          softcap=softcap)
    B, V = x.shape
    D = reduction_denominator(T, spec) if reduction == "mean" else Fraction(1)
    inv = None if D in (0, 1) else 1 / D
    vals = np.zeros((B, V), f.np_dtype)
    hi = np.zeros((B, V))
    lo = np.zeros((B, V))
    err = np.zeros((B, V))
    exact_zero = np.zeros((B, V), bool)
    special, nan_rows = _classify(x, T, spec)
    vals[nan_rows] = np.nan
    hi[nan_rows] = np.nan
    err[nan_rows] = np.nan
    exact_zero[special & ~nan_rows] = True
    general = np.flatnonzero(~special)
    done = np.zeros((len(general), V), bool)
    if general.size:
        every = general.size == B
        xg, Tg = (x, T) if every else (x[general], T[general])
        if method != "exact":
            scale = None if inv is None else _scale_parts(inv)
            fr = _fastsem.grad_rows(xg, Tg, spec, f, scale)
            done = fr.ok
            # whole rows are taken; the undecided elements are overwritten below
            if every:
                vals, hi, lo, err = fr.values, fr.hi, fr.lo, fr.err
            else:
                vals[general], hi[general], lo[general], err[general] = (fr.values, fr.hi,
                                                                          fr.lo, fr.err)
        _exact_entries(xg, Tg, spec, f, inv, general, vals, hi, lo, err, exact_zero, done)
    slow = 0
    for r, i in enumerate(general.tolist()):
        cols = np.flatnonzero(~done[r])
        if not cols.size:
            continue
        row = _GradRow(x[i], T[i], spec)
        for j in cols.tolist():
            v, h, l_, e, zero = row.element(j, f, inv, i)
            vals[i, j], hi[i, j], lo[i, j], err[i, j] = v, h, l_, e
            exact_zero[i, j] = zero
            slow += 1
    if reduction == "mean" and D == 0:
        v64 = vals.astype(np.float64)
        out = np.where(exact_zero | np.isnan(v64), np.nan, np.copysign(np.inf, v64))
        vals = out.astype(f.np_dtype)
        hi, lo, err = out.copy(), np.zeros((B, V)), np.where(np.isnan(out), np.nan, np.inf)
    used = "exact" if method == "exact" else "fast"
    return GradResult(vals, hi, lo, err, slow, int(special.sum()), B, used)


def _scale_parts(inv: Fraction) -> tuple[float, float, float]:
    """1/D as (hi, lo, relative error bound of hi + lo)."""
    with mpmath.workprec(200):
        v = mpmath.mpf(inv.numerator) / inv.denominator
        h = float(v)
        l_ = float(v - h)
    return h, l_, 2.0 ** -104


def _classify(x: np.ndarray, T: np.ndarray, spec: LossSpec):
    """(special rows, NaN rows) by the module docstring's rules."""
    B, V = x.shape
    special = np.zeros(B, bool)
    nan = np.zeros(B, bool)
    if not spec.prob:
        special |= T == spec.ignore_index
    with np.errstate(all="ignore"):
        has_nan = np.isnan(x).any(axis=1)
    nan |= has_nan & ~special
    special |= nan
    zero = _zero_rows(T, spec) & (spec.z_loss == 0.0) & ~special
    special |= zero
    if spec.softcap is None:
        bad = ((x == np.inf).any(axis=1) | (x == -np.inf).all(axis=1)) & ~special
        nan |= bad
        special |= bad
    return special, nan


def _exact_entries(xg, Tg, spec: LossSpec, f: Format, inv, general, vals, hi, lo, err,
                   exact_zero, done) -> None:
    """Elements known exactly without evaluation: p_j = 0 at -inf logits (value -c_j), and
    sech**2 = 0 at infinite logits under softcap (value 0)."""
    at = np.isinf(xg) if spec.softcap is not None else xg == -np.inf
    if not at.any():
        return
    zero = at.copy() if spec.softcap is not None else at & zero_coefficients(Tg, spec)
    rows, cols = np.nonzero(zero)
    gi = general[rows]
    vals[gi, cols] = 0
    hi[gi, cols] = lo[gi, cols] = err[gi, cols] = 0.0
    exact_zero[gi, cols] = True
    done[rows, cols] = True
    rows, cols = np.nonzero(at & ~zero)
    for r, j in zip(rows.tolist(), cols.tolist()):
        i = int(general[r])
        q = -exact_coefficient(spec, Tg[r], j)
        if inv is not None:
            q *= inv
        raw = _rational_raw(q)
        vals[i, j] = I.round_rational(q, f)
        hi[i, j], lo[i, j], err[i, j] = _hilo(raw)
        exact_zero[i, j] = q == 0
        done[r, j] = True


class _GradRow:
    """One general row on the interval path."""

    def __init__(self, x_row: np.ndarray, t, spec: LossSpec):
        self.row = ExactRow(x_row, t, spec)
        self.x = x_row
        self.t = t
        self.spec = spec
        self.c = exact_coefficients(spec, t)
        self.C = sum(self.c, Fraction(0))
        grp = np.full(spec.V, -1, dtype=np.int64)
        grp[self.row.cols] = self.row.inv
        self.grp = grp
        self._K: dict[int, I.Iv] = {}
        self._p: dict[tuple, I.Iv] = {}

    # -- exact rational elements -----------------------------------------------------------

    def rational(self, j: int) -> "Fraction | None":
        """The exact element (before the mean's 1/D) where it is rational, else None."""
        spec, row = self.spec, self.row
        z = spec.z_loss
        G = len(row.vals)
        n_fin = int(row.counts.sum())
        c_j = self.c[j]
        if spec.softcap is None:
            if n_fin == 1:  # lone finite logit: p = 1, lse = m
                m = Fraction(float(row.vals[0]))
                return self.C + 2 * Fraction(z) * m - c_j
            if z == 0 and G == 1:
                return self.C / n_fin - c_j
            if z == 0 and self.C == 0:
                return -c_j
            return None
        xj = float(self.x[j])
        gy = None
        if z == 0 and G == 1:
            gy = self.C / n_fin - c_j
        elif z == 0 and self.C == 0:
            gy = -c_j
        if gy is not None and (gy == 0 or xj == 0.0):
            return gy
        if n_fin == 1 and (z == 0 or xj == 0.0):  # V = 1: dl/dy = 2 z y - 0
            return Fraction(0)
        return None

    # -- intervals -------------------------------------------------------------------------

    def _Kiv(self, W: int) -> I.Iv:
        if W not in self._K:
            K = I.from_fraction(self.C, W)
            if self.spec.z_loss:
                lse = self.row.parts(W)["lse"]
                K = I.add(K, I.mul_exact(lse, libmp.from_float(2 * self.spec.z_loss), W), W)
            self._K[W] = K
        return self._K[W]

    def _pg(self, g: int, W: int) -> I.Iv:
        key = (g, W)
        if key not in self._p:
            P = self.row.parts(W)
            e = I.exp(I.neg(P["d"][g]), W + 8) if g != len(self.row.vals) - 1 else I.point(1.0)
            self._p[key] = I.div(e, P["onepS"], W)
        return self._p[key]

    def interval(self, j: int, W: int) -> I.Iv:
        """Enclosure of dl/dx_j (before 1/D) at precision W."""
        row = self.row
        P = row.parts(W)
        g = int(self.grp[j])
        K = self._Kiv(W)
        top = g == len(row.vals) - 1
        if top and row.counts[-1] == 1:
            Kc = I.from_fraction(self.C - self.c[j], W)
            if self.spec.z_loss:
                Kc = I.add(Kc, I.mul_exact(P["lse"], libmp.from_float(2 * self.spec.z_loss),
                                           W), W)
            om = I.div(P["S"], P["onepS"], W)
            val = I.sub(Kc, I.mul(K, om, W), W)
        else:
            val = I.sub(I.mul(K, self._pg(g, W), W), I.from_fraction(self.c[j], W), W)
        if self.spec.softcap is not None:
            val = I.mul(val, self._sech2(g, W), W)
        return val

    def _sech2(self, g: int, W: int) -> I.Iv:
        """sech(x / c)**2 of group g's logit (shared by the group's elements)."""
        key = (-1 - g, W)
        if key not in self._p:
            cap = libmp.from_float(self.spec.softcap)
            xr = libmp.from_float(float(self.row.vals[g]))
            arg = I.Iv(libmp.mpf_div(xr, cap, W, I.FLOOR), libmp.mpf_div(xr, cap, W, I.CEIL))
            self._p[key] = I.sech2(arg, W)
        return self._p[key]

    def element(self, j: int, f: Format, inv: "Fraction | None", i: int):
        """(value, hi, lo, err, exactly zero) of one element by Ziv's loop."""
        q = self.rational(j)
        if q is not None:
            if inv is not None:
                q = q * inv
            raw = _rational_raw(q)
            return (I.round_rational(q, f), *_hilo(raw), q == 0)
        W: "int | None" = START_PRECISION
        while W is not None:
            e = self.interval(j, W)
            if inv is not None:
                e = I.mul(e, I.from_fraction(inv, W), W)
            a, b = _round_open((e.lo, e.hi), f)
            if a == b and np.signbit(a) == np.signbit(b) and I.width_ok(e, _HILO_BITS):
                return (a, *_hilo((e.lo, e.hi)), False)
            W = next_precision(W)
        raise ReferenceError(f"row {i}, class {j}: the gradient is not decided at "
                             f"{MAX_PRECISION} bits (enclosure still straddles a rounding "
                             "boundary)")

