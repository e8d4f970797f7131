r"""Condition numbers of the cross-entropy loss and forward error bounds for its algorithms.

Notation: a row of logits :math:`x \in \mathbb{R}^n` (n = V classes), target t,
:math:`y = \mathrm{lse}(x) = \log\sum_i e^{x_i}`, softmax :math:`p_i = e^{x_i - y}`, and the
loss :math:`f(x) = y - x_t = -\log p_t \ge 0`.  u = 2**-p is the format's unit roundoff,
:math:`\tau = 2^{e_{min}}` its smallest normal number.  Everything here is vectorized over a
batch (B, n), evaluated in float64 from the logits as given (every format here widens exactly
into float64), in the log domain where a float64 quantity could underflow: the loss of
[800, 0, 1] (target 0) is about 1e-348, below float64's range, and its condition number,
800.73, is still computed to ~1e-13.  Masked classes (-inf logits) are left out of every
sum (p_i = 0 exactly, and a relative perturbation keeps -inf).

Condition number
----------------
Perturb each logit relatively, :math:`\tilde x_i = x_i(1 + \delta_i)` with
:math:`|\delta_i| \le \epsilon`.  Since :math:`\partial y/\partial x_i = p_i`,

.. math:: \partial f/\partial x_i = p_i - [i = t],

so to first order :math:`f(\tilde x) - f(x) = \sum_i (p_i - [i=t])\, x_i \delta_i`, whose
largest magnitude over the allowed :math:`\delta` is :math:`\epsilon\sum_i |x_i|\,|p_i - [i=t]|`.
Hence the componentwise relative condition number is

.. math:: \kappa_f(x, t) = \frac{\sum_i |x_i|\,|p_i - [i = t]|}{|f(x)|}
          = \frac{\sum_{i \ne t} (|x_t| + |x_i|)\, p_i}{-\log p_t}

(using :math:`1 - p_t = \sum_{i\ne t} p_i`, which also avoids cancelling), and likewise
:math:`\kappa_{lse}(x) = \sum_i |x_i| p_i / |y|`.  What it says about the confident regime:
when t is the argmax by a wide margin, :math:`1 - p_t \approx f` and
:math:`p_i \approx e^{x_i - x_t}`, so :math:`\kappa_f \approx |x_t| + \sum_{i\ne t}|x_i|p_i/f`,
a modest number (21.575 for x = [20, 0, 1, 2], t = 0, where f = 2.29e-8).  A tiny loss is
therefore NOT an ill-conditioned problem: an algorithm that returns 0 there (relative error
1) is unstable, and the cancellation in ``lse - x_t`` is the algorithm's doing, not the data's.

Error model of the bounds (:data:`LIBRARY_ULP`)
----------------------------------------------
Each operation of the registry's numpy implementations is one of

* ``+ - * /`` in the format: correctly rounded (see :mod:`precision_lab.implementations`),
  :math:`|\hat v - v| \le u \max(|v|, \tau)` (an exact sum or difference that is subnormal is
  exact, so there the term vanishes);
* ``exp``, ``log``, ``log1p`` of the library: within :math:`\mu` ULPs of the exact value,
  :math:`\mu` = ``LIBRARY_ULP[(format, function)]``, i.e.
  :math:`|\hat v - v| \le \mu\,\mathrm{ulp}(v) \le \rho u \max(|v|, \tau)` with
  :math:`\rho = 2\mu` (ulp(v) <= 2u|v| in the normal range, = 2u tau below it).

The table is measured on this machine (``benchmarks/measure_library_ulp.py``) and, where a
library publishes a tolerance, widened to it, so that it also covers numpy's other SIMD
targets; the comment at the table says which number is which.  The bounds hold wherever the
libraries stay within the table.

Bounds derived here for the registry's implementations (rigorous under that model)
----------------------------------------------------------------------------------
With :math:`a = \max x` (index k), :math:`w_j = e^{x_j - a}`, :math:`h = \lceil\log_2 n\rceil`
(the depth of the pairwise sum), :math:`\gamma = (1 + u)^h - 1`:

* the shifted exponentials: ``fl(x_j - a)`` errs by at most :math:`u(a - x_j)`, which exp
  turns into the factor :math:`e^{\pm u(a - x_j)}`, so with :math:`g_j = \mathrm{expm1}(u(a - x_j))`
  :math:`|\hat e_j - w_j| \le w_j g_j + \rho_{exp} u \max(w_j(1 + g_j), \tau) =: u A_j`;
* a pairwise sum of such terms: :math:`|\hat s - S| \le (1+\gamma)\, u\sum_j A_j + \gamma S`.

``lse`` (``fl(fl(a + log(s)) - x_t)``, s including the k term): with :math:`S' = \sum_j w_j
\ge 1` and :math:`r = |\hat s - S'|/S'`, :math:`|\log\hat s - \log S'| \le -\log(1 - r) =: d`,
then :math:`E_l = d + \rho_{log} u \max(\log S' + d, \tau)`, :math:`E_y = E_l + u(|y| + E_l)`,
:math:`E_f = E_y + u(f + E_y)`.

``lse_log1p`` (``fl(fl(a - x_t) + log1p(s))``, s without the k term): with
:math:`S = \sum_{j\ne k} w_j` and :math:`\Delta = |\hat s - S|`,
:math:`d = \Delta / (1 + \max(S - \Delta, 0))`,
:math:`E_l = d + \rho_{log1p} u \max(\log(1 + S) + d, \tau)`,
:math:`E_f = u(a - x_t) + E_l + u(f + u(a - x_t) + E_l)`.  When t = k this is
:math:`\approx f(2 + h + \ldots)u`: no cancellation, however small the loss.

``naive`` (``-log(exp(x_t) / sum(exp(x)))``): the exponentials take the exact logits,
:math:`|\hat e_j - e^{x_j}| \le \rho_{exp} u \max(e^{x_j}, \tau)`; with the relative errors
:math:`r_t` of :math:`\hat e_t` and :math:`r_s` of the sum, the quotient lies in
:math:`p[(1 - r_t)/(1 + r_s), (1 + r_t)/(1 - r_s)]`, the division adds
:math:`u\max(q, \tau)`, and with the resulting relative deviations
:math:`\delta_\uparrow, \delta_\downarrow` of :math:`\hat p`,
:math:`d = \max(\log(1 + \delta_\uparrow), -\log(1 - \delta_\downarrow))` and
:math:`E_f = d + \rho_{log} u \max(f + d, \tau)`.

Each function returns :math:`E_f / (u f)` (the bound on the RELATIVE error of the loss, in
units of u), inflated by :math:`1 + 2^{-20}` for the float64 evaluation of the bound itself.
No bound is given -- NaN, "does not apply" -- where the model does not cover the row: a
possible overflow of an intermediate (an exp in ``naive``, the sum, ``a - x_t``, the loss
itself), a possibly zero ``exp(x_t)`` or quotient in ``naive``, logits that are not values of
the format (the implementation would first round them: the bound is for the algorithm on
logits of the format), NaN or +inf logits, a masked target (the loss is +inf), and a zero loss
(the target the only finite logit: the relative error is undefined).

Bounds of Blanchard, Higham & Higham (IMA J. Numer. Anal. 41(4), 2021): ESTIMATES
--------------------------------------------------------------------------------
Their leading-order relative error bounds on the computed lse, in units of u (Thm 3.2 and
Thm 4.2, as in their test script ``chop_test_softmax.m``):

* unshifted ``log(sum(exp(x)))``:        :math:`B^{lse}_{un} = 1 + (n + 1)/|y|`;
* shifted ``a + log1p(sum_{i!=k} exp(x_i - a))``: :math:`B^{lse}_{sh} = |y + n - \min x| / |y|`.

Carried to the loss (ours): :math:`B^{loss} = B^{lse}|y|/|f| + 1`.  These are first-order
and assume correctly rounded exp/log/log1p; they are NOT bounds: the shifted formula falls
below the rounding of lse itself when all logits are large and close (min x > n, e.g. logits
around 700), where measured errors exceed it, and numpy's float32 exp/log/log1p are not
correctly rounded.  Print them as "BHH's leading-order estimate", never as a bound;
:func:`derived_loss_bound` is the bound.

Units: every bound function returns a float64 array of bounds on the RELATIVE error of the
loss in units of u.  :func:`to_ulps` converts such a bound to ULPs of the exact value, and
:func:`measured_in_u` converts a measured error to the same units as the bounds.
"""

