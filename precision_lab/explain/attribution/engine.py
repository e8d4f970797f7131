"""The telescoping decomposition: the exact loss R_0 and the partial replays R_1 .. R_{N-1} at
increasing working precision until they meet their accuracy targets, assembled with the local
errors into one :class:`~precision_lab.explain.attribution.results.RowAttribution` per row;
:func:`attribute` and :func:`attribute_many`."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Optional, Sequence

import mpmath
import numpy as np

from precision_lab.explain.attribution.balls import (
    _INF,
    _b_add,
    _b_div,
    _b_exp,
    _b_log,
    _b_mul,
    _Ball,
    _rnd,
    _up,
)
from precision_lab.explain.attribution.exact import _f64, _mpf_exact, _quantize, _ratio_up
from precision_lab.explain.attribution.local import _floor_log2, _Local, _local
from precision_lab.explain.attribution.replay import _Ctx, _exact_step, _final_values
from precision_lab.explain.attribution.results import Exact, RowAttribution, StepAttribution
from precision_lab.implementations import OPS, REGISTRY, Step, get_implementation
from precision_lab.numerics.formats import Format, get_format

_R0_BITS = 101        # R_0: radius <= 2**-101 |R_0|
_RI_BITS = 64         # other R_i: radius <= 2**-64 ulp(R_0)
_START_PREC = 192


# =========================================================================== the engine

def _canonical_r0(ctx: _Ctx) -> list:
    """The exact loss of every row, as a ball (or a float for the non-finite rules)."""
    x, t, B = ctx.x, ctx.t, ctx.B
    es = ctx.expsums(x)
    out: list = []
    for b in range(B):
        row = x[b]
        xt = float(row[t[b]])
        sp = _special_loss(row, xt)
        if sp is not None:
            out.append(_Ball(sp))
            continue
        e = es[b]
        D = _b_add(_Ball(e.top), _Ball(xt), sub=True)
        L = _b_log(_Ball(e.ctop)) if e.ctop > 1 else _Ball(0)
        if e.qman:
            q = _mpf_exact(e.qman, e.qexp)
            qb = _Ball(q, _up(abs(q) * e.qerr + _rnd(q)))
            w = _b_div(_b_mul(_b_exp(_b_add(_Ball(e.wsh), _Ball(e.top), sub=True)), qb),
                       _Ball(e.ctop))
            L = _b_add(L, _b_log(w, one_plus=True))
        out.append(_b_add(D, L))
    return out


def _special_loss(row: np.ndarray, xt: float) -> "float | None":
    """The exact loss by the non-finite rules (as the reference defines them), or None for a
    general row (finite target, >= 2 finite logits, no NaN or +inf)."""
    if np.isnan(row).any():
        return math.nan
    npinf = int((row == np.inf).sum())
    if npinf:
        if xt == np.inf:
            return 0.0 if npinf == 1 else math.nan
        return math.inf
    nfin = int(np.isfinite(row).sum())
    if xt == -np.inf:
        return math.inf if nfin else math.nan
    if nfin == 1:
        return 0.0
    return None


def _replays(ctx: _Ctx, trace: list[Step], comp: list) -> list[list]:
    """R_1 .. R_{N-1} (balls per row) at the current working precision."""
    B = ctx.B
    env0: dict[str, Any] = {"logits": ctx.x, "targets": ctx.t}
    Rs = []
    for i in range(1, len(trace)):
        env = dict(env0)
        for j in range(i):
            env[trace[j].name] = comp[j]
        for s in trace[i:]:
            env[s.name] = _exact_step(ctx, s, [env[src] for src in s.sources])
        Rs.append(_final_values(env[trace[-1].name], B))
    return Rs


def _target_ok(r: _Ball, tol: "mpmath.mpf") -> bool:
    if r.unresolved:
        return False
    if not mpmath.isfinite(r.m):
        return True
    return r.r <= tol


def _ulp_exp2(v: Fraction, f: Format) -> int:
    if v == 0:
        return f.emin - f.precision + 1
    top = _floor_log2(abs(v))
    return min(max(top, f.emin), f.emax) - (f.precision - 1)


class _Shared:
    """Work shared by several implementations on the same batch: the exact logits, the
    V-length caches and the exact losses R_0."""

    def __init__(self, logits: np.ndarray, targets: np.ndarray) -> None:
        self.ctx = _Ctx(_f64(logits), targets)
        self._r0: dict[int, list] = {}

    def r0(self, prec: int) -> list:
        if prec not in self._r0:
            with mpmath.workprec(prec):
                self._r0[prec] = _canonical_r0(self.ctx)
        return self._r0[prec]


def _prepare(logits: np.ndarray, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(logits)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"logits must have shape (B, V) or (V,), got shape {x.shape}")
    if x.dtype.kind not in "fV" and x.dtype.name != "bfloat16":
        raise ValueError(f"logits must be a float array, got dtype {x.dtype}")
    t = np.asarray(targets)
    if t.ndim == 0:
        t = t.reshape(1)
    if t.shape != (x.shape[0],):
        raise ValueError(f"targets must have shape ({x.shape[0]},), got shape {t.shape}")
    if t.size and not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"targets must be integers, got dtype {t.dtype}")
    return x, t.astype(np.int64)


def attribute(implementation: str, logits: np.ndarray, targets: Any, fmt: "str | Format", *,
              max_precision: int = 16384) -> list[RowAttribution]:
    """Per-step attribution of one step-wise implementation on a batch: one
    :class:`RowAttribution` per row.

    Args:
        implementation: a registry key (or import path) of a step-wise implementation.
        logits: (B, V) or (V,) array, ideally of the format's dtype (otherwise the
            implementation's "cast" step rounds it and is attributed like any other step; the
            exact loss is that of the values given).
        targets: (B,) integer class indices (or one integer for one row).
        fmt: the format the implementation computes in.
        max_precision: largest mpmath working precision (bits) tried before a row is flagged
            ``unresolved``.

    Raises:
        ValueError: an implementation that is not step-wise, bad shapes or dtypes.
    """
    return attribute_many([implementation], logits, targets, fmt,
                          max_precision=max_precision)[_impl_key(implementation)]


def _impl_key(implementation: Any) -> str:
    return get_implementation(implementation).key


def attribute_many(implementations: Sequence[str], logits: np.ndarray, targets: Any,
                   fmt: "str | Format", *, max_precision: int = 16384
                   ) -> dict[str, list[RowAttribution]]:
    """:func:`attribute` for several implementations on the same batch, sharing the exact
    loss and the V-length exact sums: {implementation key: rows}."""
    f = get_format(fmt)
    x, t = _prepare(logits, targets)
    impls = [get_implementation(k) for k in implementations]
    for impl in impls:
        if not impl.stepwise:
            raise ValueError(
                f"implementation {impl.key!r} is not step-wise (no trace); step-wise ones: "
                f"{', '.join(k for k, v in REGISTRY.items() if v.stepwise)}; use compare_fused "
                "for the fused torch kernel")
    if t.size and (t.min() < 0 or t.max() >= x.shape[1]):
        raise ValueError(f"targets must lie in [0, {x.shape[1]})")
    shared = _Shared(x, t)
    return {impl.key: _attribute_one(impl, x, t, f, shared, max_precision) for impl in impls}


def _attribute_one(impl: Any, x: np.ndarray, t: np.ndarray, f: Format, shared: _Shared,
                   max_precision: int) -> list[RowAttribution]:
    ctx = shared.ctx
    B = ctx.B
    trace: list[Step] = []
    computed = impl(x, t, f, trace=trace)
    comp = [_f64(s.output) for s in trace]
    locs = [_local(ctx, s) for s in trace]
    comp_loss = _f64(computed).reshape(B)

    # the exact loss, its accuracy target, and the tolerance of the other R_i
    prec = _START_PREC
    r0 = shared.r0(prec)
    while prec < max_precision and not all(_r0_ok(r, f) for r in r0):
        prec *= 2
        r0 = shared.r0(prec)
    # R_0 as a dyadic: the ball's midpoint rounded to 2**-130 relative (to 0 below 2**-20000,
    # far below every format), and its error bound in ULPs of the format
    R0: list = []
    R0err: list[float] = []
    uexps: list[int] = []
    for r in r0:
        if not r.finite:
            R0.append(None)
            R0err.append(0.0)
            uexps.append(_ulp_exp2(Fraction(0), f))
            continue
        e0 = int(mpmath.floor(mpmath.log(abs(r.m), 2))) if r.m != 0 else 0
        grid = max(e0 - 130, -20000)
        v = _quantize(r.m, grid) if r.m != 0 else Fraction(0)
        ue = _ulp_exp2(v, f)
        R0.append(v)
        uexps.append(ue)
        q = mpmath.ldexp(1, grid - 1) if r.m != 0 else mpmath.mpf(0)
        R0err.append(_ratio_up(r.r + q, ue))

    # R_1 .. R_{N-1} per row, at the smallest precision meeting the tolerance
    best: list = [None] * B
    best_prec = [0] * B
    p = _START_PREC
    while True:
        with mpmath.workprec(p):
            Rs = _replays(ctx, trace, comp)
            for b in range(B):
                if best[b] is not None:
                    continue
                tol = mpmath.ldexp(1, uexps[b] - _RI_BITS - 1) if R0[b] is not None else _INF
                if all(_target_ok(R[b], tol) for R in Rs) or p >= max_precision:
                    best[b] = [R[b] for R in Rs]
                    best_prec[b] = p
        if all(v is not None for v in best):
            break
        p = min(2 * p, max_precision)

    return [_assemble(impl.key, f, b, int(t[b]), trace, locs, r0[b], R0[b], R0err[b], uexps[b],
                      best[b], float(comp_loss[b]), max(best_prec[b], prec)) for b in range(B)]


def _r0_ok(r: _Ball, f: Format) -> bool:
    """R_0's radius is within 2**-101 of it and within 2**-65 of its ulp in f."""
    if r.unresolved:
        return False
    if not mpmath.isfinite(r.m) or r.r == 0:
        return True
    if r.m == 0:
        return r.r <= mpmath.ldexp(1, f.emin - f.precision - _RI_BITS)
    top = int(r.m._mpf_[2]) + int(r.m._mpf_[3]) - 1
    ue = min(max(top, f.emin), f.emax) - (f.precision - 1)
    return r.r <= min(abs(r.m) * mpmath.ldexp(1, -_R0_BITS), mpmath.ldexp(1, ue - _RI_BITS - 1))


