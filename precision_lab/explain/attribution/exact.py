"""Exact arithmetic on float64 arrays for the attribution: the vectorized fixed-point exponential
(:func:`_fx_exp`, relative error <= :data:`EPS_EXP_TERM`), error-free transformations (TwoSum,
TwoProduct), conversions between mpmath numbers and dyadic Fractions, and exact row sums of
floats and of exponentials."""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Optional, Union

import mpmath
import numpy as np

from precision_lab.numerics.eft import fast_two_sum as _fast_two_sum
from precision_lab.numerics.eft import two_sum as _two_sum

#: Relative error bound of one term of the fixed-point exponential kernel.
EPS_EXP_TERM = 2.0 ** -140


# =========================================================================== fixed-point exp
#
# A number is a (NF + 1, n) int64 array of limbs: L0 the integer part (signed), L1..L5 the
# fraction in base 2**30 (each in [0, 2**30)): value = sum_i L_i 2**(-30 i), resolution
# 2**-150.  Sums of limb products stay below 2**63 (at most 6 products of two 30-bit limbs,
# the integer limbs being small).  Every truncation is toward -inf and is bounded below.

_LB = 30
_MASK = (1 << _LB) - 1
_NF = 5
_TB = 8
_NT = 1 << (2 * _TB)       # exp(z) = 2**k * 2**(j/65536) * exp(r), |r| <= ln2/2**17
_KDEG = 7                  # Taylor degree: r**8/8! < 2**-155
_ZMAX = 4096.0             # |z| <= _ZMAX: n = rint(z 2**16/ln2) < 2**28.6, n * limb < 2**59
_CHUNK = 16384
# fraction limbs kept at Horner level i (multiplied by r**i later): 2**(-30 nf) r**i <= 2**-150
_LIMBS = [min(_NF, max(1, -(-int(150 - 17.5 * i) // 30))) for i in range(_KDEG + 1)]


def _limbs_of(x: "mpmath.mpf", nfrac: int) -> list[int]:
    v = int(mpmath.floor(x * mpmath.mpf(2) ** (_LB * nfrac)))
    out = []
    for _ in range(nfrac):
        out.append(v & _MASK)
        v >>= _LB
    out.append(v)
    return out[::-1]


@functools.cache
def _fx_tables() -> tuple:
    with mpmath.workprec(400):
        ln2 = mpmath.log(2)
        c = np.array(_limbs_of(ln2 / _NT, 7), dtype=np.int64)          # 210 fraction bits
        invf = [np.array(_limbs_of(1 / mpmath.factorial(i), _NF), dtype=np.int64)
                for i in range(_KDEG + 1)]
        thi = np.array([_limbs_of(mpmath.power(2, mpmath.mpf(j << _TB) / _NT), _NF)
                        for j in range(1 << _TB)], dtype=np.int64).T
        tlo = np.array([_limbs_of(mpmath.power(2, mpmath.mpf(j) / _NT), _NF)
                        for j in range(1 << _TB)], dtype=np.int64).T
        inv = float(_NT / ln2)
    return c, invf, thi, tlo, inv


def _fx_from_float(v: np.ndarray) -> np.ndarray:
    """Limbs of float64 values |v| < 2**62, truncated toward 0 (error < 2**-150)."""
    a = np.abs(v)
    t = np.floor(a)
    out = np.empty((_NF + 1,) + v.shape, dtype=np.int64)
    out[0] = t
    f = a - t                      # exact
    for i in range(1, _NF + 1):
        f = f * (1 << _LB)         # exact
        d = np.floor(f)
        out[i] = d
        f = f - d                  # exact
    np.negative(out, out=out, where=(v < 0)[None])
    return out


def _fx_norm(c: np.ndarray) -> np.ndarray:
    for i in range(c.shape[0] - 1, 0, -1):
        c[i - 1] += c[i] >> _LB
        c[i] &= _MASK
    return c


def _fx_mul(a: np.ndarray, b: np.ndarray, nf: int) -> np.ndarray:
    """a * b truncated to nf fraction limbs; the column below is carried, the rest dropped:
    error < (#dropped products + 1) 2**(-30 nf - 30) < 2**(-30 nf - 27)."""
    na, nb = min(a.shape[0], nf + 2), min(b.shape[0], nf + 2)
    cols = np.zeros((nf + 2,) + a.shape[1:], dtype=np.int64)
    for i in range(na):
        m = min(nb, nf + 2 - i)
        if m > 0:
            cols[i:i + m] += a[i] * b[:m]
    _fx_norm(cols)
    return cols[:nf + 1]


def _fx_exp_chunk(zh: np.ndarray, zl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c, invf, thi, tlo, inv = _fx_tables()
    ni = np.rint(zh * inv).astype(np.int64)
    R = np.zeros((8,) + zh.shape, dtype=np.int64)
    R[:_NF + 1] = _fx_from_float(zh)
    R[:_NF + 1] += _fx_from_float(zl)
    R -= ni[None] * c[:, None]            # exact: |n| < 2**28.6, limbs < 2**30
    _fx_norm(R)
    r = R[:_NF + 1]                        # r = z - n ln2/2**16, truncated at 2**-150
    P = np.broadcast_to(invf[_KDEG][:_LIMBS[_KDEG] + 1, None],
                        (_LIMBS[_KDEG] + 1,) + zh.shape).copy()
    for i in range(_KDEG - 1, -1, -1):
        nf = _LIMBS[i]
        P = _fx_mul(P, r, nf)
        P += invf[i][:nf + 1, None]
        _fx_norm(P)
    j = ni & (_NT - 1)
    T = _fx_mul(thi[:, j >> _TB], tlo[:, j & ((1 << _TB) - 1)], _NF)
    return _fx_mul(T, P, _NF), ni >> (2 * _TB)


def _fx_exp(zh: np.ndarray, zl: "np.ndarray | None" = None) -> tuple[np.ndarray, np.ndarray]:
    """exp(zh + zl) = M * 2**k for 1-D float64 arrays with |zh| <= 4096 (zl the low part of
    an exact double-double, or None): returns the limbs M (6, n), value in [0.99, 2.01), and
    k (n,) int64.  Relative error <= EPS_EXP_TERM = 2**-140.

    Budget (absolute, on values of order 1): the inputs and r truncated at 2**-150 (3 times),
    ln2/2**16 known to 2**-210 (times n < 2**29), each Horner level kept to
    2**-150 / |r|**i with products dropping < 2**-147, Taylor remainder 2**-155, the two
    tables truncated at 2**-150 and two more products: below 2**-142 in all."""
    zh = np.asarray(zh, dtype=np.float64)
    zl = np.zeros_like(zh) if zl is None else np.asarray(zl, dtype=np.float64)
    n = zh.size
    M = np.empty((_NF + 1, n), dtype=np.int64)
    k = np.empty(n, dtype=np.int64)
    for a in range(0, n, _CHUNK):
        sl = slice(a, min(n, a + _CHUNK))
        M[:, sl], k[sl] = _fx_exp_chunk(zh[sl], zl[sl])
    return M, k


def _fx_to_dd(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A double-double (h, l) of the limbs' value (relative error < 2**-105 for values ~1)."""
    sc = [1.0, 2.0 ** -30, 2.0 ** -60, 2.0 ** -90, 2.0 ** -120, 2.0 ** -150]
    a = M[0] * sc[0] + M[1] * sc[1]                      # exact: <= 33 bits
    h, e = _two_sum(a, M[2] * sc[2])
    low = e + (M[3] * sc[3] + (M[4] * sc[4] + M[5] * sc[5]))
    return _fast_two_sum(h, low)


def _group_sum(M: np.ndarray, k: np.ndarray, rows: np.ndarray, B: int) -> list[tuple[int, int]]:
    """Exact sum_j M_j 2**k_j per row, as (integer mantissa, exponent) pairs."""
    out: list[tuple[int, int]] = [(0, 0)] * B
    if k.size == 0:
        return out
    kmin = int(k.min())
    nb = int(k.max()) - kmin + 1
    idx = rows * nb + (k - kmin)
    # float64 sums of limbs < 2**30 are exact below 2**53 terms per bin (V < 2**23)
    sums = np.stack([np.bincount(idx, weights=M[i].astype(np.float64), minlength=B * nb)
                     for i in range(_NF + 1)]).reshape(_NF + 1, B, nb)
    used = (sums != 0).any(axis=0)
    for b in range(B):
        bins = np.flatnonzero(used[b])
        tot = 0
        for kk in bins.tolist():
            v = 0
            for i in range(_NF + 1):
                v = (v << _LB) + int(sums[i, b, kk])
            tot += v << kk
        out[b] = (tot, kmin - _LB * _NF)
    return out


# =========================================================================== float helpers

# TwoSum, FastTwoSum and TwoProduct: precision_lab.numerics.eft (imported above).


def _f64(a: Any) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind in "iub":
        return a.astype(np.int64)
    return a.astype(np.float64)  # exact: every format widens exactly into float64


def _content_key(*arrays: Any) -> tuple:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return (h.digest(),)


def _mpf_frac(x: "mpmath.mpf") -> Fraction:
    sign, man, exp, _ = x._mpf_
    v = Fraction(int(man)) * (Fraction(2) ** int(exp))
    return -v if sign else v


def _quantize(x: "mpmath.mpf", grid: int) -> Fraction:
    """A finite mpf rounded to the nearest multiple of 2**grid (ties away), exactly."""
    sign, man, exp, bc = x._mpf_
    if not man:
        return Fraction(0)
    man, exp = int(man), int(exp)
    if exp + int(bc) < grid - 1:       # |x| < 2**(grid - 1)
        return Fraction(0)
    if exp >= grid:
        q = man << (exp - grid)
    else:
        sh = grid - exp
        q = (man + (1 << (sh - 1))) >> sh
    v = Fraction(q) * Fraction(2) ** grid if grid < 0 else Fraction(q << grid)
    return -v if sign else v


def _ratio_up(r: "mpmath.mpf", e: int) -> float:
    """r * 2**-e as a float64 not below the true value (r >= 0)."""
    if r == 0:
        return 0.0
    v = float(mpmath.ldexp(r, -e))
    return float(np.nextafter(v, np.inf)) if v < np.inf else v


def _mpf_exact(man: int, exp: int) -> "mpmath.mpf":
    """man * 2**exp rounded to the working precision."""
    return mpmath.ldexp(mpmath.mpf(man), exp)


def _frac_mpf(x: Fraction) -> "mpmath.mpf":
    """A dyadic Fraction rounded to the working precision (error <= 2**-prec relative)."""
    den = x.denominator
    if den & (den - 1):
        return mpmath.mpf(x.numerator) / den
    return mpmath.ldexp(mpmath.mpf(x.numerator), -(den.bit_length() - 1))


# =========================================================================== exact sums

def _exact_sums(a: np.ndarray,
                excluded: "np.ndarray | None" = None) -> list[Union[Fraction, float]]:
    """Exact sum over the last axis of float64 values, per row: a Fraction, or inf/-inf/nan by
    IEEE's rules for the non-finite values (NaN if any NaN or +inf and -inf both)."""
    a = np.asarray(a, dtype=np.float64)
    B = a.shape[0]
    if excluded is not None:
        a = np.where(excluded, 0.0, a)
    fin = np.isfinite(a)
    out: list[Union[Fraction, float]] = [Fraction(0)] * B
    odd = ~fin.all(axis=1)
    for b in np.flatnonzero(odd).tolist():
        r = a[b]
        pos, neg = bool((r == np.inf).any()), bool((r == -np.inf).any())
        bad = bool(np.isnan(r).any()) or (pos and neg)
        out[b] = math.nan if bad else (math.inf if pos else -math.inf)
    m, e = np.frexp(np.where(fin, a, 0.0))
    mi = (m * 2.0 ** 53).astype(np.int64)          # exact integer mantissas, |mi| < 2**53
    ex = e.astype(np.int64) - 53
    hi, lo = mi >> 26, mi & ((1 << 26) - 1)        # float64 bin sums stay exact (V < 2**26)
    emin = int(ex.min()) if ex.size else 0
    nb = int(ex.max()) - emin + 1 if ex.size else 1
    idx = (np.arange(B)[:, None] * nb + (ex - emin)).ravel()
    sh = np.bincount(idx, weights=hi.ravel().astype(np.float64), minlength=B * nb).reshape(B, nb)
    sl = np.bincount(idx, weights=lo.ravel().astype(np.float64), minlength=B * nb).reshape(B, nb)
    for b in range(B):
        if odd[b]:
            continue
        tot = 0
        for kk in np.flatnonzero((sh[b] != 0) | (sl[b] != 0)).tolist():
            tot += ((int(sh[b, kk]) << 26) + int(sl[b, kk])) << kk
        out[b] = Fraction(tot) * Fraction(2) ** emin if emin < 0 else Fraction(tot << emin)
    return out


class _ExpTable:
    """exp of every element of a float64 array with |y| <= 4096 by the fixed-point kernel,
    computed once and shared by the local errors of an exp step and by the reductions
    sum_j exp(y_j) of the same array."""

    def __init__(self, y: np.ndarray) -> None:
        flat = np.asarray(y, dtype=np.float64).ravel()
        with np.errstate(invalid="ignore"):
            self.sel = np.flatnonzero(np.isfinite(flat) & (np.abs(flat) <= _ZMAX))
        self.pos = np.full(flat.size, -1, np.int64)
        self.pos[self.sel] = np.arange(self.sel.size)
        # repeated values (most of a float16/bfloat16 row) are computed once
        vals, inv = np.unique(flat[self.sel], return_inverse=True)
        M, k = _fx_exp(vals)
        self.M, self.k = M[:, inv], k[inv]


@dataclass
class _ExpSum:
    """sum_j exp(F_j) over a row's non-excluded j = exp(top) (ctop + exp(wsh - top) Q), where
    Q = qman 2**qexp is within relative qerr of sum_{F_j < top} exp(F_j - wsh); or ``special``:
    nan (a NaN term), inf (a +inf term), 0.0 (no term)."""

    special: Optional[float]
    top: float = 0.0
    ctop: int = 0
    wsh: float = 0.0
    qman: int = 0
    qexp: int = 0
    qerr: float = 0.0


def _exp_sums(F: np.ndarray, excluded: "np.ndarray | None" = None,
              table: "_ExpTable | None" = None) -> list[_ExpSum]:
    """The :class:`_ExpSum` of every row of F (B, V) float64, optionally leaving out
    ``excluded`` (B, V) bool elements.  Terms exp(F_j) come from ``table`` (unshifted, wsh = 0)
    where every needed element is in its range, else from the kernel on F_j - x_s (exact
    double-doubles), x_s the largest element below the top (wsh = x_s).  Terms below
    exp(x_s - 760) are dropped and bounded."""
    B, V = F.shape
    if V >= 1 << 23:
        raise ValueError(f"rows of V = {V} classes are too long for the exact sums (< 2**23)")
    valid = np.ones(F.shape, bool) if excluded is None else ~excluded
    isn = np.isnan(F) & valid
    live = valid & ~np.isnan(F) & (F > -np.inf)
    with np.errstate(invalid="ignore"):
        top = np.where(live, F, -np.inf).max(axis=1)
        ctop = (live & (F == top[:, None])).sum(axis=1)
        rest = live & (F < top[:, None])
        piv = np.where(rest, F, -np.inf).max(axis=1)
    out: list[_ExpSum] = []
    for b in range(B):
        if isn[b].any():
            out.append(_ExpSum(math.nan))
        elif not live[b].any():
            out.append(_ExpSum(0.0))
        elif top[b] == np.inf:
            out.append(_ExpSum(math.inf))
        else:
            out.append(_ExpSum(None, float(top[b]), int(ctop[b])))
    ok = np.array([e.special is None for e in out]) & rest.any(axis=1)
    rest &= ok[:, None]
    rb, cb = np.nonzero(rest)
    if not rb.size:
        return out
    zh, zl = _two_sum(F[rb, cb], -piv[rb])       # exact: both finite, zh <= 0
    take = zh >= -760.0
    dropped = np.bincount(rb[~take], minlength=B)
    rb, cb, zh, zl = rb[take], cb[take], zh[take], zl[take]
    shifted = np.ones(B, bool)
    sums_t: list = []
    sums_s: list = []
    if table is not None:
        pos = table.pos[rb * V + cb]
        shifted = np.bincount(rb[pos < 0], minlength=B) > 0   # some term out of the table
        use = ~shifted[rb]
        sums_t = _group_sum(table.M[:, pos[use]], table.k[pos[use]], rb[use], B)
    sh = shifted[rb]
    if sh.any():
        M, k = _fx_exp(zh[sh], zl[sh])
        sums_s = _group_sum(M, k, rb[sh], B)
    for b in np.flatnonzero(ok).tolist():
        e = out[b]
        e.wsh = float(piv[b]) if shifted[b] else 0.0
        e.qman, e.qexp = sums_s[b] if shifted[b] else sums_t[b]
        # each dropped term < exp(-759.99) times the pivot's term, and Q >= the pivot's term
        e.qerr = EPS_EXP_TERM + float(dropped[b]) * 2.0 ** -1096
    return out