from __future__ import annotations

import math

import numpy as np

from precision_lab.numerics.formats import (
    Format,
    as_array,
    get_format,
    to_format,
    ulp_exponent_array,
)

__all__ = [
    "LIBRARY_ULP",
    "LIBRARY_MODEL",
    "library_ulp",
    "RowStats",
    "row_stats",
    "log_loss",
    "condition_number",
    "condition_number_lse",
    "bhh_lse_bound",
    "bhh_loss_bound",
    "derived_loss_bound",
    "DERIVED_ALGORITHMS",
    "to_rigorous",
    "to_ulps",
    "measured_in_u",
]

#: Error model of the libraries' elementary functions, as the numpy implementations call
#: them: the largest error, in ULPs of the exact result, that the bounds assume for each
#: (format, function).  Measured on x86_64 (numpy 2.4.6 with its AVX512 kernels, ml_dtypes
#: 0.6.0) by ``benchmarks/measure_library_ulp.py``; where the library publishes a larger
#: tolerance (NumPy's accuracy tests: float32 exp 3, log 4, log1p 2, float64 1 ULP from the
#: correctly rounded value, i.e. +0.5 from the exact one), the table takes that, so that it
#: covers numpy's other SIMD targets too.
#:
#: * float16 (numpy) and bfloat16 (ml_dtypes) evaluate the float32 function and round: the
#:   error is at most 0.5 + 2 * 4.5 * 2**(p32 - p) ULP (the factor 2 for a binade change);
#:   measured exhaustively (every input, against mpmath): float16 exp 0.500272, log
#:   0.500036, log1p 0.500009; bfloat16 exp 0.499988, log 0.499996, log1p 0.499914.
#: * float32: NumPy's tolerance + 0.5; measured exhaustively (all 2**32 inputs, against the
#:   float64 function): exp 2.5408 (x = -62.0295), log 3.8318 (x = 0.782856), log1p 1.9573
#:   (x = 0.333614).
#: * float64: NumPy's tolerance + 0.5 = 1.5; a sample (3.0e5 - 3.7e5 inputs per function,
#:   against mpmath) found at most exp 0.7187, log 0.5971, log1p 0.5780: a sample proves no
#:   maximum, hence the published tolerance.
LIBRARY_ULP: dict[tuple[str, str], float] = {
    ("float16", "exp"): 0.5 + 9.0 * 2.0 ** -13,
    ("float16", "log"): 0.5 + 9.0 * 2.0 ** -13,
    ("float16", "log1p"): 0.5 + 9.0 * 2.0 ** -13,
    ("bfloat16", "exp"): 0.5 + 9.0 * 2.0 ** -16,
    ("bfloat16", "log"): 0.5 + 9.0 * 2.0 ** -16,
    ("bfloat16", "log1p"): 0.5 + 9.0 * 2.0 ** -16,
    ("float32", "exp"): 3.5,
    ("float32", "log"): 4.5,
    ("float32", "log1p"): 2.5,
    ("float64", "exp"): 1.5,
    ("float64", "log"): 1.5,
    ("float64", "log1p"): 1.5,
}

