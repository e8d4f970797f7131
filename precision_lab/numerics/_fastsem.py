"""Fast path of the training-semantics loss and its gradient (private): whole batches,
vectorized, with a rigorous running error bound per value (Ziv's first step).  Used by
:mod:`precision_lab.numerics.semantics` and :mod:`precision_lab.numerics.gradient`.

Rows given here are general rows (the non-finite rules and ignored rows are decided by the
callers).  Two arithmetics:

* float64 (results in float16, bfloat16, float32): every quantity v carries a bound e on its
  absolute error, propagated by the standard model: fl(a op b) = (a op b)(1 + d), |d| <= u,
  u = 2**-53, so |a+b|: e_a + e_b + u|r|; a*b: |a| e_b + |b| e_a + e_a e_b + u|r|;
  numpy's exp, log1p, tanh, cosh within 4 ulps (2**-50 relative); sums of n terms within
  (n - 1) u sum|terms| (no credit for numpy's pairwise order); and 2**-1070 absolute per
  operation for underflow.  Soft-capped logits y = c tanh(x / c) are within
  eta = 2**-49 |y| (one rounding of x / c -- which moves tanh by at most u |tanh|, since
  a sech(a)**2 <= tanh(a) --, tanh's 4 ulps, one rounding of the product); y enters every
  later bound as an absolute perturbation eta (exp(y_j - m) then moves by a relative
  e**(2 eta) - 1 <= 2.01 eta).
* double-double (float64 results; the second attempt for rows the float64 arithmetic leaves
  undecided): values are unevaluated sums hi + lo; TwoSum/TwoProd are exact; a
  double-double sum is within 4 u**2 (|a| + |b|), a product within 10 u**2 |a b| (|a b| u**2
  for the dropped lo*lo, the rest from the roundings of the cross terms), a quotient within
  10 u**2 |a / b|; exp, expm1 and log1p are those of :mod:`precision_lab.numerics._fastref`
  (relative 2**-84, its expm1 method 2**-82 -- 2**-80 is used here, for either sign of a
  double-double argument -- and its log1p bound).  Soft-capping: tanh(b) =
  -M / (2 + M), M = expm1(-2b), b = |x / c|, so y is within 2**-78 |y|, and
  sech(x / c)**2 = 4E / (1 + E)**2, E = exp(-2b), within 2**-78.

Every final bound is inflated by (1 + 2**-20), which covers the second-order terms and the
rounding of the bound's own evaluation.  A value is "ok" where its whole enclosure rounds to
one float of the target format: it is then the correctly rounded result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from precision_lab.numerics._fastref import (
    _TH,
    _TL,
    EPS_EXP,
    EPS_EXPM1,
    _dd_exp,
    _dd_expm1_nonneg,
    _exp_parts,
    _tree_parts,
)
from precision_lab.numerics.eft import two_prod as _two_prod
from precision_lab.numerics.eft import two_sum as _two_sum
from precision_lab.numerics.formats import Format, round_float64_array

U = 2.0 ** -53
_INFLATE = 1.0 + 2.0 ** -20
_TINY = 2.0 ** -1070
_ETA = 2.0 ** -49
_CHUNK = 1 << 17  # elements per block


@dataclass
class Fast:
    """Outputs of a fast evaluation (shape (B,) for losses, (B, V) for gradients)."""

    ok: np.ndarray
    values: np.ndarray
    hi: np.ndarray
    lo: np.ndarray
    err: np.ndarray


def _empty(shape, f: Format) -> Fast:
    return Fast(np.zeros(shape, bool), np.zeros(shape, f.np_dtype), np.zeros(shape),
                np.zeros(shape), np.zeros(shape))


def _blocks(B: int, V: int):
    step = max(1, _CHUNK // max(V, 1))
    for a in range(0, B, step):
        yield slice(a, min(B, a + step))


# ---------------------------------------------------------------------------------------
# shared row preparation

@dataclass
class _Prep64:
    y: np.ndarray      # (B, V) logits after softcap
    eta: np.ndarray    # (B,) absolute error bound of every y_j
    k: np.ndarray      # (B,) the excluded index (argmax; the target where it is a max)
    m: np.ndarray      # (B,) y_k
    d: "np.ndarray | None"  # (B, V) m - y_j (>= 0 up to eta; +inf at -inf logits)
    dmax: np.ndarray   # (B,) the largest d_j with exp(-d_j) > 0 (746 without compensation)
    e: np.ndarray      # (B, V) exp(y_j - m), 0 at k
    S: np.ndarray      # (B,) sum_{j != k} e_j
    ES: np.ndarray     # bound on |S - S'|
    L1: np.ndarray     # log1p(S)
    EL1: np.ndarray
    good: np.ndarray   # (B,) the bounds are valid (eta small, everything finite)


def _prep64(x: np.ndarray, T: np.ndarray, spec, compensated: bool,
            want_d: bool = True) -> _Prep64:
    """Shared float64 row preparation.  ``compensated``: S' by a TwoSum tree (error about
    u S, for the gradient, whose elements each need p_j to ~2**-48) instead of np.sum
    (error (V - 1) u S, enough for most losses; undecided rows get double-double).
    ``want_d``: keep the (B, V) array d (else ``d`` is None; it costs a pass)."""
    B, V = x.shape
    idx = np.arange(B)
    with np.errstate(all="ignore"):
        if spec.softcap is not None:
            c = spec.softcap
            y = c * np.tanh(x / c)
            eta = _ETA * np.abs(y).max(axis=1) + _TINY
        else:
            y = x
            eta = np.zeros(B)
        k = y.argmax(axis=1)
        m = y[idx, k]
        if not spec.prob:
            k = np.where(y[idx, T] == m, T, k)
        e = np.subtract(y, m[:, None])  # -d, exactly the negated rounding of m - y
        d = np.negative(e) if want_d else None
        e[idx, k] = -np.inf
        np.exp(e, out=e)
        # S' by a TwoSum tree (error fac u**2 S, plus |Sl| for dropping the low part); the
        # exps are within 4 ulps plus u d_j (the rounding of d_j moves exp(-d_j) by a
        # relative u d_j <= u dmax; d_j < 746 wherever exp(-d_j) > 0), plus 2.01 eta
        n = V - 1
        if compensated:
            S, Sl, fac = _dd_sum(e, np.zeros_like(e))
            dmax = m - np.where(e > 0, y, m[:, None]).min(axis=1)
            ES = 1.02 * (fac * U * U + 2.0 ** -50 + U * dmax + 2.01 * eta) * S + np.abs(Sl) \
                + n * _TINY
        else:
            S = e.sum(axis=1)
            dmax = np.full(B, 746.0)
            ES = 1.02 * (n * U + 2.0 ** -50 + 746 * U + 2.01 * eta) * S + n * _TINY
        L1 = np.log1p(S)
        EL1 = ES / (1.0 + np.maximum(S - ES, 0.0)) + 2.0 ** -50 * L1 + _TINY
        good = (eta < 2.0 ** -30) & np.isfinite(m) & np.isfinite(S) & np.isfinite(L1)
    return _Prep64(y, eta, k, m, d, dmax, e, S, ES, L1, EL1, good)


def _coef_ok(x: np.ndarray, T: np.ndarray, spec) -> np.ndarray:
    """Rows whose -inf logits have a zero weight and zero target term separately (the fast
    path splits c_j into a target part and a smoothing part)."""
    ninf = x == -np.inf
    if spec.softcap is not None or not ninf.any():
        return np.ones(x.shape[0], bool)
    w = spec.weights()
    bad = np.zeros(x.shape, bool)
    if spec.prob:
        A = T * w[None, :]
        bad |= ninf & (A != 0)
    if spec.label_smoothing:
        bad |= ninf & (w[None, :] != 0)
    return np.asarray(~bad.any(axis=1))


def _nonneg(T: np.ndarray, spec) -> np.ndarray:
    """Rows whose loss is >= 0 for sure (every coefficient >= 0)."""
    ok = bool((spec.weights() >= 0).all())
    if spec.prob:
        return np.asarray(ok & (T >= 0).all(axis=1))
    return np.full(T.shape[0], ok)


def _round_check(val: np.ndarray, E: np.ndarray, f: Format, nonneg: np.ndarray):
    """(ok, rounded): whether [val - E, val + E] rounds to one value of f."""
    with np.errstate(all="ignore"):
        lo_end = np.nextafter(val - E, -np.inf)
        hi_end = np.nextafter(val + E, np.inf)
        lo_end = np.where(nonneg, np.maximum(lo_end, 0.0), lo_end)
    rl = round_float64_array(lo_end, f)
    rh = round_float64_array(hi_end, f)
    # bit equality: an enclosure across 0 that rounds to -0 and +0 is undecided
    same = rl.view(f.uint_dtype) == rh.view(f.uint_dtype)
    ok = np.isfinite(val) & np.isfinite(E) & same
    return ok, rl


# ---------------------------------------------------------------------------------------
# the loss, float64 arithmetic

def _run(fn, x: np.ndarray, T: np.ndarray, spec, f: Format, shape, *args) -> Fast:
    B, V = x.shape
    out = _empty(shape, f)
    for sl in _blocks(B, V):
        r = fn(x[sl], T[sl], spec, f, *args)
        out.ok[sl], out.values[sl], out.hi[sl], out.lo[sl], out.err[sl] = (
            r.ok, r.values, r.hi, r.lo, r.err)
    return out


def _merge(out: Fast, rows: np.ndarray, r: Fast) -> None:
    """Take r's decided values into out at ``rows`` where out was undecided."""
    take = r.ok & ~out.ok[rows]
    for name in ("values", "hi", "lo", "err"):
        sub = getattr(out, name)[rows]
        sub[take] = getattr(r, name)[take]
        getattr(out, name)[rows] = sub
    sub = out.ok[rows]
    sub |= take
    out.ok[rows] = sub


