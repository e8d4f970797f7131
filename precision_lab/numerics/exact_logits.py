"""Exact logits and their certified cross-entropy: the truth of a fused linear layer.

A fused linear cross-entropy computes the loss of ``hidden @ weight.T`` without storing the
logits.  Its truth is the loss of the *exact* product of the rounded hidden states and
weights: every dot product computed without error, then the correctly rounded
cross-entropy of those exact logits.  Those logits are in general not float64 numbers (a
sum of K products of float32 values needs up to ~300 bits), so this module carries them
exactly and gives :mod:`precision_lab.numerics.reference`'s machinery what it needs.

* :func:`exact_product` (hidden (B, K), weight (V, K) of float16, bfloat16 or float32) ->
  :class:`ExactProduct`.  Exact integer slicing (the error-free splitting of Ozaki et al.,
  "Error-free transformations of matrix multiplication", Numer. Algorithms 2012): each row of
  hidden and of weight is scaled by a power of two into (-1, 1) and cut into slices of
  ``w`` bits, ``w = floor((53 - ceil(log2 K)) / 2)``, each slice an array of integers
  below 2**w in magnitude; the float64 matrix product of two slices then has integer
  entries below K 2**(2w) <= 2**53 at every partial sum, so it is exact in any summation
  order (BLAS blocking and FMA included).  Products of slices with the same k + l are
  added in int64 ("digits").  Slicing stops when nothing is left, so the digits are exact
  whatever the data; the number of slices (and matrix products) grows with the spread of
  magnitudes within a row (typically 1-2 for bfloat16, 2-3 for float32).  The vocabulary
  is processed in blocks, so memory stays O(B V + block K).
* :class:`PairLogits`: logits given exactly as hi + lo of two float64 arrays.
* :func:`cross_entropy_exact_logits` (either kind, targets, fmt) -> a
  :class:`~precision_lab.numerics.reference.ReferenceResult` (reduction "none"), with the
  values bit-identical to what the exact (mpmath, Ziv) reference gives on those exact logits.

Certification.  Each logit is known as hi + lo + r with hi, lo float64 and a rigorous bound
|r| <= err (Sum2 of Ogita, Rump & Oishi over the float64 pieces of the digits: err <=
gamma_{n-1}^2 sum |pieces|).  L(x) = logsumexp(x) - x_t changes by at most
2 max_j |x_j - hi_j| when x moves (its gradient is a probability vector minus a unit
vector), so the fast path's enclosure of L(hi) (:mod:`precision_lab.numerics._fastref`,
float16/bfloat16/float32 results) widened by 2 max_j (|lo_j| + err_j) encloses L(x).  Rows
where that enclosure does not round to one value (or straddles a power of two), and every
row for a float64 result, go to the exact path: the reference's Ziv loop on the exact
values (mpmath, seconds per row at V = 262144).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from mpmath import libmp

from precision_lab.numerics import _fastref
from precision_lab.numerics.eft import two_sum as _two_sum
from precision_lab.numerics.formats import Format, get_format, round_float64_array
from precision_lab.numerics.reference import (
    ReferenceResult,
    _ExactRow,
    _log1p_down,
    _log1p_up,
    _scaled,
)

__all__ = ["ExactProduct", "PairLogits", "exact_product", "cross_entropy_exact_logits"]

_U = 2.0 ** -53
_FLOOR, _CEIL, _NEAR = libmp.round_floor, libmp.round_ceiling, libmp.round_nearest


@dataclass(frozen=True)
class ExactProduct:
    """Exact logits x[i, v] = 2**(row_exp[i] + col_exp[v] - w (d + 2)) summed over d of
    digits[d, i, v] (int64).

    Attributes:
        digits: (n, B, V) int64.
        row_exp: (B,) int64, the scale of each hidden row.
        col_exp: (V,) int64, the scale of each weight row.
        w: bits per slice.
        slices: (slices of hidden, most slices of a weight block): the matrix products done
            are their product per block.
    """

    digits: np.ndarray
    row_exp: np.ndarray
    col_exp: np.ndarray
    w: int
    slices: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.digits.shape[1]), int(self.digits.shape[2])

    def hi_lo_err(self, rows: "slice | np.ndarray" = slice(None)):
        """(hi, lo, err) float64 arrays: |x - (hi + lo)| <= err, hi = fl(hi + lo)."""
        D = self.digits[:, rows]
        n = D.shape[0]
        scale = self.row_exp[rows][:, None] + self.col_exp[None, :]
        pieces = []
        for d in range(n):
            dh = D[d].astype(np.float64)
            dl = (D[d] - dh.astype(np.int64)).astype(np.float64)  # exact: |dl| < 2**11
            sc = scale - self.w * (d + 2)
            pieces += [np.ldexp(dh, sc), np.ldexp(dl, sc)]
        s = pieces[0]
        e = np.zeros_like(s)
        mag = np.abs(s)
        for p in pieces[1:]:
            s, q = _two_sum(s, p)
            e = e + q
            mag = mag + np.abs(p)
        hi, lo = _two_sum(s, e)
        m = len(pieces) - 1
        gamma = m * _U / (1 - m * _U)
        err = (gamma * gamma) * mag * (1 + 2.0 ** -40) if m > 0 else np.zeros_like(s)
        return hi, lo, err

    def row(self, i: int) -> list:
        """Row i as exact raw mpf values (mpmath.libmp tuples)."""
        D = self.digits[:, i]
        n = D.shape[0]
        acc = D[0].astype(object)
        for d in range(1, n):
            acc = (acc << self.w) + D[d].astype(object)
        exps = (int(self.row_exp[i]) + self.col_exp - self.w * (n + 1)).tolist()
        return [libmp.from_man_exp(int(a), e) for a, e in zip(acc.tolist(), exps)]


@dataclass(frozen=True)
class PairLogits:
    """Logits given exactly as hi + lo (two float64 arrays of shape (B, V))."""

    hi: np.ndarray
    lo: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.hi.shape[0]), int(self.hi.shape[1])

    def hi_lo_err(self, rows: "slice | np.ndarray" = slice(None)):
        h, l_ = _two_sum(np.asarray(self.hi[rows], np.float64),
                         np.asarray(self.lo[rows], np.float64))
        return h, l_, np.zeros_like(h)

    def row(self, i: int) -> list:
        return [libmp.mpf_add(libmp.from_float(a), libmp.from_float(b), 0)
                for a, b in zip(self.hi[i].tolist(), self.lo[i].tolist())]


_INPUT_FORMATS = ("float16", "bfloat16", "float32")


def _scaled_rows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a * 2**-E per row, E) with every |a * 2**-E| < 1 (E = 0 for an all-zero row)."""
    mx = np.max(np.abs(a), axis=1) if a.size else np.zeros(a.shape[0])
    _, E = np.frexp(mx)  # mx < 2**E
    E = np.where(mx > 0, E, 0).astype(np.int64)
    # a power of two as a float64 factor (|E| <= 150 for these formats): the product is exact
    return a * np.ldexp(1.0, -E)[:, None], E


