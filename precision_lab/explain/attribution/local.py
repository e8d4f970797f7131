"""Local errors of one step: its op recomputed exactly on the step's computed inputs and compared
with its computed output, element by element (ULP error, correctly rounded, exact, overflow,
underflow, NaN, cancellation), reduced per row."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import mpmath
import numpy as np

from precision_lab.explain.attribution.balls import _b_add, _b_log, _ball_of
from precision_lab.explain.attribution.exact import (
    _CHUNK,
    _ZMAX,
    _ExpSum,
    _ExpTable,
    _f64,
    _fx_to_dd,
)
from precision_lab.explain.attribution.replay import _Ctx, _exact_step, _inner_ball, _lse_ball
from precision_lab.implementations import Step
from precision_lab.numerics.eft import fast_two_sum as _fast_two_sum
from precision_lab.numerics.eft import two_prod as _two_prod
from precision_lab.numerics.eft import two_sum as _two_sum
from precision_lab.numerics.formats import Format, get_format, round_to

_FALLBACK_PREC = 600  # mpmath precision for elements too close to a rounding boundary


# =========================================================================== local errors

@dataclass
class _Local:
    ulp: np.ndarray
    exact: np.ndarray
    cr: np.ndarray
    not_cr: np.ndarray
    overflow: np.ndarray
    underflow: np.ndarray
    nan: np.ndarray
    mismatch: np.ndarray
    undecided: np.ndarray
    cancel: list  # per row: None, -1 (exact 0), or bits


def _exp_elements(table: _ExpTable, y: np.ndarray):
    """exp of the float64 values y (the array ``table`` was built from), per element:
    (h, l, k, eps, kind, spec) -- value (h + l) 2**k within relative eps (kind 0); kind 3: the
    IEEE special spec (exp(-inf) = 0, exp(inf) = inf, NaN); kind 1 / 2: finite y beyond
    +-4096, an exact value far above / below every format's range."""
    y = np.asarray(y, dtype=np.float64).ravel()
    h = np.ones_like(y)
    l_ = np.zeros_like(y)
    k = np.zeros(y.shape, np.int64)
    eps = np.zeros_like(y)
    kind = np.zeros(y.shape, np.int8)
    spec = np.full(y.shape, np.nan)
    fin = np.isfinite(y)
    kind[~fin] = 3
    with np.errstate(over="ignore"):
        spec[~fin] = np.exp(y[~fin])
    kind[fin & (y > _ZMAX)] = 1
    kind[fin & (y < -_ZMAX)] = 2
    if table.sel.size:
        hh, ll = _fx_to_dd(table.M)
        h[table.sel], l_[table.sel], k[table.sel] = hh, ll, table.k
        eps[table.sel] = np.where(y[table.sel] == 0, 0.0, 2.0 ** -104)
    return h, l_, k, eps, kind, spec


def _grade(c: np.ndarray, h: np.ndarray, l_: np.ndarray, k: np.ndarray, eps: np.ndarray,
           f: Format) -> tuple[np.ndarray, ...]:
    """Per element, the exact value v = (h + l) 2**k (h finite, |l| <= ulp(h)/2, relative
    error <= eps; h = 0 means v = 0 exactly) against the computed c (float64 of format f).

    Returns (ulp error, correctly rounded, decided, underflow, rounded value)."""
    n = c.size
    if n <= _CHUNK * 2:
        return _grade_chunk(c, h, l_, k, eps, f)
    parts = [_grade_chunk(c[a:a + _CHUNK], h[a:a + _CHUNK], l_[a:a + _CHUNK], k[a:a + _CHUNK],
                          eps[a:a + _CHUNK], f) for a in range(0, n, _CHUNK)]
    return tuple(np.concatenate(col) for col in zip(*parts, strict=True))


