"""Results of exactly 0 for a non-zero loss, and the implementation that keeps it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from precision_lab.explain.analyses.context import (
    Context,
    transient,
)
from precision_lab.explain.data import NONFINITE_CATEGORIES
from precision_lab.numerics.formats import get_format

# --------------------------------------------------------------------------- cancellation

@dataclass(frozen=True)
class ZeroReturn:
    """Results of exactly 0 for a finite, non-zero truth: one implementation, one format.

    ``first``: first axis value with such a result; ``all_from``: the value from which every
    row with a non-zero truth comes back 0 (None if never); ``nonfinite_after``: inf/NaN
    results at or after ``first``; ``lost_max``: the largest correctly rounded loss lost."""

    format: str
    implementation: str
    rows: int
    zero: int
    first: "float | None"
    all_from: "float | None"
    nonfinite_after: int
    lost_max: "float | None"


@dataclass(frozen=True)
class Keeper:
    """The implementation that keeps the tiny loss: far fewer results of 0 than any other.

    ``worst_relative_u``: its largest relative error (units of u) per format over rows whose
    correctly rounded loss is a normal number."""

    implementation: str
    zero_rows: int
    never_formats: list[str]
    zero_in: list[ZeroReturn]
    worst_relative_u: dict[str, float]


@dataclass(frozen=True)
class CancellationAnalysis:
    axis: "str | None"
    rows: list[ZeroReturn]
    #: per format, the axis value from which the correctly rounded loss is 0 on every row
    truth_zero_from: dict[str, float]
    keeper: "Keeper | None"
    #: per format: {implementation: (axis values, median relative error in units of u)}
    curves: Any = transient()


def cancellation(ctx: Context) -> "CancellationAnalysis | None":
    d = ctx.data
    zero = d.zero_for_nonzero()
    if not zero.any():
        return None
    axis = ctx.axis
    axv = d.axes.get(axis) if axis else None
    nonzero_truth = (d.reference != 0) & np.isfinite(d.reference)
    bad = d.cat_mask(*NONFINITE_CATEGORIES)
    rows: list[ZeroReturn] = []
    info: dict[tuple[str, str], ZeroReturn] = {}
    dead: dict[str, float] = {}
    curves: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for fm in d.formats:
        fsel = d.fmt_mask(fm)
        u = get_format(fm).unit_roundoff
        curves[fm] = {}
        for im in d.implementations:
            sel = fsel & d.impl_mask(im)
            if not sel.any():
                continue
            z = zero & sel
            first = all_from = None
            nfa = 0
            if axv is not None:
                vals = np.unique(axv[sel])
                med = []
                for v in vals:
                    s2 = sel & (axv == v) & np.isfinite(d.relative_error)
                    med.append(float(np.median(d.relative_error[s2] / u)) if s2.any()
                               else math.nan)
                curves[fm][im] = ([float(v) for v in vals], med)
                if z.any():
                    share = {}
                    for v in vals:
                        live = sel & (axv == v) & nonzero_truth
                        if live.any():
                            share[float(v)] = float(zero[live].mean())
                    first = min(v for v in share if share[v] > 0)
                    tail = [v for v in share if v >= first
                            and all(share[w] == 1.0 for w in share if w >= v)]
                    all_from = tail[0] if tail else None
                    nfa = int((bad & sel & (axv >= first)).sum())
            zr = ZeroReturn(fm, im, int(sel.sum()), int(z.sum()), first, all_from, nfa,
                            float(d.reference[z].max()) if z.any() else None)
            info[(fm, im)] = zr
            if z.any():
                rows.append(zr)
        if axv is not None:
            vals = np.unique(axv[fsel])
            gone = [float(v) for v in vals
                    if all(not nonzero_truth[fsel & (axv == w)].any() for w in vals if w >= v)]
            if gone:
                dead[fm] = gone[0]
    impls = d.implementations
    tot = {im: sum(info[(fm, im)].zero for fm in d.formats if (fm, im) in info) for im in impls}
    keeper = None
    k = min(impls, key=lambda im: (tot[im], impls.index(im)))
    others = [tot[im] for im in impls if im != k]
    if others and tot[k] * 2 < min(others):
        never: list[str] = []
        zero_in: list[ZeroReturn] = []
        worst: dict[str, float] = {}
        for fm in d.formats:
            kz = info.get((fm, k))
            if kz is None:
                continue
            f = get_format(fm)
            sel = (d.fmt_mask(fm) & d.impl_mask(k) & ~zero
                   & (np.abs(d.reference) >= f.smallest_normal))
            r = d.relative_error[sel] / f.unit_roundoff
            r = r[np.isfinite(r)]
            if r.size:
                worst[fm] = float(r.max())
            if kz.zero:
                zero_in.append(kz)
            else:
                never.append(fm)
        keeper = Keeper(k, tot[k], never, zero_in, worst)
    return CancellationAnalysis(axis, rows, dead, keeper, curves)