def _assemble(key: str, f: Format, b: int, tb: int, trace: list[Step], locs: list[_Local],
              r0: _Ball, R0: Exact, R0err: float, uexp: int, mids: list, computed: float,
              prec: int) -> RowAttribution:
    N = len(trace)
    unit = Fraction(2) ** uexp
    grid = uexp - 2 * _RI_BITS       # the other R_i are rounded to 2**-128 ULP
    # R_0 .. R_N: a Fraction (finite, resolved), a float (inf / NaN) or None (unresolved);
    # errs: bounds on |R_i - true R_i| in ULPs
    vals: list[Any] = [R0 if R0 is not None else (None if r0.unresolved else float(r0.m))]
    errs: list[float] = [R0err]
    unresolved = r0.unresolved
    for ball in mids:
        if ball.unresolved:
            vals.append(None)
            errs.append(0.0)
            unresolved = True
        elif ball.finite:
            vals.append(_quantize(ball.m, grid))
            errs.append(_ratio_up(ball.r, uexp) + 2.0 ** (-2 * _RI_BITS - 1))
            unresolved |= R0 is not None and errs[-1] > 2.0 ** -_RI_BITS
        else:
            vals.append(float(ball.m))
            errs.append(0.0)
    vals.append(Fraction(computed) if math.isfinite(computed) else computed)
    errs.append(0.0)
    # a proven-exact step makes R_i and R_{i+1} the same number: one representative per
    # class of equal R's -- the computed value if R_N is in it, else R_0, else its first member
    cls = list(range(N + 1))
    for i in range(N):
        if locs[i].exact[b]:
            cls[i + 1] = cls[i]
    members: dict[int, list[int]] = {}
    for i, c in enumerate(cls):
        members.setdefault(c, []).append(i)
    for mem in members.values():
        j = N if N in mem else mem[0]
        for i in mem:
            vals[i], errs[i] = vals[j], errs[j]
    exact_loss = vals[0] if isinstance(vals[0], Fraction) else R0

    fins = [isinstance(v, Fraction) for v in vals]
    steps: list[StepAttribution] = []
    contribs: list[Exact] = []
    for i, s in enumerate(trace):
        lo = locs[i]
        a, c = vals[i], vals[i + 1]
        sep = fins[i] and fins[i + 1]
        if sep:
            d = c - a
            cu = float(d / unit)
            crel = float(d / exact_loss) if exact_loss else math.nan
        else:
            d = None
            cu = crel = c if (fins[i] and isinstance(c, float) and math.isinf(c)) else math.nan
        contribs.append(d)
        flags = [name for name, on in (("overflow", lo.overflow[b]),
                                       ("underflow", lo.underflow[b] > 0), ("nan", lo.nan[b]),
                                       ("cancellation", lo.cancel[b] is not None),
                                       ("mismatch", lo.mismatch[b]),
                                       ("undecided", lo.undecided[b])) if on]
        out = np.asarray(s.output)
        per_row = out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1)
        value = None
        if per_row:
            v = out.reshape(out.shape[0], -1)[b, 0]
            value = int(v) if out.dtype.kind in "iu" else float(np.float64(v))
        steps.append(StepAttribution(
            name=s.name, op=s.op, kind=OPS[s.op].split(":")[0],
            elements=1 if per_row else int(np.prod(out.shape[1:])), value=value,
            local_ulp=float(lo.ulp[b]), local_exact=bool(lo.exact[b]),
            correctly_rounded=bool(lo.cr[b]), not_correctly_rounded=int(lo.not_cr[b]),
            flags=flags, underflow_elements=int(lo.underflow[b]), cancellation_bits=lo.cancel[b],
            contribution=d, contribution_ulp=cu, contribution_rel=crel,
            contribution_error_ulp=(0.0 if cls[i] == cls[i + 1] else errs[i] + errs[i + 1])
            if sep else math.nan,
            separable=sep))
    every = all(fins)
    total = vals[N] - vals[0] if (fins[0] and fins[N]) else None
    if every and sum((c for c in contribs if c is not None), Fraction(0)) != total:
        # cannot happen: the partials telescope
        raise AssertionError("contributions do not add up to the total")
    if total is not None:
        tu = float(total / unit)
        trel = float(total / exact_loss) if exact_loss else math.nan
    else:
        cv = vals[N]
        tu = trel = cv if (fins[0] and isinstance(cv, float) and math.isinf(cv)) else math.nan
    if fins[0]:
        dom, share = _dominant(trace, contribs, every)
        dec = _decisive(trace, vals, total) if every else _first_nonfinite(trace, fins)
    else:  # the exact loss itself is not finite: no step is to blame
        dom, share, dec = None, math.nan, None
    if every and total is not None:
        absum = sum((abs(c) for c in contribs if c is not None), Fraction(0))
        ratio = float(absum / abs(total)) if total != 0 else (math.inf if absum else 1.0)
        cancelling = bool(absum > 2 * abs(total) and absum > unit)
    else:
        ratio, cancelling = math.nan, False
    if isinstance(exact_loss, Fraction):
        r0f = float(exact_loss)
    else:
        r0f = math.nan if (r0.unresolved or vals[0] is None) else float(r0.m)
    return RowAttribution(
        implementation=key, format=f.name, row=b, target=tb, computed=computed,
        computed_exact=Fraction(computed) if math.isfinite(computed) else None,
        exact_loss=exact_loss, exact_loss_float=r0f,
        exact_loss_error_ulp=errs[0] if isinstance(exact_loss, Fraction) else 0.0,
        ulp=float(unit), total=total, total_ulp=tu, total_rel=trel,
        partials=[v if isinstance(v, Fraction) else None for v in vals],
        partial_floats=[float(v) if isinstance(v, (Fraction, float)) else math.nan
                        for v in vals], steps=steps,
        separable=every, unresolved=unresolved, dominant=dom,
        dominant_share=share, decisive=dec, cancelling=cancelling, cancellation_ratio=ratio,
        precision_bits=prec)


def _dominant(trace: list[Step], contribs: list[Exact],
              separable: bool) -> tuple[Optional[str], float]:
    if not separable:
        for s, c in zip(trace, contribs, strict=True):
            if c is None:
                return s.name, math.nan
        return None, math.nan
    tot = sum((abs(c) for c in contribs if c is not None), Fraction(0))
    if tot == 0:
        return None, 0.0
    i = max(range(len(contribs)), key=lambda j: abs(contribs[j]))  # type: ignore[arg-type]
    return trace[i].name, float(abs(contribs[i]) / tot)  # type: ignore[arg-type]


def _decisive(trace: list[Step], vals: list, total: Exact) -> Optional[str]:
    if total is None or total == 0:
        return None
    half = abs(total) / 2
    r0 = vals[0]
    N = len(trace)
    for i in range(N):
        if all(abs((vals[j + 1] - r0) - total) <= half for j in range(i, N)):
            return trace[i].name
    return trace[-1].name


def _first_nonfinite(trace: list[Step], fins: list[bool]) -> Optional[str]:
    """Without a finite decomposition: the first step after which every R stays non-finite."""
    N = len(trace)
    for i in range(N):
        if all(not fins[j + 1] for j in range(i, N)):
            return trace[i].name
    return None