def _grade_chunk(c: np.ndarray, h: np.ndarray, l_: np.ndarray, k: np.ndarray,
                 eps: np.ndarray, f: Format) -> tuple[np.ndarray, ...]:
    p = f.precision
    zero = h == 0
    hs = np.where(zero, 1.0, h)
    hm, he = np.frexp(hs)
    e = he.astype(np.int64) - 1 + k
    e = e - ((np.abs(hm) == 0.5) & (l_ * hs < 0)).astype(np.int64)
    q = np.minimum(np.maximum(e, f.emin), f.emax) - (p - 1)
    q = np.where(zero, f.emin - p + 1, q)
    sc = np.clip(k - q, -2200, 2200).astype(np.int32)
    sg = np.sign(hs)
    with np.errstate(over="ignore", invalid="ignore"):
        w = np.where(zero, 0.0, np.ldexp(np.abs(hs), sc))
        wl = np.where(zero, 0.0, np.ldexp(l_ * sg, sc))
        fl = np.floor(w)
        base = w - fl
        below = (base == 0) & (wl < 0)
        d = base - 0.5
        odd = np.fmod(fl, 2) == 1
        up = (d > -wl) | ((d == -wl) & odd)
        n = np.where(below, np.where((wl > -0.5) | ~odd, fl, fl - 1), fl + up)
        phi = base + wl
        decided = (eps == 0) | (np.abs(phi - 0.5) > eps * w + 2.0 ** -50)
        qi = np.clip(q, -2200, 2200).astype(np.int32)
        rounded = sg * np.ldexp(n, qi)
        rounded = np.where(np.abs(rounded) > f.max_finite, sg * np.inf, rounded)
        cs = np.ldexp(c * sg, -qi)
        # w = inf: the exact value is beyond float64 at the format's top spacing (far above
        # its range): every finite or infinite computed value is an infinite number of ULPs off
        err = np.where(np.isinf(w) & ~np.isnan(c), np.inf, np.abs((cs - w) - wl))
        cr = (c == rounded) | (zero & (c == 0))
    underflow = ~zero & (e < f.emin)
    return err, cr, decided, underflow, rounded


def _grade_mp(c: float, v: Any, f: Format) -> tuple[float, bool, bool]:
    """(ulp error, correctly rounded, underflow) of a computed c against an exact non-zero
    value v: a dyadic Fraction, or an mpf (at _FALLBACK_PREC bits, far beyond any format)."""
    if math.isnan(c):
        return math.nan, False, False
    if isinstance(v, Fraction):
        if v == 0:
            return abs(c) / f.smallest_subnormal, c == 0, False
        top = _floor_log2(abs(v))
        q = min(max(top, f.emin), f.emax) - (f.precision - 1)
        r = float(round_to(v, f))
        err = math.inf if math.isinf(c) else float(abs(Fraction(c) - v) / Fraction(2) ** q)
        return err, c == r, top < f.emin
    with mpmath.workprec(_FALLBACK_PREC):
        if v == 0:
            return abs(c) / f.smallest_subnormal, c == 0, False
        top = int(v._mpf_[2]) + int(v._mpf_[3]) - 1
        q = min(max(top, f.emin), f.emax) - (f.precision - 1)
        r = float(round_to(v, f))
        err = math.inf if math.isinf(c) else float(abs(mpmath.mpf(c) - v) / mpmath.ldexp(1, q))
        return err, c == r, top < f.emin


def _mp_exact_elem(op: str, ins: list) -> Any:
    """The exact value of one element (inputs: floats) at _FALLBACK_PREC: an mpf, or a float
    for IEEE specials."""
    with mpmath.workprec(_FALLBACK_PREC):
        xs = [float(v) for v in ins]
        if not all(math.isfinite(v) for v in xs):
            with np.errstate(all="ignore"):
                return float(_np_op(op, [np.float64(v) for v in xs]))
        a = mpmath.mpf(xs[0])
        if op == "exp":
            return mpmath.exp(a)
        if op == "log":
            return math.nan if a < 0 else (-math.inf if a == 0 else mpmath.log(a))
        if op == "log1p":
            return math.nan if a < -1 else (-math.inf if a == -1 else mpmath.log1p(a))
        if op == "div":
            if xs[1] == 0:
                return math.nan if xs[0] == 0 else math.copysign(math.inf, xs[0])
            return a / mpmath.mpf(xs[1])
        raise AssertionError(op)


def _np_op(op: str, ins: list) -> Any:
    a = ins[0]
    if op == "cast":
        return a
    if op == "exp":
        return np.exp(a)
    if op == "log":
        return np.log(a)
    if op == "log1p":
        return np.log1p(a)
    if op == "add":
        return a + ins[1]
    if op == "sub":
        return a - ins[1]
    if op == "div":
        return a / ins[1]
    if op == "neg":
        return -a
    raise AssertionError(op)


def _rows_of(a: np.ndarray, B: int) -> np.ndarray:
    """Row index of every element of an array whose first axis is the batch."""
    a = np.asarray(a)
    if a.ndim == 0:
        return np.zeros(1, np.int64)
    return np.repeat(np.arange(a.shape[0]), int(np.prod(a.shape[1:], dtype=np.int64)))


