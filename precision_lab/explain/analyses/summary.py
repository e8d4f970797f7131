"""Trend along the sweep axis, formats side by side, and tiny experiments row by row."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from precision_lab.explain.analyses.context import (
    Context,
)

# --------------------------------------------------------------------------- trend, formats

@dataclass(frozen=True)
class TrendFormat:
    """Mean ULP error (all implementations pooled, finite results) at the first and last value
    of the sweep axis in one format, and the largest single error along it."""

    format: str
    first: float
    mean_first: float
    last: float
    mean_last: float
    largest: float


@dataclass(frozen=True)
class TrendAnalysis:
    axis: str
    formats: list[TrendFormat]
    max_ratio: float
    #: (group label, format, first value, its mean, last value, its mean) of the
    #: implementation whose mean grows most, when it grows by more than 1.5x
    largest_growth: "tuple[str, str, float, float, float, float] | None"


def trend(ctx: Context) -> "TrendAnalysis | None":
    axis = ctx.axis
    if not axis:
        return None
    summary = ctx.summary
    out, ratios = [], []
    for fm in ctx.data.formats:
        by: dict[float, list[float]] = {}
        for r in summary:
            s = r.stats
            if r.format != fm or s.ulp_error_mean is None or not s.stat_count:
                continue
            w = by.setdefault(float(r.params[axis]), [0.0, 0.0, 0.0])
            w[0] += s.ulp_error_mean * s.stat_count
            w[1] += s.stat_count
            w[2] = max(w[2], s.ulp_error_max or 0.0)
        if len(by) < 2:
            continue
        xs = sorted(by)
        m0, m1 = by[xs[0]][0] / by[xs[0]][1], by[xs[-1]][0] / by[xs[-1]][1]
        ratios.append(m1 / m0 if m0 else math.inf)
        out.append(TrendFormat(fm, xs[0], m0, xs[-1], m1, max(v[2] for v in by.values())))
    if not out:
        return None
    label = {im: " = ".join(g) for g in ctx.groups for im in g}
    one = []
    for g in ctx.groups:
        im = g[0]
        for fm in ctx.data.formats:
            pts = sorted((r for r in summary if r.implementation == im and r.format == fm
                          and r.stats.stat_count and (r.stats.ulp_error_mean or 0) > 0),
                         key=lambda r: r.params[axis])
            if len(pts) >= 2:
                a, b = pts[0].stats.ulp_error_mean or 0.0, pts[-1].stats.ulp_error_mean or 0.0
                one.append((b / a, label[im], fm, float(pts[0].params[axis]), a,
                            float(pts[-1].params[axis]), b))
    growth = None
    if one and max(one)[0] > 1.5:
        _, lab, fm, x0, a, x1, b = max(one)
        growth = (lab, fm, x0, a, x1, b)
    return TrendAnalysis(axis, out, max(ratios), growth)


@dataclass(frozen=True)
class FormatShare:
    """One group of bit-identical implementations in one format (all sweep points)."""

    group: list[str]
    format: str
    exact: int
    stat: int
    ulp_error_mean: "float | None"


@dataclass(frozen=True)
class FormatsAnalysis:
    formats: list[str]
    shares: list[FormatShare]


def formats_side_by_side(ctx: Context) -> "FormatsAnalysis | None":
    fmts = ctx.data.formats
    if len(fmts) < 2:
        return None
    shares = []
    for g in ctx.groups:
        for fm in fmts:
            s = ctx.stats.get((g[0], fm))
            if s is not None:
                shares.append(FormatShare(g, fm, s.exact_matches, s.stat_count,
                                          s.ulp_error_mean))
    return FormatsAnalysis(fmts, shares)


# --------------------------------------------------------------------------- tiny experiments

@dataclass(frozen=True)
class ExplainedRows:
    """Every row of a tiny experiment (one sweep point, at most 4 rows of at most 64 classes),
    explained by :func:`precision_lab.explain.explain.explain` in each format."""

    rows: list[Any]


def explained(ctx: Context) -> "ExplainedRows | None":
    from precision_lab.explain.explain import explain

    d = ctx.data
    pts = np.unique(d.point).tolist()
    if not ctx.has_inputs or ctx.reduction != "none" or len(pts) > 1 or not ctx.plain.all():
        return None
    out = []
    for fm in d.formats:
        x, t = ctx.res.inputs(pts[0], fm)
        V = x.shape[-1]
        x2, t2 = np.asarray(x).reshape(-1, V), np.asarray(t).reshape(-1)
        if x2.shape[0] > 4 or V > 64:
            return None
        for i in range(x2.shape[0]):
            out.append(explain(x2[i], int(t2[i]), fm, implementations=d.implementations))
    return ExplainedRows(out)



@dataclass(frozen=True)
class GradientRow:
    """One implementation's gradient in one format, all sweep points combined (counts are of
    gradient elements; ULP errors in that format's ULPs; see
    :class:`~precision_lab.experiment.records.GradFacts` for the zero and subnormal counts)."""

    implementation: str
    format: str
    elements: int
    stat: int
    exact: int
    ulp_error_mean: "float | None"
    ulp_error_max: "float | None"
    zero_for_nonzero: int
    truth_subnormal: int
    subnormal_lost: int
    truth_underflow: int
    nonfinite: int


@dataclass(frozen=True)
class GradientAnalysis:
    rows: list[GradientRow]


def gradients(ctx: Context) -> "GradientAnalysis | None":
    grad = [r for r in ctx.res.summary() if r.quantity == "grad"]
    if not grad:
        return None
    facts: dict[tuple[str, str], list[Any]] = {}
    for g in ctx.res.grad_facts():
        v = facts.setdefault((g.implementation, g.format), [0, 0, 0, 0, 0])
        for i, n in enumerate((g.zero_for_nonzero, g.truth_subnormal, g.subnormal_lost,
                               g.truth_underflow, g.nonfinite)):
            v[i] += n
    acc: dict[tuple[str, str], list[Any]] = {}
    for r in grad:
        s = r.stats
        v = acc.setdefault((r.implementation, r.format), [0, 0, 0, 0.0, None])
        v[0] += s.count
        v[1] += s.stat_count
        v[2] += s.exact_matches
        v[3] += (s.ulp_error_mean or 0.0) * s.stat_count
        if s.ulp_error_max is not None:
            v[4] = s.ulp_error_max if v[4] is None else max(v[4], s.ulp_error_max)
    rows = []
    for fm in ctx.data.formats:
        for im in ctx.data.implementations:
            if (im, fm) not in acc:
                continue
            n, stat, exact, wsum, mx = acc[(im, fm)]
            f5 = facts.get((im, fm), [0, 0, 0, 0, 0])
            rows.append(GradientRow(im, fm, n, stat, exact, wsum / stat if stat else None, mx,
                                    *f5))
    return GradientAnalysis(rows)