def loss_rows(x: np.ndarray, T: np.ndarray, spec, f: Format) -> Fast:
    """Fast enclosures of the general rows' losses: float64 arithmetic first (formats below
    float64), then double-double for the rows it leaves undecided (and for float64)."""
    B, V = x.shape
    if B == 0:
        return _empty(B, f)
    if f.name == "float64":
        return _run(_loss_dd, x, T, spec, f, B)
    out = _run(_loss_f64, x, T, spec, f, B)
    rows = np.flatnonzero(~out.ok)
    if rows.size:
        _merge(out, rows, _run(_loss_dd, x[rows], T[rows], spec, f, rows.size))
    return out


def _loss_f64(x: np.ndarray, T: np.ndarray, spec, f: Format) -> Fast:
    B, V = x.shape
    idx = np.arange(B)
    P = _prep64(x, T, spec, compensated=False, want_d=spec.prob or bool(spec.label_smoothing))
    eta, L1, EL1 = P.eta, P.L1, P.EL1
    w = spec.weights()
    eps = spec.label_smoothing
    with np.errstate(all="ignore"):
        if P.d is not None:  # kept for probabilities and smoothing
            fin = np.isfinite(P.d)
            dz = np.where(fin, P.d, 0.0)
        if not spec.prob:
            wt = w[T]
            dt = P.m - P.y[idx, T]
            dt = np.where(np.isfinite(dt), dt, 0.0)  # a masked target has weight 0 here
            edt = np.where(T == P.k, 0.0, U * dt + 2 * eta)
            s1 = dt + L1
            es1 = edt + EL1 + U * s1
            N = wt * s1
            eN = np.abs(wt) * es1 + U * np.abs(N)
        else:
            A = T * w[None, :] if spec.weight is not None else T
            extra = 1 if spec.weight is not None else 0
            Az = np.where(fin, A, 0.0)
            prod = Az * dz
            PA = prod.sum(axis=1)
            absPA = np.abs(prod).sum(axis=1)
            absA = np.abs(A).sum(axis=1)
            Asum = A.sum(axis=1)
            ePA = (V + 1 + extra) * U * absPA + 2 * eta * absA
            eAsum = (V + extra) * U * absA
            AL = Asum * L1
            eAL = np.abs(Asum) * EL1 + eAsum * L1 + U * np.abs(AL)
            N = PA + AL
            eN = ePA + eAL + U * np.abs(N)
        a = 1.0 - eps
        ea = U * a
        L = a * N
        EL = a * eN + ea * np.abs(N) + U * np.abs(L)
        if eps:
            b = eps / V
            eb = U * b
            if spec.weight is None:
                T1 = dz.sum(axis=1)
                eT1 = (V + 1) * U * T1 + 2 * eta * V
                Wv, eW = float(V), 0.0
            else:
                wd = w[None, :] * dz
                T1 = wd.sum(axis=1)
                eT1 = (V + 1) * U * np.abs(wd).sum(axis=1) + 2 * eta * np.abs(w).sum()
                Wv = float(np.asarray(spec.weight_sum_float()))
                eW = U * abs(Wv)
            WL = Wv * L1
            eWL = abs(Wv) * EL1 + eW * L1 + U * np.abs(WL)
            Sm = T1 + WL
            eSm = eT1 + eWL + U * np.abs(Sm)
            bS = b * Sm
            ebS = b * eSm + eb * np.abs(Sm) + U * np.abs(bS)
            L2 = L + bS
            EL = EL + ebS + U * np.abs(L2)
            L = L2
        if spec.z_loss:
            z = spec.z_loss
            lse = P.m + L1
            else_ = eta + EL1 + U * np.abs(lse)
            sq = lse * lse
            esq = 2 * np.abs(lse) * else_ + else_ * else_ + U * sq
            zz = z * sq
            ezz = z * esq + U * zz
            L2 = L + zz
            EL = EL + ezz + U * np.abs(L2)
            L = L2
        E = EL * _INFLATE + 16 * _TINY
    ok, vals = _round_check(L, E, f, _nonneg(T, spec))
    ok &= P.good & _coef_ok(x, T, spec)
    return Fast(ok, vals, L, np.zeros(B), E)


