"""Certified cross-entropy with the semantics people train with: class weights, ignore_index,
label smoothing, probability targets, torch's reductions, and the LLM extensions z-loss and
logit soft-capping; every value computed exactly and rounded once to the format.

Definitions (torch's ``nn.CrossEntropyLoss``, read from ``aten/src/ATen/native/LossNLL.cpp``
and checked against torch 2.13 in float64).  Row i has logits x (V of them), per-class
weights w (all 1 without ``weight``), label smoothing eps, and

* softcap c (Gemma 2): y = c * tanh(x / c), applied before everything else (otherwise
  y = x).  tanh of a float is irrational: the truth is the exact composition, rounded once
  at the end.  +-inf logits become +-c: soft-capping un-masks -inf logits;
* lse = log(sum_j exp(y_j)),  -log p_j = lse - y_j;
* class-index target t (an integer):
      l = (1 - eps) * w_t * (lse - y_t) + (eps / V) * sum_j w_j * (lse - y_j)
  rows with t == ignore_index give l = 0 (whatever their logits, NaN included);
* probability targets q (a (B, V) float array; torch smooths them as q' = (1 - eps) q + eps/V):
      l = sum_j w_j * ((1 - eps) * q_j + eps / V) * (lse - y_j)
* z-loss z (PaLM; not in torch): z * lse**2 is added to the row's loss (lse of the
  soft-capped logits when softcap is set), and ignored rows get no z-term either;
* reductions: "none" the B row losses; "sum" their sum; "mean" their sum divided by torch's
  denominator D: the sum of w_t over the non-ignored rows (their number without weights)
  for class-index targets, B for probability targets.  So mean = sum / D holds exactly for
  every keyword (the z-term is divided by the same D; LLM code that averages the z-term
  over all B rows computes a different quantity).  D = 0 (all rows ignored, B = 0, weights
  summing to 0) gives sum / 0 with IEEE's signs: NaN for 0 / 0, else +-inf.

Every row is l = sum_j c_j (lse - y_j) + z lse**2 with the coefficients
c_j = (1 - eps) w_t [j = t] + (eps / V) w_j (class index) or w_j ((1 - eps) q_j + eps / V)
(probabilities), C = sum_j c_j.  It is evaluated as
    l = sum_j c_j (m - y_j) + C log1p(S') + z (m + log1p(S'))**2,
m = y_k the row maximum, S' = sum_{j != k} exp(y_j - m): with non-negative coefficients every
term is >= 0, so there is no cancellation, and a confident row keeps its tiny loss.

Non-finite inputs and zero coefficients (decided exactly, before any evaluation):

* a coefficient that is exactly 0 contributes exactly 0, whatever its logit (the convention
  0 * log 0 = 0 of information theory: a masked class with target probability 0, or a
  class of weight 0).  torch computes 0 * inf there and returns NaN;
* an ignored row -> 0; then a NaN logit -> NaN;
* every coefficient 0 and z = 0 -> 0;
* +inf logits: lse = +inf and lse - y_j = +inf for every other logit, so the row is +-inf
  from any c_j != 0 there or from z > 0 (z lse**2 = +inf), NaN if both signs occur.  At a
  lone +inf logit k, lse - y_k -> 0 (the limit); with two or more, lse - y_j at a +inf
  logit is inf - inf: NaN if such a c_j != 0.  No infinite term at all -> 0;
* every logit -inf -> NaN (lse = -inf is undefined);
* a -inf logit j with c_j != 0 -> c_j * (+inf) (sign of c_j; NaN if both signs occur): label
  smoothing makes every class count, so one masked class makes the smoothed loss +inf.
* weights and probability targets must be finite, z >= 0 finite, softcap > 0 finite,
  0 <= eps <= 1: anything else raises (see :func:`validate`).

Rounding: a result that is rational (every coefficient zero but a z-term of a lone finite
logit: z m**2; C = 0 and z = 0: sum_j c_j (m - y_j)) is computed exactly as a fraction and
rounded once.  Everything else (no softcap) is transcendental by Lindemann-Weierstrass (lse
is, when two or more logits are finite, and l is a non-constant polynomial in lse with
rational coefficients), so it is never a rounding midpoint and Ziv's strategy terminates:
an enclosure whose ends both round to the same float, precision doubling from
``START_PRECISION`` to ``MAX_PRECISION`` bits, else :class:`ReferenceError` naming the row.
With softcap, tanh values are transcendental and no midpoint is expected; a row still
undecided at the cap raises.

Two paths, one answer (as :mod:`precision_lab.numerics.reference`): a vectorized evaluation
with a rigorous running error bound -- float64 arithmetic for float16, bfloat16 and float32
results, double-double for float64 results and for the rows float64 leaves undecided
(:mod:`precision_lab.numerics._fastsem`, which states its error model) -- and, for the rows
whose enclosure still does not round to one value, the exact mpmath interval path
(:mod:`precision_lab.numerics._interval`); both give the same bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from typing import Literal

import numpy as np
from mpmath import libmp

from precision_lab.numerics import _fastsem
from precision_lab.numerics import _interval as I
from precision_lab.numerics._ziv import (
    MAX_PRECISION,
    START_PRECISION,
    ReferenceError,
    ReferenceResult,
    _float_enclosure,
    _hilo,
    _round_open,
    next_precision,
)
from precision_lab.numerics.formats import Format, get_format

__all__ = ["LossSpec", "LossArgumentError", "TargetIndexError", "KEYWORDS", "validate",
           "reduction_denominator", "cross_entropy", "cross_entropy_detailed",
           "exact_coefficient", "exact_coefficients", "zero_coefficients", "ReferenceError",
           "ReferenceResult"]

Reduction = Literal["none", "mean", "sum"]
Method = Literal["auto", "exact", "fast"]

#: The loss keywords an implementation may declare (``Capabilities.keywords``);
#: "prob_targets" stands for targets given as a (B, V) float array.
KEYWORDS: frozenset[str] = frozenset({"weight", "ignore_index", "label_smoothing",
                                      "prob_targets", "z_loss", "softcap"})

_HILO_BITS = 102


class LossArgumentError(ValueError, RuntimeError):
    """A bad loss argument torch rejects with RuntimeError (weight shape, label_smoothing
    above 1, ignore_index with probability targets, integer probability targets, floating
    class indices).  Also a ValueError, like every argument error of this package."""


class TargetIndexError(ValueError, IndexError):
    """A class-index target outside [0, V) that is not ignore_index (torch: IndexError
    "Target 5 is out of bounds.").  Also a ValueError."""


@dataclass(frozen=True)
class LossSpec:
    """The validated loss keywords.

    Attributes:
        V: number of classes.
        weight: float64 (V,) per-class weights (exact values), or None (all 1).
        ignore_index: the ignored class index (class-index targets only).
        label_smoothing: eps in [0, 1].
        reduction: "none", "mean" or "sum".
        z_loss: z >= 0.
        softcap: c > 0, or None.
        prob: True for probability targets ((B, V) floats), False for class indices.
    """

    V: int
    weight: "np.ndarray | None"
    ignore_index: int
    label_smoothing: float
    reduction: str
    z_loss: float
    softcap: "float | None"
    prob: bool

    @property
    def a(self) -> Fraction:
        """1 - eps, exactly."""
        return 1 - Fraction(self.label_smoothing)

    @property
    def b(self) -> Fraction:
        """eps / V, exactly."""
        return Fraction(self.label_smoothing) / self.V

    def weights(self) -> np.ndarray:
        """The per-class weights, all 1 without ``weight``."""
        return np.ones(self.V) if self.weight is None else self.weight

    def weight_sum_float(self) -> float:
        """W correctly rounded to float64 (math.fsum; error <= u |W|)."""
        return float(self.V) if self.weight is None else math.fsum(self.weight.tolist())

    @cached_property
    def _wsum_dd(self) -> tuple[float, float, float]:
        if self.weight is None:
            return float(self.V), 0.0, 0.0
        h, l_, fac = _fastsem._dd_sum(self.weight[None, :], np.zeros((1, self.V)))
        err = fac * 2.0 ** -106 * float(np.abs(self.weight).sum()) * 1.01
        return float(h[0]), float(l_[0]), err

    def weight_sum_dd(self) -> tuple[float, float, float]:
        """W as a double-double (hi, lo) and a bound on |W - hi - lo| (a TwoSum tree)."""
        return self._wsum_dd


def validate(logits: np.ndarray, targets: np.ndarray, *, weight=None, ignore_index: int = -100,
             label_smoothing: float = 0.0, reduction: str = "none", z_loss: float = 0.0,
             softcap: "float | None" = None) -> tuple[np.ndarray, np.ndarray, LossSpec]:
    """Check the arguments as torch does and return (x float64 (B, V), targets, spec).

    targets come back as int64 (B,) class indices or float64 (B, V) probabilities (exact
    values).  Errors, in torch's order and with torch's types where torch raises:

    * reduction not none/mean/sum -> ValueError;
    * logits not (B, V) of float16/bfloat16/float32/float64, V >= 1 -> ValueError;
    * targets of the logits' shape but not floating -> LossArgumentError (RuntimeError);
      probability targets with ignore_index >= 0 -> LossArgumentError (torch accepts any
      negative ignore_index with them);
    * targets neither (B,) nor (B, V) -> ValueError (torch: "Expected input batch_size");
      (B,) floats -> LossArgumentError;
    * weight not 1-D with V entries -> LossArgumentError;
    * label_smoothing > 1 -> LossArgumentError; label_smoothing < 0 or NaN -> ValueError
      (torch silently ignores those and computes no smoothing; the reference refuses);
    * a class index outside [0, V) that is not ignore_index -> TargetIndexError (IndexError);
    * not torch's checks (the truth would be undefined): non-finite weights or probability
      targets, z_loss < 0 or non-finite, softcap <= 0 or non-finite -> ValueError.
    """
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', not {reduction!r} "
                         f"(torch: '{reduction} is not a valid value for reduction')")
    x = np.asarray(logits)
    if x.ndim != 2:
        raise ValueError(f"logits must have shape (B, V), got shape {x.shape}")
    try:
        get_format(x.dtype)
    except ValueError:
        raise ValueError(f"logits dtype {x.dtype} is not float16, bfloat16, float32 or "
                         "float64") from None
    B, V = x.shape
    if V == 0:
        raise ValueError("logits need at least one class (V >= 1)")
    tg = np.asarray(targets)
    prob = tg.shape == (B, V) and (V != 1 or tg.ndim == 2)
    if prob:
        if not _is_float(tg.dtype):
            raise LossArgumentError("probability targets (shape (B, V)) must be floating, got "
                                    f"dtype {tg.dtype} (torch: 'Expected floating point type "
                                    "for target with class probabilities')")
        if int(ignore_index) >= 0:
            raise LossArgumentError(f"ignore_index={ignore_index} is not supported with "
                                    "probability targets (torch: 'ignore_index is not "
                                    "supported for floating point target')")
    elif tg.shape != (B,):
        raise ValueError(f"targets must have shape ({B},) (class indices) or ({B}, {V}) "
                         f"(probabilities), got shape {tg.shape}")
    elif B and not np.issubdtype(tg.dtype, np.integer):
        raise LossArgumentError(f"class-index targets must be integers, got dtype {tg.dtype} "
                                "(torch: 'expected target dtype to be Long or Byte')")
    w = None
    if weight is not None:
        wa = np.asarray(weight)
        if wa.shape != (V,):
            raise LossArgumentError(f"weight must have shape ({V},) (one per class), got shape "
                                    f"{wa.shape} (torch: 'weight tensor should be defined "
                                    f"either for all {V} classes or no classes')")
        w = _exact_float64(wa, "weight")
        if not np.isfinite(w).all():
            j = int(np.flatnonzero(~np.isfinite(w))[0])
            raise ValueError(f"weight[{j}] = {w[j]} is not finite; weights must be finite")
    eps = float(label_smoothing)
    if eps > 1.0:
        raise LossArgumentError(f"label_smoothing must be between 0.0 and 1.0, got {eps}")
    if not eps >= 0.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0, got {eps} (torch "
                         "silently computes no smoothing for it; the reference refuses)")
    z = float(z_loss)
    if not (math.isfinite(z) and z >= 0.0):
        raise ValueError(f"z_loss must be a finite number >= 0, got {z_loss!r}")
    c = None
    if softcap is not None:
        c = float(softcap)
        if not (math.isfinite(c) and c > 0.0):
            raise ValueError(f"softcap must be a finite number > 0 or None, got {softcap!r}")
    if prob:
        q = _exact_float64(tg, "targets")
        bad = np.flatnonzero(~np.isfinite(q).all(axis=1))
        if bad.size:
            raise ValueError(f"row {int(bad[0])}: probability targets must be finite")
        t_out = q
    else:
        t_out = tg.astype(np.int64)
        bad = np.flatnonzero(((t_out < 0) | (t_out >= V)) & (t_out != int(ignore_index)))
        if bad.size:
            i = int(bad[0])
            raise TargetIndexError(f"row {i}: target {int(t_out[i])} is out of bounds [0, {V}) "
                                   f"and not ignore_index={int(ignore_index)}"
                                   + (f" ({bad.size} rows in all)" if bad.size > 1 else ""))
    x64 = x.astype(np.float64, copy=False)  # exact: every format embeds in float64
    return x64, t_out, LossSpec(V, w, int(ignore_index), eps, reduction, z, c, prob)


def _is_float(dt: np.dtype) -> bool:
    try:
        get_format(dt)
        return True
    except ValueError:
        return np.issubdtype(dt, np.floating)


def _exact_float64(a: np.ndarray, name: str) -> np.ndarray:
    """float64 copy of an integer or float array; refuses values float64 cannot hold."""
    if a.dtype == object or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"{name} must be a real float or integer array, got dtype {a.dtype}")
    if _is_float(a.dtype) and a.dtype.itemsize <= 8:
        return a.astype(np.float64)
    if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        out = a.astype(np.float64)
        if np.issubdtype(a.dtype, np.integer) and (np.abs(a) > 2**53).any():
            raise ValueError(f"{name} has integers beyond 2**53 (not exact in float64)")
        return out
    raise ValueError(f"{name} must be float16, bfloat16, float32, float64 or integer, got "
                     f"dtype {a.dtype}")


# ---------------------------------------------------------------------------------------
# the reduction's denominator

def reduction_denominator(targets: np.ndarray, spec: LossSpec) -> Fraction:
    """torch's "mean" denominator D, exactly: B for probability targets; else the sum of
    w_t over the non-ignored rows (their number without weights)."""
    t = np.asarray(targets)
    if spec.prob:
        return Fraction(t.shape[0])
    keep = t[t != spec.ignore_index]
    if spec.weight is None:
        return Fraction(int(keep.size))
    return _fraction(I.exact_sum(spec.weight[keep].tolist()))


def _fraction(raw: tuple) -> Fraction:
    sign, man, exp, _ = raw
    if not man:
        return Fraction(0)
    v = Fraction(man) * (Fraction(2) ** exp)
    return -v if sign else v


def _raw(q: Fraction) -> tuple:
    """Exact raw mpf of a dyadic fraction."""
    n, d = q.numerator, q.denominator
    assert d & (d - 1) == 0
    return libmp.from_man_exp(n, -(d.bit_length() - 1))


# ---------------------------------------------------------------------------------------
# coefficients and the non-finite rules

def coefficient_signs(x_row: np.ndarray, t, spec: LossSpec, cols: np.ndarray) -> np.ndarray:
    """Exact sign (-1, 0, 1) of c_j at the columns ``cols`` of one row."""
    w = spec.weights()[cols]
    if not spec.prob:  # c_j = w_j ((1 - eps) [j = t] + eps / V), the bracket >= 0
        on_t = cols == int(t)
        factor_pos = on_t | (spec.label_smoothing > 0.0)
        return (np.sign(w) * factor_pos).astype(np.int64)
    q = np.asarray(t)[cols]
    a, b = 1.0 - spec.label_smoothing, spec.label_smoothing / spec.V
    out = np.sign(w) * np.sign(a * q + b)
    near = np.abs(a * q + b) <= 1e-6 * max(b, abs(a * q).max(initial=0.0)) + 1e-300
    for n in np.flatnonzero(near).tolist():
        exact = spec.a * Fraction(float(q[n])) + spec.b
        out[n] = np.sign(w[n]) * ((exact > 0) - (exact < 0))
    return out.astype(np.int64)


def _zero_rows(T: np.ndarray, spec: LossSpec) -> np.ndarray:
    """Rows (non-ignored or not) whose coefficients are all exactly 0."""
    w = spec.weights()
    if not spec.prob:
        wt = w[np.where((T >= 0) & (T < spec.V), T, 0)]
        if spec.label_smoothing == 0.0:
            return wt == 0
        return (wt == 0) & bool((w == 0).all())
    zero_q = _prob_factor_zero(T, spec)
    return ((w[None, :] == 0) | zero_q).all(axis=1)


def _prob_factor_zero(q: np.ndarray, spec: LossSpec) -> np.ndarray:
    """(1 - eps) q_j + eps / V == 0, exactly."""
    eps = spec.label_smoothing
    if eps == 0.0:
        return q == 0
    if eps == 1.0:
        return np.zeros(q.shape, bool)
    a, b = 1.0 - eps, eps / spec.V
    with np.errstate(all="ignore"):
        near = np.abs(a * q + b) <= 1e-6 * b
    out = np.zeros(q.shape, bool)
    for i, j in zip(*np.nonzero(near)):
        out[i, j] = spec.a * Fraction(float(q[i, j])) + spec.b == 0
    return out


@dataclass
class _Classified:
    special: np.ndarray   # bool (B,): decided by the rules
    value: np.ndarray     # float64 (B,): the exact value where special
    general: np.ndarray   # int indices of the other rows


def classify(x: np.ndarray, T: np.ndarray, spec: LossSpec) -> _Classified:
    """Apply the module docstring's rules to every row."""
    B, V = x.shape
    special = np.zeros(B, bool)
    val = np.zeros(B)
    if not spec.prob:
        ign = T == spec.ignore_index
        special |= ign  # value 0
    else:
        ign = np.zeros(B, bool)
    zero = _zero_rows(T, spec) & ~ign & (spec.z_loss == 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        clean = np.isfinite(x.sum(axis=1)) if spec.softcap is None else ~np.isnan(x.sum(axis=1))
    odd = np.flatnonzero(~clean & ~ign)
    for i in odd.tolist():
        v = _special_value(x[i], T[i], spec, bool(zero[i]))
        if v is not None:
            special[i], val[i] = True, v
    rest = zero & ~special
    special[rest] = True  # every coefficient 0, no z-term: exactly 0
    return _Classified(special, val, np.flatnonzero(~special))


def _special_value(row: np.ndarray, t, spec: LossSpec, zero: bool) -> "float | None":
    """The rules for a row with a non-finite logit; None if it is a general row."""
    if np.isnan(row).any():
        return math.nan
    if zero:
        return 0.0
    if spec.softcap is not None:
        return None  # +-inf become +-c: finite
    pinf = np.flatnonzero(row == np.inf)
    ninf = np.flatnonzero(row == -np.inf)
    if pinf.size:
        if pinf.size >= 2 and coefficient_signs(row, t, spec, pinf).any():
            return math.nan  # lse - y_j = inf - inf for an infinite logit that counts
        others = np.flatnonzero(row != np.inf)
        signs = set(coefficient_signs(row, t, spec, others).tolist()) - {0}
        if spec.z_loss > 0:
            signs.add(1)
        return _combine_inf(signs, 0.0)
    if ninf.size == spec.V:
        return math.nan
    signs = set(coefficient_signs(row, t, spec, ninf).tolist()) - {0}
    if not signs:
        return None
    return _combine_inf(signs, math.nan)


def _combine_inf(signs: set, none_value: float) -> float:
    if not signs:
        return none_value
    if len(signs) == 2:
        return math.nan
    return math.inf if 1 in signs else -math.inf


# ---------------------------------------------------------------------------------------
# the exact path: one general row, mpmath intervals

class ExactRow:
    """One general row prepared for interval evaluation at any precision.

    Logits are grouped by value (equal logits share one exp); each group carries the exact
    sum of its weights (Wg) and of its target coefficients (Ag: w_t on the target's group
    for class indices, sum of w_j q_j for probabilities).  -inf logits (whose coefficients
    are all 0 in a general row) are left out.  Used by the gradient too."""

    def __init__(self, row: np.ndarray, t, spec: LossSpec):
        self.spec = spec
        c = spec.softcap
        fin = ~np.isnan(row) if c is not None else np.isfinite(row)
        cols = np.flatnonzero(fin)
        xs = row[cols]
        vals, inv, counts = np.unique(xs, return_inverse=True, return_counts=True)
        self.vals, self.counts, self.cols, self.inv = vals, counts, cols, inv
        w = spec.weights()
        G = len(vals)
        Wg = [I.ZERO] * G
        Ag = [I.ZERO] * G
        wl = w[cols].tolist()
        for g, wj in zip(inv.tolist(), wl):
            if wj:
                Wg[g] = libmp.mpf_add(Wg[g], libmp.from_float(wj), 0)
        if spec.prob:
            ql = np.asarray(t)[cols].tolist()
            for g, wj, qj in zip(inv.tolist(), wl, ql):
                if wj and qj:
                    Ag[g] = libmp.mpf_add(Ag[g], libmp.mpf_mul(libmp.from_float(wj),
                                                               libmp.from_float(qj), 0), 0)
            self.t = -1
        else:
            self.t = int(t)
            gt = int(np.searchsorted(vals, row[self.t]))
            Ag[gt] = libmp.from_float(float(w[self.t]))
        self.Wg, self.Ag = Wg, Ag
        self.W = I.exact_sum(Wg)
        self.A = I.exact_sum(Ag)
        self.a = libmp.mpf_sub(I.ONE, libmp.from_float(spec.label_smoothing), 0)  # exact
        self.eps = libmp.from_float(spec.label_smoothing)
        self.z = libmp.from_float(spec.z_loss)
        self._cache: dict[int, dict] = {}

    # -- exact values where the result is rational ---------------------------------------

    def rational_loss(self) -> "Fraction | None":
        """The exact loss where it is rational (module docstring), else None."""
        if not hasattr(self, "_rational"):
            self._rational = self._rational_loss()
        return self._rational

    def _rational_loss(self) -> "Fraction | None":
        spec = self.spec
        lone = len(self.vals) == 1 and self.counts[0] == 1
        C = spec.a * _fraction(self.A) + spec.b * _fraction(self.W)
        if spec.softcap is None:
            m = Fraction(float(self.vals[-1]))
            if lone:
                return Fraction(spec.z_loss) * m * m
            if C == 0 and spec.z_loss == 0:
                tot = Fraction(0)
                for v, Ag, Wg in zip(self.vals.tolist(), self.Ag, self.Wg):
                    tot += (spec.a * _fraction(Ag) + spec.b * _fraction(Wg)) * (m - Fraction(v))
                return tot
            return None
        if lone and (spec.z_loss == 0 or self.vals[0] == 0):
            return Fraction(0)
        if C == 0 and spec.z_loss == 0:
            net: dict[float, Fraction] = {}
            for v, Ag, Wg in zip(self.vals.tolist(), self.Ag, self.Wg):
                cg = spec.a * _fraction(Ag) + spec.b * _fraction(Wg)
                if v != 0:
                    net[abs(v)] = net.get(abs(v), Fraction(0)) + (cg if v > 0 else -cg)
            if all(n == 0 for n in net.values()):
                return Fraction(0)
        return None

    # -- interval evaluation -------------------------------------------------------------

    def _y(self, v: float, W: int) -> I.Iv:
        c = self.spec.softcap
        if c is None:
            return I.point(v)
        if math.isinf(v):
            return I.point(math.copysign(c, v))
        if v == 0.0:
            return I.point(0.0)
        cr = libmp.from_float(c)
        arg = I.Iv(libmp.mpf_div(libmp.from_float(v), cr, W, I.FLOOR),
                   libmp.mpf_div(libmp.from_float(v), cr, W, I.CEIL))
        return I.mul_exact(I.tanh(arg, W), cr, W)

    def parts(self, W: int) -> dict:
        """Intervals at precision W: y and d per group, S', 1 + S', L1 = log1p(S'), lse."""
        if W in self._cache:
            return self._cache[W]
        G = len(self.vals)
        ys = [self._y(v, W) for v in self.vals.tolist()]
        m = ys[-1]
        ds = []
        for g in range(G):
            if g == G - 1:
                ds.append(I.point(0.0))
            elif self.spec.softcap is None:
                r = libmp.mpf_sub(m.lo, ys[g].lo, 0)  # exact
                ds.append(I.Iv(r, r))
            else:
                d = I.sub(m, ys[g], W)
                ds.append(I.Iv(I._max([d.lo, I.ZERO]), d.hi))
        nb = max(int(self.counts.sum()), 2).bit_length()
        Q = W + nb + 4
        # terms below 2**-(Q + nb) of the largest one are bounded, not computed
        n_other = self.counts.copy()
        n_other[-1] -= 1
        live = np.flatnonzero(n_other > 0)
        S = I.Iv(I.ZERO, I.ZERO)
        if live.size:
            dmin = ds[int(live[-1])].lo
            thr = libmp.mpf_add(dmin, libmp.from_float((Q + nb + 2) * 0.6932), 64, I.CEIL)
            skipped = 0
            skip_bound_d = None
            for g in live[::-1].tolist():  # largest terms first (smallest d)
                if libmp.mpf_gt(ds[g].lo, thr):
                    skipped += int(n_other[: g + 1][n_other[: g + 1] > 0].sum())
                    skip_bound_d = ds[g].lo
                    break
                e = I.exp(I.neg(ds[g]), Q)
                cnt = libmp.from_int(int(n_other[g]))
                S = I.add(S, I.mul_exact(e, cnt, Q), Q)
            if skipped:
                top = libmp.mpf_mul(libmp.from_int(skipped),
                                    I._up(libmp.mpf_exp(libmp.mpf_neg(skip_bound_d), Q, I.CEIL),
                                          Q), Q, I.CEIL)
                S = I.Iv(S.lo, libmp.mpf_add(S.hi, top, Q, I.CEIL))
        L1 = I.log1p(S, W)
        out = {"y": ys, "d": ds, "S": S, "onepS": I.add(I.point(1.0), S, W), "L1": L1,
               "lse": I.add(m, L1, W), "m": m}
        self._cache[W] = out
        return out

    def loss(self, W: int) -> I.Iv:
        """Enclosure of the row loss at precision W."""
        p = self.parts(W)
        spec = self.spec
        L1, ds = p["L1"], p["d"]
        acc = I.mul_exact(L1, self.A, W)  # P = sum_g Ag d_g + A L1
        for g, Ag in enumerate(self.Ag):
            if Ag != I.ZERO:
                acc = I.add(acc, I.mul_exact(ds[g], Ag, W), W)
        total = I.mul_exact(acc, self.a, W)
        if spec.label_smoothing:
            q = I.mul_exact(L1, self.W, W)  # Q = sum_g Wg d_g + W L1
            for g, Wg in enumerate(self.Wg):
                if Wg != I.ZERO:
                    q = I.add(q, I.mul_exact(ds[g], Wg, W), W)
            q = I.mul_exact(q, self.eps, W)
            nV = libmp.from_int(spec.V)
            q = I.Iv(libmp.mpf_div(q.lo, nV, W, I.FLOOR), libmp.mpf_div(q.hi, nV, W, I.CEIL))
            total = I.add(total, q, W)
        if spec.z_loss:
            total = I.add(total, I.mul_exact(I.sqr(p["lse"], W), self.z, W), W)
        return total


def _evaluate_loss_row(row: ExactRow, f: Format, index: int):
    """(value, hi, lo, err, raw enclosure) of one general row by Ziv's loop."""
    q = row.rational_loss()
    if q is not None:
        v = I.round_rational(q, f)
        raw = _rational_raw(q)
        return (v, *_hilo(raw), raw)
    W: "int | None" = START_PRECISION
    while W is not None:
        e = row.loss(W)
        a, b = _round_open((e.lo, e.hi), f)
        if a == b and I.width_ok(e, _HILO_BITS):
            return (a, *_hilo((e.lo, e.hi)), (e.lo, e.hi))
        W = next_precision(W)
    raise ReferenceError(f"row {index}: the loss is not decided at {MAX_PRECISION} bits "
                         "(enclosure still straddles a rounding boundary)")


def _rational_raw(q: Fraction) -> tuple[tuple, tuple]:
    """A raw enclosure of a rational: exact for a dyadic one, 300 bits otherwise."""
    if q.denominator & (q.denominator - 1) == 0:
        r = _raw(q)
        return r, r
    e = I.from_fraction(q, 300)
    return e.lo, e.hi


# ---------------------------------------------------------------------------------------
# the public functions

def cross_entropy(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
                  weight=None, ignore_index: int = -100, label_smoothing: float = 0.0,
                  reduction: Reduction = "none", z_loss: float = 0.0,
                  softcap: "float | None" = None) -> np.ndarray:
    """Correctly rounded cross-entropy with torch's semantics; see the module docstring.

    Returns:
        shape (B,) of fmt's dtype (reduction "none"), or a 0-d array of fmt's dtype.
    """
    return cross_entropy_detailed(logits, targets, fmt, weight=weight,
                                  ignore_index=ignore_index, label_smoothing=label_smoothing,
                                  reduction=reduction, z_loss=z_loss, softcap=softcap).values


def cross_entropy_detailed(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
                           weight=None, ignore_index: int = -100, label_smoothing: float = 0.0,
                           reduction: Reduction = "none", z_loss: float = 0.0,
                           softcap: "float | None" = None,
                           method: Method = "auto") -> ReferenceResult:
    """The loss of :func:`cross_entropy` with the unrounded truth next to it.

    Args:
        logits: (B, V) float16/bfloat16/float32/float64, exact values.
        targets: (B,) integer class indices, or (B, V) float probabilities (exact values).
        fmt: the format of the result.
        weight, ignore_index, label_smoothing, reduction, z_loss, softcap: module docstring.
        method: "auto"/"fast" (vectorized bounded evaluation, undecided rows exact) or
            "exact" (every row on the interval path); the values are identical.

    Returns:
        :class:`~precision_lab.numerics.reference.ReferenceResult`: values (rounded), hi/lo
        (float64 double-double of the exact value), err (bound on |hi + lo - exact|),
        slow_rows, special_rows (decided by the rules: ignored, zero, non-finite).

    Raises:
        the errors of :func:`validate`; ReferenceError: a row or the reduction undecided
        at MAX_PRECISION bits.
    """
    f = get_format(fmt)
    if method not in ("auto", "exact", "fast"):
        raise ValueError(f"method must be 'auto', 'exact' or 'fast', not {method!r}")
    x, T, spec = validate(logits, targets, weight=weight, ignore_index=ignore_index,
                          label_smoothing=label_smoothing, reduction=reduction,
                          z_loss=z_loss, softcap=softcap)
    B = x.shape[0]
    cl = classify(x, T, spec)
    values = np.zeros(B, dtype=f.np_dtype)
    hi = np.where(cl.special, cl.value, 0.0)
    lo = np.zeros(B)
    err = np.zeros(B)
    values[cl.special] = cl.value[cl.special].astype(f.np_dtype)  # 0, +-inf, NaN: exact
    enclosures: dict[int, tuple] = {}
    general = cl.general
    todo = general
    if method != "exact" and general.size:
        every = general.size == B  # the common case: no copy of the batch
        fr = _fastsem.loss_rows(x if every else x[general], T if every else T[general], spec, f)
        good = general[fr.ok]
        values[good] = fr.values[fr.ok]
        hi[good], lo[good], err[good] = fr.hi[fr.ok], fr.lo[fr.ok], fr.err[fr.ok]
        if reduction != "none":
            for i, h, l_, e in zip(good.tolist(), fr.hi[fr.ok].tolist(), fr.lo[fr.ok].tolist(),
                                   fr.err[fr.ok].tolist()):
                enclosures[i] = _signed_enclosure(h, l_, e)
        todo = general[~fr.ok]
    rows: dict[int, ExactRow] = {}
    for i in todo.tolist():
        rows[i] = ExactRow(x[i], T[i], spec)
        v, h, l_, e, enc = _evaluate_loss_row(rows[i], f, i)
        values[i], hi[i], lo[i], err[i] = v, h, l_, e
        enclosures[i] = enc
    used = "exact" if method == "exact" else "fast"
    n_special = int(cl.special.sum())
    if reduction == "none":
        return ReferenceResult(values, hi, lo, err, len(todo), n_special, B, used)
    v, h, l_, e, extra = _reduce(x, T, spec, f, cl, enclosures, rows)
    return ReferenceResult(np.asarray(v, dtype=f.np_dtype), np.asarray(h), np.asarray(l_),
                           np.asarray(e), len(todo) + extra, n_special, B, used)


def _signed_enclosure(h: float, l_: float, e: float) -> tuple[tuple, tuple]:
    """Exact raw enclosure [h + l - e, h + l + e] (losses may be negative with negative
    weights, so no clamping at 0)."""
    if h >= 0 and h - e >= 0:
        return _float_enclosure(h, l_, e)
    c = libmp.mpf_add(libmp.from_float(h), libmp.from_float(l_), 0)
    r = libmp.from_float(e)
    return libmp.mpf_sub(c, r, 0), libmp.mpf_add(c, r, 0)


def _reduce(x, T, spec: LossSpec, f: Format, cl: _Classified, enclosures: dict,
            rows: dict):
    """Correctly rounded sum / mean of the exact row losses: (value, hi, lo, err, extra
    rows put on the exact path)."""
    B = x.shape[0]
    sv = cl.value[cl.special]
    D = reduction_denominator(T, spec) if spec.reduction == "mean" else Fraction(1)
    if np.isnan(sv).any() or (np.isinf(sv).any() and len(set(np.sign(sv[np.isinf(sv)]))) > 1):
        return math.nan, math.nan, 0.0, math.nan, 0
    if np.isinf(sv).any():
        s = float(np.sign(sv[np.isinf(sv)][0]))
        v = s * math.inf / float(D) if D != 0 else math.copysign(math.inf, s)
        return v, v, 0.0, math.inf, 0
    gen = cl.general.tolist()
    if not gen:  # every row exactly 0
        if D == 0:
            return math.nan, math.nan, 0.0, math.nan, 0
        return 0.0, 0.0, 0.0, 0.0, 0
    extra = 0
    W: "int | None" = START_PRECISION
    while True:
        exact = _rational_sum(gen, rows)
        if exact is not None:  # every row an exact rational: an exact sum
            if D == 0:
                v = math.nan if exact == 0 else math.copysign(math.inf, exact)
                return v, v, 0.0, (math.nan if exact == 0 else math.inf), extra
            q = exact / D
            raw = _rational_raw(q)
            return (I.round_rational(q, f), *_hilo(raw), extra)
        Wd = (MAX_PRECISION if W is None else W) + 2 * max(B, 1).bit_length() + 16
        s_lo = s_hi = I.ZERO
        for i in gen:
            a, b = enclosures[i]
            s_lo = libmp.mpf_add(s_lo, a, Wd, I.FLOOR)
            s_hi = libmp.mpf_add(s_hi, b, Wd, I.CEIL)
        S = I.Iv(s_lo, s_hi)
        if D == 0:
            if libmp.mpf_sign(s_lo) > 0 or libmp.mpf_sign(s_hi) < 0:
                v = math.inf if libmp.mpf_sign(s_lo) > 0 else -math.inf
                return v, v, 0.0, math.inf, extra
        else:
            if D != 1:
                S = I.div(S, I.from_fraction(D, Wd), Wd)
            a, b = _round_open((S.lo, S.hi), f)
            if a == b:
                return (a, *_hilo((S.lo, S.hi)), extra)
        if W is None:  # the enclosures were refined at MAX_PRECISION already
            raise ReferenceError(f"{spec.reduction} of rows 0..{B - 1}: not decided at "
                                 f"{MAX_PRECISION} bits")
        for i in gen:
            if i not in rows:
                rows[i] = ExactRow(x[i], T[i], spec)
                extra += 1
            q = rows[i].rational_loss()
            if q is None:
                e = rows[i].loss(W)
                enclosures[i] = (e.lo, e.hi)
            else:
                enclosures[i] = _rational_raw(q)
        W = next_precision(W)


def _rational_sum(gen: list, rows: dict) -> "Fraction | None":
    """The exact sum of the rows if each is on the exact path with a rational loss."""
    tot = Fraction(0)
    for i in gen:
        q = rows[i].rational_loss() if i in rows else None
        if q is None:
            return None
        tot += q
    return tot


def exact_coefficient(spec: LossSpec, t, j: int) -> Fraction:
    """The exact coefficient c_j of a row with target t (an index or a probability row)."""
    wj = Fraction(float(spec.weight[j])) if spec.weight is not None else Fraction(1)
    if spec.prob:
        return wj * (spec.a * Fraction(float(t[j])) + spec.b)
    return wj * ((spec.a if j == int(t) else 0) + spec.b)


def exact_coefficients(spec: LossSpec, t) -> list[Fraction]:
    """The exact coefficients c_j of one row."""
    return [exact_coefficient(spec, t, j) for j in range(spec.V)]


def zero_coefficients(T: np.ndarray, spec: LossSpec) -> np.ndarray:
    """(B, V) bool: c_j == 0 exactly."""
    B, V = len(T), spec.V
    w = spec.weights()
    if spec.prob:
        return (w[None, :] == 0) | _prob_factor_zero(T, spec)
    z = np.broadcast_to((w == 0) | (spec.label_smoothing == 0.0), (B, V)).copy()
    rows = np.flatnonzero((T >= 0) & (T < V))
    z[rows, T[rows]] = w[T[rows]] == 0
    return z

