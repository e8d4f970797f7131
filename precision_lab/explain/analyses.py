"""Analyses of a results folder: what explains the errors, as numbers.

Each analysis reads a :class:`~precision_lab.experiment.store.Results` (its tables, its row facts
and, where it needs logits, the inputs the run stored) and returns a frozen dataclass, or None
when its pattern is absent from the data.  Nothing here writes prose or draws: the report turns
these records into sentences and figures.  Fields marked ``transient`` carry per-row arrays for
the plots and are left out of ``analyses.json``.

============================  ======================================================================
:func:`nonfinite`             inf/NaN results per implementation and format: how many, from which
                              value of the sweep axis, and how many came from non-finite inputs
:func:`overflow`              why a loss is inf/NaN: a single exp, the unshifted sum or the shifted
                              sum overflows (or the input was already non-finite)
:func:`cancellation`          results of exactly 0 for a non-zero loss: from which axis value, and
                              the implementation that keeps the loss
:func:`bounds`                measured errors against error bounds (a stated sample of rows)
:func:`attribution`           the step that decides the worst rows; torch's fused kernel against
                              composites modelled on its source (stated samples of rows)
:func:`trend`                 mean ULP error along a numeric sweep axis
:func:`formats_side_by_side`  correctly rounded share and mean error per format
:func:`explained`             every row of a tiny experiment explained (:mod:`.explain`)
============================  ======================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from precision_lab.experiment.store import Results
from precision_lab.explain.data import (
    NONFINITE_CATEGORIES,
    RowFactsData,
    SampleData,
    aggregate,
    identical_groups,
    numeric_axis,
    row_facts_data,
    sample_data,
)
from precision_lab.numerics.formats import get_format
from precision_lab.numerics.stats import ErrorStats

__all__ = ["ANALYSES", "run_analyses", "NonfiniteCount", "NonfiniteAnalysis", "OverflowGroup",
           "OverflowAnalysis", "ZeroReturn", "Keeper", "CancellationAnalysis", "BoundCheck",
           "BoundsAnalysis", "DecisiveSteps", "FusedMatch", "AttributionAnalysis",
           "TrendFormat", "TrendAnalysis", "FormatShare", "FormatsAnalysis", "Context",
           "BOUNDS_SAMPLE_ROWS", "ATTRIBUTION_ROWS", "FUSED_SAMPLE_ROWS"]

#: Rows per format whose bounds are evaluated (a uniform sample with a fixed seed).
BOUNDS_SAMPLE_ROWS = 500
#: Worst rows attributed per implementation and format.
ATTRIBUTION_ROWS = 3
#: Rows per format on which torch's fused kernel is set beside the composites.
FUSED_SAMPLE_ROWS = 256


def _transient() -> Any:
    return field(default=None, metadata={"transient": True}, compare=False, repr=False)


@dataclass
class Context:
    """What the analyses share: the folder, its samples and row facts, the groups of
    bit-identical implementations and the aggregate statistics (computed once)."""

    res: Results
    data: SampleData
    facts: "RowFactsData | None"
    groups: list[list[str]]
    stats: dict[tuple[str, str], ErrorStats]
    axis: "str | None"
    reduction: str

    @property
    def has_inputs(self) -> bool:
        return self.res.has_inputs()


def context(res: Results) -> "Context | None":
    d = sample_data(res)
    if d is None:
        return None
    summary = res.summary()
    if len(res.manifest.points) == 1:  # the summary rows already hold these statistics
        stats = {(r.implementation, r.format): r.stats for r in summary}
    else:
        stats = aggregate(d)
    return Context(res, d, row_facts_data(res), identical_groups(res.agreement(),
                                                                  d.implementations),
                   stats, numeric_axis(summary),
                   str(res.manifest.config.get("reduction", "none")))


def _first_and_clean(values: np.ndarray, bad: np.ndarray) -> tuple[Any, Any]:
    """The first axis value with a bad sample, and the last value below it with none."""
    vals = np.unique(values)
    badv = [v for v in vals if bad[values == v].any()]
    if not badv:
        return None, None
    below = [v for v in vals if v < badv[0]]
    return float(badv[0]), (float(below[-1]) if below else None)


# --------------------------------------------------------------------------- non-finite

@dataclass(frozen=True)
class NonfiniteCount:
    """Non-finite results of a group of implementations with identical counts in one format.

    ``category``: "overflow" (inf, truth finite), "nan" (NaN, truth not NaN), "missed_inf"
    (finite, truth infinite); ``first`` / ``last_clean``: first axis value with one and the
    last below it with none (None without a numeric axis)."""

    format: str
    category: str
    implementations: list[str]
    count: int
    total: int
    first: "float | None" = None
    last_clean: "float | None" = None


@dataclass(frozen=True)
class NonfiniteAnalysis:
    """Non-finite results: the spurious ones (by category) and those on rows whose logits
    already hold inf or NaN.

    ``counts``: spurious inf/NaN on rows with finite logits; ``from_input``: per format and
    implementation, inf and NaN results on rows whose logits hold inf/NaN, and how many of
    them equal the truth (which follows the reference's rules for such rows: inf, NaN, or 0 for
    a lone +inf target); ``never``: implementations with no spurious inf/NaN anywhere."""

    axis: "str | None"
    counts: list[NonfiniteCount]
    from_input: list[dict[str, Any]]
    never: list[str]
    clean_formats: list[str]
    rows_per_format: dict[str, int]


def input_nonfinite(ctx: Context) -> np.ndarray:
    """Per sample: whether its logits hold inf or NaN (from the row facts; with a reduction,
    whether the truth itself is inf or NaN)."""
    d = ctx.data
    if ctx.facts is not None and ctx.reduction == "none":
        idx = np.arange(d.computed.size)
        mx, mn = ctx.facts.of(d, idx, "row_max"), ctx.facts.of(d, idx, "row_min")
        return ~np.isfinite(mx) | ~np.isfinite(mn)
    return ~np.isfinite(d.exact_hi)


def nonfinite(ctx: Context) -> "NonfiniteAnalysis | None":
    d = ctx.data
    from_logits = input_nonfinite(ctx)
    spurious = d.cat_mask(*NONFINITE_CATEGORIES) & ~from_logits
    by_input = from_logits & ~np.isfinite(d.computed)
    if not spurious.any() and not by_input.any():
        return None
    counts: list[NonfiniteCount] = []
    groups: dict[tuple, list[str]] = {}
    axis_v = d.axes.get(ctx.axis) if ctx.axis else None
    by = d.groups()
    for fm in d.formats:
        for im in d.implementations:
            idx = by.get((im, fm))
            if idx is None or not spurious[idx].any():
                continue
            for cat in NONFINITE_CATEGORIES:
                bad = d.cat_mask(cat)[idx] & ~from_logits[idx]
                k = int(bad.sum())
                if not k:
                    continue
                first = clean = None
                if axis_v is not None:
                    first, clean = _first_and_clean(axis_v[idx], bad)
                groups.setdefault((fm, cat, k, int(idx.size), first, clean), []).append(im)
    for (fm, cat, k, n, first, clean), names in groups.items():
        counts.append(NonfiniteCount(fm, cat, names, k, n, first, clean))
    from_input = []
    for fm in d.formats:
        for im in d.implementations:
            idx = by.get((im, fm))
            if idx is None:
                continue
            sel = idx[by_input[idx]]
            if sel.size:
                from_input.append({"format": fm, "implementation": im,
                                   "inf": int(np.isinf(d.computed[sel]).sum()),
                                   "nan": int(np.isnan(d.computed[sel]).sum()),
                                   "matching_truth": int(d.cat_mask("inf_match", "undefined")
                                                         [sel].sum())})
    bad_impl = {d.impls[c] for c in np.unique(d.impl_code[spurious])}
    bad_fmt = {d.fmts[c] for c in np.unique(d.fmt_code[spurious])}
    never = [im for im in d.implementations if im not in bad_impl]
    clean = [fm for fm in d.formats if fm not in bad_fmt]
    first_impl = d.implementations[0]
    per_fmt = {fm: int(by[(first_impl, fm)].size) for fm in d.formats
               if (first_impl, fm) in by}
    return NonfiniteAnalysis(ctx.axis, counts, from_input, never, clean, per_fmt)


# --------------------------------------------------------------------------- overflow

@dataclass(frozen=True)
class OverflowGroup:
    """Why the loss of some implementations is inf/NaN in one format (identical counts).

    Causes, in exact arithmetic on the row's logits, with M the format's largest finite value:
    ``exp_overflow`` a single exp overflows (max x > ln M); ``unshifted_sum_overflow`` only the
    sum exp(x_j) = exp(lse) does (lse > ln M); ``shifted_sum_overflow`` even sum exp(x_j - max)
    reaches M; ``input_nonfinite`` the logits hold inf/NaN; ``other`` none of these.
    lse values are natural logs; the shifted sums are plain sums."""

    format: str
    implementations: list[str]
    rows: int
    non_finite: int
    exp_overflow: int
    unshifted_sum_overflow: int
    shifted_sum_overflow: int
    input_nonfinite: int
    other: int
    ln_max_finite: float
    rows_lse_above_ln_max: int
    non_finite_rows_lse_above: int
    smallest_lse_non_finite: "float | None"
    largest_lse_finite: "float | None"
    smallest_shifted_sum_non_finite: "float | None"
    largest_shifted_sum_finite: "float | None"
    first: "float | None" = None
    last_clean: "float | None" = None


@dataclass(frozen=True)
class OverflowAnalysis:
    axis: "str | None"
    groups: list[OverflowGroup]
    #: per format: [(implementations, x values, non-finite flags, "lse" | "shifted")]
    curves: Any = _transient()


def overflow(ctx: Context) -> "OverflowAnalysis | None":
    d, facts = ctx.data, ctx.facts
    bad_all = d.cat_mask("overflow", "nan")
    if not bad_all.any() or facts is None or ctx.reduction != "none":
        return None
    axis_v = d.axes.get(ctx.axis) if ctx.axis else None
    out: list[OverflowGroup] = []
    curves: dict[str, list] = {}
    for fm in d.formats:
        f = get_format(fm)
        lnM = math.log(f.max_finite)
        fsel = d.fmt_mask(fm)
        groups: dict[tuple, list[str]] = {}
        per_impl: dict[str, tuple] = {}
        for im in d.implementations:
            idx = np.flatnonzero(fsel & d.impl_mask(im))
            if not idx.size:
                continue
            mx, lse = facts.of(d, idx, "row_max"), facts.of(d, idx, "lse")
            mn = facts.of(d, idx, "row_min")
            with np.errstate(all="ignore"):
                sp = np.exp(lse - mx)  # sum_j exp(x_j - max)
            nf = bad_all[idx]
            inp = ~np.isfinite(mx) | ~np.isfinite(mn)
            per_impl[im] = (lse, sp, nf, inp)
            if not nf.any():
                continue
            c_in = nf & inp
            c_exp = nf & ~inp & (mx > lnM)
            c_sh = nf & ~inp & ~c_exp & (sp >= f.max_finite)
            c_un = nf & ~inp & ~c_exp & ~c_sh & (lse > lnM)
            c_other = nf & ~c_in & ~c_exp & ~c_sh & ~c_un
            above = ~inp & (lse > lnM)
            fin = ~nf & ~inp
            first = clean = None
            if axis_v is not None:
                first, clean = _first_and_clean(axis_v[idx], nf)

            def r6(a: np.ndarray, pick: Callable) -> "float | None":
                return float(f"{float(pick(a)):.6g}") if a.size else None

            key = (int(idx.size), int(nf.sum()), int(c_exp.sum()), int(c_un.sum()),
                   int(c_sh.sum()), int(c_in.sum()), int(c_other.sum()), int(above.sum()),
                   int((nf & above).sum()), r6(lse[nf & ~inp], np.min), r6(lse[fin], np.max),
                   r6(sp[c_sh], np.min), r6(sp[fin], np.max), first, clean)
            groups.setdefault(key, []).append(im)
        for key, names in groups.items():
            out.append(OverflowGroup(fm, names, key[0], key[1], key[2], key[3], key[4], key[5],
                                     key[6], lnM, key[7], key[8], key[9], key[10], key[11],
                                     key[12], key[13], key[14]))
        # the plot: share of inf/NaN rows against ln(the sum the implementation forms) - ln M
        lines: dict[bytes, list[str]] = {}
        for im, (lse, sp, nf, inp) in per_impl.items():
            if nf.any():
                lines.setdefault(nf.tobytes(), []).append(im)
        curves[fm] = []
        for names in lines.values():
            lse, sp, nf, inp = per_impl[names[0]]
            shifted = bool((sp[nf & ~inp] >= f.max_finite).mean() > 0.5) if (nf & ~inp).any() \
                else False
            with np.errstate(all="ignore"):
                xv = (np.log(sp) if shifted else lse) - lnM
            ok = np.isfinite(xv)
            curves[fm].append((names, xv[ok], nf[ok], "shifted" if shifted else "lse"))
    return OverflowAnalysis(ctx.axis, out, curves) if out else None


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
    curves: Any = _transient()


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
    scatter: Any = _transient()


_BOUND_KINDS = (("lse", "bhh"), ("lse", "derived"), ("lse_log1p", "derived"))


def _sample_idx(n: int, k: int) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size=k, replace=False))


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
            idx = np.flatnonzero(d.fmt_mask(fm) & d.impl_mask(im) & d.cat_mask("finite"))
            if idx.size < 20:
                continue
            idx = idx[_sample_idx(idx.size, BOUNDS_SAMPLE_ROWS)]
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
    from precision_lab.explain.attribution import attribute, compare_fused, dominant_summary
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
            sel = np.flatnonzero(d.fmt_mask(fm) & d.impl_mask(im))
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
                summ = dominant_summary(attribute(im, xs, ts, fm))
                for k, v in (summ.get("decisive") or {}).items():
                    steps[k] = steps.get(k, 0) + int(v)
            fin = d.ulp_error[order][np.isfinite(d.ulp_error[order])]
            decisive.append(DecisiveSteps(
                fm, im, int(order.size), steps,
                int(d.cat_mask(*NONFINITE_CATEGORIES)[order].sum()),
                float(fin.max()) if fin.size else None))
        if "torch" in d.implementations:
            tot: dict[str, int] = {}
            n_rows = 0
            pts = np.unique(d.point[d.fmt_mask(fm)]).tolist()
            per_pt = max(1, FUSED_SAMPLE_ROWS // max(len(pts), 1))
            for pt in pts:
                x, t = ctx.res.inputs(pt, fm)
                V = x.shape[-1]
                x2, t2 = x.reshape(-1, V), np.asarray(t).reshape(-1)
                pick = _sample_idx(x2.shape[0], per_pt)
                fr = compare_fused(np.asarray(x2[pick]), t2[pick], fm)
                n_rows += fr["rows"]
                for c in fr["composites"]:
                    tot[c["name"]] = tot.get(c["name"], 0) + int(c["identical"])
            for name, v in sorted(tot.items(), key=lambda kv: -kv[1]):
                fused.append(FusedMatch(fm, name, v, n_rows))
    if not decisive and not fused:
        return None
    return AttributionAnalysis(ATTRIBUTION_ROWS, FUSED_SAMPLE_ROWS, decisive, fused)


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
    summary = ctx.res.summary()
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
    if not ctx.has_inputs or ctx.reduction != "none" or len(pts) > 1:
        return None
    out = []
    for fm in d.formats:
        x, t = ctx.res.inputs(pts[0], fm)
        V = x.shape[-1]
        x2, t2 = np.asarray(x).reshape(-1, V), np.asarray(t).reshape(-1)
        if x2.shape[0] > 4 or V > 64:
            return None
        for i in range(x2.shape[0]):
            out.append(explain(x2[i], int(t2[i]), fm))
    return ExplainedRows(out)


#: The analyses in the order they run: (name in analyses.json, function).
ANALYSES: list[tuple[str, Callable[[Context], Any]]] = [
    ("explained", explained),
    ("nonfinite", nonfinite),
    ("overflow", overflow),
    ("cancellation", cancellation),
    ("bounds", bounds),
    ("attribution", attribution),
    ("trend", trend),
    ("formats", formats_side_by_side),
]


def _no_progress(n: int = 1) -> None:
    return None


def run_analyses(res: Results, advance: Callable[[int], None] = _no_progress
                 ) -> tuple["Context | None", dict[str, Any]]:
    """Every analysis that applies: (the shared context, {name: record}).  An analysis that
    fails is recorded as {"failed": message}, so one broken analysis never hides the rest."""
    ctx = context(res)
    out: dict[str, Any] = {}
    for name, fn in ANALYSES:
        if ctx is not None:
            try:
                rec = fn(ctx)
            except Exception as exc:  # noqa: BLE001 - reported in the report, not raised
                rec = {"failed": f"{type(exc).__name__}: {exc}"}
            if rec is not None:
                out[name] = rec
        advance(1)
    return ctx, out