# ---------------------------------------------------------------------------------------
# double-double helpers

def _dd_add(ah, al, bh, bl):
    s, e = _two_sum(ah, bh)
    return _two_sum(s, e + (al + bl))


def _dd_mul(ah, al, bh, bl):
    p, e = _two_prod(ah, bh)
    return _two_sum(p, e + (ah * bl + al * bh))


def _dd_mul_d(ah, al, b):
    p, e = _two_prod(ah, b)
    return _two_sum(p, e + al * b)


def _dd_sum(h: np.ndarray, low: np.ndarray):
    """Sum of double-doubles (any signs) along axis 1: (Sh, Sl, factor) with
    |Sh + Sl - sum| <= factor * u**2 * sum|terms|.

    A pairwise TwoSum tree on the high parts (exact; the rounding errors are kept) and a
    float64 sum of those errors and the low parts."""
    top, acc, levels, P = _tree_parts(h, low)
    Sh, Sl = _two_sum(top, acc)
    return Sh, Sl, 1.02 * (2 * P + levels + 2) * (levels + 2)


def _dd_log1p(Sh: np.ndarray, Sl: np.ndarray, ES: np.ndarray):
    """log1p(S) of a double-double S >= 0 known within ES: (Lh, Ll, EL).

    For S >= 2**-900 the reference's fast-path method: y0 = log1p(Sh) (float64), then
    log1p(S) = y0 + log1p(z), z = (S - expm1(y0)) / (1 + expm1(y0)) (|z| ~ 2**-52), with
    expm1 in double-double; below, log1p(S) = S within S**2 / 2 (< 2**-1800)."""
    big = Sh >= 2.0 ** -900
    Shc = np.where(big, Sh, 1.0)
    Slc = np.where(big, Sl, 0.0)
    y0 = np.log1p(Shc)
    Mh, Ml = _dd_expm1_nonneg(y0)
    zh, ze = _two_sum(Shc, -Mh)
    z = (zh + (ze + (Slc - Ml))) / (1.0 + Mh)
    lh, ll = _two_sum(y0, z - 0.5 * z * z)
    El = (ES + 1.01 * EPS_EXPM1 * Mh + 4 * U * U * Shc) / (1.0 + Mh * (1 - 2.0 ** -40)) \
        * 1.01 + 6 * U * np.abs(z) + np.abs(z) ** 3
    Lh = np.where(big, lh, Sh)
    Ll = np.where(big, ll, Sl)
    EL = np.where(big, El, ES + 2.0 ** -1074)
    return Lh, Ll, EL