def _slices(a: np.ndarray, w: int) -> list[np.ndarray]:
    """Integer slices S_k (|S_k| < 2**w) with a = sum_k S_k 2**(-w (k + 1)) exactly, for
    |a| < 1 (float64)."""
    out = []
    r = a
    k = 0
    while r.any():
        k += 1
        up, down = math.ldexp(1.0, w * k), math.ldexp(1.0, -w * k)
        q = np.trunc(r * up)  # exact scalings by powers of two (no overflow or underflow here)
        out.append(q)
        r = r - q * down  # exact: removes r's leading bits
    return out or [np.zeros_like(a)]


def exact_product(hidden: np.ndarray, weight: np.ndarray, *, block: int = 8192) -> ExactProduct:
    """The exact logits hidden @ weight.T (see the module docstring).

    Args:
        hidden: (B, K) float16, bfloat16 or float32 (the values taken exactly).
        weight: (V, K), same kind.
        block: vocabulary rows per block (memory: about block * K * 8 bytes per slice).

    Raises:
        ValueError: shapes that do not match, another dtype, non-finite values.
    """
    h = np.asarray(hidden)
    wt = np.asarray(weight)
    for name, arr in (("hidden", h), ("weight", wt)):
        try:
            ok = get_format(arr.dtype).name in _INPUT_FORMATS
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{name} must be float16, bfloat16 or float32 (the rounded "
                             f"values of a model), got dtype {arr.dtype}")
    if h.ndim != 2 or wt.ndim != 2 or h.shape[1] != wt.shape[1]:
        raise ValueError(f"hidden must be (B, K) and weight (V, K) with the same K, got "
                         f"{h.shape} and {wt.shape}")
    h64 = h.astype(np.float64)
    if not np.isfinite(h64).all():
        raise ValueError("hidden must be finite")
    B, K = h64.shape
    V = wt.shape[0]
    w = (53 - max(K - 1, 1).bit_length()) // 2
    ah, row_exp = _scaled_rows(h64)
    sh = _slices(ah, w)
    col_exp = np.zeros(V, dtype=np.int64)
    blocks: list[list[np.ndarray]] = []
    most = 1
    for a in range(0, V, block):
        wb = wt[a:a + block].astype(np.float64)  # one block at a time: O(block K) memory
        if not np.isfinite(wb).all():
            raise ValueError("weight must be finite")
        aw, ce = _scaled_rows(wb)
        col_exp[a:a + block] = ce
        sw = _slices(aw, w)
        most = max(most, len(sw))
        digs: list[np.ndarray] = []
        for k, A in enumerate(sh):
            for j, Wl in enumerate(sw):
                P = (A @ Wl.T).astype(np.int64)  # exact: integers below 2**53
                if k + j < len(digs):
                    digs[k + j] += P
                else:
                    digs.append(P)
        blocks.append(digs)
    n = len(sh) + most - 1
    digits = np.zeros((n, B, V), dtype=np.int64)
    for b, digs in enumerate(blocks):
        a = b * block
        for d, P in enumerate(digs):
            digits[d, :, a:a + P.shape[1]] = P
    return ExactProduct(digits, row_exp, col_exp, w, (len(sh), most))


