"""Fast path of the reference (private): the whole batch, vectorized, with a rigorous
per-row error bound (Ziv's first step).  Used by :mod:`precision_lab.numerics.reference`.

Rows are "general" rows only (finite target, >= 2 finite logits, no NaN or +inf); the
non-finite rules live in the reference.  For each row it returns an approximation hi + lo
of the exact loss L = (m - x_t) + log1p(S'), S' = sum_{j != k} exp(x_j - m), a bound err
with |hi + lo - L| <= err, and ``ok`` where every value of [hi+lo-err, hi+lo+err] rounds to
the same value of the target format (that value is then the correctly rounded loss) AND
lies in one binade (no power of two inside, so hi + lo has L's binade and ulp(L) is read off
hi/lo correctly; a loss within the enclosure's width of 2**k goes to the exact path).

Error model (u = 2**-53): float64 +,-,* are correctly rounded; numpy's float64 exp and
log1p are within 4 ulps (relative 2**-50, absolute 2**-1072 in the subnormal range) -- the
limit NumPy sets for its SIMD implementations.  Sums of n terms are bounded by n*u (no
credit taken for numpy's pairwise summation).  Each bound below is first order, then
inflated by (1 + 2**-20), which covers all second-order terms and the rounding of the
bound's own float64 evaluation (every relative quantity involved is < 2**-30).
"""

from __future__ import annotations

from dataclasses import dataclass

import mpmath
import numpy as np

from precision_lab.numerics.eft import fast_two_sum as _fast_two_sum
from precision_lab.numerics.eft import two_prod as _two_prod
from precision_lab.numerics.eft import two_sum as _two_sum
from precision_lab.numerics.formats import Format, round_float64_array

U = 2.0 ** -53
_INFLATE = 1.0 + 2.0 ** -20
_TINY = 2.0 ** -1070  # absolute slack for subnormal/underflowed terms
_CHUNK = 1 << 17  # elements per vectorized block: keeps temporaries in cache

#: Bound on the relative error of :func:`_dd_exp` (derivation in its docstring) and of
#: :func:`_dd_expm1_nonneg`; tests measure the actual error (about 2**-88).
EPS_EXP = 2.0 ** -84
EPS_EXPM1 = 2.0 ** -82


@dataclass
class FastRows:
    """Per-row outputs of the fast path (arrays over the rows passed in)."""

    ok: np.ndarray      # bool: the enclosure rounds to one value
    values: np.ndarray  # fmt dtype: the rounded loss where ok
    hi: np.ndarray      # float64
    lo: np.ndarray      # float64
    err: np.ndarray     # float64: |hi + lo - L| <= err