@dataclass
class _PrepDD:
    k: np.ndarray
    mh: np.ndarray    # m = y_k as a double-double (exact without softcap)
    ml: np.ndarray
    eta_m: np.ndarray  # bound on the error of m (0 without softcap)
    delta: np.ndarray  # (B,) bound on the error of every y_j - m (0 without softcap)
    yh: np.ndarray    # y - m = yh + yl (exactly without softcap)
    yl: np.ndarray
    fin: np.ndarray
    eh: np.ndarray    # exp(y_j - m) as double-double, 0 at k and -inf logits
    el: np.ndarray
    Sh: np.ndarray
    Sl: np.ndarray
    ES: np.ndarray
    L1h: np.ndarray
    L1l: np.ndarray
    EL1: np.ndarray
    good: np.ndarray
    Eh: "np.ndarray | None"  # softcap: exp(-2|x/c|) (for sech^2), else None
    El: "np.ndarray | None"


def _dd_div(nh, nl, dh, dl):
    """(nh + nl) / (dh + dl), double-double, within 10 u**2 relative (one correction)."""
    q0 = nh / dh
    p, pe = _two_prod(q0, dh)
    r = (((nh - p) - pe) + nl) - q0 * dl
    return _two_sum(q0, r / dh)


def _dd_expm1(uh: np.ndarray, ul: np.ndarray):
    """expm1(uh + ul) for -746 <= uh <= 0, double-double, relative error <= 2**-80.

    The reference fast path's expm1 method for a double-double argument of either sign:
    expm1(u) = (2**k T_j - 1) + 2**k T_j p; the first part is exact (TwoSum) plus the table's
    low part, the second accurate relative to itself, and for u < 0 they cancel by at most a
    factor 2 as well (n = -1: 2**(-1/1024) - 1 against |p| <= ln 2 / 2048)."""
    k, j, ph, pl = _exp_parts(uh, ul, accurate_tail=True)
    th, tl = _TH[j], _TL[j]
    sc = np.ldexp(1.0, k)
    bh, be = _two_sum(sc * th, np.full_like(th, -1.0))
    bl = be + sc * tl
    a, ae = _two_prod(th, ph)
    al = ae + (th * pl + tl * ph)
    s_, se = _two_sum(bh, sc * a)
    return _two_sum(s_, se + (bl + sc * al))


def _dd_softcap(x: np.ndarray, c: float, want_E: bool):
    """y = c tanh(x / c) as a double-double, its error bound eta (B, V), and (``want_E``)
    E = exp(-2|x/c|) as a double-double, else None (module docstring).  x = +-inf gives
    y = +-c exactly, E = 0."""
    with np.errstate(all="ignore"):
        inf = np.isinf(x)
        xs = np.where(inf, 0.0, x)
        ah = xs / c
        p, pe = _two_prod(ah, np.full_like(ah, c))
        al = ((xs - p) - pe) / c  # x - ah c is exact: a = ah + al within 2 u**2 |a|
        neg = ah < 0
        bh = np.abs(ah)
        bl = np.where(neg, -al, al)
        big = bh > 372.0  # exp(-2b) < 2**-1073: tanh = 1 and sech^2 = 0 within 2**-1070
        uh = np.where(big, 0.0, -2 * bh)
        ul = np.where(big, 0.0, -2 * bl)
        Mh, Ml = _dd_expm1(uh, ul)  # M = expm1(-2b), relative 2**-80 (+ 2 u**2 from a)
        Mh = np.where(big, -1.0, Mh)
        Ml = np.where(big, 0.0, Ml)
        dh_, dl_ = _dd_add(np.full_like(Mh, 2.0), np.zeros_like(Mh), Mh, Ml)
        qh, ql = _dd_div(-Mh, -Ml, dh_, dl_)  # tanh(b), relative 2 * 2**-80 + 10 u**2
        yh, yl = _dd_mul_d(qh, ql, c)
        yh = np.where(neg, -yh, yh)
        yl = np.where(neg, -yl, yl)
        yh = np.where(inf, np.copysign(c, x), yh)
        yl = np.where(inf, 0.0, yl)
        eta = np.where(inf, 0.0, 2.0 ** -78 * np.abs(yh) + 2.0 ** -1070)
        if not want_E:
            return yh, yl, eta, None, None
        # E = exp(-2b): 1 + M while 2b <= 1 (no cancellation), exp itself beyond, 0 when it
        # underflows
        E1h, E1l = _two_sum(np.ones_like(Mh), Mh)
        E1l = E1l + Ml
        Eh, El = _dd_exp(uh, ul)
        near = bh <= 0.5
        Eh = np.where(near, E1h, Eh)
        El = np.where(near, E1l, El)
        Eh = np.where(big | inf, 0.0, Eh)
        El = np.where(big | inf, 0.0, El)
    return yh, yl, eta, Eh, El


def _dd_sech2(Eh: np.ndarray, El: np.ndarray):
    """sech^2 = 4E / (1 + E)**2 from E = exp(-2|a|): (hi, lo), relative error <= 2**-78
    (3 times E's, 2**-80, plus the double-double operations) plus 2**-1060 absolute (E
    underflowing or 0)."""
    oh, ol = _dd_add(np.ones_like(Eh), np.zeros_like(Eh), Eh, El)
    sqh, sql = _dd_mul(oh, ol, oh, ol)
    return _dd_div(4 * Eh, 4 * El, sqh, sql)