#: One line naming the error model, for reports that print a bound.
LIBRARY_MODEL = ("exp/log/log1p within LIBRARY_ULP ULPs (numpy 2.4.6 / ml_dtypes 0.6.0, "
                 "x86_64; 16-bit and float32 measured exhaustively, float64 NumPy's "
                 "tolerance); + - * / correctly rounded")

_SAFETY = 1.0 + 2.0 ** -20  # the float64 evaluation of a bound (relative error < 1e-12)


def library_ulp(fmt: "str | Format", function: str) -> float:
    """The assumed worst error, in ULPs of the exact result, of the library's ``function``
    ("exp", "log", "log1p") in ``fmt`` (:data:`LIBRARY_ULP`)."""
    f = get_format(fmt)
    try:
        return LIBRARY_ULP[(f.name, function)]
    except KeyError:
        raise ValueError(f"no library error model for {function!r} in {f.name}; "
                         "allowed functions: exp, log, log1p") from None


# ---------------------------------------------------------------------------------------
# rows: validation and the log-domain loss


def _rows(logits, targets) -> tuple[np.ndarray, np.ndarray]:
    x = as_array(logits).astype(np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"logits must have shape (B, V) with V >= 1, got {np.shape(x)}")
    t = as_array(targets).reshape(-1)
    if t.shape[0] != x.shape[0]:
        raise ValueError(f"targets must have shape ({x.shape[0]},), got {np.shape(targets)}")
    if t.size and not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"targets must be integers, got dtype {t.dtype}")
    bad = (t >= x.shape[1]) if t.dtype.kind == "u" else ((t < 0) | (t >= x.shape[1]))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"row {i}: target {int(t[i])} is out of range [0, {x.shape[1]})")
    return x, t.astype(np.int64)