def fast_rows(x: np.ndarray, t: np.ndarray, f: Format) -> FastRows:
    """Evaluate general rows ``x`` (B, V) float64 with targets ``t`` for target format f."""
    B, V = x.shape
    out = FastRows(np.zeros(B, bool), np.zeros(B, f.np_dtype), np.zeros(B), np.zeros(B),
                   np.zeros(B))
    if B == 0:
        return out
    step = max(1, _CHUNK // max(V, 1))
    fn = _rows_dd if f.name == "float64" else _rows_f64
    for a in range(0, B, step):
        sl = slice(a, min(B, a + step))
        ok, val, hi, lo, err = fn(x[sl], t[sl], f)
        out.ok[sl], out.values[sl], out.hi[sl], out.lo[sl], out.err[sl] = ok, val, hi, lo, err
    return out


def _argmax_split(x: np.ndarray, t: np.ndarray):
    """(m, x_t, k): row max, target logit, and the excluded index k (t if x_t = m)."""
    idx = np.arange(x.shape[0])
    k = x.argmax(axis=1)
    m = x[idx, k]
    xt = x[idx, t]
    k = np.where(xt == m, t, k)
    return idx, m, xt, k


# ---------------------------------------------------------------------------------------
# float16 / bfloat16 / float32 targets: float64 arithmetic

def _rows_f64(x: np.ndarray, t: np.ndarray, f: Format):
    B, V = x.shape
    n = V - 1
    idx, m, xt, k = _argmax_split(x, t)
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.subtract(x, m[:, None])  # y = x - m, then exp(y) in place
        e[idx, k] = -np.inf
        np.exp(e, out=e)
        s = e.sum(axis=1)
        d = m - xt
        lg = np.log1p(s)
        L = d + lg
        # S' bound: summation n*u, exp 4 ulps, and the rounding of y = x - m (exp(y*) =
        # exp(y) * exp(y* - y), |y* - y| <= u|y| with |y| < 746 wherever exp(y) > 0)
        ES = 1.02 * (n * U + 2.0 ** -50 + 746 * U) * s + n * _TINY
        El = ES / (1.0 + np.maximum(s - ES, 0.0)) + 2.0 ** -50 * lg + _TINY
        E = (U * L + U * d + El) * _INFLATE + _TINY
        lo_end = np.maximum(np.nextafter(L - E, -np.inf), 0.0)
        hi_end = np.nextafter(L + E, np.inf)
    rl = round_float64_array(lo_end, f)
    rh = round_float64_array(hi_end, f)
    # one binade: lo = 0 here, so hi must already be in L's binade (below 2**-1022 the
    # spacing of every format is fixed)
    one_binade = (np.frexp(lo_end)[1] == np.frexp(hi_end)[1]) | (hi_end <= 2.0 ** -1022)
    ok = (np.isfinite(L) & np.isfinite(E) & one_binade
          & (rl.view(f.uint_dtype) == rh.view(f.uint_dtype)))
    return ok, rl, L, np.zeros(B), E


# ---------------------------------------------------------------------------------------
# float64 target: double-double arithmetic (error-free transformations from numerics.eft)

_N = 1024  # table size of 2**(j/N)


def _tables():
    with mpmath.workprec(300):
        ln2 = mpmath.log(2)
        C = ln2 / _N
        c1 = float(mpmath.mpf(float(C)))
        m1, e1 = np.frexp(c1)
        c1 = float(np.ldexp(np.round(np.ldexp(m1, 32)), int(e1) - 32))  # 32 bits: n*c1 exact
        r = C - c1
        m2, e2 = np.frexp(float(r))
        c2 = float(np.ldexp(np.round(np.ldexp(m2, 32)), int(e2) - 32))
        c3 = float(r - c2)
        th = np.empty(_N)
        tl = np.empty(_N)
        for j in range(_N):
            v = mpmath.power(2, mpmath.mpf(j) / _N)
            th[j] = float(v)
            tl[j] = float(v - th[j])
        inv = float(_N / ln2)
    return c1, c2, c3, th, tl, inv


_C1, _C2, _C3, _TH, _TL, _INV = _tables()


_SIXTH_H = 1.0 / 6
with mpmath.workprec(200):
    _SIXTH_L = float(mpmath.mpf(1) / 6 - mpmath.mpf(_SIXTH_H))


def _exp_parts(yh, yl, accurate_tail: bool = False):
    """exp(yh + yl) = 2**k * T_j * (1 + p), for |yh| <= 746: returns k, j, (ph, pl).

    r = y - n ln2/N (n = k N + j) is computed to ~2**-93 absolute (n*C1 and n*C2 exact,
    TwoSum-exact subtractions, the small remainders in float64); p = expm1(r) from
    r + r^2/2 (double-double) + r^3/6 + ... + r^7/5040, |r| <= 2**-11.5, truncation
    < 2**-107.  The tail r^3/6 + ... (~2**-37) is float64 (absolute error ~2**-89, fine
    for exp) or, with ``accurate_tail``, has its r^3/6 term in double-double so that p is
    accurate relative to itself (~2**-90), as expm1 of a small argument needs."""
    n = np.rint(yh * _INV)
    s1, e1 = _two_sum(yh, -(n * _C1))
    s2, e2 = _two_sum(s1, -(n * _C2))
    rh, rl = _two_sum(s2, ((e1 + e2) + yl) - n * _C3)
    qh, ql = _two_prod(rh, rh)
    ph, pe = _two_sum(rh, 0.5 * qh)
    if accurate_tail:
        c3h, c3e = _two_prod(qh, rh)  # rh^3 = c3h + c3e + ql*rh
        s6h, s6e = _two_prod(c3h, _SIXTH_H)
        s6l = s6e + (c3h * _SIXTH_L + (c3e + ql * rh + 3 * qh * rl) * _SIXTH_H)
        tail = qh * qh * (1 / 24 + rh * (1 / 120 + rh * (1 / 720 + rh / 5040))) + s6l
        ph, pe2 = _two_sum(ph, s6h)
        pe = pe + pe2
    else:
        tail = rh * qh * (1 / 6 + rh * (1 / 24 + rh * (1 / 120 + rh * (1 / 720 + rh / 5040))))
        tail = tail + 0.5 * (qh * rl)
    pl = pe + (rl + (0.5 * ql + rh * rl) + tail)
    ni = n.astype(np.int64)
    j = ni & (_N - 1)
    k = (ni - j) >> 10
    return k, j, ph, pl


def _dd_exp(yh, yl):
    """exp(yh + yl) as a double-double, relative error <= EPS_EXP = 2**-84 for
    -746 <= yh <= 746 (plus 2**-1074 absolute where the result is subnormal).

    Budget (relative to the result, >= 2**k): r's error 2**-93, Taylor tail rounding
    2**-87, the sums forming p and T_j (1 + p) about 2**-86 each, table 2**-106."""
    k, j, ph, pl = _exp_parts(yh, yl)
    th, tl = _TH[j], _TL[j]
    a, ae = _two_prod(th, ph)
    s, se = _two_sum(th, a)
    low = se + (tl + (ae + (th * pl + tl * ph)))
    eh, el = _fast_two_sum(s, low)
    return np.ldexp(eh, k), np.ldexp(el, k)


def _dd_expm1_nonneg(y):
    """expm1(y) for float64 0 <= y <= 700, double-double, relative error <= EPS_EXPM1.

    expm1(y) = (2**k T_j - 1) + 2**k T_j p: for k = 0 the first part is th - 1 (exact by
    Sterbenz) + tl, for k >= 1 it is >= 1; the second part is accurate relative to itself
    (for n = 0 it is p itself).  The two parts cancel by at most a factor 2 (j = 1, p < 0)."""
    k, j, ph, pl = _exp_parts(y, np.zeros_like(y), accurate_tail=True)
    th, tl = _TH[j], _TL[j]
    sc = np.ldexp(1.0, k)
    bh, be = _two_sum(sc * th, -1.0)
    bl = be + sc * tl
    a, ae = _two_prod(th, ph)
    al = ae + (th * pl + tl * ph)
    s, se = _two_sum(bh, sc * a)
    return _fast_two_sum(s, se + (bl + sc * al))


def _tree_parts(h: np.ndarray, l: np.ndarray):  # noqa: E741 -- hi/lo parts, as in the papers
    """The pairwise TwoSum tree over the high parts of double-doubles along axis 1: (top,
    acc, levels, P) with top + acc the sum (top exact-tree result, acc the float64 sum of the
    tree's rounding errors and of the low parts; P the padded power-of-two width)."""
    B, V = h.shape
    P = 1 << max(V - 1, 0).bit_length()
    if P != V:
        h = np.concatenate([h, np.zeros((B, P - V))], axis=1)
    acc = l.sum(axis=1)
    levels = 0
    while h.shape[1] > 1:
        s, e = _two_sum(h[:, 0::2], h[:, 1::2])
        acc = acc + e.sum(axis=1)
        h = s
        levels += 1
    return h[:, 0], acc, levels, P


def _tree_sum(h: np.ndarray, l: np.ndarray):  # noqa: E741 -- hi/lo parts, as in the papers
    """Sum of nonnegative double-doubles along axis 1: (Sh, Sl, levels, P) (see
    :func:`_tree_parts`)."""
    top, acc, levels, P = _tree_parts(h, l)
    Sh, Sl = _fast_two_sum(top, acc)
    return Sh, Sl, levels, P


def _rows_dd(x: np.ndarray, t: np.ndarray, f: Format):
    B, V = x.shape
    idx, m, xt, k = _argmax_split(x, t)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        yh = x - m[:, None]
        bb = yh - x
        yl = (x - (yh - bb)) + (-m[:, None] - bb)  # TwoSum: y = yh + yl exactly
        yh[idx, k] = -np.inf
        live = yh >= -745.2  # below, exp(y) < 2**-1074: counted in the absolute slack
        yh = np.where(live, yh, 0.0)
        yl = np.where(live, yl, 0.0)
        eh, el = _dd_exp(yh, yl)
        eh = np.where(live, eh, 0.0)
        el = np.where(live, el, 0.0)
        Sh, Sl, levels, P = _tree_sum(eh, el)
        ES = (1.01 * EPS_EXP + 1.02 * (P + levels + 2) * (levels + 2) * U * U) * Sh \
            + P * 2.0 ** -1072
        big = Sh >= 2.0 ** -900  # smaller S' (margins > 620): exact path
        Shc = np.where(big, Sh, 1.0)
        Slc = np.where(big, Sl, 0.0)
        # log1p(S') = y0 + log1p(z), z = (S' - expm1(y0)) / (1 + expm1(y0)), y0 ~ log1p(S')
        y0 = np.log1p(Shc)
        Mh, Ml = _dd_expm1_nonneg(y0)
        zh, ze = _two_sum(Shc, -Mh)
        z = (zh + (ze + (Slc - Ml))) / (1.0 + Mh)
        lh, ll = _two_sum(y0, z - 0.5 * z * z)
        El = (ES + 1.01 * EPS_EXPM1 * Mh + 4 * U * U * Shc) / (1.0 + Mh * (1 - 2.0 ** -40)) \
            * 1.01 + 6 * U * np.abs(z) + np.abs(z) ** 3
        dh, dl = _two_sum(m, -xt)
        s, se = _two_sum(dh, lh)
        Lh, Ll = _fast_two_sum(s, se + (dl + ll))
        E = (El + 8 * U * U * Lh) * _INFLATE + _TINY
        half_up = np.spacing(Lh) / 2
        half_dn = (Lh - np.nextafter(Lh, 0.0)) / 2
        slack = 2.0 ** -50 * (np.abs(Ll) + E)
        # the enclosure rounds to Lh in float64, so it lies in Lh's binade unless Lh is a
        # power of two: then Ll's sign must be certain (|Ll| beyond the error)
        pow2 = np.abs(np.frexp(Lh)[0]) == 0.5
        ok = (big & np.isfinite(Lh) & np.isfinite(dl) & np.isfinite(E) & (Lh >= 2.0 ** -960)
              & (Ll + E + slack < half_up) & (E - Ll + slack < half_dn)
              & (~pow2 | (np.abs(Ll) > E + slack)))
    return ok, Lh, Lh, Ll, E