def _prep_dd(x: np.ndarray, T: np.ndarray, spec, want_E: bool = False) -> _PrepDD:
    B, V = x.shape
    idx = np.arange(B)
    uu = U * U
    with np.errstate(all="ignore"):
        Eh = El = None
        if spec.softcap is not None:
            Yh, Yl, eta, Eh, El = _dd_softcap(x, spec.softcap, want_E)
            fin = np.ones(x.shape, bool)
        else:
            Yh, Yl, eta = x, None, None
            fin = np.isfinite(x)
        k = Yh.argmax(axis=1)
        mh = Yh[idx, k]
        if not spec.prob:
            k = np.where(Yh[idx, T] == mh, T, k)
        mh = Yh[idx, k]
        mag = np.where(fin, np.abs(Yh), 0.0).max(axis=1)
        good = mag <= 2.0 ** 500
        s_ = Yh - mh[:, None]
        bb = s_ - Yh
        e_ = (Yh - (s_ - bb)) + (-mh[:, None] - bb)  # TwoSum: Yh - mh = s_ + e_ exactly
        if Yl is None:
            ml = np.zeros(B)
            eta_m = np.zeros(B)
            delta = np.zeros(B)
            yh, yl = s_, e_
        else:
            ml = Yl[idx, k]
            eta_m = eta[idx, k]
            yh, yl = _two_sum(s_, e_ + (Yl - ml[:, None]))
            # the dd subtraction (4 u^2 (|y| + |m|)) and the errors of y_j and m
            delta = (8 * uu * mag + eta.max(axis=1) + eta_m) * 1.01
        yh = np.where(fin, yh, -np.inf)
        yl = np.where(fin, yl, 0.0)
        live = yh >= -745.2
        live[idx, k] = False
        eh, el = _dd_exp(np.where(live, yh, 0.0), np.where(live, yl, 0.0))
        eh = np.where(live, eh, 0.0)
        el = np.where(live, el, 0.0)
        Sh, Sl, fac = _dd_sum(eh, el)
        # an error delta in y_j - m moves exp(y_j - m) by a relative e^delta - 1 <= 1.01 delta
        ES = (1.01 * EPS_EXP + fac * U * U + 1.01 * delta) * Sh + V * 2.0 ** -1072
        L1h, L1l, EL1 = _dd_log1p(Sh, Sl, ES)
        good &= np.isfinite(L1h) & np.isfinite(EL1) & (delta < 2.0 ** -40)
    return _PrepDD(k, mh, ml, eta_m, delta, yh, yl, fin, eh, el, Sh, Sl, ES, L1h, L1l, EL1,
                   good, Eh, El)


def _dd_scalars(spec):
    """a = 1 - eps and b = eps / V as double-doubles (a exactly, b within 2 u**2 b)."""
    eps = spec.label_smoothing
    ah, al = _two_sum(np.float64(1.0), np.float64(-eps))
    V = float(spec.V)
    bh = eps / V
    p, pe = _two_prod(np.float64(bh), np.float64(V))
    bl = ((eps - p) - pe) / V
    return float(ah), float(al), float(bh), float(bl)


def _dd_round(Lh: np.ndarray, Ll: np.ndarray, E: np.ndarray, f: Format, nonneg):
    """(ok, values): whether the double-double enclosure [Lh + Ll - E, Lh + Ll + E] rounds
    to one value of f, and that value."""
    if f.name == "float64":
        return _dd_check(Lh, Ll, E), Lh.copy()
    with np.errstate(all="ignore"):
        # each end is one float64 sum away from the exact end: one step outward covers it
        lo_end = np.nextafter(Lh + (Ll - E), -np.inf)
        hi_end = np.nextafter(Lh + (Ll + E), np.inf)
        lo_end = np.where(nonneg, np.maximum(lo_end, 0.0), lo_end)
    rl = round_float64_array(lo_end, f)
    rh = round_float64_array(hi_end, f)
    ok = (rl.view(f.uint_dtype) == rh.view(f.uint_dtype)) & np.isfinite(Lh) & np.isfinite(E) \
        & np.isfinite(Ll)
    return ok, rl


def _dd_check(Lh: np.ndarray, Ll: np.ndarray, E: np.ndarray):
    """ok where [Lh + Ll - E, Lh + Ll + E] rounds to Lh in float64."""
    with np.errstate(all="ignore"):
        up = (np.nextafter(Lh, np.inf) - Lh) / 2
        dn = (Lh - np.nextafter(Lh, -np.inf)) / 2
        slack = 2.0 ** -50 * (np.abs(Ll) + E)
        return (np.isfinite(Lh) & np.isfinite(Ll) & np.isfinite(E) & (np.abs(Lh) >= 2.0 ** -960)
                & (Ll + E + slack < up) & (E - Ll + slack < dn))