def _lse(v: np.ndarray) -> np.ndarray:
    """log(sum(exp(v))) over the last axis, -inf entries left out; -inf for an empty row."""
    M = v.max(axis=-1)
    Mc = np.where(np.isfinite(M), M, 0.0)
    with np.errstate(under="ignore"):
        s = np.exp(v - Mc[:, None]).sum(axis=-1)
    with np.errstate(divide="ignore"):
        return np.where(np.isfinite(M), Mc + np.log(s), -np.inf)


def _log_weight(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log(|a| + |b|) without overflow (|a|, |b| up to 1.8e308); -inf where both are 0."""
    hi = np.maximum(np.abs(a), np.abs(b))
    lo = np.minimum(np.abs(a), np.abs(b))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(hi > 0, np.log(hi) + np.log1p(lo / np.where(hi > 0, hi, 1.0)), -np.inf)


class RowStats:
    """float64 quantities of each row, masked (-inf) classes left out: a (max), k (the
    target where it is a maximum, else the first argmax), w_j = exp(x_j - a), S' = sum w,
    p (softmax), y (lse), the loss (a - x_t) + log1p(S' - 1) (no cancellation; 0 where it
    underflows float64: see ``log_loss``), tail = 1 - p_t computed as sum_{j != t} p_j,
    and ``log_loss``, the natural log of the exact loss, accurate to ~1e-13 absolute for
    every finite row (-inf for a zero loss, +inf for a masked target).  ``valid``: rows
    without NaN or +inf logits (other rows get NaN everywhere)."""

    def __init__(self, logits: np.ndarray, targets: np.ndarray) -> None:
        x, t = _rows(logits, targets)
        self.x, self.t = x, t
        self.n = x.shape[-1]
        B = x.shape[0]
        rows = np.arange(B)
        self.valid = ~(np.isnan(x) | (x == np.inf)).any(axis=-1)
        xf = np.where(self.valid[:, None], x, -np.inf)  # invalid rows: all masked
        self.xf = xf
        self.finite = np.isfinite(xf)
        self.a = xf.max(axis=-1)
        self.xt = xf[rows, t]
        self.t_is_max = (self.xt == self.a) & np.isfinite(self.xt)
        self.k = np.where(self.t_is_max, t, np.argmax(xf, axis=-1))
        ac = np.where(np.isfinite(self.a), self.a, 0.0)
        with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
            self.y_shift = xf - ac[:, None]  # x_j - a; -inf where masked
            self.w = np.exp(self.y_shift)
            rest = self.w.copy()
            rest[rows, self.k] = 0.0
            self.S_rest = rest.sum(axis=-1)  # sum_{j != k} w_j
            self.S = 1.0 + self.S_rest        # S' = sum_j w_j
            self.p = self.w / self.S[:, None]
            self.L = np.log1p(self.S_rest)    # log S'
            self.y = self.a + self.L
            notp = self.p.copy()
            notp[rows, t] = 0.0
            self.tail = notp.sum(axis=-1)     # 1 - p_t, without cancellation
            self.log_loss = self._log_loss(rows)
            self.loss = np.exp(self.log_loss)
        self.log_loss[~self.valid] = np.nan
        self.loss[~self.valid] = np.nan

    def _log_loss(self, rows: np.ndarray) -> np.ndarray:
        xf, t = self.xf, self.t
        # target a maximum: L = log1p(S), S = sum_{j != t} w_j = e^c sigma with c = x_j2 - a
        # (x_j2 the largest other logit) and sigma = sum_{j != t} exp(x_j - x_j2) in [1, n]
        others = xf.copy()
        others[rows, t] = -np.inf
        j2 = others.max(axis=-1)
        j2c = np.where(np.isfinite(j2), j2, 0.0)
        self.j2 = j2c  # the largest logit other than the target's (0 if none)
        self.sigma = np.exp(others - j2c[:, None]).sum(axis=-1)
        self.c = j2 - self.a
        S_A = np.exp(self.c) * self.sigma
        self.log_g = np.where(S_A > 1e-300, np.log(np.log1p(S_A) / np.where(S_A > 0, S_A, 1.0)),
                              -S_A / 2)  # log(log1p(S)/S)
        log_A = self.c + np.log(self.sigma) + self.log_g  # -inf where no other finite logit
        # target below the maximum: L = (a - x_t) + log1p(S) >= log 2, halved against overflow
        half = (self.a / 2 - self.xt / 2) + np.log1p(self.S_rest) / 2
        log_B = np.log(half) + math.log(2.0)
        out = np.where(self.t_is_max, log_A, log_B)
        return np.where(np.isneginf(self.xt) & np.isfinite(self.a), np.inf, out)


def row_stats(logits: np.ndarray, targets: np.ndarray) -> RowStats:
    return RowStats(logits, targets)


def log_loss(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Natural log of the exact loss of each row, float64, accurate to ~1e-13 absolute for
    every finite row even where the loss itself is far below float64's range (logits
    [800, 0, 1], target 0: about -799.7).  -inf where the loss is exactly 0 (the target the
    only finite logit), +inf for a masked (-inf) target, NaN for rows with NaN or +inf."""
    return RowStats(logits, targets).log_loss


# ---------------------------------------------------------------------------------------
# condition numbers


def condition_number(logits: np.ndarray, targets: np.ndarray, loss: "np.ndarray | None" = None
                     ) -> np.ndarray:
    """kappa_f(x, t) = sum_i |x_i| |p_i - [i = t]| / loss per row (module docstring), float64.

    Evaluated in the log domain, so it is accurate (relative ~1e-12 wherever the result is a
    normal float64) for every finite row: huge margins whose loss underflows float64
    ([800, 0, 1], target 0: 800.7311), huge logits (|x| up to 1.8e308), and masked (-inf)
    classes, which are left out.  0 where the loss is exactly 0 (the target the only finite
    logit: the loss is constant under perturbation).  NaN where the loss is not finite or not
    defined (a masked target, a NaN or +inf logit).  inf only where kappa exceeds float64.

    ``loss`` is accepted for compatibility and ignored: the loss is computed here, to ~1e-13,
    where a float64 reference value may have underflowed to 0.
    """
    del loss
    r = RowStats(logits, targets)
    rows = np.arange(r.x.shape[0])
    keep = r.finite.copy()
    keep[rows, r.t] = False  # the sums run over the finite i != t
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        lw = _log_weight(np.where(keep, r.xf, 0.0), np.where(np.isfinite(r.xt), r.xt, 0.0)[:, None])
        # target a maximum: kappa = sum_{i!=t} W_i e^{x_i - x_j2} / ((1 + S) sigma g(S)),
        # W_i = |x_t| + |x_i|; x_i - x_j2 is rounded once (not (x_i - a) - (x_j2 - a))
        ta = np.where(keep, lw + (r.xf - r.j2[:, None]), -np.inf)
        S_A = np.exp(r.c) * r.sigma
        lk_A = _lse(ta) - np.log1p(S_A) - np.log(r.sigma) - r.log_g
        # target below the maximum: kappa = sum_{i!=t} W_i e^{x_i - a} / ((1 + S) L)
        tb = np.where(keep, lw + r.y_shift, -np.inf)
        lk_B = _lse(tb) - np.log1p(r.S_rest) - r.log_loss
        lk = np.where(r.t_is_max, lk_A, lk_B)
        kappa = np.exp(lk)
    kappa = np.where(np.isneginf(r.log_loss), 0.0, kappa)  # zero loss: constant
    return np.where(r.valid & np.isfinite(r.xt), kappa, np.nan)


def condition_number_lse(logits: np.ndarray) -> np.ndarray:
    """kappa_lse(x) = sum_i |x_i| p_i / |lse(x)| per row, float64, masked (-inf) classes left
    out; inf where lse(x) is 0 in float64, NaN for rows with NaN or +inf.  The numerator is
    evaluated in the log domain; lse(x) = a + log S' in float64, so the relative accuracy is
    about 1e-16 |a| / |lse(x)|: poor only where lse(x) nearly vanishes."""
    x = as_array(logits).astype(np.float64)
    if x.ndim == 1:
        x = x[None, :]
    r = RowStats(x, np.zeros(x.shape[0], dtype=np.int64))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        la = np.log(np.abs(r.xf)) + r.y_shift
        la = np.where(r.finite, la, -np.inf)
        num = np.exp(_lse(la) - np.log(r.S))
        out = np.where(r.y != 0, num / np.abs(r.y), np.inf)
    return np.where(r.valid & np.isfinite(r.a), out, np.nan)


# ---------------------------------------------------------------------------------------
# BHH's estimates


def bhh_lse_bound(logits: np.ndarray, shifted: bool = True) -> np.ndarray:
    """BHH's leading-order ESTIMATE of the relative error of the computed lse, units of u:
    shifted |y + n - min x| / |y|; unshifted 1 + (n + 1)/|y|.  Not a rigorous bound (module
    docstring).  min x and n are over the finite logits."""
    x = as_array(logits).astype(np.float64)
    if x.ndim == 1:
        x = x[None, :]
    r = RowStats(x, np.zeros(x.shape[0], dtype=np.int64))
    y = r.y
    n = r.finite.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if shifted:
            xmin = np.where(r.finite, r.xf, np.inf).min(axis=-1)
            out = np.abs(y + n - xmin) / np.abs(y)
        else:
            out = 1.0 + (n + 1) / np.abs(y)
    return np.where(r.valid & np.isfinite(r.a), out, np.nan)


def bhh_loss_bound(logits: np.ndarray, targets: np.ndarray, shifted: bool = True,
                   loss: "np.ndarray | None" = None) -> np.ndarray:
    """BHH's lse estimate carried through the final subtraction: B_lse |y| / f + 1, relative
    to the loss f, units of u.  A leading-order ESTIMATE, not a rigorous bound (module
    docstring): print it as such.  ``loss`` is accepted for compatibility and ignored (f is
    computed here in the log domain).  NaN where the loss is 0 or not finite."""
    del loss
    r = RowStats(logits, targets)
    n = r.finite.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if shifted:
            xmin = np.where(r.finite, r.xf, np.inf).min(axis=-1)
            abs_lse = np.abs(r.y + n - xmin)
        else:
            abs_lse = np.abs(r.y) + n + 1
        out = np.exp(np.log(abs_lse) - r.log_loss) + 1.0
    return np.where(np.isfinite(r.log_loss), out, np.nan)


# ---------------------------------------------------------------------------------------
# rigorous bounds


DERIVED_ALGORITHMS = ("lse", "lse_log1p", "naive")


def _pairwise_depth(n: int) -> int:
    return (n - 1).bit_length() if n > 1 else 0  # ceil(log2 n)


def _shifted_terms(r: RowStats, f: Format, rho_exp: float, U: float, T: float,
                   exclude_k: bool) -> tuple[np.ndarray, np.ndarray]:
    """(S, A): S = sum of the exact w_j and A = sum of the bounds on |e_j - w_j| / u of the
    computed exp(fl(x_j - a)), over the finite j (j != k if ``exclude_k``)."""
    rows = np.arange(r.x.shape[0])
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        D = -r.y_shift  # a - x_j >= 0 (inf where masked or where it overflows)
        near = r.finite & (D <= 1000.0)
        Dn = np.where(near, D, 0.0)
        gU = np.expm1(U * Dn) / U  # g_j / u: fl(x_j - a) errs by at most u (a - x_j)
        w = np.where(near, r.w, 0.0)
        A = np.where(near, w * gU + rho_exp * np.maximum(w * (1.0 + U * gU), T), 0.0)
        # a - x_j > 1000: exp(fl(x_j - a)) < e**-996, below every format's spacing/2**30
        A = np.where(r.finite & ~near, rho_exp * T, A)
    if exclude_k:
        w = w.copy()
        w[rows, r.k] = 0.0
        A[rows, r.k] = 0.0
    return w.sum(axis=-1), A.sum(axis=-1)


def derived_loss_bound(logits: np.ndarray, targets: np.ndarray, algorithm: str,
                       fmt: "str | Format | None" = None, loss: "np.ndarray | None" = None
                       ) -> np.ndarray:
    """Rigorous bound on the relative error of the loss computed by the registry's numpy
    implementation ``algorithm`` ("lse", "lse_log1p", "naive") in ``fmt``, in units of u,
    under the error model of :data:`LIBRARY_ULP` (derivations in the module docstring).

    NaN where no bound is given ("does not apply"; the module docstring lists when: possible
    overflow, a possibly zero quotient in naive, logits that are not values of ``fmt``,
    NaN/+inf logits, a masked target, a zero loss).  inf is a (vacuous) bound: the loss is
    below float64's range.  ``loss`` is accepted for compatibility and ignored (the loss is
    computed here in the log domain).

    Raises:
        ValueError: unknown algorithm, or ``fmt`` missing (the bound depends on u and on the
            library error model of the format).
    """
    del loss
    if algorithm not in DERIVED_ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; "
                         f"allowed: {', '.join(DERIVED_ALGORITHMS)}")
    if fmt is None:
        raise ValueError("derived_loss_bound needs fmt: the bound depends on the format's u "
                         "and on its library error model (LIBRARY_ULP)")
    f = get_format(fmt)
    r = RowStats(logits, targets)
    U, T, big = f.unit_roundoff, f.smallest_normal, f.max_finite
    rho_e = 2.0 * library_ulp(f, "exp")
    h = _pairwise_depth(r.n)
    grow = math.expm1(h * math.log1p(U))  # (1 + u)**h - 1
    growU = grow / U
    lf = r.log_loss
    fv = r.loss  # float64 value of the loss (0 where it underflows; only added to others)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        in_fmt = np.all((to_format(r.x, f).astype(np.float64) == r.x) | np.isnan(r.x), axis=-1)
        applies = np.isfinite(lf) & in_fmt
        if algorithm in ("lse", "lse_log1p"):
            S, A = _shifted_terms(r, f, rho_e, U, T, exclude_k=algorithm == "lse_log1p")
            dSU = (1.0 + grow) * A + S * growU  # |s^ - S| / u
            if algorithm == "lse":
                rel = U * dSU / S
                d = -np.log1p(-rel)
                El = d / U + 2.0 * library_ulp(f, "log") * np.maximum(np.log(S) + d, T)
                y = np.abs(r.y)
                Ey = El + (y + U * El)
                Ef = Ey + (fv + U * Ey)
                applies &= (rel < 1) & (S * (1 + rel) < big) & (y + U * El < big)
                applies &= fv + U * Ey < big
            else:
                dU = dSU / (1.0 + np.maximum(S - U * dSU, 0.0))
                El = dU + 2.0 * library_ulp(f, "log1p") * np.maximum(np.log1p(S) + U * dU, T)
                a = r.a - r.xt
                Ef = a + El + (fv + U * a + U * El)
                applies &= (a * (1 + U) < big) & (fv + U * a + U * El < big)
        else:
            Ef, ok = _naive_bound(r, f, rho_e, U, T, grow, growU, fv)
            applies &= ok
        B = np.exp(np.log(Ef) - lf) * _SAFETY
    return np.where(applies, B, np.nan)


