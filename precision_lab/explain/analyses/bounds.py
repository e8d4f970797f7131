"""Measured errors against bounds, and per-step attribution of the worst rows (stated
samples of rows, read from the inputs the run stored)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from precision_lab.explain.analyses.context import (
    Context,
    sample_idx,
    transient,
)
from precision_lab.explain.data import NONFINITE_CATEGORIES
from precision_lab.numerics.formats import get_format

#: Rows per format whose bounds are evaluated (a uniform sample with a fixed seed).
BOUNDS_SAMPLE_ROWS = 200
#: Worst rows attributed per implementation and format.
ATTRIBUTION_ROWS = 3
#: Rows per format on which torch's fused kernel is set beside the composites.
FUSED_SAMPLE_ROWS = 64

# --------------------------------------------------------------------------- bounds

@dataclass(frozen=True)
class BoundCheck:
    """An error bound against the measured error on a sample of rows (units of u, relative
    to the loss).  ``bound``: "bhh" (Blanchard, Higham & Higham's leading-order estimate for
    the shifted lse carried to the loss: an estimate, not a bound) or "derived" (the rigorous
    bound of the algorithm under the library error model LIBRARY_ULP, see
    :mod:`precision_lab.numerics.conditioning`); ``void_rows``: rows where it does not apply
    (NaN: possible overflow, a zero loss, ...; or B u >= 1 for the estimate);
    ``violations_below_final_rounding``: estimate violations where |y + n - min x| < |y|, i.e.
    the formula is below the rounding of lse itself."""

    format: str
    implementation: str
    bound: str
    rows: int
    within: int
    void_rows: int
    median_bound_u: "float | None"
    median_measured_u: "float | None"
    max_measured_over_bound: "float | None"
    violations: int = 0
    violations_below_final_rounding: int = 0


@dataclass(frozen=True)
class BoundsAnalysis:
    sample_rows: int
    checks: list[BoundCheck]
    #: per format: {label: (bounds, measured)} of the checked rows
    scatter: Any = transient()


_BOUND_KINDS = (("lse", "bhh"), ("lse", "derived"), ("lse_log1p", "derived"))


def bounds(ctx: Context) -> "BoundsAnalysis | None":
    from precision_lab.numerics.conditioning import bhh_loss_bound, derived_loss_bound, to_rigorous

    d = ctx.data
    if not ctx.has_inputs or ctx.reduction != "none" or "lse" not in d.implementations:
        return None
    checks: list[BoundCheck] = []
    scatter: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for fm in d.formats:
        f = get_format(fm)
        scatter[fm] = {}
        for im, kind in _BOUND_KINDS:
            idx = np.flatnonzero(d.fmt_mask(fm) & d.impl_mask(im) & d.cat_mask("finite")
                                 & ctx.plain)
            if idx.size < 20:
                continue
            idx = idx[sample_idx(idx.size, BOUNDS_SAMPLE_ROWS)]
            bs, ms, below = [], [], []
            for pt in np.unique(d.point[idx]).tolist():
                ii = idx[d.point[idx] == pt]
                x, t = ctx.res.inputs(pt, fm)
                V = x.shape[-1]
                x2, t2 = x.reshape(-1, V), np.asarray(t).reshape(-1)
                xs, ts = np.asarray(x2[d.sample[ii]]), t2[d.sample[ii]]
                with np.errstate(all="ignore"):
                    b = (bhh_loss_bound(xs, ts, True) if kind == "bhh"
                         else derived_loss_bound(xs, ts, im, fm))
                    bs.append(to_rigorous(b, fm) if kind == "bhh" else b)
                    ms.append(d.relative_error[ii] / f.unit_roundoff)
                    if kind == "bhh":
                        x64 = xs.astype(np.float64)
                        y = d.exact_hi[ii] + x64[np.arange(len(ii)), ts]
                        below.append(np.abs(y + V - x64.min(axis=-1)) < np.abs(y))
            b, m = np.concatenate(bs), np.concatenate(ms)
            ok = np.isfinite(b) & np.isfinite(m)
            within = int((m[ok] <= b[ok]).sum())
            viol = ok & (m > b)
            vb = int((np.concatenate(below) & viol).sum()) if below else 0
            checks.append(BoundCheck(
                fm, im, kind, int(ok.sum()), within, int((~np.isfinite(b) & np.isfinite(m)).sum()),
                float(np.median(b[ok])) if ok.any() else None,
                float(np.median(m[ok])) if ok.any() else None,
                float(np.max(m[ok] / b[ok])) if ok.any() else None, int(viol.sum()), vb))
            scatter[fm][f"{im}, {kind} bound"] = (b[ok], m[ok])
    if not checks:
        return None
    return BoundsAnalysis(BOUNDS_SAMPLE_ROWS, checks, scatter)


# --------------------------------------------------------------------------- attribution

@dataclass(frozen=True)
class DecisiveSteps:
    """The step after which the error of the worst rows is settled (see
    :mod:`precision_lab.explain.attribution`): how many of the worst rows each step decides."""

    format: str
    implementation: str
    worst_rows: int
    decided_at: dict[str, int]
    non_finite_rows: int
    largest_finite_ulp_error: "float | None"


@dataclass(frozen=True)
class FusedMatch:
    """On how many sampled rows torch's fused cross_entropy equals a composite bit for bit."""

    format: str
    composite: str
    identical: int
    rows: int