def _loss_dd(x: np.ndarray, T: np.ndarray, spec, f: Format) -> Fast:
    B, V = x.shape
    idx = np.arange(B)
    P = _prep_dd(x, T, spec)
    w = spec.weights()
    uu = U * U
    with np.errstate(all="ignore"):
        dh = np.where(P.fin, -P.yh, 0.0)  # d_j = m - y_j = dh + dl exactly
        dl = np.where(P.fin, -P.yl, 0.0)
        L1h, L1l, EL1 = P.L1h, P.L1l, P.EL1
        L1a = np.abs(L1h) * (1 + 2 * U)
        if not spec.prob:
            wt = w[T]
            th, tl = dh[idx, T], dl[idx, T]
            sh, sl = _dd_add(th, tl, L1h, L1l)
            es = EL1 + 4 * uu * (np.abs(th) + L1a) + np.where(T == P.k, 0.0, P.delta)
            Nh, Nl = _dd_mul_d(sh, sl, wt)
            eN = np.abs(wt) * es + 4 * uu * np.abs(Nh) * 1.01
        else:
            if spec.weight is not None:
                Ah, Al = _two_prod(T, np.broadcast_to(w, T.shape))
            else:
                Ah, Al = T, np.zeros_like(T)
            Ah = np.where(P.fin, Ah, 0.0)
            Al = np.where(P.fin, Al, 0.0)
            ph, pl = _dd_mul(Ah, Al, dh, dl)
            absP = np.abs(ph).sum(axis=1) * 1.01
            PAh, PAl, fac = _dd_sum(ph, pl)
            ePA = (10 + fac) * uu * absP + P.delta * np.abs(Ah).sum(axis=1) * 1.01
            Sah, Sal, fac2 = _dd_sum(Ah, Al)
            eAs = fac2 * uu * np.abs(Ah).sum(axis=1) * 1.01
            ALh, ALl = _dd_mul(Sah, Sal, L1h, L1l)
            eAL = np.abs(Sah) * 1.01 * EL1 + eAs * L1a + 10 * uu * np.abs(ALh) * 1.01
            Nh, Nl = _dd_add(PAh, PAl, ALh, ALl)
            eN = ePA + eAL + 4 * uu * (np.abs(PAh) + np.abs(ALh)) * 1.01
        ah, al, bh, bl = _dd_scalars(spec)
        Lh, Ll = _dd_mul(np.full(B, ah), np.full(B, al), Nh, Nl)
        EL = ah * eN + 10 * uu * np.abs(Lh) * 1.01
        if spec.label_smoothing:
            if spec.weight is None:
                T1h, T1l, fac = _dd_sum(dh, dl)
                eT1 = fac * uu * np.abs(dh).sum(axis=1) * 1.01 + P.delta * V
                Wh, Wl, eW = float(V), 0.0, 0.0
            else:
                wh, wl = _two_prod(dh, np.broadcast_to(w, dh.shape))
                wl = wl + dl * w[None, :]
                absT = np.abs(wh).sum(axis=1) * 1.01
                T1h, T1l, fac = _dd_sum(wh, wl)
                eT1 = (4 + fac) * uu * absT + P.delta * float(np.abs(w).sum()) * 1.01
                Wh, Wl, eW = spec.weight_sum_dd()
            WLh, WLl = _dd_mul(np.full(B, Wh), np.full(B, Wl), L1h, L1l)
            eWL = abs(Wh) * 1.01 * EL1 + eW * L1a + 10 * uu * np.abs(WLh) * 1.01
            Smh, Sml = _dd_add(T1h, T1l, WLh, WLl)
            eSm = eT1 + eWL + 4 * uu * (np.abs(T1h) + np.abs(WLh)) * 1.01
            bSh, bSl = _dd_mul(np.full(B, bh), np.full(B, bl), Smh, Sml)
            ebS = bh * 1.01 * eSm + 2 * uu * bh * np.abs(Smh) * 1.01 + 10 * uu * np.abs(bSh) * 1.01
            L2h, L2l = _dd_add(Lh, Ll, bSh, bSl)
            EL = EL + ebS + 4 * uu * (np.abs(Lh) + np.abs(bSh)) * 1.01
            Lh, Ll = L2h, L2l
        if spec.z_loss:
            z = spec.z_loss
            lh, ll = _dd_add(P.mh, P.ml, L1h, L1l)
            el_ = EL1 + P.eta_m + 4 * uu * (np.abs(P.mh) + L1a) * 1.01
            qh, ql = _dd_mul(lh, ll, lh, ll)
            eq = 2 * np.abs(lh) * 1.01 * el_ + el_ * el_ + 10 * uu * np.abs(qh) * 1.01
            zh, zl = _dd_mul_d(qh, ql, z)
            ez = z * eq + 4 * uu * np.abs(zh) * 1.01
            L2h, L2l = _dd_add(Lh, Ll, zh, zl)
            EL = EL + ez + 4 * uu * (np.abs(Lh) + np.abs(zh)) * 1.01
            Lh, Ll = L2h, L2l
        E = EL * _INFLATE + 64 * V * 2.0 ** -1074
    ok, vals = _dd_round(Lh, Ll, E, f, _nonneg(T, spec))
    ok &= P.good & _coef_ok(x, T, spec)
    return Fast(ok, vals, Lh, Ll, E)


# ---------------------------------------------------------------------------------------
# the gradient

def grad_rows(x: np.ndarray, T: np.ndarray, spec, f: Format, scale) -> Fast:
    """Fast enclosures of the gradient of the general rows (B, V); ``scale`` is 1/D as a
    (hi, lo, rel_err) triple (the mean's division), or None."""
    B, V = x.shape
    if B == 0:
        return _empty((B, V), f)
    if f.name == "float64":
        return _run(_grad_dd, x, T, spec, f, (B, V), scale)
    out = _run(_grad_f64, x, T, spec, f, (B, V), scale)
    rows = np.flatnonzero(~out.ok.all(axis=1))
    if rows.size:
        _merge(out, rows, _run(_grad_dd, x[rows], T[rows], spec, f, (rows.size, V), scale))
    return out