def _naive_bound(r: RowStats, f: Format, rho_e: float, U: float, T: float, grow: float,
                 growU: float, fv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(E_f / u, applies) for naive: everything relative to e^a (a = max x) so that nothing
    over- or underflows in float64."""
    rows = np.arange(r.x.shape[0])
    logT = math.log(T)
    ac = np.where(np.isfinite(r.a), r.a, 0.0)
    TE = np.exp(logT - ac)  # tau e^-a (inf: every term is below tau -> no bound)
    w = np.where(r.finite, r.w, 0.0)
    S = w.sum(axis=-1)  # sum_j e^{x_j} / e^a >= 1
    A = np.where(r.finite, rho_e * np.maximum(w, TE[:, None]), 0.0).sum(axis=-1)
    r_s = U * ((1.0 + grow) * A + S * growU) / S
    r_t = U * rho_e * np.maximum(1.0, np.exp(logT - r.xt))
    Tp = np.exp(logT + fv)  # tau / p
    hi_r = (r_t + r_s) / (1.0 - r_s)
    lo_r = (r_t + r_s) / (1.0 + r_s)
    up = hi_r + U * np.maximum(1.0 + hi_r, Tp)
    dn = lo_r + U * np.maximum(1.0, Tp)
    d = np.maximum(np.log1p(up), -np.log1p(-dn))
    Ef = d / U + 2.0 * library_ulp(f, "log") * np.maximum(fv + d, T)
    log_big = math.log(f.max_finite)
    xmax = np.where(r.finite, r.xf, -np.inf).max(axis=-1)
    ok = ((xmax + 2 * rho_e * U + 1e-12 * abs(log_big) < log_big)  # no exp overflows
          & (np.log(S) + ac + np.log1p(r_s) < log_big)  # nor the sum
          & (r_s < 1) & (r_t < 1) & (dn < 1) & np.isfinite(Tp))
    del rows
    return Ef, ok


def to_rigorous(bound_u: np.ndarray, fmt: "str | Format") -> np.ndarray:
    """B -> B / (1 - B u): the gamma-style cover of the second-order terms of a first-order
    bound B (units of u); inf where B u >= 1, NaN stays NaN.  The derived bounds are already
    rigorous (this only loosens them); BHH's estimates stay estimates."""
    u = get_format(fmt).unit_roundoff
    b = np.asarray(bound_u, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isnan(b), np.nan, np.where(b * u < 1, b / (1 - b * u), np.inf))


def to_ulps(bound_u: np.ndarray, exact: np.ndarray, fmt: "str | Format",
            exact_lo: "np.ndarray | None" = None) -> np.ndarray:
    """A relative bound (units of u) at the exact value, as ULPs of the format there:
    r * u * |exact| / ulp(exact), which lies in [r/2, r] for normal values.

    ``exact`` (+ ``exact_lo``) is the exact value as the reference gives it (hi, lo); without
    ``exact_lo``, a value that is a power of two may be the rounding of one just below it, so
    the smaller ulp (of the binade beneath) is used: never fewer ULPs than the truth."""
    f = get_format(fmt)
    ex = np.asarray(exact, dtype=np.float64)
    lo = None if exact_lo is None else np.asarray(exact_lo, dtype=np.float64)
    q = ulp_exponent_array(np.abs(ex), f, None if lo is None else np.where(ex < 0, -lo, lo),
                           power_of_two="above" if lo is not None else "below")
    b = np.asarray(bound_u, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return b * f.unit_roundoff * np.ldexp(np.abs(ex), -q)


def measured_in_u(computed: np.ndarray, exact_hi: np.ndarray, fmt: "str | Format",
                  exact_lo: "np.ndarray | None" = None) -> np.ndarray:
    """|computed - exact| / |exact| / u, float64 (NaN unless both are finite; inf where the
    exact value is 0 and computed is not)."""
    from precision_lab.numerics.metrics import relative_error

    f = get_format(fmt)
    return relative_error(as_array(computed).astype(np.float64), exact_hi, exact_lo) \
        / f.unit_roundoff