@dataclass(frozen=True)
class AttributionAnalysis:
    rows_per_implementation: int
    fused_sample_rows: int
    decisive: list[DecisiveSteps]
    fused: list[FusedMatch]


def attribution(ctx: Context) -> "AttributionAnalysis | None":
    from precision_lab.explain.attribution import attribute, compare_fused, summarize
    from precision_lab.implementations import REGISTRY

    d = ctx.data
    if not ctx.has_inputs or ctx.reduction != "none":
        return None
    decisive: list[DecisiveSteps] = []
    fused: list[FusedMatch] = []
    for fm in d.formats:
        for im in d.implementations:
            impl = REGISTRY.get(im)
            if impl is None or not impl.capabilities.trace:
                continue
            sel = np.flatnonzero(d.fmt_mask(fm) & d.impl_mask(im) & ctx.plain)
            err = np.where(np.isfinite(d.ulp_error[sel]), d.ulp_error[sel], np.inf)
            bad = d.cat_mask(*NONFINITE_CATEGORIES)[sel]
            score = np.where(bad, np.inf, err)
            order = sel[np.argsort(-score, kind="stable")]
            order = order[(np.where(d.cat_mask(*NONFINITE_CATEGORIES)[order], np.inf,
                                    d.ulp_error[order]) > 0.5)][:ATTRIBUTION_ROWS]
            if not order.size:
                continue
            steps: dict[str, int] = {}
            for pt in np.unique(d.point[order]).tolist():
                ii = order[d.point[order] == pt]
                x, t = ctx.res.inputs(pt, fm)
                V = x.shape[-1]
                xs = np.asarray(x.reshape(-1, V)[d.sample[ii]])
                ts = np.asarray(t).reshape(-1)[d.sample[ii]]
                summ = summarize(attribute(im, xs, ts, fm))
                for k, v in summ.decides.items():
                    steps[k] = steps.get(k, 0) + int(v)
            fin = d.ulp_error[order][np.isfinite(d.ulp_error[order])]
            decisive.append(DecisiveSteps(
                fm, im, int(order.size), steps,
                int(d.cat_mask(*NONFINITE_CATEGORIES)[order].sum()),
                float(fin.max()) if fin.size else None))
        if "torch" in d.implementations:
            tot: dict[str, int] = {}
            n_rows = 0
            pts = np.unique(d.point[d.fmt_mask(fm) & ctx.plain]).tolist()
            per_pt = max(1, FUSED_SAMPLE_ROWS // max(len(pts), 1))
            for pt in pts:
                x, t = ctx.res.inputs(pt, fm)
                V = x.shape[-1]
                x2, t2 = x.reshape(-1, V), np.asarray(t).reshape(-1)
                pick = sample_idx(x2.shape[0], per_pt)
                fr = compare_fused(np.asarray(x2[pick]), t2[pick], fm)
                n_rows += fr.rows
                for c in fr.composites:
                    tot[c.name] = tot.get(c.name, 0) + int(c.identical)
            for name, v in sorted(tot.items(), key=lambda kv: -kv[1]):
                fused.append(FusedMatch(fm, name, v, n_rows))
    if not decisive and not fused:
        return None
    return AttributionAnalysis(ATTRIBUTION_ROWS, FUSED_SAMPLE_ROWS, decisive, fused)