# ---------------------------------------------------------------------------------------
# the certified loss

class _ExactValuesRow(_ExactRow):
    """One row given as exact raw mpf values (the reference's Ziv loop, ``evaluate``, is
    inherited; only the preparation and the enclosure of L differ)."""

    def __init__(self, vals: list, approx: np.ndarray, t: int):  # noqa: D107
        V = len(vals)
        top = float(np.max(approx))
        cand = np.flatnonzero(approx >= top - (abs(top) * 2.0 ** -40 + 2.0 ** -900))
        k = int(cand[0])
        for j in cand[1:].tolist():
            if libmp.mpf_gt(vals[j], vals[k]):
                k = j
        if libmp.mpf_eq(vals[t], vals[k]):
            k = t
        self.M = vals[k]
        self.m_f = libmp.to_float(self.M)
        self.D = libmp.mpf_sub(self.M, vals[t], 0)  # m - x_t, exact
        idx = np.array([j for j in range(V) if j != k], dtype=np.int64)
        self.ys = [libmp.mpf_sub(vals[j], self.M, 0) for j in idx.tolist()]  # exact, <= 0
        self.yf = np.array([libmp.to_float(y) for y in self.ys]) if self.ys else np.zeros(0)
        self.n = len(self.ys)

    def enclosure(self, prec: int) -> tuple[tuple, tuple]:
        """Raw mpf (lo, hi) with lo <= L <= hi, L = D + log1p(sum_j exp(y_j))."""
        n = self.n
        bl = max(n, 1).bit_length()
        Q = prec + bl + 4
        W = Q + 8
        if n == 0:
            return self.D, self.D
        ymax = float(np.max(self.yf))
        # terms below ymax - (Q + bl) ln 2 add up to < 2**-Q exp(ymax) <= 2**-Q S': bounded
        # instead of computed (a margin of one unit keeps the float test on the safe side)
        thr = ymax - (Q + bl) * 0.6932 - 1.0
        keep = np.flatnonzero(self.yf > thr)
        skipped = keep.size < n
        e0 = libmp.mpf_exp(self.ys[int(np.argmax(self.yf))], Q, _NEAR)
        F = Q + bl + 2 - (e0[2] + e0[3])
        s_lo = s_hi = 0
        for j in keep.tolist():
            _, man, ex, _ = libmp.mpf_exp(self.ys[j], Q, _NEAR)
            sh = ex + F
            if sh >= 0:
                q = man << sh
                s_lo += q
                s_hi += q
            else:
                s_lo += man >> -sh
                s_hi += -((-man) >> -sh)
        lo_S = _scaled(libmp.from_man_exp(s_lo, -F), (1 << (Q - 3)) - 1, Q - 3, W, _FLOOR)
        hi_S = _scaled(libmp.from_man_exp(s_hi, -F), (1 << (Q - 3)) + 1, Q - 3, W, _CEIL)
        if skipped:
            hi_S = _scaled(hi_S, (1 << Q) + 1, Q, W, _CEIL)
        lo_l, hi_l = _log1p_down(lo_S, W), _log1p_up(hi_S, W)
        return (libmp.mpf_add(self.D, lo_l, W, _FLOOR), libmp.mpf_add(self.D, hi_l, W, _CEIL))