def _row_reduce(vals: np.ndarray, rows: np.ndarray, B: int, how: str) -> np.ndarray:
    if how == "any":
        return np.bincount(rows, weights=vals.astype(np.float64), minlength=B) > 0
    if how == "all":
        return np.bincount(rows, weights=(~vals).astype(np.float64), minlength=B) == 0
    if how == "count":
        return np.bincount(rows, weights=vals.astype(np.float64), minlength=B).astype(np.int64)
    # max with NaN dominating
    out = np.full(B, -np.inf)
    np.maximum.at(out, rows, np.where(np.isnan(vals), -np.inf, vals))
    isn = np.bincount(rows, weights=np.isnan(vals).astype(np.float64), minlength=B) > 0
    out[isn] = np.nan
    return np.maximum(out, 0.0, where=~isn, out=out)


def _local(ctx: _Ctx, s: Step) -> _Local:
    """Local errors of step s for every row."""
    B = ctx.B
    ins = [_f64(a) for a in s.inputs]
    out = _f64(s.output)
    false = np.zeros(B, bool)
    res = _Local(np.zeros(B), np.ones(B, bool), np.ones(B, bool), np.zeros(B, np.int64),
                 false.copy(), np.zeros(B, np.int64), false.copy(), false.copy(), false.copy(),
                 [None] * B)
    if s.op in ("max", "argmax", "gather", "mask", "neg", "nll"):
        return _local_exact_op(ctx, s, ins, out, res)
    f = get_format(s.output.dtype)
    if s.op == "sum":
        return _local_sum(ctx, ins, out, f, res)
    return _local_elementwise(ctx, s, ins, out, f, res)


def _local_exact_op(ctx: _Ctx, s: Step, ins: list, out: np.ndarray, res: _Local) -> _Local:
    B = ctx.B
    with np.errstate(invalid="ignore"):
        exact = _exact_step(ctx, s, ins) if s.op != "neg" else -ins[0]
    exact = np.asarray(exact, dtype=out.dtype).reshape(out.shape)
    if out.dtype.kind == "f":
        same = (exact == out) | (np.isnan(exact) & np.isnan(out))
    else:
        same = exact == out
    rows = _rows_of(out, B)
    ok = _row_reduce(same.ravel(), rows, B, "all")
    res.exact[:] = ok
    res.cr[:] = ok
    res.mismatch[:] = ~ok
    res.ulp[~ok] = np.nan
    res.not_cr = _row_reduce(~same.ravel(), rows, B, "count")
    return res


def _local_sum(ctx: _Ctx, ins: list, out: np.ndarray, f: Format, res: _Local) -> _Local:
    S = ctx.exact_sums(ins[0])
    innan = np.isnan(ins[0]).any(axis=-1)
    for b in range(ctx.B):
        c = float(out.reshape(ctx.B)[b])
        v = S[b]
        if not isinstance(v, Fraction):
            same = (c == v) or (math.isnan(c) and math.isnan(v))
            res.ulp[b] = 0.0 if same else (
                math.nan if math.isnan(c) or math.isnan(v) else math.inf)
            res.exact[b] = res.cr[b] = same
            res.nan[b] = math.isnan(c) and not innan[b]
            continue
        err, cr, uf = _grade_mp(c, v, f)
        res.ulp[b], res.cr[b] = err, cr
        res.exact[b] = math.isfinite(c) and Fraction(c) == v
        res.overflow[b] = math.isinf(c)
        res.nan[b] = math.isnan(c)
        res.underflow[b] = int(uf and v != 0)
    res.not_cr = (~res.cr).astype(np.int64)
    return res