def _coefficients64(T: np.ndarray, spec, B: int, V: int):
    """c_j (float64, B x V) with absolute error bounds, and C = sum_j c_j with its bound."""
    w = spec.weights()
    eps = spec.label_smoothing
    a, b = 1.0 - eps, eps / V
    idx = np.arange(B)
    if not spec.prob:
        bw = np.broadcast_to(b * w, (B, V)).copy()
        ebw = U * np.abs(bw) * 2.01
        wt = w[T]
        at = a * wt
        c = bw
        c[idx, T] += at
        ec = ebw
        ec[idx, T] += 2.01 * U * np.abs(at) + U * np.abs(c[idx, T])
        # C = a w_t + b W, computed from its parts
        Wv = float(np.asarray(spec.weight_sum_float())) if spec.weight is not None else float(V)
        C = at + b * Wv
        eC = 2.01 * U * np.abs(at) + 3.01 * U * abs(b * Wv) + U * np.abs(C)
        return c, ec, C, eC
    q1 = a * T + b  # (1 - eps) q_j + eps / V
    eq1 = U * (2.01 * np.abs(a * T) + 2.01 * b + np.abs(q1))
    c = q1 * w[None, :] if spec.weight is not None else q1
    ec = (np.abs(w)[None, :] * eq1 + U * np.abs(c)) if spec.weight is not None else eq1
    C = c.sum(axis=1)
    eC = ec.sum(axis=1) + V * U * np.abs(c).sum(axis=1)
    return c, ec, C, eC


def _grad_f64(x: np.ndarray, T: np.ndarray, spec, f: Format, scale) -> Fast:
    B, V = x.shape
    idx = np.arange(B)
    P = _prep64(x, T, spec, compensated=True, want_d=False)
    with np.errstate(all="ignore"):
        c, ec, C, eC = _coefficients64(T, spec, B, V)
        K, eK = C, eC
        if spec.z_loss:
            z = spec.z_loss
            lse = P.m + P.L1
            else_ = P.eta + P.EL1 + U * np.abs(lse)
            zl = 2 * z * lse
            K = C + zl
            eK = eC + 2 * z * else_ + U * np.abs(zl) + U * np.abs(K)
        onep = 1.0 + P.S
        r = 1.0 / onep
        er_rel = 2 * U + P.ES / np.maximum(onep - P.ES, 1.0)  # relative error of r
        # p_j = e_j r (j != k), relative error: e_j's (exp 4 ulps, rounding of d_j, eta) + r's
        erel_e = (2.0 ** -50 + 2.01 * P.eta + er_rel + U + U * P.dmax)[:, None]
        p = P.e * r[:, None]
        ep = np.abs(p) * erel_e + _TINY
        Kp = K[:, None] * p
        eKp = np.abs(K)[:, None] * ep + eK[:, None] * p + U * np.abs(Kp)
        g = Kp - c
        eg = eKp + ec + U * np.abs(g) + _TINY
        # j = k: g_k = (K - c_k) - K S' / (1 + S'), no cancellation in 1 - p_k
        ck, eck = c[idx, P.k], ec[idx, P.k]
        Kc = K - ck
        eKc = eK + eck + U * np.abs(Kc)
        om = P.S * r  # 1 - p_k
        # S/(1+S) has derivative (1+S)**-2 <= r: the error of S moves it by ES r; the two
        # roundings in r and the product add 3u relative
        eom = om * 3.01 * U + P.ES * r * 1.01
        Kom = K * om
        eKom = np.abs(K) * eom + eK * om + U * np.abs(Kom)
        gk = Kc - Kom
        g[idx, P.k] = gk
        eg[idx, P.k] = eKc + eKom + U * np.abs(gk) + _TINY
        if spec.softcap is not None:
            cap = spec.softcap
            ch = np.cosh(x / cap)
            s2 = 1.0 / (ch * ch)  # sech^2, relative error <= 2**-50 (cosh) + u (x / c moves
            # cosh by |a tanh(a)| u <= (|a| u) cosh, |a| <= 746 where cosh is finite) + 3u
            absx = np.where(np.isfinite(x), np.abs(x / cap), 0.0)
            es2 = s2 * (2 * (2.0 ** -50 + absx * U * 1.01) + 3 * U)
            # cosh overflowed: sech^2 < 2**-2000 (exactly 0 at x = +-inf)
            es2 = np.where(np.isfinite(ch), es2, np.where(np.isfinite(x), 2.0 ** -1000, 0.0))
            s2 = np.where(np.isfinite(ch), s2, 0.0)
            g2 = g * s2
            eg = np.abs(g) * es2 + eg * s2 + U * np.abs(g2) + _TINY
            g = g2
        if scale is not None:
            sh, _, srel = scale
            g2 = g * sh
            eg = eg * abs(sh) + np.abs(g) * abs(sh) * srel + U * np.abs(g2) + _TINY
            g = g2
        E = eg * _INFLATE + _TINY
        E = np.where(P.good[:, None], E, np.inf)
    ok, vals = _round_check(g, E, f, np.zeros(g.shape, bool))
    return Fast(ok, vals, g, np.zeros_like(g), E)