def cross_entropy_exact_logits(logits: "ExactProduct | PairLogits", targets: np.ndarray,
                               fmt: "str | Format", *, method: str = "auto") -> ReferenceResult:
    """Correctly rounded -log softmax(x)[t] per row of exact logits x (reduction "none").

    Args:
        logits: :class:`ExactProduct` (from :func:`exact_product`) or :class:`PairLogits`.
        targets: (B,) integers in [0, V).
        fmt: the result format.
        method: "auto" (fast enclosure, undecided rows exact) or "exact" (every row on the
            mpmath path).

    Returns:
        A ReferenceResult: values (fmt's dtype), hi/lo/err of the unrounded loss, slow_rows.

    Raises:
        ValueError: bad shapes or targets; ReferenceError: a row not decided at the
        reference's MAX_PRECISION.
    """
    f = get_format(fmt)
    if method not in ("auto", "exact"):
        raise ValueError(f"method must be 'auto' or 'exact', not {method!r}")
    B, V = logits.shape
    t = np.asarray(targets)
    if t.shape != (B,) or (B and not np.issubdtype(t.dtype, np.integer)):
        raise ValueError(f"targets must be ({B},) integers, got {t.shape} {t.dtype}")
    t = t.astype(np.int64)
    if B and (t.min() < 0 or t.max() >= V):
        raise ValueError(f"targets must lie in [0, {V})")
    values = np.zeros(B, dtype=f.np_dtype)
    hi_out = np.zeros(B)
    lo_out = np.zeros(B)
    err_out = np.zeros(B)
    todo = np.ones(B, dtype=bool)
    hi, lo, err = logits.hi_lo_err()
    if V == 1:  # the target is the only logit: L = 0 exactly
        return ReferenceResult(values, hi_out, lo_out, err_out, 0, B, B, "fast")
    if method == "auto" and f.name != "float64" and B:
        fr = _fastref.fast_rows(hi, t, f)
        R = np.max(np.abs(lo) + err, axis=1) * (1 + 2.0 ** -40)
        E = (fr.err + 2 * R) * (1 + 2.0 ** -40) + 2.0 ** -1070
        with np.errstate(invalid="ignore", over="ignore"):
            lo_end = np.maximum(np.nextafter(fr.hi - E, -np.inf), 0.0)
            hi_end = np.nextafter(fr.hi + E, np.inf)
        rl = round_float64_array(lo_end, f)
        rh = round_float64_array(hi_end, f)
        one_binade = (np.frexp(lo_end)[1] == np.frexp(hi_end)[1]) | (hi_end <= 2.0 ** -1022)
        ok = (np.isfinite(fr.hi) & np.isfinite(E) & one_binade
              & (rl.view(f.uint_dtype) == rh.view(f.uint_dtype)))
        values[ok] = rl[ok]
        hi_out[ok], err_out[ok] = fr.hi[ok], E[ok]
        todo = ~ok
    rows = np.flatnonzero(todo)
    for i in rows.tolist():
        row = _ExactValuesRow(logits.row(i), hi[i], int(t[i]))
        v, h, l_, e, _ = row.evaluate(f, i)
        values[i], hi_out[i], lo_out[i], err_out[i] = v, h, l_, e
    used = "exact" if method == "exact" else "fast"
    return ReferenceResult(values, hi_out, lo_out, err_out, int(rows.size), 0, B, used)
