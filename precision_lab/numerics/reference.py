"""Certified cross-entropy: -log softmax(x)[t] of the exact inputs, correctly rounded.

Every logit is taken as the exact binary number it stores.  The per-sample loss

    L = logsumexp(x) - x_t = (m - x_t) + log1p(S'),   S' = sum_{j != k} exp(x_j - m)

(m the row maximum, k the target if it is a maximum, else one argmax) is rounded once,
straight to the requested format with :func:`formats.round_to`.  The second form has no
cancellation: both terms are >= 0, so it stays accurate when the prediction is confident
and the loss is far below the ULP of the logits (logits [700, 0, 0], target 0: L is about
1.97e-304).

Two evaluation paths, one answer:

* exact (Ziv's strategy, as Herbie and CORE-MATH use it): an enclosure [lo, hi] of L is
  computed in mpmath at ``prec`` bits with a rigorous error bound; if both ends round to
  the same value (and the enclosure lies in one binade, see below) it is returned,
  otherwise the precision doubles, capped at :data:`MAX_PRECISION` bits -- the cap itself
  is tried -- after which :class:`ReferenceError` names the row.  A guess
  is never returned.  No tie can stall it: L is either exactly 0 (the target is the only
  finite logit) or irrational -- by Lindemann-Weierstrass, e^L = sum_j e^(x_j - x_t) with
  rational L forces all finite x_j to equal x_t + L with multiplicity one -- so it is never
  a rounding midpoint; the same argument covers the sum and mean of a batch.
* fast (``precision_lab.numerics._fastref``): the whole batch, vectorized, in float64 (targets
  float16, bfloat16, float32) or double-double arithmetic (float64) with a rigorous
  per-row error bound; rows whose enclosure does not round to one value go to the exact
  path, so the values are bit-identical to the exact path's.

The binade of L travels with it: every ``hi``/``lo`` returned (fast float64 path, double-
double path, exact path, reductions) comes from an enclosure that contains no power of two
(rows where it would are refined or sent to the exact path), so the double-double hi + lo
lies in the same binade as L (below 2**-1022, where every format's spacing is one fixed
number, only approximately), and :func:`~precision_lab.numerics.metrics.ulp_error` measures
in the ulp of L's binade: a loss of 2**k minus a hair is measured in the ulp below 2**k, not
the one above it (float32 logits [0, 0.54132485, -20.516264, -34.179874], target 0: L is
below 1 by less than half a float64 ulp, and 0.99999994 is 1.000 ULP from it, not 0.5).

Assumptions behind "rigorous" (documented, not proven here): mpmath's ``mpf_exp`` and
``mpf_log`` return results within 8 ulps of the working precision (they work with 14 and
20 guard bits and round once; ``mpf_log`` compensates the cancellation near 1); numpy's
float64 ``exp``/``log1p`` are within 4 ulps (NumPy's own acceptance limit for its SIMD
versions).  Everything else is exact or bounded by the standard model of IEEE arithmetic.

Non-finite inputs (decided exactly, before either path; ``ReferenceResult.special_rows``):

* a NaN anywhere in the row -> NaN;
* a +inf logit: target +inf and the only +inf -> 0 (the limit x_t -> +inf); target +inf
  with another +inf -> NaN (inf - inf, undefined); target not +inf -> +inf;
* target -inf (masked): +inf, or NaN if every logit is -inf (lse = -inf, undefined);
* the target the only finite logit (V = 1, or all others masked with -inf) -> exactly 0.

Losses are >= 0, so results are never negative; a loss beyond the format's range rounds to
+inf (float16 logits [65504, -65504], target 1: L = 131008 -> inf).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from mpmath import libmp

from precision_lab.numerics import _fastref, gradient, semantics
from precision_lab.numerics._ziv import (
    _CEIL,
    _FLOOR,
    _HILO_BITS,
    _NEAR,
    _ONE,
    MAX_PRECISION,
    START_PRECISION,
    ReferenceError,
    ReferenceResult,
    _float_enclosure,
    _hilo,
    _one_binade,
    _round_open,
)
from precision_lab.numerics.formats import Format, as_array, get_format

__all__ = ["ReferenceError", "ReferenceResult", "cross_entropy", "cross_entropy_detailed",
           "cross_entropy_grad", "uses_training_semantics",
           "MAX_PRECISION", "START_PRECISION"]

Reduction = Literal["none", "mean", "sum"]
Method = Literal["auto", "exact", "fast"]


def uses_training_semantics(targets: Any, kw: dict[str, Any]) -> bool:
    """Whether a call needs :mod:`precision_lab.numerics.semantics`: a keyword away from its
    default, probability targets, or a target equal to ``ignore_index``."""
    if (kw.get("weight") is not None or kw.get("label_smoothing", 0.0) != 0.0
            or kw.get("z_loss", 0.0) != 0.0 or kw.get("softcap") is not None):
        return True
    t = as_array(targets)
    return t.ndim != 1 or bool(t.size and (t == kw.get("ignore_index", -100)).any())


def cross_entropy(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format",
                  reduction: Reduction = "none", *, weight: Any = None, ignore_index: int = -100,
                  label_smoothing: float = 0.0, z_loss: float = 0.0,
                  softcap: "float | None" = None) -> np.ndarray:
    """Correctly rounded cross-entropy loss of exact logits, with nn.CrossEntropyLoss's
    semantics (``weight``, ``ignore_index``, ``label_smoothing``, class-index or probability
    ``targets``, ``reduction``) and the LLM extensions ``z_loss`` and ``softcap``; see
    :func:`cross_entropy_detailed` and :mod:`precision_lab.numerics.semantics` for the exact
    definitions.

    Returns:
        shape (B,) array of fmt's dtype (reduction "none"), or a 0-d array of fmt's dtype
        (reduction "mean" or "sum").
    """
    return cross_entropy_detailed(logits, targets, fmt, reduction, weight=weight,
                                  ignore_index=ignore_index, label_smoothing=label_smoothing,
                                  z_loss=z_loss, softcap=softcap).values


def cross_entropy_grad(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format",
                       reduction: Reduction = "none", **keywords: Any) -> np.ndarray:
    """The gradient of the (reduced) loss with respect to the logits, shape (B, V), every
    element correctly rounded to ``fmt``; the same keywords as :func:`cross_entropy` (see
    :mod:`precision_lab.numerics.gradient`)."""
    return gradient.cross_entropy_grad(logits, targets, fmt, reduction=reduction, **keywords)


def cross_entropy_detailed(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format",
                           reduction: Reduction = "none",
                           method: Method = "auto", **keywords: Any) -> ReferenceResult:
    """Correctly rounded -log softmax(logits)[target] per row, or its mean or sum.

    Args:
        logits: shape (B, V), dtype float16, bfloat16, float32 or float64 (numpy, ml_dtypes
            or a torch tensor, any byte order); any values, -inf for masked classes (see the
            module docstring for NaN and +-inf).
        targets: shape (B,), integers in [0, V) (numpy or torch, any integer dtype).
        fmt: the format of the result (need not be the logits' format).
        reduction: "none" (per-sample losses, nats), "sum" (the correctly rounded sum of
            the exact per-sample losses), "mean" (the correctly rounded sum / B; NaN for
            B = 0).  A NaN loss makes the sum/mean NaN, else a +inf loss makes it +inf.
        method: "exact" (mpmath Ziv loop for every row), "fast" or "auto" (vectorized
            bounded evaluation, ambiguous rows on the exact path; same values).

    Raises:
        ValueError: bad shapes/dtypes, unknown reduction/method, or a target out of range
            (the message names the first such row).
        ReferenceError: a row or reduction not decided at MAX_PRECISION bits.
    """
    if uses_training_semantics(targets, keywords):
        return semantics.cross_entropy_detailed(logits, targets, fmt, reduction=reduction,
                                                method=method, **keywords)
    f = get_format(fmt)
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', not {reduction!r}")
    if method not in ("auto", "exact", "fast"):
        raise ValueError(f"method must be 'auto', 'exact' or 'fast', not {method!r}")
    x, t = _validate(logits, targets)
    B = x.shape[0]
    special, special_val = _classify(x, t)
    general = np.flatnonzero(~special)

    values = np.zeros(B, dtype=f.np_dtype)
    hi = np.where(special, special_val, 0.0)
    lo = np.zeros(B)
    err = np.zeros(B)
    values[special] = special_val[special].astype(f.np_dtype)  # 0, inf, nan: exact casts
    enclosures: dict[int, tuple] = {}  # row -> (lo, hi) raw mpf, for reductions
    exact_rows: dict[int, _ExactRow] = {}

    if method == "exact":
        todo = general
    else:
        every = general.size == B  # the common case: skip a copy of the whole batch
        fr = _fastref.fast_rows(x if every else x[general], t if every else t[general], f)
        good = general[fr.ok]
        values[good] = fr.values[fr.ok]
        hi[good], lo[good], err[good] = fr.hi[fr.ok], fr.lo[fr.ok], fr.err[fr.ok]
        if reduction != "none":
            for i, h, l_, e in zip(good.tolist(), fr.hi[fr.ok].tolist(),
                                   fr.lo[fr.ok].tolist(), fr.err[fr.ok].tolist()):
                enclosures[i] = _float_enclosure(h, l_, e)
        todo = general[~fr.ok]

    for i in todo.tolist():
        row = _ExactRow(x[i], int(t[i]))
        exact_rows[i] = row
        v, h, l_, e, enc = row.evaluate(f, i)
        values[i], hi[i], lo[i], err[i] = v, h, l_, e
        enclosures[i] = enc
    slow = len(todo)
    used = "exact" if method == "exact" else "fast"

    if reduction == "none":
        return ReferenceResult(values, hi, lo, err, slow, int(special.sum()), B, used)
    v, h, l_, e, extra = _reduce(x, t, f, reduction, special, special_val, general,
                                 enclosures, exact_rows)
    return ReferenceResult(np.asarray(v, dtype=f.np_dtype), np.asarray(h), np.asarray(l_),
                           np.asarray(e), slow + extra, int(special.sum()), B, used)


# ---------------------------------------------------------------------------------------
# input checks and the non-finite rules

def _validate(logits, targets) -> tuple[np.ndarray, np.ndarray]:
    arr = as_array(logits)
    if arr.ndim != 2:
        raise ValueError(f"logits must have shape (B, V), got shape {arr.shape}")
    try:
        get_format(arr.dtype)
    except ValueError:
        raise ValueError(f"logits dtype {arr.dtype} is not float16, bfloat16, float32 or "
                         "float64") from None
    B, V = arr.shape
    if V == 0:
        raise ValueError("logits need at least one class (V >= 1)")
    tg = as_array(targets)
    if tg.shape != (B,):
        raise ValueError(f"targets must have shape ({B},), got shape {tg.shape}")
    if B and not np.issubdtype(tg.dtype, np.integer):
        raise ValueError(f"targets must be integers, got dtype {tg.dtype}")
    # compare in the targets' own dtype: a cast to int64 first would wrap uint64 >= 2**63
    bad = np.flatnonzero(tg >= V) if tg.dtype.kind == "u" else np.flatnonzero((tg < 0) | (tg >= V))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"row {i}: target {int(tg[i])} is out of range [0, {V})"
                         + (f" ({bad.size} rows in all)" if bad.size > 1 else ""))
    return arr.astype(np.float64, copy=False), tg.astype(np.int64)  # exact: formats embed


def _classify(x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(special mask, exact loss of the special rows) per the module docstring's rules."""
    B, V = x.shape
    val = np.full(B, np.nan)
    special = np.ones(B, dtype=bool)
    with np.errstate(over="ignore", invalid="ignore"):
        clean = np.isfinite(x.sum(axis=1))  # one pass: a NaN or inf makes the sum non-finite
    if V > 1:
        special[clean] = False
    odd = np.flatnonzero(~clean)  # rows with non-finite values (or a sum that overflowed)
    if V == 1:
        odd = np.arange(B)
    ss, sv = _classify_slow(x[odd], t[odd])
    val[odd], special[odd] = sv, ss
    return special, val


def _classify_slow(x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    B = x.shape[0]
    xt = x[np.arange(B), t]
    has_nan = np.isnan(x).any(axis=1)
    n_pinf = (x == np.inf).sum(axis=1)
    n_fin = np.isfinite(x).sum(axis=1)
    val = np.full(B, np.nan)
    special = np.ones(B, dtype=bool)
    pinf = ~has_nan & (n_pinf > 0)
    val[pinf & (xt == np.inf) & (n_pinf == 1)] = 0.0
    val[pinf & (xt != np.inf)] = np.inf
    ninf_t = ~has_nan & (n_pinf == 0) & (xt == -np.inf)
    val[ninf_t & (n_fin > 0)] = np.inf
    lone = ~has_nan & (n_pinf == 0) & np.isfinite(xt) & (n_fin == 1)
    val[lone] = 0.0
    special[~has_nan & (n_pinf == 0) & np.isfinite(xt) & (n_fin > 1)] = False
    return special, val


# ---------------------------------------------------------------------------------------
# exact path

def _scaled(raw: tuple, num: int, bits: int, prec: int, rnd: str) -> tuple:
    """raw * num / 2**bits, directed-rounded to prec bits."""
    return libmp.mpf_mul(raw, libmp.from_man_exp(num, -bits), prec, rnd)


class _ExactRow:
    """One general row (finite target, >= 2 finite logits, no NaN/+inf), prepared once so
    that retries at higher precision reuse the sort and the distinct values."""

    def __init__(self, row: np.ndarray, t: int):
        fin = row[np.isfinite(row)]
        vals, counts = np.unique(fin, return_counts=True)  # ascending; repeats cost one exp
        m = float(vals[-1])
        counts[-1] -= 1  # drop one copy of the maximum: S' = sum over j != k
        keep = counts > 0
        self.vals, self.counts = vals[keep], counts[keep]
        self.n = int(self.counts.sum())
        self.m_f = m
        self.M = libmp.from_float(m)
        self.D = libmp.mpf_sub(self.M, libmp.from_float(float(row[t])), 0)  # m - x_t, exact

    def enclosure(self, prec: int) -> tuple[tuple, tuple]:
        """Raw mpf (lo, hi) with lo <= L <= hi, relative width about 2**-prec."""
        M, n = self.M, self.n
        bl = n.bit_length()
        Q = prec + bl + 4  # precision of each exp; the sum of n terms keeps ~prec bits
        W = Q + 8
        ymax = libmp.mpf_sub(libmp.from_float(float(self.vals[-1])), M, 0)
        # Terms with x_j - m <= ymax - (Q + bl) ln 2 add up to < 2**-Q * exp(ymax) <=
        # 2**-Q * S': bound them instead of computing them.  c: the largest float with
        # c - m <= that threshold.
        thr = libmp.mpf_sub(ymax, libmp.from_float((Q + bl) * 0.6932), 0)
        cut_raw = libmp.mpf_add(M, thr, 0)
        c = libmp.to_float(cut_raw, rnd=_FLOOR)
        while libmp.mpf_gt(libmp.from_float(c), cut_raw):
            c = float(np.nextafter(c, -np.inf))
        first = int(np.searchsorted(self.vals, c, side="right"))
        skipped = first > 0
        e0 = libmp.mpf_exp(ymax, Q, _NEAR)
        F = Q + bl + 2 - (e0[2] + e0[3])  # fixed point: the largest term has ~Q+bl+2 bits
        s_lo = s_hi = 0
        for v, cnt in zip(self.vals[first:].tolist(), self.counts[first:].tolist()):
            _, man, ex, _ = libmp.mpf_exp(libmp.mpf_sub(libmp.from_float(v), M, 0), Q, _NEAR)
            sh = ex + F
            if sh >= 0:
                q = man << sh
                s_lo += q * cnt
                s_hi += q * cnt
            else:
                s_lo += (man >> -sh) * cnt
                s_hi += (-((-man) >> -sh)) * cnt
        # each exp is within 8 ulps (relative 2**-(Q-4)): widen by twice that
        lo_S = _scaled(libmp.from_man_exp(s_lo, -F), (1 << (Q - 3)) - 1, Q - 3, W, _FLOOR)
        hi_S = _scaled(libmp.from_man_exp(s_hi, -F), (1 << (Q - 3)) + 1, Q - 3, W, _CEIL)
        if skipped:
            hi_S = _scaled(hi_S, (1 << Q) + 1, Q, W, _CEIL)
        lo_l, hi_l = _log1p_down(lo_S, W), _log1p_up(hi_S, W)
        return (libmp.mpf_add(self.D, lo_l, W, _FLOOR), libmp.mpf_add(self.D, hi_l, W, _CEIL))

    def evaluate(self, f: Format, index: int):
        """Ziv loop: (value, hi, lo, err, (lo, hi) enclosure) or raise ReferenceError.

        Decided when both ends round to one value, the enclosure is narrow enough for
        hi + lo to carry ~100 bits, and it contains no power of two (L's binade is known).
        The precision doubles from START_PRECISION, capped at MAX_PRECISION, which is tried
        itself before giving up."""
        prec = START_PRECISION
        while True:
            enc = self.enclosure(prec)
            a, b = _round_open(enc, f)
            width = libmp.mpf_sub(enc[1], enc[0], 0)
            narrow = libmp.mpf_le(width, libmp.mpf_shift(enc[0], -_HILO_BITS))
            if a == b and narrow and _one_binade(enc):
                return (a, *_hilo(enc), enc)
            if prec >= MAX_PRECISION:
                raise ReferenceError(f"row {index}: the loss is not decided at {MAX_PRECISION} "
                                     "bits (enclosure still straddles a rounding boundary or "
                                     "a power of two)")
            prec = min(2 * prec, MAX_PRECISION)


#: 2**-1022: below it every format here has one fixed spacing (float64's subnormal one is
#: also the spacing of its lowest normal binade), so the binade no longer matters.
def _log1p_down(s: tuple, W: int) -> tuple:
    """A lower bound of log1p(s), s >= 0, within relative 2**-(W-4)."""
    if s[2] + s[3] < -W:  # s < 2**-W: log1p(s) >= s - s**2/2 >= s (1 - s); 1 + s not formed
        return libmp.mpf_mul(s, libmp.mpf_sub(_ONE, s, W, _FLOOR), W, _FLOOR)
    r = libmp.mpf_log(libmp.mpf_add(_ONE, s, 0), W, _FLOOR)
    return _scaled(r, (1 << (W - 3)) - 1, W - 3, W, _FLOOR)  # mpf_log within 8 ulps


def _log1p_up(s: tuple, W: int) -> tuple:
    """An upper bound of log1p(s), s >= 0, within relative 2**-(W-4)."""
    if s[2] + s[3] < -W:
        return s  # log1p(s) <= s
    r = libmp.mpf_log(libmp.mpf_add(_ONE, s, 0), W, _CEIL)
    return _scaled(r, (1 << (W - 3)) + 1, W - 3, W, _CEIL)


# ---------------------------------------------------------------------------------------
# reductions

def _reduce(x, t, f: Format, reduction: str, special, special_val, general, enclosures,
            exact_rows):
    """Correctly rounded sum/mean of the exact per-row losses.  Returns (value, hi, lo, err,
    rows newly evaluated on the exact path)."""
    B = x.shape[0]
    sv = special_val[special]
    if reduction == "mean" and B == 0:
        return np.nan, np.nan, 0.0, np.nan, 0
    if np.isnan(sv).any():
        return np.nan, np.nan, 0.0, np.nan, 0
    if np.isinf(sv).any():
        return np.inf, np.inf, 0.0, np.inf, 0
    extra = 0
    refined = 0  # precision the rows were last refined at (0: their first enclosures)
    while True:
        prec = max(refined, START_PRECISION)
        rows = [enclosures[i] for i in general.tolist()]
        W = prec + 2 * max(B, 1).bit_length() + 16
        s_lo = s_hi = libmp.fzero
        for a, b in rows:
            s_lo = libmp.mpf_add(s_lo, a, W, _FLOOR)
            s_hi = libmp.mpf_add(s_hi, b, W, _CEIL)
        if reduction == "mean":
            nB = libmp.from_int(B)
            s_lo = libmp.mpf_div(s_lo, nB, W, _FLOOR)
            s_hi = libmp.mpf_div(s_hi, nB, W, _CEIL)
        a, b = _round_open((s_lo, s_hi), f)
        if a == b and (not rows or _one_binade((s_lo, s_hi))):
            # hi/lo then carry the accuracy of the per-row enclosures
            return (a, *_hilo((s_lo, s_hi)), extra)
        if refined >= MAX_PRECISION:
            raise ReferenceError(f"{reduction} of rows 0..{B - 1}: not decided at "
                                 f"{MAX_PRECISION} bits")
        # refine every row on the exact path, at the next precision (the cap tried too)
        refined = START_PRECISION if refined == 0 else min(2 * refined, MAX_PRECISION)
        for i in general.tolist():
            if i not in exact_rows:
                exact_rows[i] = _ExactRow(x[i], int(t[i]))
                extra += 1
            enclosures[i] = exact_rows[i].enclosure(refined)