def _local_elementwise(ctx: _Ctx, s: Step, ins: list, out: np.ndarray, f: Format,
                       res: _Local) -> _Local:
    """Elementwise ops and log_softmax: each element of the output against the exact op on
    the (broadcast) inputs of the same position."""
    B, op = ctx.B, s.op
    shape = out.shape
    bins = [np.broadcast_to(a, shape) for a in ins]
    c = out.ravel()
    n = c.size
    rows = _rows_of(out, B)
    innan = np.zeros(n, bool)
    infin = np.ones(n, bool)
    for a in bins:
        innan |= np.isnan(a).ravel()
        infin &= np.isfinite(a).ravel()
    h = np.zeros(n)
    l_ = np.zeros(n)
    k = np.zeros(n, np.int64)
    eps = np.zeros(n)
    special = np.zeros(n, bool)   # the exact value is an IEEE special (or exact 0 by rule)
    spec = np.full(n, np.nan)
    huge = np.zeros(n, bool)      # exact value finite but far above every format's range
    tiny = np.zeros(n, bool)      # exact value non-zero, far below every format's range
    mp_elems = np.zeros(n, bool)  # evaluated in mpmath
    trivial = np.zeros(n, bool)   # the exact value is known exactly (no rounding needed)
    with np.errstate(all="ignore"):
        if op == "cast":
            u = bins[0].ravel()
            h[:] = np.where(np.isfinite(u), u, 0.0)
            special = ~np.isfinite(u)
            spec = u.copy()
            trivial[:] = True
        elif op in ("add", "sub"):
            u, v = bins[0].ravel(), bins[1].ravel()
            v2 = -v if op == "sub" else v
            hh, ll = _two_sum(u, v2)
            ovf = infin & ~np.isfinite(hh)
            if ovf.any():
                h2, l2 = _two_sum(u[ovf] * 0.5, v2[ovf] * 0.5)
                hh[ovf], ll[ovf] = h2, l2
                k[ovf] = 1
            special = ~infin
            spec = u + v2
            h[:] = np.where(special, 0.0, hh)
            l_[:] = np.where(special, 0.0, ll)
            trivial[:] = True
        elif op == "div":
            u, v = bins[0].ravel(), bins[1].ravel()
            special = ~infin | (u == 0) | (v == 0)
            spec = u / v
            g = ~special
            ma, ea = np.frexp(u[g])
            mb, eb = np.frexp(v[g])
            qh = ma / mb
            ph, pl = _two_prod(qh, mb)
            rem = (ma - ph) - pl
            ql = rem / mb
            hh, ll = _fast_two_sum(qh, ql)
            h[g], l_[g], k[g] = hh, ll, ea.astype(np.int64) - eb
            eps[g] = np.where(rem == 0, 0.0, 2.0 ** -104)
            trivial[g] = rem == 0
            trivial[special] = True
        elif op == "exp":
            y0 = bins[0]
            hh, ll, kk, ee, kind, sp = _exp_elements(ctx.table(y0), y0)
            h[:], l_[:], k[:], eps[:] = hh, ll, kk, ee
            special = kind == 3
            spec = sp
            huge = kind == 1
            tiny = kind == 2
            trivial[:] = (kind == 3) | (bins[0].ravel() == 0)
        elif op == "log_softmax":
            # exact element: (x_j - top) - L, L = log(ctop + exp(wsh - top) Q) >= 0; both
            # terms <= 0, so the double-double below has no cancellation
            F = bins[0]
            V = F.shape[-1]
            es = ctx.expsums(F)
            Lh, Ll = np.zeros(B), np.zeros(B)
            Lexact = np.zeros(B, bool)
            lse_f = np.zeros(B)          # the row's IEEE log-sum-exp where it is special
            rowspec = np.zeros(B, bool)
            with mpmath.workprec(256):
                for b in range(B):
                    if es[b].special is not None:
                        rowspec[b] = True
                        lse_f[b] = _lse_special(es[b])
                        continue
                    L = _b_log(_inner_ball(es[b]))
                    Lh[b] = float(L.m)
                    Ll[b] = float(L.m - mpmath.mpf(Lh[b]))
                    Lexact[b] = L.r == 0
            top = np.array([e.top if e.special is None else 0.0 for e in es])
            dh, dl = _two_sum(F, -top[:, None])
            s1, e1 = _two_sum(dh, -Lh[:, None])
            hh, ll = _fast_two_sum(s1, e1 + (dl - Ll[:, None]))
            xf = F.ravel()
            rs = np.repeat(rowspec, V)
            special = rs | ~np.isfinite(xf)
            spec = np.where(rs, xf - np.repeat(lse_f, V), xf)  # -inf stays -inf
            h[:] = np.where(special, 0.0, hh.ravel())
            l_[:] = np.where(special, 0.0, ll.ravel())
            ex_row = np.repeat(Lexact, V)
            eps[:] = np.where(ex_row, 0.0, 2.0 ** -100)
            trivial[:] = ex_row
            innan[:] = np.repeat(np.isnan(F).any(axis=1), V)
        else:  # log, log1p and anything else: mpmath per element
            mp_elems[:] = True

    err = np.zeros(n)
    cr = np.ones(n, bool)
    uf = np.zeros(n, bool)
    exact_el = np.zeros(n, bool)
    undec = np.zeros(n, bool)
    with np.errstate(invalid="ignore"):
        g = ~special & ~huge & ~tiny & ~mp_elems
        if g.any():
            e_, c_, d_, u_, _ = _grade(c[g], h[g], l_[g], k[g], eps[g], f)
            err[g], cr[g], uf[g] = e_, c_, u_
            exact_el[g] = (e_ == 0) & trivial[g]
            idx = np.flatnonzero(g)[~d_]
            undec[idx] = True
        # IEEE specials: the exact value is the float spec
        sp = np.flatnonzero(special)
        if sp.size:
            same = (c[sp] == spec[sp]) | (np.isnan(c[sp]) & np.isnan(spec[sp]))
            err[sp] = np.where(same, 0.0, np.where(np.isnan(c[sp]) | np.isnan(spec[sp]),
                                                   np.nan, np.inf))
            cr[sp] = same
            exact_el[sp] = same
        hu = np.flatnonzero(huge)
        if hu.size:
            err[hu] = np.inf
            cr[hu] = np.isinf(c[hu]) & (c[hu] > 0)
            err[hu[np.isnan(c[hu])]] = np.nan
        ti = np.flatnonzero(tiny)
        if ti.size:
            err[ti] = np.abs(c[ti]) / f.smallest_subnormal
            cr[ti] = c[ti] == 0
            uf[ti] = True
    # elements for mpmath: undecided roundings and ops without a vectorized kernel
    todo = np.flatnonzero(undec | mp_elems)
    flat_ins = [a.ravel() for a in bins]
    for i in todo.tolist():
        ci = float(c[i])
        still = False
        if op == "log_softmax":
            v, rad = _lsm_exact_elem(ctx, bins[0], int(rows[i]), i % bins[0].shape[-1])
            if not isinstance(v, float) and rad > 0:  # Q's 2**-140 limits this one
                with mpmath.workprec(_FALLBACK_PREC):
                    still = round_to(v - rad, f) != round_to(v + rad, f)
        else:
            v = _mp_exact_elem(op, [fi[i] for fi in flat_ins])
        if isinstance(v, float):
            same = (ci == v) or (math.isnan(ci) and math.isnan(v))
            err[i] = 0.0 if same else (math.nan if math.isnan(ci) or math.isnan(v) else math.inf)
            cr[i] = exact_el[i] = same
            undec[i] = False
            special[i] = True
            continue
        ei, cri, ui = _grade_mp(ci, v, f)
        err[i], cr[i], uf[i] = ei, cri, ui
        undec[i] = still
        ins_i = [float(fi[i]) for fi in flat_ins]
        exact_el[i] = ei == 0 and ((op == "log" and ins_i[0] == 1.0)
                                   or (op == "log1p" and ins_i[0] == 0.0)
                                   or (op == "exp" and ins_i[0] == 0.0))
    res.ulp = _row_reduce(err, rows, B, "max")
    res.exact = _row_reduce(exact_el, rows, B, "all")
    res.cr = _row_reduce(cr, rows, B, "all")
    res.not_cr = _row_reduce(~cr, rows, B, "count")
    res.overflow = _row_reduce(~special & np.isinf(c) & infin, rows, B, "any")
    res.underflow = _row_reduce(uf & ~special, rows, B, "count")
    res.nan = _row_reduce(np.isnan(c) & ~innan, rows, B, "any")
    res.undecided = _row_reduce(undec, rows, B, "any")
    if op in ("add", "sub") and out.size == B:
        ua, ub = ins[0].reshape(B), ins[1].reshape(B)
        for r in range(B):
            av, bv = float(ua[r]), float(ub[r])
            if not (math.isfinite(av) and math.isfinite(bv)):
                continue
            ex = Fraction(av) + (Fraction(bv) if op == "add" else -Fraction(bv))
            big = max(abs(Fraction(av)), abs(Fraction(bv)))
            if big == 0:
                continue
            if ex == 0:
                res.cancel[r] = -1
                continue
            kbits = _floor_log2(big / abs(ex))
            if kbits >= 8:
                res.cancel[r] = kbits
    return res


def _floor_log2(x: Fraction) -> int:
    k = x.numerator.bit_length() - x.denominator.bit_length()
    if Fraction(2) ** k > x:
        k -= 1
    return k


def _lse_special(es: _ExpSum) -> float:
    """log of a special row sum: 0 -> -inf, inf -> inf, NaN -> NaN."""
    return -math.inf if es.special == 0.0 else float(es.special or 0.0)


def _lsm_exact_elem(ctx: _Ctx, F: np.ndarray, b: int, j: int) -> tuple[Any, Any]:
    """One log_softmax element x_j - lse(x) at _FALLBACK_PREC: (mpf, radius), or (float, 0)
    where it is an IEEE special."""
    with mpmath.workprec(_FALLBACK_PREC):
        v = _b_add(_ball_of(float(F[b, j])), _lse_ball(ctx.expsums(F)[b]), sub=True)
        return (v.m, v.r) if v.finite else (float(v.m), 0)