def _grad_dd(x: np.ndarray, T: np.ndarray, spec, f: Format, scale) -> Fast:
    B, V = x.shape
    idx = np.arange(B)
    P = _prep_dd(x, T, spec, want_E=True)
    uu = U * U
    w = spec.weights()
    with np.errstate(all="ignore"):
        ah, al, bh, bl = _dd_scalars(spec)
        # c_j = a A_j + b w_j as double-doubles
        if spec.prob:
            if spec.weight is not None:
                Ah, Al = _two_prod(T, np.broadcast_to(w, T.shape))
            else:
                Ah, Al = T.copy(), np.zeros_like(T)
        else:
            Ah = np.zeros((B, V))
            Al = np.zeros((B, V))
            Ah[idx, T] = w[T]
        c1h, c1l = _dd_mul(np.full((B, V), ah), np.full((B, V), al), Ah, Al)
        ec = 10 * uu * np.abs(c1h) * 1.01
        if spec.label_smoothing:
            c2h, c2l = _dd_mul_d(np.full((B, V), bh), np.full((B, V), bl),
                                 np.broadcast_to(w, (B, V)))
            ec2 = (2 + 4) * uu * np.abs(c2h) * 1.01
            ch_, cl_ = _dd_add(c1h, c1l, c2h, c2l)
            ec = ec + ec2 + 4 * uu * (np.abs(c1h) + np.abs(c2h)) * 1.01
        else:
            ch_, cl_ = c1h, c1l
        # C = sum_j c_j (a sum of double-doubles)
        Ch, Cl, fac = _dd_sum(ch_, cl_)
        eC = ec.sum(axis=1) + fac * uu * np.abs(ch_).sum(axis=1) * 1.01
        Kh, Kl, eK = Ch, Cl, eC
        if spec.z_loss:
            z = spec.z_loss
            lh, ll = _dd_add(P.mh, P.ml, P.L1h, P.L1l)
            el_ = P.EL1 + P.eta_m + 4 * uu * (np.abs(P.mh) + np.abs(P.L1h)) * 1.01
            zh, zl = _dd_mul_d(lh, ll, 2 * z)
            ez = 2 * z * el_ + 4 * uu * np.abs(zh) * 1.01
            Kh, Kl = _dd_add(Ch, Cl, zh, zl)
            eK = eC + ez + 4 * uu * (np.abs(Ch) + np.abs(zh)) * 1.01
        # r = 1 / (1 + S') as a double-double (one Newton step on the float64 reciprocal)
        oh, ol = _two_sum(np.ones(B), P.Sh)
        ol = ol + P.Sl
        r0 = 1.0 / oh
        th, tl = _dd_mul_d(oh, ol, r0)
        resid = (1.0 - th) - tl  # 1 - (1+S) r0, small
        rh, rl = _two_sum(r0, r0 * resid)
        er = (P.ES + 8 * uu * oh) * rh * rh * 1.01 + 8 * uu * rh  # (1+S') error and the division
        # p_j = e_j r
        ph, pl = _dd_mul(P.eh, P.el, np.broadcast_to(rh[:, None], (B, V)),
                         np.broadcast_to(rl[:, None], (B, V)))
        ep = (EPS_EXP * 1.01 + 10 * uu + 1.01 * P.delta[:, None]) * np.abs(ph) \
            + P.eh * er[:, None] * 1.01 + 2.0 ** -1070
        Kph, Kpl = _dd_mul(np.broadcast_to(Kh[:, None], (B, V)),
                           np.broadcast_to(Kl[:, None], (B, V)), ph, pl)
        eKp = np.abs(Kh)[:, None] * 1.01 * ep + eK[:, None] * np.abs(ph) * 1.01 \
            + 10 * uu * np.abs(Kph) * 1.01
        gh, gl = _dd_add(Kph, Kpl, -ch_, -cl_)
        eg = eKp + ec + 4 * uu * (np.abs(Kph) + np.abs(ch_)) * 1.01
        # j = k: (K - c_k) - K S' r
        ckh, ckl = ch_[idx, P.k], cl_[idx, P.k]
        Kch, Kcl = _dd_add(Kh, Kl, -ckh, -ckl)
        eKc = eK + ec[idx, P.k] + 4 * uu * (np.abs(Kh) + np.abs(ckh)) * 1.01
        omh, oml = _dd_mul(P.Sh, P.Sl, rh, rl)
        eom = P.ES * rh * 1.01 + P.Sh * er * 1.01 + 10 * uu * np.abs(omh) * 1.01
        Kmh, Kml = _dd_mul(Kh, Kl, omh, oml)
        eKm = np.abs(Kh) * 1.01 * eom + eK * np.abs(omh) * 1.01 + 10 * uu * np.abs(Kmh) * 1.01
        gkh, gkl = _dd_add(Kch, Kcl, -Kmh, -Kml)
        gh[idx, P.k] = gkh
        gl[idx, P.k] = gkl
        eg[idx, P.k] = eKc + eKm + 4 * uu * (np.abs(Kch) + np.abs(Kmh)) * 1.01
        if P.Eh is not None and P.El is not None:  # softcap: times sech(x / c)**2
            s2h, s2l = _dd_sech2(P.Eh, P.El)
            g2h, g2l = _dd_mul(gh, gl, s2h, s2l)
            eg = eg * np.abs(s2h) * 1.01 + np.abs(gh) * (2.0 ** -78 * np.abs(s2h) + 2.0 ** -1060) \
                + 10 * uu * np.abs(g2h) * 1.01
            gh, gl = g2h, g2l
        if scale is not None:
            sh, sl, srel = scale
            g2h, g2l = _dd_mul(gh, gl, np.full((B, V), sh), np.full((B, V), sl))
            eg = eg * abs(sh) * 1.01 + np.abs(gh) * abs(sh) * srel * 1.01 \
                + 10 * uu * np.abs(g2h) * 1.01
            gh, gl = g2h, g2l
        E = eg * _INFLATE + 2.0 ** -1060
        E = np.where(P.good[:, None], E, np.inf)
    ok, vals = _dd_round(gh, gl, E, f, False)
    return Fast(ok, vals, gh, gl, E)

